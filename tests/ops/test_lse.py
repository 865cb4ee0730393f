"""The streaming log-normaliser kernel (bigsoftmax.ops.lse): float64 parity with the naive
``F.cross_entropy(F.linear(...))`` / masked ``logsumexp`` to 1e-10 (loss and every gradient), the
per-shard steps a vocabulary-parallel head composes, and deterministic gradients."""

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from bigsoftmax.ops import lse as K
from bigsoftmax.ops.lse import linear_cross_entropy, linear_logsumexp

TOL = dict(rtol=1e-10, atol=1e-10)


def _problem(N=13, V=23, d=5, seed=0, ignore=False, weighted=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, d, generator=g, dtype=torch.float64) * 2).requires_grad_()
    W = torch.randn(V, d, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(V, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    if ignore:
        y[::4] = -100
    cw = torch.rand(V, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    return x, W, b, y, cw


def _grads(out, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    up = torch.randn(out.shape, generator=g, dtype=out.dtype) if out.dim() else torch.tensor(1.7, dtype=out.dtype)
    return torch.autograd.grad(out, inputs, up)


MODES = {  # name -> (chunk_size, precompute): slicing, row-block (automatic chunk under grad), precompute
    "sliced": (7, False),
    "rowblock": (None, False),
    "precompute": (7, True),
}


@pytest.mark.parametrize("reduction,eps,weighted,ignore,mode", list(itertools.product(
    ["mean", "sum", "none"], [0.0, 0.2], [False, True], [False, True], list(MODES))))
def test_linear_cross_entropy_float64_parity(reduction, eps, weighted, ignore, mode):
    x, W, b, y, cw = _problem(ignore=ignore, weighted=weighted)
    chunk, pre = MODES[mode]
    kw = dict(ignore_index=-100, reduction=reduction, label_smoothing=eps)
    out = linear_cross_entropy(x, W, b, y, weight_class=cw, chunk_size=chunk, precompute=pre, **kw)
    ref = F.cross_entropy(F.linear(x, W, b), y, weight=cw, **kw)
    torch.testing.assert_close(out, ref, **TOL)
    for a, r in zip(_grads(out, (x, W, b)), _grads(ref, (x, W, b))):
        torch.testing.assert_close(a, r, **TOL)


def test_rowblock_mode_really_runs_on_small_vocabularies():
    assert K.rowblock_rows(13, 23, 8) == 13  # the parity test above covers the row-block path


@pytest.mark.parametrize("recompute,bias,chunk", [(True, True, 4), (True, False, 1), (False, True, None)])
def test_linear_logsumexp_value_and_gradients(recompute, bias, chunk):
    x, W, b, y, _ = _problem()
    b = b if bias else None
    lse, zt = linear_logsumexp(x, W, b, y, chunk_size=chunk, recompute=recompute)
    z = F.linear(x, W, b)
    ref_lse, ref_zt = torch.logsumexp(z, -1), z.gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(lse, ref_lse, **TOL)
    torch.testing.assert_close(zt, ref_zt, **TOL)
    ins = (x, W) + ((b,) if bias else ())
    out, ref = lse * 0.7 - zt * 1.3 + lse.square(), ref_lse * 0.7 - ref_zt * 1.3 + ref_lse.square()
    for a, r in zip(_grads(out, ins), _grads(ref, ins)):
        torch.testing.assert_close(a, r, **TOL)


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_exclude_target_is_the_masked_logsumexp(chunk):
    """lse over c != y_i, also when a slice holds only the target (chunk 1)."""
    x, W, b, y, _ = _problem(V=9)
    rest, zt = linear_logsumexp(x, W, b, y, chunk_size=chunk, recompute=True, exclude_target=True)
    assert zt is None
    z = F.linear(x, W, b)
    hit = F.one_hot(y, 9).bool()
    ref = torch.logsumexp(z.masked_fill(hit, torch.finfo(z.dtype).min), -1)
    torch.testing.assert_close(rest, ref, **TOL)
    for a, r in zip(_grads(rest, (x, W, b)), _grads(ref, (x, W, b))):
        torch.testing.assert_close(a, r, **TOL)
    assert torch.autograd.gradcheck(
        lambda x_, W_: linear_logsumexp(x_, W_, None, y, chunk_size=chunk, exclude_target=True)[0], (x, W))


def test_per_shard_steps_compose_into_the_full_result():
    """Two vocabulary shards + the all-reduces a vocab-parallel head would do (max, then sum) give the
    full lse, target logit and gradients: the steps are usable on their own."""
    x, W, b, y, _ = _problem(V=20)
    x, W, b = x.detach(), W.detach(), b.detach()
    p = K.KernelParams(chunk=4, cdt=torch.float64, acc=torch.float64)
    shards = [(0, 12), (12, 20)]
    x2 = x * K.LOG2E
    stats = [K.local_row_stats(x2, W[s:e], b[s:e], p) for s, e in shards]
    m_glob = torch.stack([st.m2 for st in stats]).amax(0)  # all-reduce MAX
    s_glob = sum(K.sumexp_at(st, m_glob) for st in stats)  # all-reduce SUM
    lse2 = K.lse2_of(m_glob, s_glob)
    z = F.linear(x, W, b)
    torch.testing.assert_close(lse2 * K.LN2, torch.logsumexp(z, -1), **TOL)
    zt = sum(K.target_logit(x, W[s:e], b[s:e], (y - s).clamp(0, e - s - 1), p, in_shard=(y >= s) & (y < e))
             for s, e in shards)  # all-reduce SUM
    torch.testing.assert_close(zt, z.gather(1, y[:, None])[:, 0], **TOL)
    # gradient of sum_i (lse_i - z_iy) per shard, given the global lse
    gx = torch.zeros_like(x)
    gW, gb = [], []
    ones = torch.ones(x.shape[0], dtype=torch.float64)
    for s, e in shards:
        inside = (y >= s) & (y < e)
        yl = (y - s).clamp(0, e - s - 1)
        out = K.new_grads(x.shape[0], x.shape[1], e - s, p, (True, True, True), x.device, zero_W=False)
        K.dense_grads(x, W[s:e], b[s:e], None, lse2, ones, p, out, accumulate=False)
        K.onehot_grads(x[inside], W[s:e], yl[inside], -ones[inside],
                       p, K.Grads(None, out.gW, out.gb))
        gx += out.gx
        gx[inside] -= W[s:e][yl[inside]]
        gW.append(out.gW)
        gb.append(out.gb)
    xr, Wr, br = (t.clone().requires_grad_() for t in (x, W, b))
    ref = F.cross_entropy(F.linear(xr, Wr, br), y, reduction="sum")
    rx, rW, rb = torch.autograd.grad(ref, (xr, Wr, br))
    torch.testing.assert_close(gx, rx, **TOL)
    torch.testing.assert_close(torch.cat(gW), rW, **TOL)
    torch.testing.assert_close(torch.cat(gb), rb, **TOL)


def test_kernel_params_are_one_small_frozen_dataclass():
    p = K.KernelParams(chunk=8, cdt=torch.float32, acc=torch.float32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.chunk = 4
    assert len(dataclasses.fields(p)) <= 6


@pytest.mark.parametrize("mode", list(MODES))
def test_retained_graph_backward_is_bit_identical(mode):
    """Issue 14 item 14: two backward calls through one graph give the same bits (gradcheck's
    reentrancy check without a tolerance)."""
    x, W, b, y, cw = _problem(weighted=True)
    chunk, pre = MODES[mode]
    out = linear_cross_entropy(x, W, b, y, weight_class=cw, label_smoothing=0.1, chunk_size=chunk)
    g1 = torch.autograd.grad(out, (x, W, b), retain_graph=True)
    g2 = torch.autograd.grad(out, (x, W, b))
    for a, c in zip(g1, g2):
        assert torch.equal(a, c)
    if not pre:
        assert torch.autograd.gradcheck(
            lambda x_, W_, b_: linear_cross_entropy(x_, W_, b_, y, weight_class=cw, label_smoothing=0.1,
                                                    chunk_size=chunk), (x, W, b))


def test_fp32_rowblock_and_sliced_gradients_are_deterministic():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 16, generator=g).requires_grad_()
    W = torch.randn(5000, 16, generator=g).requires_grad_()
    y = torch.randint(0, 5000, (300,), generator=g)
    for chunk in (None, 1024):
        runs = [torch.autograd.grad(linear_cross_entropy(x, W, None, y, chunk_size=chunk), (x, W)) for _ in range(2)]
        for a, c in zip(*runs):
            assert torch.equal(a, c)


def test_bad_arguments_name_the_argument():
    x, W, b, y, _ = _problem()
    with pytest.raises(ValueError, match="exclude_target=True needs target"):
        linear_logsumexp(x, W, b, exclude_target=True)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        linear_logsumexp(x, W, b, chunk_size=0)
    with pytest.raises(ValueError, match="weight_class must be finite and >= 0"):
        linear_cross_entropy(x, W, b, y, weight_class=torch.full((23,), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="weight_class must be finite and >= 0"):
        linear_cross_entropy(x, W, b, y, weight_class=-torch.ones(23, dtype=torch.float64))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        linear_cross_entropy(x, W, b, y, ignore_index=1.5)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(N=st.integers(0, 9), V=st.integers(1, 30), d=st.integers(1, 6), chunk=st.one_of(st.none(), st.integers(1, 31)),
       reduction=st.sampled_from(["mean", "sum", "none"]), eps=st.sampled_from([0.0, 0.3, 1.0]),
       weighted=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_property_linear_cross_entropy_equals_naive(N, V, d, chunk, reduction, eps, weighted, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(V, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    y = torch.randint(0, V, (N,), generator=g)
    y[torch.rand(N, generator=g) < 0.25] = -100
    cw = torch.rand(V, generator=g, dtype=torch.float64) if weighted else None
    kw = dict(reduction=reduction, label_smoothing=eps)
    out = linear_cross_entropy(x, W, b, y, weight_class=cw, chunk_size=chunk, **kw)
    ref = F.cross_entropy(F.linear(x, W, b), y, weight=cw, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9, equal_nan=True)
    if bool(torch.isfinite(ref).all()) and N > 0:
        ins = (x, W) + ((b,) if bias else ())
        for a, r in zip(_grads(out, ins), _grads(ref, ins)):
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)

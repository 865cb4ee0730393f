"""linear_cross_entropy: exact parity with F.cross_entropy(F.linear(...)) without [N, V] logits."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from bigsoftmax import functional as BF
from bigsoftmax.ops.lse import default_chunk_size, linear_cross_entropy


def _problem(N=40, V=301, d=24, dtype=torch.float32, bias=True, seed=0, ignore=False, weighted=False, zero_weight=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=dtype).requires_grad_()
    W = (torch.randn(V, d, generator=g, dtype=dtype) * 0.5).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    y = torch.randint(0, V, (N,), generator=g)
    if ignore:
        y[::4] = -100
    cw = None
    if weighted:
        cw = torch.rand(V, generator=g, dtype=dtype) * 2 + 0.1
        if zero_weight:
            cw[y[1]] = 0.0  # a kept row whose target class has weight 0
    return x, W, b, y, cw


def _grads(loss, up, params):
    return torch.autograd.grad((loss * up).sum(), [p for p in params if p is not None])


def _assert_parity(out, ref, params, rtol, atol, up=None):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    if up is None:
        up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7), dtype=ref.dtype)
    for a, c in zip(_grads(out, up, params), _grads(ref, up, params)):
        torch.testing.assert_close(a, c, rtol=rtol, atol=atol * max(1.0, c.abs().max().item()))


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    "reduction,eps,weighted,ignore,bias",
    list(itertools.product(["mean", "sum", "none"], [0.0, 0.15], [False, True], [False, True], [True, False])),
)
def test_parity_fp32_every_combination(reduction, eps, weighted, ignore, bias):
    """Loss and gradients equal F.cross_entropy(F.linear(...)) to 1e-5 in fp32, for every option combination."""
    x, W, b, y, cw = _problem(bias=bias, ignore=ignore, weighted=weighted, zero_weight=weighted)
    kw = dict(ignore_index=-100, reduction=reduction, label_smoothing=eps)
    ref = F.cross_entropy(F.linear(x, W, b), y, weight=cw, **kw)
    out = linear_cross_entropy(x, W, b, y, weight_class=cw, chunk_size=64, **kw)
    # mixed-sign upstream exercises the sign handling of the backward
    _assert_parity(out, ref, (x, W, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction,eps,weighted", [("mean", 0.1, True), ("sum", 0.0, False), ("none", 0.3, True)])
def test_parity_fp64_tight(reduction, eps, weighted):
    x, W, b, y, cw = _problem(dtype=torch.float64, ignore=True, weighted=weighted)
    kw = dict(reduction=reduction, label_smoothing=eps)
    ref = F.cross_entropy(F.linear(x, W, b), y, weight=cw, **kw)
    out = linear_cross_entropy(x, W, b, y, weight_class=cw, chunk_size=50, **kw)
    _assert_parity(out, ref, (x, W, b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 7, 64, 300, 301, 302, 10_000, None])
def test_chunk_sizes_that_do_not_divide_V(chunk):
    """Any chunk size gives the same result: 1, non-divisors of V=301, V itself, larger than V, automatic."""
    x, W, b, y, cw = _problem(dtype=torch.float64, weighted=True)
    ref = F.cross_entropy(F.linear(x, W, b), y, weight=cw, label_smoothing=0.2)
    out = linear_cross_entropy(x, W, b, y, weight_class=cw, label_smoothing=0.2, chunk_size=chunk)
    _assert_parity(out, ref, (x, W, b), rtol=1e-10, atol=1e-12)


def test_leading_dims_and_ignore_index_value():
    """[B, T, d] input with [B, T] target (flattened), a non-default ignore_index, reduction='none' keeps [B, T]."""
    g = torch.Generator().manual_seed(1)
    B, T, d, V = 3, 5, 8, 50
    x = torch.randn(B, T, d, generator=g, requires_grad=True)
    W = torch.randn(V, d, generator=g, requires_grad=True)
    b = torch.randn(V, generator=g, requires_grad=True)
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, 1] = y[2, 4] = 0  # ignore_index=0 (e.g. a padding id inside the vocabulary)
    for red in ("mean", "sum", "none"):
        ref = F.cross_entropy(F.linear(x, W, b).reshape(-1, V), y.reshape(-1), ignore_index=0, reduction=red)
        if red == "none":
            ref = ref.reshape(B, T)
        out = linear_cross_entropy(x, W, b, y, ignore_index=0, reduction=red, chunk_size=16)
        _assert_parity(out, ref, (x, W, b), rtol=1e-5, atol=1e-6)
        if red == "none":
            assert out[0, 1] == 0 and out[2, 4] == 0


def test_single_example_1d_input():
    """input [d] with a 0-dim target, like F.cross_entropy on unbatched logits."""
    x, W, b, y, _ = _problem(N=1, dtype=torch.float64)
    x1, y0 = x[0], y[0]
    for red in ("mean", "none"):
        ref = F.cross_entropy(F.linear(x1, W, b), y0, reduction=red)
        out = linear_cross_entropy(x1, W, b, y0, reduction=red, chunk_size=100)
        assert out.shape == ref.shape == ()
        _assert_parity(out, ref, (W, b), rtol=1e-10, atol=1e-12)


def test_all_rows_ignored_matches_torch():
    x, W, b, y, cw = _problem(N=6, dtype=torch.float64, weighted=True)
    y[:] = -100
    for red in ("mean", "sum", "none"):
        for w in (None, cw):
            ref = F.cross_entropy(F.linear(x, W, b), y, weight=w, reduction=red, label_smoothing=0.1)
            out = linear_cross_entropy(x, W, b, y, weight_class=w, reduction=red, label_smoothing=0.1)
            torch.testing.assert_close(out, ref, equal_nan=True)
            gx, gW, gb = torch.autograd.grad(out.sum() if red == "none" else out, (x, W, b))
            assert gx.abs().sum() == 0 and gW.abs().sum() == 0 and gb.abs().sum() == 0


def test_large_logits_are_stable():
    """Logits of size ~1e3 (exp overflows in fp32) still give the exact, finite loss."""
    x, W, b, y, _ = _problem(N=8, V=97)
    with torch.no_grad():
        W.mul_(200.0)
    ref = F.cross_entropy(F.linear(x, W, b), y)
    out = linear_cross_entropy(x, W, b, y, chunk_size=10)
    assert torch.isfinite(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-3)


def test_mixed_dtypes_promote_like_linear():
    """weight in another dtype: logits in promote_types(input, weight), statistics in >= fp32."""
    x, W, b, y, _ = _problem(N=10, V=60)
    Wb = W.detach().to(torch.bfloat16).requires_grad_()
    out = linear_cross_entropy(x, Wb, b, y)
    ref = F.cross_entropy(F.linear(x, Wb.float(), b), y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    gW = torch.autograd.grad(out, Wb)[0]
    assert gW.dtype == torch.bfloat16
    Wd = W.detach().double()
    out64 = linear_cross_entropy(x, Wd, None, y)
    assert out64.dtype == torch.float64


def test_functional_reexport_is_the_same_function():
    x, W, b, y, _ = _problem(N=5, V=20)
    assert torch.equal(BF.linear_cross_entropy(x, W, b, y), linear_cross_entropy(x, W, b, y))


# ----------------------------------------------------------------------------- autograd
@pytest.mark.parametrize(
    "reduction,eps,weighted,ignore",
    [("mean", 0.0, False, False), ("mean", 0.2, True, True), ("sum", 0.1, False, True), ("none", 0.25, True, True)],
)
def test_gradcheck_float64(reduction, eps, weighted, ignore):
    x, W, b, y, cw = _problem(N=6, V=11, d=3, dtype=torch.float64, ignore=ignore, weighted=weighted)
    if ignore:
        y[0] = -100

    def f(x_, W_, b_):
        return linear_cross_entropy(x_, W_, b_, y, weight_class=cw, reduction=reduction, label_smoothing=eps, chunk_size=4)

    assert torch.autograd.gradcheck(f, (x, W, b))


def test_double_backward_raises_clearly():
    x, W, b, y, _ = _problem(N=4, V=9, d=3, dtype=torch.float64)
    loss = linear_cross_entropy(x, W, b, y)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_retain_graph_backward_twice_and_partial_requires_grad():
    x, W, b, y, _ = _problem(N=9, V=30, d=5, dtype=torch.float64)
    loss = linear_cross_entropy(x, W, b, y, chunk_size=8)
    g1 = torch.autograd.grad(loss, (x, W, b), retain_graph=True)
    g2 = torch.autograd.grad(loss, (x, W, b))
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c)
    # only W requires grad (a frozen encoder): other grads are not computed
    xd = x.detach()
    gW = torch.autograd.grad(linear_cross_entropy(xd, W, None, y), W)[0]
    ref = torch.autograd.grad(F.cross_entropy(F.linear(xd, W), y), W)[0]
    torch.testing.assert_close(gW, ref)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_precompute_variant_matches_and_allows_one_backward(reduction):
    x, W, b, y, cw = _problem(dtype=torch.float64, ignore=True, weighted=True)
    kw = dict(weight_class=cw, reduction=reduction, label_smoothing=0.1, chunk_size=40)
    ref = F.cross_entropy(F.linear(x, W, b), y, weight=cw, reduction=reduction, label_smoothing=0.1)
    out = linear_cross_entropy(x, W, b, y, precompute=True, **kw)
    _assert_parity(out, ref, (x, W, b), rtol=1e-10, atol=1e-12, up=torch.tensor(-2.5, dtype=torch.float64))
    out = linear_cross_entropy(x, W, b, y, precompute=True, **kw)
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="single backward"):
        out.backward()


def test_no_grad_forward_equals():
    x, W, b, y, _ = _problem()
    with torch.no_grad():
        out = linear_cross_entropy(x, W, b, y, precompute=True)
        ref = F.cross_entropy(F.linear(x, W, b), y)
    assert out.grad_fn is None
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_autocast_bf16_close_to_fp32():
    """Inside torch.autocast(bf16) the logits are bf16 GEMMs; loss and grads stay finite and near fp32."""
    x, W, b, y, cw = _problem(N=32, V=200, d=32, ignore=True, weighted=True)
    ref = linear_cross_entropy(x, W, b, y, weight_class=cw, label_smoothing=0.1)
    rg = torch.autograd.grad(ref, (x, W, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy(x, W, b, y, weight_class=cw, label_smoothing=0.1, chunk_size=64)
        naive = F.cross_entropy(F.linear(x, W, b), y, weight=cw, label_smoothing=0.1)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, naive.float(), rtol=2e-2, atol=2e-2)
    og = torch.autograd.grad(out, (x, W, b))
    for a, c in zip(og, rg):
        assert a.dtype == c.dtype and torch.isfinite(a).all()
        torch.testing.assert_close(a, c, rtol=5e-2, atol=5e-2 * c.abs().max().item())


# ----------------------------------------------------------------------------- memory
def _max_single_alloc(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events()), default=0)


def test_never_allocates_N_by_V():
    """Forward+backward at N=64, V=200,000: no op allocates anywhere near the [N, V] logits (51 MB)."""
    N, V, d = 64, 200_000, 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, generator=g, requires_grad=True)
    W = torch.randn(V, d, generator=g, requires_grad=True)
    b = torch.zeros(V, requires_grad=True)
    y = torch.randint(0, V, (N,), generator=g)
    logits_bytes = N * V * 4

    def ours():
        linear_cross_entropy(x, W, b, y, label_smoothing=0.1).backward()

    def naive():
        F.cross_entropy(F.linear(x, W, b), y, label_smoothing=0.1).backward()

    # the probe sees the naive [N, V] logits, so it can fail
    assert _max_single_alloc(naive) >= logits_bytes
    peak = _max_single_alloc(ours)
    # the largest legitimate allocations: grad_W [V, d] (6.4 MB) and one [N, chunk] slice (8.4 MB)
    bound = max(V * d * 4, N * default_chunk_size(N, V) * 4) * 1.01
    assert bound < logits_bytes / 5
    assert peak <= bound, (peak, bound)


def test_default_chunk_size_bounds():
    assert default_chunk_size(1024, 1_000_000) == 2048
    assert default_chunk_size(1, 10**7) == 32768
    assert default_chunk_size(10**6, 10**7) == 512
    assert default_chunk_size(16, 100) == 100


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors():
    x, W, b, y, cw = _problem(N=6, V=10, d=4)
    with pytest.raises(ValueError, match=r"target contains class id 10, outside the allowed range \[0, 10\)"):
        linear_cross_entropy(x, W, b, torch.full((6,), 10))
    with pytest.raises(ValueError, match="outside the allowed range"):
        linear_cross_entropy(x, W, b, torch.full((6,), -1))
    with pytest.raises(TypeError, match="target must hold integer class ids"):
        linear_cross_entropy(x, W, b, y.float())
    with pytest.raises(ValueError, match=r"target shape \(5,\) must equal input's leading shape \(6,\)"):
        linear_cross_entropy(x, W, b, y[:5])
    with pytest.raises(ValueError, match=r"input must have shape \[..., d=4\]"):
        linear_cross_entropy(x[:, :3], W, b, y)
    with pytest.raises(ValueError, match=r"weight must have shape \[V, d\]"):
        linear_cross_entropy(x, W[None], b, y)
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        linear_cross_entropy(x.long(), W, b, y)
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        linear_cross_entropy(x, W.int(), b, y)
    with pytest.raises(ValueError, match=r"bias must have shape \[V=10\]"):
        linear_cross_entropy(x, W, b[:9], y)
    with pytest.raises(ValueError, match=r"weight_class must have shape \[V=10\]"):
        linear_cross_entropy(x, W, b, y, weight_class=torch.ones(9))
    with pytest.raises(TypeError, match="weight_class must be a floating-point tensor"):
        linear_cross_entropy(x, W, b, y, weight_class=torch.ones(10, dtype=torch.long))
    with pytest.raises(ValueError, match="weight_class must not require grad"):
        linear_cross_entropy(x, W, b, y, weight_class=torch.ones(10, requires_grad=True))
    with pytest.raises(ValueError, match="reduction must be one of"):
        linear_cross_entropy(x, W, b, y, reduction="avg")
    with pytest.raises(ValueError, match=r"label_smoothing must be a float in \[0.0, 1.0\]"):
        linear_cross_entropy(x, W, b, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        linear_cross_entropy(x, W, b, y, chunk_size=0)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        linear_cross_entropy(x, W, b, y, ignore_index=None)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        linear_cross_entropy(x.tolist(), W, b, y)


def test_linear_logsumexp_exact_and_differentiable():
    from bigsoftmax.ops.lse import linear_logsumexp

    x, W, b, _, _ = _problem(N=12, V=77, d=5, dtype=torch.float64)
    x3 = x.reshape(3, 4, 5)
    out, _ = linear_logsumexp(x3, W, b, chunk_size=10)
    ref = torch.logsumexp(F.linear(x3, W, b), -1)
    assert out.shape == (3, 4)
    _assert_parity(out, ref, (x, W, b), rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, c: linear_logsumexp(a, c, None, chunk_size=9)[0], (x[:3], W[:20].detach().requires_grad_()))


# ----------------------------------------------------------------------------- row-block mode
from bigsoftmax.ops import lse as _F  # noqa: E402


def test_rowblock_rows_policy():
    assert _F.rowblock_rows(1024, 1_000_000) == 0  # V = 1M: vocabulary slicing
    assert _F.rowblock_rows(1280, 42_370) == 98  # LM size: 98 rows x 42,370 classes <= 16 MiB
    assert _F.rowblock_rows(10, 100) == 10  # everything fits: one block
    assert _F.rowblock_rows(1024, 100_000) == 0  # 41 rows per block: too skinny
    assert _F.rowblock_rows(1280, 42_370, element_size=8) == 0  # fp64 halves the rows


@pytest.fixture
def small_rowblocks(monkeypatch):
    """Row blocks of 3 rows (budget 3 x V fp64 values), so a small problem spans several blocks;
    counts the calls of the row-block pass so the tests know the mode really ran."""
    calls = []
    real = _F._rowblock_forward

    def counting(*a, **k):
        calls.append(a[6])
        return real(*a, **k)

    monkeypatch.setattr(_F, "_MIN_ROWBLOCK", 2)
    monkeypatch.setattr(_F, "_rowblock_forward", counting)
    return calls


@pytest.mark.parametrize("reduction,eps,weighted,ignore", list(itertools.product(["mean", "sum"], [0.0, 0.15],
                                                                              [False, True], [False, True])))
def test_rowblock_mode_parity_and_gradcheck(small_rowblocks, monkeypatch, reduction, eps, weighted, ignore):
    x, W, b, y, cw = _problem(N=11, V=9, d=3, dtype=torch.float64, ignore=ignore, weighted=weighted, zero_weight=weighted)
    monkeypatch.setattr(_F, "_ROWBLOCK_BYTES", 3 * 9 * 8)
    kw = dict(ignore_index=-100, reduction=reduction, label_smoothing=eps)
    out = linear_cross_entropy(x, W, b, y, weight_class=cw, **kw)
    assert small_rowblocks == [3]  # the mode ran, with 3-row blocks
    ref = F.cross_entropy(F.linear(x, W, b), y, weight=cw, **kw)
    _assert_parity(out, ref, (x, W, b), rtol=1e-10, atol=1e-12, up=torch.tensor(1.7, dtype=torch.float64))
    # gradcheck backpropagates twice through one graph and demands bit-identical gradients
    # (issue 14 item 14): a retained graph's second backward reruns the same row blocks
    assert torch.autograd.gradcheck(lambda x_, W_, b_: linear_cross_entropy(x_, W_, b_, y, weight_class=cw, **kw),
                                    (x, W, b))


def test_rowblock_mode_fp32_parity_retain_graph_and_no_bias(small_rowblocks):
    """Default settings at V = 40,000 fp32 use 104-row blocks (3 blocks for 250 rows): same loss and
    gradients as the naive reference and as vocabulary slicing; a retained graph backpropagates twice."""
    x, W, b, y, _ = _problem(N=250, V=40_000, d=8)
    out = linear_cross_entropy(x, W, b, y)
    assert small_rowblocks == [104]
    ref = F.cross_entropy(F.linear(x, W, b), y)
    sliced = linear_cross_entropy(x, W, b, y, chunk_size=4096)
    assert small_rowblocks == [104]  # an explicit chunk_size keeps slicing
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(out * 3.0, (x, W, b), retain_graph=True)
    g2 = torch.autograd.grad(out * 3.0, (x, W, b))
    for a, a2, c, s in zip(g1, g2, torch.autograd.grad(ref * 3.0, (x, W, b)), torch.autograd.grad(sliced * 3.0, (x, W, b))):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a, s, rtol=1e-5, atol=1e-6)
        assert torch.equal(a2, a)  # deterministic: the second backward reruns the same blocks
    assert small_rowblocks == [104, 104]
    out_nb = linear_cross_entropy(x, W, None, y, reduction="sum")
    x64, W64 = (t.detach().double().requires_grad_() for t in (x, W))  # fp64 reference: sums of 40K terms
    ref_nb = F.cross_entropy(F.linear(x64, W64), y, reduction="sum")
    torch.testing.assert_close(out_nb.double(), ref_nb, rtol=1e-6, atol=1e-3)
    for a, c in zip(torch.autograd.grad(out_nb, (x, W)), torch.autograd.grad(ref_nb, (x64, W64))):
        torch.testing.assert_close(a.double(), c, rtol=1e-5, atol=3e-5)  # naive fp32 itself is off by 4.7e-5
    with torch.no_grad():  # evaluation: no row blocks, no gradients computed
        linear_cross_entropy(x, W, b, y)
    linear_cross_entropy(x, W, b, y, reduction="none")
    assert small_rowblocks == [104, 104, 104]

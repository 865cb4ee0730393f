"""AdaptiveSoftmax: torch parity, exact evaluation, pruned top-k, tying, cutoff selection, bad input."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import bigsoftmax
from bigsoftmax.heads import AdaptiveSoftmax, choose_cutoffs
from bigsoftmax.heads import adaptive as A

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _torch_module(d, V, cutoffs, head_bias=False, div=4.0, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.AdaptiveLogSoftmaxWithLoss(d, V, cutoffs, div_value=div, head_bias=head_bias, dtype=dtype)


def _ours_params(a: AdaptiveSoftmax):
    ps = [a.full_head_weight()]
    if a.head_bias_param is not None:
        ps.append(a.head_bias_param)
    for p, w in zip(a.tail_proj, a.tail_weight):
        ps += [p, w]
    return ps


def _torch_params(m):
    ps = [m.head.weight]
    if m.head.bias is not None:
        ps.append(m.head.bias)
    for i2h, h2o in m.tail:
        ps += [i2h.weight, h2o.weight]
    return ps


def _targets(V, cutoffs, N, g):
    """Targets that hit the shortlist and every tail cluster."""
    bounds = [0] + list(cutoffs) + [V]
    y = torch.randint(0, V, (N,), generator=g)
    for j in range(len(bounds) - 1):
        y[j] = bounds[j]
    return y


# ----------------------------------------------------------------------------- torch parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "d,V,cutoffs,head_bias,div",
    [(32, 200, [20, 80], False, 4.0), (16, 120, [10, 40, 90], True, 2.0), (16, 60, [5, 20, 35], True, 4.0)],
)
def test_matches_torch_module(dtype, d, V, cutoffs, head_bias, div):
    m = _torch_module(d, V, cutoffs, head_bias, div, dtype)
    a = AdaptiveSoftmax.from_torch(m)
    assert a.cutoffs == cutoffs and a.head_bias == head_bias
    g = torch.Generator().manual_seed(1)
    x = torch.randn(67, d, dtype=dtype, generator=g, requires_grad=True)
    y = _targets(V, cutoffs, 67, g)
    ref = m(x, y)
    tol = TOL[dtype]
    torch.testing.assert_close(a.target_log_prob(x, y), ref.output, **tol)
    loss = a(x, y)
    torch.testing.assert_close(loss, ref.loss, **tol)
    torch.testing.assert_close(a.log_prob(x), m.log_prob(x), **tol)
    assert torch.equal(a.predict(x), m.predict(x))
    g_ours = torch.autograd.grad(loss, [x] + _ours_params(a))
    g_ref = torch.autograd.grad(ref.loss, [x] + _torch_params(m))
    for u, v in zip(g_ours, g_ref):
        torch.testing.assert_close(u, v, **tol)
    # reduction='sum' / 'none'
    a.reduction = "none"
    torch.testing.assert_close(a(x, y), -ref.output, **tol)
    a.reduction = "sum"
    torch.testing.assert_close(a(x, y), -ref.output.sum(), **tol)


def test_to_torch_round_trip():
    a = AdaptiveSoftmax(12, 90, [10, 30], head_bias=True, generator=torch.Generator().manual_seed(0))
    m = a.to_torch()
    x = torch.randn(40, 12)
    y = torch.randint(0, 90, (40,))
    torch.testing.assert_close(m(x, y).loss, a(x, y), rtol=1e-6, atol=1e-6)
    b = AdaptiveSoftmax.from_torch(m)
    for p, q in zip(_ours_params(a), _ours_params(b)):
        assert torch.equal(p, q)
    with pytest.raises(TypeError, match="AdaptiveLogSoftmaxWithLoss"):
        AdaptiveSoftmax.from_torch(torch.nn.Linear(2, 2))


def test_state_dict_round_trip_and_generator_init():
    kw = dict(in_features=8, num_classes=50, cutoffs=[5, 20])
    a = AdaptiveSoftmax(**kw, generator=torch.Generator().manual_seed(3))
    b = AdaptiveSoftmax(**kw, generator=torch.Generator().manual_seed(3))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)  # seeded init repeats
    c = AdaptiveSoftmax(**kw, generator=torch.Generator().manual_seed(4))
    c.load_state_dict(a.state_dict())
    x = torch.randn(9, 8)
    torch.testing.assert_close(c.log_prob(x), a.log_prob(x))


# ----------------------------------------------------------------------------- exact evaluation
@st.composite
def _configs(draw):
    V = draw(st.integers(4, 60))
    J = draw(st.integers(1, min(3, V - 2)))
    cut = sorted(draw(st.lists(st.integers(1, V - 1), min_size=J, max_size=J, unique=True)))
    d = draw(st.integers(1, 9))
    div = draw(st.sampled_from([1.0, 2.0, 4.0]))
    head_bias = draw(st.booleans())
    N = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    return V, cut, d, div, head_bias, N, seed


def _make(cfg, dtype=torch.float64):
    V, cut, d, div, head_bias, N, seed = cfg
    g = torch.Generator().manual_seed(seed)
    a = AdaptiveSoftmax(d, V, cut, div_value=div, head_bias=head_bias, generator=g, dtype=dtype)
    with torch.no_grad():  # sharper distributions than the default init
        for p in a.parameters():
            p.mul_(3.0)
    x = torch.randn(N, d, generator=g, dtype=dtype)
    y = torch.randint(0, V, (N,), generator=g)
    return a, x, y


@settings(max_examples=40, deadline=None)
@given(_configs())
def test_log_prob_normalised_and_target_matches_gather(cfg):
    a, x, y = _make(cfg)
    lp = a.log_prob(x)
    assert lp.shape == (x.shape[0], a.num_classes)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(x.shape[0], dtype=lp.dtype), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.target_log_prob(x, y), lp.gather(1, y[:, None])[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a(x, y), -lp.gather(1, y[:, None]).mean(), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(_configs(), st.integers(1, 60), st.sampled_from([1, 3, 16384]))
def test_topk_equals_brute_force(cfg, k, chunk):
    a, x, _ = _make(cfg)
    a.eval_chunk = chunk  # exercise the chunked scoring of expanded clusters
    k = min(k, a.num_classes)
    v, i = a.topk(x, k)
    lp = a.log_prob(x)
    bv, _ = lp.topk(k, dim=1)
    torch.testing.assert_close(v, bv, rtol=1e-12, atol=1e-12)
    # ids may differ only between tied values: each returned id must carry its returned value
    torch.testing.assert_close(lp.gather(1, i), v, rtol=1e-12, atol=1e-12)
    assert all(len(set(r)) == k for r in i.tolist())


def test_topk_prunes_clusters_and_predict_matches_argmax(monkeypatch):
    V, d = 400, 8
    a = AdaptiveSoftmax(d, V, [10, 100], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a.head_weight.zero_()
        a.head_weight[10:].fill_(0.5)  # cluster logits 4 for x = +1s, other shortlist classes 0 ...
        a.head_weight[3].fill_(1.0)  # ... and class 3 (logit 8) dominates
    x = torch.ones(5, d)
    calls = []
    orig_linear = F.linear

    def counting_linear(inp, w, b=None):
        if any(w is p for p in a.tail_proj):
            calls.append(w.shape)
        return orig_linear(inp, w, b)

    monkeypatch.setattr(A.F, "linear", counting_linear)
    v, i = a.topk(x, 1)
    assert calls == []  # no tail cluster could beat class 3: nothing expanded
    assert i[:, 0].tolist() == [3] * 5
    v3, _ = a.topk(x, 3)  # the 3rd best needs the tails: they get expanded
    assert len(calls) > 0
    monkeypatch.setattr(A.F, "linear", orig_linear)
    torch.testing.assert_close(v3, a.log_prob(x).topk(3, dim=1)[0])
    g = torch.Generator().manual_seed(1)
    b = AdaptiveSoftmax(d, V, [10, 100], div_value=2.0, generator=g)
    xr = torch.randn(200, d, generator=g) * 4
    lp = b.log_prob(xr)
    pred = b.predict(xr)
    assert pred.shape == (200,) and (pred >= 10).any()  # some predictions come from the tails
    torch.testing.assert_close(lp.gather(1, pred[:, None])[:, 0], lp.max(-1).values)


def test_leading_dims_and_ignore_index():
    a = AdaptiveSoftmax(6, 40, [4, 15], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 40, (3, 5), generator=g)
    y[0, 1] = y[2, 4] = -100
    keep = y != -100
    lp = a.log_prob(x)
    assert lp.shape == (3, 5, 40)
    tl = a.target_log_prob(x, y)
    assert tl.shape == (3, 5)
    assert torch.all(tl[~keep] == 0)
    ref = lp.gather(-1, y.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(tl[keep], ref[keep])
    torch.testing.assert_close(a(x, y), -ref[keep].mean())
    a.reduction = "none"
    per = a(x, y)
    assert per.shape == (3, 5) and torch.all(per[~keep] == 0)
    torch.testing.assert_close(per[keep], -ref[keep])
    v, i = a.topk(x, 4)
    assert v.shape == i.shape == (3, 5, 4)
    assert a.predict(x).shape == (3, 5)
    a.reduction = "mean"
    assert torch.isnan(a(x, torch.full((3, 5), -100)))  # like nn.CrossEntropyLoss
    # gradient of ignored rows is exactly zero
    xr = x.clone().requires_grad_()
    a(xr, y).backward()
    assert torch.all(xr.grad[~keep] == 0) and torch.all(xr.grad[keep].abs().sum(-1) > 0)


# ----------------------------------------------------------------------------- gradients
def test_gradcheck_float64():
    torch.manual_seed(0)
    a = AdaptiveSoftmax(6, 30, [4, 12, 20], div_value=2.0, head_bias=True, dtype=torch.float64)
    x = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 4, 11, 12, 19, 20, 29, 5, -100, 25])
    params = [a.head_weight, a.head_bias_param, *a.tail_proj, *a.tail_weight]
    names = [n for n, _ in a.named_parameters()]
    assert len(names) == len(params)

    def f(x, *ps):
        sd = dict(zip(names, ps))
        return torch.func.functional_call(a, sd, (x, y))

    assert torch.autograd.gradcheck(f, (x, *params))
    a.reduction = "none"
    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_logsumexp_value_and_gradcheck(recompute, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(11, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    y = torch.randint(0, 11, (5,), generator=g)
    lse, zt = A.linear_logsumexp(x, W, b, y, recompute=recompute, chunk_size=4)
    z = F.linear(x, W, b)
    torch.testing.assert_close(lse, torch.logsumexp(z, 1))
    torch.testing.assert_close(zt, z.gather(1, y[:, None])[:, 0])
    inputs = (x, W) + ((b,) if bias else ())

    def f(x, W, *rest):
        lse, zt = A.linear_logsumexp(x, W, rest[0] if rest else None, y, recompute=recompute, chunk_size=4)
        return lse * 0.7 + lse.square() - 1.3 * zt  # both outputs, with different upstream weights

    assert torch.autograd.gradcheck(f, inputs)
    # upstream of mixed sign (the recompute path folds a positive upstream into the exponent)
    sign = torch.tensor([1.0, -1.0, 2.0, -0.5, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, W, *r: A.linear_logsumexp(x, W, r[0] if r else None, y, recompute=recompute, chunk_size=4)[0] * sign,
        inputs,
    )
    # lse alone (no target), and gradient of z_y alone
    assert torch.autograd.gradcheck(
        lambda x, W, *r: A.linear_logsumexp(x, W, r[0] if r else None, recompute=recompute, chunk_size=3)[0], inputs
    )
    assert torch.autograd.gradcheck(
        lambda x, W, *r: A.linear_logsumexp(x, W, r[0] if r else None, y, recompute=recompute)[1], inputs
    )


def test_linear_logsumexp_extreme_logits_stay_finite():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    W = torch.tensor([[300.0, 0.0], [-300.0, 0.0], [0.0, 200.0]], requires_grad=True)
    y = torch.tensor([0, 2])
    for rc in (True, False):
        lse, zt = A.linear_logsumexp(x, W, None, y, recompute=rc, chunk_size=1)
        torch.testing.assert_close(lse, torch.logsumexp(x @ W.t(), 1))
        (lse - zt).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(W.grad).all()
        x.grad = W.grad = None


def test_autocast_bf16_correctness():
    a = AdaptiveSoftmax(32, 300, [30, 120], generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=g, requires_grad=True)
    y = _targets(300, [30, 120], 64, g)
    ref = a(x, y)
    gref = torch.autograd.grad(ref, x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = a(x, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)
    gx = torch.autograd.grad(loss, x)[0]
    assert gx.dtype == torch.float32
    assert F.cosine_similarity(gx.flatten(), gref.flatten(), dim=0) > 0.99


# ----------------------------------------------------------------------------- weight tying
def test_shortlist_tied_to_embedding_view_and_gradients():
    V, d, c1 = 80, 10, 12
    emb = torch.nn.Embedding(V, d)
    a = AdaptiveSoftmax(d, V, [c1, 40], tie_weight=emb, generator=torch.Generator().manual_seed(0))
    assert a.tied_weight is emb.weight
    assert a.shortlist_weight.data_ptr() == emb.weight.data_ptr()  # a view, not a copy
    assert a.shortlist_weight._base is emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": a})
    n_unique = len(list(model.parameters()))
    assert n_unique == len(list(a.parameters()))  # the embedding weight is counted once
    tokens = torch.randint(0, V, (4, 6))
    y = torch.randint(0, V, (4, 6))
    y[0, :3] = torch.tensor([0, 5, 11])  # shortlist targets
    loss = a(emb(tokens), y)
    loss.backward()
    # gradient into the shared parameter = input-side part + output-side (shortlist rows) part
    emb2 = torch.nn.Embedding(V, d)
    emb2.weight.data.copy_(emb.weight.data)
    u = AdaptiveSoftmax(d, V, [c1, 40])
    with torch.no_grad():
        u.head_weight.copy_(a.full_head_weight())
        for j in range(2):
            u.tail_proj[j].copy_(a.tail_proj[j])
            u.tail_weight[j].copy_(a.tail_weight[j])
    loss_u = u(emb2(tokens), y)
    torch.testing.assert_close(loss_u, loss)
    loss_u.backward()
    expect = emb2.weight.grad.clone()
    expect[:c1] += u.head_weight.grad[:c1]
    torch.testing.assert_close(emb.weight.grad, expect)
    torch.testing.assert_close(a.cluster_weight.grad, u.head_weight.grad[c1:])
    assert emb.weight.grad[:c1].abs().sum() > 0
    # updating the embedding changes the head (shared storage)
    x = torch.randn(3, d)
    before = a.log_prob(x)
    with torch.no_grad():
        emb.weight[:c1] += 1.0
    assert not torch.allclose(before, a.log_prob(x))
    # converting to torch and back keeps the numbers
    m = a.to_torch()
    torch.testing.assert_close(m.log_prob(x), a.log_prob(x))
    b = AdaptiveSoftmax.from_torch(m, tie_weight=torch.nn.Embedding(V, d))
    torch.testing.assert_close(b.log_prob(x), a.log_prob(x))


def test_tail_tied_to_adaptive_input_weights():
    d, V, cut = 16, 100, [10, 40]
    tails = [torch.nn.Parameter(torch.randn(30, 4)), torch.nn.Parameter(torch.randn(60, 1))]
    a = AdaptiveSoftmax(d, V, cut, tie_tail=tails)
    assert a.tail_weight[0] is tails[0] and a.tail_weight[1] is tails[1]
    y = torch.tensor([15, 50, 3])
    a(torch.randn(3, d), y).backward()
    assert tails[0].grad.abs().sum() > 0 and tails[1].grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"tie_tail\[1\] must be \[60, 1\]"):
        AdaptiveSoftmax(d, V, cut, tie_tail=[tails[0], torch.nn.Parameter(torch.randn(60, 2))])
    with pytest.raises(ValueError, match="2 matrices"):
        AdaptiveSoftmax(d, V, cut, tie_tail=[tails[0]])


def test_tie_weight_errors():
    with pytest.raises(ValueError, match="tie_weight must be"):
        AdaptiveSoftmax(8, 50, [20, 30], tie_weight=torch.nn.Embedding(10, 8))  # fewer rows than the shortlist
    with pytest.raises(ValueError, match="tie_weight must be"):
        AdaptiveSoftmax(8, 50, [5, 30], tie_weight=torch.nn.Embedding(50, 6))
    with pytest.raises(TypeError, match="tie_weight"):
        AdaptiveSoftmax(8, 50, [5, 30], tie_weight=torch.randn(50, 8))


# ----------------------------------------------------------------------------- cutoffs from counts
def _zipf_counts(V, s=1.15, scale=1e9):
    return np.floor(scale * np.arange(1, V + 1, dtype=np.float64) ** -s) + 1


@pytest.mark.parametrize("V,d", [(10_000, 256), (100_000, 256), (50_000, 128)])
def test_choose_cutoffs_beats_naive_on_zipf(V, d):
    counts = _zipf_counts(V)
    cut = choose_cutoffs(counts, d)
    assert all(isinstance(c, int) for c in cut)
    assert all(0 < a < b < V for a, b in zip(cut, cut[1:])) and 0 < cut[0] and cut[-1] < V
    ours = A.adaptive_cost(counts, cut, d)
    naive = [[V // 50, V // 5], [V // 10], [V // 100, V // 10, V // 2], [V // 4, V // 2, 3 * V // 4]]
    for nv in naive:
        assert ours < A.adaptive_cost(counts, nv, d)
    assert ours < 0.5 * A.adaptive_cost(counts, [V // 50, V // 5], d)  # a large saving, not a tie
    # the GPU cost model (GEMM floor + launch overhead) and a quality constraint
    cut_gpu = choose_cutoffs(counts, d, min_gemm_flops=1e8, gemm_overhead=1e6, min_head_mass=0.8)
    p = counts / counts.sum()
    assert p[: cut_gpu[0]].sum() >= 0.8
    cost_gpu = A.adaptive_cost(counts, cut_gpu, d, min_gemm_flops=1e8, gemm_overhead=1e6)
    assert cost_gpu <= A.adaptive_cost(counts, [V // 50, V // 5], d, min_gemm_flops=1e8, gemm_overhead=1e6)


@pytest.mark.parametrize("J", [1, 2, 3])
@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("mg", [0.0, 2e4])
def test_choose_cutoffs_is_exact_on_small_vocab(J, increasing, mg):
    V, d = 24, 32
    rng = np.random.default_rng(J)
    counts = np.sort(rng.integers(1, 1000, V))[::-1].astype(float)
    cut = choose_cutoffs(counts, d, num_clusters=J, div_value=2.0, min_gemm_flops=mg, increasing_sizes=increasing)
    assert len(cut) == J
    best = np.inf
    for c in itertools.combinations(range(1, V), J):
        sizes = np.diff(list(c) + [V])
        if increasing and np.any(np.diff(sizes) < 0):
            continue
        best = min(best, A.adaptive_cost(counts, list(c), d, div_value=2.0, min_gemm_flops=mg))
    got = A.adaptive_cost(counts, cut, d, div_value=2.0, min_gemm_flops=mg)
    assert got == pytest.approx(best, rel=1e-12)
    if increasing:
        assert np.all(np.diff(np.diff(cut + [V])) >= 0)


def test_constructor_with_counts_chooses_cutoffs_and_validates():
    counts = _zipf_counts(3000)
    a = AdaptiveSoftmax(64, 3000, counts=counts)
    assert a.cutoffs == choose_cutoffs(counts, 64)
    b = AdaptiveSoftmax(64, 3000, cutoffs=[100, 1000], counts=torch.tensor(counts))
    assert b.cutoffs == [100, 1000]
    with pytest.raises(ValueError, match="non-increasing"):
        AdaptiveSoftmax(64, 3000, counts=counts[::-1].copy())
    with pytest.raises(ValueError, match="length num_classes=3000"):
        AdaptiveSoftmax(64, 3000, counts=counts[:-1])
    bad = counts.copy()
    bad[-1] = 0  # a trailing zero count is floored (bigsoftmax.vocab), not refused
    assert AdaptiveSoftmax(64, 3000, counts=bad).cutoffs == choose_cutoffs(bigsoftmax.vocab.smooth_counts(bad, mode="floor"), 64)
    bad[-1] = -1
    with pytest.raises(ValueError, match="must be positive"):
        AdaptiveSoftmax(64, 3000, counts=bad)
    bad[-1] = -3
    with pytest.raises(ValueError, match="must be positive"):
        choose_cutoffs(bad, 64)
    with pytest.raises(ValueError, match="give cutoffs"):
        AdaptiveSoftmax(64, 3000)
    with pytest.raises(ValueError, match="1-D"):
        choose_cutoffs(np.ones((3, 3)), 8)
    with pytest.raises(ValueError, match="num_clusters"):
        choose_cutoffs(counts, 64, num_clusters=0)
    with pytest.raises(ValueError, match="min_head_mass"):
        choose_cutoffs(counts, 64, min_head_mass=1.5)
    with pytest.raises(ValueError, match="in_features"):
        choose_cutoffs(counts, 0)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "cutoffs,match",
    [
        ([], "at least one cutoff"),
        ([10, 10], "strictly increasing"),
        ([20, 10], "strictly increasing"),
        ([0, 10], r"in \(0, num_classes=50\)"),
        ([10, 50], r"in \(0, num_classes=50\)"),
        ([-5], r"in \(0, num_classes=50\)"),
    ],
)
def test_bad_cutoffs(cutoffs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSoftmax(8, 50, cutoffs)


def test_bad_arguments_and_targets():
    with pytest.raises(TypeError, match="ints"):
        AdaptiveSoftmax(8, 50, [2.5, 10])
    with pytest.raises(ValueError, match="div_value"):
        AdaptiveSoftmax(8, 50, [5], div_value=0)
    with pytest.raises(ValueError, match="reduction"):
        AdaptiveSoftmax(8, 50, [5], reduction="avg")
    a = AdaptiveSoftmax(8, 50, [5, 20])
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"class id 50, outside the allowed range \[0, 50\)"):
        a(x, torch.tensor([1, 2, 3, 50]))
    with pytest.raises(ValueError, match="class id -1"):
        a.target_log_prob(x, torch.tensor([1, -1, 3, 4]))
    with pytest.raises(TypeError, match="integer class ids"):
        a(x, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="target shape"):
        a(x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="in_features"):
        a(torch.randn(4, 7), torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="k must be an int in"):
        a.topk(x, 51)
    with pytest.raises(ValueError, match="k must be an int in"):
        a.topk(x, 0)


def test_zero_dim_tail_clusters_warn_with_the_dims():
    """Issue 14 item 10: floor(8 / 4**j) = [2, 0, 0] leaves two clusters stuck at uniform."""
    with pytest.warns(UserWarning, match=r"tail dims .* = \[2, 0, 0\] include 0"):
        AdaptiveSoftmax(8, 50, cutoffs=[10, 20, 30])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AdaptiveSoftmax(16, 50, cutoffs=[10, 20])  # dims [4, 1]: no warning

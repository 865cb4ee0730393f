"""Margin and other softmax variants: parity (pytorch-metric-learning, torch, a naive acos formulation),
gradcheck, numerics at θ = 0 / π / zero norm / autocast, sampled training over candidates, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax import samplers as S
from bigsoftmax.heads import margin as M

F64 = torch.float64
MARGIN_HEADS = {
    "lsoftmax": lambda d, V, **kw: M.LargeMarginSoftmax(d, V, m=3, **kw),
    "lsoftmax_lambda": lambda d, V, **kw: M.LargeMarginSoftmax(d, V, m=2, lambda_schedule=2.5, **kw),
    "sphereface": lambda d, V, **kw: M.AngularSoftmax(d, V, m=4, **kw),
    "amsoftmax": lambda d, V, **kw: M.AdditiveMarginSoftmax(d, V, **kw),
    "cosface": lambda d, V, **kw: M.CosFace(d, V, **kw),
    "arcface": lambda d, V, **kw: M.ArcFace(d, V, **kw),
    "arcface_easy": lambda d, V, **kw: M.ArcFace(d, V, s=16.0, easy_margin=True, **kw),
}
OTHER_HEADS = {
    "l2": lambda d, V, **kw: M.L2ConstrainedSoftmax(d, V, alpha=4.0, **kw),
    "weighted": lambda d, V, **kw: M.WeightedSoftmax(d, V, torch.linspace(0.5, 2.0, V), **kw),
    "soft": lambda d, V, **kw: M.SoftSoftmax(d, V, temperature=2.0, label_smoothing=0.2, **kw),
}
ALL_HEADS = {**MARGIN_HEADS, **OTHER_HEADS}


def _data(N=12, d=6, V=9, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=dtype)
    y = torch.randint(0, V, (N,), generator=g)
    return x, y


def _make(name, d=6, V=9, dtype=F64, seed=0, **kw):
    torch.manual_seed(seed)
    head = ALL_HEADS[name](d, V, **kw).to(dtype)
    if getattr(head, "bias", None) is not None:
        with torch.no_grad():
            head.bias.normal_()
    return head


# ----------------------------------------------------------------------------- naive references
def _naive_target_cos(kind, cos, m, lam=0.0, easy=False):
    """The papers' formulas written with acos (independent of the library's Chebyshev / sqrt forms)."""
    theta = torch.acos(cos.clamp(-1, 1))
    if kind == "psi":
        k = torch.floor(theta * m / math.pi).clamp(max=m - 1)
        psi = (-1.0) ** k * torch.cos(m * theta) - 2 * k
        return (lam * cos + psi) / (1 + lam)
    if kind == "add":
        return cos - m
    if easy:
        return torch.where(cos > 0, torch.cos(theta + m), cos)
    return torch.where(theta + m <= math.pi, torch.cos(theta + m), cos - m * math.sin(m))


def _naive_loss(head, x, y):
    W = head.weight
    xn, wn = x.norm(dim=1), W.norm(dim=1)
    cos = (x @ W.t()) / (xn[:, None] * wn[None, :])
    if isinstance(head, M.LargeMarginSoftmax):
        mag, kind = xn[:, None] * wn[None, :], "psi"
    elif isinstance(head, M.AngularSoftmax):
        mag, kind = xn[:, None].expand_as(cos), "psi"
    else:
        mag, kind = torch.full_like(cos, head.s), ("add" if isinstance(head, M.AdditiveMarginSoftmax) else "arc")
    lam = head.current_lambda() if kind == "psi" else 0.0
    ct = cos.gather(1, y[:, None])[:, 0]
    tgt = _naive_target_cos(kind, ct, head.m, lam, getattr(head, "easy_margin", False))
    logits = mag * cos
    logits = logits.scatter(1, y[:, None], (mag.gather(1, y[:, None])[:, 0] * tgt)[:, None])
    return F.cross_entropy(logits, y, reduction="none")


@pytest.mark.parametrize("name", list(MARGIN_HEADS))
def test_dense_margin_loss_matches_naive_acos_formulas(name):
    head = _make(name)
    x, y = _data()
    x[:3] = -head.weight[y[:3]].detach() * 2 + 0.05 * x[:3]  # θ near π: exercises ψ's last sector / ArcFace fallback
    x.requires_grad_(True)
    ref = _naive_loss(head, x, y).mean()  # uses the λ of the coming step
    ours = head(x, y)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    ga = torch.autograd.grad(ours, (x, head.weight))
    gb = torch.autograd.grad(ref, (x, head.weight))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- pytorch-metric-learning
@pytest.mark.parametrize(
    "which,m",
    [("arcface", 0.5), ("arcface", 1.2), ("cosface", 0.35), ("amsoftmax", 0.35), ("sphereface", 4), ("sphereface", 3),
     ("lsoftmax", 4), ("lsoftmax", 2)],
)
def test_parity_with_pytorch_metric_learning(which, m):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    V, d, N = 11, 7, 24
    torch.manual_seed(1)
    if which == "arcface":
        ref = pml.ArcFaceLoss(V, d, margin=math.degrees(m), scale=64)  # pml takes degrees
        ours = M.ArcFace(d, V, s=64, m=m)
    elif which == "cosface":
        ref, ours = pml.CosFaceLoss(V, d, margin=m, scale=64), M.CosFace(d, V, s=64, m=m)
    elif which == "amsoftmax":  # AM-Softmax = CosFace with s = 30
        ref, ours = pml.CosFaceLoss(V, d, margin=m, scale=30), M.AdditiveMarginSoftmax(d, V)
    elif which == "sphereface":
        ref, ours = pml.SphereFaceLoss(V, d, margin=m, scale=1), M.AngularSoftmax(d, V, m=m, lambda_schedule=0.0)
    else:
        ref, ours = pml.LargeMarginSoftmaxLoss(V, d, margin=m, scale=1), M.LargeMarginSoftmax(d, V, m=m)
    ref, ours = ref.double(), ours.double()
    with torch.no_grad():
        ours.weight.copy_(ref.W.t())  # pml stores W as [d, V]
    x, y = _data(N, d, V, seed=2)
    x[:4] = -ours.weight[y[:4]].detach() + 0.1 * x[:4]  # large angles: ArcFace's θ > π − m branch
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    l_ref, l_ours = ref(x1, y), ours(x2, y)
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-9, atol=1e-9)
    l_ref.backward()
    l_ours.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ours.weight.grad, ref.W.grad.t(), rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- torch parity of the simple heads
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_softmax_matches_torch_cross_entropy(reduction):
    V, d = 9, 6
    head = M.WeightedSoftmax(d, V, torch.linspace(0.1, 3.0, V), reduction=reduction, ignore_index=-1).double()
    with torch.no_grad():
        head.bias.normal_()
    x, y = _data(V=V)
    y[[2, 5]] = -1
    x.requires_grad_(True)
    crit = torch.nn.CrossEntropyLoss(weight=head.class_weights.double(), ignore_index=-1, reduction=reduction)
    ref = crit(F.linear(x, head.weight, head.bias), y)
    ours = head(x, y)
    torch.testing.assert_close(ours, ref)
    ga = torch.autograd.grad(ours.sum(), (x, head.weight, head.bias))
    gb = torch.autograd.grad(ref.sum(), (x, head.weight, head.bias))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("T,eps", [(1.0, 0.0), (2.0, 0.1), (0.5, 0.3), (3.0, 1.0)])
def test_soft_softmax_matches_torch_label_smoothing(T, eps):
    V, d = 9, 6
    head = M.SoftSoftmax(d, V, temperature=T, label_smoothing=eps, ignore_index=-7).double()
    with torch.no_grad():
        head.bias.normal_()
    x, y = _data(V=V)
    y[0] = -7
    x.requires_grad_(True)
    z = F.linear(x, head.weight, head.bias) / T
    ref = F.cross_entropy(z, y, label_smoothing=eps, ignore_index=-7)
    ours = head(x, y)
    torch.testing.assert_close(ours, ref)
    params = (x, head.weight, head.bias)
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(head.log_prob(x), torch.log_softmax(z, -1))  # eval: the tempered softmax


@pytest.mark.parametrize("learn", [False, True])
def test_l2_constrained_matches_torch(learn):
    V, d = 9, 6
    head = M.L2ConstrainedSoftmax(d, V, alpha=5.0, learn_alpha=learn).double()
    x, y = _data(V=V)
    ref = F.cross_entropy(F.linear(5.0 * F.normalize(x, dim=1), head.weight, head.bias), y)
    ours = head(x, y)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    assert (head.alpha.grad is not None) == learn
    if learn:
        assert torch.isfinite(head.alpha.grad)


def test_l2_alpha_lower_bound_formula():
    assert M.l2_alpha_lower_bound(10, 0.9) == pytest.approx(math.log(0.9 * 8 / 0.1))
    assert M.l2_alpha_lower_bound(10_000, 0.99) == pytest.approx(math.log(0.99 * 9998 / 0.01))


def test_class_weight_helpers():
    w = M.inverse_frequency_weights([1, 2, 4])
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25]) * (3 / 1.75))
    assert float(w.sum()) == pytest.approx(3.0)
    torch.testing.assert_close(M.inverse_frequency_weights([1, 4, 0], power=0.5, normalize=False),
                               torch.tensor([1.0, 0.5, 1.0]))  # unseen class counts as a singleton
    torch.testing.assert_close(M.inverse_frequency_weights([3, 7], power=0.0), torch.ones(2))
    n = torch.tensor([1.0, 10.0, 100.0])
    beta = 0.99
    raw = (1 - beta) / (1 - beta**n)
    torch.testing.assert_close(M.effective_number_weights(n, beta), (raw * 3 / raw.sum()).float())
    torch.testing.assert_close(M.effective_number_weights(n, 0.0), torch.ones(3))  # β = 0: uniform
    # β → 1 approaches inverse frequency
    torch.testing.assert_close(M.effective_number_weights(n, 1 - 1e-9), M.inverse_frequency_weights(n), rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------- margin functions
@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 6), a=st.floats(0.0, math.pi), b=st.floats(0.0, math.pi))
def test_psi_is_decreasing_and_extends_cos_m_theta(m, a, b):
    lo, hi = min(a, b), max(a, b)
    c = torch.tensor([math.cos(lo), math.cos(hi)], dtype=F64)
    psi = M.sphere_psi(c, m)
    assert psi[0] >= psi[1] - 1e-12  # decreasing in θ
    if hi <= math.pi / m:
        torch.testing.assert_close(psi, torch.cos(m * torch.tensor([lo, hi], dtype=F64)))
    assert -2 * m + 1 - 1e-12 <= float(psi.min()) and float(psi.max()) <= 1 + 1e-12


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_psi_continuous_at_sector_boundaries(m):
    for k in range(1, m):
        t = k * math.pi / m
        c = torch.tensor([math.cos(t - 1e-9), math.cos(t + 1e-9)], dtype=F64)
        p = M.sphere_psi(c, m)
        assert abs(float(p[0] - p[1])) < 1e-6
    c = torch.linspace(-1, 1, 101, dtype=F64)
    torch.testing.assert_close(M.sphere_psi(c, 1), c)
    torch.testing.assert_close(M.chebyshev_cos(c, m), torch.cos(m * torch.acos(c)))


@settings(max_examples=60, deadline=None)
@given(m=st.floats(0.0, math.pi / 2), t1=st.floats(0.0, math.pi), t2=st.floats(0.0, math.pi))
def test_arc_margin_is_below_cos_and_decreasing(m, t1, t2):
    lo, hi = min(t1, t2), max(t1, t2)
    c = torch.tensor([math.cos(lo), math.cos(hi)], dtype=F64)
    g = M.arc_margin_cos(c, m)
    assert bool((g <= c + 1e-12).all())
    assert g[0] >= g[1] - 1e-9


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["lsoftmax", "sphereface", "amsoftmax", "arcface"]), seed=st.integers(0, 10_000))
def test_margin_loss_never_below_margin_free_loss(name, seed):
    head = _make(name, seed=seed)
    if hasattr(head, "lambda_schedule"):
        head.lambda_schedule = 0.0
    x, y = _data(seed=seed)
    with_margin = head(x, y)
    free = -head.target_log_prob(x, y).mean()  # margin-free evaluation NLL
    assert float(with_margin.detach()) >= float(free.detach()) - 1e-9


# ----------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("name", list(ALL_HEADS))
def test_gradcheck_float64(name):
    head = _make(name, d=4, V=5)
    x, y = _data(6, 4, 5, seed=3)
    x.requires_grad_(True)
    params = [p for p in head.parameters()]

    def f(x, *ps):
        return head(x, y)

    if isinstance(head, M.AngularSoftmax) or isinstance(head, M.LargeMarginSoftmax):
        head.lambda_schedule = 1.5  # a fixed λ: each call must see the same function
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def test_gradcheck_sampled_arcface_float64():
    V, d = 12, 3
    head = M.ArcFace(d, V, s=8.0, num_sampled=4, seed=0).double()
    x, y = _data(4, d, V, seed=4)
    x.requires_grad_(True)
    sv = head.sampler.sample(y[:, None], 4, generator=head.generator)

    def f(x, w):
        return head.sampled_loss(x, y, sv)

    assert torch.autograd.gradcheck(f, (x, head.weight), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("name", list(MARGIN_HEADS))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_finite_at_theta_zero_pi_and_zero_norm(name, dtype):
    head = _make(name, dtype=dtype)
    _, y = _data()
    W = head.weight.detach()
    x = W[y].clone() * 3.0  # θ_y = 0 exactly
    x[4:8] = -W[y[4:8]] * 2.0  # θ_y = π exactly
    x[8] = 0.0  # zero-norm feature
    x.requires_grad_(True)
    for sampled in (False, True):
        if sampled:
            head2 = ALL_HEADS[name](6, 9, num_sampled=4, seed=0).to(dtype)
            head2.load_state_dict(head.state_dict())
        h = head2 if sampled else head
        loss = h(x, y)
        gx, gw = torch.autograd.grad(loss, (x, h.weight))
        assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gw).all(), (sampled, loss)
    for v in (head.log_prob(x), head.target_log_prob(x, y), head.embed(x)):
        assert torch.isfinite(v).all()


@pytest.mark.parametrize("name", list(ALL_HEADS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu_close_to_fp32(name, dtype):
    d, V = 16, 40
    head = _make(name, d=d, V=V, dtype=torch.float32)
    x, y = _data(32, d, V, seed=5, dtype=torch.float32)
    x.requires_grad_(True)
    ref = head(x, y)
    gref = torch.autograd.grad(ref, x)[0]
    if hasattr(head, "iteration"):
        head.iteration.zero_()
    with torch.autocast("cpu", dtype=dtype):
        out = head(x, y)
        lp = head.log_prob(x)
    g = torch.autograd.grad(out, x)[0]
    assert out.dtype == torch.float32 and torch.isfinite(out) and torch.isfinite(g).all() and torch.isfinite(lp).all()
    # only the GEMMs run in half precision (unit roundoff u = 2^-8 bf16, 2^-11 fp16); margins, logsumexp in fp32
    u = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    assert abs(float(out) - float(ref)) <= u * max(1.0, abs(float(ref)))
    assert float((g - gref).norm()) <= 5 * u * float(gref.norm())


# ----------------------------------------------------------------------------- evaluation protocol
@pytest.mark.parametrize("name", list(ALL_HEADS))
def test_eval_protocol_is_exact_and_margin_free(name):
    head = _make(name)
    x, y = _data()
    head.eval_chunk = 4  # several class chunks
    lp = head.log_prob(x)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(len(x), dtype=F64))
    torch.testing.assert_close(head.target_log_prob(x, y), lp.gather(1, y[:, None])[:, 0])
    v, i = head.topk(x, 3)
    v2, i2 = lp.topk(3, dim=-1)
    torch.testing.assert_close(v, v2)
    assert torch.equal(i, i2)
    # documented evaluation logits
    W = head.weight
    if isinstance(head, M.LargeMarginSoftmax):
        z = x @ W.t()
    elif isinstance(head, M.AngularSoftmax):
        z = x @ F.normalize(W, dim=1).t()
    elif isinstance(head, M.MarginHead):
        z = head.s * F.normalize(x, dim=1) @ F.normalize(W, dim=1).t()
    elif isinstance(head, M.L2ConstrainedSoftmax):
        z = F.linear(4.0 * F.normalize(x, dim=1), W, head.bias)
    elif isinstance(head, M.SoftSoftmax):
        z = F.linear(x, W, head.bias) / 2.0
    else:
        z = F.linear(x, W, head.bias)
    torch.testing.assert_close(lp, torch.log_softmax(z, -1))
    head.eval()
    torch.testing.assert_close(head(x, y), -lp.gather(1, y[:, None]).mean())  # eval forward: exact NLL


@pytest.mark.parametrize("name", list(MARGIN_HEADS))
def test_leading_dims_ignore_index_reduction_none_and_chunking(name):
    head = _make(name)
    head.reduction = "none"
    x, y = _data(12)
    if hasattr(head, "lambda_schedule"):
        head.lambda_schedule = 0.0
    y[3] = head.ignore_index
    out = head(x.reshape(3, 4, -1), y.reshape(3, 4))
    assert out.shape == (3, 4) and float(out.reshape(-1)[3]) == 0.0
    head.eval_chunk = 2
    keep = y != head.ignore_index
    ref = M.margin_softmax_loss(x[keep], head.weight, y[keep], head.margin_cos, scale=head.scale,
                                normalize_features=head.normalize_features, normalize_weights=head.normalize_weights)
    torch.testing.assert_close(out.reshape(-1)[keep], ref)


def test_embed():
    x, _ = _data()
    for name in ("amsoftmax", "arcface", "l2"):
        e = _make(name).embed(x.reshape(3, 4, -1))
        assert e.shape == (3, 4, 6)
        torch.testing.assert_close(e.reshape(-1, 6).norm(dim=1), torch.ones(12, dtype=F64))
    torch.testing.assert_close(_make("lsoftmax").embed(x), x)
    torch.testing.assert_close(_make("sphereface").embed(x), x)
    assert torch.equal(_make("arcface").embed(torch.zeros(2, 6, dtype=F64)), torch.zeros(2, 6, dtype=F64))


# ----------------------------------------------------------------------------- λ annealing
def test_lambda_schedule_and_iteration_counter():
    sch = M.LambdaSchedule()
    assert sch(1) == pytest.approx(1000 / 1.12)
    assert sch(10**6) == 5.0
    assert M.LambdaSchedule(base=10, gamma=1.0, power=2.0, lambda_min=0.0)(3) == pytest.approx(10 / 16)
    head = M.AngularSoftmax(6, 9).double()
    assert head.current_lambda() == pytest.approx(1000 / 1.12)
    x, y = _data()
    head(x, y)
    head(x, y)
    assert int(head.iteration) == 2 and head.current_lambda() == pytest.approx(1000 / 1.36)
    head.eval()
    head(x, y)  # evaluation does not advance the schedule
    assert int(head.iteration) == 2
    assert "iteration" in head.state_dict()
    head.train()
    head.iteration.fill_(10**6)
    lam = head.current_lambda()
    assert lam == 5.0
    fixed = M.AngularSoftmax(6, 9, lambda_schedule=lam).double()
    fixed.load_state_dict(head.state_dict())
    torch.testing.assert_close(head(x, y), _naive_loss(fixed, x, y).mean())


# ----------------------------------------------------------------------------- sampled training
def _pair(name, V=30, d=6, sampler=None, num_sampled=None, **kw):
    dense = _make(name, d=d, V=V)
    samp = ALL_HEADS[name](d, V, num_sampled=num_sampled or V, sampler=sampler or S.All(V), seed=0, **kw).double()
    samp.load_state_dict(dense.state_dict())
    return dense, samp


@pytest.mark.parametrize("name", ["lsoftmax", "sphereface", "cosface", "arcface"])
@pytest.mark.parametrize("batch_pos,sparse", [(True, False), (False, False), (True, True)])
def test_sampled_with_all_classes_equals_dense(name, batch_pos, sparse):
    dense, samp = _pair(name, include_batch_positives=batch_pos, sparse=sparse)
    if hasattr(dense, "lambda_schedule"):
        dense.lambda_schedule = samp.lambda_schedule = 0.0
    x, y = _data(V=30)
    y[1] = y[0]  # a repeated positive
    x.requires_grad_(True)
    a, b = dense(x, y), samp(x, y)
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    ga = torch.autograd.grad(a, (x, dense.weight))
    gb = torch.autograd.grad(b, (x, samp.weight))
    assert gb[1].is_sparse == sparse
    torch.testing.assert_close(gb[0], ga[0])
    torch.testing.assert_close(gb[1].to_dense() if sparse else gb[1], ga[1])


def _manual_sampled(head, x, y, cand):
    """Per row: softmax over [positive with margin] + (cand without the row's own class)."""
    out = []
    W = head.weight
    for i in range(len(y)):
        c = cand[cand != y[i]]
        ids = torch.cat([y[i : i + 1], c])
        xi = x[i : i + 1]
        z = head.scale * (F.normalize(xi, dim=1) @ F.normalize(W[ids], dim=1).t())[0]
        cos = z[0] / head.scale
        z = torch.cat([head.s * head.margin_cos(cos)[None], z[1:]])
        out.append(torch.logsumexp(z, 0) - z[0])
    return torch.stack(out)


def test_sampled_partial_fc_candidates_and_hits():
    V, d = 40, 6
    head = M.ArcFace(d, V, s=10.0, num_sampled=8, seed=3).double()
    x, y = _data(10, d, V, seed=7)
    y[:3] = torch.tensor([5, 5, 6])
    sampled = torch.tensor([5, 1, 2, 3, 9, 6, 11, 12])  # contains positives 5 and 6
    sv = (sampled, torch.full((10, 1), 8 / V, dtype=F64), torch.full((8,), 8 / V, dtype=F64))
    ids, _, _ = head.candidates(y, sv)
    assert set(ids.tolist()) == set(y.tolist()) | set(sampled.tolist())
    assert len(ids) == len(set(ids.tolist()))  # no class twice
    head.reduction = "none"
    ours = head.sampled_loss(x, y, sv)
    torch.testing.assert_close(ours, _manual_sampled(head, x, y, ids))
    # TF-style (no batch positives): only the draws, own class removed as an accidental hit
    head2 = M.ArcFace(d, V, s=10.0, num_sampled=8, seed=3, include_batch_positives=False, reduction="none").double()
    head2.load_state_dict(head.state_dict())
    torch.testing.assert_close(head2.sampled_loss(x, y, sv), _manual_sampled(head2, x, y, sampled))


def test_subtract_log_q_is_a_constant_shift_for_uniform_sampler():
    V, d = 200, 6
    kw = dict(num_sampled=16, sampler=S.Uniform(V), include_batch_positives=False, seed=0)
    a = M.CosFace(d, V, **kw).double()
    b = M.CosFace(d, V, subtract_log_q=True, **kw).double()
    b.load_state_dict(a.state_dict())
    x, y = _data(10, d, V)
    sv = a.draw(y[:, None])
    torch.testing.assert_close(a.sampled_loss(x, y, sv), b.sampled_loss(x, y, sv))
    # a non-uniform proposal changes the loss
    lu = M.CosFace(d, V, num_sampled=16, sampler=S.LogUniform(V), include_batch_positives=False, subtract_log_q=True,
                   seed=0).double()
    lu.load_state_dict(a.state_dict(), strict=False)
    sv2 = lu.draw(y[:, None])
    assert not torch.allclose(a.sampled_loss(x, y, sv2), lu.sampled_loss(x, y, sv2))


def test_sampled_sparse_step_touches_only_candidate_rows_and_is_seeded():
    V, d = 500, 8
    heads = [M.ArcFace(d, V, num_sampled=20, sparse=True, seed=11) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    x, y = _data(16, d, V, dtype=torch.float32)
    losses = [h(x, y) for h in heads]
    assert float(losses[0]) == float(losses[1])  # same seed, same draw
    h = heads[0]
    before = h.weight.detach().clone()
    opt = torch.optim.SGD(h.parameters(), lr=0.5)
    losses[0].backward()
    g = h.weight.grad.coalesce()
    rows = set(g.indices()[0].tolist())
    assert set(y.tolist()) <= rows and len(rows) <= 20 + len(set(y.tolist()))
    opt.step()
    changed = set((h.weight.detach() != before).any(1).nonzero()[:, 0].tolist())
    assert changed <= rows and len(changed) > 0
    assert h.sparse_parameters() == [h.weight]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls", [M.LargeMarginSoftmax, M.AngularSoftmax])
@pytest.mark.parametrize("m", [0, -1, 2.5, True, "4"])
def test_bad_multiplicative_margin(cls, m):
    with pytest.raises(ValueError, match="m must be an int >= 1"):
        cls(4, 5, m=m)
    with pytest.raises(ValueError, match="m must be an int >= 1"):
        M.sphere_psi(torch.zeros(3), m)


@pytest.mark.parametrize("cls", [M.AdditiveMarginSoftmax, M.CosFace, M.ArcFace])
def test_bad_additive_margin_and_scale(cls):
    for m in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="m must be a finite number in"):
            cls(4, 5, m=m)
    for s in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=r"s must be a finite number in \(0"):
            cls(4, 5, s=s)
    with pytest.raises(TypeError, match="s must be a real number"):
        cls(4, 5, s="64")
    if cls is M.ArcFace:
        for m in (1.6, math.pi):  # past π/2 the insightface fallback is no longer monotone
            with pytest.raises(ValueError, match=r"m must be a finite number in \[0, 1.5708\]"):
                cls(4, 5, m=m)
        cls(4, 5, m=math.pi / 2)


def test_bad_weights_and_class_weights():
    with pytest.raises(ValueError, match=r"weight must have shape \[num_classes=5, in_features=4\]"):
        M.ArcFace(4, 5, weight=torch.zeros(5, 3))
    with pytest.raises(TypeError, match="weight must be floating point"):
        M.CosFace(4, 5, weight=torch.zeros(5, 4, dtype=torch.long))
    shared = torch.nn.Parameter(torch.randn(5, 4))
    assert M.ArcFace(4, 5, weight=shared).weight is shared  # tying
    with pytest.raises(ValueError, match=r"class_weights must have shape \[num_classes=5\]"):
        M.WeightedSoftmax(4, 5, torch.ones(4))
    for bad in (torch.tensor([1.0, -1, 1, 1, 1]), torch.zeros(5), torch.tensor([1.0, float("nan"), 1, 1, 1])):
        with pytest.raises(ValueError, match="class_weights must be finite, >= 0 and not all zero"):
            M.WeightedSoftmax(4, 5, bad)
    with pytest.raises(ValueError, match="counts must be finite and >= 0"):
        M.inverse_frequency_weights([1, -2])
    with pytest.raises(ValueError, match=r"beta must be a finite number in \[0, 1\)"):
        M.effective_number_weights([1, 2], beta=1.0)


def test_bad_other_hyperparameters():
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        M.L2ConstrainedSoftmax(4, 5, alpha=0.0)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        M.SoftSoftmax(4, 5, temperature=-1.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be a finite number in \[0, 1\]"):
        M.SoftSoftmax(4, 5, label_smoothing=1.5)
    with pytest.raises(ValueError, match="LambdaSchedule.gamma"):
        M.LambdaSchedule(gamma=-1.0)
    with pytest.raises(ValueError, match="lambda_schedule"):
        M.LargeMarginSoftmax(4, 5, lambda_schedule=-2.0)
    with pytest.raises(ValueError, match="eps must be"):
        M.ArcFace(4, 5, eps=0.0)


def test_bad_sampling_configuration():
    with pytest.raises(ValueError, match="need num_sampled"):
        M.ArcFace(4, 50, sparse=True)
    with pytest.raises(ValueError, match="num_sampled must be an int >= 1"):
        M.ArcFace(4, 50, num_sampled=0)
    with pytest.raises(ValueError, match=r"sampler.range_max=40 must equal num_classes=50"):
        M.ArcFace(4, 50, num_sampled=5, sampler=S.Uniform(40))
    with pytest.raises(ValueError, match="exceeds the 50 classes"):
        M.ArcFace(4, 50, num_sampled=51)
    with pytest.raises(ValueError, match="subtract_log_q=True needs include_batch_positives=False"):
        M.ArcFace(4, 50, num_sampled=5, subtract_log_q=True)
    with pytest.raises(ValueError, match="needs remove_accidental_hits=True"):
        M.ArcFace(4, 50, num_sampled=5, remove_accidental_hits=False)
    with pytest.raises(TypeError, match="sampler must be a bigsoftmax.samplers sampler"):
        M.ArcFace(4, 50, num_sampled=5, sampler=object())


def test_bad_hidden_and_target_are_reported_by_the_protocol():
    head = M.ArcFace(4, 5)
    with pytest.raises(ValueError, match="in_features"):
        head(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the allowed range"):
        head(torch.randn(3, 4), torch.tensor([0, 1, 5]))
    with pytest.raises(TypeError, match="integer class ids"):
        head(torch.randn(3, 4), torch.zeros(3))


def test_sampled_arcface_trains_with_make_optimizer():
    from bigsoftmax import optim as BO

    torch.manual_seed(0)
    V, d = 400, 8
    centres = torch.randn(V, 16)
    model = torch.nn.ModuleDict({"body": torch.nn.Linear(16, d),
                                 "head": M.ArcFace(d, V, s=16.0, m=0.2, num_sampled=32, sparse=True, seed=0)})
    opt = BO.make_optimizer(model, lr=0.05)  # Adam for the body, SparseAdam for the sparse head weight
    y = torch.randint(0, V, (256,))
    x = centres[y] + 0.1 * torch.randn(256, 16)
    before = -model["head"].target_log_prob(model["body"](x), y).mean()
    for _ in range(60):
        loss = model["head"](model["body"](x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = -model["head"].target_log_prob(model["body"](x), y).mean()  # exact, margin-free NLL
    assert float(after) < 0.5 * float(before)


def _saved_bytes(fn):
    """Bytes of every tensor autograd saves while ``fn()`` builds its graph (the training memory
    held between forward and backward), counted once per storage."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("cls", [M.ArcFace, M.CosFace, M.SphereFace])
def test_dense_margin_training_holds_o_n_chunk_not_o_n_v(cls):
    """Issue 11: the dense margin heads used to keep every [N, chunk] block under autograd (O(N V)).
    Now the graph holds O(N d + V d): far below one [N, V] fp32 matrix."""
    N, V, d = 64, 8192, 8
    head = cls(d, V)
    head.eval_chunk = 512
    h = torch.randn(N, d, requires_grad=True)
    y = torch.randint(0, V, (N,))
    loss, saved = _saved_bytes(lambda: head(h, y))
    # W and its normalised copy (2 V d floats) + O(N d) row vectors; one [N, V] fp32 matrix is 4x more
    assert saved < 3 * V * d * 4 + 64 * N * d * 4 < N * V * 4, f"{saved} bytes saved for backward"
    loss.backward()
    assert h.grad is not None and bool(torch.isfinite(head.weight.grad).all())


def test_dense_margin_loss_equals_the_naive_formulation_float64():
    """ArcFace dense loss and gradients equal the naive [N, V] formulation to 1e-10 (target logit
    replaced by s cos(θ + m), logsumexp over all V)."""
    N, V, d = 9, 31, 5
    head = M.ArcFace(d, V, s=8.0, m=0.4).double()
    head.eval_chunk = 4
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (N,), generator=g)
    out = head(h, y)
    xn = F.normalize(h, dim=-1)
    wn = F.normalize(head.weight, dim=-1)
    cos = (xn @ wn.t()).clamp(-1, 1)
    from bigsoftmax.heads.margin import arc_margin_cos

    ct = arc_margin_cos(cos.gather(1, y[:, None]), 0.4)
    logits = (cos.scatter(1, y[:, None], ct)) * 8.0
    ref = F.cross_entropy(logits, y)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for a, r in zip(torch.autograd.grad(out, (h, head.weight)), torch.autograd.grad(ref, (h, head.weight))):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)

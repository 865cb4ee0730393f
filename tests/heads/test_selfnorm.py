"""SelfNormalizedSoftmax: loss = CE + alpha (log Z)^2 exactly, gradients, self-normalisation, protocol."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax.heads import SelfNormalizedSoftmax
from bigsoftmax.heads.selfnorm import self_normalized_softmax_loss


def _head(V=40, d=6, alpha=0.3, dtype=torch.float64, seed=0, **kw):
    h = SelfNormalizedSoftmax(d, V, alpha=alpha, generator=torch.Generator().manual_seed(seed), dtype=dtype, **kw)
    with torch.no_grad():
        h.weight.mul_(4.0)
        if h.bias is not None:
            h.bias.normal_(generator=torch.Generator().manual_seed(seed + 1))
    return h


def _naive(h, x, y, alpha):
    z = F.linear(x, h.weight, h.bias)
    lz = torch.logsumexp(z, -1)
    return F.cross_entropy(z, y, reduction="none") + alpha * lz**2, lz, z


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [None, 7])
def test_loss_equals_naive_ce_plus_penalty(dtype, chunk):
    h = _head(V=53, d=8, alpha=0.25, dtype=dtype, chunk_size=chunk)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(31, 8, dtype=dtype, generator=g, requires_grad=True)
    y = torch.randint(0, 53, (31,), generator=g)
    per, _, _ = _naive(h, x, y, 0.25)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    loss = h(x, y)
    torch.testing.assert_close(loss, per.mean(), **tol)
    ga = torch.autograd.grad(loss, (x, h.weight, h.bias))
    gb = torch.autograd.grad(per.mean(), (x, h.weight, h.bias))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **tol)
    h.reduction = "sum"
    torch.testing.assert_close(h(x, y), per.sum(), **tol)
    h.reduction = "none"
    torch.testing.assert_close(h(x, y), per, **tol)
    # the functional form
    torch.testing.assert_close(
        self_normalized_softmax_loss(x, h.weight, h.bias, y, alpha=0.25, chunk_size=chunk), per.mean(), **tol
    )


def test_alpha_zero_is_cross_entropy_and_no_bias_works():
    h = _head(V=20, d=5, alpha=0.0, bias=False)
    x = torch.randn(9, 5, dtype=torch.float64)
    y = torch.randint(0, 20, (9,))
    assert h.bias is None
    torch.testing.assert_close(h(x, y), F.cross_entropy(x @ h.weight.t(), y))


def test_gradcheck_float64():
    h = _head(V=9, d=3, alpha=0.7, chunk_size=4)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 8, 3, -100, 4])
    for red in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda x, W, b: self_normalized_softmax_loss(x, W, b, y, alpha=0.7, reduction=red, chunk_size=4),
            (x, h.weight, h.bias),
        )


def test_bias_init_log_one_over_V_gives_log_z_near_zero():
    V, d = 1000, 16
    h = SelfNormalizedSoftmax(d, V, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(h.bias, torch.full((V,), -math.log(V)))
    x = torch.randn(64, d, generator=torch.Generator().manual_seed(1))
    rep = h.self_normalization_report(x)
    # log Z = log mean_c exp(w_c . x) with |w_c . x| small at init: close to 0
    assert abs(rep.mean) < 0.5 and rep.count == 64


def _train(alpha, steps=150, seed=0, lr=0.05):
    """Tiny synthetic task: 8 Gaussian clusters in 6-D, each labelled by one of V=30 classes."""
    V, d, N = 30, 6, 256
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=g) * 2
    labels = torch.randint(0, V, (8,), generator=g)
    comp = torch.randint(0, 8, (N,), generator=g)
    x = centres[comp] + 0.3 * torch.randn(N, d, generator=g)
    y = labels[comp]
    h = SelfNormalizedSoftmax(d, V, alpha=alpha, generator=g)
    with torch.no_grad():
        h.bias.fill_(2.0)  # start far from self-normalised: log Z = 2 + log V + ... ~ 5.4
    start = h.self_normalization_report(x)
    opt = torch.optim.Adam(h.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        h(x, y).backward()
        opt.step()
    return start, h.self_normalization_report(x), h, x, y


def test_training_with_large_alpha_drives_log_z_to_zero():
    # seeded; over seeds 0-1 and lr 0.05-0.2 the penalised runs end at mean |log Z| 0.21-0.35 and the
    # plain-CE runs at 12-21 (CE is shift-invariant, so its normaliser drifts up as logits sharpen)
    start, rep_pen, h, x, y = _train(alpha=2.0, steps=300, lr=0.1)
    _, rep_ce, h0, _, _ = _train(alpha=0.0, steps=300, lr=0.1)
    assert start.mean_abs > 4.0
    assert rep_pen.mean_abs < 0.35 and rep_pen.mean_abs < 0.1 * start.mean_abs
    assert rep_ce.mean_abs > 5.0
    assert rep_pen.mean_abs < 0.05 * rep_ce.mean_abs
    assert abs(rep_pen.mean) <= rep_pen.mean_abs
    # it still learns the task like plain CE
    acc_pen = (h.predict(x) == y).float().mean()
    acc_ce = (h0.predict(x) == y).float().mean()
    assert acc_pen > 0.95 and acc_ce > 0.95
    # so the O(d) self-normalised score is close to the exact log-probability
    with torch.no_grad():
        err = float((h.unnormalized_log_prob(x, y) - h.target_log_prob(x, y)).abs().mean())
    assert err == pytest.approx(rep_pen.mean_abs, rel=1e-4)
    assert err < 0.35


def test_unnormalized_log_prob_is_log_prob_plus_log_z():
    h = _head(V=25, d=4)
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    y = torch.randint(0, 25, (3, 7))
    y[1, 2] = -100
    keep = y != -100
    u = h.unnormalized_log_prob(x, y)
    lz = h.log_normalizer(x)
    assert u.shape == lz.shape == (3, 7)
    torch.testing.assert_close(u[keep], (h.target_log_prob(x, y) + lz)[keep])
    assert u[1, 2] == 0
    full = h.unnormalized_log_prob(x)
    torch.testing.assert_close(full, F.linear(x, h.weight, h.bias))
    torch.testing.assert_close(full - lz[..., None], h.log_prob(x))


def test_self_normalization_report_statistics():
    h = _head(V=30, d=5)
    x = torch.randn(50, 5, dtype=torch.float64)
    lz = torch.logsumexp(F.linear(x, h.weight, h.bias), -1).detach()
    rep = h.self_normalization_report(x, batch_size=7)
    assert rep.count == 50
    assert rep.mean == pytest.approx(float(lz.mean()), rel=1e-12)
    assert rep.std == pytest.approx(float(lz.std(unbiased=False)), rel=1e-12)
    assert rep.mean_abs == pytest.approx(float(lz.abs().mean()), rel=1e-12)
    assert rep.max_abs == pytest.approx(float(lz.abs().max()), rel=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        h.self_normalization_report(x, batch_size=0)
    with pytest.raises(ValueError, match="no rows"):
        h.self_normalization_report(x[:0])


@settings(max_examples=30, deadline=None)
@given(
    st.integers(2, 40), st.integers(1, 6), st.integers(1, 10), st.integers(1, 40), st.integers(0, 2**16),
    st.sampled_from([1, 5, 16384]),
)
def test_exact_eval_properties(V, d, N, k, seed, chunk):
    h = _head(V=V, d=d, seed=seed)
    h.eval_chunk = chunk
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, dtype=torch.float64, generator=g)
    y = torch.randint(0, V, (N,), generator=g)
    lp = h.log_prob(x)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(N, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h.target_log_prob(x, y), lp.gather(1, y[:, None])[:, 0], rtol=1e-12, atol=1e-12)
    k = min(k, V)
    v, i = h.topk(x, k)
    torch.testing.assert_close(v, lp.topk(k, dim=1).values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp.gather(1, i), v, rtol=1e-12, atol=1e-12)


def test_ignore_index_and_leading_dims():
    h = _head(V=17, d=4, alpha=0.5)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 17, (2, 3))
    y[0, 0] = -100
    keep = y != -100
    per, _, _ = _naive(h, x[keep], y[keep], 0.5)
    torch.testing.assert_close(h(x, y), per.mean())
    h(x, y).backward()
    assert torch.all(x.grad[0, 0] == 0)
    h.reduction = "none"
    out = h(x, y)
    assert out.shape == (2, 3) and out[0, 0] == 0
    h.reduction = "mean"
    assert torch.isnan(h(x, torch.full((2, 3), -100)))


def test_tied_weight_receives_gradients():
    V, d = 30, 8
    emb = torch.nn.Embedding(V, d)
    h = SelfNormalizedSoftmax(d, V, weight=emb.weight)
    assert h.weight is emb.weight
    tokens = torch.randint(0, V, (4, 5))
    h(emb(tokens), torch.randint(0, V, (4, 5))).backward()
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0


def test_autocast_bf16_correctness():
    h = SelfNormalizedSoftmax(32, 500, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 32, generator=g, requires_grad=True)
    y = torch.randint(0, 500, (40,), generator=g)
    ref = h(x, y)
    gref = torch.autograd.grad(ref, x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = h(x, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)
    gx = torch.autograd.grad(loss, x)[0]
    assert F.cosine_similarity(gx.flatten(), gref.flatten(), dim=0) > 0.99


def test_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        SelfNormalizedSoftmax(4, 10, alpha=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        SelfNormalizedSoftmax(4, 10, alpha=float("nan"))
    with pytest.raises(ValueError, match="chunk_size"):
        SelfNormalizedSoftmax(4, 10, chunk_size=0)
    with pytest.raises(ValueError, match=r"weight must have shape \[num_classes=10, in_features=4\]"):
        SelfNormalizedSoftmax(4, 10, weight=torch.nn.Parameter(torch.randn(10, 5)))
    with pytest.raises(TypeError, match="nn.Parameter"):
        SelfNormalizedSoftmax(4, 10, weight=torch.randn(10, 4))
    with pytest.raises(ValueError, match="num_classes"):
        SelfNormalizedSoftmax(4, 1)
    h = SelfNormalizedSoftmax(4, 10)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"class id 10, outside the allowed range \[0, 10\)"):
        h(x, torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match="class id -2"):
        h.unnormalized_log_prob(x, torch.tensor([0, -2, 1]))
    with pytest.raises(TypeError, match="integer class ids"):
        h(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="in_features"):
        h.log_normalizer(torch.randn(3, 5))
    with pytest.raises(ValueError, match="alpha"):
        self_normalized_softmax_loss(x, h.weight, h.bias, torch.tensor([0, 1, 2]), alpha=-1)

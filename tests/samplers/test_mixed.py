"""samplers.Mixed: a shared context-free set plus per-row Bigram draws, and the fused kernel's mixed layout."""

import math

import pytest
import torch

from bigsoftmax.ops import sampled as ops
from bigsoftmax.heads import NCE, SampledSoftmax
from bigsoftmax.samplers import Bigram, LogUniform, Mixed, Uniform, Unigram

V = 60


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, V, (4000,), generator=g)
    t[::3] = 7  # a frequent context with many successors
    return t


def _mixed(tokens, shared=None, R=5, lam=0.6):
    return Mixed(shared if shared is not None else LogUniform(V), Bigram(V, tokens, unique=False, lam=lam), R)


@pytest.mark.parametrize("shared", [LogUniform(V), LogUniform(V, unique=False), Unigram(torch.arange(1.0, V + 1))])
def test_draws_and_expected_counts(tokens, shared):
    q = _mixed(tokens, shared, R=4)
    ctx, tc = tokens[:25], tokens[1:26, None]
    ids, true_ec, samp_ec = q.sample(tc, 12, torch.Generator().manual_seed(1), context=ctx)
    # the same draws, by hand: R per-row bigram draws, then the shared draw, from one generator
    g = torch.Generator().manual_seed(1)
    rid, rte, rse = q.per_row.sample(tc, 4, g, context=ctx)
    sid, ste, sse = shared.sample(torch.cat([tc, rid], 1), 8, g)
    assert ids.shape == (25, 12) and torch.equal(ids[:, 8:], rid) and torch.equal(ids[:, :8], sid.expand(25, 8))
    q_shared = q.per_row._cond_prob64(ctx, sid.expand(25, 8))  # O(N·P) reference for the grouped lookup
    ref = torch.cat([sse[None, :] + 4 * q_shared, ste[:, 1:] + rse], 1)
    torch.testing.assert_close(samp_ec.double(), ref.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(true_ec, ste[:, :1] + rte)


def test_partition_estimate_unbiased(tokens):
    """Σ_c exp(s_c) / E_n(c) over row n's multiset is an unbiased estimate of Σ_v exp(s_v) (with replacement)."""
    q = _mixed(tokens, LogUniform(V, unique=False), R=3)
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(V, generator=g, dtype=torch.float64) * 2
    ctx = torch.tensor([7, 7, 3, 11])
    tc = torch.zeros(4, 1, dtype=torch.long)
    n = 500  # independent calls: within one call the shared set is common to the rows
    est = torch.empty(n, 4, dtype=torch.float64)
    for i in range(n):
        ids, _, ec = q.sample(tc, 8, g, context=ctx)
        est[i] = (scores[ids].exp() / ec.double()).sum(1)
    Z = scores.exp().sum()
    mean, se = est.mean(0), est.std(0) / math.sqrt(n)
    assert bool(((mean - Z).abs() < 4.5 * se).all()), (mean, Z, se)  # 4.5 standard errors: ~1e-5 false alarm


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_head_mixed_layout_equals_per_row_path(tokens, bias, sparse):
    q = _mixed(tokens)
    head = SampledSoftmax(8, V, 20, sampler=q, seed=3, bias=bias, sparse=sparse).double()
    g = torch.Generator().manual_seed(2)
    h = torch.randn(30, 8, dtype=torch.float64, generator=g, requires_grad=True)
    y, c = tokens[1:31], tokens[:30]
    loss = head(h, y, context=c)
    loss.backward()
    # the same candidates given explicitly go through the general per-row sampled-logits core
    sv = _mixed(tokens).sample(y[:, None], 20, torch.Generator().manual_seed(3), context=c)
    h2 = h.detach().clone().requires_grad_()
    W = head.weight.detach().clone().requires_grad_()
    b = head.bias.detach().clone().requires_grad_() if bias else None
    parts = ops.sampled_logits_parts(W, b, y[:, None], h2, sv, remove_accidental_hits=True)
    ref = ops.softmax_ce(parts).mean()
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-12
    torch.testing.assert_close(h.grad, h2.grad, rtol=0, atol=1e-12)
    gw = head.weight.grad
    assert gw.is_sparse == sparse
    torch.testing.assert_close(gw.to_dense(), W.grad, rtol=0, atol=1e-12)
    if bias:
        torch.testing.assert_close(head.bias.grad.to_dense(), b.grad, rtol=0, atol=1e-12)


def test_mixed_kernel_gradcheck(tokens):
    g = torch.Generator().manual_seed(4)
    B, d, P, R = 5, 4, 6, 3
    x = torch.randn(B, d, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(V, d, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(V, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4, 5])
    shared = torch.tensor([1, 9, 10, 11, 12, 3])  # holds true classes 1 and 3: accidental hits
    rows = torch.tensor([[2, 20, 21], [2, 22, 2], [30, 31, 3], [4, 4, 40], [41, 42, 43]])  # hits and repeats
    sampled = torch.cat([shared.expand(B, P), rows], 1)
    tec = torch.rand(B, 1, dtype=torch.float64, generator=g) + 0.1
    sec = torch.rand(B, P + R, dtype=torch.float64, generator=g) + 0.1

    def f(x, W, b):
        return ops.fused_sampled_softmax(x, W, b, y, sampled, tec, sec, shared_columns=P)

    assert torch.autograd.gradcheck(f, (x, W, b))
    torch.testing.assert_close(f(x, W, b), ops.fused_sampled_softmax(x, W, b, y, sampled, tec, sec))


def test_nce_with_mixed_noise(tokens):
    head = NCE(8, V, 20, sampler=_mixed(tokens), seed=0)
    h = torch.randn(30, 8, requires_grad=True)
    loss = head(h, tokens[1:31], context=tokens[:30])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0


def test_state_dict_round_trip(tokens):
    q = _mixed(tokens)
    q2 = Mixed(LogUniform(V), Bigram(V, tokens[:100], unique=False, lam=0.6), 5)
    q2.load_state_dict(q.state_dict())
    a = q.sample(tokens[1:9, None], 12, torch.Generator().manual_seed(0), context=tokens[:8])
    b = q2.sample(tokens[1:9, None], 12, torch.Generator().manual_seed(0), context=tokens[:8])
    for s, t in zip(a, b):
        assert torch.equal(s, t)


@pytest.mark.parametrize("make, exc, phrase", [
    (lambda t: Mixed(Bigram(V, t, unique=False), Bigram(V, t, unique=False), 2), TypeError, "context-free"),
    (lambda t: Mixed(LogUniform(V), LogUniform(V), 2), TypeError, "per_row must be a samplers.Bigram"),
    (lambda t: Mixed(LogUniform(V), Bigram(V, t), 2), ValueError, "unique=False"),
    (lambda t: Mixed(LogUniform(V + 1), Bigram(V, t, unique=False), 2), ValueError, "same classes"),
    (lambda t: Mixed(LogUniform(V), Bigram(V, t, unique=False), 0), ValueError, "num_per_row"),
    (lambda t: Mixed(LogUniform(V), Bigram(V, t, unique=False), 2).sample(t[:4, None], 2, context=t[:4]),
     ValueError, "must be > num_per_row"),
    (lambda t: Mixed(Uniform(V), Bigram(V, t, unique=False), 2).sample(t[:4, None], V + 3, context=t[:4]),
     ValueError, "num_sampled"),
    (lambda t: Mixed(LogUniform(V), Bigram(V, t, unique=False), 2).sample(t[:4, None], 5), ValueError, "context"),
    (lambda t: ops.fused_sampled_softmax(torch.randn(2, 3), torch.randn(V, 3), None, t[:2], t[:8].view(2, 4),
                                         torch.ones(2, 1), torch.ones(2, 4), shared_columns=4),
     ValueError, "shared_columns"),
])
def test_bad_input(tokens, make, exc, phrase):
    with pytest.raises(exc, match=phrase):
        make(tokens)

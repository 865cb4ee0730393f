"""Per-example candidates [N, S] in the sampled-logits core, the fused kernel and the heads
(SampledSoftmax, NCE) with the context-dependent Bigram sampler."""

import pytest
import torch
import torch.nn.functional as F

from bigsoftmax import functional as BF
from bigsoftmax import samplers as S
from bigsoftmax.heads import NCE, SampledSoftmax
from bigsoftmax.ops import sampled as ops

GATHERS = ["unique", "rows"]


def _problem(V=23, d=5, N=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=dtype, requires_grad=True)
    x = torch.randn(N, d, generator=g, dtype=dtype, requires_grad=True)
    y = torch.randint(0, V, (N,), generator=g)
    return W, b, x, y


def _grads(loss, *ts):
    gs = torch.autograd.grad(loss, ts)
    return [gg.to_dense() if gg.is_sparse else gg for gg in gs]


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("gather", GATHERS)
@pytest.mark.parametrize("path", ["fused", "general"])
def test_per_row_all_sampler_equals_full_softmax(gather, path):
    """Every row's candidates = all V classes with expected count 1 (the All sampler per row): the
    sampled softmax with hits removed is exactly the full softmax cross-entropy, values and grads."""
    W, b, x, y = _problem()
    V, N = W.shape[0], x.shape[0]
    sv = (torch.arange(V).expand(N, V), torch.ones(N, 1, dtype=torch.float64), torch.ones(N, V, dtype=torch.float64))
    if path == "fused":
        loss = ops.fused_sampled_softmax(x, W, b, y[:, None], *sv, remove_accidental_hits=True, gather=gather)
    else:
        loss = ops.softmax_ce(ops.sampled_logits_parts([W[:10], W[10:]], [b[:10], b[10:]], y, x, sv,
                                                       remove_accidental_hits=True, gather=gather))
    ref = F.cross_entropy(x @ W.t() + b, y, reduction="none")
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(_grads(loss.sum(), W, b, x), _grads(ref.sum(), W, b, x)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gather", GATHERS)
@pytest.mark.parametrize("loss_fn", ["sampled_softmax", "nce"])
def test_per_row_copies_of_a_shared_set_equal_the_shared_form(gather, loss_fn):
    """[N, S] candidates that repeat one shared [S] set give the shared form's losses and gradients
    (hits masked per row, duplicates included)."""
    W, b, x, y = _problem(seed=1)
    N = x.shape[0]
    shared = torch.tensor([0, 3, 3, 7, 11, 19, int(y[0]), int(y[2])])
    se = torch.rand(shared.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.1
    te = torch.rand(N, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.1
    per_row = (shared.expand(N, -1), te, se.expand(N, -1))
    fn = BF.sampled_softmax_loss if loss_fn == "sampled_softmax" else BF.nce_loss
    kw = dict(num_sampled=shared.numel(), num_classes=W.shape[0], remove_accidental_hits=True)
    a = fn(W, b, y, x, sampled_values=(shared, te, se), **kw)
    if gather == "rows" and loss_fn == "sampled_softmax":
        c = ops.fused_sampled_softmax(x, W, b, y, *per_row, remove_accidental_hits=True, gather="rows")
    else:
        c = fn(W, b, y, x, sampled_values=per_row, **kw)
    torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-12)
    for u, v in zip(_grads(c.sum(), W, b, x), _grads(a.sum(), W, b, x)):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gather", GATHERS)
def test_fused_per_row_equals_general_path_and_gradcheck(gather):
    W, b, x, y = _problem(V=15, N=6, seed=4)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 15, (6, 7), generator=g)
    ids[0, :2] = y[0]  # hits (twice) in row 0 only
    se = torch.rand(6, 7, dtype=torch.float64, generator=g) + 0.05
    te = torch.rand(6, 1, dtype=torch.float64, generator=g) + 0.05
    fused = ops.fused_sampled_softmax(x, W, b, y, ids, te, se, remove_accidental_hits=True, gather=gather)
    gen_ = ops.softmax_ce(ops.sampled_logits_parts(W, b, y, x, (ids, te, se), remove_accidental_hits=True, gather=gather))
    torch.testing.assert_close(fused, gen_, rtol=1e-12, atol=1e-12)
    for u, v in zip(_grads(fused.sum(), W, b, x), _grads(gen_.sum(), W, b, x)):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda W_, b_, x_: ops.fused_sampled_softmax(x_, W_, b_, y, ids, te, se, remove_accidental_hits=True, gather=gather),
        (W, b, x))


@pytest.mark.parametrize("gather", GATHERS)
def test_hits_are_masked_per_row(gather):
    W, b, x, y = _problem(V=10, N=3, seed=6)
    ids = torch.stack([torch.full((4,), int(y[0])), torch.tensor([0, 1, 2, 3]), torch.full((4,), int(y[2]))])
    sv = (ids, torch.ones(3, 1, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64))
    parts = ops.sampled_logits_parts(W, b, y, x, sv, remove_accidental_hits=True, gather=gather)
    assert parts.hit_mask[0].all() and parts.hit_mask[2].all()
    assert torch.equal(parts.hit_mask[1], ids[1] == y[1])
    loss = ops.fused_sampled_softmax(x, W, b, y, *sv, remove_accidental_hits=True, gather=gather)
    assert torch.allclose(loss[0], torch.zeros((), dtype=torch.float64)) and torch.isfinite(loss).all()


def test_sparse_gradients_stay_sparse_per_row():
    V, d, N = 40, 4, 6
    for gather in GATHERS:
        for cls in (SampledSoftmax, NCE):
            tokens = torch.randint(0, V, (500,), generator=torch.Generator().manual_seed(0))
            head = cls(d, V, 5, sampler=S.Bigram(V, tokens), sparse=True, seed=0, gather=gather)
            h = torch.randn(N, d)
            y = tokens[1:N + 1]
            head(h, y, context=tokens[:N]).backward()
            assert head.weight.grad.is_sparse and head.bias.grad.is_sparse
            touched = head.weight.grad.coalesce().indices().numel()
            assert touched <= N * 5 + N


def test_true_expected_count_b1_broadcast_and_name_are_accepted():
    """issue 14, item 15: TF's name= (ignored) and a [B, 1] true_expected_count broadcast over num_true."""
    W, b, x, _ = _problem(seed=7)
    N = x.shape[0]
    y = torch.randint(0, W.shape[0], (N, 3), generator=torch.Generator().manual_seed(8))
    sv_b1 = (torch.tensor([1, 4, 6]), torch.full((N, 1), 0.3, dtype=torch.float64), torch.full((3,), 0.2, dtype=torch.float64))
    sv_bt = (sv_b1[0], sv_b1[1].expand(N, 3).clone(), sv_b1[2])
    for fn in (BF.sampled_softmax_loss, BF.nce_loss):
        a = fn(W, b, y, x, 3, W.shape[0], num_true=3, sampled_values=sv_b1, name="sampled_loss")
        c = fn(W, b, y, x, 3, W.shape[0], num_true=3, sampled_values=sv_bt)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    logits, _ = BF.compute_sampled_logits(W, b, y, x, 3, W.shape[0], num_true=3, sampled_values=sv_b1, name="x")
    assert logits.shape == (N, 6)


# ----------------------------------------------------------------------------- heads with the bigram sampler
def _stream(V=30, n=400, seed=0):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [SampledSoftmax, NCE])
def test_head_with_bigram_trains_and_evaluates_exactly(cls):
    V, d = 30, 6
    tok = _stream(V)
    head = cls(d, V, 8, sampler=S.Bigram(V, tok, lam=0.7), seed=3).double()
    assert head.uses_context
    h = torch.randn(4, 5, d, dtype=torch.float64)
    y, prev = tok[1:21].reshape(4, 5), tok[:20].reshape(4, 5)
    loss = head(h, y, context=prev)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(head.weight.grad).all()
    # the same seed gives the same step; the draws follow the context
    head2 = cls(d, V, 8, sampler=S.Bigram(V, tok, lam=0.7), seed=3).double()
    head2.load_state_dict(head.state_dict())
    head2.generator.manual_seed(3)
    head.generator.manual_seed(3)
    torch.testing.assert_close(head(h, y, context=prev), head2(h, y, context=prev))
    head.eval()  # eval: the exact NLL, no context needed
    ref = F.cross_entropy(h.reshape(-1, d) @ head.weight.t() + head.bias, y.reshape(-1))
    torch.testing.assert_close(head(h, y), ref)


def test_head_per_row_sampled_values_equal_manual_core_call():
    V, d, N = 30, 6, 7
    tok = _stream(V)
    head = SampledSoftmax(d, V, 8, sampler=S.Bigram(V, tok), seed=1).double()
    h = torch.randn(N, d, dtype=torch.float64)
    y, prev = tok[1:N + 1].clone(), tok[:N]
    y[2] = -100  # an ignored row drops its own candidate row
    sv = head.sampler.sample(y.clamp(min=0)[:, None], 8, torch.Generator().manual_seed(0), context=prev)
    loss = head(h, y, sampled_values=sv)
    keep = y != -100
    ref = ops.softmax_ce(ops.sampled_logits_parts(head.weight, head.bias, y[keep], h[keep],
                                                  tuple(t[keep] for t in sv), remove_accidental_hits=True)).mean()
    torch.testing.assert_close(loss, ref)


def test_bigram_lam_zero_head_draws_within_the_unigram_support():
    """With lam=0 the per-row draws are unigram draws: every candidate is a class the unigram can draw."""
    V, d = 30, 6
    tok = _stream(V)
    head = SampledSoftmax(d, V, 8, sampler=S.Bigram(V, tok, lam=0.0, unique=False), seed=0)
    ids, _, _ = head.draw(tok[1:6, None], context=tok[:5])
    assert ids.shape == (5, 8) and bool((torch.bincount(tok, minlength=V)[ids] > 0).all())


HEAD_BAD = [
    ("context missing", dict(), ValueError, "context is required"),
    ("context shape", dict(context=torch.zeros(3, dtype=torch.long)), ValueError, r"context must have the target's shape \(2, 2\)"),
    ("context out of range", dict(context=torch.full((2, 2), 30)), ValueError, r"context contains class id 30.*\[0, 30\)"),
    ("context float", dict(context=torch.zeros(2, 2)), TypeError, "context"),
    ("per-row candidates, wrong rows", dict(sampled_values=(torch.zeros(3, 8, dtype=torch.long), torch.ones(4, 1),
                                                           torch.ones(3, 8))), ValueError, "sampled_candidates must have 4 rows"),
    ("per-row counts, wrong shape", dict(sampled_values=(torch.zeros(4, 8, dtype=torch.long), torch.ones(4, 1),
                                                        torch.ones(4, 7))), ValueError, "sampled_expected_count"),
]


@pytest.mark.parametrize("kw,exc,phrase", [r[1:] for r in HEAD_BAD], ids=[r[0] for r in HEAD_BAD])
def test_head_bad_input(kw, exc, phrase):
    V = 30
    head = SampledSoftmax(6, V, 8, sampler=S.Bigram(V, _stream(V)), seed=0)
    with pytest.raises(exc, match=phrase):
        head(torch.randn(2, 2, 6), torch.ones(2, 2, dtype=torch.long), **kw)


@pytest.mark.parametrize("cls", [SampledSoftmax, NCE])
@pytest.mark.parametrize("where", ["hidden", "target", "head"])
def test_meta_device_is_a_clear_error(cls, where):
    """issue 14, item 13: every entry point on the meta device raised from inside torch."""
    head = cls(4, 20, 5, seed=0)
    h, y = torch.randn(3, 4), torch.ones(3, dtype=torch.long)
    if where == "hidden":
        h = h.to("meta")
    elif where == "target":
        y = y.to("meta")
    else:
        head = head.to("meta")
    for mode in (head.train, head.eval):
        mode()
        with pytest.raises(ValueError, match="meta device"):
            head(h, y)


def test_context_refused_for_a_context_free_sampler():
    head = SampledSoftmax(6, 30, 8, seed=0)
    assert not head.uses_context
    with pytest.raises(ValueError, match="context-dependent sampler"):
        head(torch.randn(2, 6), torch.ones(2, dtype=torch.long), context=torch.ones(2, dtype=torch.long))


def test_core_bad_per_row_shapes():
    W, b, x, y = _problem()
    N, V = x.shape[0], W.shape[0]
    with pytest.raises(ValueError, match=r"per-example sampled_candidates must have shape \[batch=9"):
        ops.sampled_logits_parts(W, b, y, x, (torch.zeros(N + 1, 3, dtype=torch.long), torch.ones(N, 1), torch.ones(N + 1, 3)))
    with pytest.raises(ValueError, match="gather must be one of"):
        ops.sampled_logits_parts(W, b, y, x, (torch.zeros(3, dtype=torch.long), torch.ones(N, 1), torch.ones(3)), gather="dense")
    with pytest.raises(ValueError, match=r"ids contain row id 23.*\[0, 23\)"):
        BF.gather_rows(W, torch.tensor([V]))  # issue 14, item 13: was a deep IndexError
    with pytest.raises(ValueError, match="meta device"):
        BF.sampled_softmax_loss(W.detach().to("meta"), None, y, x.detach(), 3, V)
    with pytest.raises(ValueError, match="meta device"):
        BF.nce_loss(W.detach(), None, y, x.detach().to("meta"), 3, V)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 30), st.integers(1, 6), st.integers(1, 8), st.integers(1, 3), st.booleans(),
       st.sampled_from(GATHERS), st.integers(0, 10_000))
def test_property_fused_per_row_equals_general_path(V, N, S_, T, hits, gather, seed):
    g = torch.Generator().manual_seed(seed)
    d = 3
    W = torch.randn(V, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (N, T), generator=g)
    ids = torch.randint(0, V, (N, S_), generator=g)
    se = torch.rand(N, S_, generator=g, dtype=torch.float64) + 0.05
    te = torch.rand(N, T, generator=g, dtype=torch.float64) + 0.05
    a = ops.fused_sampled_softmax(x, W, b, y, ids, te, se, remove_accidental_hits=hits, gather=gather)
    c = ops.softmax_ce(ops.sampled_logits_parts(W, b, y, x, (ids, te, se), remove_accidental_hits=hits, gather=gather))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    for u, v in zip(_grads(a.sum(), W, b, x), _grads(c.sum(), W, b, x)):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gather", GATHERS)
def test_cuda_per_row_head_matches_cpu(gather):
    V, d, N = 40, 6, 10
    tok = _stream(V)
    heads = [SampledSoftmax(d, V, 8, sampler=S.Bigram(V, tok, unique=False), seed=0, gather=gather).double()
             for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    heads[1].cuda()
    h = torch.randn(N, d, dtype=torch.float64)
    y, prev = tok[1:N + 1], tok[:N]
    a = heads[0](h, y, context=prev)
    c = heads[1](h.cuda(), y.cuda(), context=prev.cuda())  # both heads draw with their CPU generators
    torch.testing.assert_close(a, c.cpu())


# ----------------------------------------------------------------------------- no host sync (issue 13 item 2)
@pytest.mark.parametrize("ignore", [False, True], ids=["all-kept", "ignored-rows"])
@pytest.mark.parametrize("kind", ["bigram", "bigram-unique", "mixed", "mixed-unique-shared"])
def test_per_row_head_step_is_sync_free_and_gives_the_cpu_numbers(kind, ignore):
    """A per-example (Bigram, Mixed) SampledSoftmax step on the sync-free path: no host sync in "off" and
    "device" validation, and the CPU path's loss and gradients. With ignored rows the sync-free path
    draws for every row (the CPU path for the kept ones only: a [10, m] draw is another stream than a
    [12, m] one), so there the two paths are compared on the same given candidates."""
    import bigsoftmax
    from bigsoftmax._validate import force_sync_free

    from .._host_sync import count_host_syncs

    tokens = torch.randint(0, 50, (2000,), generator=torch.Generator().manual_seed(0))
    y, ctx = tokens[1:13].clone(), tokens[:12]
    if ignore:
        y[[1, 5]] = -100

    def make():
        torch.manual_seed(0)
        if kind.startswith("mixed"):
            sampler = S.Mixed(S.LogUniform(50, unique=kind.endswith("shared")), S.Bigram(50, tokens, unique=False), 4)
        else:
            sampler = S.Bigram(50, tokens, unique=kind.endswith("unique"))
        return SampledSoftmax(8, 50, 10, sampler=sampler, seed=0).double()

    sv = None
    if ignore:
        with force_sync_free():
            sv = make().draw(torch.where(y >= 0, y, 0)[:, None], ctx)

    def step(mode, sf, given=None):
        head = make()
        h = torch.randn(12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        with bigsoftmax.validation(mode), force_sync_free(sf), count_host_syncs() as syncs:
            loss = head(h, y, context=ctx) if given is None else head(h, y, sampled_values=given)
            loss.backward()
        return loss.detach(), h.grad, head.weight.grad, head.bias.grad, syncs

    for mode in ("off", "device"):
        assert step(mode, True)[-1] == []
    ref, got = step("eager", False, sv), step("eager", True, sv)
    for a, b in zip(ref[:-1], got[:-1]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)

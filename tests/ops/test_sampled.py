"""The sampled-logits core and the fused sampled-softmax kernel (bigsoftmax.ops.sampled), float64:
the hand-written backward against finite differences (gradcheck) and against autograd through the
general path, in all three candidate layouts; hits, shards and sparse gradients against naive loops."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from bigsoftmax.ops import sampled as K

V, d, B, S = 17, 4, 5, 6


def _problem(layout, T=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(V, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, T), generator=g)
    shape = (S,) if layout == "shared" else (B, S)
    c = torch.randint(0, V, shape, generator=g)
    c.view(-1)[0] = y[0, 0]  # at least one accidental hit
    true_q = torch.rand(B, T, generator=g, dtype=torch.float64) + 0.1
    samp_q = torch.rand(shape, generator=g, dtype=torch.float64) + 0.1
    return x, W, b, y, c, true_q, samp_q


LAYOUTS = [("shared", "unique"), ("per-row", "unique"), ("per-row", "rows")]


@pytest.mark.parametrize("layout,gather", LAYOUTS)
@pytest.mark.parametrize("hits,T", [(True, 1), (False, 1), (True, 2)])
def test_fused_backward_passes_gradcheck(layout, gather, hits, T):
    x, W, b, y, c, tq, sq = _problem(layout, T)
    f = lambda x_, W_, b_: K.fused_sampled_softmax(x_, W_, b_, y, c, tq, sq, remove_accidental_hits=hits,  # noqa: E731
                                                   gather=gather)
    assert torch.autograd.gradcheck(f, (x, W, b))


@pytest.mark.parametrize("layout,gather", LAYOUTS)
@pytest.mark.parametrize("hits,sparse", list(itertools.product([True, False], [True, False])))
def test_fused_equals_the_general_path_loss_and_gradients(layout, gather, hits, sparse):
    x, W, b, y, c, tq, sq = _problem(layout, T=2, seed=3)
    up = torch.rand(B, dtype=torch.float64) + 0.5
    fused = K.fused_sampled_softmax(x, W, b, y, c, tq, sq, remove_accidental_hits=hits, sparse=sparse, gather=gather)
    parts = K.sampled_logits_parts(W, b, y, x, (c, tq, sq), remove_accidental_hits=hits, gather=gather)
    ref = K.softmax_ce(parts)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(fused, (x, W, b), up)
    want = torch.autograd.grad(ref, (x, W, b), up)
    for a, r in zip(got, want):
        assert a.is_sparse == (sparse and a.shape[0] == V)
        torch.testing.assert_close(a.to_dense() if a.is_sparse else a, r, rtol=1e-12, atol=1e-12)


def test_softmax_ce_is_the_log_softmax_of_true_and_sampled_columns():
    x, W, b, y, c, tq, sq = _problem("shared", T=1, seed=5)
    parts = K.sampled_logits_parts(W, b, y, x, (c, tq, sq), remove_accidental_hits=False)
    z = torch.cat([(x * W[y[:, 0]]).sum(1, keepdim=True) + b[y] - tq.log(), x @ W[c].t() + b[c] - sq.log()], 1)
    torch.testing.assert_close(parts.true_logits, z[:, :1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(K.softmax_ce(parts), -torch.log_softmax(z, 1)[:, 0], rtol=1e-12, atol=1e-12)
    want = F.softplus(-z[:, 0]) + F.softplus(z[:, 1:]).sum(1)
    torch.testing.assert_close(K.sigmoid_ce(parts), want, rtol=1e-12, atol=1e-12)


def test_masked_hits_drop_out_of_both_losses_and_their_gradients():
    x, W, b, y, c, tq, sq = _problem("shared", seed=7)
    c[:] = torch.tensor([y[0, 0], y[0, 0], y[1, 0], 3, 4, 5]) % V
    parts = K.sampled_logits_parts(W, b, y, x, (c, tq, sq), remove_accidental_hits=True)
    keep = ~parts.hit_mask
    assert parts.hit_mask[0, :2].all() and parts.hit_mask[1, 2]
    for loss in (K.softmax_ce, K.sigmoid_ce):
        got = loss(parts)
        for r in range(B):
            sub = K.sampled_logits_parts(W, b, y[r:r + 1], x[r:r + 1], (c[keep[r]], tq[r:r + 1], sq[keep[r]]))
            torch.testing.assert_close(got[r], loss(sub)[0], rtol=1e-12, atol=1e-12)
    (gx,) = torch.autograd.grad(K.softmax_ce(parts).sum(), x)
    assert torch.isfinite(gx).all()


def test_hit_pairs_and_mask_match_a_naive_loop():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 6, (7, 3), generator=g)
    shared = torch.randint(0, 6, (9,), generator=g)
    per_row = torch.randint(0, 6, (7, 9), generator=g)
    naive = torch.tensor([[int(shared[s]) in labels[r].tolist() for s in range(9)] for r in range(7)])
    assert torch.equal(K.hit_mask(labels, shared), naive)
    rows, cols = K.hit_pairs(labels, shared)
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(map(tuple, naive.nonzero().tolist()))
    naive_rows = torch.tensor([[int(per_row[r, s]) in labels[r].tolist() for s in range(9)] for r in range(7)])
    assert torch.equal(K.hit_mask(labels, per_row), naive_rows)


def test_gather_rows_over_shards_and_sparse_gradients():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    shards = [W[:6].clone().requires_grad_(), W[6:7].clone().requires_grad_(), W[7:].clone().requires_grad_()]
    ids = torch.tensor([[16, 0, 6], [6, 6, 3]])
    out = K.gather_rows(shards, ids, sparse=True)
    torch.testing.assert_close(out, W[ids], rtol=0, atol=0)
    up = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, shards, up)
    full = torch.zeros(V, d, dtype=torch.float64).index_add_(0, ids.reshape(-1), up.reshape(-1, d))
    torch.testing.assert_close(torch.cat([gr.to_dense() for gr in grads]), full, rtol=0, atol=1e-15)
    assert all(gr.is_sparse for gr in grads)
    with pytest.raises(ValueError, match=r"outside the allowed range \[0, 17\)"):
        K.gather_rows(shards, torch.tensor([17]))
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        K.gather_rows(W, torch.tensor([1.0]))

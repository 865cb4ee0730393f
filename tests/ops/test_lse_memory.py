"""Training memory of the streaming heads: nothing ``[N, V]``-sized is kept for backward (issue 11).

The lse's *stored* mode keeps ``exp(z − max)`` ``[N, V]`` between forward and backward; by default it
may do so only within ``ops.lse._STORED_MAX_BYTES``. These tests record every tensor autograd saves
(``torch.autograd.graph.saved_tensors_hooks``: custom Functions' ``save_for_backward`` included) and
the gradients a kernel stashes on its ctx, and fail if one of them has ``N · V`` elements. The small
cases shrink the budget so that ``[N, V]`` is 8 × over it and stay cheap; one case uses the real
budget with a 128 MiB ``[N, V]``.
"""

import pytest
import torch

from bigsoftmax import heads as H
from bigsoftmax.ops import lse as L


def _saved_during(fn):
    """Run ``fn`` recording the storage bytes and shape of every tensor autograd saves."""
    saved = []

    def pack(t):
        saved.append((t.untyped_storage().nbytes(), tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def _ctx_stashes(out):
    """Tensors kept on the ctx of the graph's nodes outside ``save_for_backward`` (``stash``)."""
    seen, todo, found = set(), [out.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stash = getattr(node, "stash", None)
        if stash is not None:
            found += [t for t in stash if isinstance(t, torch.Tensor)]
        todo += [f for f, _ in node.next_functions]
    return found


def _assert_nothing_nv(saved, stashes, N, V):
    """No kept tensor as large as one fp32 ``[N, V]``, and no ``[N, classes]`` one past the budget
    (AdaptiveSoftmax's head cluster: all N rows, part of the classes)."""
    kept = saved + [(t.untyped_storage().nbytes(), tuple(t.shape)) for t in stashes]
    big = [s for s in kept if s[0] >= N * V * 4
           or (len(s[1]) == 2 and s[1][0] == N and s[1][1] > D and s[0] > L._STORED_MAX_BYTES)]
    assert not big, f"kept for backward: {big} (N = {N}, V = {V}, budget {L._STORED_MAX_BYTES} bytes)"


N, D, V = 256, 72, 8192  # D > 64: the width at which the lse used to store [N, V] by default

HEADS = {
    "FullSoftmax": lambda: H.FullSoftmax(D, V),
    "FullSoftmax-smoothing": lambda: H.FullSoftmax(D, V, label_smoothing=0.1),
    "SelfNormalizedSoftmax": lambda: H.SelfNormalizedSoftmax(D, V),
    "ArcFace": lambda: H.ArcFace(D, V),
    "CosFace": lambda: H.CosFace(D, V),
    "SphereFace": lambda: H.SphereFace(D, V),
    "WeightedSoftmax": lambda: H.WeightedSoftmax(D, V, class_weights=torch.ones(V)),
    "SoftSoftmax": lambda: H.SoftSoftmax(D, V),
    "L2ConstrainedSoftmax": lambda: H.L2ConstrainedSoftmax(D, V),
    "AdaptiveSoftmax": lambda: H.AdaptiveSoftmax(D, V, cutoffs=[4096], div_value=1.0),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_training_step_keeps_nothing_of_n_times_v(name, monkeypatch):
    monkeypatch.setattr(L, "_STORED_MAX_BYTES", 2**20, raising=False)  # [N, V] fp32 is 8 MiB: 8 x the budget
    torch.manual_seed(0)
    head = HEADS[name]()
    x = torch.randn(N, D, requires_grad=True)
    y = torch.randint(0, V, (N,))
    loss, saved = _saved_during(lambda: head(x, y))
    _assert_nothing_nv(saved, _ctx_stashes(loss), N, V)
    loss.backward()  # and it trains
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.requires_grad)


def test_linear_logsumexp_default_recomputes_past_the_budget(monkeypatch):
    monkeypatch.setattr(L, "_STORED_MAX_BYTES", 2**20, raising=False)
    torch.manual_seed(0)
    x = torch.randn(N, D, requires_grad=True)
    W = torch.randn(V, D, requires_grad=True)
    y = torch.randint(0, V, (N,))
    (lse, zy), saved = _saved_during(lambda: L.linear_logsumexp(x, W, None, y))
    _assert_nothing_nv(saved, [], N, V)
    # the explicit switch still stores (and gives the same gradient)
    (lse2, zy2), saved2 = _saved_during(lambda: L.linear_logsumexp(x, W, None, y, recompute=False))
    assert any(shape == (N, V) for _, shape in saved2)
    g1 = torch.autograd.grad((lse - zy).sum(), (x, W))
    g2 = torch.autograd.grad((lse2 - zy2).sum(), (x, W))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    # within the budget the default still stores (three GEMMs)
    _, saved3 = _saved_during(lambda: L.linear_logsumexp(x[:16], W[:1024], None, y[:16] % 1024))
    assert any(shape == (16, 1024) for _, shape in saved3)


def test_real_budget_a_128_mib_batch_is_not_stored():
    n, v, d = 256, 2**17, 72  # fp32 [n, v] = 128 MiB, twice the 64 MiB budget
    assert n * v * 4 >= 2 * L._STORED_MAX_BYTES
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, requires_grad=True)
    W = torch.randn(v, d, generator=g) * 0.1
    y = torch.randint(0, v, (n,), generator=g)
    _, saved = _saved_during(lambda: L.linear_logsumexp(x, W, None, y))
    _assert_nothing_nv(saved, [], n, v)

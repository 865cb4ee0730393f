"""The dense margin heads' weight normalisation: F.normalize's numbers with a lean backward (issue 11).

At V = 10⁶ classes every ``[V, d]`` temporary is as large as the weight; autograd's backward of
``F.normalize`` makes about four of them. ``heads.margin._NormalizeRows`` must give the same forward
bits and gradients (float64) and allocate a single ``[V, d]`` tensor in its backward (none when it may reuse the incoming one);
``heads.margin._GatherRows`` gives the target rows a sparse gradient (no dense zeros + index_add).
"""

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bigsoftmax import heads as H
from bigsoftmax.heads.margin import _NormalizeRows, _normalize_rows


class _BigAllocs(TorchDispatchMode):
    """Counts op outputs with at least ``numel`` elements (new [V, d]-sized tensors, views excluded)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        for o in outs:
            if isinstance(o, torch.Tensor) and o.numel() >= self.numel and o._base is None \
                    and func.__name__.split(".")[0] not in ("detach", "alias", "view", "expand", "t", "slice"):
                self.count += 1
        return out


def _rows(V=300, d=9):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(V, d, generator=g, dtype=torch.float64)
    w[3] = 0.0  # a zero row and a row shorter than eps: the clamp, no projection
    w[4] *= 1e-14
    return w, torch.randn(V, d, generator=g, dtype=torch.float64)


def test_same_numbers_as_f_normalize():
    w, g = _rows()
    a = w.clone().requires_grad_()
    b = w.clone().requires_grad_()
    out_a = _NormalizeRows.apply(a, 1e-12)
    out_b = F.normalize(b, dim=-1, eps=1e-12)
    assert torch.equal(out_a, out_b)
    (ga,) = torch.autograd.grad(out_a, a, g)
    (gb,) = torch.autograd.grad(out_b, b, g)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12 * gb.abs().max().item())
    assert torch.autograd.gradcheck(lambda w: _NormalizeRows.apply(w, 1e-12), (w[5:12].clone().requires_grad_(),))


def test_in_place_backward_same_numbers():
    """``reuse_grad``: the backward writes into a fresh incoming gradient, same numbers; an expanded
    (non-contiguous) incoming gradient is left alone."""
    w, g = _rows()
    outs = []
    for reuse in (False, True):
        t = w.clone().requires_grad_()
        outs.append(torch.autograd.grad(_NormalizeRows.apply(t, 1e-12, reuse), t, g.clone())[0])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    t = w.clone().requires_grad_()
    (ge,) = torch.autograd.grad(_NormalizeRows.apply(t, 1e-12, True).sum(), t)  # upstream: an expanded 1
    torch.testing.assert_close(ge, torch.autograd.grad(F.normalize(t, dim=-1, eps=1e-12).sum(), t)[0],
                               rtol=1e-12, atol=1e-12 * ge.abs().max().item())


def test_backward_allocates_one_v_by_d_tensor(monkeypatch):
    import bigsoftmax.heads.margin as Mg

    monkeypatch.setattr(Mg, "_NORMALIZE_BLOCK_BYTES", 64 * 16 * 8)  # 64-row blocks of the 4096 rows
    w, g = _rows(V=4096, d=16)
    for fn, most in ((_normalize_rows, 1), (lambda t, e: F.normalize(t, dim=-1, eps=e), None)):
        t = w.clone().requires_grad_()
        out = fn(t, 1e-12)
        with _BigAllocs(w.numel()) as m:
            torch.autograd.grad(out, t, g)
        if most is not None:
            assert m.count <= most, m.count
        else:  # the counter can fail: autograd's F.normalize backward makes several
            assert m.count >= 3, m.count


def test_arcface_dense_trains_through_it():
    """Autograd's F.normalize + index_select give the same gradients (repeated targets included)."""
    torch.manual_seed(0)
    head = H.ArcFace(8, 40).double()
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([3, 7, 3, 0, 39, 7])
    ref = head.weight.detach().clone().requires_grad_()
    head(x, y).backward()
    # the same loss with autograd's F.normalize
    from bigsoftmax.heads.margin import arc_margin_cos, margin_softmax_loss
    import bigsoftmax.heads.margin as Mg
    orig = Mg._normalize_rows, Mg._gather_rows
    Mg._normalize_rows = lambda w, eps, reuse_grad=False: Mg._normalize(w, eps)
    Mg._gather_rows = lambda w, idx: w.index_select(0, idx)
    try:
        x2 = x.detach().clone().requires_grad_()
        margin_softmax_loss(x2, ref, y, lambda c: arc_margin_cos(c, head.m), scale=head.s,
                            chunk=head.eval_chunk).mean().backward()
    finally:
        Mg._normalize_rows, Mg._gather_rows = orig
    torch.testing.assert_close(head.weight.grad, ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)

r"""Tree path-probability kernel: ``log P(c | h) = Σ_{(n, j) on path(c)} log softmax_j(z_n(h))``.

The training step of every tree head (:class:`~bigsoftmax.heads.TreeSoftmax`,
``HierarchicalSoftmax``, ``ClassBasedSoftmax``) is one call of :class:`PathLogProb` over the
(row, node) pairs of the batch's paths, grouped into :class:`Part` s scored the same way:

* ``'sigmoid'`` — binary nodes with one vector each: ``log σ(±z)``;
* ``'gather'`` — (row, node) pairs of rare nodes: a chunked gather-dot over the node's child slots;
* ``'grouped'`` — popular nodes: one GEMM per node over the rows that visit it.

Per pair the forward keeps ``D = −∂ log P / ∂z`` (``softmax(z) − onehot(child)``; sigmoid:
``−s σ(−s z)`` with ``s = ±1``); the backward pushes ``−g · D`` through the same gathers and GEMMs
into one dense ``[R, d]`` weight gradient, or one sparse COO tensor over the touched rows. The
steps: :func:`sigmoid_pairs`, :func:`softmax_pairs` (forward), :func:`push_gathered`,
:func:`push_grouped` (backward), with :class:`PathGrads` holding the gradient being built.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["Part", "PathLogProb", "PathGrads", "acc_dtype", "mask_value", "gather_scores", "grouped_scores",
           "sigmoid_pairs", "softmax_pairs", "push_gathered", "push_grouped"]

#: elements of a gathered [rows, K, d] block scored at once by :func:`gather_scores`
CHUNK_ELEMS = 1 << 21


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: ``promote_types(dtype, float32)``."""
    return torch.promote_types(dtype, torch.float32)


def mask_value(dtype: torch.dtype) -> float:
    """The most negative finite value: the mask value for impossible entries."""
    return torch.finfo(dtype).min


class Part(NamedTuple):
    """(row, node) pairs scored the same way (built by :meth:`TreeSoftmax._parts`).

    kind 'sigmoid': ``index [P, 1]`` node ids (= weight rows); child 0/1 <-> sigmoid(+z)/sigmoid(-z).
    kind 'gather': ``index [P, A]`` child slots padded to the widest node, ``ok [P, A]`` real-child
    mask (None: all real).
    kind 'grouped': pairs sorted by node; node u owns slots ``offs[u] : offs[u] + arities[u]``
    and the next ``counts[u]`` pairs.
    ``sel`` [P]: positions of these pairs in the caller's pair list (None: all, in order).
    ``keep`` [P] bool ('sigmoid' / 'gather' only): False at padding pairs of a fixed-shape pair list
    (the host-sync-free path), which then add exactly 0 to the output and to every gradient
    (None: every pair is real).
    """

    kind: str
    sel: Optional[Tensor]
    rows: Tensor
    index: Optional[Tensor] = None
    ok: Optional[Tensor] = None
    offs: Tuple[int, ...] = ()
    counts: Tuple[int, ...] = ()
    arities: Tuple[int, ...] = ()
    keep: Optional[Tensor] = None


# ----------------------------------------------------------------------------- scoring
def gather_scores(h: Tensor, weight: Tensor, bias: Optional[Tensor], rows: Tensor, index: Tensor) -> Tensor:
    """``out[p, k] = h[rows[p]] . weight[index[p, k]] + bias[index[p, k]]``, no autograd.

    h [N, d], weight [R, d], bias [R] or None, rows [P], index [P, K] -> [P, K] in the promoted
    dtype of h and weight. The gathered [P, K, d] rows are never held at once: chunks of about
    2M elements (memory O(P * K + chunk)).
    """
    P, K = index.shape
    d = h.shape[1]
    dt = torch.promote_types(h.dtype, weight.dtype)
    out = torch.empty(P, K, dtype=dt, device=h.device)
    step = max(1, CHUNK_ELEMS // max(1, K * d))
    with torch.no_grad():
        for a in range(0, P, step):
            b = min(P, a + step)
            hp = h.index_select(0, rows[a:b]).to(dt)
            w = weight.index_select(0, index[a:b].reshape(-1)).view(b - a, K, d).to(dt)
            out[a:b] = torch.einsum("pkd,pd->pk", w, hp)
        if bias is not None:
            out += bias.index_select(0, index.reshape(-1)).view(P, K).to(dt)
    return out


def grouped_scores(h: Tensor, weight: Tensor, bias: Optional[Tensor], part: Part, valid: Optional[Tensor],
                   acc: torch.dtype) -> List[Tensor]:
    """[count_u, arity_u] masked scores of each node u of a 'grouped' part: one GEMM per node."""
    neg = mask_value(acc)
    hs = h.index_select(0, part.rows).to(torch.promote_types(h.dtype, weight.dtype))
    blocks, p = [], 0
    with torch.no_grad():
        for off, c, a in zip(part.offs, part.counts, part.arities):
            hu, wu = hs[p:p + c], weight[off:off + a]
            z = (hu @ wu.t() if bias is None else torch.addmm(bias[off:off + a], hu, wu.t())).to(acc)
            if valid is not None:
                z = torch.where(valid[off:off + a], z, neg)
            blocks.append(z)
            p += c
    return blocks


# ----------------------------------------------------------------------------- forward steps
def sigmoid_pairs(z: Tensor, child: Tensor) -> Tuple[Tensor, Tensor]:
    """Binary nodes: ``log P = log σ(s z)`` with ``s = +1`` for child 0, ``−1`` for child 1.

    z, child [P] -> (log P [P], D [P, 1] = −∂ log P / ∂z = −s σ(−s z)).
    """
    sz = torch.where(child == 0, z, -z)
    return F.logsigmoid(sz), (torch.where(child == 0, -1.0, 1.0).to(z.dtype) * torch.sigmoid(-sz))[:, None]


def softmax_pairs(z: Tensor, child: Tensor) -> Tuple[Tensor, Tensor]:
    """n-ary nodes: ``log P = log softmax(z)[child]``; z [P, A] (masked children at the mask value).

    Returns (log P [P], D [P, A] = softmax(z) − onehot(child), exactly 0 at masked children).
    """
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    picked = (z.gather(1, child[:, None]) - lse).squeeze(1)
    pr = torch.exp(z - lse)
    return picked, pr.scatter_add_(1, child[:, None], pr.new_full((child.numel(), 1), -1.0))


def _drop_padding(keep: Tensor, lp: Tensor, D: Tensor) -> Tuple[Tensor, Tensor]:
    """Zero the log-prob [P] and ``D`` [P, K] of padding pairs (``keep`` False): no host read."""
    return torch.where(keep, lp, 0.0), torch.where(keep[:, None], D, 0.0)


# ----------------------------------------------------------------------------- backward steps
class PathGrads:
    """The gradients being built by one backward: dense ``grad_h``, and ``grad_w`` / ``grad_b`` either
    dense ``[R, d]`` / ``[R]`` or, when ``sparse``, one preallocated COO (touched rows with repeats)."""

    def __init__(self, h: Tensor, weight: Tensor, parts, need_h: bool, need_w: bool, need_b: bool, sparse: bool):
        R, d = weight.shape
        self.dt = torch.promote_types(h.dtype, weight.dtype)
        dev = h.device
        self.need_w, self.need_b = need_w, need_b
        self.h = torch.zeros(h.shape, dtype=self.dt, device=dev) if need_h else None
        self.sparse = sparse and (need_w or need_b)
        self.w = torch.zeros((R, d), dtype=self.dt, device=dev) if need_w and not sparse else None
        self.b = torch.zeros(R, dtype=self.dt, device=dev) if need_b and not sparse else None
        if self.sparse:
            total = sum(sum(pt.arities) if pt.kind == "grouped" else pt.index.numel() for pt in parts)
            self.sp_idx = torch.empty(total, dtype=torch.long, device=dev)
            self.sp_w = torch.empty((total, d), dtype=self.dt, device=dev) if need_w else None
            self.sp_b = torch.empty(total, dtype=self.dt, device=dev) if need_b else None
            self.pos = 0

    def sparse_rows(self, n: int) -> slice:
        """Reserve the next ``n`` entries of the COO buffers."""
        sl = slice(self.pos, self.pos + n)
        self.pos += n
        return sl

    def finish(self, weight: Tensor, bias_dtype) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(grad_w, grad_b) in the parameters' dtypes (sparse COO when ``sparse``)."""
        R, d = weight.shape
        if self.sparse:
            gw = None if not self.need_w else torch.sparse_coo_tensor(
                self.sp_idx[None], self.sp_w.to(weight.dtype), (R, d), check_invariants=False)
            gb = None if not self.need_b else torch.sparse_coo_tensor(
                self.sp_idx[None], self.sp_b.to(bias_dtype), (R,), check_invariants=False)
            return gw, gb
        return (None if self.w is None else self.w.to(weight.dtype)), (None if self.b is None else self.b.to(bias_dtype))


def push_gathered(part: Part, D: Tensor, g: Tensor, h: Tensor, weight: Tensor, out: PathGrads) -> None:
    """Backward of a 'sigmoid' / 'gather' part: ``G = −g_row · D`` [P, K] pushed through the gathered
    rows in chunks (``grad_h`` by ``index_add_``; ``grad_w`` / ``grad_b`` dense or into the COO)."""
    d = weight.shape[1]
    G = (D * (-g.index_select(0, part.rows).to(D.dtype)[:, None])).to(out.dt)  # d out / d z   [P, K]
    K = G.shape[1]
    step = max(1, CHUNK_ELEMS // max(1, K * d))
    for a in range(0, G.shape[0], step):
        b = min(G.shape[0], a + step)
        idx = part.index[a:b].reshape(-1)
        Gc = G[a:b]
        if out.h is not None:
            w = weight.index_select(0, idx).view(b - a, K, d).to(out.dt)
            out.h.index_add_(0, part.rows[a:b], torch.einsum("pk,pkd->pd", Gc, w))
        hp = h.index_select(0, part.rows[a:b]).to(out.dt) if out.need_w else None
        if out.sparse:
            # padded entries hold zero gradient at the node's own first slot (or a dummy slot):
            # harmless repeats, so no masking copy is needed
            sl = out.sparse_rows(idx.numel())
            out.sp_idx[sl] = idx
            if out.need_w:
                torch.mul(Gc.unsqueeze(2), hp.unsqueeze(1), out=out.sp_w[sl].view(b - a, K, d))
            if out.need_b:
                out.sp_b[sl] = Gc.reshape(-1)
        else:
            if out.need_w:
                out.w.index_add_(0, idx, (Gc.unsqueeze(2) * hp.unsqueeze(1)).reshape(-1, d))
            if out.need_b:
                out.b.index_add_(0, idx, Gc.reshape(-1))


def push_grouped(part: Part, ds: List[Tensor], g: Tensor, h: Tensor, weight: Tensor, out: PathGrads) -> None:
    """Backward of a 'grouped' part: per node u, ``G_u = −g · D_u`` [c, a] through one GEMM each for
    ``grad_h`` (rows of u), ``grad_w[slots of u]`` and ``grad_b[slots of u]``."""
    d = weight.shape[1]
    gparts = g.index_select(0, part.rows).to(ds[0].dtype).split(list(part.counts))
    hs = h.index_select(0, part.rows).to(out.dt) if out.need_w else None
    grad_hs = torch.empty((part.rows.numel(), d), dtype=out.dt, device=h.device) if out.h is not None else None
    p = 0
    for D, gu, off, c, a in zip(ds, gparts, part.offs, part.counts, part.arities):
        G = (D * (-gu[:, None])).to(out.dt)  # [c, a]
        if grad_hs is not None:
            torch.mm(G, weight[off:off + a].to(out.dt), out=grad_hs[p:p + c])
        if out.sparse:
            sl = out.sparse_rows(a)
            torch.arange(off, off + a, out=out.sp_idx[sl])
            if out.need_w:
                torch.mm(G.t(), hs[p:p + c], out=out.sp_w[sl])
            if out.need_b:
                torch.sum(G, 0, out=out.sp_b[sl])
        else:
            if out.need_w:
                out.w[off:off + a] += G.t() @ hs[p:p + c]
            if out.need_b:
                out.b[off:off + a] += G.sum(0)
        p += c
    if grad_hs is not None:
        out.h.index_add_(0, part.rows, grad_hs)


# ----------------------------------------------------------------------------- autograd
class PathLogProb(torch.autograd.Function):
    """``out[i] = Σ over row i's path pairs of log P(chosen child | node)``: (h [N, d], weight [R, d],
    bias [R] | None, parts, child [P], valid [R] | None, sparse) -> [N] in the accumulation dtype.

    One call per step covers every part, so the weight gradient is built once; the forward keeps
    the per-pair ``D`` (a total of Σ P · A floats).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, parts, child, valid, sparse):
        acc = acc_dtype(torch.promote_types(h.dtype, weight.dtype))
        out = torch.zeros(h.shape[0], dtype=acc, device=h.device)
        saved = []
        for part in parts:
            ch = child if part.sel is None else child.index_select(0, part.sel)
            if part.kind == "sigmoid":
                lp, D = sigmoid_pairs(gather_scores(h, weight, bias, part.rows, part.index).squeeze(1).to(acc), ch)
                if part.keep is not None:
                    lp, D = _drop_padding(part.keep, lp, D)
                out.index_add_(0, part.rows, lp)
                saved.append([D])
                continue
            if part.kind == "gather":
                z = gather_scores(h, weight, bias, part.rows, part.index).to(acc)
                blocks, chs = [z if part.ok is None else torch.where(part.ok, z, mask_value(acc))], [ch]
            else:
                blocks, chs = grouped_scores(h, weight, bias, part, valid, acc), ch.split(list(part.counts))
            picked, ds = zip(*(softmax_pairs(z, c) for z, c in zip(blocks, chs)))
            if part.keep is not None:  # one 'gather' block
                lp, D = _drop_padding(part.keep, picked[0], ds[0])
                picked, ds = (lp,), (D,)
            out.index_add_(0, part.rows, picked[0] if len(picked) == 1 else torch.cat(picked))
            saved.append(list(ds))
        ctx.save_for_backward(h, weight)
        ctx.parts, ctx.saved = parts, saved
        ctx.meta = (bias is not None, None if bias is None else bias.dtype, bool(sparse))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        h, weight = ctx.saved_tensors
        has_bias, bias_dtype, sparse = ctx.meta
        need = ctx.needs_input_grad
        out = PathGrads(h, weight, ctx.parts, need[0], need[1], has_bias and need[2], sparse)
        for part, ds in zip(ctx.parts, ctx.saved):
            if part.kind == "grouped":
                push_grouped(part, ds, g, h, weight, out)
            else:
                push_gathered(part, ds[0], g, h, weight, out)
        grad_w, grad_b = out.finish(weight, bias_dtype)
        return (None if out.h is None else out.h.to(h.dtype)), grad_w, grad_b, None, None, None, None

"""Exact full-softmax cross-entropy of a linear layer without the [N, V] logits.

``linear_cross_entropy(x, W, b, y)`` equals ``F.cross_entropy(F.linear(x, W, b), y)`` — loss and
gradients, including ``weight_class`` (F.cross_entropy's ``weight``), ``ignore_index``,
``reduction`` and ``label_smoothing`` — but works on vocabulary slices of ``chunk_size`` classes, so
its peak extra memory is O(N · chunk_size) instead of O(N · V).

Math. With logits ``z_ic = x_i · W_c + b_c``, ``lse_i = logsumexp_c z_ic``, class weights ``w_c``
(all 1 when ``weight_class`` is None), ``S_w = Σ_c w_c`` and smoothing ``ε``, a kept row i
(``y_i != ignore_index``) has the loss of torch's ``cross_entropy_loss_label_smoothing``::

    loss_i = (1 − ε) · w_{y_i} · (lse_i − z_{i,y_i})  +  (ε / V) · Σ_c w_c · (lse_i − z_ic)
           = (1 − ε) · w_{y_i} · (lse_i − z_{i,y_i})  +  (ε / V) · (S_w · lse_i − x_i · u − w · b),
    u = Σ_c w_c W_c  (a [d] vector: the smoothing term needs no per-class work),

``'sum'`` adds the kept rows, ``'mean'`` divides that sum by ``Σ_{kept i} w_{y_i}`` (the number of
kept rows when unweighted; NaN when every row is ignored), ``'none'`` returns ``[...]`` with zeros
at ignored positions. With the upstream gradient ``a_i`` of row i (``g``, ``g / denominator`` or
``g_i``), the gradient of the loss w.r.t. the logits is::

    G_ic = a_i · (α_i · p_ic − β_i · [c = y_i] − γ · w_c),   p_ic = exp(z_ic − lse_i),
    α_i = (1 − ε) · w_{y_i} + (ε / V) · S_w,   β_i = (1 − ε) · w_{y_i},   γ = ε / V,

and ``grad_x = G @ W``, ``grad_W = G.T @ x``, ``grad_b = G.sum(0)``. Only the dense part
``a_i α_i p_ic`` needs the vocabulary loop; the one-hot and the smoothing parts are rank-1 / N-row
updates applied once.

Implementation (a custom autograd Function, two passes over vocabulary slices):

* forward: for each slice ``z = x @ W_s.T + b_s`` (one ``addmm``) and an online logsumexp
  (running row max and rescaled sum of exponentials, accumulated in fp32 or wider); saves only
  x, W, b, target and ``lse [N]``;
* backward: recomputes each slice's logits, forms ``E = |a_i α_i| · p_ic`` in place with a single
  exponential, then ``grad_x += E @ W_s``, ``grad_W[s] = E.T @ x``, ``grad_b[s] = E.sum(0)``.

Row-block mode (small vocabularies). When a training call uses the automatic chunk size and a
block of at least 64 rows × all V classes fits in 16 MiB (V ≲ 65K in fp32), the forward call
processes the rows in such blocks instead: each block's logits are computed once, exponentiated,
and turned into ``grad_x``, ``grad_W``, ``grad_b`` on the spot (accumulated over blocks), so a step
costs three GEMMs instead of four; backward only rescales the stored gradients in place by the
upstream gradient and hands them over (a retained graph's later backward calls recompute them by
slicing, so ``retain_graph=True`` still works). Between forward and backward it holds the
gradients (as much memory as ``W``'s gradient, which training allocates anyway) plus one 16 MiB
block during the forward. ``reduction='none'``, explicit
``chunk_size``, reduced-precision logits (autocast / half) and calls without grad use slicing.

Exponentials are computed as ``exp2`` of logits pre-scaled by log2(e) (the scale is folded into x
and the ``addmm`` bias factor), which is several times faster than ``exp`` on CPU at the same
accuracy; the row shift ``lse_i − log|a_i α_i|`` folds the softmax normalisation and the upstream
scale into that one exponential. A step therefore costs four GEMMs over V·N·d (one more than the
three-GEMM roofline, because the gradient needs the final ``lse`` before any slice can be turned
into probabilities) plus two cheap, cache-resident elementwise passes.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["linear_cross_entropy", "linear_logsumexp", "default_chunk_size", "rowblock_rows"]

_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)
_REDUCTIONS = ("mean", "sum", "none")

#: bytes of one [N, chunk] fp32 logits slice the automatic chunk size aims for (cache resident)
_SLICE_BYTES = 8 * 2**20
_MIN_CHUNK = 512
_MAX_CHUNK = 32768
#: row-block mode (small vocabularies): bytes of one [rows, V] block, and the fewest rows per block
#: worth it (skinnier GEMMs re-read W too often and lose to vocabulary slicing)
_ROWBLOCK_BYTES = 16 * 2**20
_MIN_ROWBLOCK = 64


def rowblock_rows(num_rows: int, num_classes: int, element_size: int = 4) -> int:
    """Rows per block of the row-block training mode, or 0 when vocabulary slicing is used.

    Row blocks hold every class of ``rows`` rows (``rows · V`` values within ``_ROWBLOCK_BYTES``), so
    each block's logits are computed once and turned into gradients on the spot: 3 GEMMs per step
    instead of 4. Worth it only while a block still has at least ``_MIN_ROWBLOCK`` rows (or all rows).
    """
    rows = min(num_rows, _ROWBLOCK_BYTES // max(1, num_classes * element_size))
    return int(rows) if rows >= min(num_rows, _MIN_ROWBLOCK) and rows > 0 else 0


def default_chunk_size(num_rows: int, num_classes: int) -> int:
    """Classes per vocabulary slice when ``chunk_size=None``.

    Aims at an ``[N, chunk]`` fp32 slice of about 8 MiB (cache resident, so the elementwise passes
    are cheap next to the GEMMs), clamped to [512, 32768] classes and to ``num_classes``; a multiple
    of 256 so GEMM panels stay aligned.
    """
    c = _SLICE_BYTES // (4 * max(1, num_rows))
    c = max(_MIN_CHUNK, min(_MAX_CHUNK, c))
    c = (c // 256) * 256
    return int(max(1, min(c, num_classes)))


# ----------------------------------------------------------------------------- helpers
def _acc_dtype(cdt: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32, or fp64 when computing in fp64."""
    return torch.float64 if cdt == torch.float64 else torch.float32


def _slice_logits2(x2: Tensor, Ws: Tensor, b: Optional[Tensor], s0: int, s1: int, cdt: torch.dtype,
                   acc: torch.dtype, buf: Tensor) -> Tensor:
    """Base-2 logits of classes ``[s0, s1)``: ``log2(e) · (x · W_sᵀ + b_s)`` into ``buf[:, : s1 − s0]``
    (``x2`` is pre-scaled by log2(e), the bias scale rides on the ``addmm``), returned in ``acc``."""
    z = buf[:, : s1 - s0]
    if b is not None:
        torch.addmm(b[s0:s1].to(cdt), x2, Ws.t(), beta=_LOG2E, out=z)
    else:
        torch.mm(x2, Ws.t(), out=z)
    return z if cdt == acc else z.to(acc)


def _row_stats(x2: Tensor, W: Tensor, b: Optional[Tensor], chunk: int, cdt: torch.dtype, acc: torch.dtype,
               cw: Optional[Tensor], smoothing: bool, buf: Optional[Tensor] = None):
    """Pass 1. Returns ``lse2 [M]`` (base-2 logsumexp of the logits), when ``smoothing`` ``u [d]``
    (``Σ_c w_c W_c``) and ``wb`` (``Σ_c w_c b_c``), in ``acc``, and the row max ``m2 [M]``.

    ``x2 [M, d]`` is the input already scaled by log2(e) and cast to ``cdt``. ``buf`` (optional,
    ``[M, min(chunk, V)]``): the slice workspace; with a single slice (``chunk >= V``, ``cdt == acc``)
    it holds ``exp2(z2 − m2)`` on return, which the row-block mode turns into probabilities.
    """
    M, d = x2.shape
    V = W.shape[0]
    m_run = s_run = None
    if buf is None:
        buf = x2.new_empty(M, min(chunk, V))
    u = torch.zeros(d, dtype=acc, device=x2.device) if smoothing else None
    wb = torch.zeros((), dtype=acc, device=x2.device) if smoothing else None
    for s0 in range(0, V, chunk):
        s1 = min(V, s0 + chunk)
        Ws = W[s0:s1].to(cdt)
        z = _slice_logits2(x2, Ws, b, s0, s1, cdt, acc, buf)
        m_s = z.amax(dim=1)
        if m_run is None:
            m_new = m_s
            z.sub_(m_new[:, None]).exp2_()
            s_run = z.sum(dim=1)
        else:
            m_new = torch.maximum(m_run, m_s)
            z.sub_(m_new[:, None]).exp2_()
            s_run = s_run * torch.exp2(m_run - m_new) + z.sum(dim=1)
        m_run = m_new
        if smoothing:
            Wa = Ws.to(acc)
            if cw is None:
                u += Wa.sum(dim=0)
                if b is not None:
                    wb += b[s0:s1].to(acc).sum()
            else:
                ws = cw[s0:s1]
                u += Wa.t() @ ws
                if b is not None:
                    wb += (ws * b[s0:s1].to(acc)).sum()
    lse2 = m_run + torch.log2(s_run)
    return lse2, u, wb, m_run


def _grad_pass(x: Tensor, W: Tensor, b: Optional[Tensor], y: Tensor, lse2: Tensor, a: Tensor, cw: Optional[Tensor],
               eps: float, u: Optional[Tensor], chunk: int, cdt: torch.dtype, acc: torch.dtype,
               need_x: bool, need_W: bool, need_b: bool, E0: Optional[Tensor] = None, m2: Optional[Tensor] = None,
               into=None):
    """Pass 2: gradients of ``Σ_i a_i · loss_i`` over the kept rows.

    x [M, d] (kept rows, original dtype), y [M], lse2 [M] and a [M] (upstream per row, ``acc``).
    Returns (grad_x [M, d] in acc, grad_W [V, d] in cdt, grad_b [V] in acc), None where not needed.

    Row-block mode: ``E0 [M, V]`` = ``exp2(z2 − m2)`` left by :func:`_row_stats` over one slice
    (``chunk >= V``) replaces the recomputed logits, and ``into = (grad_W, grad_b)`` (zero-initialised,
    or None entries) are accumulated into instead of written, so blocks of rows can be summed.
    """
    M, d = x.shape
    V = W.shape[0]
    dev = x.device
    if cw is None:
        alpha = a  # a_i * alpha_i with alpha_i = (1 - eps) + (eps / V) * V = 1
        ab = a * (1.0 - eps)  # a_i * beta_i
    else:
        wy = cw[y]
        alpha = a * ((1.0 - eps) * wy + (eps / V) * cw.sum())
        ab = a * ((1.0 - eps) * wy)
    gamma = eps / V

    accumulate = into is not None
    if E0 is not None and (chunk < V or cdt != acc):
        raise AssertionError("row-block mode needs one vocabulary slice in the accumulation dtype")
    gx = torch.zeros(M, d, dtype=acc, device=dev) if need_x else None
    if accumulate:
        gW, gb = into
    else:
        gW = torch.empty(V, d, dtype=cdt, device=dev) if need_W else None
        gb = torch.empty(V, dtype=acc, device=dev) if need_b else None

    active = alpha != 0
    all_active = bool(active.all())
    rows = None if all_active else active.nonzero().squeeze(1)
    coef = alpha if all_active else alpha[rows]
    R = coef.shape[0]
    xr = x if all_active else x[rows]
    xc = xr.to(cdt)
    if eps > 0 and (need_W or need_b):
        ax = (a[:, None] * x.to(acc)).sum(dim=0)  # Σ_i a_i x_i over every kept row, [d]
        a_sum = a.sum()
    if R > 0:
        neg = coef < 0
        any_neg = bool(neg.any())
        sgn = torch.where(neg, -1.0, 1.0).to(acc) if any_neg else None
        shift2 = lse2 if all_active else lse2[rows]
        shift2 = shift2 - torch.log2(coef.abs())
        x2 = xc * _LOG2E
        xs = (xc * sgn[:, None].to(cdt)) if any_neg else xc
        buf = x2.new_empty(R, min(chunk, V)) if E0 is None else None
        gxr = gx if (all_active or not need_x) else torch.zeros(R, d, dtype=acc, device=dev)
    for s0 in range(0, V, chunk):
        s1 = min(V, s0 + chunk)
        Ws = W[s0:s1].to(cdt)
        if R > 0:
            if E0 is not None:  # logits already exponentiated by pass 1: rescale rows, no GEMM
                E = E0 if all_active else E0[rows]
                m2r = m2 if all_active else m2[rows]
                E.mul_(torch.exp2(m2r - shift2)[:, None])  # |a_i alpha_i| * p_ic
            else:
                E = _slice_logits2(x2, Ws, b, s0, s1, cdt, acc, buf)
                E.sub_(shift2[:, None]).exp2_()  # |a_i alpha_i| * p_ic
            Ec = E if cdt == acc else E.to(cdt)
            if need_x:
                if cdt == acc:
                    gxr.addmm_(Ec, Ws)
                else:
                    gxr += (Ec @ Ws).to(acc)
            if need_W:
                if accumulate:
                    gW[s0:s1].addmm_(Ec.t(), xs)
                else:
                    torch.mm(Ec.t(), xs, out=gW[s0:s1])
            if need_b:
                if accumulate:
                    gb[s0:s1] += torch.mv(E.t(), sgn) if any_neg else E.sum(dim=0)
                elif any_neg:
                    torch.mv(E.t(), sgn, out=gb[s0:s1])
                else:
                    torch.sum(E, dim=0, out=gb[s0:s1])
        elif not accumulate:
            if need_W:
                gW[s0:s1].zero_()
            if need_b:
                gb[s0:s1].zero_()
        if eps > 0:  # smoothing part −a_i γ w_c, applied while the slice is cache-resident
            ws = None if cw is None else cw[s0:s1]
            if need_W:
                if ws is None:
                    gW[s0:s1].sub_((gamma * ax).to(cdt))
                else:
                    gW[s0:s1].addr_(ws.to(cdt), ax.to(cdt), alpha=-gamma)
            if need_b:
                gb[s0:s1].sub_(gamma * a_sum * (1.0 if ws is None else ws))
    if R > 0 and need_x:
        if any_neg:
            gxr.mul_(sgn[:, None])
        if not all_active:
            gx.index_copy_(0, rows, gxr)
    # one-hot part −a_i β_i [c = y_i]
    if need_x:
        gx.sub_(ab[:, None] * W[y].to(acc))
        if eps > 0:
            gx.sub_(gamma * a[:, None] * u[None, :])
    if need_W:
        gW.index_add_(0, y, (-ab[:, None] * x.to(acc)).to(cdt))
    if need_b:
        gb.index_add_(0, y, -ab)
    return gx, gW, gb


def _rowblock_pass(x: Tensor, W: Tensor, b: Optional[Tensor], y: Tensor, cw: Optional[Tensor], eps: float,
                   rows: int, cdt: torch.dtype, acc: torch.dtype, reduction: str,
                   need_x: bool, need_W: bool, need_b: bool):
    """Forward and gradients together, in blocks of ``rows`` rows holding every class (3 GEMMs).

    For each block: the logits ``[rows, V]`` once (:func:`_row_stats` with a single slice), then
    :func:`_grad_pass` turns the same buffer into ``|a_i α_i| p_ic`` and accumulates ``grad_W`` /
    ``grad_b``. The upstream scale is 1 (``'sum'``) or ``1 / denominator`` (``'mean'``); backward
    rescales by the real upstream gradient. Returns ``lse2 [M]``, ``u``, ``wb`` (as
    :func:`_row_stats`) and ``(grad_x [M, d], grad_W, grad_b)``.
    """
    M, d = x.shape
    V = W.shape[0]
    dev = x.device
    if reduction == "mean":
        denom = float(M) if cw is None else cw[y].sum()
        scale = 1.0 / denom
    else:
        scale = 1.0
    gx = torch.empty(M, d, dtype=acc, device=dev) if need_x else None
    gW = torch.zeros(V, d, dtype=cdt, device=dev) if need_W else None
    gb = torch.zeros(V, dtype=acc, device=dev) if need_b else None
    lse2 = torch.empty(M, dtype=acc, device=dev)
    buf = torch.empty(min(rows, M), V, dtype=cdt, device=dev)
    u = wb = None
    for s0 in range(0, M, rows):
        s1 = min(M, s0 + rows)
        xb, yb = x[s0:s1], y[s0:s1]
        E0 = buf[: s1 - s0]
        l2, ub, wbb, m2 = _row_stats(xb.to(cdt) * _LOG2E, W, b, V, cdt, acc, cw, eps > 0 and s0 == 0, buf=E0)
        if s0 == 0:
            u, wb = ub, wbb
        lse2[s0:s1] = l2
        a = torch.ones(s1 - s0, dtype=acc, device=dev) * scale
        gxb, _, _ = _grad_pass(xb, W, b, yb, l2, a, cw, eps, u, V, cdt, acc, need_x, need_W, need_b,
                               E0=E0, m2=m2, into=(gW, gb))
        if need_x:
            gx[s0:s1] = gxb
    return lse2, u, wb, (gx, gW, gb)


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked exact softmax cross-entropy; see the module docstring for the math."""

    @staticmethod
    def forward(ctx, x, W, b, y, cw, ignore_index, reduction, eps, chunk, cdt, precompute, rowblock):
        acc = _acc_dtype(cdt)
        N = x.shape[0]
        V = W.shape[0]
        keep = y != ignore_index
        all_kept = bool(keep.all())
        xk = x if all_kept else x[keep]
        yk = y if all_kept else y[keep]
        M = xk.shape[0]
        smoothing = eps > 0
        need = ctx.needs_input_grad
        rows = rowblock_rows(M, V, torch.finfo(cdt).bits // 8) if rowblock else 0
        rows = rows if (rows and cdt == acc and reduction != "none" and any(need[:3])) else 0
        ctx.stash = None
        with torch.autocast(x.device.type, enabled=False):
            if M > 0 and rows:
                lse2, u, wb, ctx.stash = _rowblock_pass(xk, W, b, yk, cw, eps, rows, cdt, acc, reduction, need[0],
                                                        need[1], need[2] and b is not None)
            elif M > 0:
                x2 = xk.to(cdt) * _LOG2E
                lse2, u, wb, _ = _row_stats(x2, W, b, chunk, cdt, acc, cw, smoothing)
            if M > 0:
                lse = lse2 * _LN2
                zy = (xk.to(cdt).to(acc) * W[yk].to(cdt).to(acc)).sum(dim=1)
                if b is not None:
                    zy = zy + b[yk].to(cdt).to(acc)
                wy = None if cw is None else cw[yk]
                nll = lse - zy
                per = (1.0 - eps) * nll if wy is None else (1.0 - eps) * wy * nll
                if smoothing:
                    Sw = float(V) if cw is None else cw.sum()
                    per = per + (eps / V) * (Sw * lse - (xk.to(cdt).to(acc) @ u) - wb)
            else:
                lse2 = torch.zeros(0, dtype=acc, device=x.device)
                u = torch.zeros(W.shape[1], dtype=acc, device=x.device) if smoothing else None
                wy = None if cw is None else torch.zeros(0, dtype=acc, device=x.device)
                per = torch.zeros(0, dtype=acc, device=x.device)
            if reduction == "none":
                out = per.new_zeros(N)
                out = out.masked_scatter(keep, per) if not all_kept else per
                denom = None
            elif reduction == "sum":
                out = per.sum()
                denom = None
            else:
                denom = per.new_tensor(float(M)) if cw is None else wy.sum()
                out = per.sum() / denom

            # row-block mode: the gradients are already in ctx.stash
            ctx.rowblock = ctx.stash is not None
            ctx.precomputed = ctx.rowblock or bool(precompute and reduction != "none" and M > 0 and any(need[:3]))
            if ctx.precomputed and not ctx.rowblock:
                a = torch.ones(M, dtype=acc, device=x.device)
                if reduction == "mean":
                    a = a / denom
                gx, gW, gb = _grad_pass(xk, W, b, yk, lse2, a, cw, eps, u, chunk, cdt, acc, need[0], need[1],
                                        need[2] and b is not None)
                ctx.stash = (gx, gW, gb)

        ctx.save_for_backward(x, W, b, y, cw, lse2, u, denom)
        ctx.meta = (ignore_index, reduction, eps, chunk, cdt, acc, all_kept)
        return out

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "linear_cross_entropy is differentiable once: double backward (create_graph=True, "
                "hessians, gradient penalties through this loss) is not supported; use "
                "F.cross_entropy(F.linear(...)) for higher-order gradients"
            )
        return _LinearCrossEntropy._backward(ctx, g)

    @staticmethod
    @once_differentiable
    def _backward(ctx, g):
        x, W, b, y, cw, lse2, u, denom = ctx.saved_tensors
        ignore_index, reduction, eps, chunk, cdt, acc, all_kept = ctx.meta
        need_x, need_W, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and b is not None
        keep = None if all_kept else (y != ignore_index)
        with torch.autocast(x.device.type, enabled=False):
            # row-block mode hands its gradients over on the first backward; a retained graph's later
            # backward calls recompute them by vocabulary slicing from the saved lse (else branch)
            if ctx.precomputed and (ctx.stash is not None or not ctx.rowblock):
                if ctx.stash is None:
                    raise RuntimeError("linear_cross_entropy(precompute=True) supports a single backward; "
                                       "use precompute=False for retain_graph=True")
                gx, gW, gb = ctx.stash
                ctx.stash = None  # scaled in place below: a second backward must not reuse it
                gs = g.to(acc)
                if bool(gs != 1):
                    for t in (gx, gW, gb):
                        if t is not None:
                            t.mul_(gs.to(t.dtype))
            else:
                xk = x if all_kept else x[keep]
                yk = y if all_kept else y[keep]
                M = xk.shape[0]
                if reduction == "none":
                    a = g.reshape(-1).to(acc)
                    a = a if all_kept else a[keep]
                elif reduction == "sum":
                    a = g.to(acc).expand(M)
                else:
                    a = (g.to(acc) / denom).expand(M)
                if M > 0:
                    gx, gW, gb = _grad_pass(xk, W, b, yk, lse2, a.contiguous(), cw, eps, u, chunk, cdt, acc,
                                            need_x, need_W, need_b)
                else:
                    gx = torch.zeros(0, x.shape[1], dtype=acc, device=x.device) if need_x else None
                    gW = torch.zeros(W.shape, dtype=cdt, device=x.device) if need_W else None
                    gb = torch.zeros(W.shape[0], dtype=acc, device=x.device) if need_b else None
            if need_x:
                if not all_kept:
                    full = torch.zeros(x.shape, dtype=acc, device=x.device)
                    full[keep] = gx
                    gx = full
                gx = gx.to(x.dtype)
            if gW is not None:
                gW = gW.to(W.dtype)
            if gb is not None:
                gb = gb.to(b.dtype)
        return (gx if need_x else None, gW if need_W else None, gb if need_b else None,
                None, None, None, None, None, None, None, None, None)


# ----------------------------------------------------------------------------- public function
def _check_float(t, name: str, shape_msg: str):
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_msg}, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor {shape_msg}, got dtype {t.dtype}")


def linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    target: Tensor,
    *,
    weight_class: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    chunk_size: Optional[int] = None,
    precompute: bool = False,
) -> Tensor:
    """Exact ``F.cross_entropy(F.linear(input, weight, bias), target, ...)`` without [N, V] logits.

    Args:
        input: ``[..., d]`` hidden states (any floating dtype).
        weight: ``[V, d]`` class embeddings (``nn.Linear`` layout; any floating dtype).
        bias: ``[V]`` or None.
        target: ``[...]`` int64 class ids in ``[0, V)`` or ``ignore_index``.
        weight_class: optional ``[V]`` per-class rescaling weight — F.cross_entropy's ``weight``
            (treated as a constant: no gradient flows into it).
        ignore_index: target value whose positions contribute neither loss nor gradient.
        reduction: ``'mean'`` (divided by the summed target-class weights of the kept rows),
            ``'sum'`` or ``'none'`` (``[...]``, zeros at ignored positions).
        label_smoothing: ε in [0, 1]: the target becomes ``(1 − ε) · onehot + ε / V``, with the
            class weights applied to both terms exactly like F.cross_entropy.
        chunk_size: classes per vocabulary slice (default :func:`default_chunk_size`); peak extra
            memory is about ``N · chunk_size`` floats. With the default, small vocabularies train in
            row blocks of at most 16 MiB instead (:func:`rowblock_rows`; see the module docstring).
        precompute: compute the gradients inside the forward call (scalar reductions only) and
            only rescale them in backward. The same FLOPs as the default; it moves the work, holds
            a ``[V, d]`` gradient between forward and backward and allows a single backward. Off by
            default (see ``docs/full_softmax.md`` for the measurement).

    Returns:
        scalar loss, or ``[...]`` for ``reduction='none'``; dtype fp32 (fp64 for fp64 inputs) —
        the logsumexp is always accumulated in at least fp32.

    The logits are computed in ``promote_types(input.dtype, weight.dtype)``, or in the autocast
    dtype inside an enabled ``torch.autocast`` region (like ``F.linear``), and the softmax
    statistics in fp32. Differentiable once w.r.t. input, weight and bias (double backward raises).
    """
    from .heads.base import check_reduction, check_target  # lazy: heads imports this module

    _check_float(input, "input", "of shape [..., d]")
    _check_float(weight, "weight", "of shape [V, d]")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, d] (2-D), got {tuple(weight.shape)}")
    V, d = weight.shape
    if V < 1:
        raise ValueError("weight must have at least one class row (V >= 1)")
    if input.dim() < 1 or input.shape[-1] != d:
        raise ValueError(f"input must have shape [..., d={d}] (d = weight.shape[1]), got {tuple(input.shape)}")
    if bias is not None:
        _check_float(bias, "bias", f"of shape [V={V}]")
        if tuple(bias.shape) != (V,):
            raise ValueError(f"bias must have shape [V={V}], got {tuple(bias.shape)}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor of int64 class ids, got {type(target).__name__}")
    if tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(f"target shape {tuple(target.shape)} must equal input's leading shape {tuple(input.shape[:-1])}")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    check_target(target, V, ignore_index)
    check_reduction(reduction)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be a float in [0.0, 1.0], got {label_smoothing!r}")
    eps = float(label_smoothing)
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    cdt = torch.promote_types(input.dtype, weight.dtype)
    if bias is not None:
        cdt = torch.promote_types(cdt, bias.dtype)
    dev_type = input.device.type
    if torch.is_autocast_enabled(dev_type) and cdt != torch.float64:
        cdt = torch.get_autocast_dtype(dev_type)
    acc = _acc_dtype(cdt)

    cw = None
    if weight_class is not None:
        _check_float(weight_class, "weight_class", f"of shape [V={V}]")
        if tuple(weight_class.shape) != (V,):
            raise ValueError(f"weight_class must have shape [V={V}] (one weight per class), got {tuple(weight_class.shape)}")
        if weight_class.requires_grad and torch.is_grad_enabled():
            raise ValueError("weight_class must not require grad: linear_cross_entropy treats class weights as "
                             "constants (pass weight_class.detach())")
        cw = weight_class.to(acc)

    lead = target.shape
    x = input.reshape(-1, d)
    y = target.reshape(-1).long()
    chunk = chunk_size if chunk_size is not None else default_chunk_size(x.shape[0], V)
    chunk = min(chunk, V)
    # precompute only when a graph is being built (under no_grad the forward pass alone runs)
    wants_grad = input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    precompute = bool(precompute) and torch.is_grad_enabled() and wants_grad
    # row-block mode (3 GEMMs) for small vocabularies when training with the automatic chunk size
    rowblock = chunk_size is None and not precompute and torch.is_grad_enabled() and wants_grad
    out = _LinearCrossEntropy.apply(x, weight, bias, y, cw, ignore_index, reduction, eps, chunk, cdt, precompute,
                                    rowblock)
    if reduction == "none":
        out = out.reshape(lead)
    return out


def linear_logsumexp(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                     chunk_size: Optional[int] = None) -> Tensor:
    """``torch.logsumexp(F.linear(input, weight, bias), -1)`` in vocabulary slices: [..., d] -> [...].

    The log-normaliser log Z(x) of the full softmax, exact, with peak extra memory O(N · chunk_size)
    also when differentiated: it is the library's one fused log-normaliser kernel,
    :func:`bigsoftmax._lse.linear_logsumexp`, in recompute mode (the backward rescores each class
    slice instead of storing [N, V] probabilities). Accumulated in >= fp32.
    """
    from ._lse import linear_logsumexp as _lse_kernel

    _check_float(input, "input", "of shape [..., d]")
    _check_float(weight, "weight", "of shape [V, d]")
    if weight.dim() != 2 or input.dim() < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"input [..., d] and weight [V, d] must agree on d, got {tuple(input.shape)} and {tuple(weight.shape)}")
    if bias is not None:
        _check_float(bias, "bias", f"of shape [V={weight.shape[0]}]")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape [V={weight.shape[0]}], got {tuple(bias.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    lead = input.shape[:-1]
    x = input.reshape(-1, weight.shape[1])
    chunk = chunk_size if chunk_size is not None else default_chunk_size(x.shape[0], weight.shape[0])
    lse, _ = _lse_kernel(x, weight, bias, None, recompute=True, chunk=min(chunk, weight.shape[0]))
    return lse.reshape(lead)

"""Fused, exact ``lse = logsumexp(x @ W.T + b)`` and target logit ``z_y``, memory-light.

The one differentiable log-normaliser kernel of the library: the adaptive softmax's head and tail
clusters, the self-normalised softmax's ``α · (log Z)²`` penalty and ``FullSoftmax``'s exact
``log Z`` (``bigsoftmax._full.linear_logsumexp``) all call :func:`linear_logsumexp` here. The chunked
cross-entropy with label smoothing / class weights lives in ``bigsoftmax._full``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["linear_logsumexp"]


# =====================================================================================
# fused  lse = logsumexp(x @ W.T + b),  z_y = (x @ W.T + b)[y]   (exact, memory-light)
# =====================================================================================

#: scores per class chunk for narrow inputs (4 MiB: stays in cache; fewer, larger ops measured
#: as fast as 1 MiB chunks and suffer less from thread synchronisation on a loaded machine)
_CHUNK_ELEMS = 1 << 20
#: inputs at most this wide recompute their scores in the backward pass by default (their GEMMs
#: are memory-bound, so rescoring cache-sized chunks beats storing and re-reading [n, o] values)
_RECOMPUTE_MAX_IN = 64
_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except TypeError:  # pragma: no cover - torch < 2.4
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        if enabled:
            return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()
    return None


def _class_chunk(n: int, num_classes: int, in_features: int) -> int:
    """Classes per chunk: about 2^20 scores for narrow inputs, whose GEMMs are memory-bound;
    about 2^21 (8 MiB) for wide ones, whose GEMMs need large panels to run fast."""
    elems = _CHUNK_ELEMS if in_features <= _RECOMPUTE_MAX_IN else 2 * _CHUNK_ELEMS
    return int(min(num_classes, max(256, elems // max(n, 1))))


def _scores2(x: Tensor, w: Tensor, b: Optional[Tensor], acc: torch.dtype, shift: Optional[Tensor] = None) -> Tensor:
    """Base-2 scores ``log2(e) * (x @ w.T + b) - shift``, the scale folded into the GEMM's alpha
    (exp2 is several times faster than exp on CPU, at the same accuracy); ``shift`` [n, 1] is
    subtracted in the GEMM's epilogue (fp32/fp64 only)."""
    if shift is not None and x.dtype == acc:
        if b is None:
            return torch.addmm(shift.neg(), x, w.t(), alpha=_LOG2E)
        return torch.addmm(b[None, :] - shift / _LOG2E, x, w.t(), beta=_LOG2E, alpha=_LOG2E)
    if b is None:
        z = torch.addmm(x.new_zeros(()), x, w.t(), beta=0.0, alpha=_LOG2E)
    else:
        z = torch.addmm(b, x, w.t(), beta=_LOG2E, alpha=_LOG2E)
    z = z.to(acc)
    return z if shift is None else z.sub_(shift)


def _target_logit(x: Tensor, w: Tensor, b: Optional[Tensor], y: Tensor, acc: torch.dtype) -> Tensor:
    zt = torch.einsum("nk,nk->n", x.to(acc), w.index_select(0, y).to(acc))
    if b is not None:
        zt = zt + b.index_select(0, y).to(acc)
    return zt


def _lse2_stream(x: Tensor, w: Tensor, b: Optional[Tensor], acc: torch.dtype, chunk: int) -> Tensor:
    """Base-2 logsumexp over classes, chunk by chunk (O(n * chunk) memory).

    Each chunk keeps its own row max ``m_c`` and ``s_c = sum exp2(z - m_c)``; the chunks are
    combined once at the end, ``lse2 = M + log2(sum_c s_c exp2(m_c - M))`` with ``M = max_c m_c``
    (four kernels per chunk instead of an online update's eight).
    """
    ms, ss = [], []
    for s in range(0, w.shape[0], chunk):
        e = min(s + chunk, w.shape[0])
        z = _scores2(x, w[s:e], None if b is None else b[s:e], acc)
        m = z.amax(dim=1)
        ms.append(m)
        ss.append(z.sub_(m[:, None]).exp2_().sum(dim=1))
    if len(ms) == 1:
        return ms[0] + torch.log2(ss[0])
    m = torch.stack(ms, dim=1)
    top = m.amax(dim=1)
    return top + torch.log2((torch.stack(ss, dim=1) * torch.exp2(m - top[:, None])).sum(dim=1))


class _LinearLogSumExp(torch.autograd.Function):
    """(x [n,k], W [o,k], b [o]|None, y [n]|None) -> (lse [n], z_y [n]) in the accumulation dtype.

    Gradients: d lse / d z = softmax(z) and d z_y / d z = onehot(y), so with upstream (g, g_t)
    the logit gradient is ``softmax(z) * g[:, None] + onehot(y) * g_t[:, None]``. Only the dense
    first part touches [n, o]; the target part is applied to x, W[y], b[y] directly (O(n k)).
    Two modes: *stored* keeps ``exp(z - max)`` [n, o] and its row sums from the forward (three
    GEMMs in all); *recompute* keeps only ``lse`` and rescores cache-sized class chunks in the
    backward (four GEMMs, O(n * chunk) memory; the default for narrow inputs, whose GEMMs are
    memory-bound).
    """

    @staticmethod
    def forward(ctx, x, w, b, y, recompute, chunk, cd, acc):
        x_c, w_c = x.to(cd), w.to(cd)
        b_c = None if b is None else b.to(cd)
        zt = None if y is None else _target_logit(x_c, w_c, b_c, y, acc)
        if recompute:
            lse2 = _lse2_stream(x_c, w_c, b_c, acc, chunk)
            ctx.save_for_backward(x, w, b, y, lse2)
        else:
            e = _scores2(x_c, w_c, b_c, acc)
            m = e.amax(dim=1)
            e.sub_(m[:, None]).exp2_()  # in place: exp(z - max), values in (0, 1]
            s = e.sum(dim=1)
            lse2 = m + torch.log2(s)
            ctx.save_for_backward(x, w, b, y, lse2, e, s)
        ctx.stored = not recompute
        ctx.cfg = (chunk, cd, acc)
        if zt is None:
            zt = lse2.new_zeros(0)
            ctx.mark_non_differentiable(zt)
        return lse2 * _LN2, zt

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lse, g_t):
        chunk, cd, acc = ctx.cfg
        if ctx.stored:
            x, w, b, y, lse2, e, s = ctx.saved_tensors
        else:
            x, w, b, y, lse2 = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and b is not None
        x_c, w_c = x.to(cd), w.to(cd)
        b_c = None if b is None else b.to(cd)
        o = w.shape[0]
        dense = g_lse is not None and x.shape[0] > 0
        # every class chunk writes its own rows of gw / gb: no zero fill needed when dense
        new_w = torch.empty if dense else torch.zeros
        gx = torch.zeros(x.shape, dtype=cd, device=x.device) if need_x else None
        gw = new_w(w.shape, dtype=cd, device=w.device) if need_w else None
        gb = new_w(o, dtype=acc, device=w.device) if need_b else None
        if dense and (need_x or need_w or need_b):
            if ctx.stored:
                # one full-width pass: these GEMMs are compute-bound, large ones run fastest
                gz = e * (g_lse.to(acc) / s)[:, None]
                spans = [(0, o, gz)]
            else:
                g = g_lse.to(acc)
                # fold a positive upstream into the exponent (one pass fewer per chunk):
                # softmax(z) * g = exp2(z2 - (lse2 - log2 g))
                fold = bool((g > 0).all())
                shift = (lse2 - torch.log2(g))[:, None] if fold else lse2[:, None]
                g_col = None if fold else g[:, None]
                spans = range(0, o, chunk)
            for sp in spans:
                if ctx.stored:
                    st, en, gz = sp
                else:
                    st, en = sp, min(sp + chunk, o)
                    gz = _scores2(x_c, w_c[st:en], None if b_c is None else b_c[st:en], acc, shift=shift)
                    gz.exp2_()  # softmax(z) * g
                    if g_col is not None:
                        gz.mul_(g_col)
                if gb is not None:
                    torch.sum(gz, dim=0, out=gb[st:en])
                gz = gz.to(cd)
                if gx is not None:
                    gx.addmm_(gz, w_c[st:en])
                if gw is not None:
                    torch.mm(gz.t(), x_c, out=gw[st:en])
        if y is not None and g_t is not None and g_t.numel():
            gt = g_t.to(cd)[:, None]
            if gx is not None:
                gx.add_(w_c.index_select(0, y) * gt)
            if gw is not None:
                gw.index_add_(0, y, x_c * gt)
            if gb is not None:
                gb.index_add_(0, y, g_t.to(acc))
        gx = None if gx is None else gx.to(x.dtype)
        gw = None if gw is None else gw.to(w.dtype)
        gb = None if gb is None else gb.to(b.dtype)
        return gx, gw, gb, None, None, None, None, None


def linear_logsumexp(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    target: Optional[Tensor] = None,
    *,
    recompute: Optional[bool] = None,
    chunk: Optional[int] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Fused, exact ``lse = logsumexp(x @ W.T + b, -1)`` and target logit ``z_y = (x @ W.T + b)[y]``.

    Shapes: x [n, k], weight [o, k], bias [o] or None, target [n] int64 or None. Returns
    ``(lse [n], z_y [n] or None)`` in ``promote(dtype, float32)``; both are differentiable, so
    ``z_y - lse`` is the log-softmax at the target (cross-entropy ``lse - z_y``) and ``lse`` alone
    the log-normaliser (e.g. a self-normalisation penalty ``alpha * lse**2``). Neither the [n, o]
    log-softmax nor its one-hot gradient is built: the backward forms ``softmax(z) * g`` directly.

    ``recompute`` (default: ``k <= 64``): keep only ``lse`` and rescore class chunks of ``chunk``
    classes (default about 2^20 / n, or 2^21 / n for k > 64) in the backward — peak extra memory
    O(n * chunk), one extra GEMM; otherwise keep ``exp(z - max)`` [n, o] (as much memory as autograd through
    ``log_softmax`` would). Without grad the forward always streams over chunks. Under autocast
    the GEMMs run in the autocast dtype and the softmax statistics in fp32. Not twice
    differentiable.
    """
    cd = _autocast_dtype(x.device.type) or torch.promote_types(x.dtype, weight.dtype)
    acc = torch.promote_types(cd, torch.float32)
    n, o = x.shape[0], weight.shape[0]
    if chunk is None:
        chunk = _class_chunk(n, o, x.shape[1])
    y = None if target is None else target.reshape(-1).long()
    grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if not grad:
        with torch.autocast(x.device.type, enabled=False):
            x_c, w_c = x.to(cd), weight.to(cd)
            b_c = None if bias is None else bias.to(cd)
            if n:
                lse = _lse2_stream(x_c, w_c, b_c, acc, chunk) * _LN2
            else:
                lse = x.new_zeros(0, dtype=acc)
            zt = None if y is None else _target_logit(x_c, w_c, b_c, y, acc)
        return lse, zt
    if recompute is None:
        recompute = x.shape[1] <= _RECOMPUTE_MAX_IN
    with torch.autocast(x.device.type, enabled=False):
        lse, zt = _LinearLogSumExp.apply(x, weight, bias, y, bool(recompute), int(chunk), cd, acc)
    return lse, (zt if y is not None else None)

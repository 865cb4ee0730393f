r"""The one streaming log-normaliser of a linear layer, and the exact linear cross-entropy on it.

Every exact softmax of the library over ``z = x @ W.T + b`` runs on the named steps of this
file: :class:`~bigsoftmax.heads.FullSoftmax` (and ``functional.linear_cross_entropy``), the head and
tail clusters of :class:`~bigsoftmax.heads.AdaptiveSoftmax`, the self-normalised softmax, the dense
margin heads and every head's exact evaluation (``log Z``). None of them holds the ``[N, V]``
logits: the vocabulary is visited in slices of ``chunk`` classes, so the peak extra memory is
O(N · chunk), also under autograd.

Math. With ``lse_i = logsumexp_c z_ic`` and ``p_ic = exp(z_ic − lse_i)``, every loss handled here
has a logit gradient of the form::

    G_ic = dense_i · p_ic + onehot_i · [c = y_i] + smooth_i · w_c            (GradCoefs)

and ``grad_x = G @ W``, ``grad_W = G.T @ x``, ``grad_b = G.sum(0)``. Only the dense term needs the
vocabulary loop; the one-hot and the smoothing terms are rank-1 / N-row updates applied once.
For ``(lse, z_y)`` with upstream ``(g, g_t)``: ``dense = g``, ``onehot = g_t``. For the label-smoothed,
class-weighted cross-entropy of torch's ``cross_entropy_loss_label_smoothing`` (class weights
``w_c``, ``S_w = Σ_c w_c``, smoothing ``ε``, upstream ``a_i``)::

    loss_i = (1 − ε) w_{y_i} (lse_i − z_{i,y_i}) + (ε / V) (S_w lse_i − x_i · u − w · b),   u = Σ_c w_c W_c
    dense_i = a_i ((1 − ε) w_{y_i} + ε S_w / V),  onehot_i = −a_i (1 − ε) w_{y_i},  smooth_i = −a_i ε / V.

Numerics: one choice — base 2. Logits are pre-scaled by log2(e) (folded into ``x`` and the
``addmm`` bias factor) so every exponential is an ``exp2`` (several times faster than ``exp`` on CPU
at the same accuracy); row statistics are accumulated in fp32 (fp64 for fp64 inputs). The
gradient pass folds ``log|dense_i|`` into the row shift so one ``exp2`` gives ``|dense_i| p_ic``.

Steps (Megatron's ``calculate_logits_max`` / ``calculate_predicted_logits`` /
``calculate_gradients``), each usable on one vocabulary shard so that an all-reduce can sit
between them (vocabulary-parallel heads):

* :func:`local_row_stats` — per-row max ``m`` and ``Σ exp2(z2 − m)`` of this shard's classes;
* :func:`sumexp_at` — a shard's sum of exponentials re-expressed at the global max;
* :func:`lse2_of` — the base-2 log-normaliser from (global max, global sum);
* :func:`target_logit` — ``z_{i,y_i}`` (zero for rows whose target is in another shard);
* :func:`smoothing_stats` — ``u = Σ_c w_c W_c`` and ``Σ_c w_c b_c`` (additive over shards);
* :func:`dense_grads` / :func:`onehot_grads` / :func:`smoothing_grads` — the three parts of the
  gradient of the shard's classes given the global ``lse``.

A kernel never imports a head; the heads import :func:`linear_cross_entropy` and
:func:`linear_logsumexp` (the autograd entry points) from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._validate import (
    check_chunk_size, check_class_weight, check_ignore_index, check_label_smoothing,
    check_reduction, check_target, sync_free,
)
from .._validate import check_linear as _check_linear
from ._opaque import call_opaque, register_opaque
from .reduce import reduce_loss

__all__ = [
    "KernelParams",
    "GradCoefs",
    "RowStats",
    "default_chunk_size",
    "rowblock_rows",
    "acc_dtype",
    "compute_dtype",
    "slice_logits2",
    "local_row_stats",
    "sumexp_at",
    "lse2_of",
    "target_logit",
    "smoothing_stats",
    "Grads",
    "new_grads",
    "dense_grads",
    "onehot_grads",
    "smoothing_grads",
    "linear_cross_entropy",
    "linear_logsumexp",
    "linear_logsumexp_unchecked",
]

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)

#: bytes of one [N, chunk] fp32 logits slice the automatic chunk size aims for (cache resident)
_SLICE_BYTES = 8 * 2**20
_MIN_CHUNK = 512
_MAX_CHUNK = 32768
#: row-block mode (small vocabularies): bytes of one [rows, V] block, and the fewest rows per block
#: worth it (skinnier GEMMs re-read W too often and lose to vocabulary slicing)
_ROWBLOCK_BYTES = 16 * 2**20
_MIN_ROWBLOCK = 64
#: inputs at most this wide recompute their logits in the lse backward by default (their GEMMs are
#: memory-bound, so rescoring cache-sized slices beats storing and re-reading [N, V] values)
_RECOMPUTE_MAX_IN = 64
#: the most bytes of ``[N, V]`` exponentials the lse's *stored* mode may keep between forward and
#: backward by default (issue 11: training must take O(N · chunk) extra memory, not O(N · V)).
#: 64 MiB is the size where storing still pays off: a buffer this size is already far out of cache,
#: so re-reading it costs about what rescoring it costs, while the GEMM saved shrinks with it; and it
#: is a fixed cap next to the ``[V, d]`` weight gradient every dense step holds anyway. Larger
#: batches recompute (one GEMM more); ``recompute=False`` still stores at any size. (The backward
#: rescales a copy of the stored buffer, so a step holds at most twice this transiently.)
_STORED_MAX_BYTES = 64 * 2**20


# ============================================================================ parameters
@dataclass(frozen=True)
class KernelParams:
    """What every step needs besides the tensors: the slicing and the dtypes.

    Args:
        chunk: classes per vocabulary slice (``<= V``).
        cdt: dtype of the logits GEMMs (the promoted input dtype, or the autocast dtype).
        acc: accumulation dtype of the row statistics and of ``grad_x`` (fp32, or fp64).
        exclude_target: leave the target class out of the normaliser, ``lse_i = logsumexp_{c≠y_i} z_ic``
            (the margin heads add their own target logit to it).
        label_smoothing: ε of the cross-entropy (0 for the plain log-normaliser).
    """

    chunk: int
    cdt: torch.dtype
    acc: torch.dtype
    exclude_target: bool = False
    label_smoothing: float = 0.0


class GradCoefs(NamedTuple):
    """Per-row coefficients of the logit gradient ``G_ic = dense_i p_ic + onehot_i [c = y_i] + smooth_i w_c``.

    Shapes ``[M]`` in the accumulation dtype; ``smooth`` is None when there is no smoothing term.
    """

    dense: Tensor
    onehot: Optional[Tensor]
    smooth: Optional[Tensor] = None


class RowStats(NamedTuple):
    """Per-row base-2 statistics of one shard: max ``m2 [M]`` and ``s = Σ_c exp2(z2_c − m2) [M]``."""

    m2: Tensor
    s: Tensor


def acc_dtype(cdt: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32, or fp64 when computing in fp64."""
    return torch.float64 if cdt == torch.float64 else torch.float32


def compute_dtype(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> torch.dtype:
    """The GEMMs' dtype: the promoted dtype of the operands, or the autocast dtype inside an enabled
    ``torch.autocast`` region (like ``F.linear``; fp64 operands stay fp64)."""
    cdt = torch.promote_types(x.dtype, weight.dtype)
    if bias is not None:
        cdt = torch.promote_types(cdt, bias.dtype)
    dev = x.device.type
    if cdt != torch.float64 and torch.is_autocast_enabled(dev):
        cdt = torch.get_autocast_dtype(dev)
    return cdt


def rowblock_rows(num_rows: int, num_classes: int, element_size: int = 4) -> int:
    """Rows per block of the row-block training mode, or 0 when vocabulary slicing is used.

    Row blocks hold every class of ``rows`` rows (``rows · V`` values within 16 MiB), so each block's
    logits are computed once and turned into gradients on the spot: 3 GEMMs per step instead of 4.
    Worth it only while a block still has at least 64 rows (or all rows).
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


# ============================================================================ forward steps
def _target_in_slice(y: Tensor, s0: int, s1: int) -> Tuple[Tensor, Tensor]:
    """Rows whose target lies in classes ``[s0, s1)`` and the target's column in the slice."""
    rows = ((y >= s0) & (y < s1)).nonzero().squeeze(1)
    return rows, y.index_select(0, rows) - s0


def _fill_target_(z: Tensor, y: Tensor, s0: int, s1: int, value: float) -> None:
    """In place ``z[i, y_i − s0] = value`` for the rows whose target lies in classes ``[s0, s1)``.

    CPU: the hit rows are compacted (``nonzero``, a host read of their count). Sync-free
    (:func:`~bigsoftmax._validate.sync_free`): every row's clamped column is gathered, replaced where
    the target is in the slice and scattered back — fixed shapes, one ``[M]`` gather and scatter more.
    """
    if not sync_free(z):
        rows, cols = _target_in_slice(y, s0, s1)
        z[rows, cols] = value
        return
    inside = (y >= s0) & (y < s1)
    cols = (y - s0).clamp(0, s1 - s0 - 1)[:, None]
    cur = z.gather(1, cols)
    z.scatter_(1, cols, torch.where(inside[:, None], torch.full_like(cur, value), cur))


def slice_logits2(x2: Tensor, W: Tensor, b: Optional[Tensor], s0: int, s1: int, p: KernelParams,
                  buf: Tensor) -> Tensor:
    """Base-2 logits ``log2(e) · (x · W_sᵀ + b_s)`` of classes ``[s0, s1)`` into ``buf[:, : s1 − s0]``.

    ``x2 [M, d]`` is the input already scaled by log2(e) and cast to ``p.cdt``; the bias scale rides on
    the ``addmm``. Returned in ``p.acc`` (a view of ``buf`` when ``cdt == acc``).
    """
    z = buf[:, : s1 - s0]
    Ws = W[s0:s1].to(p.cdt)
    if b is not None:
        torch.addmm(b[s0:s1].to(p.cdt), x2, Ws.t(), beta=LOG2E, out=z)
    else:
        torch.mm(x2, Ws.t(), out=z)
    return z if p.cdt == p.acc else z.to(p.acc)


def _exp2_shifted_(z: Tensor, shift: Optional[Tensor], y: Optional[Tensor], s0: int, s1: int,
                   p: KernelParams) -> Tensor:
    """In place ``z ← exp2(z − shift[:, None])`` (``shift`` None: ``z`` is already shifted); with
    ``p.exclude_target`` the target entries are 0."""
    if shift is not None:
        z.sub_(shift[:, None])
    z.exp2_()
    if p.exclude_target:
        _fill_target_(z, y, s0, s1, 0.0)
    return z


def local_row_stats(x2: Tensor, W: Tensor, b: Optional[Tensor], p: KernelParams, y: Optional[Tensor] = None,
                    buf: Optional[Tensor] = None) -> RowStats:
    """Forward statistics of this shard's classes, slice by slice (O(M · chunk) memory).

    Each slice keeps its own row max ``m_c`` and ``s_c = Σ exp2(z2 − m_c)``; the slices are combined
    once at the end at ``m2 = max_c m_c`` (four kernels per slice instead of an online update's eight).
    With ``p.exclude_target`` the target class (``y [M]``) is left out (its max is masked with the
    dtype's most negative finite value, its exponential set to 0). ``buf`` (optional,
    ``[M, min(chunk, V)]``): the slice workspace; with a single slice and ``cdt == acc`` it holds
    ``exp2(z2 − m2)`` on return, which the row-block and stored modes turn into probabilities.
    """
    M = x2.shape[0]
    V = W.shape[0]
    if buf is None:
        buf = x2.new_empty(M, min(p.chunk, V))
    ms, ss = [], []
    for s0 in range(0, V, p.chunk):
        s1 = min(V, s0 + p.chunk)
        z = slice_logits2(x2, W, b, s0, s1, p, buf)
        if p.exclude_target:
            _fill_target_(z, y, s0, s1, torch.finfo(z.dtype).min)
        m = z.amax(dim=1)
        ms.append(m)
        ss.append(_exp2_shifted_(z, m, y, s0, s1, p).sum(dim=1))
    if len(ms) == 1:
        return RowStats(ms[0], ss[0])
    m = torch.stack(ms, dim=1)
    top = m.amax(dim=1)
    return RowStats(top, (torch.stack(ss, dim=1) * torch.exp2(m - top[:, None])).sum(dim=1))


def sumexp_at(stats: RowStats, m2_global: Tensor) -> Tensor:
    """This shard's ``Σ_c exp2(z2_c − m2_global)`` given the all-reduced (max) row maximum."""
    return stats.s * torch.exp2(stats.m2 - m2_global)


def lse2_of(m2: Tensor, s: Tensor) -> Tensor:
    """Base-2 log-normaliser ``m2 + log2(s)`` (multiply by ln 2 for the natural ``lse``)."""
    return m2 + torch.log2(s)


def target_logit(x: Tensor, W: Tensor, b: Optional[Tensor], y: Tensor, p: KernelParams,
                 in_shard: Optional[Tensor] = None) -> Tensor:
    """``z_{i,y_i} = x_i · W_{y_i} + b_{y_i}`` in ``p.acc``: [M].

    ``in_shard [M]`` (bool, optional): rows whose target belongs to this shard (``y`` holds shard-local
    ids there); the others get 0, so a sum over shards gives the full target logit.
    """
    yy = y if in_shard is None else torch.where(in_shard, y, torch.zeros_like(y))
    zy = (x.to(p.cdt).to(p.acc) * W.index_select(0, yy).to(p.cdt).to(p.acc)).sum(dim=1)
    if b is not None:
        zy = zy + b.index_select(0, yy).to(p.cdt).to(p.acc)
    return zy if in_shard is None else torch.where(in_shard, zy, torch.zeros_like(zy))


def smoothing_stats(W: Tensor, b: Optional[Tensor], cw: Optional[Tensor], acc: torch.dtype) -> Tuple[Tensor, Tensor]:
    """``u = Σ_c w_c W_c`` [d] and ``wb = Σ_c w_c b_c`` (scalar) in ``acc`` (w_c = 1 without ``cw``)."""
    Wa = W.to(acc)
    u = Wa.sum(dim=0) if cw is None else Wa.t() @ cw
    if b is None:
        wb = torch.zeros((), dtype=acc, device=W.device)
    else:
        wb = b.to(acc).sum() if cw is None else (cw * b.to(acc)).sum()
    return u, wb


# ============================================================================ gradient steps
class Grads(NamedTuple):
    """Gradient buffers of one shard: ``gx [M, d]`` (acc), ``gW [V, d]`` (cdt), ``gb [V]`` (acc); None where not needed."""

    gx: Optional[Tensor]
    gW: Optional[Tensor]
    gb: Optional[Tensor]


def new_grads(M: int, d: int, V: int, p: KernelParams, need, device, zero_W: bool) -> Grads:
    """``need = (x, W, b)`` flags -> gradient buffers: ``grad_x [M, d]`` (acc, zeros), ``grad_W [V, d]`` (cdt), ``grad_b [V]`` (acc)."""
    new = torch.zeros if zero_W else torch.empty
    return Grads(torch.zeros(M, d, dtype=p.acc, device=device) if need[0] else None,
                  new(V, d, dtype=p.cdt, device=device) if need[1] else None,
                  new(V, dtype=p.acc, device=device) if need[2] else None)


def dense_grads(x: Tensor, W: Tensor, b: Optional[Tensor], y: Optional[Tensor], lse2: Tensor, dense: Tensor,
                p: KernelParams, out: Grads, accumulate: bool, E0: Optional[Tensor] = None,
                m2: Optional[Tensor] = None) -> None:
    """Add the dense part ``dense_i · p_ic`` of this shard's logit gradient into ``out``.

    Vocabulary loop: each slice's logits are recomputed and turned into ``E = |dense_i| p_ic`` by one
    ``exp2`` (the row shift ``lse2_i − log2|dense_i|`` folds the normalisation and the coefficient);
    negative coefficients are handled by folding their sign into ``x`` (for ``grad_W``) and into
    the row sums (``grad_x``, ``grad_b``); rows with a zero coefficient are skipped. ``accumulate``:
    add into ``out.gW`` / ``out.gb`` instead of writing them (slices are disjoint, so writing needs
    no zero fill). ``E0 [M, V]`` (with ``m2``): ``exp2(z2 − m2)`` kept by :func:`local_row_stats`
    over one slice (row-block and stored modes) replaces the recomputed logits and is rescaled in
    place.

    Sync-free (:func:`~bigsoftmax._validate.sync_free`: accelerators, compile): no row is skipped and
    no host read decides whether signs are needed; zero-coefficient rows ride along with sign 0. Same
    numbers; costs those rows' share of the GEMMs and an ``[M, d]`` sign multiply.
    """
    M, d = x.shape
    V = W.shape[0]
    if E0 is not None and (p.chunk < V or p.cdt != p.acc):
        raise AssertionError("stored exponentials need one vocabulary slice in the accumulation dtype")
    active = dense != 0
    if sync_free(x):
        # fixed shapes: every row goes through the loop; a zero coefficient gets the sign 0 (its row
        # adds nothing to grad_W / grad_b, and its grad_x row is multiplied by 0) and the shift of
        # coefficient 1 (its E is p, no overflow). Costs the zero rows' share of the GEMMs and one
        # [M, d] sign multiply, instead of host reads of the coefficients (all nonzero? any negative?)
        all_active, rows, pick, coef = True, None, (lambda t: t), dense
        sgn = torch.sign(coef).to(p.acc)
        mag = torch.where(active, coef.abs(), torch.ones_like(coef))
    else:
        all_active = bool(active.all())
        rows = None if all_active else active.nonzero().squeeze(1)
        pick = (lambda t: t) if all_active else (lambda t: t.index_select(0, rows))
        coef = pick(dense)
        neg = coef < 0
        sgn = torch.where(neg, -1.0, 1.0).to(p.acc) if bool(neg.any()) else None
        mag = coef.abs()
    R = coef.shape[0]
    if R == 0:
        if not accumulate:
            for t in (out.gW, out.gb):
                if t is not None:
                    t.zero_()
        return
    shift2 = pick(lse2) - torch.log2(mag)
    xc = pick(x).to(p.cdt)
    x2 = xc * LOG2E
    xs = xc if sgn is None else xc * sgn[:, None].to(p.cdt)
    yr = None if y is None else pick(y)
    buf = x2.new_empty(R, min(p.chunk, V)) if E0 is None else None
    neg_shift = (-shift2)[:, None].to(p.cdt) if E0 is None and b is None and p.cdt == p.acc else None
    gxr = None
    if out.gx is not None:
        gxr = out.gx if all_active else torch.zeros(R, d, dtype=p.acc, device=x.device)
    for s0 in range(0, V, p.chunk):
        s1 = min(V, s0 + p.chunk)
        if E0 is not None:  # logits already exponentiated: rescale rows, no GEMM
            E = pick(E0)
            E.mul_(torch.exp2(pick(m2) - shift2)[:, None])
        elif neg_shift is not None:  # no bias: the row shift rides on the GEMM (one pass fewer over [R, chunk])
            z = torch.addmm(neg_shift, x2, W[s0:s1].to(p.cdt).t(), out=buf[:, : s1 - s0])
            E = _exp2_shifted_(z, None, yr, s0, s1, p)
        else:
            E = _exp2_shifted_(slice_logits2(x2, W, b, s0, s1, p, buf), shift2, yr, s0, s1, p)
        _slice_grads(E, xs, W[s0:s1].to(p.cdt), sgn, p, gxr, out, s0, s1, accumulate)
    if gxr is not None:
        if sgn is not None:
            gxr.mul_(sgn[:, None])
        if not all_active:
            out.gx.index_copy_(0, rows, gxr)


def _slice_grads(E: Tensor, xs: Tensor, Ws: Tensor, sgn: Optional[Tensor], p: KernelParams, gxr: Optional[Tensor],
                 out: Grads, s0: int, s1: int, accumulate: bool) -> None:
    """One slice's ``E = |dense| p`` into ``grad_x += E @ W_s``, ``grad_W[s] (+)= E.T @ (sign · x)``,
    ``grad_b[s] (+)= E.T @ sign``."""
    Ec = E if p.cdt == p.acc else E.to(p.cdt)
    if gxr is not None:
        if p.cdt == p.acc:
            gxr.addmm_(Ec, Ws)
        else:
            gxr += (Ec @ Ws).to(p.acc)
    if out.gW is not None:
        if accumulate:
            out.gW[s0:s1].addmm_(Ec.t(), xs)
        else:
            torch.mm(Ec.t(), xs, out=out.gW[s0:s1])
    if out.gb is not None:
        col = torch.mv(E.t(), sgn) if sgn is not None else E.sum(dim=0)
        if accumulate:
            out.gb[s0:s1] += col
        else:
            out.gb[s0:s1] = col


def onehot_grads(x: Tensor, W: Tensor, y: Tensor, onehot: Tensor, p: KernelParams, out: Grads) -> None:
    """Add the target part ``onehot_i · [c = y_i]``: ``grad_x_i += onehot_i W_{y_i}``, rows ``y_i`` of
    ``grad_W`` / ``grad_b`` (``index_add_``, in a fixed order on CPU)."""
    if out.gx is not None:
        out.gx.add_(onehot[:, None] * W.index_select(0, y).to(p.acc))
    if out.gW is not None:
        out.gW.index_add_(0, y, (onehot[:, None] * x.to(p.acc)).to(p.cdt))
    if out.gb is not None:
        out.gb.index_add_(0, y, onehot)


def smoothing_grads(x: Tensor, smooth: Tensor, u: Tensor, cw: Optional[Tensor], p: KernelParams, out: Grads) -> None:
    """Add the smoothing part ``smooth_i · w_c``: ``grad_x_i += smooth_i u``, ``grad_W_c += w_c Σ_i smooth_i x_i``,
    ``grad_b_c += w_c Σ_i smooth_i`` (``u = Σ_c w_c W_c`` from :func:`smoothing_stats`)."""
    if out.gx is not None:
        out.gx.add_(smooth[:, None] * u[None, :])
    if out.gW is not None:
        sx = (smooth[:, None] * x.to(p.acc)).sum(dim=0)
        if cw is None:
            out.gW.add_(sx.to(p.cdt))
        else:
            out.gW.addr_(cw.to(p.cdt), sx.to(p.cdt))
    if out.gb is not None:
        out.gb.add_(smooth.sum() * (1.0 if cw is None else cw))


def _all_grads(x, W, b, y, lse2, coefs: GradCoefs, p: KernelParams, need, u=None, cw=None, out=None,
               E0=None, m2=None) -> Grads:
    """``dense_grads`` + ``onehot_grads`` + ``smoothing_grads`` of one shard; ``out`` given: accumulate."""
    accumulate = out is not None
    if out is None:
        out = new_grads(x.shape[0], x.shape[1], W.shape[0], p, need, x.device, zero_W=False)
    dense_grads(x, W, b, y, lse2, coefs.dense, p, out, accumulate, E0=E0, m2=m2)
    if coefs.onehot is not None:
        onehot_grads(x, W, y, coefs.onehot, p, out)
    if coefs.smooth is not None:
        smoothing_grads(x, coefs.smooth, u, cw, p, out)
    return out


# ============================================================================ cross-entropy
class _CE(NamedTuple):
    """Forward results of the kept rows: per-row loss, the base-2 lse, smoothing stats."""

    per: Tensor
    lse2: Tensor
    u: Optional[Tensor]


def _ce_coefs(a: Tensor, y: Tensor, cw: Optional[Tensor], V: int, eps: float) -> GradCoefs:
    """Gradient coefficients of ``Σ_i a_i loss_i`` for the smoothed, weighted cross-entropy."""
    if cw is None:
        dense, beta = a, a * (1.0 - eps)  # (1 − ε) + (ε / V) · V = 1
    else:
        wy = cw.index_select(0, y)
        dense = a * ((1.0 - eps) * wy + (eps / V) * cw.sum())
        beta = a * ((1.0 - eps) * wy)
    return GradCoefs(dense, -beta, (-eps / V) * a if eps > 0 else None)


def _ce_per_row(x, W, b, y, lse2, cw, u, wb, p: KernelParams) -> Tensor:
    """``loss_i`` of the kept rows from their base-2 ``lse`` (see the module docstring)."""
    V = W.shape[0]
    eps = p.label_smoothing
    lse = lse2 * LN2
    nll = lse - target_logit(x, W, b, y, p)
    per = (1.0 - eps) * nll if cw is None else (1.0 - eps) * cw.index_select(0, y) * nll
    if eps > 0:
        Sw = float(V) if cw is None else cw.sum()
        per = per + (eps / V) * (Sw * lse - (x.to(p.cdt).to(p.acc) @ u) - wb)
    return per


def _ce_forward(x, W, b, y, cw, p: KernelParams) -> _CE:
    """Vocabulary-sliced forward of the kept rows: stats, target logit, per-row loss."""
    stats = local_row_stats(x.to(p.cdt) * LOG2E, W, b, p)
    lse2 = lse2_of(*stats)
    u, wb = smoothing_stats(W, b, cw, p.acc) if p.label_smoothing > 0 else (None, None)
    return _CE(_ce_per_row(x, W, b, y, lse2, cw, u, wb, p), lse2, u)


def _rowblock_forward(x, W, b, y, cw, p: KernelParams, rows: int, scale: Tensor, need) -> Tuple[_CE, Grads]:
    """Forward and gradients together in blocks of ``rows`` rows holding every class (3 GEMMs).

    Each block's logits ``[rows, V]`` are computed once (:func:`local_row_stats` over one slice), then
    turned into ``|dense_i| p_ic`` in place and accumulated into ``grad_W`` / ``grad_b``. The upstream
    scale is ``scale [M]`` per row (1 for ``'sum'``, ``1 / denominator`` for ``'mean'``, 0 on the
    ignored rows of the sync-free path); the backward
    multiplies by the real upstream gradient. Deterministic: the same inputs give the same bits.
    """
    M, d = x.shape
    V = W.shape[0]
    pb = replace(p, chunk=V)
    u, wb = smoothing_stats(W, b, cw, p.acc) if p.label_smoothing > 0 else (None, None)
    grads = new_grads(M, d, V, p, need, x.device, zero_W=True)
    lse2 = torch.empty(M, dtype=p.acc, device=x.device)
    buf = torch.empty(min(rows, M), V, dtype=p.cdt, device=x.device)
    for s0 in range(0, M, rows):
        s1 = min(M, s0 + rows)
        xb, yb, E0 = x[s0:s1], y[s0:s1], buf[: s1 - s0]
        stats = local_row_stats(xb.to(p.cdt) * LOG2E, W, b, pb, buf=E0)
        lse2[s0:s1] = lse2_of(*stats)
        a = scale[s0:s1]
        block = Grads(None if grads.gx is None else grads.gx[s0:s1], grads.gW, grads.gb)
        _all_grads(xb, W, b, yb, lse2[s0:s1], _ce_coefs(a, yb, cw, V, p.label_smoothing), pb, need, u, cw,
                   out=block, E0=E0, m2=stats.m2)
    return _CE(_ce_per_row(x, W, b, y, lse2, cw, u, wb, p), lse2, u), grads


def _scale_grads_(grads: Grads, g: Tensor, acc: torch.dtype, sf: bool = False) -> Grads:
    """Multiply precomputed gradients by the scalar upstream gradient ``g`` in place (CPU: skipped
    when ``g == 1``; sync-free ``sf``: always, one pass over the gradients instead of a host read)."""
    gs = g.to(acc)
    if sf or bool(gs != 1):
        for t in grads:
            if t is not None:
                t.mul_(gs.to(t.dtype))
    return grads


def _upstream_scale(keep: Tensor, denom, M: int, acc: torch.dtype, device, sf: bool) -> Tensor:
    """Per-row upstream ``[M]`` of a scalar loss, ``1 / denom`` (NaN for a zero denominator).

    CPU (``sf`` False): the M kept rows, ``denom`` a float. Sync-free: all rows, ``denom`` a tensor,
    0 on the ignored rows (so they add nothing to any gradient).
    """
    if not sf:
        return torch.full((M,), 1.0 / denom if denom else math.nan, dtype=acc, device=device)
    inv = torch.where(denom != 0, 1.0 / denom, torch.full_like(denom, math.nan))
    return torch.where(keep, inv.expand(M), torch.zeros((), dtype=acc, device=device))


def _masked_reduce(per: Tensor, keep: Tensor, reduction: str, denom: Tensor) -> Tensor:
    """:func:`~bigsoftmax.ops.reduce.reduce_loss` of the kept rows from the losses of *every* row (no
    boolean indexing: the sync-free path); ``'mean'`` divides by ``denom`` (kept count or weight sum)."""
    per = torch.where(keep, per, torch.zeros((), dtype=per.dtype, device=per.device))
    if reduction == "none":
        return per
    acc = torch.promote_types(per.dtype, torch.float32)
    total = per.to(acc).sum()
    return (total if reduction == "sum" else total / denom.to(acc)).to(per.dtype)


@dataclass(frozen=True)
class _CEConfig:
    """Arguments of :class:`_LinearCrossEntropy` besides the tensors."""

    kernel: KernelParams
    ignore_index: int
    reduction: str
    precompute: bool  # gradients inside forward, rescaled in backward (vocabulary slicing)
    rowblock_rows: int  # > 0: row-block mode with this many rows per block


class _LinearCrossEntropy(torch.autograd.Function):
    """Exact chunked softmax cross-entropy (see the module docstring for the math)."""

    @staticmethod
    def forward(ctx, x, W, b, y, cw, cfg: _CEConfig):
        p = cfg.kernel
        keep = y != cfg.ignore_index
        # sync-free (accelerators, compile): every row is scored, ignored ones on class 0 with upstream
        # scale 0, and masked after; costs their share of the work instead of host reads of `keep`
        sf = sync_free(x)
        all_kept = False if sf else bool(keep.all())
        if sf:
            xk, yk = x, torch.where(keep, y, torch.zeros_like(y))
        else:
            xk, yk = (x, y) if all_kept else (x[keep], y[keep])
        M = xk.shape[0]
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and b is not None)
        wy = None if cw is None else cw.index_select(0, yk)
        if sf:
            wy = None if wy is None else torch.where(keep, wy, torch.zeros_like(wy))
            denom = ((keep.sum().to(p.acc) if cw is None else wy.sum()) if cfg.reduction == "mean"
                     else torch.ones((), dtype=p.acc, device=x.device))
        else:
            denom = (float(M) if cw is None else float(wy.sum())) if cfg.reduction == "mean" else 1.0
        scale = _upstream_scale(keep, denom, M, p.acc, x.device, sf)  # [M]: the upstream of a scalar loss
        grads = None
        with torch.autocast(x.device.type, enabled=False):
            if M > 0 and cfg.rowblock_rows:
                ce, grads = _rowblock_forward(xk, W, b, yk, cw, p, cfg.rowblock_rows, scale, need)
            elif M > 0:
                ce = _ce_forward(xk, W, b, yk, cw, p)
                if cfg.precompute:
                    grads = _all_grads(xk, W, b, yk, ce.lse2, _ce_coefs(scale, yk, cw, W.shape[0], p.label_smoothing),
                                       p, need, ce.u, cw)
            else:
                z = torch.zeros(0, dtype=p.acc, device=x.device)
                ce = _CE(z, z, None)
            if sf:
                out = _masked_reduce(ce.per, keep, cfg.reduction, denom)
            else:
                out = reduce_loss(ce.per, None if all_kept else keep, (x.shape[0],), cfg.reduction, weight=wy)
        ctx.stash = grads
        ctx.cfg, ctx.all_kept, ctx.sf = cfg, all_kept, sf
        ctx.save_for_backward(x, W, b, y, cw, ce.lse2, ce.u, torch.as_tensor(denom, dtype=p.acc))
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
        cfg = ctx.cfg
        p = cfg.kernel
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and b is not None)
        sf = ctx.sf
        keep = None if ctx.all_kept else (y != cfg.ignore_index)
        if sf:  # every row, ignored ones on class 0 with upstream 0 (their gradient rows come out 0)
            xk, yk = x, torch.where(keep, y, torch.zeros_like(y))
        else:
            xk, yk = (x, y) if keep is None else (x[keep], y[keep])
        M = xk.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            if ctx.stash is not None:  # precomputed in forward: hand over, scaled in place
                grads, ctx.stash = _scale_grads_(ctx.stash, g, p.acc, sf), None
            elif M == 0:
                grads = new_grads(0, x.shape[1], W.shape[0], p, need, x.device, zero_W=True)
            elif cfg.rowblock_rows:
                # a retained graph's later backward: rerun the same row blocks (bit-identical gradients)
                scale = _upstream_scale(keep, denom if sf else float(denom), M, p.acc, x.device, sf)
                _, grads = _rowblock_forward(xk, W, b, yk, cw, p, cfg.rowblock_rows, scale, need)
                grads = _scale_grads_(grads, g, p.acc, sf)
            elif cfg.precompute:
                raise RuntimeError("linear_cross_entropy(precompute=True) supports a single backward; "
                                   "use precompute=False for retain_graph=True")
            else:
                a = g.reshape(-1).to(p.acc) if cfg.reduction == "none" else (g.to(p.acc) / denom).expand(x.shape[0])
                if sf:
                    a = torch.where(keep, a, torch.zeros_like(a))
                elif keep is not None:
                    a = a[keep]
                grads = _all_grads(xk, W, b, yk, lse2, _ce_coefs(a.contiguous(), yk, cw, W.shape[0],
                                                                 p.label_smoothing), p, need, u, cw)
            gx = grads.gx
            if gx is not None and keep is not None and not sf:
                full = torch.zeros(x.shape, dtype=p.acc, device=x.device)
                full[keep] = gx
                gx = full
        return (None if gx is None else gx.to(x.dtype), None if grads.gW is None else grads.gW.to(W.dtype),
                None if grads.gb is None else grads.gb.to(b.dtype), None, None, None)


def _default_stored(rows: int, num_classes: int, in_features: int, cdt: torch.dtype) -> bool:
    """The lse's default mode: stored exponentials only for inputs wider than ``_RECOMPUTE_MAX_IN``
    whose ``[rows, V]`` buffer fits ``_STORED_MAX_BYTES``; recompute otherwise (issue 11)."""
    nbytes = rows * num_classes * (torch.finfo(cdt).bits // 8)
    return in_features > _RECOMPUTE_MAX_IN and nbytes <= _STORED_MAX_BYTES


def _wants_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


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
    r"""Exact ``F.cross_entropy(F.linear(input, weight, bias), target, ...)`` without the [N, V] logits.

    With logits :math:`z_{ic} = x_i \cdot W_c + b_c`, class weights :math:`w_c` (all 1 without
    ``weight_class``) and smoothing :math:`\varepsilon`, a kept row (``target != ignore_index``) has

    .. math::
        \ell_i = (1 - \varepsilon)\, w_{y_i} \big(\operatorname{lse}_c z_{ic} - z_{i y_i}\big)
               + \frac{\varepsilon}{V} \sum_c w_c \big(\operatorname{lse}_c z_{ic} - z_{ic}\big)

    reduced like ``nn.CrossEntropyLoss`` (``'mean'`` divides by :math:`\sum_{i\,\text{kept}} w_{y_i}`).
    Loss and gradients equal torch's; the vocabulary is visited in slices of ``chunk_size``
    classes, so the peak extra memory is O(N · chunk_size) instead of O(N · V).

    Args:
        input: hidden states (any floating dtype).
        weight: class embeddings (``nn.Linear`` layout; any floating dtype).
        bias: per-class bias or None.
        target: int64 class ids in ``[0, V)`` or ``ignore_index``.
        weight_class: optional per-class rescaling weight, finite and >= 0 — ``F.cross_entropy``'s
            ``weight`` (a constant: no gradient flows into it).
        ignore_index: target value whose positions contribute neither loss nor gradient.
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (zeros at ignored positions).
        label_smoothing: ε in [0, 1]: the target becomes ``(1 − ε) · onehot + ε / V``.
        chunk_size: classes per vocabulary slice (default :func:`default_chunk_size`). With the
            default, small vocabularies train in row blocks of at most 16 MiB instead
            (:func:`rowblock_rows`: 3 GEMMs instead of 4).
        precompute: compute the gradients inside the forward call (scalar reductions only) and only
            rescale them in backward: the same FLOPs, holds a ``[V, d]`` gradient between forward and
            backward and allows a single backward.

    Shape:
        - input: :math:`(*, d)`; weight: :math:`(V, d)`; bias: :math:`(V)`; target: :math:`(*)`.
        - output: scalar, or :math:`(*)` for ``reduction='none'``; fp32 (fp64 for fp64 inputs).

    The logits are computed in ``promote_types(input.dtype, weight.dtype)``, or in the autocast dtype
    inside an enabled ``torch.autocast`` region (like ``F.linear``), the softmax statistics in fp32.
    Differentiable once w.r.t. input, weight and bias (double backward raises). The gradients are
    deterministic: a retained graph's second backward gives the same bits as the first. On an
    accelerator or under ``torch.compile`` (:func:`~bigsoftmax._validate.sync_free`) the step reads
    nothing on the host: ignored rows are scored on class 0 with upstream 0 and masked instead of
    compacted (their share of the work more), the same numbers.

    Examples::

        >>> x = torch.randn(8, 16, requires_grad=True); W = torch.randn(1000, 16, requires_grad=True)
        >>> y = torch.randint(0, 1000, (8,))
        >>> loss = linear_cross_entropy(x, W, None, y, label_smoothing=0.1)
        >>> loss.backward()
    """
    _check_linear(input, weight, bias)
    V, d = weight.shape
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor of int64 class ids, got {type(target).__name__}")
    if tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(f"target shape {tuple(target.shape)} must equal input's leading shape {tuple(input.shape[:-1])}")
    check_ignore_index(ignore_index)
    check_target(target, V, ignore_index)
    check_reduction(reduction)
    eps = check_label_smoothing(label_smoothing)
    check_chunk_size(chunk_size)
    cdt = compute_dtype(input, weight, bias)
    acc = acc_dtype(cdt)
    cw = None
    if weight_class is not None:
        check_class_weight(weight_class, V)
        if weight_class.requires_grad and torch.is_grad_enabled():
            raise ValueError("weight_class must not require grad: linear_cross_entropy treats class weights as "
                             "constants (pass weight_class.detach())")
        cw = weight_class.to(acc)

    x = input.reshape(math.prod(target.shape), d)
    y = target.reshape(-1).long()
    chunk = min(chunk_size if chunk_size is not None else default_chunk_size(x.shape[0], V), V)
    wants_grad = _wants_grad(input, weight, bias)
    precompute = bool(precompute) and wants_grad and reduction != "none"
    auto_rows = chunk_size is None and not precompute and wants_grad and reduction != "none" and cdt == acc
    if torch.compiler.is_compiling():  # the same kernel as one opaque op (no graph break), see ops/_opaque.py
        h = _ce_handle(chunk, cdt, acc, eps, ignore_index, reduction, precompute, auto_rows)
        out = call_opaque(h, [x, weight, bias, y, cw])[0]
    else:
        out = _LinearCrossEntropy.apply(x, weight, bias, y, cw, _ce_config(chunk, cdt, acc, eps, ignore_index,
                                                                            reduction, precompute, auto_rows, y, V))
    return out.reshape(target.shape) if reduction == "none" else out


def _ce_config(chunk, cdt, acc, eps, ignore_index, reduction, precompute, auto_rows, y, V) -> _CEConfig:
    """The kernel configuration; ``auto_rows``: row-block mode sized by the kept rows (reads ``y`` on
    CPU; sync-free: by all rows)."""
    if not auto_rows:
        rows = 0
    else:  # the sync-free path scores every row (ignored ones masked): its static count, no host read
        n = y.shape[0] if sync_free(y) else int((y != ignore_index).sum())
        rows = rowblock_rows(n, V, torch.finfo(cdt).bits // 8)
    return _CEConfig(KernelParams(chunk, cdt, acc, label_smoothing=eps), ignore_index, reduction, precompute, rows)


@torch.compiler.assume_constant_result
def _ce_handle(chunk: int, cdt: torch.dtype, acc: torch.dtype, eps: float, ignore_index: int, reduction: str,
               precompute: bool, auto_rows: bool) -> int:
    """The opaque-op handle of :class:`_LinearCrossEntropy` with this configuration (torch.compile path)."""

    def fn(x, W, b, y, cw):
        cfg = _ce_config(chunk, cdt, acc, eps, ignore_index, reduction, precompute, auto_rows, y, W.shape[0])
        return _LinearCrossEntropy.apply(x, W, b, y, cw, cfg)

    def fake(x, W, b, y, cw):
        return x.new_empty((x.shape[0],) if reduction == "none" else (), dtype=acc)

    return register_opaque(("linear_cross_entropy", chunk, cdt, acc, eps, ignore_index, reduction, precompute,
                            auto_rows), fn, fake)


@torch.compiler.assume_constant_result
def _lse_handle(chunk: int, cdt: torch.dtype, acc: torch.dtype, exclude_target: bool, stored: bool) -> int:
    """The opaque-op handle of :class:`_LinearLogSumExp` with this configuration (torch.compile path)."""
    p = KernelParams(chunk, cdt, acc, exclude_target=exclude_target)

    def fn(x, W, b, y):
        return _LinearLogSumExp.apply(x, W, b, y, p, stored)

    def fake(x, W, b, y):
        has_t = y is not None and not exclude_target
        return x.new_empty(x.shape[0], dtype=acc), x.new_empty(x.shape[0] if has_t else 0, dtype=acc)

    return register_opaque(("linear_logsumexp", p, stored), fn, fake)


# ============================================================================ log-normaliser + target logit
class _LinearLogSumExp(torch.autograd.Function):
    """(x [M, d], W [V, d], b [V] | None, y [M] | None) -> (lse [M], z_y [M]) in the accumulation dtype.

    Upstream ``(g, g_t)`` gives ``GradCoefs(dense=g, onehot=g_t)``. Two modes: *recompute* keeps only
    ``lse`` and rescores the slices in the backward (four GEMMs, O(M · chunk) memory); *stored*
    (``chunk == V``) keeps ``exp2(z2 − m2)`` [M, V] from the forward (three GEMMs) — by default only
    within ``_STORED_MAX_BYTES`` (:func:`_default_stored`).
    """

    @staticmethod
    def forward(ctx, x, W, b, y, p: KernelParams, stored: bool):
        with torch.autocast(x.device.type, enabled=False):
            E = x.new_empty(x.shape[0], W.shape[0], dtype=p.cdt) if stored else None
            stats = local_row_stats(x.to(p.cdt) * LOG2E, W, b, p, y, buf=E)
            lse2 = lse2_of(*stats)
            zt = target_logit(x, W, b, y, p) if (y is not None and not p.exclude_target) else lse2.new_zeros(0)
        if zt.numel() == 0:
            ctx.mark_non_differentiable(zt)
        ctx.p = p
        ctx.save_for_backward(x, W, b, y, lse2, E, stats.m2 if stored else None)
        return lse2 * LN2, zt

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lse, g_t):
        x, W, b, y, lse2, E, m2 = ctx.saved_tensors
        p = ctx.p
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and b is not None)
        M = x.shape[0]
        dense = torch.zeros(M, dtype=p.acc, device=x.device) if g_lse is None else g_lse.to(p.acc)
        onehot = None if (g_t is None or g_t.numel() == 0) else g_t.to(p.acc)
        with torch.autocast(x.device.type, enabled=False):
            grads = _all_grads(x, W, b, y, lse2, GradCoefs(dense, onehot), p, need,
                               E0=None if E is None else E.clone(), m2=m2)
        return (None if grads.gx is None else grads.gx.to(x.dtype), None if grads.gW is None else grads.gW.to(W.dtype),
                None if grads.gb is None else grads.gb.to(b.dtype), None, None, None)


def linear_logsumexp(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    target: Optional[Tensor] = None,
    *,
    chunk_size: Optional[int] = None,
    recompute: Optional[bool] = None,
    exclude_target: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Exact, differentiable ``lse = logsumexp(z, -1)`` and target logit ``z_y`` of ``z = input @ W.T + b``.

    .. math::
        \operatorname{lse}_i = \log \sum_c e^{z_{ic}}, \qquad z_{i y_i} = x_i \cdot W_{y_i} + b_{y_i}

    so ``z_y − lse`` is the log-softmax at the target and ``lse`` alone the log-normaliser. With
    ``exclude_target=True`` the target class is left out, :math:`\operatorname{lse}_i =
    \log \sum_{c \ne y_i} e^{z_{ic}}` (and ``z_y`` is not returned): the margin heads add their own,
    margin-modified target logit to it exactly (``logaddexp(lse, f_y)``).

    Args:
        input: hidden states.
        weight: class embeddings.
        bias: per-class bias or None.
        target: int64 class ids, or None (then ``z_y`` is None).
        chunk_size: classes per vocabulary slice (default :func:`default_chunk_size`).
        recompute: keep only ``lse`` and rescore the slices in the backward (O(N · chunk) memory, one
            GEMM more); ``False`` keeps ``exp(z − max)`` ``[N, V]`` instead (three GEMMs), at any
            size. Default (None): store only when the ``[N, V]`` buffer fits 64 MiB
            (``_STORED_MAX_BYTES``) and the input is wider than 64 (narrower ones have memory-bound
            GEMMs, where rescoring cache-sized slices wins anyway); otherwise recompute, so the
            default training memory is O(N · chunk) plus that fixed cap, never O(N · V). Without
            grad the forward always streams over slices.
        exclude_target: leave the target class out of the normaliser (needs ``target``).

    Shape:
        - input: :math:`(*, d)`; weight: :math:`(V, d)`; bias: :math:`(V)`; target: :math:`(*)`.
        - output: ``(lse, z_y)``, each :math:`(*)`, in ``promote_types(dtype, float32)``.

    Under autocast the GEMMs run in the autocast dtype and the statistics in fp32. Not twice
    differentiable.

    Examples::

        >>> x = torch.randn(4, 8, requires_grad=True); W = torch.randn(100, 8)
        >>> lse, zy = linear_logsumexp(x, W, None, torch.tensor([1, 2, 3, 4]))
        >>> (lse - zy).sum().backward()   # the summed cross-entropy
    """
    _check_linear(input, weight, bias)
    check_chunk_size(chunk_size)
    if exclude_target and target is None:
        raise ValueError("exclude_target=True needs target (the class to leave out of the normaliser)")
    V, d = weight.shape
    lead = input.shape[:-1]
    x = input.reshape(math.prod(lead), d)
    y = None
    if target is not None:
        if not isinstance(target, Tensor) or tuple(target.shape) != tuple(lead):
            raise ValueError(f"target must be a tensor of shape {tuple(lead)} (input's leading shape)")
        check_target(target, V)
        y = target.reshape(-1).long()
    lse, zt = linear_logsumexp_unchecked(x, weight, bias, y, chunk_size=chunk_size, recompute=recompute,
                                         exclude_target=exclude_target)
    return lse.reshape(lead), (None if zt is None else zt.reshape(lead))


def linear_logsumexp_unchecked(x: Tensor, weight: Tensor, bias: Optional[Tensor], y: Optional[Tensor], *,
                               chunk_size: Optional[int] = None, recompute: Optional[bool] = None,
                               exclude_target: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`linear_logsumexp` on ``x [N, d]`` and int64 ``y [N]`` (or None) without the argument checks:
    for callers that built their targets in range themselves (AdaptiveSoftmax's head and tail targets,
    checked once at the head's entry), which saves the per-call value reads of ``check_target``."""
    V, d = weight.shape
    cdt = compute_dtype(x, weight, bias)
    acc = acc_dtype(cdt)
    chunk = min(chunk_size if chunk_size is not None else default_chunk_size(x.shape[0], V), V)
    p = KernelParams(chunk, cdt, acc, exclude_target=bool(exclude_target))
    if not _wants_grad(x, weight, bias):
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            lse = lse2_of(*local_row_stats(x.to(cdt) * LOG2E, weight, bias, p, y)) * LN2
            zt = target_logit(x, weight, bias, y, p) if (y is not None and not exclude_target) else None
    else:
        stored = _default_stored(x.shape[0], V, d, cdt) if recompute is None else not recompute
        stored = stored and cdt == acc
        if stored:
            p = replace(p, chunk=V)
        if torch.compiler.is_compiling():  # the same kernel as one opaque op (no graph break)
            lse, zt = call_opaque(_lse_handle(p.chunk, cdt, acc, bool(exclude_target), bool(stored)),
                                  [x, weight, bias, y])
        else:
            lse, zt = _LinearLogSumExp.apply(x, weight, bias, y, p, bool(stored))
        zt = zt if (y is not None and not exclude_target) else None
    return lse, zt

r"""Exact full softmax with the class rows split over the ranks of a process group.

Megatron-LM's ``_VocabParallelCrossEntropy`` on the one kernel family of :mod:`bigsoftmax.ops.lse`:
rank ``r`` holds rows ``[start_r, stop_r)`` of ``weight`` / ``bias`` (TF's "div" partition) and runs the
named per-shard steps on them, vocabulary slice by vocabulary slice (no ``[N, V_r]`` logits kept):

* forward: :func:`~bigsoftmax.ops.lse.local_row_stats` (local max ``m_r``, sum-exp ``s_r``), one
  all-reduce(max) of ``m`` ``[N]``, then one all-reduce(sum) of the stacked ``[k, N]`` rows
  ``sumexp_at(m)``, the target logit (:func:`~bigsoftmax.ops.lse.target_logit`, 0 off-shard) and — only
  when used — the class weight of the target and the label-smoothing term ``x · u_r + w · b_r``
  (:func:`~bigsoftmax.ops.lse.smoothing_stats` is additive over shards): 2 collectives, ``(1 + k) N``
  values with ``k = 2`` for the plain loss;
* backward: :func:`~bigsoftmax.ops.lse.dense_grads` / :func:`~bigsoftmax.ops.lse.onehot_grads` /
  :func:`~bigsoftmax.ops.lse.smoothing_grads` of the local rows given the *global* ``lse``
  (``grad_weight`` / ``grad_bias`` stay local), plus one all-reduce(sum) of ``grad_hidden [N, d]``.

Label smoothing and class weights are over the *global* vocabulary: ``ε / V`` with the global ``V`` and
``Σ_c w_c`` over every class (Megatron-LM #7464 used the local ``V_r``). ``hidden`` must be the same
on every rank of the group (the output of a data-replicated body, like Megatron's tensor-parallel
region); its gradient comes back identical on every rank.

The single-process case is the same code on a one-rank group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._validate import check_chunk_size, check_label_smoothing
from ..heads.base import Head, chunked_topk
from ..ops.lse import (
    LN2, LOG2E, Grads, KernelParams, acc_dtype, compute_dtype, default_chunk_size, dense_grads, local_row_stats,
    lse2_of, new_grads, onehot_grads, slice_logits2, smoothing_grads, smoothing_stats, sumexp_at, target_logit,
)
from ..ops.reduce import reduce_loss
from . import _comm as comm
from ._shard import ShardMixin

__all__ = ["VocabParallelFullSoftmax", "vocab_parallel_cross_entropy", "global_lse"]


@dataclass(frozen=True)
class _Cfg:
    kernel: KernelParams
    start: int
    stop: int
    num_classes: int
    class_weight_sum: float
    group: object


def _cfg(x: Tensor, W: Tensor, b: Optional[Tensor], start: int, num_classes: int, eps: float, cw_sum: float,
         group, chunk_size: Optional[int]) -> _Cfg:
    cdt = compute_dtype(x, W, b)
    chunk = min(chunk_size if chunk_size is not None else default_chunk_size(x.shape[0], W.shape[0]), W.shape[0])
    return _Cfg(KernelParams(chunk, cdt, acc_dtype(cdt), label_smoothing=eps), start, start + W.shape[0],
                num_classes, cw_sum, group)


def _global_stats(x: Tensor, W: Tensor, b: Optional[Tensor], p: KernelParams, group) -> Tuple[Tensor, Tensor]:
    """Local slice statistics and the all-reduced (max) row maximum: (local RowStats, m2 [M])."""
    stats = local_row_stats(x.to(p.cdt) * LOG2E, W, b, p)
    return stats, comm.all_reduce(stats.m2.clone(), "max", group)


class _VocabParallelCE(torch.autograd.Function):
    """(x [M, d] kept rows, W_r, b_r, y [M] global ids, cw_r) -> (per-row loss [M], target weight [M])."""

    @staticmethod
    def forward(ctx, x, W, b, y, cw, cfg: _Cfg):
        p = cfg.kernel
        eps, V = p.label_smoothing, cfg.num_classes
        with torch.autocast(x.device.type, enabled=False):
            stats, m2 = _global_stats(x, W, b, p, cfg.group)
            own = (y >= cfg.start) & (y < cfg.stop)
            yl = torch.where(own, y - cfg.start, torch.zeros_like(y))
            rows = [sumexp_at(stats, m2), target_logit(x, W, b, yl, p, own)]
            if cw is not None:
                rows.append(torch.where(own, cw.index_select(0, yl), torch.zeros((), dtype=p.acc, device=x.device)))
            u = None
            if eps > 0:
                u, wb = smoothing_stats(W, b, cw, p.acc)
                rows.append(x.to(p.cdt).to(p.acc) @ u + wb)
            packed = comm.all_reduce(torch.stack(rows), "sum", cfg.group)
            lse2 = lse2_of(m2, packed[0])
            lse = lse2 * LN2
            wy = packed[2] if cw is not None else None
            nll = lse - packed[1]
            per = (1.0 - eps) * nll if wy is None else (1.0 - eps) * wy * nll
            if eps > 0:
                per = per + (eps / V) * (cfg.class_weight_sum * lse - packed[-1])
        ctx.cfg = cfg
        ctx.save_for_backward(x, W, b, yl, own, cw, lse2, wy, u)
        out_w = wy if wy is not None else per.new_zeros(0)
        ctx.mark_non_differentiable(out_w)
        return per, out_w

    @staticmethod
    @once_differentiable
    def backward(ctx, g, _gw):
        x, W, b, yl, own, cw, lse2, wy, u = ctx.saved_tensors
        cfg = ctx.cfg
        p = cfg.kernel
        eps, V = p.label_smoothing, cfg.num_classes
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and b is not None)
        a = g.to(p.acc)
        if wy is None:
            dense, beta = a, a * (1.0 - eps)
        else:
            dense, beta = a * ((1.0 - eps) * wy + (eps / V) * cfg.class_weight_sum), a * ((1.0 - eps) * wy)
        with torch.autocast(x.device.type, enabled=False):
            grads = new_grads(x.shape[0], x.shape[1], W.shape[0], p, need, x.device, zero_W=False)
            dense_grads(x, W, b, None, lse2, dense, p, grads, accumulate=False)
            rows = own.nonzero().squeeze(1)
            if rows.numel():
                coef, yr = -beta.index_select(0, rows), yl.index_select(0, rows)
                onehot_grads(x.index_select(0, rows), W, yr, coef, p, Grads(None, grads.gW, grads.gb))
                if grads.gx is not None:
                    grads.gx.index_add_(0, rows, coef[:, None] * W.index_select(0, yr).to(p.acc))
            if eps > 0:
                smoothing_grads(x, (-eps / V) * a, u, cw, p, grads)
            if grads.gx is not None:
                comm.all_reduce(grads.gx, "sum", cfg.group)
        return (None if grads.gx is None else grads.gx.to(x.dtype), None if grads.gW is None else grads.gW.to(W.dtype),
                None if grads.gb is None else grads.gb.to(b.dtype), None, None, None)


def vocab_parallel_cross_entropy(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, *,
                                 vocab_start: int, num_classes: int, class_weight: Optional[Tensor] = None,
                                 class_weight_sum: Optional[float] = None, ignore_index: int = -100,
                                 reduction: str = "mean", label_smoothing: float = 0.0,
                                 chunk_size: Optional[int] = None, group=None) -> Tensor:
    r"""``F.cross_entropy(hidden @ W.T + b, target)`` over a vocabulary split across ``group``.

    This rank holds ``weight [V_r, d]`` = rows ``[vocab_start, vocab_start + V_r)`` of the global
    ``[num_classes, d]`` matrix (and ``bias [V_r]``, ``class_weight [V_r]``); ``hidden [..., d]`` and
    ``target [...]`` (global ids or ``ignore_index``) are the same on every rank. The result is the same
    on every rank and equals the single-process loss with the concatenated weights.

    Args:
        class_weight_sum: ``Σ_c w_c`` over the *global* vocabulary (required with ``class_weight``).
        the others: as :func:`bigsoftmax.functional.linear_cross_entropy`.
    """
    lead = target.shape
    x = hidden.reshape(-1, hidden.shape[-1])
    y = target.reshape(-1).long()
    keep = y != ignore_index
    all_kept = bool(keep.all())
    xk, yk = (x, y) if all_kept else (x[keep], y[keep])
    if class_weight is not None and class_weight_sum is None:
        raise ValueError("class_weight_sum (Σ_c w_c over the global vocabulary) is required with class_weight")
    eps = check_label_smoothing(label_smoothing)
    cfg = _cfg(xk, weight, bias, vocab_start, num_classes, eps,
               float(num_classes) if class_weight is None else float(class_weight_sum), group, chunk_size)
    cw = None if class_weight is None else class_weight.to(cfg.kernel.acc)
    per, wy = _VocabParallelCE.apply(xk, weight, bias, yk, cw, cfg)
    return reduce_loss(per, None if all_kept else keep, lead, reduction, weight=None if cw is None else wy)


@torch.no_grad()
def global_lse(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], *, chunk_size: Optional[int] = None,
               group=None) -> Tensor:
    """Exact ``log Σ_c exp(z_c)`` over the global vocabulary: [M, d] -> [M] (2 all-reduces of [M], no grad)."""
    cdt = compute_dtype(hidden, weight, bias)
    chunk = min(chunk_size if chunk_size is not None else default_chunk_size(hidden.shape[0], weight.shape[0]),
                weight.shape[0])
    p = KernelParams(chunk, cdt, acc_dtype(cdt))
    stats, m2 = _global_stats(hidden, weight, bias, p, group)
    return lse2_of(m2, comm.all_reduce(sumexp_at(stats, m2), "sum", group)) * LN2


class VocabParallelFullSoftmax(ShardMixin, Head):
    r""":class:`~bigsoftmax.heads.FullSoftmax` with its ``[V, d]`` class rows split over the ranks of ``group``.

    Each rank allocates only its "div" block ``weight [V_r, d]`` and ``bias [V_r]`` (rows
    ``[vocab_start, vocab_end)``; the first ``V % P`` ranks hold one row more). ``hidden [..., d]`` and
    ``target [...]`` must be the same on every rank; the loss, ``target_log_prob`` and ``topk`` come
    back identical on every rank and equal the single-process head with the concatenated weights.
    Training (see the module docstring): 2 all-reduces of ``[N]``-sized rows forward, 1 all-reduce of
    ``grad_hidden [N, d]`` backward, O(N · chunk) extra memory.

    Evaluation: ``target_log_prob`` (exact, differentiable), ``topk`` (local top-k, then an all-gather
    of ``[N, k]`` values and ids and a merge), ``log_normalizer`` (no grad) and ``log_prob``, which
    returns **this rank's block** ``[..., V_r]`` of the global log-probabilities (columns
    ``vocab_start .. vocab_end - 1``; concatenate over ranks for all ``V``; no grad).

    Checkpoints: ``state_dict()`` is this rank's shard (``weight``, ``bias``, ``class_weight`` slices and
    the shard layout in ``_extra_state``); :func:`bigsoftmax.parallel.gather_checkpoint` turns the P
    shards into the state dict of a single-process :class:`~bigsoftmax.heads.FullSoftmax`,
    :func:`bigsoftmax.parallel.shard_checkpoint` does the reverse.

    Args:
        in_features: d. num_classes: the global V (>= world size).
        bias, ignore_index, reduction, label_smoothing, chunk_size: as :class:`~bigsoftmax.heads.FullSoftmax`.
        class_weight: optional *global* ``[V]`` class weights (the same on every rank); the rank keeps its slice.
        group: the process group (default: the world). Needs ``torch.distributed`` initialised.
        device, dtype: of the parameters.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> # under torchrun / an initialised process group
        >>> head = VocabParallelFullSoftmax(256, 4_000_000)      # each rank: [4e6 / P, 256]
        >>> loss = head(hidden, target)                          # same value on every rank
        >>> loss.backward()                                      # hidden.grad identical on every rank
    """

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, class_weight: Optional[Tensor] = None,
                 chunk_size: Optional[int] = None, group=None, device=None, dtype=None):
        super().__init__(in_features, num_classes, ignore_index, reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.chunk_size = check_chunk_size(chunk_size)
        self._init_shard(group, type(self).__name__, extra=(bool(bias), self.label_smoothing, class_weight is None))
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.local_classes, in_features, **fk))
        self.bias = nn.Parameter(torch.empty(self.local_classes, **fk)) if bias else None
        self.register_buffer("class_weight", self._local_class_weight(class_weight))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation U(−1/√d, 1/√d) of this rank's block."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            nn.init.uniform_(self.weight, -bound, bound)
            if self.bias is not None:
                nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_full(cls, head, group=None) -> "VocabParallelFullSoftmax":
        """This rank's shard of a single-process :class:`~bigsoftmax.heads.FullSoftmax` (parameters copied)."""
        cw = head.class_weight
        out = cls(head.in_features, head.num_classes, bias=head.bias is not None, ignore_index=head.ignore_index,
                  reduction=head.reduction, label_smoothing=head.label_smoothing, class_weight=cw,
                  chunk_size=head.chunk_size, group=group, device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(head.weight[out.vocab_start:out.vocab_end])
            if out.bias is not None:
                out.bias.copy_(head.bias[out.vocab_start:out.vocab_end])
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, rank={self.rank}/{self.world_size}, "
                f"rows=[{self.vocab_start}, {self.vocab_end}), bias={self.bias is not None}, "
                f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}")

    # ------------------------------------------------------------------ training
    def _ce(self, h: Tensor, y: Tensor, reduction: str, train: bool) -> Tensor:
        eps, cw = (self.label_smoothing, self.class_weight) if train else (0.0, None)
        return vocab_parallel_cross_entropy(
            h, self.weight, self.bias, y, vocab_start=self.vocab_start, num_classes=self.num_classes,
            class_weight=cw, class_weight_sum=self.class_weight_sum, ignore_index=self.ignore_index,
            reduction=reduction, label_smoothing=eps, chunk_size=self.chunk_size, group=self.group)

    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy (train mode: with smoothing and class weights; eval mode: the exact NLL)."""
        h, y = self._flat_pair(hidden, target)
        loss = self._ce(h, y, self.reduction, self.training)
        return loss.reshape(target.shape) if self.reduction == "none" else loss

    def _loss(self, h: Tensor, y: Tensor) -> Tensor:
        return self._ce(h, y, "none", True)

    # ------------------------------------------------------------------ exact evaluation
    def _target_log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        return -self._ce(h, y, "none", False)

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Exact log p(target | hidden) over the global vocabulary: [..., d], [...] -> [...] (0 at ignored)."""
        h, y = self._flat_pair(hidden, target)
        return self._target_log_prob(h, y).reshape(target.shape)

    def _log_normalizer(self, h: Tensor) -> Tensor:
        return global_lse(h, self.weight, self.bias, chunk_size=self.chunk_size, group=self.group)

    def log_normalizer(self, hidden: Tensor) -> Tensor:
        """Exact ``log Z`` over the global vocabulary: [..., d] -> [...] (no grad)."""
        return self._log_normalizer(self._flat_hidden(hidden)).reshape(hidden.shape[:-1])

    @torch.no_grad()
    def log_prob(self, hidden: Tensor) -> Tensor:
        """**This rank's block** of the exact log-probabilities: [..., d] -> [..., V_r] (columns
        ``vocab_start .. vocab_end - 1``; concatenating the ranks' blocks gives the [..., V] result)."""
        h = self._flat_hidden(hidden)
        lz = self._log_normalizer(h)
        z = self._scores(h, 0, self.local_classes, lz.dtype)
        return (z - lz[:, None]).reshape(*hidden.shape[:-1], self.local_classes)

    def _scores(self, h: Tensor, s: int, e: int, dtype) -> Tensor:
        dt = torch.promote_types(h.dtype, self.weight.dtype)
        z = h.to(dt) @ self.weight[s:e].to(dt).t()
        return (z if self.bias is None else z + self.bias[s:e].to(dt)).to(dtype)

    @torch.no_grad()
    def _topk(self, h: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        lz = self._log_normalizer(h)
        return merge_topk(lambda s, e: self._scores(h, s, e, lz.dtype), lz, self.local_classes, self.vocab_start, k,
                          self.eval_chunk, self.group)


def merge_topk(score_chunk, lz: Tensor, local_classes: int, start: int, k: int, chunk: int, group):
    """Exact global top-k from each rank's local top-k: all-gather ``[N, k]`` values and ids, merge."""
    n = lz.shape[0]
    kk = min(k, local_classes)
    v, i = chunked_topk(score_chunk, local_classes, n, kk, chunk, lz.device, lz.dtype)
    v = v - lz[:, None]
    i = i + start
    if kk < k:  # pad to k so every rank sends the same shape (the pad never wins: k <= V)
        v = torch.cat([v, v.new_full((n, k - kk), torch.finfo(v.dtype).min)], dim=1)
        i = torch.cat([i, i.new_full((n, k - kk), -1)], dim=1)
    vals = torch.cat(comm.all_gather(v, group), dim=1)
    ids = torch.cat(comm.all_gather(i, group), dim=1)
    best, j = vals.topk(k, dim=1)
    return best, ids.gather(1, j)

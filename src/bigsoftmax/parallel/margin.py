r"""Margin heads over shards, Partial-FC style (insightface): ArcFace and CosFace for millions of identities.

Every rank passes **its own local batch** ``hidden [n, d]``, ``target [n]`` (a data-parallel body; the
same ``n`` on every rank). The head all-gathers features and labels (the global batch ``N = P · n``),
scores them against this rank's block of class centres — every positive of the block plus a
``sample_rate`` fraction of its negatives (drawn with the rank's seeded generator; all of them with
``sample_rate=1``) — and combines the margin softmax across ranks like the exact full softmax:
one all-reduce (max) of ``[N]`` and one (sum) of ``[2, N]``::

    f_y = s · g(cos θ_y)   (the owner of y),   f_j = s cos θ_j,
    loss_i = logaddexp(logsumexp_{j ≠ y_i, j sampled} f_ij, f_{i y_i}) − f_{i y_i}

reduced over the **global** batch (the loss is the same on every rank). Backward: the class-centre
gradients stay local; the features' gradient is all-reduced and each rank keeps its rows. With
``sample_rate=1`` this is exactly the single-process head on the concatenated batch. Memory: the
``[N, k_r]`` cosines of the sampled local centres (Partial-FC's trade-off).

With a ``DistributedDataParallel`` body, DDP averages the body's gradients over the P ranks while the
head's loss is already the global-batch mean: the body then receives ``1/P`` of the global-loss
gradient (scale its learning rate by P, or the loss, to match one process on the global batch).

Evaluation (``eval()`` forward, ``target_log_prob``, ``topk``, ``log_prob``) also takes the local batch,
all-gathers it and returns **the local rows** (``log_prob``: the local rows × this rank's class block).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..heads.margin import ArcFace, CosFace, _normalize, _target_logit
from ..ops.reduce import reduce_loss
from . import _comm as comm
from ._autograd import max_over_shards, reduce_from_shards
from ._eval import ShardEvalMixin
from ._shard import ShardMixin

__all__ = ["VocabParallelArcFace", "VocabParallelCosFace", "gather_batch"]


class _GatherBatch(torch.autograd.Function):
    """Local rows [n, d] -> global batch [P·n, d]; backward: all-reduce the gradient, keep the local rows."""

    @staticmethod
    def forward(ctx, t, group, rank):
        ctx.group, ctx.rank, ctx.n = group, rank, t.shape[0]
        return torch.cat(comm.all_gather(t, group), dim=0)

    @staticmethod
    def backward(ctx, g):
        g = comm.all_reduce(g.contiguous().clone(), "sum", ctx.group)
        return g[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None, None


def gather_batch(h: Tensor, y: Tensor, group, rank: int, what: str) -> Tuple[Tensor, Tensor]:
    """All-gather the local batch (``h`` differentiably); the same local size on every rank is required."""
    sizes = [int(t) for t in comm.all_gather(torch.tensor([h.shape[0]], device=h.device), group)]
    if len(set(sizes)) != 1:
        raise ValueError(f"{what}: every rank must pass the same local batch size; got {sizes} rows on ranks "
                         f"0..{len(sizes) - 1} (rank {rank}: {h.shape[0]})")
    return _GatherBatch.apply(h, group, rank), torch.cat(comm.all_gather(y, group))


class _PartialFC(ShardEvalMixin, ShardMixin):
    def _num_rows(self) -> int:
        self._init_shard(self._group_arg, type(self).__name__, extra=(self.sample_rate,))
        self._neg_gen = torch.Generator()
        self._neg_gen.manual_seed(int(self._pfc_seed) * 1_000_003 + self.rank)
        return self.local_classes

    def _setup(self, group, sample_rate: float, seed: Optional[int], kwargs):
        if not isinstance(sample_rate, (int, float)) or isinstance(sample_rate, bool) or not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be a float in (0, 1], got {sample_rate!r}")
        for bad in ("num_sampled", "sampler", "weight"):
            if kwargs.get(bad) is not None:
                raise ValueError(f"{type(self).__name__}: {bad}= is not supported; use sample_rate= (Partial-FC)")
        self._group_arg, self.sample_rate, self._pfc_seed = group, float(sample_rate), 0 if seed is None else seed

    def _local_centres(self, y: Tensor) -> Tensor:
        """Sorted local row ids scored this step: every positive of the block + sampled negatives."""
        V_r = self.local_classes
        if self.sample_rate >= 1.0:
            return torch.arange(V_r, device=y.device)
        own = self.in_shard(y)
        pos = torch.unique(y[own] - self.vocab_start)
        k = max(int(self.sample_rate * V_r), pos.numel())
        score = torch.rand(V_r, generator=self._neg_gen).to(y.device)
        score[pos] = 2.0  # positives always kept
        return torch.sort(torch.topk(score, k).indices).values

    def _pfc_loss(self, X: Tensor, Y: Tensor) -> Tensor:
        acc = torch.promote_types(X.dtype, torch.float32)
        neg = torch.finfo(acc).min
        fn = self._step_margin()
        x = self._eval_hidden(X)
        idx = self._local_centres(Y)
        Wk = self.weight.index_select(0, idx)
        w = _normalize(Wk, self.eps) if self.normalize_weights else Wk.to(acc)
        logits = (x * self.scale) @ w.t()  # [N, k_r]
        own = self.in_shard(Y)
        col = torch.searchsorted(idx, torch.where(own, Y - self.vocab_start, torch.zeros_like(Y)))
        col = col.clamp(max=idx.numel() - 1)
        w_y = w.index_select(0, col)
        score = (x * w_y).sum(-1)
        w_norm = Wk.index_select(0, col).to(acc).norm(dim=-1)
        zt = _target_logit(score, x.norm(dim=-1), w_norm, fn, self.scale, self.normalize_features,
                           self.normalize_weights, self.eps)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        rows = own.nonzero().squeeze(1)
        mask[rows, col[rows]] = True
        logits = logits.masked_fill(mask, neg)
        zt_own = zt.masked_fill(~own, neg)
        m = max_over_shards(torch.maximum(logits.amax(1), zt_own), self.group)
        s = torch.exp(logits - m[:, None]).sum(1) + torch.exp(zt_own - m)
        comb = reduce_from_shards(torch.stack([s, torch.where(own, zt, torch.zeros((), dtype=acc))]), self.group)
        return m + torch.log(comb[0]) - comb[1]

    # ------------------------------------------------------------------ the local-batch protocol
    def _global(self, hidden: Tensor, target: Tensor):
        h, y = self._flat_pair(hidden, target)
        X, Y = gather_batch(h, y, self.group, self.rank, type(self).__name__)
        return h, X, Y

    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Partial-FC margin loss over the global batch (train) or its exact NLL (eval): same value on
        every rank; ``reduction='none'`` returns the global batch's ``[P · n]`` losses in rank order."""
        _, X, Y = self._global(hidden, target)
        keep = Y != self.ignore_index
        all_kept = bool(keep.all())
        Xk, Yk = (X, Y) if all_kept else (X[keep], Y[keep])
        per = self._pfc_loss(Xk, Yk) if self.training else -ShardEvalMixin._target_log_prob(self, Xk, Yk)
        return reduce_loss(per, None if all_kept else keep, (X.shape[0],), self.reduction)

    def _local_rows(self, t: Tensor, n: int) -> Tensor:
        return t[self.rank * n:(self.rank + 1) * n]

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Exact log p(target | hidden) of the local rows: [..., d], [...] -> [...] (0 at ignored)."""
        h, X, Y = self._global(hidden, target)
        keep = Y != self.ignore_index
        out = X.new_zeros(Y.shape[0], dtype=torch.promote_types(X.dtype, torch.float32))
        if bool(keep.any()):
            out = out.masked_scatter(keep, ShardEvalMixin._target_log_prob(self, X[keep], Y[keep]).to(out.dtype))
        return self._local_rows(out, h.shape[0]).reshape(target.shape)

    def topk(self, hidden: Tensor, k: int):
        """Exact top-k of the local rows over the global vocabulary: ([..., k] log-probs, [..., k] ids)."""
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.num_classes:
            raise ValueError(f"k must be an int in [1, {self.num_classes}], got {k!r}")
        h = self._flat_hidden(hidden)
        X = torch.cat(comm.all_gather(h.detach(), self.group))
        v, i = self._topk(X, k)
        lead = hidden.shape[:-1]
        n = h.shape[0]
        return self._local_rows(v, n).reshape(*lead, k), self._local_rows(i, n).reshape(*lead, k)

    def log_prob(self, hidden: Tensor) -> Tensor:
        """The local rows × **this rank's class block** of the exact log-probabilities: [..., d] -> [..., V_r]."""
        h = self._flat_hidden(hidden)
        X = torch.cat(comm.all_gather(h.detach(), self.group))
        lp = ShardEvalMixin.log_prob(self, X)
        return self._local_rows(lp, h.shape[0]).reshape(*hidden.shape[:-1], self.local_classes)


class VocabParallelArcFace(_PartialFC, ArcFace):
    """:class:`~bigsoftmax.heads.ArcFace` over shards, Partial-FC style (see the module docstring).

    Args: as :class:`~bigsoftmax.heads.ArcFace` (dense mode) plus ``sample_rate`` in (0, 1] (the
    fraction of each block's negatives scored per step), ``seed`` (negative sampling; each rank draws
    its own negatives) and ``group``.

    Examples::

        >>> head = VocabParallelArcFace(512, 10_000_000, sample_rate=0.1)
        >>> loss = head(local_features, local_labels)   # global-batch loss, same on every rank
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 0.5, *,
                 sample_rate: float = 1.0, seed: Optional[int] = None, group=None, **kwargs):
        self._setup(group, sample_rate, seed, kwargs)
        ArcFace.__init__(self, in_features, num_classes, s=s, m=m, **kwargs)


class VocabParallelCosFace(_PartialFC, CosFace):
    """:class:`~bigsoftmax.heads.CosFace` over shards, Partial-FC style; arguments as :class:`VocabParallelArcFace`."""

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 0.35, *,
                 sample_rate: float = 1.0, seed: Optional[int] = None, group=None, **kwargs):
        self._setup(group, sample_rate, seed, kwargs)
        CosFace.__init__(self, in_features, num_classes, s=s, m=m, **kwargs)

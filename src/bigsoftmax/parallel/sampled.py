r"""Sampling heads over shards: sampled softmax, NCE, sampled logistic, negative sampling.

TF's ``sampled_softmax_loss`` / ``nce_loss`` with ``weights`` given as a list of "div" shards, one
shard per rank. The candidates are drawn **identically on every rank** (each head's generator is
seeded with the same ``seed``; ``hidden`` and ``target`` are the same on every rank, so a learned
sampler's counts stay identical too); each rank scores, with the one sampled-logits core
(:func:`bigsoftmax.ops.sampled.sampled_logits_parts`), only the true classes and candidates it owns,
and the per-shard parts are combined:

* sampled softmax: ``lse = m + log Σ_r Σ_{owned} exp(z − m)`` with ``m`` all-reduced (max) and one
  all-reduce (sum) of ``[2, N]`` (sum-exp and the owned true logits) — ``3N`` values;
* NCE / sampled logistic / negative sampling: the loss is a sum over candidates, so each rank sums
  its owned terms and one all-reduce (sum) of ``[N]`` combines them.

Backward: each rank's gradients go to its own rows only (sparse COO with ``sparse=True``), plus one
all-reduce of ``grad_hidden [N, d]``. The loss equals the single-process head with the concatenated
weights and the same candidates. Exact evaluation: as :class:`VocabParallelFullSoftmax`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..heads.nce import NCE, NegativeSampling, SampledLogistic
from ..heads.sampled import SampledSoftmax
from ..ops import sampled as ops
from ._autograd import copy_to_shards, max_over_shards, reduce_from_shards
from ._eval import ShardEvalMixin
from ._shard import ShardMixin

__all__ = ["VocabParallelSampledSoftmax", "VocabParallelNCE", "VocabParallelSampledLogistic",
           "VocabParallelNegativeSampling"]


class _ShardedSampling(ShardEvalMixin, ShardMixin):
    """Shared by the sampling heads over shards: this rank's block and its owned candidates."""

    def _num_rows(self) -> int:  # called by SamplingHead.__init__ before allocating the rows
        if getattr(self, "_shard_seed", None) is None:
            raise ValueError(f"{type(self).__name__} needs seed= (the same on every rank) so that every rank draws "
                             "the same candidates")
        self._init_shard(self._group_arg, type(self).__name__, extra=(self.num_sampled, self._shard_seed))
        return self.local_classes

    def _owned_parts(self, h: Tensor, y: Tensor, sv, subtract_log_q: bool):
        """(x, local parts, owned-true mask [B, T], valid-candidate mask [B, S]) for this rank's block."""
        sampled, true_exp, samp_exp = sv
        x = copy_to_shards(h, self.group)
        own_t = self.in_shard(y)
        own_s = self.in_shard(sampled)
        yl = torch.where(own_t, y - self.vocab_start, torch.zeros_like(y))
        sl = torch.where(own_s, sampled - self.vocab_start, torch.zeros_like(sampled))
        parts = ops.sampled_logits_parts(self.weight, self.bias, yl, x, (sl, true_exp, samp_exp),
                                         subtract_log_q=subtract_log_q, remove_accidental_hits=False,
                                         sparse=self.sparse, gather=self.gather)
        valid = own_s.expand_as(parts.sampled_logits)
        if self.remove_accidental_hits:
            valid = valid & ~ops.hit_mask(y, sampled)
        return parts, own_t, valid


def _init_sharded(self, cls, args, kwargs, group, seed):
    self._group_arg = group
    self._shard_seed = seed
    if kwargs.get("weight") is not None:
        raise ValueError(f"{type(self).__name__}: weight= (tying) is not supported across shards")
    cls.__init__(self, *args, seed=seed, **kwargs)


class VocabParallelSampledSoftmax(_ShardedSampling, SampledSoftmax):
    """:class:`~bigsoftmax.heads.SampledSoftmax` with its class rows split over ``group`` (see the module
    docstring). Arguments as :class:`~bigsoftmax.heads.SampledSoftmax` plus ``group``; ``seed`` is required
    (the same on every rank). ``hidden`` / ``target`` must be the same on every rank.

    Examples::

        >>> head = VocabParallelSampledSoftmax(256, 4_000_000, num_sampled=8192, seed=0, sparse=True)
        >>> loss = head(hidden, target)        # same value on every rank
    """

    def __init__(self, in_features: int, num_classes: int, num_sampled: int, *args, group=None, seed=None, **kwargs):
        _init_sharded(self, SampledSoftmax, (in_features, num_classes, num_sampled) + args, kwargs, group, seed)

    def _sampled_loss(self, h: Tensor, y: Tensor, sampled_values, context=None) -> Tensor:
        sv = self._checked_values(h, y, sampled_values, context)
        parts, own_t, valid = self._owned_parts(h, y, sv, subtract_log_q=True)
        acc = torch.promote_types(h.dtype, torch.float32)
        neg = torch.finfo(acc).min
        zt = parts.true_logits.to(acc).masked_fill(~own_t, neg)
        zs = parts.sampled_logits.to(acc).masked_fill(~valid, neg)
        m = max_over_shards(torch.maximum(zt.amax(1), zs.amax(1)), self.group)
        s = torch.exp(zt - m[:, None]).sum(1) + torch.exp(zs - m[:, None]).sum(1)
        true_sum = torch.where(own_t, parts.true_logits.to(acc), torch.zeros((), dtype=acc, device=h.device)).sum(1)
        comb = reduce_from_shards(torch.stack([s, true_sum]), self.group)
        return (m + torch.log(comb[0]) - comb[1] / y.shape[1]).to(h.dtype)


class _ShardedSigmoid(_ShardedSampling):
    def _sampled_loss(self, h: Tensor, y: Tensor, sampled_values, context=None) -> Tensor:
        sv = self._checked_values(h, y, sampled_values, context)
        parts, own_t, valid = self._owned_parts(h, y, sv, subtract_log_q=self._subtract_log_q)
        acc = torch.promote_types(h.dtype, torch.float32)
        zt, zs = parts.true_logits.to(acc), parts.sampled_logits.to(acc)
        zero = torch.zeros((), dtype=acc, device=h.device)
        lt = F.binary_cross_entropy_with_logits(zt, torch.full_like(zt, 1.0 / y.shape[1]), reduction="none")
        local = torch.where(own_t, lt, zero).sum(1) + torch.where(valid, F.softplus(zs), zero).sum(1)
        return reduce_from_shards(local, self.group).to(h.dtype)


class VocabParallelNCE(_ShardedSigmoid, NCE):
    """:class:`~bigsoftmax.heads.NCE` over shards (see the module docstring); ``seed`` required, ``group`` optional."""

    def __init__(self, in_features: int, num_classes: int, num_sampled: int, *args, group=None, seed=None, **kwargs):
        _init_sharded(self, NCE, (in_features, num_classes, num_sampled) + args, kwargs, group, seed)


class VocabParallelSampledLogistic(_ShardedSigmoid, SampledLogistic):
    """:class:`~bigsoftmax.heads.SampledLogistic` over shards; ``seed`` required, ``group`` optional."""

    def __init__(self, in_features: int, num_classes: int, num_sampled: int, *args, group=None, seed=None, **kwargs):
        _init_sharded(self, SampledLogistic, (in_features, num_classes, num_sampled) + args, kwargs, group, seed)


class VocabParallelNegativeSampling(_ShardedSigmoid, NegativeSampling):
    """:class:`~bigsoftmax.heads.NegativeSampling` over shards; ``seed`` required, ``group`` optional."""

    def __init__(self, in_features: int, num_classes: int, num_sampled: int, *args, group=None, seed=None, **kwargs):
        _init_sharded(self, NegativeSampling, (in_features, num_classes, num_sampled) + args, kwargs, group, seed)

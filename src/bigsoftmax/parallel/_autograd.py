"""Differentiable collectives of the vocab-parallel heads (Megatron's "regions").

Convention: the loss after a vocab-parallel head is computed identically on every rank and every
rank back-propagates the same upstream gradient, so

* :func:`reduce_from_shards` (all-reduce sum forward, identity backward) combines per-shard partial
  results, each rank's gradient flowing to its own rows only;
* :func:`copy_to_shards` (identity forward, all-reduce sum of the gradient backward) marks an input
  every rank uses against its own block; its gradient is the sum of the ranks' contributions;
* :func:`gather_from_ranks` (all-gather along dim 0 forward, this rank's rows of the gradient
  backward) turns the per-rank outputs of a data-parallel body into the one batch a vocab-parallel
  head needs on every rank (the gradient it gets back is the same on every rank, so each rank keeps
  its rows: summing the ranks' body gradients then gives the gradient of the global loss).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _comm as comm

__all__ = ["reduce_from_shards", "copy_to_shards", "max_over_shards", "gather_from_ranks"]


class _ReduceFromShards(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, group):
        return comm.all_reduce(t.clone(), "sum", group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _CopyToShards(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        return comm.all_reduce(g.contiguous().clone(), "sum", ctx.group), None


class _GatherFromRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, group):
        rank, _ = comm.world(group, "gather_from_ranks")
        ctx.rows = (rank * t.shape[0], (rank + 1) * t.shape[0])
        return torch.cat(comm.all_gather(t, group), dim=0)

    @staticmethod
    def backward(ctx, g):
        s, e = ctx.rows
        return g[s:e], None


def gather_from_ranks(t: Tensor, group=None) -> Tensor:
    r"""The ranks' ``t`` concatenated along dim 0 in rank order: :math:`[t_0; t_1; \dots; t_{P-1}]`.

    Backward returns this rank's rows of the upstream gradient, which must be the same on every rank
    (as after a vocab-parallel head): the ranks' body gradients then *sum* (not average) to the
    gradient of the global-batch loss. One all-gather of ``t`` forward, no collective backward.

    Args:
        t: this rank's tensor, the same shape on every rank.
        group: the process group (default: the world).

    Shape:
        - t: :math:`(n, *)`; output: :math:`(P n, *)`.

    Examples::

        >>> # under torchrun: a data-parallel body feeding a vocab-parallel head
        >>> h = body(tokens[rank * b:(rank + 1) * b])           # [b, T, d]
        >>> loss = head(gather_from_ranks(h), all_targets)      # the global batch on every rank
    """
    return _GatherFromRanks.apply(t, group)


def reduce_from_shards(t: Tensor, group=None) -> Tensor:
    """Σ over the ranks of ``t`` (all-reduce forward, identity backward)."""
    return _ReduceFromShards.apply(t, group)


def copy_to_shards(t: Tensor, group=None) -> Tensor:
    """``t`` itself; its gradient is all-reduced (summed) over the ranks in backward."""
    return _CopyToShards.apply(t, group)


def max_over_shards(t: Tensor, group=None) -> Tensor:
    """Elementwise max over the ranks, detached (a stability shift: no gradient)."""
    return comm.all_reduce(t.detach().clone(), "max", group)

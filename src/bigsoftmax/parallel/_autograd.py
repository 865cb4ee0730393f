"""Differentiable collectives of the vocab-parallel heads (Megatron's "regions").

Convention: the loss after a vocab-parallel head is computed identically on every rank and every
rank back-propagates the same upstream gradient, so

* :func:`reduce_from_shards` (all-reduce sum forward, identity backward) combines per-shard partial
  results, each rank's gradient flowing to its own rows only;
* :func:`copy_to_shards` (identity forward, all-reduce sum of the gradient backward) marks an input
  every rank uses against its own block; its gradient is the sum of the ranks' contributions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _comm as comm

__all__ = ["reduce_from_shards", "copy_to_shards", "max_over_shards"]


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


def reduce_from_shards(t: Tensor, group=None) -> Tensor:
    """Σ over the ranks of ``t`` (all-reduce forward, identity backward)."""
    return _ReduceFromShards.apply(t, group)


def copy_to_shards(t: Tensor, group=None) -> Tensor:
    """``t`` itself; its gradient is all-reduced (summed) over the ranks in backward."""
    return _CopyToShards.apply(t, group)


def max_over_shards(t: Tensor, group=None) -> Tensor:
    """Elementwise max over the ranks, detached (a stability shift: no gradient)."""
    return comm.all_reduce(t.detach().clone(), "max", group)

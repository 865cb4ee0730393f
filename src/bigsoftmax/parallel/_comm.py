"""Thin wrappers over the ``torch.distributed`` collectives the vocab-parallel heads use.

Every call is counted (number and bytes per collective kind) in :data:`STATS`, so tests and
``benchmarks/parallel.py`` can assert how much a step communicates. Bytes are the payload of
one rank's input (``numel · element_size``; for all-gather the rank's own contribution).
No transport of our own: each wrapper is one ``torch.distributed`` call (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

from collections import Counter
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["CommStats", "STATS", "world", "all_reduce", "all_gather", "all_gather_object", "broadcast"]


class CommStats:
    """Counts of collective calls and bytes per kind (``'all_reduce'``, ``'all_gather'``, ...)."""

    def __init__(self):
        self.calls: Counter = Counter()
        self.bytes: Counter = Counter()

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()

    def record(self, kind: str, nbytes: int) -> None:
        self.calls[kind] += 1
        self.bytes[kind] += int(nbytes)

    def total_bytes(self) -> int:
        return int(sum(self.bytes.values()))

    def snapshot(self) -> dict:
        return {"calls": dict(self.calls), "bytes": dict(self.bytes)}


#: the process-wide counters every wrapper below updates
STATS = CommStats()


def world(group=None, what: str = "a vocab-parallel head") -> Tuple[int, int]:
    """``(rank, world_size)`` of ``group``; a clear error when no process group is initialised."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            f"{what} needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group('gloo' or 'nccl', ...) first (e.g. under torchrun), "
            "or use the single-process head"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def all_reduce(t: Tensor, op: str = "sum", group=None) -> Tensor:
    """In-place all-reduce of ``t`` with ``op`` in {'sum', 'max'}; returns ``t``."""
    STATS.record("all_reduce", t.numel() * t.element_size())
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=group)
    return t


def all_gather(t: Tensor, group=None) -> List[Tensor]:
    """The ``t`` of every rank (same shape on each), in rank order."""
    STATS.record("all_gather", t.numel() * t.element_size())
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t.contiguous(), group=group)
    return out


def all_gather_object(obj, group=None) -> list:
    """Every rank's picklable ``obj`` (set-up checks only, never in a training step)."""
    STATS.record("all_gather_object", 0)
    out: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast(t: Tensor, src: int = 0, group=None) -> Tensor:
    """In-place broadcast of ``t`` from global rank ``src``; returns ``t``."""
    STATS.record("broadcast", t.numel() * t.element_size())
    dist.broadcast(t, src=src, group=group)
    return t



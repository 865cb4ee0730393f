"""What every vocab-parallel head shares: its rank's block of the "div" partition, the set-up checks
across ranks, and the shard metadata written into its checkpoints."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _comm as comm
from .partition import partition, shard_range

__all__ = ["ShardMixin", "CHECKPOINT_FORMAT"]

#: the ``_extra_state`` tag of a vocab-parallel shard's state dict
CHECKPOINT_FORMAT = "bigsoftmax.vocab_parallel/1"


class ShardMixin:
    """Mixin of the vocab-parallel heads (after :class:`~bigsoftmax.heads.Head` has set
    ``in_features`` / ``num_classes``): call :meth:`_init_shard` first in ``__init__``."""

    def _init_shard(self, group, what: str, extra=()) -> None:
        rank, world = comm.world(group, what)
        V, d = self.num_classes, self.in_features
        if world > V:
            raise ValueError(f"{what}: world size {world} exceeds num_classes={V} (rank {rank}): every rank must own at "
                             f"least one class row; use at most {V} ranks")
        mine = (rank, d, V) + tuple(extra)
        every = comm.all_gather_object(mine, group)
        for r, (_, d_r, V_r, *ex) in enumerate(every):
            if d_r != d:
                raise ValueError(f"{what}: mismatched hidden sizes across ranks: rank {r} has in_features={d_r}, "
                                 f"rank {rank} has in_features={d}; every rank must build the head with the same d")
            if V_r != V:
                raise ValueError(f"{what}: shard sizes disagree across ranks: rank {r} was built for num_classes={V_r} "
                                 f"(shards {partition(V_r, world) if V_r >= world else '-'}), rank {rank} for "
                                 f"num_classes={V} (shards {partition(V, world)}); build every rank with the same V")
            if tuple(ex) != tuple(extra):
                raise ValueError(f"{what}: rank {r} was built with {tuple(ex)}, rank {rank} with {tuple(extra)}; "
                                 "every rank must build the head with the same options")
        self.group = group
        self.rank, self.world_size = rank, world
        self.shard_sizes = partition(V, world)
        self.vocab_start, self.vocab_end = shard_range(V, world, rank)
        self.local_classes = self.vocab_end - self.vocab_start
        self.register_load_state_dict_pre_hook(_check_shard_on_load)

    def _local_class_weight(self, class_weight: Optional[Tensor]) -> Optional[Tensor]:
        """The rank's slice of a global ``[V]`` class weight (and remember ``Σ_c w_c`` over all classes)."""
        from .._validate import check_class_weight

        if class_weight is None:
            self.class_weight_sum = float(self.num_classes)
            return None
        cw = check_class_weight(class_weight, self.num_classes, "class_weight", "num_classes").detach()
        self.class_weight_sum = float(cw.double().sum())
        return cw[self.vocab_start:self.vocab_end].clone()

    def in_shard(self, target: Tensor) -> Tensor:
        """[...] bool: the targets this rank owns."""
        return (target >= self.vocab_start) & (target < self.vocab_end)

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self):
        return {"format": CHECKPOINT_FORMAT, "num_classes": self.num_classes, "world_size": self.world_size,
                "rank": self.rank, "vocab_start": self.vocab_start, "vocab_end": self.vocab_end,
                "class_weight_sum": getattr(self, "class_weight_sum", float(self.num_classes))}

    def set_extra_state(self, state) -> None:
        self.class_weight_sum = float(state.get("class_weight_sum", self.num_classes))


def _check_shard_on_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                         error_msgs):
    meta = state_dict.get(prefix + "_extra_state")
    name = type(module).__name__
    if meta is None or not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        w = state_dict.get(prefix + "weight")
        if w is not None and w.shape[0] == module.num_classes and module.world_size > 1:
            raise ValueError(f"{name} (rank {module.rank} of {module.world_size}): this is a single-process checkpoint "
                             f"with all {module.num_classes} class rows; split it with "
                             f"bigsoftmax.parallel.shard_checkpoint(state, world_size={module.world_size}) first")
        return  # let load_state_dict report what is missing
    if meta["world_size"] != module.world_size or meta["num_classes"] != module.num_classes:
        raise ValueError(
            f"{name} (rank {module.rank}): the checkpoint shard was written by rank {meta['rank']} of world size "
            f"{meta['world_size']} for num_classes={meta['num_classes']}, this head runs on world size "
            f"{module.world_size} for num_classes={module.num_classes}; reshard it with "
            f"bigsoftmax.parallel.gather_checkpoint(shards) then shard_checkpoint(state, world_size={module.world_size})")
    if meta["rank"] != module.rank:
        raise ValueError(f"{name}: rank {module.rank} was given the checkpoint shard of rank {meta['rank']} "
                         f"(rows [{meta['vocab_start']}, {meta['vocab_end']})); load shard {module.rank}")

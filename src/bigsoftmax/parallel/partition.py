"""TensorFlow's ``"div"`` partition of class rows over ranks: contiguous blocks, uneven sizes allowed.

``V`` rows over ``P`` shards: shard ``r`` holds rows ``[start_r, start_r + size_r)`` with
``size_r = V // P + (r < V % P)`` (the first ``V % P`` shards hold one row more), exactly the layout
of ``tf.nn.embedding_lookup(partition_strategy="div")`` and of the weight lists
:func:`bigsoftmax.ops.sampled.gather_rows` accepts.
"""

from __future__ import annotations

from typing import List, Tuple

__all__ = ["partition", "shard_range", "owner_of"]


def partition(num_classes: int, world_size: int) -> List[int]:
    """Shard sizes ``[size_0, ..., size_{P-1}]`` of the "div" partition (they sum to ``num_classes``).

    Examples::

        >>> partition(10, 3)
        [4, 3, 3]
    """
    for name, v in (("num_classes", num_classes), ("world_size", world_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if world_size > num_classes:
        raise ValueError(f"world size {world_size} exceeds num_classes={num_classes}: every rank must own at least "
                         f"one class row; use at most {num_classes} ranks (or a smaller process group)")
    q, r = divmod(num_classes, world_size)
    return [q + (i < r) for i in range(world_size)]


def shard_range(num_classes: int, world_size: int, rank: int) -> Tuple[int, int]:
    """``(start, stop)`` of the rows shard ``rank`` owns."""
    sizes = partition(num_classes, world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def owner_of(class_id: int, num_classes: int, world_size: int) -> int:
    """The rank whose shard holds row ``class_id``."""
    q, r = divmod(num_classes, world_size)
    big = r * (q + 1)
    return class_id // (q + 1) if class_id < big else r + (class_id - big) // q

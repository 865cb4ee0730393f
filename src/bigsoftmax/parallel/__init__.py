"""The distributed path: "div" shard layout, counted collectives, vocab-parallel heads, sharded checkpoints.

See ``docs/parallel.md``. Data parallelism needs nothing from here: every head of
:mod:`bigsoftmax.heads` trains under ``DistributedDataParallel`` as it is.
"""

from . import _comm as comm  # noqa: F401  (counted collectives: comm.STATS)
from ._autograd import gather_from_ranks
from .launch import free_port, run_local
from .partition import owner_of, partition, shard_range
from .checkpoint import gather_checkpoint, shard_checkpoint
from .full import VocabParallelFullSoftmax, global_lse, vocab_parallel_cross_entropy
from .margin import VocabParallelArcFace, VocabParallelCosFace
from .sampled import (
    VocabParallelNCE, VocabParallelNegativeSampling, VocabParallelSampledLogistic, VocabParallelSampledSoftmax,
)

__all__ = ["partition", "shard_range", "owner_of", "run_local", "free_port", "comm",
           "VocabParallelFullSoftmax", "vocab_parallel_cross_entropy", "global_lse",
           "VocabParallelSampledSoftmax", "VocabParallelNCE", "VocabParallelSampledLogistic",
           "VocabParallelNegativeSampling", "VocabParallelArcFace", "VocabParallelCosFace",
           "gather_checkpoint", "shard_checkpoint", "gather_from_ranks"]

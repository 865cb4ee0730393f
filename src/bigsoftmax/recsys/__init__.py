"""Two-tower (YouTubeDNN-style) retrieval on ratings data: data, training objectives, exact evaluation.

>>> from bigsoftmax.recsys import load_dataset, RecsysConfig, train, evaluate, evaluate_baseline
>>> data = load_dataset("ml-100k")
>>> model, info = train(data, RecsysConfig(objective="in-batch", logq=True))
>>> evaluate(model, data, split="test")          # Recall@10/50/100, NDCG@10, HitRate@10
>>> evaluate_baseline("popularity", data, "test")

The CLI is ``bigsoftmax recsys train|eval|recommend|bench`` (see :mod:`bigsoftmax.recsys.cli`) and
the guide ``docs/recsys.md``.
"""

from .baselines import BASELINES, evaluate_baseline
from .data import (
    NAMED_DATASETS,
    Batch,
    DatasetUnavailableError,
    RawInteractions,
    RecsysData,
    build_dataset,
    load_dataset,
    read_interactions,
    resolve_dataset,
)
from .eval import evaluate, metrics_from_ranks, target_ranks
from .objectives import Objective, build_objective
from .train import RecsysConfig, load_checkpoint, save_checkpoint, train

__all__ = [
    "BASELINES",
    "NAMED_DATASETS",
    "Batch",
    "DatasetUnavailableError",
    "Objective",
    "RawInteractions",
    "RecsysConfig",
    "RecsysData",
    "build_dataset",
    "build_objective",
    "evaluate",
    "evaluate_baseline",
    "load_checkpoint",
    "load_dataset",
    "metrics_from_ranks",
    "read_interactions",
    "resolve_dataset",
    "save_checkpoint",
    "target_ranks",
    "train",
]

"""Non-neural baselines for context, scored by the same exact evaluation as the two-tower model.

* :func:`popularity_scorer` — every user gets the items ranked by their training interaction count
  (ties by id, i.e. by raw id: the popularity-sorted ids already encode that order).
* :func:`item_knn_scorer` — item-based collaborative filtering with cosine similarity on the binary
  user × item matrix X of the training prefixes (Sarwar et al. 2001; all neighbours, no shrinkage):

      sim(i, j) = <X[:, i], X[:, j]> / (‖X[:, i]‖ ‖X[:, j]‖),    score(u, j) = Σ_{i ∈ h_u} sim(i, j)

  computed as ``(H X̂ᵀ) X̂`` with X̂ the column-normalised X and H the rows' binary histories, so the
  [V, V] similarity matrix is never formed; scores come item-chunk by item-chunk.

Both only use the training prefixes (never a validation/test target) to fit, and the evaluated
user's full history (training prefix, plus the validation item for the test split) to score.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import Tensor

from .data import RecsysData
from .eval import DEFAULT_KS, evaluate_scorer

__all__ = ["BASELINES", "popularity_scorer", "item_knn_scorer", "evaluate_baseline"]

BASELINES = ("popularity", "item-knn")


def popularity_scorer(data: RecsysData, split: str = "test") -> Callable[[Tensor, int, int], Tensor]:
    """score(rows, start, stop) = training counts of items start..stop-1 (same for every row)."""
    counts = data.item_counts.to(torch.float64)

    def score(rows: Tensor, s0: int, s1: int) -> Tensor:
        return counts[s0:s1].expand(rows.numel(), s1 - s0)

    return score


def _training_matrix(data: RecsysData) -> Tensor:
    """Binary [U, V] float32 matrix of the training-prefix interactions (dense; U·V is small here)."""
    U, V = data.num_users, data.num_items
    per = data.num_train
    users = torch.repeat_interleave(torch.arange(U), per)
    first = torch.repeat_interleave(per.cumsum(0) - per, per)
    flat = torch.repeat_interleave(data.offsets[:-1], per) + torch.arange(users.numel()) - first
    X = torch.zeros(U, V)
    X[users, data.items[flat]] = 1.0
    return X


def item_knn_scorer(data: RecsysData, split: str = "test") -> Callable[[Tensor, int, int], Tensor]:
    """Item-kNN (cosine, all neighbours) scores for the users of ``data.eval_examples(split)``."""
    X = _training_matrix(data)
    norms = X.sum(0).sqrt()
    Xn = X / norms.clamp_min(1.0)  # an item with no training interaction has a zero column
    users, pos = data.eval_examples(split)
    rows, items = data.exclusion_pairs(pos, users)
    H = torch.zeros(users.numel(), data.num_items)
    H[rows, items] = 1.0
    M = H @ Xn.t()  # [E, U]

    def score(r: Tensor, s0: int, s1: int) -> Tensor:
        return M[r] @ Xn[:, s0:s1]

    return score


_SCORERS = {"popularity": popularity_scorer, "item-knn": item_knn_scorer}


def evaluate_baseline(name: str, data: RecsysData, split: str = "test", ks=DEFAULT_KS) -> Dict[str, float]:
    """Exact metrics of baseline ``name`` (``popularity`` | ``item-knn``) on ``split``."""
    if name not in _SCORERS:
        raise ValueError(f"baseline must be one of {BASELINES}, got {name!r}")
    return evaluate_scorer(_SCORERS[name](data, split), data, split, ks)

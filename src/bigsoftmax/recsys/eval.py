"""Exact full-catalogue evaluation for next-item retrieval (leave-last-out).

For every evaluated user (one held-out target t, the items h the user interacted with before it)
every item i of the catalogue is scored; the items of h are excluded (except t itself, should it
occur there), and the target's 0-based rank is

    rank = #{i ∉ h, i ≠ t : s_i > s_t} + #{i ∉ h, i ≠ t : s_i = s_t and i < t}

(ties go to the lower — more popular — item id, so the rank is deterministic). From the ranks:

    Recall@K  = mean(rank < K)          HitRate@K = mean(rank < K)
    NDCG@K    = mean(1[rank < K] / log2(rank + 2))

With a single held-out item per user Recall@K and HitRate@K are the same number (the relevant
set has one element: it is either in the top K or not); both are reported under their usual names.
Scores are produced item-chunk by item-chunk and user-chunk by user-chunk, so memory is
O(user_chunk × item_chunk), never [users, V] unless the chunks say so.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .data import RecsysData

__all__ = ["DEFAULT_KS", "target_ranks", "metrics_from_ranks", "evaluate_scorer", "evaluate", "user_vectors_for"]

DEFAULT_KS = (10, 50, 100)
ScoreFn = Callable[[Tensor, int, int], Tensor]  # (row ids [n], start, stop) -> [n, stop - start]


@torch.no_grad()
def target_ranks(score: ScoreFn, num_items: int, targets: Tensor, exclude: Tuple[Tensor, Tensor],
                 item_chunk: int = 4096, user_chunk: int = 1024) -> Tensor:
    """0-based rank of every row's target among the non-excluded items (see the module docstring).

    score(rows [n] int64, start, stop) -> [n, stop - start] scores of items start..stop-1 for those
    rows; targets [E] int64; exclude = (rows [H], items [H]) pairs not to rank (the history).
    Returns [E] int64.
    """
    E = targets.shape[0]
    if isinstance(item_chunk, bool) or not isinstance(item_chunk, int) or item_chunk < 1:
        raise ValueError(f"item_chunk must be an int >= 1, got {item_chunk!r}")
    if isinstance(user_chunk, bool) or not isinstance(user_chunk, int) or user_chunk < 1:
        raise ValueError(f"user_chunk must be an int >= 1, got {user_chunk!r}")
    if E and (int(targets.min()) < 0 or int(targets.max()) >= num_items):
        raise ValueError(f"targets must be item ids in [0, {num_items})")
    ex_rows, ex_items = exclude
    ranks = torch.zeros(E, dtype=torch.long)
    order = torch.argsort(ex_rows, stable=True)
    ex_rows, ex_items = ex_rows[order], ex_items[order]
    for r0 in range(0, E, user_chunk):
        r1 = min(E, r0 + user_chunk)
        rows = torch.arange(r0, r1)
        t = targets[r0:r1]
        lo, hi = torch.searchsorted(ex_rows, torch.tensor([r0, r1]))
        er, ei = ex_rows[lo:hi] - r0, ex_items[lo:hi]
        # pass 1: the targets' own scores
        ts = torch.empty(r1 - r0, dtype=torch.float64)
        for s0 in range(0, num_items, item_chunk):
            s1 = min(num_items, s0 + item_chunk)
            inside = (t >= s0) & (t < s1)
            if bool(inside.any()):
                sc = score(rows[inside], s0, s1)
                ts[inside] = sc.gather(1, (t[inside] - s0)[:, None])[:, 0].to(torch.float64)
        # pass 2: count the better non-excluded items
        for s0 in range(0, num_items, item_chunk):
            s1 = min(num_items, s0 + item_chunk)
            sc = score(rows, s0, s1).to(torch.float64)
            ids = torch.arange(s0, s1)
            better = (sc > ts[:, None]) | ((sc == ts[:, None]) & (ids[None, :] < t[:, None]))
            sel = (ei >= s0) & (ei < s1)
            if bool(sel.any()):
                better[er[sel], ei[sel] - s0] = False
            ranks[r0:r1] += better.sum(1)
    return ranks


def metrics_from_ranks(ranks: Tensor, ks: Sequence[int] = DEFAULT_KS, ndcg_k: int = 10) -> Dict[str, float]:
    """Recall@K for every K, HitRate@10 (== Recall@10), NDCG@ndcg_k and MRR from 0-based ranks [E]."""
    if ranks.numel() == 0:
        raise ValueError("no evaluated users: every user needs at least 3 interactions for the leave-last-out split")
    r = ranks.to(torch.float64)
    out: Dict[str, float] = {}
    for k in ks:
        out[f"Recall@{k}"] = float((r < k).to(torch.float64).mean())
    out["NDCG@%d" % ndcg_k] = float(torch.where(r < ndcg_k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).mean())
    out["HitRate@10"] = float((r < 10).to(torch.float64).mean())
    out["MRR"] = float((1.0 / (r + 1.0)).mean())
    out["users"] = int(ranks.numel())
    return out


def evaluate_scorer(score: ScoreFn, data: RecsysData, split: str = "test", ks: Sequence[int] = DEFAULT_KS,
                    item_chunk: int = 4096) -> Dict[str, float]:
    """Metrics of any scorer ``score(eval_rows, start, stop)`` on the valid/test targets of ``data``.

    Row j of the scorer is the j-th user of ``data.eval_examples(split)``.
    """
    users, pos = data.eval_examples(split)
    exclude = data.exclusion_pairs(pos, users)
    ranks = target_ranks(score, data.num_items, data.items[pos], exclude, item_chunk=item_chunk)
    return metrics_from_ranks(ranks, ks)


@torch.no_grad()
def user_vectors_for(model, data: RecsysData, users: Tensor, positions: Tensor, max_history: int,
                     use_user_features: bool = True, batch_size: int = 1024) -> Tensor:
    """User-tower outputs for examples (users, positions) -> [E, d], in batches."""
    out = []
    for a in range(0, users.numel(), batch_size):
        b = data.batch(users[a:a + batch_size], positions[a:a + batch_size], max_history)
        out.append(model.user_vectors(b.history, b.mask, b.user_features if use_user_features else None))
    return torch.cat(out) if out else torch.zeros(0, model.dim)


@torch.no_grad()
def evaluate(model, data: RecsysData, split: str = "test", max_history: int = 10, ks: Sequence[int] = DEFAULT_KS,
             use_user_features: Optional[bool] = None, item_chunk: int = 4096) -> Dict[str, float]:
    """Exact full-catalogue metrics of a :class:`~bigsoftmax.recsys.model.TwoTower` on ``split``.

    ``use_user_features`` defaults to whether the model has user-feature embeddings.
    """
    if model.num_items != data.num_items:
        raise ValueError(f"the model scores {model.num_items} items but the data set has {data.num_items}")
    was = model.training
    model.eval()
    try:
        if use_user_features is None:
            use_user_features = len(getattr(model, "user_feature_sizes", ())) > 0
        users, pos = data.eval_examples(split)
        U = user_vectors_for(model, data, users, pos, max_history, use_user_features)
        return evaluate_scorer(lambda rows, s0, s1: model.score_items(U[rows], s0, s1), data, split, ks, item_chunk)
    finally:
        model.train(was)

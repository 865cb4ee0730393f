"""Exact evaluation: ranks and metrics against a naive reference; baselines against dense formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax.recsys.baselines import evaluate_baseline, item_knn_scorer, popularity_scorer
from bigsoftmax.recsys.eval import metrics_from_ranks, target_ranks

from .conftest import dataset_from_rows


def naive_rank(scores, target, excluded):
    """Sort all items by (score desc, id asc), drop excluded ones (never the target), return the target's position."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = [i for i in order if i == target or i not in excluded]
    return kept.index(target)


def test_hand_made_example():
    # 3 users, 6 items; scores chosen by hand
    S = torch.tensor([
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],   # target 3, history {0, 1}: ranked items 2, 3 -> rank 1
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # target 0, history {5}: 4, 3, 2, 1, 0 -> rank 4
        [0.5, 0.5, 0.5, 0.9, 0.5, 0.5],   # target 2, history {3}: ties 0, 1 (lower ids first) -> rank 2
    ])
    targets = torch.tensor([3, 0, 2])
    ex = (torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 5, 3]))
    for ic, uc in ((6, 3), (2, 1), (4, 2), (1, 2)):
        ranks = target_ranks(lambda rows, a, b: S[rows, a:b], 6, targets, ex, item_chunk=ic, user_chunk=uc)
        assert ranks.tolist() == [1, 4, 2]
    m = metrics_from_ranks(torch.tensor([1, 4, 2]), ks=(1, 3, 5))
    assert m["Recall@1"] == 0.0 and m["Recall@3"] == pytest.approx(2 / 3) and m["Recall@5"] == 1.0
    assert m["NDCG@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(4)) / 3)
    assert m["MRR"] == pytest.approx((1 / 2 + 1 / 5 + 1 / 3) / 3)
    assert m["HitRate@10"] == 1.0 and m["users"] == 3


def test_recall_equals_hitrate_with_one_held_out_item():
    ranks = torch.tensor([0, 3, 9, 10, 57, 200])
    m = metrics_from_ranks(ranks)
    assert m["Recall@10"] == m["HitRate@10"] == pytest.approx(0.5)
    assert m["Recall@50"] == pytest.approx(4 / 6) and m["Recall@100"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="no evaluated users"):
        metrics_from_ranks(torch.zeros(0, dtype=torch.long))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(2, 9), st.integers(1, 4), st.integers(1, 3), st.data())
def test_ranks_match_naive_reference(E, V, ic, uc, data):
    # integer-valued scores: many exact ties, which the rank rule must break by item id
    S = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=V, max_size=V), min_size=E, max_size=E)),
                     dtype=torch.float32)
    targets = torch.tensor(data.draw(st.lists(st.integers(0, V - 1), min_size=E, max_size=E)))
    pairs = data.draw(st.lists(st.tuples(st.integers(0, E - 1), st.integers(0, V - 1)), max_size=12))
    pairs = sorted(set(pairs))
    ex = (torch.tensor([p[0] for p in pairs], dtype=torch.long), torch.tensor([p[1] for p in pairs], dtype=torch.long))
    ranks = target_ranks(lambda rows, a, b: S[rows, a:b], V, targets, ex, item_chunk=ic, user_chunk=uc)
    for r in range(E):
        excl = {i for (rr, i) in pairs if rr == r}
        assert int(ranks[r]) == naive_rank(S[r].tolist(), int(targets[r]), excl)


def test_bad_chunk_and_targets():
    S = torch.zeros(1, 3)
    none = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="item_chunk must be an int >= 1"):
        target_ranks(lambda r, a, b: S[r, a:b], 3, torch.tensor([0]), none, item_chunk=0)
    with pytest.raises(ValueError, match=r"targets must be item ids in \[0, 3\)"):
        target_ranks(lambda r, a, b: S[r, a:b], 3, torch.tensor([3]), none)


# ----------------------------------------------------------------------------- baselines
ROWS = [
    ("a", "1", 1), ("a", "2", 2), ("a", "3", 3), ("a", "4", 4), ("a", "5", 5),
    ("b", "2", 1), ("b", "3", 2), ("b", "1", 3), ("b", "6", 4),
    ("c", "3", 1), ("c", "1", 2), ("c", "2", 3), ("c", "5", 4), ("c", "4", 5), ("c", "6", 6),
    ("d", "6", 1), ("d", "5", 2), ("d", "4", 3),
]


def _dense_reference(d, split):
    users, pos = d.eval_examples(split)
    X = torch.zeros(d.num_users, d.num_items, dtype=torch.float64)
    for u in range(d.num_users):
        for k in range(int(d.offsets[u]), int(d.offsets[u]) + int(d.num_train[u])):
            X[u, int(d.items[k])] = 1
    norms = X.norm(dim=0)
    sim = (X.t() @ X) / torch.outer(norms, norms).clamp_min(1e-300)
    sim[(norms == 0)[:, None] | (norms == 0)[None, :]] = 0
    out = []
    for u, p in zip(users.tolist(), pos.tolist()):
        hist = d.items[d.offsets[u]:p].tolist()
        s = sim[hist].sum(0).tolist()
        out.append(naive_rank(s, int(d.items[p]), set(hist)))
    pop = [naive_rank(d.item_counts.tolist(), int(d.items[p]), set(d.items[d.offsets[u]:p].tolist()))
           for u, p in zip(users.tolist(), pos.tolist())]
    return out, pop


@pytest.mark.parametrize("split", ["valid", "test"])
def test_baselines_match_dense_formulas(split):
    d = dataset_from_rows(ROWS)
    knn_ranks, pop_ranks = _dense_reference(d, split)
    users, pos = d.eval_examples(split)
    ex = d.exclusion_pairs(pos, users)
    got_knn = target_ranks(item_knn_scorer(d, split), d.num_items, d.items[pos], ex, item_chunk=4)
    got_pop = target_ranks(popularity_scorer(d, split), d.num_items, d.items[pos], ex, item_chunk=4)
    assert got_knn.tolist() == knn_ranks
    assert got_pop.tolist() == pop_ranks
    assert evaluate_baseline("popularity", d, split)["MRR"] == pytest.approx(sum(1 / (r + 1) for r in pop_ranks) / len(pop_ranks))
    with pytest.raises(ValueError, match="baseline must be one of"):
        evaluate_baseline("random", d, split)

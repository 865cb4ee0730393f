"""The non-neural baselines (bigsoftmax.recsys.baselines) on hand-worked cases: popularity ranks
the most frequent training items first and gives the recall one computes on paper; item-kNN ranks
by co-occurrence with the user's history, so it beats popularity where popularity is wrong."""

import pytest
import torch

from bigsoftmax.recsys.baselines import BASELINES, evaluate_baseline, item_knn_scorer, popularity_scorer

from .conftest import dataset_from_rows


def _rows(seqs):
    return [(u, i, k) for u, s in seqs.items() for k, i in enumerate(s.split())]


# train prefixes (all but the last two items): u1 {A, B}, u2 {A, B}, u3 {A, C}, u4 {B, A}
# -> training counts A 4, B 3, C 1, X* 0. Test targets: u1 C, u2 C, u3 B, u4 X1.
PAPER = {"u1": "A B X1 C", "u2": "A B X2 C", "u3": "A C X3 B", "u4": "B A X4 X1"}


def test_popularity_ranks_the_most_frequent_training_items_first():
    d = dataset_from_rows(_rows(PAPER))
    assert d.item_ids.tolist()[:3] == ["A", "B", "C"]  # ids are popularity-sorted
    assert d.item_counts.tolist() == [4, 3, 1, 0, 0, 0, 0]
    scores = popularity_scorer(d)(torch.arange(2), 0, d.num_items)
    assert scores.shape == (2, d.num_items)
    assert torch.argsort(scores[0], descending=True, stable=True)[:3].tolist() == [0, 1, 2]
    assert torch.equal(scores[0], scores[1])  # the same list for every user


def test_popularity_recall_of_a_case_worked_on_paper():
    """u1, u2: history {A, B, X1|X2} excluded, C (count 1) beats every X (count 0): rank 0. u3: B is
    the best item left: rank 0. u4: X1 (count 0) loses to C only (the tie with X2, X3 goes to the lower
    id, X1): rank 1. So Recall@1 = 3/4, Recall@2 = 1, MRR = (1 + 1 + 1 + 1/2) / 4."""
    d = dataset_from_rows(_rows(PAPER))
    m = evaluate_baseline("popularity", d, "test", ks=(1, 2))
    assert m["Recall@1"] == 0.75 and m["Recall@2"] == 1.0
    assert m["MRR"] == pytest.approx(0.875) and m["users"] == 4


def test_item_knn_follows_co_occurrence_where_popularity_cannot():
    """Everyone who watched P also watched Q; the test users watched P: item-kNN scores Q above the
    more popular F (never seen with P), popularity the other way round."""
    seqs = {f"f{k}": f"F{k} F G{k} H{k}" for k in range(4)}  # F in 4 training prefixes
    seqs.update({"p0": "P Q Z0 Z1", "p1": "Q P Z2 Z3"})  # P and Q co-occur
    seqs.update({"t0": "P Z4 Z5 Q", "t1": "P Z6 Z7 Q"})  # test target Q after P
    d = dataset_from_rows(_rows(seqs))
    users, _ = d.eval_examples("test")
    rows = torch.tensor([k for k, u in enumerate(users.tolist()) if d.user_ids[u] in ("t0", "t1")])
    q, f = d.encode_items(["Q", "F"]).tolist()
    knn = item_knn_scorer(d, "test")(rows, 0, d.num_items)
    pop = popularity_scorer(d, "test")(rows, 0, d.num_items)
    assert (knn[:, q] > knn[:, f]).all() and (pop[:, f] > pop[:, q]).all()
    # cosine on the binary training matrix: P is in 4 prefixes, Q in 2, together in 2 -> 2 / sqrt(4 * 2);
    # the other history items (Z4, Z5 / Z6, Z7) never co-occur with Q
    torch.testing.assert_close(knn[:, q], torch.full((2,), 2 / 8 ** 0.5), rtol=0, atol=1e-6)
    assert (knn[:, f] == 0).all()
    assert evaluate_baseline("item-knn", d, "test", ks=(1,))["Recall@1"] > evaluate_baseline(
        "popularity", d, "test", ks=(1,))["Recall@1"]


def test_evaluate_baseline_names_the_allowed_baselines():
    d = dataset_from_rows(_rows(PAPER))
    assert set(BASELINES) == {"popularity", "item-knn"}
    for b in BASELINES:
        assert 0.0 <= evaluate_baseline(b, d, "valid", ks=(1,))["Recall@1"] <= 1.0
    with pytest.raises(ValueError, match=r"baseline must be one of \('popularity', 'item-knn'\), got 'knn'"):
        evaluate_baseline("knn", d)

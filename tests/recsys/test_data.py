"""Ratings data: reading, popularity re-indexing, leave-last-out split without leakage, bad input."""

from __future__ import annotations

import os
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax.recsys import data as D
from bigsoftmax.recsys.data import DatasetUnavailableError, load_dataset, read_interactions, resolve_dataset
from tests.conftest import DATA, need_shared

from .conftest import cyclic_rows, dataset_from_rows, write_atomic, write_csv


# ----------------------------------------------------------------------------- processing rules
def test_hand_made_split_reindex_and_ties():
    rows = [  # (user, item, time); file order deliberately scrambled
        ("a", "30", 5), ("a", "10", 1), ("a", "20", 1), ("a", "40", 9), ("a", "10", 7),  # 10 repeated: keep t=1
        ("b", "20", 2), ("b", "30", 3), ("b", "50", 4),
        ("c", "30", 1), ("c", "20", 2),  # only 2 interactions: training-only user
    ]
    d = dataset_from_rows(rows)
    # training prefixes: a = [10, 20] (ties at t=1 broken by raw id: 10 before 20), 30 valid, 40 test
    #                    b = [20] , 30 valid, 50 test;  c = [30, 20] (n < 3: all training)
    assert d.num_users == 3 and d.num_items == 5
    # training counts: 20 -> 3, 10 -> 1, 30 -> 1, 40 -> 0, 50 -> 0; ties by raw id
    assert d.item_ids.tolist() == ["20", "10", "30", "40", "50"]
    assert d.item_counts.tolist() == [3, 1, 1, 0, 0]
    seq = lambda u: d.decode_items(d.items[d.offsets[u]:d.offsets[u + 1]])  # noqa: E731
    assert seq(0) == ["10", "20", "30", "40"]  # the repeated (a, 10) kept its earliest time
    assert seq(1) == ["20", "30", "50"]
    assert d.num_train.tolist() == [2, 1, 2]
    assert d.eval_users().tolist() == [0, 1]
    u, p = d.eval_examples("test")
    assert d.decode_items(d.items[p]) == ["40", "50"]
    u, p = d.eval_examples("valid")
    assert d.decode_items(d.items[p]) == ["30", "30"]
    tu, tp = d.train_examples()  # a: target 20 (history [10]); c: target 20 (history [30]); b: none
    assert tu.tolist() == [0, 2] and d.decode_items(d.items[tp]) == ["20", "20"]
    assert d.target_counts().tolist() == [2, 0, 0, 0, 0]


def test_row_order_does_not_change_the_data_set():
    rows = cyclic_rows(seed=3)
    a = dataset_from_rows(rows)
    rng = np.random.default_rng(0)
    b = dataset_from_rows([rows[i] for i in rng.permutation(len(rows))])
    assert a.fingerprint() == b.fingerprint()
    assert a.item_ids.tolist() == b.item_ids.tolist()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(0, 5)), min_size=1, max_size=80))
def test_no_leakage(rows):
    """Histories precede their target; no later interaction reaches training; test item unseen in training."""
    d = dataset_from_rows([(f"u{u}", str(i), t) for u, i, t in rows])
    lengths = d.lengths()
    # the order inside each user's sequence is by (time, raw item id)
    for u in range(d.num_users):
        a, b = int(d.offsets[u]), int(d.offsets[u + 1])
        keys = [(float(d.timestamps[k]), int(d.item_ids[int(d.items[k])])) for k in range(a, b)]
        assert keys == sorted(keys) and len(set(k[1] for k in keys)) == len(keys)  # deduplicated
    # training examples only use the training prefix, and the history is strictly earlier
    tu, tp = d.train_examples()
    if tp.numel():
        assert bool((tp < d.offsets[tu] + d.num_train[tu]).all()) and bool((tp > d.offsets[tu]).all())
        batch = d.batch(tu, tp, max_history=4)
        hist_pos = tp[:, None] - 4 + torch.arange(4)
        assert bool((hist_pos[batch.mask] >= d.offsets[tu][:, None].expand_as(hist_pos)[batch.mask]).all())
        assert bool((d.timestamps[hist_pos.clamp_min(0)][batch.mask]
                     <= d.timestamps[tp][:, None].expand_as(hist_pos)[batch.mask]).all())
    for split, back in (("valid", 2), ("test", 1)):
        eu, ep = d.eval_examples(split)
        assert bool((lengths[eu] >= 3).all()) and bool((ep == d.offsets[eu + 1] - back).all())
        for u, p in zip(eu.tolist(), ep.tolist()):
            train_items = set(d.items[d.offsets[u]:d.offsets[u] + d.num_train[u]].tolist())
            assert int(d.items[p]) not in train_items  # the held-out item never occurs in the user's training data
            rows_, items_ = d.exclusion_pairs(torch.tensor([p]), torch.tensor([u]))
            assert set(items_.tolist()) == set(d.items[d.offsets[u]:p].tolist()) - {int(d.items[p])}
    # popularity ids come from training prefixes only
    tu_all = torch.repeat_interleave(torch.arange(d.num_users), d.num_train)
    first = torch.repeat_interleave(d.num_train.cumsum(0) - d.num_train, d.num_train)
    flat = torch.repeat_interleave(d.offsets[:-1], d.num_train) + torch.arange(tu_all.numel()) - first
    assert torch.equal(torch.bincount(d.items[flat], minlength=d.num_items), d.item_counts)
    assert bool((d.item_counts[:-1] >= d.item_counts[1:]).all())


def test_batch_history_is_right_aligned_last_items(cyclic):
    u, p = cyclic.train_examples()
    k = int(torch.nonzero(p - cyclic.offsets[u] == 5)[0])
    b = cyclic.batch(u[k:k + 1], p[k:k + 1], max_history=3)
    seq = cyclic.items[cyclic.offsets[u[k]]:]
    assert b.history[0].tolist() == seq[2:5].tolist() and b.mask.all()
    b = cyclic.batch(u[k:k + 1], p[k:k + 1], max_history=8)
    assert b.mask[0].tolist() == [False] * 3 + [True] * 5
    assert b.history[0, 3:].tolist() == seq[:5].tolist() and b.target.tolist() == [int(seq[5])]


# ----------------------------------------------------------------------------- bad input
def test_unknown_ids_and_empty_history(cyclic):
    with pytest.raises(ValueError, match=r"unknown user id\(s\) 'nobody'"):
        cyclic.encode_users(["u1", "nobody"])
    with pytest.raises(ValueError, match=r"unknown item id\(s\) '99999'"):
        cyclic.encode_items(["99999"])
    assert cyclic.encode_items([cyclic.item_ids[3]]).tolist() == [3]
    with pytest.raises(ValueError, match="empty history"):
        cyclic.batch(torch.tensor([0]), cyclic.offsets[:1], max_history=5)
    with pytest.raises(ValueError, match=r"users contains 999, outside the allowed range \[0, 40\)"):
        cyclic.batch(torch.tensor([999]), torch.tensor([1]), max_history=5)
    with pytest.raises(ValueError, match="max_history must be an int >= 1"):
        cyclic.batch(torch.tensor([0]), cyclic.offsets[:1] + 1, max_history=0)
    with pytest.raises(ValueError, match="split must be 'valid' or 'test'"):
        cyclic.eval_examples("train")


@pytest.mark.parametrize("content, match", [
    ("", "empty"),
    ("user_id,item_id,timestamp\n", "no interactions"),
    ("user,movie,when\n1,2,3\n", "missing item_id, timestamp"),
    ("userId,movieId,timestamp\n1,2,3\n1,2\n", r":3: malformed row: 2 comma-separated fields"),
    ("userId,movieId,timestamp\n1,2,yesterday\n", r":2: timestamp 'yesterday' is not a number"),
    ("userId,movieId,timestamp\n1,,3\n", "empty user or item id"),
    ("a;b;c\n1;2;3\n", "CSV header has 1 column"),
])
def test_malformed_csv(tmp_path, content, match):
    p = tmp_path / "r.csv"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_dataset(p)


@pytest.mark.parametrize("content, match", [
    ("user_id\titem_id\ttimestamp\n1\t2\t3\n", "expected 'name:type'"),
    ("user_id:token\titem_id:token\n1\t2\n", "missing timestamp"),
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\n", r":2: malformed row: 2 tab-separated fields, the header has 3"),
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\tnan\n", "must be finite"),
])
def test_malformed_atomic(tmp_path, content, match):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "x.inter").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_dataset(folder)


def test_atomic_folder_needs_one_inter_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"exactly one \*\.inter file, found 0"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither an existing file/folder nor a known data set name"):
        load_dataset(tmp_path / "missing.csv")


def test_atomic_folder_with_features_equals_csv(tmp_path):
    rows = cyclic_rows(num_users=12, num_items=10)
    users = sorted({r[0] for r in rows})
    items = sorted({r[1] for r in rows})
    uf = {u: ("MF"[k % 2], f"{10000 + k}") for k, u in enumerate(users)}
    itf = {i: (f"Title of {i}", "Drama Comedy" if int(i) % 2 else "Action") for i in items}
    a = load_dataset(write_atomic(tmp_path / "syn", rows, uf, itf))
    c = load_dataset(write_csv(tmp_path / "syn.csv", rows, header=("userId", "movieId", "timestamp"), extra=True))
    assert a.fingerprint() == c.fingerprint()
    # gender kept (2 values), zip skipped only when identifier-like (> max_feature_values distinct values)
    assert a.user_feature_names == ["gender", "zip"] and a.user_feature_sizes == [3, 13]
    a_small = D.build_dataset(read_interactions(tmp_path / "syn"), max_feature_values=5)
    assert a_small.user_feature_names == ["gender"]
    assert a_small.item_feature_names == ["class=Action", "class=Comedy", "class=Drama"]  # title words skipped
    assert torch.allclose(a_small.item_features.sum(1), torch.ones(a.num_items))
    assert c.item_feature_names == ["genres=Comedy", "genres=Drama"]


# ----------------------------------------------------------------------------- locating / fetching
def test_resolve_prefers_data_dir_then_cache(tmp_path, monkeypatch):
    dd, cache = tmp_path / "dd", tmp_path / "cache"
    monkeypatch.setenv("BIGSOFTMAX_DATA", str(dd))
    monkeypatch.setenv("BIGSOFTMAX_CACHE", str(cache))
    with pytest.raises(DatasetUnavailableError, match="ml-latest-small.csv.xz .*in \\$BIGSOFTMAX_DATA"):
        resolve_dataset("ml-latest-small")
    with pytest.raises(DatasetUnavailableError, match="not available offline"):
        resolve_dataset("ml-100k", allow_fetch=False)
    write_atomic(cache / "raw" / "ml-100k", cyclic_rows(num_users=5))
    assert resolve_dataset("ml-100k", allow_fetch=False) == cache / "raw" / "ml-100k"
    write_atomic(dd / "ml-100k", cyclic_rows(num_users=5))
    assert resolve_dataset("ml-100k", allow_fetch=False) == dd / "ml-100k"


def test_fetch_failure_message(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSOFTMAX_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("BIGSOFTMAX_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, b"", b"ERROR: Could not find a version that satisfies recbole==1.2.1\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(DatasetUnavailableError) as e:
        resolve_dataset("ml-100k")
    msg = str(e.value)
    assert "pip download" in msg and "recbole==1.2.1" in msg and "Could not find a version" in msg
    assert "$BIGSOFTMAX_DATA" in msg and "\n" not in msg
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]
    assert not (tmp_path / "cache" / "raw" / "ml-100k").exists()


def test_fetch_extracts_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSOFTMAX_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("BIGSOFTMAX_CACHE", str(tmp_path / "cache"))
    src = write_atomic(tmp_path / "src" / "ml-100k", cyclic_rows(num_users=6))

    def fake_run(cmd, **kw):  # what `pip download -d DIR` leaves behind: a wheel in DIR
        out = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(out, "recbole-1.2.1-py3-none-any.whl"), "w") as zf:
            zf.writestr("recbole/__init__.py", "")
            zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", (src / "ml-100k.inter").read_text())
            zf.writestr("recbole/dataset_example/ml-100k/../../evil.txt", "x")  # never extracted
        return subprocess.CompletedProcess(cmd, 0, b"", b"")

    monkeypatch.setattr(subprocess, "run", fake_run)
    d = load_dataset("ml-100k")
    assert d.name == "ml-100k" and d.num_users == 6
    assert sorted(p.name for p in (tmp_path / "cache" / "raw" / "ml-100k").iterdir()) == ["ml-100k.inter"]


# ----------------------------------------------------------------------------- the real data
def test_real_ml100k(monkeypatch):
    monkeypatch.setenv("BIGSOFTMAX_DATA", str(need_shared(DATA / "ml-100k").parent))
    d = load_dataset("ml-100k", allow_fetch=False)
    assert (d.num_users, d.num_items, d.num_interactions) == (943, 1682, 100000)
    assert d.user_feature_names == ["age", "gender", "occupation"]
    assert int(d.eval_users().numel()) == 943
    assert bool((d.item_counts[:-1] >= d.item_counts[1:]).all())
    assert d.num_train_examples() == 100000 - 3 * 943  # (n - 2) - 1 training targets per user


def test_real_ml_latest_small(monkeypatch):
    monkeypatch.setenv("BIGSOFTMAX_DATA", str(need_shared(DATA / "ml-latest-small.csv.xz").parent))
    d = load_dataset("ml-latest-small", allow_fetch=False)
    assert (d.num_users, d.num_items, d.num_interactions) == (671, 9066, 100004)
    assert d.user_feature_names == [] and d.item_features is not None and len(d.item_feature_names) == 19

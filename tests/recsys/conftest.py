"""Tiny synthetic ratings data for the recsys tests (files written to tmp_path; no network)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bigsoftmax.recsys.data import RawInteractions, build_dataset


def cyclic_rows(num_users=40, num_items=30, min_len=6, max_len=14, seed=0):
    """(user, item, timestamp) rows: user u walks s, s+1, s+2, ... (mod V) from a random start s.

    The next item is a deterministic function of the last one, so a model with the last history
    item can predict it; popularity cannot. Raw ids are strings 'u<k>' / '<100 + item>'.
    """
    rng = random.Random(seed)
    rows = []
    for u in range(num_users):
        s = rng.randrange(num_items)
        n = rng.randint(min_len, max_len)
        t0 = 1_000_000 + rng.randrange(10_000)
        for k in range(n):
            rows.append((f"u{u}", str(100 + (s + k) % num_items), t0 + 10 * k))
    rng.shuffle(rows)
    return rows


def write_csv(path, rows, header=("user_id", "item_id", "timestamp"), extra=False):
    with open(path, "w") as f:
        f.write(",".join(header) + (",rating,genres" if extra else "") + "\n")
        for u, i, t in rows:
            f.write(f"{u},{i},{t}" + (f",4.0,Drama|Comedy" if extra else "") + "\n")
    return path


def write_atomic(folder, rows, user_feats=None, item_feats=None):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{folder.name}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u, i, t in rows:
            f.write(f"{u}\t{i}\t3\t{t}\n")
    if user_feats:
        with open(folder / f"{folder.name}.user", "w") as f:
            f.write("user_id:token\tgender:token\tzip:token\n")
            for u, (g, z) in user_feats.items():
                f.write(f"{u}\t{g}\t{z}\n")
    if item_feats:
        with open(folder / f"{folder.name}.item", "w") as f:
            f.write("item_id:token\ttitle:token_seq\tclass:token_seq\n")
            for i, (title, genres) in item_feats.items():
                f.write(f"{i}\t{title}\t{genres}\n")
    return folder


def dataset_from_rows(rows, name="synth"):
    u, i, t = zip(*rows)
    raw = RawInteractions(np.asarray(u, dtype=str), np.asarray(i, dtype=str), np.asarray(t, dtype=np.float64), source=name)
    return build_dataset(raw, name=name)


@pytest.fixture
def cyclic():
    return dataset_from_rows(cyclic_rows())


@pytest.fixture
def cyclic_csv(tmp_path):
    return write_csv(tmp_path / "cyclic.csv", cyclic_rows())

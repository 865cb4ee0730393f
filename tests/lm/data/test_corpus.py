import lzma
import os
import time
from pathlib import Path

import numpy as np
import pytest

from bigsoftmax.lm.data import load_corpus, split_assignment, unigram_perplexity
from bigsoftmax.lm.data.recipes import bundled_corpus_path


@pytest.fixture(scope="module")
def slice_text():
    with lzma.open(bundled_corpus_path("gutenberg"), "rt", encoding="utf-8", errors="replace") as f:
        lines = [next(f) for _ in range(3000)]
    return "".join(lines)


def _write(tmp_path, text, name="slice.txt"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_split_assignment_is_deterministic_and_proportional():
    a = split_assignment(2000, 0.05, 0.1, split_seed=0)
    b = split_assignment(2000, 0.05, 0.1, split_seed=0)
    assert np.array_equal(a, b)
    # golden-ratio sequence: equidistributed, so counts are within a few blocks of the fractions
    assert abs((a == 1).sum() - 100) <= 3 and abs((a == 2).sum() - 200) <= 3
    # spread out: no long run of valid blocks, every 100-block window has some valid and test blocks
    for s in range(0, 2000, 100):
        w = a[s : s + 100]
        assert (w == 1).any() and (w == 2).any()
    assert not np.array_equal(a, split_assignment(2000, 0.05, 0.1, split_seed=1))


def test_load_corpus_split_vocab_and_determinism(tmp_path, slice_text):
    p = _write(tmp_path, slice_text)
    c1 = load_corpus(p, block_lines=20, cache=False)
    c2 = load_corpus(p, block_lines=20, cache=False)
    for s in ("train", "valid", "test"):
        assert c1.split(s).dtype == np.int32
        assert np.array_equal(c1.split(s), c2.split(s))
    n = c1.train.size + c1.valid.size + c1.test.size
    assert 0.02 < c1.valid.size / n < 0.09 and 0.02 < c1.test.size / n < 0.09
    v = c1.vocab
    assert np.all(np.diff(v.counts) <= 0)
    # vocabulary counts are exactly the training-split counts
    assert np.array_equal(np.bincount(c1.train, minlength=len(v)), v.counts)
    assert c1.train.max() < len(v) and c1.valid.max() < len(v)
    assert (c1.valid == v.unk_id).any()  # unseen valid words map to <unk>
    # decoded training text is the tokenised input
    words = v.decode(c1.train[:12])
    assert words[0] == "[" and "emma" in words


def test_cache_second_load_is_a_hit_and_identical(tmp_path, slice_text, monkeypatch):
    monkeypatch.setenv("BIGSOFTMAX_CACHE", str(tmp_path / "cache"))
    p = _write(tmp_path, slice_text)
    c1 = load_corpus(p, block_lines=20)
    assert c1.meta["cached"] is False
    c2 = load_corpus(p, block_lines=20)
    assert c2.meta["cached"] is True
    assert c1.vocab == c2.vocab and np.array_equal(c1.valid, c2.valid)
    root = Path(os.environ["BIGSOFTMAX_CACHE"]) / "corpora"
    entries = list(root.iterdir())
    assert len(entries) == 1 and not any(e.name.endswith(".tmp") for e in entries)
    assert sorted(x.name for x in entries[0].iterdir()) == ["meta.json", "test.npy", "train.npy", "valid.npy",
                                                           "vocab.json"]
    # other tokenisation options -> another entry; a modified file -> another entry
    c3 = load_corpus(p, block_lines=20, lowercase=False)
    assert c3.meta["cached"] is False and len(c3.vocab) > len(c1.vocab)
    time.sleep(0.01)
    p.write_text(slice_text + "one more line\n", encoding="utf-8")
    c4 = load_corpus(p, block_lines=20)
    assert c4.meta["cached"] is False
    assert len(list(root.iterdir())) == 3


def test_corrupt_cache_entry_is_rebuilt(tmp_path, slice_text, monkeypatch):
    monkeypatch.setenv("BIGSOFTMAX_CACHE", str(tmp_path / "cache"))
    p = _write(tmp_path, slice_text)
    load_corpus(p, block_lines=20)
    entry = next((Path(os.environ["BIGSOFTMAX_CACHE"]) / "corpora").iterdir())
    (entry / "vocab.json").write_text("{broken", encoding="utf-8")
    c = load_corpus(p, block_lines=20)
    assert c.meta["cached"] is False and len(c.vocab) > 100


def test_bundled_gutenberg_statistics():
    c = load_corpus("gutenberg")
    assert 40_000 < len(c.vocab) < 46_000  # the true ~43K-type vocabulary
    assert c.train.size > 2_000_000
    assert c.vocab.itos[0] == "<eos>" and c.vocab.itos[2] == "the"
    assert 300 < unigram_perplexity(c) < 800


def test_max_lines_min_count_max_size(tmp_path, slice_text):
    p = _write(tmp_path, slice_text)
    c = load_corpus(p, block_lines=20, min_count=3, cache=False)
    words = [i for i in range(len(c.vocab)) if i not in (c.vocab.unk_id, c.vocab.eos_id)]
    assert c.counts[words].min() >= 3
    assert c.vocab.unk_id < 20  # the many rare types merged into <unk> make it a frequent "word"
    c = load_corpus(p, block_lines=20, max_size=500, cache=False)
    assert len(c.vocab) == 500
    c = load_corpus(p, block_lines=20, max_lines=1000, cache=False)
    assert c.meta["lines"] == 1000


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a known corpus"):
        load_corpus(tmp_path / "nope.txt")
    empty = _write(tmp_path, "", "empty.txt")
    with pytest.raises(ValueError, match="no tokens"):
        load_corpus(empty)
    blank = _write(tmp_path, "\n \n\t\n", "blank.txt")
    with pytest.raises(ValueError, match="no tokens"):
        load_corpus(blank)
    small = _write(tmp_path, "just one line\n", "small.txt")
    with pytest.raises(ValueError, match="too small to split"):
        load_corpus(small)
    with pytest.raises(ValueError, match="valid_frac"):
        load_corpus("gutenberg", valid_frac=0.7)
    with pytest.raises(ValueError, match="block_lines"):
        load_corpus("gutenberg", block_lines=0)
    with pytest.raises(ValueError, match="directory"):
        load_corpus(tmp_path)
    c = load_corpus("gutenberg")
    with pytest.raises(ValueError, match="split must be one of"):
        c.split("dev")

import bz2
import gzip
import lzma

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax.lm.data import EOS, UNK, Tokenizer, Vocab, read_text
from bigsoftmax.lm.data.text import decode_bytes


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_words_punctuation_and_apostrophes():
    tok = Tokenizer()
    assert tok("Emma's father didn't come -- alas!") == ["emma's", "father", "didn't", "come", "-", "-", "alas", "!"]
    assert Tokenizer(lowercase=False)("The Bible") == ["The", "Bible"]


def test_tokenize_lines_adds_eos_and_skips_blank_lines():
    lines = ["Hello world.", "", "   ", "Bye"]
    assert list(Tokenizer().tokenize_lines(lines)) == [["hello", "world", ".", EOS], ["bye", EOS]]


def test_tokenizer_rejects_bad_pattern():
    with pytest.raises(ValueError, match="pattern"):
        Tokenizer(pattern="(")
    with pytest.raises(ValueError, match="pattern"):
        Tokenizer(pattern="")


# ----------------------------------------------------------------------------- vocab
def test_vocab_is_frequency_sorted_with_specials_ranked_by_count():
    counts = {"a": 5, "b": 9, "c": 1, "d": 1, EOS: 7}
    v = Vocab.build(counts)
    assert v.itos == ["b", EOS, "a", "c", "d", UNK]  # ties broken by the token string; <unk> count 0 last
    assert v.counts.tolist() == [9, 7, 5, 1, 1, 0]
    assert v.unk_id == 5 and v.eos_id == 1


def test_vocab_min_count_and_max_size_merge_into_unk():
    counts = {"a": 50, "b": 9, "c": 2, "d": 1, "e": 1, EOS: 7}
    v = Vocab.build(counts, min_count=2)
    assert "d" not in v and "e" not in v and "c" in v
    assert v.counts[v.unk_id] == 2
    v = Vocab.build(counts, max_size=4)  # a, b + the two specials
    assert set(v.itos) == {"a", "b", EOS, UNK}
    assert v.counts[v.unk_id] == 4  # c(2) + d + e
    assert np.all(np.diff(v.counts) <= 0)


def test_vocab_encode_unknown_and_decode_range():
    v = Vocab.build({"x": 3, "y": 2, EOS: 1})
    ids = v.encode(["x", "zzz", "y"])
    assert ids.dtype == np.int32
    assert v.decode(ids) == ["x", UNK, "y"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.decode([len(v)])


def test_vocab_bad_arguments():
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build({"a": 1}, min_count=0)
    with pytest.raises(ValueError, match="max_size"):
        Vocab.build({"a": 1}, max_size=2)
    with pytest.raises(ValueError, match="non-increasing"):
        Vocab(["a", EOS, UNK], [1, 2, 0])
    with pytest.raises(ValueError, match="special"):
        Vocab(["a", "b"], [2, 1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=4), min_size=1, max_size=60))
def test_vocab_round_trip_property(tokens):
    counter = {}
    for t in tokens:
        counter[t] = counter.get(t, 0) + 1
    v = Vocab.build(counter)
    assert v.decode(v.encode(tokens)) == tokens  # every training token is in the vocabulary
    assert np.all(np.diff(v.counts) <= 0)  # ids frequency-sorted
    for t, c in counter.items():
        assert v.counts[v.stoi[t]] == c
    assert Vocab.from_json(v.to_json()) == v


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="ab c.\n'", max_size=30), max_size=8))
def test_tokenizer_text_round_trip_property(lines):
    """Joining the tokens of a line with spaces and re-tokenising gives the same tokens."""
    tok = Tokenizer()
    for line in lines:
        toks = tok(line)
        assert tok(" ".join(toks)) == toks


# ----------------------------------------------------------------------------- reading
@pytest.mark.parametrize("suffix,opener", [(".txt", open), (".gz", gzip.open), (".xz", lzma.open), (".bz2", bz2.open)])
def test_read_text_plain_and_compressed(tmp_path, suffix, opener):
    text = "line one\nZwei – ünïcode\n"
    p = tmp_path / f"c{suffix}"
    with opener(p, "wb") as f:
        f.write(text.encode("utf-8"))
    assert read_text(p) == text


def test_read_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="directory"):
        read_text(tmp_path)
    bad = tmp_path / "bad.xz"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(ValueError, match="could not read"):
        read_text(bad)


def test_decode_bytes_falls_back_per_line():
    data = "caf\u00e9 ok\n".encode("utf-8") + "Bruneti\u00e8re\n".encode("latin-1")
    assert decode_bytes(data) == "caf\u00e9 ok\nBruneti\u00e8re\n"

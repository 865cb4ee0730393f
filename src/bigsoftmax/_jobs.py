"""What the two jobs (the language-model job :mod:`bigsoftmax.lm` and the retrieval job
:mod:`bigsoftmax.recsys`) share: atomic file writes, the progress line, run-folder helpers, command-line
argument types and the exit-code mapping, the data cache and fetch plumbing, text-file reading.

The library core (functional, samplers, trees, heads, ops) never imports this module; the jobs never
import each other.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import math
import hashlib
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "CLIError", "CorpusUnavailableError", "Progress", "RunLock", "cache_dir", "check_can_write", "check_text",
    "data_dir", "decode_bytes", "file_fingerprint", "int_list", "load_checkpoint_file", "peak_rss_mb", "pos_float",
    "pos_int", "read_text", "remove_stale_tmp", "run_cli", "run_fetch_command", "save_atomic", "token_count",
    "write_json_atomic", "write_text_atomic",
]

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------- files
def peak_rss_mb() -> float:
    """Process high-water resident memory in MiB (``ru_maxrss``; KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def _umask_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` would give a new file (mkstemp uses 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_atomic(obj, path: Union[str, Path]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomic(path, "wb", lambda f: torch.save(obj, f), fsync=True)


def _replace_atomic(path: Path, mode: str, write, fsync: bool = False) -> None:
    """Write through ``write(f)`` into a temporary file beside ``path``, then ``os.replace`` it onto
    ``path``; the temporary file is removed if anything fails (the old ``path`` stays intact)."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(obj, path: Union[str, Path]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomic(path, "w", lambda f: json.dump(obj, f, indent=1, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")



def write_text_atomic(text: str, path: Union[str, Path]) -> None:
    """Write ``text`` to a temporary file in the same folder, then ``os.replace`` it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomic(path, "w", lambda f: f.write(text))


#: the temporary names :func:`save_atomic` / :func:`write_json_atomic` use: ``<name>.<8 mkstemp chars>.tmp``
def _tmp_pattern(name: str) -> "re.Pattern[str]":
    return re.compile(re.escape(name) + r"\.[a-z0-9_]{8}\.tmp")


def remove_stale_tmp(folder: PathLike, name: str) -> List[Path]:
    """Remove ``<folder>/<name>.XXXXXXXX.tmp`` files left by a save that was killed (``kill -9``).

    Only names matching the pattern of our own atomic writes are touched; call it only while holding
    the folder's :class:`RunLock` (another process's save in progress would lose its file). Returns
    the removed paths.
    """
    folder = Path(folder)
    rx = _tmp_pattern(name)
    removed = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if rx.fullmatch(p.name) and p.is_file():
                p.unlink()
                removed.append(p)
    return removed


def check_can_write(paths: Sequence[PathLike], overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse (FileExistsError naming the file and ``flag``) when one of ``paths`` already exists.

    The rule of every command: never delete or overwrite a file it did not create in this run,
    unless ``--overwrite`` is given.
    """
    if overwrite:
        return
    for p in paths:
        p = Path(p)
        if p.exists() or p.is_symlink():
            raise FileExistsError(f"{str(p)!r} already exists and would be overwritten; pass {flag} to replace it "
                                  "or choose another output path")


def file_fingerprint(path: PathLike) -> Dict[str, object]:
    """``{'sha256': hex digest of the file's bytes, 'bytes': size}`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return {"sha256": h.hexdigest(), "bytes": n}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, truncated, not ours); the message names the file."""


def load_checkpoint_file(path: PathLike, kind: str, fmt: int, required: Sequence[str] = ()) -> Dict:
    """``torch.load`` a job checkpoint, turning every way it can be damaged into one :class:`CheckpointError`.

    An empty, truncated or text file, a pickle of something else (``torch.save([1, 2, 3])``), a
    dict of another format or one lacking one of ``required`` keys all raise ``CheckpointError``
    (a ValueError, so the command exits 2) with a one-line message naming ``path``. Loads with
    ``weights_only=True``: a checkpoint cannot run code.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{kind} checkpoint not found: {str(p)!r}")
    what = f"{str(p)!r} is not a usable {kind} checkpoint"
    if p.stat().st_size == 0:
        raise CheckpointError(f"{what}: the file is empty (was a save interrupted?)")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # EOFError, UnpicklingError, RuntimeError (zip), ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{what}: not a readable torch.save file ({type(e).__name__}: {reason[:200]})") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"{what}: it holds a {type(ck).__name__}, not a checkpoint dict")
    if ck.get("format") != fmt:
        raise CheckpointError(f"{what}: format {ck.get('format')!r}, expected {fmt!r}")
    missing = [k for k in required if k not in ck]
    if missing:
        raise CheckpointError(f"{what}: missing entr{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}")
    return ck


def load_state_checked(module: torch.nn.Module, state: Dict, path: PathLike) -> None:
    """``module.load_state_dict(state)``; a mismatch becomes a one-line :class:`CheckpointError` naming ``path``."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{str(Path(path))!r}: the saved weights do not fit the model its config builds "
                              f"({first[:200]})") from None


class RunLock:
    """An exclusive lock on a run folder: ``<folder>/.lock`` created with ``O_CREAT | O_EXCL``.

    The file holds ``{"pid", "host", "time"}``. A second process taking the lock fails with a
    :class:`CLIError` naming the holder; a lock left by a process that no longer runs (same host,
    dead pid — a ``kill -9``) is removed with a message. Use as a context manager or call
    :meth:`acquire` / :meth:`release`.
    """

    NAME = ".lock"

    def __init__(self, folder: PathLike, log=None):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.log = log or (lambda s: print(s, file=sys.stderr))
        self.held = False

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        return True

    def _read(self) -> Optional[Dict]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self._read()
                host = socket.gethostname()
                if isinstance(info, dict) and isinstance(info.get("pid"), int):
                    pid, lhost = info["pid"], info.get("host")
                    if lhost == host and pid != os.getpid() and not self._alive(pid):
                        self.log(f"removing stale lock {str(self.path)!r} left by process {pid} "
                                 "(no longer running)")
                        self._unlink()
                        continue
                    raise CLIError(f"run folder {str(self.folder)!r} is in use by process {pid} on {lhost} "
                                   f"(lock {str(self.path)!r}); wait for it to finish, or delete the lock file "
                                   "if that process is gone")
                try:  # unreadable: a writer killed between create and write, or a write in progress
                    age = time.time() - self.path.stat().st_mtime
                except OSError:
                    continue
                if age > 10:
                    self.log(f"removing unreadable stale lock {str(self.path)!r}")
                    self._unlink()
                    continue
                raise CLIError(f"run folder {str(self.folder)!r} is locked ({str(self.path)!r}); "
                               "another command is starting in it")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, f)
            self.held = True
            return self
        raise CLIError(f"could not take the lock {str(self.path)!r}")

    def _unlink(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.held:
            info = self._read()
            if isinstance(info, dict) and info.get("pid") == os.getpid():
                self._unlink()
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------- progress
def _fmt_time(s: float) -> str:
    if not math.isfinite(s) or s < 0:
        return "--:--"
    s = int(round(s))
    h, r = divmod(s, 3600)
    m, s = divmod(r, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt_num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


class Progress:
    """The progress bar of the jobs on stderr: fraction done, tokens, tokens/s, loss, ETA.

    On a terminal it is a `tqdm <https://tqdm.github.io>`_ bar redrawn at most every ``interval``
    seconds; otherwise (logs, CI) it prints a plain line every ``log_interval`` seconds. With
    ``total`` it counts items instead (``advance(n)``; the bench's bar over heads).
    """

    def __init__(self, label: str = "train", stream=None, enabled: bool = True, interval: float = 0.25,
                 log_interval: float = 15.0, width: int = 24, unit: str = "", total: Optional[int] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.label = label
        self.width = width
        self.unit = unit
        self.total = total
        self.count = 0
        self._last = -1e9
        self._bar = None

    def _tqdm(self):
        if self._bar is None:
            from tqdm import tqdm

            if self.total is not None:
                self._bar = tqdm(total=self.total, desc=self.label, unit=self.unit or "it", file=self.stream,
                                 mininterval=self.interval, dynamic_ncols=True, leave=True)
            else:
                self._bar = tqdm(total=100.0, desc=self.label, file=self.stream, mininterval=self.interval,
                                 bar_format="{desc} {percentage:5.1f}%% |{bar:%d}| {unit}" % self.width, unit="",
                                 dynamic_ncols=True, leave=True)
        return self._bar

    def update(self, frac: float, tokens: int, tok_s: float, loss: float, eta: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        frac = min(max(frac, 0.0), 1.0)
        stats = f"{_fmt_num(tokens)} tok  {_fmt_num(tok_s)} tok/s  loss {loss:.3f}  ETA {_fmt_time(eta)}"
        if self.tty:
            bar = self._tqdm()
            bar.n = frac * 100.0
            bar.unit = stats  # shown through bar_format's {unit} field
            bar.refresh()
        else:
            filled = int(round(frac * self.width))
            line = f"{self.label} {frac * 100:5.1f}% [{'#' * filled}{'.' * (self.width - filled)}] {stats}"
            self.stream.write(line + "\n")
            self.stream.flush()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done (bars with ``total``)."""
        self.count += n
        if self.enabled and self.tty:
            self._tqdm().update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def message(self, text: str) -> None:
        if self.enabled:
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()



# ----------------------------------------------------------------------------- data cache, fetching, text files
class CorpusUnavailableError(RuntimeError):
    """A named corpus is neither supplied nor fetchable; the message says what to do (one line)."""


def cache_dir() -> Path:
    """``$BIGSOFTMAX_CACHE`` or ``~/.cache/bigsoftmax`` (``$XDG_CACHE_HOME/bigsoftmax`` when set)."""
    env = os.environ.get("BIGSOFTMAX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bigsoftmax"


def data_dir() -> Optional[Path]:
    """``$BIGSOFTMAX_DATA`` (a folder of pre-fetched ``<name>.txt.xz`` files) or None."""
    env = os.environ.get("BIGSOFTMAX_DATA")
    return Path(env).expanduser() if env else None


def run_fetch_command(cmd: List[str], cwd: Path, what: str, hint: str) -> None:
    """Run a package-manager command for a data fetch; any failure becomes one-line :class:`CorpusUnavailableError`."""
    try:
        r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CorpusUnavailableError(f"fetching {what} with `{' '.join(cmd)}` failed ({e}); {hint}") from None
    if r.returncode != 0:
        err = decode_bytes(r.stderr).strip().splitlines()
        last = err[-1] if err else f"exit status {r.returncode}"
        raise CorpusUnavailableError(f"fetching {what} with `{' '.join(cmd)}` failed ({last}); {hint}")



def decode_bytes(data: bytes) -> str:
    """Decode UTF-8 text; lines that are not valid UTF-8 fall back to Windows-1252/Latin-1.

    Public-domain e-texts often mix encodings (a few Latin-1 accented names in a UTF-8 file);
    decoding line by line keeps every other line exact instead of failing or replacing the file.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out = []
    for line in data.split(b"\n"):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            try:
                out.append(line.decode("cp1252"))
            except UnicodeDecodeError:
                out.append(line.decode("latin-1"))
    return "\n".join(out)


def read_text(path: PathLike) -> str:
    """Read a plain, ``.gz``, ``.xz``/``.lzma`` or ``.bz2`` text file into a string.

    Raises FileNotFoundError (naming the path) when the file is missing and ValueError when it is
    a directory or its compressed stream is corrupt.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"corpus file not found: {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"corpus path {str(p)!r} is a directory; give a .txt, .gz or .xz file")
    suffix = p.suffix.lower()
    opener = {".gz": gzip.open, ".xz": lzma.open, ".lzma": lzma.open, ".bz2": bz2.open}.get(suffix, open)
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise ValueError(f"could not read {str(p)!r} as {suffix or 'plain'} text: {e}") from e
    text = decode_bytes(data)
    check_text(text, data, p)
    return text


#: control characters that never occur in text (tab, newlines, form feed excluded), and U+FFFD
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")
#: the share of such characters above which a file is taken for binary data
MAX_CONTROL_SHARE = 0.001


def check_text(text: str, data: bytes, path: PathLike) -> None:
    """Refuse binary input (ValueError naming ``path``): NUL bytes, or more than 0.1% control characters.

    Random bytes, executables, images, ``.npy`` files and UTF-16 text all fail; UTF-8, Latin-1 and
    Windows-1252 text (with tabs, form feeds, CRLF line ends) passes.
    """
    if not data:
        return
    nul = data.count(b"\x00")
    if nul:
        raise ValueError(f"{str(path)!r} looks like a binary file, not text: it contains {nul:,} NUL bytes "
                         f"({nul / len(data):.1%} of {len(data):,} bytes); give a UTF-8 or Latin-1 text file")
    bad = len(_CONTROL.findall(text))
    if bad > MAX_CONTROL_SHARE * max(len(text), 1):
        invalid = 0
        for line in data.split(b"\n"):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                invalid += len(line) + 1
        raise ValueError(f"{str(path)!r} looks like a binary file, not text: {bad / len(text):.1%} of its characters "
                         f"are control characters and {invalid / len(data):.0%} of its bytes are not valid UTF-8; "
                         "give a UTF-8 or Latin-1 text file")



# ----------------------------------------------------------------------------- command line
class CLIError(Exception):
    """Usage error raised inside a subcommand (exit status 2)."""


def pos_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def token_count(s: str) -> int:
    """Integers with optional K/M/G suffix: 300K, 2M."""
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}
    t = s.strip().lower().replace("_", "")
    try:
        v = int(float(t[:-1]) * mult[t[-1]]) if t and t[-1] in mult else int(t)
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a token count like 500000 or 500K, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive token count, got {s!r}")
    return v


def pos_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


def int_list(s: str) -> List[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not v or any(x < 1 for x in v):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {s!r}")
    return v


def run_cli(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], prog: str) -> int:
    """Parse ``argv`` with ``parser``, run the chosen subcommand's ``func``, map failures to exit codes.

    0 success; 2 usage errors and bad input (argparse errors, ValueError, TypeError, a missing or
    already existing file, :class:`CLIError`); 1 runtime failures and an unavailable corpus; 130 on
    Ctrl-C. Errors print one ``<prog>: error: ...`` line on stderr, never a traceback.
    """
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # argparse: --help / --version (0) or a usage error (2, message printed)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except CorpusUnavailableError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, CLIError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, RuntimeError, OSError) as e:
        print(f"{prog}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


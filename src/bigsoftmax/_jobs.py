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
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "CLIError", "CorpusUnavailableError", "Progress", "cache_dir", "data_dir", "decode_bytes", "int_list",
    "peak_rss_mb", "pos_float", "pos_int", "read_text", "run_cli", "run_fetch_command", "save_atomic",
    "token_count", "write_json_atomic",
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
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
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
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=_json_default)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")



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
    """A one-line progress bar on stderr: fraction done, tokens, tokens/s, loss, ETA.

    On a terminal it redraws in place at most every ``interval`` seconds; otherwise (logs, CI) it
    prints a plain line every ``log_interval`` seconds.
    """

    def __init__(self, label: str = "train", stream=None, enabled: bool = True, interval: float = 0.25,
                 log_interval: float = 15.0, width: int = 24):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.label = label
        self.width = width
        self._last = -1e9
        self._drawn = False

    def update(self, frac: float, tokens: int, tok_s: float, loss: float, eta: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        frac = min(max(frac, 0.0), 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        line = (f"{self.label} {frac * 100:5.1f}% [{bar}] {_fmt_num(tokens)} tok  {_fmt_num(tok_s)} tok/s  "
                f"loss {loss:.3f}  ETA {_fmt_time(eta)}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def message(self, text: str) -> None:
        if self.enabled:
            self.close()
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
    return decode_bytes(data)



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


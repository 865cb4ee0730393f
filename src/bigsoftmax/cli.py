"""The ``bigsoftmax`` command: a dispatcher only.

    bigsoftmax train|eval|bench|heads|corpus ...   the language-model job (:mod:`bigsoftmax.lm.cli`)
    bigsoftmax recsys train|eval|bench|...         the retrieval job (:mod:`bigsoftmax.recsys.cli`)

Each job module exposes ``register(subparsers)``; a job whose optional dependencies are missing is
skipped with a one-line warning instead of taking the other commands down. Exit codes (one mapping for
every subcommand, :func:`bigsoftmax._jobs.run_cli`): 0 success, 1 runtime failure, 2 bad usage or input
(the message names the problem), 130 interrupted (a resumable checkpoint was written).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from ._jobs import run_cli

__all__ = ["main", "build_parser"]

#: the job modules that register subcommands: ``register(subparsers)``
_JOBS = ("bigsoftmax.lm.cli", "bigsoftmax.recsys.cli")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every installed job's subcommands."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bigsoftmax",
        description="Softmax output layers for huge output spaces: train, evaluate and benchmark models.",
    )
    parser.add_argument("--version", action="version", version=f"bigsoftmax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _JOBS:
        try:
            job = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is not None and (mod == e.name or mod.startswith(e.name + ".")):
                continue  # that optional part is not installed
            print(f"bigsoftmax: warning: subcommands of {mod} unavailable ({e})", file=sys.stderr)
            continue
        except ImportError as e:  # a broken optional part must not take the other commands down
            print(f"bigsoftmax: warning: subcommands of {mod} unavailable ({e})", file=sys.stderr)
            continue
        job.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    return run_cli(build_parser(), argv, "bigsoftmax")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

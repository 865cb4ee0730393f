"""Load a script of ``examples/`` as a module (the example tests call its ``main``)."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(filename: str):
    """``examples/<filename>`` imported as a fresh module."""
    spec = importlib.util.spec_from_file_location(Path(filename).stem, EXAMPLES / filename)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

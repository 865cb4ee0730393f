"""Shared test helpers: where ../shared lives, and a skip when it is absent."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES_TF = SHARED / "fixtures" / "tf"
DATA = SHARED / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


def need_shared(path: Path) -> Path:
    """Return ``path`` or skip the test with the reason when ../shared is not beside the repo."""
    if not path.exists():
        pytest.skip(f"needs {path} (the shared material beside the repo); not present on this machine")
    return path

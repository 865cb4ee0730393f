"""Shared set-up of the LM job tests: every module gets its own private corpus cache (never
``~/.cache``, never a user's ``BIGSOFTMAX_DATA``), and the CLI tests share one tiny real corpus slice."""

from __future__ import annotations

import pytest

#: a small but real slice: the first 3000 lines of the bundled Gutenberg text, vocabulary capped at 500
TINY = ["--corpus", "gutenberg", "--max-lines", "3000", "--max-vocab", "500", "--block-lines", "50"]
#: a tiny model and budget for that slice
MODEL = ["--d-model", "32", "--batch-size", "16", "--seq-len", "16", "--lr", "0.02", "--eval-tokens", "3000", "-q"]


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # one private cache per test module
        mp.setenv("BIGSOFTMAX_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("BIGSOFTMAX_DATA", raising=False)
        yield

"""examples/byo_model.py (own model + whitespace tokenizer, zero counts, FrequencyOrder, CombinedOptimizer +
OneCycleLR + clip_grad_norm_) runs and learns: exact validation perplexity drops."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "byo_model.py"


def _load():
    spec = importlib.util.spec_from_file_location("byo_model", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("head", ["adaptive", "hsm"])
def test_byo_example_learns_with_zero_counts(head, capsys):
    out = _load().main(["--head", head, "--steps", "60"])
    assert out["zero_counts"] == 5  # the reserved tokens: the heads took counts with zeros
    assert math.isfinite(out["ppl"]) and out["ppl"] < 0.75 * out["ppl_before"]
    assert out["ppl"] < out["vocab"]
    assert math.isfinite(out["max_grad_norm"]) and out["max_grad_norm"] > 0
    assert "CombinedOptimizer(Adam, SparseAdam)" in capsys.readouterr().out

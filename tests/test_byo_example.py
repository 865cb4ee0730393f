"""examples/byo_model.py (own model + whitespace tokenizer, zero counts, FrequencyOrder, CombinedOptimizer +
OneCycleLR + clip_grad_norm_) runs and learns: exact validation perplexity drops."""

from __future__ import annotations

import math

import pytest

from tests._examples import load_example


@pytest.mark.parametrize("head", ["adaptive", "hsm"])
def test_byo_example_learns_with_zero_counts(head, capsys):
    out = load_example("byo_model.py").main(["--head", head, "--steps", "60"])
    assert out["zero_counts"] == 5  # the reserved tokens: the heads took counts with zeros
    assert math.isfinite(out["ppl"]) and out["ppl"] < 0.75 * out["ppl_before"]
    assert out["ppl"] < out["vocab"]
    assert math.isfinite(out["max_grad_norm"]) and out["max_grad_norm"] > 0
    assert "CombinedOptimizer(Adam, SparseAdam)" in capsys.readouterr().out

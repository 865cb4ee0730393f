"""examples/hf_trainer.py runs end to end with tiny settings (HF Trainer + sampled head + exact eval + generate)."""

from __future__ import annotations

import math

import pytest

from tests._examples import load_example

pytest.importorskip("transformers", reason="optional extra 'transformers' not installed")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (installed with the extra)")


def test_hf_trainer_example_tiny_run(tmp_path, capsys):
    ex = load_example("hf_trainer.py")
    out = ex.main(["--max-steps", "3", "--lines", "2000", "--vocab-size", "300", "--num-sampled", "32",
                   "--d-model", "32", "--layers", "1", "--generate", "5", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "exact validation perplexity" in printed and "generated:" in printed
    assert math.isfinite(out["after"].perplexity) and out["after"].tokens > 0
    assert out["after"].perplexity < out["before"].perplexity  # 3 Trainer steps on a sampled head help
    assert len(out["generated"]) == 5 and all(0 <= i < out["vocab"] for i in out["generated"])


def test_hf_trainer_example_rejects_bad_flags():
    ex = load_example("hf_trainer.py")
    with pytest.raises(SystemExit):
        ex.parse_args(["--max-steps", "0"])
    with pytest.raises(SystemExit):
        ex.parse_args(["--vocab-size", "10", "--num-sampled", "50"])

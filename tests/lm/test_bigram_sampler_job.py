"""The LM job with ``--sampler bigram``: the registry builds the Bigram proposal from the training
stream, the train step passes the previous token of every target as context, train/eval/resume run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bigsoftmax import cli
from bigsoftmax import samplers as S
from bigsoftmax.lm.registry import HeadOptions, build_head

from .conftest import MODEL, TINY


@pytest.mark.parametrize("name", ["sampled", "nce"])
def test_registry_builds_a_bigram_head_from_the_stream(name):
    V = 40
    tokens = np.random.default_rng(0).integers(0, V, 2000)
    counts = np.bincount(tokens, minlength=V)
    head = build_head(name, 8, counts, HeadOptions(num_sampled=5, sampler="bigram", tokens=tokens))
    assert isinstance(head.sampler, S.Bigram) and head.uses_context and not head.sampler.unique
    y, prev = torch.as_tensor(tokens[1:11]), torch.as_tensor(tokens[:10])
    assert torch.isfinite(head(torch.randn(10, 8), y, context=prev))
    with pytest.raises(ValueError, match="token stream"):
        build_head(name, 8, counts, HeadOptions(num_sampled=5, sampler="bigram"))
    assert "tokens" not in HeadOptions(tokens=tokens).to_dict()


@pytest.mark.parametrize("head", ["sampled", "nce"])
def test_train_eval_resume_with_bigram_sampler(head, tmp_path, capsys):
    out = tmp_path / head
    assert cli.main(["train", *TINY, *MODEL, "--head", head, "--sampler", "bigram", "--num-sampled", "32",
                     "--max-tokens", "16K", "--out", str(out)]) == 0, capsys.readouterr().err
    m = json.loads((Path(out) / "metrics.json").read_text())
    assert m["status"] == "finished" and m["valid_ppl"] < m["unigram_ppl"], m
    assert cli.main(["train", "--resume", "--out", str(out), "--max-tokens", "17K", "-q"]) == 0
    assert cli.main(["eval", str(out)]) == 0


def test_registry_builds_a_mixed_head():
    V = 40
    tokens = np.random.default_rng(1).integers(0, V, 2000)
    counts = np.bincount(tokens, minlength=V)
    head = build_head("sampled", 8, counts, HeadOptions(num_sampled=12, sampler="mixed", per_row=4, tokens=tokens))
    q = head.sampler
    assert isinstance(q, S.Mixed) and isinstance(q.shared, S.LogUniform) and q.num_per_row == 4 and head.uses_context
    assert q.shared_columns(12) == 8
    y, prev = torch.as_tensor(tokens[1:11]), torch.as_tensor(tokens[:10])
    assert torch.isfinite(head(torch.randn(10, 8), y, context=prev))
    with pytest.raises(ValueError, match="per_row must lie in"):
        build_head("sampled", 8, counts, HeadOptions(num_sampled=4, sampler="mixed", per_row=4, tokens=tokens))


def test_train_eval_with_mixed_sampler(tmp_path, capsys):
    out = tmp_path / "mixed"
    assert cli.main(["train", *TINY, *MODEL, "--head", "sampled", "--sampler", "mixed", "--num-sampled", "32",
                     "--per-row", "8", "--max-tokens", "16K", "--out", str(out)]) == 0, capsys.readouterr().err
    m = json.loads((Path(out) / "metrics.json").read_text())
    assert m["status"] == "finished" and m["valid_ppl"] < m["unigram_ppl"], m
    assert json.loads((Path(out) / "config.json").read_text())["per_row"] == 8
    assert cli.main(["eval", str(out)]) == 0

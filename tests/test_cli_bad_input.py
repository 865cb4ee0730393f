"""Bad-input table for both command lines (issue 14): each row is (argv, expected exit code, a phrase the
one-line error on stderr must contain). Nothing here trains a model: every row is refused up front."""

from __future__ import annotations

import pytest
import torch

from bigsoftmax import cli

E = 2  # bad usage or input


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSOFTMAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIGSOFTMAX_DATA", raising=False)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "latin.csv").write_bytes(b"user_id,item_id,timestamp\n" + b"\x00\x01\x02" * 100)
    rows = "".join(f"u{u},{100 + (u + k) % 7},{k}\n" for u in range(8) for k in range(5))
    (tmp_path / "r.csv").write_text("user_id,item_id,timestamp\n" + rows)
    (tmp_path / "noon.csv").write_text("user_id,item_id,timestamp\n1,2,noon\n")
    for name, damage in (("empty", lambda p: p.write_bytes(b"")), ("text", lambda p: p.write_text("hello\n")),
                         ("list", lambda p: torch.save([1, 2, 3], p)), ("fmt", lambda p: torch.save({"format": 1}, p))):
        (tmp_path / name).mkdir()
        damage(tmp_path / name / "checkpoint.pt")
        damage(tmp_path / f"{name}.pt")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "metrics.json").write_text("{}")
    (tmp_path / "exists.pt").write_text("mine")
    (tmp_path / "exists.md").write_text("mine")


LM = [
    (["train", "--corpus", "/no/such/file.txt", "--out", "{t}/a"], E, "neither a file nor a known corpus"),
    (["train", "--corpus", "{t}/empty.txt", "--out", "{t}/a"], E, "no tokens"),
    (["train", "--corpus", "{t}/binary.txt", "--out", "{t}/a"], E, "looks like a binary file"),
    (["train", "--head", "softmaxx", "--out", "{t}/a"], E, "unknown head 'softmaxx'"),
    (["train", "--out", "{t}/a", "--max-tokens", "-5"], E, "positive token count"),
    (["train", "--out", "{t}/a", "--lr", "0"], E, "positive finite number"),
    (["train", "--out", "{t}/a", "--lr", "nan"], E, "positive finite number"),
    (["train", "--out", "{t}/a", "--num-sampled", "0"], E, "positive integer"),
    (["train", "--out", "{t}/a", "--cutoffs", "a,b"], E, "comma-separated integers"),
    (["train", "--out", "{t}/a", "--sampler", "zipf"], E, "invalid choice: 'zipf'"),
    (["train", "--out", "{t}/a", "--model", "rnn"], E, "invalid choice: 'rnn'"),
    (["train", "--corpus", "{t}/empty.txt", "--out", "{t}/a", "--dropout", "1.5"], E, "dropout must be in [0, 1)"),
    (["train"], E, "--out"),
    (["train", "--resume", "--out", "{t}/nothing"], E, "cannot resume"),
    (["train", "--resume", "--overwrite", "--out", "{t}/empty"], E, "give one of them"),
    (["train", "--resume", "--out", "{t}/empty"], E, "the file is empty"),
    (["train", "--resume", "--out", "{t}/list"], E, "holds a list"),
    (["train", "--out", "{t}/foreign"], E, "metrics.json' already exists"),
    (["eval", "{t}/nothing"], E, "no checkpoint"),
    (["eval", "{t}/empty"], E, "empty/checkpoint.pt' is not a usable bigsoftmax train checkpoint: the file is empty"),
    (["eval", "{t}/text"], E, "not a readable torch.save file"),
    (["eval", "{t}/list"], E, "holds a list, not a checkpoint dict"),
    (["eval", "{t}/fmt"], E, "missing entries config"),
    (["eval", "{t}/empty", "--topk", "0"], E, "positive integers"),
    (["eval", "{t}/empty", "--split", "dev"], E, "invalid choice: 'dev'"),
    (["eval"], E, "run"),
    (["bench", "--heads", "full,bogus", "--out", "{t}/b"], E, "unknown head 'bogus'"),
    (["bench", "--heads", "full,full", "--out", "{t}/b"], E, "lists a head twice"),
    (["bench", "--heads", ",", "--out", "{t}/b"], E, "--heads must be"),
    (["corpus", "/no/such/file.txt"], E, "neither a file nor a known corpus"),
    (["corpus", "{t}/binary.txt"], E, "looks like a binary file"),
    (["nosuchcommand"], E, "invalid choice"),
]

RECSYS = [
    (["train", "--data", "{t}/nope.csv"], E, "neither an existing file/folder"),
    (["train", "--data", "{t}/noon.csv"], E, "timestamp 'noon' is not a number"),
    (["train", "--data", "{t}/latin.csv"], E, "looks like a binary file"),
    (["train", "--data", "{t}/r.csv", "--objective", "nce"], E, "invalid choice: 'nce'"),
    (["train", "--data", "{t}/r.csv", "--epochs", "0"], E, "positive integer"),
    (["train", "--data", "{t}/r.csv", "--alpha", "-1"], E, "number >= 0"),
    (["train", "--data", "{t}/r.csv", "--hidden", "a"], E, "comma-separated integers"),
    (["train", "--data", "{t}/r.csv", "--save", "{t}/exists.pt"], E, "exists.pt' already exists"),
    (["eval", "--data", "{t}/r.csv"], E, "exactly one of --checkpoint"),
    (["eval", "--data", "{t}/r.csv", "--checkpoint", "{t}/missing.pt"], E, "checkpoint not found"),
    (["eval", "--data", "{t}/r.csv", "--checkpoint", "{t}/empty.pt"], E, "the file is empty"),
    (["eval", "--data", "{t}/r.csv", "--checkpoint", "{t}/text.pt"], E, "not a readable torch.save file"),
    (["eval", "--data", "{t}/r.csv", "--checkpoint", "{t}/list.pt"], E, "holds a list"),
    (["eval", "--data", "{t}/r.csv", "--checkpoint", "{t}/fmt.pt"], E, "format 1"),
    (["eval", "--data", "{t}/r.csv", "--baseline", "random"], E, "invalid choice: 'random'"),
    (["recommend", "--data", "{t}/r.csv", "--checkpoint", "{t}/empty.pt"], E, "--user"),
    (["recommend", "--data", "{t}/r.csv", "--checkpoint", "{t}/empty.pt", "--user", "u1"], E, "the file is empty"),
    (["recommend", "--data", "{t}/r.csv", "--checkpoint", "{t}/x.pt", "--user", "u1", "-k", "0"], E,
     "positive integer"),
    (["bench", "--data", "{t}/r.csv", "--out", "{t}/exists.md"], E, "exists.md' already exists"),
]


def _run(argv, tmp_path, capsys):
    code = cli.main([a.replace("{t}", str(tmp_path)) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv,code,phrase", LM, ids=[" ".join(r[0])[:60] for r in LM])
def test_lm_cli_bad_input(argv, code, phrase, tmp_path, capsys):
    got, err = _run(argv, tmp_path, capsys)
    assert got == code, err
    assert phrase.replace("{t}", str(tmp_path)) in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,code,phrase", RECSYS, ids=[" ".join(r[0])[:60] for r in RECSYS])
def test_recsys_cli_bad_input(argv, code, phrase, tmp_path, capsys):
    got, err = _run(["recsys", *argv], tmp_path, capsys)
    assert got == code, err
    assert phrase in err, err
    assert "Traceback" not in err

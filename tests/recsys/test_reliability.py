"""``bigsoftmax recsys`` reliability (issue 14): no overwrite without ``--overwrite``, outputs under
``runs/`` by default, damaged checkpoints as one-line errors; titles in ``recommend`` (issue 13)."""

from __future__ import annotations

import pytest
import torch

from bigsoftmax.recsys.cli import build_parser, main

from .conftest import cyclic_rows, write_atomic

FAST = ["--epochs", "1", "--batch-size", "32", "--lr", "0.05", "--dim", "8", "--max-history", "2", "--quiet"]


def _err(capsys):
    return capsys.readouterr().err


def test_train_save_refuses_an_existing_file_before_training(tmp_path, cyclic_csv, capsys):
    ckpt = tmp_path / "tt.pt"
    ckpt.write_bytes(b"someone else's file")
    assert main(["train", "--data", str(cyclic_csv), *FAST, "--save", str(ckpt)]) == 2
    err = _err(capsys)
    assert str(ckpt) in err and "--overwrite" in err and "Traceback" not in err
    assert "training" not in err  # refused before any training
    assert ckpt.read_bytes() == b"someone else's file"
    assert main(["train", "--data", str(cyclic_csv), *FAST, "--save", str(ckpt), "--overwrite"]) == 0
    from bigsoftmax.recsys.train import CKPT_FORMAT

    assert torch.load(ckpt, weights_only=True)["format"] == CKPT_FORMAT


def test_bench_defaults_under_runs_and_refuses_a_second_bench(tmp_path, cyclic_csv, capsys, monkeypatch):
    args = build_parser().parse_args(["bench"])
    assert args.out.startswith("runs/") and args.plot.startswith("runs/")
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "--data", str(cyclic_csv), "--objectives", "in-batch", "--quick", "--batch-size", "32", "--dim",
            "8", "--num-sampled", "8", "--plot", ""]
    assert main(argv) == 0
    assert (tmp_path / "runs" / "recsys-bench" / "recsys.md").is_file()
    capsys.readouterr()
    assert main(argv) == 2
    err = _err(capsys)
    assert "recsys.md" in err and "--overwrite" in err
    assert main(argv + ["--overwrite"]) == 0


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from .conftest import write_csv

    d = tmp_path_factory.mktemp("rs")
    csv = write_csv(d / "cyclic.csv", cyclic_rows())
    ckpt = d / "tt.pt"
    assert main(["train", "--data", str(csv), *FAST, "--save", str(ckpt)]) == 0
    return csv, ckpt


@pytest.mark.parametrize("kind", ["empty", "text", "format-only", "list", "truncated", "bad-weights"])
@pytest.mark.parametrize("command", ["eval", "recommend"])
def test_damaged_checkpoint_is_a_one_line_error_naming_the_file(saved, tmp_path, kind, command, capsys):
    csv, good = saved
    p = tmp_path / "bad.pt"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("not a checkpoint\n")
    elif kind == "format-only":
        from bigsoftmax.recsys.train import CKPT_FORMAT

        torch.save({"format": CKPT_FORMAT}, p)
    elif kind == "list":
        torch.save([1, 2, 3], p)
    elif kind == "truncated":
        p.write_bytes(good.read_bytes()[:200])
    else:
        ck = torch.load(good, weights_only=True)
        ck["model"] = {"nope": torch.zeros(1)}
        torch.save(ck, p)
    argv = [command, "--data", str(csv), "--checkpoint", str(p)] + (["--user", "u1"] if command == "recommend" else [])
    assert main(argv) == 2
    err = _err(capsys).strip()
    assert str(p) in err and err.count("\n") == 0 and "Traceback" not in err, err


def test_recommend_prints_titles_where_the_data_has_them(tmp_path, capsys):
    rows = cyclic_rows()
    items = sorted({i for _, i, _ in rows})
    folder = write_atomic(tmp_path / "titled", rows, item_feats={i: (f"Movie Number {i}", "Drama") for i in items})
    ckpt = tmp_path / "t.pt"
    assert main(["train", "--data", str(folder), *FAST, "--save", str(ckpt)]) == 0
    capsys.readouterr()
    assert main(["recommend", "--data", str(folder), "--checkpoint", str(ckpt), "--user", "u3", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        raw, title = line.split("\t")
        assert title == f"Movie Number {raw}"

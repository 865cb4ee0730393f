"""``bigsoftmax recsys`` CLI: train/save → eval/recommend, baselines, bench outputs, errors."""

from __future__ import annotations

import json

import pytest

from bigsoftmax.recsys.cli import main

FAST = ["--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--dim", "8", "--max-history", "2", "--quiet"]


def test_train_save_eval_recommend(tmp_path, cyclic_csv, capsys):
    ckpt = tmp_path / "tt.pt"
    assert main(["train", "--data", str(cyclic_csv), "--objective", "in-batch", *FAST, "--save", str(ckpt), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["objective"] == "in-batch +logQ(true)" and res["train"]["steps"] == 2 * (294 // 32)
    for k in ("Recall@10", "Recall@50", "Recall@100", "NDCG@10", "HitRate@10"):
        assert 0.0 <= res["test"][k] <= 1.0
    assert res["test"]["Recall@10"] == res["test"]["HitRate@10"]
    assert main(["eval", "--data", str(cyclic_csv), "--checkpoint", str(ckpt), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["Recall@10"] == res["test"]["Recall@10"] and again["NDCG@10"] == res["test"]["NDCG@10"]
    assert main(["recommend", "--data", str(cyclic_csv), "--checkpoint", str(ckpt), "--user", "u3", "-k", "4"]) == 0
    recs = capsys.readouterr().out.split()
    assert len(recs) == 4 and len(set(recs)) == 4
    # unknown user id: clear error, exit 2
    assert main(["recommend", "--data", str(cyclic_csv), "--checkpoint", str(ckpt), "--user", "nobody"]) == 2
    assert "unknown user id(s) 'nobody'" in capsys.readouterr().err
    # a checkpoint is tied to its data set
    other = tmp_path / "other.csv"
    other.write_text("user_id,item_id,timestamp\n1,1,1\n1,2,2\n1,3,3\n2,1,1\n2,3,2\n2,2,3\n")
    assert main(["eval", "--data", str(other), "--checkpoint", str(ckpt)]) == 2
    assert "differs" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--objective", "sampled", "--sampler", "unigram", "--alpha", "0.5", "--no-logq", "--num-sampled", "8"],
                                   ["--objective", "mixed", "--freq", "streaming", "--num-sampled", "8", "--normalize",
                                    "--temperature", "0.2", "--pooling", "attention"]])
def test_train_other_objectives(cyclic_csv, capsys, extra):
    assert main(["train", "--data", str(cyclic_csv), *FAST, "--epochs", "1", *extra]) == 0
    out = capsys.readouterr().out
    assert "test:  Recall@10" in out


def test_eval_baselines_and_usage_errors(cyclic_csv, tmp_path, capsys):
    assert main(["eval", "--data", str(cyclic_csv), "--baseline", "popularity"]) == 0
    assert "popularity baseline: Recall@10" in capsys.readouterr().out
    assert main(["eval", "--data", str(cyclic_csv)]) == 2
    assert "exactly one of --checkpoint" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nope.csv"), *FAST]) == 2
    assert "neither an existing file/folder" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\n1,2,noon\n")
    assert main(["train", "--data", str(bad), *FAST]) == 2
    assert "timestamp 'noon' is not a number" in capsys.readouterr().err
    assert main(["train", "--data", str(cyclic_csv), "--objective", "nce"]) == 2
    assert main(["train", "--data", str(cyclic_csv), "--epochs", "0"]) == 2
    assert main(["train", "--data", str(cyclic_csv), *FAST, "--item-features"]) == 2
    assert "has no item features" in capsys.readouterr().err


def test_bench_writes_table_json_and_plot(cyclic_csv, tmp_path, capsys):
    out, plot = tmp_path / "r.md", tmp_path / "r.png"
    rc = main(["bench", "--data", str(cyclic_csv), "--objectives", "in-batch,full", "--quick", "--batch-size", "32",
               "--dim", "8", "--num-sampled", "8", "--out", str(out), "--plot", str(plot)])
    assert rc == 0
    table = out.read_text()
    assert "| popularity baseline |" in table and "| item-knn baseline |" in table
    assert table.count("in-batch softmax") == 3 and "full softmax (reference)" in table
    assert "in-batch logQ (true frequencies) changes Recall@10 by" in table
    assert "Command: `bigsoftmax recsys bench --data" in table and "--epochs 1" in table
    res = json.loads(out.with_suffix(".json").read_text())
    assert len(res["datasets"]["cyclic"]["runs"]) == 4
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registered_in_the_main_cli(cyclic_csv, capsys):
    from bigsoftmax.cli import main as top

    assert top(["recsys", "eval", "--data", str(cyclic_csv), "--baseline", "item-knn"]) == 0
    assert "item-knn baseline" in capsys.readouterr().out
    assert top(["recsys"]) == 2

"""CLI tests: in-process via ``cli.main([...])`` (fast) plus one subprocess run of the console entry."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bigsoftmax import cli
from bigsoftmax.lm.registry import HEADS, available_heads

from .conftest import MODEL, TINY


def _metrics(run):
    return json.loads((Path(run) / "metrics.json").read_text())


#: heads whose exact-softmax perplexity is not a training target: negative sampling learns
#: log(P/(S Q)), not log P (see bigsoftmax.heads.nce), so only finiteness is asserted for it
NOT_A_DENSITY = {"negsampling"}


@pytest.mark.parametrize("head", list(HEADS))
def test_train_smoke_every_head_beats_unigram(head, tmp_path, capsys):
    if head not in available_heads():
        pytest.skip(f"head {head!r} is not implemented in bigsoftmax.heads yet")
    out = tmp_path / head
    code = cli.main(["train", *TINY, *MODEL, "--head", head, "--num-sampled", "128", "--max-tokens", "16K",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    m = _metrics(out)
    assert m["status"] == "finished" and m["head"] == head and m["train_tokens"] >= 16_000
    assert m["valid_ppl"] == m["valid_ppl"] and m["valid_ppl"] < float("inf")
    if head not in NOT_A_DENSITY:
        assert m["valid_ppl"] < m["unigram_ppl"], m
    assert f"{head}: valid perplexity" in capsys.readouterr().out


def test_eval_and_resume_through_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, *MODEL, "--head", "sampled", "--num-sampled", "64", "--max-tokens", "1K",
                     "--out", str(out)]) == 0
    first = _metrics(out)
    # continue the same run with a larger budget: the step counter carries on
    assert cli.main(["train", "--resume", "--out", str(out), "--max-tokens", "2K", "-q"]) == 0
    second = _metrics(out)
    assert second["resumed_from_step"] == first["steps"] and second["steps"] == 2 * first["steps"]
    capsys.readouterr()
    assert cli.main(["eval", str(out), "--split", "test", "--max-tokens", "500", "--topk", "1,5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "test" and 1 < res["ppl"] < 1e5
    assert 0 <= res["acc@1"] <= res["acc@5"] <= 1


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    heads = [h for h in ("full", "sampled", "adaptive") if h in available_heads()][:2]
    if len(heads) < 2:
        pytest.skip("needs two available heads")
    out = tmp_path / "bench"
    code = cli.main(["bench", "--heads", ",".join(heads), *TINY, *MODEL, "--num-sampled", "64", "--max-tokens", "1K",
                     "--eval-tokens", "500", "--in-process", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| head | valid ppl |" in printed
    res = json.loads((out / "results.json").read_text())
    assert [r["head"] for r in res["runs"]] == heads
    assert all(r["status"] == "finished" for r in res["runs"])
    md = (out / "results.md").read_text()
    assert all(f"| {h} |" in md for h in heads)
    pytest.importorskip("matplotlib")
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not (out / "runs" / heads[0] / "checkpoint.pt").exists()  # dropped unless --keep-checkpoints


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--corpus", "/no/such/file.txt", "--out", "{tmp}/a"], "neither a file nor a known corpus"),
        (["train", "--corpus", "{tmp}/empty.txt", "--out", "{tmp}/b"], "no tokens"),
        (["train", *TINY, "--head", "softmaxx", "--out", "{tmp}/c"], "unknown head 'softmaxx'"),
        (["train", *TINY, "--head", "sampled", "--num-sampled", "100000", "--out", "{tmp}/d"],
         "num_sampled=100000 must be <"),
        (["eval", "{tmp}/nothing"], "no checkpoint"),
        (["bench", "--heads", "full,bogus", "--out", "{tmp}/e"], "unknown head 'bogus'"),
        (["train", "--resume", "--out", "{tmp}/f"], "cannot resume"),
    ],
)
def test_bad_input_gives_clear_error_and_nonzero_exit(argv, needle, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and err.startswith("bigsoftmax: error:") and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    assert cli.main(["train", "--out", "x", "--max-tokens", "-5"]) == 2
    assert "positive token count" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert cli.main(["--version"]) == 0


def test_missing_fetch_tool_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cli.main(["train", "--corpus", "brown", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "npm" in err and "BIGSOFTMAX_DATA" in err


def test_heads_and_corpus_commands(capsys):
    assert cli.main(["heads"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in HEADS)
    assert cli.main(["corpus", "gutenberg", "--max-lines", "3000", "--block-lines", "50"]) == 0
    assert "vocabulary" in capsys.readouterr().out


def test_job_subcommands_are_optional(monkeypatch):
    from bigsoftmax import cli as top
    from bigsoftmax.lm import cli as lm_cli

    monkeypatch.setattr(top, "_JOBS", ("bigsoftmax.lm.cli", "bigsoftmax.no_such_job.cli"))
    parser = top.build_parser()  # an absent job is skipped
    assert parser.parse_args(["heads"]).func is lm_cli.cmd_heads

    class Plugin:
        @staticmethod
        def register(sub):
            p = sub.add_parser("hello")
            p.set_defaults(func=lambda a: 7)

    monkeypatch.setitem(sys.modules, "fake_plugin_cli", Plugin)
    monkeypatch.setattr(top, "_JOBS", ("fake_plugin_cli",))
    assert top.main(["hello"]) == 7


def test_python_dash_m_bigsoftmax_help():
    r = subprocess.run([sys.executable, "-m", "bigsoftmax", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "recsys" in r.stdout


def test_console_entry_point_subprocess(tmp_path):
    exe = Path(sys.executable).parent / "bigsoftmax"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "bigsoftmax"]
    env = dict(os.environ)
    r = subprocess.run(cmd + ["train", *TINY, "--d-model", "16", "--batch-size", "8", "--seq-len", "8",
                              "--head", "sampled", "--num-sampled", "32", "--max-tokens", "256", "--eval-tokens",
                              "200", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "valid perplexity" in r.stdout and "tok/s" in r.stderr  # progress bar / log on stderr
    r = subprocess.run(cmd + ["train", "--head", "nope", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2 and "unknown head 'nope'" in r.stderr

"""Job-side reliability of ``bigsoftmax train / eval / bench`` (issue 14): the run's own vocabulary and
corpus fingerprint, no overwrite without ``--overwrite``, the run-folder lock, ``--resume`` flag rules,
damaged checkpoints, stale temporary files, binary corpora, bench fairness, metrics history."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bigsoftmax import cli
from bigsoftmax.lm.registry import available_heads

#: a tiny synthetic corpus (a few hundred lines over 40 words) is written per test; models are tiny
MODEL = ["--d-model", "16", "--batch-size", "4", "--seq-len", "8", "--lr", "0.02", "--block-lines", "10",
         "--eval-tokens", "200", "--threads", "1", "-q"]
WORDS = [f"w{i}" for i in range(40)]


def write_corpus(path: Path, seed: int, lines: int = 300) -> Path:
    rng = random.Random(seed)
    text = "\n".join(" ".join(rng.choice(WORDS[: 10 + (k % 30)]) for _ in range(rng.randint(4, 12)))
                     for k in range(lines))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_clean_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("bigsoftmax: error:") and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, err  # one line
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "c.txt", seed=1)


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    code, _, err = run(["train", "--corpus", corpus, *MODEL, "--head", "sampled", "--num-sampled", "16",
                        "--max-tokens", "128", "--out", out], capsys)
    assert code == 0, err
    return out


# ----------------------------------------------------------------------------- item 1: the run's vocabulary
def test_eval_refuses_a_changed_corpus_and_always_uses_the_runs_vocabulary(trained, corpus, capsys):
    from bigsoftmax.lm.data import Vocab
    from bigsoftmax.lm.eval import load_run

    code, out, err = run(["eval", trained, "--json"], capsys)
    assert code == 0, err
    before = json.loads(out)
    write_corpus(corpus, seed=2)  # other text over the same words: a rebuilt vocabulary would remap ids
    code, _, err = run(["eval", trained], capsys)
    assert_clean_error(code, err, "changed since the run", str(corpus), "--allow-corpus-change", "sha256")
    code, out, err = run(["eval", trained, "--json", "--allow-corpus-change"], capsys)
    assert code == 0, err
    assert json.loads(out)["ppl"] != before["ppl"]  # other text, but scored with the run's ids
    _, c, _, _ = load_run(trained, allow_corpus_change=True)
    assert c.vocab == Vocab.from_json((trained / "vocab.json").read_text())
    # --resume refuses the changed corpus too
    code, _, err = run(["train", "--resume", "--out", trained, "--max-tokens", "256"], capsys)
    assert_clean_error(code, err, "changed since the run", "--resume")


# ----------------------------------------------------------------------------- item 3: no overwrite
def test_train_refuses_a_folder_holding_another_runs_files(tmp_path, corpus, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": 1}')
    argv = ["train", "--corpus", corpus, *MODEL, "--max-tokens", "64", "--out", out]
    code, _, err = run(argv, capsys)
    assert_clean_error(code, err, "metrics.json", "--overwrite")
    assert (out / "metrics.json").read_text() == '{"mine": 1}'
    code, _, err = run(argv + ["--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["status"] == "finished"
    code, _, err = run(argv, capsys)  # a finished run: refused without --resume / --overwrite
    assert_clean_error(code, err, "already holds a run", "--resume", "--overwrite")


def test_bench_never_deletes_an_earlier_run_or_bench(tmp_path, corpus, trained, capsys):
    heads = [h for h in ("full", "sampled") if h in available_heads()]
    out = tmp_path / "bench"
    keep = out / "runs" / heads[0]
    keep.mkdir(parents=True)
    (keep / "checkpoint.pt").write_bytes(b"an earlier run")
    argv = ["bench", "--heads", ",".join(heads), "--corpus", corpus, *MODEL, "--num-sampled", "16",
            "--max-tokens", "64", "--in-process", "--out", out]
    code, _, err = run(argv, capsys)
    assert_clean_error(code, err, str(keep), "--overwrite")
    assert (keep / "checkpoint.pt").read_bytes() == b"an earlier run"
    code, printed, err = run(argv + ["--overwrite"], capsys)
    assert code == 0, err
    code, _, err = run(argv, capsys)  # a second bench into the same folder
    assert_clean_error(code, err, "results.json", "--overwrite")


# ----------------------------------------------------------------------------- item 16: a fair bench
def test_bench_default_is_untied_prints_its_configuration_and_flags_short_runs(tmp_path, corpus, capsys):
    heads = [h for h in ("full", "sampled") if h in available_heads()]
    out = tmp_path / "b"
    code, printed, err = run(["bench", "--heads", ",".join(heads), "--corpus", corpus, *MODEL, "--num-sampled", "16",
                              "--max-tokens", "64", "--in-process", "--out", out], capsys)
    assert code == 0, err
    assert "bench configuration:" in printed and "tying: none (like-for-like" in printed
    assert "| head | valid ppl |" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["setup"]["tie"] is False and not any(r["tied"] for r in res["runs"])
    assert "run too short to measure a speed" in err and "x*" in printed
    assert (out / "runs" / heads[0] / "metrics.jsonl").is_file()
    md = (out / "results.md").read_text()
    assert "- tying: none" in md and "warning: run too short" in md


# ----------------------------------------------------------------------------- item 4: the lock
def test_lock_held_by_a_live_process_refuses_and_a_dead_ones_lock_is_cleared(tmp_path, corpus, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "time": 0}))
        argv = ["train", "--corpus", corpus, *MODEL, "--max-tokens", "64", "--out", out]
        code, _, err = run(argv, capsys)
        assert_clean_error(code, err, "in use by process", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    code, _, err = run(argv, capsys)  # the holder is gone: the stale lock is removed, with a message
    assert code == 0, err
    assert "stale lock" in err and not (out / ".lock").exists()


@pytest.mark.slow  # two interpreter start-ups; the lock refusal itself is covered by the live-pid test above
def test_two_concurrent_trains_into_one_folder_one_fails_clearly(tmp_path, corpus):
    out = tmp_path / "race"
    cmd = [sys.executable, "-m", "bigsoftmax", "train", "--corpus", str(corpus), *MODEL, "--max-tokens", "2K",
           "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    res = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(c for c, _ in res)
    assert codes == [0, 2], res
    err = next(e for c, e in res if c == 2)
    assert "in use by process" in err or "already holds a run" in err or "already exists" in err, err


# ----------------------------------------------------------------------------- item 5: --resume rules
def test_resume_refuses_changed_architecture_flags_and_applies_budgets(trained, capsys):
    for flag, value, old in (("--head", "full", "'sampled'"), ("--d-model", "32", "16"), ("--lr", "0.5", "0.02"),
                             ("--sampler", "uniform", "None")):
        code, _, err = run(["train", "--resume", "--out", trained, flag, value, "--max-tokens", "256"], capsys)
        assert_clean_error(code, err, f"--resume cannot change {flag} (run: {old}, now:")
    # a flag equal to the run's value is fine; --max-tokens is applied (and said)
    code, _, err = run(["train", "--resume", "--out", trained, "--head", "sampled", "--d-model", "16",
                        "--max-tokens", "256", "--threads", "1"], capsys)
    assert code == 0, err
    assert "applied on --resume: --max-tokens 128 -> 256" in err
    m = json.loads((trained / "metrics.json").read_text())
    assert m["train_tokens"] == 256 and m["resumed_from_step"] == 4
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 9))  # one history line per step
    code, _, err = run(["train", "--resume", "--overwrite", "--out", trained], capsys)
    assert_clean_error(code, err, "give one of them")


# ----------------------------------------------------------------------------- item 6: damaged checkpoints
def _damage(path: Path, kind: str, good: bytes) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, I am not a checkpoint\n")
    elif kind == "format-only":
        torch.save({"format": 1}, path)
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "other-format":
        torch.save({"format": 99}, path)
    elif kind == "bad-weights":
        ck = torch.load(path, weights_only=True)
        ck["model"] = {"nope": torch.zeros(1)}
        torch.save(ck, path)


@pytest.mark.parametrize("kind", ["empty", "text", "format-only", "list", "truncated", "other-format", "bad-weights"])
def test_damaged_checkpoint_is_a_one_line_error_naming_the_file(trained, kind, capsys):
    ckpt = trained / "checkpoint.pt"
    _damage(ckpt, kind, ckpt.read_bytes())
    for argv in (["eval", trained], ["train", "--resume", "--out", trained, "--max-tokens", "256"]):
        code, _, err = run(argv, capsys)
        assert_clean_error(code, err, str(ckpt))


def test_resume_removes_only_our_stale_tmp_files(trained, capsys):
    stale = trained / "checkpoint.pt.ab12cd_9.tmp"  # the name save_atomic's mkstemp gives
    stale.write_bytes(b"half a checkpoint")
    other = [trained / "checkpoint.pt.mine.tmp", trained / "notes.tmp", trained / "checkpoint.pt.ab12cd_9.tmp.bak"]
    for p in other:
        p.write_text("keep me")
    code, _, err = run(["train", "--resume", "--out", trained, "--max-tokens", "160"], capsys)
    assert code == 0, err
    assert not stale.exists() and "left by an interrupted save" in err
    assert all(p.read_text() == "keep me" for p in other)


# ----------------------------------------------------------------------------- item 7: binary corpora
@pytest.mark.parametrize("kind", ["random", "nul", "utf16", "controls"])
def test_binary_corpus_is_refused(tmp_path, kind, capsys):
    rng = random.Random(0)
    p = tmp_path / f"{kind}.txt"
    if kind == "random":
        p.write_bytes(bytes(rng.randrange(1, 256) for _ in range(20_000)))  # no NUL: the control share catches it
    elif kind == "nul":
        p.write_bytes(b"perfectly normal words\n" * 100 + b"\x00")
    elif kind == "utf16":
        p.write_bytes(("some words here\n" * 200).encode("utf-16"))
    else:
        p.write_bytes(b"words \x01\x02\x03\x04\x05\x06 more words\n" * 100)
    code, _, err = run(["train", "--corpus", p, *MODEL, "--out", tmp_path / "r"], capsys)
    assert_clean_error(code, err, "looks like a binary file", str(p))
    assert not (tmp_path / "r").exists()


def test_latin1_and_tab_form_feed_text_is_accepted(tmp_path):
    from bigsoftmax._jobs import read_text

    p = tmp_path / "latin.txt"
    p.write_bytes(("café\tdéjà vu\x0c naïve\r\n" * 50).encode("cp1252"))
    assert read_text(p).startswith("café\tdéjà")


# ----------------------------------------------------------------------------- issue 13 item 7
def test_tensorboard_events_and_clear_error_when_missing(tmp_path, corpus, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    code, _, err = run(["train", "--corpus", corpus, *MODEL, "--max-tokens", "64", "--tensorboard", "--out", out],
                       capsys)
    assert code == 0, err
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    import builtins

    real = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    code, _, err = run(["train", "--corpus", corpus, *MODEL, "--max-tokens", "64", "--tensorboard",
                        "--out", tmp_path / "tb2"], capsys)
    assert_clean_error(code, err, "--tensorboard needs the tensorboard package")


def test_every_flag_of_eval_train_and_bench_has_help():
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("eval", "train", "bench"):
        for action in sub.choices[name]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


def test_progress_bar_is_tqdm_on_a_terminal():
    import io

    from bigsoftmax._jobs import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    buf = Tty()
    p = Progress("train", stream=buf)
    p.update(0.5, 123_456, 45_600.0, 5.4321, 83.0)
    p.close()
    text = buf.getvalue()
    assert "\r" in text and "50.0%" in text and "45.6K tok/s" in text and "|" in text
    buf = Tty()
    p = Progress("bench", stream=buf, unit="head", total=3)
    p.advance(2)
    p.close()
    assert "2/3" in buf.getvalue()

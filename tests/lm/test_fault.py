"""Fault test (issue 14): ``kill -9`` a ``bigsoftmax train`` child at random (seeded) moments, ``--resume``
each time, and require the final run to equal an uninterrupted one bit for bit.

``recsys train`` keeps no checkpoint while it trains (it saves once, atomically, at the end), so there
is nothing to resume there; its atomic save is covered by ``tests/recsys/test_reliability.py``.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bigsoftmax import cli

WORDS = [f"w{i}" for i in range(60)]
ARGS = ["--d-model", "16", "--batch-size", "4", "--seq-len", "8", "--lr", "0.02", "--block-lines", "10",
        "--head", "sampled", "--num-sampled", "16", "--max-tokens", "8K", "--eval-tokens", "200", "-q"]


def _corpus(path: Path) -> Path:
    rng = random.Random(7)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(400)) + "\n")
    return path


def _lines(p: Path) -> int:
    return len(p.read_text().splitlines()) if p.is_file() else 0


def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSOFTMAX_CACHE", str(tmp_path / "cache"))
    corpus = _corpus(tmp_path / "c.txt")
    common = ["--corpus", str(corpus), *ARGS]
    threads = torch.get_num_threads()
    try:
        assert cli.main(["train", *common, "--threads", "1", "--out", str(tmp_path / "ref")]) == 0
    finally:
        torch.set_num_threads(threads)

    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), BIGSOFTMAX_CACHE=str(tmp_path / "cache"))
    base = [sys.executable, "-m", "bigsoftmax", "train", "--threads", "1", "--checkpoint-every", "0.02",
            "--out", str(run)]
    rng = random.Random(1234)
    kills, attempts = 0, 0
    while True:
        attempts += 1
        assert attempts < 12, "the run never finished"
        resume = (run / "checkpoint.pt").is_file()
        cmd = base + (["--resume"] if resume else common)
        seen = _lines(run / "metrics.jsonl")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        if kills < 3:
            deadline = time.monotonic() + 120
            # wait for training progress (and, the first time, a checkpoint), then kill -9 at a random moment
            while p.poll() is None and time.monotonic() < deadline and (
                    _lines(run / "metrics.jsonl") <= seen + 2 or not (run / "checkpoint.pt").is_file()):
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.25))
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                kills += 1
        out, err = p.communicate(timeout=300)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, err.decode()
    assert kills >= 3, f"only {kills} kills landed before the run finished"

    ref = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)
    got = torch.load(run / "checkpoint.pt", weights_only=True)
    assert got["state"]["step"] == ref["state"]["step"]
    assert got["state"]["losses"] == ref["state"]["losses"]
    assert ref["model"].keys() == got["model"].keys()
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k  # bit-identical parameters
    hist = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert hist == ref["state"]["losses"]  # the per-step history was rewound past each kill
    m, mref = (json.loads((d / "metrics.json").read_text()) for d in (run, tmp_path / "ref"))
    assert m["valid_ppl"] == mref["valid_ppl"]
    leftovers = [f.name for f in run.iterdir() if f.name.endswith(".tmp") or f.name == ".lock"]
    assert leftovers == []

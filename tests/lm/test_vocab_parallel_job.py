"""Issue 12 §3: the LM job across processes. ``torchrun --standalone --nproc-per-node 2 -m bigsoftmax
train --vocab-parallel`` (gloo) trains a DDP body with a vocab-parallel head; ``bigsoftmax eval`` in
one process reads the gathered checkpoint and reports the run's own perplexity. In-process (spawn)
cases: two ranks equal one process started from the same weights (the summed body gradients, the
all-gathered batch, the global-norm clip), a signal on one rank stops every rank, --resume continues
bit-for-bit and refuses another world size."""

import json
import os
import subprocess
import sys

import pytest
import torch

from bigsoftmax.cli import main
from bigsoftmax.lm.eval import evaluate_run
from bigsoftmax.lm.train import CHECKPOINT, Trainer
from bigsoftmax.parallel import run_local
from tests.lm import vp_job_workers as W

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")
TINY = ["--corpus", "gutenberg", "--max-lines", "1500", "--d-model", "16", "--batch-size", "4", "--seq-len", "8",
        "--max-tokens", "256", "--eval-tokens", "200", "--num-sampled", "64", "--threads", "1", "-q"]


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIGSOFTMAX_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _torchrun(args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "bigsoftmax", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("head", ["full", "sampled", pytest.param("nce", marks=pytest.mark.slow)])
def test_torchrun_two_ranks_then_eval_in_one_process_reports_the_same_perplexity(tmp_path, head):
    out = tmp_path / "run"
    p = _torchrun([*TINY, "--head", head, "--vocab-parallel", "--out", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "finished" and m["vocab_parallel"] == 2 and m["steps"] == 8 and not m["tied"]
    V = m["vocab_size"]
    assert m["head_params"] == V * 16 + V  # global [V, d] + bias ...
    assert m["head_params_per_rank"] == (V + 1) // 2 * 17  # ... of which rank 0 holds its "div" block
    ck = torch.load(out / CHECKPOINT, weights_only=False)
    assert ck["model"]["head.weight"].shape == (V, 16) and ck["vocab_parallel"]["world_size"] == 2
    assert "head._extra_state" not in ck["model"]  # the single-process layout
    res = evaluate_run(out, max_tokens=200, topk=(1,))
    assert res["tokens"] == m["valid_tokens"]
    assert abs(res["nll"] - m["valid_nll"]) < 1e-5, (res["nll"], m["valid_nll"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 8  # one writer: no line twice


@pytest.mark.parametrize("head", ["full", "sampled"])
def test_two_ranks_train_like_one_process_from_the_same_weights(tmp_path, head):
    init = tmp_path / "init.pt"
    run_local(W.initial_weights_then_train, 2, str(tmp_path / "vp"), str(init), {"head": head}, timeout=120)
    one = Trainer(W.tiny(head=head, vocab_parallel=False), tmp_path / "one")
    one.model.load_state_dict(torch.load(init))
    ref = one.run()
    got = json.loads((tmp_path / "vp" / "metrics.json").read_text())
    lv = [json.loads(x)["loss"] for x in (tmp_path / "vp" / "metrics.jsonl").read_text().splitlines()]
    lr = [json.loads(x)["loss"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(lv) == len(lr) == 8
    torch.testing.assert_close(torch.tensor(lv), torch.tensor(lr), rtol=0, atol=1e-4)
    assert abs(got["valid_nll"] - ref["valid_nll"]) < 1e-4


def test_signal_on_one_rank_stops_all_and_resume_continues_then_another_world_size_is_refused(tmp_path):
    out, ref = tmp_path / "run", tmp_path / "ref"
    run_local(W.interrupt_then_resume, 2, str(out), str(ref), timeout=180)
    errs = tmp_path / "err"
    run_local(W.resume_on_another_world_size, 1, str(out), str(errs), timeout=60)
    msg = (tmp_path / "err.0").read_text()
    assert "was trained on 2 ranks, this job has 1" in msg and "--nproc-per-node 2" in msg, msg


@pytest.mark.parametrize("argv, phrase", [
    (["--head", "full", "--vocab-parallel"], "launch with torchrun --standalone --nproc-per-node P"),
    (["--head", "adaptive", "--vocab-parallel"], "--vocab-parallel supports the heads full, sampled, nce"),
    (["--head", "full", "--vocab-parallel", "--tie"], "cannot be tied; use --no-tie"),
    (["--head", "sampled", "--vocab-parallel", "--sparse"], "does not support --sparse"),
])
def test_bad_vocab_parallel_usage_is_exit_2_naming_the_problem(tmp_path, capsys, monkeypatch, argv, phrase):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert main(["train", *TINY, *argv, "--out", str(tmp_path / "x")]) == 2
    assert phrase in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_vocab_parallel_run_resumed_without_torchrun_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(W.tiny(vocab_parallel=False, max_tokens=32), out).run()
    ck = torch.load(out / CHECKPOINT, weights_only=False)
    ck["config"]["vocab_parallel"] = True  # what a --vocab-parallel run saves
    torch.save(ck, out / CHECKPOINT)
    assert main(["train", "--resume", "--out", str(out), "--max-tokens", "512"]) == 2
    assert "this run trains with --vocab-parallel: launch it under torchrun" in capsys.readouterr().err

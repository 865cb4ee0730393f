import json
import os
import signal

import pytest
import torch

from bigsoftmax.lm.train import CHECKPOINT, TrainConfig, Trainer, save_atomic, train


def tiny(**kw):
    base = dict(corpus="gutenberg", max_lines=1500, head="sampled", num_sampled=64, d_model=16, batch_size=4,
                seq_len=8, lr=1e-2, dropout=0.1, max_tokens=8 * 32, eval_tokens=200, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _state(run_dir):
    return torch.load(run_dir / CHECKPOINT, weights_only=False)


def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path):
    ref = train(tiny(), tmp_path / "ref")
    assert ref["status"] == "finished" and ref["steps"] == 8

    def stop_at_3(tr):
        if tr.state.step == 3:
            raise KeyboardInterrupt  # as if Ctrl-C hit right after the 3rd update

    part = train(tiny(), tmp_path / "run", on_step=stop_at_3)
    assert part == {"status": "interrupted", "step": 3, "tokens": 96}
    ck = _state(tmp_path / "run")
    assert ck["state"]["status"] == "interrupted" and ck["state"]["step"] == 3
    res = train(tiny(), tmp_path / "run", resume=True)
    assert res["status"] == "finished" and res["steps"] == 8 and res["resumed_from_step"] == 3

    a, b = _state(tmp_path / "ref"), _state(tmp_path / "run")
    assert a["state"]["losses"] == b["state"]["losses"]  # same loss sequence, step for step
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)
    assert res["valid_ppl"] == pytest.approx(ref["valid_ppl"], rel=1e-6)


def test_sigint_stops_at_a_step_boundary_with_a_usable_checkpoint(tmp_path):
    def ctrl_c(tr):
        if tr.state.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    res = train(tiny(), tmp_path / "r", on_step=ctrl_c)
    assert res["status"] == "interrupted" and res["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    res = train(tiny(max_tokens=4 * 32), tmp_path / "r", resume=True)
    assert res["status"] == "finished" and res["steps"] == 4


def test_budgets_time_and_epochs(tmp_path):
    r = train(tiny(max_tokens=None, time_budget=1e-6), tmp_path / "t")
    assert r["stop_reason"] == "time_budget" and r["steps"] == 1
    r = train(tiny(max_tokens=None, epochs=0.02), tmp_path / "e")
    assert r["stop_reason"] == "epochs" and 0.02 <= r["epochs"] < 0.02 + 2 / (r["tokens_per_epoch"] / 32)
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["valid_ppl"] == r["valid_ppl"] and (tmp_path / "e" / "config.json").is_file()


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(tmp_path):
    train(tiny(max_tokens=32), tmp_path / "x")
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny(), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        Trainer(tiny(), tmp_path / "y", resume=True)


def test_bad_config_values():
    with pytest.raises(ValueError, match="lr"):
        tiny(lr=0).validate()
    with pytest.raises(ValueError, match="seq_len"):
        tiny(seq_len=0).validate()
    with pytest.raises(ValueError, match="model"):
        tiny(model="rnn").validate()
    with pytest.raises(ValueError, match="time_budget"):
        tiny(time_budget=float("nan")).validate()


def test_save_atomic_keeps_old_file_when_writing_fails(tmp_path):
    p = tmp_path / "c.pt"
    save_atomic({"a": 1}, p)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"b": Boom()}, p)
    assert torch.load(p, weights_only=False) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind

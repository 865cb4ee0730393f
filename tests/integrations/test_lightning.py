"""examples/lightning_lm.py: a sparse SampledSoftmax head + CombinedOptimizer (Adam + SparseAdam) +
OneCycleLR under ``lightning.Trainer`` (optional extra: skipped without lightning)."""

from __future__ import annotations

import math

import pytest
import torch

from tests._examples import load_example

L = pytest.importorskip("lightning", reason="lightning is an optional extra (pip install lightning)")

from bigsoftmax.optim import CombinedOptimizer  # noqa: E402


def _trainer(**kw):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


def test_fast_dev_run_trains_sparse_head_with_combined_optimizer():
    ex = load_example("lightning_lm.py")
    train, val = ex.loaders(ex.markov_corpus(V=200, n=3000), batch_size=16)
    model = ex.LitLM(vocab_size=200, d=16, num_sampled=16, total_steps=10)
    before = {"head": model.head.weight.detach().clone(), "emb": model.emb.weight.detach().clone(),
              "rnn": model.rnn.weight_hh_l0.detach().clone()}
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(model, train, val)
    opt = trainer.optimizers[0]
    assert isinstance(opt, CombinedOptimizer)
    assert [type(o).__name__ for o in opt.optimizers] == ["Adam", "SparseAdam"]
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert math.isfinite(float(trainer.callback_metrics["val_nll"]))
    assert model.grad_was_sparse == [True]  # one step, with sparse head gradients
    assert len(model.grad_norms) == 1 and math.isfinite(model.grad_norms[0])
    changed = (model.head.weight.detach() != before["head"]).any(dim=1)
    assert 0 < int(changed.sum()) < 200  # SparseAdam moved only the rows of the step's candidates
    assert not torch.equal(model.emb.weight.detach(), before["emb"])
    assert not torch.equal(model.rnn.weight_hh_l0.detach(), before["rnn"])


def test_scheduler_steps_every_part_under_the_trainer():
    ex = load_example("lightning_lm.py")
    train, _ = ex.loaders(ex.markov_corpus(V=100, n=2000), batch_size=16)
    model = ex.LitLM(vocab_size=100, d=8, num_sampled=8, total_steps=6)
    trainer = _trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, train)
    opt = trainer.optimizers[0]
    sched = trainer.lr_scheduler_configs[0].scheduler
    lrs = [o.param_groups[0]["lr"] for o in opt.optimizers]
    assert lrs[0] == lrs[1] == pytest.approx(sched.get_last_lr()[0])
    assert sched.last_epoch == 3 and lrs[0] != pytest.approx(model.hparams.lr / 25.0)  # moved off the start
    assert model.grad_was_sparse == [True, True, True]

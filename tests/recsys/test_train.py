"""The two-tower training loop (bigsoftmax.recsys.train): the loss goes down on tiny synthetic data,
a seed fixes every number, the global RNG is left alone, and a saved model reloads to the same
weights and metrics (and only on the data set it was trained on)."""

import pytest
import torch

from bigsoftmax.recsys.eval import evaluate
from bigsoftmax.recsys.train import CKPT_FORMAT, RecsysConfig, build_model, load_checkpoint, save_checkpoint, train

from .conftest import cyclic_rows, dataset_from_rows


def _cfg(**kw):
    base = dict(objective="full", epochs=3, batch_size=32, lr=0.05, dim=8, hidden=[16], max_history=2,
                progress=False, seed=0)
    base.update(kw)
    return RecsysConfig(**base)


def _quiet(s):
    pass


@pytest.mark.parametrize("objective", ["full", "mixed"])
def test_mean_epoch_loss_decreases(cyclic, objective):
    _, info = train(cyclic, _cfg(objective=objective, num_sampled=8), log=_quiet)
    assert len(info["losses"]) == 3
    assert info["losses"][2] < info["losses"][1] < info["losses"][0]
    M = cyclic.num_train_examples()
    assert info["steps"] == 3 * (M // 32) and info["epochs"] == 3


def test_same_seed_same_model_other_seed_other_model(cyclic):
    a, ia = train(cyclic, _cfg(objective="in-batch", epochs=1), log=_quiet)
    torch.manual_seed(123)  # the global RNG plays no part
    b, ib = train(cyclic, _cfg(objective="in-batch", epochs=1), log=_quiet)
    c, ic = train(cyclic, _cfg(objective="in-batch", epochs=1, seed=1), log=_quiet)
    assert ia["losses"] == ib["losses"] and ia["losses"] != ic["losses"]
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_build_model_leaves_the_global_rng_alone(cyclic):
    torch.manual_seed(7)
    before = torch.get_rng_state()
    build_model(cyclic, _cfg())
    assert torch.equal(torch.get_rng_state(), before)


def test_saved_model_reloads_to_the_same_weights_and_metrics(cyclic, tmp_path):
    cfg = _cfg(epochs=2)
    model, info = train(cyclic, cfg, log=_quiet)
    path = tmp_path / "tt.pt"
    save_checkpoint(path, model, cfg, cyclic, info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tt.pt"]  # no temporary file left
    assert torch.load(path, weights_only=True)["format"] == CKPT_FORMAT
    back, cfg2, info2 = load_checkpoint(path, cyclic)
    assert cfg2 == cfg and info2["losses"] == info["losses"] and not back.training
    s, t = model.state_dict(), back.state_dict()
    assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)
    assert evaluate(back, cyclic, "test", cfg.max_history) == evaluate(model, cyclic, "test", cfg.max_history)

    other = dataset_from_rows(cyclic_rows(seed=1))
    with pytest.raises(ValueError, match="was trained on data set"):
        load_checkpoint(path, other)


def test_a_batch_larger_than_the_data_is_refused(cyclic):
    M = cyclic.num_train_examples()
    with pytest.raises(ValueError, match=f"batch_size={M + 1} exceeds the {M} training examples"):
        train(cyclic, _cfg(batch_size=M + 1), log=_quiet)
    with pytest.raises(ValueError, match="in-batch and mixed objectives need batch_size >= 2"):
        train(cyclic, _cfg(objective="in-batch", batch_size=1), log=_quiet)

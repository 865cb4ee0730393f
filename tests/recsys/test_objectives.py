"""Objectives: parity with references, log-Q behaviour, sparse touching of the item table, learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bigsoftmax import samplers as S
from bigsoftmax.recsys.model import TwoTower
from bigsoftmax.recsys.baselines import evaluate_baseline
from bigsoftmax.recsys.eval import evaluate
from bigsoftmax.recsys.objectives import Objective, build_objective, log_target_frequency
from bigsoftmax.recsys.train import RecsysConfig, train
from bigsoftmax.retrieval import in_batch_softmax_loss

V, d, B = 30, 8, 6


def _setup(seed=0, **kw):
    torch.manual_seed(seed)
    m = TwoTower(V, dim=d, hidden=(), **kw).double()
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, d, dtype=torch.float64, generator=g, requires_grad=True)
    pos = torch.tensor([0, 3, 3, 7, 12, 29])
    return m, u, pos


def test_sampled_with_all_candidates_is_the_full_softmax():
    m, u, pos = _setup()
    full = Objective("full", V, temperature=0.5)(m, u, pos)
    everything = Objective("sampled", V, sampler=S.All(V), num_sampled=V, temperature=0.5)(m, u, pos)
    ref = F.cross_entropy((u / 0.5) @ m.item_embedding.weight.t(), pos)
    assert torch.allclose(full, ref) and torch.allclose(everything, ref)


def test_sampled_matches_manual_and_feature_path():
    m, u, pos = _setup(item_features=torch.zeros(V, 2, dtype=torch.float64))
    plain, _, _ = _setup()
    obj = Objective("sampled", V, sampler=S.LogUniform(V), num_sampled=10, temperature=0.7, seed=5)
    state = obj.generator.get_state()
    loss_feat = obj(m, u, pos)  # item-feature path: local candidate table (features are zero)
    obj.generator.set_state(state)
    loss_plain = obj(plain, u, pos)  # rows gathered from the item table itself
    obj.generator.set_state(state)
    ids, tec, sec = S.LogUniform(V).sample(pos[:, None], 10, generator=obj.generator)
    W = plain.item_embedding.weight
    zt = (u / 0.7 * W[pos]).sum(1) - torch.log(tec[:, 0].double())
    zs = (u / 0.7) @ W[ids].t() - torch.log(sec.double())
    zs = zs.masked_fill(ids[None, :] == pos[:, None], -math.inf)
    ref = (torch.logsumexp(torch.cat([zt[:, None], zs], 1), 1) - zt).mean()
    assert torch.allclose(loss_plain, ref) and torch.allclose(loss_feat, ref)


def test_uniform_logq_is_a_constant_shift():
    m, u, pos = _setup()
    a = Objective("sampled", V, sampler=S.Uniform(V), num_sampled=12, logq=True, seed=1)(m, u, pos)
    b = Objective("sampled", V, sampler=S.Uniform(V), num_sampled=12, logq=False, seed=1)(m, u, pos)
    assert torch.allclose(a, b)
    c = Objective("sampled", V, sampler=S.LogUniform(V), num_sampled=12, logq=True, seed=1)(m, u, pos)
    e = Objective("sampled", V, sampler=S.LogUniform(V), num_sampled=12, logq=False, seed=1)(m, u, pos)
    assert not torch.allclose(c, e)


def test_in_batch_with_true_frequencies_matches_the_library_loss():
    m, u, pos = _setup()
    counts = torch.arange(V, 0, -1)
    obj = Objective("in-batch", V, logq=True, freq="true", target_counts=counts, batch_size=B, temperature=0.5)
    lq = torch.log(counts[pos].double() / counts.sum() * B)
    ref = in_batch_softmax_loss(u, m.item_vectors(pos), pos, lq, temperature=0.5)
    assert torch.allclose(obj(m, u, pos), ref)
    off = Objective("in-batch", V, logq=False, temperature=0.5)(m, u, pos)
    assert torch.allclose(off, in_batch_softmax_loss(u, m.item_vectors(pos), pos, None, temperature=0.5))
    # uniform frequencies: log q is a constant, the correction changes nothing
    flat = Objective("in-batch", V, logq=True, target_counts=torch.ones(V, dtype=torch.long), batch_size=B, temperature=0.5)
    assert torch.allclose(flat(m, u, pos), off)


def test_log_target_frequency_is_finite_for_unseen_items():
    lq = log_target_frequency(torch.tensor([8, 2, 0]), batch_size=4)
    assert torch.isfinite(lq).all()
    assert lq[:2].tolist() == pytest.approx([math.log(4 * 0.8), math.log(4 * 0.2)], rel=1e-6)


@pytest.mark.parametrize("kind,freq", [("in-batch", "streaming"), ("mixed", "true"), ("mixed", "streaming")])
def test_other_objectives_run_and_touch_only_needed_rows(kind, freq):
    m, u, pos = _setup(normalize=True)
    obj = build_objective(kind, V, torch.ones(V, dtype=torch.long), torch.ones(V, dtype=torch.long),
                          num_sampled=5, logq=True, freq=freq, batch_size=B, seed=0)
    loss = obj(m, u, pos, step=1)
    assert torch.isfinite(loss)
    loss.backward()
    touched = (m.item_embedding.weight.grad != 0).any(1)
    assert touched[pos].all() and int(touched.sum()) <= len(set(pos.tolist())) + 5


def test_sampled_touches_only_candidate_rows_even_when_normalised():
    m, u, pos = _setup(normalize=True)
    obj = Objective("sampled", V, sampler=S.LogUniform(V), num_sampled=4, seed=0)
    obj(m, u, pos).backward()
    touched = (m.item_embedding.weight.grad != 0).any(1)
    assert touched[pos].all() and int(touched.sum()) <= len(set(pos.tolist())) + 4


def test_bad_objective_arguments():
    with pytest.raises(ValueError, match="objective must be one of"):
        Objective("nce", V)
    with pytest.raises(ValueError, match="num_sampled must be an int >= 1 for objective 'sampled'"):
        Objective("sampled", V, sampler=S.Uniform(V), num_sampled=0)
    with pytest.raises(ValueError, match="temperature must be a finite float > 0"):
        Objective("full", V, temperature=0.0)
    with pytest.raises(ValueError, match="exceeds the 30 items"):
        build_objective("sampled", V, torch.ones(V), torch.ones(V), num_sampled=31)
    with pytest.raises(ValueError, match="sampler must be one of"):
        build_objective("sampled", V, torch.ones(V), torch.ones(V), sampler="zipf", num_sampled=3)


@pytest.mark.parametrize("objective", ["in-batch", "sampled"])
def test_training_learns_the_sequential_pattern(cyclic, objective):
    """On the cyclic data the next item follows from the last one: the model must beat popularity by far."""
    cfg = RecsysConfig(objective=objective, num_sampled=10, epochs=5, batch_size=32, lr=0.05, dim=16,
                       max_history=1, progress=False, seed=0)
    model, info = train(cyclic, cfg, log=lambda s: None)
    assert info["losses"][-1] < info["losses"][0]
    m = evaluate(model, cyclic, "test", max_history=1)
    pop = evaluate_baseline("popularity", cyclic, "test")
    assert m["MRR"] > 0.6 and m["MRR"] > 3 * pop["MRR"]

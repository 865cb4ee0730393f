"""Two-tower retrieval losses: in-batch softmax (naive loop reference, properties, gradcheck),
mixed negative sampling (mixture log-Q), module forms, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax import functional as BF
from bigsoftmax import samplers
from bigsoftmax.samplers import StreamingFrequencyEstimator
from bigsoftmax.retrieval import (
    InBatchSoftmax,
    MixedNegativeSoftmax,
    in_batch_softmax_loss,
    mixed_negatives_loss,
)


def naive_in_batch(q, c, ids=None, log_q=None, temperature=1.0, remove_hits=True, k=None):
    """Row-by-row reference: written from the definition, one candidate at a time."""
    B, C = q.shape[0], c.shape[0]
    out = []
    for i in range(B):
        def s(j):
            v = (q[i] * c[j]).sum() / temperature
            return v - log_q[j] if log_q is not None else v

        negs = []
        for j in range(C):
            if j == i:
                continue
            if remove_hits and ids is not None and int(ids[j]) == int(ids[i]):
                continue
            negs.append(s(j))
        if k is not None:
            negs = sorted(negs, key=float)[len(negs) - min(k, len(negs)):]
        out.append(torch.logsumexp(torch.stack([s(i)] + negs), 0) - s(i))
    return torch.stack(out)


def _data(B, C, d, n_ids, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, d, generator=g, dtype=dtype)
    c = torch.randn(C, d, generator=g, dtype=dtype)
    ids = torch.randint(0, n_ids, (C,), generator=g)
    lq = torch.randn(C, generator=g, dtype=dtype) - 3.0
    return q, c, ids, lq


# ----------------------------------------------------------------------------- in-batch softmax
@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 6), extra=st.integers(0, 5), d=st.integers(1, 4), n_ids=st.integers(1, 8),
    seed=st.integers(0, 10_000), temperature=st.floats(0.05, 5.0), use_ids=st.booleans(), use_lq=st.booleans(),
    remove=st.booleans(), k=st.one_of(st.none(), st.integers(1, 10)),
)
def test_in_batch_matches_naive_loop(B, extra, d, n_ids, seed, temperature, use_ids, use_lq, remove, k):
    C = B + extra
    if k is not None:
        if C < 2:
            return
        k = min(k, C - 1)
    q, c, ids, lq = _data(B, C, d, n_ids, seed)
    ids = ids if use_ids else None
    lq = lq if use_lq else None
    got = in_batch_softmax_loss(q, c, ids, lq, temperature, remove, k, reduction="none")
    want = naive_in_batch(q, c, ids, lq, temperature, remove, k)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_plain_case_is_cross_entropy_over_the_score_matrix():
    q, c, _, _ = _data(8, 11, 5, 3, 0, torch.float32)
    got = in_batch_softmax_loss(q, c, temperature=0.3)
    want = F.cross_entropy(q @ c.t() / 0.3, torch.arange(8))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(in_batch_softmax_loss(q, c, reduction="sum"), F.cross_entropy(q @ c.t(), torch.arange(8), reduction="sum"))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-50, 50))
def test_constant_shift_of_log_q_changes_nothing(seed, shift):
    q, c, ids, lq = _data(5, 9, 3, 4, seed)
    a = in_batch_softmax_loss(q, c, ids, lq, reduction="none")
    b = in_batch_softmax_loss(q, c, ids, lq + shift, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_accidental_hits_are_masked_only_when_asked():
    q, c, _, _ = _data(4, 6, 3, 2, 1)
    ids = torch.tensor([0, 1, 0, 2, 1, 0])
    keep = in_batch_softmax_loss(q, c, ids, remove_accidental_hits=False, reduction="none")
    torch.testing.assert_close(keep, in_batch_softmax_loss(q, c, reduction="none"))
    drop = in_batch_softmax_loss(q, c, ids, reduction="none")
    assert bool((drop[:3] < keep[:3]).all())  # rows 0-2: their positive's id appears again
    torch.testing.assert_close(drop[3], keep[3])  # row 3's id 2 appears once: nothing to mask


def test_hard_negatives_with_all_candidates_equals_no_mining():
    q, c, ids, lq = _data(5, 8, 4, 3, 2)
    full = in_batch_softmax_loss(q, c, ids, lq, reduction="none")
    mined = in_batch_softmax_loss(q, c, ids, lq, num_hard_negatives=7, reduction="none")
    torch.testing.assert_close(full, mined)
    assert bool((in_batch_softmax_loss(q, c, ids, lq, num_hard_negatives=2, reduction="none") <= full + 1e-12).all())


def test_fp32_matches_fp64_and_is_stable_for_large_scores():
    q, c, ids, lq = _data(16, 40, 8, 10, 3)
    a = in_batch_softmax_loss(q.float() * 30, c.float(), ids, lq.float(), 0.05, reduction="none")
    b = in_batch_softmax_loss(q * 30, c, ids, lq, 0.05, reduction="none")
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-3)


def test_autocast_and_bf16_inputs_match_fp32_loosely():
    q, c, ids, lq = _data(32, 48, 16, 20, 5, torch.float32)
    ref = in_batch_softmax_loss(q, c, ids, lq, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = in_batch_softmax_loss(q, c, ids, lq, 0.2)
    qb = q.bfloat16().requires_grad_()
    low2 = in_batch_softmax_loss(qb, c.bfloat16(), ids, lq, 0.2)
    low2.backward()
    assert qb.grad.dtype == torch.bfloat16 and torch.isfinite(qb.grad).all()
    for v in (low, low2):
        assert abs(float(v.detach()) - float(ref)) <= 0.02 * float(ref)


def test_gradcheck_in_batch_float64():
    q, c, ids, lq = _data(4, 7, 3, 3, 4)
    q.requires_grad_(), c.requires_grad_()
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 0, 2, 3, 1, 4])
    assert torch.autograd.gradcheck(lambda q, c, t: in_batch_softmax_loss(q, c, ids, lq, t, reduction="none"), (q, c, t))
    assert torch.autograd.gradcheck(lambda q, c, t: in_batch_softmax_loss(q, c, ids, lq, t, num_hard_negatives=3), (q, c, t))


# ----------------------------------------------------------------------------- mixed negatives
def naive_mixed(q, pos, pos_ids, table, sampled, true_exp, samp_exp, batch_log_q, temperature=1.0):
    """Mixture expected count per candidate, one at a time: E_batch(j) + E_s(j)."""
    ids = torch.cat([pos_ids, sampled])
    cand = torch.cat([pos, table[sampled]])
    log_q = []
    for j in range(ids.numel()):
        e_s = float(true_exp.reshape(-1)[j]) if j < pos_ids.numel() else float(samp_exp[j - pos_ids.numel()])
        log_q.append(math.log(math.exp(float(batch_log_q[ids[j]])) + e_s))
    return naive_in_batch(q, cand, ids, torch.tensor(log_q, dtype=q.dtype), temperature)


def _mixed_data(seed, B=5, V=30, d=4, S=6, unique=False):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V, d, generator=g, dtype=torch.float64)
    q = torch.randn(B, d, generator=g, dtype=torch.float64)
    pos_ids = torch.randint(0, V, (B,), generator=g)
    pos_ids[1] = pos_ids[0]  # a duplicated positive
    counts = torch.randint(1, 50, (V,), generator=g).double()
    batch_log_q = torch.log(B * counts / counts.sum())
    sampler = samplers.Uniform(V, unique=unique)
    sv = sampler.sample(pos_ids[:, None], S, generator=torch.Generator().manual_seed(seed + 1))
    return q, table[pos_ids], pos_ids, table, sampler, sv, batch_log_q


@pytest.mark.parametrize("unique", [False, True])
def test_mixed_negatives_match_naive_mixture(unique):
    q, pos, pos_ids, table, sampler, sv, blq = _mixed_data(0, unique=unique)
    got = mixed_negatives_loss(q, pos, pos_ids, table, 6, sampler, batch_log_q=blq, sampled_values=sv,
                               temperature=0.5, reduction="none")
    want = naive_mixed(q, pos, pos_ids, table, sv[0], sv[1], sv[2], blq, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # expected counts come as fp32


def test_mixture_correction_recovers_the_full_softmax():
    """Statistical check of the mixture log-Q. With hits kept, row i's corrected partition sum is
    sum_j n_j exp(s_ij) / E(j) over the item multiset, n_j = in-batch + sampled copies of j; since
    E[n_j] = E(j) = B p(j) + S'/V it is an unbiased estimate of the full sum_j exp(s_ij), so
    loss_i - log E(pos_i) estimates the full-softmax cross-entropy (pos_i's own copy adds at most
    (1 - p)/E(pos) <= max 1/E relative bias, <= 0.025 here). Over R = 20 draws the mean error must be
    within 5 s.e. + 0.025; correcting with the sampler's count alone (ignoring that frequent items
    also arrive as in-batch negatives) is biased far beyond that."""
    V, d, B, S2, R = 50, 4, 200, 2000, 20
    g = torch.Generator().manual_seed(0)
    table = torch.randn(V, d, generator=g, dtype=torch.float64) * 0.7
    p = 1 / torch.arange(1, V + 1, dtype=torch.float64) ** 1.1
    p /= p.sum()
    sampler = samplers.Uniform(V, unique=False)
    errs = {"mixture": [], "sampler only": []}
    for _ in range(R):
        pos = torch.multinomial(p, B, replacement=True, generator=g)
        q = torch.randn(B, d, generator=g, dtype=torch.float64)
        full = F.cross_entropy(q @ table.t(), pos, reduction="none")
        for name, blq, E in (("mixture", torch.log(B * p), B * p + S2 / V),
                             ("sampler only", torch.full((V,), -40.0, dtype=torch.float64), torch.full((V,), S2 / V, dtype=torch.float64))):
            loss = mixed_negatives_loss(q, table[pos], pos, table, S2, sampler, batch_log_q=blq, remove_accidental_hits=False,
                                        reduction="none", generator=g)
            errs[name].append(float((loss - torch.log(E[pos]) - full).mean()))
    e = torch.tensor(errs["mixture"])
    bound = 5 * float(e.std()) / math.sqrt(R) + 1 / float((B * p + S2 / V).min())
    assert abs(float(e.mean())) <= bound
    assert float(torch.tensor(errs["sampler only"]).mean()) > 2 * bound


def test_mixed_negatives_default_sampler_is_seeded_index_uniform():
    q, pos, pos_ids, table, _, _, blq = _mixed_data(1)
    a = mixed_negatives_loss(q, pos, pos_ids, table, 6, batch_log_q=blq, generator=torch.Generator().manual_seed(3))
    b = mixed_negatives_loss(q, pos, pos_ids, table, 6, batch_log_q=blq, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # the same draw through an explicit Uniform(V, unique=False) sampler
    sv = samplers.Uniform(30, unique=False).sample(pos_ids[:, None], 6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, naive_mixed(q, pos, pos_ids, table, sv[0], sv[1], sv[2], blq).mean(), rtol=1e-6, atol=1e-6)


def test_mixed_negatives_callable_table_and_estimator_log_q():
    q, pos, pos_ids, table, sampler, sv, _ = _mixed_data(2)
    est = StreamingFrequencyEstimator(128, num_hashes=2)
    for t in range(1, 6):
        est.update(pos_ids, t)
    calls = []

    def tower(ids):
        calls.append(ids.clone())
        return table[ids]

    got = mixed_negatives_loss(q, pos, pos_ids, tower, 6, sampler, batch_log_q=est.log_q, sampled_values=sv, reduction="none")
    blq = est.log_q(torch.arange(30)).double()
    torch.testing.assert_close(got, naive_mixed(q, pos, pos_ids, table, sv[0], sv[1], sv[2], blq), rtol=1e-6, atol=1e-6)
    assert torch.equal(calls[0], sv[0])


def test_mixed_without_batch_log_q_is_uncorrected_softmax():
    q, pos, pos_ids, table, sampler, sv, _ = _mixed_data(3)
    got = mixed_negatives_loss(q, pos, pos_ids, table, 6, sampler, sampled_values=sv, reduction="none")
    ids = torch.cat([pos_ids, sv[0]])
    torch.testing.assert_close(got, naive_in_batch(q, torch.cat([pos, table[sv[0]]]), ids))


def test_gradcheck_mixed_float64():
    q, pos, pos_ids, table, sampler, sv, blq = _mixed_data(4, B=4, V=10, d=3, S=4)
    q.requires_grad_()
    pos = pos.clone().requires_grad_()
    table = table.clone().requires_grad_()
    fn = lambda q, p, tb: mixed_negatives_loss(q, p, pos_ids, tb, 4, sampler, batch_log_q=blq, sampled_values=sv,
                                               temperature=0.8, reduction="none")
    assert torch.autograd.gradcheck(fn, (q, pos, table))


# ----------------------------------------------------------------------------- modules
def test_in_batch_module_learnable_temperature_and_estimator_state():
    est = StreamingFrequencyEstimator(64, num_hashes=2, alpha=0.1)
    m = InBatchSoftmax(temperature=0.5, learn_temperature=True, estimator=est)
    q, c, ids, _ = _data(4, 6, 3, 5, 0, torch.float32)
    loss = m(q, c, ids, step=1)
    loss.backward()
    assert m.log_temperature.grad is not None and m.log_temperature.grad.abs() > 0
    assert int(est.step) == 1
    # the correction used is the estimator's log q after recording this step's candidates
    torch.testing.assert_close(loss, in_batch_softmax_loss(q, c, ids, est.log_q(ids), 0.5))
    sd = m.state_dict()
    assert "log_temperature" in sd and "estimator.gap" in sd and "estimator.hash_a" in sd
    m.eval()
    m(q, c, ids)
    assert int(est.step) == 1  # eval mode reads, never records
    with pytest.raises(ValueError, match="either candidate_log_q or an estimator"):
        m(q, c, ids, candidate_log_q=torch.zeros(6))
    with pytest.raises(ValueError, match="candidate_ids are required"):
        m(q, c)


def test_in_batch_module_fixed_temperature_is_a_buffer():
    m = InBatchSoftmax(temperature=0.2)
    assert list(m.parameters()) == [] and float(m.temperature) == pytest.approx(0.2)
    q, c, _, _ = _data(3, 5, 2, 2, 1, torch.float32)
    torch.testing.assert_close(m(q, c), in_batch_softmax_loss(q, c, temperature=0.2))
    assert InBatchSoftmax(1e-4, learn_temperature=True, min_temperature=0.01).temperature.item() == pytest.approx(0.01)


def test_mixed_module_is_reproducible_and_updates_estimator():
    q, pos, pos_ids, table, _, _, _ = _mixed_data(5)
    losses = []
    for _ in range(2):
        est = StreamingFrequencyEstimator(128)
        m = MixedNegativeSoftmax(30, 6, estimator=est, temperature=0.5, seed=11)
        losses.append(m(q, pos, pos_ids, table, step=3))
        assert int(est.step) == 3
    assert torch.equal(losses[0], losses[1])
    m2 = MixedNegativeSoftmax(30, 6, batch_log_q=torch.zeros(30), seed=1)
    assert "batch_log_q" in m2.state_dict()
    with pytest.raises(ValueError, match="either estimator or batch_log_q"):
        MixedNegativeSoftmax(30, 6, estimator=StreamingFrequencyEstimator(8), batch_log_q=torch.zeros(30))
    with pytest.raises(ValueError, match="range_max"):
        MixedNegativeSoftmax(30, 6, sampler=samplers.Uniform(29))
    m3 = MixedNegativeSoftmax(30, 6, estimator=StreamingFrequencyEstimator(16), seed=0)
    with pytest.raises(ValueError, match=r"pos_ids contains id 30"):
        m3(q, pos, torch.full_like(pos_ids, 30), table)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_in_batch():
    q, c, ids, lq = _data(4, 6, 3, 3, 0)
    with pytest.raises(ValueError, match=r"candidates has 3 rows but query has 4.*C >= B"):
        in_batch_softmax_loss(q, c[:3])
    with pytest.raises(ValueError, match=r"candidate_log_q must have shape \[6\]"):
        in_batch_softmax_loss(q, c, candidate_log_q=lq[:5])
    for bad in (float("nan"), float("inf"), float("-inf")):
        lq2 = lq.clone()
        lq2[2] = bad
        with pytest.raises(ValueError, match="candidate_log_q must be finite"):
            in_batch_softmax_loss(q, c, candidate_log_q=lq2)
    for t in (0.0, -1.0, float("nan"), torch.tensor(0.0), torch.tensor(-2.0)):
        with pytest.raises(ValueError, match="temperature must be"):
            in_batch_softmax_loss(q, c, temperature=t)
    with pytest.raises(TypeError, match="temperature"):
        in_batch_softmax_loss(q, c, temperature="hot")
    with pytest.raises(ValueError, match=r"candidate_ids must have shape \[6\]"):
        in_batch_softmax_loss(q, c, ids[:4])
    with pytest.raises(TypeError, match="candidate_ids must hold integer"):
        in_batch_softmax_loss(q, c, ids.double())
    with pytest.raises(ValueError, match=r"num_hard_negatives must be None or an int in \[1, 5\]"):
        in_batch_softmax_loss(q, c, num_hard_negatives=6)
    with pytest.raises(ValueError, match="d=3 columns"):
        in_batch_softmax_loss(q, c[:, :2])
    with pytest.raises(TypeError, match="query must be a floating-point"):
        in_batch_softmax_loss(q.long(), c)
    with pytest.raises(ValueError, match="reduction"):
        in_batch_softmax_loss(q, c, reduction="avg")
    with pytest.raises(ValueError, match="spans"):
        in_batch_softmax_loss(q.float(), c.float(), candidate_log_q=torch.tensor([0.0, -200, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="temperature must be"):
        InBatchSoftmax(temperature=0.0)
    with pytest.raises(ValueError, match="num_hard_negatives must be None or an int >= 1"):
        InBatchSoftmax(num_hard_negatives=0)
    with pytest.raises(TypeError, match="estimator must have update"):
        InBatchSoftmax(estimator=object())


def test_bad_input_mixed():
    q, pos, pos_ids, table, sampler, sv, blq = _mixed_data(0)
    bad = pos_ids.clone()
    bad[0] = 30
    with pytest.raises(ValueError, match=r"pos_ids contains id 30, outside the allowed range \[0, 30\)"):
        mixed_negatives_loss(q, pos, bad, table, 6, sampler)
    bad[0] = -1
    with pytest.raises(ValueError, match=r"pos_ids contains id -1"):
        mixed_negatives_loss(q, pos, bad, table, 6, sampler)
    with pytest.raises(ValueError, match=r"batch_log_q as a tensor must have shape \[num_items=30\]"):
        mixed_negatives_loss(q, pos, pos_ids, table, 6, sampler, batch_log_q=blq[:10])
    blq2 = blq.clone()
    blq2[pos_ids[0]] = float("nan")
    with pytest.raises(ValueError, match="batch_log_q must be finite"):
        mixed_negatives_loss(q, pos, pos_ids, table, 6, sampler, batch_log_q=blq2, sampled_values=sv)
    with pytest.raises(ValueError, match="item_table has 30 rows but sampler.range_max=40"):
        mixed_negatives_loss(q, pos, pos_ids, table, 6, samplers.Uniform(40))
    with pytest.raises(ValueError, match="num_sampled must be an int >= 1"):
        mixed_negatives_loss(q, pos, pos_ids, table, 0, sampler)
    with pytest.raises(ValueError, match="pos_item_emb must have the shape of query"):
        mixed_negatives_loss(q, pos[:3], pos_ids, table, 6, sampler)
    with pytest.raises(ValueError, match="sampler is required"):
        mixed_negatives_loss(q, pos, pos_ids, lambda i: table[i], 6)
    with pytest.raises(ValueError, match="temperature must be"):
        mixed_negatives_loss(q, pos, pos_ids, table, 6, sampler, temperature=-0.5)


def test_functional_reexport_is_the_same_function():
    q, c, ids, lq = _data(3, 4, 2, 2, 9)
    torch.testing.assert_close(BF.in_batch_softmax_loss(q, c, ids, lq), in_batch_softmax_loss(q, c, ids, lq))

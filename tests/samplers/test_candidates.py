"""Tests for bigsoftmax.samplers: distributions, TF expected-count semantics, state, errors.

Statistical tests use fixed seeds, so each is deterministic; every threshold is chosen so that a
CORRECT implementation would fail it with probability <= 1e-3 under a fresh seed (stated per test),
while the bugs they target move the statistic far beyond it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax import samplers as S
from bigsoftmax.samplers import (
    All,
    LearnedUnigram,
    LogUniform,
    Uniform,
    Unigram,
    expected_count,
    fenwick_add,
    fenwick_build,
    fenwick_search,
    unique_by_rejection,
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
Z_1E4 = 3.7190164854556804  # standard normal quantile at 1 - 1e-4 (one-sided)


def chi2_quantile_wh(df: int, z: float = Z_1E4) -> float:
    """Upper chi-square quantile by the Wilson-Hilferty cube-root normal approximation:
    chi2_{df, 1-a} ~= df * (1 - 2/(9 df) + z_a sqrt(2/(9 df)))**3 (relative error < 1% for df >= 10
    at these tail levels, far below the margin separating a correct sampler from a wrong one)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_stat(counts: torch.Tensor, p: torch.Tensor) -> tuple[float, int]:
    """Pearson statistic over the bins with p > 0 and its degrees of freedom (bins - 1)."""
    counts = counts.double()
    p = p.double()
    keep = p > 0
    n = counts.sum()
    exp = n * p[keep]
    stat = float((((counts[keep] - exp) ** 2) / exp).sum())
    return stat, int(keep.sum()) - 1


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tc(*ids) -> torch.Tensor:
    return torch.tensor([[i] for i in ids], dtype=torch.long)


V = 50  # small vocabulary: every bin gets hundreds of counts below


def _skewed_learned() -> LearnedUnigram:
    lu = LearnedUnigram(V, unique=False)
    stream = torch.cat([torch.full((300,), 3), torch.full((100,), 7), torch.arange(V).repeat(2)])
    lu.update(stream.reshape(-1, 2))
    return lu


SAMPLER_FACTORIES = {
    "uniform": lambda: Uniform(V, unique=False),
    "log_uniform": lambda: LogUniform(V, unique=False),
    "unigram": lambda: Unigram(torch.arange(1.0, V - 2), distortion=0.75, unique=False, num_reserved_ids=3),
    "learned": _skewed_learned,
}


# --------------------------------------------------------------------------------------------
# distributions (unique=False): chi-square goodness of fit
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SAMPLER_FACTORIES))
def test_chi_square_goodness_of_fit(name):
    sm = SAMPLER_FACTORIES[name]()
    n = 200_000  # smallest expected bin count: 200k * P_min >= ~300 (log-uniform tail), so the
    # chi-square approximation of the Pearson statistic is accurate
    ids, _, _ = sm.sample(_tc(0), n, gen(1234))
    counts = torch.bincount(ids, minlength=V)
    p = sm.probs()
    assert p.shape == (V,)
    assert torch.isclose(p.double().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6)
    assert int(counts[p == 0].sum()) == 0  # zero-probability (reserved) ids never drawn
    stat, df = chi2_stat(counts, p)
    # false-failure probability 1e-4 for a correct sampler
    assert stat < chi2_quantile_wh(df), (name, stat, df)


def test_chi_square_has_power():
    """The goodness-of-fit test above rejects a wrong distribution (it can fail)."""
    ids, _, _ = Uniform(V, unique=False).sample(_tc(0), 200_000, gen(1))
    counts = torch.bincount(ids, minlength=V)
    stat, df = chi2_stat(counts, LogUniform(V).probs())
    assert stat > 100 * chi2_quantile_wh(df)
    # an off-by-one in the log-uniform P(c) (P(c+1) instead of P(c)) is also caught
    ids, _, _ = LogUniform(V, unique=False).sample(_tc(0), 200_000, gen(2))
    counts = torch.bincount(ids, minlength=V)
    c = torch.arange(V, dtype=torch.float64)
    shifted = torch.log1p(1 / (c + 2))
    stat, df = chi2_stat(counts, shifted / shifted.sum())
    assert stat > 10 * chi2_quantile_wh(df)


def test_log_uniform_probability_formula():
    vmax = 1000
    c = torch.arange(vmax, dtype=torch.float64)
    ref = (torch.log(c + 2) - torch.log(c + 1)) / math.log(vmax + 1)
    sm = LogUniform(vmax)
    torch.testing.assert_close(sm.probs().double(), ref, rtol=1e-6, atol=0)
    ids = torch.tensor([[0, 5], [999, 7]])
    lp = sm.log_prob(ids)
    assert lp.shape == (2, 2) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), torch.log(ref[ids]), rtol=1e-6, atol=1e-7)
    assert float(ref.sum()) == pytest.approx(1.0, abs=1e-12)  # telescoping sum


# --------------------------------------------------------------------------------------------
# expected counts
# --------------------------------------------------------------------------------------------
def test_expected_count_function_edge_cases():
    p = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    # num_tries == num_sampled (always for unique=False): S * P
    torch.testing.assert_close(expected_count(p, 4, 4), 4 * p)
    # otherwise 1 - (1 - p)^n, exactly 0 for p = 0 and 1 for p = 1 (TF's -expm1(n log1p(-p)))
    out = expected_count(p, 4, 7)
    torch.testing.assert_close(out, torch.tensor([0.0, 1 - 0.75**7, 1.0], dtype=torch.float64))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SAMPLER_FACTORIES))
def test_expected_counts_not_unique_are_S_times_P(name):
    sm = SAMPLER_FACTORIES[name]()
    tc = torch.tensor([[3, 10], [49, 0], [7, 7]])
    s = 17
    ids, te, se = sm.sample(tc, s, gen(5))
    p = sm.probs().double()
    assert ids.dtype == torch.int64 and ids.shape == (s,)
    assert te.dtype == torch.float32 and te.shape == (3, 2) and se.dtype == torch.float32 and se.shape == (s,)
    torch.testing.assert_close(se.double(), s * p[ids], rtol=1e-6, atol=0)
    torch.testing.assert_close(te.double(), s * p[tc], rtol=1e-6, atol=0)


class _Scripted(LogUniform):
    """LogUniform whose i.i.d. draws come from a fixed script (to know num_tries exactly)."""

    def __init__(self, range_max, script):
        super().__init__(range_max, unique=True)
        self.script = list(script)
        self.pos = 0

    def _draw(self, n, generator):
        out = torch.tensor(self.script[self.pos:self.pos + n], dtype=torch.long)
        self.pos += n
        return out


def test_unique_expected_counts_use_num_tries_up_to_the_last_new_id():
    # draws: 0 0 3 0 5 | 9 1 ... -> with S=3 the 3rd distinct id (5) is draw #5: num_tries = 5,
    # although the first batch holds 2*S = 6 draws (the 6th must not be counted)
    script = [0, 0, 3, 0, 5, 9] + [1] * 100
    sm = _Scripted(20, script)
    tc = torch.tensor([[0], [19]])
    ids, te, se = sm.sample(tc, 3)
    assert ids.tolist() == [0, 3, 5]
    p = LogUniform(20).probs().double()
    torch.testing.assert_close(se.double(), -torch.expm1(5 * torch.log1p(-p[ids])), rtol=1e-6, atol=0)
    torch.testing.assert_close(te.double(), -torch.expm1(5 * torch.log1p(-p[tc])), rtol=1e-6, atol=0)
    # no repeat before the S-th distinct id -> num_tries == S -> TF's shortcut S * P
    sm = _Scripted(20, [4, 2, 8, 4, 4, 4])
    ids, te, se = sm.sample(tc, 3)
    assert ids.tolist() == [4, 2, 8]
    torch.testing.assert_close(se.double(), 3 * p[ids], rtol=1e-6, atol=0)
    # a stream needing more than one batch: 2*S draws, then the loop continues
    sm = _Scripted(20, [1] * 9 + [2] + [1] * 50)
    ids, te, se = sm.sample(tc, 2)
    assert ids.tolist() == [1, 2]
    torch.testing.assert_close(se.double(), -torch.expm1(10 * torch.log1p(-p[ids])), rtol=1e-6, atol=0)


def _sequential_reference(stream, s):
    seen, out = set(), []
    for k, v in enumerate(stream):
        if v not in seen:
            seen.add(v)
            out.append(v)
            if len(out) == s:
                return out, k + 1
    raise AssertionError("stream too short")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=200), st.integers(1, 13), st.integers(0, 2**31))
def test_unique_by_rejection_equals_sequential_loop(prefix, s, seed):
    """Vectorised batches + stable de-dup == TF's one-draw-at-a-time loop on the same stream."""
    rng = np.random.default_rng(seed)
    stream = prefix + list(range(13)) + rng.integers(0, 13, 5000).tolist()  # every id eventually
    pos = [0]

    def draw(m):
        out = torch.tensor(stream[pos[0]:pos[0] + m], dtype=torch.long)
        pos[0] += m
        return out

    ids, tries = unique_by_rejection(draw, s)
    ref_ids, ref_tries = _sequential_reference(stream, s)
    assert ids.tolist() == ref_ids
    assert tries == ref_tries


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=200), st.integers(1, 13), st.integers(0, 2**31))
def test_sync_free_unique_draw_equals_sequential_loop(prefix, s, seed):
    """The fixed-block path (accelerators, compile) gives the loop's ids and num_tries on the same
    stream, num_tries as a device tensor, without a host sync."""
    from bigsoftmax._validate import force_sync_free

    from .._host_sync import count_host_syncs

    rng = np.random.default_rng(seed)
    stream = prefix + list(range(13)) + rng.integers(0, 13, 5000).tolist()
    pos = [0]

    def draw(m):
        out = torch.tensor(stream[pos[0]:pos[0] + m], dtype=torch.long)
        pos[0] += m
        return out

    with force_sync_free(), count_host_syncs() as syncs:
        ids, tries = unique_by_rejection(draw, s)
    assert syncs == [] and isinstance(tries, torch.Tensor) and tries.dim() == 0
    ref_ids, ref_tries = _sequential_reference(stream, s)
    assert ids.tolist() == ref_ids
    assert int(tries) == ref_tries


def test_sync_free_unique_draw_fails_loudly_on_a_short_block():
    """Fewer than num_sampled distinct ids in the block: a device assert, never a wrong sample."""
    from bigsoftmax._validate import force_sync_free

    with force_sync_free(), pytest.raises(RuntimeError, match="fewer than num_sampled=3 distinct"):
        unique_by_rejection(lambda m: torch.zeros(m, dtype=torch.long).index_fill_(0, torch.tensor([m - 1]), 1), 3)


@pytest.mark.parametrize("make", [lambda: S.LogUniform(50), lambda: S.Uniform(50),
                                  lambda: S.Unigram(torch.arange(50, 0, -1).double())], ids=["loguniform", "uniform", "unigram"])
def test_sync_free_sample_equals_cpu_sample(make):
    """A sampler's unique draw on the sync-free path: the CPU path's candidates and expected counts."""
    from bigsoftmax._validate import force_sync_free

    tc = torch.tensor([[3], [7], [0]])
    a = make().sample(tc, 10, gen(3))
    with force_sync_free():
        b = make().sample(tc, 10, gen(3))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_uniform_unique_mean_num_tries_matches_coupon_collector():
    """E[num_tries] for S distinct out of V uniform ids is sum_k V/(V-k) exactly (sum of geometric
    waiting times); num_tries is recovered from the expected count 1-(1-1/V)^n."""
    vmax, s, trials = 1000, 100, 2000
    sm = Uniform(vmax)
    g = gen(7)
    p = 1.0 / vmax
    ns = []
    for _ in range(trials):
        ids, te, se = sm.sample(_tc(0), s, g)
        assert len(set(ids.tolist())) == s
        e = float(se[0])
        n = s if math.isclose(e, s * p, rel_tol=1e-6) else round(math.log1p(-e) / math.log1p(-p))
        ns.append(n)
    q = [(vmax - k) / vmax for k in range(s)]
    mean = sum(1 / x for x in q)
    var = sum((1 - x) / x**2 for x in q)
    # 4.5 sigma of the mean of `trials` independent runs (two-sided false-failure ~7e-6); an
    # off-by-one in num_tries would shift the mean by 1 = ~20 sigma
    assert abs(np.mean(ns) - mean) < 4.5 * math.sqrt(var / trials), (np.mean(ns), mean)


def test_unique_expected_count_matches_inclusion_frequency():
    """TF's unique expected count 1-(1-P)^num_tries approximates P(c in sample). In the usual
    regime (S << V, here S/V = 4%) its bias is far below the sampling noise of 10k trials, so
    each class's empirical inclusion frequency must lie within 4.9 sigma (Bonferroni over 1000
    classes at family-wise 1e-3) of the mean expected count; +1/N absorbs the rare classes whose
    binomial is not yet normal. (At V = 50, S = 10 log-uniform, TF's approximation itself is off
    by up to ~8%, see docs/samplers.md, so we do not test it there.)"""
    vmax, s, trials = 1000, 40, 10_000
    sm = LogUniform(vmax)
    tc = torch.arange(vmax).reshape(vmax, 1)
    g = gen(11)
    inc = torch.zeros(vmax, dtype=torch.float64)
    ec = torch.zeros(vmax, dtype=torch.float64)
    for _ in range(trials):
        ids, te, _ = sm.sample(tc, s, g)
        inc[ids] += 1
        ec += te[:, 0].double()
    f, m = inc / trials, ec / trials
    sd = (m * (1 - m) / trials).sqrt()
    assert torch.all((f - m).abs() <= 4.9 * sd + 1.0 / trials), float(((f - m).abs() / sd).max())
    assert float(m.sum()) == pytest.approx(s, rel=0.01)  # expected counts add up to ~S


# --------------------------------------------------------------------------------------------
# uniqueness, ranges, reproducibility
# --------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["uniform", "log_uniform", "unigram", "learned"]),
    st.integers(1, 40),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_samples_in_range_distinct_and_counts_valid(kind, s, unique, seed):
    sm = SAMPLER_FACTORIES[kind]()
    sm.unique = unique
    tc = torch.tensor([[5], [49], [3]])
    ids, te, se = sm.sample(tc, s, gen(seed))
    assert ids.shape == (s,) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < V
    assert bool((sm.probs()[ids] > 0).all())
    p = sm.probs().double()
    if unique:
        assert ids.unique().numel() == s
        # 1-(1-P)^n <= 1, except TF's shortcut S*P when num_tries == S (which may exceed 1)
        assert bool((se.double() <= torch.clamp(s * p[ids], min=1.0) + 1e-6).all())
        assert bool((se > 0).all())
    assert bool((te >= 0).all()) and torch.isfinite(te).all() and torch.isfinite(se).all()


@pytest.mark.parametrize("fn", ["uniform", "log_uniform", "learned_unigram", "fixed_unigram"])
def test_seeded_reproducible_and_seeds_differ(fn):
    tc = torch.tensor([[1, 2], [3, 4]])
    extra = {"unigrams": [float(i + 1) for i in range(100)]} if fn == "fixed_unigram" else {}
    f = getattr(S, f"{fn}_candidate_sampler")
    a = f(tc, 2, 30, True, 100, seed=3, **extra)
    b = f(tc, 2, 30, True, 100, seed=3, **extra)
    c = f(tc, 2, 30, True, 100, seed=4, **extra)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    # a generator wins over seed; the same generator state reproduces the draw
    d = f(tc, 2, 30, True, 100, seed=3, generator=gen(99), **extra)
    e = f(tc, 2, 30, True, 100, seed=123, generator=gen(99), **extra)
    assert torch.equal(d[0], e[0]) and not torch.equal(d[0], a[0])


def test_module_generator_reproducible_and_global_rng():
    sm = LogUniform(1000)
    tc = _tc(0)
    assert torch.equal(sm.sample(tc, 64, gen(0))[0], sm(tc, 64, gen(0))[0])  # forward == sample
    # no generator: torch's global RNG (torch.manual_seed makes it reproducible)
    torch.manual_seed(5)
    a = sm.sample(tc, 64)[0]
    torch.manual_seed(5)
    b = sm.sample(tc, 64)[0]
    c = sm.sample(tc, 64)[0]
    assert torch.equal(a, b) and not torch.equal(b, c)


# --------------------------------------------------------------------------------------------
# fixed unigram: reserved ids, distortion, sharding, vocab files
# --------------------------------------------------------------------------------------------
def test_unigram_reserved_ids_have_probability_zero():
    sm = Unigram([5.0, 1.0, 2.0], num_reserved_ids=2, unique=False)
    assert sm.range_max == 5
    torch.testing.assert_close(sm.probs().double(), torch.tensor([0, 0, 5 / 8, 1 / 8, 2 / 8], dtype=torch.float64))
    assert torch.isneginf(sm.log_prob(torch.tensor([0, 1]))).all()
    ids, te, _ = sm.sample(torch.tensor([[0], [2]]), 5000, gen(0))
    assert int(ids.min()) >= 2
    assert te[0, 0] == 0 and te[1, 0] == pytest.approx(5000 * 5 / 8)
    # unique: only 3 classes can be drawn
    u = Unigram([5.0, 1.0, 2.0], num_reserved_ids=2)
    assert sorted(u.sample(_tc(0), 3, gen(1))[0].tolist()) == [2, 3, 4]
    with pytest.raises(ValueError, match="num_sampled"):
        u.sample(_tc(0), 4)


def test_unigram_distortion():
    w = torch.tensor([1.0, 4.0, 9.0, 0.0, 16.0], dtype=torch.float64)
    for d in (1.0, 0.5, 2.0):
        p = Unigram(w, distortion=d).probs().double()
        torch.testing.assert_close(p, w**d / (w**d).sum(), rtol=1e-6, atol=0)
    # distortion 0: w**0 = 1 for every non-reserved id, zero counts included (0**0 = 1, as TF)
    p = Unigram(w, distortion=0.0, num_reserved_ids=1).probs()
    torch.testing.assert_close(p, torch.tensor([0.0] + [0.2] * 5))


def test_unigram_sharding_uses_shard_local_ids():
    w = [float(i + 1) for i in range(10)]  # global ids 2..11 (2 reserved)
    full = torch.tensor([0.0, 0.0] + w, dtype=torch.float64)
    for shard in range(3):
        sm = Unigram(w, num_reserved_ids=2, num_shards=3, shard=shard, unique=False)
        glob = torch.arange(shard, 12, 3)
        assert sm.range_max == glob.numel()
        torch.testing.assert_close(sm.to_global(torch.arange(sm.range_max)), glob)
        torch.testing.assert_close(sm.probs().double(), full[glob] / full[glob].sum(), rtol=1e-6, atol=0)
        ids, _, _ = sm.sample(_tc(0), 2000, gen(shard))
        assert int(ids.max()) < sm.range_max
        assert bool((sm.to_global(ids) % 3 == shard).all())
    # the TF function: range_max is the shard's size
    out = S.fixed_unigram_candidate_sampler(_tc(1), 1, 2, True, 4, unigrams=w, num_reserved_ids=2, num_shards=3, shard=1)
    assert int(out[0].max()) < 4
    with pytest.raises(ValueError, match="range_max"):
        S.fixed_unigram_candidate_sampler(_tc(1), 1, 2, True, 12, unigrams=w, num_reserved_ids=2, num_shards=3, shard=1)


def test_vocab_file_parsing(tmp_path):
    f = tmp_path / "vocab.csv"
    f.write_text("the,40\nof,a,b,20\r\nand, 10\nxyz,0\n")
    sm = Unigram.from_vocab_file(f, num_reserved_ids=1)
    torch.testing.assert_close(sm.probs().double(), torch.tensor([0, 40, 20, 10, 0], dtype=torch.float64) / 70)
    out = S.fixed_unigram_candidate_sampler(_tc(1), 1, 3, True, 5, vocab_file=str(f), num_reserved_ids=1, seed=0)
    assert sorted(out[0].tolist()) == [1, 2, 3]
    pos = out[0].tolist().index(1)
    assert out[1][0, 0] == out[2][pos]  # same class, same expected count (and the same num_tries)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,1\nb,notanumber\n")
    with pytest.raises(ValueError, match="line 2"):
        Unigram.from_vocab_file(bad)
    with pytest.raises(ValueError, match="vocab_file"):
        S.fixed_unigram_candidate_sampler(_tc(0), 1, 1, True, 3, vocab_file=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="exactly one of vocab_file and unigrams"):
        S.fixed_unigram_candidate_sampler(_tc(0), 1, 1, True, 3, vocab_file=str(f), unigrams=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="exactly one of vocab_file and unigrams"):
        S.fixed_unigram_candidate_sampler(_tc(0), 1, 1, True, 3)


def test_unigram_float64_tables_survive_module_casts():
    w = torch.rand(1000, dtype=torch.float64, generator=gen(0)) + 1e-3
    sm = Unigram(w)
    ref = sm.probs()
    wrapper = torch.nn.Sequential(torch.nn.Linear(2, 2), sm).half().float()
    assert wrapper[1].weights.dtype == torch.float64
    assert torch.equal(wrapper[1].probs(), ref)
    assert wrapper[0].weight.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# learned unigram
# --------------------------------------------------------------------------------------------
def test_learned_unigram_starts_uniform_and_follows_counts():
    lu = LearnedUnigram(10)
    torch.testing.assert_close(lu.probs(), torch.full((10,), 0.1))
    stream = torch.tensor([[3, 3], [3, 9], [0, 3]])
    lu.update(stream)
    counts = torch.ones(10, dtype=torch.float64)
    counts[3] += 4
    counts[9] += 1
    counts[0] += 1
    torch.testing.assert_close(lu.probs().double(), counts / counts.sum(), rtol=1e-6, atol=0)
    assert lu.counts.tolist() == counts.long().tolist()
    # sample never updates; TF order is sample, then update
    before = lu.counts.clone()
    lu.sample(stream, 4, gen(0))
    assert torch.equal(lu.counts, before)


def test_learned_unigram_state_dict_round_trip():
    lu = LearnedUnigram(V)
    lu.update(torch.randint(0, 5, (400, 1), generator=gen(3)))
    sd = lu.state_dict()
    assert set(sd) == {"counts"}
    fresh = LearnedUnigram(V)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.probs(), lu.probs())
    tc = _tc(2, 40)
    for x, y in zip(fresh.sample(tc, 20, gen(8)), lu.sample(tc, 20, gen(8))):
        assert torch.equal(x, y)
    # inside a parent module too
    parent = torch.nn.Module()
    parent.sampler = lu
    other = torch.nn.Module()
    other.sampler = LearnedUnigram(V)
    other.load_state_dict(parent.state_dict())
    assert torch.equal(other.sampler.probs(), lu.probs())


def test_learned_unigram_loaded_zero_counts_limit_unique():
    lu = LearnedUnigram(4)
    lu.load_state_dict({"counts": torch.tensor([0, 3, 0, 1])})
    assert lu.num_valid == 2
    assert sorted(lu.sample(_tc(1), 2, gen(0))[0].tolist()) == [1, 3]
    with pytest.raises(ValueError, match="num_sampled"):
        lu.sample(_tc(1), 3)
    lu.update(torch.tensor([[2], [2]]))
    assert lu.num_valid == 3 and lu.probs()[2] == pytest.approx(2 / 6)
    assert sorted(lu.sample(_tc(1), 3, gen(0))[0].tolist()) == [1, 2, 3]


def test_samplers_pickle_and_deepcopy():
    import copy
    import io

    lu = _skewed_learned()
    un = Unigram([3.0, 1.0, 0.0, 2.0], num_reserved_ids=1)
    for sm in (lu, un):
        buf = io.BytesIO()
        torch.save(sm, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        cp = copy.deepcopy(sm)
        for other in (loaded, cp):
            assert torch.equal(other.probs(), sm.probs())
            tc = _tc(1)
            assert torch.equal(other.sample(tc, 3, gen(4))[0], sm.sample(tc, 3, gen(4))[0])
    # Unigram state_dict round trip (CDF rebuilt from the loaded weights)
    other = Unigram([1.0, 1.0, 1.0, 1.0], num_reserved_ids=1)
    other.load_state_dict(un.state_dict())
    assert torch.equal(other.probs(), un.probs())
    other.unique = False
    assert torch.equal(other.sample(_tc(1), 40, gen(2))[0].unique(), torch.tensor([1, 2, 4]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.lists(st.integers(0, 39), max_size=60))
def test_fenwick_tree_matches_cumsum(counts, updates):
    c = torch.tensor(counts, dtype=torch.long)
    tree = fenwick_build(c)
    if updates:
        ids = torch.tensor(updates, dtype=torch.long) % c.numel()
        fenwick_add(tree, ids, 1)
        c = c.index_add(0, ids, torch.ones_like(ids))
    assert torch.equal(tree, fenwick_build(c))
    total = int(c.sum())
    if total > 0:
        r = torch.arange(total)
        ref = torch.searchsorted(c.cumsum(0), r, right=True)
        assert torch.equal(fenwick_search(tree, r), ref)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=70), st.lists(st.tuples(st.integers(0, 69), st.integers(0, 3)),
                                                                     min_size=1, max_size=60))
def test_fenwick_add_with_per_id_deltas_matches_rebuild(counts, updates):
    """Per-id deltas (the masked learned update) over every tree size, ids near the end included."""
    c = torch.tensor(counts, dtype=torch.long)
    tree = fenwick_build(c)
    ids = torch.tensor([u for u, _ in updates]) % c.numel()
    delta = torch.tensor([w for _, w in updates])
    fenwick_add(tree, ids, delta)
    assert torch.equal(tree, fenwick_build(c.index_add(0, ids, delta)))


def test_learned_update_mask_counts_only_the_kept_rows():
    y = torch.tensor([[3, 4], [5, 6], [7, 7]])
    keep = torch.tensor([True, False, True])
    a, b = LearnedUnigram(10), LearnedUnigram(10)
    a.update(y, mask=keep)
    b.update(y[keep])
    assert torch.equal(a.counts, b.counts) and a._total == b._total and torch.equal(a._tree, b._tree)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(a.sample(y, 5, g1)[0], b.sample(y, 5, g2)[0])
    with pytest.raises(ValueError, match=r"mask must have shape \[3\]"):
        a.update(y, mask=keep[:2])
    with pytest.raises(TypeError, match="mask must be a bool"):
        a.update(y, mask=keep.long())


def test_learned_unigram_function_is_tf_initial_state():
    tc = torch.tensor([[1], [2]])
    ids, te, se = S.learned_unigram_candidate_sampler(tc, 1, 10, False, 40, seed=0)
    torch.testing.assert_close(se, torch.full((10,), 10 / 40))
    torch.testing.assert_close(te, torch.full((2, 1), 10 / 40))


# --------------------------------------------------------------------------------------------
# All sampler
# --------------------------------------------------------------------------------------------
def test_all_candidate_sampler():
    tc = torch.tensor([[0, 4], [2, 1]])
    ids, te, se = S.all_candidate_sampler(tc, 2, 5, True)
    assert ids.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(te, torch.ones(2, 2)) and torch.equal(se, torch.ones(5))
    a = All(5)
    assert torch.equal(a.sample(tc, 5)[0], ids)
    with pytest.raises(ValueError, match="num_sampled"):
        a.sample(tc, 4)
    with pytest.raises(ValueError, match="true_classes"):
        S.all_candidate_sampler(tc, 2, 3, False)  # TF: true classes must lie in [0, num_sampled)


# --------------------------------------------------------------------------------------------
# TF parity (golden draws made by TensorFlow 2.21)
# --------------------------------------------------------------------------------------------
def _fixture_dir():
    here = Path(__file__).resolve().parents[2]  # the repository root
    for d in (os.environ.get("BIGSOFTMAX_TF_FIXTURES"), here.parent / "shared" / "fixtures" / "tf",
              here / "tests" / "fixtures" / "tf", Path("/work/shared/fixtures/tf")):
        if d and Path(d).is_dir() and any(Path(d).glob("*.npz")):
            return Path(d)
    return None


_FIX = _fixture_dir()
_FIX_FILES = sorted(p.name for p in _FIX.glob("*.npz")) if _FIX else []


def _tf_probs(meta):
    v = meta["num_classes"]
    if meta["sampler"] == "uniform":
        return Uniform(v).probs().double()
    if meta["sampler"] == "log_uniform":
        return LogUniform(v).probs().double()
    if meta["sampler"] == "fixed_unigram":
        # The fixture does not record its unigrams; its expected counts give P(1)/P(0) = 2^-0.75
        # and P(399)/P(0) = 400^-0.75, i.e. counts 1/(c+1) with distortion 0.75 (checked below on
        # every drawn and true class to 1e-5).
        return Unigram(1.0 / torch.arange(1.0, v + 1, dtype=torch.float64), distortion=0.75).probs().double()
    raise AssertionError(meta["sampler"])


@pytest.mark.skipif(_FIX is None, reason="TF golden fixtures (shared/fixtures/tf) not found")
@pytest.mark.parametrize("fname", _FIX_FILES or ["none"])
def test_tf_golden_expected_counts(fname):
    d = np.load(_FIX / fname)
    meta = json.loads(str(d["meta"]))
    s = meta["num_sampled"]
    cand = torch.from_numpy(d["sampled_candidates"]).long()
    labels = torch.from_numpy(d["labels"]).long()
    sec = torch.from_numpy(d["sampled_expected_count"]).double()
    tec = torch.from_numpy(d["true_expected_count"]).double()
    p = _tf_probs(meta)
    assert cand.shape == (s,) and int(cand.min()) >= 0 and int(cand.max()) < meta["num_classes"]
    if not meta["unique"]:
        n = s
    else:
        assert cand.unique().numel() == s
        # infer TF's num_tries from one candidate's expected count, then check all the others; use
        # the rarest candidate: there e ~ n P, so float32 rounding of e barely moves n (near e = 1
        # the inversion log1p(-e) / log1p(-P) is ill-conditioned)
        k = int(torch.argmin(p[cand]))
        e0, p0 = float(sec[k]), float(p[cand[k]])
        if math.isclose(e0, s * p0, rel_tol=1e-5):
            n = s
        else:
            n_hat = math.log1p(-e0) / math.log1p(-p0)
            n = round(n_hat)
            assert abs(n_hat - n) < 0.05 and n > s, n_hat
    torch.testing.assert_close(sec, expected_count(p[cand], s, n), rtol=1e-5, atol=0)
    torch.testing.assert_close(tec, expected_count(p[labels], s, n), rtol=1e-5, atol=0)
    # and our sampler reports the same numbers for TF's labels when its num_tries equals TF's
    if not meta["unique"]:
        sm = {"uniform": Uniform, "log_uniform": LogUniform}.get(meta["sampler"])
        if sm is not None:
            _, te, _ = sm(meta["num_classes"], unique=False).sample(labels, s, gen(0))
            torch.testing.assert_close(te.double(), tec, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# bad input: one table, each row (call, exception type, phrase the message must contain)
# --------------------------------------------------------------------------------------------
BAD_INPUT = [
    ("range_max zero", lambda: LogUniform(0), ValueError, "range_max"),
    ("range_max float", lambda: Uniform(10.0), TypeError, "range_max"),
    ("num_sampled zero", lambda: Uniform(10).sample(_tc(0), 0), ValueError, "num_sampled"),
    ("num_sampled > range when unique", lambda: S.uniform_candidate_sampler(_tc(0), 1, 11, True, 10), ValueError,
     r"num_sampled \(11\).*\[0, 10\)"),
    ("true_classes float", lambda: LogUniform(10).sample(torch.zeros(2, 1), 3), TypeError, "true_classes"),
    ("true_classes not 2-D", lambda: LogUniform(10).sample(torch.zeros(3, dtype=torch.long), 3), ValueError, "true_classes"),
    ("true_classes out of range", lambda: LogUniform(10).sample(_tc(10), 3), ValueError,
     r"true_classes contains class id 10.*\[0, 10\)"),
    ("num_true mismatch", lambda: S.log_uniform_candidate_sampler(torch.zeros(4, 2, dtype=torch.long), 1, 3, True, 10),
     ValueError, "num_true"),
    ("unigrams negative", lambda: Unigram([1.0, -1.0]), ValueError, "weights_or_counts"),
    ("unigrams not finite", lambda: Unigram([1.0, float("nan")]), ValueError, "weights_or_counts"),
    ("unigrams all zero", lambda: Unigram([0.0, 0.0]), ValueError, "positive weight"),
    ("distortion negative", lambda: Unigram([1.0, 2.0], distortion=-0.5), ValueError, "distortion"),
    ("shard out of range", lambda: Unigram([1.0, 2.0], num_shards=2, shard=2), ValueError, "shard"),
    ("unique not bool", lambda: S.log_uniform_candidate_sampler(_tc(0), 1, 3, "yes", 10), TypeError, "unique"),
    ("generator wrong type", lambda: LogUniform(10).sample(_tc(0), 3, generator=0), TypeError, "generator"),
    ("seed float", lambda: S.uniform_candidate_sampler(_tc(0), 1, 3, True, 10, seed=1.5), TypeError, "seed"),
    ("log_prob out of range", lambda: LogUniform(10).log_prob(torch.tensor([-1])), ValueError, "ids"),
    ("update out of range", lambda: LearnedUnigram(10).update(torch.tensor([[3], [12]])), ValueError, "true_classes"),
    # issue 14, item 13: TF's own range_max limit, checked before any O(range_max) table is built
    ("learned range_max 2**31-1", lambda: S.learned_unigram_candidate_sampler(_tc(0), 1, 3, True, 2**31 - 1),
     ValueError, "range_max must be less than 2147483647"),
    ("fixed range_max 2**31-1", lambda: S.fixed_unigram_candidate_sampler(_tc(0), 1, 3, True, 2**31 - 1, unigrams=[1.0] * 4),
     ValueError, "range_max must be less than 2147483647"),
    ("LearnedUnigram range_max 2**31", lambda: LearnedUnigram(2**31), ValueError, "range_max must be less than 2147483647"),
    ("true_classes on meta", lambda: LogUniform(10).sample(torch.zeros(2, 1, dtype=torch.long, device="meta"), 3),
     ValueError, "meta device"),
    ("load_state_dict zero counts", lambda: LearnedUnigram(4).load_state_dict({"counts": torch.zeros(4, dtype=torch.long)}),
     ValueError, "not all zero"),
    ("load_state_dict wrong shape", lambda: LearnedUnigram(4).load_state_dict({"counts": torch.ones(5, dtype=torch.long)}),
     ValueError, r"shape \[4\]"),
]


@pytest.mark.parametrize("call,exc,phrase", [r[1:] for r in BAD_INPUT], ids=[r[0] for r in BAD_INPUT])
def test_bad_input_raises_clear_error(call, exc, phrase):
    with pytest.raises(exc, match=phrase):
        call()


def test_num_sampled_above_range_is_fine_without_unique():
    assert S.uniform_candidate_sampler(_tc(0), 1, 11, False, 10)[0].shape == (11,)


def test_learned_unigram_bad_state_dict_leaves_counts_unchanged():
    """issue 14, item 11: validate before mutating."""
    lu = LearnedUnigram(4)
    lu.update(torch.tensor([[2], [2]]))
    before = lu.counts.clone()
    with pytest.raises(ValueError, match="not all zero"):
        lu.load_state_dict({"counts": torch.zeros(4, dtype=torch.long)})
    assert torch.equal(lu.counts, before)
    assert lu.probs()[2] == pytest.approx(3 / 6)


def test_unigram_bad_state_dict_leaves_weights_unchanged():
    un = Unigram([1.0, 2.0, 3.0])
    before = un.weights.clone()
    with pytest.raises(ValueError, match="not all zero"):
        un.load_state_dict({"weights": torch.zeros(3, dtype=torch.float64)})
    assert torch.equal(un.weights, before) and torch.equal(un.probs(), (before / before.sum()).float())


def test_binary_vocab_file_is_a_clear_error(tmp_path):
    """issue 14, item 13: a binary vocab_file raised UnicodeDecodeError from inside open()."""
    p = tmp_path / "vocab.bin"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        S.fixed_unigram_candidate_sampler(_tc(0), 1, 3, True, 4, vocab_file=str(p))
    q = tmp_path / "nul.txt"
    q.write_bytes(b"1\x00\n2\n")
    with pytest.raises(ValueError, match="binary"):
        S.read_vocab_file(q)


def test_learned_unigram_function_builds_no_table_and_draws_as_the_module():
    """The stateless form draws exactly as a fresh LearnedUnigram module (TF's initial state),
    without its O(range_max) counts: a huge range_max costs nothing."""
    tc = torch.tensor([[1], [2]])
    for unique in (False, True):
        a = S.learned_unigram_candidate_sampler(tc, 1, 12, unique, 40, seed=5)
        b = LearnedUnigram(40, unique=unique).sample(tc, 12, gen(5))
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    ids, te, se = S.learned_unigram_candidate_sampler(tc, 1, 4, False, 2**31 - 2, seed=0)  # no 16 GiB table
    torch.testing.assert_close(se.double(), torch.full((4,), 4 / (2**31 - 2), dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(SAMPLER_FACTORIES))
def test_cuda_outputs_follow_true_classes(name):
    sm = SAMPLER_FACTORIES[name]().cuda()
    sm.unique = True
    tc = torch.tensor([[1], [4]], device="cuda")
    for g in (gen(0), torch.Generator(device="cuda").manual_seed(0), None):
        ids, te, se = sm.sample(tc, 10, g)
        assert ids.is_cuda and te.is_cuda and se.is_cuda and ids.unique().numel() == 10
    cpu = SAMPLER_FACTORIES[name]()
    cpu.unique = True
    a = cpu.sample(tc.cpu(), 10, gen(3))
    b = sm.sample(tc, 10, gen(3))
    assert torch.equal(a[0], b[0].cpu())
    torch.testing.assert_close(a[2], b[2].cpu())
    torch.testing.assert_close(sm.log_prob(tc), cpu.log_prob(tc.cpu()).cuda())


def test_update_rows_drops_the_masked_rows_for_a_sampler_without_mask():
    """A user's sampler whose update takes only true_classes gets the kept rows."""
    seen = []

    class Counting:
        def update(self, true_classes):
            seen.append(true_classes.clone())

    from bigsoftmax.samplers.candidates import update_rows

    y = torch.tensor([[1], [2], [3]])
    update_rows(Counting(), y, mask=torch.tensor([True, False, True]))
    update_rows(Counting(), y)
    assert torch.equal(seen[0], torch.tensor([[1], [3]])) and torch.equal(seen[1], y)

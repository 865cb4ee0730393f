"""samplers.Bigram: λ = 0 is the unigram sampler, per-context chi-square against Q, TF's expected
counts per row, per-row unique draws equal a sequential loop, state, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from bigsoftmax import samplers as S
from bigsoftmax.samplers import Bigram, Unigram, unique_by_rejection, unique_per_row


def gen(seed):
    return torch.Generator().manual_seed(seed)


V = 12
# a stream with rich successor lists for 0 and 1, a single successor for 5, and classes 9..11 that
# never precede anything (their rows are empty: Q falls back to the unigram part)
TOKENS = torch.tensor([0, 1, 2, 0, 1, 3, 0, 4, 1, 2, 5, 6, 0, 1, 2, 7, 8, 0, 1, 5, 6, 9, 3, 4, 0, 2, 10, 1, 11, 5, 6])


def _bigram(**kw):
    kw.setdefault("lam", 0.6)
    kw.setdefault("alpha", 0.75)
    return Bigram(V, TOKENS, **kw)


def _q_reference(prev, lam, alpha):
    """Q(· | prev) from the formula, by counting the stream directly (dense, test-only)."""
    t = TOKENS.tolist()
    c = torch.zeros(V, dtype=torch.float64)
    for a, b in zip(t[:-1], t[1:]):
        if a == prev:
            c[b] += 1
    u = torch.bincount(TOKENS, minlength=V).double().pow(alpha)
    uni = u / u.sum()
    if c.sum() == 0:
        return uni
    return lam * c / c.sum() + (1 - lam) * uni


# ----------------------------------------------------------------------------- the distribution
@pytest.mark.parametrize("lam,alpha", [(0.6, 0.75), (0.0, 1.0), (1.0, 0.5), (0.3, 0.0)])
def test_probs_match_the_formula(lam, alpha):
    q = _bigram(lam=lam, alpha=alpha, unique=False)
    ctx = torch.arange(V)
    ref = torch.stack([_q_reference(p, lam, alpha) for p in range(V)])
    torch.testing.assert_close(q.probs(ctx).double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(q.probs(ctx).double().sum(1), torch.ones(V, dtype=torch.float64), rtol=1e-6, atol=0)
    ids = torch.randint(0, V, (V, 5), generator=gen(0))
    torch.testing.assert_close(q.log_prob(ids, context=ctx).double(), ref.gather(1, ids).log(), rtol=1e-5, atol=1e-6)


def test_successor_lists_are_sparse():
    q = _bigram()
    pairs = {(a, b) for a, b in zip(TOKENS[:-1].tolist(), TOKENS[1:].tolist())}
    assert q.num_bigrams == len(pairs)
    assert all(b.numel() <= len(pairs) + V + 1 for b in q.buffers())  # O(nnz + V), never V×V
    from_pairs = Bigram(V, pairs=(TOKENS[:-1], TOKENS[1:], torch.ones(TOKENS.numel() - 1, dtype=torch.long)),
                        unigram_counts=torch.bincount(TOKENS, minlength=V), lam=0.6)
    torch.testing.assert_close(from_pairs.probs(torch.arange(V)), q.probs(torch.arange(V)))


# ----------------------------------------------------------------------------- λ = 0 is the unigram sampler
@pytest.mark.parametrize("alpha", [0.75, 1.0])
def test_lam_zero_draws_as_unigram_not_unique(alpha):
    N, S_ = 7, 9
    q = _bigram(lam=0.0, alpha=alpha, unique=False)
    u = Unigram(torch.bincount(TOKENS, minlength=V).double(), distortion=alpha, unique=False)
    tc = torch.randint(0, V, (N, 2), generator=gen(1))
    ctx = torch.randint(0, V, (N,), generator=gen(2))
    ids, te, se = q.sample(tc, S_, gen(3), context=ctx)
    ref_ids = u.sample(tc[:1], N * S_, gen(3))[0]  # the same uniforms, one stream
    assert torch.equal(ids.reshape(-1), ref_ids)
    p = u.probs().double()
    torch.testing.assert_close(se.double(), (S_ * p[ids]).float().double())
    torch.testing.assert_close(te.double(), (S_ * p[tc]).float().double())


def test_lam_zero_unique_is_the_unigram_sampler_exactly():
    q = _bigram(lam=0.0, alpha=0.75, unique=True)
    u = Unigram(torch.bincount(TOKENS, minlength=V).double(), distortion=0.75, unique=True)
    tc = torch.tensor([[3, 5]])
    for seed in range(5):
        a = q.sample(tc, 6, gen(seed), context=torch.tensor([4]))
        b = u.sample(tc, 6, gen(seed))
        assert torch.equal(a[0][0], b[0])
        assert torch.equal(a[1], b[1])
        assert torch.equal(a[2][0], b[2])


# ----------------------------------------------------------------------------- empirical frequencies
def _chi2_pvalue(counts, expected):
    keep = expected > 0
    assert counts[~keep].sum() == 0, "drew a class with Q = 0"
    stat = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    return chi2.sf(stat, int(keep.sum()) - 1)


def test_per_context_frequencies_match_q_chi_square():
    """Each context's draws follow Q(· | prev): Pearson chi-square, fixed seed, p > 1e-4 per context
    (Bonferroni over the contexts keeps the family-wise false alarm rate below 1e-3)."""
    q = _bigram(lam=0.6, alpha=0.75, unique=False)
    ctx = torch.tensor([0, 1, 5, 9, 6])  # rich, rich, single successor, empty row, single successor
    n = 40000
    ids, _, _ = q.sample(torch.zeros(ctx.numel(), 1, dtype=torch.long), n, gen(11), context=ctx)
    probs = q.probs(ctx).double()
    for r in range(ctx.numel()):
        counts = torch.bincount(ids[r], minlength=V).double()
        assert _chi2_pvalue(counts, n * probs[r]) > 1e-4, f"context {int(ctx[r])}"


def test_chi_square_has_power_against_the_unigram():
    """The same test rejects the context-free unigram as the law of a rich context's draws."""
    q = _bigram(lam=0.6, alpha=0.75, unique=False)
    ids, _, _ = q.sample(torch.zeros(1, 1, dtype=torch.long), 40000, gen(12), context=torch.tensor([0]))
    wrong = _bigram(lam=0.0, alpha=0.75).probs(torch.tensor([0]))[0].double()
    assert _chi2_pvalue(torch.bincount(ids[0], minlength=V).double(), 40000 * wrong) < 1e-12


# ----------------------------------------------------------------------------- expected counts
def test_expected_counts_not_unique_are_S_times_Q():
    q = _bigram(unique=False)
    tc = torch.tensor([[1], [2], [6]])
    ctx = torch.tensor([0, 1, 9])
    ids, te, se = q.sample(tc, 8, gen(0), context=ctx)
    P = q.probs(ctx).double()
    torch.testing.assert_close(se.double(), (8 * P.gather(1, ids)).float().double())
    torch.testing.assert_close(te.double(), (8 * P.gather(1, tc)).float().double())


def test_expected_counts_unique_use_each_rows_num_tries():
    q = _bigram(unique=True)
    tc = torch.tensor([[1], [2], [6], [3]])
    ctx = torch.tensor([0, 1, 5, 11])
    S_ = 5
    ids, te, se = q.sample(tc, S_, gen(4), context=ctx)
    assert all(row.unique().numel() == S_ for row in ids)
    # replay the same draws to get each row's num_tries
    g = gen(4)
    _, tries = unique_per_row(lambda m: q._draw_rows(ctx, m, g), ctx.numel(), S_)
    P = q.probs(ctx).double()
    for r in range(ctx.numel()):
        n = int(tries[r])
        f = (lambda p: S_ * p) if n == S_ else (lambda p: 1 - (1 - p) ** n)
        torch.testing.assert_close(se[r].double(), f(P[r, ids[r]]).float().double(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(te[r].double(), f(P[r, tc[r]]).float().double(), rtol=1e-6, atol=1e-7)
    assert int(tries.max()) > S_  # this seed exercises the num_tries branch


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 10_000))
def test_unique_per_row_equals_a_sequential_loop(rows, s, seed):
    """Each row of unique_per_row is what drawing one id at a time until S distinct would give."""
    table = torch.randint(0, s + 2, (rows, 4096), generator=gen(seed))
    used = [0]

    def draw(m):
        out = table[:, used[0]:used[0] + m]
        used[0] += m
        return out

    ids, tries = unique_per_row(draw, rows, s)
    for r in range(rows):
        seen, order = set(), []
        for j, v in enumerate(table[r].tolist()):
            if v not in seen:
                seen.add(v)
                order.append(v)
                if len(order) == s:
                    break
        assert ids[r].tolist() == order and int(tries[r]) == j + 1
    # and with one row it is unique_by_rejection on the same stream
    flat = table[0]
    pos = [0]

    def draw1(m):
        out = flat[pos[0]:pos[0] + m]
        pos[0] += m
        return out

    a, n = unique_by_rejection(draw1, s)
    assert a.tolist() == ids[0].tolist() and n == int(tries[0])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 10_000))
def test_sync_free_unique_per_row_equals_the_loop(rows, s, seed):
    """The fixed-block path (accelerators, compile): the loop's ids and num_tries, no host sync."""
    from bigsoftmax._validate import force_sync_free

    from .._host_sync import count_host_syncs

    table = torch.randint(0, s + 2, (rows, 4096), generator=gen(seed))

    def drawer():
        used = [0]

        def draw(m):
            out = table[:, used[0]:used[0] + m]
            used[0] += m
            return out
        return draw

    ref_ids, ref_tries = unique_per_row(drawer(), rows, s)
    with force_sync_free(), count_host_syncs() as syncs:
        ids, tries = unique_per_row(drawer(), rows, s)
    assert syncs == []
    assert torch.equal(ids, ref_ids) and torch.equal(tries, ref_tries)


def test_sync_free_unique_per_row_fails_loudly_on_a_short_block():
    from bigsoftmax._validate import force_sync_free

    with force_sync_free(), pytest.raises(RuntimeError, match="fewer than num_sampled=3 distinct"):
        unique_per_row(lambda m: torch.zeros(2, m, dtype=torch.long), 2, 3)


# ----------------------------------------------------------------------------- state
def test_state_dict_round_trip_and_validation_before_mutation():
    q = _bigram()
    sd = q.state_dict()
    assert set(sd) == {"keys", "pair_counts", "unigram"}
    other = Bigram(V, torch.tensor([3, 4, 5, 3]), lam=0.6)  # fewer bigrams: buffers are resized on load
    other.load_state_dict(sd)
    ctx = torch.tensor([0, 5, 9])
    assert torch.equal(other.probs(ctx), q.probs(ctx))
    tc = torch.tensor([[1], [2], [3]])
    for x, y in zip(other.sample(tc, 4, gen(1), context=ctx), q.sample(tc, 4, gen(1), context=ctx)):
        assert torch.equal(x, y)
    bad = dict(sd, pair_counts=torch.zeros_like(sd["pair_counts"]))
    before = other.probs(ctx)
    with pytest.raises(ValueError, match="pair_counts"):
        other.load_state_dict(bad)
    assert torch.equal(other.probs(ctx), before)
    q.float()  # module casts keep the float64 unigram table
    assert q.unigram.dtype == torch.float64


def test_rows_draw_on_the_buffers_device_without_dense_tables():
    q = _bigram(unique=False)
    ids, te, se = q(torch.tensor([[1], [2]]), 3, gen(0), context=torch.tensor([0, 1]))
    assert ids.shape == (2, 3) and te.shape == (2, 1) and se.shape == (2, 3) and se.dtype == torch.float32


# ----------------------------------------------------------------------------- bad input
BAD = [
    ("empty stream", lambda: Bigram(V, torch.tensor([], dtype=torch.long)), ValueError, "tokens.*empty stream"),
    ("one token", lambda: Bigram(V, torch.tensor([3])), ValueError, "at least 2"),
    ("no bigram with a count", lambda: Bigram(V, pairs=(torch.tensor([1]), torch.tensor([2]), torch.tensor([0]))),
     ValueError, "empty stream"),
    ("lam above 1", lambda: _bigram(lam=1.5), ValueError, r"lam must be a float in \[0, 1\]"),
    ("lam negative", lambda: _bigram(lam=-0.1), ValueError, r"lam must be a float in \[0, 1\]"),
    ("lam not a number", lambda: _bigram(lam="0.5"), TypeError, "lam"),
    ("alpha negative", lambda: _bigram(alpha=-1.0), ValueError, "alpha"),
    ("tokens out of range", lambda: Bigram(4, torch.tensor([0, 1, 4])), ValueError, r"tokens contains class id 4.*\[0, 4\)"),
    ("tokens float", lambda: Bigram(V, torch.tensor([0.0, 1.0])), TypeError, "tokens"),
    ("tokens and pairs", lambda: Bigram(V, TOKENS, pairs=(TOKENS, TOKENS, TOKENS)), ValueError, "exactly one of tokens"),
    ("unigram_counts shape", lambda: Bigram(V, TOKENS, unigram_counts=[1.0, 2.0]), ValueError, "unigram_counts"),
    ("context missing", lambda: _bigram().sample(torch.tensor([[1]]), 2, gen(0)), ValueError, "context is required"),
    ("context shape", lambda: _bigram().sample(torch.tensor([[1], [2]]), 2, gen(0), context=torch.tensor([1])),
     ValueError, r"context must have shape \[batch=2\]"),
    ("context out of range", lambda: _bigram().sample(torch.tensor([[1]]), 2, gen(0), context=torch.tensor([V])),
     ValueError, r"context contains class id 12.*\[0, 12\)"),
    ("context float", lambda: _bigram().sample(torch.tensor([[1]]), 2, gen(0), context=torch.tensor([1.0])),
     TypeError, "context"),
    ("num_sampled above support", lambda: _bigram().sample(torch.tensor([[1]]), V + 1, gen(0), context=torch.tensor([1])),
     ValueError, "num_sampled"),
    ("lam 1 unique, few successors", lambda: _bigram(lam=1.0).sample(torch.tensor([[6]]), 3, gen(0), context=torch.tensor([5])),
     ValueError, "successors"),
    ("probs without context", lambda: _bigram().probs(), ValueError, "context"),
]


@pytest.mark.parametrize("call,exc,phrase", [r[1:] for r in BAD], ids=[r[0] for r in BAD])
def test_bad_input_raises_clear_error(call, exc, phrase):
    with pytest.raises(exc, match=phrase):
        call()


def test_exported_from_samplers():
    assert S.Bigram is Bigram and "Bigram" in S.__all__
    assert math.isclose(Bigram(V, TOKENS).lam, 0.5) and math.isclose(Bigram(V, TOKENS).alpha, 0.75)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_equal_cpu_draws_and_stay_on_device():
    q = _bigram(unique=False)
    qc = _bigram(unique=False).cuda()
    tc, ctx = torch.tensor([[1], [4], [6]]), torch.tensor([0, 5, 9])
    a = q.sample(tc, 10, gen(3), context=ctx)
    b = qc.sample(tc.cuda(), 10, gen(3), context=ctx.cuda())
    assert all(t.is_cuda for t in b)
    assert torch.equal(a[0], b[0].cpu())
    torch.testing.assert_close(a[2], b[2].cpu())
    qc.unique = True
    ids = qc.sample(tc.cuda(), 6, torch.Generator(device="cuda").manual_seed(0), context=ctx.cuda())[0]
    assert ids.is_cuda and all(r.unique().numel() == 6 for r in ids)

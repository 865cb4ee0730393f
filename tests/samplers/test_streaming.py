"""StreamingFrequencyEstimator (Yi et al. 2019, Algorithms 2/3): exact small cases, a naive
reference, convergence on a Zipf stream with a derived tolerance, hashing, state, bad input."""

import math

import pytest
import torch

from bigsoftmax.samplers.streaming import StreamingFrequencyEstimator

P = (1 << 31) - 1


def _py_hash(est, x: int, i: int) -> int:
    """The documented universal hash, in Python integers (independent of the torch code)."""
    a, c, b = int(est.hash_a[i]), int(est.hash_c[i]), int(est.hash_b[i])
    lo, hi = x & ((1 << 30) - 1), (x >> 30) % P
    return ((a * lo + c * hi + b) % P) % est.num_buckets


class NaiveAlg3:
    """Algorithm 3 of the paper written with Python dicts, one occurrence at a time.

    Duplicates of a bucket within one step are fed one by one with the gap split evenly, which is
    what the vectorised closed form must equal.
    """

    def __init__(self, est, alpha, bias_correction):
        self.est, self.alpha, self.bc = est, alpha, bias_correction
        self.A = [dict() for _ in range(est.num_hashes)]
        self.B = [dict() for _ in range(est.num_hashes)]
        self.W = [dict() for _ in range(est.num_hashes)]
        self.step = 0

    def update(self, ids, t):
        self.step = t
        for i in range(self.est.num_hashes):
            per_bucket = {}
            for x in ids:
                h = _py_hash(self.est, x, i)
                per_bucket[h] = per_bucket.get(h, 0) + 1
            for h, c in per_bucket.items():
                gap = (t - self.A[i].get(h, 0)) / c
                for _ in range(c):  # c sequential paper updates
                    self.B[i][h] = (1 - self.alpha) * self.B[i].get(h, 0.0) + self.alpha * gap
                    self.W[i][h] = (1 - self.alpha) * self.W[i].get(h, 0.0) + self.alpha
                self.A[i][h] = t

    def gap(self, x):
        gaps = []
        for i in range(self.est.num_hashes):
            h = _py_hash(self.est, x, i)
            if h not in self.A[i]:
                gaps.append(self.step + 1.0)
            else:
                gaps.append(self.B[i][h] / (self.W[i][h] if self.bc else 1.0))
        return max(gaps)


# ----------------------------------------------------------------------------- exact small cases
def test_periodic_item_gap_is_exact_from_the_first_occurrence():
    est = StreamingFrequencyEstimator(1024, num_hashes=2, alpha=0.05)
    for t in range(1, 61):
        if t % 4 == 0:
            est.update(torch.tensor([7]), t)
        else:
            est.update(torch.tensor([], dtype=torch.long), t)
    # first gap = 4 (stream starts at step 0), every later gap = 4; de-biased EMA of a constant
    assert torch.allclose(est.gap_estimates(torch.tensor([7])), torch.full((2, 1), 4.0), rtol=1e-6)
    assert est.log_q(torch.tensor([7])).item() == pytest.approx(-math.log(4.0), rel=1e-6)


def test_without_bias_correction_follows_algorithm_2_exactly():
    alpha, k, n = 0.1, 3, 12
    est = StreamingFrequencyEstimator(64, alpha=alpha, bias_correction=False)
    for j in range(1, n + 1):
        est.update(torch.tensor([5]), step=k * j)
    # B_n = sum_{m<n} alpha (1-alpha)^m * k = k (1 - (1-alpha)^n)
    expected = k * (1 - (1 - alpha) ** n)
    assert est.gap_estimates(torch.tensor([5])).item() == pytest.approx(expected, rel=1e-6)


def test_c_copies_per_step_estimate_c_occurrences_per_step():
    est = StreamingFrequencyEstimator(256, num_hashes=3, alpha=0.2)
    for t in range(1, 30):
        est.update(torch.tensor([3, 3, 3, 9]), t)
    assert est.log_q(torch.tensor([3, 9])).tolist() == pytest.approx([math.log(3.0), 0.0], abs=1e-6)


def test_second_update_in_the_same_step_adds_occurrences():
    alpha = 0.3
    one = StreamingFrequencyEstimator(64, alpha=alpha)
    two = StreamingFrequencyEstimator(64, alpha=alpha)
    for t in range(1, 80):
        one.update(torch.tensor([1, 1]), t)
        two.update(torch.tensor([1]), t)
        two.update(torch.tensor([1]), t)
    # one call: both copies get gap 1/2 -> exactly 2 occurrences per step
    assert one.log_q(torch.tensor([1])).item() == pytest.approx(math.log(2.0), abs=1e-5)
    # two calls: the EMA sees gaps 1, 0, 1, 0, ... whose stationary EMA (ending on a 0) is
    # (1 - alpha) / (2 - alpha) -> 1/2 as alpha -> 0 (an O(alpha) order effect)
    assert two.log_q(torch.tensor([1])).item() == pytest.approx(-math.log((1 - alpha) / (2 - alpha)), abs=1e-5)


def test_unseen_items_report_a_finite_rate_below_one_per_run():
    est = StreamingFrequencyEstimator(4096, num_hashes=2)
    for t in range(1, 11):
        est.update(torch.tensor([1, 2]), t)
    lq = est.log_q(torch.tensor([123456]))
    assert torch.isfinite(lq).all() and lq.item() == pytest.approx(-math.log(11.0))


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("num_hashes", [1, 3])
def test_vectorised_update_equals_naive_algorithm(num_hashes, bias_correction):
    alpha = 0.07
    est = StreamingFrequencyEstimator(13, num_hashes=num_hashes, alpha=alpha, seed=5, bias_correction=bias_correction)
    ref = NaiveAlg3(est, alpha, bias_correction)
    g = torch.Generator().manual_seed(0)
    t = 0
    for _ in range(40):
        t += int(torch.randint(1, 3, (1,), generator=g))  # steps may skip
        ids = torch.randint(0, 60, (int(torch.randint(0, 9, (1,), generator=g)),), generator=g)
        ids[0:1] = ids[0:1] + (1 << 40)  # a large id exercises the high digit of the hash
        est.update(ids, t)
        ref.update(ids.tolist(), t)
    query = list(range(0, 60)) + [(1 << 40) + i for i in range(60)]
    got = est.gap_estimates(torch.tensor(query)).amax(0)
    want = torch.tensor([ref.gap(x) for x in query], dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=0)


def test_buckets_match_the_documented_hash_and_are_in_range():
    est = StreamingFrequencyEstimator(1000, num_hashes=2, seed=3)
    ids = torch.tensor([0, 1, 2, 999, 2**30, 2**31 - 1, 2**40 + 17, 2**62, 2**63 - 1])
    b = est.bucket(ids)
    assert b.shape == (2, ids.numel()) and int(b.min()) >= 0 and int(b.max()) < 1000
    for i in range(2):
        assert b[i].tolist() == [_py_hash(est, int(x), i) for x in ids]


def test_hash_spreads_consecutive_ids_uniformly():
    # 20000 consecutive ids into 50 buckets: Pearson chi-square with 49 dof has mean 49, sd ~9.9;
    # a universal hash of a fixed seed must stay below mean + 5 sd.
    M, n = 50, 20000
    est = StreamingFrequencyEstimator(M, num_hashes=2, seed=11)
    b = est.bucket(torch.arange(n))
    for i in range(2):
        counts = torch.bincount(b[i], minlength=M).double()
        chi2 = float(((counts - n / M) ** 2 / (n / M)).sum())
        assert chi2 < 49 + 5 * math.sqrt(2 * 49)


# ----------------------------------------------------------------------------- convergence
def test_converges_to_the_true_rates_on_a_zipf_stream():
    """Estimated gaps of the 50 most frequent items vs the rate of their hash buckets.

    Derivation of the tolerance. Item j (bucket rate R, occurrences per step) yields a sequence of
    per-occurrence gap values whose occurrence-average is exactly 1/R (renewal identity: the values
    sum to the elapsed steps). The de-biased EMA after n occurrences is sum_k w_k v_k with
    w_k = alpha (1-alpha)^k / (1 - (1-alpha)^n), so its relative variance is
    CV^2 * sum w_k^2 = CV^2 * alpha/(2-alpha) * (1 + (1-alpha)^n) / (1 - (1-alpha)^n), where
    CV^2 = 1 - p <= 1 for Bernoulli(p) occurrences per step (and also <= 1 when an item occurs
    several times per step: the per-step counts are binomial with variance <= mean). So
    sd(log gap_hat) <= sigma_j := sqrt(alpha/(2-alpha) * (1+(1-alpha)^n)/(1-(1-alpha)^n)).
    We require every item within 5 sigma_j and the mean error over 50 items within
    5 * mean(sigma)/sqrt(50) (bias of log: -sigma^2/2 ~ 0.003, negligible). The expected value
    uses the exact bucket rates (collisions included) since the hash is known; max over tables.
    """
    V, batch, steps, alpha = 1000, 64, 2500, 0.01
    p = 1.0 / torch.arange(1, V + 1, dtype=torch.float64) ** 1.1
    p /= p.sum()
    est = StreamingFrequencyEstimator(4096, num_hashes=2, alpha=alpha, seed=0)
    g = torch.Generator().manual_seed(1234)
    seen = torch.zeros(V, dtype=torch.float64)
    draws = torch.multinomial(p.float(), steps * batch, replacement=True, generator=g).reshape(steps, batch)
    for t in range(steps):
        est.update(draws[t], t + 1)
    seen.index_add_(0, draws.reshape(-1), torch.ones(steps * batch, dtype=torch.float64))

    rate = batch * p  # expected occurrences per step
    buckets = est.bucket(torch.arange(V))  # [H, V]
    pred_gap = torch.stack([
        1.0 / torch.zeros(est.num_buckets, dtype=torch.float64).index_add(0, buckets[i], rate)[buckets[i]]
        for i in range(est.num_hashes)
    ]).amax(0)
    top = torch.arange(50)
    err = torch.log(est.gap_estimates(top).amax(0).double()) - torch.log(pred_gap[top])
    n = seen[top]
    sigma = torch.sqrt(alpha / (2 - alpha) * (1 + (1 - alpha) ** n) / (1 - (1 - alpha) ** n))
    assert bool((err.abs() <= 5 * sigma).all()), (err / sigma)
    assert abs(float(err.mean())) <= 5 * float(sigma.mean()) / math.sqrt(len(top))
    # and log q is log of the expected count per step
    torch.testing.assert_close(est.log_q(top).double(), -torch.log(pred_gap[top]), atol=float(5 * sigma.max()), rtol=0)


def test_more_hash_tables_reduce_collision_bias():
    """Few buckets (256 for 400 items): a rare item sharing a bucket with a frequent one looks
    frequent in that table. Taking the largest gap over tables (Alg. 3) must shrink the
    over-estimate of rare items' q (fixed seeds; 1 table: +0.53 nats on average, 4 tables: +0.06)."""
    V, batch, steps = 400, 32, 600
    p = 1.0 / torch.arange(1, V + 1, dtype=torch.float64) ** 1.2
    p /= p.sum()
    g = torch.Generator().manual_seed(7)
    draws = torch.multinomial(p.float(), steps * batch, replacement=True, generator=g).reshape(steps, batch)
    errs = {}
    for H in (1, 4):
        est = StreamingFrequencyEstimator(256, num_hashes=H, alpha=0.02, seed=1)
        for t in range(steps):
            est.update(draws[t], t + 1)
        rare = torch.arange(100, 200)
        errs[H] = float((est.log_q(rare).double() - torch.log(batch * p[rare])).mean())
    assert errs[1] > 0.3  # q of rare items over-estimated by collisions
    assert errs[4] < errs[1] / 3


# ----------------------------------------------------------------------------- module behaviour
def test_state_dict_round_trip_reproduces_hashes_and_estimates():
    est = StreamingFrequencyEstimator(128, num_hashes=2, alpha=0.1, seed=1)
    for t in range(1, 20):
        est.update(torch.tensor([t % 5, 7, 7]), t)
    other = StreamingFrequencyEstimator(128, num_hashes=2, alpha=0.1, seed=99)
    other.load_state_dict(est.state_dict())
    ids = torch.arange(10)
    assert torch.equal(other.bucket(ids), est.bucket(ids))
    assert torch.equal(other.log_q(ids), est.log_q(ids))
    assert int(other.step) == 19
    other.update(torch.tensor([7]))  # step=None continues from the loaded step
    assert int(other.step) == 20
    assert set(est.state_dict()) == {"hash_a", "hash_b", "hash_c", "last_step", "gap", "weight", "step"}


def test_forward_is_log_q_and_shapes_are_kept():
    est = StreamingFrequencyEstimator(32, num_hashes=2)
    est.update(torch.tensor([[1, 2], [3, 1]]))
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert est(ids).shape == (2, 3) and torch.equal(est(ids), est.log_q(ids))
    assert est.gap_estimates(ids).shape == (2, 2, 3)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(num_buckets=0), "num_buckets"),
    (dict(num_buckets=8, num_hashes=0), "num_hashes"),
    (dict(num_buckets=8, alpha=0.0), "alpha"),
    (dict(num_buckets=8, alpha=1.5), "alpha"),
    (dict(num_buckets=8.0), "num_buckets"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamingFrequencyEstimator(**kwargs)


def test_bad_ids_and_steps():
    est = StreamingFrequencyEstimator(16)
    with pytest.raises(ValueError, match=r"negative id -1"):
        est.update(torch.tensor([3, -1]))
    with pytest.raises(ValueError, match=r"negative id"):
        est.log_q(torch.tensor([-5]))
    with pytest.raises(TypeError, match="integer item ids"):
        est.update(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        est.log_q([1, 2])
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        est.update(torch.tensor([1]), step=0)
    est.update(torch.tensor([1]), step=5)
    with pytest.raises(ValueError, match="must not decrease"):
        est.update(torch.tensor([1]), step=4)

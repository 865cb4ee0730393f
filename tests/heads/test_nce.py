"""NCE, SampledLogistic and NegativeSampling heads: TF parity, functional parity, naive references,
sparse gradients, exact evaluation, gradcheck, what each objective converges to, bad input."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from bigsoftmax import functional as BF
from bigsoftmax import samplers as S
from bigsoftmax.heads import NCE, NegativeSampling, SampledLogistic
from tests.conftest import FIXTURES_TF, need_shared

HEADS = (NCE, SampledLogistic, NegativeSampling)


def _make(cls, V=40, d=5, S_=8, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    if cls is NegativeSampling and "sampler" not in kw and "counts" not in kw:
        kw["counts"] = torch.arange(V, 0, -1).double()
    head = cls(d, V, S_, seed=1, **kw).to(dtype)
    with torch.no_grad():
        head.bias.normal_()
    return head


def _sv_with_hits(y, V, S_, seed=0, dtype=torch.float64):
    """Sampled values that contain some of the true labels (accidental hits), expected counts > 0."""
    g = torch.Generator().manual_seed(seed)
    sampled = torch.randperm(V, generator=g)[:S_]
    valid = y.reshape(-1)[y.reshape(-1) >= 0]  # skip ignore_index entries
    sampled[0] = valid[0]
    sampled[1] = valid[-1]
    return sampled, torch.rand(*y.shape, generator=g, dtype=dtype) + 0.1, torch.rand(S_, generator=g, dtype=dtype) + 0.1


# ----------------------------------------------------------------------------- TF golden cases
@pytest.mark.parametrize("name", ["nce_lu_t1", "nce_lu_t3_hits", "nce_uni_t1_rep"])
@pytest.mark.parametrize("sparse", [False, True])
def test_nce_head_reproduces_tf_golden(name, sparse):
    z = np.load(need_shared(FIXTURES_TF / f"{name}.npz"))
    meta = json.loads(str(z["meta"]))
    V, d = z["weights"].shape
    T = meta["num_true"]
    cls = SampledLogistic if meta["remove_accidental_hits"] else NCE  # each head's default hits setting
    head = cls(d, V, meta["num_sampled"], num_true=T, sparse=sparse, reduction="none")
    assert head.remove_accidental_hits == meta["remove_accidental_hits"]
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(z["weights"]))
        head.bias.copy_(torch.from_numpy(z["biases"]))
    x = torch.from_numpy(z["inputs"]).requires_grad_()
    y = torch.from_numpy(z["labels"])
    y = y[:, 0] if T == 1 else y
    sv = tuple(torch.from_numpy(z[k]) for k in ("sampled_candidates", "true_expected_count", "sampled_expected_count"))
    loss = head(x, y, sampled_values=sv)
    torch.testing.assert_close(loss.detach(), torch.from_numpy(z["loss"]), rtol=1e-4, atol=1e-5)
    (loss * torch.from_numpy(z["upstream"])).sum().backward()
    gw, gb = head.weight.grad, head.bias.grad
    assert gw.is_sparse == sparse and gb.is_sparse == sparse
    gw, gb = (gw.to_dense(), gb.to_dense()) if sparse else (gw, gb)
    torch.testing.assert_close(gw, torch.from_numpy(z["d_weights"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gb, torch.from_numpy(z["d_biases"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, torch.from_numpy(z["d_inputs"]), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- functional parity
@pytest.mark.parametrize("cls, hits", [(NCE, False), (SampledLogistic, True)])
@pytest.mark.parametrize("T", [1, 3])
def test_head_equals_functional_nce_loss(cls, hits, T):
    V, d, N, S_ = 40, 5, 9, 8
    head = _make(cls, V, d, S_, num_true=T)
    assert head.remove_accidental_hits is hits
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    y = torch.stack([torch.randperm(V, generator=g)[:T] for _ in range(N)])
    sv = _sv_with_hits(y, V, S_)
    got = head(x, y if T > 1 else y[:, 0], sampled_values=sv)
    want = BF.nce_loss(head.weight, head.bias, y, x, S_, V, num_true=T, sampled_values=sv, remove_accidental_hits=hits).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_head_draws_with_its_own_sampler_and_generator():
    V, d, N, S_ = 60, 4, 7, 10
    counts = torch.rand(V, generator=torch.Generator().manual_seed(0)) + 0.01
    head = NCE(d, V, S_, counts=counts, seed=5).double()
    assert isinstance(head.sampler, S.Unigram) and head.sampler.unique and head.sampler.distortion == 1.0
    x = torch.randn(N, d, dtype=torch.float64)
    y = torch.randint(0, V, (N,))
    got = head(x, y)
    sv = head.sampler.sample(y[:, None], S_, generator=torch.Generator().manual_seed(5))
    want = BF.nce_loss(head.weight, head.bias, y, x, S_, V, sampled_values=sv).mean()
    torch.testing.assert_close(got, want)
    again = NCE(d, V, S_, counts=counts, seed=5).double()
    again.load_state_dict(head.state_dict())
    again.generator.manual_seed(5)
    torch.testing.assert_close(again(x, y), got)


def _naive_sigmoid_loss(x, y, W, b, sampled, true_exp, samp_exp, subtract_log_q, remove_hits):
    """Per row, per candidate, from the definition: −log σ(z_true) − Σ log(1 − σ(z_s))."""
    out = []
    for i in range(x.shape[0]):
        def z(c, e):
            v = x[i] @ W[c] + b[c]
            return v - math.log(float(e)) if subtract_log_q else v

        li = -F.logsigmoid(z(y[i], true_exp[i, 0]))
        for s in range(sampled.numel()):
            if remove_hits and int(sampled[s]) == int(y[i]):
                continue
            li = li - F.logsigmoid(-z(sampled[s], samp_exp[s]))
        out.append(li)
    return torch.stack(out)


@pytest.mark.parametrize("remove_hits", [False, True])
def test_negative_sampling_is_word2vec_loss_without_log_q(remove_hits):
    V, d, N, S_ = 30, 4, 6, 7
    head = _make(NegativeSampling, V, d, S_, remove_accidental_hits=remove_hits, reduction="none")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (N,), generator=g)
    sv = _sv_with_hits(y[:, None], V, S_)
    got = head(x, y, sampled_values=sv)
    want = _naive_sigmoid_loss(x, y, head.weight, head.bias, *sv, subtract_log_q=False, remove_hits=remove_hits)
    torch.testing.assert_close(got, want)
    # and NCE is the same loss with log E subtracted
    nce = _make(NCE, V, d, S_, remove_accidental_hits=remove_hits, reduction="none")
    with torch.no_grad():
        nce.weight.copy_(head.weight), nce.bias.copy_(head.bias)
    want_nce = _naive_sigmoid_loss(x, y, head.weight, head.bias, *sv, subtract_log_q=True, remove_hits=remove_hits)
    torch.testing.assert_close(nce(x, y, sampled_values=sv), want_nce)


def test_negative_sampling_default_noise_is_unigram_075_with_replacement():
    counts = torch.tensor([100.0, 50, 20, 10, 5, 1, 2, 3])  # no zero: refused since bigsoftmax.vocab (Q(y)=0)
    head = NegativeSampling(4, 8, 5, counts=counts)
    assert isinstance(head.sampler, S.Unigram) and not head.sampler.unique
    want = counts ** 0.75 / (counts ** 0.75).sum()
    torch.testing.assert_close(head.sampler.probs().double(), want.double(), rtol=1e-6, atol=0)
    assert not head.remove_accidental_hits
    assert NegativeSampling(4, 8, 5, counts=counts, distortion=1.0).sampler.distortion == 1.0


@settings(max_examples=25, deadline=None)
@given(V=st.integers(4, 20), T=st.integers(1, 3), S_=st.integers(1, 8), N=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_sampled_logistic_equals_nce_with_hit_columns_dropped(V, T, S_, N, seed):
    """Removing accidental hits = running NCE on each row with the hitting candidates deleted."""
    T = min(T, V)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, generator=g, dtype=torch.float64)
    y = torch.stack([torch.randperm(V, generator=g)[:T] for _ in range(N)])
    sampled = torch.randint(0, V, (S_,), generator=g)
    te = torch.rand(N, T, generator=g, dtype=torch.float64) + 0.1
    se = torch.rand(S_, generator=g, dtype=torch.float64) + 0.1
    sl = SampledLogistic(3, V, S_, num_true=T, sampler=S.Uniform(V, unique=False), reduction="none", seed=0).double()
    nce = NCE(3, V, S_, num_true=T, sampler=S.Uniform(V, unique=False), reduction="none", seed=0).double()
    nce.load_state_dict(sl.state_dict())
    got = sl(x, y if T > 1 else y[:, 0], sampled_values=(sampled, te, se))
    for i in range(N):
        keep = ~torch.isin(sampled, y[i])
        nce.num_sampled = int(keep.sum())
        if nce.num_sampled == 0:  # every candidate hits: only the true-class terms remain
            want = F.binary_cross_entropy_with_logits(
                x[i] @ sl.weight[y[i]].t() + sl.bias[y[i]] - te[i].log(), torch.full((T,), 1.0 / T, dtype=torch.float64),
                reduction="sum")
        else:
            yi = y[i:i + 1] if T > 1 else y[i:i + 1, 0]
            want = nce(x[i:i + 1], yi, sampled_values=(sampled[keep], te[i:i + 1], se[keep]))[0]
        torch.testing.assert_close(got[i], want)


def test_autocast_bf16_matches_fp32_loosely():
    head = NCE(16, 100, 20, seed=0)
    x, y = torch.randn(32, 16), torch.randint(0, 100, (32,))
    sv = head.sampler.sample(y[:, None], 20, generator=torch.Generator().manual_seed(0))
    ref = head(x, y, sampled_values=sv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head(x, y, sampled_values=sv).detach()
    ref = ref.detach()
    assert torch.isfinite(low) and float((low.float() - ref).abs()) <= 0.02 * float(ref.abs())


# ----------------------------------------------------------------------------- sparse gradients
@pytest.mark.parametrize("cls", HEADS)
def test_sparse_gradients_match_dense_and_touch_only_candidates(cls):
    V, d, N, S_ = 50, 4, 6, 5
    dense = _make(cls, V, d, S_)
    sparse = _make(cls, V, d, S_, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(N, d, dtype=torch.float64)
    y = torch.randint(0, V, (N,))
    sv = _sv_with_hits(y[:, None], V, S_)
    dense(x, y, sampled_values=sv).backward()
    sparse(x, y, sampled_values=sv).backward()
    assert sparse.weight.grad.is_sparse and sparse.bias.grad.is_sparse
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
    torch.testing.assert_close(sparse.bias.grad.to_dense(), dense.bias.grad)
    touched = set(sparse.weight.grad.coalesce().indices()[0].tolist())
    assert touched <= set(y.tolist()) | set(sv[0].tolist())
    assert sparse.sparse_parameters() == [sparse.weight, sparse.bias] and dense.sparse_parameters() == []


# ----------------------------------------------------------------------------- protocol / exact eval
@pytest.mark.parametrize("cls", HEADS)
def test_exact_eval_is_full_softmax_over_the_head_parameters(cls):
    V, d = 40, 5
    head = _make(cls, V, d)
    x = torch.randn(3, 4, d, dtype=torch.float64)
    y = torch.randint(0, V, (3, 4))
    y[0, 1] = -100
    ref = F.log_softmax(x @ head.weight.t() + head.bias, dim=-1)
    torch.testing.assert_close(head.log_prob(x), ref)
    tlp = head.target_log_prob(x, y)
    keep = y != -100
    torch.testing.assert_close(tlp[keep], ref[keep].gather(-1, y[keep][:, None])[:, 0])
    v, i = head.topk(x, 3)
    torch.testing.assert_close(v, ref.topk(3, dim=-1).values)
    head.eval()
    logits = (x @ head.weight.t() + head.bias).reshape(-1, V)
    torch.testing.assert_close(head(x, y), F.cross_entropy(logits, y.reshape(-1), ignore_index=-100))
    head.train()


@pytest.mark.parametrize("cls", HEADS)
def test_leading_dims_ignore_index_and_reductions(cls):
    V, d, S_ = 40, 5, 8
    head = _make(cls, V, d, S_, reduction="none")
    x = torch.randn(2, 3, d, dtype=torch.float64)
    y = torch.randint(0, V, (2, 3))
    y[1, 2] = -100
    sv = _sv_with_hits(y.reshape(-1, 1), V, S_)
    out = head(x, y, sampled_values=sv)
    assert out.shape == (2, 3) and out[1, 2] == 0
    keep = (y != -100).reshape(-1)
    kept_sv = (sv[0], sv[1][keep], sv[2])
    direct = head(x.reshape(-1, d)[keep], y.reshape(-1)[keep], sampled_values=kept_sv)
    torch.testing.assert_close(out.reshape(-1)[keep], direct)
    head.reduction = "mean"
    torch.testing.assert_close(head(x, y, sampled_values=sv), direct.mean())
    head.reduction = "sum"
    torch.testing.assert_close(head(x, y, sampled_values=sv), direct.sum())


@pytest.mark.parametrize("cls", HEADS)
def test_gradcheck_float64(cls):
    V, d, N, S_, T = 12, 3, 4, 5, 2
    head = _make(cls, V, d, S_, num_true=T, remove_accidental_hits=True, reduction="none")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.stack([torch.randperm(V, generator=g)[:T] for _ in range(N)])
    sv = _sv_with_hits(y, V, S_)
    W = head.weight.detach().clone().requires_grad_()
    b = head.bias.detach().clone().requires_grad_()
    fn = lambda x, W, b: functional_call(head, {"weight": W, "bias": b}, (x, y), {"sampled_values": sv})
    assert torch.autograd.gradcheck(fn, (x, W, b))


# ----------------------------------------------------------------------------- what each objective learns
def _mean_grad(head, scores, p, reps=120, batch=128, seed=0):
    """Monte-Carlo mean and standard error of d loss / d score for a context-free head
    (hidden = 1, weight = 0, so score_c = bias_c), targets ~ p, the head's own noise draws."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(scores)
    x = torch.ones(batch, 1, dtype=head.weight.dtype)
    grads = []
    for _ in range(reps):
        y = torch.multinomial(p, batch, replacement=True, generator=g)
        (gb,) = torch.autograd.grad(head(x, y), head.bias)
        grads.append(gb)
    G = torch.stack(grads)
    return G.mean(0), G.std(0) / math.sqrt(reps)


def test_stationary_points_nce_log_p_negative_sampling_log_p_over_sq():
    """Bayes-optimal scores of the two sigmoid objectives, noise Q drawn with replacement
    (expected count E(c) = S·Q(c)): the expected gradient of class c's score is
    −P(c)(1 − σ(z_c)) + S·Q(c)·σ(z_c), zero iff σ(z_c) = P/(P + SQ), i.e.
      NCE (z = s − log SQ):      s* = log P
      negative sampling (z = s): s* = log P − log(S·Q).
    Check with the heads' real sampling: the Monte-Carlo mean gradient (120 draws) is within 5
    standard errors of 0 at the claimed optimum, and within 5 s.e. of that formula (clearly
    nonzero) at the other objective's optimum."""
    V, S_ = 8, 6
    p = torch.tensor([0.3, 0.2, 0.15, 0.12, 0.1, 0.07, 0.04, 0.02], dtype=torch.float64)
    qc = torch.tensor([1.0, 1, 2, 2, 3, 3, 4, 4], dtype=torch.float64)
    q = qc / qc.sum()
    nce = NCE(1, V, S_, sampler=S.Unigram(qc, unique=False), seed=3).double()
    ns = NegativeSampling(1, V, S_, counts=qc, distortion=1.0, seed=3).double()
    s_nce, s_ns = torch.log(p), torch.log(p) - torch.log(S_ * q)
    for head, good, bad, shift in ((nce, s_nce, s_ns, torch.log(S_ * q)), (ns, s_ns, s_nce, 0.0)):
        m, se = _mean_grad(head, good, p)
        assert bool((m.abs() <= 5 * se).all()), (m / se)
        m, se = _mean_grad(head, bad, p, seed=1)
        sig = torch.sigmoid(bad - shift)
        expected = -p * (1 - sig) + S_ * q * sig
        assert float(expected.abs().max()) > 0.1
        assert bool(((m - expected).abs() <= 5 * se).all()), ((m - expected) / se)
    # so NCE's exact eval is P itself (self-normalised), negative sampling's is ∝ P/Q: worse NLL
    one = torch.ones(1, 1, dtype=torch.float64)
    nll = lambda head: float(-(p * head.log_prob(one)[0]).sum().detach())
    entropy = float(-(p * p.log()).sum())
    with torch.no_grad():
        nce.bias.copy_(s_nce)
        ns.bias.copy_(s_ns)
    assert nll(nce) == pytest.approx(entropy, abs=1e-9)
    assert nll(ns) > entropy + 0.05


# ----------------------------------------------------------------------------- bad input
def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="NegativeSampling needs counts="):
        NegativeSampling(4, 10, 3)
    with pytest.raises(ValueError, match="either counts= .* or sampler="):
        NCE(4, 10, 3, counts=torch.ones(10), sampler=S.Uniform(10))
    with pytest.raises(ValueError, match=r"counts must be 1-D with one entry per class \(num_classes=10\), got 9"):
        NegativeSampling(4, 10, 3, counts=torch.ones(9))
    with pytest.raises(ValueError, match="distortion applies to counts="):
        NCE(4, 10, 3, distortion=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        NegativeSampling(4, 10, 3, counts=-torch.ones(10))
    with pytest.raises(ValueError, match="num_sampled must be an int >= 1"):
        SampledLogistic(4, 10, 0)
    with pytest.raises(ValueError, match="sampler.range_max=9 must equal num_classes=10"):
        NCE(4, 10, 3, sampler=S.Uniform(9))


@pytest.mark.parametrize("cls", HEADS)
def test_bad_forward_input(cls):
    head = _make(cls, 20, 4, 5)
    x = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"class id 20, outside the allowed range \[0, 20\)"):
        head(x, torch.tensor([0, 1, 2, 3, 4, 20]))
    with pytest.raises(ValueError, match=r"class id -3"):
        head(x, torch.tensor([0, 1, 2, 3, 4, -3]))
    with pytest.raises(ValueError, match=r"hidden must have shape \[\.\.\., 4\]"):
        head(torch.randn(6, 5, dtype=torch.float64), torch.zeros(6, dtype=torch.long))
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"sampled_expected_count must have shape \[5\]"):
        head(x, y, sampled_values=(torch.arange(5), torch.ones(6, 1), torch.ones(4)))
    with pytest.raises(ValueError, match="true_expected_count must be > 0"):
        head(x, y, sampled_values=(torch.arange(5), torch.zeros(6, 1), torch.ones(5)))


def test_bias_init_defaults_and_override():
    V = 50
    assert torch.allclose(NCE(4, V, 5).bias, torch.full((V,), -math.log(V)))
    assert torch.allclose(SampledLogistic(4, V, 5).bias, torch.full((V,), -math.log(V)))
    ns = NegativeSampling(4, V, 5, counts=torch.arange(V, 0, -1).float())
    assert torch.count_nonzero(ns.bias) == 0
    assert torch.allclose(NCE(4, V, 5, bias_init=0.5).bias, torch.full((V,), 0.5))
    assert NCE(4, V, 5, bias=False).bias is None
    with pytest.raises(ValueError, match="bias_init"):
        NCE(4, V, 5, bias_init=float("nan"))

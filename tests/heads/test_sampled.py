"""SampledSoftmax head: TF parity, exactness with the All sampler, sparse gradients, protocol, bad input."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax import functional as BF
from bigsoftmax import optim as BO
from bigsoftmax import samplers as S
from bigsoftmax.heads import SampledSoftmax
from tests.conftest import FIXTURES_TF


def _all_values(labels, V, dtype=torch.float64):
    B, T = labels.shape
    return torch.arange(V), torch.ones(B, T, dtype=dtype), torch.ones(V, dtype=dtype)


def _head(V=50, d=6, S_=10, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    h = SampledSoftmax(d, V, S_, seed=1, **kw).to(dtype)
    with torch.no_grad():
        if h.bias is not None:
            h.bias.normal_()
    return h


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("fused", [True, False])
def test_all_sampler_equals_full_softmax_float64(fused):
    V, d, N = 37, 5, 23
    head = SampledSoftmax(d, V, V, sampler=S.All(V), seed=0).double()
    with torch.no_grad():
        head.bias.normal_()
    x = torch.randn(N, d, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (N,))
    if not fused:  # the general autograd path (what half precision / autocast use)
        parts = head._parts(x, y[:, None], head.draw(y[:, None]))
        loss = BF._softmax_ce(parts).mean()
    else:
        loss = head(x, y)
    ref = F.cross_entropy(F.linear(x, head.weight, head.bias), y)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    g1 = torch.autograd.grad(loss, (x, head.weight, head.bias))
    g2 = torch.autograd.grad(ref, (x, head.weight, head.bias))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_gradcheck_float64_fused_and_general():
    V, d, N, T = 13, 4, 5, 2
    torch.manual_seed(3)
    W = torch.randn(V, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, dtype=torch.float64, requires_grad=True)
    x = torch.randn(N, d, dtype=torch.float64, requires_grad=True)
    labels = torch.stack([torch.randperm(V)[:T] for _ in range(N)])
    sampled = torch.tensor([0, 3, 3, 7, 12, 1])  # duplicates and (likely) hits
    sv = (sampled, torch.rand(N, T, dtype=torch.float64) + 0.1, torch.rand(6, dtype=torch.float64) + 0.1)

    def fused(x, W, b):
        return BF.sampled_softmax_loss(W, b, labels, x, 6, V, num_true=T, sampled_values=sv)

    def general(x, W, b):
        return BF.sampled_softmax_loss([W[:5], W[5:]], [b[:5], b[5:]], labels, x, 6, V, num_true=T, sampled_values=sv)

    assert torch.autograd.gradcheck(fused, (x, W, b))
    assert torch.autograd.gradcheck(general, (x, W, b))
    assert torch.autograd.gradcheck(lambda x, W, b: BF.nce_loss(W, b, labels, x, 6, V, num_true=T, sampled_values=sv,
                                                                  remove_accidental_hits=True), (x, W, b))


@pytest.mark.skipif(not FIXTURES_TF.exists(), reason="needs ../shared/fixtures/tf (the shared material beside the repo)")
@pytest.mark.parametrize("name", ["ss_lu_t1.npz", "ss_lu_t3.npz", "ss_uni_t2.npz", "ss_fu_t1_rep.npz", "ss_big_logits.npz"])
@pytest.mark.parametrize("sparse", [False, True])
def test_head_reproduces_tf_golden(name, sparse):
    z = np.load(FIXTURES_TF / name)
    meta = json.loads(str(z["meta"]))
    t = {k: torch.from_numpy(np.array(z[k])) for k in z.files if k != "meta"}
    V, d = t["weights"].shape
    head = SampledSoftmax(d, V, meta["num_sampled"], num_true=meta["num_true"], sparse=sparse,
                          remove_accidental_hits=meta["remove_accidental_hits"], reduction="none")
    with torch.no_grad():
        head.weight.copy_(t["weights"])
        head.bias.copy_(t["biases"])
    x = t["inputs"].clone().requires_grad_()
    target = t["labels"] if meta["num_true"] > 1 else t["labels"][:, 0]
    sv = (t["sampled_candidates"], t["true_expected_count"], t["sampled_expected_count"])
    loss = head(x, target, sampled_values=sv)
    (loss * t["upstream"]).sum().backward()
    gw, gb = head.weight.grad, head.bias.grad
    if sparse:
        assert gw.is_sparse and gb.is_sparse
        gw, gb = gw.to_dense(), gb.to_dense()
    kw = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss.detach(), t["loss"], **kw)
    torch.testing.assert_close(gw, t["d_weights"], **kw)
    torch.testing.assert_close(gb, t["d_biases"], **kw)
    torch.testing.assert_close(x.grad, t["d_inputs"], **kw)


# ----------------------------------------------------------------------------- sampled training
def test_sparse_gradients_touch_only_candidates_and_match_dense():
    V, d, N = 1000, 8, 16
    dense = SampledSoftmax(d, V, 32, seed=5)
    sparse = SampledSoftmax(d, V, 32, seed=5, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    sparse.generator.set_state(dense.generator.get_state())
    x = torch.randn(N, d)
    y = torch.randint(0, V, (N,))
    dense(x, y).backward()
    sparse(x, y).backward()
    assert sparse.weight.grad.is_sparse and sparse.bias.grad.is_sparse
    gw = sparse.weight.grad.coalesce()
    assert gw.indices().shape[1] <= 32 + N  # only candidate rows
    torch.testing.assert_close(gw.to_dense(), dense.weight.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sparse.bias.grad.to_dense(), dense.bias.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("opt", ["sparse_adam", "sgd", "adagrad"])
def test_sparse_head_trains_with_sparse_optimizers(opt):
    torch.manual_seed(0)
    V, d = 200, 16
    body = torch.nn.Linear(8, d)
    head = SampledSoftmax(d, V, 40, sparse=True, seed=0)
    model = torch.nn.ModuleDict({"body": body, "head": head})
    dense_p, sparse_p = BO.split_params(model)
    assert {id(p) for p in sparse_p} == {id(head.weight), id(head.bias)}
    optimizer = BO.make_optimizer(model, lr=0.05 if opt != "sparse_adam" else 0.01, sparse=opt)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() * 3 + (x[:, 1] > 0).long()  # 4 classes out of 200, learnable
    head.eval()
    before = head(body(x), y).item()
    head.train()
    for _ in range(60):
        optimizer.zero_grad()
        head(body(x), y).backward()
        optimizer.step()
    head.eval()
    after = head(body(x), y).item()
    assert after < before - 1.0, (before, after)
    state = optimizer.state_dict()
    optimizer.load_state_dict(state)


def test_seeded_heads_repeat_their_draws():
    a = SampledSoftmax(4, 500, 20, seed=7)
    b = SampledSoftmax(4, 500, 20, seed=7)
    y = torch.randint(0, 500, (9, 1))
    for _ in range(3):
        sa, sb = a.draw(y), b.draw(y)
        assert torch.equal(sa[0], sb[0])
    c = SampledSoftmax(4, 500, 20, seed=8)
    assert not torch.equal(c.draw(y)[0], a.draw(y)[0])


# ----------------------------------------------------------------------------- protocol
def test_protocol_exact_eval_and_leading_dims():
    V, d = 60, 7
    head = _head(V, d)
    h = torch.randn(3, 4, d, dtype=torch.float64)
    y = torch.randint(0, V, (3, 4))
    y[0, 0] = -100
    lp = head.log_prob(h)
    assert lp.shape == (3, 4, V)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 4, dtype=torch.float64))
    head.eval_chunk = 16  # several vocabulary slices
    tlp = head.target_log_prob(h, y)
    ref = lp.gather(-1, y.clamp_min(0)[..., None])[..., 0]
    ref[0, 0] = 0
    torch.testing.assert_close(tlp, ref)
    v, i = head.topk(h, 5)
    rv, ri = lp.topk(5, -1)
    torch.testing.assert_close(v, rv)
    assert torch.equal(i, ri)
    head.eval()
    loss = head(h, y)
    torch.testing.assert_close(loss, -ref.sum() / 11)
    head.reduction = "none"
    assert head(h, y).shape == (3, 4)
    head.train()
    per = head(h, y)
    assert per.shape == (3, 4) and per[0, 0] == 0 and torch.all(per[y != -100] > 0)


def test_weight_tying_shares_the_parameter():
    emb = torch.nn.Embedding(100, 8)
    head = SampledSoftmax(8, 100, 10, weight=emb.weight, seed=0)
    assert head.weight is emb.weight
    x = torch.randn(4, 8)
    head(x, torch.tensor([1, 2, 3, 4])).backward()
    assert emb.weight.grad is not None


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 40), st.integers(1, 3), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_hit_removal_equals_dropping_hit_columns(V, T, S_, seed):
    """Masking accidental hits = recomputing the softmax without those columns (reference loop)."""
    g = torch.Generator().manual_seed(seed)
    B, d = 5, 3
    T = min(T, V)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64)
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    labels = torch.stack([torch.randperm(V, generator=g)[:T] for _ in range(B)])
    sampled = torch.randint(0, V, (S_,), generator=g)
    te = torch.rand(B, T, generator=g, dtype=torch.float64) + 0.05
    se = torch.rand(S_, generator=g, dtype=torch.float64) + 0.05
    loss = BF.sampled_softmax_loss(W, b, labels, x, S_, V, num_true=T, sampled_values=(sampled, te, se))
    for r in range(B):
        cols = [x[r] @ W[c] + b[c] - te[r, j].log() for j, c in enumerate(labels[r].tolist())]
        keep = [x[r] @ W[c] + b[c] - se[s].log() for s, c in enumerate(sampled.tolist()) if c not in labels[r].tolist()]
        z = torch.stack(cols + keep)
        ref = torch.logsumexp(z, 0) - torch.stack(cols).mean()
        torch.testing.assert_close(loss[r], ref, rtol=1e-10, atol=1e-10)
    _, ids, _ = BF.compute_accidental_hits(labels, sampled, T)
    expected_hits = sum(int(c in labels[r].tolist()) for r in range(B) for c in sampled.tolist())
    assert ids.numel() == expected_hits  # every copy of a duplicated id is reported


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_hit_masking_is_finite_in_half_precision(dtype):
    V, d, N = 30, 8, 12
    W = torch.randn(V, d, dtype=dtype, requires_grad=True)
    b = torch.randn(V, dtype=dtype, requires_grad=True)
    x = torch.randn(N, d, dtype=dtype, requires_grad=True)
    y = torch.arange(N)[:, None] % 5  # sampled below contains every label: every row has hits
    sv = (torch.arange(10), torch.full((N, 1), 0.5), torch.full((10,), 0.5))
    for fn in (BF.sampled_softmax_loss, BF.nce_loss):
        loss = fn(W, b, y, x, 10, V, sampled_values=sv, remove_accidental_hits=True)
        loss.sum().backward()
        assert torch.isfinite(loss).all()
        for p in (W, b, x):
            assert torch.isfinite(p.grad).all()
            p.grad = None


def test_autocast_bf16_matches_fp32_loosely():
    torch.manual_seed(0)
    head = SampledSoftmax(16, 300, 50, seed=3)
    x = torch.randn(32, 16)
    y = torch.randint(0, 300, (32,))
    sv = head.draw(y[:, None])
    ref = head(x, y, sampled_values=sv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x, y, sampled_values=sv)
    out.backward()
    assert torch.isfinite(head.weight.grad).all()
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)


# ----------------------------------------------------------------------------- bad input
def test_bad_label_out_of_range():
    head = SampledSoftmax(4, 10, 3, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        head(torch.randn(2, 4), torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="labels.*range"):
        BF.sampled_softmax_loss(torch.randn(10, 4), None, torch.tensor([[-1]]), torch.randn(1, 4), 3, 10)


@pytest.mark.parametrize("num_sampled", [0, -2, 11])
def test_bad_num_sampled(num_sampled):
    with pytest.raises(ValueError, match="num_sampled"):
        SampledSoftmax(4, 10, num_sampled, sampler=S.Uniform(10, unique=True))


def test_bad_shapes_and_dtypes():
    head = SampledSoftmax(4, 10, 3, seed=0)
    with pytest.raises(ValueError, match="in_features"):
        head(torch.randn(2, 5), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="target shape"):
        head(torch.randn(2, 4), torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="int64"):
        head(torch.randn(2, 4), torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="floating"):
        head(torch.ones(2, 4, dtype=torch.long), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="weights"):
        BF.sampled_softmax_loss(torch.randn(9, 4), None, torch.tensor([[1]]), torch.randn(1, 4), 3, 10)
    with pytest.raises(ValueError, match="sampler.range_max"):
        SampledSoftmax(4, 10, 3, sampler=S.Uniform(12))


def test_bad_num_true_mismatch():
    with pytest.raises(ValueError, match="num_true=2"):
        BF.sampled_softmax_loss(torch.randn(10, 4), None, torch.tensor([[1, 2, 3]]), torch.randn(1, 4), 3, 10, num_true=2)
    head = SampledSoftmax(4, 10, 3, num_true=2, seed=0)
    with pytest.raises(ValueError, match="num_true=2"):
        head(torch.randn(3, 4), torch.tensor([1, 2, 3]))


def test_true_class_with_zero_probability_is_rejected():
    sv = (torch.tensor([1, 2]), torch.tensor([[0.0]]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="zero sampling probability"):
        BF.sampled_softmax_loss(torch.randn(10, 4), None, torch.tensor([[3]]), torch.randn(1, 4), 2, 10, sampled_values=sv)
    sampler = S.Unigram([0.0] + [1.0] * 9, unique=False)
    head = SampledSoftmax(4, 10, 3, sampler=sampler, seed=0)
    with pytest.raises(ValueError, match="zero sampling probability"):
        head(torch.randn(2, 4), torch.tensor([0, 1]))

"""FullSoftmax head: parity with nn.Linear + F.cross_entropy, exact eval invariants, tying, bad input."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bigsoftmax.heads import FullSoftmax, Head


def _linear(d, V, seed=0, bias=True, dtype=torch.float64):
    torch.manual_seed(seed)
    lin = nn.Linear(d, V, bias=bias).to(dtype)
    return lin


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps,weighted", [(0.0, False), (0.1, True)])
def test_forward_matches_linear_plus_cross_entropy(reduction, eps, weighted):
    B, T, d, V = 3, 7, 6, 45
    lin = _linear(d, V)
    cw = torch.rand(V, dtype=torch.float64) + 0.5 if weighted else None
    head = FullSoftmax(d, V, ignore_index=-1, reduction=reduction, label_smoothing=eps, class_weight=cw, chunk_size=8)
    head = head.double()
    with torch.no_grad():
        head.weight.copy_(lin.weight)
        head.bias.copy_(lin.bias)
    x = torch.randn(B, T, d, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, T))
    y[1, 2:5] = -1
    out = head(x, y)
    ref = F.cross_entropy(lin(x).reshape(-1, V), y.reshape(-1), weight=cw, ignore_index=-1, reduction=reduction,
                          label_smoothing=eps)
    if reduction == "none":
        ref = ref.reshape(B, T)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    up = torch.randn_like(ref)
    g1 = torch.autograd.grad((out * up).sum(), (x, head.weight, head.bias))
    g2 = torch.autograd.grad((ref * up).sum(), (x, lin.weight, lin.bias))
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    # _loss is the per-example loss of kept rows
    keep = y.reshape(-1) != -1
    per = head._loss(x.reshape(-1, d)[keep], y.reshape(-1)[keep])
    ref_none = F.cross_entropy(lin(x).reshape(-1, V), y.reshape(-1), weight=cw, ignore_index=-1, reduction="none",
                               label_smoothing=eps)[keep]
    torch.testing.assert_close(per, ref_none, rtol=1e-10, atol=1e-12)


def test_is_a_head_and_default_init_like_linear():
    head = FullSoftmax(16, 100)
    assert isinstance(head, Head)
    assert head.weight.shape == (100, 16) and head.bias.shape == (100,)
    bound = 1 / 16 ** 0.5
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound
    assert FullSoftmax(16, 100, bias=False).bias is None
    assert "num_classes=100" in repr(head)


def test_from_linear_shares_parameters():
    lin = _linear(5, 30, dtype=torch.float32)
    head = FullSoftmax.from_linear(lin, label_smoothing=0.05)
    assert head.weight is lin.weight and head.bias is lin.bias
    x, y = torch.randn(4, 5), torch.randint(0, 30, (4,))
    head(x, y).backward()
    assert lin.weight.grad is not None and lin.bias.grad is not None
    ref = F.cross_entropy(lin(x), y, label_smoothing=0.05)
    torch.testing.assert_close(head(x, y), ref)
    assert FullSoftmax.from_linear(nn.Linear(5, 30, bias=False)).bias is None
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        FullSoftmax.from_linear(nn.Embedding(30, 5))


def test_tied_to_input_embedding():
    """weight= ties the head to an embedding: one Parameter, gradients from both uses add up."""
    V, d = 40, 6
    emb = nn.Embedding(V, d).double()
    head = FullSoftmax(d, V, weight=emb.weight, bias=False).double()
    assert head.weight is emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    assert sum(p.numel() for p in model.parameters()) == V * d  # counted once
    tokens = torch.randint(0, V, (3, 5))
    h = emb(tokens[:, :-1])
    loss = head(h, tokens[:, 1:])
    loss.backward()
    g_tied = emb.weight.grad.clone()
    W = emb.weight.detach().clone().requires_grad_()
    ref = F.cross_entropy(F.linear(F.embedding(tokens[:, :-1], W), W).reshape(-1, V), tokens[:, 1:].reshape(-1))
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(g_tied, W.grad)


def test_class_weight_is_a_buffer_in_state_dict():
    cw = torch.linspace(0.5, 2.0, 20)
    head = FullSoftmax(4, 20, class_weight=cw)
    sd = head.state_dict()
    assert set(sd) == {"weight", "bias", "class_weight"}
    head2 = FullSoftmax(4, 20, class_weight=torch.ones(20))
    head2.load_state_dict(sd)
    torch.testing.assert_close(head2.class_weight, cw)
    x, y = torch.randn(6, 4), torch.randint(0, 20, (6,))
    torch.testing.assert_close(head2(x, y), head(x, y))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6), V=st.integers(2, 60), d=st.integers(1, 5), chunk=st.integers(1, 70),
    k=st.integers(1, 60), seed=st.integers(0, 2**16), bias=st.booleans(),
)
def test_exact_eval_invariants(n, V, d, chunk, k, seed, bias):
    """log_prob rows normalise; target_log_prob == log_prob.gather; topk == brute force; loss == -mean tlp."""
    k = min(k, V)
    g = torch.Generator().manual_seed(seed)
    head = FullSoftmax(d, V, bias=bias, chunk_size=chunk).double()
    head.eval_chunk = chunk
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, d, generator=g, dtype=torch.float64) * 2)
        if bias:
            head.bias.copy_(torch.randn(V, generator=g, dtype=torch.float64))
    x = torch.randn(2, n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (2, n), generator=g)
    with torch.no_grad():
        lp = head.log_prob(x)
        assert lp.shape == (2, n, V)
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, n, dtype=torch.float64))
        tlp = head.target_log_prob(x, y)
        torch.testing.assert_close(tlp, lp.gather(-1, y[..., None])[..., 0])
        v, i = head.topk(x, k)
        bv, _ = lp.topk(k, dim=-1)
        torch.testing.assert_close(v, bv)
        torch.testing.assert_close(lp.gather(-1, i), v)
        torch.testing.assert_close(head(x, y), -tlp.mean())
        assert torch.equal(head.predict(x), lp.argmax(-1))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        FullSoftmax(0, 10)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        FullSoftmax(4, 1)
    with pytest.raises(ValueError, match=r"label_smoothing must be a float in \[0.0, 1.0\]"):
        FullSoftmax(4, 10, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        FullSoftmax(4, 10, reduction="batchmean")
    with pytest.raises(ValueError, match=r"class_weight must have shape \[num_classes=10\]"):
        FullSoftmax(4, 10, class_weight=torch.ones(9))
    with pytest.raises(TypeError, match="class_weight must be a floating-point tensor"):
        FullSoftmax(4, 10, class_weight=torch.ones(10, dtype=torch.long))
    with pytest.raises(TypeError, match="weight must be an nn.Parameter"):
        FullSoftmax(4, 10, weight=torch.zeros(10, 4))
    with pytest.raises(ValueError, match=r"weight must have shape \[num_classes=10, in_features=4\]"):
        FullSoftmax(4, 10, weight=nn.Parameter(torch.zeros(4, 10)))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        FullSoftmax(4, 10, chunk_size=-3)
    head = FullSoftmax(4, 10)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"target contains class id 10, outside the allowed range \[0, 10\)"):
        head(x, torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match=r"hidden must have shape \[..., 4\]"):
        head(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="target shape"):
        head(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="target must hold integer class ids"):
        head(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="k must be an int in"):
        head.topk(x, 11)


def test_target_log_prob_is_differentiable_and_exact():
    V, d = 33, 4
    head = FullSoftmax(d, V, chunk_size=5).double()
    x = torch.randn(2, 3, d, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (2, 3))
    y[0, 0] = -100
    tlp = head.target_log_prob(x, y)
    ref = torch.log_softmax(F.linear(x, head.weight, head.bias), -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
    ref = ref.masked_fill(y == -100, 0.0)
    torch.testing.assert_close(tlp, ref)
    g1 = torch.autograd.grad(tlp.sum(), (x, head.weight))
    g2 = torch.autograd.grad(ref.sum(), (x, head.weight))
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c)

import pytest
import torch
from torch import nn

from bigsoftmax.heads import Head, SampledSoftmax
from bigsoftmax.lm.models import LSTMLM, TransformerLM, build_lm
from bigsoftmax.optim import make_optimizer, split_params

V, D = 50, 16


class ProjHead(Head):
    """A minimal exact head whose class matrix is not called ``weight`` (cannot be tied)."""

    def __init__(self, d, v):
        super().__init__(d, v)
        self.proj = nn.Linear(d, v)

    def _loss(self, h, y):
        return nn.functional.cross_entropy(self.proj(h), y, reduction="none")

    def _target_log_prob(self, h, y):
        return self.proj(h).log_softmax(-1).gather(1, y[:, None])[:, 0]


def sampled(sparse=False, seed=0):
    return SampledSoftmax(D, V, num_sampled=8, sparse=sparse, seed=seed)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_forward_shapes_and_loss(kind):
    torch.manual_seed(0)
    m = build_lm(kind, V, sampled(), D, num_layers=2, max_len=12)
    x = torch.randint(0, V, (3, 12))
    h, state = m(x)
    assert h.shape == (3, 12, D)
    loss, _ = m.loss(x, torch.randint(0, V, (3, 12)))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_tying_shares_the_head_weight_and_counts_it_once():
    m = LSTMLM(V, sampled(), D)
    assert m.tied and m.embedding.weight is m.head.weight
    n_unique = sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
    assert n_unique == sum(p.numel() for p in m.parameters())  # nn.Module deduplicates shared params
    untied = LSTMLM(V, sampled(), D, tie_weights=False)
    assert not untied.tied and untied.embedding.weight is not untied.head.weight
    assert not LSTMLM(V, ProjHead(D, V), D).tied  # no [V, d] weight -> separate embedding


def test_tied_gradient_is_sum_of_input_and_output_uses():
    torch.manual_seed(0)
    m = LSTMLM(V, ProjHead(D, V), D)
    m.head.weight = nn.Parameter(torch.randn(V, D))  # give it a weight, then re-tie by hand to check autograd
    m.embedding.weight = m.head.weight
    x = torch.randint(0, V, (2, 5))
    y = torch.randint(0, V, (2, 5))
    h, _ = m(x)
    (h.sum() + (m.head.weight ** 2).sum()).backward()
    g_tied = m.head.weight.grad.clone()
    m.zero_grad()
    h, _ = m(x)
    h.sum().backward()
    g_in = m.embedding.weight.grad.clone()
    assert torch.allclose(g_tied, g_in + 2 * m.head.weight.detach(), atol=1e-5)


def test_lstm_state_carry_equals_one_long_sequence():
    torch.manual_seed(0)
    m = LSTMLM(V, sampled(), D, num_layers=2).eval()
    x = torch.randint(0, V, (2, 10))
    h_all, _ = m(x)
    h1, s = m(x[:, :4])
    h2, _ = m(x[:, 4:], m.detach_state(s))
    torch.testing.assert_close(torch.cat([h1, h2], 1), h_all, atol=1e-6, rtol=1e-5)


def test_transformer_is_causal():
    torch.manual_seed(0)
    m = TransformerLM(V, sampled(), D, num_layers=2, max_len=10).eval()
    x = torch.randint(0, V, (1, 10))
    x2 = x.clone()
    x2[0, 6:] = (x2[0, 6:] + 1) % V
    h, _ = m(x)
    h2, _ = m(x2)
    torch.testing.assert_close(h[:, :6], h2[:, :6])
    assert not torch.allclose(h[:, 6:], h2[:, 6:])


def test_sparse_tied_weight_is_a_sparse_parameter_and_trains():
    torch.manual_seed(0)
    m = LSTMLM(V, sampled(sparse=True), D, sparse=True)
    dense, sparse = split_params(m)
    assert any(p is m.head.weight for p in sparse)
    opt = make_optimizer(m, lr=1e-2)
    x, y = torch.randint(0, V, (2, 6)), torch.randint(0, V, (2, 6))
    w0 = m.head.weight.detach().clone()
    loss, _ = m.loss(x, y)
    loss.backward()
    assert m.head.weight.grad.is_sparse
    opt.step()
    assert not torch.equal(w0, m.head.weight.detach())
    # sparse input lookup tied to a dense-gradient head: the shared weight is trained densely
    m2 = LSTMLM(V, sampled(sparse=False), D, sparse=True)
    assert any(p is m2.head.weight for p in split_params(m2)[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="in_features"):
        LSTMLM(V, SampledSoftmax(D + 1, V, 4), D)
    with pytest.raises(ValueError, match="num_classes"):
        LSTMLM(V + 1, sampled(), D)
    with pytest.raises(TypeError, match="Head"):
        LSTMLM(V, nn.Linear(D, V), D)
    with pytest.raises(ValueError, match="divisible"):
        TransformerLM(V, sampled(), D, num_heads=3)
    with pytest.raises(ValueError, match="model must be one of"):
        build_lm("gru", V, sampled(), D)
    with pytest.raises(ValueError, match="dropout"):
        LSTMLM(V, sampled(), D, dropout=1.5)
    m = LSTMLM(V, sampled(), D)
    with pytest.raises(ValueError, match=r"ids in \[0, 50\)"):
        m(torch.tensor([[0, V]]))
    with pytest.raises(TypeError, match="int64"):
        m(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"shape \[B, T\]"):
        m(torch.zeros(3, dtype=torch.long))
    t = TransformerLM(V, sampled(), D, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        t(torch.zeros(1, 5, dtype=torch.long))

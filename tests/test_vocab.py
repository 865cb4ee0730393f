"""bigsoftmax.vocab (own tokenizer: FrequencyOrder, smooth_counts) and the heads' handling of zero counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bigsoftmax
from bigsoftmax import heads as H
from bigsoftmax.vocab import FrequencyOrder, smooth_counts


def _own_tokenizer_counts(V=30, n=400, seed=0):
    """bincount of a Zipf-ish stream over a shuffled vocabulary where some ids never occur."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.distributions.Categorical(probs=1.0 / torch.arange(1, V + 1).double()).sample((n,))
    perm = torch.randperm(V, generator=g)
    data = perm[ranks.clamp(max=V - 6)]  # the 5 rarest ranks never occur: zero counts
    return data, torch.bincount(data, minlength=V)


# ------------------------------------------------------------------ smooth_counts


def test_smooth_counts_add_and_floor():
    c = torch.tensor([4, 0, 2, 0])
    assert smooth_counts(c).tolist() == [5.0, 1.0, 3.0, 1.0]
    assert smooth_counts(c, k=0.5).tolist() == [4.5, 0.5, 2.5, 0.5]
    assert smooth_counts(c, mode="floor").tolist() == [4.0, 1.0, 2.0, 1.0]  # half of the smallest positive (2)
    assert smooth_counts([0.2, 0.0, 0.8], mode="floor").tolist() == [0.2, 0.1, 0.8]  # scale-free default
    assert smooth_counts(c, k=3.0, mode="floor").tolist() == [4.0, 3.0, 3.0, 3.0]
    out = smooth_counts(c, mode="floor")
    assert out.dtype == torch.float64 and bool((out > 0).all())


@pytest.mark.parametrize("counts, kw, exc, match", [
    ([1, -1], {}, ValueError, r"counts must be >= 0, got counts\[1\] = -1"),
    ([0, 0], {}, ValueError, "at least one positive"),
    ([1.0, float("nan")], {}, ValueError, "finite"),
    ([[1, 2]], {}, ValueError, "1-D"),
    ([3], {}, ValueError, "at least 2"),
    ("12", {}, TypeError, "counts"),
    (torch.tensor([True, False]), {}, TypeError, "real"),
    ([1, 0], {"mode": "laplace"}, ValueError, "mode must be"),
    ([1, 0], {"k": 0.0}, ValueError, "k must be"),
    ([1, 0], {"k": "1"}, TypeError, "k must be"),
])
def test_smooth_counts_bad_input(counts, kw, exc, match):
    with pytest.raises(exc, match=match):
        smooth_counts(counts, **kw)


# ------------------------------------------------------------------ FrequencyOrder


def test_from_counts_is_a_stable_frequency_sort():
    order = FrequencyOrder.from_counts(torch.tensor([2, 0, 5, 2, 0, 1]))
    assert order.new_to_old.tolist() == [2, 0, 3, 5, 1, 4]  # ties keep the tokenizer's order
    assert order.counts.tolist() == [5, 2, 2, 1, 0, 0]
    assert order.old_to_new[order.new_to_old].tolist() == list(range(6))
    assert len(order) == order.num_classes == 6 and "6" in repr(order)


def test_encode_decode_round_trip_and_sorted_counts():
    data, counts = _own_tokenizer_counts()
    order = FrequencyOrder.from_counts(counts)
    enc = order.encode(data)
    assert torch.equal(order.decode(enc), data) and enc.dtype == data.dtype
    new_counts = torch.bincount(enc, minlength=30).double()
    assert torch.equal(new_counts, order.counts)
    assert bool((new_counts[:-1] >= new_counts[1:]).all())
    ids2d = data[:20].reshape(4, 5).int()
    assert order.encode(ids2d).shape == (4, 5) and order.encode(ids2d).dtype == torch.int32


def test_encode_keeps_ignore_index_and_checks_range():
    order = FrequencyOrder.from_counts([1, 5, 0])
    assert order.encode(torch.tensor([0, -100, 2]), ignore_index=-100).tolist() == [1, -100, 2]
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 2\]"):
        order.encode(torch.tensor([0, -100]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        order.decode(torch.tensor([3]))
    with pytest.raises(TypeError, match="integer"):
        order.encode(torch.tensor([0.0]))
    with pytest.raises(TypeError, match="integer"):
        order.encode([0, 1])


def test_remap_rows_keeps_every_lookup():
    data, counts = _own_tokenizer_counts()
    order = FrequencyOrder.from_counts(counts)
    old = nn.Embedding(30, 4)
    new = nn.Embedding(30, 4)
    with torch.no_grad():
        new.weight.copy_(order.remap_rows(old.weight))
    assert torch.equal(new(order.encode(data)), old(data))
    assert torch.equal(order.remap_rows(order.remap_rows(old.weight), inverse=True), old.weight.detach())
    w = old.weight.detach().clone()
    assert order.remap_(w) is w and torch.equal(w, new.weight.detach())
    with pytest.raises(ValueError, match="num_classes=30 rows"):
        order.remap_rows(torch.zeros(29, 4))
    with pytest.raises(TypeError, match="rows must be"):
        order.remap_rows([1.0] * 30)


def test_remap_state_dict_moves_a_trained_head_to_sorted_ids():
    data, counts = _own_tokenizer_counts()
    order = FrequencyOrder.from_counts(counts)
    torch.manual_seed(0)
    head_old = H.FullSoftmax(4, 30)
    h = torch.randn(7, 4)
    sd = order.remap_state_dict(head_old.state_dict(), ["weight", "bias"])
    assert set(sd) == set(head_old.state_dict())
    head_new = H.FullSoftmax(4, 30)
    head_new.load_state_dict(sd)
    y = data[:7]
    assert torch.allclose(head_new.target_log_prob(h, order.encode(y)), head_old.target_log_prob(h, y))
    assert torch.allclose(head_new.log_prob(h)[:, order.old_to_new], head_old.log_prob(h))
    with pytest.raises(ValueError, match="'rows.weight' is not in state_dict"):
        order.remap_state_dict(head_old.state_dict(), ["rows.weight"])
    with pytest.raises(TypeError, match="state_dict must be"):
        order.remap_state_dict([], ["weight"])


def test_state_dict_round_trip_and_bad_permutations():
    order = FrequencyOrder.from_counts([3, 0, 7, 1])
    back = FrequencyOrder.from_state_dict(order.state_dict())
    assert torch.equal(back.new_to_old, order.new_to_old) and torch.equal(back.counts, order.counts)
    assert FrequencyOrder.from_state_dict({"new_to_old": torch.tensor([1, 0])}).counts is None
    with pytest.raises(ValueError, match="permutation of 0..2"):
        FrequencyOrder(torch.tensor([0, 0, 2]))
    with pytest.raises(TypeError, match="integer"):
        FrequencyOrder(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="new_to_old"):
        FrequencyOrder.from_state_dict({"order": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="length num_classes=2"):
        FrequencyOrder(torch.tensor([1, 0]), counts=[1, 2, 3])


def test_top_level_exports():
    assert bigsoftmax.FrequencyOrder is FrequencyOrder and bigsoftmax.smooth_counts is smooth_counts
    assert "vocab" in bigsoftmax.__all__


# ------------------------------------------------------------------ heads with zero counts


def test_hierarchical_softmax_takes_zero_counts_and_puts_unseen_classes_deepest():
    data, counts = _own_tokenizer_counts()
    assert int((counts == 0).sum()) == 5
    head = H.HierarchicalSoftmax(8, counts)  # was: "counts must be positive"
    depth = head.leaf_depth
    loss = head(torch.randn(data.numel(), 8), data)
    assert torch.isfinite(loss)
    loss.backward()
    zero = counts == 0
    assert int(depth[zero].min()) >= int(depth[~zero].max()) - 1  # Huffman: the rarest classes sit deepest
    lp = head.eval().log_prob(torch.randn(3, 8))
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3, dtype=lp.dtype), atol=1e-5)
    same = H.HierarchicalSoftmax(8, smooth_counts(counts, mode="floor"))
    assert torch.equal(same.leaf_depth, head.leaf_depth)  # the documented floor, nothing else


def test_class_based_softmax_takes_zero_counts():
    data, counts = _own_tokenizer_counts()
    head = H.ClassBasedSoftmax(8, counts=counts)
    assert torch.isfinite(head(torch.randn(data.numel(), 8), data))


def test_adaptive_softmax_with_frequency_order_and_zero_counts():
    data, counts = _own_tokenizer_counts()
    with pytest.raises(ValueError, match="FrequencyOrder") as e:
        H.AdaptiveSoftmax(8, 30, None, counts=counts)
    assert "np.float64" not in str(e.value)
    order = FrequencyOrder.from_counts(counts)
    head = H.AdaptiveSoftmax(8, 30, None, counts=order.counts)  # trailing zeros: floored before cutoffs
    assert torch.isfinite(head(torch.randn(data.numel(), 8), order.encode(data)))
    with pytest.raises(ValueError, match=r"counts must be positive, got -1 at class id 2"):
        bigsoftmax.heads.adaptive.choose_cutoffs([3.0, 2.0, -1.0], 8)


@pytest.mark.parametrize("cls", [H.NCE, H.SampledLogistic, H.NegativeSampling])
def test_noise_heads_refuse_zero_counts_at_construction(cls):
    counts = torch.tensor([5.0, 0, 3, 0, 2, 1, 7, 0])
    with pytest.raises(ValueError, match=r"counts has 3 zero entries \(class ids \[1, 3, 7\]\).*smooth_counts"):
        cls(4, 8, num_sampled=3, counts=counts, seed=0)
    head = cls(4, 8, num_sampled=3, counts=smooth_counts(counts), seed=0)
    loss = head(torch.randn(3, 4), torch.tensor([1, 3, 7]))  # targets of zero raw count now train
    assert torch.isfinite(loss)


def test_noise_head_error_lists_first_ids_and_allows_uniform_noise():
    counts = torch.zeros(20)
    counts[0] = 1.0
    with pytest.raises(ValueError, match=r"19 zero entries \(class ids \[1, 2, 3, 4, 5, 6, 7, 8\] and 11 more\)"):
        H.NCE(4, 20, num_sampled=3, counts=counts)
    head = H.NCE(4, 20, num_sampled=3, counts=counts, distortion=0.0, seed=0)  # 0 ** 0 = 1: uniform noise
    assert torch.isfinite(head(torch.randn(2, 4), torch.tensor([5, 19])))

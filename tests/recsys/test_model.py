"""TwoTower: towers, pooling, tied softmax weight, normalisation, gradients and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigsoftmax.recsys.model import TwoTower, masked_attention, masked_mean


def _inputs(N=4, L=5, V=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, V, (N, L), generator=g)
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]  # right-aligned
    return hist, mask


def test_mean_pooling_equals_manual_mean():
    torch.manual_seed(0)
    m = TwoTower(20, dim=8, hidden=())
    hist, mask = _inputs()
    E = m.item_embedding.weight
    pooled = torch.stack([E[h[k]].mean(0) for h, k in zip(hist, mask)])
    assert torch.allclose(m.user_vectors(hist, mask), m.mlp(pooled), atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_padding_is_ignored(pooling):
    torch.manual_seed(0)
    m = TwoTower(20, dim=8, pooling=pooling)
    hist, mask = _inputs()
    other = torch.where(mask, hist, (hist + 7) % 20)  # change only the padded positions
    assert torch.allclose(m.user_vectors(hist, mask), m.user_vectors(other, mask), atol=1e-6)


def test_item_table_is_the_softmax_weight_and_history_table():
    m = TwoTower(20, dim=8)
    assert m.output_weight is m.item_embedding.weight
    assert m.history_embedding is m.item_embedding
    assert sum(p.numel() for p in m.parameters() if p.shape == (20, 8)) == 20 * 8  # one table
    m2 = TwoTower(20, dim=8, share_history_embedding=False)
    assert m2.history_embedding is not m2.item_embedding
    m3 = TwoTower(20, dim=8, item_features=torch.rand(20, 3))
    assert m3.output_weight is None  # the item tower is no longer the table alone


def test_normalize_gives_unit_vectors_and_cosine_scores():
    torch.manual_seed(0)
    m = TwoTower(20, dim=8, normalize=True)
    hist, mask = _inputs()
    u = m.user_vectors(hist, mask)
    assert torch.allclose(u.norm(dim=1), torch.ones(4), atol=1e-6)
    v = m.item_vectors(torch.arange(20))
    assert torch.allclose(v.norm(dim=1), torch.ones(20), atol=1e-6)
    assert torch.allclose(m.score_items(u, 5, 12), u @ F.normalize(m.item_embedding.weight[5:12], dim=1).t(), atol=1e-6)
    assert m.row_transform is not None and TwoTower(20, dim=8).row_transform is None


def test_item_and_user_features():
    torch.manual_seed(0)
    feats = torch.rand(20, 3)
    m = TwoTower(20, dim=8, item_features=feats, user_feature_sizes=(3, 5), user_feature_dim=4)
    ids = torch.tensor([0, 7, 19])
    expect = m.item_embedding.weight[ids] + feats[ids] @ m.item_feature_proj.weight.t()
    assert torch.allclose(m.item_vectors(ids), expect, atol=1e-6)
    hist, mask = _inputs()
    uf = torch.tensor([[0, 4], [1, 0], [2, 3], [2, 1]])
    a = m.user_vectors(hist, mask, uf)
    b = m.user_vectors(hist, mask, uf.flip(0))
    assert a.shape == (4, 8) and not torch.allclose(a, b)


def test_gradcheck_pooling_float64():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    sc = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.tensor([[True, True, False, True], [False, False, False, True], [True] * 4])
    assert torch.autograd.gradcheck(lambda e, s: masked_attention(e, mask, s), (emb, sc))
    assert torch.autograd.gradcheck(lambda e: masked_mean(e, mask), (emb,))
    # the masked positions get exactly zero gradient
    masked_attention(emb, mask, sc).sum().backward()
    assert torch.all(sc.grad[~mask] == 0) and torch.all(emb.grad[~mask] == 0)


def test_bad_input():
    m = TwoTower(20, dim=8, user_feature_sizes=(3,))
    hist, mask = _inputs()
    uf = torch.zeros(4, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="empty history in row 2"):
        m.user_vectors(hist, mask.index_fill(0, torch.tensor([2]), False), uf)
    with pytest.raises(ValueError, match=r"history contains item id 20, outside the allowed range \[0, 20\)"):
        m.user_vectors(torch.where(mask, 20, hist), mask, uf)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        m.user_vectors(hist, mask.long(), uf)
    with pytest.raises(ValueError, match=r"user_features must be an int64 tensor \[N=4, F=1\]"):
        m.user_vectors(hist, mask)
    with pytest.raises(ValueError, match=r"user_features\[:, 0\] holds codes outside \[0, 3\)"):
        m.user_vectors(hist, mask, uf + 3)
    with pytest.raises(ValueError, match="contains item id -1"):
        m.item_vectors(torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer item ids"):
        m.item_vectors(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="pooling must be one of"):
        TwoTower(20, pooling="max")
    with pytest.raises(ValueError, match="num_items must be an int >= 2"):
        TwoTower(1)
    with pytest.raises(ValueError, match=r"item_features must be a \[num_items=20, G\]"):
        TwoTower(20, item_features=torch.rand(19, 2))

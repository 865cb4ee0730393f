"""The one class-row init / tying helper (heads/_init.py) and the scheme each head passes."""

import math

import pytest
import torch
from torch import nn

from bigsoftmax.heads import ArcFace, FullSoftmax, HierarchicalSoftmax, SampledSoftmax, SelfNormalizedSoftmax
from bigsoftmax.heads._init import init_class_rows, tie_class_rows


def test_normal_is_n01d_and_zero_bias():
    w, b = torch.empty(4000, 64), torch.full((4000,), 3.0)
    init_class_rows(w, b, generator=torch.Generator().manual_seed(0))
    assert abs(float(w.std()) - 1 / 8) < 0.002 and abs(float(w.mean())) < 0.002
    assert torch.equal(b, torch.zeros(4000))
    # isotropic: unit class centres point in every direction (mean direction ~ 0)
    assert float(nn.functional.normalize(w, dim=1).mean(0).norm()) < 0.05


def test_linear_is_nn_linear_bit_for_bit():
    torch.manual_seed(5)
    lin = nn.Linear(7, 11)
    torch.manual_seed(5)
    w, b = torch.empty(11, 7), torch.empty(11)
    init_class_rows(w, b, "linear")
    assert torch.equal(w, lin.weight.detach()) and torch.equal(b, lin.bias.detach())
    torch.manual_seed(5)
    head = FullSoftmax(7, 11)
    assert torch.equal(head.weight.detach(), lin.weight.detach()) and torch.equal(head.bias.detach(), lin.bias.detach())


def test_uniform_bounds_and_bias_value():
    w, b = torch.empty(500, 16), torch.empty(500)
    init_class_rows(w, b, "uniform", bias_value=-math.log(500), generator=torch.Generator().manual_seed(1))
    assert float(w.abs().max()) <= 0.25 and float(w.abs().max()) > 0.24
    assert torch.allclose(b, torch.full((500,), -math.log(500)))


def test_tied_weight_left_alone_and_selfnorm_generator():
    emb = nn.Parameter(torch.randn(20, 4))
    before = emb.detach().clone()
    h = SelfNormalizedSoftmax(4, 20, weight=emb)
    assert h.weight is emb and torch.equal(emb.detach(), before)
    a = SelfNormalizedSoftmax(4, 20, generator=torch.Generator().manual_seed(2))
    b = SelfNormalizedSoftmax(4, 20, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.weight, b.weight) and float(a.weight.detach().abs().max()) <= 0.5


@pytest.mark.parametrize("make", [
    lambda: SampledSoftmax(8, 300, 4, seed=0),
    lambda: ArcFace(8, 300),
    lambda: HierarchicalSoftmax(8, torch.arange(1.0, 301.0)),
])
def test_default_scheme_heads_match_the_helper(make):
    torch.manual_seed(9)
    head = make()
    torch.manual_seed(9)
    w = torch.empty_like(head.weight)
    init_class_rows(w)
    assert torch.equal(head.weight.detach(), w)


def test_tie_errors():
    with pytest.raises(TypeError, match="weight must be an nn.Parameter to tie to"):
        tie_class_rows(torch.zeros(3, 2), 3, 2)
    with pytest.raises(ValueError, match=r"weight must have shape \[num_classes=3, in_features=2\]"):
        tie_class_rows(nn.Parameter(torch.zeros(2, 3)), 3, 2)
    with pytest.raises(TypeError, match="weight must be floating point"):
        tie_class_rows(torch.zeros(3, 2, dtype=torch.long), 3, 2, plain_tensor="wrap")
    with pytest.raises(TypeError, match="tensor/Parameter"):
        tie_class_rows([[0.0]], 1, 1, plain_tensor="wrap")
    t = torch.zeros(3, 2)
    p = tie_class_rows(t, 3, 2, plain_tensor="wrap")
    assert isinstance(p, nn.Parameter) and p.data_ptr() == t.data_ptr()
    with pytest.raises(ValueError, match="scheme must be one of"):
        init_class_rows(t, None, "xavier")

import math

import numpy as np
import pytest
import torch

from bigsoftmax import heads as H
from bigsoftmax.lm.registry import (HEADS, HeadOptions, HeadUnavailableError, available_heads, build_head,
                                 default_cutoffs, default_num_sampled)

V, D = 300, 8
COUNTS = np.sort(np.random.default_rng(0).zipf(1.3, V).clip(max=10_000))[::-1].copy()
COUNTS[-1] = 0  # <unk> may have count 0 in training


@pytest.mark.parametrize("name", list(HEADS))
def test_every_available_head_builds_trains_and_evaluates_exactly(name):
    if name not in available_heads():
        pytest.skip(f"{name} not implemented yet")
    torch.manual_seed(0)
    head = build_head(name, D, COUNTS, HeadOptions(num_sampled=20, seed=0))
    assert isinstance(head, H.Head) and head.num_classes == V and head.in_features == D
    h = torch.randn(6, D)
    y = torch.tensor([0, 1, 5, 50, 200, V - 1])
    loss = head(h, y)
    assert torch.isfinite(loss)
    loss.backward()
    with torch.no_grad():
        lp = head.log_prob(h)
        torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(6), atol=1e-4, rtol=0)  # normalised
        torch.testing.assert_close(head.target_log_prob(h, y), lp.gather(1, y[:, None])[:, 0], atol=1e-4, rtol=1e-4)


def test_sampling_defaults_and_nce_bias_start():
    if "nce" not in available_heads():
        pytest.skip("NCE not implemented yet")
    s = build_head("sampled", D, COUNTS)
    assert s.num_sampled == default_num_sampled(V) == V // 16
    n = build_head("nce", D, COUNTS, HeadOptions(num_sampled=10))
    assert torch.allclose(n.bias, torch.full((V,), -math.log(V)))  # self-normalised start


def test_sparse_option_reaches_the_head():
    h = build_head("sampled", D, COUNTS, HeadOptions(num_sampled=10, sparse=True))
    assert h.sparse and len(h.sparse_parameters()) == 2


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown head 'bogus'; known heads: full, sampled"):
        build_head("bogus", D, COUNTS)
    with pytest.raises(ValueError, match="num_sampled=300 must be < the vocabulary size 300"):
        build_head("sampled", D, COUNTS, HeadOptions(num_sampled=V))
    with pytest.raises(ValueError, match="sampler must be one of"):
        build_head("sampled", D, COUNTS, HeadOptions(sampler="zipf"))
    with pytest.raises(ValueError, match="counts must be a 1-D"):
        build_head("sampled", D, np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        build_head("sampled", D, -np.ones(10))
    with pytest.raises(ValueError, match="in_features"):
        build_head("sampled", 0, COUNTS)


def test_unavailable_head_is_reported_not_crashing(monkeypatch):
    monkeypatch.delattr(H, "SampledSoftmax")
    assert "sampled" not in available_heads()
    with pytest.raises(HeadUnavailableError, match="head 'sampled' is unavailable"):
        build_head("sampled", D, COUNTS)


def test_default_cutoffs_are_valid():
    for v in (10, 1000, 42370, 10**6):
        c = default_cutoffs(v)
        assert 0 < c[0] and all(a < b for a, b in zip(c, c[1:])) and c[-1] < v

"""state_dict of tree heads (the tree) and of sampling heads (the generator): issue 13 item 5."""

import io

import pytest
import torch

from bigsoftmax import heads as H

D, V = 8, 40


def _counts(v=V):
    return torch.arange(v, 0, -1).double()


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("make", [
    lambda c: H.HierarchicalSoftmax(D, c),
    lambda c: H.HierarchicalSoftmax(D, c, arity=3),
    lambda c: H.ClassBasedSoftmax(D, counts=c),
], ids=["hsm-binary", "hsm-3ary", "class-based"])
def test_tree_is_in_state_dict_and_a_different_tree_is_refused(make):
    head = make(_counts())
    state = _roundtrip(head.state_dict())
    assert {"weight", "leaf_slot", "slot_node", "node_arity"} <= set(state)
    same = make(_counts())
    same.load_state_dict(state)  # same counts: loads
    torch.testing.assert_close(same.weight, head.weight)
    other_counts = _counts().clone()
    other_counts[0], other_counts[-1] = 1.0, 100.0  # the same V, another Huffman code / clustering
    other = make(other_counts)
    w0 = other.weight.detach().clone()
    with pytest.raises(RuntimeError, match="different tree"):
        other.load_state_dict(state)
    torch.testing.assert_close(other.weight, w0)  # refused before anything was copied


def test_weights_only_tree_checkpoint_still_loads():
    head = H.HierarchicalSoftmax(D, _counts())
    old = {k: v for k, v in head.state_dict().items() if k in ("weight", "bias")}  # an old checkpoint
    fresh = H.HierarchicalSoftmax(D, _counts())
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.weight, head.weight)
    h, y = torch.randn(5, D), torch.randint(0, V, (5,))
    torch.testing.assert_close(fresh(h, y), head(h, y))


@pytest.mark.parametrize("make", [
    lambda: H.SampledSoftmax(D, V, num_sampled=6, seed=3),
    lambda: H.NCE(D, V, num_sampled=6, seed=3),
    lambda: H.ArcFace(D, V, num_sampled=6, seed=3),
], ids=["sampled", "nce", "arcface-partial-fc"])
def test_sampling_head_resumes_its_candidate_stream(make):
    head = make()
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(3):  # train k steps
        loss = head(torch.randn(4, D, generator=g), torch.randint(0, V, (4,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = _roundtrip(head.state_dict())
    assert "_extra_state" in state
    fresh = make()
    fresh.generator.manual_seed(12345)  # a different stream until the state is loaded
    fresh.load_state_dict(state)
    y = torch.randint(0, V, (4, 1), generator=g)
    for _ in range(2):  # the next draws are identical
        a, b = head.draw(y), fresh.draw(y)
        for s, t in zip(a, b):
            torch.testing.assert_close(s, t)


def test_weights_only_sampling_checkpoint_still_loads_and_bad_extra_state_is_refused():
    head = H.SampledSoftmax(D, V, num_sampled=6, seed=3)
    weights = {k: v for k, v in head.state_dict().items() if k != "_extra_state"}
    fresh = H.SampledSoftmax(D, V, num_sampled=6, seed=4)
    fresh.load_state_dict(weights)  # strict, no generator state: the head keeps its own stream
    torch.testing.assert_close(fresh.weight, head.weight)
    with pytest.raises(RuntimeError, match="generator state"):
        fresh.load_state_dict({**weights, "_extra_state": {"format": "something else"}})
    with pytest.raises(RuntimeError, match="not a valid generator state"):
        fresh.load_state_dict({**weights, "_extra_state": torch.zeros(3, dtype=torch.uint8)})

"""torch.compile of the heads: no graph break in a training step, compiled == eager (issue 13 items 1, 2).

Tiny sizes and the ``aot_eager`` backend (forward and backward traced by AOTAutograd, no codegen) keep
this fast; ``torch._dynamo.reset()`` between cases.
"""

import pytest
import torch

import bigsoftmax
from bigsoftmax import heads as H
from bigsoftmax._validate import check_target

V, D, N = 50, 8, 6


def _counts():
    return torch.arange(V, 0, -1).double()


HEADS = {
    "SampledSoftmax": lambda: H.SampledSoftmax(D, V, num_sampled=10, seed=0),
    "FullSoftmax": lambda: H.FullSoftmax(D, V),
    "AdaptiveSoftmax": lambda: H.AdaptiveSoftmax(D, V, cutoffs=[10, 30], div_value=2.0),
    "HierarchicalSoftmax": lambda: H.HierarchicalSoftmax(D, _counts()),
    "NCE": lambda: H.NCE(D, V, num_sampled=10, seed=0),
    "ArcFace": lambda: H.ArcFace(D, V),
    "ArcFace-partialfc": lambda: H.ArcFace(D, V, s=8.0, num_sampled=10, seed=0),
}


def _make(name):
    torch.manual_seed(0)
    return HEADS[name]()


def _batch(g, ignore=False):
    h = torch.randn(N, D, generator=g).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    if ignore:
        y[1] = -100
    return h, y


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    bigsoftmax.set_validation("eager")


@pytest.mark.parametrize("name", sorted(HEADS))
def test_training_forward_has_no_graph_break(name):
    head = _make(name)
    h, y = _batch(torch.Generator().manual_seed(1))
    ex = torch._dynamo.explain(lambda h, y: head(h, y))(h, y)
    assert ex.graph_break_count == 0, [str(r.reason)[:200] for r in ex.break_reasons]
    assert ex.graph_count == 1


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("ignore", [False, True], ids=["all-kept", "ignored-row"])
def test_compiled_step_equals_eager(name, ignore):
    """fullgraph=True (any graph break raises); forward + backward through AOTAutograd; two steps, so
    the sampling heads' generators advance identically (same seed -> same candidates -> same loss)."""
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        head = _make(name)
        step = (lambda h, y: head(h, y))
        if compiled:
            step = torch.compile(step, backend="aot_eager", fullgraph=True)
        g = torch.Generator().manual_seed(1)
        out = []
        for _ in range(2):
            h, y = _batch(g, ignore)
            loss = step(h, y)
            loss.backward()
            out.append((loss.detach(), h.grad.clone(), [p.grad.clone() for p in head.parameters()]))
            head.zero_grad()
        runs.append(out)
    for (le, he, pe), (lc, hc, pc) in zip(*runs):
        torch.testing.assert_close(lc, le, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(hc, he, atol=1e-6, rtol=1e-6)
        for a, b in zip(pc, pe):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_device_mode_compiles_without_break_and_asserts_in_eager():
    head = _make("FullSoftmax")
    h, y = _batch(torch.Generator().manual_seed(1))
    with bigsoftmax.validation("device"):
        ex = torch._dynamo.explain(lambda h, y: head(h, y))(h, y)
        assert ex.graph_break_count == 0
        bad = y.clone()
        bad[0] = V  # out of range: a device-side assert (RuntimeError on CPU), not the host ValueError
        with pytest.raises(RuntimeError, match=r"target contains a class id outside the allowed range \[0, 50\)"):
            head(h, bad)


def test_validation_modes():
    assert bigsoftmax.get_validation() == "eager"
    bad = torch.tensor([0, V])
    with pytest.raises(ValueError, match=r"class id 50, outside the allowed range \[0, 50\)"):
        check_target(bad, V)
    with bigsoftmax.validation("off"):
        assert bigsoftmax.get_validation() == "off"
        check_target(bad, V)  # value checks off: no error, no sync
        with bigsoftmax.validation("device"):
            assert bigsoftmax.get_validation() == "device"
        assert bigsoftmax.get_validation() == "off"
    assert bigsoftmax.get_validation() == "eager"
    with pytest.raises(TypeError, match="integer class ids"):  # dtype checks always run
        with bigsoftmax.validation("off"):
            check_target(torch.tensor([0.5]), V)
    with pytest.raises(ValueError, match=r"mode must be one of \('eager', 'device', 'off'\)"):
        bigsoftmax.set_validation("fast")
    with pytest.raises(ValueError, match="mode must be one of"):
        bigsoftmax.validation("on")
    assert bigsoftmax.get_validation() == "eager"

"""ops/_opaque: a kernel called as an opaque custom op under torch.compile runs its forward once per
step (the backward reuses the kept autograd graph), falls back to recomputation when the graph is gone,
and keeps nothing once a step's outputs are freed."""

import gc

import pytest
import torch

from bigsoftmax.ops import _opaque
from bigsoftmax.ops._opaque import call_opaque, register_opaque

CALLS = {"n": 0}


def _kernel(x, w):
    CALLS["n"] += 1
    z = x @ w.t()
    return (torch.logsumexp(z, dim=1), z.amax(1))


def _fake(x, w):
    return (x.new_empty(x.shape[0]), x.new_empty(x.shape[0]))


H = register_opaque(("test_opaque_kernel",), _kernel, _fake)


def _loss(x, w):
    lse, mx = call_opaque(H, [x, w])
    return lse.sum() + 0.5 * mx.sum()


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    CALLS["n"] = 0
    yield
    torch._dynamo.reset()


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    return x, w


def _reference(x, w):
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    z = xr @ wr.t()
    (torch.logsumexp(z, 1).sum() + 0.5 * z.amax(1).sum()).backward()
    return xr.grad, wr.grad


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_step_runs_the_kernel_once_and_matches_autograd(backend):
    step = torch.compile(_loss, backend=backend, fullgraph=True)
    x, w = _data()
    step(x, w).backward()  # compiles (tracing uses the fake, not the kernel)
    x.grad = w.grad = None
    CALLS["n"] = 0
    step(x, w).backward()
    assert CALLS["n"] == 1, "the backward re-ran the kernel's forward"
    gx, gw = _reference(x, w)
    torch.testing.assert_close(x.grad, gx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w.grad, gw, rtol=1e-12, atol=1e-12)
    assert not _opaque._GRAPHS, "a kept graph outlived its backward"


def test_backward_recomputes_when_the_kept_graph_is_gone():
    x, w = _data()
    loss = _loss(x, w)
    assert CALLS["n"] == 1 and len(_opaque._GRAPHS) == 1
    _opaque._GRAPHS.clear()  # e.g. the key tensor was copied by a compiler and the original freed
    loss.backward()
    assert CALLS["n"] == 2
    gx, gw = _reference(x, w)
    torch.testing.assert_close(x.grad, gx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w.grad, gw, rtol=1e-12, atol=1e-12)


def test_a_forward_without_backward_keeps_nothing_once_freed():
    x, w = _data()
    loss = _loss(x, w)
    assert len(_opaque._GRAPHS) == 1
    del loss
    gc.collect()
    assert not _opaque._GRAPHS
    with torch.no_grad():  # no input needs a gradient: nothing is kept at all
        _loss(x, w)
    assert not _opaque._GRAPHS

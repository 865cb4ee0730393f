"""The sync-free (fixed-shape) paths of ``ops/lse.py`` against its CPU paths (issue 13 item 2).

Every mode of the two kernels — vocabulary slicing, row blocks, precompute, stored and recomputed
exponentials, ``exclude_target`` — under :class:`~bigsoftmax._validate.force_sync_free` must give the
CPU path's loss and gradients (float64, 1e-10) and make no host sync, with ignored rows, class
weights, label smoothing, every reduction, an all-ignored batch and upstream gradients of mixed sign
and zeros (the dense coefficients' sign / zero handling).
"""

import pytest
import torch

import bigsoftmax
from bigsoftmax._validate import force_sync_free
from bigsoftmax.ops.lse import linear_cross_entropy, linear_logsumexp

from .._host_sync import count_host_syncs

V, D, N = 37, 6, 11


def _data(ignore, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    W = torch.randn(V, D, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (N,), generator=g)
    if ignore == "some":
        y[[0, 4, 5]] = -100
    elif ignore == "all":
        y[:] = -100
    return x, W, b, y


def _run(fn, tensors, sf, upstream=None):
    ts = [t.clone().requires_grad_() for t in tensors]
    with bigsoftmax.validation("off"), force_sync_free(sf), count_host_syncs() as syncs:
        out = fn(*ts)
        outs = out if isinstance(out, tuple) else (out,)
        outs = [o for o in outs if o is not None]
        ups = upstream(outs) if upstream is not None else [torch.ones_like(o) for o in outs]
        grads = torch.autograd.grad(outs, ts, ups, allow_unused=True)
    return [o.detach() for o in outs], grads, syncs


def _same(fn, tensors, upstream=None):
    o0, g0, _ = _run(fn, tensors, False, upstream)
    o1, g1, syncs = _run(fn, tensors, True, upstream)
    assert not syncs, "\n".join(f"{op}: {w}" for op, w in syncs)
    for a, b in zip(o0, o1):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, equal_nan=True)
    for a, b in zip(g0, g1):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, equal_nan=True)


MODES = {"slices": dict(chunk_size=7), "rowblock": dict(), "precompute": dict(chunk_size=7, precompute=True)}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", ["none", "some", "all"])
@pytest.mark.parametrize("extras", ["plain", "weights+smoothing"])
def test_linear_cross_entropy_sync_free_equals_cpu_path(mode, reduction, ignore, extras):
    if mode == "precompute" and reduction == "none":
        pytest.skip("precompute needs a scalar loss")
    x, W, b, y = _data(ignore)
    kw = dict(MODES[mode], reduction=reduction)
    if extras != "plain":
        kw.update(weight_class=torch.linspace(0.2, 3.0, V, dtype=torch.float64), label_smoothing=0.2)
    # mixed-sign upstream for 'none' (negative and zero rows reach the dense coefficients)
    up = (lambda outs: [torch.linspace(-1.0, 1.0, N, dtype=torch.float64)]) if reduction == "none" else None
    _same(lambda x, W, b: linear_cross_entropy(x, W, b, y, **kw), (x, W, b), up)


def test_linear_cross_entropy_retained_graph_rowblock_rerun():
    x, W, b, y = _data("some")

    def twice(sf):
        ts = [t.clone().requires_grad_() for t in (x, W, b)]
        with bigsoftmax.validation("off"), force_sync_free(sf), count_host_syncs() as syncs:
            loss = linear_cross_entropy(*ts, y)
            g1 = torch.autograd.grad(loss, ts, retain_graph=True)
            g2 = torch.autograd.grad(loss * 3.0, ts)
        return g1, g2, syncs

    a1, a2, _ = twice(False)
    b1, b2, syncs = twice(True)
    assert not syncs
    for u, v in zip(a1 + a2, b1 + b2):
        torch.testing.assert_close(v, u, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("exclude_target", [False, True])
@pytest.mark.parametrize("chunk", [5, None])
def test_linear_logsumexp_sync_free_equals_cpu_path(recompute, exclude_target, chunk):
    x, W, b, y = _data("none")

    def up(outs):  # upstream with negative and zero rows: sign and skip handling of dense_grads
        g = torch.linspace(-1.0, 1.0, N, dtype=torch.float64)
        g[3] = 0.0
        return [g] + [torch.ones_like(o) for o in outs[1:]]

    _same(lambda x, W, b: linear_logsumexp(x, W, b, y, chunk_size=chunk, recompute=recompute,
                                           exclude_target=exclude_target), (x, W, b), up)

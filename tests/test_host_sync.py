"""No host synchronisation in a training step (issue 13 item 2: "CUDA-ready").

A host sync (``bool(t)``, ``int(t)``, ``.tolist()``, ``nonzero``, ``unique``, …) stalls an accelerator's
host every step. The kernels take their fixed-shape paths on any non-CPU device (``_validate.sync_free``);
``force_sync_free`` makes them take those paths on CPU, where ``tests/_host_sync.count_host_syncs``
sees every host read through the dispatcher, backward included. Each case checks two things:

* the count of host syncs of one forward + backward under ``validation("off")`` and ``("device")``
  is the head's budget (0, except where a sync is inherent: see ``BUDGET``);
* the fixed-shape path gives the CPU path's loss and gradients (float64, 1e-10).
"""

import pytest
import torch

import bigsoftmax
from bigsoftmax import heads as H
from bigsoftmax._validate import force_sync_free

from ._host_sync import count_host_syncs

V, D, N = 50, 8, 12


def _counts():
    return torch.arange(V, 0, -1).double()


HEADS = {
    "SampledSoftmax": lambda: H.SampledSoftmax(D, V, num_sampled=10, seed=0),
    "SampledSoftmax-sparse": lambda: H.SampledSoftmax(D, V, num_sampled=10, seed=0, sparse=True),
    "SampledSoftmax-replacement": lambda: H.SampledSoftmax(D, V, num_sampled=10, seed=0,
                                                            sampler=bigsoftmax.samplers.LogUniform(V, unique=False)),
    "NCE": lambda: H.NCE(D, V, num_sampled=10, seed=0),
    "NegativeSampling": lambda: H.NegativeSampling(D, V, num_sampled=10, counts=_counts(), seed=0),
    "SampledLogistic": lambda: H.SampledLogistic(D, V, num_sampled=10, seed=0),
    "FullSoftmax": lambda: H.FullSoftmax(D, V),
    "FullSoftmax-smoothing": lambda: H.FullSoftmax(D, V, label_smoothing=0.1),
    "SelfNormalizedSoftmax": lambda: H.SelfNormalizedSoftmax(D, V),
    "AdaptiveSoftmax": lambda: H.AdaptiveSoftmax(D, V, cutoffs=[10, 30], div_value=2.0),
    "HierarchicalSoftmax": lambda: H.HierarchicalSoftmax(D, _counts()),
    "HierarchicalSoftmax-arity4": lambda: H.HierarchicalSoftmax(D, _counts(), arity=4),
    "ClassBasedSoftmax": lambda: H.ClassBasedSoftmax(D, _counts()),
    "HierarchicalSoftmax-sparse": lambda: H.HierarchicalSoftmax(D, _counts(), sparse=True),
    "TreeSoftmax": lambda: H.TreeSoftmax(D, bigsoftmax.trees.from_nested(
        [list(range(10)), [list(range(10, 20)), [20, 21, 22], list(range(23, 30))], list(range(30, V))])),
    "ArcFace": lambda: H.ArcFace(D, V),
    "ArcFace-partialfc": lambda: H.ArcFace(D, V, s=8.0, num_sampled=10, seed=0),
    "CosFace-partialfc-sparse": lambda: H.CosFace(D, V, s=8.0, num_sampled=10, seed=0, sparse=True),
    "CosFace-sampled-logq": lambda: H.CosFace(D, V, s=8.0, num_sampled=10, seed=0, sampler=bigsoftmax.samplers.LogUniform(V),
                                              include_batch_positives=False, subtract_log_q=True),
    "SampledSoftmax-learned": lambda: H.SampledSoftmax(D, V, num_sampled=10, seed=0,
                                                        sampler=bigsoftmax.samplers.LearnedUnigram(V)),
    "CosFace": lambda: H.CosFace(D, V),
    "WeightedSoftmax": lambda: H.WeightedSoftmax(D, V, class_weights=torch.linspace(0.5, 2.0, V)),
    "SoftSoftmax": lambda: H.SoftSoftmax(D, V, temperature=2.0, label_smoothing=0.1),
    "L2ConstrainedSoftmax": lambda: H.L2ConstrainedSoftmax(D, V, learn_alpha=True),
    "AdditiveMarginSoftmax": lambda: H.AdditiveMarginSoftmax(D, V),
    "SphereFace": lambda: H.SphereFace(D, V),
    "LargeMarginSoftmax": lambda: H.LargeMarginSoftmax(D, V),
}

#: host syncs a training step may make, where one is inherent (say why)
BUDGET = {
    # rows go to the tail their target falls in: the tails' row counts size the tail GEMMs, one
    # .tolist() of n_clusters + 1 ints per step (torch.nn.AdaptiveLogSoftmaxWithLoss needs one per tail)
    "AdaptiveSoftmax": 1,
    # the learned sampler's draws take a Python-int randint bound: the new total is one int(mask.sum())
    "SampledSoftmax-learned": 1,
}

def _make(name):
    torch.manual_seed(0)
    return HEADS[name]().double()


def _batch(ignore):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(N, D, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    if ignore:
        y[[1, 5]] = -100
    return h, y


def _step(name, ignore, mode, sync_free):
    head = _make(name)
    h, y = _batch(ignore)
    with bigsoftmax.validation(mode), force_sync_free(sync_free), count_host_syncs() as syncs:
        loss = head(h, y)
        loss.backward()
    grads = [h.grad] + [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in head.parameters()
                        if p.grad is not None]
    return loss.detach(), grads, syncs


@pytest.mark.parametrize("mode", ["off", "device"])
@pytest.mark.parametrize("ignore", [False, True], ids=["all-kept", "ignored-rows"])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_training_step_makes_no_host_sync(name, ignore, mode):
    *_, syncs = _step(name, ignore, mode, True)
    assert len(syncs) <= BUDGET.get(name, 0), "\n".join(f"{op}: {where}" for op, where in syncs)


@pytest.mark.parametrize("ignore", [False, True], ids=["all-kept", "ignored-rows"])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_sync_free_path_gives_the_cpu_path_numbers(name, ignore):
    loss0, g0, _ = _step(name, ignore, "eager", False)
    loss1, g1, _ = _step(name, ignore, "eager", True)
    torch.testing.assert_close(loss1, loss0, rtol=1e-10, atol=1e-12)
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_counter_sees_host_reads_in_backward_and_python():
    """The counter itself: it must see a bool() inside a custom backward and a .tolist()."""

    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            bool(g.sum() > 0)
            return g * 2

    x = torch.randn(4, requires_grad=True)
    with count_host_syncs() as syncs:
        y = F.apply(x)
        y.tolist()
        x[x > 0]
        torch.unique(x)
        y.sum().backward()
    ops = [op for op, _ in syncs]
    assert ops.count("_local_scalar_dense") == 1 and "tolist" in ops and "_unique2" in ops
    assert any(op.startswith("index") for op in ops)


def test_diagnostics_counter_forces_the_accelerator_paths_and_checks_its_argument():
    from bigsoftmax import _validate
    from bigsoftmax.diagnostics import count_host_syncs as public

    with public() as syncs:
        assert _validate.sync_free()
    assert syncs == [] and not _validate.sync_free()
    with force_sync_free(), public(sync_free=None):
        assert _validate.sync_free()
    with public(sync_free=False):
        assert not _validate.sync_free()
    with pytest.raises(TypeError, match="sync_free must be a bool or None"):
        public(sync_free="yes")


@pytest.mark.parametrize("name", ["SampledSoftmax-learned", "ArcFace-partialfc"])
def test_sync_free_step_teaches_a_learned_sampler_only_the_kept_rows(name):
    """The fixed-shape step keeps ignored rows on class 0: neither the learned sampler's counts
    nor the batch positives of Partial FC may see them (same counts, total and tree; the draws
    themselves differ: the fixed-shape unique draw consumes a block of the generator's stream)."""
    states = []
    for sf in (False, True):
        head = _make(name)
        if name.startswith("ArcFace"):
            head.sampler = bigsoftmax.samplers.LearnedUnigram(V)
        h, y = _batch(True)
        with force_sync_free(sf):
            head(h, y).backward()
            states.append((head.sampler.counts.clone(), head.sampler._total, head.sampler._tree.clone()))
    (c0, t0, d0), (c1, t1, d1) = states
    assert torch.equal(c0, c1) and t0 == t1 and torch.equal(d0, d1)

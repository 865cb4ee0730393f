"""Module-level (spawn-importable) workers of tests/parallel/test_ddp.py."""

import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import bigsoftmax.heads as H
from bigsoftmax import trees

D, V, N, STEPS, LR = 6, 40, 12, 3, 0.2
COUNTS = [float(100 // (i + 1) + 1) for i in range(V)]

#: every concrete head of bigsoftmax.heads (dense), plus the sparse variants where supported.
#: Sampling heads: the same seed on every rank -> the same candidates on every rank and in the
#: one-process reference; the loss is a mean over the local half batch, so DDP's gradient average
#: equals the full-batch mean. Margin heads sample without batch positives (those depend on the batch).
CASES = {
    "FullSoftmax": lambda: H.FullSoftmax(D, V, label_smoothing=0.2, class_weight=torch.ones(V)),
    "SelfNormalizedSoftmax": lambda: H.SelfNormalizedSoftmax(D, V, alpha=0.5),
    "AdaptiveSoftmax": lambda: H.AdaptiveSoftmax(D, V, [5, 20], div_value=2.0),
    "SampledSoftmax": lambda: H.SampledSoftmax(D, V, num_sampled=8, seed=0),
    "SampledSoftmax/sparse": lambda: H.SampledSoftmax(D, V, num_sampled=8, seed=0, sparse=True),
    "NCE": lambda: H.NCE(D, V, num_sampled=8, seed=0),
    "NCE/sparse": lambda: H.NCE(D, V, num_sampled=8, seed=0, sparse=True),
    "SampledLogistic/sparse": lambda: H.SampledLogistic(D, V, num_sampled=8, seed=0, sparse=True),
    "SampledLogistic": lambda: H.SampledLogistic(D, V, num_sampled=8, seed=0),
    "NegativeSampling": lambda: H.NegativeSampling(D, V, num_sampled=8, counts=COUNTS, seed=0),
    "NegativeSampling/sparse": lambda: H.NegativeSampling(D, V, num_sampled=8, counts=COUNTS, seed=0, sparse=True),
    "TreeSoftmax": lambda: H.TreeSoftmax(D, trees.balanced(V, 3)),
    "TreeSoftmax/sparse": lambda: H.TreeSoftmax(D, trees.balanced(V, 3), sparse=True),
    "HierarchicalSoftmax": lambda: H.HierarchicalSoftmax(D, COUNTS),
    "HierarchicalSoftmax/sparse": lambda: H.HierarchicalSoftmax(D, COUNTS, sparse=True),
    "ClassBasedSoftmax": lambda: H.ClassBasedSoftmax(D, COUNTS),
    "ClassBasedSoftmax/sparse": lambda: H.ClassBasedSoftmax(D, COUNTS, sparse=True),
    "LargeMarginSoftmax": lambda: H.LargeMarginSoftmax(D, V, m=2),
    "AngularSoftmax": lambda: H.AngularSoftmax(D, V, m=2),
    "AdditiveMarginSoftmax": lambda: H.AdditiveMarginSoftmax(D, V, s=4.0, m=0.3),
    "CosFace": lambda: H.CosFace(D, V, s=4.0),
    "CosFace/sparse": lambda: H.CosFace(D, V, s=4.0, num_sampled=8, include_batch_positives=False, sparse=True,
                                        seed=0),
    "ArcFace": lambda: H.ArcFace(D, V, s=4.0, m=0.4),
    "ArcFace/sparse": lambda: H.ArcFace(D, V, s=4.0, m=0.4, num_sampled=8, include_batch_positives=False,
                                        sparse=True, seed=0),
    "L2ConstrainedSoftmax": lambda: H.L2ConstrainedSoftmax(D, V, alpha=3.0),
    "WeightedSoftmax": lambda: H.WeightedSoftmax(D, V, class_weights=torch.ones(V)),
    "SoftSoftmax": lambda: H.SoftSoftmax(D, V, temperature=2.0, label_smoothing=0.3),
}


def make(name):
    torch.manual_seed(0)
    head = CASES[name]().to(torch.float64)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype) * 0.3)
    return head


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    h = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (N,), generator=g)
    y[:N // 2] %= 5  # the first half hits only the shortlist: rank 0 sees no AdaptiveSoftmax tail
    return h, y


def train(head, rank=0, world=1, wrap=None):
    model = head if wrap is None else wrap(head)
    opt = torch.optim.SGD(head.parameters(), lr=LR)
    for step in range(STEPS):
        h, y = batch(step)
        n = N // world
        opt.zero_grad()
        model(h[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]).backward()
        for p in head.parameters():
            if p.grad is not None and not p.grad.is_sparse and p.grad.stride() != p.stride():
                raise AssertionError(f"grad strides {p.grad.stride()} != param strides {p.stride()}")
        opt.step()
    return {k: v.detach().clone() for k, v in head.state_dict().items() if v.is_floating_point()}


def ddp_worker(rank, world, names, out_path):
    results, msgs = {}, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in names:
            head = make(name)
            results[name] = train(head, rank, world, wrap=lambda m: DDP(m))
        msgs = [str(w.message) for w in caught]
    if rank == 0:
        torch.save({"params": results, "warnings": msgs}, out_path)
    dist.barrier()

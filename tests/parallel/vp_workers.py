"""Module-level (spawn-importable) workers of tests/parallel/test_vocab_parallel.py.

Each rank builds the single-process head with the concatenated weights (the reference, allowed at
test sizes), its own shard of it, and asserts equality itself (a failing rank fails run_local)."""

import torch

from bigsoftmax.heads import FullSoftmax
from bigsoftmax.parallel import VocabParallelFullSoftmax, comm

D, V, N = 16, 1001, 30
TOL = dict(rtol=0, atol=1e-10)


def _data(scale=1.0, ignore=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, V, (N,), generator=g)
    if ignore:
        y[torch.randperm(N, generator=g)[: N // 5]] = -100  # 20% ignored
    return h, y


def _ref(**kw):
    torch.manual_seed(0)
    ref = FullSoftmax(D, V, **kw).double()
    with torch.no_grad():
        ref.bias.normal_()
    return ref


def _check_step(ref, vp, h, y, lead=None):
    hr = h.clone().requires_grad_()
    hv = h.clone().requires_grad_()
    shape = (N,) if lead is None else lead
    lr = ref(hr.reshape(*shape, D), y.reshape(shape))
    comm.STATS.reset()
    lv = vp(hv.reshape(*shape, D), y.reshape(shape))
    fwd = comm.STATS.snapshot()
    g = torch.randn(lr.shape, dtype=lr.dtype, generator=torch.Generator().manual_seed(5)) if lr.dim() else None
    lr.backward(g)
    comm.STATS.reset()
    lv.backward(g)
    bwd = comm.STATS.snapshot()
    torch.testing.assert_close(lv, lr, **TOL)
    torch.testing.assert_close(hv.grad, hr.grad, **TOL)
    s, e = vp.vocab_start, vp.vocab_end
    torch.testing.assert_close(vp.weight.grad, ref.weight.grad[s:e], **TOL)
    torch.testing.assert_close(vp.bias.grad, ref.bias.grad[s:e], **TOL)
    for p in (ref.weight, ref.bias, vp.weight, vp.bias):
        p.grad = None
    return fwd, bwd


def full_worker(rank, world):
    # plain, 20% ignored, mean: 2 all-reduces forward ([N] max, [2, M] sum), 1 backward ([M, d])
    ref = _ref()
    vp = VocabParallelFullSoftmax.from_full(ref)
    assert vp.weight.shape[0] == vp.vocab_end - vp.vocab_start and vp.weight.shape[0] in (V // world, V // world + 1)
    h, y = _data()
    M = int((y != -100).sum())
    fwd, bwd = _check_step(ref, vp, h, y)
    assert fwd == {"calls": {"all_reduce": 2}, "bytes": {"all_reduce": 8 * M + 8 * 2 * M}}, fwd
    assert bwd == {"calls": {"all_reduce": 1}, "bytes": {"all_reduce": 8 * M * D}}, bwd
    # logits x1000 (no overflow), sum and none reductions, [B, T, d] input
    for red in ("sum", "none"):
        ref.reduction = vp.reduction = red
        _check_step(ref, vp, *_data(scale=1000.0, seed=1), lead=(5, 6))
    # label smoothing + class weights over the global vocabulary (one more row in the sum all-reduce each)
    cw = torch.rand(V, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
    ref = _ref(label_smoothing=0.3, class_weight=cw)
    vp = VocabParallelFullSoftmax.from_full(ref)
    fwd, _ = _check_step(ref, vp, *_data(seed=2))
    assert fwd["bytes"]["all_reduce"] == 8 * M + 8 * 4 * M and fwd["calls"]["all_reduce"] == 2, fwd
    # eval mode: the exact NLL, no smoothing / weights; target_log_prob, topk, log_prob block, log_normalizer
    ref.eval(), vp.eval()
    _check_step(ref, vp, *_data(seed=4))
    h, y = _data(seed=6)
    torch.testing.assert_close(vp.target_log_prob(h, y), ref.target_log_prob(h, y), **TOL)
    vr, ir = ref.topk(h, 7)
    vv, iv = vp.topk(h, 7)
    torch.testing.assert_close(vv, vr, **TOL)
    assert torch.equal(iv, ir)
    torch.testing.assert_close(vp.log_prob(h), ref.log_prob(h)[:, vp.vocab_start:vp.vocab_end], **TOL)
    torch.testing.assert_close(vp.log_normalizer(h), ref.log_normalizer(h), **TOL)
    assert torch.equal(vp.predict(h), ref.predict(h))


def _sampling_cases():
    from bigsoftmax import heads as H
    from bigsoftmax import parallel as P

    counts = [float(1000 // (i + 1) + 1) for i in range(V)]
    kw = dict(num_sampled=40, seed=3)
    return [
        ("SampledSoftmax", H.SampledSoftmax, P.VocabParallelSampledSoftmax, kw, "softmax"),
        ("SampledSoftmax/sparse", H.SampledSoftmax, P.VocabParallelSampledSoftmax, dict(kw, sparse=True), "softmax"),
        ("NCE", H.NCE, P.VocabParallelNCE, kw, "sigmoid"),
        ("SampledLogistic/sparse", H.SampledLogistic, P.VocabParallelSampledLogistic, dict(kw, sparse=True), "sigmoid"),
        ("NegativeSampling", H.NegativeSampling, P.VocabParallelNegativeSampling, dict(kw, counts=counts), "sigmoid"),
    ]


def _dense(t):
    return t.to_dense() if t.is_sparse else t


def sampling_worker(rank, world):
    for name, ref_cls, vp_cls, kw, kind in _sampling_cases():
        torch.manual_seed(0)
        ref = ref_cls(D, V, **kw).double()
        vp = vp_cls(D, V, **kw).double()
        with torch.no_grad():
            ref.bias.normal_(generator=torch.Generator().manual_seed(4))
            vp.weight.copy_(ref.weight[vp.vocab_start:vp.vocab_end])
            vp.bias.copy_(ref.bias[vp.vocab_start:vp.vocab_end])
        for step, scale in enumerate((1.0, 1000.0)):  # two steps: the generators advance in lockstep
            h, y = _data(scale=scale, seed=10 + step)
            M = int((y != -100).sum())
            hr, hv = h.clone().requires_grad_(), h.clone().requires_grad_()
            lr = ref(hr, y)
            comm.STATS.reset()
            lv = vp(hv, y)
            fwd = comm.STATS.snapshot()
            lr.backward()
            comm.STATS.reset()
            lv.backward()
            bwd = comm.STATS.snapshot()
            torch.testing.assert_close(lv, lr, **TOL, msg=name)
            torch.testing.assert_close(hv.grad, hr.grad, **TOL, msg=name)
            s, e = vp.vocab_start, vp.vocab_end
            assert vp.weight.grad.is_sparse == bool(kw.get("sparse")), name
            torch.testing.assert_close(_dense(vp.weight.grad), _dense(ref.weight.grad)[s:e], **TOL, msg=name)
            torch.testing.assert_close(_dense(vp.bias.grad), _dense(ref.bias.grad)[s:e], **TOL, msg=name)
            for p in (ref.weight, ref.bias, vp.weight, vp.bias):
                p.grad = None
            want_fwd = ({"all_reduce": 2}, 8 * M + 8 * 2 * M) if kind == "softmax" else ({"all_reduce": 1}, 8 * M)
            assert (fwd["calls"], fwd["bytes"].get("all_reduce")) == want_fwd, (name, fwd)
            assert bwd == {"calls": {"all_reduce": 1}, "bytes": {"all_reduce": 8 * M * D}}, (name, bwd)
        ref.eval(), vp.eval()
        h, y = _data(seed=20)
        torch.testing.assert_close(vp(h, y), ref(h, y), **TOL, msg=name)
        vr, ir = ref.topk(h, 5)
        vv, iv = vp.topk(h, 5)
        torch.testing.assert_close(vv, vr, **TOL, msg=name)
        assert torch.equal(iv, ir), name


def margin_worker(rank, world):
    from bigsoftmax import heads as H
    from bigsoftmax import parallel as P

    n = 8  # local batch; the reference sees the concatenated P * n rows
    for ref_cls, vp_cls, kw in ((H.ArcFace, P.VocabParallelArcFace, dict(s=8.0, m=0.4)),
                                (H.CosFace, P.VocabParallelCosFace, dict(s=8.0, m=0.3))):
        torch.manual_seed(0)
        ref = ref_cls(D, V, **kw).double()
        vp = vp_cls(D, V, sample_rate=1.0, **kw).double()
        with torch.no_grad():
            vp.weight.copy_(ref.weight[vp.vocab_start:vp.vocab_end])
        g = torch.Generator().manual_seed(30)
        H_all = torch.randn(world * n, D, generator=g, dtype=torch.float64)
        Y_all = torch.randint(0, V, (world * n,), generator=g)
        Y_all[::5] = -100
        hr = H_all.clone().requires_grad_()
        lr = ref(hr, Y_all)
        lr.backward()
        hv = H_all[rank * n:(rank + 1) * n].clone().requires_grad_()
        lv = vp(hv, Y_all[rank * n:(rank + 1) * n])
        lv.backward()
        torch.testing.assert_close(lv, lr, **TOL)
        torch.testing.assert_close(hv.grad, hr.grad[rank * n:(rank + 1) * n], **TOL)
        torch.testing.assert_close(vp.weight.grad, ref.weight.grad[vp.vocab_start:vp.vocab_end], **TOL)
        ref.eval(), vp.eval()
        loc = slice(rank * n, (rank + 1) * n)
        torch.testing.assert_close(vp(H_all[loc], Y_all[loc]), ref(H_all, Y_all), **TOL)
        torch.testing.assert_close(vp.target_log_prob(H_all[loc], Y_all[loc]),
                                   ref.target_log_prob(H_all, Y_all)[loc], **TOL)
        vv, iv = vp.topk(H_all[loc], 4)
        vr, ir = ref.topk(H_all, 4)
        torch.testing.assert_close(vv, vr[loc], **TOL)
        assert torch.equal(iv, ir[loc])
        # sample_rate < 1: positives kept, a fraction of the local negatives scored; finite, trains
        vp.train()
        part = vp_cls(D, V, sample_rate=0.3, seed=1, **kw).double()
        idx = part._local_centres(Y_all[Y_all != -100])
        own = part.in_shard(Y_all) & (Y_all != -100)
        assert set((Y_all[own] - part.vocab_start).tolist()) <= set(idx.tolist())
        assert idx.numel() == max(int(0.3 * part.local_classes), len(set((Y_all[own]).tolist())))
        loss = part(H_all[loc].requires_grad_(), Y_all[loc])
        loss.backward()
        assert torch.isfinite(loss) and part.weight.grad is not None


def checkpoint_worker(rank, world, tmp):
    import os

    import pytest
    import torch.distributed as dist

    from bigsoftmax.parallel import gather_checkpoint, shard_checkpoint

    cw = torch.rand(V, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
    ref = _ref(label_smoothing=0.1, class_weight=cw)
    vp = VocabParallelFullSoftmax.from_full(ref)
    torch.save(vp.state_dict(), os.path.join(tmp, f"head.rank{rank}.pt"))
    dist.barrier()
    # gather: the single-process head loads the joined shards and equals the reference
    state = gather_checkpoint([os.path.join(tmp, f"head.rank{r}.pt") for r in reversed(range(world))])
    one = FullSoftmax(D, V, label_smoothing=0.1, class_weight=torch.ones(V)).double()
    one.load_state_dict(state)
    for k, v in ref.state_dict().items():
        assert torch.equal(one.state_dict()[k], v), k
    # shard: a fresh vocab-parallel head loads its shard of the single-process state dict
    fresh = VocabParallelFullSoftmax(D, V, label_smoothing=0.1, class_weight=cw).double()
    fresh.load_state_dict(shard_checkpoint(ref.state_dict(), world)[rank])
    h, y = _data(seed=8)
    torch.testing.assert_close(fresh(h, y), ref(h, y), **TOL)
    # another world size, the wrong rank, a single-process file: clear errors naming the helper
    other = shard_checkpoint(ref.state_dict(), world + 1)
    with pytest.raises(ValueError, match=r"world size %d.*shard_checkpoint" % (world + 1)):
        fresh.load_state_dict(other[rank])
    with pytest.raises(ValueError, match=r"rank %d was given the checkpoint shard of rank" % rank):
        fresh.load_state_dict(shard_checkpoint(ref.state_dict(), world)[(rank + 1) % world])
    with pytest.raises(ValueError, match="single-process checkpoint.*shard_checkpoint"):
        fresh.load_state_dict(ref.state_dict())
    with pytest.raises(ValueError, match="every rank 0..%d exactly once" % (world - 1)):
        gather_checkpoint([os.path.join(tmp, "head.rank0.pt")] * world)
    if rank == 0:
        with pytest.raises(FileExistsError, match="overwrite=True"):
            gather_checkpoint([os.path.join(tmp, f"head.rank{r}.pt") for r in range(world)],
                              out=os.path.join(tmp, "head.rank0.pt"))
    dist.barrier()


def bad_input_worker(rank, world):
    import pytest

    from bigsoftmax import parallel as P

    table = [
        ("world size > V", lambda: VocabParallelFullSoftmax(D, world - 1), r"world size 3 exceeds num_classes=2"),
        ("shard sizes disagree", lambda: VocabParallelFullSoftmax(D, V + rank),
         r"shard sizes disagree across ranks: rank \d was built for num_classes="),
        ("hidden sizes", lambda: VocabParallelFullSoftmax(D + (rank == 1), V),
         r"mismatched hidden sizes across ranks: rank \d has in_features="),
        ("sampling seed", lambda: P.VocabParallelSampledSoftmax(D, V, 8), r"needs seed="),
        ("different seeds", lambda: P.VocabParallelNCE(D, V, 8, seed=rank), r"rank \d was built with"),
        ("partial-fc batch", lambda: P.VocabParallelArcFace(D, V)(torch.randn(4 + rank, D), torch.zeros(4 + rank).long()),
         r"same local batch size; got \[4, 5, 6\]"),
        ("sample_rate", lambda: P.VocabParallelCosFace(D, V, sample_rate=0.0), r"sample_rate must be a float in \(0, 1\]"),
    ]
    for name, fn, match in table:
        with pytest.raises(ValueError, match=match):
            fn()

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

"""bigsoftmax.optim: split_params, find_sparse_ties, make_optimizer, CombinedOptimizer (schedulers,
state_dict round trip, closure, hooks) and the sparse-aware clip_grad_norm_."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from bigsoftmax import optim as O
from bigsoftmax.heads import SampledSoftmax


class Tiny(nn.Module):
    """A dense body, a sparse input embedding and a sparse sampled head."""

    def __init__(self, V=20, d=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(V, d, sparse=True)
        self.body = nn.Linear(d, d)
        self.head = SampledSoftmax(d, V, 5, sparse=True, seed=seed)

    def forward(self, x, y):
        return self.head(torch.tanh(self.body(self.emb(x))), y)


def _batch(step, V=20, n=6):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, V, (n,), generator=g), torch.randint(0, V, (n,), generator=g)


def _train(model, opt, steps, start=0, sched=None):
    for s in range(start, start + steps):
        x, y = _batch(s)
        model(x, y).backward()
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()


# ------------------------------------------------------------------ split_params / ties


def test_split_params_sorts_by_gradient_kind():
    m = Tiny()
    dense, sparse = O.split_params(m)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(dense) == {id(m.body.weight), id(m.body.bias)}
    assert ids(sparse) == {id(m.emb.weight), id(m.head.weight), id(m.head.bias)}
    m.head.weight.requires_grad_(False)
    assert id(m.head.weight) not in ids(O.split_params(m)[1])


def test_split_params_dense_head_is_dense_and_tie_counts_once():
    emb = nn.Embedding(10, 4)
    model = nn.ModuleDict({"emb": emb, "head": SampledSoftmax(4, 10, 3, weight=emb.weight, sparse=True)})
    dense, sparse = O.split_params(model)
    assert sum(p is emb.weight for p in dense) == 1 and all(p is not emb.weight for p in sparse)
    assert [p is model["head"].bias for p in sparse] == [True]


def test_sparse_tie_really_gives_dense_gradient_and_is_found():
    emb = nn.Embedding(10, 4)
    head = SampledSoftmax(4, 10, 3, weight=emb.weight, sparse=True, seed=0)
    model = nn.ModuleDict({"emb": emb, "head": head})
    head(emb(torch.tensor([1, 2])), torch.tensor([1, 2])).backward()
    assert not emb.weight.grad.is_sparse  # the behaviour find_sparse_ties reports
    assert O.find_sparse_ties(model) == [("emb.weight", ["head.rows"], ["emb"])]
    # both sparse: no tie reported, and the gradient is sparse
    emb2 = nn.Embedding(10, 4, sparse=True)
    head2 = SampledSoftmax(4, 10, 3, weight=emb2.weight, sparse=True, seed=0)
    head2(emb2(torch.tensor([1, 2])), torch.tensor([1, 2])).backward()
    assert emb2.weight.grad.is_sparse
    assert O.find_sparse_ties(nn.ModuleDict({"emb": emb2, "head": head2})) == []
    assert O.find_sparse_ties(Tiny()) == []


def test_make_optimizer_warns_raises_or_ignores_sparse_ties():
    emb = nn.Embedding(10, 4)
    model = nn.ModuleDict({"emb": emb, "head": SampledSoftmax(4, 10, 3, weight=emb.weight, sparse=True)})
    with pytest.warns(UserWarning, match=r"emb\.weight .*dense gradients|dense gradients.*emb\.weight"):
        opt = O.make_optimizer(model)
    assert isinstance(opt, O.CombinedOptimizer)
    with pytest.raises(ValueError, match="emb.weight"):
        O.make_optimizer(model, on_sparse_tie="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        O.make_optimizer(model, on_sparse_tie="ignore")
        O.make_optimizer(Tiny())  # no tie: no warning
    with pytest.raises(ValueError, match="on_sparse_tie"):
        O.make_optimizer(model, on_sparse_tie="loud")


# ------------------------------------------------------------------ make_optimizer


def test_make_optimizer_parts_and_learning_rates():
    m = Tiny()
    opt = O.make_optimizer(m, lr=1e-2, sparse_lr=0.5, weight_decay=0.1)
    assert [type(o) for o in opt.optimizers] == [torch.optim.Adam, torch.optim.SparseAdam]
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 0.5]
    assert opt.optimizers[0].param_groups[0]["weight_decay"] == 0.1
    only_dense = O.make_optimizer(nn.Linear(3, 3), dense="sgd", lr=0.1)
    assert type(only_dense) is torch.optim.SGD
    only_sparse = O.make_optimizer(nn.Embedding(5, 2, sparse=True), sparse="adagrad")
    assert type(only_sparse) is torch.optim.Adagrad
    _train(m, opt, 2)  # SparseAdam accepts every sparse gradient: the split is right


@pytest.mark.parametrize("kw, match", [({"dense": "lion"}, "dense must be one of"),
                                       ({"sparse": "adam"}, "sparse must be one of"),
                                       ({"lr": 0.0}, "lr must be"), ({"lr": float("nan")}, "lr must be"),
                                       ({"sparse_lr": -1.0}, "sparse_lr must be")])
def test_make_optimizer_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        O.make_optimizer(Tiny(), **kw)


def test_make_optimizer_refuses_non_module_and_frozen_model():
    with pytest.raises(TypeError, match="model must be"):
        O.make_optimizer([nn.Parameter(torch.zeros(2))])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        O.make_optimizer(frozen)


# ------------------------------------------------------------------ CombinedOptimizer


def test_param_groups_are_the_parts_dicts_and_defaults_are_shared_keys():
    opt = O.make_optimizer(Tiny())
    assert all(any(g is h for o in opt.optimizers for h in o.param_groups) for g in opt.param_groups)
    opt.param_groups[1]["lr"] = 0.25
    assert opt.optimizers[1].param_groups[0]["lr"] == 0.25
    assert "betas" in opt.defaults and "lr" in opt.defaults and "weight_decay" not in opt.defaults  # SparseAdam has none
    assert isinstance(opt, torch.optim.Optimizer)
    mixed = O.make_optimizer(Tiny(), sparse="sgd")
    assert "betas" not in mixed.defaults and "momentum" not in mixed.defaults


def test_one_cycle_lr_drives_every_part():
    m = Tiny()
    opt = O.make_optimizer(m, lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    ref_p = nn.Parameter(torch.zeros(1))
    ref = torch.optim.Adam([ref_p], lr=1e-3)
    ref_s = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=1e-2, total_steps=10)
    for s in range(10):
        want = ref.param_groups[0]["lr"]
        assert [o.param_groups[0]["lr"] for o in opt.optimizers] == pytest.approx([want, want])
        assert [o.param_groups[0]["betas"][0] for o in opt.optimizers] == pytest.approx([ref.param_groups[0]["betas"][0]] * 2)
        x, y = _batch(s)
        m(x, y).backward()
        opt.step(); opt.zero_grad(); sched.step()
        ref_p.grad = torch.zeros(1); ref.step(); ref_s.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] == lrs[1] and lrs[0] < 1e-3  # annealed far below the start


def test_one_cycle_lr_with_sgd_parts_and_mixed_parts():
    m = Tiny()
    sgd = O.make_optimizer(m, dense="sgd", sparse="sgd", momentum=0.9)
    assert "momentum" in sgd.defaults
    torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=0.1, total_steps=5)
    assert sgd.optimizers[0].param_groups[0]["momentum"] == pytest.approx(0.95)
    mixed = O.make_optimizer(Tiny(), sparse="sgd")
    with pytest.raises(ValueError, match="momentum or beta1"):
        torch.optim.lr_scheduler.OneCycleLR(mixed, max_lr=0.1, total_steps=5)
    s = torch.optim.lr_scheduler.OneCycleLR(mixed, max_lr=0.1, total_steps=5, cycle_momentum=False)
    assert mixed.param_groups[0]["lr"] == mixed.param_groups[1]["lr"] == pytest.approx(s.get_last_lr()[0])


def test_cosine_and_lambda_schedulers_reach_each_part():
    m = Tiny()
    opt = O.make_optimizer(m, lr=0.1, sparse_lr=0.2)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    _train(m, opt, 4, sched=cos)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)
    m2 = Tiny()
    opt2 = O.make_optimizer(m2, lr=0.1, sparse_lr=0.2)
    lam = torch.optim.lr_scheduler.LambdaLR(opt2, [lambda s: 0.5 ** s, lambda s: 1.0 / (s + 1)])
    _train(m2, opt2, 3, sched=lam)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([0.1 * 0.125, 0.2 / 4])


def test_state_dict_round_trip_resumes_identically():
    m = Tiny()
    opt = O.make_optimizer(m, lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2, total_steps=20)
    _train(m, opt, 3, sched=sched)
    ckpt = copy.deepcopy({"model": m.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                          "rng": m.head.generator.get_state()})  # the sampler's draws resume too
    assert ckpt["opt"]["types"] == ["Adam", "SparseAdam"] and len(ckpt["opt"]["parts"]) == 2
    assert len(opt.state) == len(list(m.parameters()))  # every parameter has Adam-family state now
    _train(m, opt, 2, start=3, sched=sched)
    m2 = Tiny(seed=1)
    opt2 = O.make_optimizer(m2, lr=1e-2)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=5e-2, total_steps=20)
    m2.load_state_dict(ckpt["model"]); opt2.load_state_dict(ckpt["opt"]); sched2.load_state_dict(ckpt["sched"])
    m2.head.generator.set_state(ckpt["rng"])
    _train(m2, opt2, 2, start=3, sched=sched2)
    for (n, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), n
    # a fresh optimiser without the state takes a different step: the round trip carries information
    m3 = Tiny(seed=1)
    m3.load_state_dict(ckpt["model"])
    m3.head.generator.set_state(ckpt["rng"])
    _train(m3, O.make_optimizer(m3, lr=1e-2), 2, start=3)
    assert not torch.equal(m3.body.weight, m.body.weight)


def test_load_state_dict_refuses_other_parts():
    opt = O.make_optimizer(Tiny())
    with pytest.raises(ValueError, match="parts"):
        opt.load_state_dict({"parts": [opt.optimizers[0].state_dict()]})
    sgd = O.make_optimizer(Tiny(), dense="sgd", sparse="sgd")
    with pytest.raises(ValueError, match="SGD"):
        opt.load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="CombinedOptimizer.state_dict"):
        opt.load_state_dict(opt.optimizers[0].state_dict())


def test_step_closure_zero_grad_and_hooks():
    m = Tiny()
    opt = O.make_optimizer(m)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    x, y = _batch(0)

    def closure():
        calls.append("closure")
        opt.zero_grad()
        loss = m(x, y)
        loss.backward()
        return loss

    before = m.body.weight.detach().clone(), m.emb.weight.detach().clone()
    loss = opt.step(closure)
    assert calls == ["pre", "closure", "post"] and torch.isfinite(loss)
    assert not torch.equal(before[0], m.body.weight) and not torch.equal(before[1], m.emb.weight)
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    m(x, y).backward()
    opt.zero_grad(set_to_none=False)
    assert m.body.weight.grad is not None and not m.body.weight.grad.any()


def test_combined_optimizer_bad_input_and_copy():
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="at least one"):
        O.CombinedOptimizer([None])
    with pytest.raises(TypeError, match=r"optimizers\[1\]"):
        O.CombinedOptimizer([torch.optim.SGD(lin.parameters(), lr=0.1), "adam"])
    with pytest.raises(TypeError, match="iterable"):
        O.CombinedOptimizer(torch.optim.SGD(lin.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="one part"):
        O.CombinedOptimizer([torch.optim.SGD(lin.parameters(), lr=0.1), torch.optim.Adam([lin.weight])])
    opt = O.make_optimizer(Tiny())
    with pytest.raises(TypeError, match="add_param_group"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    opt.optimizers[0].add_param_group({"params": [nn.Parameter(torch.zeros(1))], "lr": 0.3})
    assert [g["lr"] for g in opt.param_groups][1] == 0.3
    dup = copy.deepcopy(opt)
    assert repr(dup) == "CombinedOptimizer(Adam, SparseAdam)" and len(dup.param_groups) == 3


# ------------------------------------------------------------------ clip_grad_norm_


def _sparse_grads(coalesced: bool):
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([[1, 3, 1, 7, 3]])  # duplicate rows: the uncoalesced norm differs from the true one
    vals = torch.randn(5, 4, generator=g)
    sp = torch.sparse_coo_tensor(idx, vals, (10, 4), check_invariants=True)
    if coalesced:
        sp = sp.coalesce()
    dense = [torch.randn(4, 4, generator=g), torch.randn(4, generator=g)]
    return sp, dense


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5, math.inf, "inf"])
@pytest.mark.parametrize("coalesced", [True, False])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch_on_densified_grads(norm_type, coalesced, max_norm):
    sp, dense = _sparse_grads(coalesced)
    ours = [nn.Parameter(torch.zeros(10, 4))] + [nn.Parameter(torch.zeros_like(d)) for d in dense]
    ref = [nn.Parameter(torch.zeros(10, 4))] + [nn.Parameter(torch.zeros_like(d)) for d in dense]
    ours[0].grad = sp.clone()
    ref[0].grad = sp.to_dense()
    for o, r, d in zip(ours[1:], ref[1:], dense):
        o.grad, r.grad = d.clone(), d.clone()
    total = O.clip_grad_norm_(ours + [nn.Parameter(torch.zeros(2))], max_norm, norm_type=norm_type)
    want = torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type=float(norm_type))
    assert torch.allclose(total, want, rtol=1e-5)
    assert ours[0].grad.is_sparse
    for o, r in zip(ours, ref):
        assert torch.allclose(o.grad.to_dense(), r.grad, rtol=1e-5, atol=1e-7)
    if max_norm < 1:
        assert float(O.clip_grad_norm_(ours, math.inf, norm_type=norm_type)) == pytest.approx(max_norm, rel=1e-4)


def test_clip_grad_norm_nonfinite_and_single_tensor():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        O.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    assert math.isinf(float(O.clip_grad_norm_(p, 1.0)))
    q = nn.Parameter(torch.zeros(2))
    q.grad = torch.tensor([3.0, 4.0])
    assert float(O.clip_grad_norm_(q, 1.0)) == pytest.approx(5.0)
    assert float(q.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    assert float(O.clip_grad_norm_([nn.Parameter(torch.zeros(2))], 1.0)) == 0.0


@pytest.mark.parametrize("kw, exc, match", [({"max_norm": -1.0}, ValueError, "max_norm"),
                                            ({"max_norm": "1"}, TypeError, "max_norm"),
                                            ({"max_norm": 1.0, "norm_type": -2}, ValueError, "norm_type"),
                                            ({"max_norm": 1.0, "norm_type": "two"}, TypeError, "norm_type")])
def test_clip_grad_norm_bad_arguments(kw, exc, match):
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    with pytest.raises(exc, match=match):
        O.clip_grad_norm_([p], **kw)

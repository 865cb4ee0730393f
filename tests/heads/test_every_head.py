"""Properties every head in ``bigsoftmax.heads`` must have (issue 14 items 2, 8, 9):

* eval mode: ``head.eval(); head(h, y)`` is the exact NLL ``−log softmax`` of the head's own
  distribution (``log_prob``), for every reduction and with ignored positions — no margin, penalty,
  label smoothing or class weight;
* mixed dtypes: hidden states of another floating dtype than the parameters are cast to the
  parameters' dtype (one rule), in training and in evaluation;
* fp16 reductions accumulate in fp32 (a mean of per-row losses that fit fp16 is finite).
"""

import math

import pytest
import torch

import bigsoftmax.heads as H
from bigsoftmax import trees

D, V = 6, 40
COUNTS = [float(100 // (i + 1) + 1) for i in range(V)]

#: one constructor per concrete head class exported by bigsoftmax.heads (aliases share one)
MAKERS = {
    "FullSoftmax": lambda: H.FullSoftmax(D, V, label_smoothing=0.2, class_weight=torch.rand(V) + 0.5),
    "SelfNormalizedSoftmax": lambda: H.SelfNormalizedSoftmax(D, V, alpha=0.5),
    "AdaptiveSoftmax": lambda: H.AdaptiveSoftmax(D, V, [5, 20], div_value=2.0),
    "SampledSoftmax": lambda: H.SampledSoftmax(D, V, num_sampled=8, seed=0),
    "NCE": lambda: H.NCE(D, V, num_sampled=8, seed=0),
    "SampledLogistic": lambda: H.SampledLogistic(D, V, num_sampled=8, seed=0),
    "NegativeSampling": lambda: H.NegativeSampling(D, V, num_sampled=8, counts=COUNTS, seed=0),
    "TreeSoftmax": lambda: H.TreeSoftmax(D, trees.balanced(V, 3)),
    "HierarchicalSoftmax": lambda: H.HierarchicalSoftmax(D, COUNTS),
    "ClassBasedSoftmax": lambda: H.ClassBasedSoftmax(D, COUNTS),
    "LargeMarginSoftmax": lambda: H.LargeMarginSoftmax(D, V, m=2),
    "AngularSoftmax": lambda: H.AngularSoftmax(D, V, m=2),
    "AdditiveMarginSoftmax": lambda: H.AdditiveMarginSoftmax(D, V, s=4.0, m=0.3),
    "CosFace": lambda: H.CosFace(D, V, s=4.0),
    "ArcFace": lambda: H.ArcFace(D, V, s=4.0, m=0.4),
    "L2ConstrainedSoftmax": lambda: H.L2ConstrainedSoftmax(D, V, alpha=3.0),
    "WeightedSoftmax": lambda: H.WeightedSoftmax(D, V, class_weights=torch.rand(V) + 0.5),
    "SoftSoftmax": lambda: H.SoftSoftmax(D, V, temperature=2.0, label_smoothing=0.3),
}


def test_every_exported_head_class_is_covered():
    exported = {n for n in H.__all__ if isinstance(getattr(H, n), type) and issubclass(getattr(H, n), H.Head)}
    abstract = {"Head", "SamplingHead"}
    aliases = {n for n in exported if getattr(H, n).__name__ != n}  # SphereFace = AngularSoftmax
    assert exported - abstract - aliases == set(MAKERS)


def _make(name, dtype=torch.float64):
    torch.manual_seed(0)
    head = MAKERS[name]().to(dtype)
    with torch.no_grad():  # non-trivial parameters (some heads start at zero bias / uniform)
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype) * 0.3)
    return head


def _data(dtype=torch.float64, n=11):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(n, D, generator=g, dtype=dtype) * 2
    y = torch.randint(0, V, (n,), generator=g)
    y[3] = y[7] = -100
    return h, y


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_eval_forward_is_the_exact_nll(name, reduction):
    head = _make(name)
    head.reduction = reduction
    h, y = _data()
    head.eval()
    out = head(h, y)
    lp = head.log_prob(h)
    torch.testing.assert_close(torch.logsumexp(lp, -1), torch.zeros(h.shape[0], dtype=lp.dtype), rtol=0, atol=1e-10)
    keep = y != -100
    nll = torch.zeros(h.shape[0], dtype=lp.dtype)
    nll[keep] = -lp[keep].gather(1, y[keep][:, None])[:, 0]
    ref = {"mean": nll[keep].mean(), "sum": nll.sum(), "none": nll}[reduction]
    torch.testing.assert_close(out.to(ref.dtype), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(-head.target_log_prob(h, y), nll, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["FullSoftmax", "SelfNormalizedSoftmax", "ArcFace", "WeightedSoftmax", "SoftSoftmax"])
def test_training_objective_differs_from_the_eval_nll(name):
    """The eval test above can fail: these heads' training loss is not the NLL."""
    head = _make(name)
    h, y = _data()
    train = head.train()(h, y)
    ev = head.eval()(h, y)
    assert not torch.allclose(train, ev, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_mixed_dtypes_cast_hidden_to_the_parameter_dtype(name):
    head = _make(name, torch.float64)
    h, y = _data(torch.float32)
    head.eval()
    torch.testing.assert_close(head(h, y), head(h.double(), y), rtol=0, atol=0)
    torch.testing.assert_close(head.target_log_prob(h, y), head.target_log_prob(h.double(), y), rtol=0, atol=0)
    head.train()
    loss = head(h.requires_grad_(), y)
    assert loss.dtype == torch.float64 and math.isfinite(float(loss))
    loss.backward()
    assert h.grad is not None and h.grad.dtype == torch.float32 and bool(torch.isfinite(h.grad).all())


@pytest.mark.parametrize("name", ["NCE", "SampledLogistic", "NegativeSampling", "SampledSoftmax", "FullSoftmax"])
def test_fp16_training_mean_is_finite(name):
    """Issue 14 item 8: 20,000 rows whose losses fit fp16 but whose fp16 sum does not."""
    g = torch.Generator().manual_seed(4)
    h = (torch.randn(20_000, D, generator=g) * 3).half()
    y = torch.randint(0, V, (20_000,), generator=g)
    loss = _make(name, torch.float16)(h, y)  # a fresh head: the same seed, so the same draws
    assert math.isfinite(float(loss)), f"{name}: fp16 mean = {float(loss)}"
    ref = _make(name, torch.float16).float()(h.float(), y)  # the same fp16 parameters, computed in fp32
    torch.testing.assert_close(loss.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_float_ignore_index_is_refused(name):
    """Issue 14 item 12: ``ignore_index=1.5`` used to be accepted silently by several heads."""
    _with_kwargs(name, ignore_index=-1)  # the constructor takes ignore_index
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        _with_kwargs(name, ignore_index=1.5)


def _with_kwargs(name, **kw):
    """MAKERS[name] with extra keyword arguments (the makers are one-line lambdas over H.<cls>)."""
    src = {
        "FullSoftmax": lambda: H.FullSoftmax(D, V, **kw),
        "SelfNormalizedSoftmax": lambda: H.SelfNormalizedSoftmax(D, V, **kw),
        "AdaptiveSoftmax": lambda: H.AdaptiveSoftmax(D, V, [5, 20], div_value=2.0, **kw),
        "SampledSoftmax": lambda: H.SampledSoftmax(D, V, num_sampled=8, seed=0, **kw),
        "NCE": lambda: H.NCE(D, V, num_sampled=8, seed=0, **kw),
        "SampledLogistic": lambda: H.SampledLogistic(D, V, num_sampled=8, seed=0, **kw),
        "NegativeSampling": lambda: H.NegativeSampling(D, V, num_sampled=8, counts=COUNTS, seed=0, **kw),
        "TreeSoftmax": lambda: H.TreeSoftmax(D, trees.balanced(V, 3), **kw),
        "HierarchicalSoftmax": lambda: H.HierarchicalSoftmax(D, COUNTS, **kw),
        "ClassBasedSoftmax": lambda: H.ClassBasedSoftmax(D, COUNTS, **kw),
        "LargeMarginSoftmax": lambda: H.LargeMarginSoftmax(D, V, m=2, **kw),
        "AngularSoftmax": lambda: H.AngularSoftmax(D, V, m=2, **kw),
        "AdditiveMarginSoftmax": lambda: H.AdditiveMarginSoftmax(D, V, **kw),
        "CosFace": lambda: H.CosFace(D, V, **kw),
        "ArcFace": lambda: H.ArcFace(D, V, **kw),
        "L2ConstrainedSoftmax": lambda: H.L2ConstrainedSoftmax(D, V, **kw),
        "WeightedSoftmax": lambda: H.WeightedSoftmax(D, V, class_weights=torch.ones(V), **kw),
        "SoftSoftmax": lambda: H.SoftSoftmax(D, V, **kw),
    }
    return src[name]()


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_empty_batch_gives_empty_results(name):
    """Issue 14 item 13: tree heads' ``topk`` / ``log_prob`` on an empty batch raised
    "torch.cat(): expected a non-empty list" from inside torch."""
    head = _make(name).eval()
    h = torch.randn(0, D, dtype=torch.float64)
    v, i = head.topk(h, 3)
    assert v.shape == (0, 3) and i.shape == (0, 3) and i.dtype == torch.long
    assert head.log_prob(h).shape == (0, V)
    assert head.target_log_prob(h, torch.zeros(0, dtype=torch.long)).shape == (0,)
    head.reduction = "sum"
    assert float(head(h, torch.zeros(0, dtype=torch.long))) == 0.0
    v, i = head.topk(torch.randn(2, 0, D, dtype=torch.float64), 2)
    assert v.shape == (2, 0, 2)


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("where", ["hidden", "target", "head"])
def test_meta_device_is_a_clear_error_for_every_entry_point(name, where):
    """Issue 14 item 13: a meta tensor (or a head whose parameters are on meta) raised from deep
    inside torch — or, for a meta head with real hidden states, returned uninitialised numbers."""
    head = _make(name)
    h, y = _data()
    if where == "hidden":
        h = h.to("meta")
    elif where == "target":
        y = y.to("meta")
    else:
        head = head.to("meta")
    calls = {"forward": lambda: head(h, y), "target_log_prob": lambda: head.target_log_prob(h, y)}
    if where != "target":
        calls.update(log_prob=lambda: head.log_prob(h), topk=lambda: head.topk(h, 2))
    for mode in (head.train, head.eval):
        mode()
        for what, call in calls.items():
            with pytest.raises(ValueError, match="meta device"):
                call()


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_all_ignored_batch_backpropagates_zero_gradients(name, reduction):
    """A batch of padding only: ``loss.sum().backward()`` gives zero gradients as with torch's
    losses (found by the property suite: ``reduction='none'`` returned zeros cut off the graph, so
    backward() raised "element 0 of tensors does not require grad")."""
    head = _make(name)
    head.reduction = reduction
    h = torch.randn(4, D, dtype=torch.float64, requires_grad=True)
    y = torch.full((4,), -100)
    for mode in (head.train, head.eval):
        mode()
        h.grad = None
        loss = head(h, y)
        assert bool((loss == 0).all())
        loss.sum().backward()
        assert h.grad is not None and bool((h.grad == 0).all())

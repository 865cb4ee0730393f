"""Property-based suite (hypothesis) for the library's promises (issue 14, "keep it from coming back").

For random shapes, V, num_true, dtypes (f32/f64), ignore patterns and reductions:

* every head's eval-mode forward is the exact NLL of its own normalised distribution (and, for
  the heads whose distribution is a linear softmax, of ``log_softmax(h @ W.T + b)`` computed here);
* training losses and their gradients are finite; a seeded training step repeats bit for bit;
* sampled softmax over the "all classes" candidate set (the All sampler: candidates ``arange(V)``,
  expected counts 1, accidental hits removed) equals the full softmax, in the functional API and
  in the head;
* bad inputs raise ValueError / TypeError naming the argument.

Profiles: ``BIGSOFTMAX_HYPOTHESIS_PROFILE=ci`` (default: a fixed, derandomised subset, a few
seconds per test) or ``thorough`` (11,800 random cases in total, the issue's >= 10,000; about ten minutes on two cores)::

    BIGSOFTMAX_HYPOTHESIS_PROFILE=thorough PYTHONPATH=src python -m pytest -q tests/test_properties.py

The profiles are local to this module (``settings(parent=...)``); the global hypothesis profile of
other test modules is not touched.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigsoftmax.functional as BF
import bigsoftmax.heads as H
from bigsoftmax import samplers as S
from bigsoftmax import trees

PROFILE = os.environ.get("BIGSOFTMAX_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "thorough"):
    raise ValueError(f"BIGSOFTMAX_HYPOTHESIS_PROFILE must be 'ci' or 'thorough', got {PROFILE!r}")
_BASE = settings(deadline=None, database=None, derandomize=PROFILE == "ci", print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def cases(ci: int, thorough: int) -> settings:
    """Hypothesis settings with ``ci`` examples in the default profile, ``thorough`` otherwise."""
    return settings(_BASE, max_examples=ci if PROFILE == "ci" else thorough)


# ------------------------------------------------------------------------------------- heads
NAMES = ["FullSoftmax", "SelfNormalizedSoftmax", "AdaptiveSoftmax", "SampledSoftmax", "NCE", "SampledLogistic",
         "NegativeSampling", "TreeSoftmax", "HierarchicalSoftmax", "ClassBasedSoftmax", "LargeMarginSoftmax",
         "AngularSoftmax", "AdditiveMarginSoftmax", "CosFace", "ArcFace", "L2ConstrainedSoftmax", "WeightedSoftmax",
         "SoftSoftmax"]
#: heads whose exact distribution is softmax(h @ weight.T + bias) on the raw hidden state
LINEAR = {"FullSoftmax", "SelfNormalizedSoftmax", "SampledSoftmax", "NCE", "SampledLogistic", "NegativeSampling",
          "WeightedSoftmax"}


def test_names_cover_every_exported_head():
    exported = {n for n in H.__all__ if isinstance(getattr(H, n), type) and issubclass(getattr(H, n), H.Head)}
    aliases = {n for n in exported if getattr(H, n).__name__ != n}
    assert exported - {"Head", "SamplingHead"} - aliases == set(NAMES)


@st.composite
def heads(draw, names=NAMES):
    """(name, head, d, V) with random sizes and hyper-parameters, parameters perturbed off their init."""
    name = draw(st.sampled_from(names))
    d = draw(st.integers(1, 7))
    V = draw(st.integers(2, 48))
    ii = draw(st.sampled_from([-100, -1, V + 3]))
    red = draw(st.sampled_from(["mean", "sum", "none"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    counts = (torch.rand(V, generator=g, dtype=torch.float64) * 50 + 1).tolist()
    kw = dict(ignore_index=ii, reduction=red)
    if name == "FullSoftmax":
        cw = torch.rand(V, generator=g) + 0.1 if draw(st.booleans()) else None
        head = H.FullSoftmax(d, V, label_smoothing=draw(st.sampled_from([0.0, 0.1, 0.5])), class_weight=cw,
                             bias=draw(st.booleans()), **kw)
    elif name == "SelfNormalizedSoftmax":
        head = H.SelfNormalizedSoftmax(d, V, alpha=draw(st.sampled_from([0.0, 0.1, 1.0])), **kw)
    elif name == "AdaptiveSoftmax":
        k = draw(st.integers(1, min(3, V - 1)))
        cut = sorted(draw(st.lists(st.integers(1, V - 1), min_size=k, max_size=k, unique=True)))
        with _quiet():
            head = H.AdaptiveSoftmax(d, V, cut, div_value=draw(st.sampled_from([1.0, 2.0, 4.0])),
                                     head_bias=draw(st.booleans()), **kw)
    elif name in ("SampledSoftmax", "NCE", "SampledLogistic"):
        head = getattr(H, name)(d, V, num_sampled=draw(st.integers(1, V)), seed=seed, **kw)
    elif name == "NegativeSampling":
        head = H.NegativeSampling(d, V, num_sampled=draw(st.integers(1, 2 * V)), counts=counts, seed=seed, **kw)
    elif name == "TreeSoftmax":
        head = H.TreeSoftmax(d, trees.balanced(V, draw(st.integers(2, 5))), **kw)
    elif name == "HierarchicalSoftmax":
        head = H.HierarchicalSoftmax(d, counts, **kw)
    elif name == "ClassBasedSoftmax":
        head = H.ClassBasedSoftmax(d, counts, **kw)
    elif name in ("LargeMarginSoftmax", "AngularSoftmax"):
        head = getattr(H, name)(d, V, m=draw(st.integers(1, 4)), **kw)
    elif name in ("AdditiveMarginSoftmax", "CosFace"):
        head = getattr(H, name)(d, V, s=draw(st.sampled_from([1.0, 8.0, 30.0])), m=draw(st.sampled_from([0.0, 0.35])), **kw)
    elif name == "ArcFace":
        head = H.ArcFace(d, V, s=draw(st.sampled_from([1.0, 8.0, 30.0])), m=draw(st.sampled_from([0.0, 0.5])), **kw)
    elif name == "L2ConstrainedSoftmax":
        head = H.L2ConstrainedSoftmax(d, V, alpha=draw(st.sampled_from([1.0, 16.0])), **kw)
    elif name == "WeightedSoftmax":
        head = H.WeightedSoftmax(d, V, class_weights=torch.rand(V, generator=g) + 0.1, **kw)
    else:
        head = H.SoftSoftmax(d, V, temperature=draw(st.sampled_from([0.5, 1.0, 3.0])),
                             label_smoothing=draw(st.sampled_from([0.0, 0.2])), **kw)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return name, head, d, V


class _quiet:
    """Silence AdaptiveSoftmax's (correct) zero-dim tail warning for randomly drawn cutoffs."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


@st.composite
def batches(draw, d: int, V: int, ignore_index: int, dtype):
    """(hidden [*lead, d], target [*lead]) with a random leading shape and a random ignore pattern."""
    lead = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=2)))
    n = math.prod(lead)
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, d, generator=g, dtype=dtype) * scale
    y = torch.randint(0, V, lead, generator=g)
    if n:
        mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(lead)
        y[mask] = ignore_index
    return h, y


def _reference_nll(lp: torch.Tensor, y: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    """NLL of the log-probabilities ``lp [..., V]`` at ``y``, reduced like ``nn.CrossEntropyLoss``."""
    keep = y != ignore_index
    nll = torch.zeros(y.shape, dtype=lp.dtype)
    nll[keep] = -lp[keep].gather(-1, y[keep][:, None])[:, 0]
    if reduction == "none":
        return nll
    return nll.sum() if reduction == "sum" else nll[keep].mean()


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)


@cases(ci=60, thorough=3000)
@given(heads(), st.sampled_from([torch.float32, torch.float64]), st.data())
def test_eval_forward_is_the_exact_nll(hv, dtype, data):
    name, head, d, V = hv
    head = head.to(dtype).eval()
    h, y = data.draw(batches(d, V, head.ignore_index, dtype))
    out = head(h, y)
    lp = head.log_prob(h)
    assert lp.shape == (*y.shape, V)
    if lp.numel():
        torch.testing.assert_close(torch.logsumexp(lp.double(), -1), torch.zeros(y.shape, dtype=torch.float64),
                                   **_tol(dtype))
    if name in LINEAR:  # independent of the head's code: the dense softmax of the plain logits
        lp_ref = F.log_softmax(F.linear(h.double(), head.weight.double(),
                                        None if head.bias is None else head.bias.double()), -1)
        torch.testing.assert_close(lp.double(), lp_ref, **_tol(dtype))
    ref = _reference_nll(lp.double(), y, head.ignore_index, head.reduction)
    torch.testing.assert_close(out.double(), ref, equal_nan=True, **_tol(dtype))  # mean of nothing is NaN as torch
    keep = y != head.ignore_index
    tlp = head.target_log_prob(h, y)
    torch.testing.assert_close(tlp.double(), torch.where(keep, -_reference_nll(lp.double(), y, head.ignore_index, "none"),
                                                         torch.zeros((), dtype=torch.float64)), **_tol(dtype))
    k = data.draw(st.integers(1, V))
    v, i = head.topk(h, k)
    assert v.shape == i.shape == (*y.shape, k)
    if lp.numel():  # the k best log-probabilities (ids may differ among ties)
        torch.testing.assert_close(v.double(), lp.double().topk(k, -1).values, **_tol(dtype))
        torch.testing.assert_close(lp.gather(-1, i).double(), v.double(), **_tol(dtype))


@cases(ci=60, thorough=3000)
@given(heads(), st.sampled_from([torch.float32, torch.float64]), st.data())
def test_training_loss_and_gradients_are_finite(hv, dtype, data):
    name, head, d, V = hv
    head = head.to(dtype).train()
    h, y = data.draw(batches(d, V, head.ignore_index, dtype))
    h.requires_grad_()
    loss = head(h, y)
    assert loss.dtype == dtype
    assert loss.shape == (() if head.reduction != "none" else y.shape)
    keep = y != head.ignore_index
    if head.reduction == "mean" and not bool(keep.any()):
        return  # the mean over no position is NaN, as in nn.CrossEntropyLoss
    assert bool(torch.isfinite(loss).all()), f"{name}: loss {loss}"
    if head.reduction == "none":
        assert bool((loss[~keep] == 0).all())
    loss.sum().backward()
    assert h.grad is not None and bool(torch.isfinite(h.grad).all()), f"{name}: non-finite input gradient"
    assert bool((h.grad[~keep] == 0).all()), f"{name}: an ignored position has a gradient"
    for pname, p in head.named_parameters():
        if p.grad is not None:
            gd = p.grad.to_dense() if p.grad.is_sparse else p.grad
            assert bool(torch.isfinite(gd).all()), f"{name}: non-finite gradient of {pname}"


def _generators(module):
    return [v for m in module.modules() for v in vars(m).values() if isinstance(v, torch.Generator)]


@cases(ci=40, thorough=1000)
@given(heads(), st.sampled_from([torch.float32, torch.float64]), st.data())
def test_seeded_training_step_is_bit_reproducible(hv, dtype, data):
    """Determinism: with the head's generator(s) and buffers reset to the same state, a training step gives the
    same loss and the same gradients bit for bit (sampled draws included), and two backward passes
    through one retained graph agree bit for bit (fixed reduction order; gradcheck's reentrancy)."""
    name, head, d, V = hv
    head = head.to(dtype).train()
    h, y = data.draw(batches(d, V, head.ignore_index, dtype))
    states = [g.get_state() for g in _generators(head)]
    # other training-step state too (e.g. the annealed margin heads' ``iteration`` buffer)
    buffers = {k: b.clone() for k, b in head.named_buffers()}
    runs = []
    for _ in range(2):
        for g, st_ in zip(_generators(head), states):
            g.set_state(st_)
        for k, b in head.named_buffers():
            b.copy_(buffers[k])
        x = h.clone().requires_grad_()
        loss = head(x, y).sum()
        params = [p for p in head.parameters() if p.requires_grad]
        g1 = torch.autograd.grad(loss, [x, *params], retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(loss, [x, *params], allow_unused=True)
        for a, b in zip(g1, g2):
            assert (a is None) == (b is None)
            if a is not None:
                a, b = (a.to_dense(), b.to_dense()) if a.is_sparse else (a, b)
                assert torch.equal(a, b) or (torch.isnan(a).all() and torch.isnan(b).all()), f"{name}: backward not reentrant"
        runs.append((loss.detach(), g1))
    (l1, ga), (l2, gb) = runs
    assert torch.equal(l1, l2) or (bool(l1.isnan()) and bool(l2.isnan())), f"{name}: loss differs between seeded runs"
    for a, b in zip(ga, gb):
        if a is not None:
            a, b = (a.to_dense(), b.to_dense()) if a.is_sparse else (a, b)
            assert torch.equal(a, b) or (torch.isnan(a).all() and torch.isnan(b).all()), f"{name}: gradients differ"


# ------------------------------------------------------------------- all-classes sampled softmax
@st.composite
def sampled_problems(draw):
    V = draw(st.integers(2, 40))
    d = draw(st.integers(1, 6))
    B = draw(st.integers(1, 7))
    T = draw(st.integers(1, min(V, 4)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    W = (torch.randn(V, d, generator=g, dtype=dtype) * 2).requires_grad_()
    b = (torch.randn(V, generator=g, dtype=dtype)).requires_grad_() if draw(st.booleans()) else None
    x = (torch.randn(B, d, generator=g, dtype=dtype) * 2).requires_grad_()
    # T distinct true classes per row (a duplicated true class would be counted twice by TF's formula)
    y = torch.stack([torch.randperm(V, generator=g)[:T] for _ in range(B)])
    return W, b, x, y, T


@cases(ci=60, thorough=1500)
@given(sampled_problems())
def test_sampled_softmax_over_all_classes_is_the_full_softmax(problem):
    """Candidates arange(V) with expected count 1 (log Q = 0) and the true classes removed from the
    candidates: exactly the full softmax with 1/T target mass on each true class — loss and grads."""
    W, b, x, y, T = problem
    V = W.shape[0]
    sv = S.all_candidate_sampler(y, T, V, True)
    assert torch.equal(sv[0], torch.arange(V))
    loss = BF.sampled_softmax_loss(W, b, y, x, V, V, num_true=T, sampled_values=sv, remove_accidental_hits=True)
    logits = F.linear(x, W, b)
    target = torch.zeros_like(logits).scatter_(1, y, 1.0 / T)
    ref = -(target * F.log_softmax(logits.double(), -1)).sum(-1)
    tol = _tol(W.dtype)
    torch.testing.assert_close(loss.double(), ref, **tol)
    params = [t for t in (W, b, x) if t is not None]
    ga = torch.autograd.grad(loss.sum(), params)
    gr = torch.autograd.grad(ref.sum(), params)
    for u, v in zip(ga, gr):
        torch.testing.assert_close(u.double(), v.double(), **tol)


@cases(ci=30, thorough=800)
@given(st.integers(2, 40), st.integers(1, 6), st.integers(0, 12), st.sampled_from([torch.float32, torch.float64]),
       st.sampled_from(["mean", "sum", "none"]), st.integers(0, 2**16))
def test_sampled_softmax_head_with_the_all_sampler_trains_on_the_full_softmax(V, d, n, dtype, reduction, seed):
    g = torch.Generator().manual_seed(seed)
    head = H.SampledSoftmax(d, V, num_sampled=V, sampler=S.All(V), reduction=reduction, seed=0).to(dtype)
    with torch.no_grad():
        head.bias.copy_(torch.randn(V, generator=g, dtype=dtype))
    h = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, V, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.3] = -100
    train = head.train()(h, y)
    ref = F.cross_entropy(F.linear(h, head.weight, head.bias), y, reduction=reduction, ignore_index=-100)
    torch.testing.assert_close(train, ref, equal_nan=True, **_tol(dtype))
    torch.testing.assert_close(head.eval()(h, y), ref, equal_nan=True, **_tol(dtype))


# ------------------------------------------------------------------------------- bad inputs
def _bad_target(draw, V, ii, shape):
    kind = draw(st.sampled_from(["high", "low", "float", "bool"]))
    y = torch.zeros(shape, dtype=torch.long)
    if kind == "float":
        return y.double(), TypeError, "target"
    if kind == "bool":
        return y.bool(), TypeError, "target"
    bad = draw(st.integers(V, V + 10**6) if kind == "high" else st.integers(-10**6, -1))
    if bad == ii:
        bad = V if kind == "high" else -10**6 - 1
    y.view(-1)[draw(st.integers(0, y.numel() - 1))] = bad
    return y, ValueError, "target"


@cases(ci=60, thorough=1500)
@given(heads(), st.data())
def test_bad_inputs_raise_value_or_type_errors(hv, data):
    name, head, d, V = hv
    n = data.draw(st.integers(1, 6))
    h = torch.randn(n, d)
    what = data.draw(st.sampled_from(["target", "width", "target_shape", "hidden_type", "k", "reduction"]))
    mode = data.draw(st.sampled_from(["train", "eval"]))
    getattr(head, mode)()
    if what == "target":
        y, exc, phrase = _bad_target(data.draw, V, head.ignore_index, (n,))
        call = lambda: head(h, y)  # noqa: E731
    elif what == "width":
        w = data.draw(st.integers(1, 9).filter(lambda w: w != d))
        exc, phrase = ValueError, "hidden must have shape"
        call = lambda: head(torch.randn(n, w), torch.zeros(n, dtype=torch.long))  # noqa: E731
    elif what == "target_shape":
        exc, phrase = ValueError, "target"
        call = lambda: head(h, torch.zeros(n + 1, dtype=torch.long))  # noqa: E731
    elif what == "hidden_type":
        bad = data.draw(st.sampled_from([torch.zeros(n, d, dtype=torch.long), h.numpy(), h.tolist()]))
        exc, phrase = TypeError, "hidden"
        call = lambda: head(bad, torch.zeros(n, dtype=torch.long))  # noqa: E731
    elif what == "k":
        k = data.draw(st.one_of(st.integers(-5, 0), st.integers(V + 1, V + 100), st.just(1.0), st.just(True)))
        exc, phrase = ValueError, "k must be"
        call = lambda: head.topk(h, k)  # noqa: E731
    else:
        r = data.draw(st.text(max_size=6).filter(lambda r: r not in ("mean", "sum", "none")))
        exc, phrase = ValueError, "reduction must be one of"
        call = lambda: _make_with_reduction(name, d, V, r)  # noqa: E731
    with pytest.raises(exc, match=phrase):
        call()


def _make_with_reduction(name, d, V, r):
    counts = [1.0] * V
    ctor = {
        "AdaptiveSoftmax": lambda: H.AdaptiveSoftmax(d, V, [1], reduction=r),
        "SampledSoftmax": lambda: H.SampledSoftmax(d, V, 1, reduction=r),
        "NCE": lambda: H.NCE(d, V, 1, reduction=r),
        "SampledLogistic": lambda: H.SampledLogistic(d, V, 1, reduction=r),
        "NegativeSampling": lambda: H.NegativeSampling(d, V, 1, counts=counts, reduction=r),
        "TreeSoftmax": lambda: H.TreeSoftmax(d, trees.balanced(V, 2), reduction=r),
        "HierarchicalSoftmax": lambda: H.HierarchicalSoftmax(d, counts, reduction=r),
        "ClassBasedSoftmax": lambda: H.ClassBasedSoftmax(d, counts, reduction=r),
        "WeightedSoftmax": lambda: H.WeightedSoftmax(d, V, class_weights=torch.ones(V), reduction=r),
    }.get(name, lambda: getattr(H, name)(d, V, reduction=r))
    return ctor()


@cases(ci=40, thorough=1000)
@given(st.integers(2, 30), st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.data())
def test_functional_bad_inputs_raise_value_or_type_errors(V, d, B, T, data):
    W, x = torch.randn(V, d), torch.randn(B, d)
    y = torch.randint(0, V, (B, T))
    S_ = data.draw(st.integers(1, V))
    fn = data.draw(st.sampled_from([BF.sampled_softmax_loss, BF.nce_loss]))
    what = data.draw(st.sampled_from(["label_range", "num_true", "num_sampled", "inputs_width", "num_classes",
                                      "label_dtype", "bias_shape"]))
    kw = dict(num_true=T)
    args = [W, None, y, x, S_, V]
    if what == "label_range":
        yb = y.clone()
        yb[data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, T - 1))] = data.draw(
            st.one_of(st.integers(V, V + 1000), st.integers(-1000, -1)))
        args[2], exc, phrase = yb, ValueError, "labels"
    elif what == "num_true":
        kw["num_true"] = data.draw(st.integers(1, 5).filter(lambda t: t != T))
        exc, phrase = ValueError, "num_true|labels"
    elif what == "num_sampled":
        args[4] = data.draw(st.one_of(st.integers(-3, 0), st.just(2.5), st.just(None)))
        exc, phrase = (ValueError, TypeError), "num_sampled"
    elif what == "inputs_width":
        args[3], exc, phrase = torch.randn(B, d + data.draw(st.integers(1, 3))), ValueError, "width of inputs"
    elif what == "num_classes":
        args[5] = data.draw(st.one_of(st.integers(-3, 0), st.integers(V + 1, V + 5), st.just(float(V))))
        exc, phrase = (ValueError, TypeError), "num_classes"
    elif what == "label_dtype":
        args[2], exc, phrase = y.double(), (ValueError, TypeError), "labels"
    else:
        args[1], exc, phrase = torch.zeros(V + data.draw(st.integers(1, 3))), ValueError, "biases"
    with pytest.raises(exc, match=phrase):
        fn(*args, **kw, seed=0)

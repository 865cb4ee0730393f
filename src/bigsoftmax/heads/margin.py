"""The "other" softmax losses: angular / additive margins, feature normalisation, class weights, soft targets.

Every class is a :class:`~bigsoftmax.heads.base.Head` with exact evaluation through
:class:`~bigsoftmax.heads.base.LinearEvalMixin`. Notation: hidden ``x`` [N, d], class weights ``W`` [V, d]
(row ``w_j`` is class j's centre), ``θ_j`` the angle between ``x`` and ``w_j``, ``y`` the target.

Margin heads (:class:`MarginHead` subclasses) replace only the *target* logit during training:

=========================  ===================================================  ==========================================
head                       training target logit ``f_y``                        other logits ``f_j`` and evaluation logits
=========================  ===================================================  ==========================================
LargeMarginSoftmax         ``‖w_y‖‖x‖ (λ cos θ_y + ψ_m(θ_y)) / (1 + λ)``         ``‖w_j‖‖x‖ cos θ_j = w_j · x``
AngularSoftmax (A-Softmax) ``‖x‖ (λ cos θ_y + ψ_m(θ_y)) / (1 + λ)``              ``‖x‖ cos θ_j = ŵ_j · x``
AdditiveMarginSoftmax      ``s (cos θ_y − m)``                                   ``s cos θ_j = s ŵ_j · x̂``
ArcFace                    ``s cos(θ_y + m)`` (fallback past π − m, see below)   ``s cos θ_j``
=========================  ===================================================  ==========================================

with ``ψ_m(θ) = (−1)^k cos(mθ) − 2k`` for ``θ ∈ [kπ/m, (k+1)π/m]`` (k = 0..m−1), a monotonically
decreasing extension of ``cos(mθ)`` to [0, π]; ``cos(mθ)`` is evaluated as the Chebyshev polynomial
``T_m(cos θ)`` so its gradient stays finite at θ = 0 and θ = π. The loss is the cross-entropy
``logsumexp_j f_j − f_y``, computed in fp32 over class chunks.

Training (``head.train()``) returns this margin objective; evaluation (``head.eval()``) ``forward``
returns the exact margin-free NLL ``−log softmax(eval logits)_y`` (like the sampling heads), and
``log_prob`` / ``target_log_prob`` / ``topk`` always use the margin-free evaluation logits.
``embed(hidden)`` gives the feature used for verification (the unit feature ``x̂`` where the head
normalises features, else ``x``).

``num_sampled=S`` trains over millions of classes: the softmax runs over the positive (with its
margin) and S class centres drawn by ``sampler`` (default ``Uniform``) — by default together with
all positives of the batch, as in Partial FC (An et al. 2021) — scored by the library's shared
sampled-logits core (:func:`bigsoftmax.functional.sampled_logits_parts`), with ``sparse=True``
gradients for the touched rows only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .. import functional as BF
from .._validate import sync_free
from .._validate import check_int as _check_int
from .._validate import check_real as _check_float
from ..ops.lse import linear_cross_entropy, linear_logsumexp
from ..ops.reduce import reduce_loss
from .base import Head, LinearEvalMixin, masked_reduce
from ._candidates import CandidateMixin, build_sampler, seeded_generator
from ..samplers.candidates import first_occurrence
from ._init import init_class_rows, tie_class_rows
from .._validate import check_scale as _check_scale
from .rows import ClassRowsMixin

__all__ = [
    "chebyshev_cos",
    "sphere_psi",
    "large_margin_cos",
    "additive_margin_cos",
    "arc_margin_cos",
    "margin_softmax_loss",
    "inverse_frequency_weights",
    "effective_number_weights",
    "l2_alpha_lower_bound",
    "LambdaSchedule",
    "MarginHead",
    "LargeMarginSoftmax",
    "AngularSoftmax",
    "SphereFace",
    "AdditiveMarginSoftmax",
    "CosFace",
    "ArcFace",
    "L2ConstrainedSoftmax",
    "WeightedSoftmax",
    "SoftSoftmax",
]

MarginFn = Callable[[Tensor], Tensor]


# ============================================================================ helpers
def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32 for half types, else the dtype itself (fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)


def _normalize(x: Tensor, eps: float) -> Tensor:
    """Unit rows ``x / max(‖x‖, eps)`` in fp32+ (a zero row stays 0: no NaN, also for fp16 inputs)."""
    return F.normalize(x.to(_acc(x.dtype)), dim=-1, eps=eps)


#: bytes of the row blocks :class:`_NormalizeRows` runs its backward in (bounds its temporaries)
_NORMALIZE_BLOCK_BYTES = 8 * 2**20


class _NormalizeRows(torch.autograd.Function):
    """``F.normalize(w, dim=1, eps)`` of a ``[V, d]`` class matrix with a lean backward (issue 11).

    The same forward bits as :func:`_normalize`. Autograd's backward of ``F.normalize`` materialises
    about four ``[V, d]`` temporaries at once (the division's two gradients, their products, the
    norm's gradient); at V = 10⁶ classes each is as large as the weight itself. Here
    ``grad_w = (g − ŵ (ŵ · g)) / ‖w‖`` (``g / eps`` for rows shorter than ``eps``) is computed in row
    blocks of ~8 MiB, reusing the unit rows the softmax kernel keeps anyway, into one new ``[V, d]``
    tensor — or, with ``reuse_grad`` (the caller's promise that the incoming gradient is a fresh
    tensor nothing else holds: :func:`margin_softmax_loss`, where ``ŵ`` only feeds the streaming
    kernel), into the incoming gradient itself when it is a contiguous, non-view tensor of the right
    dtype (not under ``torch.compile``): then no ``[V, d]`` buffer at all.
    """

    @staticmethod
    def forward(ctx, w: Tensor, eps: float, reuse_grad: bool = False) -> Tensor:
        wa = w.to(_acc(w.dtype))
        c = wa.norm(dim=1, keepdim=True).clamp_min(eps)
        out = wa / c.expand_as(wa)
        ctx.in_dtype = w.dtype
        ctx.eps = eps
        ctx.reuse_grad = bool(reuse_grad)
        ctx.save_for_backward(out, c)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        out, c = ctx.saved_tensors
        in_place = (ctx.reuse_grad and g.dtype == out.dtype and g.is_contiguous() and g._base is None
                    and not torch.compiler.is_compiling())
        grad = g if in_place else torch.empty_like(out)
        proj = c > ctx.eps  # rows whose norm is above eps: the clamp passes the gradient
        rows = max(1, _NORMALIZE_BLOCK_BYTES // max(1, out.shape[1] * out.element_size()))
        for s0 in range(0, out.shape[0], rows):
            s1 = min(out.shape[0], s0 + rows)
            o, gs = out[s0:s1], g[s0:s1].to(out.dtype)
            dot = torch.where(proj[s0:s1], (o * gs).sum(dim=1, keepdim=True),
                              torch.zeros((), dtype=o.dtype, device=o.device))
            torch.div(gs - o * dot, c[s0:s1], out=grad[s0:s1])
        return grad.to(ctx.in_dtype), None, None


def _normalize_rows(w: Tensor, eps: float, reuse_grad: bool = False) -> Tensor:
    """:func:`_normalize` of a class matrix, with :class:`_NormalizeRows`' lean backward under grad."""
    if torch.is_grad_enabled() and w.requires_grad:
        return _NormalizeRows.apply(w, eps, reuse_grad)
    return _normalize(w, eps)


class _GatherRows(torch.autograd.Function):
    """``w.index_select(0, idx)`` whose backward is a sparse COO ``[V, d]`` gradient of the ``len(idx)``
    touched rows, instead of autograd's dense zeros + ``index_add`` (two ``[V, d]`` tensors at V = 10⁶
    classes). Added into the dense gradient the class matrix gets from the softmax kernel, in place
    where autograd can; duplicate ids are summed."""

    @staticmethod
    def forward(ctx, w: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.shape = w.shape
        return w.index_select(0, idx)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        (idx,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(idx[None], g, ctx.shape, dtype=g.dtype, device=g.device,
                                       check_invariants=False), None


def _gather_rows(w: Tensor, idx: Tensor) -> Tensor:
    """``w[idx]`` with a sparse gradient (:class:`_GatherRows`) under grad in eager mode; plain
    ``index_select`` otherwise (``torch.compile`` traces dense gradients only)."""
    if torch.is_grad_enabled() and w.requires_grad and not torch.compiler.is_compiling() and w.layout == torch.strided:
        return _GatherRows.apply(w, idx)
    return w.index_select(0, idx)


# ============================================================================ margin functions (the math)
def chebyshev_cos(cos: Tensor, m: int) -> Tensor:
    """``cos(mθ) = T_m(cos θ)`` by the Chebyshev recurrence ``T_{n+1} = 2c T_n − T_{n−1}``.

    cos: any shape, values in [−1, 1]; m: int >= 0. A polynomial in ``cos θ``, so differentiable
    everywhere (no ``acos``), unlike ``torch.cos(m * torch.acos(c))``.
    """
    _check_int("m", m, 0)
    if m == 0:
        return torch.ones_like(cos)
    t_prev, t = torch.ones_like(cos), cos
    for _ in range(m - 1):
        t_prev, t = t, 2 * cos * t - t_prev
    return t


def sphere_psi(cos: Tensor, m: int) -> Tensor:
    """``ψ_m(θ) = (−1)^k cos(mθ) − 2k`` for ``θ ∈ [kπ/m, (k+1)π/m]`` (Liu et al. 2016, 2017).

    cos: ``cos θ`` of any shape (clamped to [−1, 1]); m: int >= 1. The sector index ``k`` is computed
    without gradient (it is piecewise constant), ``cos(mθ)`` by :func:`chebyshev_cos`. ψ is continuous
    and decreasing on [0, π], from ψ(0) = 1 to ψ(π) = 1 − 2m; ``sphere_psi(c, 1) == c``.
    """
    _check_int("m", m, 1)
    c = cos.clamp(-1.0, 1.0)
    with torch.no_grad():
        k = torch.floor(torch.acos(c.detach()) * (m / math.pi)).clamp_(0, m - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (−1)^k
    return sign * chebyshev_cos(c, m) - 2.0 * k


def large_margin_cos(cos: Tensor, m: int, lam: Union[float, Tensor] = 0.0) -> Tensor:
    """L-Softmax / A-Softmax target "cosine" ``(λ cos θ + ψ_m(θ)) / (1 + λ)`` (λ >= 0 anneals the margin).

    ``lam`` may be a 0-dim tensor (an annealed λ computed on the device, not checked: no host read).
    """
    if isinstance(lam, Tensor):
        psi = sphere_psi(cos, m)
        return (lam * cos.clamp(-1.0, 1.0) + psi) / (1.0 + lam)
    lam = _check_float("lam", lam, 0.0)
    psi = sphere_psi(cos, m)
    if lam == 0.0:
        return psi
    return (lam * cos.clamp(-1.0, 1.0) + psi) / (1.0 + lam)


def additive_margin_cos(cos: Tensor, m: float) -> Tensor:
    """AM-Softmax / CosFace target cosine ``cos θ − m`` (m >= 0)."""
    m = _check_float("m", m, 0.0)
    return cos - m


def arc_margin_cos(cos: Tensor, m: float, easy_margin: bool = False) -> Tensor:
    """ArcFace target cosine ``cos(θ + m)`` with insightface's fallback.

    ``cos(θ + m) = cos θ cos m − sin θ sin m`` while ``cos θ > cos(π − m)`` (θ + m < π, where it is
    decreasing in θ); past that, ``cos θ − m sin m`` (insightface ``easy_margin=False``: ``cos θ − mm``
    with ``mm = sin(π − m)·m``), which keeps the target logit decreasing in θ. With ``easy_margin``
    the margin is applied only where ``cos θ > 0``. ``sin θ = sqrt(max(1 − cos²θ, eps_dtype))`` keeps the
    gradient finite at θ = 0. m in [0, π/2]: there ``cos m + m sin m >= 1``, so the fallback starts
    below cos(π) = −1 and the target logit is non-increasing in θ on [0, π] (for larger m it would jump up).
    """
    m = _check_float("m", m, 0.0, math.pi / 2, hi_open=False)
    c = cos.clamp(-1.0, 1.0)
    tiny = torch.finfo(c.dtype).eps
    sin = torch.sqrt((1.0 - c * c).clamp(min=tiny))
    phi = c * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        return torch.where(c > 0, phi, c)
    return torch.where(c > math.cos(math.pi - m), phi, c - math.sin(math.pi - m) * m)


def _target_logit(score: Tensor, x_norm: Tensor, w_norm: Tensor, margin_fn: MarginFn, scale, unit_x: bool,
                  unit_w: bool, eps: float) -> Tensor:
    """Margin target logit from ``score = x'·w'_y`` and the raw norms (x' / w' unit where the head normalises).

    cos θ = score / max(‖x'‖‖w'‖, eps); logit = scale · ‖x‖^[not unit_x] · ‖w‖^[not unit_w] · margin_fn(cos θ).
    """
    denom = (x_norm if not unit_x else torch.ones_like(x_norm)) * (w_norm if not unit_w else torch.ones_like(w_norm))
    cos = (score / denom.clamp(min=eps)).clamp(-1.0, 1.0)
    mag = denom if not (unit_x and unit_w) else None
    g = margin_fn(cos)
    if mag is not None:
        g = g * mag
    return g * scale


def margin_softmax_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    margin_fn: MarginFn,
    *,
    scale: Union[float, Tensor] = 1.0,
    normalize_features: bool = True,
    normalize_weights: bool = True,
    eps: float = 1e-12,
    chunk: int = 16384,
) -> Tensor:
    """Per-example margin softmax cross-entropy over all V classes: [N, d], [V, d], [N] -> [N].

    With ``x' = x̂`` if ``normalize_features`` else ``x`` and ``w' = ŵ`` likewise::

        f_j = scale · x' · w'_j                               (j ≠ y)
        f_y = scale · ‖x'‖ ‖w'_y‖ · margin_fn(cos θ_y)
        loss = logaddexp(logsumexp_{j ≠ y} f_j, f_y) − f_y    (fp32+)

    The logsumexp over the V − 1 other classes is the library's streaming kernel
    (:func:`bigsoftmax.ops.lse.linear_logsumexp` with ``exclude_target=True``): exact, and its
    backward rescores class slices, so the extra memory is O(N · chunk) plus the normalised
    ``[V, d]`` weights (when ``normalize_weights``, with a backward that holds one more ``[V, d]``
    buffer, :class:`_NormalizeRows`) — never the [N, V] logits.

    ``margin_fn`` maps ``cos θ_y`` to the margin-penalised cosine (e.g.
    ``functools.partial(arc_margin_cos, m=0.5)``); the identity gives the plain (normalised) softmax.
    """
    acc = _acc(hidden.dtype)
    x = _normalize(hidden, eps) if normalize_features else hidden.to(acc)
    w_y = _gather_rows(weight, target)
    w_norm = w_y.to(acc).norm(dim=-1)
    w_y = _normalize(w_y, eps) if normalize_weights else w_y.to(acc)
    score = (x * w_y).sum(-1)
    zt = _target_logit(score, x.norm(dim=-1), w_norm, margin_fn, scale, normalize_features, normalize_weights, eps)
    w = _normalize_rows(weight, eps, reuse_grad=True) if normalize_weights else weight
    # logsumexp over the other classes, streamed by the one kernel (O(N · chunk) memory under autograd)
    rest, _ = linear_logsumexp(x * scale, w, None, target, chunk_size=chunk, recompute=True, exclude_target=True)
    return torch.logaddexp(rest, zt.to(rest.dtype)) - zt.to(rest.dtype)


# ============================================================================ class-weight helpers
def _counts(counts, name="counts") -> Tensor:
    c = torch.as_tensor(counts, dtype=torch.float64)
    if c.dim() != 1 or c.numel() < 1:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of per-class counts, got shape {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0")
    return c


def _finish_weights(w: Tensor, normalize: bool) -> Tensor:
    if normalize:
        w = w * (w.numel() / w.sum())
    return w.to(torch.float32)


def inverse_frequency_weights(counts, power: float = 1.0, normalize: bool = True) -> Tensor:
    """Class weights ``w_c ∝ (1 / max(n_c, 1))^power`` for :class:`WeightedSoftmax`: [V] counts -> [V] fp32.

    power=1 is plain inverse frequency, 0.5 the common square-root dampening, 0 uniform. Classes never
    seen (n_c = 0) get the weight of a singleton. ``normalize`` rescales so the weights sum to V (mean 1,
    keeping the loss scale of the unweighted softmax).
    """
    c = _counts(counts)
    power = _check_float("power", power, 0.0)
    return _finish_weights(c.clamp(min=1.0).pow(-power), normalize)


def effective_number_weights(counts, beta: float = 0.999, normalize: bool = True) -> Tensor:
    """Class-balanced weights of Cui et al. (2019): ``w_c ∝ (1 − β) / (1 − β^{n_c})``: [V] -> [V] fp32.

    ``(1 − β^n)/(1 − β)`` is the effective number of samples of a class with n samples; β in [0, 1)
    (β = 0: uniform; β → 1: inverse frequency). n_c = 0 counts as 1. ``normalize``: weights sum to V.
    """
    c = _counts(counts)
    beta = _check_float("beta", beta, 0.0, 1.0)
    eff = -torch.expm1(c.clamp(min=1.0) * math.log(beta)) / (1.0 - beta) if beta > 0 else torch.ones_like(c)
    return _finish_weights(1.0 / eff, normalize)


def l2_alpha_lower_bound(num_classes: int, p: float = 0.9) -> float:
    """Ranjan et al. (2017) lower bound on the L2-constrained scale: ``α >= log(p (V − 2) / (1 − p))``.

    The smallest α for which a feature can reach softmax probability p for its class (when the class
    centres are well spread). num_classes >= 3, p in (0, 1).
    """
    _check_int("num_classes", num_classes, 3)
    p = _check_float("p", p, 0.0, 1.0, lo_open=True)
    return math.log(p * (num_classes - 2) / (1.0 - p))


# ============================================================================ λ annealing
@dataclass(frozen=True)
class LambdaSchedule:
    """SphereFace / L-Softmax annealing ``λ_t = max(lambda_min, base · (1 + gamma · t)^(−power))``.

    Defaults are those of the SphereFace Caffe model (``base: 1000 gamma: 0.12 power: 1 lambda_min: 5``);
    t counts training forwards (the first forward uses t = 1, like Caffe's ``iter_ += 1`` before use).
    """

    base: float = 1000.0
    gamma: float = 0.12
    power: float = 1.0
    lambda_min: float = 5.0

    def __post_init__(self):
        for name in ("base", "gamma", "power", "lambda_min"):
            _check_float(f"LambdaSchedule.{name}", getattr(self, name), 0.0)

    def __call__(self, iteration: int) -> float:
        return max(self.lambda_min, self.base * (1.0 + self.gamma * float(iteration)) ** (-self.power))

    def at(self, iteration: Tensor) -> Tensor:
        """``λ_t`` of a 0-dim iteration tensor, computed on its device in float64 (no host read)."""
        t = iteration.to(torch.float64)
        return (self.base * (1.0 + self.gamma * t) ** (-self.power)).clamp(min=self.lambda_min)


# ============================================================================ shared module plumbing
def _init_weight(weight: Optional[Tensor], num_classes: int, in_features: int) -> nn.Parameter:
    if weight is not None:
        return tie_class_rows(weight, num_classes, in_features, plain_tensor="wrap")
    w = nn.Parameter(torch.empty(num_classes, in_features))
    init_class_rows(w)  # the default scheme: N(0, 1/d), isotropic class centres
    return w


class MarginHead(ClassRowsMixin, CandidateMixin, LinearEvalMixin, Head):
    """Base of the angular/additive margin heads (see the module docstring for the formulas).

    Parameters: ``weight [V, d]`` (class centres; no bias, as in all four papers). Subclasses set
    ``normalize_features`` / ``normalize_weights``, ``scale`` and :meth:`margin_cos`.

    Sampled training (``num_sampled=S``): per step the sampler (default
    ``bigsoftmax.samplers.Uniform(V)``, drawing with ``self.generator``) proposes S class ids; with
    ``include_batch_positives=True`` (Partial FC) every positive of the batch is added and draws that
    repeat one are dropped. Per example the softmax runs over its positive (margin applied) and these
    candidates, scaled like the dense logits; its own class among the candidates is removed
    (``remove_accidental_hits``). ``subtract_log_q=True`` subtracts log E(c) (the sampler's expected
    count) from every logit after scaling — with a uniform sampler this is the same constant for
    every candidate and does not change the loss; it needs ``include_batch_positives=False`` (added
    positives have no proposal probability). Partial FC does not correct, so the default is False.
    ``sparse=True`` makes ``weight.grad`` a sparse COO tensor over the touched rows.

    Dense training (``num_sampled=None``) runs on the streaming kernel (:func:`margin_softmax_loss`):
    O(N · chunk) extra memory plus the normalised ``[V, d]`` weights. Eval mode: the exact
    margin-free NLL.

    Args:
        in_features: d. num_classes: V.
        num_sampled, sampler, include_batch_positives, remove_accidental_hits, subtract_log_q, sparse,
            seed: sampled training (see above); ``seed`` seeds ``self.generator``.
        weight: an existing ``[V, d]`` tensor/Parameter (class centres) instead of a new N(0, 1/d) one.
        eps: guard of the feature / weight normalisation. ignore_index, reduction: as
            ``nn.CrossEntropyLoss``.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = ArcFace(128, 10_000, s=64.0, m=0.5)
        >>> loss = head(torch.randn(8, 128), torch.randint(0, 10_000, (8,)))
        >>> big = ArcFace(128, 100_000, num_sampled=1024, sparse=True, seed=0)  # Partial-FC style
    """

    normalize_features: bool = True
    normalize_weights: bool = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        num_sampled: Optional[int] = None,
        sampler: Optional[nn.Module] = None,
        include_batch_positives: bool = True,
        remove_accidental_hits: bool = True,
        subtract_log_q: bool = False,
        sparse: bool = False,
        seed: Optional[int] = None,
        weight: Optional[Tensor] = None,
        eps: float = 1e-12,
        ignore_index: int = -100,
        reduction: str = "mean",
    ):
        super().__init__(in_features, num_classes, ignore_index, reduction)
        self.eps = _check_float("eps", eps, 0.0, lo_open=True)
        self.sparse = bool(sparse)
        self._init_rows(_init_weight(weight, self._num_rows(), in_features), None, self.sparse)
        self.num_sampled = None if num_sampled is None else _check_int("num_sampled", num_sampled, 1)
        self.include_batch_positives = bool(include_batch_positives)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.subtract_log_q = bool(subtract_log_q)
        self.sparse = bool(sparse)
        self.sampler = None
        if num_sampled is None:
            if sampler is not None or sparse:
                raise ValueError("sampler= and sparse=True need num_sampled (sampled training); got num_sampled=None")
        else:
            from .. import samplers as S

            self.sampler = build_sampler(sampler, num_classes, num_sampled, lambda v: S.Uniform(v, unique=True))
            if self.include_batch_positives and not self.remove_accidental_hits:
                raise ValueError("include_batch_positives=True needs remove_accidental_hits=True "
                                 "(else each example's own positive would also count as a negative)")
            if self.include_batch_positives and self.subtract_log_q:
                raise ValueError("subtract_log_q=True needs include_batch_positives=False: the added batch positives "
                                 "have no proposal probability Q")
        self.generator = seeded_generator(seed)

    def _num_rows(self) -> int:
        """Class rows this head allocates (all ``num_classes``; a vocab-parallel subclass: its block)."""
        return self.num_classes

    # ----------------------------------------------------------------- what subclasses define
    @property
    def scale(self) -> float:
        """Logit scale s (1 for L-Softmax / A-Softmax)."""
        return 1.0

    def margin_cos(self, cos: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Margin-penalised target cosine g(cos θ_y)."""
        raise NotImplementedError

    def _step_margin(self) -> MarginFn:
        """The margin function for this training step (annealing heads advance their counter)."""
        return self.margin_cos

    # ----------------------------------------------------------------- evaluation hooks
    def eval_weight(self) -> Tensor:
        return self.weight

    def _eval_hidden(self, h: Tensor) -> Tensor:
        return _normalize(h, self.eps) if self.normalize_features else h.to(_acc(h.dtype))

    def _eval_linear(self, h: Tensor):
        """Margin-free evaluation logits ``s · x' · w'_j``: (s · x', w', None)."""
        x = self._eval_hidden(h)
        w = _normalize(self.weight, self.eps) if self.normalize_weights else self.weight
        return (x * self.scale if self.scale != 1.0 else x), w, None

    def embed(self, hidden: Tensor) -> Tensor:
        """Verification feature [..., d] -> [..., d]: ``x̂`` where the head normalises features, else ``x``."""
        h = self._flat_hidden(hidden)
        out = _normalize(h, self.eps) if self.normalize_features else h
        return out.reshape(hidden.shape)

    def sparse_parameters(self):
        """Parameters that receive sparse gradients (for :mod:`bigsoftmax.optim`)."""
        return [self.weight] if self.sparse else []

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, num_classes={self.num_classes}"
        if self.num_sampled is not None:
            s += (f", num_sampled={self.num_sampled}, include_batch_positives={self.include_batch_positives}, "
                  f"subtract_log_q={self.subtract_log_q}, sparse={self.sparse}")
        return s

    # ----------------------------------------------------------------- training
    def _loss(self, h: Tensor, y: Tensor) -> Tensor:
        """Dense margin training objective [N] over all classes (sampled training: :meth:`forward`)."""
        return margin_softmax_loss(h, self.weight, y, self._step_margin(), scale=self.scale,
                                   normalize_features=self.normalize_features,
                                   normalize_weights=self.normalize_weights, eps=self.eps, chunk=self.eval_chunk)

    def candidates(self, y: Tensor, sampled_values=None):
        """The step's candidate set ``(ids [S'], true_expected [N, 1], sampled_expected [S'])``.

        Sampler draws, preceded by the batch's unique positives when ``include_batch_positives``
        (draws equal to a positive are dropped so no class appears twice).
        """
        y2 = y[:, None]
        sampled, true_exp, samp_exp = self.draw(y2) if sampled_values is None else sampled_values
        sampled = sampled.to(y.device).long()
        if self.include_batch_positives:
            pos = torch.unique(y)
            keep = ~torch.isin(sampled, pos)
            sampled = torch.cat([pos, sampled[keep]])
            samp_exp = torch.cat([torch.ones(pos.shape[0], dtype=samp_exp.dtype, device=samp_exp.device),
                                  samp_exp.to(y.device)[keep]])
        return sampled, true_exp, samp_exp

    def _fixed_candidates(self, y: Tensor, row_keep: Tensor, sampled_values=None):
        """:meth:`candidates` in fixed shapes, without a host read (accelerators, ``torch.compile``):
        ``(ids [S''], true_expected [N, 1], sampled_expected [S''], dead [S''] or None)``.

        With ``include_batch_positives`` the ids are every row's target followed by the S draws
        (``S'' = N + S``); ``dead`` marks the columns :meth:`candidates` leaves out -- a target that is
        not its value's first kept occurrence, an ignored row's target (class 0 in the fixed-shape
        step), a draw equal to a kept positive -- and the loss masks them, so every live class appears
        once, as in :meth:`candidates`: the same loss and gradients.
        """
        y2 = y[:, None]
        sampled, true_exp, samp_exp = (self.draw(y2, row_keep=row_keep) if sampled_values is None
                                       else sampled_values)
        sampled = sampled.to(y.device).long()
        if not self.include_batch_positives:
            return sampled, true_exp, samp_exp, None
        n = y.shape[0]
        live_pos = first_occurrence(torch.where(row_keep, y, torch.full_like(y, self.num_classes))) & row_keep
        dead_draw = torch.isin(sampled, torch.where(row_keep, y, torch.full_like(y, -1)))
        ids = torch.cat([y, sampled])
        samp_exp = torch.cat([torch.ones(n, dtype=samp_exp.dtype, device=y.device), samp_exp.to(y.device)])
        return ids, true_exp, samp_exp, torch.cat([~live_pos, dead_draw])

    def _parts(self, x: Tensor, y2: Tensor, sampled_values):
        """The library's shared sampled-logits core on this head's weight (sparse rows when ``sparse``)."""
        rt = functools.partial(_normalize, eps=self.eps) if self.normalize_weights else None
        return BF.sampled_logits_parts(self.weight, None, y2, x, sampled_values, subtract_log_q=False,
                                       remove_accidental_hits=self.remove_accidental_hits, row_transform=rt,
                                       sparse=self.sparse)

    def _sampled_loss(self, h: Tensor, y: Tensor, margin_fn: MarginFn, sampled_values=None,
                      row_keep: Optional[Tensor] = None) -> Tensor:
        """Margin softmax over the positive and the candidates: [N, d], [N] -> [N] (see the class docstring).

        ``row_keep`` (bool [N]): the fixed-shape step, whose ignored rows stay in the batch on class 0;
        their targets are then no batch positives (:meth:`_fixed_candidates`)."""
        acc = _acc(h.dtype)
        x = self._eval_hidden(h)
        scale = self.scale
        if row_keep is None:
            cand, dead = self.candidates(y, sampled_values), None
        else:
            *cand, dead = self._fixed_candidates(y, row_keep, sampled_values)
        # score s·x' against the candidates: the core's logits come out scaled (no extra [N, S] pass)
        parts = self._parts(x * scale if scale != 1.0 else x, y[:, None], tuple(cand))
        if self.normalize_weights:
            w_norm = torch.ones(y.shape[0], dtype=acc, device=h.device)
        else:  # L-Softmax needs ‖w_y‖: one more [N, d] gather (sparse like the core's)
            w_norm = BF.gather_rows(self.weight, y, self.sparse).to(acc).norm(dim=-1)
        score = parts.true_logits[:, 0].to(acc) / scale  # x' · w'_y
        zt = _target_logit(score, x.norm(dim=-1), w_norm, margin_fn, scale, self.normalize_features,
                           self.normalize_weights, self.eps)
        zs = parts.sampled_logits.to(acc)  # hits hold the dtype's most negative finite value
        if self.subtract_log_q:
            zt = zt - parts.true_log_q[:, 0].to(acc)
            zs = zs - parts.sampled_log_q.to(acc)[None, :]
        if parts.hit_mask is not None and (self.subtract_log_q or zs.dtype != parts.sampled_logits.dtype):
            zs = zs.masked_fill(parts.hit_mask, torch.finfo(acc).min)  # re-mask in the accumulation dtype
        if dead is not None:  # columns candidates() leaves out (repeated / ignored positives, hit draws)
            zs = zs.masked_fill(dead[None, :], torch.finfo(acc).min)
        return torch.logaddexp(torch.logsumexp(zs, dim=1), zt) - zt

    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Training loss (train mode) or the exact margin-free NLL (eval mode), as :meth:`Head.forward`:
        [..., d], [...] -> scalar or [...] (``reduction``), rows with ``ignore_index`` left out.

        Sampled training (``num_sampled``) handles the ignored rows itself, so that their targets
        never join the batch positives (also on the fixed-shape path, where they stay in the batch).

        Args:
            hidden: hidden states ``[..., d]``.
            target: int64 class ids ``[...]`` (the leading shape of ``hidden``).

        Shape:
            - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

        Examples::

            >>> head = ArcFace(16, 1000, num_sampled=64, seed=0)
            >>> loss = head(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
            >>> loss.backward()
        """
        if self.num_sampled is None or not self.training:
            return super().forward(hidden, target)
        h, y = self._flat_pair(hidden, target)
        return self._sampled_forward(h, y, target.shape, None)

    def _sampled_forward(self, h: Tensor, y: Tensor, shape, sampled_values) -> Tensor:
        keep = y != self.ignore_index
        margin_fn = self._step_margin()
        if sync_free(h):  # fixed shapes, no host read: ignored rows ride along on class 0, masked after
            ys = torch.where(keep, y, torch.zeros_like(y))
            per = self._sampled_loss(h, ys, margin_fn, sampled_values, row_keep=keep)
            return masked_reduce(per, keep, shape, self.reduction)
        if not bool(keep.all()):
            h, y = h[keep], y[keep]
            if sampled_values is not None:
                sampled_values = (sampled_values[0], sampled_values[1][keep], sampled_values[2])
        per = self._sampled_loss(h, y, margin_fn, sampled_values)
        return reduce_loss(per, keep, shape, self.reduction)

    def sampled_loss(self, hidden: Tensor, target: Tensor, sampled_values) -> Tensor:
        """Sampled margin objective with given TF-style ``sampled_values`` (ids [S], true_expected [N, 1],
        sampled_expected [S]) instead of the sampler's draw; reduced like ``forward``."""
        if self.num_sampled is None:
            raise ValueError("sampled_loss needs a head built with num_sampled")
        h, y = self._flat_pair(hidden, target)
        return self._sampled_forward(h, y, target.shape, sampled_values)


class _AnnealedMixin:
    """λ (fixed float or :class:`LambdaSchedule`) with an ``iteration`` buffer counted in training forwards."""

    def _init_lambda(self, m, lambda_schedule):
        self.m = _check_int("m", m, 1)
        if lambda_schedule is None:
            lambda_schedule = 0.0
        if isinstance(lambda_schedule, LambdaSchedule):
            self.lambda_schedule = lambda_schedule
        else:
            self.lambda_schedule = _check_float("lambda_schedule (a fixed λ)", lambda_schedule, 0.0)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        """λ of the next training step (0 = full margin)."""
        if isinstance(self.lambda_schedule, LambdaSchedule):
            return self.lambda_schedule(int(self.iteration) + 1)
        return self.lambda_schedule

    def margin_cos(self, cos: Tensor) -> Tensor:
        return large_margin_cos(cos, self.m, self.current_lambda())

    def _step_margin(self) -> MarginFn:
        if isinstance(self.lambda_schedule, LambdaSchedule) and sync_free(self.iteration):
            # accelerators / compile: λ from the iteration buffer on the device, not int(iteration)
            with torch.no_grad():
                self.iteration += 1
                lam = self.lambda_schedule.at(self.iteration)
            return functools.partial(large_margin_cos, m=self.m, lam=lam)
        lam = self.current_lambda()
        with torch.no_grad():
            self.iteration += 1
        return functools.partial(large_margin_cos, m=self.m, lam=lam)


class LargeMarginSoftmax(_AnnealedMixin, MarginHead):
    """L-Softmax (Liu et al. 2016): multiplicative angular margin on unnormalised features and weights.

    Training target logit ``f_y = ‖w_y‖‖x‖ (λ cos θ_y + ψ_m(θ_y)) / (1 + λ)``, other logits
    ``f_j = w_j · x``; ψ_m as in :func:`sphere_psi` (m = 4 default, the paper's MNIST setting; m = 1 is
    the plain softmax without bias). ``lambda_schedule``: a fixed λ >= 0 (default 0: full margin, as in
    pytorch-metric-learning) or a :class:`LambdaSchedule` annealed per training forward.
    Evaluation logits: ``W x`` (margin-free, no bias). ``embed`` returns ``x`` unchanged.

    Args:
        in_features: d. num_classes: V.
        m: the integer angular margin (>= 1).
        lambda_schedule: a fixed λ >= 0, a :class:`LambdaSchedule`, or None (λ = 0).
        **kwargs: as :class:`MarginHead` (``num_sampled``, ``sampler``, ``sparse``, ``seed``,
            ``weight``, ``eps``, ``ignore_index``, ``reduction``, …).

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = LargeMarginSoftmax(32, 10, m=4)
        >>> loss = head(torch.randn(8, 32), torch.randint(0, 10, (8,)))
    """

    normalize_features = False
    normalize_weights = False

    def __init__(self, in_features: int, num_classes: int, m: int = 4,
                 lambda_schedule: Union[float, LambdaSchedule, None] = None, **kwargs):
        super().__init__(in_features, num_classes, **kwargs)
        self._init_lambda(m, lambda_schedule)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, lambda_schedule={self.lambda_schedule}"


class AngularSoftmax(_AnnealedMixin, MarginHead):
    """A-Softmax / SphereFace (Liu et al. 2017): unit class weights, no bias, multiplicative margin m.

    Training target logit ``f_y = ‖x‖ (λ cos θ_y + ψ_m(θ_y)) / (1 + λ)``, other logits
    ``f_j = ‖x‖ cos θ_j = ŵ_j · x``. m = 4 (paper). ``lambda_schedule`` defaults to the SphereFace
    annealing :class:`LambdaSchedule` (base 1000, gamma 0.12, power 1, lambda_min 5); pass 0.0 for
    the pure margin. Evaluation logits ``‖x‖ cos θ_j``. ``embed`` returns ``x`` (compare with cosine).

    Args:
        in_features: d. num_classes: V.
        m: the integer angular margin (>= 1).
        lambda_schedule: a fixed λ >= 0 or a :class:`LambdaSchedule` (default: SphereFace's).
        **kwargs: as :class:`MarginHead`.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = AngularSoftmax(32, 10, m=4, lambda_schedule=0.0)
        >>> loss = head(torch.randn(8, 32), torch.randint(0, 10, (8,)))
    """

    normalize_features = False
    normalize_weights = True

    def __init__(self, in_features: int, num_classes: int, m: int = 4,
                 lambda_schedule: Union[float, LambdaSchedule, None] = LambdaSchedule(), **kwargs):
        super().__init__(in_features, num_classes, **kwargs)
        self._init_lambda(m, lambda_schedule)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, lambda_schedule={self.lambda_schedule}"


SphereFace = AngularSoftmax


class AdditiveMarginSoftmax(MarginHead):
    """AM-Softmax (Wang et al. 2018): ``f_y = s (cos θ_y − m)``, ``f_j = s cos θ_j``; s = 30, m = 0.35.

    Features and class weights are L2-normalised (``eps`` guards zero vectors). Evaluation logits
    ``s cos θ_j``; ``embed`` returns ``x̂``. m >= 0 (m = 0: normalised softmax), s > 0.

    Args:
        in_features: d. num_classes: V.
        s: logit scale (> 0). m: additive cosine margin (>= 0).
        **kwargs: as :class:`MarginHead`.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = AdditiveMarginSoftmax(32, 1000, s=30.0, m=0.35)
        >>> loss = head(torch.randn(8, 32), torch.randint(0, 1000, (8,)))
        >>> emb = head.embed(torch.randn(8, 32))   # unit-norm verification features
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 30.0, m: float = 0.35, **kwargs):
        super().__init__(in_features, num_classes, **kwargs)
        self.s = _check_scale(s)
        self.m = _check_float("m", m, 0.0)

    @property
    def scale(self) -> float:
        return self.s

    def margin_cos(self, cos: Tensor) -> Tensor:
        return additive_margin_cos(cos, self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}"


class CosFace(AdditiveMarginSoftmax):
    """CosFace / LMCL (Wang et al. 2018): AM-Softmax with the CosFace paper's s = 64, m = 0.35.

    ``f_y = s (cos θ_y − m)``, ``f_j = s cos θ_j``.

    Args:
        in_features: d. num_classes: V. s: logit scale (> 0). m: cosine margin (>= 0).
        **kwargs: as :class:`MarginHead`.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = CosFace(32, 1000)
        >>> loss = head(torch.randn(8, 32), torch.randint(0, 1000, (8,)))
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 0.35, **kwargs):
        super().__init__(in_features, num_classes, s=s, m=m, **kwargs)


class ArcFace(MarginHead):
    """ArcFace (Deng et al. 2019): ``f_y = s cos(θ_y + m)``, ``f_j = s cos θ_j``; s = 64, m = 0.5 rad.

    Past θ_y > π − m the target uses insightface's ``cos θ − m sin m`` (see :func:`arc_margin_cos`);
    ``easy_margin=True`` applies the margin only where cos θ_y > 0. Evaluation logits ``s cos θ_j``;
    ``embed`` returns ``x̂``. m in [0, π/2] radians (pytorch-metric-learning takes degrees: 28.6° ≈ 0.5).

    Args:
        in_features: d. num_classes: V.
        s: logit scale (> 0). m: additive angular margin in radians, in [0, π/2].
        easy_margin: apply the margin only where cos θ_y > 0.
        **kwargs: as :class:`MarginHead` (e.g. ``num_sampled=`` for Partial-FC training).

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = ArcFace(32, 1000, s=64.0, m=0.5)
        >>> loss = head(torch.randn(8, 32), torch.randint(0, 1000, (8,)))
        >>> pfc = ArcFace(32, 100_000, num_sampled=256, sparse=True, seed=0)
        >>> loss = pfc(torch.randn(8, 32), torch.randint(0, 100_000, (8,)))
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False, **kwargs):
        super().__init__(in_features, num_classes, **kwargs)
        self.s = _check_scale(s)
        self.m = _check_float("m", m, 0.0, math.pi / 2, hi_open=False)
        self.easy_margin = bool(easy_margin)

    @property
    def scale(self) -> float:
        return self.s

    def margin_cos(self, cos: Tensor) -> Tensor:
        return arc_margin_cos(cos, self.m, self.easy_margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}, easy_margin={self.easy_margin}"


# ============================================================================ non-margin variants
class _DenseLinearHead(LinearEvalMixin, Head):
    """``weight [V, d]`` + optional ``bias [V]``: a thin head over :func:`~bigsoftmax.ops.lse.linear_cross_entropy`.

    Subclasses say what the logits are (:meth:`_eval_linear`, the same in training and evaluation)
    and which class weights / label smoothing the training loss uses; training and evaluation then
    run on the one streaming kernel (exact, O(N · chunk) memory). Eval mode gives the exact NLL
    (no class weights, no smoothing).
    """

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, weight: Optional[Tensor] = None,
                 ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(in_features, num_classes, ignore_index, reduction)
        self.weight = _init_weight(weight, num_classes, in_features)
        self.bias = nn.Parameter(torch.zeros(num_classes, dtype=self.weight.dtype)) if bias else None

    def eval_weight(self) -> Tensor:
        return self.weight

    def eval_bias(self) -> Optional[Tensor]:
        return self.bias

    def _train_class_weight(self) -> Optional[Tensor]:
        return None

    def _train_label_smoothing(self) -> float:
        return 0.0

    def _cross_entropy(self, h: Tensor, y: Tensor, reduction: str) -> Tensor:
        x, W, b = self._eval_linear(h)
        return linear_cross_entropy(x, W, b, y, weight_class=self._train_class_weight(), ignore_index=self.ignore_index,
                                    reduction=reduction, label_smoothing=self._train_label_smoothing())

    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Training loss (train mode) or the exact NLL (eval mode): [..., d], [...] -> scalar or [...]."""
        if not self.training:
            return super().forward(hidden, target)
        h, y = self._flat_pair(hidden, target)
        loss = self._cross_entropy(h, y, self.reduction)
        return loss.reshape(target.shape) if self.reduction == "none" else loss

    def _loss(self, h: Tensor, y: Tensor) -> Tensor:
        """Per-example training loss [N] of the kept rows."""
        return self._cross_entropy(h, y, "none")

    def embed(self, hidden: Tensor) -> Tensor:
        """Verification feature: ``x̂`` (unit norm), [..., d] -> [..., d]."""
        h = self._flat_hidden(hidden)
        return _normalize(h, 1e-12).reshape(hidden.shape)


class L2ConstrainedSoftmax(_DenseLinearHead):
    r"""L2-constrained softmax (Ranjan et al. 2017): features rescaled to norm α before a linear softmax.

    .. math::
        z = W (\alpha \hat{x}) + b, \qquad \ell = \operatorname{lse}_j z_j - z_y

    (the same logits in training and evaluation). α > 0: fixed (default 16) or, with
    ``learn_alpha=True``, a learnable scalar initialised at ``alpha`` (see :func:`l2_alpha_lower_bound`
    for the paper's lower bound log(p(V−2)/(1−p))). ``embed`` returns ``x̂``.

    Args:
        in_features: d. num_classes: V.
        alpha: the feature norm α (> 0). learn_alpha: learn α.
        bias: learn a per-class bias. eps: guard of the feature normalisation.
        weight, ignore_index, reduction: as :class:`WeightedSoftmax`.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = L2ConstrainedSoftmax(64, 1000, alpha=16.0)
        >>> loss = head(torch.randn(8, 64), torch.randint(0, 1000, (8,)))
    """

    def __init__(self, in_features: int, num_classes: int, alpha: float = 16.0, learn_alpha: bool = False,
                 bias: bool = True, eps: float = 1e-12, **kwargs):
        super().__init__(in_features, num_classes, bias=bias, **kwargs)
        a = _check_float("alpha", alpha, 0.0, lo_open=True)
        self.eps = _check_float("eps", eps, 0.0, lo_open=True)
        if learn_alpha:
            self.alpha = nn.Parameter(torch.tensor(a))
        else:
            self.register_buffer("alpha", torch.tensor(a))

    def _eval_linear(self, h: Tensor):
        return _normalize(h, self.eps) * self.alpha.to(_acc(h.dtype)), self.weight, self.bias

    def embed(self, hidden: Tensor) -> Tensor:
        h = self._flat_hidden(hidden)
        return _normalize(h, self.eps).reshape(hidden.shape)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, alpha={float(self.alpha):g}, " \
               f"learn_alpha={isinstance(self.alpha, nn.Parameter)}, bias={self.bias is not None}"


class WeightedSoftmax(_DenseLinearHead):
    r"""Class-weighted softmax cross-entropy, ``F.cross_entropy(z, y, weight=class_weights)`` with ``z = W x + b``:

    .. math::
        \ell_i = c_{y_i} \big(\operatorname{lse}_j z_{ij} - z_{i y_i}\big)

    Reduction follows ``nn.CrossEntropyLoss(weight=...)``: ``'mean'`` divides by the sum of the kept
    targets' weights, ``'sum'`` and ``'none'`` return the weighted losses. Evaluation (and the eval-mode
    forward) is the unweighted softmax of z. Computed by
    :func:`~bigsoftmax.ops.lse.linear_cross_entropy` (``weight_class=``).

    Args:
        in_features: d. num_classes: V.
        class_weights: ``[V]`` weights >= 0, not all 0 (e.g. :func:`inverse_frequency_weights` or
            :func:`effective_number_weights`), stored as a buffer.
        bias: learn a per-class bias (zeros at start).
        weight: an existing ``[V, d]`` tensor/Parameter to use (tie) instead of a new N(0, 1/d) one.
        ignore_index, reduction: as ``nn.CrossEntropyLoss``.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = WeightedSoftmax(64, 3, class_weights=inverse_frequency_weights([100, 10, 1]))
        >>> loss = head(torch.randn(8, 64), torch.randint(0, 3, (8,)))
    """

    def __init__(self, in_features: int, num_classes: int, class_weights: Union[Tensor, Sequence[float]],
                 bias: bool = True, **kwargs):
        super().__init__(in_features, num_classes, bias=bias, **kwargs)
        if isinstance(class_weights, (str, bytes)) or class_weights is None:
            raise TypeError("class_weights must be a 1-D tensor or sequence of per-class weights")
        cw = torch.as_tensor(class_weights)
        if not (cw.dtype.is_floating_point or cw.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"class_weights must be real numbers, got dtype {cw.dtype}")
        cw = cw.to(torch.float32)
        if tuple(cw.shape) != (num_classes,):
            raise ValueError(f"class_weights must have shape [num_classes={num_classes}], got {tuple(cw.shape)}")
        if not bool(torch.isfinite(cw).all()) or bool((cw < 0).any()) or float(cw.sum()) <= 0:
            raise ValueError("class_weights must be finite, >= 0 and not all zero")
        self.register_buffer("class_weights", cw)

    def _train_class_weight(self) -> Optional[Tensor]:
        return self.class_weights


class SoftSoftmax(_DenseLinearHead):
    r"""Softmax with temperature T and label smoothing ε ("soft" softmax).

    With ``z = (W x + b) / T``, the training loss is ``F.cross_entropy(z, y, label_smoothing=ε)``:

    .. math::
        \ell = (1 - \varepsilon)(\operatorname{lse} z - z_y) + \varepsilon (\operatorname{lse} z - \operatorname{mean}_c z_c)

    computed by :func:`~bigsoftmax.ops.lse.linear_cross_entropy` on ``(x / T, W, b / T)`` (the smoothing
    term costs O(V d), never [N, V]). Evaluation uses the same tempered distribution softmax(z).

    Args:
        in_features: d. num_classes: V.
        temperature: T > 0. label_smoothing: ε in [0, 1].
        bias, weight, ignore_index, reduction: as :class:`WeightedSoftmax`.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = SoftSoftmax(64, 1000, temperature=2.0, label_smoothing=0.1)
        >>> loss = head(torch.randn(8, 64), torch.randint(0, 1000, (8,)))
    """

    def __init__(self, in_features: int, num_classes: int, temperature: float = 1.0, label_smoothing: float = 0.1,
                 bias: bool = True, **kwargs):
        super().__init__(in_features, num_classes, bias=bias, **kwargs)
        self.temperature = _check_float("temperature", temperature, 0.0, lo_open=True)
        self.label_smoothing = _check_float("label_smoothing", label_smoothing, 0.0, 1.0, hi_open=False)

    def _eval_linear(self, h: Tensor):
        t = self.temperature
        return h / t, self.weight, (None if self.bias is None else self.bias / t)

    def _train_label_smoothing(self) -> float:
        return self.label_smoothing

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, temperature={self.temperature}, "
                f"label_smoothing={self.label_smoothing}, bias={self.bias is not None}")

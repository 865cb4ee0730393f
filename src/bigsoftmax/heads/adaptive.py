"""Adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs").

Classes are frequency-sorted (id 0 = most frequent) and split by ``cutoffs`` ``c_1 < ... < c_J``
into a *shortlist* ``[0, c_1)`` and ``J`` tail clusters ``[c_j, c_{j+1})`` (``c_{J+1} = V``). The
*head* is a softmax over the ``c_1`` shortlist classes plus one logit per tail cluster; tail
cluster ``j`` is a softmax over its ``k_j = c_{j+1} - c_j`` classes computed from a low-rank
projection of the hidden state of width ``d_j = floor(d / div_value**j)``::

    log p(y | h) = log softmax(h @ H.T + b_H)[y]                         y <  c_1
    log p(y | h) = log softmax(h @ H.T + b_H)[c_1 + j - 1]               y in cluster j
                   + log softmax((h @ P_j.T) @ T_j.T)[y - c_j]

with ``H [c_1 + J, d]`` (``b_H`` only with ``head_bias=True``), ``P_j [d_j, d]``,
``T_j [k_j, d_j]``. This is exactly ``torch.nn.AdaptiveLogSoftmaxWithLoss`` (same parameters,
same numbers: :meth:`AdaptiveSoftmax.from_torch` / :meth:`AdaptiveSoftmax.to_torch` convert both ways)
and it is an exactly normalised distribution over all ``V`` classes.

What this module adds: the :class:`~bigsoftmax.heads.base.Head` protocol (``ignore_index``,
``reduction``, ``[..., d]`` inputs), a faster training loss (targets sorted by cluster once, one row
gather, a fused *linear + logsumexp + target logit* autograd function that never materialises a
log-softmax or a one-hot gradient, chunked recomputation for the narrow tail clusters), exact
``target_log_prob`` that evaluates only the clusters present, exact pruned ``topk``, tying of the
shortlist rows to an input embedding (and of tail rows to an adaptive input), and
:func:`choose_cutoffs`, which picks cutoffs from class counts with Grave's cost model.
"""

from __future__ import annotations

import math
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops._opaque import bound_handle, call_opaque
from ..ops.lse import linear_logsumexp, linear_logsumexp_unchecked
from .base import Head, chunked_topk
from .._validate import sync_free, check_counts, check_cutoffs, check_div_value as _check_div
from ..vocab import _floor_zero_counts

__all__ = [
    "AdaptiveSoftmax",
    "choose_cutoffs",
    "adaptive_cost",
    "check_cutoffs",
    "check_counts",
    "linear_logsumexp",
]


# =====================================================================================
# validation helpers
# =====================================================================================


def _tail_dims(in_features: int, div_value: float, num_clusters: int) -> List[int]:
    # exactly torch.nn.AdaptiveLogSoftmaxWithLoss: int(in_features // div_value ** (i + 1))
    return [int(in_features // (div_value ** (i + 1))) for i in range(num_clusters)]


# =====================================================================================
# cutoff selection from counts (Grave et al. 2017, section 4 cost model)
# =====================================================================================


def adaptive_cost(
    counts,
    cutoffs: Sequence[int],
    in_features: int,
    div_value: float = 4.0,
    batch_size: int = 1024,
    min_gemm_flops: float = 0.0,
    gemm_overhead: float = 0.0,
) -> float:
    """Expected forward cost (multiply-adds) of one adaptive-softmax batch under Grave's model.

    With class probabilities ``p = counts / sum(counts)``, tail masses ``p_j`` and sizes ``k_j``,
    batch ``B``, head size ``c_1 + J`` and tail widths ``d_j = floor(d / div**j)``::

        C = g(B, c_1 + J, d) + sum_j [ g(B p_j, d_j, d) + g(B p_j, k_j, d_j) ]
        g(rows, cols, inner) = gemm_overhead + max(min_gemm_flops, rows * cols * inner)

    Defaults (``0, 0``) give the plain FLOP model (then ``B`` cancels out of the argmin). Positive
    values give Grave et al.'s GPU model ``g(k, B) = c + max(lambda k_0 B_0, lambda k B)``: a GEMM
    below the saturation size costs as much as one of that size, plus a fixed launch cost per GEMM;
    both favour fewer, larger clusters. The backward pass repeats the same GEMMs twice, so the
    training cost is about 3C and has the same argmin. A cluster that no row reaches is still
    charged (``B p_j`` is an expectation).
    """
    p = check_counts(counts)
    V = p.shape[0]
    cut = check_cutoffs(cutoffs, V)
    p = p / p.sum()
    bounds = cut + [V]
    cum = np.concatenate([[0.0], np.cumsum(p)])
    dims = _tail_dims(in_features, div_value, len(cut))
    B = float(batch_size)
    cost = _gemm_cost(B, cut[0] + len(cut), in_features, min_gemm_flops, gemm_overhead)
    for j in range(len(cut)):
        rows = B * (cum[bounds[j + 1]] - cum[bounds[j]])
        cost += _gemm_cost(rows, dims[j], in_features, min_gemm_flops, gemm_overhead)
        cost += _gemm_cost(rows, bounds[j + 1] - bounds[j], dims[j], min_gemm_flops, gemm_overhead)
    return float(cost)


def _gemm_cost(rows, cols, inner, min_gemm_flops: float, gemm_overhead: float):
    """g(rows, cols, inner) of :func:`adaptive_cost` (works on numpy arrays)."""
    return float(gemm_overhead) + np.maximum(float(min_gemm_flops), rows * cols * inner)


def _next_min(G: np.ndarray, thr: np.ndarray, increasing: bool):
    """For every (a, b): min and argmin over c of G[b, c], with c >= thr[a, b] when ``increasing``."""
    n = G.shape[0]
    if increasing:
        # suffix minimum (and its argmin) along c, then look it up at c = thr[a, b]
        rev = G[:, ::-1]
        suf = np.minimum.accumulate(rev, axis=1)[:, ::-1]
        # argmin of the suffix: the last position where the running minimum was attained (from the right)
        idx_rev = np.arange(n)[None, :].repeat(n, 0)
        hit = rev == np.minimum.accumulate(rev, axis=1)
        arg_rev = np.maximum.accumulate(np.where(hit, idx_rev, 0), axis=1)
        sarg = (n - 1 - arg_rev)[:, ::-1]
        suf = np.concatenate([suf, np.full((n, 1), np.inf)], axis=1)
        sarg = np.concatenate([sarg, np.full((n, 1), n - 1)], axis=1)
        t = np.minimum(thr, n)
        rows = np.arange(n)[None, :]  # b
        return suf[rows, t], sarg[rows, t]
    mn, am = G.min(axis=1), G.argmin(axis=1)
    return np.broadcast_to(mn[None, :], G.shape), np.broadcast_to(am[None, :], G.shape)


def choose_cutoffs(
    counts,
    in_features: int,
    num_clusters: Optional[int] = None,
    div_value: float = 4.0,
    batch_size: int = 1024,
    min_gemm_flops: float = 0.0,
    gemm_overhead: float = 0.0,
    min_head_mass: float = 0.0,
    increasing_sizes: bool = True,
    max_clusters: int = 4,
    min_tail_dim: int = 4,
    num_candidates: int = 384,
) -> List[int]:
    """Cutoffs minimising :func:`adaptive_cost` for frequency-sorted class ``counts`` [V].

    Exact dynamic programme over ``M = num_candidates`` log-spaced candidate positions in
    [1, V-1] (every position when V - 1 <= M): with ``T_j(a, b)`` the cost of tail cluster j
    spanning candidates a..b, ``F_J(a) = T_J(a, V)``, ``F_j(a) = min_{b > a} T_j(a, b) + F_{j+1}(b)``,
    and the answer ``argmin_a head(a) + F_1(a)``; O(J M^2) time, vectorised (well under a second for
    V = 10^6). ``num_clusters=None`` tries every J in 1..``max_clusters`` whose narrowest tail keeps
    ``d_J = floor(d / div**J) >= min_tail_dim`` and keeps the cheapest. ``min_head_mass`` restricts the
    shortlist to cover at least that fraction of the counts — the cost model sees compute only,
    not model quality, and its optimum puts few classes in the full-rank head (docs/adaptive.md).

    Returns a strictly increasing list of ints in (0, V).
    """
    p = check_counts(counts)
    V = p.shape[0]
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"in_features must be a positive int, got {in_features!r}")
    div_value = _check_div(div_value)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 2:
        raise ValueError(f"num_candidates must be an int >= 2, got {num_candidates!r}")
    for name, val in (("min_gemm_flops", min_gemm_flops), ("gemm_overhead", gemm_overhead)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
    if not (isinstance(min_head_mass, (int, float)) and 0.0 <= min_head_mass < 1.0):
        raise ValueError(f"min_head_mass must be in [0, 1), got {min_head_mass!r}")
    if num_clusters is None:
        if isinstance(max_clusters, bool) or not isinstance(max_clusters, int) or max_clusters < 1:
            raise ValueError(f"max_clusters must be an int >= 1, got {max_clusters!r}")
        js = [j for j in range(1, max_clusters + 1) if _tail_dims(in_features, div_value, j)[-1] >= min_tail_dim]
        js = [j for j in js if j <= V - 1] or [1]
    else:
        if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or not 1 <= num_clusters <= V - 1:
            raise ValueError(f"num_clusters must be an int in [1, {V - 1}] (V - 1), got {num_clusters!r}")
        js = [num_clusters]
    p = p / p.sum()
    cum = np.concatenate([[0.0], np.cumsum(p)])

    if V - 1 <= num_candidates:
        cand = np.arange(1, V, dtype=np.int64)
    else:
        cand = np.unique(np.round(np.geomspace(1, V - 1, num_candidates)).astype(np.int64))
    M = len(cand)
    pos = np.concatenate([cand, [V]]).astype(np.float64)  # index M stands for V
    mass = np.concatenate([cum[cand], [1.0]])
    span_mass = mass[None, :] - mass[:, None]  # [M+1, M+1]: mass of [pos[a], pos[b])
    span_size = pos[None, :] - pos[:, None]
    valid = span_size > 0
    B = float(batch_size)
    head_ok = cum[cand] >= min_head_mass - 1e-12
    if not head_ok.any():
        raise ValueError(f"no cutoff below V gives the shortlist min_head_mass={min_head_mass}")

    # thr[a, b]: first candidate c whose cluster [pos[b], pos[c]) is at least as large as [pos[a], pos[b])
    thr = np.searchsorted(pos, 2.0 * pos[None, :] - pos[:, None], side="left")  # [M+1, M+1]
    best = None
    for J in js:
        if M < J:
            continue
        dims = _tail_dims(in_features, div_value, J)
        # Gs[j][a, b]: cheapest cost of tail clusters j..J when cluster j spans [pos[a], pos[b])
        Gs: List[np.ndarray] = [None] * J
        for j in range(J - 1, -1, -1):
            rows = B * span_mass
            tc = _gemm_cost(rows, dims[j], in_features, min_gemm_flops, gemm_overhead) + _gemm_cost(
                rows, span_size, dims[j], min_gemm_flops, gemm_overhead
            )
            tc = np.where(valid, tc, np.inf)
            if j == J - 1:
                G = np.full_like(tc, np.inf)
                G[:, M] = tc[:, M]  # the last cluster ends at V
            else:
                G = tc + _next_min(Gs[j + 1], thr, increasing_sizes)[0]
            Gs[j] = G
        head = _gemm_cost(B, cand + J, in_features, min_gemm_flops, gemm_overhead)
        total = np.where(head_ok[:, None], head[:, None] + Gs[0][:M, :], np.inf)
        a, b = np.unravel_index(int(np.argmin(total)), total.shape)
        cost = float(total[a, b])
        if not np.isfinite(cost):
            continue
        cut = [int(pos[a])]
        for j in range(1, J):
            cut.append(int(pos[b]))
            arg = _next_min(Gs[j], thr, increasing_sizes)[1]
            a, b = b, int(arg[a, b])
        if best is None or cost < best[0]:
            best = (cost, cut)
    if best is None:
        raise ValueError(f"cannot place {js} tail cluster(s) among {V} classes with these constraints")
    return best[1]


# =====================================================================================
# the head
# =====================================================================================


def _as_param(obj, name: str) -> nn.Parameter:
    w = getattr(obj, "weight", obj)
    if not isinstance(w, nn.Parameter):
        raise TypeError(
            f"{name} must be an nn.Parameter or a module with a .weight Parameter (e.g. nn.Embedding), "
            f"got {type(obj).__name__}"
        )
    return w


class AdaptiveSoftmax(Head):
    r"""Adaptive softmax head (Grave et al. 2017), ``torch.nn.AdaptiveLogSoftmaxWithLoss``-compatible.

    Args:
        in_features: d. num_classes: V (ids frequency-sorted, 0 = most frequent).
        cutoffs: strictly increasing ints in (0, V); ``None`` chooses them from ``counts`` with
            :func:`choose_cutoffs`.
        div_value: tail cluster j (1-based) projects to ``floor(d / div_value**j)`` dims.
        head_bias: bias on the head logits (shortlist + cluster logits), as in torch.
        counts: [V] class counts (non-increasing: ids frequency-sorted, see
            :class:`bigsoftmax.vocab.FrequencyOrder`); validated whenever given. Zero counts (necessarily at
            the end) are floored to half the smallest positive count before choosing cutoffs.
        ignore_index, reduction: as ``nn.CrossEntropyLoss``.
        tie_weight: an ``nn.Embedding`` (or a Parameter) ``[V_in >= cutoffs[0], d]``: the head's
            shortlist rows become the view ``tie_weight[:cutoffs[0]]`` (shared, gradients flow).
        tie_tail: optional sequence of J Parameters/modules ``[k_j, d_j]`` (e.g. an adaptive input
            embedding's clusters, Baevski & Auli 2019) used as the tail output matrices.
        generator: torch.Generator for the initialisation (uniform(+-1/sqrt(fan_in)) like nn.Linear).

    Parameters: ``head_weight [c_1 + J, d]`` (or ``cluster_weight [J, d]`` with tied shortlist),
    ``head_bias_param [c_1 + J]``, ``tail_proj[j] [d_j, d]``, ``tail_weight[j] [k_j, d_j]``.

    .. math::
        \log p(c \mid h) = \begin{cases} \log \operatorname{softmax}(W_h h)_c & c < c_1 \\
            \log \operatorname{softmax}(W_h h)_{c_1 + j} + \log \operatorname{softmax}(T_j P_j h)_{c - s_j}
            & c \text{ in tail cluster } j \end{cases}

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = AdaptiveSoftmax(64, 10_000, cutoffs=[1000, 5000], div_value=4.0)
        >>> loss = head(torch.randn(8, 64), torch.randint(0, 10_000, (8,)))
        >>> logp, ids = head.topk(torch.randn(8, 64), 5)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        cutoffs: Optional[Sequence[int]] = None,
        div_value: float = 4.0,
        head_bias: bool = False,
        counts=None,
        ignore_index: int = -100,
        reduction: str = "mean",
        tie_weight: Union[nn.Module, nn.Parameter, None] = None,
        tie_tail: Optional[Sequence[Union[nn.Module, nn.Parameter]]] = None,
        generator: Optional[torch.Generator] = None,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, num_classes, ignore_index=ignore_index, reduction=reduction)
        self.div_value = _check_div(div_value)
        if counts is not None:
            counts = _floor_zero_counts(counts)  # zero counts: floored to half the smallest positive count
            check_counts(counts, num_classes)
        if cutoffs is None:
            if counts is None:
                raise ValueError("give cutoffs (strictly increasing ints in (0, num_classes)) or counts to choose them")
            cutoffs = choose_cutoffs(counts, in_features, div_value=self.div_value)
        cut = check_cutoffs(cutoffs, num_classes)
        self.cutoffs = cut  # user cutoffs, without V (torch's module stores cut + [V])
        self.shortlist_size = cut[0]
        self.n_clusters = len(cut)
        self.head_size = self.shortlist_size + self.n_clusters
        self.head_bias = bool(head_bias)
        bounds = cut + [num_classes]
        self.cluster_sizes = [bounds[j + 1] - bounds[j] for j in range(self.n_clusters)]
        self.tail_dims = _tail_dims(in_features, self.div_value, self.n_clusters)
        if min(self.tail_dims) < 1:
            # torch's AdaptiveLogSoftmaxWithLoss accepts such clusters too (parity), so warn, not refuse
            warnings.warn(
                f"AdaptiveSoftmax tail dims floor(in_features / div_value**j) = {self.tail_dims} include 0 "
                f"(in_features={in_features}, div_value={self.div_value}, {self.n_clusters} clusters): a 0-dim "
                f"cluster is stuck at the uniform distribution; use fewer cutoffs, a smaller div_value or a "
                f"larger in_features",
                UserWarning, stacklevel=2,
            )
        fk = {"device": device, "dtype": dtype}
        self.register_buffer("_bounds", torch.tensor(bounds, dtype=torch.long, device=device), persistent=False)
        # the bucketize boundaries of _cluster_of, kept on the head's device (no per-step copy)
        self.register_buffer("_cluster_starts", torch.tensor(cut, dtype=torch.long, device=device), persistent=False)

        # head: shortlist rows (own or tied view) + one row per tail cluster
        if tie_weight is not None:
            tw = _as_param(tie_weight, "tie_weight")
            if tw.dim() != 2 or tw.shape[1] != in_features or tw.shape[0] < self.shortlist_size:
                raise ValueError(
                    f"tie_weight must be [V_in >= cutoffs[0]={self.shortlist_size}, in_features={in_features}], "
                    f"got {tuple(tw.shape)}"
                )
            self.tied_weight = tw  # registered: the same Parameter object as the embedding's
            self.head_weight = None
            self.cluster_weight = nn.Parameter(torch.empty(self.n_clusters, in_features, **fk))
        else:
            self.tied_weight = None
            self.head_weight = nn.Parameter(torch.empty(self.head_size, in_features, **fk))
            self.cluster_weight = None
        self.head_bias_param = nn.Parameter(torch.empty(self.head_size, **fk)) if self.head_bias else None

        self.tail_proj = nn.ParameterList(
            [nn.Parameter(torch.empty(dj, in_features, **fk)) for dj in self.tail_dims]
        )
        if tie_tail is not None:
            tie_tail = list(tie_tail)
            if len(tie_tail) != self.n_clusters:
                raise ValueError(
                    f"tie_tail must hold {self.n_clusters} matrices (one per tail cluster), got {len(tie_tail)}"
                )
            ws = []
            for j, t in enumerate(tie_tail):
                w = _as_param(t, f"tie_tail[{j}]")
                if tuple(w.shape) != (self.cluster_sizes[j], self.tail_dims[j]):
                    raise ValueError(
                        f"tie_tail[{j}] must be [{self.cluster_sizes[j]}, {self.tail_dims[j]}] "
                        f"(cluster size, floor(d / div_value**{j + 1})), got {tuple(w.shape)}"
                    )
                ws.append(w)
            self.tail_weight = nn.ParameterList(ws)
            self._tail_tied = True
        else:
            self.tail_weight = nn.ParameterList(
                [nn.Parameter(torch.empty(k, dj, **fk)) for k, dj in zip(self.cluster_sizes, self.tail_dims)]
            )
            self._tail_tied = False
        self.reset_parameters(generator)

    # ------------------------------------------------------------------ parameters
    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """nn.Linear's default init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)); tied weights untouched."""

        def uni(t: Tensor, fan_in: int):
            if t.numel() and fan_in > 0:
                bound = 1.0 / math.sqrt(fan_in)
                t.uniform_(-bound, bound, generator=generator)

        d = self.in_features
        uni(self.head_weight if self.head_weight is not None else self.cluster_weight, d)
        if self.head_bias_param is not None:
            uni(self.head_bias_param, d)
        for p in self.tail_proj:
            uni(p, d)
        if not self._tail_tied:
            for p, dj in zip(self.tail_weight, self.tail_dims):
                uni(p, dj)

    @property
    def shortlist_weight(self) -> Tensor:
        """[c_1, d] shortlist output rows (a view of the tied embedding when tied)."""
        if self.tied_weight is not None:
            return self.tied_weight[: self.shortlist_size]
        return self.head_weight[: self.shortlist_size]

    def full_head_weight(self) -> Tensor:
        """[c_1 + J, d] head matrix (shortlist rows, then one row per tail cluster)."""
        if self.tied_weight is None:
            return self.head_weight
        return torch.cat([self.tied_weight[: self.shortlist_size], self.cluster_weight], dim=0)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, cutoffs={self.cutoffs}, "
            f"div_value={self.div_value}, head_bias={self.head_bias}, tail_dims={self.tail_dims}, "
            f"tied={self.tied_weight is not None}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
        )

    # ------------------------------------------------------------------ torch interop
    @classmethod
    def from_torch(cls, module: nn.AdaptiveLogSoftmaxWithLoss, **kwargs) -> "AdaptiveSoftmax":
        """Copy of a ``torch.nn.AdaptiveLogSoftmaxWithLoss`` (same numbers); kwargs go to the constructor.

        With ``tie_weight=embedding`` the module's shortlist rows are copied *into* the first
        ``cutoffs[0]`` rows of the embedding (they are the same parameter afterwards); with
        ``tie_tail=...`` the tail matrices are copied into the given parameters.
        """
        if not isinstance(module, nn.AdaptiveLogSoftmaxWithLoss):
            raise TypeError(f"module must be a torch.nn.AdaptiveLogSoftmaxWithLoss, got {type(module).__name__}")
        w = module.head.weight
        head = cls(
            module.in_features,
            module.n_classes,
            cutoffs=module.cutoffs[:-1],
            div_value=module.div_value,
            head_bias=module.head_bias,
            device=w.device,
            dtype=w.dtype,
            **kwargs,
        )
        with torch.no_grad():
            if head.tied_weight is not None:
                head.tied_weight[: head.shortlist_size].copy_(w[: head.shortlist_size])
                head.cluster_weight.copy_(w[head.shortlist_size :])
            else:
                head.head_weight.copy_(w)
            if head.head_bias_param is not None:
                head.head_bias_param.copy_(module.head.bias)
            for j, (i2h, h2o) in enumerate(module.tail):
                head.tail_proj[j].copy_(i2h.weight)
                head.tail_weight[j].copy_(h2o.weight)
        return head

    def to_torch(self) -> nn.AdaptiveLogSoftmaxWithLoss:
        """A ``torch.nn.AdaptiveLogSoftmaxWithLoss`` holding copies of these weights."""
        w = self.full_head_weight()
        m = nn.AdaptiveLogSoftmaxWithLoss(
            self.in_features,
            self.num_classes,
            self.cutoffs,
            div_value=self.div_value,
            head_bias=self.head_bias,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            m.head.weight.copy_(w)
            if self.head_bias_param is not None:
                m.head.bias.copy_(self.head_bias_param)
            for j, (i2h, h2o) in enumerate(m.tail):
                i2h.weight.copy_(self.tail_proj[j])
                h2o.weight.copy_(self.tail_weight[j])
        return m

    # ------------------------------------------------------------------ math
    def _cluster_of(self, y: Tensor) -> Tensor:
        """[N] cluster index: 0 = shortlist, j = tail cluster j (1-based)."""
        return torch.bucketize(y, self._cluster_starts, right=True)

    def _head_logits(self, h: Tensor) -> Tensor:
        return F.linear(h, self.full_head_weight(), self.head_bias_param)

    def _tail_logits(self, h: Tensor, j: int) -> Tensor:
        """[n, k_j] logits of tail cluster j (0-based) for hidden rows h [n, d]."""
        return F.linear(F.linear(h, self.tail_proj[j]), self.tail_weight[j])

    def _loss(self, h: Tensor, y: Tensor) -> Tensor:
        """−log p(y | h) [N]; tail clusters without a row of this batch (and, for an empty batch, every
        parameter) join the graph through an exact zero-weight term, so ``DistributedDataParallel``
        needs no ``find_unused_parameters`` (every parameter gets a gradient, zero where unused).

        The tails' row counts are read on the host once per step (they size the tail GEMMs: the one
        host sync of a training step on an accelerator; none under ``torch.compile``)."""
        if torch.compiler.is_compiling():  # no host sync: every tail joins through the exact zero term
            out = -self._target_log_prob(h, y)
            unused = [p for j in range(self.n_clusters) for p in (self.tail_proj[j], self.tail_weight[j])
                      if p.requires_grad]
        elif h.shape[0] == 0:
            out = -self._target_log_prob(h, y)
            unused = [p for p in self.parameters() if p.requires_grad]
        else:
            lp, counts = self._tlp_and_counts(h, y, *self._tlp_params())
            out = -lp
            unused = [p for j in range(self.n_clusters) if counts[j + 1] == 0
                      for p in (self.tail_proj[j], self.tail_weight[j]) if p.requires_grad]
        if unused and torch.is_grad_enabled():
            out = out + sum(p.sum() for p in unused).to(out.dtype) * 0.0
        return out

    def _tlp_params(self) -> List[Optional[Tensor]]:
        return [self.full_head_weight(), self.head_bias_param, *self.tail_proj, *self.tail_weight]

    def _target_log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        """log p(y | h) [N] evaluating only the tail clusters present (one sort, one row gather).

        head part: ``z_H[t] - lse_H`` with t = y (shortlist) or c_1 + j - 1 (cluster j), via the fused
        :func:`linear_logsumexp`; tail part for the rows of cluster j (contiguous after a stable sort
        by cluster): ``z_j[y - c_j] - lse_j`` on ``x_j = h_rows @ P_j.T``.
        """
        params = self._tlp_params()
        if torch.compiler.is_compiling():
            # the tail clusters present are read from the data: the same code as one opaque op
            return call_opaque(self._tlp_handle(), [h, y, *params])[0]
        return self._tail_target_log_prob(h, y, *params)

    @torch.compiler.assume_constant_result
    def _tlp_handle(self) -> int:
        return bound_handle(self, "target_log_prob", lambda m: m._tail_target_log_prob,
                            lambda m: lambda h, y, *ps: h.new_empty(h.shape[0],
                                                                    dtype=torch.promote_types(h.dtype, torch.float32)))

    def _tail_target_log_prob(self, h: Tensor, y: Tensor, head_w: Tensor, head_b: Optional[Tensor],
                              *tails: Tensor) -> Tensor:
        """:meth:`_target_log_prob` on the given parameters (``tails``: the J projections, then the J weights)."""
        return self._tlp_and_counts(h, y, head_w, head_b, *tails)[0]

    def _tlp_and_counts(self, h: Tensor, y: Tensor, head_w: Tensor, head_b: Optional[Tensor],
                        *tails: Tensor) -> Tuple[Tensor, List[int]]:
        """(:meth:`_tail_target_log_prob`, the rows per cluster ``[n_shortlist, n_1, ..., n_J]`` on the host).

        The counts are the one host read (``.tolist()``); when :func:`~bigsoftmax._validate.sync_free`
        they are made by a scatter-add rather than ``bincount`` (which reads the max id on the host)."""
        proj, tail_w = tails[: self.n_clusters], tails[self.n_clusters:]
        N = h.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)
        if N == 0:
            return h.new_zeros(0, dtype=acc) + h.sum() * 0, [0] * (self.n_clusters + 1)
        cid = self._cluster_of(y)
        head_t = torch.where(cid == 0, y, cid + (self.shortlist_size - 1))
        lse_h, zt_h = linear_logsumexp_unchecked(h, head_w, head_b, head_t)
        out = zt_h - lse_h
        if sync_free(h):
            counts = torch.zeros(self.n_clusters + 1, dtype=torch.long, device=cid.device).index_add_(
                0, cid, torch.ones_like(cid)).tolist()
        else:
            counts = torch.bincount(cid, minlength=self.n_clusters + 1).tolist()
        if sum(counts[1:]) == 0:
            return out, counts
        order = torch.argsort(cid, stable=True)
        n0 = counts[0]
        rows = order[n0:]
        h_t = h.index_select(0, rows)  # every tail row, grouped by cluster
        rel = y.index_select(0, rows) - self._bounds.index_select(0, cid.index_select(0, rows) - 1)
        parts = []
        start = 0
        for j in range(self.n_clusters):
            c = counts[j + 1]
            if c == 0:
                continue
            x = F.linear(h_t[start : start + c], proj[j])
            lse, zt = linear_logsumexp_unchecked(x, tail_w[j], None, rel[start : start + c])
            parts.append(zt - lse)
            start += c
        tail_lp = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.index_add(0, rows, tail_lp.to(out.dtype)), counts

    def _log_prob(self, h: Tensor) -> Tensor:
        """[N, V] exact log-probabilities (shortlist from the head; tails add the cluster log-prob)."""
        acc = torch.promote_types(h.dtype, torch.float32)
        head_lp = torch.log_softmax(self._head_logits(h).to(acc), dim=-1)
        c1 = self.shortlist_size
        pieces = [head_lp[:, :c1]]
        for j in range(self.n_clusters):
            tail_lp = torch.log_softmax(self._tail_logits(h, j).to(acc), dim=-1)
            pieces.append(tail_lp + head_lp[:, c1 + j : c1 + j + 1])
        return torch.cat(pieces, dim=1)

    @torch.no_grad()
    def _topk(self, h: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        """Exact top-k with pruning.

        Every class of tail cluster j has ``log p <= log p_H(cluster j)`` (its in-cluster
        log-softmax is <= 0). Start from the shortlist's top-k, then for each cluster expand only
        the rows whose cluster log-prob exceeds their current k-th best value (``-inf`` while fewer
        than k are held); expanded rows score the cluster in class chunks (chunked logsumexp +
        chunked top-k), so memory stays O(rows * chunk). Result sorted descending.
        """
        N = h.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)
        c1 = self.shortlist_size
        head_lp = torch.log_softmax(self._head_logits(h).to(acc), dim=-1)
        ks = min(k, c1)
        best_v, best_i = head_lp[:, :c1].topk(ks, dim=1)
        cl_lp = head_lp[:, c1:]
        # process clusters from most to least probable on average (thresholds rise fastest)
        order = torch.argsort(cl_lp.mean(0), descending=True).tolist()
        for j in order:
            if best_v.shape[1] < k:
                expand = torch.ones(N, dtype=torch.bool, device=h.device)
            else:
                expand = cl_lp[:, j] > best_v[:, -1]
            if not bool(expand.any()):
                continue
            rows = expand.nonzero().squeeze(1)
            x = F.linear(h.index_select(0, rows), self.tail_proj[j])
            w = self.tail_weight[j]
            kj = self.cluster_sizes[j]
            chunk = max(1, self.eval_chunk)

            def score(s, e, x=x, w=w):
                return (x @ w[s:e].t()).to(acc)

            lse = linear_logsumexp(x, w)[0].to(acc)
            kk = min(k, kj)
            v, i = chunked_topk(score, kj, rows.numel(), kk, chunk, h.device, acc)
            v = v - lse[:, None] + cl_lp.index_select(0, rows)[:, j : j + 1]
            i = i + self._bounds[j]
            if best_v.shape[1] < k:
                # rows not expanded cannot occur here (all rows expand while the list is short)
                cand_v = torch.cat([best_v, v], dim=1)
                cand_i = torch.cat([best_i, i], dim=1)
                kk2 = min(k, cand_v.shape[1])
                best_v, sel = cand_v.topk(kk2, dim=1)
                best_i = cand_i.gather(1, sel)
            else:
                bv, bi = best_v.index_select(0, rows), best_i.index_select(0, rows)
                cand_v = torch.cat([bv, v], dim=1)
                cand_i = torch.cat([bi, i], dim=1)
                nv, sel = cand_v.topk(k, dim=1)
                best_v = best_v.index_copy(0, rows, nv)
                best_i = best_i.index_copy(0, rows, cand_i.gather(1, sel))
        return best_v, best_i

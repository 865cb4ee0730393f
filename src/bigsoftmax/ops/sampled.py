"""The sampled-logits core and the fused sampled-softmax kernel (package-private).

Every sampling objective of the library (sampled softmax, NCE, sampled logistic, negative sampling,
the sampled margin heads, in-batch retrieval) scores its candidates here:

    true_logits[b, t]    = x_b · w(y_bt) + bias(y_bt) − log E_true[b, t]
    sampled_logits[b, s] = x_b · w(c_s)  + bias(c_s)  − log E_sampled[s]        (shared candidates)
    sampled_logits[b, s] = x_b · w(c_bs) + bias(c_bs) − log E_sampled[b, s]     (per-example candidates)

Candidates come in two forms:

* **shared** ``[S]`` — TF's semantics, one candidate set for the whole batch: one gather of S rows
  and one GEMM ``[B, d] × [d, S]``;
* **per example** ``[B, S]`` — each row its own set (context-dependent proposals such as
  :class:`bigsoftmax.samplers.Bigram`). Two ways to score them (``gather=``):

  - ``"unique"`` (default): the U distinct ids of the batch are gathered once, scored by one GEMM
    ``[B, d] × [d, U]`` and each row picks its S columns through an index map ``inv [B, S]``.
    Gradients touch only the U rows (sparse COO of U rows); costs ``B·U·d`` multiply-adds at GEMM
    speed. Needs ``torch.unique`` (one host synchronisation).
  - ``"rows"``: gather ``[B, S, d]`` rows and take B matrix-vector products; ``B·S·d`` memory
    traffic, no synchronisation, gradients over ``B·S`` (repeated) rows.

  ``benchmarks/proposals.py`` measures both against the shared draw.

Accidental hits (a candidate equal to one of its row's true classes) are *masked*: the logit is set
to the dtype's most negative finite value (general path) or its exponential to exactly 0 (fused
kernel), so neither the loss nor the gradient sees ±inf or NaN.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validate import check_choice, check_not_meta, sync_free, values_checked

Weights = Union[Tensor, Sequence[Tensor]]
SampledValues = Tuple[Tensor, Tensor, Tensor]

GATHER_MODES = ("unique", "rows")

__all__ = [
    "SampledParts",
    "sampled_logits_parts",
    "gather_rows",
    "fused_sampled_softmax",
    "softmax_ce",
    "sigmoid_ce",
    "fused_ok",
    "check_sampled_values",
    "check_labels",
    "check_weights",
    "check_not_meta",
    "hit_pairs",
    "hit_mask",
]


# ----------------------------------------------------------------------------- validation
# check_not_meta lives in bigsoftmax._validate (shared with the heads); re-exported here.
def num_classes_of(weights: Weights) -> int:
    """Number of rows of a [V, d] tensor or of a list of row shards."""
    if isinstance(weights, Tensor):
        return weights.shape[0]
    return sum(w.shape[0] for w in weights)


def check_weights(weights: Weights, biases: Optional[Weights], num_classes: int, d: int) -> None:
    """weights [num_classes, d] (or shards [rows_i, d]) and biases [num_classes] (or shards) or None."""
    shards = [weights] if isinstance(weights, Tensor) else list(weights)
    if not shards or not all(isinstance(w, Tensor) for w in shards):
        raise TypeError("weights must be a [num_classes, d] tensor or a non-empty list of [rows_i, d] tensor shards")
    for w in shards:
        if w.dim() != 2 or w.shape[1] != d:
            raise ValueError(f"weights must be [num_classes, d={d}] (or shards [rows_i, {d}]; d is the width of "
                             f"inputs [batch, d]), got a shard of shape {tuple(w.shape)}")
    check_not_meta(weights=shards, biases=biases)
    V = num_classes_of(weights)
    if V != num_classes:
        raise ValueError(f"weights have {V} rows but num_classes={num_classes}; they must be equal")
    if biases is not None:
        bshards = [biases] if isinstance(biases, Tensor) else list(biases)
        if sum(b.shape[0] for b in bshards) != V or any(b.dim() != 1 for b in bshards):
            raise ValueError(f"biases must be 1-D with {V} entries in total (one per class), got shapes {[tuple(b.shape) for b in bshards]}")


def check_labels(labels: Tensor, num_true: int, batch: int, num_classes: int, name: str = "labels") -> Tensor:
    """Return labels as int64 [B, num_true]; accept [B] when num_true == 1 (``name``: the argument's name)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be an int64 tensor of shape [batch, num_true], got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise TypeError(f"{name} must hold integer class ids (int64), got dtype {labels.dtype}")
    check_not_meta(**{name: labels})
    if not isinstance(num_true, int) or num_true < 1:
        raise ValueError(f"num_true must be an int >= 1, got {num_true!r}")
    if labels.dim() == 1 and num_true == 1:
        labels = labels[:, None]
    if labels.dim() != 2 or labels.shape[1] != num_true or labels.shape[0] != batch:
        raise ValueError(
            f"{name} must have shape [batch={batch}, num_true={num_true}]"
            + (" (or [batch] when num_true=1)" if num_true == 1 else "")
            + f", got {tuple(labels.shape)}"
        )
    if labels.numel() and values_checked(lambda: (labels >= 0) & (labels < num_classes),
                                         f"{name} contain a class id outside the allowed range [0, {num_classes})"):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} contain class id {lo if lo < 0 else hi}, outside the allowed range [0, {num_classes})")
    return labels.long()


def check_sampled_values(sampled_values, labels: Tensor, num_sampled: Optional[int], num_classes: int) -> SampledValues:
    """Validate TF-style ``(sampled_candidates, true_expected_count, sampled_expected_count)``.

    ``sampled_candidates`` is ``[S]`` (shared by the batch) or ``[B, S]`` (one set per example, B =
    ``labels.shape[0]``); ``sampled_expected_count`` has the same shape. ``true_expected_count`` is
    ``[B, T]`` (= labels), ``[B]`` when T = 1, or ``[B, 1]`` broadcast over the T true classes as TF
    does. Returns ``(candidates int64, true_expected_count [B, T], sampled_expected_count)``.
    """
    if not (isinstance(sampled_values, (tuple, list)) and len(sampled_values) == 3):
        raise TypeError("sampled_values must be a tuple (sampled_candidates [S] or [batch, S], "
                        "true_expected_count [batch, num_true], sampled_expected_count [S] or [batch, S])")
    sampled, true_exp, samp_exp = sampled_values
    for name, t in (("sampled_candidates", sampled), ("true_expected_count", true_exp), ("sampled_expected_count", samp_exp)):
        if not isinstance(t, Tensor):
            raise TypeError(f"sampled_values: {name} must be a tensor, got {type(t).__name__}")
    check_not_meta(sampled_candidates=sampled, true_expected_count=true_exp, sampled_expected_count=samp_exp)
    B = labels.shape[0]
    if sampled.dtype.is_floating_point or sampled.dtype.is_complex or sampled.dtype == torch.bool or sampled.dim() not in (1, 2):
        raise ValueError("sampled_values: sampled_candidates must be a 1-D int64 tensor [num_sampled] (shared) or 2-D "
                         f"[batch, num_sampled] (per example), got shape {tuple(sampled.shape)} dtype {sampled.dtype}")
    if sampled.dim() == 2 and sampled.shape[0] != B:
        raise ValueError(f"sampled_values: per-example sampled_candidates must have shape [batch={B}, num_sampled], "
                         f"got {tuple(sampled.shape)}")
    S = sampled.shape[-1]
    if num_sampled is not None and S != num_sampled:
        raise ValueError(f"sampled_values hold {S} candidates but num_sampled={num_sampled}")
    if sampled.numel() and values_checked(lambda: (sampled >= 0) & (sampled < num_classes),
                                          f"sampled_candidates must lie in [0, {num_classes}) (num_classes)") \
            and (int(sampled.min()) < 0 or int(sampled.max()) >= num_classes):
        raise ValueError(f"sampled_candidates must lie in [0, {num_classes}) (num_classes)")
    if tuple(samp_exp.shape) != tuple(sampled.shape):
        raise ValueError(f"sampled_expected_count must have shape {list(sampled.shape)} (= sampled_candidates), got {tuple(samp_exp.shape)}")
    if tuple(true_exp.shape) != tuple(labels.shape):
        T = labels.shape[1]
        if true_exp.dim() == 1 and T == 1 and true_exp.shape[0] == B:
            true_exp = true_exp[:, None]
        elif true_exp.dim() == 2 and tuple(true_exp.shape) == (B, 1):
            true_exp = true_exp.expand(B, T)  # TF broadcasts a [B, 1] count over num_true
        else:
            raise ValueError(f"true_expected_count must have shape {tuple(labels.shape)} (= labels) or [{B}, 1], got {tuple(true_exp.shape)}")
    if true_exp.numel() and values_checked(lambda: true_exp > 0, "true_expected_count must be > 0") \
            and not bool((true_exp > 0).all()):
        raise ValueError(
            "true_expected_count must be > 0: a true class has zero sampling probability under the sampler, so log Q is -inf "
            "(use a sampler that gives every true class nonzero probability)"
        )
    if samp_exp.numel() and values_checked(lambda: samp_exp > 0, "sampled_expected_count must be > 0") \
            and not bool((samp_exp > 0).all()):
        raise ValueError("sampled_expected_count must be > 0 for every sampled candidate")
    return sampled.long(), true_exp, samp_exp


# ----------------------------------------------------------------------------- gathering rows
class _SparseGather(torch.autograd.Function):
    """``weight.index_select(0, ids)`` whose gradient w.r.t. weight is a sparse COO tensor."""

    @staticmethod
    def forward(ctx, weight, ids):
        ctx.save_for_backward(ids)
        ctx.shape = weight.shape
        return weight.index_select(0, ids)

    @staticmethod
    def backward(ctx, g):
        (ids,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(ids[None, :], g, ctx.shape, check_invariants=False), None


def _gather(weights: Weights, ids: Tensor, sparse: bool) -> Tensor:
    """:func:`gather_rows` on already validated ids."""
    if isinstance(weights, Tensor):
        flat = ids.reshape(-1)
        rows = _SparseGather.apply(weights, flat) if sparse and weights.requires_grad else weights.index_select(0, flat)
        return rows.reshape(*ids.shape, *weights.shape[1:])
    shards = list(weights)
    if len(shards) == 1:
        return _gather(shards[0], ids, sparse)
    sizes = torch.tensor([w.shape[0] for w in shards], device=ids.device)
    ends = sizes.cumsum(0)
    starts = ends - sizes
    flat = ids.reshape(-1)
    which = torch.searchsorted(ends, flat, right=True)
    pieces, positions = [], []
    for i, w in enumerate(shards):  # one index_select per shard keeps autograd to each shard
        pos = (which == i).nonzero(as_tuple=True)[0]
        if pos.numel():
            pieces.append(_gather(w, flat[pos] - starts[i], sparse))
            positions.append(pos)
    if not pieces:
        out = shards[0].new_empty((0, *shards[0].shape[1:]))
    elif len(pieces) == 1:
        out = pieces[0]
    else:
        out = torch.cat(pieces).index_select(0, torch.argsort(torch.cat(positions)))
    return out.reshape(*ids.shape, *shards[0].shape[1:])


def gather_rows(weights: Weights, ids: Tensor, sparse: bool = False) -> Tensor:
    r"""Rows ``weights[ids]`` of a [V, ...] tensor or of a list of shards concatenated along dim 0.

    Shards follow TF's "div" partition (shard i holds a contiguous block of rows); they are never
    concatenated. ``sparse=True`` makes the gradient w.r.t. the weights a sparse COO tensor over
    the gathered rows (for ``torch.optim.SparseAdam`` / ``SGD`` / ``Adagrad``).

    Args:
        weights: a ``[V, ...]`` tensor or a non-empty list of ``[V_i, ...]`` shards.
        ids: integer class ids in ``[0, V)``, any shape.
        sparse: sparse COO gradient for ``weights``.

    Shape:
        - ids: ``(*)``; output: ``(*, ...)`` (the trailing dims of ``weights``).

    Examples::

        >>> W = torch.randn(10, 4, requires_grad=True)
        >>> gather_rows(W, torch.tensor([[1, 2], [3, 3]]), sparse=True).shape
        torch.Size([2, 2, 4])
    """
    if not isinstance(ids, Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"ids must be an integer tensor of row ids, got {type(ids).__name__ if not isinstance(ids, Tensor) else ids.dtype}")
    shards = [weights] if isinstance(weights, Tensor) else list(weights)
    if not shards or not all(isinstance(w, Tensor) and w.dim() >= 1 for w in shards):
        raise TypeError("weights must be a [V, ...] tensor or a non-empty list of [V_i, ...] tensor shards")
    check_not_meta(ids=ids, weights=shards)
    V = num_classes_of(weights)
    if ids.numel() and values_checked(lambda: (ids >= 0) & (ids < V), f"ids contain a row id outside [0, {V})"):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"ids contain row id {lo if lo < 0 else hi}, outside the allowed range [0, {V}) (the rows of weights)")
    return _gather(weights, ids.long(), sparse)


# ----------------------------------------------------------------------------- accidental hits
def hit_pairs(true_classes: Tensor, sampled: Tensor) -> Tuple[Tensor, Tensor]:
    """All (row, sampled position) pairs where shared ``sampled[pos]`` equals one of row's true classes.

    O((B·T + S) log S): sort the candidates once, binary-search every true class, expand the equal
    ranges (every copy of a duplicated id is reported). A row whose true classes repeat an id still
    reports that (row, pos) once.
    """
    B, T = true_classes.shape
    if sampled.numel() == 0 or true_classes.numel() == 0:
        e = torch.zeros(0, dtype=torch.long, device=sampled.device)
        return e, e
    sorted_ids, order = torch.sort(sampled)
    flat = true_classes.reshape(-1)
    lo = torch.searchsorted(sorted_ids, flat, right=False)
    hi = torch.searchsorted(sorted_ids, flat, right=True)
    n = hi - lo
    rows = torch.arange(B, device=sampled.device).repeat_interleave(T).repeat_interleave(n)
    start = lo.repeat_interleave(n)
    offs = torch.arange(int(n.sum()), device=sampled.device) - (n.cumsum(0) - n).repeat_interleave(n)
    cols = order[start + offs]
    if T > 1 and rows.numel():
        key = torch.unique(rows * sampled.shape[0] + cols)
        rows, cols = key // sampled.shape[0], key % sampled.shape[0]
    return rows, cols


def hit_mask(labels: Tensor, sampled: Tensor) -> Tensor:
    """[B, S] bool: candidate s of row b equals one of row b's true classes.

    ``sampled`` is shared ``[S]`` (sort + binary search, :func:`hit_pairs`) or per example
    ``[B, S]`` (a direct O(B·S·T) comparison, no host synchronisation).
    """
    if sampled.dim() == 2:
        return (sampled[:, :, None] == labels[:, None, :]).any(dim=-1)
    if sync_free(sampled):  # dense O(B·S·T) comparison: no data-dependent shapes (accelerators, compile)
        return (sampled[None, :, None] == labels[:, None, :]).any(dim=-1)
    rows, cols = hit_pairs(labels, sampled)
    mask = torch.zeros(labels.shape[0], sampled.shape[0], dtype=torch.bool, device=sampled.device)
    mask[rows, cols] = True
    return mask


# ----------------------------------------------------------------------------- the shared core
class SampledParts(NamedTuple):
    """Output of :func:`sampled_logits_parts`.

    Shape:
        - true_logits: ``(B, T)``; true_log_q: ``(B, T)`` (log of the expected counts);
        - sampled_logits: ``(B, S)`` (hits filled with the dtype's most negative finite value when
          ``remove_accidental_hits``); hit_mask: ``(B, S)`` bool or None;
        - sampled_log_q and sampled_ids: ``(S)`` for shared candidates, ``(B, S)`` per example;
        - labels: ``(B, T)``.
    """

    true_logits: Tensor
    sampled_logits: Tensor
    hit_mask: Optional[Tensor]
    true_log_q: Tensor
    sampled_log_q: Tensor
    sampled_ids: Tensor
    labels: Tensor


def _candidate_scores(inputs: Tensor, rows: Tensor, bias_rows: Optional[Tensor], inv: Optional[Tensor]) -> Tensor:
    """Scores ``x_b · rows + bias`` of candidates: rows [P, d] shared (then picked by ``inv`` [B, S]
    when given) or rows [B, S, d] per example."""
    if rows.dim() == 3:
        z = torch.bmm(rows.to(inputs.dtype), inputs[:, :, None])[:, :, 0]
        return z if bias_rows is None else z + bias_rows.to(inputs.dtype)
    if bias_rows is not None:
        z = torch.addmm(bias_rows.to(inputs.dtype), inputs, rows.t().to(inputs.dtype))
    else:
        z = inputs @ rows.t().to(inputs.dtype)
    return z if inv is None else z.gather(1, inv)


def sampled_logits_parts(
    weights: Weights,
    biases: Optional[Weights],
    labels: Tensor,
    inputs: Tensor,
    sampled_values: SampledValues,
    *,
    subtract_log_q: bool = True,
    remove_accidental_hits: bool = False,
    row_transform=None,
    sparse: bool = False,
    gather: str = "unique",
) -> SampledParts:
    r"""The one sampled-logits core every sampling objective uses.

    .. math::
        z^{true}_{bt} = x_b \cdot w_{y_{bt}} + b_{y_{bt}} - \log E^{true}_{bt}, \qquad
        z^{s}_{bs} = x_b \cdot w_{c_{bs}} + b_{c_{bs}} - \log E^{s}_{bs}

    (``c_bs = c_s`` for shared candidates; the ``− log E`` terms only when ``subtract_log_q``).
    Only the touched rows are read; with ``sparse=True`` the weight/bias gradients are sparse COO
    tensors over those rows.

    Args:
        weights: ``[V, d]`` class embeddings, or a list of row shards.
        biases: ``[V]`` (or shards) or None.
        labels: int64 true classes.
        inputs: ``[B, d]`` hidden states.
        sampled_values: ``(candidates, true_expected_count, sampled_expected_count)``; candidates
            ``[S]`` (shared) or ``[B, S]`` (per example), see :func:`check_sampled_values`.
        subtract_log_q: subtract the log expected counts (sampled softmax, NCE).
        remove_accidental_hits: mask candidates equal to one of their row's true classes.
        row_transform: applied to the gathered class rows before scoring (margin heads score
            cosines with ``F.normalize``).
        sparse: sparse COO gradients for ``weights``/``biases``.
        gather: per-example candidates only — ``"unique"`` (score the batch's distinct rows with one
            GEMM and pick through an index map) or ``"rows"`` (gather ``[B, S, d]``).

    Shape:
        - labels: ``(B, T)`` or ``(B)``; inputs: ``(B, d)``; output: :class:`SampledParts`.

    Examples::

        >>> W, x, y = torch.randn(50, 8), torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
        >>> sv = (torch.tensor([0, 7, 9]), torch.ones(4, 1), torch.ones(3))
        >>> sampled_logits_parts(W, None, y, x, sv).sampled_logits.shape
        torch.Size([4, 3])
    """
    if not isinstance(inputs, Tensor) or inputs.dim() != 2:
        raise ValueError(f"inputs must be a [batch, d] tensor, got {tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}")
    check_not_meta(inputs=inputs)
    gather = check_choice("gather", gather, GATHER_MODES)
    B, d = inputs.shape
    V = num_classes_of(weights)
    if isinstance(labels, Tensor) and labels.dim() == 1:
        labels = labels[:, None]
    labels = check_labels(labels, labels.shape[1] if isinstance(labels, Tensor) and labels.dim() == 2 else 1, B, V)
    sampled, true_exp, samp_exp = check_sampled_values(sampled_values, labels, None, V)
    sampled = sampled.to(inputs.device)
    T = labels.shape[1]
    inv = None
    if sampled.dim() == 2 and gather == "unique" and not sync_free(sampled):
        # (sync-free: the "rows" layout, same numbers; torch.unique sizes the pool from the data)
        pool, inv = torch.unique(sampled, return_inverse=True)
    else:
        pool = sampled.reshape(-1)
    all_ids = torch.cat([labels.reshape(-1), pool])
    rows = _gather(weights, all_ids, sparse)
    if row_transform is not None:
        rows = row_transform(rows)
    true_w = rows[: B * T].reshape(B, T, d)
    samp_w = rows[B * T:] if not (sampled.dim() == 2 and inv is None) else rows[B * T:].reshape(B, -1, d)
    all_b = _gather(biases, all_ids, sparse) if biases is not None else None
    samp_b = None
    if all_b is not None:
        samp_b = all_b[B * T:] if samp_w.dim() == 2 else all_b[B * T:].reshape(B, -1)
    true_logits = torch.bmm(true_w.to(inputs.dtype), inputs[:, :, None])[:, :, 0]
    if all_b is not None:
        true_logits = true_logits + all_b[: B * T].reshape(B, T).to(inputs.dtype)
    sampled_logits = _candidate_scores(inputs, samp_w, samp_b, inv)
    acc = torch.promote_types(inputs.dtype, torch.float32)
    true_log_q = torch.log(true_exp.to(device=inputs.device, dtype=acc))
    sampled_log_q = torch.log(samp_exp.to(device=inputs.device, dtype=acc))
    if subtract_log_q:
        true_logits = true_logits - true_log_q.to(true_logits.dtype)
        sampled_logits = sampled_logits - sampled_log_q.to(sampled_logits.dtype)
    mask = None
    if remove_accidental_hits:
        mask = hit_mask(labels, sampled)
        sampled_logits = sampled_logits.masked_fill(mask, torch.finfo(sampled_logits.dtype).min)  # a mask fill, not -inf
    return SampledParts(true_logits, sampled_logits, mask, true_log_q, sampled_log_q, sampled, labels)


def softmax_ce(parts: SampledParts) -> Tensor:
    r"""−Σ_j t_j log_softmax(logits)_j with t = 1/T on the true columns; logsumexp in fp32 or wider.

    .. math::
        \ell_b = \log\Big(\sum_{t} e^{z^{true}_{bt}} + \sum_s e^{z^{s}_{bs}}\Big) - \frac1T \sum_t z^{true}_{bt}

    Hits already hold the most negative finite value, so exp() gives exactly 0 for them.
    (Public as ``bigsoftmax.functional.sampled_softmax_from_parts``.)

    Args:
        parts: the :class:`SampledParts` of :func:`sampled_logits_parts`.

    Shape:
        - output: ``(B)`` in fp32 or wider.

    Examples::

        >>> W, x, y = torch.randn(100, 8), torch.randn(4, 8), torch.tensor([[1], [2], [3], [4]])
        >>> sv = (torch.tensor([5, 6, 7]), torch.full((4, 1), 0.03), torch.full((3,), 0.03))
        >>> parts = sampled_logits_parts(W, None, y, x, sv)
        >>> loss = sampled_softmax_from_parts(parts)  # [4]: −log_softmax over [true | sampled], true column
        >>> z = torch.cat([parts.true_logits, parts.sampled_logits], dim=1)
        >>> torch.allclose(loss, -z.log_softmax(dim=1)[:, 0])
        True
    """
    acc = torch.promote_types(parts.true_logits.dtype, torch.float32)
    zt = parts.true_logits.to(acc)
    zs = parts.sampled_logits.to(acc)
    lse = torch.logsumexp(torch.cat([zt, zs], dim=1), dim=1)
    return lse - zt.mean(dim=1)


def sigmoid_ce(parts: SampledParts) -> Tensor:
    r"""Σ_j BCEWithLogits(logits_j, t_j), t = 1/T on true columns, 0 on sampled; hits contribute 0.

    .. math::
        \ell_b = \sum_t \operatorname{BCE}(z^{true}_{bt}, 1/T) + \sum_s \operatorname{softplus}(z^{s}_{bs})

    (NCE, sampled logistic, negative sampling; public as
    ``bigsoftmax.functional.sigmoid_loss_from_parts``.)

    Args:
        parts: the :class:`SampledParts` of :func:`sampled_logits_parts`.

    Shape:
        - output: ``(B)`` in fp32 or wider.

    Examples::

        >>> W, x, y = torch.randn(10, 4), torch.randn(2, 4), torch.tensor([3, 5])
        >>> sv = (torch.tensor([3, 8]), torch.ones(2, 1), torch.ones(2))  # candidate 3 is row 0's class
        >>> hit = sampled_logits_parts(W, None, y, x, sv, remove_accidental_hits=True)
        >>> clean = sampled_logits_parts(W, None, y[:1], x[:1], (sv[0][1:], sv[1][:1], sv[2][1:]))
        >>> torch.allclose(sigmoid_loss_from_parts(hit)[0], sigmoid_loss_from_parts(clean)[0])  # the hit adds 0
        True
    """
    T = parts.true_logits.shape[1]
    acc = torch.promote_types(parts.true_logits.dtype, torch.float32)
    zt, zs = parts.true_logits.to(acc), parts.sampled_logits.to(acc)
    lt = F.binary_cross_entropy_with_logits(zt, torch.full_like(zt, 1.0 / T), reduction="none").sum(1)
    # hits hold the most negative finite value (see sampled_logits_parts): softplus and its
    # gradient are exactly 0 there, so they drop out without another mask pass
    return lt + F.softplus(zs).sum(1)


# ----------------------------------------------------------------------------- fused sampled softmax
def fused_ok(weights, biases, inputs) -> bool:
    """Whether :func:`fused_sampled_softmax` applies: one fp32/fp64 [V, d] tensor, same dtypes, no autocast."""
    if not isinstance(weights, Tensor) or not isinstance(inputs, Tensor):
        return False
    if biases is not None and not isinstance(biases, Tensor):
        return False
    if inputs.dtype not in (torch.float32, torch.float64) or weights.dtype != inputs.dtype:
        return False
    if biases is not None and biases.dtype != inputs.dtype:
        return False
    if torch.is_autocast_enabled(inputs.device.type):
        return False
    return weights.dim() == 2 and inputs.dim() == 2


class _FusedSampledSoftmax(torch.autograd.Function):
    """Sampled softmax loss [B] with a hand-written backward.

    The candidate columns come in three layouts: shared (``pool`` = the S candidates, ``inv`` None),
    per example through the unique pool (``pool`` = the U distinct ids, ``inv`` [B, S]) or per
    example as rows (``pool`` = the B·S ids, ``per_row_rows``).

    Forward: one index_select of the pool rows, one GEMM ``z = x @ W_pool.T`` (or B
    matrix-vector products for the row layout) with ``bias − log Q`` added, the row max over the
    true and candidate columns, one in-place exp pass whose result ``e = exp(z − m)`` is kept for
    backward. Backward, shared layout: the row scale ``r = g/Σexp`` is folded into the skinny
    operands, ``grad_x = r ⊙ (e @ W_s) + Σ_t P_t w_t``, ``grad_W_s = e.T @ (r ⊙ x)`` — the two GEMMs
    of the roofline. Unique-pool layout: ``G = e·r`` is scattered into ``[B, U]`` by ``inv`` and
    the same two GEMMs run over the U rows. Hits are masked (their e is exactly 0; no ±inf).
    Weight/bias gradients touch only the candidate and true rows: a sparse COO tensor when
    ``sparse`` (duplicates summed on coalesce), else scattered into a dense zero [V, d].
    """

    @staticmethod
    def forward(ctx, inputs, weight, bias, labels, pool, inv, true_log_q, sampled_log_q, hits, sparse, per_row_rows,
                n_shared=0):
        B, d = inputs.shape
        T = labels.shape[1]
        Wp = weight.index_select(0, pool)
        Wt = weight.index_select(0, labels.reshape(-1)).reshape(B, T, d)
        if per_row_rows:
            Wp = Wp.reshape(B, -1, d)
        bp = bias.index_select(0, pool) if bias is not None else None
        if bp is not None and per_row_rows:
            bp = bp.reshape(B, -1)
        if n_shared:  # mixed: P shared columns by one GEMM, R per-row columns by B matrix-vector products
            P = n_shared
            R = (pool.shape[0] - P) // B
            z = inputs.new_empty(B, P + R)
            if bp is not None:
                torch.addmm(bp[:P], inputs, Wp[:P].t(), out=z[:, :P])
            else:
                torch.mm(inputs, Wp[:P].t(), out=z[:, :P])
            zr = torch.bmm(Wp[P:].view(B, R, d), inputs[:, :, None])[:, :, 0]
            z[:, P:] = zr if bp is None else zr + bp[P:].view(B, R)
            z -= sampled_log_q.to(inputs.dtype)
        elif inv is None and not per_row_rows:  # shared: fold −log Q into the [S] bias, one pass over [B, S]
            shift = -sampled_log_q.to(inputs.dtype)
            if bp is not None:
                shift = shift + bp
            z = torch.mm(inputs, Wp.t())
            z += shift
        else:
            z = _candidate_scores(inputs, Wp, bp, inv)  # [B, S]
            z -= sampled_log_q.to(inputs.dtype)
        zt = torch.bmm(Wt, inputs[:, :, None])[:, :, 0] - true_log_q.to(inputs.dtype)
        if bias is not None:
            zt = zt + bias.index_select(0, labels.reshape(-1)).reshape(B, T)
        # hits get a neutral value for the max and are zeroed after exp (a mask, no ±inf anywhere):
        # shared candidates as (row, col) pairs (touches only the hits), per example as a [B, S] mask
        pairs = isinstance(hits, tuple)
        if pairs:
            z.index_put_(hits, zt[:, 0].index_select(0, hits[0]))
        elif hits is not None:
            z = torch.where(hits, zt[:, :1], z)
        m = torch.maximum(z.amax(dim=1), zt.amax(dim=1)) if z.shape[1] else zt.amax(dim=1)
        e = z.sub_(m[:, None]).exp_()
        if pairs:
            e.index_put_(hits, e.new_zeros(()))
        elif hits is not None:
            e.masked_fill_(hits, 0.0)
        et = (zt - m[:, None]).exp()
        sumexp = e.sum(dim=1) + et.sum(dim=1)
        loss = m + sumexp.log() - zt.mean(dim=1)
        ctx.save_for_backward(inputs, Wp, Wt, e, et, sumexp, labels, pool, inv)
        ctx.n_shared = n_shared
        ctx.has_bias = bias is not None
        ctx.sparse = sparse
        ctx.V = weight.shape[0]
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        inputs, Wp, Wt, e, et, sumexp, labels, pool, inv = ctx.saved_tensors
        B, d = inputs.shape
        T = labels.shape[1]
        r = g / sumexp
        Pt = et * r[:, None] - (g / T)[:, None]  # dL/dz_true [B, T]
        if ctx.n_shared:
            return _mixed_backward(ctx, g, r, Pt, inputs, Wp, Wt, e, labels, pool)
        if inv is not None:  # unique pool: dL/dz_pool [B, U], duplicates within a row summed
            G = torch.zeros(B, Wp.shape[0], dtype=e.dtype, device=e.device).scatter_add_(1, inv, e * r[:, None])
        elif Wp.dim() == 3:  # per-example rows: dL/dz [B, S]
            G = e * r[:, None]
        else:  # shared: dL/dz_s = e * r[:, None], never formed
            G = None
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if Wp.dim() == 3:
                grad_x = torch.bmm(G[:, None, :], Wp)[:, 0, :]
            elif G is None:
                grad_x = torch.mm(e, Wp).mul_(r[:, None])
            else:
                grad_x = torch.mm(G, Wp)
            grad_x.add_(torch.bmm(Pt[:, None, :], Wt)[:, 0, :])
        need_w = ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        if need_w or need_b:
            ids = torch.cat([pool, labels.reshape(-1)])
            P = pool.shape[0]
            if need_w:
                vals = inputs.new_empty(P + B * T, d)
                if Wp.dim() == 3:
                    torch.mul(G[:, :, None], inputs[:, None, :], out=vals[:P].view(B, -1, d))
                elif G is None:
                    torch.mm(e.t(), inputs * r[:, None], out=vals[:P])
                else:
                    torch.mm(G.t(), inputs, out=vals[:P])
                torch.mul(Pt[:, :, None], inputs[:, None, :], out=vals[P:].view(B, T, d))
                grad_w = _scatter_rows(ids, vals, (ctx.V, d), ctx.sparse)
            if need_b:
                if Wp.dim() == 3:
                    bp = G.reshape(-1)
                else:
                    bp = torch.mv(e.t(), r) if G is None else G.sum(0)
                grad_b = _scatter_rows(ids, torch.cat([bp, Pt.reshape(-1)]), (ctx.V,), ctx.sparse)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None, None


def _mixed_backward(ctx, g, r, Pt, inputs, Wp, Wt, e, labels, pool):
    """Backward of the mixed layout: P shared columns (two GEMMs, as the shared layout) and R
    per-row columns (outer products) of ``e`` [B, P + R]; ``r = g / Σexp``, ``Pt = dL/dz_true``."""
    B, d = inputs.shape
    T = labels.shape[1]
    P = ctx.n_shared
    R = e.shape[1] - P
    es, Gr = e[:, :P], e[:, P:] * r[:, None]  # dL/dz_shared = es * r (never formed), dL/dz_row = Gr
    Ws, Wr = Wp[:P], Wp[P:].view(B, R, d)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.mm(es, Ws).mul_(r[:, None])
        grad_x.add_(torch.bmm(Gr[:, None, :], Wr)[:, 0, :]).add_(torch.bmm(Pt[:, None, :], Wt)[:, 0, :])
    need_w = ctx.needs_input_grad[1]
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    if need_w or need_b:
        ids = torch.cat([pool, labels.reshape(-1)])
        n = pool.shape[0]
        if need_w:
            vals = inputs.new_empty(n + B * T, d)
            torch.mm(es.t(), inputs * r[:, None], out=vals[:P])
            torch.mul(Gr[:, :, None], inputs[:, None, :], out=vals[P:n].view(B, R, d))
            torch.mul(Pt[:, :, None], inputs[:, None, :], out=vals[n:].view(B, T, d))
            grad_w = _scatter_rows(ids, vals, (ctx.V, d), ctx.sparse)
        if need_b:
            bvals = torch.cat([torch.mv(es.t(), r), Gr.reshape(-1), Pt.reshape(-1)])
            grad_b = _scatter_rows(ids, bvals, (ctx.V,), ctx.sparse)
    return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None, None


def _scatter_rows(ids: Tensor, vals: Tensor, size, sparse: bool) -> Tensor:
    if sparse:
        return torch.sparse_coo_tensor(ids[None, :], vals, size, check_invariants=False)
    return vals.new_zeros(size).index_add_(0, ids, vals)


def fused_sampled_softmax(
    inputs: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    labels: Tensor,
    sampled: Tensor,
    true_expected_count: Tensor,
    sampled_expected_count: Tensor,
    remove_accidental_hits: bool = True,
    sparse: bool = False,
    gather: str = "unique",
    shared_columns: int = 0,
) -> Tensor:
    r"""Per-example sampled softmax loss through the fused kernel (inputs already validated).

    .. math::
        \ell_b = \operatorname{logsumexp}(z^{true}_{b\cdot}, z^{s}_{b\cdot}) - \frac1T \sum_t z^{true}_{bt}

    with the logits of :func:`sampled_logits_parts` (log Q subtracted, hits masked). Gives the same
    numbers as ``softmax_ce(sampled_logits_parts(...))`` with a hand-written backward (see
    :class:`_FusedSampledSoftmax`).

    Args:
        inputs: ``[B, d]`` fp32/fp64; weight: ``[V, d]``; bias: ``[V]`` or None (same dtype).
        labels: int64 ``[B, T]`` (or ``[B]``).
        sampled: candidates ``[S]`` (shared) or ``[B, S]`` (per example).
        true_expected_count: ``[B, T]``; sampled_expected_count: same shape as ``sampled``.
        remove_accidental_hits: mask candidates equal to their row's true classes.
        sparse: weight/bias gradients as sparse COO tensors.
        gather: per-example layout, ``"unique"`` or ``"rows"`` (see the module docstring).
        shared_columns: P > 0 when the first P columns of per-example ``sampled`` [B, S] are one set
            shared by every row (``samplers.Mixed``): those are scored by one GEMM, the other S − P
            per row (``gather`` is then unused). The caller guarantees the columns are shared.

    Shape:
        - output: ``(B)``.

    Examples::

        >>> W = torch.randn(100, 8, requires_grad=True)
        >>> x, y = torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
        >>> loss = fused_sampled_softmax(x, W, None, y, torch.tensor([5, 6, 7]), torch.full((4, 1), 0.03),
        ...                              torch.full((3,), 0.03))
        >>> loss.sum().backward()
    """
    gather = check_choice("gather", gather, GATHER_MODES)
    if labels.dim() == 1:
        labels = labels[:, None]
    acc = inputs.dtype
    if true_expected_count.dim() == 1:
        true_expected_count = true_expected_count[:, None]
    tlq = torch.log(true_expected_count.to(device=inputs.device, dtype=acc)).expand(labels.shape)
    slq = torch.log(sampled_expected_count.to(device=inputs.device, dtype=acc))
    sampled = sampled.to(inputs.device).long()
    hits = None
    P = int(shared_columns) if sampled.dim() == 2 else 0
    if P:
        if not 0 < P < sampled.shape[1]:
            raise ValueError(f"shared_columns must lie in [1, {sampled.shape[1]}) for {sampled.shape[1]} candidates "
                             f"per row, got {P}")
        if remove_accidental_hits:
            hits = torch.zeros(sampled.shape, dtype=torch.bool, device=sampled.device)
            hits[:, :P] = hit_mask(labels, sampled[0, :P])
            hits[:, P:] = hit_mask(labels, sampled[:, P:])
        pool = torch.cat([sampled[0, :P], sampled[:, P:].reshape(-1)])
        return _FusedSampledSoftmax.apply(inputs, weight, bias, labels, pool, None, tlq, slq, hits, sparse, False, P)
    if remove_accidental_hits:  # shared [S] on CPU: the few (row, col) hit pairs; per example and sync-free: a [B, S] mask
        pairs = sampled.dim() == 1 and not sync_free(sampled)  # pairs have a data-dependent size (a host sync)
        hits = hit_pairs(labels, sampled) if pairs else hit_mask(labels, sampled)
    inv, rows = None, False
    if sampled.dim() == 2 and gather == "unique" and not sync_free(sampled):
        # sync-free (accelerators, compile): the "rows" layout instead, same numbers at B·S·d gather
        # traffic; torch.unique would size the pool from the data (a host sync)
        pool, inv = torch.unique(sampled, return_inverse=True)
    else:
        pool, rows = sampled.reshape(-1), sampled.dim() == 2
    return _FusedSampledSoftmax.apply(inputs, weight, bias, labels, pool, inv, tlq, slq, hits, sparse, rows)

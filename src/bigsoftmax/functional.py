"""Stateless math of bigsoftmax, with TensorFlow 2.x names, argument order, defaults and meaning.

TensorFlow → bigsoftmax::

    tf.nn.compute_sampled_logits (private _compute_sampled_logits) → compute_sampled_logits
    tf.nn.sampled_softmax_loss                                      → sampled_softmax_loss
    tf.nn.nce_loss                                                  → nce_loss
    tf.nn.compute_accidental_hits                                   → compute_accidental_hits

Notation: B examples, T = ``num_true`` true classes per example, S sampled candidates, V classes, d
features. For class c with per-example expected count ``E(c)`` under the candidate sampler (``Q``):

    logit(c) = inputs · weights[c] + biases[c] − log E(c)            (subtract_log_q=True)

Sampled softmax: ``loss_b = −Σ_j t_bj · log_softmax(logits_b)_j`` with targets ``t = 1/T`` on the T
true columns and 0 on the S sampled ones. NCE: ``loss_b = Σ_j BCEWithLogits(logits_bj, t_bj)``.
With ``remove_accidental_hits`` a sampled candidate equal to one of the row's true classes is
removed from that row (TF adds −FLT_MAX to its logit; here it is a mask, so neither the loss nor the
gradient sees inf/NaN in fp32, fp16 or bf16). Unlike TF, **every** copy of a duplicated sampled id
that hits a true class is removed.

The core shared by every sampling objective of the library is :func:`sampled_logits_parts`: gather
the candidate rows once, score them, subtract log Q, mark the hits. Sampled softmax, NCE, negative
sampling, sampled logistic and the margin heads differ only in the loss put on top.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SampledParts",
    "sampled_logits_parts",
    "compute_sampled_logits",
    "sampled_softmax_loss",
    "nce_loss",
    "compute_accidental_hits",
    "gather_rows",
    "linear_cross_entropy",
    "in_batch_softmax_loss",
]

Weights = Union[Tensor, Sequence[Tensor]]
SampledValues = Tuple[Tensor, Tensor, Tensor]


# ----------------------------------------------------------------------------- validation helpers
def _num_classes_of(weights: Weights) -> int:
    if isinstance(weights, Tensor):
        return weights.shape[0]
    return sum(w.shape[0] for w in weights)


def _check_weights(weights: Weights, biases: Optional[Weights], num_classes: int, d: int) -> None:
    shards = [weights] if isinstance(weights, Tensor) else list(weights)
    if not shards or not all(isinstance(w, Tensor) for w in shards):
        raise TypeError("weights must be a [num_classes, d] tensor or a non-empty list of [rows_i, d] tensor shards")
    for w in shards:
        if w.dim() != 2 or w.shape[1] != d:
            raise ValueError(f"weights must be [num_classes, d={d}] (or shards [rows_i, {d}]), got a shard of shape {tuple(w.shape)}")
    V = _num_classes_of(weights)
    if V != num_classes:
        raise ValueError(f"weights have {V} rows but num_classes={num_classes}; they must be equal")
    if biases is not None:
        bshards = [biases] if isinstance(biases, Tensor) else list(biases)
        if sum(b.shape[0] for b in bshards) != V or any(b.dim() != 1 for b in bshards):
            raise ValueError(f"biases must be 1-D with {V} entries in total (one per class), got shapes {[tuple(b.shape) for b in bshards]}")


def _check_labels(labels: Tensor, num_true: int, batch: int, num_classes: int) -> Tensor:
    """Return labels as int64 [B, num_true]; accept [B] when num_true == 1."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be an int64 tensor of shape [batch, num_true], got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise TypeError(f"labels must hold integer class ids (int64), got dtype {labels.dtype}")
    if not isinstance(num_true, int) or num_true < 1:
        raise ValueError(f"num_true must be an int >= 1, got {num_true!r}")
    if labels.dim() == 1 and num_true == 1:
        labels = labels[:, None]
    if labels.dim() != 2 or labels.shape[1] != num_true or labels.shape[0] != batch:
        raise ValueError(
            f"labels must have shape [batch={batch}, num_true={num_true}]"
            + (" (or [batch] when num_true=1)" if num_true == 1 else "")
            + f", got {tuple(labels.shape)}"
        )
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels contain class id {lo if lo < 0 else hi}, outside the allowed range [0, {num_classes})")
    return labels.long()


def _check_sampled_values(sampled_values, labels: Tensor, num_sampled: Optional[int], num_classes: int):
    if not (isinstance(sampled_values, (tuple, list)) and len(sampled_values) == 3):
        raise TypeError("sampled_values must be a tuple (sampled_candidates [S], true_expected_count [B, num_true], sampled_expected_count [S])")
    sampled, true_exp, samp_exp = sampled_values
    for name, t in (("sampled_candidates", sampled), ("true_expected_count", true_exp), ("sampled_expected_count", samp_exp)):
        if not isinstance(t, Tensor):
            raise TypeError(f"sampled_values: {name} must be a tensor, got {type(t).__name__}")
    if sampled.dim() != 1 or sampled.dtype.is_floating_point:
        raise ValueError(f"sampled_values: sampled_candidates must be a 1-D int64 tensor, got shape {tuple(sampled.shape)} dtype {sampled.dtype}")
    S = sampled.shape[0]
    if num_sampled is not None and S != num_sampled:
        raise ValueError(f"sampled_values hold {S} candidates but num_sampled={num_sampled}")
    if S and (int(sampled.min()) < 0 or int(sampled.max()) >= num_classes):
        raise ValueError(f"sampled_candidates must lie in [0, {num_classes}) (num_classes)")
    if tuple(samp_exp.shape) != (S,):
        raise ValueError(f"sampled_expected_count must have shape [{S}], got {tuple(samp_exp.shape)}")
    if tuple(true_exp.shape) != tuple(labels.shape):
        if true_exp.dim() == 1 and labels.shape[1] == 1 and true_exp.shape[0] == labels.shape[0]:
            true_exp = true_exp[:, None]
        else:
            raise ValueError(f"true_expected_count must have shape {tuple(labels.shape)} (= labels), got {tuple(true_exp.shape)}")
    if true_exp.numel() and not bool((true_exp > 0).all()):
        raise ValueError(
            "true_expected_count must be > 0: a true class has zero sampling probability under the sampler, so log Q is -inf "
            "(use a sampler that gives every true class nonzero probability)"
        )
    if samp_exp.numel() and not bool((samp_exp > 0).all()):
        raise ValueError("sampled_expected_count must be > 0 for every sampled candidate")
    return sampled.long(), true_exp, samp_exp


def _draw_default(labels: Tensor, num_sampled: int, num_classes: int, seed: Optional[int]) -> SampledValues:
    from .samplers import log_uniform_candidate_sampler

    if not isinstance(num_sampled, int) or num_sampled < 1:
        raise ValueError(f"num_sampled must be an int >= 1, got {num_sampled!r}")
    return log_uniform_candidate_sampler(
        true_classes=labels, num_true=labels.shape[1], num_sampled=num_sampled, unique=True, range_max=num_classes, seed=seed
    )


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


def gather_rows(weights: Weights, ids: Tensor, sparse: bool = False) -> Tensor:
    """Rows ``weights[ids]`` of a [V, ...] tensor or of a list of shards concatenated along dim 0.

    ids: any shape of int64 in [0, V) -> [*ids.shape, ...]. Shards follow TF's "div" partition
    (shard i holds a contiguous block of rows); they are never concatenated. ``sparse=True`` makes
    the gradient w.r.t. the weights a sparse COO tensor over the gathered rows.
    """
    if isinstance(weights, Tensor):
        flat = ids.reshape(-1)
        rows = _SparseGather.apply(weights, flat) if sparse and weights.requires_grad else weights.index_select(0, flat)
        return rows.reshape(*ids.shape, *weights.shape[1:])
    shards = list(weights)
    if len(shards) == 1:
        return gather_rows(shards[0], ids, sparse)
    sizes = torch.tensor([w.shape[0] for w in shards], device=ids.device)
    ends = sizes.cumsum(0)
    starts = ends - sizes
    flat = ids.reshape(-1)
    which = torch.searchsorted(ends, flat, right=True)
    pieces, positions = [], []
    for i, w in enumerate(shards):  # one index_select per shard keeps autograd to each shard
        pos = (which == i).nonzero(as_tuple=True)[0]
        if pos.numel():
            pieces.append(gather_rows(w, flat[pos] - starts[i], sparse))
            positions.append(pos)
    if not pieces:
        out = shards[0].new_empty((0, *shards[0].shape[1:]))
    elif len(pieces) == 1:
        out = pieces[0]
    else:
        out = torch.cat(pieces).index_select(0, torch.argsort(torch.cat(positions)))
    return out.reshape(*ids.shape, *shards[0].shape[1:])


# ----------------------------------------------------------------------------- accidental hits
def _hit_pairs(true_classes: Tensor, sampled: Tensor) -> Tuple[Tensor, Tensor]:
    """All (row, sampled position) pairs where sampled[pos] equals one of row's true classes.

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


def compute_accidental_hits(true_classes: Tensor, sampled_candidates: Tensor, num_true: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Where sampled candidates equal true classes (``tf.nn.compute_accidental_hits``).

    true_classes: int64 [B, num_true]; sampled_candidates: int64 [S].
    Returns ``(indices [H] int32, ids [H] int64, weights [H] float32)``: the row in true_classes, the
    position in sampled_candidates, and −FLT_MAX (the value TF adds to the logit). Unlike TF, every
    copy of a duplicated sampled id that equals a true class is reported. Sorted by (row, position).
    """
    if not isinstance(sampled_candidates, Tensor) or sampled_candidates.dim() != 1 or sampled_candidates.dtype.is_floating_point:
        raise ValueError("sampled_candidates must be a 1-D int64 tensor [num_sampled]")
    if not isinstance(true_classes, Tensor):
        raise TypeError(f"true_classes must be an int64 tensor [batch, num_true], got {type(true_classes).__name__}")
    labels = _check_labels(true_classes, num_true, true_classes.shape[0], torch.iinfo(torch.int64).max)
    rows, cols = _hit_pairs(labels, sampled_candidates.long())
    key = rows * max(1, sampled_candidates.shape[0]) + cols
    order = torch.argsort(key)
    rows, cols = rows[order], cols[order]
    w = torch.full(rows.shape, torch.finfo(torch.float32).min, dtype=torch.float32, device=rows.device)
    return rows.to(torch.int32), cols.to(torch.int64), w


def _hit_mask(labels: Tensor, sampled: Tensor) -> Tensor:
    rows, cols = _hit_pairs(labels, sampled)
    mask = torch.zeros(labels.shape[0], sampled.shape[0], dtype=torch.bool, device=sampled.device)
    mask[rows, cols] = True
    return mask


# ----------------------------------------------------------------------------- the shared core
class SampledParts(NamedTuple):
    """Output of :func:`sampled_logits_parts`.

    true_logits [B, T]; sampled_logits [B, S] (hits filled with the dtype's most negative finite value
    when ``remove_accidental_hits``); hit_mask [B, S] bool or None; true_log_q [B, T] and
    sampled_log_q [S] = log of the expected counts; sampled_ids [S]; labels [B, T].
    """

    true_logits: Tensor
    sampled_logits: Tensor
    hit_mask: Optional[Tensor]
    true_log_q: Tensor
    sampled_log_q: Tensor
    sampled_ids: Tensor
    labels: Tensor


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
) -> SampledParts:
    """The one sampled-logits core every sampling objective uses.

    weights [V, d] (or shards), biases [V] or None, labels int64 [B, T] (or [B]), inputs [B, d],
    sampled_values = (ids [S], true_expected_count [B, T], sampled_expected_count [S]).

        true_logits[b, t]    = inputs[b] · w(labels[b, t]) + bias − log E_true[b, t]
        sampled_logits[b, s] = inputs[b] · w(ids[s])       + bias − log E_sampled[s]

    ``row_transform`` (e.g. ``F.normalize``) is applied to the gathered class rows before scoring
    (margin heads score cosines). Only the S + B·T touched rows are read; with ``sparse=True`` the
    weight/bias gradients are sparse COO tensors over those rows.
    """
    if not isinstance(inputs, Tensor) or inputs.dim() != 2:
        raise ValueError(f"inputs must be a [batch, d] tensor, got {tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}")
    B, d = inputs.shape
    V = _num_classes_of(weights)
    if labels.dim() == 1:
        labels = labels[:, None]
    labels = _check_labels(labels, labels.shape[1] if labels.dim() == 2 else 1, B, V)
    sampled, true_exp, samp_exp = _check_sampled_values(sampled_values, labels, None, V)
    sampled = sampled.to(inputs.device)
    all_ids = torch.cat([labels.reshape(-1), sampled])
    rows = gather_rows(weights, all_ids, sparse)
    if row_transform is not None:
        rows = row_transform(rows)
    T = labels.shape[1]
    true_w = rows[: B * T].reshape(B, T, d)
    samp_w = rows[B * T :]
    true_logits = torch.einsum("bd,btd->bt", inputs, true_w.to(inputs.dtype)) if T > 1 else (inputs * true_w[:, 0].to(inputs.dtype)).sum(-1, keepdim=True)
    if biases is not None:
        all_b = gather_rows(biases, all_ids, sparse)
        true_b, samp_b = all_b[: B * T].reshape(B, T), all_b[B * T :]
        sampled_logits = torch.addmm(samp_b.to(inputs.dtype), inputs, samp_w.t().to(inputs.dtype))
        true_logits = true_logits + true_b.to(inputs.dtype)
    else:
        sampled_logits = inputs @ samp_w.t().to(inputs.dtype)
    true_log_q = torch.log(true_exp.to(device=inputs.device, dtype=torch.promote_types(inputs.dtype, torch.float32)))
    sampled_log_q = torch.log(samp_exp.to(device=inputs.device, dtype=torch.promote_types(inputs.dtype, torch.float32)))
    if subtract_log_q:
        true_logits = true_logits - true_log_q.to(true_logits.dtype)
        sampled_logits = sampled_logits - sampled_log_q.to(sampled_logits.dtype)
    hit_mask = None
    if remove_accidental_hits:
        hit_mask = _hit_mask(labels, sampled)
        sampled_logits = sampled_logits.masked_fill(hit_mask, torch.finfo(sampled_logits.dtype).min)  # a mask fill, not -inf
    return SampledParts(true_logits, sampled_logits, hit_mask, true_log_q, sampled_log_q, sampled, labels)


def compute_sampled_logits(
    weights: Weights,
    biases: Optional[Weights],
    labels: Tensor,
    inputs: Tensor,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Optional[SampledValues] = None,
    subtract_log_q: bool = True,
    remove_accidental_hits: bool = False,
    seed: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """TF's ``_compute_sampled_logits``: ``(logits [B, T+S], targets [B, T+S])``.

    Columns 0..T-1 are the true classes (target 1/T each), columns T.. the sampled candidates
    (target 0). With ``remove_accidental_hits`` a hit's logit is the dtype's most negative finite
    value (TF adds −FLT_MAX). When ``sampled_values`` is None, candidates are drawn with
    ``log_uniform_candidate_sampler(unique=True, seed=seed)``.
    """
    labels, parts = _prepare(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values, seed,
                             subtract_log_q=subtract_log_q, remove_accidental_hits=remove_accidental_hits)
    logits = torch.cat([parts.true_logits, parts.sampled_logits], dim=1)
    targets = torch.cat(
        [torch.full_like(parts.true_logits, 1.0 / num_true), torch.zeros_like(parts.sampled_logits)], dim=1
    )
    return logits, targets


def _prepare(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values, seed, **kw):
    if not isinstance(inputs, Tensor) or inputs.dim() != 2:
        raise ValueError(f"inputs must be a [batch, d] tensor, got {tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}")
    if not inputs.dtype.is_floating_point:
        raise TypeError(f"inputs must be floating point, got {inputs.dtype}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    _check_weights(weights, biases, num_classes, inputs.shape[1])
    labels = _check_labels(labels, num_true, inputs.shape[0], num_classes)
    if sampled_values is None:
        sampled_values = _draw_default(labels, num_sampled, num_classes, seed)
    else:
        _check_sampled_values(sampled_values, labels, num_sampled, num_classes)
    return labels, sampled_logits_parts(weights, biases, labels, inputs, sampled_values, **kw)


def _softmax_ce(parts: SampledParts) -> Tensor:
    """−Σ_j t_j log_softmax(logits)_j with t = 1/T on the true columns; logsumexp in fp32+.

    Hits already hold the most negative finite value, so exp() gives exactly 0 for them.
    """
    acc = torch.promote_types(parts.true_logits.dtype, torch.float32)
    zt = parts.true_logits.to(acc)
    zs = parts.sampled_logits.to(acc)
    lse = torch.logsumexp(torch.cat([zt, zs], dim=1), dim=1)
    return lse - zt.mean(dim=1)


def sampled_softmax_loss(
    weights: Weights,
    biases: Optional[Weights],
    labels: Tensor,
    inputs: Tensor,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Optional[SampledValues] = None,
    remove_accidental_hits: bool = True,
    seed: Optional[int] = None,
) -> Tensor:
    """``tf.nn.sampled_softmax_loss``: per-example sampled softmax losses [B].

        loss_b = logsumexp_j(logits_bj) − (1/T) Σ_{t<T} logits_bt

    over the T true and S sampled columns of :func:`compute_sampled_logits` (log Q subtracted;
    accidental hits removed by default). A single [V, d] tensor in fp32/fp64 takes a fused kernel
    (one gather, one GEMM, one exp pass, gradients only for the S + B·T touched rows); shards,
    half precision and autocast take the general autograd path. Both give TF's numbers.
    """
    if _fused_ok(weights, biases, inputs):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        _check_weights(weights, biases, num_classes, inputs.shape[1])
        labels_ = _check_labels(labels, num_true, inputs.shape[0], num_classes)
        if sampled_values is None:
            sampled_values = _draw_default(labels_, num_sampled, num_classes, seed)
        sampled, true_exp, samp_exp = _check_sampled_values(sampled_values, labels_, num_sampled, num_classes)
        return fused_sampled_softmax(inputs, weights, biases, labels_, sampled, true_exp, samp_exp,
                                     remove_accidental_hits=remove_accidental_hits, sparse=False)
    _, parts = _prepare(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values, seed,
                        subtract_log_q=True, remove_accidental_hits=remove_accidental_hits)
    return _softmax_ce(parts).to(inputs.dtype)


def _sigmoid_ce(parts: SampledParts) -> Tensor:
    """Σ_j BCEWithLogits(logits_j, t_j), t = 1/T on true columns, 0 on sampled; hits contribute 0."""
    T = parts.true_logits.shape[1]
    acc = torch.promote_types(parts.true_logits.dtype, torch.float32)
    zt, zs = parts.true_logits.to(acc), parts.sampled_logits.to(acc)
    lt = F.binary_cross_entropy_with_logits(zt, torch.full_like(zt, 1.0 / T), reduction="none").sum(1)
    # hits hold the most negative finite value (see sampled_logits_parts): softplus and its
    # gradient are exactly 0 there, so they drop out without another mask pass
    ls = F.softplus(zs).sum(1)
    return lt + ls


def nce_loss(
    weights: Weights,
    biases: Optional[Weights],
    labels: Tensor,
    inputs: Tensor,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Optional[SampledValues] = None,
    remove_accidental_hits: bool = False,
    seed: Optional[int] = None,
) -> Tensor:
    """``tf.nn.nce_loss``: per-example noise-contrastive estimation losses [B].

        loss_b = Σ_{t<T} BCE(logits_bt, 1/T) + Σ_s softplus(logits_bs)

    with ``logits`` from :func:`compute_sampled_logits` (log Q subtracted; hits contribute 0 when
    removed). With ``remove_accidental_hits=True`` this is TF's "Sampled Logistic".
    """
    _, parts = _prepare(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values, seed,
                        subtract_log_q=True, remove_accidental_hits=remove_accidental_hits)
    return _sigmoid_ce(parts).to(inputs.dtype)


# ----------------------------------------------------------------------------- fused sampled softmax
def _fused_ok(weights, biases, inputs) -> bool:
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

    Forward: one index_select of the S sampled rows, one GEMM ``z = x @ W_s.T`` [B, S] with
    ``bias − log Q`` added in the same pass that finds the row max, one in-place exp pass whose
    result ``e = exp(z − m)`` is kept for backward, the T true logits by row-wise dots.
    Backward never materialises ``dL/dz = e · g/Σexp``: the row scale ``r = g/Σexp`` is folded
    into the skinny operands, so ``grad_x = r ⊙ (e @ W_s) + Σ_t P_t w_t`` and
    ``grad_W_s = e.T @ (r ⊙ x)``, ``grad_b_s = e.T @ r`` — the two GEMMs of the roofline plus
    O((B + S)·d) work. Hits are masked (their e is set to exactly 0; no ±inf anywhere).
    Weight/bias gradients touch only the S + B·T candidate rows: a sparse COO tensor when
    ``sparse`` (duplicates are summed on coalesce), else scattered into a dense zero [V, d].
    """

    @staticmethod
    def forward(ctx, inputs, weight, bias, labels, sampled, true_log_q, sampled_log_q, hit_rows, hit_cols, sparse):
        B, d = inputs.shape
        T = labels.shape[1]
        Ws = weight.index_select(0, sampled)
        Wt = weight.index_select(0, labels.reshape(-1)).reshape(B, T, d)
        shift = -sampled_log_q.to(inputs.dtype)
        if bias is not None:
            shift = shift + bias.index_select(0, sampled)
        z = torch.mm(inputs, Ws.t())  # [B, S]
        z += shift
        zt = torch.bmm(Wt, inputs[:, :, None])[:, :, 0] - true_log_q.to(inputs.dtype)
        if bias is not None:
            zt = zt + bias.index_select(0, labels.reshape(-1)).reshape(B, T)
        has_hits = hit_rows.numel() > 0
        if has_hits:  # a neutral value for the max; zeroed after exp (a mask, no ±inf anywhere)
            z.index_put_((hit_rows, hit_cols), zt[:, 0].index_select(0, hit_rows))
        m = torch.maximum(z.amax(dim=1), zt.amax(dim=1)) if z.shape[1] else zt.amax(dim=1)
        e = z.sub_(m[:, None]).exp_()
        if has_hits:
            e.index_put_((hit_rows, hit_cols), e.new_zeros(()))
        et = (zt - m[:, None]).exp()
        sumexp = e.sum(dim=1) + et.sum(dim=1)
        loss = m + sumexp.log() - zt.mean(dim=1)
        ctx.save_for_backward(inputs, Ws, Wt, e, et, sumexp, labels, sampled)
        ctx.has_bias = bias is not None
        ctx.sparse = sparse
        ctx.V = weight.shape[0]
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        inputs, Ws, Wt, e, et, sumexp, labels, sampled = ctx.saved_tensors
        B, d = inputs.shape
        T = labels.shape[1]
        r = g / sumexp  # dL/dz_s = e * r[:, None], never formed
        Pt = et * r[:, None] - (g / T)[:, None]  # dL/dz_true [B, T]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(e, Ws).mul_(r[:, None]).add_(torch.bmm(Pt[:, None, :], Wt)[:, 0, :])
        need_w = ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        if need_w or need_b:
            ids = torch.cat([sampled, labels.reshape(-1)])
            if need_w:
                S = e.shape[1]
                vals = inputs.new_empty(S + B * T, d)
                torch.mm(e.t(), inputs * r[:, None], out=vals[:S])
                torch.mul(Pt[:, :, None], inputs[:, None, :], out=vals[S:].view(B, T, d))
                grad_w = _scatter_rows(ids, vals, (ctx.V, d), ctx.sparse)
            if need_b:
                bvals = torch.cat([torch.mv(e.t(), r), Pt.reshape(-1)])
                grad_b = _scatter_rows(ids, bvals, (ctx.V,), ctx.sparse)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


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
) -> Tensor:
    """Per-example sampled softmax loss [B] through :class:`_FusedSampledSoftmax` (already validated inputs).

    Gives the same numbers as ``_softmax_ce(sampled_logits_parts(...))``; weight/bias gradients are
    sparse COO tensors when ``sparse`` (usable with SparseAdam / SGD / Adagrad).
    """
    if labels.dim() == 1:
        labels = labels[:, None]
    acc = inputs.dtype
    if true_expected_count.dim() == 1:
        true_expected_count = true_expected_count[:, None]
    tlq = torch.log(true_expected_count.to(device=inputs.device, dtype=acc))
    slq = torch.log(sampled_expected_count.to(device=inputs.device, dtype=acc))
    sampled = sampled.to(inputs.device).long()
    if remove_accidental_hits:
        hr, hc = _hit_pairs(labels, sampled)
    else:
        hr = hc = torch.zeros(0, dtype=torch.long, device=inputs.device)
    return _FusedSampledSoftmax.apply(inputs, weight, bias, labels, sampled, tlq, slq, hr, hc, sparse)


# ----------------------------------------------------------------------------- re-exports
def linear_cross_entropy(*args, **kwargs):
    """Exact ``F.cross_entropy(F.linear(input, weight, bias), target)`` without the [N, V] logits.

    See :func:`bigsoftmax.ops.lse.linear_cross_entropy` for the arguments.
    """
    from .ops.lse import linear_cross_entropy as impl

    return impl(*args, **kwargs)


def in_batch_softmax_loss(*args, **kwargs):
    """In-batch (two-tower) softmax with log Q correction; see :func:`bigsoftmax.retrieval.in_batch_softmax_loss`."""
    from .retrieval import in_batch_softmax_loss as impl

    return impl(*args, **kwargs)

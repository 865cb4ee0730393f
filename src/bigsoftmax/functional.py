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

The core shared by every sampling objective of the library is :func:`sampled_logits_parts` (its
kernels live in the private ``bigsoftmax.ops.sampled``): gather the candidate rows once, score
them, subtract log Q, mark the hits. Sampled softmax, NCE, negative sampling, sampled logistic and
the margin heads differ only in the loss put on top.

Beyond TF, ``sampled_values`` may carry **per-example candidates**: ``sampled_candidates [B, S]``
with ``sampled_expected_count [B, S]`` (each row its own set, e.g. drawn by the context-dependent
:class:`bigsoftmax.samplers.Bigram`); hits are then masked per row. ``true_expected_count`` may be
``[B, num_true]`` or, as TF broadcasts it, ``[B, 1]``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._docs import fill_doc

from .ops.sampled import (  # noqa: F401  (the core and gather_rows are public; the rest serve this module)
    SampledParts,
    SampledValues,
    Weights,
    check_labels as _check_labels,
    check_not_meta as _check_not_meta,
    check_sampled_values as _check_sampled_values,
    check_weights as _check_weights,
    fused_ok as _fused_ok,
    fused_sampled_softmax,
    gather_rows,
    hit_pairs as _hit_pairs,
    sampled_logits_parts,
    sigmoid_ce as _sigmoid_ce,
    softmax_ce as _softmax_ce,
    softmax_ce as sampled_softmax_from_parts,
    sigmoid_ce as sigmoid_loss_from_parts,
)

__all__ = [
    "SampledParts",
    "sampled_logits_parts",
    "sampled_softmax_from_parts",
    "sigmoid_loss_from_parts",
    "compute_sampled_logits",
    "sampled_softmax_loss",
    "nce_loss",
    "compute_accidental_hits",
    "gather_rows",
    "fused_sampled_softmax",
    "linear_cross_entropy",
    "in_batch_softmax_loss",
]


def _draw_default(labels: Tensor, num_sampled: int, num_classes: int, seed: Optional[int]) -> SampledValues:
    from .samplers import log_uniform_candidate_sampler

    if not isinstance(num_sampled, int) or num_sampled < 1:
        raise ValueError(f"num_sampled must be an int >= 1, got {num_sampled!r}")
    return log_uniform_candidate_sampler(
        true_classes=labels, num_true=labels.shape[1], num_sampled=num_sampled, unique=True, range_max=num_classes, seed=seed
    )


def _validated(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values, seed):
    """The TF entry points' checks: ``(labels [B, T] int64, checked sampled values)``; draws the
    default log-uniform candidates when ``sampled_values`` is None."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 2:
        raise ValueError(f"inputs must be a [batch, d] tensor, got {tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}")
    if not inputs.dtype.is_floating_point:
        raise TypeError(f"inputs must be floating point, got {inputs.dtype}")
    _check_not_meta(inputs=inputs)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    _check_weights(weights, biases, num_classes, inputs.shape[1])
    labels = _check_labels(labels, num_true, inputs.shape[0], num_classes)
    if sampled_values is None:
        sampled_values = _draw_default(labels, num_sampled, num_classes, seed)
    return labels, _check_sampled_values(sampled_values, labels, num_sampled, num_classes)




@fill_doc
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
    name: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """TF's ``_compute_sampled_logits``: ``(logits [B, T+S], targets [B, T+S])``.

    Columns 0..T-1 are the true classes (target 1/T each), columns T.. the sampled candidates
    (target 0)::

        logits[b, j] = inputs[b] · weights[c_bj] + biases[c_bj] − log E(c_bj)     (subtract_log_q)

    With ``remove_accidental_hits`` a hit's logit is the dtype's most negative finite value (TF adds
    −FLT_MAX).

    Args:
        {tf_sampled_args}
        subtract_log_q: subtract log E (sampled softmax, NCE); False for negative sampling.

    Shape:
        - output: two ``(B, T + S)`` tensors.

    Examples::

        >>> W, x, y = torch.randn(100, 8), torch.randn(4, 8), torch.tensor([[1], [2], [3], [4]])
        >>> logits, targets = compute_sampled_logits(W, None, y, x, num_sampled=10, num_classes=100, seed=0)
        >>> logits.shape
        torch.Size([4, 11])
    """
    labels, sv = _validated(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values, seed)
    parts = sampled_logits_parts(weights, biases, labels, inputs, sv, subtract_log_q=subtract_log_q,
                                 remove_accidental_hits=remove_accidental_hits)
    logits = torch.cat([parts.true_logits, parts.sampled_logits], dim=1)
    targets = torch.cat(
        [torch.full_like(parts.true_logits, 1.0 / num_true), torch.zeros_like(parts.sampled_logits)], dim=1
    )
    return logits, targets


@fill_doc
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
    name: Optional[str] = None,
) -> Tensor:
    """``tf.nn.sampled_softmax_loss``: per-example sampled softmax losses.

        loss_b = logsumexp_j(logits_bj) − (1/T) Σ_{t<T} logits_bt

    over the T true and S sampled columns of :func:`compute_sampled_logits` (log Q subtracted;
    accidental hits removed by default). A single [V, d] tensor in fp32/fp64 takes a fused kernel
    (one gather, one GEMM, one exp pass, gradients only for the touched rows); shards, half
    precision and autocast take the general autograd path. Both give TF's numbers.

    Args:
        {tf_sampled_args}

    Shape:
        - output: ``(B)``.

    Examples::

        >>> W = torch.randn(100, 8, requires_grad=True)
        >>> x, y = torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
        >>> sampled_softmax_loss(W, None, y, x, num_sampled=10, num_classes=100, seed=0).mean().backward()
    """
    labels, (sampled, true_exp, samp_exp) = _validated(weights, biases, labels, inputs, num_sampled, num_classes,
                                                       num_true, sampled_values, seed)
    if _fused_ok(weights, biases, inputs):
        return fused_sampled_softmax(inputs, weights, biases, labels, sampled, true_exp, samp_exp,
                                     remove_accidental_hits=remove_accidental_hits, sparse=False)
    parts = sampled_logits_parts(weights, biases, labels, inputs, (sampled, true_exp, samp_exp), subtract_log_q=True,
                                 remove_accidental_hits=remove_accidental_hits)
    return _softmax_ce(parts).to(inputs.dtype)


@fill_doc
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
    name: Optional[str] = None,
) -> Tensor:
    """``tf.nn.nce_loss``: per-example noise-contrastive estimation losses.

        loss_b = Σ_{t<T} BCE(logits_bt, 1/T) + Σ_s softplus(logits_bs)

    with ``logits`` from :func:`compute_sampled_logits` (log Q subtracted; hits contribute 0 when
    removed). With ``remove_accidental_hits=True`` this is TF's "Sampled Logistic".

    Args:
        {tf_sampled_args}

    Shape:
        - output: ``(B)``.

    Examples::

        >>> W, x, y = torch.randn(100, 8), torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
        >>> nce_loss(W, None, y, x, num_sampled=10, num_classes=100, seed=0).shape
        torch.Size([4])
    """
    labels, sv = _validated(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values, seed)
    parts = sampled_logits_parts(weights, biases, labels, inputs, sv, subtract_log_q=True,
                                 remove_accidental_hits=remove_accidental_hits)
    return _sigmoid_ce(parts).to(inputs.dtype)


def compute_accidental_hits(true_classes: Tensor, sampled_candidates: Tensor, num_true: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Where sampled candidates equal true classes (``tf.nn.compute_accidental_hits``).

    Unlike TF, every copy of a duplicated sampled id that equals a true class is reported.

    Args:
        true_classes: int64 ``[B, num_true]``.
        sampled_candidates: int64 ``[S]``.
        num_true: T.

    Returns:
        ``(indices [H] int32, ids [H] int64, weights [H] float32)``: the row in true_classes, the
        position in sampled_candidates, and −FLT_MAX (the value TF adds to the logit), sorted by
        (row, position).

    Shape:
        - true_classes: :math:`(B, T)`; sampled_candidates: :math:`(S)`; outputs: three :math:`(H)`
          tensors, H the number of hits.

    Examples::

        >>> compute_accidental_hits(torch.tensor([[3], [5]]), torch.tensor([5, 3, 3]), num_true=1)[1]
        tensor([1, 2, 0])
    """
    if not isinstance(sampled_candidates, Tensor) or sampled_candidates.dim() != 1 or sampled_candidates.dtype.is_floating_point:
        raise ValueError("sampled_candidates must be a 1-D int64 tensor [num_sampled]")
    if not isinstance(true_classes, Tensor):
        raise TypeError(f"true_classes must be an int64 tensor [batch, num_true], got {type(true_classes).__name__}")
    _check_not_meta(true_classes=true_classes, sampled_candidates=sampled_candidates)
    labels = _check_labels(true_classes, num_true, true_classes.shape[0], torch.iinfo(torch.int64).max, name="true_classes")
    rows, cols = _hit_pairs(labels, sampled_candidates.long())
    key = rows * max(1, sampled_candidates.shape[0]) + cols
    order = torch.argsort(key)
    rows, cols = rows[order], cols[order]
    w = torch.full(rows.shape, torch.finfo(torch.float32).min, dtype=torch.float32, device=rows.device)
    return rows.to(torch.int32), cols.to(torch.int64), w


# ----------------------------------------------------------------------------- re-exports
# (defined with their kernels; imported here so ``bigsoftmax.functional`` is the one public entry point)
from .ops.lse import linear_cross_entropy  # noqa: E402
from .retrieval import in_batch_softmax_loss  # noqa: E402

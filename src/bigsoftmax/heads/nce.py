"""Binary-classification sampling objectives as heads: NCE, sampled logistic, negative sampling.

All three score the true classes and S sampled candidates with the library's one sampled-logits
core (:func:`bigsoftmax.functional.sampled_logits_parts`) and put a sigmoid cross-entropy on top::

    z_c    = h · w_c + b_c − [log E(c)]                    (E = the sampler's expected count)
    loss   = Σ_{t<T} BCE(z_{y_t}, 1/T) + Σ_s softplus(z_{c_s})

* :class:`NCE` — noise-contrastive estimation, ``tf.nn.nce_loss``: log E subtracted, accidental
  hits kept (TF's default). At the optimum ``σ(z_c) = P(c|h) / (P(c|h) + E(c))``, i.e.
  ``h · w_c + b_c = log P(c|h)``: the scores become self-normalised log-probabilities.
* :class:`SampledLogistic` — NCE with accidental hits removed (the "Sampled Logistic" row of TF's
  candidate sampling table).
* :class:`NegativeSampling` — word2vec's objective (Mikolov et al. 2013): the same loss **without**
  the log E subtraction, noise = unigram^0.75 of class counts by default. Its optimum is
  ``h · w_c + b_c = log(P(c|h) / (S · Q(c)))``: it learns a log *ratio* to the noise, not
  ``log P``, so the exact softmax over its scores is ``∝ P/Q`` and its exact-evaluation
  perplexity is expected to be worse than NCE's or sampled softmax's. It is a representation
  learner, not a density estimator.

Exact evaluation (``log_prob``, ``target_log_prob``, ``topk``, ``forward`` in eval mode) is the full
softmax over the head's own ``weight``/``bias`` (:class:`~bigsoftmax.heads.base.LinearEvalMixin`),
like every sampling head, so perplexities are comparable across heads.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..ops import sampled as ops
from .._validate import check_nonzero_proposal
from .sampled import SamplingHead

__all__ = ["NCE", "SampledLogistic", "NegativeSampling"]


def _resolve_sampler(sampler, counts, distortion: float, unique: bool, num_classes: int, head: str):
    """``sampler`` as given, or ``samplers.Unigram(counts, distortion, unique)`` when ``counts`` is given."""
    if counts is None:
        return sampler
    if sampler is not None:
        raise ValueError(f"{head}: pass either counts= (builds a Unigram sampler) or sampler=, not both")
    from .. import samplers as S

    n = len(counts) if not isinstance(counts, Tensor) else (counts.shape[0] if counts.dim() == 1 else -1)
    if n != num_classes:
        raise ValueError(f"{head}: counts must be 1-D with one entry per class (num_classes={num_classes}), got {n} entries")
    check_nonzero_proposal(counts, distortion, head)
    return S.Unigram(counts, distortion=distortion, unique=unique)


class NCE(SamplingHead):
    """Noise-contrastive estimation head: ``tf.nn.nce_loss`` as an output layer.

    hidden [..., d], target [...] (or [..., num_true]) -> loss (see the module docstring for the
    formula). Training mode returns the NCE objective; eval mode returns the exact full-softmax NLL.

    Args:
        (as :class:`~bigsoftmax.heads.SampledSoftmax`, plus)
        remove_accidental_hits: default False (TF's ``nce_loss`` default).
        counts: optional [V] class counts; builds ``samplers.Unigram(counts, distortion, unique=True)``
            as the noise distribution (mutually exclusive with ``sampler``). Default noise without
            either: ``LogUniform(V)`` (frequency-sorted ids). A zero count would give its class noise
            probability 0 (log Q = -inf for such a target): refused with a ``ValueError`` naming how many
            and which ids; smooth first (:func:`bigsoftmax.vocab.smooth_counts`).
        distortion: exponent applied to ``counts`` (default 1.0).
        bias_init: initial value of every bias entry. Default ``−log V`` for NCE / SampledLogistic
            (Mnih & Teh 2012 fix Z = 1, so the scores start at the uniform log-probability instead of
            ``Σ_c exp(z_c) = V``; without it classes the sampler rarely proposes keep z ≈ 0 and the exact
            softmax puts most of its mass on them early in training), 0 for NegativeSampling.
        sparse: weight/bias gradients as sparse COO tensors touching only the candidate rows.

        gather: per-example candidates, ``"unique"`` or ``"rows"`` (see :class:`~bigsoftmax.heads.SamplingHead`).

    ``forward(hidden, target, sampled_values=None, context=None)``: ``sampled_values`` overrides the
    sampler with TF-style ``(sampled [S] or [N, S], true_expected_count [N, T], sampled_expected_count
    [S] or [N, S])``; ``context`` (the previous token of every target, the target's shape) feeds a
    context-dependent noise such as ``samplers.Bigram`` — NCE with bigram noise.

    Shape:
        - hidden: ``(*, d)``; target: ``(*)`` (or ``(*, num_true)``); context: ``(*)``.
        - output: scalar, or ``(*)`` with ``reduction='none'``.

    Examples::

        >>> head = NCE(16, 1000, num_sampled=64, seed=0)
        >>> loss = head(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
    """

    _subtract_log_q = True
    _default_hits = False
    _default_distortion = 1.0
    _counts_unique = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_sampled: int,
        sampler: Optional[nn.Module] = None,
        num_true: int = 1,
        remove_accidental_hits: Optional[bool] = None,
        bias: bool = True,
        sparse: bool = False,
        ignore_index: int = -100,
        reduction: str = "mean",
        seed: Optional[int] = None,
        weight: Optional[nn.Parameter] = None,
        counts=None,
        distortion: Optional[float] = None,
        bias_init: Optional[float] = None,
        gather: str = "unique",
    ):
        name = type(self).__name__
        if distortion is not None and counts is None:
            raise ValueError(f"{name}: distortion applies to counts=; pass counts (or build the sampler yourself)")
        sampler = self._default_sampler(
            _resolve_sampler(sampler, counts, self._default_distortion if distortion is None else distortion,
                             self._counts_unique, num_classes, name), num_classes)
        if remove_accidental_hits is None:
            remove_accidental_hits = self._default_hits
        super().__init__(in_features, num_classes, num_sampled, sampler=sampler, num_true=num_true,
                         remove_accidental_hits=remove_accidental_hits, bias=bias, sparse=sparse,
                         ignore_index=ignore_index, reduction=reduction, seed=seed, weight=weight, gather=gather)
        if bias_init is None:
            bias_init = -math.log(num_classes) if self._subtract_log_q else 0.0
        if isinstance(bias_init, bool) or not isinstance(bias_init, (int, float)) or not math.isfinite(bias_init):
            raise ValueError(f"{name}: bias_init must be a finite float, got {bias_init!r}")
        if self.bias is not None:
            with torch.no_grad():
                self.bias.fill_(float(bias_init))

    def _default_sampler(self, sampler, num_classes: int):
        return sampler  # None -> SamplingHead's LogUniform(V, unique=True)

    def _sampled_loss(self, h: Tensor, y: Tensor, sampled_values, context=None) -> Tensor:
        sv = self._checked_values(h, y, sampled_values, context)
        parts = self._parts(h, y, sv, subtract_log_q=self._subtract_log_q)
        return ops.sigmoid_ce(parts).to(h.dtype)


class SampledLogistic(NCE):
    """NCE with accidental hits removed by default — TF's "Sampled Logistic" (``nce_loss`` with
    ``remove_accidental_hits=True``): a sampled candidate equal to a true class is dropped from
    that row instead of being pushed down as noise.

    Args:
        as :class:`NCE` (``remove_accidental_hits`` defaults to True).

    Shape:
        as :class:`NCE`.

    Examples::

        >>> head = SampledLogistic(16, 1000, num_sampled=64, seed=0)
        >>> loss = head(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
    """

    _default_hits = True


class NegativeSampling(NCE):
    """word2vec negative sampling: ``softplus(−z_y) + Σ_s softplus(z_{c_s})`` with ``z = h·w + b``
    (no log-Q subtraction).

    The noise is ``samplers.Unigram(counts, distortion=0.75, unique=False)`` (word2vec's unigram^0.75,
    drawn with replacement) built from ``counts=`` [V]; or pass any ``sampler=``. One of them is
    required. Accidental hits are kept by default (as in word2vec). The scores learn
    ``log(P(c|h) / (S·Q(c)))`` (see the module docstring), so exact-evaluation perplexity is expected
    to be worse than NCE's.

    Args:
        counts: ``[V]`` class counts for the unigram^``distortion`` noise (or pass ``sampler=``).
        distortion: exponent of the counts (default 0.75).
        others: as :class:`NCE` (``bias_init`` defaults to 0).

    Shape:
        as :class:`NCE`.

    Examples::

        >>> head = NegativeSampling(16, 1000, num_sampled=5, counts=torch.arange(1000, 0, -1).double(), seed=0)
        >>> loss = head(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
    """

    _subtract_log_q = False
    _default_distortion = 0.75
    _counts_unique = False

    def _default_sampler(self, sampler, num_classes: int):
        if sampler is None:
            raise ValueError(
                "NegativeSampling needs counts= (class counts [num_classes] for the unigram^0.75 noise) or sampler="
            )
        return sampler

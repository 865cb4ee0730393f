"""The one candidate component of the heads trained on sampled classes.

:class:`~bigsoftmax.heads.sampled.SamplingHead` (sampled softmax, NCE, …) and
:class:`~bigsoftmax.heads.margin.MarginHead` (``num_sampled=S``, Partial FC) both draw a candidate
set ``(ids, true_expected_count, sampled_expected_count)`` per training step from a
:mod:`bigsoftmax.samplers` sampler with the head's own seeded ``torch.Generator``. The pieces they
share live here, once:

- :func:`build_sampler`: the given sampler (or the head's default), checked against V and S;
- :func:`seeded_generator`: the head's generator (``seed=None``: a seed drawn from torch's global RNG);
- :func:`draw_candidates`: one draw for a batch of labels (per example with a context-dependent
  sampler), then the learned-sampler update, as TF does;
- :class:`CandidateMixin`: ``head.draw(labels, context=None)`` on ``self.sampler``/``self.generator``.

What each head does with the candidates (accidental-hit masking, batch positives, the loss) stays in
the head.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["build_sampler", "seeded_generator", "draw_candidates", "support_size", "CandidateMixin"]


def support_size(sampler) -> int:
    """Number of classes a sampler can draw (ids with nonzero probability)."""
    return int(getattr(sampler, "num_valid", sampler.range_max))


def build_sampler(sampler: Optional[nn.Module], num_classes: int, num_sampled: int,
                  default: Callable[[int], nn.Module]) -> nn.Module:
    """``sampler`` (or ``default(num_classes)`` when None), checked to draw ``num_sampled`` ids in [0, V).

    Raises ``TypeError`` for an object without ``.sample`` / ``.range_max``; ``ValueError`` when
    ``sampler.range_max != num_classes`` or a ``unique`` sampler cannot draw ``num_sampled`` distinct ids.

    Examples::

        >>> from bigsoftmax import samplers
        >>> build_sampler(None, 1000, 64, lambda v: samplers.LogUniform(v, unique=True)).range_max
        1000
    """
    if sampler is None:
        sampler = default(num_classes)
    if not hasattr(sampler, "sample") or not hasattr(sampler, "range_max"):
        raise TypeError(f"sampler must be a bigsoftmax.samplers sampler (with .sample and .range_max), "
                        f"got {type(sampler).__name__}")
    if sampler.range_max != num_classes:
        raise ValueError(f"sampler.range_max={sampler.range_max} must equal num_classes={num_classes}")
    limit = support_size(sampler)
    if getattr(sampler, "unique", False) and num_sampled > limit:
        raise ValueError(
            f"num_sampled={num_sampled} exceeds the {limit} classes the unique sampler can draw; "
            f"use num_sampled in [1, {limit}] or a sampler with unique=False"
        )
    return sampler


def seeded_generator(seed: Optional[int]) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``; ``None`` draws the seed from torch's global RNG
    (so ``torch.manual_seed`` still makes an unseeded head repeat)."""
    g = torch.Generator()
    g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))
    return g


def draw_candidates(sampler, labels: Tensor, num_sampled: int, generator: torch.Generator, update: bool = True,
                    context: Optional[Tensor] = None):
    """Draw ``num_sampled`` candidates for labels [N, num_true]; then, as TF does, let a learned
    sampler count this batch's labels (so they shape the next draws, not this one).

    A context-dependent sampler (``sampler.context_dependent``) gets ``context`` [N] and returns
    per-example candidates ``[N, S]``.

    Args:
        sampler: a :mod:`bigsoftmax.samplers` sampler.
        labels: int64 ``[N, num_true]`` true classes.
        num_sampled: S.
        generator: the ``torch.Generator`` every random draw uses.
        update: call ``sampler.update(labels)`` after the draw (training mode).
        context: int64 ``[N]``, the previous token of each row (context-dependent samplers only).

    Returns:
        ``(sampled_candidates [S] or [N, S], true_expected_count [N, num_true],
        sampled_expected_count [S] or [N, S])``.
    """
    if getattr(sampler, "context_dependent", False):
        out = sampler.sample(labels, num_sampled, generator=generator, context=context)
    else:
        out = sampler.sample(labels, num_sampled, generator=generator)
    if update and hasattr(sampler, "update"):
        sampler.update(labels)
    return out


class CandidateMixin:
    """``draw`` for a head holding ``sampler``, ``num_sampled`` and ``generator`` (an ``nn.Module``)."""

    def draw(self, labels: Tensor, context: Optional[Tensor] = None):
        """Draw ``num_sampled`` candidates for labels [N, num_true] with ``self.generator``; the sampler
        learns from the labels in training mode (see :func:`draw_candidates`)."""
        return draw_candidates(self.sampler, labels, self.num_sampled, self.generator, update=self.training,
                               context=context)

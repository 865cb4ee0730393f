"""A shared candidate pool plus a few per-example candidates: the ``Mixed`` proposal (issue 15).

A per-example proposal such as :class:`~bigsoftmax.samplers.Bigram` puts its draws where the next
word is likely, but S per-row draws over N rows touch up to N·S distinct class rows: at S = V/16
that is every row of the matrix, and the step costs a full softmax. ``Mixed`` keeps the cheap shared
set of a context-free sampler (one ``[P]`` GEMM for the whole batch) and adds only R per-row draws
from the context-dependent one:

.. math::
    c_{n,1..P} \\sim Q_{shared} \\text{ (one set for all rows)}, \\qquad
    c_{n,P+1..P+R} \\sim Q_{row}(\\cdot \\mid p_n),

and every candidate (and every true class) of row n is corrected by its expected count under
*both* draws, ``E_n(c) = E_{shared}(c) + R · Q_{row}(c \\mid p_n)``. For draws with replacement the
count of c in row n's multiset is the sum of its counts in the two independent draws, so
``Σ_c exp(z_c) / E_n(c)`` over the multiset stays an unbiased estimate of the partition function
(the "balance heuristic" of multiple importance sampling): a class proposed by either sampler is
weighted by the chance that either proposes it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .bigram import Bigram
from .candidates import CandidateSampler, CandidateSamples, _check_generator, _check_int, _check_true_classes, update_rows

__all__ = ["Mixed"]


class Mixed(CandidateSampler):
    r"""Shared candidates from a context-free sampler plus ``num_per_row`` per-example draws.

    .. math::
        E_n(c) = E_{shared}(c) + R \, Q_{row}(c \mid p_n)

    for the P = ``num_sampled − R`` shared candidates, the R per-row candidates and the true classes
    alike (see the module docstring). ``sample`` returns per-example candidates ``[N, P + R]`` whose
    first P columns are the shared set (the same for every row; the fused sampled-softmax kernel
    scores them with one GEMM, see :meth:`shared_columns`).

    Args:
        shared: a context-free sampler (``LogUniform``, ``Unigram``, ...; any ``unique``), drawn
            once per step for the whole batch.
        per_row: a :class:`Bigram` with ``unique=False`` (its expected counts ``R · Q`` are then
            exact and additive), over the same number of classes.
        num_per_row: R >= 1, the per-example draws; ``num_sampled`` must exceed it.

    Shape:
        - true_classes: ``(N, T)``; context: ``(N)``.
        - output: ``sampled_candidates (N, S)`` int64, ``true_expected_count (N, T)`` and
          ``sampled_expected_count (N, S)`` float32, ``S = num_sampled``.

    Examples::

        >>> tokens = torch.randint(0, 50, (2000,))
        >>> from bigsoftmax.samplers import LogUniform
        >>> q = Mixed(LogUniform(50), Bigram(50, tokens, unique=False), num_per_row=4)
        >>> ids, true_ec, samp_ec = q.sample(tokens[1:9, None], 12, torch.Generator().manual_seed(0),
        ...                                  context=tokens[:8])
        >>> ids.shape, bool((ids[:, :8] == ids[0, :8]).all())
        (torch.Size([8, 12]), True)
    """

    #: heads pass the previous token of each target (``context=``) to :meth:`sample`
    context_dependent = True

    def __init__(self, shared: CandidateSampler, per_row: Bigram, num_per_row: int):
        if not isinstance(shared, CandidateSampler) or getattr(shared, "context_dependent", False):
            raise TypeError(f"shared must be a context-free bigsoftmax sampler (LogUniform, Unigram, ...), got "
                            f"{type(shared).__name__}")
        if not isinstance(per_row, Bigram):
            raise TypeError(f"per_row must be a samplers.Bigram, got {type(per_row).__name__}")
        if per_row.unique:
            raise ValueError("per_row must draw with replacement (Bigram(..., unique=False)): its expected counts R·Q "
                             "are then exact and add to the shared sampler's")
        if per_row.range_max != shared.range_max:
            raise ValueError(f"shared and per_row must cover the same classes, got range_max {shared.range_max} and "
                             f"{per_row.range_max}")
        super().__init__(shared.range_max, unique=shared.unique)
        self.shared = shared
        self.per_row = per_row
        self.num_per_row = _check_int("num_per_row", num_per_row, 1)

    @property
    def num_valid(self) -> int:
        return self.shared.num_valid + self.num_per_row

    def shared_columns(self, num_sampled: int) -> int:
        """P, the number of leading candidate columns shared by every row for ``num_sampled`` candidates."""
        return num_sampled - self.num_per_row

    def _check_num_sampled(self, num_sampled) -> int:
        s = _check_int("num_sampled", num_sampled, 1)
        if s <= self.num_per_row:
            raise ValueError(f"num_sampled ({s}) must be > num_per_row ({self.num_per_row}): at least one shared "
                             "candidate")
        self.shared._check_num_sampled(s - self.num_per_row)
        return s

    @torch.no_grad()
    def sample(self, true_classes: Tensor, num_sampled: int, generator: Optional[torch.Generator] = None,
               context: Optional[Tensor] = None) -> CandidateSamples:
        """Draw R per-row candidates from ``per_row`` (for ``context``), then P shared ones from ``shared``.

        Args:
            true_classes: int64 ``[N, T]`` ids in ``[0, V)``.
            num_sampled: S = P + R, > ``num_per_row``.
            generator: a ``torch.Generator`` (else torch's default generator); both draws use it.
            context: int64 ``[N]``, the previous token of each row (required).

        Returns:
            :class:`CandidateSamples` ``(ids [N, S], true_expected_count [N, T],
            sampled_expected_count [N, S])`` with the mixture counts of the class docstring.
        """
        tc = _check_true_classes(true_classes, self.range_max)
        s = self._check_num_sampled(num_sampled)
        gen = _check_generator(generator)
        R, P = self.num_per_row, s - self.num_per_row
        ctx = self.per_row._check_context(context, tc.shape[0])
        row_ids, row_true_ec, row_ec = self.per_row.sample(tc, R, gen, context=ctx)
        T = tc.shape[1]
        # the shared draw does not depend on its true classes: pass the per-row ids too, to get
        # their expected counts under the shared sampler from the same num_tries
        sh_ids, sh_ec_tr, sh_ec = self.shared.sample(torch.cat([tc, row_ids.to(tc.device)], 1), P, gen)
        dev = self.per_row.keys.device
        cross = self.per_row._cond_prob_columns(ctx.to(dev), sh_ids.to(dev), scale=float(R), add=sh_ec.to(dev))
        N = tc.shape[0]
        out = tc.device
        ids = torch.cat([sh_ids.to(out).expand(N, P), row_ids.to(out)], 1)
        true_ec = sh_ec_tr[:, :T] + row_true_ec.to(out)
        samp_ec = torch.cat([cross.to(out), sh_ec_tr[:, T:] + row_ec.to(out)], 1)
        return CandidateSamples(ids, true_ec, samp_ec)

    def forward(self, true_classes: Tensor, num_sampled: int, generator: Optional[torch.Generator] = None,
                context: Optional[Tensor] = None) -> CandidateSamples:
        """Same as :meth:`sample`."""
        return self.sample(true_classes, num_sampled, generator, context=context)

    def update(self, true_classes: Tensor, mask: Optional[Tensor] = None) -> None:
        """Let a learned shared sampler count the batch's classes (the rows where ``mask`` holds)."""
        update_rows(self.shared, true_classes, mask)

    def _prob64(self, ids: Tensor) -> Tensor:  # the context-free base API has no meaning here
        raise ValueError("Mixed proposals depend on the context: use sample(..., context=)")

    def extra_repr(self) -> str:
        return f"num_per_row={self.num_per_row}"

"""A context-dependent proposal: the interpolated bigram sampler (issue 15).

The sampled-softmax derivation (Jean et al. 2015; Bengio & Senécal 2008) is written for a proposal
that depends on the context, ``Q(y | x)``; an n-gram proposal is the classic choice. Here the
context is the previous token ``p`` and

.. math::
    Q(y \\mid p) = \\lambda_p \\frac{c(p, y)}{c(p)} + (1 - \\lambda_p) \\frac{u(y)^\\alpha}{\\sum_v u(v)^\\alpha},
    \\qquad \\lambda_p = \\lambda \\text{ if } c(p) > 0 \\text{ else } 0,

with ``c(p, y)`` the bigram counts of a token stream, ``c(p) = Σ_y c(p, y)`` and ``u`` the unigram
counts. The successor lists are stored as CSR (``nnz`` = number of distinct bigrams; never a dense
V×V table).

Drawing S candidates for each of N rows costs O(N·S·log nnz + N·S·log V): one uniform per draw
picks the component (``u < λ_p``: bigram, else unigram) and is rescaled into that component's
inverse CDF — a ``searchsorted`` in the global cumulative bigram counts (offset by the row's start)
or in the unigram CDF. So with ``λ = 0`` the draws are *exactly* those of
``Unigram(u, distortion=α)`` for the same generator state. Nothing is O(V) per call.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .candidates import (
    CandidateSampler,
    CandidateSamples,
    _check_bool,
    _check_generator,
    _check_ids,
    _check_int,
    _check_true_classes,
    _gen_device,
    _rebuild_after_load,
    inverse_cdf,
)
from . import candidates as _candidates
from .._validate import check_unit as _check_unit
from .._validate import sync_free

__all__ = ["Bigram", "expected_count_per_row", "unique_per_row"]


def expected_count_per_row(prob: Tensor, num_sampled: int, num_tries: Tensor) -> Tensor:
    """TF's ``ExpectedCountHelper`` with one ``num_tries`` per row.

    ``prob`` [N, K] per-draw probabilities (float64), ``num_tries`` [N] int64. Row n gives
    ``num_sampled * P`` where ``num_tries[n] == num_sampled`` (no repeat happened; always so for
    ``unique=False``), else ``1 − (1 − P)**num_tries[n]`` as ``−expm1(n · log1p(−P))``.
    """
    n = num_tries[:, None].to(prob.dtype)
    return torch.where(num_tries[:, None] == num_sampled, prob * num_sampled, -torch.expm1(n * torch.log1p(-prob)))


def unique_per_row(draw, num_rows: int, num_sampled: int) -> Tuple[Tensor, Tensor]:
    """TF's unique sampling for every row at once: i.i.d. draws until each row has S distinct ids.

    ``draw(m)`` returns ``[num_rows, m]`` fresh i.i.d. ids (row n from its own distribution). Draws
    come in batches (first 2 S per row, then doubling the width) while some row has fewer than S
    distinct ids — one host check per batch. Per row, the first occurrences are found with a
    stable sort; the result is ``(ids [N, S] in order of first appearance, num_tries [N])`` with
    ``num_tries`` = 1 + the position of the draw that produced the row's S-th distinct id (later
    draws are discarded, as a sequential loop would never have made them). With one row this is
    :func:`bigsoftmax.samplers.unique_by_rejection` on the same stream.
    """
    draws = draw(2 * num_sampled)
    fixed = num_rows > 0 and sync_free(draws)
    if fixed:
        # sync-free (accelerators, compile): the loop's doublings up to UNIQUE_BLOCK·S without checking
        # in between: the very stream the loop would draw, so the same result whenever that block
        # holds S distinct ids per row (a device assert otherwise); costs one sort of the block
        while draws.shape[1] < _candidates.UNIQUE_BLOCK * num_sampled:
            draws = torch.cat([draws, draw(draws.shape[1])], dim=1)
    while True:
        M = draws.shape[1]
        first = _candidates.first_occurrence(draws)
        if fixed:
            torch._assert_async((first.sum(1) >= num_sampled).all(),
                                f"unique per-row candidate sampling: a row has fewer than num_sampled={num_sampled} "
                                f"distinct ids in a block of {M} draws (raise samplers.candidates.UNIQUE_BLOCK "
                                f"or lower num_sampled)")
            break
        if num_rows == 0 or bool((first.sum(1) >= num_sampled).all()):
            break
        draws = torch.cat([draws, draw(M)], dim=1)
    seen = first.cumsum(1)
    pos = torch.arange(M, device=draws.device).expand_as(draws)
    key = torch.where(first & (seen <= num_sampled), pos, pos + M)
    take = torch.sort(key, dim=1).values[:, :num_sampled]
    num_tries = (seen < num_sampled).sum(1) + 1
    return draws.gather(1, take), num_tries


def _as_ids(x, name: str) -> Tensor:
    if isinstance(x, (list, tuple)) or type(x).__module__ == "numpy":
        x = torch.as_tensor(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a 1-D tensor (or sequence) of int64 token ids, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (int64), got dtype {x.dtype}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    return x


class Bigram(CandidateSampler):
    r"""Interpolated bigram proposal ``Q(y | prev)`` with per-example candidates.

    .. math::
        Q(y \mid p) = \lambda_p \frac{c(p, y)}{c(p)} + (1 - \lambda_p) \frac{u(y)^\alpha}{\sum_v u(v)^\alpha}

    (``λ_p = λ`` when the context ``p`` was seen followed by a token, else 0: an unseen context falls
    back to the unigram part). Unlike the TF samplers, :meth:`sample` needs the context — one previous
    token per row — and returns one candidate set per row.

    Args:
        num_classes: V (``range_max``); token and context ids lie in ``[0, V)``.
        tokens: a 1-D stream of token ids (at least 2); its consecutive pairs give ``c(p, y)``
            and, unless ``unigram_counts`` is given, its counts give ``u``.
        pairs: instead of ``tokens``, bigram counts ``(prev [P], next [P], count [P])`` (repeated
            pairs are summed).
        unigram_counts: ``[V]`` counts ``u`` (default: the token counts of ``tokens``, or the counts
            of ``next`` in ``pairs``). Pass counts clamped to >= 1 to keep every class drawable.
        lam: λ in [0, 1], the weight of the bigram part. Default 0.5: half of the draws follow the
            observed successors of the context, half the smoothed unigram, which keeps every class
            drawable and covers contexts seen only a few times. ``lam=0`` is exactly
            ``Unigram(unigram_counts, distortion=alpha)``.
        alpha: α >= 0, the unigram exponent. Default 0.75 (word2vec's distortion).
        unique: TF's unique semantics per row (draw until S distinct ids; expected counts from
            that row's ``num_tries``).

    Buffers (checkpointed): ``keys`` [nnz] int64 (``prev · V + next``, sorted), ``pair_counts`` [nnz]
    int64 and ``unigram`` [V] float64; the CSR row pointers and cumulative sums are rebuilt on load.
    Draws use the ``generator`` passed to :meth:`sample` (a head's seeded ``torch.Generator``).

    Shape:
        - true_classes: ``(N, T)``; context: ``(N)``.
        - output: ``sampled_candidates (N, S)`` int64, ``true_expected_count (N, T)`` and
          ``sampled_expected_count (N, S)`` float32: ``S · Q(c | p)`` for ``unique=False``, TF's
          ``1 − (1 − Q)^{num_tries}`` per row for ``unique=True``.

    Examples::

        >>> tokens = torch.tensor([0, 1, 2, 0, 1, 3, 0, 1, 2])
        >>> q = Bigram(4, tokens, lam=0.5, alpha=0.75, unique=False)
        >>> ids, true_ec, samp_ec = q.sample(torch.tensor([[1], [2]]), 3, torch.Generator().manual_seed(0),
        ...                                  context=torch.tensor([0, 1]))
        >>> ids.shape, samp_ec.shape
        (torch.Size([2, 3]), torch.Size([2, 3]))
    """

    #: heads pass the previous token of each target (``context=``) to :meth:`sample`
    context_dependent = True

    def __init__(
        self,
        num_classes: int,
        tokens: Optional[Union[Tensor, Sequence[int]]] = None,
        *,
        pairs: Optional[Tuple[Tensor, Tensor, Tensor]] = None,
        unigram_counts: Optional[Union[Tensor, Sequence[float]]] = None,
        lam: float = 0.5,
        alpha: float = 0.75,
        unique: bool = True,
    ):
        super().__init__(_check_int("num_classes", num_classes, 1), _check_bool("unique", unique))
        V = self.range_max
        self.lam = _check_unit("lam", lam)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(float(alpha)) or alpha < 0:
            raise ValueError(f"alpha must be a finite float >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        if (tokens is None) == (pairs is None):
            raise ValueError("Bigram needs exactly one of tokens= (a token stream) and pairs= ((prev, next, count) bigram counts)")
        if tokens is not None:
            t = _as_ids(tokens, "tokens")
            if t.numel() < 2:
                raise ValueError(f"tokens must hold at least 2 ids (one bigram), got {t.numel()}: an empty stream has no counts")
            t = _check_ids(t, V, "tokens").cpu()
            prev, nxt, cnt = t[:-1], t[1:], torch.ones(t.numel() - 1, dtype=torch.long)
            uni_default = torch.bincount(t, minlength=V)
        else:
            if not (isinstance(pairs, (tuple, list)) and len(pairs) == 3):
                raise TypeError("pairs must be a tuple (prev [P], next [P], count [P]) of tensors")
            prev = _check_ids(_as_ids(pairs[0], "pairs[0] (prev)"), V, "pairs[0] (prev)").cpu()
            nxt = _check_ids(_as_ids(pairs[1], "pairs[1] (next)"), V, "pairs[1] (next)").cpu()
            cnt = _as_ids(pairs[2], "pairs[2] (count)").cpu().long()
            if not (prev.shape == nxt.shape == cnt.shape):
                raise ValueError(f"pairs must hold three 1-D tensors of one length, got shapes "
                                 f"{tuple(prev.shape)}, {tuple(nxt.shape)}, {tuple(cnt.shape)}")
            if cnt.numel() and int(cnt.min()) < 0:
                raise ValueError("pairs[2] (count) must be >= 0")
            if int(cnt.sum()) <= 0:
                raise ValueError("pairs hold no bigram with a positive count: an empty stream has no counts")
            uni_default = torch.zeros(V, dtype=torch.long).index_add_(0, nxt, cnt)
        keys, inv = torch.unique(prev * V + nxt, return_inverse=True)
        counts = torch.zeros(keys.numel(), dtype=torch.long).index_add_(0, inv, cnt)
        keep = counts > 0
        if unigram_counts is None:
            uni = uni_default.to(torch.float64)
        else:
            try:
                uni = torch.as_tensor(unigram_counts, dtype=torch.float64).detach().cpu()
            except (TypeError, ValueError, RuntimeError) as e:
                raise TypeError(f"unigram_counts must be a 1-D sequence or tensor of numbers ({e})") from None
            if tuple(uni.shape) != (V,):
                raise ValueError(f"unigram_counts must have shape [num_classes={V}], got {tuple(uni.shape)}")
        self.register_buffer("keys", keys[keep].contiguous())
        self.register_buffer("pair_counts", counts[keep].contiguous())
        self.register_buffer("unigram", uni)
        for name in ("_col", "_cum", "_row_start", "_row_total", "_uw", "_ucdf"):
            self.register_buffer(name, torch.empty(0), persistent=False)
        self._num_valid = 0
        self._rebuild()
        self.register_load_state_dict_post_hook(_rebuild_after_load)

    # ----------------------------------------------------------------- tables
    def _check_state(self, keys: Tensor, counts: Tensor, uni: Tensor) -> None:
        V = self.range_max
        if keys.dim() != 1 or counts.shape != keys.shape or keys.dtype != torch.long or counts.dtype != torch.long:
            raise ValueError(f"Bigram keys and pair_counts must be 1-D int64 tensors of one length, got "
                             f"{tuple(keys.shape)} {keys.dtype} and {tuple(counts.shape)} {counts.dtype}")
        if keys.numel() and (int(keys.min()) < 0 or int(keys.max()) >= V * V or not bool((keys[1:] > keys[:-1]).all())):
            raise ValueError(f"Bigram keys must be strictly increasing prev * {V} + next values in [0, {V * V})")
        if counts.numel() and int(counts.min()) <= 0:
            raise ValueError("Bigram pair_counts must be > 0")
        if tuple(uni.shape) != (V,):
            raise ValueError(f"Bigram unigram counts must have shape [{V}], got {tuple(uni.shape)}")
        if not bool(torch.isfinite(uni).all()) or bool((uni < 0).any()):
            raise ValueError("unigram_counts must be finite and >= 0")
        if self.lam < 1 and not bool((uni.pow(self.alpha) > 0).any()):
            raise ValueError("unigram_counts give no class a positive weight; nothing can be sampled")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # validate before anything is copied: a bad state dict leaves the sampler as it was
        got = [state_dict.get(prefix + k) for k in ("keys", "pair_counts", "unigram")]
        if all(isinstance(t, Tensor) for t in got):
            self._check_state(*got)
            for k, t in zip(("keys", "pair_counts"), got[:2]):  # the number of bigrams may differ
                if getattr(self, k).shape != t.shape:
                    setattr(self, k, torch.empty_like(t, device=getattr(self, k).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _rebuild(self) -> None:
        """Recompute the CSR row pointers, cumulative counts and unigram CDF from the buffers."""
        self._check_state(self.keys, self.pair_counts, self.unigram)
        V = self.range_max
        dev = self.keys.device
        rows = self.keys // V
        self._col = self.keys % V
        self._cum = self.pair_counts.cumsum(0)
        ptr = torch.zeros(V + 1, dtype=torch.long, device=dev)
        ptr[1:] = torch.bincount(rows, minlength=V).cumsum(0)
        cum0 = torch.cat([self._cum.new_zeros(1), self._cum])
        self._ptr = ptr  # CSR row pointers into keys
        self._row_start = cum0[ptr[:-1]]  # total count before row p
        self._row_total = cum0[ptr[1:]] - self._row_start  # c(p)
        w = self.unigram.pow(self.alpha)
        self._uw = w
        self._ucdf = torch.cumsum(w, 0)
        self._num_valid = int((w > 0).sum())

    @property
    def num_valid(self) -> int:
        """Classes the unigram part can draw (an upper bound on ``num_sampled`` when unique)."""
        return self._num_valid if self.lam < 1 else self.range_max

    @property
    def num_bigrams(self) -> int:
        """Number of distinct bigrams stored (nnz of the CSR successor lists)."""
        return int(self.keys.numel())

    # ----------------------------------------------------------------- math
    def _check_context(self, context, batch: int) -> Tensor:
        if context is None:
            raise ValueError("context is required by the Bigram sampler: pass context= (the previous token of each row, "
                             f"shape [batch={batch}])")
        c = _check_ids(context, self.range_max, "context")
        if tuple(c.shape) != (batch,):
            raise ValueError(f"context must have shape [batch={batch}] (one previous token per row of true_classes), "
                             f"got {tuple(c.shape)}")
        return c

    def _cond_prob64(self, context: Tensor, ids: Tensor) -> Tensor:
        """Q(ids[n, k] | context[n]) in float64; context [N], ids [N, K] (on the buffers' device)."""
        uni = self._uw[ids] / self._ucdf[-1] if self.lam < 1 else torch.zeros(ids.shape, dtype=torch.float64, device=ids.device)
        if self.lam == 0 or self.keys.numel() == 0:
            return uni
        V = self.range_max
        key = context[:, None] * V + ids
        pos = torch.searchsorted(self.keys, key).clamp_(max=self.keys.numel() - 1)
        c = torch.where(self.keys[pos] == key, self.pair_counts[pos], 0).to(torch.float64)
        tot = self._row_total[context].to(torch.float64)[:, None]
        lam = torch.where(tot > 0, self.lam, 0.0)
        return lam * (c / tot.clamp(min=1.0)) + (1.0 - lam) * uni

    def _cond_prob_columns(self, context: Tensor, ids: Tensor, scale: float = 1.0,
                           add: Optional[Tensor] = None) -> Tensor:
        """``scale · Q(ids[k] | context[n]) + add[k]`` as ``[N, K]`` float32, for one id set shared by the rows.

        Cheaper than :meth:`_cond_prob64` on ``ids.expand(N, K)`` (N·K binary searches): the rows are
        grouped by distinct context ``p`` and only the successors of each ``p`` are looked up in the
        sorted ids — O(Σ_p succ(p) · log K) searches, a ``[P_distinct, K]`` table, and one gather to
        ``[N, K]``. ``context`` [N] and ``ids`` [K] on the buffers' device.
        """
        V = self.range_max
        if sync_free(ids):
            return self._cond_prob_columns_dense(context, ids, scale, add)
        uc, cinv = torch.unique(context, return_inverse=True)
        su, sinv = torch.unique(ids, return_inverse=True)  # sorted distinct ids; ids = su[sinv]
        uni = (self._uw[su] / self._ucdf[-1]) if self.lam < 1 else torch.zeros(su.shape, dtype=torch.float64,
                                                                             device=su.device)
        tot = self._row_total[uc]
        lam = torch.where(tot > 0, self.lam, 0.0).to(torch.float64)
        table = ((1.0 - lam) * scale)[:, None] * uni[None, :]  # [P_distinct, K_distinct] float64
        if self.lam > 0 and self.keys.numel() and su.numel():
            start = self._ptr[uc]
            deg = self._ptr[uc + 1] - start
            n = int(deg.sum())
            if n:
                rows = torch.repeat_interleave(torch.arange(uc.numel(), device=uc.device), deg)
                pos = torch.repeat_interleave(start - (deg.cumsum(0) - deg), deg) + torch.arange(n, device=uc.device)
                col = self._col[pos]
                j = torch.searchsorted(su, col).clamp_(max=su.numel() - 1)
                hit = su[j] == col
                rows, j, pos = rows[hit], j[hit], pos[hit]
                w = (lam * scale / tot.clamp(min=1).to(torch.float64))[rows] * self.pair_counts[pos].to(torch.float64)
                table.index_put_((rows, j), w, accumulate=True)
        table = table.index_select(1, sinv).to(torch.float32)  # columns in the order of ids (small: P_distinct rows)
        if add is not None:
            table += add.to(device=table.device, dtype=torch.float32)[None, :]
        return table.index_select(0, cinv)

    def _cond_prob_columns_dense(self, context: Tensor, ids: Tensor, scale: float, add: Optional[Tensor]) -> Tensor:
        """:meth:`_cond_prob_columns` with fixed shapes (accelerators, compile): N·K binary searches
        of ``context · V + id`` in the sorted bigram keys instead of the distinct-context CSR walk
        (no unique, no data-sized expansion); the same float64 terms in the same order, so the same
        float32 table."""
        N, K = context.shape[0], ids.shape[0]
        uni = (self._uw[ids] / self._ucdf[-1]) if self.lam < 1 else torch.zeros(ids.shape, dtype=torch.float64,
                                                                              device=ids.device)
        tot = self._row_total[context]
        lam = torch.where(tot > 0, self.lam, 0.0).to(torch.float64)
        table = ((1.0 - lam) * scale)[:, None] * uni[None, :]  # [N, K] float64
        if self.lam > 0 and self.keys.numel() and K:
            key = context[:, None] * self.range_max + ids[None, :]
            pos = torch.searchsorted(self.keys, key).clamp_(max=self.keys.numel() - 1)
            hit = self.keys[pos] == key
            w = (lam * scale / tot.clamp(min=1).to(torch.float64))[:, None] * self.pair_counts[pos].to(torch.float64)
            table = torch.where(hit, table + w, table)
        table = table.to(torch.float32)
        if add is not None:
            table += add.to(device=table.device, dtype=torch.float32)[None, :]
        return table

    def _draw_rows(self, context: Tensor, m: int, generator: Optional[torch.Generator]) -> Tensor:
        """[N, m] i.i.d. draws, row n from Q(· | context[n]); one float64 uniform per draw."""
        u = torch.rand(context.shape[0], m, dtype=torch.float64, generator=generator,
                       device=_gen_device(generator)).to(self.keys.device)
        lam = self.lam
        tot = self._row_total[context][:, None]
        has = tot > 0
        if lam == 0:
            return inverse_cdf(self._ucdf, u)
        uu = torch.where(has, (u - lam) / (1.0 - lam), u) if lam < 1 else u
        from_uni = inverse_cdf(self._ucdf, uu.clamp(0.0, 1.0)) if self._num_valid else torch.zeros_like(u, dtype=torch.long)
        r = torch.floor(u / lam * tot.to(torch.float64)).long()
        r = torch.minimum(r, (tot - 1).clamp(min=0))
        pos = torch.searchsorted(self._cum, self._row_start[context][:, None] + r, right=True)
        from_big = self._col[pos.clamp_(max=max(self.keys.numel() - 1, 0))]
        return torch.where(has & (u < lam), from_big, from_uni)

    @torch.no_grad()
    def sample(self, true_classes: Tensor, num_sampled: int, generator: Optional[torch.Generator] = None,
               context: Optional[Tensor] = None) -> CandidateSamples:
        """Draw ``num_sampled`` candidates for every row from ``Q(· | context[row])``.

        Args:
            true_classes: int64 ``[N, T]`` ids in ``[0, V)``.
            num_sampled: S >= 1 (<= the drawable classes when ``unique``).
            generator: a ``torch.Generator`` (else torch's default generator).
            context: int64 ``[N]``, the previous token of each row (required).

        Returns:
            :class:`CandidateSamples` ``(ids [N, S], true_expected_count [N, T],
            sampled_expected_count [N, S])`` on ``true_classes.device``.
        """
        tc = _check_true_classes(true_classes, self.range_max)
        s = self._check_num_sampled(num_sampled)
        gen = _check_generator(generator)
        dev = self.keys.device
        ctx = self._check_context(context, tc.shape[0]).to(dev)
        if self.unique and self.lam == 1 and ctx.numel():
            few = self._row_total[ctx] > 0
            support = torch.bincount(self.keys // self.range_max, minlength=self.range_max)[ctx]
            if bool((few & (support < s)).any()):
                raise ValueError(f"num_sampled ({s}) exceeds the number of successors of some context with lam=1 and "
                                 "unique=True; use lam < 1, unique=False or a smaller num_sampled")
        if self.unique:
            ids, num_tries = unique_per_row(lambda m: self._draw_rows(ctx, m, gen), ctx.shape[0], s)
        else:
            ids = self._draw_rows(ctx, s, gen)
            num_tries = torch.full((ctx.shape[0],), s, dtype=torch.long, device=dev)
        samp_ec = expected_count_per_row(self._cond_prob64(ctx, ids), s, num_tries)
        true_ec = expected_count_per_row(self._cond_prob64(ctx, tc.to(dev)), s, num_tries)
        out = tc.device
        return CandidateSamples(ids.to(out), true_ec.to(torch.float32).to(out), samp_ec.to(torch.float32).to(out))

    def forward(self, true_classes: Tensor, num_sampled: int, generator: Optional[torch.Generator] = None,
                context: Optional[Tensor] = None) -> CandidateSamples:
        """Same as :meth:`sample`."""
        return self.sample(true_classes, num_sampled, generator, context=context)

    @torch.no_grad()
    def log_prob(self, ids: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """log Q(ids[n, k] | context[n]), float32; ids ``[N, K]`` (or ``[N]``), context ``[N]``."""
        i = _check_ids(ids, self.range_max, "ids")
        squeeze = i.dim() == 1
        i2 = i[:, None] if squeeze else i
        if i2.dim() != 2:
            raise ValueError(f"ids must have shape [N] or [N, K], got {tuple(i.shape)}")
        ctx = self._check_context(context, i2.shape[0]).to(self.keys.device)
        out = torch.log(self._cond_prob64(ctx, i2.to(self.keys.device))).to(torch.float32).to(ids.device)
        return out[:, 0] if squeeze else out

    @torch.no_grad()
    def probs(self, context: Optional[Tensor] = None) -> Tensor:
        """Q(· | context[n]) over all classes: ``[N, V]`` float32 (O(N·V); for inspection and tests)."""
        if context is None:
            raise ValueError("Bigram.probs needs context= (previous tokens [N]); Q depends on the context")
        c = _check_ids(context, self.range_max, "context").reshape(-1).to(self.keys.device)
        ids = torch.arange(self.range_max, device=c.device).expand(c.shape[0], -1)
        return self._cond_prob64(c, ids).to(torch.float32)

    def _prob64(self, ids: Tensor) -> Tensor:  # the context-free base API has no meaning here
        raise ValueError("Bigram probabilities depend on the context: use log_prob(ids, context=) or probs(context=)")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lam={self.lam}, alpha={self.alpha}, num_bigrams={self.num_bigrams}"

"""Training objectives for the two-tower model, each a thin module around the library's losses.

With user vectors u [B, d], positives y [B] (item ids), the item tower v(·) and temperature τ:

* ``full`` — exact softmax over all V items: ``loss = logsumexp_i <u, v_i>/τ − <u, v_y>/τ``
  (the reference; it touches the whole table every step).
* ``sampled`` — sampled softmax (:func:`bigsoftmax.functional.sampled_logits_parts`): S candidates
  c_1..c_S drawn once per step from a sampler Q over the items (``log-uniform`` on the
  popularity-sorted ids, ``unigram`` = training counts^α, or ``uniform``), accidental hits removed::

      z_c = <u, v_c>/τ − [logq] log E_Q(c),  loss = logsumexp(z_y, z_c1..z_cS) − z_y

  ``E_Q(c)`` is the sampler's expected count of c among the S draws (TensorFlow semantics).
  With no item features the rows are gathered from the item table itself (``model.output_weight``)
  and only those rows are normalised when ``normalize``.
* ``in-batch`` — the other positives of the batch are the negatives
  (:class:`bigsoftmax.retrieval.InBatchSoftmax`): ``s_ij = <u_i, v_yj>/τ − [logq] log q(y_j)`` with
  ``q`` from the true training-target frequencies (``freq='true'``) or the streaming frequency
  estimator of Yi et al. 2019 (``freq='streaming'``); duplicates of the positive are masked.
* ``mixed`` — in-batch negatives plus S' items drawn from a sampler (default uniform, as in Yang et
  al. 2020) (:class:`bigsoftmax.retrieval.MixedNegativeSoftmax`); the log-Q correction uses the
  mixture's expected count ``log(B·p_data(j) + E_Q(j))`` (true frequencies or the estimator).

Every objective draws its random candidates from its own seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as BF
from .. import samplers as S
from ..samplers.streaming import StreamingFrequencyEstimator
from ..retrieval import InBatchSoftmax, MixedNegativeSoftmax

__all__ = ["OBJECTIVES", "SAMPLERS", "FREQ_SOURCES", "Objective", "build_objective", "make_sampler", "log_target_frequency"]

OBJECTIVES = ("full", "sampled", "in-batch", "mixed")
SAMPLERS = ("log-uniform", "unigram", "uniform")
FREQ_SOURCES = ("true", "streaming")
#: floor on training-target counts for log q of items that never are a target (mixed negatives can
#: sample them): small enough that the mixture correction is then the sampler's expected count.
_COUNT_FLOOR = 1e-3


def make_sampler(name: str, num_items: int, counts: Optional[Tensor] = None, alpha: float = 0.75,
                 unique: bool = True) -> nn.Module:
    """``log-uniform`` | ``unigram`` (counts ** alpha) | ``uniform`` sampler over ``num_items`` ids."""
    if name == "log-uniform":
        return S.LogUniform(num_items, unique=unique)
    if name == "uniform":
        return S.Uniform(num_items, unique=unique)
    if name == "unigram":
        if counts is None:
            raise ValueError("the unigram sampler needs the item counts")
        return S.Unigram(counts.to(torch.float64), distortion=alpha, unique=unique)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


def log_target_frequency(counts: Tensor, batch_size: int) -> Tensor:
    """log of the expected occurrences of each item among B training targets: [V] -> [V] float32.

    ``log(B · max(count, floor) / Σ count)``; the floor keeps never-seen items finite.
    """
    c = counts.to(torch.float64).clamp_min(_COUNT_FLOOR)
    return (math.log(batch_size) + torch.log(c) - math.log(float(counts.sum()))).to(torch.float32)


class Objective(nn.Module):
    """One training objective: ``forward(model, user_vecs [B, d], pos_ids [B], step) -> scalar loss``.

    Build with :func:`build_objective`. State (sampler tables, streaming estimator, temperature)
    lives in submodules/buffers, so ``state_dict()`` checkpoints it.
    """

    def __init__(self, kind: str, num_items: int, *, sampler: Optional[nn.Module] = None, num_sampled: int = 0,
                 logq: bool = True, freq: str = "true", target_counts: Optional[Tensor] = None, batch_size: int = 256,
                 temperature: float = 1.0, seed: int = 0, estimator_alpha: float = 0.01):
        super().__init__()
        if kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {kind!r}")
        if freq not in FREQ_SOURCES:
            raise ValueError(f"freq must be one of {FREQ_SOURCES}, got {freq!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
        if kind in ("sampled", "mixed") and (isinstance(num_sampled, bool) or not isinstance(num_sampled, int) or num_sampled < 1):
            raise ValueError(f"num_sampled must be an int >= 1 for objective {kind!r}, got {num_sampled!r}")
        self.kind = kind
        self.num_items = num_items
        self.num_sampled = num_sampled
        self.logq = bool(logq)
        self.freq = freq
        self.temperature = float(temperature)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.sampler = sampler
        self.loss_module: Optional[nn.Module] = None
        needs_true = self.logq and freq == "true" and kind in ("in-batch", "mixed")
        if needs_true:
            if target_counts is None:
                raise ValueError("logq with freq='true' needs the training target counts")
            self.register_buffer("log_q", log_target_frequency(target_counts, batch_size))
        else:
            self.log_q = None
        estimator = None
        if self.logq and freq == "streaming" and kind in ("in-batch", "mixed"):
            buckets = 1 << max(10, math.ceil(math.log2(2 * num_items)))
            estimator = StreamingFrequencyEstimator(buckets, num_hashes=2, alpha=estimator_alpha, seed=seed)
        if kind == "in-batch":
            self.loss_module = InBatchSoftmax(temperature=self.temperature, estimator=estimator)
        elif kind == "mixed":
            self.loss_module = MixedNegativeSoftmax(
                num_items, num_sampled, sampler=sampler, estimator=estimator,
                batch_log_q=self.log_q if needs_true else None, temperature=self.temperature, seed=seed)
        elif kind == "sampled" and sampler is None:
            raise ValueError("objective 'sampled' needs a sampler")

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, num_sampled={self.num_sampled}, logq={self.logq}, freq={self.freq!r}, "
                f"temperature={self.temperature}")

    def forward(self, model: nn.Module, user: Tensor, pos: Tensor, step: Optional[int] = None) -> Tensor:
        if self.kind == "full":
            return self._full(model, user, pos)
        if self.kind == "sampled":
            return self._sampled(model, user, pos)
        if self.kind == "in-batch":
            cand = model.item_vectors(pos)
            lq = self.log_q.index_select(0, pos) if self.log_q is not None else None
            return self.loss_module(user, cand, pos, lq, step=step)
        return self.loss_module(user, model.item_vectors(pos), pos, model.item_vectors, step=step)

    def _full(self, model, user: Tensor, pos: Tensor) -> Tensor:
        items = model.item_vectors(torch.arange(model.num_items, device=user.device))
        logits = (user / self.temperature) @ items.t()
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), pos)  # log-softmax in fp32+

    def _sampled(self, model, user: Tensor, pos: Tensor) -> Tensor:
        labels = pos[:, None]
        sampled, true_ec, samp_ec = self.sampler.sample(labels, self.num_sampled, generator=self.generator)
        inputs = user / self.temperature
        W = getattr(model, "output_weight", None)
        if W is not None:  # rows gathered from the item table itself; only they are normalised
            parts = BF.sampled_logits_parts(W, None, labels, inputs, (sampled, true_ec, samp_ec), subtract_log_q=self.logq,
                                            remove_accidental_hits=True, row_transform=model.row_transform)
        else:  # item tower with features: score a local table of the B + S candidate vectors
            B = pos.shape[0]
            local = model.item_vectors(torch.cat([pos, sampled]))
            ar = torch.arange(B + sampled.shape[0], device=user.device)
            parts = BF.sampled_logits_parts(local, None, ar[:B, None], inputs, (ar[B:], true_ec, samp_ec),
                                            subtract_log_q=self.logq, remove_accidental_hits=False)
            hit = sampled[None, :] == pos[:, None]
            parts = parts._replace(sampled_logits=parts.sampled_logits.masked_fill(hit, torch.finfo(parts.sampled_logits.dtype).min),
                                   hit_mask=hit)
        return BF.sampled_softmax_from_parts(parts).mean()


def build_objective(kind: str, num_items: int, target_counts: Tensor, item_counts: Tensor, *, sampler: Optional[str] = None,
                    alpha: float = 0.75, num_sampled: int = 256, logq: bool = True, freq: str = "true", batch_size: int = 256,
                    temperature: float = 1.0, seed: int = 0) -> Objective:
    """Objective from names: ``sampler`` defaults to ``log-uniform`` for ``sampled`` and ``uniform``
    (non-unique, as in the MNS paper) for ``mixed``; ``unigram`` uses the training interaction counts."""
    smp = None
    if kind == "sampled":
        smp = make_sampler(sampler or "log-uniform", num_items, item_counts, alpha, unique=True)
        if num_sampled > smp.num_valid:
            raise ValueError(f"num_sampled={num_sampled} exceeds the {smp.num_valid} items the {sampler or 'log-uniform'} "
                             f"sampler can draw without repetition; use num_sampled in [1, {smp.num_valid}]")
    elif kind == "mixed":
        smp = make_sampler(sampler or "uniform", num_items, item_counts, alpha, unique=False)
    return Objective(kind, num_items, sampler=smp, num_sampled=num_sampled, logq=logq, freq=freq,
                     target_counts=target_counts, batch_size=batch_size, temperature=temperature, seed=seed)

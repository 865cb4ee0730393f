"""Two-tower retrieval losses: in-batch softmax with log-Q correction, and mixed negative sampling.

Notation: B queries, C >= B candidates, d features, V items in the corpus.

In-batch softmax (Yi et al., RecSys 2019, "Sampling-Bias-Corrected Neural Modeling for Large Corpus
Item Recommendations"): row i's positive is candidate i and every other candidate is a negative::

    s_ij  = <query_i, cand_j> / temperature − log q_j                       (log-Q correction)
    loss_i = logsumexp_{j ∈ K_i} s_ij − s_ii

``q_j`` is (proportional to) the expected number of times item j occurs among one step's
candidates — e.g. :class:`bigsoftmax.samplers.StreamingFrequencyEstimator` ``.log_q``. The kept set
``K_i`` is all candidates minus the *accidental hits* (candidates j ≠ i with ``id_j == id_i``: the
same item as the positive, which must not be pushed away from the query) and, with hard-negative
mining, only the positive plus the ``k`` highest corrected negatives.

Mixed negative sampling (Yang et al., WWW 2020 companion, "Mixed Negative Sampling for Learning
Two-tower Neural Networks in Recommendations"): the B in-batch positives plus S' items sampled from
the whole corpus (index-uniform in the paper). Derivation of the correction we use: candidate
item j enters one step's candidate set

* as an in-batch item, an expected ``E_batch(j) = B · p_data(j)`` times (``batch_log_q``), and
* as a sampled item, an expected ``E_s(j) = S' · q_s(j)`` times (the sampler's expected count,
  TF semantics, so ``unique=True`` samplers are handled too).

The candidate multiset is a draw from the mixture whose expected count is the sum
``E(j) = E_batch(j) + E_s(j)``; exactly as in sampled softmax (where logits subtract the log
expected count of the proposal), every candidate's logit — positives included — is corrected by
``log E(j) = logaddexp(log E_batch(j), log E_s(j))``. A constant factor in ``E`` (e.g. using
probabilities instead of counts) shifts every logit of a row equally and changes nothing.

Everything goes through the library's one sampled-logits core
(:func:`bigsoftmax.functional.sampled_logits_parts`): the candidates play the role of the class
table, the query rows are the inputs (pre-divided by the temperature), label i = column i, and
column i of row i is the positive, so the loss is a softmax cross-entropy over the [B, C] scores
with target i (masked hits contribute exactly 0 to the partition sum).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import sampled as BF
from ._validate import check_reduction
from .ops.reduce import reduce_loss
from ._validate import (
    check_float_matrix as _check_float_matrix, check_ids as _check_ids, check_log_q as _check_log_q,
    check_num_hard_negatives as _check_num_hard_negatives, check_temperature as _check_temperature,
)

__all__ = ["in_batch_softmax_loss", "mixed_negatives_loss", "InBatchSoftmax", "MixedNegativeSoftmax"]

LogQ = Union[Tensor, Callable[[Tensor], Tensor]]


# ----------------------------------------------------------------------------- validation
# ----------------------------------------------------------------------------- in-batch softmax
def in_batch_softmax_loss(
    query: Tensor,
    candidates: Tensor,
    candidate_ids: Optional[Tensor] = None,
    candidate_log_q: Optional[Tensor] = None,
    temperature: Union[float, Tensor] = 1.0,
    remove_accidental_hits: bool = True,
    num_hard_negatives: Optional[int] = None,
    reduction: str = "mean",
) -> Tensor:
    """In-batch softmax loss with log-Q correction (two-tower retrieval).

    Args:
        query: [B, d] query-tower outputs.
        candidates: [C, d] item-tower outputs, C >= B; row i (i < B) is query i's positive and
            rows B..C-1 are extra negatives shared by every row.
        candidate_ids: [C] int64 item ids, used to mask accidental hits (optional).
        candidate_log_q: [C] finite log expected count (or log probability) of every candidate.
        temperature: float > 0 or a one-element tensor (may require grad).
        remove_accidental_hits: mask every candidate j ≠ i whose id equals ``candidate_ids[i]``.
        num_hard_negatives: keep only the positive and the k highest corrected negatives
            (k in [1, C-1]); masked hits are never selected while real negatives remain.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'`` ([B]).

    Returns ``loss_i = logsumexp_{j ∈ K_i} s_ij − s_ii`` with
    ``s_ij = <query_i, candidates_j> / temperature − log q_j`` (see the module docstring), reduced.
    The log-sum-exp runs in fp32 or wider.

    Shape:
        - query: :math:`(B, d)`; candidates: :math:`(C, d)`, C >= B; candidate_ids, candidate_log_q: :math:`(C)`.
        - output: scalar, or :math:`(B)` with ``reduction='none'``.

    Examples::

        >>> q, items = torch.randn(8, 16), torch.randn(8, 16)
        >>> ids = torch.randint(0, 100, (8,))
        >>> loss = in_batch_softmax_loss(q, items, ids, candidate_log_q=torch.full((8,), -3.0), temperature=0.05)
    """
    _check_float_matrix(query, "query")
    _check_float_matrix(candidates, "candidates")
    B, d = query.shape
    C = candidates.shape[0]
    if candidates.shape[1] != d:
        raise ValueError(f"candidates must have d={d} columns like query, got shape {tuple(candidates.shape)}")
    if B < 1:
        raise ValueError("query must hold at least one row")
    if C < B:
        raise ValueError(
            f"candidates has {C} rows but query has {B}: candidates must hold at least the batch's B positives "
            f"(row i is query i's positive), i.e. C >= B"
        )
    check_reduction(reduction)
    _check_temperature(temperature)
    if candidate_ids is not None:
        candidate_ids = _check_ids(candidate_ids, C, "candidate_ids").to(query.device)
    if candidate_log_q is not None:
        candidate_log_q = _check_log_q(candidate_log_q, C, "candidate_log_q").to(query.device)
    if num_hard_negatives is not None:
        if isinstance(num_hard_negatives, bool) or not isinstance(num_hard_negatives, int) or not 1 <= num_hard_negatives <= C - 1:
            raise ValueError(f"num_hard_negatives must be None or an int in [1, {C - 1}] (C - 1 negatives per row), got {num_hard_negatives!r}")

    # The core takes expected counts; shift log q by its max first (a per-row constant, so the loss
    # is unchanged) so exp() cannot overflow; it could underflow only for a range > ~87 nats.
    counts = torch.ones(C, dtype=torch.float64, device=query.device)
    if candidate_log_q is not None:
        lq = candidate_log_q.detach().to(torch.float64)
        lq = lq - lq.max()
        acc = torch.promote_types(query.dtype, torch.float32)
        if float(lq.min()) < math.log(torch.finfo(acc).tiny):
            raise ValueError(
                f"candidate_log_q spans {-float(lq.min()):.1f} nats, more than {acc} can represent as expected counts "
                f"(max {-math.log(torch.finfo(acc).tiny):.1f}); clip the rare candidates' log q"
            )
        counts = lq.exp()
    arange_c = torch.arange(C, device=query.device)
    inputs = query / temperature
    # The core scores every candidate against every row: sampled_logits[i, j] = s_ij. Column i of
    # row i is the positive itself (the same number as the core's true logit), so the loss is a
    # softmax cross-entropy over the columns with target i: no concatenation, one masking pass.
    parts = BF.sampled_logits_parts(
        candidates, None, arange_c[:B, None], inputs, (arange_c, counts[:B, None], counts),
        subtract_log_q=candidate_log_q is not None, remove_accidental_hits=False,
    )
    acc = torch.promote_types(query.dtype, torch.float32)
    z = parts.sampled_logits.to(acc)  # [B, C]
    rows = arange_c[:B]
    if remove_accidental_hits and candidate_ids is not None and torch.unique(candidate_ids).numel() < C:
        hits = candidate_ids[None, :] == candidate_ids[:B, None]
        hits[rows, rows] = False  # the positive itself stays
        z = z.masked_fill(hits, torch.finfo(acc).min)  # exp() of it is exactly 0: a mask, no inf
    if num_hard_negatives is None:
        per = F.cross_entropy(z, rows, reduction="none")
    else:
        pos = z.gather(1, rows[:, None])  # [B, 1]
        diag = torch.zeros(B, C, dtype=torch.bool, device=z.device)
        diag[rows, rows] = True
        neg = z.masked_fill(diag, torch.finfo(acc).min)  # the positive is not a negative
        idx = neg.detach().topk(num_hard_negatives, dim=1).indices  # masked entries only on ties at the bottom
        per = torch.logsumexp(torch.cat([pos, neg.gather(1, idx)], dim=1), dim=1) - pos[:, 0]
    return _reduce(per.to(query.dtype), reduction)


def _reduce(per: Tensor, reduction: str) -> Tensor:
    """Every row kept: the library's one reducer (fp32 sums)."""
    return reduce_loss(per, None, per.shape, reduction)


# ----------------------------------------------------------------------------- mixed negatives
def _eval_log_q(log_q: LogQ, ids: Tensor, name: str, num_items: int) -> Tensor:
    if isinstance(log_q, Tensor):
        if tuple(log_q.shape) != (num_items,):
            raise ValueError(f"{name} as a tensor must have shape [num_items={num_items}], got {tuple(log_q.shape)}")
        out = log_q.to(ids.device).index_select(0, ids)
    elif callable(log_q):
        out = log_q(ids)
    else:
        raise TypeError(f"{name} must be a [num_items] tensor or a callable ids -> log expected counts, got {type(log_q).__name__}")
    return _check_log_q(out, ids.shape[0], name)


def mixed_negatives_loss(
    query: Tensor,
    pos_item_emb: Tensor,
    pos_ids: Tensor,
    item_table: Union[Tensor, Callable[[Tensor], Tensor]],
    num_sampled: int,
    sampler: Optional[nn.Module] = None,
    *,
    batch_log_q: Optional[LogQ] = None,
    temperature: Union[float, Tensor] = 1.0,
    remove_accidental_hits: bool = True,
    num_hard_negatives: Optional[int] = None,
    sampled_values=None,
    generator: Optional[torch.Generator] = None,
    reduction: str = "mean",
) -> Tensor:
    """Mixed negative sampling loss (in-batch + corpus-sampled negatives), mixture log-Q corrected.

    Args:
        query: [B, d] query-tower outputs.
        pos_item_emb: [B, d] item-tower outputs of the positives.
        pos_ids: [B] int64 item ids of the positives, in [0, V).
        item_table: [V, d] item embeddings (rows gathered for the sampled ids) or a callable
            ``ids [S'] -> [S', d]`` (e.g. the item tower on the items' features).
        num_sampled: S' >= 1 extra candidates per step, shared by all rows.
        sampler: a :mod:`bigsoftmax.samplers` sampler over the V items; default
            ``Uniform(V, unique=False)`` (the paper's index-uniform sampling).
        batch_log_q: log of the expected number of occurrences of an item among one batch's B
            positives, ``log(B · p_data(j))``: a [V] tensor or a callable ``ids -> [n]`` (e.g.
            ``StreamingFrequencyEstimator.log_q`` updated with the positives). None: no log-Q
            correction at all (plain MNS softmax).
        sampled_values: optional TF-style override ``(sampled [S'], true_expected_count [B] or
            [B, 1], sampled_expected_count [S'])`` instead of drawing from the sampler.
        generator: torch.Generator for the draw (seeded runs repeat).
        temperature, remove_accidental_hits, num_hard_negatives, reduction: as in
            :func:`in_batch_softmax_loss`.

    The candidates are ``[pos_item_emb; item_table[sampled]]`` with ids ``[pos_ids; sampled]`` and,
    when ``batch_log_q`` is given, ``log q_j = logaddexp(batch_log_q(j), log E_s(j))`` where
    ``E_s`` is the sampler's expected count (module docstring). Returns the loss of
    :func:`in_batch_softmax_loss` on them.

    Shape:
        - query, pos_item_emb: :math:`(B, d)`; pos_ids: :math:`(B)`; item_table: :math:`(V, d)`.
        - output: scalar, or :math:`(B)` with ``reduction='none'``.

    Examples::

        >>> table = torch.randn(1000, 16)
        >>> pos = torch.randint(0, 1000, (8,))
        >>> loss = mixed_negatives_loss(torch.randn(8, 16), table[pos], pos, table, num_sampled=32,
        ...                             generator=torch.Generator().manual_seed(0))
    """
    _check_float_matrix(query, "query")
    _check_float_matrix(pos_item_emb, "pos_item_emb")
    B = query.shape[0]
    if tuple(pos_item_emb.shape) != tuple(query.shape):
        raise ValueError(f"pos_item_emb must have the shape of query {tuple(query.shape)}, got {tuple(pos_item_emb.shape)}")
    if isinstance(num_sampled, bool) or not isinstance(num_sampled, int) or num_sampled < 1:
        raise ValueError(f"num_sampled must be an int >= 1, got {num_sampled!r}")
    if isinstance(item_table, Tensor):
        _check_float_matrix(item_table, "item_table")
        if item_table.shape[1] != query.shape[1]:
            raise ValueError(f"item_table must be [num_items, d={query.shape[1]}], got {tuple(item_table.shape)}")
    elif not callable(item_table):
        raise TypeError(f"item_table must be a [num_items, d] tensor or a callable ids -> embeddings, got {type(item_table).__name__}")
    if sampler is None:
        if not isinstance(item_table, Tensor):
            raise ValueError("sampler is required when item_table is a callable (it defines the number of items)")
        from .samplers import Uniform

        sampler = Uniform(item_table.shape[0], unique=False)
    if not hasattr(sampler, "sample") or not hasattr(sampler, "range_max"):
        raise TypeError(f"sampler must be a bigsoftmax.samplers sampler (with .sample and .range_max), got {type(sampler).__name__}")
    V = int(sampler.range_max)
    if isinstance(item_table, Tensor) and item_table.shape[0] != V:
        raise ValueError(f"item_table has {item_table.shape[0]} rows but sampler.range_max={V}; they must be equal")
    pos_ids = _check_ids(pos_ids, B, "pos_ids", V).to(query.device)
    labels = pos_ids[:, None]
    if sampled_values is None:
        sampled_values = sampler.sample(labels, num_sampled, generator=generator)
    sampled, true_exp, samp_exp = BF.check_sampled_values(sampled_values, labels, num_sampled, V)
    sampled = sampled.to(query.device)
    neg = BF.gather_rows(item_table, sampled) if isinstance(item_table, Tensor) else item_table(sampled)
    if not isinstance(neg, Tensor) or tuple(neg.shape) != (num_sampled, query.shape[1]):
        raise ValueError(f"item_table(ids) must return [{num_sampled}, {query.shape[1]}], got "
                         f"{tuple(neg.shape) if isinstance(neg, Tensor) else type(neg).__name__}")
    ids = torch.cat([pos_ids, sampled])
    log_q = None
    if batch_log_q is not None:
        lb = _eval_log_q(batch_log_q, ids, "batch_log_q", V).to(device=query.device, dtype=torch.float64)
        ls = torch.log(torch.cat([true_exp.reshape(-1), samp_exp]).to(device=query.device, dtype=torch.float64))
        log_q = torch.logaddexp(lb, ls)
    candidates = torch.cat([pos_item_emb, neg.to(pos_item_emb.dtype)])
    return in_batch_softmax_loss(query, candidates, ids, log_q, temperature, remove_accidental_hits,
                                 num_hard_negatives, reduction)


# ----------------------------------------------------------------------------- modules
class _Temperature(nn.Module):
    """Holds the softmax temperature: a fixed buffer, or a learnable ``log_temperature`` parameter."""

    def __init__(self, temperature: float, learn_temperature: bool, min_temperature: float):
        super().__init__()
        _check_temperature(temperature)
        if isinstance(min_temperature, bool) or not isinstance(min_temperature, (int, float)) or not min_temperature >= 0.0:
            raise ValueError(f"min_temperature must be a float >= 0, got {min_temperature!r}")
        self.min_temperature = float(min_temperature)
        t = torch.tensor(math.log(float(temperature)))
        if learn_temperature:
            self.log_temperature = nn.Parameter(t)
        else:
            self.register_buffer("log_temperature", t)

    @property
    def temperature(self) -> Tensor:
        """Current temperature (0-dim tensor), ``exp(log_temperature)`` floored at ``min_temperature``."""
        t = self.log_temperature.exp()
        return t.clamp_min(self.min_temperature) if self.min_temperature > 0 else t


class InBatchSoftmax(_Temperature):
    """Module form of :func:`in_batch_softmax_loss`.

    Args:
        temperature: initial temperature (> 0).
        learn_temperature: learn ``log_temperature`` (so the temperature stays positive).
        min_temperature: floor applied to the learned temperature (0 disables).
        estimator: optional :class:`~bigsoftmax.samplers.StreamingFrequencyEstimator`. In training
            mode ``forward`` first records ``candidate_ids`` (all C of them: they are this step's
            candidates) at ``step``, then uses its ``log_q(candidate_ids)`` as the correction; in
            eval mode it only reads. Its state is part of this module's ``state_dict``.
        remove_accidental_hits, num_hard_negatives, reduction: as in the function.

    ``forward(query [B, d], candidates [C, d], candidate_ids [C] = None, candidate_log_q [C] = None,
    step = None) -> loss``.

    Shape:
        - query: :math:`(B, d)`; candidates: :math:`(C, d)`; output: scalar, or :math:`(B)` for ``'none'``.

    Examples::

        >>> loss_fn = InBatchSoftmax(temperature=0.05, learn_temperature=True)
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16), torch.randint(0, 100, (8,)))
    """

    def __init__(self, temperature: float = 1.0, learn_temperature: bool = False, min_temperature: float = 0.0,
                 estimator: Optional[nn.Module] = None, remove_accidental_hits: bool = True,
                 num_hard_negatives: Optional[int] = None, reduction: str = "mean"):
        super().__init__(temperature, learn_temperature, min_temperature)
        if estimator is not None and not (hasattr(estimator, "update") and hasattr(estimator, "log_q")):
            raise TypeError(f"estimator must have update(ids, step) and log_q(ids) (a StreamingFrequencyEstimator), got {type(estimator).__name__}")
        _check_num_hard_negatives(num_hard_negatives)
        self.estimator = estimator
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.num_hard_negatives = num_hard_negatives
        self.reduction = check_reduction(reduction)

    def forward(self, query: Tensor, candidates: Tensor, candidate_ids: Optional[Tensor] = None,
                candidate_log_q: Optional[Tensor] = None, step: Optional[int] = None) -> Tensor:
        if self.estimator is not None:
            if candidate_log_q is not None:
                raise ValueError("pass either candidate_log_q or an estimator, not both")
            if candidate_ids is None:
                raise ValueError("candidate_ids are required when the module has an estimator")
            if self.training:
                self.estimator.update(candidate_ids, step)
            candidate_log_q = self.estimator.log_q(candidate_ids)
        return in_batch_softmax_loss(query, candidates, candidate_ids, candidate_log_q, self.temperature,
                                     self.remove_accidental_hits, self.num_hard_negatives, self.reduction)


class MixedNegativeSoftmax(_Temperature):
    """Module form of :func:`mixed_negatives_loss`: holds the sampler, the generator and the estimator.

    Args:
        num_items: V, the corpus size.
        num_sampled: S' corpus-sampled negatives per step.
        sampler: default ``Uniform(V, unique=False)``.
        estimator: optional StreamingFrequencyEstimator of the positives' rate (its ``log_q`` is
            ``batch_log_q``); updated with ``pos_ids`` at ``step`` in training mode.
        batch_log_q: a fixed [V] tensor (or callable) instead of an estimator.
        seed: seeds ``self.generator``.

    ``forward(query [B, d], pos_item_emb [B, d], pos_ids [B], item_table, step=None,
    sampled_values=None) -> loss``.

    Shape:
        - query, pos_item_emb: :math:`(B, d)`; pos_ids: :math:`(B)`; output: scalar, or :math:`(B)`.

    Examples::

        >>> table = torch.randn(1000, 16)
        >>> mns = MixedNegativeSoftmax(1000, num_sampled=32, seed=0)
        >>> pos = torch.randint(0, 1000, (8,))
        >>> loss = mns(torch.randn(8, 16), table[pos], pos, table)
    """

    def __init__(self, num_items: int, num_sampled: int, sampler: Optional[nn.Module] = None,
                 estimator: Optional[nn.Module] = None, batch_log_q: Optional[LogQ] = None,
                 temperature: float = 1.0, learn_temperature: bool = False, min_temperature: float = 0.0,
                 remove_accidental_hits: bool = True, num_hard_negatives: Optional[int] = None,
                 reduction: str = "mean", seed: Optional[int] = None):
        super().__init__(temperature, learn_temperature, min_temperature)
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
            raise ValueError(f"num_items must be an int >= 1, got {num_items!r}")
        if isinstance(num_sampled, bool) or not isinstance(num_sampled, int) or num_sampled < 1:
            raise ValueError(f"num_sampled must be an int >= 1, got {num_sampled!r}")
        if estimator is not None and batch_log_q is not None:
            raise ValueError("pass either estimator or batch_log_q, not both")
        if sampler is None:
            from .samplers import Uniform

            sampler = Uniform(num_items, unique=False)
        if getattr(sampler, "range_max", None) != num_items:
            raise ValueError(f"sampler.range_max={getattr(sampler, 'range_max', None)} must equal num_items={num_items}")
        self.num_items = num_items
        self.num_sampled = num_sampled
        self.sampler = sampler
        self.estimator = estimator
        if isinstance(batch_log_q, Tensor):
            self.register_buffer("batch_log_q", _check_log_q(batch_log_q, num_items, "batch_log_q").detach().clone())
        else:
            self.batch_log_q = batch_log_q
        _check_num_hard_negatives(num_hard_negatives)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.num_hard_negatives = num_hard_negatives
        self.reduction = check_reduction(reduction)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))

    def forward(self, query: Tensor, pos_item_emb: Tensor, pos_ids: Tensor, item_table, step: Optional[int] = None,
                sampled_values=None) -> Tensor:
        blq = self.batch_log_q
        if self.estimator is not None:
            if self.training:
                self.estimator.update(_check_ids(pos_ids, None, "pos_ids", self.num_items), step)
            blq = self.estimator.log_q
        return mixed_negatives_loss(query, pos_item_emb, pos_ids, item_table, self.num_sampled, self.sampler,
                                    batch_log_q=blq, temperature=self.temperature,
                                    remove_accidental_hits=self.remove_accidental_hits,
                                    num_hard_negatives=self.num_hard_negatives, sampled_values=sampled_values,
                                    generator=self.generator, reduction=self.reduction)

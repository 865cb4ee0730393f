"""Sampled softmax head (Jean et al. 2015; TF's ``sampled_softmax_loss``) behind the Head protocol.

Context-dependent proposals: a head whose sampler has ``context_dependent = True`` (e.g.
:class:`bigsoftmax.samplers.Bigram`) takes ``forward(hidden, target, context=prev)`` — ``prev`` the
previous token of every target, same shape as ``target`` — and scores one candidate set per
example. Heads with context-free samplers keep the two-argument protocol.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..ops import sampled as ops
from ._candidates import CandidateMixin, build_sampler, draw_candidates, seeded_generator
from ._init import init_class_rows, tie_class_rows
from .base import Head, LinearEvalMixin, check_target, masked_reduce, reduce_loss
from .._validate import assert_ids_in_range, check_choice, check_int, device_checks, sync_free
from .._validate import check_per_row_values as _check_per_row
from .rows import ClassRowsMixin

__all__ = ["SampledSoftmax", "SamplingHead", "draw_candidates"]


class SamplingHead(ClassRowsMixin, CandidateMixin, LinearEvalMixin, Head):
    """Common state of the heads trained on sampled candidates (sampled softmax, NCE, …).

    Parameters: ``weight [V, d]`` (row c is class c's output embedding: the ``nn.Embedding`` /
    ``nn.Linear`` layout) and ``bias [V]``. A sampler (any :mod:`bigsoftmax.samplers` class; default
    ``LogUniform(V, unique=True)``, which assumes frequency-sorted ids) proposes ``num_sampled``
    candidates per step; draws use ``self.generator`` (seeded with ``seed``), so seeded runs repeat.

    Training (``head.train()``): ``forward`` returns the sampled objective. Evaluation
    (``head.eval()``): ``forward`` returns the exact full-softmax negative log-likelihood, so the same
    training-loop code reports exact perplexity. ``log_prob``/``target_log_prob``/``topk`` are always
    exact over all V classes (chunked; never [N, V] for the latter two).

    ``sparse=True``: weight and bias gradients are sparse COO tensors touching only the candidate
    rows — train them with ``torch.optim.SparseAdam``, ``SGD`` or ``Adagrad`` (see
    :func:`bigsoftmax.optim.make_optimizer`). ``weight=`` ties the output embedding to an existing
    ``[V, d]`` parameter (e.g. the input embedding of a language model).

    ``num_true > 1``: ``target`` has shape ``[..., num_true]`` and every row's true classes share
    the target mass 1/num_true (TF semantics); a row is ignored when its first label is
    ``ignore_index``.

    Args:
        in_features: d. num_classes: V. num_sampled: S candidates per step (per example with a
            context-dependent sampler).
        sampler: a :mod:`bigsoftmax.samplers` sampler over V classes.
        num_true: true classes per example.
        remove_accidental_hits: mask candidates equal to a true class of their row.
        bias: learn a ``[V]`` bias. sparse: sparse COO gradients for weight/bias.
        ignore_index, reduction: as ``nn.CrossEntropyLoss``.
        seed: seed of ``self.generator``. weight: an existing ``[V, d]`` parameter to tie.
        gather: how per-example candidates are scored — ``"unique"`` (the batch's distinct rows, one
            GEMM and an index map) or ``"rows"`` (``[N, S, d]`` gathered rows); see
            :mod:`bigsoftmax.ops.sampled`.

    Shape:
        - hidden: ``(*, d)``; target: ``(*)`` (or ``(*, num_true)``); context: ``(*)``.
        - output: scalar, or ``(*)`` with ``reduction='none'``.

    Examples::

        >>> head = SampledSoftmax(16, 1000, num_sampled=64, seed=0)   # a SamplingHead subclass
        >>> ids, true_exp, samp_exp = head.draw(torch.tensor([[3], [7]]))
        >>> ids.shape
        torch.Size([64])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_sampled: int,
        sampler: Optional[nn.Module] = None,
        num_true: int = 1,
        remove_accidental_hits: bool = True,
        bias: bool = True,
        sparse: bool = False,
        ignore_index: int = -100,
        reduction: str = "mean",
        seed: Optional[int] = None,
        weight: Optional[nn.Parameter] = None,
        gather: str = "unique",
    ):
        super().__init__(in_features, num_classes, ignore_index, reduction)
        self.gather = check_choice("gather", gather, ops.GATHER_MODES)
        check_int("num_sampled", num_sampled, 1)
        check_int("num_true", num_true, 1)
        from .. import samplers as S

        sampler = build_sampler(sampler, num_classes, num_sampled, lambda v: S.LogUniform(v, unique=True))
        self.num_sampled = num_sampled
        self.num_true = num_true
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.sparse = bool(sparse)
        self.sampler = sampler
        if weight is not None:
            weight = tie_class_rows(weight, num_classes, in_features, plain_tensor="keep")
        else:
            weight = nn.Parameter(torch.empty(self._num_rows(), in_features))
            init_class_rows(weight)  # the default scheme: N(0, 1/d)
        self._init_rows(weight, nn.Parameter(torch.zeros(weight.shape[0])) if bias else None, self.sparse)
        self.generator = seeded_generator(seed)

    def _num_rows(self) -> int:
        """Class rows this head allocates (all ``num_classes``; a vocab-parallel subclass: its block)."""
        return self.num_classes

    # ----------------------------------------------------------------- protocol plumbing
    def eval_weight(self) -> Tensor:
        return self.weight

    def eval_bias(self) -> Optional[Tensor]:
        return self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, num_sampled={self.num_sampled}, "
                f"num_true={self.num_true}, remove_accidental_hits={self.remove_accidental_hits}, sparse={self.sparse}")

    def sparse_parameters(self):
        """Parameters that receive sparse gradients (for :mod:`bigsoftmax.optim`)."""
        if not self.sparse:
            return []
        return [p for p in (self.weight, self.bias) if p is not None]

    def _flat_pair(self, hidden: Tensor, target: Tensor):
        if self.num_true == 1:
            return super()._flat_pair(hidden, target)
        h = self._flat_hidden(hidden)
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor of int64 class ids, got {type(target).__name__}")
        if tuple(target.shape) != (*hidden.shape[:-1], self.num_true):
            raise ValueError(f"target must have shape [..., num_true={self.num_true}] matching hidden's leading shape "
                             f"{tuple(hidden.shape[:-1])}, got {tuple(target.shape)}")
        y = target.reshape(-1, self.num_true)
        check_target(y[y[:, 0] != self.ignore_index], self.num_classes, None)
        return h, y.long()

    @property
    def uses_context(self) -> bool:
        """True when the sampler is context-dependent: ``forward`` then needs ``context=``."""
        return bool(getattr(self.sampler, "context_dependent", False))

    def forward(self, hidden: Tensor, target: Tensor, sampled_values=None, context: Optional[Tensor] = None) -> Tensor:
        """Sampled objective in training mode, exact NLL in eval mode.

        Args:
            hidden: ``[..., d]``. target: ``[...]`` int64 (``[..., num_true]`` when ``num_true > 1``).
            sampled_values: optional TF-style ``(sampled_candidates, true_expected_count,
                sampled_expected_count)`` overriding the sampler; candidates ``[S]`` (shared) or
                ``[N, S]`` per example (N = the number of target rows, ignored ones included).
            context: int64 ``[...]`` (the target's leading shape), the previous token of every
                target; required by a context-dependent sampler (:attr:`uses_context`), refused
                otherwise. Ignored in eval mode (the exact NLL needs no proposal).
        """
        ops.check_not_meta(hidden=hidden, target=target, context=context, weight=self.weight)
        if not self.training and sampled_values is None:
            if self.num_true != 1:
                raise ValueError("exact evaluation through forward() needs num_true=1; use target_log_prob per true class")
            return super().forward(hidden, target)
        h, y = self._flat_pair(hidden, target)
        shape = target.shape if self.num_true == 1 else target.shape[:-1]
        ctx = self._flat_context(context, shape, sampled_values is None)
        first = y if y.dim() == 1 else y[:, 0]
        keep = first != self.ignore_index
        if sampled_values is not None:
            sampled_values = _check_per_row(sampled_values, keep.shape[0])
        if sync_free(h):
            # no host sync (accelerators, torch.compile): every row is scored (ignored ones on class 0,
            # context 0), masked after; costs the ignored rows' share of the step instead of a read of keep
            y = torch.where(keep.reshape(-1, *([1] * (y.dim() - 1))), y, torch.zeros_like(y))
            if ctx is not None:
                ctx = torch.where(keep, ctx, torch.zeros_like(ctx))
                if torch.compiler.is_compiling():
                    if device_checks():
                        assert_ids_in_range(ctx, 0, self.num_classes, "context")
                else:
                    check_target(ctx, self.num_classes, None, name="context")
            y = y.reshape(-1, self.num_true)
            if sampled_values is None:  # the draw sees the kept rows: a learned sampler counts only those
                sampled_values = self.draw(y, ctx, row_keep=keep)
            per = self._sampled_loss(h, y, sampled_values, ctx)
            return masked_reduce(per, keep, shape, self.reduction)
        if not bool(keep.all()):
            h, y = h[keep], y[keep]
            ctx = ctx[keep] if ctx is not None else None
            if sampled_values is not None:
                sampled_values = tuple(t[keep] if i == 1 or t.dim() == 2 else t for i, t in enumerate(sampled_values))
        if ctx is not None:
            check_target(ctx, self.num_classes, None, name="context")
        per = self._sampled_loss(h, y.reshape(-1, self.num_true), sampled_values, ctx)
        return reduce_loss(per, keep, shape, self.reduction)

    def _flat_context(self, context, shape, drawing: bool) -> Optional[Tensor]:
        """``context`` flattened to [N] after checking it against the target's leading shape."""
        if context is None:
            if drawing and self.uses_context:
                raise ValueError(f"context is required: the {type(self.sampler).__name__} sampler draws candidates for the "
                                 f"previous token of each target; pass context= with the target's shape {tuple(shape)}")
            return None
        if not self.uses_context:
            raise ValueError(f"context= is only used by a context-dependent sampler (e.g. samplers.Bigram); this head's "
                             f"sampler is {type(self.sampler).__name__}")
        if not isinstance(context, Tensor):
            raise TypeError(f"context must be a torch.Tensor of int64 token ids, got {type(context).__name__}")
        if tuple(context.shape) != tuple(shape):
            raise ValueError(f"context must have the target's shape {tuple(shape)} (one previous token per target), "
                             f"got {tuple(context.shape)}")
        check_target(context[:0], self.num_classes, None, name="context")  # dtype only; range after dropping ignored rows
        return context.reshape(-1).long()

    def _sampled_loss(self, h: Tensor, y: Tensor, sampled_values, context=None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _checked_values(self, h: Tensor, y: Tensor, sampled_values, context):
        """The step's candidates: ``sampled_values`` as given, else the sampler's draw; validated."""
        if sampled_values is None:
            sampled_values = self.draw(y, context)
        return ops.check_sampled_values(sampled_values, y, self.num_sampled, self.num_classes)

    def _parts(self, h, y, sampled_values, subtract_log_q=True, row_transform=None):
        """The shared sampled-logits core on this head's parameters (sparse gradients when ``sparse``)."""
        return ops.sampled_logits_parts(self.weight, self.bias, y, h, sampled_values, subtract_log_q=subtract_log_q,
                                        remove_accidental_hits=self.remove_accidental_hits, row_transform=row_transform,
                                        sparse=self.sparse, gather=self.gather)

    def _loss(self, h, y):  # exact NLL for the eval-mode forward
        return -self._target_log_prob(h, y)


class SampledSoftmax(SamplingHead):
    """Sampled softmax head: ``tf.nn.sampled_softmax_loss`` as an output layer.

    hidden [..., d], target [...] (int64) -> loss. With S candidates c_1..c_S drawn from Q and
    expected counts E(c):

        z_c  = h · w_c + b_c − log E(c)
        loss = logsumexp(z_y, z_{c_1}, …, z_{c_S}) − z_y      (accidental hits c_s = y masked out)

    which is an estimate of the full softmax cross-entropy; with the ``All`` sampler it is exactly
    the full cross-entropy. With a context-dependent sampler (``samplers.Bigram``) the candidates
    ``c_{b,1..S}`` and counts ``E(c | prev_b)`` are drawn per example: pass ``context=``. fp32/fp64
    take a fused kernel (see :func:`bigsoftmax.functional.fused_sampled_softmax`); half precision and
    autocast take the general autograd path (log-softmax in fp32).

    Args:
        as :class:`SamplingHead` (``in_features``, ``num_classes``, ``num_sampled``, ``sampler``,
        ``num_true``, ``remove_accidental_hits``, ``bias``, ``sparse``, ``ignore_index``,
        ``reduction``, ``seed``, ``weight``, ``gather``).

    Shape:
        - hidden: ``(*, d)``; target: ``(*)`` (or ``(*, num_true)``); context: ``(*)``.
        - output: scalar, or ``(*)`` with ``reduction='none'``.

    Examples::

        >>> head = SampledSoftmax(16, 1000, num_sampled=64, seed=0)
        >>> loss = head(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
        >>> tokens = torch.randint(0, 1000, (5000,))
        >>> bh = SampledSoftmax(16, 1000, 64, sampler=bigsoftmax.samplers.Bigram(1000, tokens), seed=0)
        >>> loss = bh(torch.randn(8, 16), tokens[1:9], context=tokens[:8])
    """

    def _sampled_loss(self, h: Tensor, y: Tensor, sampled_values, context=None) -> Tensor:
        drawn = sampled_values is None
        sampled, true_exp, samp_exp = self._checked_values(h, y, sampled_values, context)
        if ops.fused_ok(self.weight, self.bias, h):
            # a Mixed sampler's own draw: its first P columns are one shared set (one GEMM for them)
            shared = self.sampler.shared_columns(self.num_sampled) if drawn and hasattr(self.sampler, "shared_columns") else 0
            return ops.fused_sampled_softmax(h, self.weight, self.bias, y, sampled, true_exp, samp_exp,
                                             remove_accidental_hits=self.remove_accidental_hits, sparse=self.sparse,
                                             gather=self.gather, shared_columns=shared)
        parts = self._parts(h, y, (sampled, true_exp, samp_exp), subtract_log_q=True)
        return ops.softmax_ce(parts).to(h.dtype)

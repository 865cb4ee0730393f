"""Sampled softmax head (Jean et al. 2015; TF's ``sampled_softmax_loss``) behind the Head protocol."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as BF
from .base import Head, LinearEvalMixin, check_target

__all__ = ["SampledSoftmax", "SamplingHead", "draw_candidates"]


class SamplingHead(LinearEvalMixin, Head):
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
    ):
        super().__init__(in_features, num_classes, ignore_index, reduction)
        if not isinstance(num_sampled, int) or isinstance(num_sampled, bool) or num_sampled < 1:
            raise ValueError(f"num_sampled must be an int >= 1, got {num_sampled!r}")
        if not isinstance(num_true, int) or isinstance(num_true, bool) or num_true < 1:
            raise ValueError(f"num_true must be an int >= 1, got {num_true!r}")
        from .. import samplers as S

        if sampler is None:
            sampler = S.LogUniform(num_classes, unique=True)
        if not hasattr(sampler, "sample") or not hasattr(sampler, "range_max"):
            raise TypeError(f"sampler must be a bigsoftmax.samplers sampler (with .sample and .range_max), got {type(sampler).__name__}")
        if sampler.range_max != num_classes:
            raise ValueError(f"sampler.range_max={sampler.range_max} must equal num_classes={num_classes}")
        if getattr(sampler, "unique", False) and num_sampled > _support_size(sampler):
            raise ValueError(
                f"num_sampled={num_sampled} exceeds the {_support_size(sampler)} classes the unique sampler can draw; "
                f"use num_sampled in [1, {_support_size(sampler)}] or a sampler with unique=False"
            )
        self.num_sampled = num_sampled
        self.num_true = num_true
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.sparse = bool(sparse)
        self.sampler = sampler
        if weight is not None:
            if tuple(weight.shape) != (num_classes, in_features):
                raise ValueError(f"weight must have shape [num_classes={num_classes}, in_features={in_features}], got {tuple(weight.shape)}")
            self.weight = weight
        else:
            self.weight = nn.Parameter(torch.empty(num_classes, in_features))
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))

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

    def forward(self, hidden: Tensor, target: Tensor, sampled_values=None) -> Tensor:
        """Sampled objective in training mode, exact NLL in eval mode; [..., d], [...] -> loss.

        ``sampled_values`` (optional) overrides the sampler with TF-style
        ``(sampled_candidates [S], true_expected_count [N, num_true], sampled_expected_count [S])``.
        """
        if not self.training and sampled_values is None:
            if self.num_true != 1:
                raise ValueError("exact evaluation through forward() needs num_true=1; use target_log_prob per true class")
            return super().forward(hidden, target)
        h, y = self._flat_pair(hidden, target)
        first = y if y.dim() == 1 else y[:, 0]
        keep = first != self.ignore_index
        if not bool(keep.all()):
            h, y = h[keep], y[keep]
            if sampled_values is not None:
                sampled_values = (sampled_values[0], sampled_values[1][keep], sampled_values[2])
        per = self._sampled_loss(h, y.reshape(-1, self.num_true), sampled_values)
        shape = target.shape if self.num_true == 1 else target.shape[:-1]
        from .base import reduce_loss

        return reduce_loss(per, keep, shape, self.reduction)

    def draw(self, labels: Tensor):
        """Draw ``num_sampled`` candidates for labels [N, num_true] (see :func:`draw_candidates`)."""
        return draw_candidates(self.sampler, labels, self.num_sampled, self.generator, update=self.training)

    def _sampled_loss(self, h: Tensor, y: Tensor, sampled_values) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _parts(self, h, y, sampled_values, subtract_log_q=True, row_transform=None):
        """The shared sampled-logits core on this head's parameters (sparse gradients when ``sparse``)."""
        return BF.sampled_logits_parts(self.weight, self.bias, y, h, sampled_values, subtract_log_q=subtract_log_q,
                                       remove_accidental_hits=self.remove_accidental_hits, row_transform=row_transform,
                                       sparse=self.sparse)

    def _loss(self, h, y):  # exact NLL for the eval-mode forward
        return -self._target_log_prob(h, y)


def draw_candidates(sampler, labels: Tensor, num_sampled: int, generator: torch.Generator, update: bool = True):
    """Draw ``num_sampled`` candidates for labels [N, num_true]; then, as TF does, let a learned
    sampler count this batch's labels (so they shape the next draws, not this one)."""
    out = sampler.sample(labels, num_sampled, generator=generator)
    if update and hasattr(sampler, "update"):
        sampler.update(labels)
    return out


def _support_size(sampler) -> int:
    """Number of classes a sampler can draw (ids with nonzero probability)."""
    return int(getattr(sampler, "num_valid", sampler.range_max))


class SampledSoftmax(SamplingHead):
    """Sampled softmax head: ``tf.nn.sampled_softmax_loss`` as an output layer.

    hidden [..., d], target [...] (int64) -> loss. With S candidates c_1..c_S drawn from Q and
    expected counts E(c):

        z_c  = h · w_c + b_c − log E(c)
        loss = logsumexp(z_y, z_{c_1}, …, z_{c_S}) − z_y      (accidental hits c_s = y masked out)

    which is an estimate of the full softmax cross-entropy; with the ``All`` sampler it is exactly
    the full cross-entropy. fp32/fp64 take a fused kernel (see
    :func:`bigsoftmax.functional.fused_sampled_softmax`); half precision and autocast take the
    general autograd path (log-softmax in fp32).
    """

    def _sampled_loss(self, h: Tensor, y: Tensor, sampled_values) -> Tensor:
        if sampled_values is None:
            sampled_values = self.draw(y)
        sampled, true_exp, samp_exp = BF._check_sampled_values(sampled_values, y, self.num_sampled, self.num_classes)
        if BF._fused_ok(self.weight, self.bias, h):
            return BF.fused_sampled_softmax(h, self.weight, self.bias, y, sampled, true_exp, samp_exp,
                                            remove_accidental_hits=self.remove_accidental_hits, sparse=self.sparse)
        parts = self._parts(h, y, (sampled, true_exp, samp_exp), subtract_log_q=True)
        return BF._softmax_ce(parts).to(h.dtype)

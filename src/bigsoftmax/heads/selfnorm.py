"""Self-normalised softmax (Devlin et al. 2014, "Fast and robust neural network joint models").

A full softmax ``p(y | h) = exp(z_y) / Z(h)`` with ``z = h @ W.T + b`` and ``Z(h) = sum_c exp(z_c)``,
trained with a penalty that pushes the log-normaliser towards zero::

    loss(h, y) = CE + alpha * (log Z)^2 = (log Z - z_y) + alpha * (log Z)^2

so that at test time the raw logit ``z_y`` is (approximately) the log-probability: scoring one
(h, y) pair costs O(d) instead of O(V d). The bias starts at ``log(1 / V)``, which makes
``log Z ~ 0`` at initialisation. Exact evaluation (``log_prob``, ``target_log_prob``, ``topk``) is
the full softmax over the head's own parameters (:class:`~bigsoftmax.heads.base.LinearEvalMixin`),
so perplexities stay comparable with every other head; :meth:`SelfNormalizedSoftmax.self_normalization_report`
measures how close ``log Z`` actually gets to 0 on given data.

Training cost: log Z over all V classes is computed in class chunks by the fused
:func:`bigsoftmax.ops.lse.linear_logsumexp` (exact value and gradient of both ``log Z`` and
``z_y``, recomputing the chunk scores in the backward), so peak extra memory is O(N * chunk), never
O(N * V), and the penalty costs nothing beyond the cross-entropy's own normaliser:
``d loss / d z_c = (1 + 2 alpha log Z) softmax(z)_c - [c = y]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .._validate import check_chunk_size, check_reduction, check_target, sync_free
from ..ops.lse import linear_logsumexp
from ..ops.reduce import reduce_loss
from ._init import init_class_rows, tie_class_rows
from .base import Head, LinearEvalMixin, masked_reduce
from .._validate import check_alpha as _check_alpha

__all__ = [
    "SelfNormalizedSoftmax",
    "self_normalized_softmax_loss",
    "SelfNormalizationReport",
]


def self_normalized_softmax_loss(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    target: Tensor,
    alpha: float = 0.1,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: Optional[int] = None,
) -> Tensor:
    """``(log Z - z_y) + alpha * (log Z)^2`` of ``z = input @ weight.T + bias``, exact, chunked.

    input [..., d], weight [V, d], bias [V] or None, target [...] int64 (``ignore_index`` rows give
    no loss). Returns a scalar (``'mean'`` over kept rows / ``'sum'``) or ``[...]`` (``'none'``),
    fp32 (fp64 for fp64 inputs). Peak extra memory O(N * chunk_size).
    """
    alpha = _check_alpha(alpha)
    check_reduction(reduction)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a [V, d] tensor")
    V, d = weight.shape
    if not isinstance(input, Tensor) or not input.dtype.is_floating_point or input.dim() < 1 or input.shape[-1] != d:
        raise ValueError(f"input must be a floating-point tensor of shape [..., d={d}]")
    if not isinstance(target, Tensor) or tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(f"target must be a tensor of shape {tuple(input.shape[:-1])} (input's leading shape)")
    check_target(target, V, ignore_index)
    h = input.reshape(-1, d)
    y = target.reshape(-1).long()
    keep = y != ignore_index
    if sync_free(h):
        # no host read of `keep` (accelerators, compile): every row scored (ignored ones on class 0), masked
        ys = torch.where(keep, y, torch.zeros_like(y))
        lse, zy = linear_logsumexp(h, weight, bias, ys, recompute=True, chunk_size=check_chunk_size(chunk_size))
        return masked_reduce((lse - zy) + alpha * lse.square(), keep, target.shape, reduction)
    if not bool(keep.all()):
        h, y = h[keep], y[keep]
    lse, zy = linear_logsumexp(h, weight, bias, y, recompute=True, chunk_size=check_chunk_size(chunk_size))
    per = (lse - zy) + alpha * lse.square()
    return reduce_loss(per, keep, target.shape, reduction)


class SelfNormalizationReport(NamedTuple):
    """How close ``log Z(h)`` is to 0 on some data (all floats; ``count`` rows)."""

    mean: float
    std: float
    mean_abs: float
    max_abs: float
    count: int


class SelfNormalizedSoftmax(LinearEvalMixin, Head):
    """Self-normalised softmax head: full softmax + ``alpha * (log Z)^2`` (Devlin et al. 2014).

    Args:
        in_features: d. num_classes: V.
        alpha: penalty weight (>= 0; 0 is plain softmax cross-entropy). Devlin et al. use 0.1.
        bias: learn a per-class bias ``[V]`` (initialised to ``log(1 / V)``).
        ignore_index, reduction: as ``nn.CrossEntropyLoss`` (the penalty is averaged with the CE).
        weight: tie the output embedding to an existing ``[V, d]`` Parameter (e.g. the input
            embedding); otherwise a new one, uniform(+-1/sqrt(d)) drawn with ``generator``.
        chunk_size: classes per chunk of the training log Z (default: automatic, ~8 MiB of scores).

    Methods beyond the protocol: :meth:`unnormalized_log_prob` (the fast O(d) score),
    :meth:`log_normalizer` (exact log Z), :meth:`self_normalization_report`. Training mode returns
    ``CE + α (log Z)²``; eval mode the exact NLL ``log Z − z_y`` (the penalty is a training device).

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`.
        - output: scalar, or :math:`(*)` for ``reduction='none'``.

    Examples::

        >>> head = SelfNormalizedSoftmax(64, 10_000, alpha=0.1)
        >>> loss = head(torch.randn(8, 64), torch.randint(0, 10_000, (8,)))
        >>> head.log_normalizer(torch.randn(8, 64)).shape
        torch.Size([8])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        alpha: float = 0.1,
        bias: bool = True,
        ignore_index: int = -100,
        reduction: str = "mean",
        weight: Optional[nn.Parameter] = None,
        chunk_size: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, num_classes, ignore_index, reduction)
        self.alpha = _check_alpha(alpha)
        self.chunk_size = check_chunk_size(chunk_size)
        if weight is not None:
            self.weight = tie_class_rows(weight, num_classes, in_features)
            self._tied = True
        else:
            self.weight = nn.Parameter(torch.empty(num_classes, in_features, device=device, dtype=dtype))
            self._tied = False
        pdt = dtype if dtype is not None else self.weight.dtype
        self.bias = nn.Parameter(torch.empty(num_classes, device=self.weight.device, dtype=pdt)) if bias else None
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """weight ~ uniform(+-1/sqrt(d)) (left alone when tied); bias = log(1/V) so log Z starts near 0."""
        init_class_rows(None if self._tied else self.weight, self.bias, "uniform", bias_value=-math.log(self.num_classes),
                        generator=generator)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, alpha={self.alpha}, "
            f"bias={self.bias is not None}, tied={self._tied}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}"
        )

    # LinearEvalMixin: the exact distribution is softmax(h @ W.T + b)
    def eval_weight(self) -> Tensor:
        return self.weight

    def eval_bias(self) -> Optional[Tensor]:
        return self.bias

    def _loss(self, h: Tensor, y: Tensor) -> Tensor:
        """Training objective ``(log Z − z_y) + α (log Z)²`` [N] (eval mode: the exact NLL instead)."""
        lse, zy = linear_logsumexp(h, self.weight, self.bias, y, recompute=True, chunk_size=self.chunk_size)
        return (lse - zy) + self.alpha * lse.square()

    # ------------------------------------------------------------------ self-normalised scoring
    def unnormalized_log_prob(self, hidden: Tensor, target: Optional[Tensor] = None) -> Tensor:
        """Raw logits ``z = h @ W.T + b``, the self-normalised estimate of ``log p``.

        With ``target [...]``: ``z_y`` of shape ``[...]`` in O(d) per row (ignored positions give 0).
        Without: all ``[..., V]`` logits. Exact relation: ``z_y = log p(y | h) + log Z(h)``.
        """
        if target is None:
            h = self._flat_hidden(hidden)
            z = self._eval_logits(h, 0, self.num_classes)
            return z.reshape(*hidden.shape[:-1], self.num_classes)
        h, y = self._flat_pair(hidden, target)
        keep = y != self.ignore_index
        ys = torch.where(keep, y, torch.zeros_like(y))
        acc = torch.promote_types(h.dtype, torch.float32)
        z = torch.einsum("nd,nd->n", h.to(acc), self.weight.index_select(0, ys).to(acc))
        if self.bias is not None:
            z = z + self.bias.index_select(0, ys).to(acc)
        return torch.where(keep, z, torch.zeros_like(z)).reshape(target.shape)

    @torch.no_grad()
    def self_normalization_report(self, hidden: Tensor, batch_size: int = 4096) -> SelfNormalizationReport:
        """Mean, std, mean |.| and max |.| of ``log Z(h)`` over the rows of ``hidden [..., d]``.

        A well self-normalised model has all of them near 0; then ``exp(z_y)`` is a usable
        probability without the O(V) normaliser. Processes ``batch_size`` rows at a time.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        h = self._flat_hidden(hidden)
        if h.shape[0] == 0:
            raise ValueError("hidden holds no rows to report on")
        lz = torch.cat([self._log_normalizer(h[i : i + batch_size]) for i in range(0, h.shape[0], batch_size)])
        lz = lz.double()
        std = float(lz.std(unbiased=False)) if lz.numel() > 1 else 0.0
        return SelfNormalizationReport(
            mean=float(lz.mean()), std=std, mean_abs=float(lz.abs().mean()), max_abs=float(lz.abs().max()),
            count=int(lz.numel()),
        )

"""Exact full-softmax output layer: ``nn.Linear`` + ``F.cross_entropy`` without the [N, V] logits."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .._validate import check_chunk_size, check_class_weight, check_ignore_index, check_label_smoothing
from ..ops.lse import linear_cross_entropy
from ._init import init_class_rows, tie_class_rows
from .base import Head, LinearEvalMixin

__all__ = ["FullSoftmax"]


class FullSoftmax(LinearEvalMixin, Head):
    """The exact softmax cross-entropy head over all ``num_classes`` classes.

    hidden ``[..., d]``, target ``[...]`` (int64) -> loss, with ``logits = hidden @ weight.T + bias``::

        loss = F.cross_entropy(logits, target, weight=class_weight, ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing)

    computed by :func:`bigsoftmax.functional.linear_cross_entropy` in vocabulary slices of
    ``chunk_size`` classes: same numbers and gradients, peak extra memory O(N · chunk_size) instead
    of the [N, V] logits and their gradient. Exact evaluation (``log_prob``, ``target_log_prob``,
    ``topk``) comes from :class:`LinearEvalMixin` (chunked as well, except ``log_prob`` which
    returns the [N, V] matrix by definition).

    Parameters: ``weight [V, d]`` (``nn.Linear`` layout) and ``bias [V]`` (``bias=False`` drops it).
    ``weight=`` ties the head to an existing ``nn.Parameter`` of shape [V, d] — typically the input
    embedding of a language model — instead of creating one. ``class_weight`` ([V], a buffer) is
    F.cross_entropy's per-class rescaling weight. :meth:`from_linear` wraps an existing
    ``nn.Linear(d, V)``, sharing (not copying) its parameters. In eval mode ``forward`` is the exact
    NLL (no label smoothing, no class weights), like every head.

    Args:
        in_features: d. num_classes: V (>= 2).
        bias: learn a per-class bias.
        ignore_index: target value that contributes neither loss nor gradient.
        reduction: ``'mean'`` (over kept rows, or their class weights), ``'sum'`` or ``'none'``.
        label_smoothing: ε in [0, 1] (training mode only).
        class_weight: optional ``[V]`` per-class weights, finite and >= 0 (training mode only).
        weight: an ``nn.Parameter [V, d]`` to tie to instead of creating one.
        chunk_size: classes per vocabulary slice (default automatic).

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`.
        - output: scalar, or :math:`(*)` for ``reduction='none'``.

    Examples::

        >>> head = FullSoftmax(64, 10_000, label_smoothing=0.1)
        >>> loss = head(torch.randn(8, 64), torch.randint(0, 10_000, (8,)))
        >>> nll = head.eval()(torch.randn(8, 64), torch.randint(0, 10_000, (8,)))  # exact NLL
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = True,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        class_weight: Optional[Tensor] = None,
        weight: Optional[nn.Parameter] = None,
        chunk_size: Optional[int] = None,
    ):
        super().__init__(in_features, num_classes, ignore_index, reduction)
        check_ignore_index(ignore_index)
        label_smoothing = check_label_smoothing(label_smoothing)
        check_chunk_size(chunk_size)
        self.label_smoothing = float(label_smoothing)
        self.chunk_size = chunk_size

        if weight is not None:
            self.weight = tie_class_rows(weight, num_classes, in_features)
        else:
            self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        if bias:
            self.bias = nn.Parameter(torch.empty(num_classes, dtype=self.weight.dtype, device=self.weight.device))
        else:
            self.register_parameter("bias", None)

        if class_weight is not None:
            class_weight = check_class_weight(class_weight, num_classes, "class_weight", "num_classes").detach().clone()
        self.register_buffer("class_weight", class_weight)
        self.reset_parameters(reset_weight=weight is None)

    def reset_parameters(self, reset_weight: bool = True) -> None:
        """``nn.Linear``'s initialisation: U(−1/√d, 1/√d) for weight (unless tied) and bias."""
        init_class_rows(self.weight if reset_weight else None, self.bias, "linear", fan_in=self.in_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "FullSoftmax":
        """A head over an existing ``nn.Linear(d, V)``, sharing its weight and bias Parameters."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        head = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, weight=linear.weight, **kwargs)
        if linear.bias is not None:
            head.bias = linear.bias
        return head

    # ----------------------------------------------------------------- protocol plumbing
    def eval_weight(self) -> Tensor:
        return self.weight

    def eval_bias(self) -> Optional[Tensor]:
        return self.bias

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, num_classes={self.num_classes}, bias={self.bias is not None}"
        if self.label_smoothing:
            s += f", label_smoothing={self.label_smoothing}"
        if self.class_weight is not None:
            s += ", class_weight=[...]"
        return s + f", reduction={self.reduction!r}"

    # ----------------------------------------------------------------- training
    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy: hidden [..., d], target [...] -> scalar (or [...] for reduction='none').

        Training mode: with the head's label smoothing and class weights. Eval mode: the exact NLL
        ``−target_log_prob`` (no smoothing, no class weights), reduced the same way.
        """
        h, y = self._flat_pair(hidden, target)
        eps, cw = (self.label_smoothing, self.class_weight) if self.training else (0.0, None)
        loss = linear_cross_entropy(
            h, self.weight, self.bias, y,
            weight_class=cw, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=eps, chunk_size=self.chunk_size,
        )
        return loss.reshape(target.shape) if self.reduction == "none" else loss

    def _loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-example training loss [N] of kept rows, class weights and label smoothing included."""
        return linear_cross_entropy(
            hidden, self.weight, self.bias, target,
            weight_class=self.class_weight, ignore_index=self.ignore_index, reduction="none",
            label_smoothing=self.label_smoothing, chunk_size=self.chunk_size,
        )

    # ----------------------------------------------------------------- exact evaluation
    def _target_log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        """log p(y | h) = −CE without smoothing or class weights; differentiable with the chunked backward."""
        return -linear_cross_entropy(h, self.weight, self.bias, y, ignore_index=self.ignore_index, reduction="none",
                                     chunk_size=self.chunk_size)

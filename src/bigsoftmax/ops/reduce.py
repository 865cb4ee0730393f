"""The one reducer: ``reduction`` / ``ignore_index`` for every loss of the library.

Heads, the retrieval losses and the kernels all end with :func:`reduce_loss`, so ``'mean'``,
``'sum'`` and ``'none'`` mean the same thing everywhere (those of ``nn.CrossEntropyLoss``) and the
sum is always accumulated in at least fp32: an fp16 batch whose per-row losses all fit fp16 never
returns ``mean = inf`` because the intermediate sum overflowed.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["reduce_loss"]


def reduce_loss(per_example: Tensor, keep: Optional[Tensor], shape, reduction: str,
                weight: Optional[Tensor] = None) -> Tensor:
    r"""Reduce the per-example losses of the kept rows like ``nn.CrossEntropyLoss``.

    .. math::
        \text{sum} = \sum_{i \in K} \ell_i, \qquad
        \text{mean} = \frac{\sum_{i \in K} \ell_i}{\sum_{i \in K} w_i}
        \quad (w_i = 1 \text{ without } \texttt{weight})

    over the kept rows ``K``. The sum and the denominator are accumulated in
    ``promote_types(dtype, float32)`` and the result is cast back to ``per_example.dtype``.

    Args:
        per_example: ``[M]`` losses of the kept rows.
        keep: ``[N]`` bool, True at the M kept positions (None: every row kept, ``M == N``).
        shape: the target's leading shape (product N), the shape of the ``'none'`` result.
        reduction: ``'mean'`` (NaN when every row is ignored, like torch), ``'sum'`` or
            ``'none'`` (zeros at ignored positions).
        weight: optional ``[M]`` weights of the kept rows' targets; ``'mean'`` divides by their sum
            (``F.cross_entropy(weight=...)``). The losses themselves must already be weighted.

    Shape:
        - per_example: :math:`(M)`; keep: :math:`(N)`; output: scalar, or ``shape`` for ``'none'``.

    Examples::

        >>> per = torch.tensor([1.0, 3.0]); keep = torch.tensor([True, False, True])
        >>> reduce_loss(per, keep, (3,), "none")
        tensor([1., 0., 3.])
        >>> reduce_loss(per, keep, (3,), "mean")
        tensor(2.)
    """
    if reduction == "none":
        if keep is None or per_example.shape[0] == keep.shape[0]:
            return per_example.reshape(shape)
        out = per_example.new_zeros(keep.shape[0])
        # an all-ignored batch still returns a result connected to the graph (backward() gives zero
        # gradients, as torch's losses do, instead of "does not require grad")
        out = out.masked_scatter(keep, per_example) if per_example.numel() or per_example.requires_grad else out
        return out.reshape(shape)
    acc = torch.promote_types(per_example.dtype, torch.float32)
    total = per_example.to(acc).sum()
    if reduction == "sum":
        return total.to(per_example.dtype)
    if weight is None:
        denom = float(per_example.numel())  # 0/0 = NaN when every row is ignored
        out = total / denom if denom else total * float("nan")
    else:
        out = total / weight.to(acc).sum()
    return out.to(per_example.dtype)

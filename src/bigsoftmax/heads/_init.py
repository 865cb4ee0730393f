"""The one initialisation / tying helper of the heads' class rows (``weight [V, d]``, ``bias [V]``).

Default scheme: ``"normal"``, :math:`w_{c} \\sim \\mathcal{N}(0, 1/d)` and a constant bias (0).

Why this one: for features with unit-variance coordinates the initial logits ``h · w_c`` then have
variance ≈ 1 whatever d, so the first softmax is neither flat nor saturated; it is the scheme of
TF's sampled-softmax / NCE tutorials (``truncated_normal(stddev=1/sqrt(d))``), which the sampled
heads reproduce, and — being isotropic — it puts the class centres of the normalised (cosine /
margin) heads in uniformly random directions, which a per-coordinate uniform draw does not.
It is what :class:`~bigsoftmax.heads.SampledSoftmax`, :class:`~bigsoftmax.heads.NCE`, the margin heads
and :class:`~bigsoftmax.heads.HierarchicalSoftmax` use.

Two heads pass another scheme explicitly, for parity with a reference (their documented numbers
and seeded tests rely on it):

- ``"linear"``: ``nn.Linear``'s ``reset_parameters`` (``kaiming_uniform_(a=√5)`` = U(±1/√d) for the
  weight, U(±1/√d) for the bias) — :class:`~bigsoftmax.heads.FullSoftmax`, a drop-in for
  ``nn.Linear`` + ``F.cross_entropy``;
- ``"uniform"``: U(±1/√d) for the weight and a constant bias (``log(1/V)``) —
  :class:`~bigsoftmax.heads.SelfNormalizedSoftmax` (Devlin et al.: log Z starts near 0).

Tying (``weight=`` an existing ``[V, d]`` parameter, e.g. a language model's input embedding) is
checked by :func:`tie_class_rows`; a tied weight is never re-initialised (pass ``weight=None`` to
:func:`init_class_rows`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["INIT_SCHEMES", "init_class_rows", "tie_class_rows"]

#: the schemes :func:`init_class_rows` knows; the first is the default
INIT_SCHEMES = ("normal", "linear", "uniform")


@torch.no_grad()
def init_class_rows(weight: Optional[Tensor], bias: Optional[Tensor] = None, scheme: str = "normal", *,
                    fan_in: Optional[int] = None, bias_value: float = 0.0,
                    generator: Optional[torch.Generator] = None) -> None:
    """Initialise class rows in place (see the module docstring for the schemes and the default).

    ======================  =====================================  ==========================
    scheme                  weight ``[V, d]``                      bias ``[V]``
    ======================  =====================================  ==========================
    ``"normal"`` (default)  :math:`\\mathcal{N}(0, 1/d)`             ``bias_value``
    ``"linear"``            ``kaiming_uniform_(a=√5)`` = U(±1/√d)  U(±1/√d) (``nn.Linear``)
    ``"uniform"``           U(±1/√d)                               ``bias_value``
    ======================  =====================================  ==========================

    Args:
        weight: the ``[V, d]`` rows to fill, or None (tied: left alone).
        bias: the ``[V]`` bias to fill, or None.
        scheme: one of :data:`INIT_SCHEMES`.
        fan_in: d, for the bias bound of ``"linear"`` when ``weight`` is None (default: ``weight``'s d).
        bias_value: the constant bias of ``"normal"`` / ``"uniform"``.
        generator: the ``torch.Generator`` of the draws (None: torch's global RNG).

    Examples::

        >>> w, b = torch.empty(1000, 64), torch.empty(1000)
        >>> init_class_rows(w, b)                                  # N(0, 1/64), bias 0
        >>> init_class_rows(w, b, "uniform", bias_value=-math.log(1000))
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"scheme must be one of {INIT_SCHEMES}, got {scheme!r}")
    d = fan_in if fan_in is not None else (weight.shape[-1] if weight is not None else None)
    if scheme == "linear" and bias is not None and d is None:
        raise ValueError("init_class_rows: the 'linear' bias bound needs fan_in= when weight is None (tied)")
    if weight is not None:
        if scheme == "normal":
            nn.init.normal_(weight, std=1.0 / math.sqrt(d), generator=generator)
        elif scheme == "linear":
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        else:
            bound = 1.0 / math.sqrt(d)
            weight.uniform_(-bound, bound, generator=generator)
    if bias is not None:
        if scheme == "linear":
            bound = 1.0 / math.sqrt(d)
            nn.init.uniform_(bias, -bound, bound, generator=generator)
        else:
            bias.fill_(float(bias_value))


def tie_class_rows(weight, num_classes: int, in_features: int, *, plain_tensor: str = "refuse") -> Tensor:
    """Check an existing ``[num_classes, in_features]`` weight to tie a head's class rows to; returns it.

    Args:
        weight: the tensor / ``nn.Parameter`` to share (e.g. ``embedding.weight``).
        num_classes: V. in_features: d.
        plain_tensor: what a tensor that is not an ``nn.Parameter`` gets — ``"refuse"`` (a
            ``TypeError``), ``"wrap"`` (a new ``nn.Parameter`` over the same storage) or ``"keep"``.

    Raises ``TypeError`` for a non-tensor (or, with ``"refuse"``, a non-Parameter) or a non-floating
    dtype, ``ValueError`` for a shape other than ``[V, d]``.
    """
    if plain_tensor not in ("refuse", "wrap", "keep"):
        raise ValueError(f"plain_tensor must be 'refuse', 'wrap' or 'keep', got {plain_tensor!r}")
    if plain_tensor == "refuse" and not isinstance(weight, nn.Parameter):
        raise TypeError(f"weight must be an nn.Parameter to tie to (e.g. embedding.weight), got {type(weight).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a [num_classes, in_features] tensor/Parameter, got {type(weight).__name__}")
    if tuple(weight.shape) != (num_classes, in_features):
        raise ValueError(
            f"weight must have shape [num_classes={num_classes}, in_features={in_features}], got {tuple(weight.shape)}"
        )
    if not weight.dtype.is_floating_point:
        raise TypeError(f"weight must be floating point, got dtype {weight.dtype}")
    if plain_tensor == "wrap" and not isinstance(weight, nn.Parameter):
        return nn.Parameter(weight)
    return weight

"""The Head protocol shared by every output layer in bigsoftmax.

Every method is an ``nn.Module`` subclass of :class:`Head`::

    loss = head(hidden, target)                  # training objective (scalar by default)
    lp   = head.log_prob(hidden)                 # [..., V] exact normalised log-probabilities
    tlp  = head.target_log_prob(hidden, target)  # [...] exact, never materialises [N, V]
    vals, idx = head.topk(hidden, k)             # exact top-k log-probabilities, chunked

``hidden`` is ``[..., d]`` and ``target`` is ``[...]`` (int64). Heads flatten the leading dims
themselves, cast ``hidden`` to the dtype of their parameters (one rule for mixed dtypes), drop
positions whose target equals ``ignore_index`` and reduce like ``nn.CrossEntropyLoss`` through the
one reducer :func:`~bigsoftmax.ops.reduce.reduce_loss` (``'mean'`` over non-ignored positions,
``'sum'``, or ``'none'`` giving a ``[...]`` tensor with zeros at ignored positions; sums in fp32).

``head.train(); head(h, y)`` is the head's training objective; ``head.eval(); head(h, y)`` is
always the exact negative log-likelihood ``−target_log_prob(h, y)``, reduced the same way — no
margin, penalty, smoothing or class weight — so evaluation numbers are comparable across heads.

Subclasses implement

* ``_loss(h [N, d], y [N]) -> [N]`` — per-example training loss on the kept rows, and
* the exact evaluation: heads whose exact distribution is a full softmax over
  ``logits(h) = x'(h) @ W'.T + b'`` get it from :class:`LinearEvalMixin` (they say what ``x'``,
  ``W'`` and ``b'`` are); the others override ``_log_prob``, ``_target_log_prob`` and ``_topk``
  (tree / adaptive heads).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .._docs import fill_doc
from .._validate import (sync_free, check_float_tensor, check_ignore_index, check_module_not_meta, check_not_meta,
                         check_reduction, check_target)
from ..ops.lse import linear_logsumexp
from ..ops.reduce import reduce_loss

__all__ = [
    "Head",
    "LinearEvalMixin",
    "reduce_loss",
    "check_reduction",
    "check_target",
    "chunked_topk",
    "DEFAULT_EVAL_CHUNK",
]

#: number of classes scored at once by the exact top-k / log-prob paths (memory O(N * chunk))
DEFAULT_EVAL_CHUNK = 16384


@torch.no_grad()
def chunked_topk(score_chunk, num_classes: int, n: int, k: int, chunk: int, device, dtype) -> Tuple[Tensor, Tensor]:
    """Exact top-k over ``num_classes`` scores produced slice by slice.

    ``score_chunk(start, stop)`` returns the [n, stop - start] scores of classes start..stop-1.
    Keeps a running [n, k] best list, so memory is O(n * (k + chunk)).
    """
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, {num_classes}], got {k}")
    best_v = torch.full((n, 0), 0.0, device=device, dtype=dtype)
    best_i = torch.zeros((n, 0), device=device, dtype=torch.long)
    for s in range(0, num_classes, chunk):
        e = min(s + chunk, num_classes)
        z = score_chunk(s, e)
        kk = min(k, e - s)
        v, i = z.topk(kk, dim=-1)
        cand_v = torch.cat([best_v, v.to(dtype)], dim=1)
        cand_i = torch.cat([best_i, i + s], dim=1)
        kk = min(k, cand_v.shape[1])
        best_v, j = cand_v.topk(kk, dim=-1)
        best_i = cand_i.gather(1, j)
    return best_v, best_i


@fill_doc
class Head(nn.Module):
    r"""Base class of every bigsoftmax output layer (see the module docstring for the protocol).

    A head maps hidden states to a distribution over V classes, :math:`p(c \mid h)`, and trains
    with its own objective (sampled, tree, margin, …) while evaluating exactly.

    {head_modes}

    Args:
        in_features: d, the size of a hidden state (int >= 1).
        num_classes: V, the number of classes (int >= 2).
        {ignore_index}
        {reduction}

    Shape:
        {head_shape}

    Examples::

        >>> head = bigsoftmax.heads.FullSoftmax(16, 1000)
        >>> h, y = torch.randn(4, 7, 16), torch.randint(0, 1000, (4, 7))
        >>> head(h, y).shape, head.log_prob(h).shape, head.topk(h, 5)[1].shape
        (torch.Size([]), torch.Size([4, 7, 1000]), torch.Size([4, 7, 5]))
    """

    in_features: int
    num_classes: int

    def __init__(self, in_features: int, num_classes: int, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)
        self.eval_chunk = DEFAULT_EVAL_CHUNK

    # ----------------------------------------------------------------- input handling
    def param_dtype(self) -> Optional[torch.dtype]:
        """The dtype of the head's first floating-point parameter (None when it has none)."""
        for p in self.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
        return None

    def _flat_hidden(self, hidden: Tensor) -> Tensor:
        """Check ``hidden [..., d]``, flatten it to ``[N, d]`` and cast it to :meth:`param_dtype`."""
        check_float_tensor(hidden, "hidden")
        check_not_meta(hidden=hidden)  # issue 14 item 13: meta tensors hold no values
        check_module_not_meta(self, type(self).__name__)
        if hidden.dim() < 1 or hidden.shape[-1] != self.in_features:
            raise ValueError(
                f"hidden must have shape [..., {self.in_features}] (in_features), got {tuple(hidden.shape)}"
            )
        pdt = self.param_dtype()
        h = hidden.reshape(-1, self.in_features)
        return h if pdt is None or h.dtype == pdt else h.to(pdt)

    def _flat_pair(self, hidden: Tensor, target: Tensor):
        h = self._flat_hidden(hidden)
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor of int64 class ids, got {type(target).__name__}")
        if tuple(target.shape) != tuple(hidden.shape[:-1]):
            raise ValueError(
                f"target shape {tuple(target.shape)} must equal hidden's leading shape {tuple(hidden.shape[:-1])}"
            )
        check_target(target, self.num_classes, self.ignore_index)
        return h, target.reshape(-1).long()

    # ----------------------------------------------------------------- training
    @fill_doc
    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        r"""Training loss (train mode) or the exact NLL (eval mode): [..., d], [...] -> scalar or [...].

        .. math::
            \ell_i = \begin{cases} \text{the head's objective}(h_i, y_i) & \text{training} \\
                     -\log p(y_i \mid h_i) & \text{evaluation} \end{cases}

        reduced over the rows whose target is not ``ignore_index`` (``self.reduction``).

        Args:
            hidden: hidden states ``[..., d]``.
            target: int64 class ids ``[...]`` (the leading shape of ``hidden``).

        Shape:
            {head_shape}

        Examples::

            >>> head = bigsoftmax.heads.FullSoftmax(16, 1000)
            >>> loss = head(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
            >>> loss.backward()
        """
        h, y = self._flat_pair(hidden, target)
        keep = y != self.ignore_index
        if sync_free(h):
            # no host sync (accelerators, torch.compile): score every row (ignored ones on class 0),
            # mask after; costs the ignored rows' work instead of a device->host read of `keep`
            ys = torch.where(keep, y, torch.zeros_like(y))
            per = self._loss(h, ys) if self.training else -self._target_log_prob(h, ys)
            return masked_reduce(per, keep, target.shape, self.reduction)
        all_kept = bool(keep.all())
        hk, yk = (h, y) if all_kept else (h[keep], y[keep])
        per = self._loss(hk, yk) if self.training else -self._target_log_prob(hk, yk)
        return reduce_loss(per, None if all_kept else keep, target.shape, self.reduction)

    def _loss(self, hidden: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------- exact evaluation
    def log_prob(self, hidden: Tensor) -> Tensor:
        r"""Exact normalised log-probabilities over all classes: [..., d] -> [..., V].

        .. math::
            \log p(c \mid h) \text{ for } c = 0, \dots, V - 1, \qquad \textstyle\sum_c p(c \mid h) = 1

        (fp32 or wider). The only protocol method that returns ``[N, V]``; use
        :meth:`target_log_prob` or :meth:`topk` when V is large.

        Args:
            hidden: hidden states ``[..., d]``.

        Shape:
            - hidden: :math:`(*, d)`; output: :math:`(*, V)`.

        Examples::

            >>> head = bigsoftmax.heads.FullSoftmax(16, 1000)
            >>> head.log_prob(torch.randn(8, 16)).exp().sum(-1)  # doctest: +SKIP
            tensor([1.0000, 1.0000, ...])
        """
        h = self._flat_hidden(hidden)
        return self._log_prob(h).reshape(*hidden.shape[:-1], self.num_classes)

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        r"""Exact log p(target | hidden): [..., d], [...] -> [...]. Ignored positions give 0.

        .. math::
            \log p(y \mid h) = z_y(h) - \log \textstyle\sum_c e^{z_c(h)}

        for the softmax heads (tree heads: the sum of the log-probabilities along the path to y),
        computed over class chunks, never holding ``[N, V]``; differentiable.

        Args:
            hidden: hidden states ``[..., d]``.
            target: int64 class ids ``[...]`` (``ignore_index`` allowed: 0 there).

        Shape:
            - hidden: :math:`(*, d)`; target: :math:`(*)`; output: :math:`(*)` (fp32 or wider).

        Examples::

            >>> head = bigsoftmax.heads.FullSoftmax(16, 1000)
            >>> h, y = torch.randn(8, 16), torch.randint(0, 1000, (8,))
            >>> ppl = head.target_log_prob(h, y).mean().neg().exp()
        """
        h, y = self._flat_pair(hidden, target)
        keep = y != self.ignore_index
        out = h.new_zeros(y.shape[0], dtype=torch.promote_types(h.dtype, torch.float32))
        if sync_free(h):
            ys = torch.where(keep, y, torch.zeros_like(y))
            lp = self._target_log_prob(h, ys).to(out.dtype)
            return torch.where(keep, lp, out).reshape(target.shape)
        if bool(keep.any()):
            out[keep] = self._target_log_prob(h[keep], y[keep]).to(out.dtype)
        return out.reshape(target.shape)

    def topk(self, hidden: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        r"""Exact top-k classes by log-probability: [..., d] -> ([..., k] log-probs, [..., k] ids).

        .. math::
            \operatorname{topk}_c \log p(c \mid h)

        sorted in decreasing order; a running best list over class slices (memory O(N (k + chunk))),
        or a beam for tree heads that is exact by bounds. No gradient.

        Args:
            hidden: hidden states ``[..., d]``.
            k: int in ``[1, V]``.

        Shape:
            - hidden: :math:`(*, d)`; output: two :math:`(*, k)` tensors (log-probs, int64 ids).

        Examples::

            >>> head = bigsoftmax.heads.FullSoftmax(16, 1000)
            >>> logp, ids = head.topk(torch.randn(8, 16), k=5)
        """
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.num_classes:
            raise ValueError(f"k must be an int in [1, {self.num_classes}], got {k!r}")
        h = self._flat_hidden(hidden)
        v, i = self._topk(h, k)
        lead = hidden.shape[:-1]
        return v.reshape(*lead, k), i.reshape(*lead, k)

    def predict(self, hidden: Tensor) -> Tensor:
        """Most likely class: [..., d] -> [...]."""
        return self.topk(hidden, 1)[1][..., 0]

    # default implementations through _log_prob_chunk (override for structured heads)
    def _log_normalizer(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_prob(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def _target_log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _topk(self, h: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError


def masked_reduce(per_row: Tensor, keep: Tensor, shape, reduction: str) -> Tensor:
    """:func:`reduce_loss` of the rows where ``keep`` holds, from losses of *every* row ``[N]``.

    No boolean indexing, so no data-dependent shape and no host sync (the ``torch.compile`` path):
    ``'mean'`` divides by ``keep.sum()`` (NaN when every row is ignored, as ``reduce_loss``),
    ``'none'`` puts zeros at ignored rows. Equal to ``reduce_loss(per_row[keep], keep, ...)``.
    """
    zero = torch.zeros((), dtype=per_row.dtype, device=per_row.device)
    per = torch.where(keep, per_row, zero)
    if reduction == "none":
        return per.reshape(shape)
    acc = torch.promote_types(per_row.dtype, torch.float32)
    total = per.to(acc).sum()
    if reduction == "sum":
        return total.to(per_row.dtype)
    return (total / keep.sum().to(acc)).to(per_row.dtype)


class LinearEvalMixin:
    """Exact evaluation for heads whose distribution is ``softmax(x'(h) @ W'.T + b')``.

    The class says what the evaluation logits are through :meth:`_eval_linear` (default: ``h``,
    ``eval_weight()``, ``eval_bias()``; margin heads scale and normalise). ``log_normalizer`` and
    ``target_log_prob`` run on the streaming kernel :func:`~bigsoftmax.ops.lse.linear_logsumexp`
    (exact, differentiable, O(N · chunk) memory also under autograd); ``topk`` keeps a running best
    list over class slices of ``self.eval_chunk``; only ``log_prob`` returns ``[N, V]`` (by definition).
    """

    def eval_weight(self) -> Tensor:  # pragma: no cover - abstract
        """The ``[V, d]`` class rows ``W'`` of the evaluation logits ``x' @ W'.T + b'``."""
        raise NotImplementedError

    def eval_bias(self) -> Optional[Tensor]:
        """The ``[V]`` bias ``b'`` of the evaluation logits, or None."""
        return None

    def _eval_linear(self, h: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(x', W', b')`` with evaluation logits ``x' @ W'.T + b'`` for hidden rows ``h [N, d]``."""
        return h, self.eval_weight(), self.eval_bias()

    def _kernel_chunk(self) -> Optional[int]:
        return getattr(self, "chunk_size", None)

    def _eval_logits(self, h: Tensor, start: int, stop: int) -> Tensor:
        """Evaluation logits of classes ``[start, stop)`` for hidden rows ``h [N, d]``: [N, stop - start]."""
        return _linear_slice(*self._eval_linear(h), start, stop)

    def log_normalizer(self, hidden: Tensor) -> Tensor:
        """Exact ``log Z(h) = logsumexp_c z_c`` of the evaluation logits: [..., d] -> [...].

        0 for a perfectly self-normalised model (NCE and the self-normalised softmax train towards it),
        so ``exp(z_y)`` is then a probability without the O(V) normaliser.
        """
        h = self._flat_hidden(hidden)
        return self._log_normalizer(h).reshape(hidden.shape[:-1])

    def _log_normalizer(self, h: Tensor) -> Tensor:
        return linear_logsumexp(*self._eval_linear(h), chunk_size=self._kernel_chunk(), recompute=True)[0]

    def _log_prob(self, h: Tensor) -> Tensor:
        x, W, b = self._eval_linear(h)
        z = _linear_slice(x, W, b, 0, W.shape[0])
        return torch.log_softmax(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)

    def _target_log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        lse, zt = linear_logsumexp(*self._eval_linear(h), y, chunk_size=self._kernel_chunk(), recompute=True)
        return zt - lse

    def _topk(self, h: Tensor, k: int):
        with torch.no_grad():
            x, W, b = self._eval_linear(h)
            lz = linear_logsumexp(x, W, b, chunk_size=self._kernel_chunk())[0]
            v, i = chunked_topk(lambda s, e: _linear_slice(x, W, b, s, e).to(lz.dtype), W.shape[0], h.shape[0], k,
                                self.eval_chunk, h.device, lz.dtype)
            return v - lz[:, None], i


def _linear_slice(x: Tensor, W: Tensor, b: Optional[Tensor], start: int, stop: int) -> Tensor:
    """``x @ W[start:stop].T + b[start:stop]`` in the promoted dtype of the operands."""
    dt = torch.promote_types(x.dtype, W.dtype)
    z = x.to(dt) @ W[start:stop].to(dt).t()
    return z if b is None else z + b[start:stop].to(dt)

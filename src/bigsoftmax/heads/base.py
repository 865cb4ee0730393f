"""The Head protocol shared by every output layer in bigsoftmax.

Every method is an ``nn.Module`` subclass of :class:`Head`::

    loss = head(hidden, target)                  # training objective (scalar by default)
    lp   = head.log_prob(hidden)                 # [..., V] exact normalised log-probabilities
    tlp  = head.target_log_prob(hidden, target)  # [...] exact, never materialises [N, V]
    vals, idx = head.topk(hidden, k)             # exact top-k log-probabilities, chunked

``hidden`` is ``[..., d]`` and ``target`` is ``[...]`` (int64). Heads flatten the leading dims
themselves, drop positions whose target equals ``ignore_index`` and reduce like
``nn.CrossEntropyLoss`` (``'mean'`` over non-ignored positions, ``'sum'``, or ``'none'`` giving a
``[...]`` tensor with zeros at ignored positions).

Subclasses implement

* ``_loss(h [N, d], y [N]) -> [N]`` — per-example training loss on the kept rows, and
* the exact evaluation: either override ``_log_prob_chunk`` (heads whose exact distribution is a full
  softmax over ``logits(h) = h @ W.T + b`` get it from :class:`LinearEvalMixin`) or override
  ``_log_prob``, ``_target_log_prob`` and ``_topk`` directly (tree / adaptive heads).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "Head",
    "LinearEvalMixin",
    "reduce_loss",
    "check_reduction",
    "check_target",
    "chunked_logsumexp",
    "chunked_topk",
    "DEFAULT_EVAL_CHUNK",
]

#: number of classes scored at once by the exact evaluation paths (memory O(N * chunk))
DEFAULT_EVAL_CHUNK = 16384

_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def check_target(target: Tensor, num_classes: int, ignore_index: Optional[int] = None, name: str = "target") -> None:
    """Raise a clear error for a target that is not an integer tensor of ids in [0, num_classes)."""
    if not isinstance(target, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 class ids, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids (int64), got dtype {target.dtype}")
    if target.numel() == 0:
        return
    t = target
    if ignore_index is not None:
        t = t[t != ignore_index]
        if t.numel() == 0:
            return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} contains class id {bad}, outside the allowed range [0, {num_classes})"
            + (f" (ignore_index={ignore_index} is also allowed)" if ignore_index is not None else "")
        )


def reduce_loss(per_example: Tensor, keep: Tensor, shape: torch.Size, reduction: str) -> Tensor:
    """Reduce per-example losses of the kept rows like ``nn.CrossEntropyLoss``.

    per_example: [M] losses of the rows where ``keep`` is True; keep: [N] bool; shape: the target's
    leading shape (product N). ``'mean'`` divides by M (NaN when M == 0, like torch); ``'none'``
    scatters back to ``shape`` with zeros at ignored positions.
    """
    if reduction == "mean":
        return per_example.sum() / per_example.numel()  # 0/0 = NaN when every row is ignored
    if reduction == "sum":
        return per_example.sum()
    out = per_example.new_zeros(keep.shape[0])
    out = out.masked_scatter(keep, per_example) if per_example.numel() else out
    return out.reshape(shape)


def chunked_logsumexp(score_chunk, num_classes: int, chunk: int = DEFAULT_EVAL_CHUNK) -> Tensor:
    """``logsumexp`` over ``num_classes`` scores produced slice by slice, accumulated in fp32+.

    ``score_chunk(start, stop)`` returns the [N, stop - start] scores of classes start..stop-1
    (e.g. ``hidden @ weight[start:stop].T + bias[start:stop]``). Returns [N]. Peak extra memory
    O(N * chunk) instead of O(N * V). Differentiable.
    """
    run = None
    for s in range(0, num_classes, chunk):
        z = score_chunk(s, min(num_classes, s + chunk))
        lse = torch.logsumexp(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)
        run = lse if run is None else torch.logaddexp(run, lse)
    return run


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


class Head(nn.Module):
    """Base class of every bigsoftmax output layer (see the module docstring for the protocol)."""

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
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)
        self.eval_chunk = DEFAULT_EVAL_CHUNK

    # ----------------------------------------------------------------- input handling
    def _flat_hidden(self, hidden: Tensor) -> Tensor:
        if not isinstance(hidden, Tensor):
            raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
        if not hidden.dtype.is_floating_point:
            raise TypeError(f"hidden must be a floating-point tensor, got dtype {hidden.dtype}")
        if hidden.dim() < 1 or hidden.shape[-1] != self.in_features:
            raise ValueError(
                f"hidden must have shape [..., {self.in_features}] (in_features), got {tuple(hidden.shape)}"
            )
        return hidden.reshape(-1, self.in_features)

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
    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Training loss. hidden [..., d], target [...] -> scalar (or [...] with reduction='none')."""
        h, y = self._flat_pair(hidden, target)
        keep = y != self.ignore_index
        if bool(keep.all()):
            per = self._loss(h, y)
        else:
            per = self._loss(h[keep], y[keep])
        return reduce_loss(per, keep, target.shape, self.reduction)

    def _loss(self, hidden: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------- exact evaluation
    def log_prob(self, hidden: Tensor) -> Tensor:
        """Exact normalised log-probabilities over all classes: [..., d] -> [..., V]."""
        h = self._flat_hidden(hidden)
        return self._log_prob(h).reshape(*hidden.shape[:-1], self.num_classes)

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Exact log p(target | hidden): [..., d], [...] -> [...]. Ignored positions give 0."""
        h, y = self._flat_pair(hidden, target)
        keep = y != self.ignore_index
        out = h.new_zeros(y.shape[0], dtype=torch.promote_types(h.dtype, torch.float32))
        if bool(keep.any()):
            out[keep] = self._target_log_prob(h[keep], y[keep]).to(out.dtype)
        return out.reshape(target.shape)

    def topk(self, hidden: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        """Exact top-k classes by log-probability: [..., d] -> ([..., k] log-probs, [..., k] ids)."""
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


class LinearEvalMixin:
    """Exact evaluation for heads whose distribution is ``softmax(h @ W.T + b)``.

    The class needs ``eval_weight() -> [V, d]`` and ``eval_bias() -> [V] | None``. All three methods
    work in class slices of ``self.eval_chunk``: ``target_log_prob`` and ``topk`` never hold [N, V].
    Heads whose evaluation logits differ (margin heads: scaled cosines) override ``_eval_logits``.
    """

    def eval_weight(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def eval_bias(self) -> Optional[Tensor]:
        return None

    def _eval_hidden(self, h: Tensor) -> Tensor:
        """Transform applied to hidden before scoring (identity; margin heads normalise)."""
        return h

    def _eval_logits(self, h: Tensor, start: int, stop: int) -> Tensor:
        w = self.eval_weight()[start:stop]
        z = h @ w.t()
        b = self.eval_bias()
        if b is not None:
            z = z + b[start:stop]
        return z

    def log_normalizer(self, hidden: Tensor) -> Tensor:
        """Exact ``log Z(h) = logsumexp_c z_c`` of the raw evaluation logits: [..., d] -> [...].

        0 for a perfectly self-normalised model (NCE and the self-normalised softmax train towards it),
        so ``exp(z_y)`` is then a probability without the O(V) normaliser. Chunked over classes.
        """
        h = self._flat_hidden(hidden)
        return self._log_normalizer(h).reshape(hidden.shape[:-1])

    def _log_normalizer(self, h: Tensor) -> Tensor:
        """log Z(h) = logsumexp over all classes of the evaluation logits: [N, d] -> [N]."""
        he = self._eval_hidden(h)
        return chunked_logsumexp(lambda s, e: self._eval_logits(he, s, e), self.num_classes, self.eval_chunk)

    def _log_prob(self, h: Tensor) -> Tensor:
        he = self._eval_hidden(h)
        z = self._eval_logits(he, 0, self.num_classes)
        acc = torch.promote_types(h.dtype, torch.float32)
        return torch.log_softmax(z.to(acc), dim=-1)

    def _target_log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        he = self._eval_hidden(h)
        w = self.eval_weight()
        z_t = (he * w[y]).sum(-1)
        b = self.eval_bias()
        if b is not None:
            z_t = z_t + b[y]
        z_t = self._eval_target_logit(he, y, z_t)
        acc = torch.promote_types(h.dtype, torch.float32)
        return z_t.to(acc) - self._log_normalizer(h)

    def _eval_target_logit(self, he: Tensor, y: Tensor, z_t: Tensor) -> Tensor:
        """Hook: margin heads rescale the target logit the same way as ``_eval_logits``."""
        return z_t

    def _topk(self, h: Tensor, k: int):
        with torch.no_grad():
            he = self._eval_hidden(h)
            lz = self._log_normalizer(h)
            acc = torch.promote_types(h.dtype, torch.float32)
            v, i = chunked_topk(
                lambda s, e: self._eval_logits(he, s, e).to(acc),
                self.num_classes,
                h.shape[0],
                k,
                self.eval_chunk,
                h.device,
                acc,
            )
            return v - lz[:, None], i

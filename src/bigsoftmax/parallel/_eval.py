"""Exact evaluation across shards for every vocab-parallel head whose distribution is a full softmax
over ``x'(h) @ W'.T + b'`` (the :class:`~bigsoftmax.heads.LinearEvalMixin` heads): the head says what
``(x', W'_r, b'_r)`` are for its block through ``_eval_linear``; this mixin runs them through the
vocab-parallel cross-entropy (``target_log_prob``, differentiable), the global log-normaliser and
the top-k merge."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .full import global_lse, merge_topk, vocab_parallel_cross_entropy

__all__ = ["ShardEvalMixin"]


class ShardEvalMixin:
    """Exact ``target_log_prob`` / ``log_normalizer`` / ``topk`` / local ``log_prob`` block across shards."""

    def _target_log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        x, W, b = self._eval_linear(h)
        return -vocab_parallel_cross_entropy(x, W, b, y, vocab_start=self.vocab_start, num_classes=self.num_classes,
                                             ignore_index=self.ignore_index, reduction="none",
                                             chunk_size=getattr(self, "chunk_size", None), group=self.group)

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Exact log p(target | hidden) over the global vocabulary: [..., d], [...] -> [...] (0 at ignored)."""
        h, y = self._flat_pair(hidden, target)
        return self._target_log_prob(h, y).reshape(target.shape)

    def _log_normalizer(self, h: Tensor) -> Tensor:
        return global_lse(*self._eval_linear(h), chunk_size=getattr(self, "chunk_size", None), group=self.group)

    def log_normalizer(self, hidden: Tensor) -> Tensor:
        """Exact ``log Z`` over the global vocabulary: [..., d] -> [...] (no grad)."""
        return self._log_normalizer(self._flat_hidden(hidden)).reshape(hidden.shape[:-1])

    @torch.no_grad()
    def log_prob(self, hidden: Tensor) -> Tensor:
        """**This rank's block** of the exact log-probabilities: [..., d] -> [..., V_r] (columns
        ``vocab_start .. vocab_end - 1``; the ranks' blocks concatenated give [..., V]; no grad)."""
        h = self._flat_hidden(hidden)
        lz = self._log_normalizer(h)
        return (self._shard_scores(h, 0, self.local_classes, lz.dtype) - lz[:, None]).reshape(
            *hidden.shape[:-1], self.local_classes)

    def _shard_scores(self, h: Tensor, s: int, e: int, dtype) -> Tensor:
        x, W, b = self._eval_linear(h)
        dt = torch.promote_types(x.dtype, W.dtype)
        z = x.to(dt) @ W[s:e].to(dt).t()
        return (z if b is None else z + b[s:e].to(dt)).to(dtype)

    @torch.no_grad()
    def _topk(self, h: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        lz = self._log_normalizer(h)
        return merge_topk(lambda s, e: self._shard_scores(h, s, e, lz.dtype), lz, self.local_classes,
                          self.vocab_start, k, self.eval_chunk, self.group)

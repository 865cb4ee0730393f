"""Language-model batches: a token stream cut into ``B`` parallel lanes read ``T`` steps at a time.

``lanes = stream[: B * L].reshape(B, L)`` with ``L = len(stream) // B``; batch ``k`` is
``x = lanes[:, kT : kT + T]``, ``y = lanes[:, kT + 1 : kT + T + 1]`` (the next tokens), the last
batch being shorter. Consecutive batches continue each lane, so a recurrent model carries its state
from one batch to the next (truncated back-propagation through time).
"""

from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np
import torch

__all__ = ["batchify", "num_batches", "iter_batches"]


def _check_pos_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def batchify(stream: np.ndarray, batch_size: int) -> torch.Tensor:
    """[n] id stream -> [B, n // B] int64 lanes (the remainder is dropped)."""
    _check_pos_int("batch_size", batch_size)
    stream = np.asarray(stream)
    if stream.ndim != 1:
        raise ValueError(f"stream must be 1-D, got shape {stream.shape}")
    L = stream.shape[0] // batch_size
    if L < 2:
        raise ValueError(
            f"stream of {stream.shape[0]} tokens is too short for batch_size={batch_size} "
            "(each lane needs at least 2 tokens); use a smaller batch size or more data"
        )
    return torch.from_numpy(stream[: batch_size * L].astype(np.int64).reshape(batch_size, L))


def num_batches(lanes: torch.Tensor, seq_len: int) -> int:
    """Number of (x, y) batches in one pass over ``lanes`` [B, L]: ceil((L - 1) / T)."""
    _check_pos_int("seq_len", seq_len)
    return -(-(lanes.shape[1] - 1) // seq_len)


def iter_batches(lanes: torch.Tensor, seq_len: int, start: int = 0) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(k, x [B, t], y [B, t])`` for batches ``k = start, start+1, ...`` (t <= seq_len)."""
    n = num_batches(lanes, seq_len)
    if not isinstance(start, int) or not 0 <= start <= n:
        raise ValueError(f"start must be an int in [0, {n}], got {start!r}")
    L = lanes.shape[1]
    for k in range(start, n):
        i = k * seq_len
        t = min(seq_len, L - 1 - i)
        yield k, lanes[:, i : i + t], lanes[:, i + 1 : i + 1 + t]

"""Argument checks shared by the kernels, the heads and the functional API.

Every check raises a ``TypeError`` (wrong kind of object) or a ``ValueError`` (right kind, value
outside the allowed range) whose message names the argument and the allowed range, before any
torch op could fail deep inside with an ``IndexError`` or a shape error.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "check_reduction",
    "check_target",
    "check_ignore_index",
    "check_chunk_size",
    "check_float_tensor",
    "check_label_smoothing",
    "check_class_weight",
    "check_int",
    "check_real",
    "check_not_meta",
    "check_module_not_meta",
]

#: the reductions of ``nn.CrossEntropyLoss``
REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    """``reduction`` must be one of ``'mean'``, ``'sum'``, ``'none'``; returns it."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_ignore_index(ignore_index) -> int:
    """``ignore_index`` must be a Python int (not a bool, not a float); returns it."""
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    return ignore_index


def check_target(target: Tensor, num_classes: int, ignore_index: Optional[int] = None, name: str = "target") -> None:
    """Raise a clear error for a target that is not an integer tensor of ids in [0, num_classes)."""
    if not isinstance(target, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 class ids, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids (int64), got dtype {target.dtype}")
    if target.device.type == "meta":
        raise _meta_error(name)
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


def check_chunk_size(chunk_size, name: str = "chunk_size") -> Optional[int]:
    """``chunk_size`` must be a positive int or None (automatic); returns it."""
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"{name} must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def check_float_tensor(t, name: str, shape_msg: str) -> Tensor:
    """``t`` must be a floating-point ``torch.Tensor`` (``shape_msg`` describes the expected shape)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_msg}, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor {shape_msg}, got dtype {t.dtype}")
    return t


def check_label_smoothing(label_smoothing) -> float:
    """``label_smoothing`` must be a real number in [0, 1]; returns it as a float."""
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be a float in [0.0, 1.0], got {label_smoothing!r}")
    return float(label_smoothing)


def check_class_weight(weight, num_classes: int, name: str = "weight_class", size_name: str = "V") -> Tensor:
    """Per-class weights: a floating ``[num_classes]`` tensor, finite and >= 0; returns it."""
    check_float_tensor(weight, name, f"of shape [{size_name}={num_classes}]")
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(f"{name} must have shape [{size_name}={num_classes}] (one weight per class), "
                         f"got {tuple(weight.shape)}")
    if weight.device.type != "meta":
        w = weight.detach()
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"{name} must be finite and >= 0 (one weight per class), got a NaN, inf or negative entry")
    return weight


def check_int(name: str, v, lo: int) -> int:
    """An int (not a bool) >= ``lo``; returns it."""
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def check_real(name: str, v, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = True) -> float:
    """A finite real number in the interval ``lo..hi`` (open/closed ends as given); returns it as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = v < hi if hi_open else v <= hi
    if not (math.isfinite(v) and ok_lo and ok_hi):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {rng}, got {v!r}")
    return v


def _meta_error(name: str) -> ValueError:
    return ValueError(f"{name} is on the meta device, which holds no values; move it to a real device (cpu, cuda)")


def check_not_meta(**tensors) -> None:
    """ValueError naming the first tensor (or list/tuple entry) that lives on the ``meta`` device.

    A meta tensor has a shape but no values: a loss computed from one is either an error from deep
    inside torch or, mixed with real tensors, uninitialised memory — never a number to trust.
    """
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.device.type == "meta":
            raise _meta_error(name)
        if isinstance(t, (list, tuple)):
            for i, s in enumerate(t):
                if isinstance(s, Tensor) and s.device.type == "meta":
                    raise _meta_error(f"{name}[{i}]")


def check_module_not_meta(module: torch.nn.Module, what: str) -> None:
    """ValueError naming the first parameter or buffer of ``module`` on the ``meta`` device
    (e.g. a head built under ``torch.device('meta')`` and never materialised with ``to_empty``)."""
    for kind, named in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for pname, t in named:
            if t is not None and t.device.type == "meta":
                raise ValueError(f"{what} {kind} {pname!r} is on the meta device, which holds no values; "
                                 f"materialise the module on a real device first (module.to_empty(device=...) "
                                 f"and load its weights)")

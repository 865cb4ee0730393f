"""Argument checks of the library core: the kernels, the heads, the samplers, trees, retrieval and the
functional API (the jobs in ``lm/`` and ``recsys/`` keep their own, as they may not import core privates).

Every check raises a ``TypeError`` (wrong kind of object) or a ``ValueError`` (right kind, value
outside the allowed range) whose message names the argument and the allowed range, before any
torch op could fail deep inside with an ``IndexError`` or a shape error.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor

# ============================================================================ validation mode
#: the value-check modes of :func:`set_validation`
VALIDATION_MODES = ("eager", "device", "off")
_MODE = "eager"


def set_validation(mode: str) -> None:
    r"""Choose how the library checks tensor *values* (class ids in range, weights finite, …).

    Type, dtype, device-kind and shape checks never read tensor data and always run. The checks
    that do read data (``target.min() >= 0``, ``ids.max() < V``, …) cost a host-device sync each
    (and a graph break under ``torch.compile``), so they follow this switch:

    * ``"eager"`` (default): full host-side checks, raising ``ValueError`` with the exact message
      (the bad id and the allowed range) before any kernel runs. Skipped while
      ``torch.compiler.is_compiling()``, so a compiled step has no host sync and no graph break
      (compiled code is unchecked in this mode: check in eager first, or use ``"device"``).
    * ``"device"``: the same conditions as device-side asserts (``torch._assert_async``): no host
      sync, also inside compiled graphs; a violation fails asynchronously (on CUDA a device assert
      that poisons the context; on CPU a ``RuntimeError`` naming the argument and range).
    * ``"off"``: no value checks (fastest; bad ids give whatever the kernels do).

    Args:
        mode: one of ``"eager"``, ``"device"``, ``"off"``.

    Examples::

        >>> bigsoftmax.set_validation("device")
        >>> bigsoftmax.get_validation()
        'device'
        >>> bigsoftmax.set_validation("eager")
    """
    global _MODE
    if mode not in VALIDATION_MODES:
        raise ValueError(f"mode must be one of {VALIDATION_MODES}, got {mode!r}")
    _MODE = mode


def get_validation() -> str:
    """The current value-check mode (see :func:`set_validation`).

    Examples::

        >>> bigsoftmax.get_validation()
        'eager'
    """
    return _MODE


class validation:
    """Context manager: run a block under a value-check mode, then restore the previous one.

    Args:
        mode: one of ``"eager"``, ``"device"``, ``"off"`` (see :func:`set_validation`).

    Examples::

        >>> head = bigsoftmax.heads.FullSoftmax(8, 100)
        >>> with bigsoftmax.validation("off"):
        ...     loss = head(torch.randn(4, 8), torch.randint(0, 100, (4,)))
    """

    def __init__(self, mode: str):
        if mode not in VALIDATION_MODES:
            raise ValueError(f"mode must be one of {VALIDATION_MODES}, got {mode!r}")
        self.mode = mode
        self._prev: List[str] = []

    def __enter__(self) -> "validation":
        self._prev.append(_MODE)
        set_validation(self.mode)
        return self

    def __exit__(self, *exc) -> None:
        set_validation(self._prev.pop())


def host_checks() -> bool:
    """True when value checks should run on the host now (mode ``"eager"`` and not compiling)."""
    return _MODE == "eager" and not torch.compiler.is_compiling()


def device_checks() -> bool:
    """True when value checks should be device-side asserts (mode ``"device"``)."""
    return _MODE == "device"


# ============================================================================ host-sync-free paths
_FORCE_SYNC_FREE = False


def sync_free(t: Optional[Tensor] = None) -> bool:
    """True when a training step must not read device data on the host (issue 13 item 2).

    On an accelerator a host read (``bool(t)``, ``int(t)``, ``.tolist()``, ``nonzero``, ``unique``
    sizing an output from the data, …) stalls the host until the device catches up, every step.
    On CPU nothing waits, so the kernels keep their data-dependent fast paths there (skipping
    work for rows that need none, compacting the hit pairs); on any other device, and under
    ``torch.compile``, they take the fixed-shape paths instead, which give the same numbers.
    Tests force the fixed-shape paths on CPU with :class:`force_sync_free` to check both their
    numbers and that they make no host sync (``tests/_host_sync.py``).
    """
    if _FORCE_SYNC_FREE or torch.compiler.is_compiling():
        return True
    return t is not None and t.device.type != "cpu"


class force_sync_free:
    """Context manager (tests): take the host-sync-free paths on CPU too."""

    def __init__(self, on: bool = True):
        self.on = bool(on)

    def __enter__(self) -> "force_sync_free":
        global _FORCE_SYNC_FREE
        self._prev, _FORCE_SYNC_FREE = _FORCE_SYNC_FREE, self.on
        return self

    def __exit__(self, *exc) -> None:
        global _FORCE_SYNC_FREE
        _FORCE_SYNC_FREE = self._prev


def assert_ids_in_range(ids: Tensor, lo: int, hi: int, name: str, allowed: Optional[int] = None) -> None:
    """Device-side assert (no host sync) that ``ids`` lie in ``[lo, hi)`` (or equal ``allowed``)."""
    ok = (ids >= lo) & (ids < hi)
    if allowed is not None:
        ok = ok | (ids == allowed)
    torch._assert_async(ok.all(), f"{name} contains a class id outside the allowed range [{lo}, {hi})"
                        + (f" (ignore_index={allowed} is also allowed)" if allowed is not None else ""))


def values_checked(cond, msg: str) -> bool:
    """The one switch for a value check: True when the caller should run its host-side check now;
    in ``"device"`` mode queues ``torch._assert_async(cond(), msg)`` instead and returns False.

    ``cond`` is a zero-argument callable giving a bool tensor that must hold everywhere (built only
    when a device assert is made). ``"off"`` and compiled ``"eager"`` return False, checking nothing.
    """
    if host_checks():
        return True
    if device_checks():
        torch._assert_async(cond().all(), msg)
    return False


__all__ = [
    "VALIDATION_MODES",
    "values_checked",
    "set_validation",
    "get_validation",
    "validation",
    "host_checks",
    "device_checks",
    "assert_ids_in_range",
    "sync_free",
    "force_sync_free",
    "REDUCTIONS",
    "check_reduction",
    "check_choice",
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
    "check_linear",
    "check_alpha",
    "check_per_row_values",
    "check_cutoffs",
    "check_counts",
    "check_div_value",
    "check_scale",
    "check_int_value",
    "TF_RANGE_MAX_LIMIT",
    "check_int_strict",
    "check_bool",
    "check_class_ids",
    "check_true_classes",
    "check_tf_range_max",
    "check_generator",
    "check_unit",
    "check_float_matrix",
    "check_ids",
    "check_log_q",
    "check_num_hard_negatives",
    "check_temperature",
    "check_lm_head_fit",
    "check_causal_lm",
]

#: the reductions of ``nn.CrossEntropyLoss``
REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    """``reduction`` must be one of ``'mean'``, ``'sum'``, ``'none'``; returns it."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_choice(name: str, value, choices):
    """``value`` must be one of ``choices`` (a tuple of allowed values); returns it."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


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
    if not host_checks():
        if device_checks():
            assert_ids_in_range(target, 0, num_classes, name, ignore_index)
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


def check_float_tensor(t, name: str, shape_msg: str = "") -> Tensor:
    """``t`` must be a floating-point ``torch.Tensor`` (``shape_msg``, if given, describes the expected shape)."""
    shape_msg = f" {shape_msg}" if shape_msg else ""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{shape_msg}, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor{shape_msg}, got dtype {t.dtype}")
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
    if weight.device.type != "meta" and not host_checks():
        if device_checks():
            w = weight.detach()
            torch._assert_async((torch.isfinite(w) & (w >= 0)).all(),
                                f"{name} must be finite and >= 0 (one weight per class)")
    elif weight.device.type != "meta":
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
# ---------------------------------------------------------------- kernels (ops/lse.py)


def check_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    """The linear layer of the streaming kernel: ``input [..., d]``, ``weight [V >= 1, d]``, ``bias [V]`` or None,
    all floating point."""
    check_float_tensor(input, "input", "of shape [..., d]")
    check_float_tensor(weight, "weight", "of shape [V, d]")
    check_not_meta(input=input, weight=weight, bias=bias)
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, d] (2-D), got {tuple(weight.shape)}")
    V, d = weight.shape
    if V < 1:
        raise ValueError("weight must have at least one class row (V >= 1)")
    if input.dim() < 1 or input.shape[-1] != d:
        raise ValueError(f"input must have shape [..., d={d}] (d = weight.shape[1]), got {tuple(input.shape)}")
    if bias is not None:
        check_float_tensor(bias, "bias", f"of shape [V={V}]")
        if tuple(bias.shape) != (V,):
            raise ValueError(f"bias must have shape [V={V}], got {tuple(bias.shape)}")


# ---------------------------------------------------------------- heads


def check_alpha(alpha) -> float:
    """The self-normalisation penalty weight: a finite real number >= 0; returns it as a float."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


def check_per_row_values(sampled_values, batch: int):
    """Refuse per-example ``sampled_values`` whose rows disagree with the batch before any row is selected."""
    if not (isinstance(sampled_values, (tuple, list)) and len(sampled_values) == 3
            and all(isinstance(t, Tensor) for t in sampled_values)):
        raise TypeError("sampled_values must be a tuple of three tensors (sampled_candidates, true_expected_count, "
                        "sampled_expected_count)")
    for name, t in zip(("sampled_candidates", "true_expected_count", "sampled_expected_count"), sampled_values):
        if (t.dim() == 2 or name == "true_expected_count") and (t.dim() == 0 or t.shape[0] != batch):
            raise ValueError(f"sampled_values: {name} must have {batch} rows (one per target row), got shape {tuple(t.shape)}")
    return tuple(sampled_values)


def check_cutoffs(cutoffs, num_classes: int, name: str = "cutoffs") -> List[int]:
    """Return ``cutoffs`` as a list of ints, or raise: they must be strictly increasing in (0, V)."""
    if isinstance(cutoffs, Tensor):
        cutoffs = cutoffs.tolist()
    try:
        cl = list(cutoffs)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {type(cutoffs).__name__}") from None
    if len(cl) == 0:
        raise ValueError(f"{name} must hold at least one cutoff in (0, {num_classes}), got []")
    out = []
    for c in cl:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            if isinstance(c, float) and float(c).is_integer():
                c = int(c)
            else:
                raise TypeError(f"{name} must hold ints, got {c!r} in {cl}")
        out.append(int(c))
    for a, b in zip(out, out[1:]):
        if b <= a:
            raise ValueError(f"{name} must be strictly increasing, got {out} ({b} after {a})")
    if out[0] <= 0 or out[-1] >= num_classes:
        raise ValueError(
            f"every cutoff must lie in (0, num_classes={num_classes}) i.e. 1..{num_classes - 1}, got {out}"
        )
    return out


def check_counts(counts, num_classes: Optional[int] = None, name: str = "counts") -> np.ndarray:
    """Validate class counts for frequency-sorted ids; returns a float64 numpy array.

    counts [V]: finite, positive, and non-increasing (id 0 = most frequent), of length
    ``num_classes`` when given.
    """
    if isinstance(counts, Tensor):
        arr = counts.detach().cpu().double().numpy()
    else:
        try:
            arr = np.asarray(counts, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a 1-D sequence/tensor of class counts") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one count per class), got shape {tuple(arr.shape)}")
    if num_classes is not None and arr.shape[0] != num_classes:
        raise ValueError(f"{name} must have length num_classes={num_classes}, got {arr.shape[0]}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} must cover at least 2 classes, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    bad = np.nonzero(arr <= 0)[0]
    if bad.size:
        raise ValueError(f"{name} must be positive, got {float(arr[bad[0]]):g} at class id {int(bad[0])}")
    inc = np.nonzero(np.diff(arr) > 0)[0]
    if inc.size:
        i = int(inc[0])
        raise ValueError(
            f"{name} must be non-increasing: class ids are assumed frequency-sorted (0 = most frequent), "
            f"but {name}[{i}]={float(arr[i]):g} < {name}[{i + 1}]={float(arr[i + 1]):g}; sort your vocabulary by "
            "frequency first (bigsoftmax.vocab.FrequencyOrder.from_counts(counts) gives the permutation and "
            "encodes the ids; bigsoftmax.lm.data sorts its own)"
        )
    return arr


def check_div_value(div_value) -> float:
    """AdaptiveSoftmax's ``div_value``: a positive finite real number; returns it as a float."""
    if isinstance(div_value, bool) or not isinstance(div_value, (int, float)) or not (
        math.isfinite(div_value) and div_value > 0
    ):
        raise ValueError(f"div_value must be a positive finite number, got {div_value!r}")
    return float(div_value)


def check_scale(s) -> float:
    """A margin head's logit scale ``s``: a finite real number > 0; returns it as a float."""
    return check_real("s", s, 0.0, lo_open=True)


# ---------------------------------------------------------------- trees and samplers


def check_int_value(value, name: str, lo: int, hi: Optional[int] = None) -> int:
    """An int or numpy integer (not a bool) in ``[lo, hi]`` (``hi`` None: no upper end); returns a Python int.

    ``TypeError`` for a non-integer, ``ValueError`` for one out of range (the messages of :mod:`bigsoftmax.trees`).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise TypeError(f"{name} must be an int {rng}, got {type(value).__name__}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an int {rng}, got {value}")
    return value


#: TF's limit on range_max for the unigram samplers (``range_sampler_ops``): strictly below int32 max
TF_RANGE_MAX_LIMIT = 2**31 - 1


def check_int_strict(name: str, value, lo: int, hi: Optional[int] = None) -> int:
    """``value`` as a Python int in [lo, hi]; TypeError for non-integers (bools and floats too)."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an int, got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}")
        value = int(value.item())
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an int {rng}, got {v}")
    return v


def check_bool(name: str, value) -> bool:
    """A Python or numpy bool; returns it as a Python bool (``TypeError`` for 0/1 ints and the rest)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_class_ids(ids, range_max: int, name: str) -> Tensor:
    """An integer tensor of class ids in [0, range_max) (any shape) -> the same ids as int64."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 class ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids (int64), got dtype {ids.dtype}")
    if ids.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds no values; move it to a real device (cpu, cuda)")
    if ids.numel() and not host_checks():
        if device_checks():
            assert_ids_in_range(ids, 0, range_max, name)
    elif ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= range_max:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} contains class id {bad}, outside the allowed range [0, {range_max})")
    return ids.long()


def check_true_classes(true_classes, range_max: int, num_true: Optional[int] = None) -> Tensor:
    """``true_classes`` as int64 [batch_size, num_true] with ids in [0, range_max)."""
    if not isinstance(true_classes, Tensor):
        raise TypeError(
            f"true_classes must be a torch.Tensor of int64 class ids with shape [batch_size, num_true], "
            f"got {type(true_classes).__name__}"
        )
    if true_classes.dim() != 2:
        raise ValueError(
            f"true_classes must have shape [batch_size, num_true] (2-D), got shape {tuple(true_classes.shape)}"
        )
    if num_true is not None and true_classes.shape[1] != num_true:
        raise ValueError(
            f"num_true ({num_true}) must equal true_classes.shape[1]; true_classes has shape "
            f"{tuple(true_classes.shape)}"
        )
    return check_class_ids(true_classes, range_max, "true_classes")


def check_tf_range_max(range_max) -> int:
    """``range_max`` as an int in [1, 2**31 - 1), with TF's message for the upper limit."""
    v = check_int_strict("range_max", range_max, 1)
    if v >= TF_RANGE_MAX_LIMIT:
        raise ValueError(f"range_max must be less than {TF_RANGE_MAX_LIMIT}, got {v}")
    return v


def check_generator(generator) -> Optional[torch.Generator]:
    """A ``torch.Generator`` or None; returns it."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_unit(name: str, value) -> float:
    """A real number in [0, 1] (not a bool); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be a float in [0, 1], got {v}")
    return v


# ---------------------------------------------------------------- retrieval


def check_float_matrix(x, name: str) -> None:
    """``x`` must be a 2-D floating-point tensor."""
    check_float_tensor(x, name)
    check_not_meta(**{name: x})
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")


def check_ids(ids, n: Optional[int], name: str, num_items: Optional[int] = None) -> Tensor:
    """ids: a 1-D integer tensor ([n] when n is given), in [0, num_items) when num_items is given."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids (int64), got dtype {ids.dtype}")
    check_not_meta(**{name: ids})
    if ids.dim() != 1 or (n is not None and ids.shape[0] != n):
        raise ValueError(f"{name} must have shape [{n if n is not None else 'n'}], got {tuple(ids.shape)}")
    if num_items is not None and ids.numel() and not host_checks():
        if device_checks():
            assert_ids_in_range(ids, 0, num_items, name)
    elif num_items is not None and ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= num_items:
            raise ValueError(f"{name} contains id {lo if lo < 0 else hi}, outside the allowed range [0, {num_items})")
    return ids.long()


def check_log_q(log_q, n: int, name: str) -> Tensor:
    """Log proposal probabilities: a finite floating ``[n]`` tensor; returns it."""
    if not isinstance(log_q, Tensor):
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(log_q).__name__}")
    if not log_q.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point, got dtype {log_q.dtype}")
    if tuple(log_q.shape) != (n,):
        raise ValueError(f"{name} must have shape [{n}] (one value per candidate), got {tuple(log_q.shape)}")
    if n and not bool(torch.isfinite(log_q).all()):
        raise ValueError(f"{name} must be finite (log of a positive expected count); found NaN or ±inf")
    return log_q


def check_num_hard_negatives(k) -> None:
    """``num_hard_negatives``: None or an int >= 1."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"num_hard_negatives must be None or an int >= 1, got {k!r}")


def check_temperature(temperature) -> None:
    """A temperature: a finite float > 0 or a one-element floating tensor holding one."""
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or not temperature.dtype.is_floating_point:
            raise ValueError(f"temperature must be a positive float or a one-element float tensor, got {tuple(temperature.shape)} {temperature.dtype}")
        t = float(temperature.detach())
    elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        t = float(temperature)
    else:
        raise TypeError(f"temperature must be a positive float or a one-element tensor, got {type(temperature).__name__}")
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a finite number > 0, got {t}")


# ---------------------------------------------------------------- integrations (integrations/transformers.py)


def check_causal_lm(model) -> None:
    """TypeError unless ``model`` is an ``nn.Module`` with an output layer (``get_output_embeddings()`` /
    ``lm_head``) whose ``lm_head`` attribute can be replaced."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a transformers causal LM (an nn.Module), got {type(model).__name__}")
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None
    if out is None or getattr(model, "lm_head", None) is None or out is not model.lm_head:
        raise ValueError(
            f"model ({type(model).__name__}) must be a causal LM whose output layer is its `lm_head` attribute "
            f"(get_output_embeddings() returned {type(out).__name__ if out is not None else None}, "
            f"lm_head is {type(getattr(model, 'lm_head', None)).__name__})"
        )


def check_lm_head_fit(head, hidden_size: int, vocab_size: int, ignore_index: int = -100) -> None:
    """The head must map the model's hidden size to its vocabulary: ValueError naming both sizes
    (and ``ignore_index`` must be transformers' label ignore value, ``reduction`` its ``'mean'``)."""
    in_features = getattr(head, "in_features", None)
    num_classes = getattr(head, "num_classes", None)
    if in_features != hidden_size:
        raise ValueError(f"head.in_features={in_features} must equal the model's hidden size {hidden_size} "
                         f"(the input size of its lm_head)")
    if num_classes != vocab_size:
        raise ValueError(f"head.num_classes={num_classes} must equal the model's vocabulary size {vocab_size} "
                         f"(the output size of its lm_head / config.vocab_size)")
    if getattr(head, "ignore_index", None) != ignore_index:
        raise ValueError(f"head.ignore_index={getattr(head, 'ignore_index', None)} must be {ignore_index}, "
                         f"the label value transformers ignores")
    if getattr(head, "reduction", None) != "mean":
        raise ValueError(f"head.reduction={getattr(head, 'reduction', None)!r} must be 'mean' (transformers' loss "
                         f"is the mean over predicted tokens; num_items_in_batch is handled by the adapter)")


# ---------------------------------------------------------------- training helpers (optim, vocab)


def check_optimizers(optimizers) -> list:
    """``CombinedOptimizer``'s parts: an iterable of ``torch.optim.Optimizer`` (None entries dropped), at
    least one, no parameter in two parts; returns the list."""
    if isinstance(optimizers, torch.optim.Optimizer) or not hasattr(optimizers, "__iter__"):
        raise TypeError(f"optimizers must be an iterable of torch.optim.Optimizer, got {type(optimizers).__name__}")
    out = [o for o in optimizers if o is not None]
    if not out:
        raise ValueError("optimizers must contain at least one optimizer")
    seen = {}
    for i, o in enumerate(out):
        if not isinstance(o, torch.optim.Optimizer):
            raise TypeError(f"optimizers[{i}] must be a torch.optim.Optimizer, got {type(o).__name__}")
        for g in o.param_groups:
            for p in g["params"]:
                if id(p) in seen and seen[id(p)] != i:
                    raise ValueError(f"a parameter of shape {tuple(p.shape)} is in optimizers[{seen[id(p)]}] and "
                                     f"optimizers[{i}]: each parameter must belong to one part")
                seen[id(p)] = i
    return out


def check_norm_type(norm_type) -> float:
    """A gradient-norm order: a real number >= 0 or ``inf`` (``float('inf')`` / ``'inf'``); returns a float."""
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        return math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a real number >= 0 or inf, got {type(norm_type).__name__}")
    v = float(norm_type)
    if math.isnan(v) or v < 0 or v == -math.inf:
        raise ValueError(f"norm_type must be a real number >= 0 or inf, got {norm_type!r}")
    return v


def check_max_norm(max_norm) -> float:
    """``clip_grad_norm_``'s ``max_norm``: a real number >= 0 (``inf`` allowed: no clipping); returns a float."""
    if isinstance(max_norm, Tensor) and max_norm.numel() == 1:
        max_norm = float(max_norm)
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"max_norm must be a real number >= 0, got {type(max_norm).__name__}")
    v = float(max_norm)
    if math.isnan(v) or v < 0:
        raise ValueError(f"max_norm must be a real number >= 0 (inf: no clipping), got {max_norm!r}")
    return v


def check_on_tie(value, name: str = "on_sparse_tie") -> str:
    """What to do about a parameter shared by a sparse and a dense module: ``'warn'``, ``'raise'`` or ``'ignore'``."""
    if value not in ("warn", "raise", "ignore"):
        raise ValueError(f"{name} must be one of ('warn', 'raise', 'ignore'), got {value!r}")
    return value


def check_class_counts(counts, name: str = "counts") -> Tensor:
    """Raw class counts (any order, zeros allowed): a 1-D real sequence/tensor of >= 2 finite values >= 0,
    not all zero; returns a float64 CPU tensor."""
    if isinstance(counts, (str, bytes)):
        raise TypeError(f"{name} must be a 1-D sequence/tensor of class counts, got {type(counts).__name__}")
    if isinstance(counts, Tensor) and (counts.dtype == torch.bool or counts.dtype.is_complex):
        raise TypeError(f"{name} must hold real numbers, got dtype {counts.dtype}")
    try:
        c = torch.as_tensor(counts).detach().cpu()
        if not isinstance(counts, Tensor) and c.dtype.is_floating_point:
            c = torch.as_tensor(counts, dtype=torch.float64)  # Python floats: no round trip through float32
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a 1-D sequence/tensor of class counts") from None
    if c.dtype == torch.bool or c.dtype.is_complex:
        raise TypeError(f"{name} must hold real numbers, got dtype {c.dtype}")
    c = c.to(torch.float64)
    if c.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one count per class), got shape {tuple(c.shape)}")
    if c.numel() < 2:
        raise ValueError(f"{name} must cover at least 2 classes, got {c.numel()}")
    if not bool(torch.isfinite(c).all()):
        i = int((~torch.isfinite(c)).nonzero()[0])
        raise ValueError(f"{name} must be finite, got {name}[{i}] = {float(c[i])}")
    if bool((c < 0).any()):
        i = int((c < 0).nonzero()[0])
        raise ValueError(f"{name} must be >= 0, got {name}[{i}] = {float(c[i]):g}")
    if not bool((c > 0).any()):
        raise ValueError(f"{name} must have at least one positive entry, got all zeros")
    return c


def check_permutation(order, name: str = "order") -> Tensor:
    """A permutation of ``0..V-1`` (V >= 1) as a 1-D integer tensor; returns it as int64."""
    if not isinstance(order, Tensor):
        try:
            order = torch.as_tensor(order)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a 1-D integer tensor (a permutation of 0..V-1)") from None
    if order.dtype.is_floating_point or order.dtype.is_complex or order.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (a permutation of 0..V-1), got dtype {order.dtype}")
    if order.dim() != 1 or order.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D permutation of 0..V-1, got shape {tuple(order.shape)}")
    order = order.detach().cpu().long()
    V = order.numel()
    if not torch.equal(torch.sort(order).values, torch.arange(V)):
        raise ValueError(f"{name} must be a permutation of 0..{V - 1} (every id exactly once)")
    return order


def check_smoothing(mode, k) -> Optional[float]:
    """``smooth_counts``' ``mode`` (``'add'`` or ``'floor'``) and ``k`` (None or a finite real > 0)."""
    if mode not in ("add", "floor"):
        raise ValueError(f"mode must be 'add' or 'floor', got {mode!r}")
    if k is None:
        return None
    return check_real("k", k, 0.0, lo_open=True)


def check_nonzero_proposal(counts, distortion: float, head: str, name: str = "counts") -> None:
    """A head whose proposal / noise is ``counts ** distortion`` cannot score a target class of count 0
    (Q(y) = 0, log Q = -inf): refuse zero counts with the number and the first ids of such classes."""
    c = torch.as_tensor(counts, dtype=torch.float64).detach().cpu().reshape(-1)
    if distortion == 0.0:
        return  # 0 ** 0 = 1: uniform noise, every class can be drawn
    zero = (c == 0).nonzero().reshape(-1)
    if zero.numel():
        ids = zero[:8].tolist()
        more = f" and {zero.numel() - 8} more" if zero.numel() > 8 else ""
        raise ValueError(
            f"{head}: {name} has {zero.numel()} zero entries (class ids {ids}{more}): the noise distribution "
            f"would give them probability 0, and a target of such a class has log Q = -inf. Smooth the counts "
            f"first, e.g. {name}=bigsoftmax.vocab.smooth_counts({name}) (add-1)")

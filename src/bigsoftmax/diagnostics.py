r"""Diagnostics: find the host synchronisations of a training step, on any machine.

On an accelerator every host read of device data (``bool(t)``, ``int(t)``, ``.item()``,
``.tolist()``, ``nonzero``, ``unique``, …) makes the host wait for the device, every step; on CPU
nothing waits, so a timer cannot see them. The dispatcher can: :class:`count_host_syncs` watches
every op of a block, the backward of custom autograd Functions included, and records each read with
the innermost ``bigsoftmax`` source line that made it (or the caller's line, for user code).

The library's kernels keep data-dependent fast paths on CPU (where a sync costs nothing) and take
fixed-shape, sync-free paths on any other device and under ``torch.compile``; with
``sync_free=True`` (the default) the block takes the accelerator's paths on CPU too, so a CPU run
shows what a GPU step would do. On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` is the ground
truth (``benchmarks/gpu.py`` uses both).

Examples::

    >>> head = bigsoftmax.heads.FullSoftmax(16, 1000)
    >>> h, y = torch.randn(8, 16, requires_grad=True), torch.randint(0, 1000, (8,))
    >>> with bigsoftmax.validation("device"), count_host_syncs() as syncs:
    ...     head(h, y).backward()
    >>> [s.op for s in syncs]  # doctest: +SKIP
    []
"""

from __future__ import annotations

import traceback
from typing import List, NamedTuple, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ._validate import force_sync_free

__all__ = ["HostSync", "count_host_syncs"]

#: ATen ops that read device data on the host, or size their output from it
_ATEN_SYNC = frozenset({
    "_local_scalar_dense", "nonzero", "nonzero_static", "_unique", "_unique2", "unique_dim",
    "unique_consecutive", "unique_dim_consecutive", "masked_select", "bincount", "histc",
})
#: Python-level reads that do not reach the dispatcher on CPU (``.to(device)`` is not flagged: on
#: CPU a move to the model's device cannot be told from a move to the host)
_PY_SYNC = frozenset({"tolist", "numpy", "cpu"})


class HostSync(NamedTuple):
    """One host read: the op (``"_local_scalar_dense"`` for bool/int/float/.item, ``"nonzero"``,
    ``"tolist"``, ``"index[bool mask]"``, …) and where it was issued (``file:line source``)."""

    op: str
    where: str

    def __str__(self) -> str:
        return f"{self.op}: {self.where}"


def _where() -> str:
    stack = traceback.extract_stack()[:-3]
    for fr in reversed(stack):
        path = fr.filename.replace("\\", "/")
        if "/bigsoftmax/" in path and not path.endswith("/bigsoftmax/diagnostics.py"):
            return f"{path.split('/bigsoftmax/')[-1]}:{fr.lineno} {fr.line}"
    for fr in reversed(stack):  # user code: the innermost frame outside torch
        path = fr.filename.replace("\\", "/")
        if "/torch/" not in path:
            return f"{fr.filename}:{fr.lineno} {fr.line}"
    return "<unknown>"


class _Dispatch(TorchDispatchMode):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in _ATEN_SYNC:
            self.log.append(HostSync(name, _where()))
        elif name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) < 3:
            self.log.append(HostSync(name, _where()))
        elif name in ("index", "index_put", "index_put_") and len(args) > 1:
            idx = args[1] if isinstance(args[1], (list, tuple)) else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx):
                self.log.append(HostSync(f"{name}[bool mask]", _where()))
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _PY_SYNC:
            self.log.append(HostSync(func.__name__, _where()))
        return func(*args, **(kwargs or {}))


class count_host_syncs:
    r"""Context manager: record every host synchronisation the block would make on an accelerator.

    ``with count_host_syncs() as syncs: ...`` leaves in ``syncs`` a list of :class:`HostSync`
    (empty for a sync-free block). Seen: ``.item()`` / ``bool`` / ``int`` / ``float`` of a tensor,
    ``nonzero``, ``unique``, ``masked_select``, ``bincount``, ``repeat_interleave`` without
    ``output_size``, boolean-mask indexing, ``.tolist()``, ``.numpy()``, ``.cpu()``; forward and
    backward (custom autograd Functions included). Not seen: ``.to(device)`` on CPU (see above).

    Args:
        sync_free: take the library's accelerator (fixed-shape) paths on CPU too (default ``True``),
            so the count is the one a GPU step would make; ``False``: the CPU paths; ``None``: leave
            the choice as it is (e.g. to an enclosing ``force_sync_free``).

    Examples::

        >>> head = bigsoftmax.heads.SampledSoftmax(16, 1000, num_sampled=64, seed=0)
        >>> h, y = torch.randn(8, 16, requires_grad=True), torch.randint(0, 1000, (8,))
        >>> with bigsoftmax.validation("off"), count_host_syncs() as syncs:
        ...     head(h, y).backward()
        >>> print("\n".join(map(str, syncs)))  # doctest: +SKIP
    """

    def __init__(self, sync_free: Optional[bool] = True):
        if sync_free is not None and not isinstance(sync_free, bool):
            raise TypeError(f"sync_free must be a bool or None, got {type(sync_free).__name__}")
        self.sync_free = sync_free

    def __enter__(self) -> List[HostSync]:
        self.log: List[HostSync] = []
        self._force = None if self.sync_free is None else force_sync_free(self.sync_free)
        if self._force is not None:
            self._force.__enter__()
        self._f, self._d = _Function(self.log), _Dispatch(self.log)
        self._f.__enter__()
        self._d.__enter__()
        return self.log

    def __exit__(self, *exc) -> bool:
        self._d.__exit__(*exc)
        self._f.__exit__(*exc)
        if self._force is not None:
            self._force.__exit__(*exc)
        return False

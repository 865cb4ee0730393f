"""Count the host synchronisations a block of torch code would make on an accelerator (issue 13 item 2).

On CPU nothing waits, so a sync is invisible to a timer; it is visible to the dispatcher. Two modes
watch every op of the block, the backward of custom autograd Functions included:

* a ``TorchDispatchMode`` records the ATen ops that read device data on the host or size an output
  from the data: ``_local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``),
  ``nonzero``, ``unique``, ``masked_select``, ``bincount``, ``repeat_interleave`` without
  ``output_size``, boolean-mask indexing;
* a ``TorchFunctionMode`` records the Python-level reads that do not reach the dispatcher on CPU:
  ``.tolist()``, ``.numpy()``, ``.cpu()`` (``.to(device)`` is not flagged: on CPU a move to the
  head's device cannot be told from a move to the host).

Each record names the op and the innermost ``bigsoftmax`` source line that issued it, so a failing
assertion says where to look. On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` is the ground truth
(``benchmarks/gpu.py`` uses it); this counter is what CPU CI can run.
"""

from __future__ import annotations

import traceback
from typing import List, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_ATEN_SYNC = {
    "_local_scalar_dense", "nonzero", "nonzero_static", "_unique", "_unique2", "unique_dim",
    "unique_consecutive", "unique_dim_consecutive", "masked_select", "bincount", "histc",
}
_PY_SYNC = {"tolist", "numpy", "cpu"}  # (.to(device) is not flagged: on CPU it cannot be told from a no-op)


def _where() -> str:
    for fr in reversed(traceback.extract_stack()[:-2]):
        if "/bigsoftmax/" in fr.filename.replace("\\", "/"):
            tail = fr.filename.replace("\\", "/").split("/bigsoftmax/")[-1]
            return f"{tail}:{fr.lineno} {fr.line}"
    return "<outside bigsoftmax>"


class _Dispatch(TorchDispatchMode):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in _ATEN_SYNC:
            self.log.append((name, _where()))
        elif name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) < 3:
            self.log.append((name, _where()))
        elif name in ("index", "index_put", "index_put_") and len(args) > 1:
            idx = args[1] if isinstance(args[1], (list, tuple)) else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx):
                self.log.append((f"{name}[bool mask]", _where()))
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _PY_SYNC:
            self.log.append((name, _where()))
        return func(*args, **kwargs)


class count_host_syncs:
    """``with count_host_syncs() as syncs: ...`` then ``syncs`` is a list of ``(op, where)``."""

    def __enter__(self) -> List[Tuple[str, str]]:
        self.log: List[Tuple[str, str]] = []
        self._f, self._d = _Function(self.log), _Dispatch(self.log)
        self._f.__enter__()
        self._d.__enter__()
        return self.log

    def __exit__(self, *exc):
        self._d.__exit__(*exc)
        self._f.__exit__(*exc)
        return False

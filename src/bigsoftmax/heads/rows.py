"""Class rows held by an ``nn.Embedding`` subclass, so that ``DistributedDataParallel`` sees them.

DDP gives a parameter a *sparse* gradient bucket only when the parameter belongs directly to an
``nn.Embedding`` / ``nn.EmbeddingBag`` whose ``sparse`` flag is set (``produces_sparse_gradient`` in
``torch/nn/parallel/distributed.py``); any other parameter gets a dense bucket, and a sparse COO
gradient there fails at the first backward with ``Cannot access storage of SparseTensorImpl``.
The heads with sparse gradients (sampled softmax, NCE family, tree heads, sampled margin heads)
therefore keep their class rows ``weight [V, d]`` and ``bias [V]`` in a :class:`ClassRows` child
module whose ``sparse`` flag is the head's.

The head's public surface does not change: ``head.weight`` / ``head.bias`` read and assign through
the child, and ``state_dict`` keys stay ``weight`` / ``bias`` (a state-dict hook renames
``rows.weight`` -> ``weight`` on save, a load pre-hook renames back), so checkpoints written before
and after this module are interchangeable.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassRows", "ClassRowsMixin"]

_ROW_NAMES = ("weight", "bias")


class ClassRows(nn.Embedding):
    """The ``[V, d]`` class rows (and optional ``[V]`` bias) of a head, as an ``nn.Embedding``.

    Not an embedding layer of its own: it wraps existing Parameters (no copy, ties survive) so that
    ``DistributedDataParallel`` buckets them sparsely when ``sparse=True``. ``forward(ids)`` is the
    plain embedding lookup of rows ``ids``.

    Args:
        weight: the ``nn.Parameter [V, d]`` to hold.
        bias: an ``nn.Parameter [V]`` or None.
        sparse: whether the owning head produces sparse COO gradients for these Parameters.

    Examples::

        >>> rows = ClassRows(nn.Parameter(torch.randn(10, 4)), None, sparse=True)
        >>> rows(torch.tensor([1, 2])).shape
        torch.Size([2, 4])
    """

    def __init__(self, weight: nn.Parameter, bias: Optional[nn.Parameter] = None, sparse: bool = False):
        nn.Module.__init__(self)  # nn.Embedding.__init__ would allocate (or re-wrap) the weight
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise TypeError(f"weight must be a 2-D tensor (an nn.Parameter) [V, d], got {type(weight).__name__}")
        self.num_embeddings, self.embedding_dim = int(weight.shape[0]), int(weight.shape[1])
        self.padding_idx = None
        self.max_norm = None
        self.norm_type = 2.0
        self.scale_grad_by_freq = False
        self.sparse = bool(sparse)
        self.weight = weight
        self.bias = bias

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight, sparse=self.sparse)

    def sparse_parameters(self):
        """Parameters with sparse gradients (both rows and bias when ``sparse``; for :mod:`bigsoftmax.optim`)."""
        return [p for p in (self.weight, self.bias) if p is not None] if self.sparse else []

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bias={self.bias is not None}, sparse={self.sparse}"


def _rename_on_save(module, state_dict, prefix, local_metadata):
    for name in _ROW_NAMES:
        key = f"{prefix}rows.{name}"
        if key in state_dict:
            state_dict[f"{prefix}{name}"] = state_dict.pop(key)


def _rename_on_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for name in _ROW_NAMES:
        key = f"{prefix}{name}"
        if key in state_dict:
            state_dict[f"{prefix}rows.{name}"] = state_dict.pop(key)


class ClassRowsMixin:
    """Head mixin: ``weight`` / ``bias`` live in a :class:`ClassRows` child named ``rows``.

    Call :meth:`_init_rows` in ``__init__`` (after ``Head.__init__``); afterwards
    ``self.weight = p`` / ``self.bias = p`` assign into the child and the state-dict keys stay
    ``weight`` / ``bias``.
    """

    def _init_rows(self, weight: nn.Parameter, bias: Optional[nn.Parameter], sparse: bool) -> None:
        nn.Module.__setattr__(self, "rows", ClassRows(weight, bias, sparse))
        self.register_state_dict_post_hook(_rename_on_save)
        self.register_load_state_dict_pre_hook(_rename_on_load)

    def _rows(self) -> ClassRows:
        rows = self.__dict__.get("_modules", {}).get("rows")
        if rows is None:
            raise AttributeError("the head's class rows are not initialised yet (call _init_rows first)")
        return rows

    @property
    def weight(self) -> nn.Parameter:
        """Class rows ``[V, d]`` (held by the ``rows`` :class:`ClassRows` child)."""
        return self._rows().weight

    @property
    def bias(self) -> Optional[nn.Parameter]:
        """Per-class bias ``[V]`` or None (held by the ``rows`` child)."""
        return self._rows().bias

    def __setattr__(self, name, value):
        if name in _ROW_NAMES and "rows" in self.__dict__.get("_modules", {}):
            rows = self._modules["rows"]
            if isinstance(value, Tensor) and not isinstance(value, nn.Parameter) and name in rows._parameters:
                rows._parameters[name] = value  # torch.func.functional_call swaps plain tensors in like this
            else:
                setattr(rows, name, value)
        elif name == "sparse" and "rows" in self.__dict__.get("_modules", {}):
            self._modules["rows"].sparse = bool(value)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

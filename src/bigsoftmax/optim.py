"""Optimiser helpers for models with a dense body and sparse-gradient output embeddings.

Heads built with ``sparse=True`` (and ``nn.Embedding(sparse=True)`` inputs) produce sparse COO
gradients that only touch the candidate rows of the step, so the update cost does not grow with
the number of classes. Most torch optimisers reject sparse gradients (``Adam``, ``AdamW``) or mix
badly with them, so the usual recipe is two optimisers: a dense one for the body and
``SparseAdam`` (or ``SGD``/``Adagrad``, which accept sparse gradients) for the sparse tables.

    opt = bigsoftmax.optim.make_optimizer(model, lr=1e-3)          # Adam + SparseAdam
    loss.backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn

from ._validate import check_real

__all__ = ["split_params", "make_optimizer", "CombinedOptimizer"]

_DENSE = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}
_SPARSE = {"sparse_adam": torch.optim.SparseAdam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}


def split_params(model: nn.Module) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
    """Split a model's trainable parameters into (dense, sparse) by the gradient they will receive.

    Sparse: the weights of ``nn.Embedding``/``nn.EmbeddingBag`` with ``sparse=True`` and whatever a
    module lists in ``sparse_parameters()`` (bigsoftmax heads with ``sparse=True``). A parameter shared
    by a sparse and a dense user (e.g. a tied embedding whose input lookup is dense) gets dense
    gradients and counts as dense.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sparse_ids = set()
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse:
            sparse_ids.add(id(m.weight))
        if hasattr(m, "sparse_parameters") and callable(m.sparse_parameters):
            sparse_ids.update(id(p) for p in m.sparse_parameters())
    # a tied parameter also used densely somewhere cannot be treated as sparse
    dense_users = set()
    for m in model.modules():
        own = dict(m.named_parameters(recurse=False))
        listed = {id(p) for p in m.sparse_parameters()} if hasattr(m, "sparse_parameters") and callable(m.sparse_parameters) else set()
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse:
            listed.add(id(m.weight))
        for p in own.values():
            if id(p) not in listed:
                dense_users.add(id(p))
    dense, sparse, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (sparse if id(p) in sparse_ids and id(p) not in dense_users else dense).append(p)
    return dense, sparse


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimisers stepped together (``step``, ``zero_grad``, ``state_dict``, ``param_groups``).

    Learning-rate schedulers work on it: ``param_groups`` is the concatenation of the parts' groups.
    """

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]):
        self.optimizers = [o for o in optimizers if o is not None]
        if not self.optimizers:
            raise ValueError("optimizers must contain at least one optimizer")
        self.defaults = {}
        self.state = {}  # per-part state lives in the parts; kept for the Optimizer interface

    @property
    def param_groups(self):
        """The parameter groups of every wrapped optimizer, in order (for LR schedulers)."""
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict:
        return {"parts": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: Dict) -> None:
        parts = state_dict["parts"]
        if len(parts) != len(self.optimizers):
            raise ValueError(f"state_dict has {len(parts)} optimizer parts, this optimizer has {len(self.optimizers)}")
        for o, s in zip(self.optimizers, parts):
            o.load_state_dict(s)

    def __repr__(self) -> str:
        return "CombinedOptimizer(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"


def make_optimizer(
    model: nn.Module,
    lr: float = 1e-3,
    dense: str = "adam",
    sparse: str = "sparse_adam",
    sparse_lr: float | None = None,
    **dense_kwargs,
) -> torch.optim.Optimizer:
    """One optimiser for a model with dense and sparse parameters.

    dense: one of ``adam``, ``adamw``, ``sgd``, ``adagrad`` (for the dense params, with ``dense_kwargs``);
    sparse: one of ``sparse_adam``, ``sgd``, ``adagrad`` (for the sparse-gradient params, at
    ``sparse_lr`` or ``lr``). Returns a plain optimiser when only one kind of parameter exists, else a
    :class:`CombinedOptimizer`.
    """
    if dense not in _DENSE:
        raise ValueError(f"dense must be one of {sorted(_DENSE)}, got {dense!r}")
    if sparse not in _SPARSE:
        raise ValueError(f"sparse must be one of {sorted(_SPARSE)}, got {sparse!r}")
    check_real("lr", lr, 0.0, lo_open=True)  # lr must be a finite number > 0
    if sparse_lr is not None:
        check_real("sparse_lr", sparse_lr, 0.0, lo_open=True)
    dense_p, sparse_p = split_params(model)
    parts = []
    if dense_p:
        parts.append(_DENSE[dense](dense_p, lr=lr, **dense_kwargs))
    if sparse_p:
        parts.append(_SPARSE[sparse](sparse_p, lr=sparse_lr if sparse_lr is not None else lr))
    if not parts:
        raise ValueError("model has no trainable parameters")
    return parts[0] if len(parts) == 1 else CombinedOptimizer(parts)

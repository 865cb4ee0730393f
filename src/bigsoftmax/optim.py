"""Optimiser helpers for models with a dense body and sparse-gradient output embeddings.

Heads built with ``sparse=True`` (and ``nn.Embedding(sparse=True)`` inputs) produce sparse COO
gradients that only touch the candidate rows of the step, so the update cost does not grow with
the number of classes. Most torch optimisers reject sparse gradients (``Adam``, ``AdamW``) or mix
badly with them, so the usual recipe is two optimisers: a dense one for the body and
``SparseAdam`` (or ``SGD``/``Adagrad``, which accept sparse gradients) for the sparse tables.

    opt = bigsoftmax.optim.make_optimizer(model, lr=1e-3)          # Adam + SparseAdam
    loss.backward(); opt.step(); opt.zero_grad()

:class:`CombinedOptimizer` is a real ``torch.optim.Optimizer`` (schedulers, ``state_dict``, Lightning),
:func:`clip_grad_norm_` clips mixed sparse/dense gradients, :func:`find_sparse_ties` finds a sparse head
tied to a dense embedding (whose gradient is then dense). See docs/training.md.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Dict, Iterable, List, Tuple

import torch
from torch import Tensor, nn

from ._validate import check_max_norm, check_norm_type, check_on_tie, check_optimizers, check_real

__all__ = ["split_params", "find_sparse_ties", "make_optimizer", "CombinedOptimizer", "clip_grad_norm_"]

_DENSE = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}
_SPARSE = {"sparse_adam": torch.optim.SparseAdam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}


def _sparse_listed(m: nn.Module) -> set:
    """ids of the parameters module ``m`` gives sparse gradients."""
    ids = set()
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse:
        ids.add(id(m.weight))
    if hasattr(m, "sparse_parameters") and callable(m.sparse_parameters):
        ids.update(id(p) for p in m.sparse_parameters())
    return ids


def _users(model: nn.Module):
    """(ids of sparse-listed parameters, sparse owners, dense owners): owners map a parameter id to the
    names of the modules holding it directly that give it sparse / dense gradients."""
    sparse_ids = set()
    for m in model.modules():
        sparse_ids |= _sparse_listed(m)
    sparse_users, dense_users = {}, {}
    for mname, m in model.named_modules(remove_duplicate=False):
        listed = _sparse_listed(m)
        for p in m.parameters(recurse=False):
            (sparse_users if id(p) in listed else dense_users).setdefault(id(p), []).append(mname or "<root>")
    return sparse_ids, sparse_users, dense_users


def split_params(model: nn.Module) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
    """Split a model's trainable parameters into (dense, sparse) by the gradient they will receive.

    Sparse: the weights of ``nn.Embedding``/``nn.EmbeddingBag`` with ``sparse=True`` and whatever a
    module lists in ``sparse_parameters()`` (bigsoftmax heads with ``sparse=True``). A parameter shared
    by a sparse and a dense user (e.g. a sparse head tied to a dense ``nn.Embedding``) gets dense
    gradients (autograd adds the sparse and the dense gradient into a dense one) and counts as dense;
    :func:`find_sparse_ties` lists such parameters.

    Args:
        model: the ``nn.Module``.

    Returns:
        ``(dense, sparse)``: two lists of the trainable parameters, each parameter once.

    Examples::

        >>> model = nn.ModuleDict({"emb": nn.Embedding(10, 4, sparse=True), "body": nn.Linear(4, 4)})
        >>> dense, sparse = split_params(model)
        >>> len(dense), len(sparse)
        (2, 1)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sparse_ids, _, dense_users = _users(model)
    dense, sparse, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (sparse if id(p) in sparse_ids and id(p) not in dense_users else dense).append(p)
    return dense, sparse


def find_sparse_ties(model: nn.Module) -> List[Tuple[str, List[str], List[str]]]:
    """Parameters shared by a module with sparse gradients and one with dense gradients.

    Typical case: ``SampledSoftmax(d, V, S, weight=emb.weight, sparse=True)`` with a dense
    ``nn.Embedding`` ``emb``: the head's gradient is sparse, the embedding's dense, autograd sums them
    into a **dense** ``[V, d]`` gradient, so the head's ``sparse=True`` buys nothing (and a sparse-only
    optimiser such as ``SparseAdam`` would reject the gradient). Make both sparse
    (``nn.Embedding(V, d, sparse=True)``) or both dense (the head's ``sparse=False``).
    :func:`make_optimizer` warns (or raises) when this list is not empty. A weight used densely
    through a functional call (``F.linear(h, emb.weight)``) is invisible here.

    Args:
        model: the ``nn.Module``.

    Returns:
        a list of ``(parameter name, sparse users, dense users)``, the users being module names.

    Examples::

        >>> from bigsoftmax.heads import SampledSoftmax
        >>> emb = nn.Embedding(100, 8)
        >>> model = nn.ModuleDict({"emb": emb, "head": SampledSoftmax(8, 100, 5, weight=emb.weight, sparse=True)})
        >>> find_sparse_ties(model)
        [('emb.weight', ['head.rows'], ['emb'])]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _, sparse_users, dense_users = _users(model)
    out = []
    for name, p in model.named_parameters():
        if id(p) in sparse_users and id(p) in dense_users:
            out.append((name, sorted(set(sparse_users[id(p)])), sorted(set(dense_users[id(p)]))))
    return out


class CombinedOptimizer(torch.optim.Optimizer):
    r"""Several optimisers stepped as one ``torch.optim.Optimizer`` (e.g. ``Adam`` for the dense body and
    ``SparseAdam`` for sparse-gradient class rows).

    ``param_groups`` is the list of the parts' own group dicts, in order — the same dict objects, so a
    learning-rate scheduler (``OneCycleLR``, ``CosineAnnealingLR``, ``LambdaLR``, ...) that writes
    ``group["lr"]`` changes the parts. ``defaults`` holds the keys every part's ``defaults`` has (values
    of the first part), so ``OneCycleLR(cycle_momentum=True)`` finds ``betas`` when every part is an
    Adam-family optimiser and ``momentum`` when every part is ``SGD``; for a mix (``Adam`` + ``SGD``) pass
    ``cycle_momentum=False``. ``state`` is a read-only merged view of the parts' states;
    ``state_dict()`` is ``{"parts": [part.state_dict(), ...], "types": [...]}`` and
    ``load_state_dict`` restores every part (resuming gives the same next step). ``step(closure)``
    evaluates the closure once, then steps every part. Step pre/post hooks, state-dict hooks and
    ``zero_grad(set_to_none)`` behave as on any torch optimiser.

    Args:
        optimizers: the parts (``torch.optim.Optimizer``; ``None`` entries are dropped); at least one,
            no parameter in two parts.

    Examples::

        >>> body, rows = nn.Linear(4, 4), nn.Embedding(10, 4, sparse=True)
        >>> opt = CombinedOptimizer([torch.optim.Adam(body.parameters(), lr=1e-3),
        ...                          torch.optim.SparseAdam(rows.parameters(), lr=1e-3)])
        >>> sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
        >>> loss = body(rows(torch.tensor([1, 2]))).sum()
        >>> loss.backward(); opt.step(); sched.step(); opt.zero_grad()
        >>> [round(g["lr"], 6) for g in opt.param_groups] == [round(g["lr"], 6) for o in opt.optimizers for g in o.param_groups]
        True
    """

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]):
        self.optimizers = check_optimizers(optimizers)
        first = self.optimizers[0].defaults
        self.defaults = {k: v for k, v in first.items() if all(k in o.defaults for o in self.optimizers[1:])}
        self._init_hooks()

    def _init_hooks(self) -> None:
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                     "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            if name not in self.__dict__:
                setattr(self, name, OrderedDict())
        self._patch_step_function()  # step pre/post hooks, as torch.optim.Optimizer.__init__ does

    def __getstate__(self) -> Dict:
        return {"optimizers": self.optimizers, "defaults": self.defaults}

    def __setstate__(self, state: Dict) -> None:
        self.__dict__.update(state)
        self._init_hooks()

    @property
    def param_groups(self) -> List[Dict]:
        """The parts' own parameter-group dicts, in order (writing ``lr`` into one changes that part)."""
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> Dict:
        """Per-parameter state of every part, merged (read-only view; the parts own their state)."""
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    def add_param_group(self, param_group: Dict) -> None:
        """Not supported on the combination: add the group to one part, ``opt.optimizers[i].add_param_group(g)``
        (it then shows in :attr:`param_groups`)."""
        raise TypeError("CombinedOptimizer.add_param_group: add the group to one part, "
                        "opt.optimizers[i].add_param_group(group); it then appears in opt.param_groups")

    def step(self, closure=None):
        """Evaluate ``closure`` (if given, once, with grad enabled), then step every part; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``zero_grad`` of every part."""
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict:
        """``{"parts": [each part's state_dict()], "types": [each part's class name]}`` (with torch's state-dict hooks)."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        out = {"parts": [o.state_dict() for o in self.optimizers], "types": [type(o).__name__ for o in self.optimizers]}
        for hook in self._optimizer_state_dict_post_hooks.values():
            res = hook(self, out)
            if res is not None:
                out = res
        return out

    def load_state_dict(self, state_dict: Dict) -> None:
        """Restore every part from :meth:`state_dict`'s output (same number and types of parts)."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            res = hook(self, state_dict)
            if res is not None:
                state_dict = res
        if not isinstance(state_dict, dict) or "parts" not in state_dict:
            raise ValueError("state_dict must be a CombinedOptimizer.state_dict() (a dict with 'parts')")
        parts = state_dict["parts"]
        if len(parts) != len(self.optimizers):
            raise ValueError(f"state_dict has {len(parts)} optimizer parts, this optimizer has {len(self.optimizers)}")
        types = state_dict.get("types")
        mine = [type(o).__name__ for o in self.optimizers]
        if types is not None and list(types) != mine:
            raise ValueError(f"state_dict holds parts {list(types)}, this optimizer has {mine}")
        for o, s in zip(self.optimizers, parts):
            o.load_state_dict(s)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __repr__(self) -> str:
        return "CombinedOptimizer(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"


def make_optimizer(
    model: nn.Module,
    lr: float = 1e-3,
    dense: str = "adam",
    sparse: str = "sparse_adam",
    sparse_lr: float | None = None,
    on_sparse_tie: str = "warn",
    **dense_kwargs,
) -> torch.optim.Optimizer:
    """One optimiser for a model with dense and sparse parameters.

    The parameters are split by :func:`split_params`; the dense ones get ``dense`` (with
    ``dense_kwargs``), the sparse-gradient ones ``sparse`` at ``sparse_lr`` (default ``lr``).

    Args:
        model: the ``nn.Module``.
        lr: learning rate of the dense part (and of the sparse part unless ``sparse_lr``), > 0.
        dense: one of ``adam``, ``adamw``, ``sgd``, ``adagrad``.
        sparse: one of ``sparse_adam``, ``sgd``, ``adagrad``.
        sparse_lr: learning rate of the sparse part, > 0, or None.
        on_sparse_tie: ``"warn"`` (default), ``"raise"`` (``ValueError``) or ``"ignore"``, for parameters
            shared by a sparse and a dense module (:func:`find_sparse_ties`), which get dense gradients.
        **dense_kwargs: passed to the dense optimiser (e.g. ``weight_decay``).

    Returns:
        a plain optimiser when only one kind of parameter exists, else a :class:`CombinedOptimizer`.

    Examples::

        >>> model = nn.ModuleDict({"emb": nn.Embedding(10, 4, sparse=True), "body": nn.Linear(4, 4)})
        >>> make_optimizer(model, lr=1e-3)
        CombinedOptimizer(Adam, SparseAdam)
    """
    if dense not in _DENSE:
        raise ValueError(f"dense must be one of {sorted(_DENSE)}, got {dense!r}")
    if sparse not in _SPARSE:
        raise ValueError(f"sparse must be one of {sorted(_SPARSE)}, got {sparse!r}")
    check_real("lr", lr, 0.0, lo_open=True)  # lr must be a finite number > 0
    if sparse_lr is not None:
        check_real("sparse_lr", sparse_lr, 0.0, lo_open=True)
    check_on_tie(on_sparse_tie)
    if on_sparse_tie != "ignore":
        ties = find_sparse_ties(model)
        if ties:
            msg = "; ".join(f"{n} (sparse in {', '.join(s)}, dense in {', '.join(d)})" for n, s, d in ties)
            msg = (f"parameters shared by a sparse and a dense module get dense gradients, so they go to the dense "
                   f"optimizer: {msg}. Make both users sparse (nn.Embedding(..., sparse=True)) or both dense "
                   "(head sparse=False); on_sparse_tie='ignore' silences this")
            if on_sparse_tie == "raise":
                raise ValueError(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
    dense_p, sparse_p = split_params(model)
    parts = []
    if dense_p:
        parts.append(_DENSE[dense](dense_p, lr=lr, **dense_kwargs))
    if sparse_p:
        parts.append(_SPARSE[sparse](sparse_p, lr=sparse_lr if sparse_lr is not None else lr))
    if not parts:
        raise ValueError("model has no trainable parameters")
    return parts[0] if len(parts) == 1 else CombinedOptimizer(parts)


def _grad_norm(g: Tensor, norm_type: float) -> Tensor:
    if g.is_sparse:
        g = g.coalesce().values()  # duplicates summed first: the norm of the gradient, not of its entries
    return torch.linalg.vector_norm(g, norm_type)


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    r"""``torch.nn.utils.clip_grad_norm_`` that also takes sparse COO gradients (coalesced or not).

    .. math::
        \lVert g \rVert_p = \Big(\sum_{\text{params}} \sum_i |g_i|^p\Big)^{1/p}, \qquad
        g \leftarrow g \cdot \min\Big(1, \frac{\text{max\_norm}}{\lVert g \rVert_p + 10^{-6}}\Big)

    (:math:`p = \infty`: the largest :math:`|g_i|`). A sparse gradient is coalesced for the norm
    (duplicate indices summed, as the dense gradient would be) and scaled in place; the result equals
    torch's on the dense-ified gradients. Parameters without a gradient are skipped.

    Args:
        parameters: a tensor or an iterable of tensors (e.g. ``model.parameters()``).
        max_norm: the largest allowed total norm, >= 0 (``inf``: only measure).
        norm_type: the order p, a real number >= 0 or ``inf``.
        error_if_nonfinite: raise a ``RuntimeError`` when the total norm is NaN or inf (torch's behaviour);
            otherwise the gradients are scaled by the non-finite coefficient, as torch does.

    Returns:
        the total norm of the gradients (a 0-d tensor), before clipping.

    Examples::

        >>> emb, lin = nn.Embedding(10, 4, sparse=True), nn.Linear(4, 1)
        >>> lin(emb(torch.tensor([1, 1, 2]))).sum().backward()
        >>> total = clip_grad_norm_(list(emb.parameters()) + list(lin.parameters()), max_norm=1.0)
        >>> bool(total > 0)
        True
    """
    max_norm = check_max_norm(max_norm)
    norm_type = check_norm_type(norm_type)
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack([_grad_norm(g, norm_type).to(grads[0].device, torch.float64) for g in grads])
    total = norms.max() if math.isinf(norm_type) else torch.linalg.vector_norm(norms, norm_type)
    total = total.to(grads[0].dtype)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
            "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`")
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        if g.is_sparse:
            g.mul_(coef.to(g.dtype))
        else:
            g.mul_(coef.to(g.device, g.dtype))
    return total

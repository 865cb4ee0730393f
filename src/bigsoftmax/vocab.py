"""Your own tokenizer: frequency-sorted ids and class counts with zeros.

The frequency-based heads assume what ``bigsoftmax.lm.data`` produces: ids sorted by decreasing
frequency (id 0 = most frequent) and positive counts. A tokenizer of one's own gives neither:
``torch.bincount(data, minlength=V)`` has zeros (tokens of the vocabulary absent from the training
text) and the ids follow the tokenizer's order. Two helpers close the gap:

- :class:`FrequencyOrder` — the stable permutation to frequency-sorted ids (ties keep the tokenizer's
  order): ``encode`` / ``decode`` of id tensors, remapping of per-class rows (a head's or an
  embedding's weight, a checkpoint's class rows) and a ``state_dict`` to save it with the model.
- :func:`smooth_counts` — add-k (Laplace / Lidstone) or floor smoothing of the counts.

How the heads treat zero counts:

- the heads whose counts only shape the structure — :class:`~bigsoftmax.heads.HierarchicalSoftmax`
  (Huffman tree), :class:`~bigsoftmax.heads.ClassBasedSoftmax` (frequency bins),
  :class:`~bigsoftmax.heads.AdaptiveSoftmax` (cutoffs chosen from counts) — accept zero counts with an
  automatic, documented floor: ``smooth_counts(counts, mode="floor")``, i.e. a zero count counts as half
  the smallest positive count (unseen classes go to the deepest leaves / the last cluster);
- the heads whose counts are a proposal / noise distribution Q — :class:`~bigsoftmax.heads.NCE`,
  :class:`~bigsoftmax.heads.SampledLogistic`, :class:`~bigsoftmax.heads.NegativeSampling` with
  ``counts=`` — cannot score a target y with Q(y) = 0 (log Q = -inf), so they refuse zero counts at
  construction with a ``ValueError`` giving how many classes and which ids; pass
  ``counts=smooth_counts(counts)`` (add-1).
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import Tensor

from ._validate import check_class_counts, check_permutation, check_smoothing

__all__ = ["FrequencyOrder", "smooth_counts"]


def smooth_counts(counts, k: Optional[float] = None, mode: str = "add") -> Tensor:
    r"""Smooth class counts so that every class has a positive count.

    .. math::
        \text{add:}\quad \tilde n_c = n_c + k \quad (k = 1 \text{ by default: Laplace}), \qquad
        \text{floor:}\quad \tilde n_c = \max(n_c, k) \quad (k = \tfrac12 \min_{n_c > 0} n_c \text{ by default})

    ``'add'`` changes every count (the usual choice for a noise / proposal distribution);
    ``'floor'`` only lifts the zeros (and counts below ``k``), so the positive counts — and with the
    default ``k`` the frequency order — stay as they are (what the tree and adaptive heads apply
    automatically).

    Args:
        counts: ``[V]`` class counts, finite, >= 0, not all zero, in any order (e.g.
            ``torch.bincount(tokens, minlength=V)``).
        k: the added constant / the floor, a finite number > 0 (default: see above).
        mode: ``'add'`` or ``'floor'``.

    Returns:
        a float64 ``[V]`` tensor of positive counts.

    Shape:
        - counts: :math:`(V)`; output: :math:`(V)`.

    Examples::

        >>> smooth_counts(torch.tensor([3, 0, 1]))
        tensor([4., 1., 2.], dtype=torch.float64)
        >>> smooth_counts(torch.tensor([3, 0, 1]), mode="floor")
        tensor([3.0000, 0.5000, 1.0000], dtype=torch.float64)
    """
    c = check_class_counts(counts)
    k = check_smoothing(mode, k)
    if mode == "add":
        return c + (1.0 if k is None else k)
    if k is None:
        k = 0.5 * float(c[c > 0].min())
    return torch.clamp(c, min=k)


class FrequencyOrder:
    r"""The stable permutation from a tokenizer's ids to frequency-sorted ids (new id 0 = most frequent).

    .. math::
        \text{new\_to\_old} = \operatorname{argsort}(-n, \text{stable}), \qquad
        \text{old\_to\_new}[\text{new\_to\_old}[i]] = i

    so ``counts[new_to_old]`` is non-increasing and equal counts keep the tokenizer's order.
    :meth:`encode` maps token ids to the sorted ids a head wants, :meth:`decode` maps predictions
    back; :meth:`remap_rows` / :meth:`remap_` / :meth:`remap_state_dict` move per-class rows
    (``[V, ...]`` tensors: a head's ``weight``/``bias``, an embedding's ``weight``) between the two
    numberings. Save it with the model through :meth:`state_dict`.

    Args:
        new_to_old: ``[V]`` permutation of ``0..V-1``; entry ``i`` is the tokenizer id of sorted id ``i``.
        counts: optional ``[V]`` counts in the *tokenizer's* order (kept sorted as :attr:`counts`).

    Examples::

        >>> counts = torch.bincount(torch.tensor([2, 2, 2, 0, 3, 3]), minlength=5)   # [1, 0, 3, 2, 0]
        >>> order = FrequencyOrder.from_counts(counts)
        >>> order.new_to_old
        tensor([2, 3, 0, 1, 4])
        >>> order.counts
        tensor([3., 2., 1., 0., 0.], dtype=torch.float64)
        >>> order.encode(torch.tensor([2, 0, 4]))
        tensor([0, 2, 4])
        >>> order.decode(order.encode(torch.tensor([2, 0, 4])))
        tensor([2, 0, 4])
    """

    def __init__(self, new_to_old, counts=None):
        self.new_to_old = check_permutation(new_to_old, "new_to_old")
        self.old_to_new = torch.empty_like(self.new_to_old)
        self.old_to_new[self.new_to_old] = torch.arange(self.new_to_old.numel())
        self.counts: Optional[Tensor] = None
        if counts is not None:
            c = check_class_counts(counts)
            if c.numel() != self.num_classes:
                raise ValueError(f"counts must have length num_classes={self.num_classes}, got {c.numel()}")
            self.counts = c[self.new_to_old]

    @classmethod
    def from_counts(cls, counts) -> "FrequencyOrder":
        """The order sorting ``counts`` [V] (tokenizer order, zeros allowed) by decreasing count, ties by id.

        Args:
            counts: ``[V]`` finite counts >= 0, not all zero.

        Examples::

            >>> FrequencyOrder.from_counts([1, 5, 5, 0]).new_to_old
            tensor([1, 2, 0, 3])
        """
        c = check_class_counts(counts)
        return cls(torch.sort(-c, stable=True).indices, counts=c)

    @property
    def num_classes(self) -> int:
        """V."""
        return int(self.new_to_old.numel())

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        return f"FrequencyOrder(num_classes={self.num_classes})"

    def _map(self, table: Tensor, ids: Tensor, ignore_index: Optional[int], name: str) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer torch.Tensor of class ids, got "
                            f"{type(ids).__name__ if not isinstance(ids, Tensor) else ids.dtype}")
        keep = ids != ignore_index if ignore_index is not None else None
        check = ids[keep] if keep is not None else ids
        if check.numel() and (int(check.min()) < 0 or int(check.max()) >= self.num_classes):
            raise ValueError(f"{name} must lie in [0, {self.num_classes - 1}]"
                             + (f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
                             + f", got values in [{int(check.min())}, {int(check.max())}]")
        t = table.to(ids.device)
        if keep is None:
            return t[ids.long()].to(ids.dtype)
        out = ids.clone()
        out[keep] = t[ids[keep].long()].to(ids.dtype)
        return out

    def encode(self, ids: Tensor, ignore_index: Optional[int] = None) -> Tensor:
        """Tokenizer ids -> frequency-sorted ids (any shape; entries equal to ``ignore_index`` pass through).

        Args:
            ids: integer tensor of ids in ``[0, V)``.
            ignore_index: a padding value to leave as it is, or None.

        Examples::

            >>> FrequencyOrder.from_counts([1, 5, 0]).encode(torch.tensor([[0, 1], [2, -100]]), ignore_index=-100)
            tensor([[   1,    0],
                    [   2, -100]])
        """
        return self._map(self.old_to_new, ids, ignore_index, "ids")

    def decode(self, ids: Tensor, ignore_index: Optional[int] = None) -> Tensor:
        """Frequency-sorted ids -> tokenizer ids (the inverse of :meth:`encode`).

        Args:
            ids: integer tensor of sorted ids in ``[0, V)``.
            ignore_index: a padding value to leave as it is, or None.

        Examples::

            >>> FrequencyOrder.from_counts([1, 5, 0]).decode(torch.tensor([0, 1, 2]))
            tensor([1, 0, 2])
        """
        return self._map(self.new_to_old, ids, ignore_index, "ids")

    def _rows_index(self, t, inverse: bool, name: str) -> Tensor:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor with one row per class, got {type(t).__name__}")
        if t.dim() == 0 or t.shape[0] != self.num_classes:
            raise ValueError(f"{name} must have num_classes={self.num_classes} rows (dim 0), got shape {tuple(t.shape)}")
        return (self.old_to_new if inverse else self.new_to_old).to(t.device)

    def remap_rows(self, rows: Tensor, inverse: bool = False) -> Tensor:
        """Per-class rows indexed by tokenizer id -> indexed by sorted id (``inverse=True``: back); a new tensor.

        ``out[i] = rows[new_to_old[i]]``: e.g. a pretrained embedding ``[V, d]`` or a bias ``[V]``.

        Args:
            rows: ``[V, ...]`` tensor, one row per class.
            inverse: map sorted-id rows back to tokenizer-id rows.

        Examples::

            >>> FrequencyOrder.from_counts([1, 5, 0]).remap_rows(torch.tensor([10., 50., 0.]))
            tensor([50., 10.,  0.])
        """
        idx = self._rows_index(rows, inverse, "rows")
        return rows.detach().index_select(0, idx)

    @torch.no_grad()
    def remap_(self, rows: Tensor, inverse: bool = False) -> Tensor:
        """:meth:`remap_rows` in place (e.g. ``order.remap_(head.weight)``); returns ``rows``.

        Args:
            rows: ``[V, ...]`` tensor or ``nn.Parameter``, one row per class.
            inverse: map sorted-id rows back to tokenizer-id rows.

        Examples::

            >>> w = torch.tensor([10., 50., 0.])
            >>> FrequencyOrder.from_counts([1, 5, 0]).remap_(w)
            tensor([50., 10.,  0.])
        """
        rows.copy_(rows.index_select(0, self._rows_index(rows, inverse, "rows")))
        return rows

    def remap_state_dict(self, state_dict: Dict[str, Tensor], keys: Iterable[str], inverse: bool = False) -> Dict:
        """A copy of ``state_dict`` whose entries ``keys`` (class rows, dim 0 = V) are remapped.

        E.g. a checkpoint trained on tokenizer ids, to load into a model trained on sorted ids:
        ``order.remap_state_dict(ckpt, ["emb.weight", "head.weight", "head.bias"])``.

        Args:
            state_dict: a ``module.state_dict()``.
            keys: the names of the per-class entries.
            inverse: map sorted-id rows back to tokenizer-id rows.

        Examples::

            >>> order = FrequencyOrder.from_counts([1, 5, 0])
            >>> order.remap_state_dict({"bias": torch.tensor([1., 5., 0.]), "scale": torch.ones(1)}, ["bias"])["bias"]
            tensor([5., 1., 0.])
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
        if isinstance(keys, str):
            keys = [keys]
        out = dict(state_dict)
        for k in keys:
            if k not in state_dict:
                raise ValueError(f"keys: {k!r} is not in state_dict (keys: {sorted(state_dict)[:10]})")
            out[k] = self.remap_rows(state_dict[k], inverse)
        return out

    def state_dict(self) -> Dict[str, Tensor]:
        """``{"new_to_old": [V] int64}`` (plus ``"counts"``, sorted, when known): save it with the model.

        Examples::

            >>> order = FrequencyOrder.from_counts([1, 5, 0])
            >>> FrequencyOrder.from_state_dict(order.state_dict()).new_to_old
            tensor([1, 0, 2])
        """
        out = {"new_to_old": self.new_to_old.clone()}
        if self.counts is not None:
            out["counts"] = self.counts.clone()
        return out

    @classmethod
    def from_state_dict(cls, state_dict: Dict[str, Tensor]) -> "FrequencyOrder":
        """The order saved by :meth:`state_dict`.

        Args:
            state_dict: ``{"new_to_old": ..., ["counts": sorted counts]}``.

        Examples::

            >>> FrequencyOrder.from_state_dict({"new_to_old": torch.tensor([1, 0])}).old_to_new
            tensor([1, 0])
        """
        if not isinstance(state_dict, dict) or "new_to_old" not in state_dict:
            raise ValueError("state_dict must be a FrequencyOrder.state_dict() (a dict with 'new_to_old')")
        order = cls(state_dict["new_to_old"])
        if state_dict.get("counts") is not None:
            c = check_class_counts(state_dict["counts"], "state_dict['counts']")
            if c.numel() != order.num_classes:
                raise ValueError(f"state_dict['counts'] must have length {order.num_classes}, got {c.numel()}")
            order.counts = c
        return order


def _floor_zero_counts(counts):
    """``smooth_counts(counts, mode="floor")`` when ``counts`` is a valid count vector holding zeros; else
    ``counts`` unchanged (so the head's own checks keep reporting every other problem)."""
    try:
        c = torch.as_tensor(counts, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        return counts
    if c.dim() != 1 or not bool(torch.isfinite(c).all()) or bool((c < 0).any()) or not bool((c > 0).any()):
        return counts
    return smooth_counts(c, mode="floor") if bool((c == 0).any()) else counts

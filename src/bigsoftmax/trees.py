"""Output-class trees for tree (hierarchical) softmax heads — pure data builders.

A tree factorises the class distribution: every internal node holds a softmax over its children
and the probability of a class (a leaf) is the product of the child probabilities along its path::

    P(c | h) = prod_{(n, j) on path(c)} softmax_j( z_n(h) )     with z_n(h) in R^{arity(n)}

The builders here only make the tree; :class:`bigsoftmax.heads.TreeSoftmax` holds the parameters.

* :func:`huffman` — binary or n-ary Huffman tree over class counts (word2vec / fastText); the
  expected path length ``sum_c p_c * depth(c)`` is minimal.
* :func:`balanced` — a complete ``arity``-ary tree of depth ``ceil(log_arity V)``.
* :func:`two_level` — Goodman's class-based factorisation ``P(c) = P(cluster) P(c | cluster)`` with
  Mikolov's sqrt-frequency binning (or equal frequency mass, or equal sizes).
* :func:`from_assignment` — a two-level tree from a user's ``cluster_of_class`` map.
* :func:`from_nested` — any tree written as nested lists of class ids, e.g. ``[[0, 1], [2, [3, 4]]]``.

Layout (see :class:`Tree`): internal nodes are numbered breadth-first (root = 0, parents before
children, each depth level a contiguous id range ``level_ptr[L]:level_ptr[L+1]``). The children
of all nodes form one flat table of *slots*, node-major: node ``n`` owns slots
``node_offset[n] : node_offset[n] + node_arity[n]``. A slot points at a class (leaf), an internal
node, or — only in n-ary Huffman trees — a zero-count *dummy* leaf (``slot_valid`` False). Dummies
pad the leaf count so that ``(leaves - 1) % (arity - 1) == 0``; heads mask them out of the node
softmax, so the real classes' probabilities still sum to 1. Internal nodes are numbered in slot
order, so the internal children of level ``L`` in slot order are exactly the nodes of level
``L + 1`` in id order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from ._validate import check_int_value as _check_int

__all__ = ["Tree", "huffman", "balanced", "two_level", "cluster_assignment", "from_assignment", "from_nested", "BINNINGS"]

#: binning rules of :func:`two_level`
BINNINGS = ("sqrt", "uniform", "size")


@dataclass(frozen=True, eq=False, repr=False)
class Tree:
    """A class tree in flat tensor form (all tensors int64 or bool, on CPU).

    Shapes: ``M`` internal nodes, ``S = sum(node_arity)`` child slots, ``V`` classes.

    Attributes:
        num_classes: V.
        node_arity: [M] number of child slots of each node (dummy slots included).
        node_offset: [M] first slot of each node (exclusive cumulative sum of ``node_arity``).
        node_depth: [M] depth of each node (root 0).
        node_parent_slot: [M] the slot that points at each node (-1 for the root).
        slot_node: [S] the node owning each slot.
        slot_child: [S] class id (leaf slot), node id (internal slot) or -1 (dummy slot).
        slot_is_leaf: [S] True where the slot holds a class.
        slot_valid: [S] False only for dummy slots.
        leaf_slot: [V] the slot holding each class.
        leaf_depth: [V] path length of each class (number of internal nodes on its path).
        level_ptr: node-id boundaries of the depth levels (length ``depth + 1``).
    """

    num_classes: int
    node_arity: Tensor
    node_offset: Tensor
    node_depth: Tensor
    node_parent_slot: Tensor
    slot_node: Tensor
    slot_child: Tensor
    slot_is_leaf: Tensor
    slot_valid: Tensor
    leaf_slot: Tensor
    leaf_depth: Tensor
    level_ptr: Tuple[int, ...]

    # ------------------------------------------------------------------ sizes
    @property
    def num_nodes(self) -> int:
        """Number of internal nodes M (each holds one softmax)."""
        return int(self.node_arity.shape[0])

    @property
    def num_slots(self) -> int:
        """Number of child slots S = sum of node arities (dummy slots included)."""
        return int(self.slot_node.shape[0])

    @property
    def num_dummies(self) -> int:
        """Number of dummy (padding) slots; non-zero only for some n-ary Huffman trees."""
        return int((~self.slot_valid).sum())

    @property
    def max_arity(self) -> int:
        """The largest number of children of a node."""
        return int(self.node_arity.max())

    @property
    def depth(self) -> int:
        """Maximum path length over the classes (= number of depth levels of internal nodes)."""
        return int(self.leaf_depth.max())

    @property
    def is_binary(self) -> bool:
        """True when every node has exactly two real children (the sigmoid form applies)."""
        return bool((self.node_arity == 2).all()) and bool(self.slot_valid.all())

    def expected_code_length(self, counts) -> float:
        """``sum_c counts[c] * depth(c) / sum_c counts[c]``: mean number of node softmaxes per
        example (for an ``a``-ary tree, the expected code length in ``a``-ary digits)."""
        c = _as_counts(counts, "counts", allow_zero=True)
        if c.shape[0] != self.num_classes:
            raise ValueError(f"counts must have length num_classes={self.num_classes}, got {c.shape[0]}")
        return float((c * self.leaf_depth.numpy()).sum() / c.sum())

    # ------------------------------------------------------------------ paths
    def path_slots(self, classes: Tensor, max_depth: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """Slots on the paths of ``classes`` [N], ordered leaf to root.

        Returns ``(slots [N, D], mask [N, D])`` with ``D`` the largest depth among ``classes``
        (or ``max_depth`` when given, e.g. ``tree.depth``: no host read of the classes' depths);
        ``slots[i, t]`` is the slot chosen at depth ``leaf_depth - 1 - t``; padded entries
        (``mask`` False) hold valid but meaningless slot ids. Works on any device of ``classes``
        when the tree tensors are given on the same device (heads keep them as buffers).
        """
        return _path_slots(classes, self.leaf_slot, self.leaf_depth, self.slot_node, self.node_parent_slot, max_depth)

    @cached_property
    def _root_paths(self) -> Tuple[Tensor, Tensor, Tensor]:
        slots, mask = self.path_slots(torch.arange(self.num_classes))
        d = self.leaf_depth
        D = slots.shape[1]
        # leaf-to-root -> root-to-leaf: position p holds the slot at depth p, i.e. t = depth - 1 - p
        t = (d[:, None] - 1 - torch.arange(D)[None, :]).clamp_min(0)
        s = slots.gather(1, t)
        m = torch.arange(D)[None, :] < d[:, None]
        node = torch.where(m, self.slot_node[s], 0)
        child = torch.where(m, s - self.node_offset[self.slot_node[s]], 0)
        return node, child, m

    @property
    def path_node(self) -> Tensor:
        """[V, D] node ids on each class's path, root first, padded with 0 (see ``path_mask``)."""
        return self._root_paths[0]

    @property
    def path_child(self) -> Tensor:
        """[V, D] child index taken at each node of the path (the code word), padded with 0."""
        return self._root_paths[1]

    @property
    def path_mask(self) -> Tensor:
        """[V, D] True on real path entries."""
        return self._root_paths[2]

    def __repr__(self) -> str:
        return (
            f"Tree(num_classes={self.num_classes}, num_nodes={self.num_nodes}, num_slots={self.num_slots}, "
            f"depth={self.depth}, max_arity={self.max_arity}, dummies={self.num_dummies})"
        )


def _path_slots(classes, leaf_slot, leaf_depth, slot_node, node_parent_slot, max_depth: Optional[int] = None):
    """See :meth:`Tree.path_slots`. ``max_depth`` (the tree's depth, a Python int) fixes ``D``
    without reading ``leaf_depth[classes].max()`` on the host (the sync-free path of the heads)."""
    s = leaf_slot[classes]
    depth = leaf_depth[classes]
    if max_depth is not None:
        D = max(1, int(max_depth))
    else:
        D = int(depth.max()) if depth.numel() else 1
    cols = [s]
    for _ in range(D - 1):
        s = node_parent_slot[slot_node[s]].clamp_min(0)  # the root's -1 is clamped; masked below
        cols.append(s)
    slots = torch.stack(cols, dim=1)
    mask = torch.arange(D, device=slots.device)[None, :] < depth[:, None]
    return slots, mask


# ---------------------------------------------------------------------- validation helpers
def _as_counts(counts, name: str = "counts", allow_zero: bool = False) -> np.ndarray:
    """counts as a float64 numpy vector of length >= 2, finite and positive (or >= 0)."""
    if isinstance(counts, Tensor):
        if counts.dtype == torch.bool or counts.dtype.is_complex:
            raise TypeError(f"{name} must be a real-valued vector, got dtype {counts.dtype}")
        arr = counts.detach().cpu().double().numpy()
    else:
        try:
            arr = np.asarray(counts)
        except Exception as e:  # pragma: no cover - exotic input
            raise TypeError(f"{name} must be a 1-D sequence of numbers: {e}") from None
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"{name} must be a 1-D sequence of numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one count per class), got shape {tuple(arr.shape)}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} must have at least 2 entries (num_classes >= 2), got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name} must be finite, got {name}[{i}] = {arr[i]}")
    bad = arr < 0 if allow_zero else arr <= 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        need = "non-negative" if allow_zero else "positive (> 0)"
        raise ValueError(f"{name} must be {need}, got {name}[{i}] = {arr[i]:g}")
    if allow_zero and arr.sum() <= 0:
        raise ValueError(f"{name} must not be all zero")
    return arr


def _as_int_vector(x, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer ids, got dtype {x.dtype}")
        arr = x.detach().cpu().numpy().astype(np.int64)
    else:
        arr = np.asarray(x)
        if arr.dtype == bool or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"{name} must hold integer ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    return arr


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + lengths[i])`` over i."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)


# ---------------------------------------------------------------------- the common finaliser
def _finalize(num_classes: int, arity: np.ndarray, child_code: np.ndarray, root: int) -> Tree:
    """Build a :class:`Tree` from nodes in any order.

    arity: [M] children per node; child_code: the children of node 0, then node 1, ... with codes
    ``c`` in [0, V) for class c, ``V + j`` for internal node j, ``-1`` for a dummy leaf.
    Renumbers nodes breadth-first and checks that the result is a tree holding every class once.
    """
    V = num_classes
    arity = np.asarray(arity, dtype=np.int64)
    child_code = np.asarray(child_code, dtype=np.int64)
    M = arity.shape[0]
    if (arity < 1).any():
        raise ValueError("every internal node needs at least one child")
    off = np.concatenate([[0], np.cumsum(arity)[:-1]]).astype(np.int64)

    refs = np.bincount(child_code[child_code >= V] - V, minlength=M)
    refs[root] += 1
    if refs.shape[0] != M or (refs != 1).any():
        raise ValueError("not a tree: every internal node but the root must be the child of exactly one node")
    new_of_old = np.full(M, -1, dtype=np.int64)
    order, level_ptr = [], [0]
    frontier = np.array([root], dtype=np.int64)
    count = 0
    while frontier.size:  # no node is visited twice: each has exactly one parent (checked above)
        new_of_old[frontier] = np.arange(count, count + frontier.size)
        count += frontier.size
        order.append(frontier)
        level_ptr.append(count)
        codes = child_code[_ranges(off[frontier], arity[frontier])]
        frontier = codes[codes >= V] - V
    if count != M:
        raise ValueError(f"not a tree: {M - count} internal node(s) unreachable from the root")
    order = np.concatenate(order)

    node_arity = arity[order]
    node_offset = np.concatenate([[0], np.cumsum(node_arity)[:-1]]).astype(np.int64)
    codes = child_code[_ranges(off[order], node_arity)]
    S = codes.shape[0]
    slot_node = np.repeat(np.arange(M, dtype=np.int64), node_arity)
    is_leaf = (codes >= 0) & (codes < V)
    is_internal = codes >= V
    valid = codes >= 0
    slot_child = np.where(is_internal, new_of_old[np.where(is_internal, codes - V, 0)], codes)
    slot_child = np.where(valid, slot_child, -1)

    seen = np.bincount(codes[is_leaf], minlength=V)
    if (seen != 1).any():
        miss = np.flatnonzero(seen == 0)
        dup = np.flatnonzero(seen > 1)
        raise ValueError(
            "not a tree over all classes: "
            + (f"class {int(dup[0])} appears twice" if dup.size else f"class {int(miss[0])} has no leaf")
        )
    node_depth = np.repeat(np.arange(len(level_ptr) - 1, dtype=np.int64), np.diff(level_ptr))
    node_parent_slot = np.full(M, -1, dtype=np.int64)
    node_parent_slot[slot_child[is_internal]] = np.flatnonzero(is_internal)
    leaf_slot = np.empty(V, dtype=np.int64)
    leaf_slot[slot_child[is_leaf]] = np.flatnonzero(is_leaf)
    leaf_depth = node_depth[slot_node[leaf_slot]] + 1

    t = torch.from_numpy
    return Tree(
        num_classes=V,
        node_arity=t(node_arity),
        node_offset=t(node_offset),
        node_depth=t(node_depth),
        node_parent_slot=t(node_parent_slot),
        slot_node=t(slot_node),
        slot_child=t(slot_child),
        slot_is_leaf=t(is_leaf),
        slot_valid=t(valid),
        leaf_slot=t(leaf_slot),
        leaf_depth=t(leaf_depth),
        level_ptr=tuple(int(x) for x in level_ptr),
    )


# ---------------------------------------------------------------------- builders
def huffman(counts, arity: int = 2) -> Tree:
    """Huffman tree over class ``counts`` [V] (all > 0), ``arity`` >= 2 children per node.

    Minimises the expected path length ``sum_c p_c depth(c)``, so frequent classes get short
    paths (word2vec's ``CreateBinaryTree``, fastText's ``buildTree``). O(V log V) (a sort, then the
    linear two-queue merge). For ``arity > 2`` the leaves are padded with
    ``r = (1 - V) mod (arity - 1)`` zero-count dummy leaves so that every merge takes exactly
    ``arity`` items (the standard n-ary Huffman rule); all dummies land in the deepest node and
    are marked ``slot_valid = False`` so heads mask them. Ties are broken towards leaves and lower
    class ids, which makes the tree deterministic. Child 0 of a node is its lightest child.
    """
    arity = _check_int(arity, "arity", 2)
    c = _as_counts(counts, "counts")
    V = c.shape[0]
    r = (-(V - 1)) % (arity - 1)
    order = np.argsort(c, kind="stable")
    if np.all(np.mod(c, 1) == 0) and c.max() < 2**53:
        w_leaf = [0] * r + [int(x) for x in c[order]]  # exact integer sums
    else:
        w_leaf = [0.0] * r + c[order].tolist()
    code_leaf = [-1] * r + order.tolist()
    n_leaves = V + r
    n_merge = (n_leaves - 1) // (arity - 1)
    w_node: list = []
    child_code: list = []
    add_child, add_node = child_code.append, w_node.append
    w_leaf.append(math.inf)  # sentinel: the leaf queue never runs dry inside the loop
    i = j = 0
    for m in range(n_merge):
        w = 0
        for _ in range(arity):
            # merged nodes j < m exist; take the lighter queue front (ties go to leaves)
            if j >= m or w_leaf[i] <= w_node[j]:
                add_child(code_leaf[i])
                w += w_leaf[i]
                i += 1
            else:
                add_child(V + j)
                w += w_node[j]
                j += 1
        add_node(w)
    return _finalize(V, np.full(n_merge, arity, dtype=np.int64), np.asarray(child_code, dtype=np.int64), n_merge - 1)


def balanced(num_classes: int, arity: int = 2) -> Tree:
    """Complete ``arity``-ary tree over classes 0..V-1 in id order, depth ``ceil(log_arity V)``.

    Each node splits its contiguous class range into ``min(arity, size)`` near-equal parts; a part
    of one class is a leaf. No dummies: nodes near the bottom may have fewer than ``arity``
    children (a binary ``balanced`` tree always has exactly 2 per node).
    """
    V = _check_int(num_classes, "num_classes", 2)
    a = _check_int(arity, "arity", 2)
    lo = np.array([0], dtype=np.int64)
    size = np.array([V], dtype=np.int64)
    next_id = 1
    arities, codes = [], []
    while lo.size:
        m = np.minimum(a, size)
        k = _ranges(np.zeros_like(m), m)  # part index within its node
        node = np.repeat(np.arange(lo.size), m)
        start = lo[node] + (k * size[node]) // m[node]
        stop = lo[node] + ((k + 1) * size[node]) // m[node]
        part = stop - start
        internal = part > 1
        code = np.where(internal, 0, start)
        n_int = int(internal.sum())
        code[internal] = V + next_id + np.arange(n_int)
        next_id += n_int
        arities.append(m)
        codes.append(code)
        lo, size = start[internal], part[internal]
    return _finalize(V, np.concatenate(arities), np.concatenate(codes), 0)


def from_assignment(cluster_of_class) -> Tree:
    """Two-level tree from a user's clustering: ``cluster_of_class`` [V] ints in [0, C).

    The root has C children (clusters 0..C-1), cluster ``k`` has the classes assigned to it as
    children in increasing id order: ``P(c) = P(k | root) P(c | k)`` (Goodman 2001). Every
    cluster id in 0..C-1 must be used.
    """
    a = _as_int_vector(cluster_of_class, "cluster_of_class")
    V = a.shape[0]
    if V < 2:
        raise ValueError(f"cluster_of_class must have at least 2 entries (num_classes >= 2), got {V}")
    if a.min() < 0:
        raise ValueError(f"cluster_of_class must hold cluster ids >= 0, got {int(a.min())}")
    C = int(a.max()) + 1
    sizes = np.bincount(a, minlength=C)
    if (sizes == 0).any():
        k = int(np.flatnonzero(sizes == 0)[0])
        raise ValueError(
            f"cluster_of_class must use every cluster id in [0, {C}): cluster {k} is empty "
            "(renumber the clusters contiguously)"
        )
    members = np.argsort(a, kind="stable")
    arity = np.concatenate([[C], sizes]).astype(np.int64)
    codes = np.concatenate([V + 1 + np.arange(C), members]).astype(np.int64)
    return _finalize(V, arity, codes, 0)


def cluster_assignment(counts, num_clusters: Optional[int] = None, binning: str = "sqrt") -> np.ndarray:
    """Frequency binning used by :func:`two_level`: returns ``cluster_of_class`` [V] (numpy int64).

    Classes are sorted by decreasing count (ties by id) and cut into ``num_clusters`` contiguous
    bins (default ``round(sqrt(V))``) of equal mass, where a class weighs ``sqrt(count)`` for
    ``binning='sqrt'`` (Mikolov et al. 2011), ``count`` for ``'uniform'`` (equal share of the
    frequency mass) and 1 for ``'size'`` (equal numbers of classes). Class ``i`` in sorted order
    goes to bin ``floor(C * mass_before_i / total)``, clamped so that no bin is empty: there are
    always exactly C non-empty bins.
    """
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")
    c = _as_counts(counts, "counts")
    V = c.shape[0]
    C = max(1, int(round(math.sqrt(V)))) if num_clusters is None else _check_int(num_clusters, "num_clusters", 1, V)
    order = np.argsort(-c, kind="stable")
    mass = {"sqrt": np.sqrt(c[order]), "uniform": c[order], "size": np.ones(V)}[binning]
    before = np.cumsum(mass) - mass
    g = np.minimum(np.floor(C * before / mass.sum()).astype(np.int64), C - 1)
    idx = np.arange(V, dtype=np.int64)
    f = np.maximum(g, C - V + idx)  # leave at least one class for each later bin
    sorted_ids = np.minimum.accumulate(f - idx) + idx  # id_i = min(f_i, id_{i-1} + 1): no bin skipped
    out = np.empty(V, dtype=np.int64)
    out[order] = sorted_ids
    return out


def two_level(counts, num_clusters: Optional[int] = None, binning: str = "sqrt") -> Tree:
    """Class-based two-level tree (Goodman 2001; Mikolov et al. 2011).

    ``counts`` [V] > 0. The clusters come from :func:`cluster_assignment` (sqrt-frequency binning
    by default, ``num_clusters`` defaults to ``round(sqrt(V))``), then :func:`from_assignment`.
    A step costs O(C + |cluster|) scores per example instead of O(V).
    """
    return from_assignment(cluster_assignment(counts, num_clusters, binning))


def from_nested(structure: Sequence) -> Tree:
    """Tree written as nested lists: ints are classes, lists are internal nodes.

    ``from_nested([[0, 1], [2, [3, 4]]])`` has a root with two children, the second of which
    holds class 2 and a node over classes 3 and 4. The classes must be exactly 0..V-1, V >= 2.
    Handy for hand-made hierarchies (e.g. from a taxonomy).
    """
    if not isinstance(structure, (list, tuple)):
        raise TypeError(f"structure must be a (nested) list of class ids, got {type(structure).__name__}")
    nodes = [structure]
    arity, codes_raw = [], []
    k = 0
    while k < len(nodes):  # breadth-first; internal nodes are referenced by their list index
        node = nodes[k]
        if len(node) == 0:
            raise ValueError("structure has an empty list: every internal node needs at least one child")
        arity.append(len(node))
        for ch in node:
            if isinstance(ch, (list, tuple)):
                codes_raw.append(("n", len(nodes)))
                nodes.append(ch)
            elif isinstance(ch, (int, np.integer)) and not isinstance(ch, bool):
                if ch < 0:
                    raise ValueError(f"structure holds class id {int(ch)} < 0")
                codes_raw.append(("c", int(ch)))
            else:
                raise TypeError(f"structure may hold only ints (classes) and lists (nodes), got {type(ch).__name__}")
        k += 1
    V = sum(1 for kind, _ in codes_raw if kind == "c")
    if V < 2:
        raise ValueError(f"structure must hold at least 2 classes, got {V}")
    bad = [x for kind, x in codes_raw if kind == "c" and x >= V]
    if bad:
        raise ValueError(f"structure holds {V} classes, so ids must be in [0, {V}); got {bad[0]}")
    codes = [x if kind == "c" else V + x for kind, x in codes_raw]
    return _finalize(V, np.asarray(arity), np.asarray(codes), 0)

"""Tree softmax heads: hierarchical (Huffman) softmax, class-based softmax, any class tree.

A :class:`~bigsoftmax.trees.Tree` gives every class a path of (node, child) pairs from the root;
every internal node ``n`` holds a softmax over its children, so (Morin & Bengio 2005; Goodman 2001;
Mikolov et al. 2013)::

    log P(c | h) = sum_{(n, j) on path(c)} log softmax_j( z_n(h) ),   z_n(h)_j = h . w_{n,j} + b_{n,j}

which is a normalised distribution over the V classes by construction.

Parameterisations (``parameterization=``):

* ``'softmax'`` (general, any arity): one flat table ``weight [S, d]``, ``bias [S]`` with one row
  per child *slot*; node ``n`` owns rows ``node_offset[n] : node_offset[n] + node_arity[n]``, so
  nodes of different arity waste nothing. Dummy slots of n-ary Huffman trees keep a row (at most
  ``arity - 2`` in the whole tree) that is masked out of the node softmax and never trained.
* ``'sigmoid'`` (binary trees only; word2vec / fastText): one vector per internal node,
  ``weight [M, d]``, ``bias [M]``, ``P(child 0) = sigmoid(z_n)``, ``P(child 1) = sigmoid(-z_n)``
  with ``z_n = h . w_n + b_n``. This is the 2-way softmax with logits ``(z_n, 0)``: the same family
  with the redundant degree of freedom removed.
* ``'auto'`` (default): ``'sigmoid'`` when every node has exactly two real children, else ``'softmax'``.

Costs with N rows, depth D, arity A, width d:

* training / ``target_log_prob``: O(N * D * A * d), no [N, V] and no Python loop over examples;
  one custom autograd function per step (:class:`bigsoftmax.ops.tree.PathLogProb`), so the weight gradient is built once
  (dense, or sparse with ``sparse=True``). A node visited by ``c`` examples of the batch with
  ``a`` children is scored by one GEMM over its rows when ``(c - 1) * a * d >= group_threshold``
  (default 65536: the root and the popular clusters of a class-based tree, the top of a Huffman
  tree); all other (example, node) pairs are scored by a chunked gather-dot per arity bucket
  (memory O(chunk), never O(N * D * A * d)). The Python loop runs over those popular nodes only.
* training on an accelerator / under ``torch.compile`` (``_validate.sync_free``): no host read;
  every row gets ``tree.depth`` pairs (padding masked) and the grouping above is replaced by a
  static plan (the root: one GEMM over all rows; the nodes below: one gather padded to the widest
  of them), so O(N * depth * max_arity * d): more than the CPU path for unbalanced trees (long
  Huffman codes, class-based trees with a few large clusters), the price of a fixed shape.
* ``log_prob``: exact [N, V], level by level (node log-probs, then children), O(N * S * d).
* ``topk``: exact. A beam search (per row, the best nodes holding >= k classes) gives k real
  leaves, whose k-th log-prob ``t`` is a lower bound on the true k-th best; then a level-synchronous branch-and-bound over all rows at
  once keeps every (row, node) pair with ``log P(node) >= max(t, k-th best leaf found)`` —
  exact, because log-probs only decrease down a path (fastText's ``findKBest`` prune). Cost
  O(#surviving (row, node) pairs * A * d); a chunk whose frontier would cost more than a dense pass
  falls back to the dense ``log_prob`` + ``topk`` (still exact).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .. import trees as T
from .._validate import sync_free
from ..ops._opaque import bound_handle, call_opaque
from ..ops.tree import Part as _Part
from ..ops.tree import PathLogProb as _PathLogProb
from ..ops.tree import acc_dtype as _acc
from ..ops.tree import gather_scores as _gather_scores
from ..ops.tree import grouped_scores as _grouped_scores
from ..ops.tree import mask_value as _neg
from ._init import init_class_rows
from .base import Head
from .rows import ClassRowsMixin
from ..vocab import _floor_zero_counts

__all__ = ["TreeSoftmax", "HierarchicalSoftmax", "ClassBasedSoftmax", "segment_log_softmax"]

#: elements of an [n, S] block in the dense level-wise ``log_prob``
_DENSE_ELEMS = 1 << 23

_PARAMETERIZATIONS = ("auto", "softmax", "sigmoid")


def segment_log_softmax(z: Tensor, group: Tensor, num_groups: int, valid: Optional[Tensor] = None) -> Tensor:
    """Log-softmax of ``z`` [n, R] within column groups: ``group`` [R] in [0, num_groups).

    ``valid`` [R] bool masks columns out of their group's normaliser (dummy children); their
    output is the most negative finite value. The group max is detached (it cancels exactly), so
    the gradient is the exact log-softmax gradient. Computed in ``z``'s dtype (callers pass fp32+).
    """
    n, R = z.shape
    neg = _neg(z.dtype)
    zm = z if valid is None else torch.where(valid, z, neg)
    idx = group.expand(n, R)
    m = z.new_full((n, num_groups), neg).scatter_reduce(1, idx, zm.detach(), "amax", include_self=True)
    e = torch.exp(zm - m.index_select(1, group))
    if valid is not None:
        e = torch.where(valid, e, 0.0)
    s = z.new_zeros(n, num_groups).index_add(1, group, e)
    out = zm - (m + s.log()).index_select(1, group)
    return out if valid is None else torch.where(valid, out, neg)


def _merge_topk(best_v: Tensor, best_i: Tensor, rows: Tensor, ids: Tensor, vals: Tensor, k: int):
    """Per-row top-k of the union of ``best`` [n, k] and candidates (rows [Q], ids [Q], vals [Q])."""
    n = best_v.shape[0]
    all_r = torch.cat([torch.arange(n, device=rows.device).repeat_interleave(k), rows])
    all_v = torch.cat([best_v.reshape(-1), vals])
    all_i = torch.cat([best_i.reshape(-1), ids])
    order = _row_major_desc(all_r, all_v)
    r = all_r[order]
    counts = torch.bincount(r, minlength=n)
    rank = torch.arange(order.numel(), device=rows.device) - (counts.cumsum(0) - counts)[r]
    # every row has >= k entries (the k old ones), so exactly k survive per row, in row-major order
    sel = order[rank < k]
    return all_v[sel].view(n, k), all_i[sel].view(n, k)


def _row_major_desc(rows: Tensor, vals: Tensor) -> Tensor:
    """Permutation sorting by (row ascending, value descending)."""
    o = torch.argsort(vals, descending=True, stable=True)
    return o[torch.argsort(rows[o], stable=True)]


def _fill_in_row(rows: Tensor, vals: Tensor, sizes: Tensor, n: int, k: int) -> Tensor:
    """Per row, keep entries in decreasing ``vals`` while the sizes of the better ones sum to < k."""
    order = _row_major_desc(rows, vals)
    r = rows[order]
    sz = sizes[order]
    excl = sz.cumsum(0) - sz
    counts = torch.bincount(r, minlength=n)
    start = counts.cumsum(0) - counts
    keep = torch.empty_like(rows, dtype=torch.bool)
    keep[order] = (excl - excl[start[r]]) < k
    return keep


#: the tree's tensors, persistent buffers of every tree head (checked on ``load_state_dict``)
_TREE_BUFFERS = ("node_arity", "node_offset", "node_parent_slot", "slot_node", "slot_child", "slot_is_leaf",
                 "slot_valid", "leaf_slot", "leaf_depth")


# ----------------------------------------------------------------------------- the head
class TreeSoftmax(ClassRowsMixin, Head):
    """Softmax factorised over a class tree (see the module docstring for formulas and costs).

    Args:
        in_features: d.
        tree: a :class:`bigsoftmax.trees.Tree` (``huffman``, ``balanced``, ``two_level``,
            ``from_assignment``, ``from_nested``); V = ``tree.num_classes``.
        bias: learn a bias per child slot (softmax) or per node (sigmoid).
        parameterization: ``'auto'`` | ``'softmax'`` | ``'sigmoid'`` (binary trees only).
        sparse: weight and bias get sparse COO gradients in training (use
            :func:`bigsoftmax.optim.make_optimizer`); listed by :meth:`sparse_parameters`.
        ignore_index, reduction: as ``nn.CrossEntropyLoss``.

    Parameters: ``weight [R, d]`` (``R = tree.num_slots`` for softmax, ``tree.num_nodes`` for
    sigmoid), initialised N(0, 1/d); ``bias [R]`` zeros. The tree tensors are buffers in the
    ``state_dict``: loading a checkpoint of another tree raises ``RuntimeError`` ("different tree");
    a weights-only checkpoint (without them) loads with the head's current tree.
    Tunables (attributes): ``group_threshold`` (GEMM-per-node vs gather switch, see
    :meth:`_parts`), ``topk_rows`` (rows per top-k chunk, default 256) and
    ``topk_dense_fraction`` (a top-k chunk whose frontier costs more than this fraction of a
    dense pass falls back to dense ``log_prob`` + ``topk``, default 0.1).

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> tree = bigsoftmax.trees.balanced(1000, 10)
        >>> head = TreeSoftmax(32, tree)
        >>> loss = head(torch.randn(8, 32), torch.randint(0, 1000, (8,)))
        >>> logp, ids = head.topk(torch.randn(8, 32), 5)
    """

    def __init__(self, in_features: int, tree: T.Tree, bias: bool = True, parameterization: str = "auto",
                 sparse: bool = False, ignore_index: int = -100, reduction: str = "mean"):
        if not isinstance(tree, T.Tree):
            raise TypeError(f"tree must be a bigsoftmax.trees.Tree (e.g. trees.huffman(counts)), got {type(tree).__name__}")
        super().__init__(in_features, tree.num_classes, ignore_index, reduction)
        if parameterization not in _PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {_PARAMETERIZATIONS}, got {parameterization!r}")
        if parameterization == "auto":
            parameterization = "sigmoid" if tree.is_binary else "softmax"
        if parameterization == "sigmoid" and not tree.is_binary:
            raise ValueError("parameterization='sigmoid' needs a binary tree (every node exactly 2 real children); "
                             f"this tree has max_arity={tree.max_arity} and {tree.num_dummies} dummy slot(s)")
        self.tree = tree
        self.parameterization = parameterization
        self.sigmoid = parameterization == "sigmoid"
        self.sparse = bool(sparse)
        rows = tree.num_nodes if self.sigmoid else tree.num_slots
        self._init_rows(nn.Parameter(torch.empty(rows, in_features)), nn.Parameter(torch.zeros(rows)) if bias else None,
                        self.sparse)
        self.reset_parameters()
        for name in _TREE_BUFFERS:
            self.register_buffer(name, getattr(tree, name))
        off = tree.node_offset.tolist() + [tree.num_slots]
        self.level_ptr = tree.level_ptr
        self.level_slot_ptr = tuple(off[p] for p in tree.level_ptr)
        self._has_dummies = tree.num_dummies > 0
        # the fixed-shape (host-sync-free) path kernel's plan: Python ints read once here, from the CPU tree
        self._max_depth = tree.depth
        self._root_arity = int(tree.node_arity[0])
        below = tree.node_arity[1:]
        self._below_arity = int(below.max()) if below.numel() else 0
        self._below_ragged = bool(below.numel()) and (bool((below != self._below_arity).any())
                                                      or not bool(tree.slot_valid[self._root_arity:].all()))
        self._level_plan = self._make_level_plan()
        # number of classes below each node (the beam keeps just enough nodes to hold k classes)
        leaves = torch.zeros(tree.num_nodes, dtype=torch.long)
        for L in range(len(tree.level_ptr) - 2, -1, -1):
            s0, s1 = self.level_slot_ptr[L], self.level_slot_ptr[L + 1]
            kid = tree.slot_child[s0:s1]
            inner = tree.slot_valid[s0:s1] & ~tree.slot_is_leaf[s0:s1]
            w = torch.where(inner, leaves[torch.where(inner, kid, 0)], tree.slot_is_leaf[s0:s1].long())
            leaves.index_add_(0, tree.slot_node[s0:s1], w)
        self.register_buffer("node_leaves", leaves, persistent=False)
        self.group_threshold = 1 << 16
        self.topk_rows = 256
        self.topk_dense_fraction = 0.1

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # the tree travels in the state dict: refuse a checkpoint of another tree before anything is copied
        for name in _TREE_BUFFERS:
            saved, mine = state_dict.get(prefix + name), getattr(self, name)
            if saved is None or mine.device.type == "meta":
                continue
            if not isinstance(saved, Tensor) or tuple(saved.shape) != tuple(mine.shape) \
                    or not torch.equal(saved.to(device=mine.device, dtype=mine.dtype), mine):
                raise RuntimeError(
                    f"{type(self).__name__}.load_state_dict: the state_dict holds a different tree ({prefix}{name} "
                    f"differs: shape {tuple(saved.shape) if isinstance(saved, Tensor) else type(saved).__name__} vs "
                    f"{tuple(mine.shape)} here); build the head from the same tree (or counts) that wrote it")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # a weights-only checkpoint (from before the tree was saved) loads with the current tree
        for name in _TREE_BUFFERS:
            if prefix + name not in state_dict and prefix + name in missing_keys:
                missing_keys.remove(prefix + name)

    def _make_level_plan(self):
        """How the dense ``log_prob`` normalises each level: 'uniform' (one reshape), 'slices'
        (a loop over few wide nodes) or 'segment' (scatter-based, any layout, masks dummies)."""
        t, plan = self.tree, []
        for L in range(len(t.level_ptr) - 1):
            n0, n1 = t.level_ptr[L], t.level_ptr[L + 1]
            s0, s1 = self.level_slot_ptr[L], self.level_slot_ptr[L + 1]
            ar = t.node_arity[n0:n1]
            dummies = not bool(t.slot_valid[s0:s1].all())
            if self.sigmoid:
                plan.append(("sigmoid",))
            elif not dummies and bool((ar == ar[0]).all()):
                plan.append(("uniform", int(ar[0])))
            elif not dummies and (n1 - n0 <= 64 or (s1 - s0) >= 64 * (n1 - n0)):
                offs = (t.node_offset[n0:n1] - s0).tolist()
                plan.append(("slices", tuple(zip(offs, ar.tolist()))))
            else:
                plan.append(("segment",))
        return plan

    def reset_parameters(self) -> None:
        """Re-initialise ``weight`` N(0, 1/d) and ``bias`` 0 (the default of :func:`heads._init.init_class_rows`)."""
        init_class_rows(self.weight, self.bias)  # the default scheme: N(0, 1/d), bias 0

    def sparse_parameters(self):
        """Parameters that receive sparse gradients (for :mod:`bigsoftmax.optim`)."""
        return [p for p in (self.weight, self.bias) if p is not None] if self.sparse else []

    def extra_repr(self) -> str:
        t = self.tree
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, num_nodes={t.num_nodes}, "
                f"depth={t.depth}, max_arity={t.max_arity}, parameterization={self.parameterization!r}, "
                f"bias={self.bias is not None}, sparse={self.sparse}")

    # ------------------------------------------------------------- scoring (row, node) pairs
    def _parts(self, rows: Tensor, nodes: Tensor) -> List[_Part]:
        """Split (row, node) pairs into parts scored the same way.

        A node visited by ``c`` pairs with ``a`` children is scored *grouped* (one GEMM reading its
        ``a`` weight rows once, one Python iteration) when the gathers it saves,
        ``(c - 1) * a * d``, reach ``group_threshold`` (default 65536 elements); the other pairs
        are scored by the fused gather-dot, bucketed by ``ceil(2 * log2(a))`` so that padding to
        the bucket's widest node adds at most 41% work. Sigmoid trees always gather (one row per
        pair).
        """
        if self.sigmoid:
            return [_Part("sigmoid", None, rows, nodes[:, None])]
        ar = self.node_arity[nodes]
        cnt = torch.bincount(nodes, minlength=self.tree.num_nodes)[nodes]
        grouped = (cnt - 1) * ar * self.in_features >= self.group_threshold
        bucket = torch.where(grouped, -1, torch.ceil(2 * torch.log2(ar.to(torch.float32))).long())
        labels = torch.unique(bucket).tolist()
        parts = []
        for lab in labels:
            sel = None if len(labels) == 1 else (bucket == lab).nonzero().squeeze(1)
            r, nd = (rows, nodes) if sel is None else (rows[sel], nodes[sel])
            if lab >= 0:
                off, a = self.node_offset[nd], self.node_arity[nd]
                j = torch.arange(int(a.max()), device=nd.device)
                ok = j < a[:, None]
                index = off[:, None] + torch.where(ok, j, 0)
                if self._has_dummies:
                    ok = ok & self.slot_valid[index]
                parts.append(_Part("gather", sel, r, index, None if bool(ok.all()) else ok))
            else:
                order = torch.argsort(nd, stable=True)
                sel = order if sel is None else sel[order]
                r, nd = r[order], nd[order]
                uniq, counts = torch.unique_consecutive(nd, return_counts=True)
                parts.append(_Part("grouped", sel, r, offs=tuple(self.node_offset[uniq].tolist()),
                                   counts=tuple(counts.tolist()), arities=tuple(self.node_arity[uniq].tolist())))
        return parts

    # ------------------------------------------------------------- training / target log-prob
    def _loss(self, h: Tensor, y: Tensor) -> Tensor:
        return -self._target_log_prob(h, y)

    def _target_log_prob(self, h: Tensor, y: Tensor) -> Tensor:
        """log P(y | h) = sum over the path of the chosen child's log-softmax: [N, d], [N] -> [N]."""
        if torch.compiler.is_compiling() and not self.sparse:
            # the path kernel picks its parts from the data: one opaque op under torch.compile
            return call_opaque(self._path_handle(), [h, self.weight, self.bias, y])[0]
        return self._path_log_prob(h, self.weight, self.bias, y)

    @torch.compiler.assume_constant_result
    def _path_handle(self) -> int:
        return bound_handle(self, "path_log_prob", lambda m: m._path_log_prob, lambda m: m._path_log_prob_fake)

    def _path_log_prob(self, h: Tensor, weight: Tensor, bias: Optional[Tensor], y: Tensor) -> Tensor:
        """The eager path kernel on the given parameters: [N, d], [R, d], [R] | None, [N] -> [N]."""
        if sync_free(h):
            return self._path_log_prob_fixed(h, weight, bias, y)
        slots, mask = T._path_slots(y, self.leaf_slot, self.leaf_depth, self.slot_node, self.node_parent_slot)
        rows, pos = mask.nonzero(as_tuple=True)  # (row, depth) pairs, row-major
        s = slots[rows, pos]
        nodes = self.slot_node[s]
        child = s - self.node_offset[nodes]
        valid = self.slot_valid if self._has_dummies else None
        return _PathLogProb.apply(h, weight, bias, self._parts(rows, nodes), child, valid, self.sparse)

    def _path_log_prob_fixed(self, h: Tensor, weight: Tensor, bias: Optional[Tensor], y: Tensor) -> Tensor:
        """The path kernel without a host read (accelerators, ``torch.compile``, :func:`force_sync_free`).

        Every row gets ``D = tree.depth`` (row, depth) pairs, root first; the pairs beyond a row's
        path are padding, masked to add exactly 0 (:class:`~bigsoftmax.ops.tree.Part` ``keep``).
        Sigmoid trees: one gather part over the ``N * D`` pairs. Softmax trees: the root (on every
        path) is one GEMM over all rows; the pairs below it are one gather part padded to the widest
        non-root node. Same numbers as the data-dependent CPU path (up to summation order); it
        costs O(N * D_max * A_max * d) instead of O(sum of path lengths * A * d) there, and no
        per-node GEMM grouping of popular nodes below the root.
        """
        N, D = y.shape[0], self._max_depth
        dev = y.device
        slots, _ = T._path_slots(y, self.leaf_slot, self.leaf_depth, self.slot_node, self.node_parent_slot, D)
        depth = self.leaf_depth[y]
        p = torch.arange(D, device=dev)
        keep = p < depth[:, None]  # [N, D], root first
        s = slots.gather(1, (depth[:, None] - 1 - p).clamp_min(0))  # leaf-to-root -> root-first
        nodes = self.slot_node[s]
        child = (s - self.node_offset[nodes]).reshape(-1)
        rows = torch.arange(N, device=dev)
        valid = self.slot_valid if self._has_dummies else None
        if self.sigmoid:
            part = _Part("sigmoid", None, rows[:, None].expand(N, D).reshape(-1), nodes.reshape(-1, 1),
                         keep=keep.reshape(-1))
            return _PathLogProb.apply(h, weight, bias, [part], child, valid, self.sparse)
        parts = [_Part("grouped", rows * D, rows, offs=(0,), counts=(N,), arities=(self._root_arity,))]
        if D > 1:
            nd = nodes[:, 1:].reshape(-1)
            off, a = self.node_offset[nd], self.node_arity[nd]
            j = torch.arange(self._below_arity, device=dev)
            ok = j < a[:, None]
            index = off[:, None] + torch.where(ok, j, 0)
            if self._has_dummies:
                ok = ok & self.slot_valid[index]
            sel = (rows[:, None] * D + p[1:]).reshape(-1)
            parts.append(_Part("gather", sel, rows[:, None].expand(N, D - 1).reshape(-1), index,
                               ok if self._below_ragged else None, keep=keep[:, 1:].reshape(-1)))
        return _PathLogProb.apply(h, weight, bias, parts, child, valid, self.sparse)

    def _path_log_prob_fake(self, h: Tensor, weight: Tensor, bias: Optional[Tensor], y: Tensor) -> Tensor:
        return h.new_empty(h.shape[0], dtype=_acc(torch.promote_types(h.dtype, weight.dtype)))

    # ------------------------------------------------------------- dense exact log-probabilities
    def _level_cond(self, h: Tensor, level: int) -> Tensor:
        """[n, slots of level] log-probabilities of each child given its parent."""
        acc = _acc(h.dtype)
        n0, n1 = self.level_ptr[level], self.level_ptr[level + 1]
        s0, s1 = self.level_slot_ptr[level], self.level_slot_ptr[level + 1]
        if self.sigmoid:
            w, b = self.weight[n0:n1], (self.bias[n0:n1] if self.bias is not None else None)
            z = (h @ w.t() if b is None else torch.addmm(b, h, w.t())).to(acc)
            ls = F.logsigmoid(z)  # log sigmoid(-z) = log sigmoid(z) - z
            return torch.stack([ls, ls - z], dim=2).reshape(h.shape[0], 2 * (n1 - n0))
        w, b = self.weight[s0:s1], (self.bias[s0:s1] if self.bias is not None else None)
        z = (h @ w.t() if b is None else torch.addmm(b, h, w.t())).to(acc)
        how = self._level_plan[level]
        if how[0] == "uniform":  # every node of the level has the same arity and no dummy
            return torch.log_softmax(z.view(z.shape[0], n1 - n0, how[1]), dim=2).view(z.shape[0], s1 - s0)
        if how[0] == "slices":  # few wide nodes: one log-softmax per contiguous slot range
            return torch.cat([z[:, o:o + a] - torch.logsumexp(z[:, o:o + a], dim=1, keepdim=True) for o, a in how[1]], dim=1)
        valid = self.slot_valid[s0:s1] if self._has_dummies else None
        return segment_log_softmax(z, self.slot_node[s0:s1] - n0, n1 - n0, valid)

    def _log_prob(self, h: Tensor) -> Tensor:
        """Exact [N, V] log-probabilities, level by level, in row chunks of about 8M slot scores."""
        step = max(1, _DENSE_ELEMS // max(1, self.tree.num_slots))
        parts = [self._log_prob_rows(h[a:a + step]) for a in range(0, max(1, h.shape[0]), step)]  # one pass when empty
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _log_prob_rows(self, h: Tensor) -> Tensor:
        acc = _acc(h.dtype)
        n = h.shape[0]
        out = h.new_empty(n, self.num_classes, dtype=acc)
        reach = h.new_zeros(n, 1, dtype=acc)  # log P(node) of the current level's nodes (root: 0)
        for level in range(len(self.level_ptr) - 1):
            s0, s1 = self.level_slot_ptr[level], self.level_slot_ptr[level + 1]
            n0 = self.level_ptr[level]
            lp = self._level_cond(h, level) + reach.index_select(1, self.slot_node[s0:s1] - n0)
            is_leaf = self.slot_is_leaf[s0:s1]
            cols = is_leaf.nonzero().squeeze(1)
            if cols.numel():
                out.index_copy_(1, self.slot_child[s0:s1].index_select(0, cols), lp.index_select(1, cols))
            # internal children in slot order are exactly the next level's nodes in id order
            internal = (~is_leaf) & self.slot_valid[s0:s1] if self._has_dummies else ~is_leaf
            reach = lp.index_select(1, internal.nonzero().squeeze(1))
        return out

    # ------------------------------------------------------------- exact top-k
    def _child_blocks(self, h: Tensor, rows: Tensor, nodes: Tensor, reach: Tensor):
        """Children of (row, node) pairs with their log-probabilities, block by block.

        Yields ``(rows_b [P], slots_b [P, A], lp_b [P, A])`` with
        ``lp_b = log P(node) + log P(child | node)`` and the most negative finite value at padded /
        dummy children.
        """
        acc = _acc(h.dtype)
        neg = _neg(acc)
        for part in self._parts(rows, nodes):
            re = reach if part.sel is None else reach[part.sel]
            if part.kind == "sigmoid":
                z = _gather_scores(h, self.weight, self.bias, part.rows, part.index).to(acc)
                ls = F.logsigmoid(z)
                slots = self.node_offset[part.index] + torch.arange(2, device=z.device)
                yield part.rows, slots, torch.cat([ls, ls - z], dim=1) + re[:, None]
            elif part.kind == "gather":
                z = _gather_scores(h, self.weight, self.bias, part.rows, part.index).to(acc)
                if part.ok is not None:
                    z = torch.where(part.ok, z, neg)
                lp = z - torch.logsumexp(z, dim=1, keepdim=True) + re[:, None]
                yield part.rows, part.index, (lp if part.ok is None else torch.where(part.ok, lp, neg))
            else:  # one GEMM per node, then one padded [P, A] block for the whole part
                valid = self.slot_valid if self._has_dummies else None
                blocks = _grouped_scores(h, self.weight, self.bias, part, valid, acc)
                A = max(part.arities)
                z = blocks[0] if len(blocks) == 1 else torch.full((part.rows.numel(), A), neg, dtype=acc, device=h.device)
                if len(blocks) > 1:
                    p = 0
                    for blk, c, a in zip(blocks, part.counts, part.arities):
                        z[p:p + c, :a] = blk
                        p += c
                dev = z.device
                counts = torch.tensor(part.counts, device=dev)
                a_pair = torch.repeat_interleave(torch.tensor(part.arities, device=dev), counts)
                off_pair = torch.repeat_interleave(torch.tensor(part.offs, device=dev), counts)
                j = torch.arange(A, device=dev)
                ok = j < a_pair[:, None]
                slots = off_pair[:, None] + torch.where(ok, j, 0)
                if valid is not None:
                    ok = ok & valid[slots]
                lp = z - torch.logsumexp(z, dim=1, keepdim=True) + re[:, None]
                yield part.rows, slots, torch.where(ok, lp, neg)

    def _search(self, h: Tensor, k: int, threshold: Optional[Tensor], budget: Optional[int]):
        """Level-synchronous search over all rows of ``h`` at once.

        threshold None: beam search (each row keeps its best internal nodes per level, just enough
        of them to hold k classes): real leaves whose k-th log-prob is a lower bound on the true
        k-th best. threshold [n]: exact
        branch-and-bound keeping every (row, node) with ``log P >= max(threshold, k-th best leaf
        so far)``. Within a node only its k best leaf children (and, for the beam, its k best
        internal children) can matter, so each block is cut to k before merging. Returns
        (values [n, k], ids [n, k]) or None when a level's scoring work (sum of frontier
        arities) exceeds ``budget`` (the caller goes dense).
        """
        n = h.shape[0]
        acc = _acc(h.dtype)
        neg = _neg(acc)
        dev = h.device
        best_v = torch.full((n, k), neg, dtype=acc, device=dev)
        best_i = torch.full((n, k), -1, dtype=torch.long, device=dev)
        rows = torch.arange(n, device=dev)
        nodes = torch.zeros(n, dtype=torch.long, device=dev)
        reach = torch.zeros(n, dtype=acc, device=dev)
        while rows.numel():
            if budget is not None and int(self.node_arity[nodes].sum()) > budget:
                return None
            cut = best_v[:, -1] if threshold is None else torch.maximum(best_v[:, -1], threshold)
            leaf_r, leaf_c, leaf_v, in_r, in_n, in_v = [], [], [], [], [], []
            for rb, sb, lp in self._child_blocks(h, rows, nodes, reach):
                is_leaf = self.slot_is_leaf[sb]
                cb = cut[rb][:, None]
                for want_leaf in (True, False):
                    m = is_leaf if want_leaf else ~is_leaf
                    v = torch.where(m, lp, neg)
                    sl = sb
                    if (want_leaf or threshold is None) and v.shape[1] > k:
                        v, j = v.topk(k, dim=1)
                        sl = sl.gather(1, j)
                    keep = (v > neg) & (v >= cb)
                    if not bool(keep.any()):
                        continue
                    (leaf_r if want_leaf else in_r).append(rb[:, None].expand_as(v)[keep])
                    (leaf_c if want_leaf else in_n).append(self.slot_child[sl[keep]])
                    (leaf_v if want_leaf else in_v).append(v[keep])
            if leaf_r:
                best_v, best_i = _merge_topk(best_v, best_i, torch.cat(leaf_r), torch.cat(leaf_c), torch.cat(leaf_v), k)
            if not in_r:
                break
            rows, nodes, reach = torch.cat(in_r), torch.cat(in_n), torch.cat(in_v)
            cut = best_v[:, -1] if threshold is None else torch.maximum(best_v[:, -1], threshold)
            keep = reach >= cut[rows]
            if threshold is None:  # beam: per row, the best nodes until they hold k classes
                keep &= _fill_in_row(rows, reach, self.node_leaves[nodes], n, k)
            rows, nodes, reach = rows[keep], nodes[keep], reach[keep]
        return best_v, best_i

    @torch.no_grad()
    def _topk(self, h: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        vals, ids = [], []
        for a in range(0, max(1, h.shape[0]), self.topk_rows):  # an empty batch still makes one (empty) pass
            v, i = self._topk_rows(h[a:a + self.topk_rows], k)
            vals.append(v)
            ids.append(i)
        return torch.cat(vals), torch.cat(ids)

    def _topk_rows(self, h: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        acc = _acc(h.dtype)
        neg = _neg(acc)
        n = h.shape[0]
        bv, _ = self._search(h, k, None, None)
        t = bv[:, -1]
        # slack for rounding differences between the two passes (scores of the same pair may be
        # computed in different GEMM shapes); a lower threshold only keeps more, so stays exact
        slack = math.sqrt(torch.finfo(acc).eps) * (1.0 + t.abs())
        t = torch.where(t > neg, t - slack, neg)
        res = self._search(h, k, t, budget=max(1, int(n * self.tree.num_slots * self.topk_dense_fraction)))
        if res is None:  # frontier too wide (near-uniform rows): one dense pass is cheaper
            v, i = self._log_prob(h).topk(k, dim=1)
            return v, i
        return res


class HierarchicalSoftmax(TreeSoftmax):
    r"""Hierarchical softmax over a Huffman tree of class ``counts`` [V] (word2vec, fastText).

    ``arity=2`` uses the word2vec parameterisation (one vector per internal node, sigmoid per
    branch); ``arity > 2`` a softmax per node over up to ``arity`` children, with the n-ary Huffman
    dummy leaves masked. Frequent classes get short paths: a step costs
    O(N * expected_code_length * arity * d). Other keyword args go to :class:`TreeSoftmax`.

    .. math::
        \log p(y \mid h) = \sum_{n \in \text{path}(y)} \log \sigma(\pm\, h \cdot w_n + b_n)
        \quad (\text{arity} = 2)

    Args:
        in_features: d.
        counts: ``[V]`` class counts (>= 0, any id order) the Huffman code is built from; zero counts (a
            tokenizer's tokens absent from the data) are floored to half the smallest positive count
            (:func:`bigsoftmax.vocab.smooth_counts` ``mode='floor'``), so unseen classes get the longest codes.
        arity: children per internal node (2: word2vec's sigmoid tree).
        **kw: ``bias``, ``parameterization``, ``sparse``, ``ignore_index``, ``reduction`` as
            :class:`TreeSoftmax`.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> counts = torch.arange(1000, 0, -1).double()
        >>> head = HierarchicalSoftmax(32, counts)
        >>> loss = head(torch.randn(8, 32), torch.randint(0, 1000, (8,)))
    """

    def __init__(self, in_features: int, counts, arity: int = 2, **kw):
        super().__init__(in_features, T.huffman(_floor_zero_counts(counts), arity), **kw)
        self.arity = int(arity)


class ClassBasedSoftmax(TreeSoftmax):
    """Class-based softmax ``P(c) = P(cluster(c)) P(c | cluster(c))`` (Goodman 2001; Mikolov 2011).

    Give either ``counts`` [V] (clusters by frequency binning: ``binning='sqrt'`` (default),
    ``'uniform'`` or ``'size'``, ``num_clusters`` defaulting to ``round(sqrt(V))``, see
    :func:`bigsoftmax.trees.cluster_assignment`) or ``cluster_of_class`` [V] (your own clusters,
    ids 0..C-1 all used). A step costs O(N * (C + cluster size) * d); with sqrt(V) balanced
    clusters about O(N * sqrt(V) * d). ``cluster_of_class`` is kept as a buffer.

    Args:
        in_features: d.
        counts: ``[V]`` class counts (frequency binning; zeros floored to half the smallest positive count,
            as :class:`HierarchicalSoftmax`), or None.
        cluster_of_class: ``[V]`` cluster id of every class (ids 0..C-1 all used), or None.
        num_clusters: C (default ``round(sqrt(V))`` with ``counts``; must agree with ``cluster_of_class``).
        binning: ``'sqrt'`` | ``'uniform'`` | ``'size'`` (with ``counts``).
        **kw: as :class:`TreeSoftmax`.

    Shape:
        - hidden: :math:`(*, d)`; target: :math:`(*)`; output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> head = ClassBasedSoftmax(32, counts=torch.arange(1000, 0, -1).double())
        >>> loss = head(torch.randn(8, 32), torch.randint(0, 1000, (8,)))
    """

    def __init__(self, in_features: int, counts=None, cluster_of_class=None, num_clusters: Optional[int] = None,
                 binning: str = "sqrt", **kw):
        if (counts is None) == (cluster_of_class is None):
            raise ValueError("give exactly one of counts (frequency binning) or cluster_of_class (your clusters)")
        if cluster_of_class is not None:
            assign = torch.as_tensor(T._as_int_vector(cluster_of_class, "cluster_of_class"))
            tree = T.from_assignment(assign)
            C = int(tree.node_arity[0])
            if num_clusters is not None and num_clusters != C:
                raise ValueError(f"num_clusters={num_clusters!r} disagrees with cluster_of_class, which uses {C} clusters")
        else:
            assign = torch.as_tensor(T.cluster_assignment(_floor_zero_counts(counts), num_clusters, binning))
            tree = T.from_assignment(assign)
        super().__init__(in_features, tree, **kw)
        self.num_clusters = int(tree.node_arity[0])
        self.binning = binning if cluster_of_class is None else None
        self.register_buffer("cluster_of_class", assign, persistent=False)

"""Tree builders: optimality of Huffman codes, structure invariants, binning, errors."""

import heapq
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax import trees

SETTINGS = settings(max_examples=40, deadline=None)


# ----------------------------------------------------------------------------- references
def heapq_huffman_cost(counts, arity=2):
    """Independent n-ary Huffman: pad with zero weights to (n-1) % (a-1) == 0, merge the a
    smallest until one remains; the sum of merged weights is sum(counts * depth)."""
    w = list(counts)
    while (len(w) - 1) % (arity - 1):
        w.append(0)
    heapq.heapify(w)
    cost = 0
    while len(w) > 1:
        s = sum(heapq.heappop(w) for _ in range(arity))
        cost += s
        heapq.heappush(w, s)
    return cost


def kraft_brute_force_cost(counts, arity):
    """Optimal prefix-code cost by enumerating all code lengths satisfying Kraft's inequality
    (every such length vector is realisable by a prefix code: Kraft-McMillan)."""
    V = len(counts)
    best = math.inf
    for lens in itertools.product(range(1, V), repeat=V):
        if sum(arity ** (-l) for l in lens) <= 1 + 1e-12:
            best = min(best, sum(c * l for c, l in zip(counts, lens)))
    return best


def check_tree(t: trees.Tree):
    """Structural invariants every builder must satisfy."""
    V, M, S = t.num_classes, t.num_nodes, t.num_slots
    assert int(t.node_arity.sum()) == S
    assert torch.equal(t.node_offset, torch.cat([torch.zeros(1, dtype=torch.long), t.node_arity.cumsum(0)[:-1]]))
    assert torch.equal(t.slot_node, torch.repeat_interleave(torch.arange(M), t.node_arity))
    # every class exactly once, leaf_slot inverts slot_child on leaf slots
    assert torch.equal(t.slot_child[t.leaf_slot], torch.arange(V))
    assert bool(t.slot_is_leaf[t.leaf_slot].all())
    assert int(t.slot_is_leaf.sum()) == V
    assert bool((t.slot_child[~t.slot_valid] == -1).all())
    # internal slots point at nodes 1..M-1 exactly once; BFS: child id > parent id, depth + 1
    internal = t.slot_valid & ~t.slot_is_leaf
    kids = t.slot_child[internal]
    assert sorted(kids.tolist()) == list(range(1, M))
    parents = t.slot_node[internal]
    assert bool((kids > parents).all())
    assert torch.equal(t.node_depth[kids], t.node_depth[parents] + 1)
    assert torch.equal(t.node_parent_slot[kids], internal.nonzero().squeeze(1))
    assert int(t.node_parent_slot[0]) == -1
    # levels are contiguous id ranges, and internal children in slot order are the next level in order
    assert list(t.level_ptr) == [0] + [int((t.node_depth <= L).sum()) for L in range(t.depth)]
    assert torch.equal(kids, torch.arange(1, M))
    # paths: V distinct, prefix-free code words; consistent with the slot tables
    codes = []
    for c in range(V):
        m = t.path_mask[c]
        nodes, ch = t.path_node[c][m].tolist(), t.path_child[c][m].tolist()
        assert len(nodes) == int(t.leaf_depth[c]) and nodes[0] == 0
        for i in range(len(nodes) - 1):
            assert int(t.slot_child[t.node_offset[nodes[i]] + ch[i]]) == nodes[i + 1]
        assert int(t.node_offset[nodes[-1]] + ch[-1]) == int(t.leaf_slot[c])
        codes.append(tuple(ch))
    assert len(set(codes)) == V
    srt = sorted(codes)
    for a, b in zip(srt, srt[1:]):
        assert b[: len(a)] != a, f"code {a} is a prefix of {b}"
    assert t.depth == int(t.leaf_depth.max())


counts_st = st.lists(st.integers(1, 1000), min_size=2, max_size=60)


# ----------------------------------------------------------------------------- Huffman
@SETTINGS
@given(counts=counts_st)
def test_binary_huffman_is_optimal(counts):
    t = trees.huffman(counts)
    check_tree(t)
    assert t.is_binary and t.num_nodes == len(counts) - 1 and t.num_dummies == 0
    total = sum(counts)
    assert t.expected_code_length(counts) * total == pytest.approx(heapq_huffman_cost(counts), rel=1e-12)


@SETTINGS
@given(counts=counts_st, arity=st.integers(2, 7))
def test_nary_huffman_is_optimal(counts, arity):
    t = trees.huffman(counts, arity)
    check_tree(t)
    V = len(counts)
    r = (-(V - 1)) % (arity - 1)
    assert t.num_dummies == r and t.max_arity == arity
    assert bool((t.node_arity == arity).all())
    # dummies sit together in one node that keeps >= 2 real children (so nothing degenerates)
    if r:
        holder = t.slot_node[~t.slot_valid].unique()
        assert holder.numel() == 1
        real = int(t.slot_valid[t.slot_node == holder].sum())
        assert real >= 2
    got = t.expected_code_length(counts) * sum(counts)
    assert got == pytest.approx(heapq_huffman_cost(counts, arity), rel=1e-12)


@pytest.mark.parametrize("arity", [2, 3, 4])
@pytest.mark.parametrize("counts", [[1, 1], [5, 1, 1], [3, 3, 2, 1], [10, 1, 1, 1, 1], [4, 4, 4, 4, 4]])
def test_huffman_matches_kraft_brute_force(counts, arity):
    t = trees.huffman(counts, arity)
    assert t.expected_code_length(counts) * sum(counts) == pytest.approx(kraft_brute_force_cost(counts, arity))


@SETTINGS
@given(counts=st.lists(st.floats(0.01, 1e6), min_size=2, max_size=40))
def test_huffman_monotone_depths_float_counts(counts):
    t = trees.huffman(counts)
    d = t.leaf_depth.tolist()
    for i in range(len(counts)):
        for j in range(len(counts)):
            if counts[i] > counts[j]:
                assert d[i] <= d[j]  # holds in every optimal code


def test_huffman_known_tree_word2vec_convention():
    # counts 5,1,1,2,3,8: merges (1,1)->2, (2,2)->4, (3,4)->7, (5,7)->12, (8,12)->20
    t = trees.huffman([5, 1, 1, 2, 3, 8])
    assert t.leaf_depth.tolist() == [2, 5, 5, 4, 3, 1]
    # child 0 is the lighter child at every node: class 5 (count 8) is child 0 of the root
    assert t.path_child[5, 0].item() == 0 and t.leaf_depth[5].item() == 1


# ----------------------------------------------------------------------------- balanced
@SETTINGS
@given(V=st.integers(2, 300), arity=st.integers(2, 9))
def test_balanced(V, arity):
    t = trees.balanced(V, arity)
    check_tree(t)
    expect = 1
    while arity**expect < V:
        expect += 1
    assert t.depth == expect  # ceil(log_arity V)
    assert t.max_arity <= arity and t.num_dummies == 0
    if arity == 2:
        assert t.is_binary


# ----------------------------------------------------------------------------- class-based
def test_binning_hand_examples():
    counts = [16, 9, 4, 1]
    assert trees.cluster_assignment(counts, 2, "sqrt").tolist() == [0, 0, 1, 1]  # sqrt masses 4,3 | 2,1
    assert trees.cluster_assignment(counts, 2, "uniform").tolist() == [0, 1, 1, 1]  # 16 | 9+4+1
    assert trees.cluster_assignment(counts, 2, "size").tolist() == [0, 0, 1, 1]
    # ids need not be frequency-sorted: clusters follow the counts
    assert trees.cluster_assignment([1, 4, 16, 9], 2, "sqrt").tolist() == [1, 1, 0, 0]
    # a heavy head class would skip bins: no bin may stay empty
    assert trees.cluster_assignment([1000, 1, 1, 1], 3, "sqrt").tolist() == [0, 1, 2, 2]


@SETTINGS
@given(counts=counts_st, data=st.data(), binning=st.sampled_from(trees.BINNINGS))
def test_two_level(counts, data, binning):
    V = len(counts)
    C = data.draw(st.integers(1, V))
    assign = trees.cluster_assignment(counts, C, binning)
    assert sorted(set(assign.tolist())) == list(range(C))  # exactly C non-empty clusters
    order = np.argsort(-np.asarray(counts, dtype=float), kind="stable")
    assert (np.diff(assign[order]) >= 0).all() and (np.diff(assign[order]) <= 1).all()  # contiguous bins
    t = trees.two_level(counts, C, binning)
    check_tree(t)
    assert t.depth == 2 and int(t.node_arity[0]) == C
    assert torch.equal(t.path_child[:, 0], torch.as_tensor(assign))


def test_two_level_default_clusters_and_sqrt_balance():
    V = 10_000
    counts = 1.0 / np.arange(1, V + 1) ** 1.1
    t = trees.two_level(counts)
    assert int(t.node_arity[0]) == 100  # round(sqrt(V))
    assign = trees.cluster_assignment(counts)
    mass = np.bincount(assign, weights=np.sqrt(counts))
    # each bin's sqrt-mass is within one class's mass of the ideal share
    assert np.abs(mass - mass.sum() / 100).max() <= np.sqrt(counts).max() + 1e-12


def test_from_assignment_and_nested():
    t = trees.from_assignment([2, 0, 1, 0, 2])
    check_tree(t)
    assert t.node_arity.tolist() == [3, 2, 1, 2]
    assert t.path_child[:, 0].tolist() == [2, 0, 1, 0, 2]
    t = trees.from_nested([[0, 1], [2, [3, 4]]])
    check_tree(t)
    assert t.leaf_depth.tolist() == [2, 2, 2, 3, 3]
    assert t.path_child[4].tolist() == [1, 1, 1]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "counts,exc,msg",
    [
        ([3, 0, 1], ValueError, "positive"),
        ([3, -1, 1], ValueError, "positive"),
        ([3, float("nan")], ValueError, "finite"),
        ([5], ValueError, "at least 2"),
        ([[1, 2], [3, 4]], ValueError, "1-D"),
        ([True, False], TypeError, "numbers"),
        (torch.tensor([1.0, 0.0]), ValueError, "positive"),
    ],
)
def test_bad_counts(counts, exc, msg):
    with pytest.raises(exc, match=msg):
        trees.huffman(counts)
    with pytest.raises(exc, match=msg):
        trees.two_level(counts)


def test_bad_arguments():
    with pytest.raises(ValueError, match="arity"):
        trees.huffman([1, 2, 3], arity=1)
    with pytest.raises(TypeError, match="arity"):
        trees.huffman([1, 2, 3], arity=2.5)
    with pytest.raises(ValueError, match="arity"):
        trees.balanced(10, 1)
    with pytest.raises(ValueError, match="num_classes"):
        trees.balanced(1, 2)
    with pytest.raises(ValueError, match=r"num_clusters must be an int in \[1, 3\]"):
        trees.two_level([1, 2, 3], num_clusters=4)
    with pytest.raises(ValueError, match="num_clusters"):
        trees.two_level([1, 2, 3], num_clusters=0)
    with pytest.raises(ValueError, match="binning"):
        trees.two_level([1, 2, 3], binning="log")
    with pytest.raises(ValueError, match="cluster 1 is empty"):
        trees.from_assignment([0, 2, 2])
    with pytest.raises(ValueError, match=">= 0"):
        trees.from_assignment([0, -1, 1])
    with pytest.raises(TypeError, match="integer"):
        trees.from_assignment([0.0, 1.0])
    with pytest.raises(ValueError, match="appears twice"):
        trees.from_nested([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"ids must be in \[0, 3\)"):
        trees.from_nested([[0, 1], 5])
    with pytest.raises(ValueError, match="empty list"):
        trees.from_nested([[0, 1], []])
    with pytest.raises(ValueError, match="length num_classes=3"):
        trees.huffman([1, 2, 3]).expected_code_length([1, 2])


def test_large_builders_are_fast_enough():
    counts = 1.0 / np.arange(1, 200_001) ** 1.05
    t = trees.huffman(counts)
    assert t.num_nodes == 199_999 and t.depth < 40
    assert trees.two_level(counts).num_nodes == 1 + 447

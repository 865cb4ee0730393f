"""Tree softmax heads: exact normalisation, parity with naive references, top-k vs brute force,
gradients, the Head protocol (ignore_index, reductions, [B, T, d]) and errors."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsoftmax import trees
from bigsoftmax.heads import ClassBasedSoftmax, HierarchicalSoftmax, TreeSoftmax

SETTINGS = settings(max_examples=25, deadline=None)
D = 6


def counts_for(V, seed=0):
    return np.random.RandomState(seed).randint(1, 200, size=V)


# every kind of head, small; each factory takes V
FACTORIES = {
    "huffman2-sigmoid": lambda V: HierarchicalSoftmax(D, counts_for(V)),
    "huffman2-softmax": lambda V: HierarchicalSoftmax(D, counts_for(V), parameterization="softmax"),
    "huffman3-dummies": lambda V: HierarchicalSoftmax(D, counts_for(V), arity=3),
    "huffman5-dummies": lambda V: HierarchicalSoftmax(D, counts_for(V), arity=5),
    "balanced3": lambda V: TreeSoftmax(D, trees.balanced(V, 3)),
    "balanced2": lambda V: TreeSoftmax(D, trees.balanced(V, 2), bias=False),
    "class-sqrt": lambda V: ClassBasedSoftmax(D, counts_for(V)),
    "class-user": lambda V: ClassBasedSoftmax(D, cluster_of_class=torch.arange(V) % 3),
    "nested": lambda V: TreeSoftmax(D, trees.from_nested([list(range(0, V // 2)), [V // 2, list(range(V // 2 + 1, V))]])),
}


def make(kind, V=23, seed=0, scale=1.0):
    torch.manual_seed(seed)
    head = FACTORIES[kind](V).double()
    with torch.no_grad():
        head.weight.mul_(scale)
        if head.bias is not None:
            head.bias.normal_()
    return head


def naive_target_log_prob(head, h, y):
    """Walk each path in Python; score a node's children by explicit rows of the parameters."""
    t = head.tree
    out = []
    for i in range(h.shape[0]):
        c = int(y[i])
        total = 0.0
        m = t.path_mask[c]
        for node, j in zip(t.path_node[c][m].tolist(), t.path_child[c][m].tolist()):
            b = head.bias if head.bias is not None else torch.zeros(head.weight.shape[0], dtype=h.dtype)
            if head.sigmoid:  # word2vec: P(child 0) = sigmoid(z), P(child 1) = sigmoid(-z)
                z = h[i] @ head.weight[node] + b[node]
                total = total + F.logsigmoid(z if j == 0 else -z)
            else:
                off, a = int(t.node_offset[node]), int(t.node_arity[node])
                valid = t.slot_valid[off:off + a]
                z = (head.weight[off:off + a] @ h[i] + b[off:off + a])[valid]
                pos = int(valid[:j].sum())
                total = total + torch.log_softmax(z, 0)[pos]
        out.append(total)
    return torch.stack(out)


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_exact_distribution_and_parity(kind):
    head = make(kind, scale=2.0)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(11, D, dtype=torch.float64, generator=g)
    y = torch.randint(0, 23, (11,), generator=g)
    lp = head.log_prob(h)
    assert lp.shape == (11, 23)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(11, dtype=torch.float64), rtol=0, atol=1e-12)
    tlp = head.target_log_prob(h, y)
    torch.testing.assert_close(tlp, lp.gather(1, y[:, None]).squeeze(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(tlp, naive_target_log_prob(head, h, y), rtol=0, atol=1e-12)
    torch.testing.assert_close(head(h, y), -tlp.mean(), rtol=0, atol=1e-12)
    for k in (1, 4, 23):
        v, i = head.topk(h, k)
        bv, _ = lp.topk(k, dim=1)
        torch.testing.assert_close(v, bv, rtol=0, atol=1e-10)
        torch.testing.assert_close(lp.gather(1, i), v, rtol=0, atol=1e-10)  # ids carry those values


def test_hierarchical_parameterisations():
    head = HierarchicalSoftmax(4, [5, 1, 1, 2, 3, 8])
    assert head.parameterization == "sigmoid" and head.weight.shape == (5, 4)  # one vector per node
    head3 = HierarchicalSoftmax(4, [5, 1, 1, 2, 3, 8], arity=3)
    assert head3.parameterization == "softmax" and head3.weight.shape == (head3.tree.num_slots, 4)
    assert head3.tree.num_dummies == 1


def test_class_based_single_cluster_is_full_softmax():
    torch.manual_seed(0)
    head = ClassBasedSoftmax(D, counts_for(17), num_clusters=1).double()
    with torch.no_grad():
        head.bias.normal_()
    h = torch.randn(5, D, dtype=torch.float64)
    ref = torch.log_softmax(h @ head.weight[1:].t() + head.bias[1:], dim=-1)  # slot 0 is the root's only child
    torch.testing.assert_close(head.log_prob(h), ref, rtol=0, atol=1e-12)


@st.composite
def random_trees(draw):
    kind = draw(st.sampled_from(["huffman", "balanced", "two_level", "nested"]))
    V = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.RandomState(seed)
    if kind == "huffman":
        return trees.huffman(rng.randint(1, 50, size=V), draw(st.integers(2, 6))), seed
    if kind == "balanced":
        return trees.balanced(V, draw(st.integers(2, 6))), seed
    if kind == "two_level":
        return trees.two_level(rng.randint(1, 50, size=V), draw(st.integers(1, V)), draw(st.sampled_from(trees.BINNINGS))), seed
    items = list(rng.permutation(V))
    items = [int(x) for x in items]
    while len(items) > 1:  # merge random groups into nodes until one root remains
        a = rng.randint(0, len(items))
        b = min(len(items), a + rng.randint(2, 5))
        items[a:b] = [items[a:b]]
    root = items[0] if isinstance(items[0], list) else [items[0]]
    return trees.from_nested(root), seed


@SETTINGS
@given(tree_seed=random_trees(), k=st.integers(1, 8), scale=st.sampled_from([0.5, 3.0]), threshold=st.sampled_from([0, 1 << 16, 1 << 40]))
def test_property_random_trees(tree_seed, k, scale, threshold):
    tree, seed = tree_seed
    torch.manual_seed(seed)
    head = TreeSoftmax(D, tree).double()
    head.group_threshold = threshold
    with torch.no_grad():
        head.weight.mul_(scale)
        head.bias.normal_()
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(9, D, dtype=torch.float64, generator=g)
    y = torch.randint(0, tree.num_classes, (9,), generator=g)
    lp = head.log_prob(h)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(9, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(head.target_log_prob(h, y), lp.gather(1, y[:, None]).squeeze(1), rtol=0, atol=1e-12)
    k = min(k, tree.num_classes)
    v, i = head.topk(h, k)
    torch.testing.assert_close(v, lp.topk(k, dim=1).values, rtol=0, atol=1e-10)
    torch.testing.assert_close(lp.gather(1, i), v, rtol=0, atol=1e-10)
    assert all(len(set(row)) == k for row in i.tolist())  # k distinct classes per row


@pytest.mark.parametrize("kind", ["huffman2-sigmoid", "huffman3-dummies", "class-sqrt"])
@pytest.mark.parametrize("scale", [0.0, 1.0, 6.0])
def test_topk_fp32_paths_and_dense_fallback(kind, scale):
    head = make(kind, V=200, scale=scale).float()
    h = torch.randn(40, D)
    lp = head.log_prob(h)
    bv = lp.topk(7, dim=1).values
    for frac in (0.25, 0.0):  # 0.0 forces the dense fallback
        head.topk_dense_fraction = frac
        v, i = head.topk(h, 7)
        torch.testing.assert_close(v, bv, rtol=0, atol=1e-4)
        torch.testing.assert_close(lp.gather(1, i), v, rtol=0, atol=1e-4)
    head.topk_dense_fraction = 0.25
    head.topk_rows = 3  # several row chunks
    v, i = head.topk(h, 7)
    torch.testing.assert_close(v, bv, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind,threshold", [("huffman2-sigmoid", 1 << 16), ("huffman3-dummies", 1 << 40),
                                            ("huffman3-dummies", 0), ("class-sqrt", 0), ("class-sqrt", 1 << 40),
                                            ("balanced2", 1 << 16)])
def test_gradcheck(kind, threshold):
    head = make(kind, V=9)
    head.group_threshold = threshold
    h = torch.randn(5, D, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 8, 3, 3, 5])
    params = [head.weight] + ([head.bias] if head.bias is not None else [])

    names = ["weight", "bias"][: len(params)]

    def f(h, *ps):  # the loss as a function of hidden and the parameters
        return torch.func.functional_call(head, dict(zip(names, ps)), (h, y))

    assert torch.autograd.gradcheck(f, (h, *[p.detach().requires_grad_() for p in params]), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind,threshold", [("huffman2-sigmoid", 1 << 16), ("huffman5-dummies", 1 << 40),
                                            ("class-sqrt", 0), ("class-sqrt", 1 << 40), ("class-user", 1 << 16)])
def test_sparse_gradients_equal_dense(kind, threshold):
    dense = make(kind, V=40)
    sparse = make(kind, V=40)
    sparse.sparse = True
    for m in (dense, sparse):
        m.group_threshold = threshold
    h = torch.randn(30, D, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 40, (30,))
    dense(h, y).backward()
    gh = h.grad.clone()
    h.grad = None
    sparse(h, y).backward()
    assert sparse.weight.grad.is_sparse and sparse.bias.grad.is_sparse
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(sparse.bias.grad.to_dense(), dense.bias.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(h.grad, gh, rtol=0, atol=1e-12)
    assert sparse.sparse_parameters() == [sparse.weight, sparse.bias] and dense.sparse_parameters() == []


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("threshold", [0, 1 << 40], ids=["cpu-grouped", "cpu-gathered"])
@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_fixed_shape_path_matches_the_data_dependent_path(kind, threshold, sparse):
    """The host-sync-free path (tree.depth pairs per row, padding masked; the root one GEMM) gives
    the CPU path's loss and gradients, whether the CPU path grouped the popular nodes or not."""
    from bigsoftmax._validate import force_sync_free

    results = []
    for fixed in (False, True):
        head = make(kind, V=40)
        head.sparse = sparse
        head.group_threshold = threshold
        g = torch.Generator().manual_seed(3)
        h = torch.randn(30, D, dtype=torch.float64, generator=g, requires_grad=True)
        y = torch.randint(0, 40, (30,), generator=g)
        y[[4, 11]] = -100
        with force_sync_free(fixed):
            loss = head(h, y)
            loss.backward()
        grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in (head.weight, head.bias) if p is not None]
        assert all(p.grad.is_sparse == sparse for p in (head.weight, head.bias) if p is not None)
        results.append((loss.detach(), h.grad, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_sparse_training_with_make_optimizer_reduces_loss():
    from bigsoftmax.optim import make_optimizer, split_params

    torch.manual_seed(0)
    V = 60
    head = HierarchicalSoftmax(D, counts_for(V), arity=3, sparse=True)
    body = torch.nn.Linear(D, D)
    model = torch.nn.Sequential(body, head)
    dense_p, sparse_p = split_params(model)
    assert {id(p) for p in sparse_p} == {id(head.weight), id(head.bias)}
    opt = make_optimizer(model, lr=0.05)
    x = torch.randn(64, D)
    y = torch.randint(0, V, (64,))
    first = None
    for _ in range(30):
        loss = head(body(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


# ----------------------------------------------------------------------------- protocol
def test_ignore_index_reductions_and_3d_inputs():
    head = make("huffman3-dummies", V=30)
    h = torch.randn(2, 5, D, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 30, (2, 5))
    y[0, 1] = -100
    y[1, 4] = -100
    keep = y != -100
    tlp = head.target_log_prob(h, y)
    assert tlp.shape == (2, 5) and tlp[0, 1].item() == 0.0
    ref = head.log_prob(h).gather(-1, y.clamp_min(0)[..., None]).squeeze(-1)
    torch.testing.assert_close(tlp[keep], ref[keep], rtol=0, atol=1e-12)
    head.reduction = "none"
    per = head(h, y)
    assert per.shape == (2, 5) and per[1, 4].item() == 0.0
    torch.testing.assert_close(per[keep], -ref[keep], rtol=0, atol=1e-12)
    head.reduction = "sum"
    torch.testing.assert_close(head(h, y), -ref[keep].sum(), rtol=0, atol=1e-12)
    head.reduction = "mean"
    loss = head(h, y)
    torch.testing.assert_close(loss, -ref[keep].mean(), rtol=0, atol=1e-12)
    loss.backward()
    assert float(h.grad[0, 1].abs().sum()) == 0.0 and float(h.grad[0, 0].abs().sum()) > 0
    v, i = head.topk(h, 3)
    assert v.shape == (2, 5, 3) and i.shape == (2, 5, 3)
    assert head.predict(h).shape == (2, 5)
    assert head.log_prob(h).shape == (2, 5, 30)
    assert torch.isnan(head(h[:, :1], torch.full((2, 1), -100)))  # all ignored: mean is NaN like torch


def test_autocast_bf16_matches_fp32():
    head = make("class-sqrt", V=50).float()
    head.group_threshold = 0
    h = torch.randn(16, D, requires_grad=True)
    y = torch.randint(0, 50, (16,))
    ref = head(h, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(h, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=5e-2, atol=5e-2)
    loss.backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(head.weight.grad).all()


def test_state_dict_round_trip():
    a = make("huffman2-sigmoid", V=30)
    b = HierarchicalSoftmax(D, counts_for(30)).double()
    sd = a.state_dict()
    # the weights keep their keys; the tree travels too (issue 13 item 5, see heads/test_state_dict.py)
    assert {"weight", "bias"} <= set(sd) and {"leaf_slot", "slot_node", "node_arity"} <= set(sd)
    b.load_state_dict(sd)
    h = torch.randn(4, D, dtype=torch.float64)
    torch.testing.assert_close(a.log_prob(h), b.log_prob(h), rtol=0, atol=0)


# ----------------------------------------------------------------------------- errors
def test_errors():
    head = make("huffman2-sigmoid", V=10)
    h = torch.randn(3, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"outside the allowed range \[0, 10\)"):
        head(h, torch.tensor([0, 10, 1]))
    with pytest.raises(TypeError, match="integer"):
        head(h, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="in_features"):
        head(torch.randn(3, D + 1, dtype=torch.float64), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="k must be"):
        head.topk(h, 11)
    with pytest.raises(TypeError, match="bigsoftmax.trees.Tree"):
        TreeSoftmax(D, [[0, 1], 2])
    with pytest.raises(ValueError, match="parameterization='sigmoid' needs a binary tree"):
        TreeSoftmax(D, trees.balanced(10, 3), parameterization="sigmoid")
    with pytest.raises(ValueError, match="parameterization must be one of"):
        TreeSoftmax(D, trees.balanced(10, 2), parameterization="tanh")
    with pytest.raises(ValueError, match="positive"):
        HierarchicalSoftmax(D, [3, -1, 2])  # zero counts are floored since bigsoftmax.vocab; negatives refused
    with pytest.raises(ValueError, match="arity"):
        HierarchicalSoftmax(D, [3, 1, 2], arity=1)
    with pytest.raises(ValueError, match="exactly one of counts"):
        ClassBasedSoftmax(D)
    with pytest.raises(ValueError, match="exactly one of counts"):
        ClassBasedSoftmax(D, counts=[1, 2, 3], cluster_of_class=[0, 0, 1])
    with pytest.raises(ValueError, match="disagrees with cluster_of_class"):
        ClassBasedSoftmax(D, cluster_of_class=[0, 0, 1], num_clusters=3)
    with pytest.raises(ValueError, match=r"num_clusters must be an int in \[1, 3\]"):
        ClassBasedSoftmax(D, counts=[1, 2, 3], num_clusters=5)
    with pytest.raises(ValueError, match="reduction"):
        HierarchicalSoftmax(D, [1, 2, 3], reduction="avg")

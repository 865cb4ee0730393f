"""The tree path-probability kernel (bigsoftmax.ops.tree) step by step, float64, against autograd
through the naive log-softmax / log-sigmoid."""

import torch
import torch.nn.functional as F

from bigsoftmax.ops import tree as K


def test_sigmoid_and_softmax_pair_steps_match_autograd():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    lp, D = K.sigmoid_pairs(z, c)
    ref = F.logsigmoid(torch.where(c == 0, z, -z))
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-14)
    (gz,) = torch.autograd.grad(ref.sum(), z)
    torch.testing.assert_close(D[:, 0], -gz, rtol=0, atol=1e-14)

    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    z[1, 3] = K.mask_value(torch.float64)  # a masked (dummy) child
    z.requires_grad_()
    c = torch.tensor([0, 2, 3, 1, 0])
    lp, D = K.softmax_pairs(z, c)
    ref = torch.log_softmax(z, 1).gather(1, c[:, None])[:, 0]
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-14)
    (gz,) = torch.autograd.grad(ref.sum(), z)
    torch.testing.assert_close(D, -gz, rtol=0, atol=1e-14)
    assert float(D[1, 3]) == 0.0


def test_path_log_prob_gradcheck_over_all_three_part_kinds():
    g = torch.Generator().manual_seed(1)
    N, R, d = 6, 9, 3
    h = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(R, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(R, generator=g, dtype=torch.float64, requires_grad=True)
    parts = [
        K.Part("sigmoid", torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[4], [5]])),
        K.Part("gather", torch.tensor([2, 3]), torch.tensor([2, 3]), torch.tensor([[6, 7, 8], [6, 7, 6]]),
               torch.tensor([[True, True, True], [True, True, False]])),
        K.Part("grouped", torch.tensor([4, 5, 6]), torch.tensor([4, 5, 0]), offs=(0, 2), counts=(2, 1),
               arities=(2, 2)),
    ]
    child = torch.tensor([0, 1, 2, 1, 1, 0, 1])
    f = lambda h_, W_, b_: K.PathLogProb.apply(h_, W_, b_, parts, child, None, False)  # noqa: E731
    assert torch.autograd.gradcheck(f, (h, W, b))
    sp = K.PathLogProb.apply(h, W, b, parts, child, None, True)
    gw, gb = torch.autograd.grad(sp.sum(), (W, b))
    dw, db = torch.autograd.grad(f(h, W, b).sum(), (W, b))
    torch.testing.assert_close(gw.to_dense(), dw, rtol=0, atol=1e-14)
    torch.testing.assert_close(gb.to_dense(), db, rtol=0, atol=1e-14)

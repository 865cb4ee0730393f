"""The one reducer (bigsoftmax.ops.reduce.reduce_loss): torch's reductions, sums in fp32."""

import pytest
import torch

from bigsoftmax.ops.reduce import reduce_loss


def test_matches_cross_entropy_reductions_with_ignored_rows():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, -100, 3, 4, -100, 1, 2])
    keep = y != -100
    per = torch.nn.functional.cross_entropy(z[keep], y[keep], reduction="none")
    for red in ("mean", "sum", "none"):
        ref = torch.nn.functional.cross_entropy(z, y, reduction=red)
        torch.testing.assert_close(reduce_loss(per, keep, y.shape, red), ref, rtol=0, atol=1e-15)
    w = torch.rand(5, generator=g, dtype=torch.float64)
    per_w = per * w[y[keep]]
    ref = torch.nn.functional.cross_entropy(z, y, weight=w)
    torch.testing.assert_close(reduce_loss(per_w, keep, y.shape, "mean", weight=w[y[keep]]), ref, rtol=0, atol=1e-15)


def test_every_row_ignored_gives_nan_mean_and_zero_sum():
    per = torch.zeros(0)
    keep = torch.zeros(3, dtype=torch.bool)
    assert torch.isnan(reduce_loss(per, keep, (3,), "mean"))
    assert float(reduce_loss(per, keep, (3,), "sum")) == 0.0
    assert torch.equal(reduce_loss(per, keep, (3,), "none"), torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mean_does_not_overflow(dtype):
    """Issue 14 item 8: 40,000 rows of loss 4.0 fit fp16 but their fp16 sum (160,000) does not."""
    per = torch.full((40_000,), 4.0, dtype=dtype)
    assert per.sum().isinf() or dtype == torch.bfloat16  # the bug this guards against
    out = reduce_loss(per, None, per.shape, "mean")
    assert out.dtype == dtype and float(out) == 4.0
    if dtype == torch.bfloat16:  # fp16 cannot hold the sum itself; bf16 can
        assert float(reduce_loss(per, None, per.shape, "sum")) == pytest.approx(160_000, rel=1e-2)

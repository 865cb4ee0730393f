"""Parity of bigsoftmax.functional with TensorFlow 2.21 golden cases in ../shared/fixtures/tf/."""

import json

import numpy as np
import pytest
import torch

from bigsoftmax import functional as BF

from tests.conftest import FIXTURES_TF

CASES = sorted(p.name for p in FIXTURES_TF.glob("*.npz")) if FIXTURES_TF.exists() else []


def _load(name):
    z = np.load(FIXTURES_TF / name)
    meta = json.loads(str(z["meta"]))
    t = {k: torch.from_numpy(np.array(z[k])) for k in z.files if k != "meta"}
    return meta, t


def _run(meta, t, fn, shards=None, dtype=torch.float32):
    W = t["weights"].to(dtype).clone().requires_grad_()
    b = t["biases"].to(dtype).clone().requires_grad_()
    x = t["inputs"].to(dtype).clone().requires_grad_()
    weights = W if shards is None else list(torch.tensor_split(W, shards))
    biases = b if shards is None else list(torch.tensor_split(b, shards))
    sv = (t["sampled_candidates"], t["true_expected_count"], t["sampled_expected_count"])
    loss = fn(weights, biases, t["labels"], x, meta["num_sampled"], meta["num_classes"], num_true=meta["num_true"],
              sampled_values=sv, remove_accidental_hits=meta["remove_accidental_hits"])
    (loss * t["upstream"].to(dtype)).sum().backward()
    return loss, W.grad, b.grad, x.grad


def _close(a, b):
    torch.testing.assert_close(a.to(torch.float64), b.to(torch.float64), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not CASES, reason="needs ../shared/fixtures/tf (the shared material beside the repo)")
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("shards", [None, 3])
def test_golden_case(name, shards):
    meta, t = _load(name)
    fn = BF.sampled_softmax_loss if meta["loss"] == "sampled_softmax" else BF.nce_loss
    loss, gW, gb, gx = _run(meta, t, fn, shards)
    _close(loss, t["loss"])
    _close(gW, t["d_weights"])
    _close(gb, t["d_biases"])
    _close(gx, t["d_inputs"])


@pytest.mark.skipif(not CASES, reason="needs ../shared/fixtures/tf (the shared material beside the repo)")
@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("ss_")])
def test_fused_equals_general_path_float64(name):
    """The fused kernel (single tensor) and the autograd path (shards) agree to 1e-10 in float64."""
    meta, t = _load(name)
    a = _run(meta, t, BF.sampled_softmax_loss, None, torch.float64)
    b = _run(meta, t, BF.sampled_softmax_loss, 2, torch.float64)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not CASES, reason="needs ../shared/fixtures/tf (the shared material beside the repo)")
def test_compute_sampled_logits_matches_tf_layout():
    meta, t = _load("ss_lu_t3.npz")
    sv = (t["sampled_candidates"], t["true_expected_count"], t["sampled_expected_count"])
    logits, targets = BF.compute_sampled_logits(t["weights"], t["biases"], t["labels"], t["inputs"], meta["num_sampled"],
                                                meta["num_classes"], num_true=3, sampled_values=sv, remove_accidental_hits=True)
    assert logits.shape == targets.shape == (17, 3 + 64)
    assert torch.allclose(targets[:, :3], torch.full((17, 3), 1 / 3))
    assert torch.all(targets[:, 3:] == 0)
    # the loss is softmax cross-entropy of these logits with these targets, as in TF
    ce = -(targets * torch.log_softmax(logits, 1)).sum(1)
    _close(ce, t["loss"])
    # columns of accidental hits hold the most negative finite float, as TF's -FLT_MAX
    idx, ids, w = BF.compute_accidental_hits(t["labels"], t["sampled_candidates"], 3)
    assert torch.all(logits[idx.long(), 3 + ids] == torch.finfo(torch.float32).min)
    assert torch.all(w == torch.finfo(torch.float32).min)

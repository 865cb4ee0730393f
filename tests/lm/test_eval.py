import io
import math

import numpy as np
import pytest
import torch

from bigsoftmax.lm.eval import evaluate
from bigsoftmax.heads import SampledSoftmax
from bigsoftmax.lm.models import LSTMLM, TransformerLM
from bigsoftmax.lm.registry import available_heads, build_head
from bigsoftmax.lm.train import Progress

V, D = 40, 12


def _reference(model, stream, B, T, ks):
    """Perplexity / top-k from the dense [N, V] log-softmax, lane by lane with the state carried."""
    L = len(stream) // B
    lanes = torch.as_tensor(np.asarray(stream[: B * L], dtype=np.int64)).reshape(B, L)
    state, lps, hits, n = None, [], {k: 0 for k in ks}, 0
    for i in range(0, L - 1, T):
        x, y = lanes[:, i : min(i + T, L - 1)], lanes[:, i + 1 : min(i + T, L - 1) + 1]
        h, state = model(x, state)
        lp = model.head.log_prob(h)  # [B, t, V] exact
        lps.append(lp.gather(-1, y[..., None])[..., 0].reshape(-1))
        top = lp.topk(max(ks), dim=-1).indices
        for k in ks:
            hits[k] += int((top[..., :k] == y[..., None]).any(-1).sum())
        n += y.numel()
    nll = -torch.cat(lps).double().mean().item()
    return nll, {k: hits[k] / n for k in ks}


@pytest.mark.parametrize("kind,head", [("lstm", "sampled"), ("lstm", "adaptive"), ("transformer", "hierarchical")])
@torch.no_grad()
def test_evaluate_matches_dense_reference(kind, head):
    if head not in available_heads():
        pytest.skip(f"{head} not available")
    torch.manual_seed(0)
    counts = np.sort(np.random.default_rng(1).integers(1, 100, V))[::-1].copy()
    h = build_head(head, D, counts)
    model = (LSTMLM(V, h, D) if kind == "lstm" else TransformerLM(V, h, D, num_layers=1, max_len=7)).eval()
    stream = np.random.default_rng(2).integers(0, V, 300)
    res = evaluate(model, stream, batch_size=4, seq_len=7, topk=(1, 3))
    nll, acc = _reference(model, stream, 4, 7, (1, 3))
    assert res["tokens"] == 4 * (300 // 4 - 1)
    assert res["nll"] == pytest.approx(nll, rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert res["acc@1"] == pytest.approx(acc[1]) and res["acc@3"] == pytest.approx(acc[3])


def test_evaluate_restores_training_mode_and_checks_arguments():
    model = LSTMLM(V, SampledSoftmax(D, V, 5), D).train()
    stream = np.arange(100) % V
    evaluate(model, stream, batch_size=2, seq_len=5, topk=())
    assert model.training
    with pytest.raises(ValueError, match="topk"):
        evaluate(model, stream, topk=(V + 1,))
    with pytest.raises(ValueError, match="at least 2"):
        evaluate(model, stream[:1])
    with pytest.raises(ValueError, match="max_tokens"):
        evaluate(model, stream, max_tokens=0)
    res = evaluate(model, stream, batch_size=2, seq_len=5, max_tokens=20, topk=())
    assert 18 <= res["tokens"] <= 22


def test_progress_bar_formats():
    buf = io.StringIO()
    p = Progress("train", stream=buf, log_interval=0.0)
    p.update(0.5, 123_456, 45_600.0, 5.4321, 83.0)
    line = buf.getvalue()
    assert "50.0%" in line and "123.5K tok" in line and "45.6K tok/s" in line and "loss 5.432" in line
    assert "ETA 01:23" in line and line.endswith("\n")  # not a terminal: plain lines
    quiet = io.StringIO()
    Progress(stream=quiet, enabled=False).update(0.1, 1, 1.0, 1.0, 1.0, force=True)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("head", ["selfnorm", "nce", "hierarchical"])
@torch.no_grad()
def test_evaluate_log_z_statistics_match_dense_logsumexp(head):
    """log_z=True reports mean / std / mean |.| of logsumexp of the raw logits over the evaluated
    positions — for linear heads only (a tree head has no raw logits: no keys)."""
    torch.manual_seed(0)
    counts = np.sort(np.random.default_rng(1).integers(1, 100, V))[::-1].copy()
    model = LSTMLM(V, build_head(head, D, counts), D).eval()
    stream = np.random.default_rng(2).integers(0, V, 200)
    res = evaluate(model, stream, batch_size=4, seq_len=7, topk=(), log_z=True)
    if head == "hierarchical":
        assert "log_z_mean" not in res
        return
    L = len(stream) // 4
    lanes = torch.as_tensor(stream[: 4 * L]).reshape(4, L)
    state, lz = None, []
    for i in range(0, L - 1, 7):
        x = lanes[:, i : min(i + 7, L - 1)]
        h, state = model(x, state)
        z = h @ model.head.weight.t() + model.head.bias
        lz.append(torch.logsumexp(z.double(), -1).reshape(-1))
    lz = torch.cat(lz)
    assert res["log_z_mean"] == pytest.approx(float(lz.mean()), rel=1e-5, abs=1e-6)
    assert res["log_z_std"] == pytest.approx(float(lz.std(unbiased=False)), rel=1e-3, abs=1e-5)
    assert res["log_z_mean_abs"] == pytest.approx(float(lz.abs().mean()), rel=1e-5, abs=1e-6)
    assert "log_z_mean" not in evaluate(model, stream, batch_size=4, seq_len=7, topk=())

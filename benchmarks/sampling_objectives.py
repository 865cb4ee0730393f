"""Sampling objectives and retrieval losses: step time vs naive torch and the GEMM roofline, in one run.

    python benchmarks/sampling_objectives.py           # P1 heads (V=1M, d=256, B=1024, S=8192); in-batch B=C=4096, d=128
    python benchmarks/sampling_objectives.py --quick   # small sizes, seconds

A step is forward + backward (sampling included for the heads). Methods:
- roofline: only the three GEMMs the step cannot avoid (BENCHMARKING.md): for a sampled head the
  logits ``x @ Wc.T``, ``grad_x = G @ Wc`` and ``grad_Wc = G.T @ x`` over the S+B candidate rows; for
  the in-batch loss the same three over the [B, C] score matrix.
- heads: ``NCE``, ``SampledLogistic``, ``NegativeSampling`` (bigsoftmax.heads, ``sparse=True``) next to
  ``SampledSoftmax(sparse=True)`` (the fused kernel) and a naive torch NCE (``F.embedding(sparse=True)``
  gathers, matmul, ``F.binary_cross_entropy_with_logits``).
- in-batch: ``in_batch_softmax_loss`` (log-Q correction + id-based hit masking) vs the naive torch
  formulation ``F.cross_entropy(q @ c.T / t - log q  masked, arange(B))``.
- StreamingFrequencyEstimator: ``update(ids) + log_q(ids)`` per step, as a fraction of the in-batch step.
Times: one warm-up each, then the median of ``--repeats`` round-robin rounds (methods alternate, so
load drift on the shared machine affects all alike); ``torch.set_num_threads(2)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bigsoftmax import samplers as S  # noqa: E402
from bigsoftmax.samplers import StreamingFrequencyEstimator  # noqa: E402
from bigsoftmax.heads import NCE, NegativeSampling, SampledLogistic, SampledSoftmax  # noqa: E402
from bigsoftmax.retrieval import in_batch_softmax_loss  # noqa: E402


def time_round_robin(fns, repeats):
    """Median time of each callable; one warm-up each, then ``repeats`` rounds calling them in turn,
    so a load change on the shared machine hits every method alike (the ratios stay meaningful)."""
    for fn in fns.values():
        fn()
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return [(k, statistics.median(v)) for k, v in ts.items()]


def ms(t):
    return f"{t * 1e3:,.1f} ms"


def bench_heads(V, d, B, Sn, repeats):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, generator=g, requires_grad=True)
    y = S.LogUniform(V, unique=False).sample(torch.zeros(1, 1, dtype=torch.long), B, generator=g)[0]
    counts = 1.0 / torch.arange(1, V + 1, dtype=torch.float64)  # Zipf counts for the unigram^0.75 noise
    heads = {
        "SampledSoftmax (fused; reference)": SampledSoftmax(d, V, Sn, sparse=True, seed=0),
        "NCE": NCE(d, V, Sn, sparse=True, seed=0),
        "SampledLogistic": SampledLogistic(d, V, Sn, sparse=True, seed=0),
        "NegativeSampling (unigram^0.75)": NegativeSampling(d, V, Sn, counts=counts, sparse=True, seed=0),
    }
    w0 = heads["NCE"].weight
    for h in heads.values():  # share one [V, d] table to save memory
        h.weight = w0

    cand = torch.cat([y, torch.randint(0, V, (Sn,), generator=g)])
    Wc = w0.detach()[cand].clone()
    G = torch.randn(B, Sn + B, generator=g)

    def roofline():
        x.detach() @ Wc.t()
        G @ Wc
        G.t() @ x.detach()

    fns = {"GEMM roofline (3 matmuls over S+B rows)": roofline}
    for name, h in heads.items():
        def step(h=h):
            h.weight.grad = h.bias.grad = x.grad = None
            h(x, y).backward()
        fns[f"bigsoftmax `{name}`, sparse=True"] = step

    nce = heads["NCE"]
    sv = nce.sampler.sample(y[:, None], Sn, generator=g)
    W, b = nce.weight, nce.bias

    def naive():
        W.grad = b.grad = x.grad = None
        sampled, te, se = sv
        wt, ws = F.embedding(y, W, sparse=True), F.embedding(sampled, W, sparse=True)
        zt = (x * wt).sum(-1) + b[y] - te[:, 0].log()
        zs = x @ ws.t() + b[sampled] - se.log()
        loss = F.binary_cross_entropy_with_logits(zt, torch.ones_like(zt), reduction="sum") + \
            F.binary_cross_entropy_with_logits(zs, torch.zeros_like(zs), reduction="sum")
        (loss / B).backward()

    fns["naive torch NCE (sparse embedding grads, draw excluded)"] = naive
    return time_round_robin(fns, repeats)


def bench_in_batch(B, C, d, n_items, repeats):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, d, generator=g, requires_grad=True)
    c = torch.randn(C, d, generator=g, requires_grad=True)
    ids = S.LogUniform(n_items, unique=False).sample(torch.zeros(1, 1, dtype=torch.long), C, generator=g)[0]
    est = StreamingFrequencyEstimator(1 << 20, num_hashes=2)
    est.update(ids)
    lq = est.log_q(ids)
    G = torch.randn(B, C, generator=g)

    def roofline():
        q.detach() @ c.detach().t()
        G @ c.detach()
        G.t() @ q.detach()

    def ours():
        q.grad = c.grad = None
        in_batch_softmax_loss(q, c, ids, lq, 0.05).backward()

    def naive():
        q.grad = c.grad = None
        z = q @ c.t() / 0.05 - lq
        same = (ids[None, :] == ids[:B, None]) & ~torch.eye(B, C, dtype=torch.bool)
        z = z.masked_fill(same, torch.finfo(z.dtype).min)
        F.cross_entropy(z, torch.arange(B)).backward()

    def estimator():
        est.update(ids, int(est.step) + 1)
        est.log_q(ids)

    return time_round_robin({
        "GEMM roofline (3 matmuls over [B, C])": roofline,
        "bigsoftmax `in_batch_softmax_loss` (log q + id hit mask)": ours,
        "naive torch (masked F.cross_entropy)": naive,
        "StreamingFrequencyEstimator update+log_q (2 hashes, 2^20 buckets)": estimator,
    }, repeats)


def table(title, rows, base):
    out = [f"### {title}", "", "| method | step time | × roofline |", "|---|---:|---:|"]
    for name, t in rows:
        out.append(f"| {name} | {ms(t)} | {t / base:.2f} |")
    return out + [""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        hcfg, icfg = (20_000, 64, 128, 512), (512, 1024, 64, 20_000)
    else:
        hcfg, icfg = (1_000_000, 256, 1024, 8192), (4096, 4096, 128, 1_000_000)
    lines = [f"torch {torch.__version__}, {args.threads} threads, fp32, median of {args.repeats} steps (forward+backward)", ""]
    rows = bench_heads(*hcfg, args.repeats)
    lines += table(f"Sampling heads: V={hcfg[0]:,}, d={hcfg[1]}, B={hcfg[2]}, S={hcfg[3]:,}", rows, rows[0][1])
    print("\n".join(lines), flush=True)
    rows = bench_in_batch(*icfg, args.repeats)
    lines += table(f"In-batch softmax: B={icfg[0]}, C={icfg[1]}, d={icfg[2]} (ids from a log-uniform over {icfg[3]:,} items)",
                   rows, rows[0][1])
    print("\n".join(lines[-(len(rows) + 5):]))


if __name__ == "__main__":
    main()

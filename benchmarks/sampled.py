"""Sampled softmax output-layer step time: bigsoftmax vs naive torch vs the GEMM roofline, in one run.

    python benchmarks/sampled.py            # P1: V=1,000,000, d=256, B=1024, S=8192 + V sweep at d=128
    python benchmarks/sampled.py --quick    # small sizes, seconds

A step is forward + backward of the output layer (sampling included for ours). Methods:
- roofline: only the three GEMMs a sampled step cannot avoid, over the S+B candidate rows:
  logits ``x @ Wc.T``, ``grad_x = G @ Wc``, ``grad_Wc = G.T @ x`` (BENCHMARKING.md).
- bigsoftmax: ``SampledSoftmax(sparse=True)`` with its default log-uniform sampler (draw included).
- naive sparse: ``F.embedding(..., sparse=True)`` gathers + matmul + ``F.cross_entropy`` (what a careful user writes).
- naive dense: the same with ``W[ids]`` indexing, which gives a dense [V, d] weight gradient.
Times are medians of ``--repeats`` timed steps after one warm-up, ``torch.set_num_threads(2)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import timeit  # noqa: E402
from bigsoftmax import samplers as S  # noqa: E402
from bigsoftmax.heads import SampledSoftmax  # noqa: E402


def run_config(V, d, B, Sn, repeats, naive_dense=True):
    g = torch.Generator().manual_seed(0)
    head = SampledSoftmax(d, V, Sn, sparse=True, seed=0)
    x = torch.randn(B, d, generator=g, requires_grad=True)
    zipf = S.LogUniform(V, unique=False)
    y = zipf.sample(torch.zeros(1, 1, dtype=torch.long), B, generator=g)[0]  # Zipfian targets
    W, b = head.weight, head.bias

    def ours():
        head.weight.grad = head.bias.grad = x.grad = None
        head(x, y).backward()

    cand = torch.cat([y, torch.randint(0, V, (Sn,), generator=g)])
    Wc = W.detach()[cand].clone()
    G = torch.randn(B, Sn + B, generator=g)

    def roofline():
        z = x.detach() @ Wc.t()
        gx = G @ Wc
        gw = G.t() @ x.detach()
        return z, gx, gw

    sv = head.sampler.sample(y[:, None], Sn, generator=g)

    def naive(sparse):
        def step():
            W.grad = b.grad = x.grad = None
            sampled, te, se = sv
            if sparse:
                wt, ws = F.embedding(y, W, sparse=True), F.embedding(sampled, W, sparse=True)
                bt, bs = F.embedding(y, b[:, None], sparse=False)[:, 0], F.embedding(sampled, b[:, None], sparse=False)[:, 0]
            else:
                wt, ws, bt, bs = W[y], W[sampled], b[y], b[sampled]
            zt = (x * wt).sum(-1) + bt - te[:, 0].log()
            zs = x @ ws.t() + bs - se.log()
            zs = zs.masked_fill(sampled[None, :] == y[:, None], torch.finfo(zs.dtype).min)
            logits = torch.cat([zt[:, None], zs], 1)
            F.cross_entropy(logits, torch.zeros(B, dtype=torch.long)).backward()
        return step

    t_roof = timeit(roofline, repeats)
    t_ours = timeit(ours, repeats)
    t_draw = timeit(lambda: head.sampler.sample(y[:, None], Sn, generator=head.generator), repeats)
    # bias is dense in the naive versions (a [V] vector is cheap); the weight is what matters
    t_sparse = timeit(naive(True), repeats)
    t_dense = timeit(naive(False), max(2, repeats // 2)) if naive_dense else float("nan")
    return dict(V=V, d=d, B=B, S=Sn, roofline=t_roof, ours=t_ours, draw=t_draw, naive_sparse=t_sparse, naive_dense=t_dense)


def fmt_ms(t):
    return "—" if t != t else f"{t * 1e3:,.1f} ms"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sampled.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        main_cfg, sweep = (20_000, 64, 128, 512), [(10_000, 32, 128, 512), (100_000, 32, 128, 512)]
    else:
        main_cfg, sweep = (1_000_000, 256, 1024, 8192), [(100_000, 128, 1024, 8192), (1_000_000, 128, 1024, 8192), (10_000_000, 128, 1024, 8192)]
    lines = [f"torch {torch.__version__}, {args.threads} threads, fp32, median of {args.repeats} steps (forward+backward of the output layer)", ""]
    r = run_config(*main_cfg, args.repeats)
    lines += [
        f"### V={r['V']:,}, d={r['d']}, B={r['B']}, S={r['S']:,}",
        "",
        "| method | step time | × GEMM roofline |",
        "|---|---:|---:|",
        f"| GEMM roofline (3 matmuls over S+B rows) | {fmt_ms(r['roofline'])} | 1.00 |",
        f"| **bigsoftmax `SampledSoftmax(sparse=True)`** (draw included) | {fmt_ms(r['ours'])} | **{r['ours'] / r['roofline']:.2f}** |",
        f"| — of which the log-uniform draw | {fmt_ms(r['draw'])} | {r['draw'] / r['roofline']:.2f} |",
        f"| naive torch, sparse embedding grads | {fmt_ms(r['naive_sparse'])} | {r['naive_sparse'] / r['roofline']:.2f} |",
        f"| naive torch, dense [V, d] grads | {fmt_ms(r['naive_dense'])} | {r['naive_dense'] / r['roofline']:.2f} |",
        "",
    ]
    print("\n".join(lines), flush=True)
    if not args.no_sweep:
        rows = ["### V sweep (sparse gradients: step time should not grow with V)", "",
                "| V | d | B | S | bigsoftmax | roofline | × roofline | naive sparse |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for cfg in sweep:
            r = run_config(*cfg, args.repeats, naive_dense=False)
            rows.append(f"| {r['V']:,} | {r['d']} | {r['B']} | {r['S']:,} | {fmt_ms(r['ours'])} | {fmt_ms(r['roofline'])} | "
                        f"{r['ours'] / r['roofline']:.2f} | {fmt_ms(r['naive_sparse'])} |")
            print(rows[-1], flush=True)
            del r
        lines += rows
    text = "\n".join(lines) + "\n"
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Tree softmax heads vs the full softmax, in one run: training step time and exact top-k time.

    python benchmarks/tree.py            # V = 100,000 and 1,000,000, d=256, N=1024 (a few minutes)
    python benchmarks/tree.py --quick    # V = 20,000, d=64, N=256 (seconds)

Class counts are Zipf(s) over frequency-sorted ids, targets are drawn from them (seeded generator).
A step is forward + backward of the output layer (gradients set to None before each step):

- full softmax: ``F.cross_entropy(F.linear(x, W, b), y)`` — the naive exact baseline (for
  V >= 500,000 it runs in ``--full-chunks`` row chunks so the [N, V] logits fit in memory; same FLOPs).
- ``HierarchicalSoftmax`` (binary Huffman tree, word2vec sigmoid per node), dense and sparse grads;
  ``HierarchicalSoftmax(arity=4)`` (softmax per node, sparse grads).
- ``ClassBasedSoftmax`` (two-level tree, sqrt-frequency binning, round(sqrt(V)) clusters), dense
  and sparse grads.

Top-k: exact ``head.topk(h, k)`` (beam bound + branch-and-bound) vs brute force over the same head
(``head.log_prob`` on 64-row chunks, then ``topk``), on ``--topk-rows`` rows, for hidden states
``h ~ N(0, s^2)`` at two scales: the mean entropy of the model's distribution is printed, since
pruning depends on how peaked it is (random weights at s=1 are near-uniform for the two-level tree).
Times: ``torch.set_num_threads(--threads)``, one warm-up, median of ``--repeats`` (min of 2 for the
multi-second full-softmax and brute-force runs). Ratios are within one run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import timeit  # noqa: E402
from bigsoftmax.heads import ClassBasedSoftmax, HierarchicalSoftmax  # noqa: E402


def fmt(t):
    return f"{t * 1e3:,.1f} ms" if t < 10 else f"{t:,.2f} s"


def zipf_counts(V, s):
    return 1.0 / np.arange(1, V + 1, dtype=np.float64) ** s


def full_step(x, y, W, b, chunks):
    N = x.shape[0]
    step = -(-N // chunks)

    def f():
        x.grad = W.grad = b.grad = None
        for a in range(0, N, step):
            loss = F.cross_entropy(F.linear(x[a:a + step], W, b), y[a:a + step], reduction="sum") / N
            loss.backward()

    return f


def head_step(head, x, y):
    def f():
        head.zero_grad(set_to_none=True)
        x.grad = None
        head(x, y).backward()

    return f


def run_training(V, d, N, s, repeats, full_chunks, g):
    counts = zipf_counts(V, s)
    y = torch.multinomial(torch.from_numpy(counts / counts.sum()), N, replacement=True, generator=g)
    x = torch.randn(N, d, generator=g, requires_grad=True)
    rows = []
    W = torch.nn.Parameter(torch.randn(V, d, generator=g) / math.sqrt(d))
    b = torch.nn.Parameter(torch.zeros(V))
    chunks = full_chunks if V >= 500_000 else 1
    t_full = timeit(full_step(x, y, W, b, chunks), 2 if V >= 200_000 else repeats, min_below=5)
    name = "full softmax `F.cross_entropy(F.linear)`" + (f" ({chunks} row chunks)" if chunks > 1 else "")
    rows.append((name, "—", t_full))
    del W, b
    heads = {}
    builders = [
        ("HierarchicalSoftmax (binary Huffman, sigmoid/node)", lambda: HierarchicalSoftmax(d, counts), False),
        ("HierarchicalSoftmax (binary Huffman), sparse=True", lambda: HierarchicalSoftmax(d, counts, sparse=True), True),
        ("HierarchicalSoftmax(arity=4) (softmax/node), sparse=True", lambda: HierarchicalSoftmax(d, counts, arity=4, sparse=True), True),
        ("ClassBasedSoftmax (sqrt binning)", lambda: ClassBasedSoftmax(d, counts), False),
        ("ClassBasedSoftmax (sqrt binning), sparse=True", lambda: ClassBasedSoftmax(d, counts, sparse=True), True),
    ]
    for name, mk, _ in builders:
        t0 = time.perf_counter()
        head = mk()
        t_build = time.perf_counter() - t0
        t = timeit(head_step(head, x, y), repeats, min_below=5)
        info = f"depth {head.tree.depth}, E[path] {head.tree.expected_code_length(counts):.2f}, {head.tree.num_nodes:,} nodes"
        rows.append((f"{name} — {info}", fmt(t_build), t))
        print(f"  {rows[-1][0]}: {fmt(t)}", flush=True)
        if "sparse" in name and "arity" not in name:
            heads["Huffman (binary)" if "Hierarchical" in name else "two-level (class-based)"] = head
        del head
    lines = [
        f"### Training step, V={V:,}, d={d}, N={N}, Zipf({s}) targets",
        "",
        "| method | tree build | step (fwd+bwd) | speed-up vs full |",
        "|---|---:|---:|---:|",
    ]
    for name, tb, t in rows:
        lines.append(f"| {name} | {tb} | {fmt(t)} | {t_full / t:,.1f}× |")
    return lines, heads


def run_topk(heads, V, d, n, k, scales, repeats, g):
    lines = [
        f"### Exact top-{k}, V={V:,}, d={d}, {n} rows",
        "",
        "| tree | h scale | mean entropy (nats) | `head.topk` | brute force (`log_prob` + `topk`) | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, head in heads.items():
        for sc in scales:
            h = torch.randn(n, d, generator=g) * sc
            with torch.no_grad():
                lp = head.log_prob(h[:64])
                ent = float(-(lp.exp() * lp).sum(-1).mean())

                def brute():
                    out = [head.log_prob(h[a:a + 64]).topk(k, dim=1) for a in range(0, n, 64)]
                    return torch.cat([o.values for o in out]), torch.cat([o.indices for o in out])

                v, _ = head.topk(h, k)
                bv, _ = brute()
                assert torch.allclose(v, bv, atol=1e-4), "top-k disagrees with brute force"
                t_tree = timeit(lambda: head.topk(h, k), repeats, min_below=5)
                t_brute = timeit(brute, 2, min_below=5)
            lines.append(f"| {name} | {sc:g} | {ent:.2f} | {fmt(t_tree)} | {fmt(t_brute)} | {t_brute / t_tree:,.1f}× |")
            print("  " + lines[-1], flush=True)
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run, seconds)")
    ap.add_argument("--vocab", type=int, nargs="+", help="class counts V (default 100000 1000000; quick 20000)")
    ap.add_argument("--dim", type=int, help="d (default 256; quick 64)")
    ap.add_argument("--batch", type=int, help="N rows per step (default 1024; quick 256)")
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the class counts")
    ap.add_argument("--topk-rows", type=int, help="rows for the top-k comparison (default 128; quick 64)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--full-chunks", type=int, default=4, help="row chunks of the full softmax for V >= 500,000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="Markdown output (default benchmarks/results/tree.md; quick: tree-quick.md)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    vocab = args.vocab or ([20_000] if args.quick else [100_000, 1_000_000])
    d = args.dim or (64 if args.quick else 256)
    N = args.batch or (256 if args.quick else 1024)
    n_top = args.topk_rows or (64 if args.quick else 128)
    out = args.out or Path(__file__).parent / "results" / ("tree-quick.md" if args.quick else "tree.md")
    g = torch.Generator().manual_seed(args.seed)
    lines = [
        f"torch {torch.__version__}, {args.threads} threads, fp32, CPU. Step: median of {args.repeats} "
        "(min of 2 for multi-second runs) after one warm-up. Shared machine: compare ratios within a table.",
        "",
    ]
    for V in vocab:
        print(f"V={V:,}", flush=True)
        tl, heads = run_training(V, d, N, args.zipf, args.repeats, args.full_chunks, g)
        lines += tl + [""]
        lines += run_topk(heads, V, d, n_top, args.k, (1.0, 4.0), args.repeats, g) + [""]
        del heads
    cmd = "python benchmarks/tree.py" + (" --quick" if args.quick else "")
    if argv:
        cmd = "python benchmarks/tree.py " + " ".join(argv)
    lines.append(f"Command: `{cmd}`")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

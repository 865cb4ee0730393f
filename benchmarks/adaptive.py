"""Adaptive softmax training step: bigsoftmax.heads.AdaptiveSoftmax vs torch.nn.AdaptiveLogSoftmaxWithLoss.

Forward + backward of the output layer (loss.backward() into the hidden states and every weight),
fp32, 2 threads, Zipf(1.15) targets over frequency-sorted ids, identical weights (from_torch).
Both modules are timed alternately in one process (warm-up, then the median of --repeats calls
each); the ratio torch / ours is the figure to quote. Also reports a GEMM roofline: only the matrix
multiplies the method cannot avoid for this batch (the head GEMMs on all rows, each tail's two GEMMs
on the rows that reach it; forward + both backward GEMMs).

    python benchmarks/adaptive.py            # V=100K [2K, 20K] and V=1M [4K, 40K, 200K], d=256, N=2048
    python benchmarks/adaptive.py --quick    # small sizes, seconds
    python benchmarks/adaptive.py --threads 1,2   # both thread counts in one table
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _timing import timeit  # benchmarks/_timing.py (the script's folder is on sys.path)
from bigsoftmax.heads.adaptive import AdaptiveSoftmax


def zipf_targets(V: int, n: int, s: float, g: torch.Generator) -> torch.Tensor:
    p = torch.arange(1, V + 1, dtype=torch.float64).pow(-s)
    return torch.multinomial(p / p.sum(), n, replacement=True, generator=g)


def step_torch(m, x, y):
    x.grad = None
    m.zero_grad(set_to_none=True)
    m(x, y).loss.backward()


def step_ours(m, x, y):
    x.grad = None
    m.zero_grad(set_to_none=True)
    m(x, y).backward()


def gemm_roofline(m: AdaptiveSoftmax, x, y, repeats):
    """Time only the unavoidable GEMMs (3 per matrix product) for this batch."""
    with torch.no_grad():
        cid = m._cluster_of(y)
        n = [int((cid == j).sum()) for j in range(m.n_clusters + 1)]
        H = m.full_head_weight().detach()
        mats = [(x.detach(), H)]
        for j in range(m.n_clusters):
            if n[j + 1]:
                xr = x.detach()[: n[j + 1]]
                p = m.tail_proj[j].detach()
                mats.append((xr, p))
                mats.append((torch.zeros(n[j + 1], p.shape[0]), m.tail_weight[j].detach()))

        def run():
            for a, w in mats:
                z = a @ w.t()
                _ = z @ w
                _ = z.t() @ a

        return timeit(run, repeats)


def bench(V, cutoffs, d, N, repeats, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tm = torch.nn.AdaptiveLogSoftmaxWithLoss(d, V, cutoffs)
    ours = AdaptiveSoftmax.from_torch(tm)
    x = torch.randn(N, d, generator=g, requires_grad=True)
    y = zipf_targets(V, N, 1.15, g)
    # correctness check on this batch
    with torch.no_grad():
        ref = tm(x, y).loss.item()
        got = ours(x, y).item()
    assert abs(ref - got) <= 1e-4 * max(1.0, abs(ref)), (ref, got)
    for _ in range(2):  # warm-up
        step_torch(tm, x, y)
        step_ours(ours, x, y)
    tt, to = [], []
    for _ in range(repeats):  # alternate so that load drift hits both
        t = time.perf_counter()
        step_torch(tm, x, y)
        tt.append(time.perf_counter() - t)
        t = time.perf_counter()
        step_ours(ours, x, y)
        to.append(time.perf_counter() - t)
    roof = gemm_roofline(ours, x, y, repeats)
    cid = ours._cluster_of(y)
    frac = [round(float((cid == j).float().mean()), 3) for j in range(1, ours.n_clusters + 1)]
    return dict(
        V=V, cutoffs=cutoffs, d=d, N=N, frac=frac,
        torch=statistics.median(tt), ours=statistics.median(to), roof=roof,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (V=20K, N=512)")
    ap.add_argument("--batch", type=int, default=2048, help="rows per step N (default 2048)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", default="2", help="torch threads; a comma list (e.g. 1,2) runs each")
    ap.add_argument("--only", choices=["100k", "1m"], default=None, help="run one of the two full configs")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "adaptive.md"))
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args(argv)
    threads = [int(t) for t in str(a.threads).split(",")]
    if a.quick:
        configs = [(20_000, [1000, 5000]), (50_000, [2000, 10000, 30000])]
        N, reps = min(a.batch, 512), min(a.repeats, 5)
    else:
        configs = [(100_000, [2000, 20000]), (1_000_000, [4000, 40000, 200000])]
        if a.only == "100k":
            configs = configs[:1]
        elif a.only == "1m":
            configs = configs[1:]
        N, reps = a.batch, a.repeats
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for V, c in configs:
            r = bench(V, c, a.dim, N, reps)
            r["threads"] = t
            rows.append(r)
            print(f"  done V={V:,} threads={t}", flush=True)
    lines = [
        f"Adaptive softmax, forward+backward, fp32, d={a.dim}, N={N}, Zipf(1.15) targets, "
        f"median of {reps} (torch and ours alternating)",
        "",
        "| V | cutoffs | tail row fractions | threads | torch AdaptiveLogSoftmaxWithLoss | bigsoftmax AdaptiveSoftmax "
        "| speed-up (torch / ours) | GEMM roofline | ours / roofline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['V']:,} | {r['cutoffs']} | {r['frac']} | {r['threads']} | {r['torch'] * 1e3:.1f} ms "
            f"| {r['ours'] * 1e3:.1f} ms | {r['torch'] / r['ours']:.2f}x | {r['roof'] * 1e3:.1f} ms "
            f"| {r['ours'] / r['roof']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not a.no_save and not a.quick:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python benchmarks/adaptive.py" + (f" --only {a.only}" if a.only else "") + (
            f" --threads {a.threads}" if str(a.threads) != "2" else ""
        )
        out.write_text(f"# Adaptive softmax benchmark\n\nCommand: `{cmd}`\n\n{table}\n")
        print(f"saved {out}")


if __name__ == "__main__":
    main()

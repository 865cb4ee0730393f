"""Exact full-softmax output-layer step: bigsoftmax vs naive torch vs torch's linear_cross_entropy vs the GEMM roofline.

    python benchmarks/full.py                 # V=1,000,000, d=256, N=1024, fp32 (minutes; needs ~14 GB free RAM for naive)
    python benchmarks/full.py --quick         # V=50,000, d=128, N=512 (seconds)
    python benchmarks/full.py --methods ours,roofline --V 200000

A step is forward + backward of the output layer: loss = CE(x @ W.T + b, y), gradients for x, W, b.
Every method runs in a fresh subprocess (``torch.set_num_threads(2)``):
- time: one warm-up step, then the min of ``--repeats`` timed steps (BENCHMARKING.md: min of 2-3 for
  multi-second steps); a method whose warm-up step already takes longer than ``--slow-s`` seconds reports
  that single step instead (torch's batch-chunked path at 1M classes: minutes per step).
- peak extra memory: ``ru_maxrss`` after the steps minus ``ru_maxrss`` once x, W, b and their gradient
  buffers exist; gradients are reset with ``set_to_none`` before every step, as ``optimizer.zero_grad()``
  does, so the step's own gradients reuse that memory and only the method's workspace counts.
Methods:
- roofline: only the three GEMMs an exact step cannot avoid, in vocabulary slices of our chunk size:
  ``Z = x @ W_s.T``, ``grad_x += Z @ W_s``, ``grad_W[s] = Z.T @ x``;
- ours: ``bigsoftmax.functional.linear_cross_entropy`` (default chunk size); ours-precompute: with
  ``precompute=True`` (gradients computed inside forward);
- naive-linear: ``F.cross_entropy(F.linear(x, W, b), y)``; naive-matmul: ``F.cross_entropy(x @ W.T + b, y)``;
- torch-lce[...]: ``torch.nn.functional.linear_cross_entropy`` with ``LinearCrossEntropyOptions`` (its
  batch-chunked path; ``auto`` picks the chunk from the aspect ratio, ``bcN`` sets ``batch_chunk_size=N``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ALL_METHODS = ["roofline", "ours", "ours-precompute", "naive-linear", "naive-matmul", "torch-lce-auto", "torch-lce-bc64",
               "torch-lce-bc256"]


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(args) -> dict:
    import torch
    import torch.nn.functional as F

    from bigsoftmax._full import default_chunk_size, linear_cross_entropy

    torch.set_num_threads(args.threads)
    N, d, V = args.N, args.d, args.V
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, generator=g, requires_grad=True)
    W = torch.nn.Parameter(torch.randn(V, d, generator=g) * (1.0 / d ** 0.5))
    b = torch.nn.Parameter(torch.zeros(V))
    y = torch.randint(0, V, (N,), generator=g)
    chunk = default_chunk_size(N, V)
    for p in (x, W, b):  # the gradient buffers exist before the baseline, as in a training loop
        p.grad = torch.zeros_like(p)
    base = _maxrss_bytes()

    m = args.worker
    if m == "roofline":
        def step():
            xd, Wd = x.detach(), W.detach()
            gx = torch.zeros(N, d)
            gW = torch.empty(V, d)
            z = torch.empty(N, chunk)
            for s0 in range(0, V, chunk):
                s1 = min(V, s0 + chunk)
                Ws, zs = Wd[s0:s1], z[:, : s1 - s0]
                torch.mm(xd, Ws.t(), out=zs)
                gx.addmm_(zs, Ws)
                torch.mm(zs.t(), xd, out=gW[s0:s1])
            x.grad, W.grad = gx, gW
            return float("nan")
    else:
        if m == "ours":
            def loss_fn():
                return linear_cross_entropy(x, W, b, y)
        elif m == "ours-precompute":
            def loss_fn():
                return linear_cross_entropy(x, W, b, y, precompute=True)
        elif m == "naive-linear":
            def loss_fn():
                return F.cross_entropy(F.linear(x, W, b), y)
        elif m == "naive-matmul":
            def loss_fn():
                return F.cross_entropy(x @ W.T + b, y)
        elif m.startswith("torch-lce"):
            if not hasattr(F, "linear_cross_entropy") or not hasattr(torch.nn, "LinearCrossEntropyOptions"):
                return {"method": m, "skipped": f"torch {torch.__version__} has no F.linear_cross_entropy options"}
            opt = m[len("torch-lce-"):]
            if opt == "auto":
                options = torch.nn.LinearCrossEntropyOptions()
            else:
                options = torch.nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=int(opt[2:]))

            def loss_fn():
                return F.linear_cross_entropy(x, W, y, linear_bias=b, options=options)
        else:
            raise SystemExit(f"unknown method {m!r}; choose from {ALL_METHODS}")

        def step():
            loss = loss_fn()
            loss.backward()
            return float(loss)

    def timed():
        x.grad = W.grad = b.grad = None  # optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = step()
        return time.perf_counter() - t0, loss

    t_warm, loss = timed()
    single = t_warm > args.slow_s
    times = [t_warm] if single else [timed()[0] for _ in range(args.repeats)]
    return {"method": m, "time_s": min(times), "times": times, "single": single,
            "extra_bytes": max(0, _maxrss_bytes() - base), "loss": loss, "chunk": chunk}


def run_method(m: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", m, "--V", str(args.V), "--d", str(args.d), "--N", str(args.N),
           "--repeats", str(args.repeats), "--threads", str(args.threads), "--slow-s", str(args.slow_s)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if p.returncode != 0:
        return {"method": m, "skipped": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}"}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s"] = time.perf_counter() - t0
    return r


def table(results, args, loads=None) -> str:
    logits = args.N * args.V * 4
    roof = next((r["time_s"] for r in results if r["method"] == "roofline" and "time_s" in r), None)
    lines = [
        f"Config: V={args.V:,}, d={args.d}, N={args.N}, fp32, {args.threads} threads; forward+backward of the output layer; "
        f"naive [N, V] fp32 logits = {logits / 2**20:,.0f} MiB."
        + (f" Machine load average (1 min) at start / end: {loads[0]:.1f} / {loads[1]:.1f} on {os.cpu_count()} cores."
           if loads else ""),
        "",
        "| method | step time (s) | × roofline | peak extra memory (MiB) | extra / naive logits | loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['method']} | skipped: {r['skipped']} | | | | |")
            continue
        ratio = f"{r['time_s'] / roof:.2f}" if roof else "n/a"
        t = f"{r['time_s']:.3f}" + (" (warm-up step only)" if r.get("single") else f" (min of {len(r['times'])})")
        loss = "" if r["loss"] != r["loss"] else f"{r['loss']:.6f}"
        lines.append(f"| {r['method']} | {t} | {ratio} | {r['extra_bytes'] / 2**20:,.1f} | "
                     f"{100 * r['extra_bytes'] / logits:.2f}% | {loss} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small config: V=50,000, d=128, N=512")
    ap.add_argument("--V", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--N", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="timed steps after the warm-up (default 5 quick, 3 full)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slow-s", type=float, default=30.0, help="a warm-up step slower than this is the only timed step")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma-separated subset of {ALL_METHODS}")
    ap.add_argument("--out", default=None, help="also write the Markdown table to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.V = args.V or (50_000 if args.quick else 1_000_000)
    args.d = args.d or (128 if args.quick else 256)
    args.N = args.N or (512 if args.quick else 1024)
    args.repeats = args.repeats or (5 if args.quick else 3)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    methods = [m for m in args.methods.split(",") if m]
    if "roofline" not in methods:
        methods.insert(0, "roofline")
    results = []
    load0 = os.getloadavg()[0]
    for m in methods:
        r = run_method(m, args)
        print(f"# {m}: " + (r.get("skipped") or f"{r['time_s']:.3f} s, extra {r['extra_bytes'] / 2**20:,.1f} MiB"),
              file=sys.stderr, flush=True)
        results.append(r)
    md = table(results, args, (load0, os.getloadavg()[0]))
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"<!-- python benchmarks/full.py {' '.join(argv or sys.argv[1:])} -->\n\n{md}\n")


if __name__ == "__main__":
    main()

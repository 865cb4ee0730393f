"""Exact full-softmax output-layer step: bigsoftmax vs naive torch vs torch's linear_cross_entropy vs the GEMM roofline.

    python benchmarks/full.py                 # V=1,000,000, d=256, N=1024, fp32 (tens of minutes; ~14 GB free RAM for naive)
    python benchmarks/full.py --quick         # V=50,000, d=128, N=512 (about a minute)
    python benchmarks/full.py --methods ours,naive-linear --V 200000 --threads 1

A step is forward + backward of the output layer: loss = CE(x @ W.T + b, y), gradients for x, W, b.
Two phases, ``torch.set_num_threads(--threads)`` (default 2) everywhere:

1. Memory: every method runs one step in a fresh subprocess. Peak extra memory = ``ru_maxrss`` after the
   step minus ``ru_maxrss`` once x, W, b and their gradient buffers exist (gradients are then reset with
   ``set_to_none``, as ``optimizer.zero_grad()`` does, so the step's own gradients reuse that memory and
   only the method's workspace counts). The step's loss is reported, so the methods can be compared.
2. Time: one process, the methods interleaved round-robin (one warm-up round, then ``--rounds`` timed
   rounds), each method's minimum reported. Interleaving keeps the ratios meaningful on a shared machine
   whose load drifts (BENCHMARKING.md: ratios against baselines measured in the same process). Methods
   slower than ``--slow-s`` in the memory phase (torch's aspect-ratio auto chunking: minutes per step at
   1M classes) are not interleaved; their single memory-phase step is reported instead.

Methods:
- roofline: only the three GEMMs an exact step cannot avoid, in vocabulary slices of our chunk size:
  ``Z = x @ W_s.T``, ``grad_x += Z @ W_s``, ``grad_W[s] = Z.T @ x``;
- ours: ``bigsoftmax.functional.linear_cross_entropy`` (default chunk size); ours-precompute: with
  ``precompute=True`` (gradients computed inside forward);
- naive-linear: ``F.cross_entropy(F.linear(x, W, b), y)``; naive-matmul: ``F.cross_entropy(x @ W.T + b, y)``;
- torch-lce-...: ``torch.nn.functional.linear_cross_entropy`` with ``LinearCrossEntropyOptions`` (its
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


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    N, d, V = args.N, args.d, args.V
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, generator=g, requires_grad=True)
    W = torch.nn.Parameter(torch.randn(V, d, generator=g) * (1.0 / d ** 0.5))
    b = torch.nn.Parameter(torch.zeros(V))
    y = torch.randint(0, V, (N,), generator=g)
    return x, W, b, y


def make_step(m: str, x, W, b, y):
    """A closure running one forward+backward of method ``m`` (gradients reset to None first); None if unavailable."""
    import torch
    import torch.nn.functional as F

    from bigsoftmax.functional import linear_cross_entropy

    try:
        from bigsoftmax.ops.lse import default_chunk_size
    except ImportError:  # the layout before bigsoftmax.ops (runs the same script on old checkouts)
        from bigsoftmax.ops.lse import default_chunk_size

    N, d = x.shape
    V = W.shape[0]
    if m == "roofline":
        chunk = default_chunk_size(N, V)

        def step():
            x.grad = W.grad = b.grad = None
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

        return step
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
    elif m.startswith("torch-lce-"):
        if not hasattr(F, "linear_cross_entropy") or not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            return None
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
        x.grad = W.grad = b.grad = None  # optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return float(loss)

    return step


def memory_worker(args) -> dict:
    import torch

    x, W, b, y = _setup(args)
    step = make_step(args.worker, x, W, b, y)
    if step is None:
        return {"method": args.worker, "skipped": f"torch {torch.__version__} has no F.linear_cross_entropy options"}
    for p in (x, W, b):  # the gradient buffers exist before the baseline, as in a training loop
        p.grad = torch.zeros_like(p)
    base = _maxrss_bytes()
    t0 = time.perf_counter()
    loss = step()
    t = time.perf_counter() - t0
    return {"method": args.worker, "extra_bytes": max(0, _maxrss_bytes() - base), "loss": loss, "step_s": t}


def timing_worker(args) -> dict:
    x, W, b, y = _setup(args)
    methods = args.timing.split(",")
    steps = {m: make_step(m, x, W, b, y) for m in methods}
    times = {m: [] for m in methods}
    for r in range(args.rounds + 1):  # round 0 is the warm-up
        this = {}
        for m in methods:
            t0 = time.perf_counter()
            steps[m]()
            this[m] = time.perf_counter() - t0
            if r > 0:
                times[m].append(this[m])
        print(f"# round {r}: " + ", ".join(f"{m} {t:.2f}s" for m, t in this.items()), file=sys.stderr, flush=True)
    return {m: times[m] for m in methods}


def _run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if p.returncode != 0:
        tail = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        return None, f"exit {p.returncode}: {tail}"
    sys.stderr.write(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1]), None


def table(mem, times, args, loads) -> str:
    logits = args.N * args.V * 4
    roof = min(times["roofline"]) if times.get("roofline") else None
    lines = [
        f"Config: V={args.V:,}, d={args.d}, N={args.N}, fp32, {args.threads} thread(s); forward+backward of the output "
        f"layer; naive [N, V] fp32 logits = {logits / 2**20:,.0f} MiB. Time: min of {args.rounds} interleaved rounds "
        f"after a warm-up round. Machine load average (1 min) at start / end: {loads[0]:.1f} / {loads[1]:.1f} on "
        f"{os.cpu_count()} cores.",
        "",
        "| method | step time (s) | × roofline | peak extra memory (MiB) | extra / naive logits | loss |",
        "|---|---|---|---|---|---|",
    ]
    for m, r in mem.items():
        if "skipped" in r:
            lines.append(f"| {m} | skipped: {r['skipped']} | | | | |")
            continue
        if times.get(m):
            t = min(times[m])
            ts = f"{t:.3f}"
        else:
            t = r["step_s"]
            ts = f"{t:.3f} (one step, not interleaved)"
        ratio = f"{t / roof:.2f}" if roof else "n/a"
        loss = "" if r["loss"] != r["loss"] else f"{r['loss']:.6f}"
        lines.append(f"| {m} | {ts} | {ratio} | {r['extra_bytes'] / 2**20:,.1f} | {100 * r['extra_bytes'] / logits:.2f}% "
                     f"| {loss} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small config: V=50,000, d=128, N=512")
    ap.add_argument("--V", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--N", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None, help="timed interleaved rounds (default 5 quick, 3 full)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slow-s", type=float, default=None,
                    help="methods whose memory-phase step is slower than this are not interleaved (default 20x roofline)")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma-separated subset of {ALL_METHODS}")
    ap.add_argument("--out", default=None, help="also write the Markdown table to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timing", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.V = args.V or (50_000 if args.quick else 1_000_000)
    args.d = args.d or (128 if args.quick else 256)
    args.N = args.N or (512 if args.quick else 1024)
    args.rounds = args.rounds or (5 if args.quick else 3)
    if args.worker:
        print(json.dumps(memory_worker(args)))
        return
    if args.timing:
        print(json.dumps(timing_worker(args)))
        return

    methods = [m for m in args.methods.split(",") if m]
    if "roofline" not in methods:
        methods.insert(0, "roofline")
    base_cmd = [sys.executable, __file__, "--V", str(args.V), "--d", str(args.d), "--N", str(args.N),
                "--threads", str(args.threads), "--rounds", str(args.rounds)]
    loads = [os.getloadavg()[0]]
    mem = {}
    for m in methods:  # phase 1: memory, one fresh process per method
        r, err = _run(base_cmd + ["--worker", m])
        mem[m] = r if r is not None else {"skipped": err}
        print(f"# memory {m}: " + (mem[m].get("skipped") or
                                   f"extra {r['extra_bytes'] / 2**20:,.1f} MiB, step {r['step_s']:.2f} s, loss {r['loss']:.6f}"),
              file=sys.stderr, flush=True)
    roof1 = mem["roofline"].get("step_s", float("inf"))
    slow = args.slow_s if args.slow_s is not None else 20 * roof1
    fast = [m for m in methods if "skipped" not in mem[m] and mem[m]["step_s"] <= slow]
    times, err = _run(base_cmd + ["--timing", ",".join(fast)])  # phase 2: interleaved timing, one process
    if times is None:
        raise SystemExit(f"timing phase failed: {err}")
    loads.append(os.getloadavg()[0])
    md = table(mem, times, args, loads)
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        cmd = "python benchmarks/full.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(f"<!-- {cmd.strip()} -->\n\n{md}\n")


if __name__ == "__main__":
    main()

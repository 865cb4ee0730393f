"""ArcFace over a million classes: sampled (Partial-FC style) training step vs the dense full ArcFace.

    python benchmarks/margin_scale.py            # V=1,000,000, d=256, B=1024, S=8192 (needs ~3 GB free)
    python benchmarks/margin_scale.py --quick    # V=100,000, d=128, B=256, S=1024 (seconds)
    python benchmarks/margin_scale.py --mode dense   # dense ArcFace measured directly at V=1M, d=256, B=1024
    BIGSOFTMAX_SRC=/path/to/old/src python benchmarks/margin_scale.py --mode dense   # the same, older code

``--mode dense`` runs only the dense ``ArcFace(d, V)`` training step at the full ``--V`` (no
extrapolation): step time and extra peak memory, in a fresh subprocess, ``--dense-repeats`` timed
steps after one warm-up. It imports only public names (``bigsoftmax.heads.ArcFace``), so the same
command measures an older checkout (``PYTHONPATH`` / run from its root) before and after a change;
a worker that dies (e.g. out of memory: the pre-``ops`` dense path held O(B · V) autograd buffers,
about 3 × B · V · 4 bytes) is reported with its exit status instead of a number.

Every measurement runs in a fresh subprocess. A *step* is forward + backward of the output layer plus
an SGD update (``torch.optim.SGD`` takes the sparse gradient as is). Memory is the *extra* peak of
the steps: ``ru_maxrss`` after the steps minus ``ru_maxrss`` once the parameters, inputs and
optimizer exist (BENCHMARKING.md). Methods:

- ``ArcFace(num_sampled=S, sparse=True)``: softmax over the positive (margin applied), the batch's
  other positives and S uniformly drawn class centres; sparse [V, d] gradient over the touched rows.
- ``SampledSoftmax(S, sparse=True)`` (no margin, the library's fused kernel), same S, for reference.
- GEMM roofline: only the three GEMMs over the S + B candidate rows (BENCHMARKING.md).
- dense ``ArcFace`` (all V classes scored, dense [V, d] gradient): too big to run at V = 10^6
  (its logits alone are B·V·4 bytes), so it is measured at two smaller V and its extra memory and step
  time are extrapolated: memory by the affine fit through the two points ([B, V] buffers and the [V, d]
  gradient are both linear in V), time proportionally to V from the larger point (its GEMMs, exp pass
  and dense update are all O(V); a two-point slope of times would amplify timing noise).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# BIGSOFTMAX_SRC=<checkout>/src measures another checkout's code with this script (before/after runs)
sys.path.insert(0, os.environ.get("BIGSOFTMAX_SRC", str(ROOT / "src")))


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(kind: str, V: int, d: int, B: int, S: int, repeats: int, threads: int) -> dict:
    import torch

    from bigsoftmax.heads import ArcFace, SampledSoftmax
    from bigsoftmax import samplers as Smp

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, generator=g, requires_grad=True)
    y = torch.randint(0, V, (B,), generator=g)
    if kind == "sampled":
        head = ArcFace(d, V, num_sampled=S, sparse=True, seed=0)
    elif kind == "sampled_softmax":
        head = SampledSoftmax(d, V, S, sampler=Smp.Uniform(V), sparse=True, seed=0)
    elif kind == "dense":
        head = ArcFace(d, V)
    elif kind == "roofline":
        Wc = torch.randn(S + B, d, generator=g)
        G = torch.randn(B, S + B, generator=g)
        head = None
    else:
        raise ValueError(kind)
    opt = torch.optim.SGD(head.parameters(), lr=0.1) if head is not None else None
    base = _maxrss_mb()

    def step():
        if head is None:
            xd = x.detach()
            return xd @ Wc.t(), G @ Wc, G.t() @ xd
        opt.zero_grad(set_to_none=True)
        x.grad = None
        loss = head(x, y)
        loss.backward()
        opt.step()
        return loss

    out = step()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    res = {"kind": kind, "V": V, "time_s": statistics.median(ts), "extra_mb": _maxrss_mb() - base,
           "param_mb": 0.0 if head is None else sum(p.numel() * p.element_size() for p in head.parameters()) / 2**20}
    if head is not None:
        res["loss"] = float(out)
        w = head.weight.grad
        res["grad_sparse"] = bool(w is not None and w.is_sparse)
    return res


def measure(kind, V, d, B, S, repeats, threads) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--V", str(V), "--d", str(d), "--batch", str(B),
           "--num-sampled", str(S), "--repeats", str(repeats), "--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"worker {kind} V={V} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--V", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--num-sampled", type=int, default=8192)
    ap.add_argument("--dense-V", type=int, nargs=2, default=[20_000, 40_000],
                    help="two class counts at which the dense ArcFace is measured and extrapolated from")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mode", choices=("all", "dense"), default="all",
                    help="all: the table above; dense: only the dense ArcFace, measured directly at --V")
    ap.add_argument("--dense-repeats", type=int, default=2, help="timed steps of --mode dense (after 1 warm-up)")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.V, a.d, a.batch, a.num_sampled, a.repeats, a.threads)))
        return
    if a.quick:
        a.V, a.d, a.batch, a.num_sampled, a.dense_V, a.repeats = 100_000, 128, 256, 1024, [5_000, 10_000], 5
    V, d, B, S = a.V, a.d, a.batch, a.num_sampled
    load = os.getloadavg()[0]
    if a.mode == "dense":
        return dense_direct(a, argv, load)
    r_s = measure("sampled", V, d, B, S, a.repeats, a.threads)
    r_ss = measure("sampled_softmax", V, d, B, S, a.repeats, a.threads)
    r_roof = measure("roofline", V, d, B, S, a.repeats, a.threads)
    r1, r2 = (measure("dense", v, d, B, S, max(3, a.repeats // 2), a.threads) for v in a.dense_V)
    slope_m = (r2["extra_mb"] - r1["extra_mb"]) / (r2["V"] - r1["V"])
    dense_mb = r2["extra_mb"] + slope_m * (V - r2["V"])
    dense_t = r2["time_s"] * V / r2["V"]
    logits_mb = B * V * 4 / 2**20
    grad_mb = V * d * 4 / 2**20
    roof = r_roof["time_s"]
    lines = [
        f"ArcFace output layer, V={V:,}, d={d}, batch={B}, S={S} sampled (uniform) + batch positives; fp32, {a.threads} threads; "
        f"weight {r_s['param_mb']:.0f} MB. Step = forward + backward + SGD update; median of {a.repeats}. "
        f"Machine load average at start: {load:.1f} (other jobs share the cores: times are noisy, memory is not).",
        "",
        "| method | step time | × GEMM roofline | extra peak memory | weight grad |",
        "|---|---|---|---|---|",
        f"| GEMM roofline (3 GEMMs over S+B rows) | {1e3 * roof:.0f} ms | 1.0 | {r_roof['extra_mb']:.0f} MB | — |",
        f"| **ArcFace(num_sampled={S}, sparse=True)** | {1e3 * r_s['time_s']:.0f} ms | {r_s['time_s'] / roof:.1f} | "
        f"{r_s['extra_mb']:.0f} MB | sparse={r_s['grad_sparse']} |",
        f"| SampledSoftmax({S}, Uniform, sparse=True), no margin | {1e3 * r_ss['time_s']:.0f} ms | "
        f"{r_ss['time_s'] / roof:.1f} | {r_ss['extra_mb']:.0f} MB | sparse={r_ss['grad_sparse']} |",
        f"| dense ArcFace, measured at V={r1['V']:,} | {1e3 * r1['time_s']:.0f} ms | {r1['time_s'] / roof:.1f} | "
        f"{r1['extra_mb']:.0f} MB | dense |",
        f"| dense ArcFace, measured at V={r2['V']:,} | {1e3 * r2['time_s']:.0f} ms | {r2['time_s'] / roof:.1f} | "
        f"{r2['extra_mb']:.0f} MB | dense |",
        f"| dense ArcFace at V={V:,}, extrapolated | ≈{dense_t:.1f} s | ≈{dense_t / roof:.0f} | ≈{dense_mb / 1024:.1f} GB | "
        f"dense |",
        "",
        f"Dense extrapolation: {1000 * slope_m:.1f} MB per 1,000 classes "
        f"(for reference: one [B, V] fp32 buffer = {logits_mb / 1024:.1f} GB at V={V:,}; the dense [V, d] gradient "
        f"= {grad_mb / 1024:.2f} GB). Sampled / dense extra memory: {r_s['extra_mb'] / dense_mb:.4f}; "
        f"step time: {r_s['time_s'] / dense_t:.4f}.",
        "",
        "Command: `" + " ".join(["python benchmarks/margin_scale.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


def dense_direct(a, argv, load) -> None:
    """``--mode dense``: the dense ArcFace step at the full V, measured (not extrapolated)."""
    V, d, B = a.V, a.d, a.batch
    try:
        r = measure("dense", V, d, B, a.num_sampled, a.dense_repeats, a.threads)
        row = (f"| dense ArcFace(d={d}, V={V:,}) | {r['time_s']:.2f} s | {r['extra_mb']:.0f} MB "
               f"({r['extra_mb'] / (B * V * 4 / 2**20):.2f} × one [B, V] fp32 buffer) | {r['loss']:.4f} |")
    except RuntimeError as e:  # the worker died (typically out of memory)
        row = f"| dense ArcFace(d={d}, V={V:,}) | failed | failed | {str(e).splitlines()[0]} |"
    import bigsoftmax

    lines = [
        f"Dense ArcFace training step (forward + backward + SGD), V={V:,}, d={d}, batch={B}, fp32, {a.threads} threads, "
        f"median of {a.dense_repeats} after a warm-up; code: {Path(bigsoftmax.__file__).resolve().parents[1]}; "
        f"load average at start {load:.1f}. One [B, V] fp32 buffer = {B * V * 4 / 2**30:.1f} GiB, "
        f"the [V, d] weight = {V * d * 4 / 2**30:.2f} GiB.",
        "",
        "| method | step time | extra peak memory | loss |",
        "|---|---|---|---|",
        row,
        "",
        "Command: `" + " ".join(["python benchmarks/margin_scale.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""torch.compile of every head's training step: graph breaks, first-call compile time, step time.

    python benchmarks/compile.py                       # V=50,000, d=128, N=512, backend inductor
    python benchmarks/compile.py --quick               # V=2,000, d=32, N=64 (seconds per head)
    python benchmarks/compile.py --heads FullSoftmax,NCE --backend aot_eager --json out.json

A step is ``loss = head(h, y); loss.backward()`` in training mode. Per head:

- ``breaks``: ``torch._dynamo.explain`` of the forward (0 expected, see docs/reliability.md);
- ``compile_s``: wall time of the first compiled step (tracing + compilation + one step);
- ``eager_ms`` / ``compiled_ms``: median step time (``--repeats`` steps after a warm-up), eager and compiled;
- ``max_abs_diff``: |compiled loss − eager loss| on the same batch, heads built from the same seed.

No figure in the README comes from this script unless it was run on an idle machine; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import timeit  # noqa: E402

from bigsoftmax import heads as H  # noqa: E402

HEADS = {
    "SampledSoftmax": lambda d, V, S: H.SampledSoftmax(d, V, num_sampled=S, seed=0),
    "NCE": lambda d, V, S: H.NCE(d, V, num_sampled=S, seed=0),
    "FullSoftmax": lambda d, V, S: H.FullSoftmax(d, V),
    "AdaptiveSoftmax": lambda d, V, S: H.AdaptiveSoftmax(d, V, cutoffs=[V // 10, V // 2], div_value=2.0),
    "HierarchicalSoftmax": lambda d, V, S: H.HierarchicalSoftmax(d, torch.arange(V, 0, -1).double()),
    "ArcFace": lambda d, V, S: H.ArcFace(d, V),
}


def bench_head(name: str, d: int, V: int, N: int, S: int, backend: str, repeats: int) -> dict:
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, d, generator=g)
    y = torch.randint(0, V, (N,), generator=g)

    def build():
        torch.manual_seed(0)
        return HEADS[name](d, V, S)

    eager_head, comp_head, probe = build(), build(), build()  # explain runs a step: its own head
    breaks = torch._dynamo.explain(lambda a, b: probe(a, b))(h, y).graph_break_count
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: comp_head(a, b), backend=backend)

    def step(head, fn):
        x = h.detach().requires_grad_()
        loss = fn(x, y)
        loss.backward()
        head.zero_grad(set_to_none=True)
        return loss.detach()

    eager_loss = step(eager_head, lambda a, b: eager_head(a, b))
    t0 = time.perf_counter()
    comp_loss = step(comp_head, compiled)
    compile_s = time.perf_counter() - t0
    eager_s = timeit(lambda: step(eager_head, lambda a, b: eager_head(a, b)), repeats)
    comp_s = timeit(lambda: step(comp_head, compiled), repeats)
    return {"head": name, "breaks": int(breaks), "compile_s": round(compile_s, 3), "eager_ms": round(eager_s * 1e3, 3),
            "compiled_ms": round(comp_s * 1e3, 3), "max_abs_diff": float((comp_loss - eager_loss).abs())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="V=2000, d=32, N=64, S=64, 3 repeats")
    ap.add_argument("--V", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--N", type=int, default=None)
    ap.add_argument("--S", type=int, default=None, help="num_sampled of the sampling heads")
    ap.add_argument("--heads", default=",".join(HEADS), help="comma-separated, from: " + ", ".join(HEADS))
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, eager)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args(argv)
    q = a.quick
    V = a.V or (2000 if q else 50_000)
    d = a.d or (32 if q else 128)
    N = a.N or (64 if q else 512)
    S = a.S or (64 if q else 1024)
    repeats = a.repeats or (3 if q else 20)
    names = [n for n in a.heads.split(",") if n]
    unknown = [n for n in names if n not in HEADS]
    if unknown:
        ap.error(f"--heads: unknown {unknown}; choose from {list(HEADS)}")
    for flag, v in (("--V", V), ("--d", d), ("--N", N), ("--S", S), ("--repeats", repeats), ("--threads", a.threads)):
        if v < 1:
            ap.error(f"{flag} must be >= 1, got {v}")
    if S >= V:
        ap.error(f"--S ({S}) must be < --V ({V})")
    torch.set_num_threads(a.threads)
    rows = [bench_head(n, d, V, N, S, a.backend, repeats) for n in names]
    print(f"V={V} d={d} N={N} S={S} backend={a.backend} threads={a.threads} torch={torch.__version__}")
    cols = ["head", "breaks", "compile_s", "eager_ms", "compiled_ms", "max_abs_diff"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": {"V": V, "d": d, "N": N, "S": S, "backend": a.backend}, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

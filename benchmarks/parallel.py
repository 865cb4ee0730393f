"""Scale-out of the exact full softmax: per-rank memory and bytes communicated per training step.

    python benchmarks/parallel.py                 # V=4,000,000, d=256, N=1024, fp32, P = 1, 2, 4 (needs ~10 GB)
    python benchmarks/parallel.py --quick         # V=200,000, d=16, N=64, P = 1, 2 (seconds; tests/parallel)
    python benchmarks/parallel.py --out benchmarks/results/parallel.md --overwrite

For each P the script starts P local processes (``bigsoftmax.parallel.run_local``: spawn, gloo) and
each rank builds :class:`bigsoftmax.parallel.VocabParallelFullSoftmax` ``(d, V)`` (its "div" block of
the rows), then runs one forward + backward step on ``hidden [N, d]`` / ``target [N]`` (the same on
every rank), after a warm-up on 8 rows (full size: that one step is also the timed one; --quick
times 2 steps). Measured per rank:

* **parameter memory**: the storage bytes of the rank's parameters (``untyped_storage().nbytes()``);
* **step-extra memory**: the peak resident set during one step minus the resident set before it
  (Linux: after a warm-up step and with the gradients freed, ``/proc/self/clear_refs`` ← ``5`` resets
  the peak ``VmHWM`` to the current RSS; the step's peak ``VmHWM`` minus that is everything the step
  allocates, the ``[V_r, d]`` weight gradient included; ``MALLOC_MMAP_THRESHOLD_`` is fixed at 1 MiB so
  that large tensors are mmapped and given back when freed). The goal is ``step_extra(1) / P + O(N · chunk)``;
* **bytes communicated**: counted by the collectives of :mod:`bigsoftmax.parallel._comm` (the payload
  of one rank's input per call) and compared with the formula of the exact full softmax,
  ``3N`` floats forward (all-reduce max of ``[N]``, all-reduce sum of ``[2, N]``) + ``N · d`` backward
  (all-reduce of ``grad_hidden``);
* **the naive alternatives** (formulas at the full V; at ``--check-V`` run for real to confirm the
  count): (a) all-gather of the ``[N, V/P]`` logit blocks, ``N · V / P`` floats sent per rank per
  step, and every rank then holds ``[N, V]`` logits; (b) a replicated head under DDP, an all-reduce of
  the ``[V, d]`` + ``[V]`` gradient, ``V · (d + 1)`` floats per step, and every rank holds all rows;
* **step time** (median of the timed steps). On a 2-core machine P processes share 2 cores, so
  step times do not scale; the memory and communication figures are the point.

With P = 1 the collectives run on a one-rank group: the counted payload is shown, nothing crosses a process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FULL = dict(V=4_000_000, d=256, N=1024, worlds=[1, 2, 4], check_V=20_000, repeats=1)
QUICK = dict(V=200_000, d=16, N=64, worlds=[1, 2], check_V=4_000, repeats=2)
F32 = 4


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def _reset_peak_rss() -> float:
    """Reset the peak RSS (VmHWM) to the current RSS; return it (MB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmHWM")


def _naive_allgather_bytes(rank, world, V, d, N):
    """Run the naive vocab-parallel step at V (divisible by P): all-gather the [N, V/P] logit blocks."""
    import torch
    import torch.nn.functional as F

    from bigsoftmax.parallel import VocabParallelFullSoftmax, comm

    head = VocabParallelFullSoftmax(d, V)
    g = torch.Generator().manual_seed(1)
    h, y = torch.randn(N, d, generator=g), torch.randint(0, V, (N,), generator=g)
    comm.STATS.reset()
    with torch.no_grad():  # the backward of an all-gather is this rank's slice: no communication
        z = torch.cat(comm.all_gather(h @ head.weight.t() + head.bias), dim=1)
        F.cross_entropy(z, y)
    return comm.STATS.total_bytes()


def _ddp_replicated_bytes(rank, world, V, d, N):
    """Run a replicated FullSoftmax under DDP at V on N / P rows per rank; count the gradient all-reduce."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from bigsoftmax.heads import FullSoftmax

    state = {"bytes": 0}

    def counting_hook(st, bucket):
        buf = bucket.buffer()
        st["bytes"] += buf.numel() * buf.element_size()
        fut = dist.all_reduce(buf, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0].div_(world))

    torch.manual_seed(0)
    ddp = DistributedDataParallel(FullSoftmax(d, V))
    ddp.register_comm_hook(state, counting_hook)
    g = torch.Generator().manual_seed(2 + rank)
    n = max(1, N // world)
    ddp(torch.randn(n, d, generator=g), torch.randint(0, V, (n,), generator=g)).backward()
    return state["bytes"]


def worker(rank, world, V, d, N, check_V, repeats, out):
    import torch
    import torch.distributed as dist

    from bigsoftmax.ops.lse import default_chunk_size
    from bigsoftmax.parallel import VocabParallelFullSoftmax, comm

    torch.manual_seed(0)
    head = VocabParallelFullSoftmax(d, V)
    chunk = default_chunk_size(N, head.local_classes)
    param_bytes = sum(p.untyped_storage().nbytes() for p in head.parameters())
    g = torch.Generator().manual_seed(1)
    h = torch.randn(N, d, generator=g).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    head(h[:8], y[:8]).backward()  # warm-up (8 rows): lazy initialisations of torch / gloo are not the step's memory
    head.weight.grad = head.bias.grad = h.grad = None
    dist.barrier()
    before = _reset_peak_rss()
    comm.STATS.reset()
    t0 = time.perf_counter()
    loss = head(h, y)
    fwd = comm.STATS.snapshot()
    comm.STATS.reset()
    loss.backward()
    bwd = comm.STATS.snapshot()
    times = [time.perf_counter() - t0]
    extra_mb = _status_mb("VmHWM") - before
    for _ in range(repeats - 1):
        head.weight.grad = head.bias.grad = h.grad = None
        t0 = time.perf_counter()
        head(h, y).backward()
        times.append(time.perf_counter() - t0)
    del head, h
    cv = check_V - check_V % world
    res = {"rank": rank, "world": world, "rows": V // world + (rank < V % world), "chunk": chunk, "param_bytes": int(param_bytes), "step_extra_mb": extra_mb, "step_s": statistics.median(times),
           "fwd": fwd, "bwd": bwd, "check_V": cv,
           "naive_allgather_bytes_at_check_V": _naive_allgather_bytes(rank, world, cv, d, N),
           "ddp_replicated_bytes_at_check_V": _ddp_replicated_bytes(rank, world, cv, d, N)}
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(res, f)


def formulas(V, d, N, P):
    return {"exact_fwd": 3 * N * F32, "exact_bwd": N * d * F32,
            "naive_allgather": N * (V // P) * F32, "ddp_replicated": V * (d + 1) * F32}


def run(cfg: dict, threads: int) -> dict:
    from bigsoftmax.parallel import run_local

    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))  # big tensors mmapped: RSS sees them
    V, d, N = cfg["V"], cfg["d"], cfg["N"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for P in cfg["worlds"]:
            out = os.path.join(tmp, f"P{P}")
            run_local(worker, P, V, d, N, cfg["check_V"], cfg["repeats"], out, timeout=3600, threads=threads)
            ranks = [json.load(open(f"{out}.rank{r}.json")) for r in range(P)]
            r0 = ranks[0]
            f = formulas(V, d, N, P)
            fc = formulas(r0["check_V"], d, N, P)
            counted = r0["fwd"]["bytes"].get("all_reduce", 0) + r0["bwd"]["bytes"].get("all_reduce", 0)
            rows.append({
                "P": P, "param_bytes_per_rank": max(r["param_bytes"] for r in ranks),
                "step_extra_mb_per_rank": max(r["step_extra_mb"] for r in ranks),
                "slice_mb": N * max(r["chunk"] for r in ranks) * F32 / 2**20,
                "comm_bytes_counted": counted, "comm_bytes_formula": f["exact_fwd"] + f["exact_bwd"],
                "comm_calls": {"fwd": r0["fwd"]["calls"], "bwd": r0["bwd"]["calls"]},
                "naive_allgather_bytes": f["naive_allgather"], "ddp_replicated_bytes": f["ddp_replicated"],
                "check_V": r0["check_V"],
                "naive_allgather_counted_at_check_V": r0["naive_allgather_bytes_at_check_V"],
                "naive_allgather_formula_at_check_V": fc["naive_allgather"],
                "ddp_replicated_counted_at_check_V": r0["ddp_replicated_bytes_at_check_V"],
                "ddp_replicated_formula_at_check_V": fc["ddp_replicated"],
                "step_s": max(r["step_s"] for r in ranks),
            })
            print(f"P={P}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    one = rows[0]
    for r in rows:
        r["param_ratio"] = r["param_bytes_per_rank"] / one["param_bytes_per_rank"]
        r["step_extra_ratio"] = r["step_extra_mb_per_rank"] / max(one["step_extra_mb_per_rank"], 1e-9)
        r["step_extra_goal_mb"] = one["step_extra_mb_per_rank"] / r["P"] + r["slice_mb"]  # 1/P + one [N, chunk] slice
    return {"config": {k: cfg[k] for k in ("V", "d", "N", "worlds", "check_V", "repeats")}, "threads": threads,
            "rows": rows}


def _gb(b):
    return f"{b / 2**30:.3g} GiB" if b >= 2**30 else f"{b / 2**20:.4g} MiB" if b >= 2**17 else f"{b / 2**10:.3g} KiB"


def table(res: dict) -> str:
    c = res["config"]
    lines = [f"V={c['V']:,}, d={c['d']}, N={c['N']}, fp32, exact full softmax (VocabParallelFullSoftmax); "
             f"bytes are one rank's payload per training step (forward + backward)", "",
             "| P | params / rank | ratio to P=1 | step-extra / rank | ratio to P=1 | goal: extra(1)/P + N·chunk | bytes / step (counted = formula) "
             "| all-gather of [N, V/P] logits | replicated head under DDP | step time* |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        same = "=" if r["comm_bytes_counted"] == r["comm_bytes_formula"] else "!="
        lines.append(f"| {r['P']} | {_gb(r['param_bytes_per_rank'])} | {r['param_ratio']:.3f} | "
                     f"{r['step_extra_mb_per_rank']:.1f} MiB | {r['step_extra_ratio']:.3f} | "
                     f"{r['step_extra_goal_mb']:.1f} MiB ({'met' if r['step_extra_mb_per_rank'] <= r['step_extra_goal_mb'] else 'NOT met'}) | "
                     f"{_gb(r['comm_bytes_counted'])} ({same} formula){' (one process: no transfer)' if r['P'] == 1 else ''} | "
                     f"{_gb(r['naive_allgather_bytes'])} ({r['naive_allgather_bytes'] / r['comm_bytes_formula']:,.0f}x) | "
                     f"{_gb(r['ddp_replicated_bytes'])} ({r['ddp_replicated_bytes'] / r['comm_bytes_formula']:,.0f}x) | "
                     f"{r['step_s']:.2f} s |")
    lines += ["", "Naive counts confirmed by running them at V = " + ", ".join(
        f"{r['check_V']:,} (P={r['P']}: all-gather {r['naive_allgather_counted_at_check_V']:,} B counted vs "
        f"{r['naive_allgather_formula_at_check_V']:,} formula; DDP {r['ddp_replicated_counted_at_check_V']:,} B vs "
        f"{r['ddp_replicated_formula_at_check_V']:,})" for r in res["rows"]),
        "", "*step time: P processes with 1 torch thread each on this machine's 2 cores — they do not scale "
            "past 2 ranks here; a communication and memory benchmark, not a speed figure."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for the smoke test")
    ap.add_argument("--V", type=int, default=None)
    ap.add_argument("--worlds", default=None, help="comma-separated world sizes (default 1,2,4; quick 1,2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--out", default=None, help="write the markdown table here (e.g. benchmarks/results/parallel.md)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out / --json file")
    ap.add_argument("--formulas", action="store_true",
                    help="print the formula figures (parameter bytes per rank, bytes per step) at --V, no run")
    ap.add_argument("--render", default=None, metavar="JSON", help="print the table of a saved --json result (no run)")
    a = ap.parse_args(argv)
    cfg = dict(QUICK if a.quick else FULL)
    if a.V is not None:
        cfg["V"] = a.V
    if a.worlds:
        cfg["worlds"] = [int(w) for w in a.worlds.split(",")]
    if a.formulas:
        V, d, N = cfg["V"], cfg["d"], cfg["N"]
        print(f"formulas at V={V:,}, d={d}, N={N}, fp32 (not measured)\n")
        print("| P | params / rank (weight + bias) | exact: bytes / step | all-gather of [N, V/P] logits "
              "| replicated head under DDP |\n|---|---|---|---|---|")
        for P in cfg["worlds"]:
            f = formulas(V, d, N, P)
            print(f"| {P} | {_gb(-(-V // P) * (d + 1) * F32)} | {_gb(f['exact_fwd'] + f['exact_bwd'])} | "
                  f"{_gb(f['naive_allgather'])} | {_gb(f['ddp_replicated'])} |")
        return 0
    if a.render:
        print(table(json.loads(Path(a.render).read_text())))
        return 0
    for p in (a.out, a.json):
        if p and os.path.exists(p) and not a.overwrite:
            ap.error(f"{p} exists; pass --overwrite to replace it")
    res = run(cfg, a.threads)
    md = table(res)
    print(md)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.out:
        cmd = "python benchmarks/parallel.py" + (" --quick" if a.quick else "") + \
            (f" --V {a.V}" if a.V is not None else "") + (f" --worlds {a.worlds}" if a.worlds else "")
        Path(a.out).write_text(f"# Scale-out: vocab-parallel exact full softmax\n\n`{cmd}`\n\n{md}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

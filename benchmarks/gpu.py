"""Every head on an accelerator against its CPU result, and config P1 timed against the roofline.

    python benchmarks/gpu.py                 # CUDA: checks (tiny sizes) + P1 timing (V=10^6, d=256, B=1024, S=8192)
    python benchmarks/gpu.py --quick         # CPU (or CUDA) checks only, tiny sizes: fp32 vs a float64 reference
    python benchmarks/gpu.py --no-timing     # checks only

Checks (both modes): every head is built twice from one seed; the reference copy runs on the CPU in
float64, the tested copy in float32 on the device (``cuda`` when available, else the CPU). The
sampling heads' generators are CPU generators loaded from one ``state_dict`` (which holds the generator
state), so both copies draw the same candidates. A training step's loss and the gradients of the hidden
states and of every parameter must agree to ``--rtol`` / ``--atol`` (default 1e-4 / 1e-5: fp32 against
fp64). Exit status 1 when a check fails.

Host syncs (both modes, reported, not a pass/fail): one training step per head under
``validation("device")``, counted by ``bigsoftmax.diagnostics.count_host_syncs`` (the accelerator
paths; forced on CPU) and, on CUDA, by ``torch.cuda.set_sync_debug_mode("warn")``; each sync is
printed with the source line that made it. ``tests/test_host_sync.py`` holds the per-head budgets.

Timing (CUDA only, P1): forward + backward of the output layer, CUDA-event timed median of ``--repeats``
steps after a warm-up, for
- ``roofline``: the three GEMMs an exact step cannot avoid (``x W^T``, ``Z W``, ``Z^T x``), full-vocabulary;
- ``bigsoftmax-full``: :class:`~bigsoftmax.heads.FullSoftmax` (the streaming exact kernel);
- ``bigsoftmax-sampled``: :class:`~bigsoftmax.heads.SampledSoftmax` with S candidates;
- ``torch``: ``F.cross_entropy(F.linear(x, W, b), y)``;
- ``cut-cross-entropy`` (``cut_cross_entropy.linear_cross_entropy``) and ``liger``
  (``liger_kernel.transformers.LigerFusedLinearCrossEntropyLoss``) when importable (reported as
  ``not installed`` otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import bigsoftmax  # noqa: E402
from bigsoftmax import heads as H  # noqa: E402
from bigsoftmax.diagnostics import count_host_syncs  # noqa: E402

V_CHECK, D_CHECK, N_CHECK, S_CHECK = 300, 16, 24, 32

HEADS = {
    "SampledSoftmax": lambda d, V: H.SampledSoftmax(d, V, num_sampled=S_CHECK, seed=0),
    "NCE": lambda d, V: H.NCE(d, V, num_sampled=S_CHECK, seed=0),
    "FullSoftmax": lambda d, V: H.FullSoftmax(d, V),
    "AdaptiveSoftmax": lambda d, V: H.AdaptiveSoftmax(d, V, cutoffs=[V // 10, V // 2], div_value=2.0),
    "HierarchicalSoftmax": lambda d, V: H.HierarchicalSoftmax(d, torch.arange(V, 0, -1).double()),
    "ClassBasedSoftmax": lambda d, V: H.ClassBasedSoftmax(d, counts=torch.arange(V, 0, -1).double()),
    "ArcFace": lambda d, V: H.ArcFace(d, V),
    "ArcFace-partial-fc": lambda d, V: H.ArcFace(d, V, num_sampled=S_CHECK, seed=0),
    "CosFace": lambda d, V: H.CosFace(d, V),
    "SelfNormalizedSoftmax": lambda d, V: H.SelfNormalizedSoftmax(d, V),
}


def _step(head, h, y):
    x = h.detach().requires_grad_()
    loss = head(x, y)
    loss.backward()
    return loss.detach(), x.grad, {n: p.grad for n, p in head.named_parameters() if p.grad is not None}


def check_head(name: str, device: torch.device, rtol: float, atol: float) -> dict:
    torch.manual_seed(0)
    ref = HEADS[name](D_CHECK, V_CHECK).double()
    torch.manual_seed(0)
    test = HEADS[name](D_CHECK, V_CHECK)
    test.load_state_dict(ref.state_dict())  # the same weights and (sampling heads) the same generator state
    test = test.float().to(device)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(N_CHECK, D_CHECK, generator=g, dtype=torch.float64)
    y = torch.randint(0, V_CHECK, (N_CHECK,), generator=g)
    lr, gr, pr = _step(ref, h, y)
    lt, gt, pt = _step(test, h.float().to(device), y.to(device))
    errs = {"loss": float((lt.double().cpu() - lr).abs()), "grad_hidden": float((gt.double().cpu() - gr).abs().max())}
    ok = torch.allclose(lt.double().cpu(), lr, rtol=rtol, atol=atol) and \
        torch.allclose(gt.double().cpu(), gr, rtol=rtol, atol=atol) and set(pt) == set(pr)
    for n, a in pr.items():
        b = pt.get(n)
        if b is None:
            continue
        b = (b.to_dense() if b.is_sparse else b).double().cpu()
        a = a.to_dense() if a.is_sparse else a
        errs["grad_" + n] = float((b - a).abs().max()) if a.numel() else 0.0
        ok = ok and torch.allclose(b, a, rtol=rtol, atol=atol)
    return {"head": name, "device": str(device), "ok": bool(ok), "max_abs_err": max(errs.values())}


def count_syncs(name: str, device: torch.device) -> dict:
    """Host syncs of one training step (after a warm-up step) under ``validation("device")``.

    Counted by :class:`bigsoftmax.diagnostics.count_host_syncs` (the accelerator paths, forced on CPU);
    on CUDA also by ``torch.cuda.set_sync_debug_mode("warn")``, which sees every real device->host wait.
    """
    import warnings

    torch.manual_seed(0)
    head = HEADS[name](D_CHECK, V_CHECK).to(device)
    g = torch.Generator().manual_seed(2)
    h = torch.randn(N_CHECK, D_CHECK, generator=g).to(device)
    y = torch.randint(0, V_CHECK, (N_CHECK,), generator=g).to(device)
    _step(head, h, y)
    cuda_waits = None
    with bigsoftmax.validation("device"), count_host_syncs(sync_free=True) as syncs:
        if device.type == "cuda":
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    _step(head, h, y)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            cuda_waits = sum("synchroniz" in str(w.message) for w in caught)
        else:
            _step(head, h, y)
    return {"head": name, "syncs": len(syncs), "cuda_sync_warnings": cuda_waits, "sites": [str(s) for s in syncs]}


# ----------------------------------------------------------------------------- P1 timing (CUDA)
def _cuda_time(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


def time_p1(V: int, d: int, B: int, S: int, repeats: int) -> list:
    import torch.nn.functional as F

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, d, device=dev, generator=g, requires_grad=True)
    y = torch.randint(0, V, (B,), device=dev, generator=g)
    full = H.FullSoftmax(d, V).to(dev)
    sampled = H.SampledSoftmax(d, V, num_sampled=S, seed=0).to(dev)
    W, b = full.weight, full.bias
    rows = []

    def run(name, fn):
        try:
            s = _cuda_time(fn, repeats)
            rows.append({"method": name, "ms": round(s * 1e3, 3)})
        except Exception as e:  # report, keep timing the others
            rows.append({"method": name, "ms": None, "note": f"{type(e).__name__}: {e}"[:200]})

    Wd = W.detach()

    def roofline():
        with torch.no_grad():
            z = x.detach() @ Wd.t()
            _ = z @ Wd
            _ = z.t() @ x.detach()

    def step(loss_fn):
        def f():
            x.grad = None
            for p in (W, b):
                p.grad = None
            loss_fn().backward()
        return f

    run("roofline", roofline)
    run("bigsoftmax-full", step(lambda: full(x, y)))
    run("bigsoftmax-sampled", step(lambda: sampled(x, y)))
    run("torch", step(lambda: F.cross_entropy(F.linear(x, W, b), y)))
    try:
        from cut_cross_entropy import linear_cross_entropy as cce  # type: ignore
        run("cut-cross-entropy", step(lambda: cce(x, W, y, bias=b)))
    except ImportError:
        rows.append({"method": "cut-cross-entropy", "ms": None, "note": "not installed"})
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # type: ignore
        lig = LigerFusedLinearCrossEntropyLoss()
        run("liger", step(lambda: lig(W, x, y, b)))
    except ImportError:
        rows.append({"method": "liger", "ms": None, "note": "not installed"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="checks only (no P1 timing)")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--device", default=None, help="device of the tested copies (default: cuda if available, else cpu)")
    ap.add_argument("--heads", default=",".join(HEADS), help="comma-separated, from: " + ", ".join(HEADS))
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--V", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--B", type=int, default=1024)
    ap.add_argument("--S", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    names = [n for n in a.heads.split(",") if n]
    unknown = [n for n in names if n not in HEADS]
    if unknown:
        ap.error(f"--heads: unknown {unknown}; choose from {list(HEADS)}")
    if a.rtol <= 0 or a.atol < 0:
        ap.error("--rtol must be > 0 and --atol >= 0")
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    checks = [check_head(n, dev, a.rtol, a.atol) for n in names]
    print(f"checks: fp32 on {dev} vs float64 on cpu (rtol={a.rtol}, atol={a.atol}), V={V_CHECK} d={D_CHECK} N={N_CHECK}")
    for r in checks:
        print(f"  {r['head']:<24} {'ok' if r['ok'] else 'FAIL'}  max_abs_err={r['max_abs_err']:.3g}")
    syncs = [count_syncs(n, dev) for n in names]
    print(f"host syncs of one training step on {dev} (validation='device'; the accelerator paths"
          + (", forced on CPU)" if dev.type == "cpu" else "; and CUDA sync-debug warnings)"))
    for r in syncs:
        cw = "" if r["cuda_sync_warnings"] is None else f"  cuda sync warnings={r['cuda_sync_warnings']}"
        print(f"  {r['head']:<24} {r['syncs']}{cw}" + "".join(f"\n      {s}" for s in r["sites"]))
    timing = []
    if dev.type == "cuda" and not (a.quick or a.no_timing):
        timing = time_p1(a.V, a.d, a.B, a.S, a.repeats)
        print(f"P1 timing: V={a.V} d={a.d} B={a.B} S={a.S}, forward+backward, median of {a.repeats}")
        for r in timing:
            print(f"  {r['method']:<20} {r['ms'] if r['ms'] is not None else '-':>10} ms  {r.get('note', '')}")
    elif not (a.quick or a.no_timing):
        print("P1 timing skipped: needs CUDA")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"checks": checks, "syncs": syncs, "timing": timing}, f, indent=1)
    return 0 if all(r["ok"] for r in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/gpu.py in its CPU mode: every head's fp32 step against a float64 reference (tiny sizes)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.py")


def test_gpu_benchmark_cpu_mode_checks_every_head(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, SCRIPT, "--quick", "--device", "cpu", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    checks = json.loads(out.read_text())["checks"]
    assert len(checks) >= 10 and all(c["ok"] for c in checks), checks
    assert all(0 <= c["max_abs_err"] < 1e-4 for c in checks)
    syncs = json.loads(out.read_text())["syncs"]  # the host-sync report: one row per head, sites named
    assert [s["head"] for s in syncs] == [c["head"] for c in checks]
    assert all(s["syncs"] == len(s["sites"]) and s["cuda_sync_warnings"] is None for s in syncs)
    assert all(":" in site for s in syncs for site in s["sites"])


def test_gpu_benchmark_reports_a_failed_check():
    # fp32 cannot match float64 to a zero tolerance: the script must say FAIL and exit 1
    r = subprocess.run([sys.executable, SCRIPT, "--quick", "--device", "cpu", "--heads", "FullSoftmax",
                        "--rtol", "1e-300", "--atol", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "FAIL" in r.stdout, r.stdout + r.stderr[-2000:]

"""Smoke run of benchmarks/compile.py --quick with tiny sizes (no timing assertion)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compile_benchmark_quick_smoke(tmp_path):
    out = tmp_path / "compile.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "compile.py"), "--quick", "--V", "300", "--d", "16",
           "--N", "16", "--S", "20", "--repeats", "1", "--backend", "aot_eager", "--threads", "1",
           "--heads", "SampledSoftmax,FullSoftmax,HierarchicalSoftmax", "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [x["head"] for x in rows] == ["SampledSoftmax", "FullSoftmax", "HierarchicalSoftmax"]
    for x in rows:
        assert x["breaks"] == 0
        assert x["max_abs_diff"] <= 1e-6  # same seed: the compiled first step equals the eager one
        assert x["compile_s"] > 0 and x["eager_ms"] > 0 and x["compiled_ms"] > 0
    bad = subprocess.run(cmd[:2] + ["--heads", "Nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown ['Nope']" in bad.stderr

"""benchmarks/regression.py imports an old version beside the current one and compares their steps
(a smoke test at tiny sizes: no timing is asserted, only that both versions ran the same step)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "regression.py"


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


def test_regression_against_a_copy_of_itself(tmp_path):
    out = tmp_path / "r.md"
    proc = _run("--base-src", str(REPO / "src" / "bigsoftmax"), "--quick", "--repeats", "3",
                "--only", "adaptive,tree-huffman-sparse,full", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and " ms |" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["adaptive", "tree-huffman-sparse", "full"]
    for r in rows:  # a ratio and a verdict on every row
        cells = [c.strip() for c in r.split("|")]
        assert float(cells[4]) > 0 and cells[6] in ("within noise", "faster", "SLOWER")
    # an existing --out is refused without --overwrite; unknown cases are named
    again = _run("--base-src", str(REPO / "src" / "bigsoftmax"), "--quick", "--out", str(out))
    assert again.returncode != 0 and "--overwrite" in again.stderr
    bad = _run("--base-src", str(REPO / "src" / "bigsoftmax"), "--quick", "--only", "nope")
    assert bad.returncode != 0 and "unknown case 'nope'" in bad.stderr

"""benchmarks/proposals.py runs end to end on a tiny corpus (a smoke test: no timing is asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_proposals_smoke(tmp_path):
    out = tmp_path / "p"
    cmd = [sys.executable, str(REPO / "benchmarks" / "proposals.py"), "--corpora", "gutenberg", "--max-lines", "2000",
           "--max-vocab", "300", "--batch-size", "8", "--seq-len", "8", "--d-model", "16", "--max-tokens", "2K",
           "--eval-tokens", "1K", "--repeats", "1", "--per-row", "4", "--runs", "full,sampled mixed", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("BIGSOFTMAX_DATA", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "gutenberg" / "results.json").read_text())
    assert [r["tag"] for r in res["runs"]] == ["full", "sampled mixed S=18 (R=4)"]
    assert all(r["status"] == "finished" and r["valid_ppl"] > 1 for r in res["runs"])
    assert res["calibration"]["mixed"][0] == "mixed (R=4)"
    report = (out / "REPORT.md").read_text()
    assert "| mixed (R=4) | 18 |" in report and "| sampled mixed S=18 (R=4) |" in report
    # an existing run folder is refused without --overwrite
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "--overwrite" in again.stderr

"""benchmarks/parallel.py --quick: the bytes per step equal the formulas (the exact full softmax and,
run for real at a small V, the two naive alternatives) and the per-rank memory shrinks with P."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_quick_benchmark_bytes_equal_the_formulas_and_memory_shrinks_with_p(tmp_path):
    out = tmp_path / "res.json"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "parallel.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    c = res["config"]
    V, d, N = c["V"], c["d"], c["N"]
    rows = {r["P"]: r for r in res["rows"]}
    assert sorted(rows) == c["worlds"] == [1, 2]
    for P, r in rows.items():
        assert r["comm_bytes_counted"] == r["comm_bytes_formula"] == (3 * N + N * d) * 4
        assert r["comm_calls"] == {"fwd": {"all_reduce": 2}, "bwd": {"all_reduce": 1}}
        assert r["naive_allgather_counted_at_check_V"] == r["naive_allgather_formula_at_check_V"] \
            == N * (r["check_V"] // P) * 4
        assert r["ddp_replicated_counted_at_check_V"] == r["ddp_replicated_formula_at_check_V"] \
            == r["check_V"] * (d + 1) * 4
        assert r["param_bytes_per_rank"] == -(-V // P) * (d + 1) * 4  # weight + bias of the largest "div" block
    one, two = rows[1], rows[2]
    assert one["step_extra_mb_per_rank"] >= V * d * 4 / 2**20  # the measurement sees the [V, d] gradient
    assert two["step_extra_mb_per_rank"] <= one["step_extra_mb_per_rank"] / 2 + two["slice_mb"] + 2.0
    assert "Naive counts confirmed" in p.stdout and "not a speed figure" in p.stdout

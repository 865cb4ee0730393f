"""The LM bench's own logic (bigsoftmax.lm.bench), without training: the Pareto front, the table's
rows, columns and ratios, the too-short flag, head-list parsing, a failed worker's report, and the
refusal to write into a folder holding an earlier bench (before anything is trained)."""

import itertools
import random

import pytest

from bigsoftmax.lm import bench as Bn
from bigsoftmax.lm.registry import available_heads

COLUMNS = ["head", "valid ppl", "ppl / full", "train tok/s", "time / epoch", "speed-up vs full", "peak RSS (MiB)",
           "train time", "tied"]


def _run(head, ppl, tps, steps=100, secs=10.0, tied=False):
    return {"head": head, "status": "finished", "valid_ppl": ppl, "tokens_per_s": tps, "epoch_time_s": 90.0,
            "peak_rss_mb": 512.0, "train_time_s": 12.34, "tied": tied, "measured_steps": steps, "measured_time_s": secs}


def _rows(table):
    lines = table.splitlines()
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines if l.startswith("|")]


def test_pareto_front_is_the_non_dominated_points_by_time():
    pts = [(3.0, 50.0), (1.0, 80.0), (2.0, 90.0), (4.0, 40.0), (5.0, 45.0), (1.0, 70.0)]
    assert Bn.pareto_front(pts) == [5, 0, 3]
    rng = random.Random(0)
    for _ in range(30):  # against the definition: nobody at most as slow and as bad, one strictly better
        pts = [(rng.randint(1, 6), rng.randint(1, 6)) for _ in range(rng.randint(1, 8))]
        front = set(Bn.pareto_front(pts))
        for i, p in enumerate(pts):
            dominated = any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)
            first_copy = pts.index(p) == i
            assert (i in front) == (not dominated and first_copy), (pts, i)


def test_table_rows_columns_and_ratios_against_the_full_softmax():
    runs = [_run("full", 200.0, 1000.0), _run("sampled", 220.0, 5000.0, tied=True),
            {"head": "nce", "status": "failed", "error": "ValueError: boom"}]
    rows = _rows(Bn.format_table(runs))
    assert rows[0] == COLUMNS and len(rows) == 2 + 3
    full, sampled, nce = rows[2:]
    assert full[:3] == ["full", "200.0", "1.000"] and full[5] == "1.0x" and full[8] == "no"
    assert sampled[:4] == ["sampled", "220.0", "1.100", "5,000"] and sampled[5] == "5.0x" and sampled[8] == "yes"
    assert sampled[4] == "1.5 min" and sampled[7] == "12.3 s"
    assert nce[:2] == ["nce", "failed: ValueError: boom"] and len(nce) == len(COLUMNS)
    assert "*" not in Bn.format_table(runs)


def test_a_too_short_run_is_starred_and_explained():
    short = _run("sampled", 220.0, 5000.0, steps=Bn.MIN_SPEED_STEPS - 1)
    assert Bn.too_short(short) and not Bn.too_short(_run("full", 1, 1))
    assert Bn.too_short(_run("x", 1, 1, secs=Bn.MIN_SPEED_TIME_S / 2))
    table = Bn.format_table([_run("full", 200.0, 1000.0), short])
    assert _rows(table)[3][5] == "5.0x*"
    assert f"fewer than {Bn.MIN_SPEED_STEPS} steps" in table


def test_without_a_full_softmax_run_the_ratios_are_not_available():
    rows = _rows(Bn.format_table([_run("sampled", 220.0, 5000.0)]))
    assert rows[2][2] == "n/a" and rows[2][5] == "n/a"


def test_resolve_heads_parses_and_refuses():
    heads = available_heads()
    assert Bn.resolve_heads("all") == heads
    two = heads[:2]
    assert Bn.resolve_heads(" , ".join(two)) == two
    with pytest.raises(ValueError, match="lists a head twice"):
        Bn.resolve_heads(f"{heads[0]},{heads[0]}")
    with pytest.raises(ValueError, match="--heads must be 'all' or a comma-separated list"):
        Bn.resolve_heads(" , ")
    with pytest.raises(ValueError, match="unknown head 'bogus'"):
        Bn.resolve_heads("bogus")


def test_a_failed_worker_is_reported_by_its_last_error_line(tmp_path):
    assert Bn._collect(tmp_path, 3) == {"status": "failed", "error": "exit status 3"}
    (tmp_path / "error.txt").write_text("context\nRuntimeError: out of memory\n")
    assert Bn._collect(tmp_path, 1) == {"status": "failed", "error": "RuntimeError: out of memory"}


@pytest.mark.parametrize("earlier", list(itertools.chain(Bn.BENCH_FILES, ["runs/full/metrics.json"])))
def test_an_earlier_bench_is_refused_before_anything_runs(tmp_path, earlier):
    from bigsoftmax.lm.config import TrainConfig

    out = tmp_path / "bench"
    (out / earlier).parent.mkdir(parents=True, exist_ok=True)
    (out / earlier).write_text("earlier")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cfg = TrainConfig(corpus=str(tmp_path / "no-such-corpus.txt"), progress=False)  # never loaded: refused first
    with pytest.raises(FileExistsError, match="--overwrite"):
        Bn.run_bench(cfg, ["full"], out, isolate=False, log=lambda s: None)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (out / earlier).read_text() == "earlier"


def test_a_bench_writes_only_under_its_out_folder(tmp_path):
    from bigsoftmax.lm.config import TrainConfig

    corpus = tmp_path / "c.txt"
    rng = random.Random(0)
    corpus.write_text("\n".join(" ".join(f"w{rng.randrange(30)}" for _ in range(8)) for _ in range(200)) + "\n")
    cfg = TrainConfig(corpus=str(corpus), block_lines=10, d_model=8, batch_size=4, seq_len=8, num_sampled=8,
                      max_tokens=8 * 32, eval_tokens=100, progress=False, seed=0)
    res = Bn.run_bench(cfg, ["full", "sampled"], tmp_path / "out", isolate=False, log=lambda s: None)
    assert [r["head"] for r in res["runs"]] == ["full", "sampled"]
    assert all(r["status"] == "finished" for r in res["runs"]), res["runs"]
    outside = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert outside == ["c.txt"]
    top = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert set(top) - {"pareto.png"} == {"results.json", "results.md", "runs"}
    assert sorted(p.name for p in (tmp_path / "out" / "runs").iterdir()) == ["full", "sampled"]
    assert not any(p.name == "checkpoint.pt" for p in (tmp_path / "out").rglob("*"))
    rows = _rows((tmp_path / "out" / "results.md").read_text())
    assert rows[0] == COLUMNS and [r[0] for r in rows[2:]] == ["full", "sampled"]

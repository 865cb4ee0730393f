"""``bigsoftmax recsys bench`` as a library (bigsoftmax.recsys.bench): the grid it promises, the
table's rows and columns, the goal lines computed from the runs, and files written only where asked."""

import json

import pytest

from bigsoftmax.recsys.bench import GRID, format_table, grid, run_bench, write_results
from bigsoftmax.recsys.train import RecsysConfig

BASE = RecsysConfig(epochs=1, batch_size=32, lr=0.05, dim=8, hidden=[8], max_history=2, num_sampled=8,
                    progress=False, seed=0)
COLUMNS = ["objective", "logQ", "Recall@10", "Recall@50", "Recall@100", "NDCG@10", "HitRate@10",
           "train time (s)", "s / epoch"]


def test_grid_is_every_objective_with_and_without_logq():
    cfgs = grid(BASE)
    assert len(cfgs) == len(GRID) == 13
    assert {c.objective for c in cfgs} == {"full", "sampled", "in-batch", "mixed"}
    for obj in ("sampled", "in-batch", "mixed"):
        assert {c.logq for c in cfgs if c.objective == obj} == {True, False}
    assert {c.sampler for c in cfgs if c.objective == "sampled"} == {"log-uniform", "unigram", "uniform"}
    assert len({c.label() for c in cfgs}) == 13  # every run has its own name
    only = grid(BASE, ["mixed"])
    assert [c.objective for c in only] == ["mixed"] * 3 and all(c.dim == BASE.dim for c in only)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from .conftest import cyclic_rows, write_csv

    csv = write_csv(tmp_path_factory.mktemp("rb") / "cyclic.csv", cyclic_rows())
    return run_bench([str(csv)], BASE, ["full", "in-batch"], log=lambda s: None, allow_fetch=False)


def test_table_has_the_promised_rows_and_columns(bench):
    (name, entry), = bench["datasets"].items()
    assert name == "cyclic" and set(entry["baselines"]) == {"popularity", "item-knn"}
    assert [r["label"] for r in entry["runs"]] == [c.label() for c in grid(BASE, ["full", "in-batch"])]
    table = format_table(bench, command="bigsoftmax recsys bench --data cyclic.csv")
    lines = table.splitlines()
    head = next(k for k, l in enumerate(lines) if l.startswith("| objective |"))
    assert [c.strip() for c in lines[head].strip("|").split("|")] == COLUMNS
    body = []
    for l in lines[head + 2:]:
        if not l.startswith("|"):
            break
        body.append([c.strip() for c in l.strip("|").split("|")])
    assert [r[0] for r in body] == ["popularity baseline", "item-knn baseline"] + [r["objective"] for r in entry["runs"]]
    assert all(len(r) == len(COLUMNS) for r in body)
    for row, run in zip(body[2:], entry["runs"]):  # the numbers are the runs' own
        assert row[2] == f"{run['test']['Recall@10']:.4f}" and row[5] == f"{run['test']['NDCG@10']:.4f}"
    assert "Command: `bigsoftmax recsys bench --data cyclic.csv`" in table


def test_goal_lines_are_computed_from_the_runs(bench):
    entry = bench["datasets"]["cyclic"]
    pop = entry["baselines"]["popularity"]["test"]["Recall@10"]
    best = max(entry["runs"], key=lambda r: r["test"]["Recall@10"])
    table = format_table(bench)
    ratio = best["test"]["Recall@10"] / pop
    assert f"Best objective: {best['label']} with Recall@10 {best['test']['Recall@10']:.4f} = {ratio:.2f}×" in table
    assert ("goal ≥ 2×: met" if ratio >= 2 else "goal ≥ 2×: NOT met") in table
    on = next(r for r in entry["runs"] if r["config"]["objective"] == "in-batch" and r["config"]["logq"]
              and r["config"]["freq"] == "true")
    off = next(r for r in entry["runs"] if r["config"]["objective"] == "in-batch" and not r["config"]["logq"])
    d = on["test"]["Recall@10"] - off["test"]["Recall@10"]
    assert f"in-batch logQ (true frequencies) changes Recall@10 by {d:+.4f}" in table


def test_write_results_writes_only_the_table_and_its_json(bench, tmp_path):
    out = tmp_path / "deep" / "r.md"
    table = write_results(bench, out, None, command="cmd")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["deep", "deep/r.json", "deep/r.md"]
    assert out.read_text() == table
    back = json.loads(out.with_suffix(".json").read_text())
    assert back["datasets"]["cyclic"]["runs"][0]["test"] == bench["datasets"]["cyclic"]["runs"][0]["test"]

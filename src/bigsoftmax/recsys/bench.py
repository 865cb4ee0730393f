"""``bigsoftmax recsys bench``: every objective × log-Q on/off on one or more data sets.

For each data set: the popularity and item-kNN baselines, then one two-tower model per objective
(same model, data, seed, epochs and batch size; only the loss differs), evaluated exactly on the
test split (and on the validation split, reported in the JSON). Writes a Markdown table (objective
× logQ: metrics and training time), a JSON file with every number, and a bar plot (matplotlib Agg).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .._jobs import write_json_atomic, write_text_atomic
from .baselines import evaluate_baseline
from .data import load_dataset
from .eval import evaluate
from .train import RecsysConfig, train

__all__ = ["GRID", "grid", "run_bench", "format_table", "plot_results"]

#: (objective, sampler, logq, freq) of every benchmarked run
GRID = [
    ("full", None, False, "true"),
    ("sampled", "log-uniform", True, "true"),
    ("sampled", "log-uniform", False, "true"),
    ("sampled", "unigram", True, "true"),
    ("sampled", "unigram", False, "true"),
    ("sampled", "uniform", True, "true"),
    ("sampled", "uniform", False, "true"),
    ("in-batch", None, True, "true"),
    ("in-batch", None, True, "streaming"),
    ("in-batch", None, False, "true"),
    ("mixed", None, True, "true"),
    ("mixed", None, True, "streaming"),
    ("mixed", None, False, "true"),
]
_METRICS = ("Recall@10", "Recall@50", "Recall@100", "NDCG@10", "HitRate@10")


def grid(base: RecsysConfig, objectives: Optional[Sequence[str]] = None) -> List[RecsysConfig]:
    """The configs of :data:`GRID` (optionally only some objectives) on top of ``base``."""
    out = []
    for obj, smp, lq, fr in GRID:
        if objectives and obj not in objectives:
            continue
        out.append(replace(base, objective=obj, sampler=smp, logq=lq, freq=fr))
    return out


def _logq_cell(c: RecsysConfig) -> str:
    if c.objective == "full":
        return "n/a"
    if not c.logq:
        return "off"
    return "on (sampler)" if c.objective == "sampled" else f"on ({c.freq})"


def _objective_cell(c: RecsysConfig) -> str:
    if c.objective == "full":
        return "full softmax (reference)"
    if c.objective == "sampled":
        s = c.sampler or "log-uniform"
        return f"sampled softmax, {s}" + (f" (α={c.alpha:g})" if s == "unigram" else "") + f", S={c.num_sampled}"
    if c.objective == "mixed":
        return f"mixed negatives, B + {c.num_sampled} {c.sampler or 'uniform'}"
    return f"in-batch softmax, B={c.batch_size}"


def run_bench(datasets: Sequence[str], base: RecsysConfig, objectives: Optional[Sequence[str]] = None,
              log: Callable[[str], None] = print, allow_fetch: bool = True) -> Dict:
    """Run the grid on every data set; returns ``{"datasets": {name: {"summary", "baselines", "runs"}}, ...}``."""
    res: Dict = {"config": asdict(base), "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "machine": platform.machine(), "datasets": {}}
    for name in datasets:
        data = load_dataset(name, allow_fetch=allow_fetch)
        log(data.summary())
        entry = {"summary": data.summary(), "baselines": {}, "runs": []}
        for b in ("popularity", "item-knn"):
            t0 = time.perf_counter()
            entry["baselines"][b] = {"test": evaluate_baseline(b, data, "test"), "valid": evaluate_baseline(b, data, "valid"),
                                     "time_s": time.perf_counter() - t0}
            log(f"  baseline {b}: Recall@10 {entry['baselines'][b]['test']['Recall@10']:.4f}")
        for cfg in grid(replace(base, data=name), objectives):
            model, info = train(data, cfg, log=lambda s: None)
            test = evaluate(model, data, "test", cfg.max_history)
            valid = evaluate(model, data, "valid", cfg.max_history)
            entry["runs"].append({"label": cfg.label(), "objective": _objective_cell(cfg), "logq": _logq_cell(cfg),
                                  "config": asdict(cfg), "train": info, "test": test, "valid": valid})
            log(f"  {cfg.label():32s} Recall@10 {test['Recall@10']:.4f}  NDCG@10 {test['NDCG@10']:.4f}  "
                f"{info['train_time_s']:.1f} s ({info['epoch_time_s']:.1f} s/epoch)")
        res["datasets"][data.name] = entry
    return res


def _find(runs, objective, logq, freq="true", sampler=None):
    for r in runs:
        c = r["config"]
        if c["objective"] == objective and c["logq"] == logq and (not logq or c["freq"] == freq) \
                and (sampler is None or c["sampler"] == sampler):
            return r
    return None


def format_table(res: Dict, command: str = "") -> str:
    """Markdown: one table per data set (baselines, then objective × logQ), then the goal checks."""
    lines: List[str] = []
    cfg = res["config"]
    lines.append(f"Two-tower (YouTubeDNN-style) retrieval, exact full-catalogue evaluation on the test split "
                 f"(leave-last-out; history items excluded). Model: d={cfg['dim']}, MLP {cfg['hidden']}, "
                 f"{cfg['pooling']} pooling of the last {cfg['max_history']} items; {cfg['epochs']} epochs, "
                 f"batch {cfg['batch_size']}, Adam lr {cfg['lr']}, seed {cfg['seed']}, temperature "
                 f"{cfg['temperature']}{', L2-normalised' if cfg['normalize'] else ''}; torch threads "
                 f"{res['threads']}. Training time = forward + backward + update (data batching included, "
                 f"evaluation excluded). Recall@K = HitRate@K here (one held-out item per user).")
    if command:
        lines += ["", f"Command: `{command}`"]
    for name, e in res["datasets"].items():
        lines += ["", f"### {name}", "", e["summary"], ""]
        head = "| objective | logQ | " + " | ".join(_METRICS) + " | train time (s) | s / epoch |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for b, v in e["baselines"].items():
            t = v["test"]
            lines.append(f"| {b} baseline | – | " + " | ".join(f"{t[m]:.4f}" for m in _METRICS) + " | – | – |")
        for r in e["runs"]:
            t = r["test"]
            lines.append(f"| {r['objective']} | {r['logq']} | " + " | ".join(f"{t[m]:.4f}" for m in _METRICS)
                         + f" | {r['train']['train_time_s']:.1f} | {r['train']['epoch_time_s']:.1f} |")
        lines += [""] + _goal_lines(e)
    return "\n".join(lines) + "\n"


def _stderr(m: Dict) -> float:
    """Binomial standard error of Recall@10 over the evaluated users: sqrt(p (1 − p) / n)."""
    p, n = m["Recall@10"], max(int(m["users"]), 1)
    return (p * (1.0 - p) / n) ** 0.5


def _goal_lines(e: Dict) -> List[str]:
    out = []
    pop = e["baselines"]["popularity"]["test"]["Recall@10"]
    best = max(e["runs"], key=lambda r: r["test"]["Recall@10"]) if e["runs"] else None
    if best is not None:
        ratio = best["test"]["Recall@10"] / pop if pop > 0 else float("inf")
        out.append(f"- Best objective: {best['label']} with Recall@10 {best['test']['Recall@10']:.4f} = "
                   f"{ratio:.2f}× the popularity baseline ({pop:.4f}); goal ≥ 2×: {'met' if ratio >= 2 else 'NOT met'}. "
                   f"Sampling noise: the standard error of a Recall@10 near {best['test']['Recall@10']:.2f} over "
                   f"{best['test']['users']} users is ±{_stderr(best['test']):.4f} (one seed per run).")
    for obj in ("in-batch", "mixed"):
        off = _find(e["runs"], obj, False)
        for fr in ("true", "streaming"):
            on = _find(e["runs"], obj, True, fr)
            if on and off:
                d = on["test"]["Recall@10"] - off["test"]["Recall@10"]
                out.append(f"- {obj} logQ ({fr} frequencies) changes Recall@10 by {d:+.4f} "
                           f"({off['test']['Recall@10']:.4f} → {on['test']['Recall@10']:.4f}).")
    for smp in ("log-uniform", "unigram", "uniform"):
        on, off = _find(e["runs"], "sampled", True, sampler=smp), _find(e["runs"], "sampled", False, sampler=smp)
        if on and off:
            d = on["test"]["Recall@10"] - off["test"]["Recall@10"]
            out.append(f"- sampled/{smp} logQ changes Recall@10 by {d:+.4f}.")
    ep = [r["train"]["epoch_time_s"] for r in e["runs"]]
    if ep:
        out.append(f"- Epoch time: {min(ep):.1f}–{max(ep):.1f} s (median {sorted(ep)[len(ep) // 2]:.1f} s).")
    return out


def plot_results(res: Dict, path: Path) -> Optional[Path]:
    """Grouped bars of test Recall@10 (logQ on / off) per objective, one panel per data set; PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is the [plot] extra
        return None
    names = list(res["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 5.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        e = res["datasets"][name]
        runs = e["runs"]
        labels = [r["label"] for r in runs]
        vals = [r["test"]["Recall@10"] for r in runs]
        colors = ["tab:gray" if r["config"]["objective"] == "full" else ("tab:blue" if r["config"]["logq"] else "tab:orange")
                  for r in runs]
        se = [_stderr(r["test"]) for r in runs]
        ax.barh(range(len(runs)), vals, xerr=se, color=colors, error_kw={"elinewidth": 0.8, "capsize": 2})
        ax.set_yticks(range(len(runs)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        for b, style in (("popularity", "--"), ("item-knn", ":")):
            v = e["baselines"][b]["test"]["Recall@10"]
            ax.axvline(v, color="black", linestyle=style, linewidth=1, label=f"{b} {v:.3f}")
        pop = e["baselines"]["popularity"]["test"]["Recall@10"]
        ax.axvline(2 * pop, color="red", linestyle="-.", linewidth=1, label=f"2× popularity {2 * pop:.3f}")
        ax.set_xlabel("test Recall@10 ± 1 s.e. (blue: +logQ, orange: −logQ, grey: full softmax)")
        ax.set_title(name)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_results(res: Dict, md_path: Path, plot_path: Optional[Path], command: str = "") -> str:
    """Write the Markdown table (+ a JSON beside it) and the plot; returns the table."""
    table = format_table(res, command)
    md_path = Path(md_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(table, md_path)
    write_json_atomic(res, md_path.with_suffix(".json"))
    if plot_path is not None:
        plot_results(res, plot_path)
    return table

"""``bigsoftmax bench``: every head trained with the same model, data, seed and budget.

The default is like-for-like: no head ties its output matrix to the input embedding (the tree,
class and adaptive heads have no ``[V, d]`` matrix to tie); ``--tie`` ties every head that can and
the table's ``tied`` column says which did. The configuration is printed with the table, and a
speed-up measured over fewer than ``MIN_SPEED_STEPS`` steps or ``MIN_SPEED_TIME_S`` seconds is
flagged as not measurable (a warning, and ``*`` in the table). An output folder holding an earlier
bench or run is refused unless ``overwrite``.

For each head the run goes into ``<out>/runs/<head>/`` (by default in a fresh subprocess, so its
peak resident memory is its own), then the exact valid perplexity, training tokens/s, time per
epoch (``tokens_per_epoch / tokens_per_s``), peak RSS and the speed-up over the full softmax
(``tokens_per_s(head) / tokens_per_s(full)``, both measured in this bench) are collected into
``results.json``, a Markdown table ``results.md`` and ``pareto.png`` (validation perplexity against
training time, one annotated point per head, the Pareto front drawn through the non-dominated ones).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["resolve_heads", "run_bench", "format_table", "pareto_front", "plot_pareto", "MIN_SPEED_STEPS",
           "MIN_SPEED_TIME_S"]

#: a speed measured over fewer steps / seconds (after warm-up) than these is flagged as not measurable
MIN_SPEED_STEPS = 20
MIN_SPEED_TIME_S = 2.0
#: the files a bench writes in its --out folder
BENCH_FILES = ("results.json", "results.md", "pareto.png")


def too_short(r: Dict) -> bool:
    """True when the run's speed was measured over too few steps or seconds to mean anything."""
    return r.get("measured_steps", MIN_SPEED_STEPS) < MIN_SPEED_STEPS or \
        r.get("measured_time_s", MIN_SPEED_TIME_S) < MIN_SPEED_TIME_S


def resolve_heads(spec: str) -> List[str]:
    """``'all'`` -> every available head; else a comma-separated list of registered, available names."""
    from .registry import HEADS, available_heads, head_class

    if spec.strip() == "all":
        heads = available_heads()
        if not heads:
            raise ValueError("no heads are available in this installation")
        return heads
    names = [h.strip() for h in spec.split(",") if h.strip()]
    if not names:
        raise ValueError(f"--heads must be 'all' or a comma-separated list of {', '.join(HEADS)}; got {spec!r}")
    for n in names:
        head_class(n)  # unknown / unavailable -> clear error
    if len(set(names)) != len(names):
        raise ValueError(f"--heads lists a head twice: {spec!r}")
    return names


def pareto_front(points: List[tuple]) -> List[int]:
    """Indices of the non-dominated (time, perplexity) points, both minimised, sorted by time."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def format_table(runs: List[Dict]) -> str:
    """Markdown table of the finished runs (failed ones listed with their error)."""
    full = next((r for r in runs if r.get("head") == "full" and r.get("status") == "finished"), None)
    lines = ["| head | valid ppl | ppl / full | train tok/s | time / epoch | speed-up vs full | peak RSS (MiB) "
             "| train time | tied |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in runs:
        if r.get("status") != "finished":
            lines.append(f"| {r['head']} | failed: {r.get('error', r.get('status'))} | | | | | | | |")
            continue
        ratio = f"{r['valid_ppl'] / full['valid_ppl']:.3f}" if full else "n/a"
        speed = f"{r['tokens_per_s'] / full['tokens_per_s']:.1f}x" if full else "n/a"
        if full and (too_short(r) or too_short(full)):
            speed += "*"
        lines.append(
            f"| {r['head']} | {r['valid_ppl']:.1f} | {ratio} | {r['tokens_per_s']:,.0f} | {_fmt_s(r['epoch_time_s'])} "
            f"| {speed} | {r['peak_rss_mb']:,.0f} | {r['train_time_s']:.1f} s | {'yes' if r.get('tied') else 'no'} |"
        )
    if any(r.get("status") == "finished" and too_short(r) for r in runs):
        lines += ["", f"\\* run too short to measure a speed (fewer than {MIN_SPEED_STEPS} steps or "
                      f"{MIN_SPEED_TIME_S:g} s after warm-up): the speed-up is not meaningful"]
    return "\n".join(lines)


def plot_pareto(runs: List[Dict], path: Path, title: str, fixed_time: bool = False) -> bool:
    """Perplexity vs training time, one annotated point per head; False when matplotlib is missing.

    ``fixed_time``: every head had the same wall-clock budget, so the x axis is the number of
    training tokens each reached instead (more is better: no Pareto front is drawn).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .registry import HEADS

    ok = [r for r in runs if r.get("status") == "finished" and r["valid_ppl"] == r["valid_ppl"]]
    if not ok:
        return False
    # a head whose exact perplexity is orders of magnitude off (negative sampling is not a density)
    # would squash every other point: leave it out and say so under the plot
    best = min(r["valid_ppl"] for r in ok)
    hidden = [r for r in ok if r["valid_ppl"] > 20 * best]
    ok = [r for r in ok if r["valid_ppl"] <= 20 * best]
    colors = {"exact": "#1f77b4", "sampling": "#d62728", "structured": "#2ca02c"}
    markers = {"exact": "s", "sampling": "o", "structured": "^"}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=150)
    xkey = "train_tokens" if fixed_time else "train_time_s"
    pts = [(r[xkey], r["valid_ppl"]) for r in ok]
    seen = set()
    for r, (x, y) in zip(ok, pts):
        kind = HEADS[r["head"]].kind if r["head"] in HEADS else "exact"
        ax.scatter([x], [y], s=46, color=colors[kind], marker=markers[kind], zorder=3,
                   label=None if kind in seen else {"exact": "exact softmax", "sampling": "sampling-based",
                                                    "structured": "structured (tree/class/adaptive)"}[kind])
        seen.add(kind)
        ax.annotate(r["head"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = [] if fixed_time else pareto_front(pts)
    if len(front) > 1:
        fx = [pts[i][0] for i in front]
        fy = [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="0.5", linestyle="--", linewidth=1, zorder=1, label="Pareto front")
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    if max(xs) / max(min(xs), 1e-9) > 4:
        ax.set_xscale("log")
    if max(ys) / max(min(ys), 1e-9) > 3:
        ax.set_yscale("log")
    ax.set_xlabel("training tokens reached in the same wall-clock budget" if fixed_time
                  else "training time (s, same token budget for every head)")
    ax.set_ylabel("exact validation perplexity")
    ax.set_title(title, fontsize=9)
    ax.margins(x=0.15, y=0.1)
    if hidden:
        ax.text(0.01, 0.01, "not shown: " + ", ".join(f"{r['head']} (ppl {r['valid_ppl']:.3g})" for r in hidden),
                transform=ax.transAxes, fontsize=7, color="0.3", va="bottom")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _run_isolated(cfg, run_dir: Path, threads: Optional[int], tensorboard: bool = False) -> Dict:
    """Train one head in a fresh interpreter (``python -m bigsoftmax.lm.bench --worker``)."""
    cfg_path = run_dir / "bench_config.json"
    cfg_path.write_text(json.dumps(asdict(cfg)), encoding="utf-8")
    cmd = [sys.executable, "-m", "bigsoftmax.lm.bench", "--worker", str(cfg_path), str(run_dir)]
    if threads:
        cmd += ["--threads", str(threads)]
    if tensorboard:
        cmd.append("--tensorboard")
    r = subprocess.run(cmd)
    return _collect(run_dir, r.returncode)


def _collect(run_dir: Path, code: int) -> Dict:
    m = run_dir / "metrics.json"
    if code == 0 and m.is_file():
        return json.loads(m.read_text(encoding="utf-8"))
    err = run_dir / "error.txt"
    msg = err.read_text(encoding="utf-8").strip() if err.is_file() else f"exit status {code}"
    return {"status": "failed", "error": msg.splitlines()[-1] if msg else f"exit status {code}"}


def _worker(argv: List[str]) -> int:
    import argparse

    import torch

    from .config import TrainConfig
    from .train import Trainer

    p = argparse.ArgumentParser(prog="python -m bigsoftmax.lm.bench --worker")
    p.add_argument("--worker", required=True)
    p.add_argument("run_dir")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tensorboard", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    run_dir = Path(a.run_dir)
    try:
        cfg = TrainConfig.from_dict(json.loads(Path(a.worker).read_text(encoding="utf-8")))
        res = Trainer(cfg, run_dir, tensorboard=a.tensorboard).run()
        return 0 if res.get("status") == "finished" else 130
    except Exception as e:  # reported in the bench table, not a crash of the bench
        (run_dir / "error.txt").write_text(f"{type(e).__name__}: {e}\n", encoding="utf-8")
        print(f"bigsoftmax bench: {cfg.head if 'cfg' in locals() else '?'} failed: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1


def run_bench(cfg, heads: List[str], out: Path, isolate: bool = True, threads: Optional[int] = None,
              keep_checkpoints: bool = False, log=None, overwrite: bool = False, tensorboard: bool = False) -> Dict:
    """Train ``heads`` with ``cfg`` (same everything but the head); write results.{json,md} and pareto.png.

    Refuses (FileExistsError, before training anything) when ``out`` already holds a bench's
    results or a non-empty ``runs/<head>`` folder, unless ``overwrite``. Returns ``setup``, ``runs``,
    ``table``, ``config_lines`` (the configuration, printed with the table) and ``warnings``.
    """
    import torch

    from .._jobs import Progress, check_can_write, write_json_atomic, write_text_atomic
    from .data import load_corpus
    from .config import CHECKPOINT
    from .train import Trainer

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    targets = [out / n for n in BENCH_FILES]
    for head in heads:
        run_dir = out / "runs" / head
        if run_dir.is_dir() and any(run_dir.iterdir()):
            targets.append(run_dir)
        elif run_dir.exists() and not run_dir.is_dir():
            targets.append(run_dir)
    check_can_write(targets, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(cfg.corpus, **cfg.corpus_kwargs())  # tokenise + cache once for all heads
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.time()
    runs: List[Dict] = []
    total = Progress("bench", enabled=cfg.progress, unit="head", total=len(heads))
    say = total.message if cfg.progress else log  # the per-head lines are printed even with --quiet
    for i, head in enumerate(heads):
        run_dir = out / "runs" / head
        if run_dir.exists() and overwrite:
            shutil.rmtree(run_dir) if run_dir.is_dir() else run_dir.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        hcfg = replace(cfg, head=head)
        say(f"[{i + 1}/{len(heads)}] {head}")
        if isolate:
            r = _run_isolated(hcfg, run_dir, threads, tensorboard)
        else:
            try:
                r = Trainer(hcfg, run_dir, corpus=corpus, tensorboard=tensorboard).run()
            except KeyboardInterrupt:
                raise
            except Exception as e:
                r = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        r.setdefault("head", head)
        runs.append(r)
        if r.get("status") == "finished":
            say(f"    {head}: valid ppl {r['valid_ppl']:.1f}, {r['tokens_per_s']:,.0f} tok/s")
        else:
            say(f"    {head}: {r.get('status')}: {r.get('error', '')}")
        total.advance(1)
        if not keep_checkpoints:  # keep config.json / metrics.json; drop the bulky files (made by this bench)
            for name in (CHECKPOINT, "vocab.json"):
                if (run_dir / name).exists():
                    (run_dir / name).unlink()
    total.close()
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = format_table(runs)
    V = len(corpus.vocab)
    budget = (f"{cfg.max_tokens:,} training tokens per head" if cfg.max_tokens else
              f"{cfg.time_budget:g} s of training per head" if cfg.time_budget else
              f"{cfg.epochs or 1:g} epoch(s) per head")
    setup = {
        "corpus": corpus.name, "vocab_size": V, "train_tokens_total": int(corpus.train.size),
        "model": cfg.model, "d_model": cfg.d_model, "num_layers": cfg.num_layers, "batch_size": cfg.batch_size,
        "seq_len": cfg.seq_len, "lr": cfg.lr, "seed": cfg.seed, "budget": budget,
        "num_sampled": cfg.num_sampled if cfg.num_sampled is not None else max(1, V // 16),
        "sampler": cfg.sampler, "sparse": cfg.sparse, "eval_tokens": cfg.eval_tokens,
        "threads": threads or torch.get_num_threads(), "isolated_processes": isolate,
        "loadavg_before": load_before, "loadavg_after": load_after,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "wall_time_s": time.time() - started,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    title = (f"{corpus.name} (V={V:,}), {cfg.model} d={cfg.d_model}, {budget}")
    fixed_time = bool(cfg.time_budget) and not cfg.max_tokens
    plotted = plot_pareto(runs, out / "pareto.png", title, fixed_time)
    md = [
        f"# bigsoftmax bench: {corpus.name}",
        "",
        f"- corpus `{corpus.name}`: V = {V:,} types, {corpus.train.size:,} training tokens; exact validation perplexity "
        f"on {'the first ' + format(cfg.eval_tokens, ',') + ' valid tokens' if cfg.eval_tokens else 'the whole valid split'}",
        f"- model: {cfg.model}, d = {cfg.d_model}, {cfg.num_layers} layer(s), batch {cfg.batch_size} x {cfg.seq_len} "
        f"tokens, Adam lr {cfg.lr:g}, seed {cfg.seed}; {budget}",
        f"- sampling heads: S = {setup['num_sampled']} candidates ({cfg.sampler or 'default'} sampler)"
        f"{', sparse gradients' if cfg.sparse else ''}",
        f"- {setup['threads']} torch threads on {os.cpu_count()} CPUs; load average before {load_before}, after "
        f"{load_after} (a shared machine: absolute times are noisy, ratios within one bench are comparable)",
        f"- speed-up = training tokens/s of the head / tokens/s of the full softmax; time / epoch = "
        f"{corpus.train.size:,} tokens / tokens/s",
        "",
        table,
        "",
    ]
    if plotted:
        md += ["![perplexity vs training time](pareto.png)", ""]
    tied = sorted(r["head"] for r in runs if r.get("tied"))
    untied = sorted(r["head"] for r in runs if r.get("status") == "finished" and not r.get("tied"))
    config_lines = [
        f"bench configuration: corpus {corpus.name} (V={V:,}, {corpus.train.size:,} train tokens); {cfg.model} "
        f"d={cfg.d_model} x{cfg.num_layers}, batch {cfg.batch_size}x{cfg.seq_len}, lr {cfg.lr:g}, seed {cfg.seed}; "
        f"{budget}",
        f"  sampling heads: S={setup['num_sampled']} ({cfg.sampler or 'default'} sampler)"
        f"{', sparse' if cfg.sparse else ''}; tying: "
        + ("none (like-for-like; --tie ties the heads that can)" if not cfg.tie else
           f"--tie: tied {', '.join(tied) or 'none'}; untied (no [V, d] matrix) {', '.join(untied) or 'none'} — "
           "not like-for-like"),
    ]
    warnings = []
    short = [r["head"] for r in runs if r.get("status") == "finished" and too_short(r)]
    if short:
        warnings.append(f"run too short to measure a speed for {', '.join(short)} (fewer than {MIN_SPEED_STEPS} "
                        f"steps or {MIN_SPEED_TIME_S:g} s after warm-up): its speed-up is not meaningful; give a "
                        "larger --max-tokens")
    if cfg.tie and untied and tied:
        warnings.append("with --tie only some heads are tied; the comparison is not like-for-like")
    setup["tie"] = cfg.tie
    md[2:2] = [f"- tying: {config_lines[1].split('tying: ', 1)[1]}"]
    if warnings:
        md += [f"> warning: {w}" for w in warnings] + [""]
    write_text_atomic("\n".join(md), out / "results.md")
    result = {"setup": setup, "runs": runs, "table": table, "plot": plotted, "config_lines": config_lines,
              "warnings": warnings}
    write_json_atomic(result, out / "results.json")
    return result


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))

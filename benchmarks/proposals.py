"""Proposals for sampled softmax and NCE: log-uniform, unigram^0.75 and the context-dependent bigram.

Issue 15. On each corpus (``gutenberg``, ``brown``), same LSTM, same tokens, same seed, one
``bigsoftmax train`` subprocess per configuration (2 torch threads):

* ``full`` — the exact softmax (the reference perplexity and speed);
* ``sampled`` with the ``log_uniform``, ``unigram`` (counts^0.75) and ``bigram`` proposals at
  S = V/16, and ``bigram`` at a smaller S_b chosen so that its output-layer step costs no more than
  the log-uniform step at V/16 (calibrated in this process before the runs, see below);
* ``nce`` with log-uniform noise at V/16 and bigram noise at V/16 and at S_b;
* ``sampled`` and ``nce`` with the ``mixed`` proposal at S = V/16: a shared log-uniform set of
  V/16 − R plus R = ``--per-row`` bigram draws per target (``samplers.Mixed``; the shared part is one
  GEMM, so the step costs about the log-uniform one).

Each run reports the exact validation perplexity (every head is evaluated with its exact full
softmax) as a ratio to the full softmax's, and the speed-up per epoch (tokens/s ratio).

Micro-benchmarks, in this process, on the corpus's real V, counts and training stream, with the LM's
N = batch × seq_len rows and d = d_model (``torch.set_num_threads(2)``, median of timed calls):

1. **calibration**: one output-layer training step (draw + forward + backward, sparse gradients) of
   ``SampledSoftmax`` with log-uniform at V/16 against bigram at S ∈ {V/16, V/32, …, 8}; S_b is the
   largest S whose bigram step is no slower (``--bigram-s`` overrides it);
2. **draws**: the cost of drawing N·S per-example candidates (``Bigram``, unique and not) against
   one shared draw of S (``LogUniform``, ``Unigram``), at V/16 and S_b;
3. **gather modes**: the fused per-example sampled softmax with ``gather="unique"`` (the batch's
   distinct rows, one GEMM and an index map) against ``gather="rows"`` ([N, S, d] gathered rows) and
   against the shared [S] kernel, forward + backward, at V/16 and S_b.

Results: ``--out/<corpus>/results.json`` and ``results.md``, and ``--out/REPORT.md``; a run folder
that exists already is refused unless ``--overwrite`` (it is then replaced).

    python benchmarks/proposals.py --corpora gutenberg --max-lines 3000 --max-vocab 500 \\
        --max-tokens 4K --eval-tokens 1K --repeats 1 --out /tmp/proposals-smoke       # smoke, ~1 min
    python benchmarks/proposals.py --max-tokens 1M                                         # the issue's run
    python benchmarks/proposals.py --micro-only                                            # micro-benchmarks only

Run time at ``--max-tokens 1M`` (estimate for the quiet 2-core machine, from full softmax ≈ 3.5K
tok/s, sampled ≈ 35K tok/s and one measured bigram draw of N·S = 1280 × 2648 at V = 42K: 0.38 s
with replacement, 2.9 s unique): per corpus ≈ 5 min full softmax, ≈ 0.5 min each for the
log-uniform / unigram / NCE log-uniform / small-S bigram runs, ≈ 12 min each for the two bigram
runs at S = V/16 (the batch's per-row candidates cover all V rows, so that step costs about a full
softmax step plus the draw), 1–2 min of micro-benchmarks: ≈ 35 min per corpus, ≈ 70 min for both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import timeit  # noqa: E402  (benchmarks/_timing.py)

from bigsoftmax import samplers as S  # noqa: E402
from bigsoftmax.heads import SampledSoftmax  # noqa: E402
from bigsoftmax.ops import sampled as ops  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# ----------------------------------------------------------------------------- micro-benchmarks
def _corpus(name: str, a):
    from bigsoftmax.lm.data import load_corpus

    return load_corpus(name, max_size=a.max_vocab, max_lines=a.max_lines)


def _rows(corpus, N: int, seed: int = 0):
    """N (previous token, target) pairs from the training stream."""
    train = torch.as_tensor(corpus.train.astype("int64"))
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(1, train.numel(), (N,), generator=g)
    return train[pos - 1], train[pos], train


def _samplers(corpus, train, per_row: int = 32):
    counts = torch.as_tensor(corpus.counts.astype("float64")).clamp_min(1.0)
    V = counts.numel()
    bigram = S.Bigram(V, train, unigram_counts=counts, unique=False)  # as the LM job draws it (with replacement)
    return {
        "log_uniform": S.LogUniform(V),
        "unigram": S.Unigram(counts, distortion=0.75),
        "bigram": bigram,
        "bigram (unique=True)": S.Bigram(V, train, unigram_counts=counts, unique=True),  # TF's semantics per row
        f"mixed (R={per_row})": S.Mixed(S.LogUniform(V), bigram, per_row),  # the same bigram tables, built once
    }


def _head_step_time(sampler, V, d, S_, prev, y, repeats):
    head = SampledSoftmax(d, V, S_, sampler=sampler, sparse=True, seed=0)
    h = torch.randn(y.numel(), d, requires_grad=True)
    ctx = {"context": prev} if head.uses_context else {}

    def step():
        head.weight.grad = head.bias.grad = h.grad = None
        head(h, y, **ctx).backward()

    return timeit(step, repeats, min_below=5)


def calibrate(corpus, samplers, d: int, N: int, repeats: int):
    """(S_b, [(S, seconds)]): the largest bigram S whose head step is no slower than log-uniform at V/16."""
    V = len(corpus.vocab)
    prev, y, _ = _rows(corpus, N)
    ref = _head_step_time(samplers["log_uniform"], V, d, max(1, V // 16), prev, y, repeats)
    grid, s = [], max(1, V // 16)
    while s >= 8:
        grid.append(s)
        s //= 2
    times = [(s, _head_step_time(samplers["bigram"], V, d, s, prev, y, repeats)) for s in grid]
    ok = [s for s, t in times if t <= ref]
    mixed = next(k for k in samplers if k.startswith("mixed"))
    t_mixed = _head_step_time(samplers[mixed], V, d, max(1, V // 16), prev, y, repeats)
    return (max(ok) if ok else min(grid, default=8)), ref, times, (mixed, t_mixed)


def draw_costs(corpus, samplers, N: int, sizes, repeats: int):
    prev, y, _ = _rows(corpus, N)
    out = []
    g = torch.Generator().manual_seed(0)
    for s in sizes:
        row = {"S": s}
        for name, sm in samplers.items():
            ctx = {"context": prev} if getattr(sm, "context_dependent", False) else {}
            if s <= getattr(sm, "num_per_row", 0):  # a mixed set needs at least one shared candidate
                row[name] = None
                continue
            row[name] = timeit(lambda: sm.sample(y[:, None], s, g, **ctx), repeats, min_below=5)
        out.append(row)
    return out


def gather_costs(corpus, samplers, d: int, N: int, sizes, repeats: int):
    V = len(corpus.vocab)
    prev, y, _ = _rows(corpus, N)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(V, d, requires_grad=True)
    b = torch.zeros(V, requires_grad=True)
    x = torch.randn(N, d, requires_grad=True)
    out = []
    for s in sizes:
        per_row = samplers["bigram"].sample(y[:, None], s, g, context=prev)
        shared = samplers["log_uniform"].sample(y[:, None], s, g)
        row = {"S": s, "distinct rows U": int(torch.unique(per_row[0]).numel())}
        for mode, sv in (("shared [S]", shared), ("per-row unique", per_row), ("per-row rows", per_row)):
            gather = "rows" if mode.endswith("rows") else "unique"

            def step():
                W.grad = b.grad = x.grad = None
                ops.fused_sampled_softmax(x, W, b, y, *sv, remove_accidental_hits=True, sparse=True,
                                          gather=gather).sum().backward()

            row[mode] = timeit(step, repeats, min_below=5)
        out.append(row)
    return out


# ----------------------------------------------------------------------------- LM runs
def configs(V: int, s_small: int, per_row: int = 32):
    s16 = max(1, V // 16)
    return [
        ("full", "full", None, None),
        (f"sampled log_uniform S={s16}", "sampled", "log_uniform", s16),
        (f"sampled unigram^0.75 S={s16}", "sampled", "unigram", s16),
        (f"sampled bigram S={s16}", "sampled", "bigram", s16),
        (f"sampled bigram S={s_small}", "sampled", "bigram", s_small),
        (f"nce log_uniform S={s16}", "nce", "log_uniform", s16),
        (f"nce bigram S={s16}", "nce", "bigram", s16),
        (f"nce bigram S={s_small}", "nce", "bigram", s_small),
        (f"sampled mixed S={s16} (R={per_row})", "sampled", "mixed", s16),
        (f"nce mixed S={s16} (R={per_row})", "nce", "mixed", s16),
    ]


def run_train(corpus: str, tag: str, head: str, sampler, s, a, root: Path):
    out = root / "runs" / tag.replace(" ", "_").replace("^", "").replace("=", "").replace("(", "").replace(")", "")
    if out.exists():
        if not a.overwrite:
            raise SystemExit(f"{out} exists (an earlier run); pass --overwrite to replace it")
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "bigsoftmax", "train", "--corpus", corpus, "--head", head, "--model", "lstm",
           "--d-model", str(a.d_model), "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len),
           "--lr", str(a.lr), "--seed", str(a.seed), "--max-tokens", a.max_tokens, "--eval-tokens", a.eval_tokens,
           "--threads", "2", "--sparse", "--no-tie", "-q", "--out", str(out)]
    for flag, v in (("--max-vocab", a.max_vocab), ("--max-lines", a.max_lines)):
        if v is not None:
            cmd += [flag, str(v)]
    if sampler is not None:
        cmd += ["--sampler", sampler, "--num-sampled", str(s)]
    if sampler == "mixed":
        cmd += ["--per-row", str(a.per_row)]
    t0 = time.time()
    proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO / "src")), capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return {"tag": tag, "status": f"exit {proc.returncode}"}
    m = json.loads((out / "metrics.json").read_text())
    return {"tag": tag, "head": head, "sampler": sampler, "S": s, "status": m["status"], "valid_ppl": m["valid_ppl"],
            "tokens_per_s": m["tokens_per_s"], "train_tokens": m["train_tokens"], "wall_s": time.time() - t0}


# ----------------------------------------------------------------------------- report
def _ms(t):
    return "-" if t is None else f"{t * 1e3:.2f}"


def markdown(corpus: str, res) -> str:
    V, L = res["vocab_size"], []
    met = any(s == res["s_small"] and t <= res["calibration"]["ref"] for s, t in res["calibration"]["bigram"])
    L += [f"## {corpus} (V = {V:,})", "", f"N = {res['N']} rows per step, d = {res['d']}; S_b = {res['s_small']} "
          + (f"(the largest S whose bigram step is no slower than log-uniform at V/16 = {V // 16})" if met else
             "(NO S of the grid met the cost bound; the smallest tried, or --bigram-s)"), "",
          f"Command: `{res.get('command', '')}`", ""]
    if res.get("runs"):
        full = next((r for r in res["runs"] if r["tag"] == "full" and r["status"] == "finished"), None)
        L += ["| run | valid ppl | ppl / full | tokens/s | speed-up / epoch |", "|---|---:|---:|---:|---:|"]
        for r in res["runs"]:
            if r["status"] != "finished":
                L.append(f"| {r['tag']} | {r['status']} | | | |")
                continue
            ratio = f"{r['valid_ppl'] / full['valid_ppl']:.3f}" if full else "-"
            speed = f"{r['tokens_per_s'] / full['tokens_per_s']:.1f}x" if full else "-"
            L.append(f"| {r['tag']} | {r['valid_ppl']:.1f} | {ratio} | {r['tokens_per_s']:,.0f} | {speed} |")
        L.append("")
    L += ["Calibration (output-layer step: draw + forward + backward, ms):", "",
          f"| proposal | S | ms |", "|---|---:|---:|", f"| log_uniform | {V // 16} | {_ms(res['calibration']['ref'])} |"]
    L += [f"| bigram | {s} | {_ms(t)} |" for s, t in res["calibration"]["bigram"]]
    if res["calibration"].get("mixed"):
        name, t = res["calibration"]["mixed"]
        L.append(f"| {name} | {V // 16} | {_ms(t)} |")
    names = [k for k in res["draws"][0] if k != "S"]
    L += ["", "Drawing candidates (ms per step; shared = one [S] set, bigram = N·S per-example):", "",
          "| S | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    L += [f"| {r['S']} | " + " | ".join(_ms(r[n]) for n in names) + " |" for r in res["draws"]]
    cols = ["shared [S]", "per-row unique", "per-row rows"]
    L += ["", "Fused sampled softmax forward + backward (ms), per-example gather modes vs the shared set:", "",
          "| S | distinct rows U | " + " | ".join(cols) + " |", "|---:|---:|" + "---:|" * len(cols)]
    L += [f"| {r['S']} | {r['distinct rows U']:,} | " + " | ".join(_ms(r[c]) for c in cols) + " |" for r in res["gather"]]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default="gutenberg,brown")
    p.add_argument("--max-tokens", default="1M", help="training tokens per run (default 1M)")
    p.add_argument("--eval-tokens", default="30K")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--lr", default="0.003")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-vocab", type=int, default=None, help="cap the vocabulary (smoke runs; default: none)")
    p.add_argument("--max-lines", type=int, default=None, help="first N lines of each corpus (smoke runs)")
    p.add_argument("--bigram-s", type=int, default=None, help="S_b for the small-S bigram runs (default: calibrated)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per micro-benchmark (median)")
    p.add_argument("--per-row", type=int, default=32, help="per-target bigram draws of the mixed proposal (default 32)")
    p.add_argument("--skip-slow", action="store_true",
                   help="skip the two bigram runs at S = V/16 (each costs about a full-softmax run: the batch's "
                        "per-row candidates cover every class row)")
    p.add_argument("--runs", default=None,
                   help="comma-separated substrings: only the training runs whose tag contains one (default: all)")
    p.add_argument("--micro-only", action="store_true", help="only the micro-benchmarks, no training runs")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "proposals"))
    p.add_argument("--overwrite", action="store_true", help="replace run folders of an earlier run")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    if "BIGSOFTMAX_DATA" not in os.environ and SHARED_DATA.is_dir():
        os.environ["BIGSOFTMAX_DATA"] = str(SHARED_DATA)
    root = Path(a.out)
    parts = []
    for corpus in a.corpora.split(","):
        c = _corpus(corpus, a)
        V, N = len(c.vocab), a.batch_size * a.seq_len
        samplers = _samplers(c, torch.as_tensor(c.train.astype("int64")), a.per_row)
        s_small, ref, times, mixed = calibrate(c, samplers, a.d_model, N, a.repeats)
        if a.bigram_s is not None:
            s_small = a.bigram_s
        sizes = sorted({max(1, V // 16), s_small}, reverse=True)
        res = {"corpus": corpus, "vocab_size": V, "N": N, "d": a.d_model, "s_small": s_small,
               "calibration": {"ref": ref, "bigram": times, "mixed": mixed},
               "draws": draw_costs(c, samplers, N, sizes, a.repeats),
               "gather": gather_costs(c, samplers, a.d_model, N, sizes, a.repeats), "runs": []}
        d = root / corpus
        d.mkdir(parents=True, exist_ok=True)
        if not a.micro_only:
            for tag, head, sampler, s in configs(V, s_small, a.per_row):
                if a.runs and not any(k in tag for k in a.runs.split(",")):
                    continue
                if a.skip_slow and sampler == "bigram" and s == max(1, V // 16):
                    continue
                r = run_train(corpus, tag, head, sampler, s, a, d)
                print(f"{corpus}: {tag}: {r}", file=sys.stderr)
                res["runs"].append(r)
        res["command"] = " ".join(["python", "benchmarks/proposals.py", *(argv if argv is not None else sys.argv[1:])])
        (d / "results.json").write_text(json.dumps(res, indent=1))
        md = markdown(corpus, res)
        (d / "results.md").write_text(md, encoding="utf-8")
        parts.append(md)
        print(md)
    (root / "REPORT.md").write_text("# Proposals for sampled softmax and NCE (benchmarks/proposals.py)\n\n"
                                    + "\n".join(parts), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""No-regression check against an older revision, both versions in ONE process, calls interleaved.

    python benchmarks/regression.py --base 6a64f3c                 # the four kernels at the benchmarks' sizes
    python benchmarks/regression.py --base 6a64f3c --only adaptive --repeats 31
    python benchmarks/regression.py --base-src /path/to/old/src/bigsoftmax --quick   # tiny sizes, seconds

Why one process: on this 2-core machine two runs of the same benchmark in two processes differ by
10-25% (allocator state, thread placement, load drift), so comparing a "before" run with an "after" run
cannot resolve a 5% change. Here the old package is exported from git (``git archive REV src/bigsoftmax``)
into a temporary folder and imported as ``bigsoftmax_base`` beside the current ``bigsoftmax`` (the
package uses relative imports only; its ``torch.library`` namespace is renamed so both can register
their custom ops). Both build the same head with the same parameters (copied from one to the other;
the first loss must agree to 1e-5), then their training steps (forward + backward, fp32) alternate
A B B A … for ``--repeats`` pairs. The figure is the median of the per-pair time ratios (new / old)
with its interquartile range; "within noise" means the ratio's IQR contains 1 or the median lies
within ±5%.

Cases (the sizes of the single-kernel benchmarks):
- sampled: ``SampledSoftmax(sparse=True)`` V=1M, d=256, B=1024, S=8192 (benchmarks/sampled.py);
- full: ``functional.linear_cross_entropy`` V=200K, d=256, N=1024 (benchmarks/full.py --V 200000);
- adaptive: ``AdaptiveSoftmax.from_torch`` V=100K, cutoffs [2K, 20K], d=256, N=2048 (adaptive.py --only 100k);
- tree-*: Huffman binary dense/sparse, arity 4 sparse, class-based dense/sparse, V=100K, d=256,
  N=1024, Zipf(1.1) (benchmarks/tree.py --vocab 100000).
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import bigsoftmax  # noqa: E402


def export_base(rev: str | None, src: str | None, into: Path) -> Path:
    """Put the old package at ``into/bigsoftmax_base`` (from a git revision or a source folder)."""
    dst = into / "bigsoftmax_base"
    if src is not None:
        shutil.copytree(src, dst)
    else:
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src/bigsoftmax"],
                              check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
            tf.extractall(into, filter="data")
        (into / "src" / "bigsoftmax").rename(dst)
    for py in dst.rglob("*.py"):
        text = py.read_text()
        if "bigsoftmax::" in text or "import bigsoftmax" in text or "from bigsoftmax" in text:
            text = (text.replace("bigsoftmax::", "bigsoftmax_base::")
                    .replace("import bigsoftmax", "import bigsoftmax_base")
                    .replace("from bigsoftmax", "from bigsoftmax_base"))
            py.write_text(text)
    return dst


def copy_params(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """dst's parameters and buffers := src's (by name where the names agree, else in order)."""
    s, d = src.state_dict(), dst.state_dict()
    if set(s) >= set(k for k in d if not k.endswith("_extra_state")) and all(
            s[k].shape == d[k].shape for k in d if k in s and torch.is_tensor(d[k])):
        with torch.no_grad():
            for k, v in d.items():
                if torch.is_tensor(v) and k in s:
                    v.copy_(s[k])
        return
    ps, pd = list(src.parameters()), list(dst.parameters())
    if [p.shape for p in ps] != [p.shape for p in pd]:
        raise SystemExit(f"cannot match the parameters of {type(src).__name__} across versions")
    with torch.no_grad():
        for a, b in zip(ps, pd):
            b.copy_(a)


def zipf_targets(V, n, s, g):
    p = torch.arange(1, V + 1, dtype=torch.float64).pow(-s)
    return torch.multinomial(p / p.sum(), n, replacement=True, generator=g)


def cases(pkgs, quick):
    """name -> builder(pkg) returning (step, loss) for that package's version."""
    q = quick
    out = {}

    def sampled():
        V, d, B, S = (20_000, 64, 128, 512) if q else (1_000_000, 256, 1024, 8192)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, d, generator=g, requires_grad=True)
        y = zipf_targets(V, B, 1.0, g)
        heads = [p.heads.SampledSoftmax(d, V, S, sparse=True, seed=0) for p in pkgs]
        copy_params(heads[0], heads[1])
        return [_head_step(h, x, y) for h in heads]

    def full():
        V, d, N = (20_000, 64, 256) if q else (200_000, 256, 1024)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, d, generator=g, requires_grad=True)
        W = torch.nn.Parameter(torch.randn(V, d, generator=g) / math.sqrt(d))
        b = torch.nn.Parameter(torch.zeros(V))
        y = torch.randint(0, V, (N,), generator=g)

        def mk(p):
            lce = p.functional.linear_cross_entropy

            def step():
                x.grad = W.grad = b.grad = None
                loss = lce(x, W, b, y)
                loss.backward()
                return loss.detach()
            return step
        return [mk(p) for p in pkgs]

    def adaptive():
        V, cut, d, N = (20_000, [1000, 5000], 64, 256) if q else (100_000, [2000, 20000], 256, 2048)
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        tm = torch.nn.AdaptiveLogSoftmaxWithLoss(d, V, cut)
        x = torch.randn(N, d, generator=g, requires_grad=True)
        y = zipf_targets(V, N, 1.15, g)
        return [_head_step(p.heads.AdaptiveSoftmax.from_torch(tm), x, y) for p in pkgs]

    def tree(kind):
        def build():
            V, d, N = (20_000, 64, 256) if q else (100_000, 256, 1024)
            counts = 1.0 / torch.arange(1, V + 1, dtype=torch.float64).pow(1.1)
            g = torch.Generator().manual_seed(0)
            y = torch.multinomial(counts / counts.sum(), N, replacement=True, generator=g)
            x = torch.randn(N, d, generator=g, requires_grad=True)
            c = counts.numpy()
            mk = {
                "huffman": lambda p: p.heads.HierarchicalSoftmax(d, c),
                "huffman-sparse": lambda p: p.heads.HierarchicalSoftmax(d, c, sparse=True),
                "arity4-sparse": lambda p: p.heads.HierarchicalSoftmax(d, c, arity=4, sparse=True),
                "classbased": lambda p: p.heads.ClassBasedSoftmax(d, c),
                "classbased-sparse": lambda p: p.heads.ClassBasedSoftmax(d, c, sparse=True),
            }[kind]
            heads = []
            for p in pkgs:
                torch.manual_seed(0)
                heads.append(mk(p))
            copy_params(heads[0], heads[1])
            return [_head_step(h, x, y) for h in heads]
        return build

    out["sampled"] = sampled
    out["full"] = full
    out["adaptive"] = adaptive
    for k in ("huffman", "huffman-sparse", "arity4-sparse", "classbased", "classbased-sparse"):
        out[f"tree-{k}"] = tree(k)
    return out


def _head_step(head, x, y):
    def step():
        x.grad = None
        head.zero_grad(set_to_none=True)
        loss = head(x, y)
        loss.backward()
        return loss.detach()
    return step


def compare(build, repeats):
    old, new = build()
    l0, l1 = float(old()), float(new())  # also the warm-up
    if abs(l0 - l1) > 1e-5 * max(1.0, abs(l0)):
        raise SystemExit(f"the two versions give different losses: {l0} vs {l1}")
    old(), new()
    t_old, t_new = [], []
    for i in range(repeats):
        order = ((old, t_old), (new, t_new)) if i % 2 == 0 else ((new, t_new), (old, t_old))
        for fn, ts in order:
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    r = sorted(b / a for a, b in zip(t_old, t_new))
    q1, q3 = r[len(r) // 4], r[(3 * len(r)) // 4]
    med = statistics.median(r)
    verdict = "within noise" if (q1 <= 1.0 <= q3 or abs(med - 1) <= 0.05) else ("faster" if med < 1 else "SLOWER")
    return dict(old=statistics.median(t_old), new=statistics.median(t_new), ratio=med, q1=q1, q3=q3,
                verdict=verdict, loss=l1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", help="git revision of the old version (exported with git archive)")
    src.add_argument("--base-src", help="folder of an old bigsoftmax package instead of a revision")
    ap.add_argument("--only", help="comma list of cases (sampled, full, adaptive, tree-huffman, tree-huffman-sparse, "
                                   "tree-arity4-sparse, tree-classbased, tree-classbased-sparse; 'tree' = all five)")
    ap.add_argument("--repeats", type=int, default=15, help="timed pairs per case (default 15)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, seconds)")
    ap.add_argument("--out", type=Path, help="Markdown table to write (default: print only)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    a = ap.parse_args(argv)
    if a.repeats < 3:
        raise SystemExit(f"--repeats must be >= 3, got {a.repeats}")
    if a.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {a.threads}")
    if a.out is not None and a.out.exists() and not a.overwrite:
        raise SystemExit(f"{a.out} exists; pass --overwrite to replace it")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        export_base(a.base, a.base_src, Path(tmp))
        sys.path.insert(0, tmp)
        base = importlib.import_module("bigsoftmax_base")
        for sub in ("heads", "functional"):
            importlib.import_module(f"bigsoftmax_base.{sub}")
            importlib.import_module(f"bigsoftmax.{sub}")
        table = cases([base, bigsoftmax], a.quick)
        names = list(table)
        if a.only:
            want = []
            for w in a.only.split(","):
                w = w.strip()
                sel = [n for n in names if n == w or (w == "tree" and n.startswith("tree-"))]
                if not sel:
                    raise SystemExit(f"--only: unknown case {w!r}; choose from {names} or 'tree'")
                want += sel
            names = want
        rows = []
        for n in names:
            r = compare(table[n], a.repeats)
            rows.append((n, r))
            print(f"  {n}: old {r['old'] * 1e3:.1f} ms, new {r['new'] * 1e3:.1f} ms, new/old {r['ratio']:.3f} "
                  f"[{r['q1']:.3f}, {r['q3']:.3f}] {r['verdict']}", flush=True)
    label = a.base if a.base else a.base_src
    lines = [
        f"Both versions in one process, steps alternating, median of {a.repeats} pairs, {a.threads} threads, fp32"
        + (" (quick sizes)" if a.quick else ""), "",
        f"| case | old ({label}) | new | new / old (median) | IQR | verdict |", "|---|---:|---:|---:|---|---|",
    ]
    for n, r in rows:
        lines.append(f"| {n} | {r['old'] * 1e3:.1f} ms | {r['new'] * 1e3:.1f} ms | {r['ratio']:.3f} "
                     f"| [{r['q1']:.3f}, {r['q3']:.3f}] | {r['verdict']} |")
    text = "\n".join(lines)
    print(text)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("# No-regression check\n\nCommand: `python benchmarks/regression.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]) + f"`\n\n{text}\n")
        print(f"saved {a.out}")


if __name__ == "__main__":
    main()

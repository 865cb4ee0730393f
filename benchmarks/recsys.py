"""Two-tower retrieval on MovieLens: every objective × logQ on/off, exact test metrics, training time.

    python benchmarks/recsys.py                       # ml-100k + ml-latest-small, 5 epochs per run (minutes)
    python benchmarks/recsys.py --quick --data ml-100k  # 1 epoch per run: a smoke test
    python benchmarks/recsys.py --threads 1 ...       # any `bigsoftmax recsys bench` option

The same as ``bigsoftmax recsys bench``: for each data set, the popularity and item-kNN baselines
and one model per (objective, logQ) setting (same model, seed, epochs, batch), evaluated exactly
over the whole catalogue; writes ``benchmarks/results/recsys.md`` (+ ``.json``) and
``benchmarks/results/recsys.png`` (``--out`` / ``--plot`` to change; an existing file is replaced
only with ``--overwrite``). The data come from ``$BIGSOFTMAX_DATA`` (``ml-100k/``,
``ml-latest-small.csv.xz``) or the cache; see ``docs/recsys.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bigsoftmax.recsys.cli import main  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(RESULTS / "recsys.md")]
    if not any(a == "--plot" or a.startswith("--plot=") for a in argv):
        argv += ["--plot", str(RESULTS / "recsys.png")]
    sys.exit(main(["bench", *argv]))

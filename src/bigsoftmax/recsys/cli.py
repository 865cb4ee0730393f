"""``bigsoftmax recsys train|eval|bench|recommend``: two-tower retrieval from the command line.

    bigsoftmax recsys train --data ml-100k --objective in-batch --save runs/tt.pt
    bigsoftmax recsys train --data ml-latest-small --objective sampled --sampler unigram --alpha 0.75 --no-logq
    bigsoftmax recsys eval --data ml-100k --checkpoint runs/tt.pt          # or --baseline popularity|item-knn
    bigsoftmax recsys recommend --data ml-100k --checkpoint runs/tt.pt --user 196 -k 10
    bigsoftmax recsys bench --data ml-100k ml-latest-small --out runs/recsys-bench/recsys.md

``--data`` takes ``ml-100k``, ``ml-latest-small`` or a path (RecBole atomic folder / ``.inter`` file
/ CSV with user_id,item_id,timestamp); named sets are looked up in ``$BIGSOFTMAX_DATA`` and the
cache (ml-100k is fetched from PyPI when missing, unless ``--offline``).

The main ``bigsoftmax`` CLI calls :func:`register` to add the ``recsys`` group; :func:`main` runs
the group on its own (``python -m bigsoftmax.recsys.cli train ...``). Exit codes: 0 success, 1
runtime failure or missing data, 2 bad usage or input (a damaged checkpoint, an output file that
already exists without ``--overwrite``, ...).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from .._jobs import check_can_write
from .._jobs import pos_float as _pos_float, pos_int as _pos_int

__all__ = ["register", "main", "build_parser"]


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s!r}")
    return v


def _int_list(s: str):
    """Comma-separated positive ints; empty allowed (``--hidden ""``: no hidden layer)."""
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,128, got {s!r}") from None
    if any(x < 1 for x in v):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return v


def _add_data(p: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        p.add_argument("--data", nargs="+", default=["ml-100k", "ml-latest-small"],
                       help="data sets: ml-100k, ml-latest-small or paths (default: both named sets)")
    else:
        p.add_argument("--data", default="ml-100k", help="ml-100k (default), ml-latest-small, an atomic folder or a CSV")
    p.add_argument("--offline", action="store_true", help="never fetch ml-100k from PyPI")
    p.add_argument("--threads", type=_pos_int, default=None, help="torch threads (default: torch's choice)")


def _add_train_args(p: argparse.ArgumentParser, objective: bool = True) -> None:
    from .objectives import FREQ_SOURCES, OBJECTIVES, SAMPLERS
    from .train import RecsysConfig

    d = RecsysConfig()
    g = p.add_argument_group("objective")
    if objective:
        g.add_argument("--objective", choices=OBJECTIVES, default=d.objective,
                       help="full softmax, sampled softmax, in-batch softmax or mixed negatives (default: %(default)s)")
        g.add_argument("--sampler", choices=SAMPLERS, default=None,
                       help="candidate sampler (sampled: default log-uniform; mixed: default uniform)")
        g.add_argument("--alpha", type=_nonneg_float, default=d.alpha, help="unigram distortion: P ∝ count^alpha (default %(default)s)")
        g.add_argument("--logq", action=argparse.BooleanOptionalAction, default=d.logq,
                       help="subtract log Q (the candidates' expected counts) from the logits (default: on)")
        g.add_argument("--freq", choices=FREQ_SOURCES, default=d.freq,
                       help="in-batch/mixed log Q from the true training frequencies or the streaming estimator")
    g.add_argument("--num-sampled", type=_pos_int, default=d.num_sampled, help="sampled candidates per step (default %(default)s)")
    g.add_argument("--temperature", type=_pos_float, default=d.temperature, help="logits = score / temperature")
    g.add_argument("--normalize", action="store_true", help="L2-normalise user and item vectors (cosine scores)")
    g = p.add_argument_group("model")
    g.add_argument("--dim", type=_pos_int, default=d.dim, help="user/item vector size (default %(default)s)")
    g.add_argument("--hidden", type=_int_list, default=d.hidden, help="user MLP hidden widths, e.g. 256,128 (default 128)")
    g.add_argument("--pooling", choices=["mean", "attention"], default=d.pooling)
    g.add_argument("--max-history", type=_pos_int, default=d.max_history, help="history items fed to the user tower")
    g.add_argument("--no-user-features", dest="user_features", action="store_false", help="ignore user features")
    g.add_argument("--item-features", action="store_true", help="add item features (genres, year) to the item tower")
    g.add_argument("--dropout", type=_nonneg_float, default=d.dropout)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_pos_int, default=d.epochs)
    g.add_argument("--batch-size", type=_pos_int, default=d.batch_size)
    g.add_argument("--lr", type=_pos_float, default=d.lr)
    g.add_argument("--weight-decay", type=_nonneg_float, default=d.weight_decay)
    g.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config(args, **over):
    from .train import RecsysConfig

    kw = dict(
        data=str(args.data[0] if isinstance(args.data, list) else args.data), num_sampled=args.num_sampled,
        temperature=args.temperature, normalize=args.normalize, dim=args.dim, hidden=list(args.hidden),
        pooling=args.pooling, max_history=args.max_history, user_features=args.user_features,
        item_features=args.item_features, dropout=args.dropout, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, progress=not args.quiet,
    )
    for k in ("objective", "sampler", "alpha", "logq", "freq"):
        if hasattr(args, k):
            kw[k] = getattr(args, k)
    kw.update(over)
    return RecsysConfig(**kw).validate()


def _setup(args):
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _load(args, name=None):
    from .data import load_dataset

    return load_dataset(name if name is not None else args.data, allow_fetch=not args.offline)


def _fmt_metrics(m) -> str:
    return "  ".join(f"{k} {m[k]:.4f}" for k in ("Recall@10", "Recall@50", "Recall@100", "NDCG@10", "HitRate@10")) + \
        f"  ({m['users']} users)"


# ----------------------------------------------------------------------------- subcommands
def cmd_train(args) -> int:
    from .eval import evaluate
    from .train import save_checkpoint, train

    _setup(args)
    cfg = _config(args)
    if args.save:
        check_can_write([args.save], args.overwrite)  # before training, not after
    data = _load(args)
    print(data.summary(), file=sys.stderr)
    model, info = train(data, cfg)
    res = {"data": data.name, "objective": cfg.label(), "train": info,
           "valid": evaluate(model, data, "valid", cfg.max_history), "test": evaluate(model, data, "test", cfg.max_history)}
    if args.save:
        check_can_write([args.save], args.overwrite)  # another command may have written it meanwhile
        save_checkpoint(args.save, model, cfg, data, info)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{data.name} {cfg.label()}: {info['train_time_s']:.1f} s training ({info['epoch_time_s']:.1f} s/epoch)")
        print(f"  valid: {_fmt_metrics(res['valid'])}")
        print(f"  test:  {_fmt_metrics(res['test'])}")
        if args.save:
            print(f"  saved {args.save}")
    return 0


def cmd_eval(args) -> int:
    from .baselines import evaluate_baseline
    from .eval import evaluate
    from .train import load_checkpoint

    _setup(args)
    if (args.checkpoint is None) == (args.baseline is None):
        raise ValueError("give exactly one of --checkpoint PATH or --baseline {popularity,item-knn}")
    data = _load(args)
    if args.checkpoint is not None:
        model, cfg, _ = load_checkpoint(args.checkpoint, data)
        m = evaluate(model, data, args.split, cfg.max_history)
        what = cfg.label()
    else:
        m = evaluate_baseline(args.baseline, data, args.split)
        what = f"{args.baseline} baseline"
    if args.json:
        print(json.dumps({"data": data.name, "model": what, "split": args.split, **m}, indent=1))
    else:
        print(f"{data.name} {args.split} — {what}: {_fmt_metrics(m)}")
    return 0


def cmd_recommend(args) -> int:
    import torch

    from ..heads.base import chunked_topk
    from .train import load_checkpoint

    _setup(args)
    data = _load(args)
    model, cfg, _ = load_checkpoint(args.checkpoint, data)
    u = int(data.encode_users([args.user])[0])
    end = int(data.offsets[u + 1])
    if end - int(data.offsets[u]) < 1:  # pragma: no cover - every stored user has an interaction
        raise ValueError(f"user {args.user!r} has an empty history")
    # the user's whole sequence is the history: score as if predicting the item after the last one
    seq = data.items[int(data.offsets[u]):end]
    hist = seq[-cfg.max_history:][None, :]
    mask = torch.ones_like(hist, dtype=torch.bool)
    feats = data.user_features[[u]] if len(model.user_feature_sizes) else None
    seen = torch.zeros(data.num_items, dtype=torch.bool)
    seen[seq] = True
    k = min(args.k, data.num_items - int(seen.sum()))
    if k < 1:
        raise ValueError(f"user {args.user!r} has interacted with every item; nothing left to recommend")
    with torch.no_grad():
        vec = model.user_vectors(hist, mask, feats)

        def chunk(s0, s1):  # never recommend what the user already has
            sc = model.score_items(vec, s0, s1)
            return sc.masked_fill(seen[s0:s1][None, :], torch.finfo(sc.dtype).min)

        _, top = chunked_topk(chunk, data.num_items, 1, k, 4096, vec.device, vec.dtype)
    ids = data.decode_items(top[0])
    if data.item_titles:  # one item per line with its title, where the data has titles
        for raw in ids:
            print(f"{raw}\t{data.item_titles.get(raw, '')}".rstrip())
    else:
        print(" ".join(ids))
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench, write_results

    _setup(args)
    base = _config(args, objective="in-batch", epochs=args.epochs if not args.quick else 1, progress=False)
    objectives = None if args.objectives in (None, "all") else [o.strip() for o in args.objectives.split(",")]
    out = Path(args.out)
    check_can_write([out, out.with_suffix(".json")] + ([Path(args.plot)] if args.plot else []), args.overwrite)
    res = run_bench(args.data, base, objectives, log=lambda s: print(s, file=sys.stderr, flush=True),
                    allow_fetch=not args.offline)
    table = write_results(res, Path(args.out), Path(args.plot) if args.plot else None, _bench_command(args, base))
    print(table)
    print(f"wrote {args.out}, {Path(args.out).with_suffix('.json')}" + (f", {args.plot}" if args.plot else ""), file=sys.stderr)
    return 0


def _bench_command(args, cfg) -> str:
    """The command line that reproduces a bench (every option that changes a number)."""
    parts = ["bigsoftmax", "recsys", "bench", "--data", *[str(d) for d in args.data]]
    if args.objectives not in (None, "all"):
        parts += ["--objectives", args.objectives]
    parts += ["--epochs", str(cfg.epochs), "--max-history", str(cfg.max_history), "--lr", f"{cfg.lr:g}",
              "--dim", str(cfg.dim), "--hidden", ",".join(map(str, cfg.hidden)), "--pooling", cfg.pooling,
              "--batch-size", str(cfg.batch_size), "--num-sampled", str(cfg.num_sampled), "--seed", str(cfg.seed)]
    if cfg.temperature != 1.0:
        parts += ["--temperature", f"{cfg.temperature:g}"]
    if cfg.normalize:
        parts.append("--normalize")
    if not cfg.user_features:
        parts.append("--no-user-features")
    if cfg.item_features:
        parts.append("--item-features")
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------- parser
def _add_commands(sub) -> None:
    from .baselines import BASELINES
    from .bench import GRID

    p = sub.add_parser("train", help="train a two-tower model and evaluate it exactly (valid + test)",
                       description="Train a YouTubeDNN-style two-tower model with one objective; report exact "
                                   "Recall@{10,50,100}, NDCG@10, HitRate@10 on the validation and test splits.")
    _add_data(p)
    _add_train_args(p)
    p.add_argument("--save", default=None, help="write a checkpoint here (refused if the file exists)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save file")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="exact metrics of a checkpoint or a baseline")
    _add_data(p)
    p.add_argument("--checkpoint", default=None, help="a `recsys train --save` checkpoint")
    p.add_argument("--baseline", choices=BASELINES, default=None, help="evaluate a baseline instead")
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("recommend", help="top-k items for one user of the data set (raw ids, with titles "
                                         "where the data has them)")
    _add_data(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--user", required=True, help="raw user id as in the ratings file")
    p.add_argument("-k", type=_pos_int, default=10)
    p.set_defaults(func=cmd_recommend)

    objs = sorted({g[0] for g in GRID})
    p = sub.add_parser("bench", help="every objective × logQ on/off; Markdown table + bar plot",
                       description="Train one model per objective × logQ setting (same model, seed, epochs) on each "
                                   "data set, plus the popularity and item-kNN baselines; write a Markdown table, "
                                   "a JSON file and a bar plot.")
    _add_data(p, many=True)
    _add_train_args(p, objective=False)
    p.add_argument("--objectives", default="all", help=f"comma-separated subset of {objs} or 'all'")
    p.add_argument("--quick", action="store_true", help="1 epoch per run (smoke test)")
    p.add_argument("--out", default="runs/recsys-bench/recsys.md",
                   help="Markdown table (JSON written beside it; default: runs/recsys-bench/recsys.md)")
    p.add_argument("--plot", default="runs/recsys-bench/recsys.png",
                   help="bar plot PNG ('' to skip; default: runs/recsys-bench/recsys.png)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier bench")
    p.set_defaults(func=cmd_bench)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``recsys`` subcommand group to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("recsys", help="two-tower retrieval on MovieLens: train | eval | recommend | bench",
                              description="Two-tower (YouTubeDNN-style) retrieval with sampled / in-batch / mixed "
                                          "negatives, exact full-catalogue evaluation.")
    sub = p.add_subparsers(dest="recsys_command", metavar="COMMAND")
    _add_commands(sub)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigsoftmax recsys",
                                description="Two-tower retrieval: train | eval | recommend | bench.")
    sub = p.add_subparsers(dest="recsys_command", metavar="COMMAND")
    _add_commands(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``bigsoftmax recsys`` with ``argv`` (without the leading ``recsys``); returns the exit code."""
    from .._jobs import run_cli

    return run_cli(build_parser(), list(sys.argv[1:] if argv is None else argv), "bigsoftmax recsys")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``bigsoftmax`` command line: train / evaluate / benchmark language models with any output head.

    bigsoftmax train --corpus gutenberg --head sampled --num-sampled 2048 --max-tokens 2000000 --out runs/x
    bigsoftmax eval runs/x --split test
    bigsoftmax bench --corpus gutenberg --heads all --max-tokens 300000 --out runs/bench
    bigsoftmax heads                        # which heads this installation has
    bigsoftmax corpus gutenberg             # tokenise + cache a corpus, print its statistics

Other modules add subcommand groups: a module ``bigsoftmax.<name>.cli`` listed in
``_PLUGINS`` exposing ``register(subparsers)`` is imported lazily and skipped when absent; each
subcommand sets ``func`` (``args -> int`` exit code) with ``parser.set_defaults(func=...)``.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or input (the message names the problem),
130 interrupted (a resumable checkpoint was written).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

__all__ = ["main", "build_parser"]

#: modules that may register extra subcommand groups: ``register(subparsers)``
_PLUGINS = ("bigsoftmax.recsys.cli",)


class CLIError(Exception):
    """Usage error raised inside a subcommand (exit status 2)."""


def _pos_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _tokens(s: str) -> int:
    """Integers with optional K/M/G suffix: 300K, 2M."""
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}
    t = s.strip().lower().replace("_", "")
    try:
        v = int(float(t[:-1]) * mult[t[-1]]) if t and t[-1] in mult else int(t)
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a token count like 500000 or 500K, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive token count, got {s!r}")
    return v


def _pos_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


def _int_list(s: str) -> List[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not v or any(x < 1 for x in v):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {s!r}")
    return v


# ----------------------------------------------------------------------------- shared options
def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--corpus", default="gutenberg",
                   help="gutenberg (bundled), brown, gcide, or a path to a .txt/.gz/.xz file (default: gutenberg)")
    g.add_argument("--no-lowercase", dest="lowercase", action="store_false", help="keep case when tokenising")
    g.add_argument("--min-count", type=_pos_int, default=1, help="types seen fewer times in train become <unk>")
    g.add_argument("--max-vocab", dest="max_size", type=_pos_int, default=None, help="cap the vocabulary size")
    g.add_argument("--max-lines", type=_pos_int, default=None, help="use only the first N lines of the corpus")
    g.add_argument("--block-lines", type=_pos_int, default=100,
                   help="lines per split block (5%% of blocks go to valid, 5%% to test; default: 100)")


def _add_model_args(p: argparse.ArgumentParser, head_default: Optional[str] = "full") -> None:
    g = p.add_argument_group("head")
    if head_default is not None:
        g.add_argument("--head", default=head_default, help="output head (see `bigsoftmax heads`; default: full)")
    g.add_argument("--num-sampled", type=_pos_int, default=None,
                   help="candidates per step for sampling heads (default: V/16)")
    g.add_argument("--sampler", default=None, choices=["log_uniform", "unigram", "uniform"],
                   help="candidate sampler for sampling heads (default: log_uniform; unigram^0.75 for negsampling)")
    g.add_argument("--sparse", action="store_true",
                   help="sparse gradients for embedding rows (dense Adam + SparseAdam)")
    g.add_argument("--cutoffs", type=_int_list, default=None, help="adaptive softmax cutoffs, e.g. 2000,10000")
    g.add_argument("--div-value", type=_pos_float, default=4.0, help="adaptive softmax tail shrink factor")
    g.add_argument("--num-clusters", type=_pos_int, default=None, help="class-based softmax: number of classes")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="lstm", choices=["lstm", "transformer"], help="body (default: lstm)")
    g.add_argument("--d-model", type=_pos_int, default=256, help="embedding / hidden size (default: 256)")
    g.add_argument("--layers", dest="num_layers", type=_pos_int, default=1, help="body layers (default: 1)")
    g.add_argument("--attn-heads", dest="num_heads", type=_pos_int, default=4, help="transformer attention heads")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout (default: 0)")
    g.add_argument("--no-tie", dest="tie", action="store_false", help="do not tie input and output embeddings")
    g = p.add_argument_group("optimisation and budget")
    g.add_argument("--batch-size", type=_pos_int, default=64, help="parallel lanes per step (default: 64)")
    g.add_argument("--seq-len", type=_pos_int, default=35, help="tokens per lane per step (BPTT length; default: 35)")
    g.add_argument("--lr", type=_pos_float, default=3e-3, help="Adam / SparseAdam learning rate (default: 3e-3)")
    g.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip for dense params (0 = off)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--epochs", type=_pos_float, default=None, help="stop after this many epochs (default: 1)")
    g.add_argument("--max-tokens", type=_tokens, default=None, help="stop after this many training tokens (e.g. 2M)")
    g.add_argument("--time-budget", type=_pos_float, default=None, help="stop after this many seconds of training")
    g.add_argument("--eval-tokens", type=_tokens, default=None,
                   help="evaluate valid perplexity on the first N valid tokens (default: all)")
    g.add_argument("--threads", type=_pos_int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--checkpoint-every", type=_pos_float, default=120.0, help="seconds between checkpoints")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _config_from_args(args, head: Optional[str] = None):
    from .train import TrainConfig

    return TrainConfig(
        corpus=str(args.corpus), lowercase=args.lowercase, min_count=args.min_count, max_size=args.max_size,
        max_lines=args.max_lines, block_lines=args.block_lines, head=head if head is not None else args.head, num_sampled=args.num_sampled,
        sampler=args.sampler, sparse=args.sparse, cutoffs=args.cutoffs, div_value=args.div_value,
        num_clusters=args.num_clusters, model=args.model, d_model=args.d_model, num_layers=args.num_layers,
        num_heads=args.num_heads, dropout=args.dropout, tie=args.tie, batch_size=args.batch_size,
        seq_len=args.seq_len, lr=args.lr, clip=args.clip, seed=args.seed, epochs=args.epochs,
        max_tokens=args.max_tokens, time_budget=args.time_budget, eval_tokens=args.eval_tokens,
        checkpoint_every=args.checkpoint_every, progress=not args.quiet,
    )


def _set_threads(n: Optional[int]) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _check_head_name(name: str) -> None:
    from .registry import head_class

    head_class(name)  # raises ValueError / HeadUnavailableError with the list of names


# ----------------------------------------------------------------------------- subcommands
def cmd_train(args) -> int:
    from .train import Trainer

    _set_threads(args.threads)
    cfg = _config_from_args(args)
    if not args.resume:  # on --resume the head (and all but the budgets) come from the checkpoint
        _check_head_name(cfg.head)
    trainer = Trainer(cfg, args.out, resume=args.resume)
    res = trainer.run()
    if res["status"] == "interrupted":
        return 130
    print(f"{res['head']}: valid perplexity {res['valid_ppl']:.2f} ({res['valid_tokens']} tokens), "
          f"{res['tokens_per_s']:,.0f} train tokens/s, {res['train_tokens']:,} tokens in {res['train_time_s']:.1f} s "
          f"-> {Path(args.out) / 'metrics.json'}")
    return 0


def cmd_eval(args) -> int:
    from .eval import evaluate_run

    _set_threads(args.threads)
    res = evaluate_run(args.run, split=args.split, max_tokens=args.max_tokens, topk=args.topk,
                       batch_size=args.batch_size)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        accs = "  ".join(f"acc@{k} {res[f'acc@{k}']:.4f}" for k in sorted(set(args.topk)))
        print(f"{res['head']} on {res['corpus']} {res['split']}: perplexity {res['ppl']:.2f}  "
              f"nll {res['nll']:.4f}  {accs}  ({res['tokens']} tokens)")
    return 0


def cmd_bench(args) -> int:
    from .bench import resolve_heads, run_bench

    _set_threads(args.threads)
    heads = resolve_heads(args.heads)
    cfg = _config_from_args(args, head="full")
    res = run_bench(cfg, heads, Path(args.out), isolate=not args.in_process, threads=args.threads,
                    keep_checkpoints=args.keep_checkpoints)
    print(res["table"])
    print(f"\nwrote {Path(args.out) / 'results.json'}, results.md" + (", pareto.png" if res.get("plot") else ""))
    return 0 if all(r.get("status") == "finished" for r in res["runs"]) else 1


def cmd_heads(args) -> int:
    from .registry import HEADS, available_heads

    avail = set(available_heads())
    for name, spec in HEADS.items():
        mark = "yes" if name in avail else "no "
        print(f"{name:<13} {mark}  {spec.class_name:<22} {spec.description}")
    return 0


def cmd_corpus(args) -> int:
    from .data import load_corpus, unigram_perplexity

    c = load_corpus(args.source, lowercase=args.lowercase, min_count=args.min_count, max_size=args.max_size,
                    max_lines=args.max_lines, block_lines=args.block_lines)
    v = c.vocab
    print(f"corpus {c.name}: {c.meta['source']}")
    print(f"  tokens  train {c.train.size:,}  valid {c.valid.size:,}  test {c.test.size:,}")
    print(f"  vocabulary {len(v):,} types (frequency-sorted; <eos> id {v.eos_id}, <unk> id {v.unk_id})")
    print(f"  most frequent: {' '.join(v.itos[:12])}")
    print(f"  unigram valid perplexity {unigram_perplexity(c):.1f}; cached: {c.meta.get('cached')}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bigsoftmax",
        description="Softmax output layers for huge output spaces: train, evaluate and benchmark models.",
    )
    parser.add_argument("--version", action="version", version=f"bigsoftmax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a language model with any head",
                       description="Train an LSTM/Transformer language model with the chosen output head; "
                                   "checkpoints atomically, resumable, exact valid perplexity at the end.")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, metrics.json, ...)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="exact perplexity and top-k accuracy of a trained run")
    p.add_argument("run", help="a `bigsoftmax train` --out folder")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    p.add_argument("--max-tokens", type=_tokens, default=None, help="evaluate only the first N tokens")
    p.add_argument("--topk", type=_int_list, default=[1, 5, 10], help="k values for top-k accuracy (default 1,5,10)")
    p.add_argument("--batch-size", type=_pos_int, default=16)
    p.add_argument("--threads", type=_pos_int, default=None)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="train every head with the same model, data, seed and budget; "
                                     "table + Pareto plot",
                       description="Trains each head with the same model, data, seed and token (or time) budget; "
                                   "writes results.json, results.md and pareto.png to --out.")
    p.add_argument("--heads", default="all", help="comma-separated head names or 'all' (the available ones)")
    _add_data_args(p)
    _add_model_args(p, head_default=None)
    p.add_argument("--out", default="runs/bench", help="output folder (default: runs/bench)")
    p.add_argument("--in-process", action="store_true",
                   help="train every head in this process (faster start; peak memory not isolated per head)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each head's checkpoint.pt and vocab.json (so `bigsoftmax eval` works on them)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("heads", help="list the output heads and whether they are available")
    p.set_defaults(func=cmd_heads)

    p = sub.add_parser("corpus", help="tokenise and cache a corpus; print its statistics")
    p.add_argument("source", nargs="?", default="gutenberg", help="gutenberg, brown, gcide or a file path")
    p.add_argument("--no-lowercase", dest="lowercase", action="store_false")
    p.add_argument("--min-count", type=_pos_int, default=1)
    p.add_argument("--max-vocab", dest="max_size", type=_pos_int, default=None)
    p.add_argument("--max-lines", type=_pos_int, default=None)
    p.add_argument("--block-lines", type=_pos_int, default=100)
    p.set_defaults(func=cmd_corpus)

    for mod in _PLUGINS:
        try:
            plugin = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is not None and (mod == e.name or mod.startswith(e.name + ".")):
                continue  # that optional part is not installed
            print(f"bigsoftmax: warning: subcommands of {mod} unavailable ({e})", file=sys.stderr)
            continue
        except ImportError as e:  # a broken optional part must not take the other commands down
            print(f"bigsoftmax: warning: subcommands of {mod} unavailable ({e})", file=sys.stderr)
            continue
        plugin.register(sub)
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], prog: str) -> int:
    """Parse ``argv`` with ``parser``, run the chosen subcommand's ``func``, map failures to exit codes.

    0 success; 2 usage errors and bad input (argparse errors, ValueError, TypeError, a missing or
    already existing file, :class:`CLIError`); 1 runtime failures and an unavailable corpus; 130 on
    Ctrl-C. Errors print one ``<prog>: error: ...`` line on stderr, never a traceback.
    """
    from .data import CorpusUnavailableError

    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # argparse: --help / --version (0) or a usage error (2, message printed)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except CorpusUnavailableError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, CLIError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, RuntimeError, OSError) as e:
        print(f"{prog}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    return run_cli(build_parser(), argv, "bigsoftmax")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

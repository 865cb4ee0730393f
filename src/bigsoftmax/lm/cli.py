"""The language-model job's subcommands of ``bigsoftmax``: train / evaluate / benchmark LMs with any head.

    bigsoftmax train --corpus gutenberg --head sampled --num-sampled 2048 --max-tokens 2000000 --out runs/x
    bigsoftmax eval runs/x --split test
    bigsoftmax bench --corpus gutenberg --heads all --max-tokens 300000 --out runs/bench
    bigsoftmax heads                        # which heads this installation has
    bigsoftmax corpus gutenberg             # tokenise + cache a corpus, print its statistics

:func:`register` adds them to the dispatcher's subparsers (:mod:`bigsoftmax.cli`); each subcommand
sets ``func`` (``args -> int`` exit code) with ``parser.set_defaults(func=...)``.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or input (the message names the problem),
130 interrupted (a resumable checkpoint was written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from .._jobs import CLIError
from .._jobs import int_list as _int_list
from .._jobs import pos_float as _pos_float
from .._jobs import pos_int as _pos_int
from .._jobs import token_count as _tokens

__all__ = ["register"]


# ----------------------------------------------------------------------------- shared options
# Every data / model / optimisation flag defaults to None here and gets TrainConfig's default in
# _config_from_args, so `train --resume` knows which flags were given on its command line.
def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--corpus", default=None,
                   help="gutenberg (bundled), brown, gcide, or a path to a .txt/.gz/.xz file (default: gutenberg)")
    g.add_argument("--no-lowercase", dest="lowercase", action="store_const", const=False, default=None,
                   help="keep case when tokenising")
    g.add_argument("--min-count", type=_pos_int, default=None,
                   help="types seen fewer times in train become <unk> (default: 1)")
    g.add_argument("--max-vocab", dest="max_size", type=_pos_int, default=None, help="cap the vocabulary size")
    g.add_argument("--max-lines", type=_pos_int, default=None, help="use only the first N lines of the corpus")
    g.add_argument("--block-lines", type=_pos_int, default=None,
                   help="lines per split block (5%% of blocks go to valid, 5%% to test; default: 100)")


def _add_model_args(p: argparse.ArgumentParser, head_default: Optional[str] = "full", tie_default: str = "tied") -> None:
    g = p.add_argument_group("head")
    if head_default is not None:
        g.add_argument("--head", default=None, help="output head (see `bigsoftmax heads`; default: full)")
    g.add_argument("--num-sampled", type=_pos_int, default=None,
                   help="candidates per step for sampling heads (default: V/16)")
    g.add_argument("--sampler", default=None, choices=["log_uniform", "unigram", "uniform", "bigram", "mixed"],
                   help="candidate sampler for sampling heads (default: log_uniform; unigram^0.75 for negsampling; "
                        "bigram: per-example candidates from the previous token, sampled / NCE heads; "
                        "mixed: a shared log-uniform set plus --per-row bigram draws per target)")
    g.add_argument("--per-row", type=_pos_int, default=None,
                   help="per-target bigram draws of --sampler mixed (default: 32; part of --num-sampled)")
    g.add_argument("--sparse", action="store_const", const=True, default=None,
                   help="sparse gradients for embedding rows (dense Adam + SparseAdam)")
    g.add_argument("--cutoffs", type=_int_list, default=None, help="adaptive softmax cutoffs, e.g. 2000,10000")
    g.add_argument("--div-value", type=_pos_float, default=None, help="adaptive softmax tail shrink factor (default: 4)")
    g.add_argument("--num-clusters", type=_pos_int, default=None, help="class-based softmax: number of classes")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, choices=["lstm", "transformer"], help="body (default: lstm)")
    g.add_argument("--d-model", type=_pos_int, default=None, help="embedding / hidden size (default: 256)")
    g.add_argument("--layers", dest="num_layers", type=_pos_int, default=None, help="body layers (default: 1)")
    g.add_argument("--attn-heads", dest="num_heads", type=_pos_int, default=None,
                   help="transformer attention heads (default: 4)")
    g.add_argument("--dropout", type=float, default=None, help="dropout (default: 0)")
    g.add_argument("--tie", dest="tie", action="store_const", const=True, default=None,
                   help="tie input and output embeddings where the head has a [V, d] matrix"
                        + (" (default)" if tie_default == "tied" else
                           " (default here: untied for every head, a like-for-like comparison)"))
    g.add_argument("--no-tie", dest="tie", action="store_const", const=False,
                   help="do not tie input and output embeddings")
    g = p.add_argument_group("optimisation and budget")
    g.add_argument("--batch-size", type=_pos_int, default=None, help="parallel lanes per step (default: 64)")
    g.add_argument("--seq-len", type=_pos_int, default=None, help="tokens per lane per step (BPTT length; default: 35)")
    g.add_argument("--lr", type=_pos_float, default=None, help="Adam / SparseAdam learning rate (default: 3e-3)")
    g.add_argument("--clip", type=float, default=None, help="gradient-norm clip for dense params (0 = off; default: 1)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    g.add_argument("--epochs", type=_pos_float, default=None, help="stop after this many epochs (default: 1)")
    g.add_argument("--max-tokens", type=_tokens, default=None, help="stop after this many training tokens (e.g. 2M)")
    g.add_argument("--time-budget", type=_pos_float, default=None, help="stop after this many seconds of training")
    g.add_argument("--eval-tokens", type=_tokens, default=None,
                   help="evaluate valid perplexity on the first N valid tokens (default: all)")
    g.add_argument("--threads", type=_pos_int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--checkpoint-every", type=_pos_float, default=None,
                   help="seconds between checkpoints (default: 120)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("output")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier run in the output folder (refused otherwise)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files (<run>/tensorboard; needs the tensorboard package)")


#: TrainConfig fields set from same-named arguments
_FIELDS = ("corpus", "lowercase", "min_count", "max_size", "max_lines", "block_lines", "num_sampled", "sampler",
           "per_row", "sparse", "cutoffs", "div_value", "num_clusters", "model", "d_model", "num_layers", "num_heads",
           "dropout", "tie", "vocab_parallel", "batch_size", "seq_len", "lr", "clip", "seed", "epochs", "max_tokens",
           "time_budget", "eval_tokens",
           "checkpoint_every")


def _explicit(args) -> set:
    """The TrainConfig fields given on the command line (their argument is not None)."""
    out = {k for k in _FIELDS if getattr(args, k, None) is not None}
    if getattr(args, "head", None) is not None:
        out.add("head")
    if args.quiet:
        out.add("progress")
    return out


def _config_from_args(args, head: Optional[str] = None, **defaults):
    """A TrainConfig from the parsed arguments; an argument not given takes ``defaults`` or TrainConfig's default."""
    from .config import TrainConfig

    kw = dict(defaults)
    kw.update({k: getattr(args, k) for k in _FIELDS if getattr(args, k, None) is not None})
    if head is not None:
        kw["head"] = head
    elif getattr(args, "head", None) is not None:
        kw["head"] = args.head
    if kw.get("vocab_parallel") and "tie" not in kw:
        kw["tie"] = False  # the head's rows are split over the ranks, the input embedding is replicated
    kw["corpus"] = str(kw.get("corpus", TrainConfig.corpus))
    kw["progress"] = not args.quiet
    return TrainConfig(**kw)


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
        if cfg.vocab_parallel:
            cfg.validate()  # an unsupported head / flag is refused before asking for a process group
    elif args.overwrite:
        raise CLIError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    kw = dict(resume=args.resume, overwrite=args.overwrite, explicit=_explicit(args) if args.resume else None,
              tensorboard=args.tensorboard)
    if cfg.vocab_parallel:
        import torch.distributed as dist

        from .scaleout import VocabParallelTrainer, init_process_group_from_env

        init_process_group_from_env()
        try:
            trainer = VocabParallelTrainer(cfg, args.out, **kw)
            res = trainer.run()
        finally:
            dist.destroy_process_group()
        if trainer.rank != 0:
            return 130 if res["status"] == "interrupted" else 0
    else:
        res = Trainer(cfg, args.out, **kw).run()
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
                       batch_size=args.batch_size, allow_corpus_change=args.allow_corpus_change)
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
    cfg = _config_from_args(args, head="full", tie=False)  # like-for-like default: no head tied
    res = run_bench(cfg, heads, Path(args.out), isolate=not args.in_process, threads=args.threads,
                    keep_checkpoints=args.keep_checkpoints, overwrite=args.overwrite, tensorboard=args.tensorboard)
    print("\n".join(res["config_lines"]) + "\n")
    print(res["table"])
    for w in res["warnings"]:
        print(f"bigsoftmax: warning: {w}", file=sys.stderr)
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
def register(sub) -> None:
    """Add the language-model subcommands (train, eval, bench, heads, corpus) to ``sub``."""
    p = sub.add_parser("train", help="train a language model with any head",
                       description="Train an LSTM/Transformer language model with the chosen output head; "
                                   "checkpoints atomically, resumable, exact valid perplexity at the end.")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--vocab-parallel", dest="vocab_parallel", action="store_const", const=True, default=None,
                   help="under torchrun (gloo): body data-parallel (DDP), head (full, sampled, nce) split over the "
                        "ranks' vocabulary blocks; implies --no-tie; see docs/parallel.md")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, metrics.json, metrics.jsonl, ...)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out; only --epochs, --max-tokens, --time-budget, --eval-tokens, "
                        "--checkpoint-every and --quiet may change, any other flag that differs from the run is refused")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="exact perplexity and top-k accuracy of a trained run",
                       description="Exact perplexity and top-k accuracy of a `bigsoftmax train` run, with the run's "
                                   "own vocabulary (vocab.json); refuses a corpus file that changed since training.")
    p.add_argument("run", help="a `bigsoftmax train` --out folder")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"],
                   help="which split of the run's corpus to evaluate (default: valid)")
    p.add_argument("--max-tokens", type=_tokens, default=None, help="evaluate only the first N tokens")
    p.add_argument("--topk", type=_int_list, default=[1, 5, 10], help="k values for top-k accuracy (default 1,5,10)")
    p.add_argument("--batch-size", type=_pos_int, default=16, help="parallel evaluation lanes (default: 16)")
    p.add_argument("--threads", type=_pos_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--allow-corpus-change", action="store_true",
                   help="evaluate even if the corpus file's sha256 differs from the one recorded at training "
                        "(ids still come from the run's vocab.json; unseen words become <unk>)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="train every head with the same model, data, seed and budget; "
                                     "table + Pareto plot",
                       description="Trains each head with the same model, data, seed and token (or time) budget; "
                                   "writes results.json, results.md and pareto.png to --out.")
    p.add_argument("--heads", default="all", help="comma-separated head names or 'all' (the available ones)")
    _add_data_args(p)
    _add_model_args(p, head_default=None, tie_default="untied")
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
    p.add_argument("--no-lowercase", dest="lowercase", action="store_false", help="keep case when tokenising")
    p.add_argument("--min-count", type=_pos_int, default=1, help="types seen fewer times become <unk> (default: 1)")
    p.add_argument("--max-vocab", dest="max_size", type=_pos_int, default=None, help="cap the vocabulary size")
    p.add_argument("--max-lines", type=_pos_int, default=None, help="use only the first N lines")
    p.add_argument("--block-lines", type=_pos_int, default=100, help="lines per split block (default: 100)")
    p.set_defaults(func=cmd_corpus)

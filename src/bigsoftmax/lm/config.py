"""What defines a language-model run: :class:`TrainConfig` (saved as ``config.json`` and inside the
checkpoint), the checkpoint's name and format, and :func:`build_model` (config + counts -> seeded model).

Both training (:mod:`.train`) and evaluation (:mod:`.eval`) build on this module; neither imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .models import build_lm
from .registry import VOCAB_PARALLEL_HEADS, HeadOptions, build_head

__all__ = ["CHECKPOINT", "CKPT_FORMAT", "CKPT_REQUIRED", "RESUMABLE", "TrainConfig", "build_model",
           "check_same_corpus", "flag_name", "seed_generators"]

CHECKPOINT = "checkpoint.pt"
CKPT_FORMAT = 1
#: the entries a usable checkpoint has (a damaged one is refused with a one-line error naming the file)
CKPT_REQUIRED = ("config", "vocab_size", "model", "optimizer", "rng", "state")

#: the config fields ``--resume`` applies (budgets and bookkeeping); any other changed field is refused
RESUMABLE = ("epochs", "max_tokens", "time_budget", "eval_tokens", "checkpoint_every", "progress")

_FLAGS = {"max_size": "--max-vocab", "num_layers": "--layers", "num_heads": "--attn-heads", "progress": "--quiet",
          "lowercase": "--no-lowercase", "tie": "--tie/--no-tie"}


def flag_name(field_name: str) -> str:
    """The ``bigsoftmax train`` flag that sets config field ``field_name`` (``d_model`` -> ``--d-model``)."""
    return _FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


def check_same_corpus(ck: Dict, corpus, path, what: str, allow_flag: Optional[str] = None) -> bool:
    """Compare the corpus-file fingerprint (sha256, size) saved in checkpoint ``ck`` with ``corpus``'s.

    Raises ValueError naming the file, both digests and ``allow_flag`` (when given) if they differ.
    Returns False when there is nothing to compare (a checkpoint from before fingerprints), else True.
    """
    saved = (ck.get("corpus_meta") or {}).get("fingerprint")
    now = corpus.meta.get("fingerprint")
    if not saved or not now:
        return False
    if saved.get("sha256") != now.get("sha256"):
        src = corpus.meta.get("source", corpus.name)
        hint = f"pass {allow_flag} to use it anyway with the run's vocabulary" if allow_flag else \
            "restore the original file or start a new run"
        raise ValueError(f"corpus file {str(src)!r} changed since the run in {str(path)!r} was trained "
                         f"(sha256 {saved.get('sha256', '?')[:12]}…, {saved.get('bytes')} bytes then; "
                         f"{now.get('sha256', '?')[:12]}…, {now.get('bytes')} bytes now); {what} refuses it: {hint}")
    return True


@dataclass
class TrainConfig:
    """Everything that defines a run (saved as ``config.json`` and inside the checkpoint)."""

    # data
    corpus: str = "gutenberg"
    lowercase: bool = True
    min_count: int = 1
    max_size: Optional[int] = None
    max_lines: Optional[int] = None
    block_lines: int = 100
    # head
    head: str = "full"
    num_sampled: Optional[int] = None
    sampler: Optional[str] = None
    per_row: int = 32
    sparse: bool = False
    cutoffs: Optional[List[int]] = None
    div_value: float = 4.0
    num_clusters: Optional[int] = None
    # model
    model: str = "lstm"
    d_model: int = 256
    num_layers: int = 1
    num_heads: int = 4
    dropout: float = 0.0
    tie: bool = True
    # scale-out: body data-parallel (DDP), head vocab-parallel (each rank its "div" block of the class rows)
    vocab_parallel: bool = False
    # optimisation
    batch_size: int = 64
    seq_len: int = 35
    lr: float = 3e-3
    clip: float = 1.0
    seed: int = 0
    # budget (None = not limited; all None = 1 epoch)
    epochs: Optional[float] = None
    max_tokens: Optional[int] = None
    time_budget: Optional[float] = None
    # evaluation / bookkeeping
    eval_tokens: Optional[int] = None
    eval_batch_size: int = 16
    checkpoint_every: float = 120.0
    progress: bool = True

    def validate(self) -> "TrainConfig":
        def pos_int(name, lo=1, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")

        def pos_float(name, optional=False, allow_zero=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v >= 0 if allow_zero else v > 0) \
                    or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")

        for n in ("d_model", "num_layers", "num_heads", "batch_size", "seq_len", "eval_batch_size"):
            pos_int(n)
        for n in ("max_tokens", "eval_tokens", "num_sampled", "num_clusters", "max_size", "max_lines"):
            pos_int(n, optional=True)
        pos_int("min_count")
        pos_int("block_lines")
        pos_int("seed", lo=0)
        pos_float("lr")
        pos_float("clip", allow_zero=True)
        pos_float("checkpoint_every")
        pos_float("div_value")
        for n in ("epochs", "time_budget"):
            pos_float(n, optional=True)
        if self.model not in ("lstm", "transformer"):
            raise ValueError(f"model must be 'lstm' or 'transformer', got {self.model!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.vocab_parallel:
            if self.head not in VOCAB_PARALLEL_HEADS:
                raise ValueError(f"--vocab-parallel supports the heads {', '.join(VOCAB_PARALLEL_HEADS)}, "
                                 f"got --head {self.head}")
            if self.tie:
                raise ValueError("--vocab-parallel splits the head's [V, d] rows over the ranks while the input "
                                 "embedding is replicated: they cannot be tied; use --no-tie")
            if self.sparse:
                raise ValueError("--vocab-parallel does not support --sparse (the data-parallel body all-reduces "
                                 "dense gradients)")
            if self.sampler in ("bigram", "mixed"):
                raise ValueError(f"--vocab-parallel does not support --sampler {self.sampler} (per-example candidates)")
        return self

    @classmethod
    def from_dict(cls, d: Dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def head_options(self) -> HeadOptions:
        return HeadOptions(num_sampled=self.num_sampled, sampler=self.sampler, per_row=self.per_row, sparse=self.sparse,
                           seed=self.seed,
                           cutoffs=self.cutoffs, div_value=self.div_value, num_clusters=self.num_clusters)

    def corpus_kwargs(self) -> Dict:
        return dict(lowercase=self.lowercase, min_count=self.min_count, max_size=self.max_size,
                    max_lines=self.max_lines, block_lines=self.block_lines)


def _generators(model: nn.Module) -> Dict[str, torch.Generator]:
    """Every ``torch.Generator`` held as an attribute by a submodule (heads, samplers), by dotted name."""
    out = {}
    for name, m in model.named_modules():
        for k, v in vars(m).items():
            if isinstance(v, torch.Generator):
                out[f"{name}.{k}" if name else k] = v
    return out


def seed_generators(model: nn.Module, seed: int) -> None:
    """Seed each module generator deterministically from ``seed`` and its name."""
    for i, (name, g) in enumerate(sorted(_generators(model).items())):
        g.manual_seed((seed * 1_000_003 + 7919 * (i + 1)) % (2**63 - 1))


def build_model(cfg: TrainConfig, corpus_counts: np.ndarray, tokens: Optional[np.ndarray] = None,
                vocab_parallel: bool = False, rank: int = 0) -> nn.Module:
    """The LM of ``cfg`` over ``len(corpus_counts)`` classes; body and head initialised from ``cfg.seed``.

    ``tokens`` (the training stream) builds the ``--sampler bigram`` proposal. ``vocab_parallel``: the
    head is the vocab-parallel class of ``cfg.head`` (needs an initialised process group; this rank's
    block is initialised from its own stream, ``rank``); otherwise the single-process head, also for a
    run trained with ``--vocab-parallel`` (what ``bigsoftmax eval`` loads the gathered checkpoint into).

    The body/embedding are initialised from ``seed`` after the head, with the head drawn from a
    separately seeded stream, so every head gets the same body initialisation.
    """
    V = int(len(corpus_counts))
    torch.manual_seed(cfg.seed + 1 + 7919 * rank)
    opts = cfg.head_options()
    opts.tokens = tokens
    head = build_head(cfg.head, cfg.d_model, corpus_counts, opts, vocab_parallel=vocab_parallel)
    torch.manual_seed(cfg.seed)
    model = build_lm(cfg.model, V, head, cfg.d_model, cfg.num_layers, cfg.dropout, cfg.tie, cfg.sparse,
                     max_len=max(cfg.seq_len, 1), num_heads=cfg.num_heads)
    seed_generators(model, cfg.seed)
    return model


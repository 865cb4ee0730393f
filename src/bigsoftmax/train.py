"""The language-model training loop behind ``bigsoftmax train``.

One run = one output folder holding ``config.json``, ``vocab.json``, ``checkpoint.pt`` (rewritten
atomically: ``torch.save`` to a temporary file, then ``os.replace``), ``metrics.json`` and
``log.jsonl``. The checkpoint holds everything needed to continue bit-for-bit: model and
optimiser state, the data position (epoch, batch), the carried LSTM state, the torch RNG and every
head/sampler ``torch.Generator``, the step counter, the per-step loss sequence and the training
time spent. Ctrl-C (SIGINT) or SIGTERM stops the loop at the next step boundary, writes the
checkpoint and returns status ``'interrupted'``; ``resume=True`` continues from it.

Budgets (any combination; the first reached stops the run; none given = one epoch):
``epochs``, ``max_tokens`` (target tokens seen) and ``time_budget`` (seconds of training, not
counting checkpoints and evaluation). At the end the exact validation perplexity
``exp(-mean_t log p(w_t | w_<t))`` is computed with the head's exact normalised distribution.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from .data import Corpus, batchify, iter_batches, load_corpus, num_batches, unigram_perplexity
from .models import build_lm
from .registry import HeadOptions, build_head

__all__ = ["TrainConfig", "Trainer", "train", "build_model", "save_atomic", "Progress", "peak_rss_mb",
           "CHECKPOINT", "seed_generators"]

CHECKPOINT = "checkpoint.pt"
CKPT_FORMAT = 1
#: steps per process excluded from the tokens/s measurement (allocator / kernel warm-up)
WARMUP_STEPS = 3


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
        return self

    @classmethod
    def from_dict(cls, d: Dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def head_options(self) -> HeadOptions:
        return HeadOptions(num_sampled=self.num_sampled, sampler=self.sampler, sparse=self.sparse, seed=self.seed,
                           cutoffs=self.cutoffs, div_value=self.div_value, num_clusters=self.num_clusters)

    def corpus_kwargs(self) -> Dict:
        return dict(lowercase=self.lowercase, min_count=self.min_count, max_size=self.max_size,
                    max_lines=self.max_lines, block_lines=self.block_lines)


# ----------------------------------------------------------------------------- helpers
def peak_rss_mb() -> float:
    """Process high-water resident memory in MiB (``ru_maxrss``; KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def _umask_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` would give a new file (mkstemp uses 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_atomic(obj, path: Union[str, Path]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(obj, path: Union[str, Path]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=_json_default)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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


def build_model(cfg: TrainConfig, corpus_counts: np.ndarray) -> nn.Module:
    """The LM of ``cfg`` over ``len(corpus_counts)`` classes; body and head initialised from ``cfg.seed``.

    The body/embedding are initialised from ``seed`` after the head, with the head drawn from a
    separately seeded stream, so every head gets the same body initialisation.
    """
    V = int(len(corpus_counts))
    torch.manual_seed(cfg.seed + 1)
    head = build_head(cfg.head, cfg.d_model, corpus_counts, cfg.head_options())
    torch.manual_seed(cfg.seed)
    model = build_lm(cfg.model, V, head, cfg.d_model, cfg.num_layers, cfg.dropout, cfg.tie, cfg.sparse,
                     max_len=max(cfg.seq_len, 1), num_heads=cfg.num_heads)
    seed_generators(model, cfg.seed)
    return model


def _fmt_time(s: float) -> str:
    if not math.isfinite(s) or s < 0:
        return "--:--"
    s = int(round(s))
    h, r = divmod(s, 3600)
    m, s = divmod(r, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt_num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


class Progress:
    """A one-line progress bar on stderr: fraction done, tokens, tokens/s, loss, ETA.

    On a terminal it redraws in place at most every ``interval`` seconds; otherwise (logs, CI) it
    prints a plain line every ``log_interval`` seconds.
    """

    def __init__(self, label: str = "train", stream=None, enabled: bool = True, interval: float = 0.25,
                 log_interval: float = 15.0, width: int = 24):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.label = label
        self.width = width
        self._last = -1e9
        self._drawn = False

    def update(self, frac: float, tokens: int, tok_s: float, loss: float, eta: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        frac = min(max(frac, 0.0), 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        line = (f"{self.label} {frac * 100:5.1f}% [{bar}] {_fmt_num(tokens)} tok  {_fmt_num(tok_s)} tok/s  "
                f"loss {loss:.3f}  ETA {_fmt_time(eta)}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def message(self, text: str) -> None:
        if self.enabled:
            self.close()
            self.stream.write(text + "\n")
            self.stream.flush()


# ----------------------------------------------------------------------------- trainer
@dataclass
class RunState:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    tokens: int = 0
    train_time: float = 0.0
    meas_tokens: int = 0  # tokens/time of the steps after each process's first WARMUP_STEPS (throughput)
    meas_time: float = 0.0
    losses: List[float] = field(default_factory=list)
    status: str = "running"


class Trainer:
    """Trains ``cfg`` into ``out``; see the module docstring. ``run()`` returns the metrics dict."""

    def __init__(self, cfg: TrainConfig, out: Union[str, Path], resume: bool = False,
                 on_step: Optional[Callable[["Trainer"], None]] = None, corpus: Optional[Corpus] = None,
                 log: Optional[Callable[[str], None]] = None):
        self.out = Path(out)
        ckpt_path = self.out / CHECKPOINT
        self.ckpt = None
        if resume:
            if not ckpt_path.is_file():
                raise FileNotFoundError(f"cannot resume: no checkpoint at {str(ckpt_path)!r}")
            self.ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            if self.ckpt.get("format") != CKPT_FORMAT:
                raise ValueError(f"checkpoint {str(ckpt_path)!r} has format {self.ckpt.get('format')!r}, "
                                 f"expected {CKPT_FORMAT}")
            saved = TrainConfig.from_dict(self.ckpt["config"])
            # budgets and bookkeeping may be changed on resume; everything else comes from the checkpoint
            for k in ("epochs", "max_tokens", "time_budget", "eval_tokens", "checkpoint_every", "progress"):
                v = getattr(cfg, k)
                if v is not None:
                    setattr(saved, k, v)
            cfg = saved
        elif ckpt_path.exists():
            raise FileExistsError(f"{str(self.out)!r} already holds a run ({CHECKPOINT}); "
                                  "pass --resume to continue it or choose another --out")
        self.cfg = cfg.validate()
        self.on_step = on_step
        self.progress = Progress("train", enabled=cfg.progress)
        self._log = log or self.progress.message
        self.corpus = corpus if corpus is not None else load_corpus(cfg.corpus, **cfg.corpus_kwargs())
        V = len(self.corpus.vocab)
        if self.ckpt is not None and self.ckpt["vocab_size"] != V:
            raise ValueError(f"checkpoint vocabulary has {self.ckpt['vocab_size']} types but the corpus now gives {V}")
        self.model = build_model(cfg, self.corpus.counts)
        self.optimizer = self._make_optimizer()
        self.lanes = batchify(self.corpus.train, cfg.batch_size)
        self.batches_per_epoch = num_batches(self.lanes, cfg.seq_len)
        self.tokens_per_epoch = int(self.lanes.shape[0] * (self.lanes.shape[1] - 1))
        self.state = RunState()
        self.rnn_state = None
        if self.ckpt is not None:
            self._restore(self.ckpt)
        self._stop_reason: Optional[str] = None

    # ------------------------------------------------------------------ setup
    def _make_optimizer(self):
        from .optim import make_optimizer

        return make_optimizer(self.model, lr=self.cfg.lr)

    def _dense_params(self):
        from .optim import split_params

        return split_params(self.model)[0]

    def _restore(self, ck: Dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"]["torch"])
        gens = _generators(self.model)
        for name, st in ck["rng"]["generators"].items():
            if name in gens:
                gens[name].set_state(st)
        s = ck["state"]
        self.state = RunState(**s)
        self.state.status = "running"
        self.rnn_state = ck.get("rnn_state")

    def _checkpoint(self, status: str) -> None:
        self.state.status = status
        ck = {
            "format": CKPT_FORMAT,
            "config": asdict(self.cfg),
            "vocab_size": len(self.corpus.vocab),
            "corpus_meta": {k: v for k, v in self.corpus.meta.items() if k != "cached"},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "generators": {n: g.get_state() for n, g in _generators(self.model).items()}},
            "state": asdict(self.state),
            "rnn_state": self.rnn_state,
        }
        save_atomic(ck, self.out / CHECKPOINT)

    # ------------------------------------------------------------------ budget
    def _budget_reached(self) -> Optional[str]:
        c, s = self.cfg, self.state
        if c.max_tokens is not None and s.tokens >= c.max_tokens:
            return "max_tokens"
        if c.time_budget is not None and s.train_time >= c.time_budget:
            return "time_budget"
        epochs = c.epochs if (c.epochs is not None or c.max_tokens is not None or c.time_budget is not None) else 1.0
        if epochs is not None and s.epoch + s.batch / self.batches_per_epoch >= epochs - 1e-12:
            return "epochs"
        return None

    def _fraction_and_eta(self, tok_s: float):
        c, s = self.cfg, self.state
        fr, eta = [], []
        if c.max_tokens is not None:
            fr.append(s.tokens / c.max_tokens)
            eta.append((c.max_tokens - s.tokens) / max(tok_s, 1e-9))
        if c.time_budget is not None:
            fr.append(s.train_time / c.time_budget)
            eta.append(c.time_budget - s.train_time)
        epochs = c.epochs if (c.epochs is not None or c.max_tokens is not None or c.time_budget is not None) else 1.0
        if epochs is not None:
            total = epochs * self.tokens_per_epoch
            done = (s.epoch + s.batch / self.batches_per_epoch) * self.tokens_per_epoch
            fr.append(done / total)
            eta.append((total - done) / max(tok_s, 1e-9))
        return max(fr), min(eta)

    # ------------------------------------------------------------------ signals
    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum, frame):
            if self._stop_reason is not None:  # second Ctrl-C: stop hard
                raise KeyboardInterrupt
            self._stop_reason = "interrupted"

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # pragma: no cover - exotic platforms
                pass
        return old

    @staticmethod
    def _restore_signals(old) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    # ------------------------------------------------------------------ loop
    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        model, cfg = self.model, self.cfg
        state = model.detach_state(self.rnn_state)
        loss, new_state = model.loss(x, y, state)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {float(loss)} at step {self.state.step}; "
                                     "lower --lr or check the head")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            dense = [p for p in self._dense if p.grad is not None and not p.grad.is_sparse]
            torch.nn.utils.clip_grad_norm_(dense, cfg.clip)
        self.optimizer.step()
        self.rnn_state = model.detach_state(new_state)
        return float(loss.detach())

    def run(self) -> Dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(asdict(cfg), self.out / "config.json")
        (self.out / "vocab.json").write_text(self.corpus.vocab.to_json(), encoding="utf-8")
        self._dense = self._dense_params()
        self.model.train()
        old = self._install_signals()
        s = self.state
        tok_window: List[tuple] = []
        last_ckpt = time.perf_counter()
        reason = None
        resumed_from = s.step
        if s.step:
            self._log(f"resuming at step {s.step} (epoch {s.epoch}, batch {s.batch}, {s.tokens} tokens)")
        try:
            while True:
                reason = self._budget_reached()
                if reason:
                    break
                if s.batch >= self.batches_per_epoch:
                    s.epoch += 1
                    s.batch = 0
                    self.rnn_state = None
                    continue
                k, x, y = next(iter_batches(self.lanes, cfg.seq_len, s.batch))
                t0 = time.perf_counter()
                loss = self._step(x, y)
                dt = time.perf_counter() - t0
                s.train_time += dt
                s.step += 1
                s.batch += 1
                s.tokens += int(y.numel())
                if s.step - resumed_from > WARMUP_STEPS:
                    s.meas_tokens += int(y.numel())
                    s.meas_time += dt
                s.losses.append(loss)
                tok_window.append((y.numel(), dt))
                if len(tok_window) > 50:
                    tok_window.pop(0)
                tok_s = sum(n for n, _ in tok_window) / max(sum(t for _, t in tok_window), 1e-9)
                frac, eta = self._fraction_and_eta(tok_s)
                avg = float(np.mean(s.losses[-50:]))
                self.progress.update(frac, s.tokens, tok_s, avg, eta)
                if self.on_step is not None:
                    self.on_step(self)
                if self._stop_reason:
                    break
                if time.perf_counter() - last_ckpt >= cfg.checkpoint_every:
                    self._checkpoint("running")
                    last_ckpt = time.perf_counter()
        except KeyboardInterrupt:
            self._stop_reason = "interrupted"
        finally:
            self._restore_signals(old)
            self.progress.close()
        if self._stop_reason:
            self._checkpoint("interrupted")
            self._log(f"interrupted at step {s.step} ({s.tokens} tokens); checkpoint saved to "
                      f"{self.out / CHECKPOINT} — continue with --resume")
            return {"status": "interrupted", "step": s.step, "tokens": s.tokens}
        peak = peak_rss_mb()
        self._checkpoint("trained")
        from .eval import evaluate

        self._log(f"training stopped ({reason}) after {s.step} steps, {s.tokens} tokens, {s.train_time:.1f} s; "
                  f"evaluating exact valid perplexity" + (f" on {cfg.eval_tokens} tokens" if cfg.eval_tokens else ""))
        t0 = time.perf_counter()
        eval_len = max(cfg.seq_len, 64) if cfg.model == "lstm" else cfg.seq_len
        ev = evaluate(self.model, self.corpus.valid, batch_size=cfg.eval_batch_size, seq_len=eval_len,
                      max_tokens=cfg.eval_tokens, topk=(), log_z=True)
        eval_time = time.perf_counter() - t0
        tok_s = s.meas_tokens / s.meas_time if s.meas_tokens else s.tokens / max(s.train_time, 1e-9)
        metrics = {
            "status": "finished",
            "stop_reason": reason,
            "head": cfg.head,
            "model": cfg.model,
            "corpus": self.corpus.name,
            "vocab_size": len(self.corpus.vocab),
            "tied": bool(getattr(self.model, "tied", False)),
            "params": int(sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())),
            "head_params": int(sum(p.numel() for p in self.model.head.parameters())),
            "steps": s.step,
            "epochs": s.epoch + s.batch / self.batches_per_epoch,
            "train_tokens": s.tokens,
            "train_time_s": s.train_time,
            "tokens_per_s": tok_s,
            "epoch_time_s": self.tokens_per_epoch / max(tok_s, 1e-9),
            "tokens_per_epoch": self.tokens_per_epoch,
            "final_train_loss": float(np.mean(s.losses[-50:])) if s.losses else float("nan"),
            "valid_nll": ev["nll"],
            "valid_ppl": ev["ppl"],
            "valid_tokens": ev["tokens"],
            **{k: ev[k] for k in ("log_z_mean", "log_z_std", "log_z_mean_abs") if k in ev},
            "eval_time_s": eval_time,
            "unigram_ppl": unigram_perplexity(self.corpus, "valid"),
            "peak_rss_mb": peak,
            "resumed_from_step": resumed_from,
        }
        write_json_atomic(metrics, self.out / "metrics.json")
        self._log(f"valid perplexity {metrics['valid_ppl']:.2f} (exact, {ev['tokens']} tokens; unigram "
                  f"{metrics['unigram_ppl']:.1f}); {tok_s:,.0f} train tokens/s")
        return metrics


def train(cfg: TrainConfig, out: Union[str, Path], resume: bool = False, **kw) -> Dict:
    """Convenience wrapper: ``Trainer(cfg, out, resume, **kw).run()``."""
    return Trainer(cfg, out, resume=resume, **kw).run()

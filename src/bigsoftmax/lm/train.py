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

import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch

from .._jobs import Progress, peak_rss_mb, save_atomic, write_json_atomic
from .data import Corpus, batchify, iter_batches, load_corpus, num_batches, unigram_perplexity
from .config import CHECKPOINT, CKPT_FORMAT, TrainConfig, _generators, build_model, seed_generators

__all__ = ["TrainConfig", "Trainer", "train", "build_model", "save_atomic", "Progress", "peak_rss_mb",
           "CHECKPOINT", "seed_generators"]

#: steps per process excluded from the tokens/s measurement (allocator / kernel warm-up)
WARMUP_STEPS = 3


# ----------------------------------------------------------------------------- helpers


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
        self.model = build_model(cfg, self.corpus.counts, tokens=self.corpus.train)
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
        from ..optim import make_optimizer

        return make_optimizer(self.model, lr=self.cfg.lr)

    def _dense_params(self):
        from ..optim import split_params

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

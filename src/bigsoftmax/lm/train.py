"""The language-model training loop behind ``bigsoftmax train``.

One run = one output folder holding ``config.json``, ``vocab.json``, ``checkpoint.pt`` (rewritten
atomically: ``torch.save`` to a temporary file, then ``os.replace``), ``metrics.json``,
``metrics.jsonl`` (one JSON line per training step) and, with ``tensorboard=True``, TensorBoard
event files under ``tensorboard/``. While a run trains, ``.lock`` (pid and host) keeps a second
command out of the folder; a lock left by a dead process is cleared on the next start.
A fresh run refuses a folder holding another run's files unless ``overwrite=True``; ``resume=True``
continues the checkpoint only on the same corpus file (sha256 fingerprint) and vocabulary, applies
the budget fields (``RESUMABLE``) and refuses any other changed field (see :meth:`Trainer.__init__`). The checkpoint holds everything needed to continue bit-for-bit: model and
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
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Union

import numpy as np
import torch

from .._jobs import (CLIError, Progress, RunLock, check_can_write, load_checkpoint_file, load_state_checked,
                     peak_rss_mb, remove_stale_tmp, save_atomic, write_json_atomic, write_text_atomic)
from .data import Corpus, Vocab, batchify, iter_batches, load_corpus, num_batches, unigram_perplexity
from .config import (CHECKPOINT, CKPT_FORMAT, CKPT_REQUIRED, RESUMABLE, TrainConfig, _generators, build_model,
                     check_same_corpus, flag_name, seed_generators)

__all__ = ["TrainConfig", "Trainer", "train", "build_model", "save_atomic", "Progress", "peak_rss_mb",
           "CHECKPOINT", "seed_generators"]

#: steps per process excluded from the tokens/s measurement (allocator / kernel warm-up)
WARMUP_STEPS = 3

#: the files a run writes in its folder; a fresh run refuses a folder holding any of them (unless overwrite)
RUN_FILES = (CHECKPOINT, "metrics.json", "metrics.jsonl", "config.json", "vocab.json")
HISTORY = "metrics.jsonl"
TB_DIR = "tensorboard"


def _read_history(path: Path, upto_step: int) -> List[str]:
    """The complete lines of ``metrics.jsonl`` with ``step <= upto_step`` (a kill -9 may leave more, or half a line)."""
    keep = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= upto_step:
                keep.append(line)
    return keep


def _summary_writer(folder: Path, purge_step: Optional[int]):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CLIError("--tensorboard needs the tensorboard package: pip install 'bigsoftmax[tensorboard]' "
                       "(or pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


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
    meas_steps: int = 0
    losses: List[float] = field(default_factory=list)
    status: str = "running"


class Trainer:
    """Trains ``cfg`` into ``out``; see the module docstring. ``run()`` returns the metrics dict."""

    def __init__(self, cfg: TrainConfig, out: Union[str, Path], resume: bool = False,
                 on_step: Optional[Callable[["Trainer"], None]] = None, corpus: Optional[Corpus] = None,
                 log: Optional[Callable[[str], None]] = None, overwrite: bool = False,
                 explicit: Optional[Iterable[str]] = None, tensorboard: bool = False):
        """Set up a run of ``cfg`` in folder ``out`` (nothing is written before :meth:`run`).

        Args:
            resume: continue the checkpoint in ``out``. With ``explicit`` (the config fields the
                user set, e.g. from the command line) a field in :data:`RESUMABLE` (budgets, eval
                size, checkpoint interval, progress) is applied and any other field that differs from
                the saved run raises ValueError naming it, old and new value. Without ``explicit``
                the non-None budget fields of ``cfg`` are applied and the rest comes from the checkpoint.
            overwrite: a fresh run may replace the files of an earlier run in ``out``.
            tensorboard: also write TensorBoard event files to ``out/tensorboard``.
        """
        self.out = Path(out)
        ckpt_path = self.out / CHECKPOINT
        self.ckpt = None
        self.resume = resume
        self.overwrite = overwrite
        self.tensorboard = tensorboard
        self.applied: Dict[str, tuple] = {}
        if resume:
            if not ckpt_path.is_file():
                raise FileNotFoundError(f"cannot resume: no checkpoint at {str(ckpt_path)!r}")
            self.ckpt = load_checkpoint_file(ckpt_path, "bigsoftmax train", CKPT_FORMAT, CKPT_REQUIRED)
            self._ckpt_stat = (ckpt_path.stat().st_size, ckpt_path.stat().st_mtime_ns)
            try:
                saved = TrainConfig.from_dict(dict(self.ckpt["config"]))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{str(ckpt_path)!r} is not a usable bigsoftmax train checkpoint: bad config ({e})") \
                    from None
            if explicit is None:
                for k in RESUMABLE:
                    v = getattr(cfg, k)
                    if v is not None and v != getattr(saved, k):
                        self.applied[k] = (getattr(saved, k), v)
                        setattr(saved, k, v)
            else:
                conflicts = []
                for k in sorted(set(explicit)):
                    new, old = getattr(cfg, k), getattr(saved, k)
                    if k in RESUMABLE:
                        if new != old:
                            self.applied[k] = (old, new)
                            setattr(saved, k, new)
                    elif new != old:
                        conflicts.append(f"{flag_name(k)} (run: {old!r}, now: {new!r})")
                if conflicts:
                    raise ValueError(f"--resume cannot change {', '.join(conflicts)}: they define the run saved in "
                                     f"{str(ckpt_path)!r}; drop them, or start a new run in another --out. "
                                     f"On --resume only {', '.join(flag_name(k) for k in RESUMABLE)} may change")
            cfg = saved
        elif not overwrite:
            if ckpt_path.exists():
                raise FileExistsError(f"{str(self.out)!r} already holds a run ({CHECKPOINT}); pass --resume to "
                                      "continue it, --overwrite to replace it, or choose another --out")
            check_can_write([self.out / n for n in RUN_FILES], overwrite, "--overwrite (or --resume)")
        self.cfg = cfg.validate()
        if self.cfg.vocab_parallel and not self._vocab_parallel:
            raise CLIError("this run trains with --vocab-parallel: launch it under torchrun, e.g. torchrun --standalone "
                           "--nproc-per-node P -m bigsoftmax train --vocab-parallel ... (bigsoftmax.lm.scaleout)")
        self.on_step = on_step
        self.progress = Progress("train", enabled=cfg.progress and self.rank == 0)
        self._log = log or (self.progress.message if self.rank == 0 else (lambda text: None))
        # notices a user must see even with --quiet (stale lock / tmp files removed, flags applied on resume)
        self._notice = log or ((lambda text: print(text, file=sys.stderr, flush=True)) if self.rank == 0
                               else (lambda text: None))
        self.corpus = corpus if corpus is not None else load_corpus(cfg.corpus, **cfg.corpus_kwargs())
        V = len(self.corpus.vocab)
        if self.ckpt is not None:
            check_same_corpus(self.ckpt, self.corpus, ckpt_path, "--resume")
            vocab_file = self.out / "vocab.json"
            if vocab_file.is_file():
                try:
                    run_vocab = Vocab.from_json(vocab_file.read_text(encoding="utf-8"))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{str(vocab_file)!r} is damaged ({e})") from None
                if run_vocab != self.corpus.vocab:
                    raise ValueError(f"the corpus now gives another vocabulary than the run's {str(vocab_file)!r}; "
                                     "--resume needs the corpus the run was trained on")
            if self.ckpt["vocab_size"] != V:
                raise ValueError(f"checkpoint vocabulary has {self.ckpt['vocab_size']} types but the corpus now gives {V}")
        self.model = self._build_model()
        self.optimizer = self._make_optimizer()
        self.lanes = batchify(self.corpus.train, cfg.batch_size)
        self.batches_per_epoch = num_batches(self.lanes, cfg.seq_len)
        self.tokens_per_epoch = int(self.lanes.shape[0] * (self.lanes.shape[1] - 1))
        self.state = RunState()
        self.rnn_state = None
        if self.ckpt is not None:
            self._restore(self.ckpt)
        self._stop_reason: Optional[str] = None

    #: this process's rank; only rank 0 writes the run folder (see :mod:`bigsoftmax.lm.scaleout`)
    rank = 0
    _vocab_parallel = False

    # ------------------------------------------------------------------ setup
    def _build_model(self):
        return build_model(self.cfg, self.corpus.counts, tokens=self.corpus.train)

    def _make_optimizer(self):
        from ..optim import make_optimizer

        return make_optimizer(self.model, lr=self.cfg.lr)

    def _dense_params(self):
        from ..optim import split_params

        return split_params(self.model)[0]

    def _restore(self, ck: Dict) -> None:
        path = self.out / CHECKPOINT
        load_state_checked(self.model, ck["model"], path)
        load_state_checked(self.optimizer, ck["optimizer"], path)
        torch.set_rng_state(ck["rng"]["torch"])
        gens = _generators(self.model)
        for name, st in ck["rng"]["generators"].items():
            if name in gens:
                gens[name].set_state(st)
        try:
            self.state = RunState(**ck["state"])
        except TypeError as e:
            raise ValueError(f"{str(path)!r} is not a usable bigsoftmax train checkpoint: bad run state ({e})") from None
        self.state.status = "running"
        self.rnn_state = ck.get("rnn_state")

    def _checkpoint(self, status: str) -> None:
        save_atomic(self._checkpoint_dict(status), self.out / CHECKPOINT)

    def _checkpoint_dict(self, status: str) -> Dict:
        self.state.status = status
        return {
            "format": CKPT_FORMAT,
            "config": asdict(self.cfg),
            "vocab_size": len(self.corpus.vocab),
            "corpus_meta": {k: v for k, v in self.corpus.meta.items() if k != "cached"},
            "vocab": self.corpus.vocab.to_json(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "generators": {n: g.get_state() for n, g in _generators(self.model).items()}},
            "state": asdict(self.state),
            "rnn_state": self.rnn_state,
        }

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
    def _check_loss(self, loss: torch.Tensor) -> None:
        """FloatingPointError when the training loss is not finite (the step's gradients would be junk)."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {float(loss)} at step {self.state.step}; "
                                     "lower --lr or check the head")

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        model, cfg = self.model, self.cfg
        state = model.detach_state(self.rnn_state)
        loss, new_state = model.loss(x, y, state)
        self._check_loss(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            dense = [p for p in self._dense if p.grad is not None and not p.grad.is_sparse]
            torch.nn.utils.clip_grad_norm_(dense, cfg.clip)
        self.optimizer.step()
        self.rnn_state = model.detach_state(new_state)
        return float(loss.detach())

    def run(self) -> Dict:
        """Train under the folder's lock until a budget is reached or a stop signal; see the module docstring."""
        lock = RunLock(self.out, log=self._notice) if self.rank == 0 else None
        if lock is not None:
            lock.acquire()
        try:
            if lock is not None:
                self._prepare_folder()
            self._folder_ready()
            return self._run()
        finally:
            if self._tb is not None:
                self._tb.close()
                self._tb = None
            if self._history is not None:
                self._history.close()
                self._history = None
            if lock is not None:
                lock.release()

    _tb = None
    _history = None

    def _folder_ready(self) -> None:
        """Called on every rank once rank 0 has prepared the folder (a barrier under torchrun)."""

    def _after_step(self, checkpoint_due: bool):
        """``(stop, checkpoint_due)`` after a step (the ranks of a vocab-parallel run agree on both)."""
        return bool(self._stop_reason), checkpoint_due

    def _extra_metrics(self) -> Dict:
        """More entries of ``metrics.json`` (a vocab-parallel run: world size, global head parameters)."""
        return {}

    def _prepare_folder(self) -> None:
        """Under the lock: re-check the folder (another command may have started meanwhile), clear our stale tmp files."""
        ckpt_path = self.out / CHECKPOINT
        if self.resume:
            st = ckpt_path.stat() if ckpt_path.is_file() else None
            if st is None or (st.st_size, st.st_mtime_ns) != self._ckpt_stat:
                raise CLIError(f"{str(ckpt_path)!r} changed while this command was starting (another command "
                               "ran in the folder); run --resume again")
        elif not self.overwrite:
            check_can_write([self.out / n for n in RUN_FILES], False, "--overwrite (or --resume)")
        for name in (CHECKPOINT, "config.json", "metrics.json"):
            for p in remove_stale_tmp(self.out, name):
                self._notice(f"removed {str(p)!r}, left by an interrupted save")
        write_json_atomic(asdict(self.cfg), self.out / "config.json")
        write_text_atomic(self.corpus.vocab.to_json(), self.out / "vocab.json")
        hist = self.out / HISTORY
        keep = _read_history(hist, self.state.step) if self.resume else []
        write_text_atomic("".join(line + "\n" for line in keep), hist)
        self._history = open(hist, "a", encoding="utf-8")
        if self.tensorboard:
            self._tb = _summary_writer(self.out / TB_DIR, purge_step=self.state.step + 1 if self.resume else None)

    def _record(self, loss: float, dt: float, tok_s: float) -> None:
        s = self.state
        if self._history is None:  # not the writing rank
            return
        rec = {"step": s.step, "epoch": s.epoch, "tokens": s.tokens, "loss": loss, "step_time_s": dt,
               "train_time_s": s.train_time}
        self._history.write(json.dumps(rec) + "\n")
        self._history.flush()
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, s.step)
            self._tb.add_scalar("train/tokens_per_s", tok_s, s.step)

    def _run(self) -> Dict:
        cfg = self.cfg
        if self.applied:
            self._notice("applied on --resume: " + ", ".join(f"{flag_name(k)} {a!r} -> {b!r}"
                                                          for k, (a, b) in self.applied.items()))
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
                    s.meas_steps += 1
                s.losses.append(loss)
                tok_window.append((y.numel(), dt))
                if len(tok_window) > 50:
                    tok_window.pop(0)
                tok_s = sum(n for n, _ in tok_window) / max(sum(t for _, t in tok_window), 1e-9)
                frac, eta = self._fraction_and_eta(tok_s)
                avg = float(np.mean(s.losses[-50:]))
                self._record(loss, dt, tok_s)
                self.progress.update(frac, s.tokens, tok_s, avg, eta)
                if self.on_step is not None:
                    self.on_step(self)
                stop, due = self._after_step(time.perf_counter() - last_ckpt >= cfg.checkpoint_every)
                if stop:
                    break
                if due:
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
            "measured_steps": s.meas_steps,
            "measured_time_s": s.meas_time,
        }
        metrics.update(self._extra_metrics())
        if self._tb is not None:
            self._tb.add_scalar("valid/ppl", ev["ppl"], s.step)
            self._tb.add_scalar("valid/nll", ev["nll"], s.step)
            self._tb.flush()
        if self.rank == 0:
            write_json_atomic(metrics, self.out / "metrics.json")
        self._log(f"valid perplexity {metrics['valid_ppl']:.2f} (exact, {ev['tokens']} tokens; unigram "
                  f"{metrics['unigram_ppl']:.1f}); {tok_s:,.0f} train tokens/s")
        return metrics


def train(cfg: TrainConfig, out: Union[str, Path], resume: bool = False, **kw) -> Dict:
    """Convenience wrapper: ``Trainer(cfg, out, resume, **kw).run()``."""
    return Trainer(cfg, out, resume=resume, **kw).run()

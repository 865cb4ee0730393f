"""Training loop for the two-tower model (behind ``bigsoftmax recsys train``).

One step: B training examples (drawn without replacement from a seeded permutation per epoch; the
last incomplete batch is dropped so every step has the same B, which the in-batch/mixed log-Q
terms assume) → user vectors from the last ``max_history`` items → the objective's loss → Adam.
Checkpoints hold the config, the model and objective state and the data set's fingerprint, so
``load_checkpoint`` refuses a different data set.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from .._jobs import Progress, load_checkpoint_file, load_state_checked, save_atomic
from .model import TwoTower
from ..optim import make_optimizer
from .data import RecsysData
from .objectives import FREQ_SOURCES, OBJECTIVES, SAMPLERS, Objective, build_objective

__all__ = ["RecsysConfig", "build_model", "train", "save_checkpoint", "load_checkpoint", "CKPT_FORMAT"]

CKPT_FORMAT = "bigsoftmax.recsys/1"


@dataclass
class RecsysConfig:
    """Everything that defines a two-tower run (saved in the checkpoint)."""

    data: str = "ml-100k"
    # objective
    objective: str = "in-batch"
    sampler: Optional[str] = None  # sampled: log-uniform (default) | unigram | uniform; mixed: uniform (default)
    alpha: float = 0.75  # unigram distortion: P ∝ count^alpha
    num_sampled: int = 256
    logq: bool = True
    freq: str = "true"  # in-batch / mixed log q: 'true' target frequencies or 'streaming' estimator
    temperature: float = 1.0
    normalize: bool = False
    # model
    dim: int = 64
    hidden: List[int] = field(default_factory=lambda: [128])
    pooling: str = "mean"
    max_history: int = 10  # the last 10 items: recency matters on MovieLens (50 gave lower Recall)
    user_features: bool = True
    item_features: bool = False
    dropout: float = 0.0
    # optimisation
    epochs: int = 5
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True

    def validate(self) -> "RecsysConfig":
        def pos_int(name, lo=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")

        for n in ("num_sampled", "dim", "max_history", "epochs", "batch_size"):
            pos_int(n)
        pos_int("seed", 0)
        for n in ("lr", "temperature"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{n} must be a finite number > 0, got {v!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if not isinstance(self.weight_decay, (int, float)) or not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.freq not in FREQ_SOURCES:
            raise ValueError(f"freq must be one of {FREQ_SOURCES}, got {self.freq!r}")
        if self.pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.objective in ("in-batch", "mixed") and self.batch_size < 2:
            raise ValueError("in-batch and mixed objectives need batch_size >= 2 (the other positives are the negatives)")
        return self

    @classmethod
    def from_dict(cls, d: Dict) -> "RecsysConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def label(self) -> str:
        """Short name of the objective, e.g. ``sampled/log-uniform +logQ`` or ``in-batch +logQ(streaming)``."""
        if self.objective == "full":
            return "full softmax"
        s = self.objective
        if self.objective == "sampled":
            s += f"/{self.sampler or 'log-uniform'}" + (f"^{self.alpha:g}" if (self.sampler == 'unigram') else "")
        elif self.objective == "mixed" and self.sampler not in (None, "uniform"):
            s += f"/{self.sampler}"
        if not self.logq:
            return s + " −logQ"
        return s + (" +logQ" if self.objective == "sampled" else f" +logQ({self.freq})")


def build_model(data: RecsysData, cfg: RecsysConfig) -> TwoTower:
    """The :class:`TwoTower` of ``cfg`` for ``data``, initialised from ``cfg.seed`` (global RNG untouched)."""
    if cfg.item_features and data.item_features is None:
        raise ValueError(f"item_features=True but the data set {data.name!r} has no item features")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return TwoTower(
            data.num_items, dim=cfg.dim, hidden=tuple(cfg.hidden), pooling=cfg.pooling,
            user_feature_sizes=tuple(data.user_feature_sizes) if cfg.user_features else (),
            item_features=data.item_features if cfg.item_features else None,
            normalize=cfg.normalize, dropout=cfg.dropout,
        )


def make_objective(data: RecsysData, cfg: RecsysConfig) -> Objective:
    return build_objective(cfg.objective, data.num_items, data.target_counts(), data.item_counts, sampler=cfg.sampler,
                           alpha=cfg.alpha, num_sampled=cfg.num_sampled, logq=cfg.logq, freq=cfg.freq,
                           batch_size=cfg.batch_size, temperature=cfg.temperature, seed=cfg.seed)


def train(data: RecsysData, cfg: RecsysConfig, log: Optional[Callable[[str], None]] = None,
          on_epoch: Optional[Callable[[int, TwoTower], None]] = None) -> Tuple[TwoTower, Dict]:
    """Train a two-tower model on ``data`` with ``cfg``; returns ``(model, info)``.

    info: steps, epochs, train_time_s (forward+backward+update only), epoch_time_s (mean),
    examples_per_s, losses (mean training loss per epoch).
    """
    cfg.validate()
    model = build_model(data, cfg)
    objective = make_objective(data, cfg)
    opt = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.weight_decay else make_optimizer(model, lr=cfg.lr)
    users, positions = data.train_examples()
    M = users.numel()
    B = cfg.batch_size
    steps_per_epoch = M // B
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size={B} exceeds the {M} training examples; use a smaller batch_size")
    gen = torch.Generator().manual_seed(cfg.seed)
    use_uf = cfg.user_features and len(data.user_feature_sizes) > 0
    progress = Progress(f"{data.name} {cfg.label()}", enabled=cfg.progress)
    log = log or progress.message
    model.train()
    objective.train()
    step, train_time, losses = 0, 0.0, []
    total = cfg.epochs * steps_per_epoch
    try:
        for epoch in range(cfg.epochs):
            perm = torch.randperm(M, generator=gen)
            ep_loss, ep_time = 0.0, 0.0
            for k in range(steps_per_epoch):
                idx = perm[k * B:(k + 1) * B]
                t0 = time.perf_counter()
                batch = data.batch(users[idx], positions[idx], cfg.max_history)
                u = model.user_vectors(batch.history, batch.mask, batch.user_features if use_uf else None)
                loss = objective(model, u, batch.target, step=step + 1)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {float(loss)} at step {step + 1}; lower --lr or raise --temperature")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                dt = time.perf_counter() - t0
                ep_time += dt
                step += 1
                ep_loss += float(loss.detach())
                ex_s = step * B / max(train_time + ep_time, 1e-9)
                progress.update(step / total, step * B, ex_s, ep_loss / (k + 1), (total - step) * B / max(ex_s, 1e-9))
            train_time += ep_time
            losses.append(ep_loss / steps_per_epoch)
            if on_epoch is not None:
                on_epoch(epoch, model)
    finally:
        progress.close()
    model.eval()
    info = {
        "steps": step,
        "epochs": cfg.epochs,
        "train_time_s": train_time,
        "epoch_time_s": train_time / max(cfg.epochs, 1),
        "examples_per_s": step * B / max(train_time, 1e-9),
        "losses": losses,
    }
    log(f"{data.name} {cfg.label()}: {cfg.epochs} epoch(s), {step} steps in {train_time:.1f} s "
        f"({info['epoch_time_s']:.1f} s/epoch), final loss {losses[-1]:.4f}")
    return model, info


def save_checkpoint(path: Union[str, Path], model: TwoTower, cfg: RecsysConfig, data: RecsysData,
                    info: Optional[Dict] = None) -> None:
    """Write ``{format, config, model, data fingerprint, info}`` atomically to ``path``."""
    save_atomic({
        "format": CKPT_FORMAT,
        "config": asdict(cfg),
        "model": model.state_dict(),
        "data": {"name": data.name, "fingerprint": data.fingerprint(), "num_items": data.num_items,
                 "num_users": data.num_users},
        "info": info or {},
    }, path)


def load_checkpoint(path: Union[str, Path], data: RecsysData) -> Tuple[TwoTower, RecsysConfig, Dict]:
    """Rebuild the model saved by :func:`save_checkpoint` for ``data`` (must be the same data set)."""
    p = Path(path)
    ck = load_checkpoint_file(p, "bigsoftmax recsys", CKPT_FORMAT, ("config", "model", "data"))
    if not isinstance(ck["data"], dict) or "fingerprint" not in ck["data"]:
        raise ValueError(f"{str(p)!r} is not a usable bigsoftmax recsys checkpoint: no data fingerprint")
    if ck["data"]["fingerprint"] != data.fingerprint():
        raise ValueError(f"checkpoint {str(p)!r} was trained on data set {ck['data'].get('name')!r} "
                         f"({ck['data'].get('num_items')} items, fingerprint {ck['data']['fingerprint']}); the given "
                         f"data {data.name!r} ({data.num_items} items, fingerprint {data.fingerprint()}) differs")
    try:
        cfg = RecsysConfig.from_dict(dict(ck["config"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{str(p)!r} is not a usable bigsoftmax recsys checkpoint: bad config ({e})") from None
    model = build_model(data, cfg)
    load_state_checked(model, ck["model"], p)
    model.eval()
    return model, cfg, ck.get("info", {})

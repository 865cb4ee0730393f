"""The LM job across processes: ``bigsoftmax train --vocab-parallel`` under ``torchrun`` (CPU: gloo).

    torchrun --standalone --nproc-per-node 2 -m bigsoftmax train --corpus gutenberg --head full \\
        --vocab-parallel --no-tie --out runs/vp

* **Body data-parallel**: every rank holds the whole embedding + LSTM/Transformer under
  ``DistributedDataParallel`` and runs its ``B / P`` lanes of each batch (``--batch-size`` is the
  global batch, divisible by P; the same batches as a one-process run).
* **Head vocab-parallel**: the head (``full``, ``sampled``, ``nce``) is the
  :mod:`bigsoftmax.parallel` class, each rank allocating only its "div" block of the ``[V, d]`` rows.
  The ranks' hidden states and targets are all-gathered (:func:`bigsoftmax.parallel.gather_from_ranks`),
  so the head sees the global batch on every rank and the loss is the global-batch mean, the same on
  every rank. Each rank keeps its own rows of the gradient of the hidden states, so the body
  gradients are *summed* over the ranks (a DDP comm hook replaces DDP's average). Gradient clipping
  uses the global norm (body + every rank's head block). Sampling heads draw the same candidates on
  every rank (their generators are seeded from ``--seed`` and the module name, not the rank).
* **Checkpoints**: at every checkpoint the shards are gathered to rank 0, which writes one
  ``checkpoint.pt`` whose ``model`` is the *single-process* state dict
  (:func:`bigsoftmax.parallel.gather_checkpoint`), so ``bigsoftmax eval RUN`` loads it in one
  process with the single-process head; the per-rank optimiser states and LSTM states ride along
  under ``vocab_parallel`` for ``--resume``, which needs the same number of ranks.
* **Only rank 0 writes** the run folder (lock, config, vocab, metrics, history, checkpoint); every
  rank reads the same checks first, so a refused folder is refused on every rank.
* The final evaluation runs the whole valid stream on every rank (the same hidden states, as the
  vocab-parallel head needs) and is exact: ``bigsoftmax eval`` on the gathered checkpoint reports
  the same perplexity.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .._jobs import CLIError, save_atomic
from ..parallel import comm, gather_checkpoint, gather_from_ranks, shard_checkpoint
from .config import CHECKPOINT, build_model
from .train import Trainer

__all__ = ["VocabParallelTrainer", "init_process_group_from_env"]

_HEAD = "head."
_BUDGETS = (None, "max_tokens", "time_budget", "epochs")


def init_process_group_from_env(backend: str = "gloo") -> None:
    """Initialise the default process group from torchrun's environment (a no-op if one exists)."""
    if dist.is_available() and dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise CLIError("--vocab-parallel needs one process per rank with a process group, and "
                       f"{', '.join(missing)} are not set: launch with torchrun --standalone --nproc-per-node P "
                       "-m bigsoftmax train --vocab-parallel ...")
    dist.init_process_group(backend)


def _sum_hook(state, bucket):
    """DDP comm hook: all-reduce **sum** of the gradient bucket (DDP's default divides by P)."""
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class VocabParallelTrainer(Trainer):
    """:class:`~bigsoftmax.lm.train.Trainer` for a ``vocab_parallel`` config on an initialised process
    group (see the module docstring). Same arguments as ``Trainer``."""

    _vocab_parallel = True

    def __init__(self, cfg, out, **kw):
        if not (dist.is_available() and dist.is_initialized()):
            raise CLIError("--vocab-parallel needs an initialised torch.distributed process group: launch with "
                           "torchrun --standalone --nproc-per-node P -m bigsoftmax train --vocab-parallel ...")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if not cfg.vocab_parallel:
            raise ValueError("VocabParallelTrainer trains a config with vocab_parallel=True (--vocab-parallel)")
        super().__init__(cfg, out, **kw)
        B, P = self.cfg.batch_size, self.world_size
        if B % P:
            raise ValueError(f"--batch-size {B} must be divisible by the world size {P} (rank {self.rank}): each rank "
                             f"trains batch_size / P lanes; use a multiple of {P}")
        self.local_lanes = B // P
        ignore = [n for n, _ in self.model.named_parameters() if n.startswith(_HEAD)]
        ignore += [n for n, _ in self.model.named_buffers() if n.startswith(_HEAD)]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ignore)
        self.ddp = DistributedDataParallel(self.model)
        self.ddp.register_comm_hook(None, _sum_hook)

    def _build_model(self):
        return build_model(self.cfg, self.corpus.counts, tokens=self.corpus.train, vocab_parallel=True,
                           rank=self.rank)

    # ------------------------------------------------------------------ step
    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        model, cfg = self.model, self.cfg
        s, e = self.rank * self.local_lanes, (self.rank + 1) * self.local_lanes
        state = model.detach_state(self.rnn_state)
        h, new_state = self.ddp(x[s:e], state)
        hidden = gather_from_ranks(h.contiguous())
        target = torch.cat(comm.all_gather(y[s:e].contiguous()), dim=0)
        loss = model.head(hidden, target)
        self._check_loss(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            self._clip(cfg.clip)
        self.optimizer.step()
        self.rnn_state = model.detach_state(new_state)
        return float(loss.detach())

    def _clip(self, max_norm: float) -> None:
        """``clip_grad_norm_`` with the global norm: the body's (identical on every rank) + every head block's."""
        body = [p for n, p in self.model.named_parameters() if not n.startswith(_HEAD) and p.grad is not None]
        head = [p for p in self.model.head.parameters() if p.grad is not None and not p.grad.is_sparse]
        sq = lambda ps: torch.stack([p.grad.double().square().sum() for p in ps]).sum() if ps else \
            torch.zeros((), dtype=torch.float64)  # noqa: E731
        total = math.sqrt(float(sq(body)) + float(comm.all_reduce(sq(head).reshape(1), "sum")[0]))
        coef = min(1.0, max_norm / (total + 1e-6))
        if coef < 1.0:
            for p in body + head:
                p.grad.mul_(coef)

    # ------------------------------------------------------------------ agreement between ranks
    def _budget_reached(self) -> Optional[str]:
        code = torch.tensor([float(_BUDGETS.index(super()._budget_reached()))])
        return _BUDGETS[int(comm.all_reduce(code, "max")[0])]

    def _after_step(self, checkpoint_due: bool):
        flags = torch.tensor([float(bool(self._stop_reason)), float(checkpoint_due and self.rank == 0)])
        comm.all_reduce(flags, "max")  # a signal on any rank stops all; rank 0's clock times the checkpoints
        if flags[0] > 0 and not self._stop_reason:
            self._stop_reason = "interrupted"
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _folder_ready(self) -> None:
        dist.barrier()

    def _extra_metrics(self) -> Dict:
        local = sum(p.numel() for p in self.model.head.parameters())
        head = int(comm.all_reduce(torch.tensor([local], dtype=torch.float64), "sum")[0])
        body = sum(p.numel() for n, p in self.model.named_parameters() if not n.startswith(_HEAD))
        return {"vocab_parallel": self.world_size, "params": body + head, "head_params": head,
                "head_params_per_rank": local}

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, status: str) -> None:
        mine = {"rank": self.rank, "head": self.model.head.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rnn_state": self.rnn_state}
        every = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(mine, every, dst=0)
        if self.rank != 0:
            self.state.status = status
            dist.barrier()  # returns once rank 0 has written the checkpoint
            return
        every = sorted(every, key=lambda m: m["rank"])
        head = gather_checkpoint([m["head"] for m in every])
        ck = self._checkpoint_dict(status)
        model = {k: v for k, v in ck["model"].items() if not k.startswith(_HEAD)}
        model.update({_HEAD + k: v for k, v in head.items()})
        ck.update(model=model, optimizer=every[0]["optimizer"], rnn_state=None,
                  vocab_parallel={"world_size": self.world_size, "optimizers": [m["optimizer"] for m in every],
                                  "rnn_states": [m["rnn_state"] for m in every]})
        save_atomic(ck, self.out / CHECKPOINT)
        dist.barrier()

    def run(self) -> Dict:
        """:meth:`Trainer.run` on every rank; returns once rank 0 has written the run's files."""
        res = super().run()
        dist.barrier()
        return res

    def _restore(self, ck: Dict) -> None:
        path = self.out / CHECKPOINT
        vp = ck.get("vocab_parallel")
        if not isinstance(vp, dict) or "world_size" not in vp:
            raise ValueError(f"{str(path)!r} was not written by a --vocab-parallel run: resume it without torchrun")
        if vp["world_size"] != self.world_size:
            raise ValueError(f"{str(path)!r} was trained on {vp['world_size']} ranks, this job has {self.world_size} "
                             f"(rank {self.rank}): resume it with torchrun --nproc-per-node {vp['world_size']}; "
                             "the single-process weights in it load anywhere (bigsoftmax eval)")
        head = {k[len(_HEAD):]: v for k, v in ck["model"].items() if k.startswith(_HEAD)}
        local = {k: v for k, v in ck["model"].items() if not k.startswith(_HEAD)}
        local.update({_HEAD + k: v for k, v in shard_checkpoint(head, self.world_size)[self.rank].items()})
        super()._restore(dict(ck, model=local, optimizer=vp["optimizers"][self.rank],
                              rnn_state=vp["rnn_states"][self.rank]))

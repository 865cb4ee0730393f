"""A bigsoftmax sparse head in PyTorch Lightning (``pip install lightning``; optional).

``LitLM`` is an embedding + GRU language model whose output layer is a
``SampledSoftmax(..., sparse=True)``: every step touches only the rows of the true and sampled
classes, and the gradients of those rows are sparse COO tensors. ``configure_optimizers`` returns
``bigsoftmax.optim.make_optimizer(...)`` — a ``CombinedOptimizer`` of ``Adam`` (dense body) and
``SparseAdam`` (sparse embedding and head rows) — with a ``OneCycleLR`` stepped every batch; Lightning
treats it as one optimiser. Gradient clipping goes through ``configure_gradient_clipping`` and the
sparse-aware ``bigsoftmax.optim.clip_grad_norm_`` (torch's version does not take sparse gradients).
Validation reports the exact perplexity (full softmax over the head's rows, in eval mode).

    python examples/lightning_lm.py                   # a few hundred steps on a synthetic Markov corpus
    python examples/lightning_lm.py --max-steps 50
"""

from __future__ import annotations

import argparse
import math
from typing import Optional

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bigsoftmax.heads import SampledSoftmax
from bigsoftmax.optim import clip_grad_norm_, make_optimizer


def markov_corpus(V: int = 500, n: int = 20_000, branching: int = 4, seed: int = 0) -> torch.Tensor:
    """A token stream where each token has ``branching`` likely successors: learnable, with V classes."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.randint(0, V, (V, branching), generator=g)
    ids = torch.empty(n, dtype=torch.long)
    ids[0] = 0
    pick = torch.randint(0, branching, (n,), generator=g)
    for i in range(1, n):
        ids[i] = succ[ids[i - 1], pick[i]]
    return ids


def loaders(ids: torch.Tensor, seq_len: int = 16, batch_size: int = 32, seed: int = 0):
    n = (ids.numel() - 1) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1: n * seq_len + 1].reshape(n, seq_len)
    cut = int(0.9 * n)
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=batch_size)
    return train, val


class LitLM(L.LightningModule):
    """Embedding (sparse) + GRU + ``SampledSoftmax(sparse=True)``; Adam + SparseAdam under OneCycleLR."""

    def __init__(self, vocab_size: int = 500, d: int = 32, num_sampled: int = 32, lr: float = 1e-2,
                 total_steps: int = 100, clip: Optional[float] = 1.0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab_size, d, sparse=True)
        self.rnn = nn.GRU(d, d, batch_first=True)
        self.head = SampledSoftmax(d, vocab_size, num_sampled, sparse=True, seed=seed)
        self.grad_was_sparse = []  # one entry per optimiser step: were the head's gradients sparse?
        self.grad_norms = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.emb(x))[0]

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.head(self.features(x), y)  # sampled softmax loss in training mode
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        nll = -self.head.target_log_prob(self.features(x), y).mean()  # exact: full softmax over V
        self.log("val_nll", nll, prog_bar=True)
        return nll

    def configure_optimizers(self):
        opt = make_optimizer(self, lr=self.hparams.lr)  # CombinedOptimizer(Adam, SparseAdam)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr,
                                                    total_steps=max(2, self.hparams.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer):
        self.grad_was_sparse.append(bool(self.head.weight.grad is not None and self.head.weight.grad.is_sparse))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.hparams.clip is not None:
            self.grad_norms.append(float(clip_grad_norm_(self.parameters(), self.hparams.clip)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--vocab", type=int, default=500)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    train, val = loaders(markov_corpus(args.vocab))
    model = LitLM(vocab_size=args.vocab, total_steps=args.max_steps)
    trainer = L.Trainer(max_steps=args.max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        val_check_interval=min(100, args.max_steps), check_val_every_n_epoch=None, limit_val_batches=10,
                        enable_model_summary=False)
    trainer.fit(model, train, val)
    nll = float(trainer.callback_metrics["val_nll"])
    print(f"exact validation perplexity after {args.max_steps} steps: {math.exp(nll):.1f} (V={args.vocab})")


if __name__ == "__main__":
    main()

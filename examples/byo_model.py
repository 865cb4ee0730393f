"""Bring your own model and tokenizer: a bigsoftmax head on a plain PyTorch LSTM language model.

Nothing here uses ``bigsoftmax.lm``: the tokenizer is a whitespace split with its own vocabulary
(alphabetical, plus reserved tokens that never occur), so ``torch.bincount`` gives counts with zeros
in the tokenizer's order. The recipe (docs/training.md):

1. ``counts = torch.bincount(train_ids, minlength=V)`` — zeros for reserved tokens and for words only
   seen in validation;
2. ``order = bigsoftmax.FrequencyOrder.from_counts(counts)`` — the frequency-sorted ids
   AdaptiveSoftmax wants; ``order.encode`` the data, ``order.decode`` the predictions;
3. the head: ``AdaptiveSoftmax(d, V, counts=order.counts)`` (cutoffs chosen from the counts) or
   ``HierarchicalSoftmax(d, counts, sparse=True)`` (Huffman tree); both floor zero counts to half the
   smallest positive count;
4. ``bigsoftmax.optim.make_optimizer`` (Adam for the dense body + SparseAdam for the sparse
   embedding / tree rows) driven by ``OneCycleLR``, gradients clipped with the sparse-aware
   ``bigsoftmax.optim.clip_grad_norm_``;
5. exact validation perplexity from ``head.target_log_prob`` (a normalised distribution over all V).

    python examples/byo_model.py                      # AdaptiveSoftmax, a few seconds on a CPU
    python examples/byo_model.py --head hsm --steps 200
    python examples/byo_model.py --text my_corpus.txt # any UTF-8 text file
"""

from __future__ import annotations

import argparse
import math
from typing import Dict, List, Optional

import torch
from torch import nn

import bigsoftmax
from bigsoftmax.heads import AdaptiveSoftmax, HierarchicalSoftmax
from bigsoftmax.optim import clip_grad_norm_, make_optimizer

# A small original text (written for this example), repeated with variations by the tokenizer's data.
TEXT = """
the river runs past the old mill and the mill wheel turns slowly in the cold water .
the miller walks to the river every morning and looks at the wheel and the water .
in the spring the river is high and the wheel turns fast and the mill is loud .
in the summer the river is low and the wheel turns slowly and the mill is quiet .
the miller has a small boat and in the evening he rows the boat down the river to the town .
in the town he sells the flour and buys bread and salt and comes back up the river at night .
the children of the town watch the boat and wave at the miller and the miller waves back .
one winter the river froze and the wheel stopped and the mill was silent for many days .
the miller sat by the fire and told the children stories about the river and the old mill .
when the ice broke the water ran again and the wheel turned and the mill was loud once more .
"""

RESERVED = ["<pad>", "<bos>", "<eos>", "<unk>", "<mask>"]  # in the vocabulary, never in the data


class WhitespaceTokenizer:
    """Your tokenizer: reserved tokens first, then the words in alphabetical order (not by frequency)."""

    def __init__(self, text: str):
        self.itos: List[str] = RESERVED + sorted(set(text.split()))
        self.stoi: Dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        unk = self.stoi["<unk>"]
        return torch.tensor([self.stoi.get(w, unk) for w in text.split()], dtype=torch.long)

    def decode(self, ids) -> List[str]:
        return [self.itos[int(i)] for i in ids]


class LSTMLM(nn.Module):
    """A plain embedding + LSTM body; the head is any bigsoftmax head over the body's features."""

    def __init__(self, vocab_size: int, d: int, head: nn.Module):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d, sparse=True)  # sparse rows: SparseAdam updates only those seen
        self.lstm = nn.LSTM(d, d, batch_first=True)
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(self.emb(x))[0]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), y)


def windows(ids: torch.Tensor, seq_len: int):
    """(inputs, targets) [n, seq_len] of consecutive non-overlapping windows."""
    n = (ids.numel() - 1) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1: n * seq_len + 1].reshape(n, seq_len)
    return x, y


@torch.no_grad()
def perplexity(model: LSTMLM, x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact perplexity: exp of the mean -log P(y | context), P normalised over all V classes."""
    model.eval()
    lp = model.head.target_log_prob(model.features(x), y)
    model.train()
    return math.exp(-float(lp.double().mean()))


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--head", choices=["adaptive", "hsm"], default="adaptive")
    ap.add_argument("--text", default=None, help="a UTF-8 text file (default: the small built-in text)")
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny model, no contention)")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    text = open(args.text, encoding="utf-8").read() if args.text else TEXT * 6
    words = text.split()
    cut = int(0.9 * len(words))
    train_text, valid_text = " ".join(words[:cut]), " ".join(words[cut:])
    tok = WhitespaceTokenizer(text)
    V = len(tok)
    train_ids, valid_ids = tok.encode(train_text), tok.encode(valid_text)

    counts = torch.bincount(train_ids, minlength=V)  # tokenizer order, with zeros
    order = bigsoftmax.FrequencyOrder.from_counts(counts)
    zero = int((counts == 0).sum())
    print(f"vocabulary {V} tokens, {train_ids.numel()} training tokens, {zero} tokens with count 0 "
          f"(reserved or unseen in training)")

    if args.head == "adaptive":  # wants frequency-sorted ids: train on order.encode(ids)
        head = AdaptiveSoftmax(args.d, V, counts=order.counts)
        enc = order.encode
    else:  # the Huffman tree takes the counts in any order
        head = HierarchicalSoftmax(args.d, counts, sparse=True)
        enc = lambda ids: ids  # noqa: E731
    model = LSTMLM(V, args.d, head)
    x, y = windows(enc(train_ids), args.seq_len)
    vx, vy = windows(enc(valid_ids), args.seq_len)

    opt = make_optimizer(model, lr=args.lr)  # Adam (body, dense head) + SparseAdam (embedding, tree rows)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    g = torch.Generator().manual_seed(args.seed)
    ppl0 = perplexity(model, vx, vy)
    norms = []
    for step in range(args.steps):
        b = torch.randint(0, x.shape[0], (args.batch_size,), generator=g)
        loss = model(x[b], y[b])
        loss.backward()
        norms.append(float(clip_grad_norm_(model.parameters(), max_norm=1.0)))
        opt.step()
        opt.zero_grad()
        sched.step()
    ppl = perplexity(model, vx, vy)
    print(f"{opt!r} + OneCycleLR, {args.steps} steps")
    print(f"exact validation perplexity ({args.head}): {ppl0:.1f} before training -> {ppl:.1f} after")

    model.eval()
    prompt = tok.encode("the miller walks to the")
    with torch.no_grad():
        nxt = model.head.predict(model.features(enc(prompt)[None]))[0, -1:]
    print("the miller walks to the ->", tok.decode(order.decode(nxt) if args.head == "adaptive" else nxt)[0])
    return {"ppl_before": ppl0, "ppl": ppl, "vocab": float(V), "zero_counts": float(zero),
            "max_grad_norm": max(norms)}


if __name__ == "__main__":
    main()

"""Fine-tune a tiny GPT-2 with a sampled-softmax head through the Hugging Face ``Trainer``.

Everything is local: the model is a random ``GPT2LMHeadModel`` from a small ``GPT2Config`` (no hub
download), the text is the Gutenberg sample bundled with bigsoftmax
(``src/bigsoftmax/lm/data/corpora/gutenberg.txt.xz``), the tokenizer is a lower-cased whitespace
split with a frequency-sorted vocabulary (id 0 = most frequent, as the log-uniform sampler expects;
rare words map to ``<unk>``). The head is ``SampledSoftmax`` tied to the input embeddings
(:func:`bigsoftmax.integrations.transformers.replace_lm_head`); the ``Trainer`` only sees
``outputs.loss``. Afterwards the script prints the exact validation perplexity (the full
normalised softmax of the trained head, :func:`causal_lm_perplexity`) before and after training
and greedily generates a few words.

    python examples/hf_trainer.py                       # ~200 steps, a few minutes on 2 CPU cores
    python examples/hf_trainer.py --max-steps 3 --lines 2000   # a smoke run (what the test does)

Needs the ``transformers`` extra (``pip install 'bigsoftmax[transformers]'``, with ``accelerate``).
"""

from __future__ import annotations

import argparse
import collections
import lzma
import tempfile
from pathlib import Path

import torch

import bigsoftmax
from bigsoftmax.heads import SampledSoftmax
from bigsoftmax.integrations.transformers import causal_lm_perplexity, replace_lm_head

CORPUS = Path(bigsoftmax.__file__).resolve().parent / "lm" / "data" / "corpora" / "gutenberg.txt.xz"


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {s}")
    return v


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-steps", type=positive_int, default=200, help="Trainer optimisation steps")
    p.add_argument("--lines", type=positive_int, default=20000, help="corpus lines to read (from the start)")
    p.add_argument("--vocab-size", type=positive_int, default=2000, help="words kept (+ <unk>)")
    p.add_argument("--seq-len", type=positive_int, default=32)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--num-sampled", type=positive_int, default=128, help="sampled classes per step")
    p.add_argument("--d-model", type=positive_int, default=64)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--generate", type=positive_int, default=12, help="words to generate after the prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="Trainer output_dir (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.vocab_size < 2 or args.num_sampled >= args.vocab_size + 1:
        p.error(f"--num-sampled ({args.num_sampled}) must be below the vocabulary size ({args.vocab_size} + 1)")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    return args


def read_words(lines: int):
    with lzma.open(CORPUS, "rt", encoding="utf-8") as f:
        out = []
        for i, line in enumerate(f):
            if i >= lines:
                break
            out += line.lower().split()
    return out


def build_vocab(words, size: int):
    """Frequency-sorted words (id 0 = most frequent) + ``<unk>`` as the last id."""
    itos = [w for w, _ in collections.Counter(words).most_common(size)] + ["<unk>"]
    return itos, {w: i for i, w in enumerate(itos)}


def chunks(ids: torch.Tensor, seq_len: int):
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)


def main(argv=None):
    args = parse_args(argv)
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, default_data_collator

    torch.manual_seed(args.seed)
    words = read_words(args.lines)
    itos, stoi = build_vocab(words, args.vocab_size)
    unk = len(itos) - 1
    ids = torch.tensor([stoi.get(w, unk) for w in words], dtype=torch.long)
    split = int(0.9 * ids.numel())
    train, valid = chunks(ids[:split], args.seq_len), chunks(ids[split:], args.seq_len)
    if len(train) < 1 or len(valid) < 1:
        raise SystemExit(f"--lines {args.lines} gives too little text for --seq-len {args.seq_len}")
    V = len(itos)
    print(f"corpus: {ids.numel()} words, vocabulary {V}, {len(train)} train / {len(valid)} valid sequences")

    config = GPT2Config(n_layer=args.layers, n_embd=args.d_model, n_head=2, vocab_size=V,
                        n_positions=max(64, args.seq_len + args.generate + 8), bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(config)
    head = SampledSoftmax(args.d_model, V, num_sampled=args.num_sampled, seed=args.seed)
    replace_lm_head(model, head)  # GPT-2 ties: head.weight is the input embedding
    print(f"head: {type(head).__name__}(num_sampled={args.num_sampled}), "
          f"tied={model.lm_head.head.weight is model.get_input_embeddings().weight}")

    before = causal_lm_perplexity(model, valid)
    dataset = [{"input_ids": x, "labels": x} for x in train]
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=args.out or tmp, max_steps=args.max_steps,
                                  per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                                  lr_scheduler_type="constant", logging_steps=max(1, args.max_steps // 5),
                                  save_strategy="no", report_to=[], use_cpu=True, seed=args.seed,
                                  dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=default_data_collator)
        result = trainer.train()
    after = causal_lm_perplexity(model, valid)
    print(f"training loss (sampled objective, last logged): {result.training_loss:.3f}")
    print(f"exact validation perplexity: {before.perplexity:.1f} before -> {after.perplexity:.1f} after "
          f"{args.max_steps} steps ({after.tokens} tokens)")

    model.eval()
    prompt = valid[0, :8][None]
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.generate,
                         do_sample=False, pad_token_id=unk)
    print("prompt:   ", " ".join(itos[i] for i in prompt[0].tolist()))
    print("generated:", " ".join(itos[i] for i in out[0, prompt.shape[1]:].tolist()))
    return {"before": before, "after": after, "generated": out[0, prompt.shape[1]:].tolist(), "vocab": V}


if __name__ == "__main__":
    main()

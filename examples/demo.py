"""`make demo`: benchmark every available output head on the bundled Gutenberg corpus.

Same LSTM language model, data, seed and token budget for each head; prints the Markdown table
(exact validation perplexity, training tokens/s, time per epoch, peak memory, speed-up over the
full softmax) and writes results.json / results.md / pareto.png under runs/demo/.

The vocabulary is the corpus's true ~42K word types — the point of the exercise is an output layer
much bigger than the body. A small LSTM (d=128, one layer) gets the same **wall-clock** training
budget per head (35 s), so the demo takes about 7-8 minutes on a 2-core CPU whatever the machine's
speed, and the table answers "which head gets furthest in the same time?" (the approximate heads
see several times more tokens than the full softmax). Exact perplexity is measured on the first 8K
validation tokens. Every head keeps an untied input embedding (the tree / class / adaptive heads
have no [V, d] matrix to tie, so all heads compare like for like) and sparse embedding gradients. Any bench flag can be appended, e.g. the same token budget for every head:

    python examples/demo.py --time-budget 1e9 --max-tokens 300K     # equal data instead of equal time
    python examples/demo.py --overwrite                              # replace an earlier runs/demo
"""

import sys

from bigsoftmax.cli import main

DEFAULTS = [
    "bench",
    "--corpus", "gutenberg",
    "--heads", "all",
    "--model", "lstm",
    "--d-model", "128",
    "--batch-size", "64",
    "--seq-len", "20",
    "--lr", "0.003",
    "--time-budget", "35",
    "--eval-tokens", "8K",
    "--threads", "2",
    "--sparse",
    "--no-tie",
    "--out", "runs/demo",
]

if __name__ == "__main__":
    sys.exit(main(DEFAULTS + sys.argv[1:]))

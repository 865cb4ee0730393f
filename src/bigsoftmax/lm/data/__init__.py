"""Data: text corpora -> frequency-sorted vocabulary -> encoded, split, cached id streams -> LM batches.

>>> from bigsoftmax.lm.data import load_corpus, batchify, iter_batches
>>> corpus = load_corpus("gutenberg")          # bundled, cached after the first run
>>> lanes = batchify(corpus.train, batch_size=32)
>>> for k, x, y in iter_batches(lanes, seq_len=35): ...
"""

from .batching import batchify, iter_batches, num_batches
from .corpus import Corpus, load_corpus, split_assignment, unigram_perplexity
from .recipes import CorpusUnavailableError, NAMED_CORPORA, cache_dir, data_dir, resolve_corpus
from .text import DEFAULT_PATTERN, EOS, UNK, Tokenizer, Vocab, read_text

__all__ = [
    "Corpus",
    "CorpusUnavailableError",
    "DEFAULT_PATTERN",
    "EOS",
    "NAMED_CORPORA",
    "Tokenizer",
    "UNK",
    "Vocab",
    "batchify",
    "cache_dir",
    "data_dir",
    "iter_batches",
    "load_corpus",
    "num_batches",
    "read_text",
    "resolve_corpus",
    "split_assignment",
    "unigram_perplexity",
]

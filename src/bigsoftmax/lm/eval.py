"""Exact evaluation of a language model with any head (``bigsoftmax eval``).

Perplexity is ``exp(-(1/N) sum_t log p(w_t | w_<t))`` with ``log p`` from the head's exact
normalised distribution (``head.target_log_prob``: a chunked full softmax for sampling heads, the
exact factorisation for tree / class / adaptive heads), so numbers are comparable across heads.
Top-k accuracy is the fraction of positions whose target is among the k most probable classes
(``head.topk``, exact and chunked). The stream is read in ``batch_size`` parallel lanes with the
recurrent state carried along each lane.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .data import Corpus, batchify, iter_batches, load_corpus

__all__ = ["evaluate", "load_run", "evaluate_run"]


@torch.no_grad()
def evaluate(model: nn.Module, stream: np.ndarray, batch_size: int = 16, seq_len: int = 64,
             max_tokens: Optional[int] = None, topk: Sequence[int] = (1, 5, 10),
             log_z: bool = False) -> Dict[str, float]:
    """Exact NLL / perplexity (and top-k accuracy) of ``model`` on an id ``stream``.

    Args:
        model: a :class:`bigsoftmax.lm.models.LanguageModel` (``model(x, state) -> (hidden, state)``,
            ``model.head`` a Head).
        stream: [n] int ids.
        batch_size, seq_len: lanes and segment length of the evaluation pass.
        max_tokens: evaluate only (about) the first ``max_tokens`` targets.
        topk: the k values for top-k accuracy (empty: skip, saves a pass over V).
        log_z: also report how self-normalised the head's raw scores are, for heads with an exact
            ``log_normalizer`` (linear heads): ``log_z_mean``, ``log_z_std`` and ``log_z_mean_abs``
            of ``log Z(h) = logsumexp_c z_c`` over the evaluated positions (one more pass over V).
    Returns: dict with ``nll`` (nats/token), ``ppl``, ``tokens``, ``acc@k`` per k (and the log Z
    statistics).
    """
    stream = np.asarray(stream)
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
        stream = stream[: max_tokens + batch_size]
    if stream.shape[0] < 2:
        raise ValueError(f"evaluation stream has {stream.shape[0]} tokens; need at least 2")
    ks = sorted(set(int(k) for k in topk))
    V = model.head.num_classes
    for k in ks:
        if not 1 <= k <= V:
            raise ValueError(f"topk values must be in [1, {V}], got {k}")
    B = max(1, min(batch_size, stream.shape[0] // 2))
    lanes = batchify(stream, B)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    hits = {k: 0 for k in ks}
    lz_fn = getattr(model.head, "log_normalizer", None) if log_z else None
    lz_sum = lz_sq = lz_abs = 0.0
    state = None
    try:
        for _, x, y in iter_batches(lanes, seq_len):
            h, state = model(x, state)
            lp = model.head.target_log_prob(h, y)
            total += float(lp.double().sum())
            n += y.numel()
            if lz_fn is not None:
                lz = lz_fn(h).double()
                lz_sum += float(lz.sum())
                lz_sq += float(lz.square().sum())
                lz_abs += float(lz.abs().sum())
            if ks:
                _, idx = model.head.topk(h, ks[-1])
                for k in ks:
                    hits[k] += int((idx[..., :k] == y.unsqueeze(-1)).any(-1).sum())
    finally:
        model.train(was_training)
    nll = -total / n
    out = {"nll": nll, "ppl": math.exp(nll) if nll < 700 else float("inf"), "tokens": n}
    for k in ks:
        out[f"acc@{k}"] = hits[k] / n
    if lz_fn is not None:
        mean = lz_sum / n
        out.update(log_z_mean=mean, log_z_std=math.sqrt(max(lz_sq / n - mean * mean, 0.0)), log_z_mean_abs=lz_abs / n)
    return out


def _remap(corpus: Corpus, vocab) -> Corpus:
    """``corpus`` re-expressed in ``vocab``'s ids (a type ``vocab`` lacks becomes its ``<unk>``)."""
    if corpus.vocab == vocab:
        return corpus
    table = np.fromiter((vocab.stoi.get(t, vocab.unk_id) for t in corpus.vocab.itos), dtype=np.int64,
                        count=len(corpus.vocab))
    meta = dict(corpus.meta, remapped_to_run_vocab=True)
    return Corpus(corpus.name, vocab, table[corpus.train].astype(np.int32), table[corpus.valid].astype(np.int32),
                  table[corpus.test].astype(np.int32), meta)


def load_run(run_dir: Union[str, Path], corpus: Optional[Corpus] = None, allow_corpus_change: bool = False):
    """Rebuild (model, corpus, cfg, checkpoint) from a ``bigsoftmax train`` output folder.

    The token ids are always the run's own: the corpus is re-encoded with the run's ``vocab.json``
    (or the vocabulary saved in the checkpoint). A corpus file whose sha256 differs from the one
    recorded at training time raises ValueError unless ``allow_corpus_change``; a damaged
    checkpoint raises a one-line ValueError naming the file.
    """
    from .._jobs import load_checkpoint_file, load_state_checked
    from .config import CHECKPOINT, CKPT_FORMAT, CKPT_REQUIRED, TrainConfig, build_model, check_same_corpus
    from .data import Vocab

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (is {str(run_dir)!r} a `bigsoftmax train` --out folder?)")
    ck = load_checkpoint_file(path, "bigsoftmax train", CKPT_FORMAT, CKPT_REQUIRED)
    try:
        cfg = TrainConfig.from_dict(dict(ck["config"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not a usable bigsoftmax train checkpoint: bad config ({e})") from None
    vocab_file = run_dir / "vocab.json"
    try:
        if vocab_file.is_file():
            vocab = Vocab.from_json(vocab_file.read_text(encoding="utf-8"))
        elif isinstance(ck.get("vocab"), str):
            vocab = Vocab.from_json(ck["vocab"])
        else:
            raise FileNotFoundError(f"the run's vocabulary {str(vocab_file)!r} is missing; without it the token "
                                    "ids of the checkpoint cannot be trusted")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"the run's vocabulary {str(vocab_file)!r} is damaged ({e})") from None
    if len(vocab) != ck["vocab_size"]:
        raise ValueError(f"the run's vocabulary {str(vocab_file)!r} has {len(vocab)} types but the checkpoint "
                         f"{str(path)!r} has {ck['vocab_size']}")
    if corpus is None:
        corpus = load_corpus(cfg.corpus, **cfg.corpus_kwargs())
    if not allow_corpus_change:
        check_same_corpus(ck, corpus, path, "eval", "--allow-corpus-change")
    corpus = _remap(corpus, vocab)
    model = build_model(cfg, vocab.counts, tokens=corpus.train)
    load_state_checked(model, ck["model"], path)
    model.eval()
    return model, corpus, cfg, ck


def evaluate_run(run_dir: Union[str, Path], split: str = "valid", max_tokens: Optional[int] = None,
                 topk: Sequence[int] = (1, 5, 10), batch_size: int = 16, seq_len: Optional[int] = None,
                 allow_corpus_change: bool = False) -> Dict:
    """Exact perplexity and top-k accuracy of a saved run on ``split`` (see :func:`load_run`)."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be one of 'train', 'valid', 'test', got {split!r}")
    model, corpus, cfg, ck = load_run(run_dir, allow_corpus_change=allow_corpus_change)
    if seq_len is None:
        seq_len = max(cfg.seq_len, 64) if cfg.model == "lstm" else cfg.seq_len
    res = evaluate(model, corpus.split(split), batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens, topk=topk)
    res.update({"split": split, "head": cfg.head, "model": cfg.model, "corpus": corpus.name,
                "vocab_size": len(corpus.vocab), "steps": ck["state"]["step"], "train_tokens": ck["state"]["tokens"]})
    return res

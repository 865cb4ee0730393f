"""Head registry: a name -> constructor table used by the CLI and the benchmarks.

Every entry builds a head from ``(in_features, counts, opts)``: ``counts`` are the frequency-sorted
training counts ([V] int, id 0 most frequent — the vocabulary of :mod:`bigsoftmax.lm.data`), ``opts``
a :class:`HeadOptions`. Heads are looked up lazily by class name in :mod:`bigsoftmax.heads`, so a
method whose module is not installed yet is listed as unavailable instead of breaking the import::

    >>> from bigsoftmax.lm.registry import build_head, available_heads
    >>> head = build_head("sampled", 256, corpus.counts, HeadOptions(num_sampled=2048, sparse=True))

Names: ``full``, ``sampled``, ``nce``, ``logistic``, ``negsampling``, ``hierarchical``, ``class``,
``adaptive``, ``selfnorm``.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["HeadOptions", "HeadSpec", "HEADS", "build_head", "available_heads", "head_class", "HeadUnavailableError",
           "make_sampler", "default_num_sampled", "default_cutoffs", "VOCAB_PARALLEL_HEADS"]

#: the heads ``--vocab-parallel`` trains, and their :mod:`bigsoftmax.parallel` classes
VOCAB_PARALLEL_HEADS = {"full": "VocabParallelFullSoftmax", "sampled": "VocabParallelSampledSoftmax",
                        "nce": "VocabParallelNCE"}


class HeadUnavailableError(ValueError):
    """The head name is known but its implementation is not part of this installation."""


@dataclass
class HeadOptions:
    """Options the registry may pass to a head constructor (each only if the constructor accepts it).

    num_sampled: candidates per step for sampling heads (default ``V // 16``).
    sampler: ``'log_uniform'`` (Zipf, assumes frequency-sorted ids), ``'unigram'`` (counts^distortion),
        ``'uniform'``, ``'bigram'`` (``samplers.Bigram`` over ``tokens``: the head then takes the
        previous token of every target as ``context=``) or ``'mixed'`` (``samplers.Mixed``: a shared
        log-uniform set of ``num_sampled − per_row`` plus ``per_row`` bigram draws per target); None = the head's default (unigram^0.75 for negative sampling, log-uniform
        for the others).
    distortion: exponent for the unigram sampler (0.75 as in word2vec).
    sparse: sparse gradients for the class-embedding rows.
    seed: seed of the head's sampling generator.
    cutoffs: adaptive-softmax cluster boundaries (default :func:`default_cutoffs`).
    div_value: adaptive-softmax projection shrink factor per tail cluster.
    num_clusters: class-based softmax number of frequency-binned classes (default ~sqrt(V)).
    extra: further keyword arguments passed verbatim (filtered by the constructor's signature).
    tokens: the training token stream, needed by the ``'bigram'`` and ``'mixed'`` samplers (not serialised).
    per_row: per-target bigram draws of the ``'mixed'`` sampler (default 32).
    """

    num_sampled: Optional[int] = None
    sampler: Optional[str] = None
    distortion: float = 0.75
    sparse: bool = False
    seed: Optional[int] = 0
    cutoffs: Optional[Sequence[int]] = None
    div_value: float = 4.0
    num_clusters: Optional[int] = None
    extra: Dict[str, object] = field(default_factory=dict)
    tokens: Optional[np.ndarray] = field(default=None, repr=False)
    per_row: int = 32

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d.pop("tokens")
        d["cutoffs"] = list(self.cutoffs) if self.cutoffs is not None else None
        return d


@dataclass(frozen=True)
class HeadSpec:
    name: str
    class_name: str
    description: str
    kind: str  # "sampling" | "structured" | "exact"
    builder: Callable


_SAMPLERS = ("log_uniform", "unigram", "uniform", "bigram", "mixed")


def default_num_sampled(vocab_size: int) -> int:
    """S = V / 16 (at least 1): the issue's operating point for sampled softmax."""
    return max(1, vocab_size // 16)


def default_cutoffs(vocab_size: int) -> List[int]:
    """Adaptive-softmax cutoffs for a frequency-sorted vocabulary: a head of ~V/20 words, tails at V/5."""
    if vocab_size < 8:
        return [max(1, vocab_size // 2)]
    c1 = max(2, min(4000, vocab_size // 20))
    c2 = max(c1 + 1, min(vocab_size - 1, vocab_size // 5))
    return [c1, c2] if c2 < vocab_size else [c1]


def make_sampler(kind: str, counts: np.ndarray, unique: bool = True, distortion: float = 0.75, tokens=None,
                 per_row: int = 32):
    """A :mod:`bigsoftmax.samplers` sampler over ``len(counts)`` frequency-sorted classes
    (``'bigram'``: built from the ``tokens`` stream, unigram part counts^distortion; ``'mixed'``: a
    shared log-uniform set plus ``per_row`` such bigram draws per row)."""
    from .. import samplers as S

    V = int(len(counts))
    if kind == "log_uniform":
        return S.LogUniform(V, unique=unique)
    if kind == "uniform":
        return S.Uniform(V, unique=unique)
    if kind == "unigram":
        c = torch.as_tensor(np.asarray(counts, dtype=np.float64)).clamp_min(1.0)  # every class drawable
        return S.Unigram(c, distortion=distortion, unique=unique)
    if kind in ("bigram", "mixed"):
        if tokens is None:
            raise ValueError(f"the {kind} sampler needs the training token stream (HeadOptions.tokens)")
        # drawn with replacement (S·Q expected counts, exact): per-row unique draws need several
        # sort-and-redraw rounds, ~8x the cost at S = V/16 (benchmarks/proposals.py, "Drawing candidates")
        c = torch.as_tensor(np.asarray(counts, dtype=np.float64)).clamp_min(1.0)  # every class drawable
        big = S.Bigram(V, torch.as_tensor(np.asarray(tokens, dtype=np.int64)), unigram_counts=c, alpha=distortion,
                       unique=False)
        return big if kind == "bigram" else S.Mixed(S.LogUniform(V, unique=unique), big, per_row)
    raise ValueError(f"sampler must be one of {_SAMPLERS}, got {kind!r}")


def _accepted(cls, kwargs: Dict[str, object]) -> Dict[str, object]:
    """Keep only the keyword arguments ``cls.__init__`` accepts (all of them if it takes **kwargs)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _counts_tensor(counts):
    return torch.as_tensor(np.asarray(counts, dtype=np.float64))


def _build_sampling(cls, in_features: int, counts, o: HeadOptions, default_sampler: str = "log_uniform"):
    V = len(counts)
    S = o.num_sampled if o.num_sampled is not None else default_num_sampled(V)
    if not isinstance(S, int) or isinstance(S, bool) or S < 1:
        raise ValueError(f"num_sampled must be an int >= 1, got {S!r}")
    if S >= V:
        raise ValueError(f"num_sampled={S} must be < the vocabulary size {V} (unique sampling draws distinct classes)")
    kw = dict(num_sampled=S, sparse=o.sparse, seed=o.seed)
    if o.sampler is None and default_sampler == "counts":
        # the head's own noise from the class counts; every class drawable (<unk> may have count 0)
        kw["counts"] = _counts_tensor(counts).clamp_min(1.0)
    else:
        if o.sampler == "mixed" and not 1 <= o.per_row < S:
            raise ValueError(f"per_row must lie in [1, num_sampled={S}) for the mixed sampler, got {o.per_row}")
        kw["sampler"] = make_sampler(o.sampler or default_sampler, counts, True, o.distortion, o.tokens, o.per_row)
    kw.update(o.extra)
    return cls(in_features, V, **_accepted(cls, kw))


def _build_plain(cls, in_features: int, counts, o: HeadOptions):
    kw = dict(sparse=o.sparse)
    kw.update(o.extra)
    return cls(in_features, len(counts), **_accepted(cls, kw))


def _build_hierarchical(cls, in_features: int, counts, o: HeadOptions):
    """Huffman tree over the training counts (frequent words get short codes)."""
    kw = dict(sparse=o.sparse)
    kw.update(o.extra)
    return cls(in_features, _counts_tensor(counts).clamp_min(1.0), **_accepted(cls, kw))


def _build_class(cls, in_features: int, counts, o: HeadOptions):
    """Frequency-binned word classes (default ~sqrt(V) of them)."""
    kw = dict(counts=_counts_tensor(counts).clamp_min(1.0), num_clusters=o.num_clusters, sparse=o.sparse)
    kw = {k: v for k, v in kw.items() if v is not None}
    kw.update(o.extra)
    return cls(in_features, **_accepted(cls, kw))


def _build_adaptive(cls, in_features: int, counts, o: HeadOptions):
    """Cutoffs as given, else chosen by the head from the counts (else :func:`default_cutoffs`)."""
    V = len(counts)
    kw = dict(div_value=o.div_value)
    if o.cutoffs is not None:
        kw["cutoffs"] = list(o.cutoffs)
    elif "counts" in inspect.signature(cls.__init__).parameters:
        kw["counts"] = _counts_tensor(counts).clamp_min(1.0)  # <unk> may have count 0 in training
    else:
        kw["cutoffs"] = default_cutoffs(V)
    kw.update(o.extra)
    return cls(in_features, V, **_accepted(cls, kw))


HEADS: Dict[str, HeadSpec] = {
    s.name: s
    for s in [
        HeadSpec("full", "FullSoftmax", "exact softmax over all V classes (the baseline)", "exact", _build_plain),
        HeadSpec("sampled", "SampledSoftmax", "sampled softmax with log Q correction (Jean et al. 2015)", "sampling",
                 _build_sampling),
        HeadSpec("nce", "NCE", "noise-contrastive estimation (Gutmann & Hyvarinen 2010; Mnih & Teh 2012)", "sampling",
                 _build_sampling),  # the head starts its bias at -log V itself (self-normalised start)
        HeadSpec("logistic", "SampledLogistic", "sampled logistic loss (TF candidate-sampling 'logistic')", "sampling",
                 _build_sampling),  # the head starts its bias at -log V itself (self-normalised start)
        HeadSpec("negsampling", "NegativeSampling", "negative sampling (Mikolov et al. 2013)", "sampling",
                 lambda cls, d, c, o: _build_sampling(cls, d, c, o, default_sampler="counts")),
        HeadSpec("hierarchical", "HierarchicalSoftmax", "binary Huffman-tree hierarchical softmax (Morin & Bengio 2005)",
                 "structured", _build_hierarchical),
        HeadSpec("class", "ClassBasedSoftmax", "two-level class-based softmax over frequency bins (Goodman 2001)",
                 "structured", _build_class),
        HeadSpec("adaptive", "AdaptiveSoftmax", "adaptive softmax (Grave et al. 2017)", "structured", _build_adaptive),
        HeadSpec("selfnorm", "SelfNormalizedSoftmax", "self-normalised softmax (Devlin et al. 2014)", "exact",
                 _build_plain),
    ]
}


def head_class(name: str):
    """The head class registered under ``name``; raises ValueError / HeadUnavailableError."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(HEADS)}")
    from .. import heads as H

    cls = getattr(H, HEADS[name].class_name, None)
    if cls is None:
        raise HeadUnavailableError(
            f"head {name!r} is unavailable: bigsoftmax.heads.{HEADS[name].class_name} is not in this installation "
            f"(available: {', '.join(available_heads()) or 'none'})"
        )
    return cls


def available_heads() -> List[str]:
    """Registered head names whose implementation is importable, in registry order."""
    from .. import heads as H

    return [n for n, s in HEADS.items() if getattr(H, s.class_name, None) is not None]


def build_head(name: str, in_features: int, counts, opts: Optional[HeadOptions] = None, vocab_parallel: bool = False):
    """Construct head ``name`` for ``len(counts)`` frequency-sorted classes with ``in_features`` inputs.

    ``vocab_parallel``: the :mod:`bigsoftmax.parallel` class of ``name`` (one of :data:`VOCAB_PARALLEL_HEADS`),
    this rank's block of the class rows; needs an initialised process group."""
    cls = head_class(name)
    if vocab_parallel:
        if name not in VOCAB_PARALLEL_HEADS:
            raise ValueError(f"head {name!r} has no vocab-parallel version; vocab-parallel heads: "
                             f"{', '.join(VOCAB_PARALLEL_HEADS)}")
        from .. import parallel

        cls = getattr(parallel, VOCAB_PARALLEL_HEADS[name])
    if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
        raise ValueError(f"in_features must be a positive int, got {in_features!r}")
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise ValueError(f"counts must be a 1-D array over >= 2 classes, got shape {counts.shape}")
    if np.any(counts < 0):
        raise ValueError("counts must be non-negative")
    opts = opts if opts is not None else HeadOptions()
    if opts.sampler is not None and opts.sampler not in _SAMPLERS:
        raise ValueError(f"sampler must be one of {_SAMPLERS}, got {opts.sampler!r}")
    return HEADS[name].builder(cls, in_features, counts, opts)

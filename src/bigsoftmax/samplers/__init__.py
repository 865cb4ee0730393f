"""Candidate samplers: the TF samplers, the context-dependent bigram proposal, streaming frequencies.

* :mod:`.candidates` — ``nn.Module`` samplers :class:`Uniform`, :class:`LogUniform`,
  :class:`Unigram`, :class:`LearnedUnigram`, :class:`All` (subclasses of :class:`CandidateSampler`)
  and the TF-named functions (``uniform_candidate_sampler``, ``log_uniform_candidate_sampler``,
  ``learned_unigram_candidate_sampler``, ``fixed_unigram_candidate_sampler``,
  ``all_candidate_sampler``), with TF 2.x semantics: one candidate set ``[S]`` shared by the batch.
* :mod:`.bigram` — :class:`Bigram`, ``Q(y | prev)`` interpolating bigram and unigram^α counts;
  one candidate set ``[N, S]`` per example, drawn for the context (previous token) of each row.
* :mod:`.mixed` — :class:`Mixed`, a shared context-free set plus a few per-example draws, every
  candidate corrected by its expected count under both.
* :mod:`.streaming` — :class:`StreamingFrequencyEstimator` (Yi et al. 2019), the per-step item
  frequencies used for in-batch log Q correction.

Every sampler returns ``(sampled_candidates, true_expected_count, sampled_expected_count)`` and
keeps its state in registered buffers (``state_dict()`` checkpoints it); random draws use the
``torch.Generator`` passed in (heads pass their own seeded one).
"""

from . import bigram, candidates, mixed
from .bigram import *  # noqa: F401,F403  (each module's __all__)
from .candidates import *  # noqa: F401,F403
from .mixed import *  # noqa: F401,F403
from .streaming import StreamingFrequencyEstimator

__all__ = [*candidates.__all__, *bigram.__all__, *mixed.__all__, "StreamingFrequencyEstimator"]

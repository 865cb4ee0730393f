"""Docstring paragraphs shared by the heads and the functional API, written once.

A docstring line that holds only ``{name}`` (any indentation) is replaced by the paragraph ``name``
of :data:`PARAGRAPHS`, every line at that indentation::

    @fill_doc
    def f(...):
        '''...
        Args:
            {ignore_index}
            {reduction}
        '''

Only whole-line placeholders are replaced, so formulas with braces are left alone.
"""

from __future__ import annotations

import re

__all__ = ["PARAGRAPHS", "fill_doc"]

PARAGRAPHS = {
    "ignore_index": (
        "ignore_index: a target id that adds no loss and no gradient (default ``-100``, as\n"
        "    ``nn.CrossEntropyLoss``); such rows are left out of the ``'mean'`` and are 0 in ``'none'``."
    ),
    "reduction": (
        "reduction: ``'mean'`` (over the rows not ignored; NaN when every row is ignored, like torch),\n"
        "    ``'sum'`` or ``'none'`` (one loss per target position, 0 at ignored ones). Sums are\n"
        "    accumulated in at least fp32 by the one reducer :func:`bigsoftmax.ops.reduce.reduce_loss`."
    ),
    "head_shape": (
        "- hidden: :math:`(*, d)` floating point (cast to the head's parameter dtype).\n"
        "- target: :math:`(*)` int64 class ids in ``[0, V)`` or ``ignore_index``.\n"
        "- output: scalar, or :math:`(*)` with ``reduction='none'``."
    ),
    "tf_sampled_args": (
        "weights: ``[num_classes, d]`` class embeddings, or a list of row shards (TF's \"div\" partition).\n"
        "biases: ``[num_classes]`` (or shards), or None.\n"
        "labels: int64 ``[B, num_true]`` true classes (``[B]`` when ``num_true=1``).\n"
        "inputs: ``[B, d]`` hidden states (floating point).\n"
        "num_sampled: S, the number of candidates per example.\n"
        "num_classes: V.\n"
        "num_true: T, true classes per example (they share the target mass 1/T).\n"
        "sampled_values: ``(sampled_candidates, true_expected_count, sampled_expected_count)`` from a\n"
        "    sampler: candidates ``[S]`` (shared, TF) or ``[B, S]`` (per example), expected counts of the\n"
        "    same shape, true counts ``[B, T]`` or ``[B, 1]``. None draws\n"
        "    ``log_uniform_candidate_sampler(unique=True, seed=seed)``.\n"
        "remove_accidental_hits: drop a candidate equal to one of its row's true classes (a mask).\n"
        "seed: seed of the default draw.\n"
        "name: accepted for TensorFlow compatibility and ignored."
    ),
    "tf_sampler_args": (
        "true_classes: int64 ``[B, num_true]`` class ids in ``[0, range_max)`` (array-likes are converted).\n"
        "num_true: T, the number of true classes per row (``true_classes.shape[1]``).\n"
        "num_sampled: S, the number of candidates to draw.\n"
        "unique: draw without replacement (rejection until S distinct ids; ``num_tries`` counted as TF).\n"
        "range_max: V, the number of classes.\n"
        "seed: seed of a fresh generator for this call (None: torch's global RNG).\n"
        "generator: a ``torch.Generator`` (wins over ``seed``)."
    ),
    "sampler_shape": (
        "- true_classes: :math:`(B, T)`; output ``(sampled_candidates (S), true_expected_count (B, T),\n"
        "  sampled_expected_count (S))`` (a :class:`CandidateSamples` tuple)."
    ),
    "head_modes": (
        "Training mode (``head.train()``) returns the head's training objective; evaluation mode\n"
        "(``head.eval()``) returns the exact negative log-likelihood ``-target_log_prob(hidden, target)``,\n"
        "reduced the same way, so evaluation numbers compare across heads."
    ),
}

_PLACEHOLDER = re.compile(r"^([ \t]*)\{(\w+)\}[ \t]*$", re.MULTILINE)


def _indent(text: str, pad: str) -> str:
    return "\n".join(pad + line if line else line for line in text.splitlines())


def fill_doc(obj):
    """Replace the whole-line ``{name}`` placeholders of ``obj.__doc__`` by :data:`PARAGRAPHS`; returns ``obj``.

    An unknown name raises ``KeyError`` at import time (a typo never ships as a literal ``{name}``).
    Works on functions and classes; a docstring stripped by ``python -OO`` is left as None.
    """
    doc = obj.__doc__
    if doc:
        obj.__doc__ = _PLACEHOLDER.sub(lambda m: _indent(PARAGRAPHS[m.group(2)], m.group(1)), doc)
    return obj

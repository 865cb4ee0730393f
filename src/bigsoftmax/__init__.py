"""bigsoftmax: fast softmax output layers for huge output spaces, with exact evaluation.

The library core: :mod:`~bigsoftmax.functional` (the stateless, TF-named API), :mod:`~bigsoftmax.samplers`,
:mod:`~bigsoftmax.trees`, :mod:`~bigsoftmax.heads`, :mod:`~bigsoftmax.retrieval`, :mod:`~bigsoftmax.optim`,
:mod:`~bigsoftmax.vocab` (your own tokenizer: frequency order, count smoothing).
The jobs built on it: :mod:`bigsoftmax.lm` (language models) and :mod:`bigsoftmax.recsys` (retrieval).
"""

__version__ = "0.1.0"

from . import _compat  # noqa: E402

_compat.install()

from . import diagnostics, functional, heads, optim, samplers, vocab  # noqa: E402,F401
from ._validate import get_validation, set_validation, validation  # noqa: E402
from .vocab import FrequencyOrder, smooth_counts  # noqa: E402,F401

__all__ = ["diagnostics", "functional", "heads", "optim", "samplers", "vocab", "FrequencyOrder", "smooth_counts", "set_validation",
           "get_validation", "validation", "__version__"]

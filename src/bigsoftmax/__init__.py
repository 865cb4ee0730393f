"""bigsoftmax: fast softmax output layers for huge output spaces, with exact evaluation.

The library core: :mod:`~bigsoftmax.functional` (the stateless, TF-named API), :mod:`~bigsoftmax.samplers`,
:mod:`~bigsoftmax.trees`, :mod:`~bigsoftmax.heads`, :mod:`~bigsoftmax.retrieval`, :mod:`~bigsoftmax.optim`.
The jobs built on it: :mod:`bigsoftmax.lm` (language models) and :mod:`bigsoftmax.recsys` (retrieval).
"""

__version__ = "0.1.0"

from . import _compat  # noqa: E402

_compat.install()

from . import functional, heads, optim, samplers  # noqa: E402,F401
from ._validate import get_validation, set_validation, validation  # noqa: E402

__all__ = ["functional", "heads", "optim", "samplers", "set_validation", "get_validation", "validation",
           "__version__"]

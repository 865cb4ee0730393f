"""bigsoftmax: fast softmax output layers for huge output spaces, with exact evaluation."""

__version__ = "0.1.0"

from . import functional, heads, optim, samplers  # noqa: E402,F401

__all__ = ["functional", "heads", "optim", "samplers", "__version__"]

"""Output heads: every method of bigsoftmax behind one protocol (see :mod:`bigsoftmax.heads.base`)."""

from .base import Head, LinearEvalMixin
from .sampled import SampledSoftmax, SamplingHead

__all__ = ["Head", "LinearEvalMixin", "SampledSoftmax", "SamplingHead"]
# Each head module adds itself below with one import line and one __all__ extension.

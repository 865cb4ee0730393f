"""Compatibility alias: the streaming frequency estimator lives in :mod:`bigsoftmax.samplers.streaming`."""

from .samplers.streaming import StreamingFrequencyEstimator  # noqa: F401

__all__ = ["StreamingFrequencyEstimator"]

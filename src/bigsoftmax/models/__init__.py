"""Small reference models that take any bigsoftmax head: LSTM / Transformer language models."""

from .lm import MODELS, LanguageModel, LSTMLM, TransformerLM, build_lm

__all__ = ["LanguageModel", "LSTMLM", "TransformerLM", "build_lm", "MODELS"]
from .twotower import TwoTower  # noqa: E402  (two-tower retrieval; see bigsoftmax.recsys)

"""Small reference language models that take any bigsoftmax head as their output layer.

    tokens [B, T] --embedding--> [B, T, d] --body (LSTM | causal Transformer)--> hidden [B, T, d]
    loss = head(hidden, targets)            # the head flattens [B, T, d] -> [B*T, d] itself

Weight tying (Press & Wolf 2017; Inan et al. 2017): when the head owns a class-embedding matrix
``head.weight`` of shape ``[V, d]`` (full, sampled, NCE, negative-sampling, logistic and
self-normalised heads), the input embedding reuses that very parameter, so ``E = W``; heads
without one (hierarchical, class-based, adaptive) keep a separate input embedding and
``model.tied`` is False. With ``sparse=True`` the input lookup produces sparse gradients; a tied
parameter stays sparse only if the head's gradient is sparse too (see :mod:`bigsoftmax.optim`).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor, nn

from ..heads.base import Head

__all__ = ["LanguageModel", "LSTMLM", "TransformerLM", "build_lm", "MODELS"]


def _check_int(name: str, v, lo: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def _check_dropout(v) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {v!r}")
    return float(v)


class LanguageModel(nn.Module):
    """Common part: ``embedding [V, d]`` -> body -> ``head``; subclasses implement ``body``.

    Args:
        vocab_size: V, the number of word types (ids frequency-sorted).
        head: any :class:`bigsoftmax.heads.Head` with ``in_features == d_model`` and ``num_classes == V``.
        d_model: embedding and hidden size d.
        dropout: dropout on the embeddings and on the hidden states fed to the head.
        tie_weights: share the input embedding with ``head.weight`` when the head has a [V, d] one.
        sparse: sparse gradients for the input embedding.
    """

    def __init__(self, vocab_size: int, head: Head, d_model: int, dropout: float = 0.0, tie_weights: bool = True,
                 sparse: bool = False):
        super().__init__()
        _check_int("vocab_size", vocab_size, 2)
        _check_int("d_model", d_model)
        if not isinstance(head, Head):
            raise TypeError(f"head must be a bigsoftmax.heads.Head, got {type(head).__name__}")
        if head.in_features != d_model:
            raise ValueError(f"head.in_features={head.in_features} must equal d_model={d_model}")
        if head.num_classes != vocab_size:
            raise ValueError(f"head.num_classes={head.num_classes} must equal vocab_size={vocab_size}")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model, sparse=bool(sparse))
        w = getattr(head, "weight", None)
        self.tied = bool(tie_weights) and isinstance(w, nn.Parameter) and tuple(w.shape) == (vocab_size, d_model)
        if self.tied:
            self.embedding.weight = w  # E = W: one parameter, gradients from both uses accumulate
        else:
            nn.init.normal_(self.embedding.weight, std=1.0 / math.sqrt(d_model))
        self.drop = nn.Dropout(_check_dropout(dropout))
        self.head = head

    def _check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be an int64 tensor of shape [B, T], got {getattr(tokens, 'dtype', type(tokens))}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape [B, T], got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"tokens must be ids in [0, {self.vocab_size}), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def body(self, x: Tensor, state):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, tokens: Tensor, state=None) -> Tuple[Tensor, object]:
        """tokens [B, T] -> (hidden [B, T, d] for the head, next recurrent state or None)."""
        self._check_tokens(tokens)
        x = self.drop(self.embedding(tokens.long()))
        h, state = self.body(x, state)
        return self.drop(h), state

    def loss(self, tokens: Tensor, targets: Tensor, state=None) -> Tuple[Tensor, object]:
        """Training objective of the head on next-token targets [B, T] -> (scalar loss, state).

        A head with a context-dependent sampler (``head.uses_context``) gets the previous token of
        every target as ``context=``: in a BPTT batch that is the input token at the same position."""
        h, state = self(tokens, state)
        if getattr(self.head, "uses_context", False):
            return self.head(h, targets, context=tokens), state
        return self.head(h, targets), state

    @staticmethod
    def detach_state(state):
        """Cut the graph between truncated-BPTT segments (no-op for stateless models)."""
        if state is None:
            return None
        return tuple(s.detach() for s in state)


class LSTMLM(LanguageModel):
    """LSTM language model: ``h_t = LSTM(E[x_t], h_{t-1})``; the state carries across batches."""

    def __init__(self, vocab_size: int, head: Head, d_model: int = 256, num_layers: int = 1, dropout: float = 0.0,
                 tie_weights: bool = True, sparse: bool = False):
        super().__init__(vocab_size, head, d_model, dropout, tie_weights, sparse)
        _check_int("num_layers", num_layers)
        self.num_layers = num_layers
        self.rnn = nn.LSTM(d_model, d_model, num_layers=num_layers, batch_first=True,
                           dropout=float(dropout) if num_layers > 1 else 0.0)

    def body(self, x: Tensor, state):
        if state is not None and state[0].shape[1] != x.shape[0]:
            state = None  # batch size changed (e.g. evaluation): start from zeros
        return self.rnn(x, state)


class TransformerLM(LanguageModel):
    """Causal pre-norm Transformer LM with learned positions (``max_len`` tokens of context)."""

    def __init__(self, vocab_size: int, head: Head, d_model: int = 256, num_layers: int = 2, num_heads: int = 4,
                 dropout: float = 0.0, max_len: int = 512, tie_weights: bool = True, sparse: bool = False):
        super().__init__(vocab_size, head, d_model, dropout, tie_weights, sparse)
        _check_int("num_layers", num_layers)
        _check_int("num_heads", num_heads)
        _check_int("max_len", max_len)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.max_len = max_len
        self.pos = nn.Parameter(torch.zeros(max_len, d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward=4 * d_model, dropout=float(dropout),
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def body(self, x: Tensor, state):
        T = x.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len={self.max_len}")
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device, dtype=x.dtype)
        h = self.encoder(x + self.pos[:T], mask=mask, is_causal=True)
        return self.norm(h), None


MODELS = {"lstm": LSTMLM, "transformer": TransformerLM}


def build_lm(kind: str, vocab_size: int, head: Head, d_model: int, num_layers: int = 1, dropout: float = 0.0,
             tie_weights: bool = True, sparse: bool = False, max_len: int = 512, num_heads: int = 4) -> LanguageModel:
    """Construct ``'lstm'`` or ``'transformer'`` with a given head."""
    if kind == "lstm":
        return LSTMLM(vocab_size, head, d_model, num_layers, dropout, tie_weights, sparse)
    if kind == "transformer":
        return TransformerLM(vocab_size, head, d_model, num_layers, num_heads, dropout, max_len, tie_weights, sparse)
    raise ValueError(f"model must be one of {sorted(MODELS)}, got {kind!r}")

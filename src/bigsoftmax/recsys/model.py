"""Two-tower retrieval model in the style of YouTube DNN (Covington et al., RecSys 2016).

    user tower:  history item ids [N, L] --E--> [N, L, d] --pool (mean | attention)--> [N, d]
                 ⊕ user feature embeddings [N, Σ f] --MLP (ReLU)--> u [N, d]
    item tower:  v_i = E[i]  (+ A_i · P when item features A [V, G] are given: P [G, d])
    score(u, i) = <u, v_i>   (cosine when ``normalize=True``: u and v_i are L2-normalised)

The item table ``E = item_embedding.weight [V, d]`` is the softmax weight: losses gather the rows
they need from this very parameter (:attr:`TwoTower.output_weight`, with
:attr:`TwoTower.row_transform` normalising only the gathered rows), so there is no copy and no
per-step pass over the whole table. Exact evaluation scores the catalogue in chunks
(:meth:`TwoTower.score_items`). By default the history lookup uses the same table (the item tower
embeds the watched items too); ``share_history_embedding=False`` gives the history its own table.

Attention pooling (additive attention over the history):

    a_t = wᵀ tanh(W e_t + b),   α = softmax over the non-padded positions,   pooled = Σ_t α_t e_t

Padding is handled with masks (no padding row), so ``E`` has exactly V rows.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TwoTower"]

_POOLINGS = ("mean", "attention")


def _l2(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=1e-12)


def masked_mean(emb: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``emb [N, L, d]`` over the positions where ``mask [N, L]`` is True -> [N, d]."""
    w = mask.to(emb.dtype)
    return (emb * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)


def masked_attention(emb: Tensor, mask: Tensor, scores: Tensor) -> Tensor:
    """Softmax-weighted sum of ``emb [N, L, d]`` with logits ``scores [N, L]`` over masked positions -> [N, d].

    Masked positions get the dtype's most negative finite value (weight exactly 0 after softmax when
    a row has at least one kept position). Softmax in fp32 or wider.
    """
    acc = torch.promote_types(scores.dtype, torch.float32)
    s = scores.to(acc).masked_fill(~mask, torch.finfo(acc).min)
    alpha = torch.softmax(s, dim=1) * mask.to(acc)
    return (alpha.to(emb.dtype)[..., None] * emb).sum(1)


class TwoTower(nn.Module):
    """YouTubeDNN-style two-tower model (see the module docstring).

    Args:
        num_items: V, size of the item catalogue (ids 0..V-1, popularity-sorted by the data module).
        dim: d, the size of user and item vectors.
        hidden: widths of the user MLP's hidden layers (ReLU); ``()`` gives a single linear map.
        pooling: ``'mean'`` or ``'attention'`` over the history.
        user_feature_sizes: number of codes of every categorical user feature (code 0 = missing).
        user_feature_dim: embedding size of each user feature.
        item_features: optional [V, G] float matrix (e.g. row-normalised multi-hot genres); the item
            vector becomes ``E[i] + item_features[i] @ P``.
        normalize: L2-normalise user and item vectors (scores are cosines; use a temperature).
        dropout: dropout on the MLP input and hidden layers.
        share_history_embedding: embed the history with the item table ``E`` (default) or a separate one.

    Shapes: :meth:`user_vectors` (history [N, L] int64, mask [N, L] bool, user_features [N, F]
    int64) -> [N, d]; :meth:`item_vectors` (ids [...]) -> [..., d]; :meth:`score_items`
    (users [N, d], start, stop) -> [N, stop - start].
    """

    def __init__(
        self,
        num_items: int,
        dim: int = 64,
        hidden: Sequence[int] = (128,),
        pooling: str = "mean",
        user_feature_sizes: Sequence[int] = (),
        user_feature_dim: int = 16,
        item_features: Optional[Tensor] = None,
        normalize: bool = False,
        dropout: float = 0.0,
        share_history_embedding: bool = True,
    ):
        super().__init__()
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 2:
            raise ValueError(f"num_items must be an int >= 2, got {num_items!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        hidden = tuple(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a sequence of ints >= 1, got {hidden!r}")
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
        sizes = tuple(user_feature_sizes)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"user_feature_sizes must be ints >= 1 (codes per feature, 0 = missing), got {sizes!r}")
        if isinstance(user_feature_dim, bool) or not isinstance(user_feature_dim, int) or user_feature_dim < 1:
            raise ValueError(f"user_feature_dim must be an int >= 1, got {user_feature_dim!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        self.num_items = num_items
        self.dim = dim
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.user_feature_sizes = sizes

        self.item_embedding = nn.Embedding(num_items, dim)
        nn.init.normal_(self.item_embedding.weight, std=1.0 / math.sqrt(dim))
        if share_history_embedding:
            self.history_embedding = self.item_embedding
        else:
            self.history_embedding = nn.Embedding(num_items, dim)
            nn.init.normal_(self.history_embedding.weight, std=1.0 / math.sqrt(dim))
        self.shared_history = bool(share_history_embedding)

        if item_features is not None:
            if not isinstance(item_features, Tensor) or item_features.dim() != 2 or item_features.shape[0] != num_items:
                raise ValueError(f"item_features must be a [num_items={num_items}, G] float tensor, got "
                                 f"{tuple(item_features.shape) if isinstance(item_features, Tensor) else type(item_features).__name__}")
            if not item_features.dtype.is_floating_point or not bool(torch.isfinite(item_features).all()):
                raise ValueError("item_features must be a finite floating-point tensor")
            self.register_buffer("item_features", item_features.detach().to(torch.float32).clone())
            self.item_feature_proj = nn.Linear(item_features.shape[1], dim, bias=False)
            nn.init.normal_(self.item_feature_proj.weight, std=1.0 / math.sqrt(dim))
        else:
            self.item_features = None
            self.item_feature_proj = None

        if pooling == "attention":
            self.att_proj = nn.Linear(dim, dim)
            self.att_vec = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.user_feature_embeddings = nn.ModuleList(nn.Embedding(s, user_feature_dim) for s in sizes)
        layers = [nn.Dropout(float(dropout))] if dropout else []
        width = dim + user_feature_dim * len(sizes)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(float(dropout))] if dropout else [])
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)

    def extra_repr(self) -> str:
        return (f"num_items={self.num_items}, dim={self.dim}, pooling={self.pooling!r}, normalize={self.normalize}, "
                f"user_features={len(self.user_feature_sizes)}, item_features={self.item_features is not None}")

    # ----------------------------------------------------------------- item tower
    @property
    def output_weight(self) -> Optional[Tensor]:
        """The item table ``E [V, d]`` when it alone is the item tower (no item features), else None.

        Losses gather rows from it (and apply :attr:`row_transform` to the gathered rows only).
        """
        return self.item_embedding.weight if self.item_features is None else None

    @property
    def row_transform(self):
        """``F.normalize`` over the last dim when ``normalize``, else None (applied to gathered rows)."""
        return _l2 if self.normalize else None

    def _check_items(self, ids: Tensor, name: str = "ids") -> Tensor:
        if not isinstance(ids, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of int64 item ids, got {type(ids).__name__}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer item ids, got dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_items):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise ValueError(f"{name} contains item id {bad}, outside the allowed range [0, {self.num_items})")
        return ids.long()

    def item_vectors(self, ids: Tensor) -> Tensor:
        """Item-tower outputs for ids [...] -> [..., d] (L2-normalised when ``normalize``)."""
        ids = self._check_items(ids)
        v = self.item_embedding(ids)
        if self.item_features is not None:
            v = v + self.item_feature_proj(self.item_features[ids])
        return _l2(v) if self.normalize else v

    # ----------------------------------------------------------------- user tower
    def user_vectors(self, history: Tensor, mask: Tensor, user_features: Optional[Tensor] = None) -> Tensor:
        """User-tower outputs: history [N, L] int64, mask [N, L] bool, user_features [N, F] -> [N, d].

        Raises ValueError for a row whose history is empty (mask all False), ids out of range or
        feature codes out of range.
        """
        if not isinstance(history, Tensor) or history.dim() != 2:
            raise ValueError(f"history must be an int64 tensor [N, L], got "
                             f"{tuple(history.shape) if isinstance(history, Tensor) else type(history).__name__}")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != history.shape:
            raise ValueError(f"mask must be a bool tensor with the shape of history {tuple(history.shape)}, got "
                             f"{(tuple(mask.shape), mask.dtype) if isinstance(mask, Tensor) else type(mask).__name__}")
        N = history.shape[0]
        if history.shape[1] == 0 or (N and not bool(mask.any(1).all())):
            bad = 0 if history.shape[1] == 0 else int(torch.nonzero(~mask.any(1))[0])
            raise ValueError(f"empty history in row {bad}: every row needs at least one item (mask True) to build a user vector")
        ids = self._check_items(torch.where(mask, history, torch.zeros_like(history)), "history")
        emb = self.history_embedding(ids)
        if self.pooling == "mean":
            pooled = masked_mean(emb, mask)
        else:
            scores = torch.tanh(self.att_proj(emb)) @ self.att_vec
            pooled = masked_attention(emb, mask, scores)
        parts = [pooled]
        F_ = len(self.user_feature_sizes)
        if F_:
            if user_features is None or not isinstance(user_features, Tensor) or tuple(user_features.shape) != (N, F_):
                raise ValueError(f"user_features must be an int64 tensor [N={N}, F={F_}], got "
                                 f"{tuple(user_features.shape) if isinstance(user_features, Tensor) else user_features!r}")
            for j, (emb_j, size) in enumerate(zip(self.user_feature_embeddings, self.user_feature_sizes)):
                col = user_features[:, j]
                if col.numel() and (int(col.min()) < 0 or int(col.max()) >= size):
                    raise ValueError(f"user_features[:, {j}] holds codes outside [0, {size})")
                parts.append(emb_j(col.long()))
        u = self.mlp(torch.cat(parts, dim=1) if len(parts) > 1 else pooled)
        return _l2(u) if self.normalize else u

    def forward(self, history: Tensor, mask: Tensor, user_features: Optional[Tensor] = None) -> Tensor:
        return self.user_vectors(history, mask, user_features)

    # ----------------------------------------------------------------- scoring
    def score_items(self, users: Tensor, start: int, stop: int) -> Tensor:
        """Scores of items start..stop-1 for user vectors [N, d] -> [N, stop - start] (one chunk)."""
        ids = torch.arange(start, stop, device=users.device)
        return users @ self.item_vectors(ids).t().to(users.dtype)

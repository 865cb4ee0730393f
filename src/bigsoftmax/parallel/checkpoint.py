"""Sharded checkpoints of the vocab-parallel heads.

Each rank saves its own shard (``torch.save(head.state_dict(), f"head.rank{r}.pt")``): the ``[V_r, ...]``
row tensors plus the shard layout in ``_extra_state``. :func:`gather_checkpoint` joins the P shards
into the state dict of the single-process head (``FullSoftmax``, ``SampledSoftmax``, ``NCE``,
``ArcFace``... load it as is); :func:`shard_checkpoint` splits a single-process state dict onto P ranks
(the "div" layout). Resharding from P to P' ranks is ``shard_checkpoint(gather_checkpoint(shards), P')``.
Loading a shard into a head running on another world size raises and points here.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ._shard import CHECKPOINT_FORMAT
from .partition import partition, shard_range

__all__ = ["gather_checkpoint", "shard_checkpoint", "ROW_KEYS"]

#: state-dict entries split along the class dimension (everything else is replicated)
ROW_KEYS = ("weight", "bias", "class_weight")

StateOrPath = Union[Dict[str, object], str, os.PathLike]


def _load(s: StateOrPath) -> Dict[str, object]:
    return torch.load(s, map_location="cpu", weights_only=True) if isinstance(s, (str, os.PathLike)) else dict(s)


def _save(state, out, overwrite: bool) -> None:
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    torch.save(state, out)


def gather_checkpoint(shards: Sequence[StateOrPath], out: Optional[Union[str, os.PathLike]] = None,
                      overwrite: bool = False) -> Dict[str, object]:
    """Join the P shards (state dicts or paths, any order) into one single-process state dict.

    Checks that the shards come from one run: the same world size and ``num_classes``, every rank
    0..P-1 exactly once, row counts matching the "div" layout. ``out``: also save it there (refuses
    to replace an existing file unless ``overwrite``).

    Examples::

        >>> state = gather_checkpoint([f"head.rank{r}.pt" for r in range(4)])
        >>> FullSoftmax(256, 4_000_000).load_state_dict(state)
    """
    states = [_load(s) for s in shards]
    if not states:
        raise ValueError("shards must hold at least one shard")
    metas = []
    for i, st in enumerate(states):
        meta = st.get("_extra_state")
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"shard {i} is not a vocab-parallel shard (no {CHECKPOINT_FORMAT!r} _extra_state)")
        metas.append(meta)
    P, V = metas[0]["world_size"], metas[0]["num_classes"]
    for i, m in enumerate(metas):
        if (m["world_size"], m["num_classes"]) != (P, V):
            raise ValueError(f"shard {i} was written by world size {m['world_size']} for num_classes={m['num_classes']}, "
                             f"shard 0 by world size {P} for num_classes={V}: not one run")
    ranks = sorted(m["rank"] for m in metas)
    if ranks != list(range(P)):
        raise ValueError(f"shards must hold every rank 0..{P - 1} exactly once, got ranks {ranks}")
    order = sorted(range(len(states)), key=lambda i: metas[i]["rank"])
    sizes = partition(V, P)
    out_state: Dict[str, object] = {}
    for key, val in states[order[0]].items():
        if key == "_extra_state":
            continue
        if key in ROW_KEYS and isinstance(val, Tensor):
            parts = [states[i][key] for i in order]
            for r, t in enumerate(parts):
                if t.shape[0] != sizes[r]:
                    raise ValueError(f"shard of rank {r}: {key} has {t.shape[0]} rows, the 'div' layout of "
                                     f"num_classes={V} over {P} ranks gives it {sizes[r]}")
            out_state[key] = torch.cat(parts, dim=0)
        else:
            out_state[key] = val
    if out is not None:
        _save(out_state, out, overwrite)
    return out_state


def shard_checkpoint(state: StateOrPath, world_size: int, outs: Optional[Sequence[Union[str, os.PathLike]]] = None,
                     overwrite: bool = False, class_weight_sum: Optional[float] = None) -> List[Dict[str, object]]:
    """Split a single-process state dict (or path) onto ``world_size`` ranks: one shard per rank.

    Row tensors (``weight``, ``bias``, ``class_weight``) are split in "div" blocks, everything else is
    copied. ``outs``: also save shard r to ``outs[r]``.
    """
    st = _load(state)
    w = st.get("weight")
    if not isinstance(w, Tensor) or w.dim() < 1:
        raise ValueError("state must hold a 'weight' tensor [V, d] (a single-process head's state dict)")
    V = int(w.shape[0])
    sizes = partition(V, world_size)
    cw = st.get("class_weight")
    cw_sum = float(cw.double().sum()) if isinstance(cw, Tensor) else float(V)
    if class_weight_sum is not None:
        cw_sum = float(class_weight_sum)
    shards = []
    for r in range(world_size):
        s0, s1 = shard_range(V, world_size, r)
        sh = {k: (v[s0:s1].clone() if k in ROW_KEYS and isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == V
                  else v) for k, v in st.items()}
        sh["_extra_state"] = {"format": CHECKPOINT_FORMAT, "num_classes": V, "world_size": world_size, "rank": r,
                              "vocab_start": s0, "vocab_end": s1, "class_weight_sum": cw_sum}
        shards.append(sh)
    if outs is not None:
        if len(outs) != world_size:
            raise ValueError(f"outs must name {world_size} files (one per rank), got {len(outs)}")
        for sh, o in zip(shards, outs):
            _save(sh, o, overwrite)
    return shards

"""One bridge from the eager kernels to ``torch.compile``: a kernel call as an opaque custom op.

The kernels of :mod:`bigsoftmax.ops` (the streaming log-normaliser / cross-entropy, the tree path
kernel) choose their work from the data — rows whose target falls in a vocabulary slice, nodes
visited often enough to be scored by one GEMM, the number of rows a block holds — and loop over
vocabulary slices in Python. Tracing them would unroll every slice into the graph (hundreds of
slices at V = 10^6). Rather than keep a second, traceable copy of every kernel, a compiled graph
calls the *same* eager code through two custom ops:

* ``bigsoftmax::opaque_forward(handle, inputs, present, needs)`` runs ``fn(*inputs)``. When some
  input needs a gradient it runs it with autograd on (on detached inputs) and keeps that small
  autograd graph (the kernel's own saved statistics) under a key returned as an extra int64
  output; otherwise under ``no_grad``.
* its registered backward ``bigsoftmax::opaque_backward`` takes the kept graph back by its key and
  returns ``torch.autograd.grad`` through it: the eager kernel's own backward, no second forward.
  Where the graph is gone (the key tensor was dropped, e.g. a compiler copied it, or a second
  backward) it re-runs ``fn`` under ``enable_grad`` and differentiates that instead — exact too, the
  kernels being deterministic, at the price of one more forward.

So compiled and eager steps give the same numbers at the same cost. A kept graph lives exactly as
long as the key tensor the autograd graph of the compiled step saves (a ``weakref.finalize`` on it
drops the entry), so a forward whose backward never runs leaks nothing once its outputs are freed.
``handle`` is a small int naming a registered ``(fn, fake)`` pair: ``fn(*inputs)`` returns a tuple of
tensors, ``fake(*inputs)`` tensors of the same shapes and dtypes (for tracing). Dense gradients only
(a kernel asked for sparse COO gradients is not routed here).
"""

from __future__ import annotations

import itertools
import weakref
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["register_opaque", "call_opaque", "bound_handle"]

_FNS: Dict[int, Tuple[Callable, Callable]] = {}
_KEYS: Dict[Hashable, int] = {}
_COUNTER = itertools.count(1)


def register_opaque(key: Hashable, fn: Callable, fake: Callable) -> int:
    """The handle of ``(fn, fake)`` under ``key`` (registered on first use; same key, same handle)."""
    h = _KEYS.get(key)
    if h is None:
        h = next(_COUNTER)
        _KEYS[key] = h
        _FNS[h] = (fn, fake)
    return h


def bound_handle(obj, name: str, fn_of: Callable, fake_of: Callable) -> int:
    """A handle for a kernel bound to ``obj`` (a head): ``fn_of(obj)`` / ``fake_of(obj)`` build the pair.

    The object is held weakly; its handle is cached on it, so a compiled graph keeps one constant.
    """
    cache = obj.__dict__.setdefault("_bigsoftmax_opaque", {})
    h = cache.get(name)
    if h is None:
        ref = weakref.ref(obj)

        def fn(*inputs):
            return fn_of(ref())(*inputs)

        def fake(*inputs):
            return fake_of(ref())(*inputs)

        h = register_opaque((id(obj), name, next(_COUNTER)), fn, fake)
        cache[name] = h
        weakref.finalize(obj, _drop, h)
    return h


def _drop(h: int) -> None:
    _FNS.pop(h, None)


def _outs(outs) -> List[Tensor]:
    return list(outs) if isinstance(outs, (tuple, list)) else [outs]


# Optional inputs travel as a List[Tensor] plus a ``present`` mask (an empty placeholder where None):
# the autograd of a custom op sees gradients only through Tensor / Tensor[] arguments.
def _unpack(inputs: List[Tensor], present: List[bool]) -> List[Optional[Tensor]]:
    return [t if p else None for t, p in zip(inputs, present)]


_GRAPHS: Dict[int, Tuple[List[Tensor], List[Optional[Tensor]]]] = {}  # key -> (outputs, inputs) of a kept graph
_GRAPH_KEYS = itertools.count(1)


def _autograd_on():
    """A custom op runs below the autograd dispatch key; the kernel's own autograd needs it back on."""
    exclude = torch._C._dispatch_tls_local_exclude_set().remove(torch._C.DispatchKey.AutogradFunctionality)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


def _run_with_grad(fn, inputs, present, needs):
    xs = [t.detach().requires_grad_(bool(n)) if p else None for t, p, n in zip(inputs, present, needs)]
    with _autograd_on(), torch.enable_grad():
        outs = _outs(fn(*xs))
    return outs, xs


def _no_alias(outs, inputs):
    # outputs of a custom op may not alias its inputs
    return [o.clone() if any(o is t or (o._base is not None and o._base is t) for t in inputs) else o for o in outs]


@torch.library.custom_op("bigsoftmax::opaque_forward", mutates_args=())
def _opaque_forward(handle: int, inputs: List[Tensor], present: List[bool], needs: List[bool]) -> List[Tensor]:
    fn = _FNS[handle][0]
    if not any(needs):
        with torch.no_grad():
            outs = _outs(fn(*_unpack(inputs, present)))
        return _no_alias(outs, inputs) + [torch.zeros(1, dtype=torch.int64)]
    outs, xs = _run_with_grad(fn, inputs, present, needs)
    key = next(_GRAPH_KEYS)
    _GRAPHS[key] = (outs, xs)
    token = torch.full((1,), key, dtype=torch.int64)  # on the CPU: reading it back is no device sync
    weakref.finalize(token, _GRAPHS.pop, key, None)
    return _no_alias([o.detach() for o in outs], inputs) + [token]


@_opaque_forward.register_fake
def _opaque_forward_fake(handle, inputs, present, needs):
    return _outs(_FNS[handle][1](*_unpack(inputs, present))) + [torch.empty(1, dtype=torch.int64, device="cpu")]


@torch.library.custom_op("bigsoftmax::opaque_backward", mutates_args=())
def _opaque_backward(handle: int, inputs: List[Tensor], present: List[bool], needs: List[bool],
                     grads: List[Optional[Tensor]], token: Tensor) -> List[Tensor]:
    kept = _GRAPHS.pop(int(token[0]), None) if token.numel() else None
    outs, xs = kept if kept is not None else _run_with_grad(_FNS[handle][0], inputs, present, needs)
    with _autograd_on(), torch.enable_grad():
        wrt = [x for x, n in zip(xs, needs) if n]
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
                   if pairs and wrt else [None] * len(wrt))
    res = []
    for t, n in zip(inputs, needs):
        if n:
            g = next(got)
            res.append(torch.zeros_like(t) if g is None else g.to_dense() if g.is_sparse else g)
        else:
            res.append(t.new_empty(0))
    return res


@_opaque_backward.register_fake
def _opaque_backward_fake(handle, inputs, present, needs, grads, token):
    return [torch.empty_like(t) if n else t.new_empty(0) for t, n in zip(inputs, needs)]


def _setup_context(ctx, inputs, output):
    handle, ins, present, needs = inputs
    ctx.handle, ctx.present, ctx.needs = handle, list(present), list(needs)
    ctx.save_for_backward(*ins, output[-1])


def _backward(ctx, grads):
    *ins, token = ctx.saved_tensors
    gs = _opaque_backward(ctx.handle, list(ins), ctx.present, ctx.needs, list(grads)[:-1], token)
    return None, [g if n else None for g, n in zip(gs, ctx.needs)], None, None


torch.library.register_autograd("bigsoftmax::opaque_forward", _backward, setup_context=_setup_context)


def call_opaque(handle: int, inputs: Sequence[Optional[Tensor]]) -> List[Tensor]:
    """Run the registered kernel ``handle`` on ``inputs`` as one opaque op (use under ``torch.compile``).

    Floating inputs that require grad get gradients through the kernel's own eager backward.
    """
    present = [t is not None for t in inputs]
    anchor = next(t for t in inputs if t is not None)
    ins = [t if t is not None else anchor.new_empty(0) for t in inputs]
    needs = [t is not None and t.requires_grad and t.dtype.is_floating_point for t in inputs]
    return _opaque_forward(handle, ins, present, needs)[:-1]

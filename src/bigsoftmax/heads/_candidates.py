"""The one candidate component of the heads trained on sampled classes.

:class:`~bigsoftmax.heads.sampled.SamplingHead` (sampled softmax, NCE, …) and
:class:`~bigsoftmax.heads.margin.MarginHead` (``num_sampled=S``, Partial FC) both draw a candidate
set ``(ids, true_expected_count, sampled_expected_count)`` per training step from a
:mod:`bigsoftmax.samplers` sampler with the head's own seeded ``torch.Generator``. The pieces they
share live here, once:

- :func:`build_sampler`: the given sampler (or the head's default), checked against V and S;
- :func:`seeded_generator`: the head's generator (``seed=None``: a seed drawn from torch's global RNG);
- :func:`draw_candidates`: one draw for a batch of labels (per example with a context-dependent
  sampler), then the learned-sampler update, as TF does;
- :class:`CandidateMixin`: ``head.draw(labels, context=None, row_keep=None)`` on
  ``self.sampler``/``self.generator``.

What each head does with the candidates (accidental-hit masking, batch positives, the loss) stays in
the head.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from ..samplers.candidates import update_rows

__all__ = ["build_sampler", "seeded_generator", "generator_on", "draw_candidates", "support_size", "CandidateMixin"]


def support_size(sampler) -> int:
    """Number of classes a sampler can draw (ids with nonzero probability)."""
    return int(getattr(sampler, "num_valid", sampler.range_max))


def build_sampler(sampler: Optional[nn.Module], num_classes: int, num_sampled: int,
                  default: Callable[[int], nn.Module]) -> nn.Module:
    """``sampler`` (or ``default(num_classes)`` when None), checked to draw ``num_sampled`` ids in [0, V).

    Raises ``TypeError`` for an object without ``.sample`` / ``.range_max``; ``ValueError`` when
    ``sampler.range_max != num_classes`` or a ``unique`` sampler cannot draw ``num_sampled`` distinct ids.

    Examples::

        >>> from bigsoftmax import samplers
        >>> build_sampler(None, 1000, 64, lambda v: samplers.LogUniform(v, unique=True)).range_max
        1000
    """
    if sampler is None:
        sampler = default(num_classes)
    if not hasattr(sampler, "sample") or not hasattr(sampler, "range_max"):
        raise TypeError(f"sampler must be a bigsoftmax.samplers sampler (with .sample and .range_max), "
                        f"got {type(sampler).__name__}")
    if sampler.range_max != num_classes:
        raise ValueError(f"sampler.range_max={sampler.range_max} must equal num_classes={num_classes}")
    limit = support_size(sampler)
    if getattr(sampler, "unique", False) and num_sampled > limit:
        raise ValueError(
            f"num_sampled={num_sampled} exceeds the {limit} classes the unique sampler can draw; "
            f"use num_sampled in [1, {limit}] or a sampler with unique=False"
        )
    return sampler


def seeded_generator(seed: Optional[int]) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``; ``None`` draws the seed from torch's global RNG
    (so ``torch.manual_seed`` still makes an unseeded head repeat)."""
    g = torch.Generator()
    g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))
    return g


def draw_candidates(sampler, labels: Tensor, num_sampled: int, generator: torch.Generator, update: bool = True,
                    context: Optional[Tensor] = None, row_keep: Optional[Tensor] = None):
    """Draw ``num_sampled`` candidates for labels [N, num_true]; then, as TF does, let a learned
    sampler count this batch's labels (so they shape the next draws, not this one).

    A context-dependent sampler (``sampler.context_dependent``) gets ``context`` [N] and returns
    per-example candidates ``[N, S]``.

    Args:
        sampler: a :mod:`bigsoftmax.samplers` sampler.
        labels: int64 ``[N, num_true]`` true classes.
        num_sampled: S.
        generator: the ``torch.Generator`` every random draw uses.
        update: call ``sampler.update(labels)`` after the draw (training mode).
        context: int64 ``[N]``, the previous token of each row (context-dependent samplers only).
        row_keep: bool ``[N]`` or None: the rows the learned sampler counts. A head's fixed-shape
            (sync-free) step keeps its ignored rows in the batch (their labels set to class 0) and
            passes its non-ignored rows here, so the sampler learns what the dropping path teaches it.

    Returns:
        ``(sampled_candidates [S] or [N, S], true_expected_count [N, num_true],
        sampled_expected_count [S] or [N, S])``.
    """
    if getattr(sampler, "context_dependent", False):
        out = sampler.sample(labels, num_sampled, generator=generator, context=context)
    else:
        out = sampler.sample(labels, num_sampled, generator=generator)
    if update and hasattr(sampler, "update"):
        update_rows(sampler, labels, row_keep)
    return out


# ----------------------------------------------------------------------------- the draw under torch.compile
# A candidate draw is host-side work by nature (TF's unique rejection loop stops at a data-dependent
# number of draws; learned samplers update Python-side totals), and dynamo cannot trace a draw from a
# torch.Generator. Under torch.compile the draw is therefore one opaque custom op: the graph keeps
# running, the op calls the very same eager code with the head's generator, so a compiled step draws
# exactly the candidates an eager step draws for the same seed. The op reaches the head through an
# integer handle (custom ops take no Python objects); a head registers itself on first compiled use.
_DRAWERS: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()
_NEXT_HANDLE = itertools.count(1)


@torch.library.custom_op("bigsoftmax::draw_candidates", mutates_args=())
def _draw_op(labels: Tensor, handle: int, num_sampled: int, update: bool,
             context: Optional[Tensor], row_keep: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    head = _DRAWERS.get(handle)
    if head is None:
        raise RuntimeError(f"bigsoftmax::draw_candidates: no live head with handle {handle}")
    out = draw_candidates(head.sampler, labels, num_sampled, head.generator, update=update, context=context,
                          row_keep=row_keep)
    # outputs of a custom op may not alias its inputs
    return tuple(t if t is not labels and t is not context else t.clone() for t in out)


@_draw_op.register_fake
def _draw_fake(labels, handle, num_sampled, update, context, row_keep):
    n, t = labels.shape
    shape = (n, num_sampled) if context is not None else (num_sampled,)
    return (labels.new_empty(shape, dtype=torch.long), labels.new_empty((n, t), dtype=torch.float32),
            labels.new_empty(shape, dtype=torch.float32))


def generator_on(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself when it lives on ``device``, else a generator on ``device`` seeded from
    ``generator``'s stream (one 62-bit draw): deterministic, so the same head state moved to the same
    device always continues with the same candidates. A torch.Generator is per device, and a head
    must draw where its weights are (no ids copied host -> device every step, issue 13 item 2)."""
    device = torch.device(device)
    if device.type == "meta" or generator.device == device or (
            device.type == generator.device.type and device.index is None):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


class CandidateMixin:
    """``draw`` for a head holding ``sampler``, ``num_sampled`` and ``generator`` (an ``nn.Module``).

    The generator follows the head's weight across devices (``head.to("cuda")``: see
    :func:`generator_on`), so the draws happen on the head's device; its state is the head's
    ``_extra_state`` in ``state_dict``.
    """

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        gen = self.__dict__.get("generator")
        try:
            w = getattr(self, "weight", None)
        except AttributeError:  # a weight property of a half-built subclass
            w = None
        if isinstance(gen, torch.Generator) and isinstance(w, Tensor):
            self.generator = generator_on(gen, w.device)
        return out

    def draw(self, labels: Tensor, context: Optional[Tensor] = None, row_keep: Optional[Tensor] = None):
        """Draw ``num_sampled`` candidates for labels [N, num_true] with ``self.generator``; the sampler
        learns from the labels (of the rows where ``row_keep`` holds) in training mode (see
        :func:`draw_candidates`). Under ``torch.compile`` the same draw runs as one opaque op
        (``bigsoftmax::draw_candidates``): no graph break, same ids."""
        if torch.compiler.is_compiling():
            return _draw_op(labels, self._draw_handle(), self.num_sampled, self.training, context, row_keep)
        return draw_candidates(self.sampler, labels, self.num_sampled, self.generator, update=self.training,
                               context=context, row_keep=row_keep)

    # ------------------------------------------------------------- the generator in state_dict
    def get_extra_state(self) -> Tensor:
        """The head's candidate stream: the state of ``self.generator`` (a 1-D uint8 tensor), so
        ``load_state_dict`` resumes the very draws the saved head would have made next."""
        return self.generator.get_state()

    def set_extra_state(self, state) -> None:
        if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
            raise RuntimeError(f"{type(self).__name__}: the state_dict's _extra_state must be the head's generator "
                               f"state (a 1-D uint8 tensor from torch.Generator.get_state()), got "
                               f"{type(state).__name__}")
        try:
            state = state.cpu()
            if self.generator.device.type != "cpu" and state.numel() != self.generator.get_state().numel():
                # a CPU head's stream (an older or a CPU checkpoint) loaded into a head on an
                # accelerator: continue it as moving that CPU head here would (generator_on)
                cpu = torch.Generator()
                cpu.set_state(state)
                self.generator = generator_on(cpu, self.generator.device)
            else:
                self.generator.set_state(state)
        except RuntimeError as e:
            raise RuntimeError(f"{type(self).__name__}: the state_dict's _extra_state is not a valid generator state "
                               f"({e})") from None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        key = prefix + "_extra_state"
        # a checkpoint from before the generator was saved (weights only) still loads: the stream goes on
        if type(self).get_extra_state is CandidateMixin.get_extra_state and key not in state_dict \
                and key in missing_keys:
            missing_keys.remove(key)

    @torch.compiler.assume_constant_result
    def _draw_handle(self) -> int:
        h = self.__dict__.get("_bigsoftmax_draw_handle")
        if h is None:
            h = next(_NEXT_HANDLE)
            self.__dict__["_bigsoftmax_draw_handle"] = h
            _DRAWERS[h] = self
        return h

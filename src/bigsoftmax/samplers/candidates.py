"""Candidate samplers with TensorFlow 2.x semantics.

Two faces, one implementation:

* ``nn.Module`` classes :class:`Uniform`, :class:`LogUniform`, :class:`Unigram`,
  :class:`LearnedUnigram` and :class:`All`, all subclasses of :class:`CandidateSampler`. State
  (unigram weights, learned counts) lives in registered buffers, so ``state_dict()`` checkpoints it.
* TF-named functions (``uniform_candidate_sampler``, ``log_uniform_candidate_sampler``,
  ``learned_unigram_candidate_sampler``, ``fixed_unigram_candidate_sampler``,
  ``all_candidate_sampler``) with TF's signature plus a ``generator=`` keyword; each builds the
  matching class and calls :meth:`CandidateSampler.sample`.

Every sampler returns ``(sampled_candidates [S] int64, true_expected_count [B, T] float32,
sampled_expected_count [S] float32)`` on the device of ``true_classes``.

Semantics (``tensorflow/core/kernels/range_sampler.cc``):

* ``unique=False``: ``S`` independent draws from the base distribution ``P``; the expected count
  of a class ``c`` is ``S * P(c)``.
* ``unique=True``: draw with replacement, in order, until ``S`` distinct ids have been seen; the
  result is the distinct ids in order of first appearance. With ``n`` = the number of draws made
  up to and including the one that produced the ``S``-th distinct id ("num_tries"), the expected
  count is ``1 - (1 - P(c))**n = -expm1(n * log1p(-P(c)))`` -- except when ``n == S`` (no
  repeat happened), where TF returns ``S * P(c)``; we do the same.

Randomness: ``generator`` (a ``torch.Generator``) if given, else a fresh generator seeded with
``seed`` (TF functions only), else torch's global default generator (so ``torch.manual_seed``
makes a whole program reproducible). Random numbers are drawn on the generator's device (CPU
by default) and the results are moved to the device of ``true_classes``.

Cost per call: O(S) draws for uniform / log-uniform (closed-form inverse CDF), O(S log V) for the
unigram samplers (``torch.searchsorted`` on a float64 cumulative array built once; a Fenwick tree
for learned counts, updated in O(B T log V)). ``unique=True`` adds a sort-based de-duplication of
the draws, O(n log n) with n ~ num_tries. Nothing per call is O(V) except ``probs()``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
from collections import namedtuple
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._docs import fill_doc
from .._validate import check_bool as _check_bool
from .._validate import check_class_ids as _check_ids
from .._validate import check_generator as _check_generator
from .._validate import check_int_strict as _check_int
from .._validate import check_tf_range_max as _check_tf_range_max
from .._validate import check_true_classes as _check_true_classes
from .._validate import sync_free

__all__ = [
    "CandidateSamples",
    "CandidateSampler",
    "Uniform",
    "LogUniform",
    "Unigram",
    "LearnedUnigram",
    "All",
    "uniform_candidate_sampler",
    "log_uniform_candidate_sampler",
    "learned_unigram_candidate_sampler",
    "fixed_unigram_candidate_sampler",
    "all_candidate_sampler",
    "expected_count",
    "log_uniform_prob",
    "log_uniform_draw",
    "inverse_cdf",
    "inverse_cdf_draw",
    "unique_by_rejection",
    "first_occurrence",
    "update_rows",
    "fenwick_build",
    "fenwick_add",
    "fenwick_search",
    "read_vocab_file",
]

#: the triple every sampler returns (a tuple, so ``a, b, c = sampler.sample(...)`` works)
CandidateSamples = namedtuple(
    "CandidateSamples", ["sampled_candidates", "true_expected_count", "sampled_expected_count"]
)


# --------------------------------------------------------------------------------------------
# seeding (the argument checks live in bigsoftmax._validate)
# --------------------------------------------------------------------------------------------


def _generator_from(seed, generator) -> Optional[torch.Generator]:
    """TF functions: ``generator`` wins; else a fresh generator seeded with ``seed``; else None."""
    if generator is not None:
        return _check_generator(generator)
    if seed is None:
        return None
    s = _check_int("seed", seed, -(2**63), 2**64 - 1)
    g = torch.Generator()
    g.manual_seed(s)
    return g


def _gen_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------
# math (stateless)
# --------------------------------------------------------------------------------------------
def expected_count(prob: Tensor, num_sampled: int, num_tries: int) -> Tensor:
    """TF's ``ExpectedCountHelper``: the expected number of times a class appears in a sample.

    ``prob``: per-draw probabilities P(c), any shape (float64 recommended).
    Returns ``num_sampled * P(c)`` when ``num_tries == num_sampled`` (always the case for
    ``unique=False``), else ``1 - (1 - P(c))**num_tries`` computed as
    ``-expm1(num_tries * log1p(-P(c)))`` (exact 1 for P(c) = 1, 0 for P(c) = 0).
    """
    if isinstance(num_tries, Tensor):  # a device count (the sync-free unique draw): the same choice, on device
        tries = num_tries.to(device=prob.device, dtype=prob.dtype)
        return torch.where(num_tries.to(prob.device) == num_sampled, prob * num_sampled,
                           -torch.expm1(tries * torch.log1p(-prob)))
    if num_tries == num_sampled:
        return prob * num_sampled
    return -torch.expm1(num_tries * torch.log1p(-prob))


def log_uniform_prob(ids: Tensor, range_max: int) -> Tensor:
    """Log-uniform (Zipfian) per-draw probability, float64, same shape as ``ids``:

    ``P(c) = (log(c + 2) - log(c + 1)) / log(range_max + 1) = log1p(1 / (c + 1)) / log1p(range_max)``.
    """
    c = ids.to(torch.float64)
    return torch.log1p(1.0 / (c + 1.0)) / math.log1p(range_max)


def log_uniform_draw(n: int, range_max: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` i.i.d. log-uniform ids [n] int64 by the closed-form inverse CDF (as TF):

    ``c = floor(exp(u * log(range_max + 1))) - 1`` with ``u ~ U[0, 1)`` in float64, clamped to
    [0, range_max) against round-off.
    """
    u = torch.rand(n, dtype=torch.float64, generator=generator, device=_gen_device(generator))
    c = torch.floor(torch.exp(u * math.log1p(range_max))) - 1.0
    return c.clamp_(0, range_max - 1).long()


def inverse_cdf_draw(cdf: Tensor, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` i.i.d. draws [n] int64 from the weights whose inclusive cumulative sum is ``cdf`` [V].

    ``x = u * total`` (u ~ U[0, 1), float64, kept strictly below ``total``), id = the first index
    with ``cdf[id] > x`` (``torch.searchsorted(..., right=True)``): O(n log V). Zero-weight ids are
    never returned.
    """
    u = torch.rand(n, dtype=torch.float64, generator=generator, device=_gen_device(generator)).to(cdf.device)
    return inverse_cdf(cdf, u)


def inverse_cdf(cdf: Tensor, u: Tensor) -> Tensor:
    """The ids of uniforms ``u`` (float64 in [0, 1), any shape) under the inclusive cumulative
    weights ``cdf`` [V]: the first index with ``cdf[id] > u * total`` (``x`` kept strictly below the
    total against round-off). Zero-weight ids are never returned."""
    total = cdf[-1]
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True)


def unique_by_rejection(draw: Callable[[int], Tensor], num_sampled: int) -> Tuple[Tensor, int]:
    """TF's unique sampling, vectorised: i.i.d. draws until ``num_sampled`` distinct ids appear.

    ``draw(m)`` returns ``m`` fresh i.i.d. ids. Draws are made in batches (first 2 S, then doubling
    the total), de-duplicated with a stable first-occurrence pass (``torch.unique`` +
    ``scatter_reduce('amin')`` of draw positions), and the loop continues only while fewer than S
    distinct ids have been seen. Returns ``(ids [S] in order of first appearance, num_tries)`` where
    ``num_tries`` = 1 + the position of the draw that produced the S-th distinct id -- surplus draws
    of the last batch are discarded and not counted, so the result is exactly what a sequential
    draw-until-S-distinct loop over the same stream would give.

    When :func:`bigsoftmax._validate.sync_free` (accelerators, compile) there is no loop: one block
    of ``UNIQUE_BLOCK · S`` draws (the loop's stream) is ranked on device and ``num_tries`` comes
    back as a 0-d device tensor (see :func:`_unique_first_in_block`): no host sync.
    """
    draws = draw(2 * num_sampled)
    if sync_free(draws):
        return _unique_first_in_block(torch.cat([draws, draw((UNIQUE_BLOCK - 2) * num_sampled)]), num_sampled)
    while True:
        uniq, inv = torch.unique(draws, return_inverse=True)
        if uniq.numel() >= num_sampled:
            break
        draws = torch.cat([draws, draw(draws.numel())])
    n = draws.numel()
    pos = torch.arange(n, device=draws.device)
    first = torch.full((uniq.numel(),), n, dtype=torch.long, device=draws.device)
    first = first.scatter_reduce_(0, inv, pos, reduce="amin", include_self=True)
    first = torch.sort(first).values[:num_sampled]
    return draws[first], int(first[-1]) + 1


#: the sync-free unique draw (:func:`unique_by_rejection` on an accelerator / under compile) draws
#: this many times ``num_sampled`` ids in one block
UNIQUE_BLOCK = 32


def first_occurrence(ids: Tensor) -> Tensor:
    """Where each value of ``ids`` occurs for the first time along the last dimension: a bool tensor
    of ``ids``' shape. Fixed shapes, no host read (a stable sort, a neighbour comparison, a scatter
    back), so it serves the sync-free paths where ``torch.unique`` would read the device.

    Shape:
        - ids: :math:`(*, M)` integer; output: :math:`(*, M)` bool.

    Examples::

        >>> first_occurrence(torch.tensor([5, 3, 5, 7, 3]))
        tensor([ True,  True, False,  True, False])
    """
    sorted_ids, order = torch.sort(ids, dim=-1, stable=True)
    new = torch.ones_like(sorted_ids, dtype=torch.bool)
    new[..., 1:] = sorted_ids[..., 1:] != sorted_ids[..., :-1]
    return torch.zeros_like(new).scatter_(-1, order, new)


def _unique_first_in_block(draws: Tensor, num_sampled: int) -> Tuple[Tensor, Tensor]:
    """The first ``num_sampled`` distinct ids of ``draws`` [M] in draw order, and ``num_tries`` = 1 +
    the position of the S-th distinct one, as a 0-d device tensor: no host sync, fixed shapes.

    A stable sort finds each value's first occurrence, a cumsum over the draw order ranks the
    first occurrences, and a scatter puts the ranks 1..S into the S slots. On the same stream this
    is exactly :func:`unique_by_rejection`'s sequential result whenever the block holds S distinct
    ids (it costs one sort of M = ``UNIQUE_BLOCK`` · S draws instead of the loop's ~2 S). A block
    with fewer than S distinct ids (an S close to the number of classes with nonzero probability,
    or a very peaked distribution) fails a device assert rather than return a wrong sample.
    """
    S, M = num_sampled, draws.numel()
    first = first_occurrence(draws)  # first occurrence of its value, in draw order
    rank = first.long().cumsum(0)  # 1-based rank of the distinct ids (at their first occurrence)
    slot = torch.where(first & (rank <= S), rank - 1, torch.full_like(rank, S))
    ids = draws.new_zeros(S + 1).scatter_(0, slot, draws)[:S]
    pos = torch.arange(M, device=draws.device)
    num_tries = torch.where(first & (rank == S), pos, torch.zeros_like(pos)).amax() + 1
    torch._assert_async(rank[-1] >= S, f"unique candidate sampling: fewer than num_sampled={S} distinct ids in a "
                                       f"block of {M} draws (raise samplers.candidates.UNIQUE_BLOCK or lower num_sampled)")
    return ids, num_tries


def _check_update_mask(mask: Optional[Tensor], true_classes: Tensor) -> Optional[Tensor]:
    """``mask`` of :meth:`CandidateSampler.update`: None, or a bool tensor ``[N]`` (``true_classes``' rows)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool torch.Tensor of shape [N] (one flag per row of true_classes), got "
                        f"{type(mask).__name__ if not isinstance(mask, Tensor) else mask.dtype}")
    n = true_classes.shape[0] if true_classes.dim() else 1
    if tuple(mask.shape) != (n,):
        raise ValueError(f"mask must have shape [{n}] (one flag per row of true_classes), got {tuple(mask.shape)}")
    return mask


def update_rows(sampler, true_classes: Tensor, mask: Optional[Tensor] = None) -> None:
    """``sampler.update(true_classes)`` counting only the rows where ``mask`` [N] holds (all rows
    for None). A sampler whose ``update`` takes ``mask=`` (every sampler here) gets it as is, in
    fixed shapes; one with ``update(true_classes)`` only (a user's) gets ``true_classes[mask]``
    (a host read on an accelerator, the same counts).

    Examples::

        >>> s = LearnedUnigram(10)
        >>> update_rows(s, torch.tensor([[4], [5]]), mask=torch.tensor([True, False]))
        >>> s.counts[4].item(), s.counts[5].item()
        (2, 1)
    """
    if mask is None:
        sampler.update(true_classes)
    elif _takes_mask(sampler.update):
        sampler.update(true_classes, mask=mask)
    else:
        sampler.update(true_classes[mask])


def _takes_mask(update) -> bool:
    try:
        return "mask" in inspect.signature(update).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def fenwick_build(counts: Tensor) -> Tensor:
    """Fenwick (binary indexed) tree of integer ``counts`` [V] -> tree [V + 1] (index 0 unused).

    ``tree[i] = sum(counts[i - lowbit(i) : i])`` (1-based), built in O(V) from one cumsum.
    """
    v = counts.numel()
    csum = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    i = torch.arange(1, v + 1, device=counts.device)
    tree = counts.new_zeros(v + 1)
    tree[1:] = csum[i] - csum[i - (i & -i)]
    return tree


def fenwick_add(tree: Tensor, ids: Tensor, delta: Union[int, Tensor] = 1) -> None:
    """Add ``delta`` (an int, or one integer per id) to the counts of ``ids`` (0-based, repeats
    allowed) in place: O(len(ids) log V).

    A fixed ``bit_length(V) + 1`` rounds of one ``index_add_`` each (an index's lowest set bit
    doubles every round, so by then every index has left the tree); indices already past the end
    add 0 to the unused slot 0. Fixed shapes, no host read.
    """
    v = tree.numel() - 1
    i = ids.reshape(-1).to(tree.device) + 1
    if isinstance(delta, Tensor):
        d = delta.reshape(-1).to(device=tree.device, dtype=tree.dtype).expand(i.shape)
    else:
        d = torch.full_like(i, delta, dtype=tree.dtype)
    zero = torch.zeros((), dtype=tree.dtype, device=tree.device)
    for _ in range(v.bit_length() + 1):
        live = i <= v
        tree.index_add_(0, torch.where(live, i, torch.zeros_like(i)), torch.where(live, d, zero))
        i = i + (i & -i)


def fenwick_search(tree: Tensor, r: Tensor) -> Tensor:
    """For each target ``r`` in [0, total), the 0-based id c with ``prefix(c) <= r < prefix(c + 1)``.

    Vectorised binary descent over the tree: O(len(r) log V). With ``r ~ U{0..total-1}`` this draws
    id c with probability ``counts[c] / total``.
    """
    v = tree.numel() - 1
    pos = torch.zeros_like(r)
    rem = r.clone()
    step = 1 << (v.bit_length() - 1)
    while step:
        nxt = pos + step
        val = tree[nxt.clamp(max=v)]
        take = (nxt <= v) & (val <= rem)
        pos = torch.where(take, nxt, pos)
        rem = torch.where(take, rem - val, rem)
        step >>= 1
    return pos


def read_vocab_file(vocab_file: Union[str, os.PathLike]) -> list:
    """Weights from a TF vocabulary file: one id per line (CSV-like), the LAST field is the count.

    As TF's ``FixedUnigramSampler::LoadFromFile``: every line is an id (line i -> id
    ``num_reserved_ids + i``) and must end in a number; a line that does not (a blank line
    included) is an error. Returns a list of floats.
    """
    path = os.fspath(vocab_file)
    if not os.path.isfile(path):
        raise ValueError(f"vocab_file {path!r} does not exist or is not a file")
    out = []
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"vocab_file {path!r} is not a UTF-8 text file (byte {e.start} cannot be decoded); "
                         "it must hold one id per line whose last comma-separated field is the count") from None
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if "\x00" in "".join(lines[:1000]):
        raise ValueError(f"vocab_file {path!r} contains NUL bytes: it is a binary file, not a text vocabulary")
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\n").rstrip("\r")
        last = line.split(",")[-1]
        try:
            out.append(float(last))
        except ValueError:
            raise ValueError(
                f"vocab_file {path!r} line {lineno}: the last comma-separated field must be a number "
                f"(the count), got {line!r}"
            ) from None
    return out


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------
def _rebuild_after_load(module, incompatible_keys) -> None:
    """``load_state_dict`` post-hook: derived tables (CDF, Fenwick tree) follow the loaded state."""
    module._rebuild()


@fill_doc
class CandidateSampler(nn.Module):
    r"""Base class: draws ``num_sampled`` candidate ids from a base distribution P over [0, range_max).

    Subclasses give ``_draw(n, generator) -> [n] int64`` (i.i.d. draws from P) and
    ``_prob64(ids) -> float64`` (P(c)), and ``num_valid`` (classes with P(c) > 0).

    Attributes: ``range_max`` (V), ``unique``.
    Methods: :meth:`sample` (= ``forward``), :meth:`log_prob`, :meth:`probs`, :meth:`update`.

    float64 buffers (unigram weights, CDFs) keep float64 under ``module.float()`` / ``.half()``
    (they follow device moves only): the sampling tables are not model parameters.

    Expected counts are TF's: :math:`E(c) = S \cdot P(c)` with replacement, and
    :math:`E(c) = 1 - (1 - P(c))^{n}` after ``n = num_tries`` draws with ``unique=True``.

    Args:
        range_max: V, the number of classes (int >= 1).
        unique: draw distinct ids (rejection sampling, as TF).

    Shape:
        {sampler_shape}

    Examples::

        >>> s = bigsoftmax.samplers.LogUniform(1000, unique=True)
        >>> ids, true_exp, samp_exp = s.sample(torch.tensor([[3], [7]]), 64, torch.Generator().manual_seed(0))
        >>> ids.shape, true_exp.shape
        (torch.Size([64]), torch.Size([2, 1]))
    """

    def __init__(self, range_max: int, unique: bool = True):
        super().__init__()
        self.range_max = _check_int("range_max", range_max, 1)
        self.unique = _check_bool("unique", unique)

    # -- subclass hooks ------------------------------------------------------------------
    def _draw(self, n: int, generator: Optional[torch.Generator]) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _prob64(self, ids: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    @property
    def num_valid(self) -> int:
        """Number of classes with nonzero probability (upper bound on num_sampled when unique)."""
        return self.range_max

    def _device(self, default: Optional[torch.device] = None) -> torch.device:
        """The device of the sampling tables; a sampler without any (``LogUniform``, ``Uniform``)
        works where ``default`` is (the draws' device), else on CPU."""
        for b in self.buffers():
            return b.device
        return default if default is not None else torch.device("cpu")

    def _apply(self, fn, recurse=True):
        # keep float64 sampling tables in float64 when a parent module is cast (model.float())
        keep = {k: b for k, b in self._buffers.items() if b is not None and b.dtype == torch.float64}
        out = super()._apply(fn, recurse)
        for k, old in keep.items():
            new = self._buffers[k]
            if new is not None and new.dtype != torch.float64:
                self._buffers[k] = old.to(device=new.device)
        return out

    # -- public API ----------------------------------------------------------------------
    def _check_num_sampled(self, num_sampled) -> int:
        s = _check_int("num_sampled", num_sampled, 1)
        if self.unique and s > self.num_valid:
            raise ValueError(
                f"num_sampled ({s}) must be <= {self.num_valid}, the number of classes with nonzero "
                f"probability in the range [0, {self.range_max}), when unique=True"
            )
        return s

    @torch.no_grad()
    def sample(self, true_classes: Tensor, num_sampled: int, generator: Optional[torch.Generator] = None) -> CandidateSamples:
        """Draw candidates. true_classes [B, T] int64 ids in [0, range_max); num_sampled S >= 1.

        Returns :class:`CandidateSamples` ``(sampled_candidates [S] int64, true_expected_count
        [B, T] float32, sampled_expected_count [S] float32)`` on ``true_classes.device``; see the
        module docstring for the expected-count formulas. Never updates learned state (call
        :meth:`update` for that).
        """
        tc = _check_true_classes(true_classes, self.range_max)
        s = self._check_num_sampled(num_sampled)
        gen = _check_generator(generator)
        if self.unique:
            ids, num_tries = unique_by_rejection(lambda m: self._draw(m, gen), s)
        else:
            ids, num_tries = self._draw(s, gen), s
        dev = self._device(ids.device)  # table-free samplers compute where the head's generator drew
        ids = ids.to(dev)
        sampled_ec = expected_count(self._prob64(ids), s, num_tries)
        true_ec = expected_count(self._prob64(tc.to(dev).reshape(-1)), s, num_tries)
        out_dev = tc.device
        return CandidateSamples(
            ids.to(out_dev),
            true_ec.to(torch.float32).reshape(tc.shape).to(out_dev),
            sampled_ec.to(torch.float32).to(out_dev),
        )

    def forward(self, true_classes: Tensor, num_sampled: int, generator: Optional[torch.Generator] = None) -> CandidateSamples:
        """Same as :meth:`sample`."""
        return self.sample(true_classes, num_sampled, generator)

    @torch.no_grad()
    def log_prob(self, ids: Tensor) -> Tensor:
        """log P(c), the per-draw log-probability, float32, same shape/device as ``ids``.

        (-inf for classes with probability 0, e.g. reserved ids.)"""
        i = _check_ids(ids, self.range_max, "ids")
        return torch.log(self._prob64(i.to(self._device()))).to(torch.float32).to(ids.device)

    @torch.no_grad()
    def probs(self) -> Tensor:
        """P over all classes: [range_max] float32 (O(V); for inspection and tests)."""
        dev = self._device()
        return self._prob64(torch.arange(self.range_max, device=dev)).to(torch.float32)

    def update(self, true_classes: Tensor, mask: Optional[Tensor] = None) -> None:
        """Record observed classes (learned samplers only; a validated no-op here).

        Args:
            true_classes: int64 ``[N, num_true]`` (or any shape) class ids.
            mask: optional bool ``[N]``: count only the rows where it holds (a head's fixed-shape
                step passes its non-ignored rows here instead of dropping them beforehand).
        """
        _check_ids(true_classes, self.range_max, "true_classes")
        _check_update_mask(mask, true_classes)

    def extra_repr(self) -> str:
        return f"range_max={self.range_max}, unique={self.unique}"


@fill_doc
class Uniform(CandidateSampler):
    """Uniform base distribution: ``P(c) = 1 / range_max``. Draws: O(S) ``torch.randint``.

    Args:
        range_max: V. unique: draw distinct ids.

    Shape:
        {sampler_shape}

    Examples::

        >>> ids, _, _ = Uniform(100).sample(torch.tensor([[1]]), 10, torch.Generator().manual_seed(0))
    """

    def _draw(self, n, generator):
        return torch.randint(self.range_max, (n,), generator=generator, device=_gen_device(generator))

    def _prob64(self, ids):
        return torch.full(ids.shape, 1.0 / self.range_max, dtype=torch.float64, device=ids.device)


@fill_doc
class LogUniform(CandidateSampler):
    """Log-uniform (Zipfian) base distribution, for frequency-sorted ids (0 = most frequent):

    ``P(c) = (log(c + 2) - log(c + 1)) / log(range_max + 1)``. Draws: O(S) closed-form inverse CDF.

    Args:
        range_max: V. unique: draw distinct ids.

    Shape:
        {sampler_shape}

    Examples::

        >>> s = LogUniform(1000)
        >>> bool(s.probs()[0] > s.probs()[999])
        True
    """

    def _draw(self, n, generator):
        return log_uniform_draw(n, self.range_max, generator)

    def _prob64(self, ids):
        return log_uniform_prob(ids, self.range_max)


@fill_doc
class Unigram(CandidateSampler):
    """Fixed unigram base distribution (TF ``fixed_unigram_candidate_sampler``).

    ``weights_or_counts`` [K]: non-negative finite counts or probabilities of the ids
    ``num_reserved_ids, ..., num_reserved_ids + K - 1`` (TF's ``unigrams``; the reserved ids
    ``0 .. num_reserved_ids - 1`` come first with probability 0). Each weight is raised to
    ``distortion`` (``w ** distortion``; 1 = the unigram, 0 = uniform over the non-reserved ids,
    since 0 ** 0 = 1 as in TF). Then ``P(c) = w_c / sum(w)``.

    Sharding (as TF): only the global ids ``g`` with ``g % num_shards == shard`` are kept, and the
    sampler works in SHARD-LOCAL ids: local id ``j`` is global id ``shard + j * num_shards``
    (:meth:`to_global` converts); ``range_max`` is the number of ids in this shard, and
    ``true_classes`` / returned ids are local. (TF's C++ numbers the unigram entries from the
    count of reserved ids kept in the shard instead of from ``num_reserved_ids``, which shifts the
    mapping when both ``num_shards > 1`` and ``num_reserved_ids > 0``; we use the consistent
    global numbering above.)

    Draws: inverse CDF, ``torch.searchsorted`` on a float64 cumulative array built once: O(S log V).
    Buffer ``weights`` [range_max] float64 (the distorted shard weights) is checkpointed.

    Args:
        weights_or_counts: ``[K]`` counts or probabilities (>= 0, finite).
        distortion: exponent of the weights (0.75: word2vec's noise).
        unique: draw distinct ids.
        num_reserved_ids: ids ``0 .. num_reserved_ids - 1`` with probability 0 before the weights.
        num_shards, shard: keep the global ids ``g % num_shards == shard`` (shard-local ids).

    Shape:
        {sampler_shape}

    Examples::

        >>> s = Unigram([10.0, 5.0, 1.0, 0.0], distortion=0.75, unique=False)
        >>> ids, _, _ = s.sample(torch.tensor([[0]]), 8, torch.Generator().manual_seed(0))
        >>> bool((ids != 3).all())   # zero weight: never drawn
        True
    """

    def __init__(
        self,
        weights_or_counts: Union[Tensor, Sequence[float]],
        distortion: float = 1.0,
        unique: bool = True,
        num_reserved_ids: int = 0,
        num_shards: int = 1,
        shard: int = 0,
    ):
        if isinstance(weights_or_counts, (str, bytes)):
            raise TypeError("weights_or_counts must be a sequence or tensor of numbers; use Unigram.from_vocab_file for a file")
        try:
            w = torch.as_tensor(weights_or_counts, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"weights_or_counts must be a 1-D sequence or tensor of numbers ({e})") from None
        if w.dim() != 1 or w.numel() == 0:
            raise ValueError(f"weights_or_counts must be a non-empty 1-D sequence, got shape {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weights_or_counts must be finite (found nan or inf)")
        if bool((w < 0).any()):
            raise ValueError(f"weights_or_counts must be >= 0, found {float(w.min())}")
        if isinstance(distortion, bool) or not isinstance(distortion, numbers.Real):
            raise TypeError(f"distortion must be a float, got {type(distortion).__name__}")
        distortion = float(distortion)
        if not math.isfinite(distortion) or distortion < 0:
            raise ValueError(f"distortion must be a finite float >= 0, got {distortion}")
        num_reserved_ids = _check_int("num_reserved_ids", num_reserved_ids, 0)
        num_shards = _check_int("num_shards", num_shards, 1)
        shard = _check_int("shard", shard, 0, num_shards - 1)
        full = torch.cat([torch.zeros(num_reserved_ids, dtype=torch.float64), w.pow(distortion)])
        local = full[shard::num_shards].contiguous()
        if local.numel() == 0 or not bool((local > 0).any()):
            raise ValueError(
                f"weights_or_counts gives no class with positive weight in shard {shard} of {num_shards} "
                f"(num_reserved_ids={num_reserved_ids}); nothing can be sampled"
            )
        super().__init__(local.numel(), unique)
        self.distortion = distortion
        self.num_reserved_ids = num_reserved_ids
        self.num_shards = num_shards
        self.shard = shard
        self.register_buffer("weights", local)
        self.register_buffer("_cdf", torch.empty(0, dtype=torch.float64), persistent=False)
        self._num_valid = 0
        self._rebuild()
        self.register_load_state_dict_post_hook(_rebuild_after_load)

    @classmethod
    def from_vocab_file(cls, vocab_file: Union[str, os.PathLike], **kwargs) -> "Unigram":
        """Build from a TF vocabulary file (see :func:`read_vocab_file`); kwargs as the constructor."""
        return cls(read_vocab_file(vocab_file), **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # validate before anything is copied: a bad state dict leaves the sampler as it was
        w = state_dict.get(prefix + "weights")
        if isinstance(w, Tensor):
            if tuple(w.shape) != (self.range_max,):
                raise ValueError(f"Unigram weights must have shape [{self.range_max}] (range_max), got {tuple(w.shape)}")
            self._check_weights(w)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _check_weights(w: Tensor) -> None:
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool((w > 0).any()):
            raise ValueError("Unigram weights must be finite, >= 0 and not all zero")

    def _rebuild(self) -> None:
        """Recompute the CDF and support size from ``weights`` (after loading a state dict)."""
        w = self.weights
        self._check_weights(w)
        self._cdf = torch.cumsum(w, 0)
        self._num_valid = int((w > 0).sum())

    @property
    def num_valid(self) -> int:
        return self._num_valid

    def to_global(self, ids: Tensor) -> Tensor:
        """Shard-local ids -> global ids ``shard + ids * num_shards``."""
        return ids * self.num_shards + self.shard

    def _draw(self, n, generator):
        return inverse_cdf_draw(self._cdf, n, generator)

    def _prob64(self, ids):
        return self.weights[ids] / self._cdf[-1]

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", distortion={self.distortion}"
        if self.num_reserved_ids:
            s += f", num_reserved_ids={self.num_reserved_ids}"
        if self.num_shards > 1:
            s += f", num_shards={self.num_shards}, shard={self.shard}"
        return s


@fill_doc
class LearnedUnigram(CandidateSampler):
    """Unigram distribution over the classes seen so far (TF ``learned_unigram_candidate_sampler``).

    Every class starts with count 1 (TF's ``WeightedPicker`` initial weight) and :meth:`update`
    adds 1 per occurrence: ``P(c) = counts[c] / sum(counts)``. TF's op samples first and then
    updates with the batch's true classes; here :meth:`sample` never updates -- call
    ``sampler.update(true_classes)`` after ``sample`` to reproduce TF's order.

    Counts live in a Fenwick tree (as TF's tree-structured ``WeightedPicker``): ``update`` is
    O(B T log V) and a draw O(log V) -- exact at every step, no periodic O(V) rebuild. Buffer
    ``counts`` [V] int64 is checkpointed (TF's is not); the tree is rebuilt on ``load_state_dict``.

    Args:
        range_max: V (< 2**31 - 1, TF's limit). unique: draw distinct ids.

    Shape:
        {sampler_shape}

    Examples::

        >>> s = LearnedUnigram(100)
        >>> y = torch.tensor([[4], [4]])
        >>> out = s.sample(y, 10, torch.Generator().manual_seed(0)); s.update(y)
        >>> int(s.counts[4])
        3
    """

    def __init__(self, range_max: int, unique: bool = True):
        super().__init__(_check_tf_range_max(range_max), unique)
        self.register_buffer("counts", torch.ones(self.range_max, dtype=torch.long))
        self.register_buffer("_tree", torch.empty(0, dtype=torch.long), persistent=False)
        self._total = 0
        self._num_valid = self.range_max
        self._rebuild()
        self.register_load_state_dict_post_hook(_rebuild_after_load)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # validate before anything is copied: a bad state dict leaves the sampler as it was
        counts = state_dict.get(prefix + "counts")
        if isinstance(counts, Tensor):
            self._check_counts(counts)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_counts(self, counts: Tensor) -> None:
        if tuple(counts.shape) != (self.range_max,) or counts.dtype.is_floating_point or counts.dtype == torch.bool:
            raise ValueError(f"LearnedUnigram counts must be an integer tensor of shape [{self.range_max}] (range_max), "
                             f"got shape {tuple(counts.shape)} dtype {counts.dtype}")
        if bool((counts < 0).any()) or int(counts.sum()) <= 0:
            raise ValueError("LearnedUnigram counts must be >= 0 and not all zero")

    def _rebuild(self) -> None:
        """Recompute the Fenwick tree and total from ``counts`` (after loading a state dict)."""
        self._check_counts(self.counts)
        self._tree = fenwick_build(self.counts)
        self._total = int(self.counts.sum())
        self._num_valid = int((self.counts > 0).sum())

    @property
    def num_valid(self) -> int:
        return self._num_valid

    @torch.no_grad()
    def update(self, true_classes: Tensor, mask: Optional[Tensor] = None) -> None:
        """Add 1 to the count of every id in ``true_classes`` (any shape, repeats count); with a bool
        ``mask`` [N], only of the rows ``true_classes[mask]`` (a head's ignored rows count nothing).

        Fixed shapes throughout; with a ``mask`` the new total is one host read (``int(mask.sum())``:
        the draws' ``randint`` bound is a Python int), the one host sync of a training step with this
        sampler on an accelerator."""
        ids = _check_ids(true_classes, self.range_max, "true_classes")
        dev = self.counts.device
        if _check_update_mask(mask, true_classes) is not None:
            w = mask.to(dev).reshape(-1, *([1] * (ids.dim() - 1))).expand(ids.shape).reshape(-1).long()
        else:
            w = None
        ids = ids.reshape(-1).to(dev)
        if ids.numel() == 0:
            return
        if self._num_valid < self.range_max:  # only after loading counts with zeros
            new = self.counts[ids] == 0
            self._num_valid += int(torch.unique(ids[new if w is None else new & w.bool()]).numel())
        self.counts.index_add_(0, ids, torch.ones_like(ids) if w is None else w)
        fenwick_add(self._tree, ids, 1 if w is None else w)
        self._total += ids.numel() if w is None else int(w.sum())

    def _draw(self, n, generator):
        r = torch.randint(self._total, (n,), generator=generator, device=_gen_device(generator))
        return fenwick_search(self._tree, r.to(self._tree.device))

    def _prob64(self, ids):
        return self.counts[ids].to(torch.float64) / self._total


@fill_doc
class All(CandidateSampler):
    """Every class, deterministically (TF ``all_candidate_sampler``; for testing).

    ``sample(true_classes, num_sampled)`` requires ``num_sampled == range_max`` and returns
    ``arange(range_max)`` with every expected count (true and sampled) equal to 1.
    ``probs()`` / ``log_prob`` report the uniform 1 / range_max (TF defines no per-draw
    probability for this sampler).

    Args:
        range_max: V (= the ``num_sampled`` every call must ask for).

    Shape:
        {sampler_shape}

    Examples::

        >>> All(5).sample(torch.tensor([[1]]), 5)[0]
        tensor([0, 1, 2, 3, 4])
    """

    def __init__(self, range_max: int):
        super().__init__(range_max, unique=True)

    def _prob64(self, ids):
        return torch.full(ids.shape, 1.0 / self.range_max, dtype=torch.float64, device=ids.device)

    def _draw(self, n, generator):  # never used: sample is deterministic
        raise NotImplementedError("All draws nothing at random")

    @torch.no_grad()
    def sample(self, true_classes: Tensor, num_sampled: int, generator: Optional[torch.Generator] = None) -> CandidateSamples:
        tc = _check_true_classes(true_classes, self.range_max)
        s = _check_int("num_sampled", num_sampled, 1)
        if s != self.range_max:
            raise ValueError(f"num_sampled ({s}) must equal range_max ({self.range_max}) for the All sampler")
        _check_generator(generator)
        dev = tc.device
        return CandidateSamples(
            torch.arange(s, device=dev),
            torch.ones(tc.shape, dtype=torch.float32, device=dev),
            torch.ones(s, dtype=torch.float32, device=dev),
        )


# --------------------------------------------------------------------------------------------
# TF-named functions (thin wrappers over the classes)
# --------------------------------------------------------------------------------------------
def _tf_call(sampler: CandidateSampler, true_classes, num_true, num_sampled, seed, generator) -> CandidateSamples:
    num_true = _check_int("num_true", num_true, 1)
    if isinstance(true_classes, (list, tuple)) or type(true_classes).__module__ == "numpy":
        true_classes = torch.as_tensor(true_classes)  # array-likes, as TF converts them
    tc = _check_true_classes(true_classes, sampler.range_max, num_true)
    return sampler.sample(tc, num_sampled, _generator_from(seed, generator))


@fill_doc
def uniform_candidate_sampler(true_classes, num_true, num_sampled, unique, range_max, seed=None, generator=None) -> CandidateSamples:
    """``tf.random.uniform_candidate_sampler``: P(c) = 1 / range_max. See :class:`Uniform`.

    Args:
        {tf_sampler_args}

    Shape:
        {sampler_shape}

    Examples::

        >>> ids, te, se = uniform_candidate_sampler(torch.tensor([[1], [2]]), 1, 5, True, 100, seed=0)
    """
    return _tf_call(Uniform(range_max, _check_bool("unique", unique)), true_classes, num_true, num_sampled, seed, generator)


@fill_doc
def log_uniform_candidate_sampler(true_classes, num_true, num_sampled, unique, range_max, seed=None, generator=None) -> CandidateSamples:
    """``tf.random.log_uniform_candidate_sampler``: P(c) = log((c+2)/(c+1)) / log(range_max+1).

    Args:
        {tf_sampler_args}

    Shape:
        {sampler_shape}

    Examples::

        >>> ids, te, se = log_uniform_candidate_sampler(torch.tensor([[1], [2]]), 1, 5, True, 100, seed=0)
    """
    return _tf_call(LogUniform(range_max, _check_bool("unique", unique)), true_classes, num_true, num_sampled, seed, generator)


@fill_doc
def learned_unigram_candidate_sampler(true_classes, num_true, num_sampled, unique, range_max, seed=None, generator=None) -> CandidateSamples:
    """``tf.random.learned_unigram_candidate_sampler`` as one stateless call.

    A function keeps no state between calls, so every call sees TF's initial state (all counts 1,
    i.e. uniform). That state draws exactly as :class:`Uniform` does (``randint(total)`` descends
    to the same id; same probabilities), so the call is a :class:`Uniform` draw and builds no
    O(range_max) table. Use a :class:`LearnedUnigram` module (``sample`` then ``update``) to learn.
    ``range_max`` must be less than 2**31 - 1 (TF's limit).

    Args:
        {tf_sampler_args}

    Shape:
        {sampler_shape}

    Examples::

        >>> ids, te, se = learned_unigram_candidate_sampler(torch.tensor([[1]]), 1, 5, False, 100, seed=0)
    """
    return _tf_call(Uniform(_check_tf_range_max(range_max), _check_bool("unique", unique)), true_classes, num_true,
                    num_sampled, seed, generator)


@fill_doc
def fixed_unigram_candidate_sampler(
    true_classes,
    num_true,
    num_sampled,
    unique,
    range_max,
    vocab_file="",
    distortion=1.0,
    num_reserved_ids=0,
    num_shards=1,
    shard=0,
    unigrams=(),
    seed=None,
    generator=None,
) -> CandidateSamples:
    """``tf.random.fixed_unigram_candidate_sampler``. See :class:`Unigram` for the distribution.

    Exactly one of ``vocab_file`` (CSV-like lines whose last field is the count) and ``unigrams``
    must be given; they hold the weights of ids ``num_reserved_ids, num_reserved_ids + 1, ...``.
    ``range_max`` must equal the number of ids of this shard (``num_reserved_ids + len(unigrams)``
    when ``num_shards == 1``), and ids are shard-local, as in TF; it must be less than 2**31 - 1
    (TF's limit), checked before any table is built.

    Args:
        {tf_sampler_args}
        vocab_file: path of a counts file (see :func:`read_vocab_file`), or ``""``.
        distortion, num_reserved_ids, num_shards, shard: as :class:`Unigram`.
        unigrams: the weights, when no ``vocab_file``.

    Shape:
        {sampler_shape}

    Examples::

        >>> ids, te, se = fixed_unigram_candidate_sampler(torch.tensor([[1]]), 1, 3, True, 4,
        ...                                               unigrams=[4.0, 3.0, 2.0, 1.0], seed=0)
    """
    range_max = _check_tf_range_max(range_max)
    has_file = bool(vocab_file)
    has_uni = unigrams is not None and len(unigrams) > 0
    if has_file == has_uni:
        raise ValueError(
            "fixed_unigram_candidate_sampler needs exactly one of vocab_file and unigrams "
            f"(got vocab_file={vocab_file!r} and {len(unigrams) if unigrams is not None else 0} unigrams)"
        )
    weights = read_vocab_file(vocab_file) if has_file else unigrams
    sampler = Unigram(
        weights,
        distortion=distortion,
        unique=_check_bool("unique", unique),
        num_reserved_ids=num_reserved_ids,
        num_shards=num_shards,
        shard=shard,
    )
    if range_max != sampler.range_max:
        raise ValueError(
            f"range_max ({range_max}) must equal the number of ids in this shard, {sampler.range_max} "
            f"(num_reserved_ids={num_reserved_ids} + {len(weights)} weights, num_shards={num_shards}, shard={shard})"
        )
    return _tf_call(sampler, true_classes, num_true, num_sampled, seed, generator)


@fill_doc
def all_candidate_sampler(true_classes, num_true, num_sampled, unique, seed=None, generator=None) -> CandidateSamples:
    """``tf.random.all_candidate_sampler``: returns ``arange(num_sampled)``, all expected counts 1.

    ``true_classes`` must lie in [0, num_sampled); ``unique``, ``seed`` and ``generator`` are ignored
    (validated only), as in TF.

    Args:
        true_classes, num_true, unique, seed, generator: as :func:`uniform_candidate_sampler`.
        num_sampled: V, the number of classes (all returned).

    Shape:
        {sampler_shape}

    Examples::

        >>> all_candidate_sampler(torch.tensor([[1]]), 1, 4, True)[0]
        tensor([0, 1, 2, 3])
    """
    _check_bool("unique", unique)
    num_sampled = _check_int("num_sampled", num_sampled, 1)
    return _tf_call(All(num_sampled), true_classes, num_true, num_sampled, seed, generator)



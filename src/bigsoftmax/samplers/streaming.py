"""Streaming estimate of how often each item occurs in a stream of batches (Yi et al., RecSys 2019).

Implements Algorithms 2 and 3 of *Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations* (Yi, Yang, Hong, Cheng, Heldt, Kumthekar, Zhao, Wei, Chi; RecSys 2019): instead
of counting, keep for every hash bucket

* ``A[h(y)]`` — the last training step at which item ``y`` was seen, and
* ``B[h(y)]`` — an exponential moving average (EMA, rate ``alpha``) of the gap δ in steps between
  two consecutive occurrences of ``y``.

At step ``t``, for every ``y`` in the batch::

    B[h(y)] <- (1 - alpha) * B[h(y)] + alpha * (t - A[h(y)])
    A[h(y)] <- t

and the per-step sampling probability is estimated as ``q(y) = 1 / B[h(y)]``. With several
independent hash functions (Algorithm 3) every table is updated and the estimate is

    q(y) = 1 / max_i B_i[h_i(y)]

because a hash collision can only make a bucket's items look *more* frequent (shorter gaps), the
largest gap over the tables is the least contaminated one (the count-min idea applied to gaps).

Choices made here (the paper leaves them open)
----------------------------------------------
* **Duplicates within one batch.** If a bucket receives ``c`` occurrences in one :meth:`update`
  call, the gap since its last occurrence is split evenly between them: the bucket takes ``c``
  consecutive EMA steps towards ``(t - A) / c``, in closed form

      B <- (1 - alpha)^c * B + (1 - (1 - alpha)^c) * (t - A) / c.

  This is deterministic and order-free, equals the paper's update when ``c = 1``, and keeps the
  renewal identity "mean gap per occurrence = 1 / (expected occurrences per step)". So
  ``q(y) = 1/B`` estimates the **expected number of occurrences of y per step** — for an item that
  appears at most once per step that is the paper's per-step probability; for items that appear
  several times per batch it is the expected count ``E(y)`` that log-Q correction subtracts (the
  same unit as TensorFlow's ``expected_count``). A second :meth:`update` at the same step adds
  occurrences with gap 0 (the first one already consumed ``t - A``): the mean gap per occurrence
  is still right, but the EMA then sees the values in an order (gap, 0, ...), an O(alpha) bias
  (e.g. 2 calls of one copy each per step give ``(1-alpha)/(2-alpha)`` instead of 1/2). Prefer one
  call per step with all of the step's ids.
* **Start of the stream and bias correction.** ``A`` starts at step 0 and steps are >= 1, so an
  item's first gap is the time since the stream began. For occurrences at a constant rate
  (Bernoulli per step) that first gap has the same geometric law as every other gap (memoryless),
  so it is an unbiased gap sample. With ``bias_correction=True`` (default) a second table ``W``
  tracks the EMA weight mass ``1 - (1 - alpha)^n`` after ``n`` occurrences, and the estimate is
  ``B / W`` (the Adam-style de-biasing of an EMA started at 0): unbiased from the first
  occurrence on instead of after ~``3/alpha`` occurrences. ``bias_correction=False`` gives the
  paper's raw ``B`` (which starts at 0 and under-estimates gaps early on).
* **Items never seen.** A bucket never updated reports the gap ``last_step + 1`` ("has not occurred
  in any of the steps so far"), so ``log_q`` is always finite.
* **Hashing.** ``h_i(x) = ((a_i·lo(x) + c_i·hi(x) + b_i) mod p) mod num_buckets`` with the Mersenne
  prime ``p = 2^31 - 1``, ``lo``/``hi`` the low 30 bits and the rest of ``x`` (reduced mod p; ids
  below 2^61 give distinct ``(lo, hi)`` pairs, so the family is universal on them), and
  ``a_i, c_i ∈ [1, p)``, ``b_i ∈ [0, p)`` drawn once from ``torch.Generator().manual_seed(seed)``
  — a (multilinear) universal family; the coefficients live in buffers, so a loaded
  ``state_dict`` hashes exactly like the saved module. Ids must be non-negative int64.

Accuracy: for an item occurring at rate r per step, the stationary EMA of its gaps has relative
standard deviation ``sqrt(alpha / (2 - alpha)) * CV(gap)`` with ``CV(gap) = sqrt(1 - p) <= 1`` for
Bernoulli(p) occurrences, e.g. about 7% for ``alpha = 0.01`` (see ``docs/sampling_objectives.md``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["StreamingFrequencyEstimator"]

_P = (1 << 31) - 1  # Mersenne prime 2^31 - 1: products of two residues fit in int64
_LO_BITS = 30
_LO = (1 << _LO_BITS) - 1  # low digit < p, so ids < 2^61 map to distinct (lo, hi mod p) pairs


class StreamingFrequencyEstimator(nn.Module):
    """Per-item occurrence rate of a stream of id batches, in O(num_hashes · num_buckets) memory.

    Args:
        num_buckets: size of every hash table (int >= 1).
        num_hashes: number of independent hash tables (Algorithm 3 when > 1; int >= 1).
        alpha: EMA rate in (0, 1]; the estimate averages roughly the last ``1/alpha`` gaps.
        seed: seed of the hash coefficients (deterministic; stored in buffers).
        bias_correction: divide the EMA by its weight mass (see the module docstring).

    Buffers (all in ``state_dict``): ``hash_a, hash_b, hash_c [H]`` int64, ``last_step [H, M]``
    int64 (the paper's A), ``gap [H, M]`` float32 (B), ``weight [H, M]`` float32 (EMA mass),
    ``step`` (0-dim int64, the last step passed to :meth:`update`).

    Methods: :meth:`update` ``(ids [...], step=None)``; :meth:`log_q` ``(ids [...]) -> [...]``
    (log expected occurrences per step); :meth:`gap_estimates` ``(ids) -> [H, ...]`` per table;
    :meth:`forward` is :meth:`log_q`.

    Shape:
        - ids: any shape :math:`(*)` int64; ``log_q(ids)``: :math:`(*)` float32.

    Examples::

        >>> est = StreamingFrequencyEstimator(num_buckets=1024, num_hashes=2, alpha=0.05)
        >>> for step in range(1, 6):
        ...     est.update(torch.tensor([1, 1, 2]), step=step)
        >>> lq = est.log_q(torch.tensor([1, 2]))
        >>> bool(lq[0] > lq[1])   # id 1 occurs twice per step, id 2 once
        True
    """

    def __init__(self, num_buckets: int, num_hashes: int = 1, alpha: float = 0.01, seed: int = 0,
                 bias_correction: bool = True):
        super().__init__()
        if not isinstance(num_buckets, int) or isinstance(num_buckets, bool) or num_buckets < 1:
            raise ValueError(f"num_buckets must be an int >= 1, got {num_buckets!r}")
        if not isinstance(num_hashes, int) or isinstance(num_hashes, bool) or num_hashes < 1:
            raise ValueError(f"num_hashes must be an int >= 1, got {num_hashes!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"alpha must be a float in (0, 1], got {alpha!r}")
        self.num_buckets = num_buckets
        self.num_hashes = num_hashes
        self.alpha = float(alpha)
        self.bias_correction = bool(bias_correction)
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("hash_a", torch.randint(1, _P, (num_hashes,), generator=g, dtype=torch.long))
        self.register_buffer("hash_c", torch.randint(1, _P, (num_hashes,), generator=g, dtype=torch.long))
        self.register_buffer("hash_b", torch.randint(0, _P, (num_hashes,), generator=g, dtype=torch.long))
        self.register_buffer("last_step", torch.zeros(num_hashes, num_buckets, dtype=torch.long))
        self.register_buffer("gap", torch.zeros(num_hashes, num_buckets, dtype=torch.float32))
        self.register_buffer("weight", torch.zeros(num_hashes, num_buckets, dtype=torch.float32))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"num_buckets={self.num_buckets}, num_hashes={self.num_hashes}, alpha={self.alpha}, "
                f"bias_correction={self.bias_correction}")

    # ----------------------------------------------------------------- hashing
    def _check_ids(self, ids: Tensor, name: str = "ids") -> Tensor:
        if not isinstance(ids, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of int64 item ids, got {type(ids).__name__}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer item ids (int64), got dtype {ids.dtype}")
        ids = ids.to(device=self.last_step.device, dtype=torch.long)
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError(f"{name} contains the negative id {int(ids.min())}; item ids must be in [0, 2^63)")
        return ids

    def bucket(self, ids: Tensor) -> Tensor:
        """Hash bucket of every id in every table: ids [...] (int64 >= 0) -> [H, ...] in [0, num_buckets)."""
        ids = self._check_ids(ids)
        flat = ids.reshape(1, -1)
        lo = flat & _LO
        hi = (flat >> _LO_BITS) % _P
        a, c, b = self.hash_a[:, None], self.hash_c[:, None], self.hash_b[:, None]
        h = ((a * lo) % _P + (c * hi) % _P + b) % _P  # each term < 2^31, no int64 overflow
        return (h % self.num_buckets).reshape(self.num_hashes, *ids.shape)

    # ----------------------------------------------------------------- streaming update
    @torch.no_grad()
    def update(self, ids: Tensor, step: Optional[int] = None) -> None:
        """Record one step's occurrences (Algorithms 2/3). ids: int64 [...] >= 0; step: int >= 1.

        ``step=None`` uses ``self.step + 1``. Steps must not decrease (the same step may be passed
        again to add more occurrences to it). Duplicated ids (or ids sharing a bucket) in one call
        are split evenly over the gap, see the module docstring.
        """
        ids = self._check_ids(ids)
        last = int(self.step)
        if step is None:
            step = last + 1
        if isinstance(step, Tensor):
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"step must be an int >= 1, got {step!r}")
        if step < last:
            raise ValueError(f"step must not decrease: got step={step} after step={last}")
        self.step.fill_(step)
        if ids.numel() == 0:
            return
        M = self.num_buckets
        offs = torch.arange(self.num_hashes, device=ids.device)[:, None] * M
        cells, counts = torch.unique((self.bucket(ids.reshape(-1)) + offs).reshape(-1), return_counts=True)
        A = self.last_step.view(-1)
        Bv = self.gap.view(-1)
        Wv = self.weight.view(-1)
        c = counts.to(torch.float64)
        decay = torch.pow(1.0 - self.alpha, c)
        delta = (step - A[cells]).to(torch.float64) / c
        Bv[cells] = (decay * Bv[cells].to(torch.float64) + (1.0 - decay) * delta).to(Bv.dtype)
        Wv[cells] = (decay * Wv[cells].to(torch.float64) + (1.0 - decay)).to(Wv.dtype)
        A[cells] = step

    # ----------------------------------------------------------------- estimates
    @torch.no_grad()
    def gap_estimates(self, ids: Tensor) -> Tensor:
        """Estimated gap δ (steps per occurrence) of every id in every table: [...] -> [H, ...] (float32)."""
        buckets = self.bucket(ids)
        flat = buckets.reshape(self.num_hashes, -1)
        B = self.gap.gather(1, flat)
        seen = self.last_step.gather(1, flat) > 0
        if self.bias_correction:
            W = self.weight.gather(1, flat)
            B = B / torch.where(seen, W, torch.ones_like(W))
        unseen_gap = torch.full_like(B, float(int(self.step) + 1))
        return torch.where(seen, B, unseen_gap).reshape(buckets.shape)

    @torch.no_grad()
    def log_q(self, ids: Tensor) -> Tensor:
        """log q(y) = −log max_i δ_i(y): log expected occurrences per step. ids [...] -> [...] float32."""
        return -torch.log(self.gap_estimates(ids).amax(dim=0))

    def forward(self, ids: Tensor) -> Tensor:
        return self.log_q(ids)

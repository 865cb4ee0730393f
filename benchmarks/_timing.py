"""Timing helper shared by the benchmark scripts (``python benchmarks/<name>.py``)."""

import statistics
import time


def timeit(fn, repeats: int, min_below: int = 0) -> float:
    """Seconds per call of ``fn()`` after one warm-up call: the median of ``repeats`` timed calls,
    or their minimum when ``repeats < min_below`` (too few samples for a stable median)."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts) if repeats < min_below else statistics.median(ts)

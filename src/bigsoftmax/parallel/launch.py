"""Run a function on ``P`` local processes with an initialised process group (tests, benchmarks).

Not a launcher for real jobs (use ``torchrun``): a small ``torch.multiprocessing.spawn`` wrapper that
picks a free port, initialises gloo (or the given backend), enforces a timeout and always calls
``destroy_process_group``.
"""

from __future__ import annotations

import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["free_port", "run_local"]


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world_size, port, backend, threads, args):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(threads)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_local(fn, world_size: int, *args, backend: str = "gloo", timeout: float = 120.0, threads: int = 1) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned processes; raise if one fails.

    ``fn`` must be importable (a module-level function). Results travel back through files the
    caller names in ``args``. Raises ``TimeoutError`` after ``timeout`` seconds (killing the ranks).
    """
    ctx = mp.spawn(_entry, args=(fn, world_size, free_port(), backend, threads, args), nprocs=world_size,
                   join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{world_size} ranks of {getattr(fn, '__name__', fn)} did not finish in {timeout} s")

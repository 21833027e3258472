"""Batches prepared ahead on background threads, handed out in order.

The CPU-side work of a training batch (detector augmentation: blur, PIL's JPEG round trip,
crops) would otherwise run serially with the step, and on a GPU the step waits for it. Each
batch is a job with its own seeded randomness, so what comes out does not depend on how many
threads run or when they finish. Threads, not processes: the data and the generator streams
stay shared in one process, and the heavy parts (torch ops, PIL's JPEG codec) release the GIL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def prefetched(jobs: Iterable[Callable[[], T]], workers: int) -> Iterator[T]:
    """Each job's result, in order. workers = 0: run inline when asked for; ≥ 1: run ahead on
    that many threads, at most 2 × workers jobs taken from `jobs` before their result is used
    (so `jobs` itself, which may advance samplers, is consumed in order on the caller's thread)."""
    if workers == 0:
        for job in jobs:
            yield job()
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="gangaps-prefetch") as pool:
        pending: deque[Future[T]] = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(job))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # closed early (an error in the step): drop what has not started
            for f in pending:
                f.cancel()


def batch_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for training step `step`'s augmentation: a function of (seed, step)
    alone (numpy's SeedSequence mixes them, so nearby seeds and steps give unrelated streams)."""
    state = np.random.SeedSequence([seed, step, 0xA06]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))

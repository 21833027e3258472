"""Batches prepared ahead on threads: in order, consumed lazily, errors raised where used."""

from __future__ import annotations

import threading

import pytest
import torch

from gangaps.data.prefetch import batch_generator, prefetched


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_order_and_jobs_are_taken_at_most_two_per_worker_ahead(workers: int) -> None:
    taken: list[int] = []

    def jobs():
        for i in range(20):
            taken.append(i)  # on the caller's thread, in order
            yield lambda i=i: (i, threading.current_thread().name)

    for used, (i, thread) in enumerate(prefetched(jobs(), workers)):
        assert i == used
        assert len(taken) - used <= max(1, 2 * workers)  # bounded look-ahead
        assert thread.startswith("gangaps-prefetch") == (workers > 0)


def test_an_error_in_a_job_is_raised_where_its_result_is_used() -> None:
    def jobs():
        yield lambda: 1
        yield lambda: 1 / 0
    results = prefetched(jobs(), 2)
    assert next(results) == 1
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_batch_generators_depend_on_seed_and_step_only() -> None:
    draw = [batch_generator(seed, step).initial_seed() for seed, step in ((0, 0), (0, 1), (1, 0))]
    assert len(set(draw)) == 3
    assert torch.equal(torch.rand(4, generator=batch_generator(5, 7)),
                       torch.rand(4, generator=batch_generator(5, 7)))

"""Many small models at once: a model this small uses two cores better as two one-thread
models than as one two-thread model, so the benchmarks train each (arm, seed) in its own
spawned process and gather the results in the order asked."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any


def default_workers(threads_per_model: int = 1) -> int:
    """One process per `threads_per_model` cores, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_model))


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def in_processes(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> list:
    """`function(*task)` for each task, in `workers` spawned processes of one torch thread
    each (in this process when one worker or one task), in the order of `tasks`. `progress(1)`
    is called as each task ends. `function` must be importable (a module-level function)."""
    if workers <= 1 or len(tasks) <= 1:
        results = []
        for task in tasks:
            results.append(function(*task))
            if progress:
                progress(1)
        return results
    context = multiprocessing.get_context("spawn")  # torch's threads do not survive a fork
    results: list = [None] * len(tasks)
    with ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=context, initializer=_one_thread
    ) as pool:
        futures = {pool.submit(function, *task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if progress:
                progress(1)
    return results

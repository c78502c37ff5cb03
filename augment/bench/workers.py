"""Many small models at once: a model this small uses two cores better as two one-thread
models than as one two-thread model, so the benchmarks train each (arm, seed) in its own
process and gather the results in the order asked.

The processes come from a fork server that imported torch once (where the platform has one;
else each is spawned, and spends about 3 s importing torch before its first step)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

#: What the fork server imports once, for every process it forks: torch, the modules whose
#: functions run there, and the CLI's modules (a process forked for `augment ...` imports them
#: again as its main module). A YOLO's training depends on what its process imported before:
#: the same seed scored 67.5 mAP50:95 in a script's worker and 70.4 in the CLI's until every
#: worker started from the same imports. Not ultralytics: it reads its settings folder from
#: the environment at import, which `prepare_ultralytics` sets in the process that trains.
PRELOAD = [
    "torch",
    "numpy",
    "pandas",
    "augment.cli",
    "augment.bench.classify",
    "augment.bench.detect",
]


def default_workers(threads_per_model: int = 1) -> int:
    """One process per `threads_per_model` cores, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_model))


def worker_context() -> multiprocessing.context.BaseContext:
    """The fork server where there is one, else spawn. Never a plain fork of this process:
    torch's threads do not survive a fork, and the fork server's process has never run any."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def check_main_guarded() -> None:
    """Refuse, before any process starts, a script that would start the benchmark again in each
    of them: the fork server and spawn import the main script in every process they make, and
    one without `if __name__ == "__main__":` ran its own `ag.classify(...)` there, which ended
    in multiprocessing's bootstrapping RuntimeError and a BrokenProcessPool. A notebook, `-c`
    code and a guarded script are let through."""
    from augment.errors import AugmentError

    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None:
        return
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:  # a main module without a readable source: left to multiprocessing
        return
    if "__main__" not in text or "__name__" not in text:
        raise AugmentError(
            f"{path} calls a benchmark that trains models in worker processes, and each worker "
            "imports this script again, which would call it again there: put the script's "
            'calls under `if __name__ == "__main__":`'
        )


def _start_worker(environ: dict[str, str], cwd: str, path: list[str]) -> None:
    """One torch thread, in the caller's environment, folder and import path as they are now
    (a forked process has the fork server's, from when it started)."""
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    sys.path[:] = path
    import torch

    torch.set_num_threads(1)


def in_processes(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    workers: int,
    progress: Callable[[int], None] | None = None,
    fresh: bool = False,
) -> list:
    """`function(*task)` for each task, in `workers` processes of one torch thread each, in the
    order of `tasks`. `progress(1)` is called as each task ends. `function` must be importable
    (a module-level function).

    `fresh`: every task in a process of its own, never reused, even with one worker. For
    training whose result depends on what its process ran before: ultralytics' does (a YOLO
    trained after another in one process scored 70.4 mAP50:95 where the same seed alone scored
    67.5). Otherwise a process runs task after task (its loaded data stays loaded), and one
    worker or one task runs in this process."""
    if not fresh and (workers <= 1 or len(tasks) <= 1):
        results = []
        for task in tasks:
            results.append(function(*task))
            if progress:
                progress(1)
        return results
    results: list = [None] * len(tasks)
    if not tasks:
        return results
    check_main_guarded()
    pool = ProcessPoolExecutor(
        max(1, min(workers, len(tasks))),
        mp_context=worker_context(),
        initializer=_start_worker,
        initargs=(dict(os.environ), os.getcwd(), list(sys.path)),
        max_tasks_per_child=1 if fresh else None,
    )
    try:
        futures = {pool.submit(function, *task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if progress:
                progress(1)
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
    return results


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now, not after every queued task: an interrupt (Jupyter's reaches
    this process alone, not its workers) or a failed task left the pool's exit waiting for
    minutes of training, and a killed kernel left the workers running."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
    # only now: shut down while its processes ran (wait=False), the pool's own thread went on
    # to replace the one that had ended a task (max_tasks_per_child) in a pool it had just
    # emptied, and printed a TypeError traceback beside the real error
    pool.shutdown(wait=True, cancel_futures=True)

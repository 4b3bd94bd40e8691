"""Independent numpy/scipy tasks in forked processes, one thread each (the statistics' parallelism).

Statistics such as the tortuosity of several phase-axis pairs or the surface mesh of each phase
are independent, single-threaded-ish numpy/scipy work; on a workstation with few cores, one
process per task beats threads (the GIL) and beats a BLAS thread pool (the work is not BLAS).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

__all__ = ["fork_map"]


def _single_threaded(task: tuple[Callable[[Any], Any], Any]) -> Any:
    from threadpoolctl import threadpool_limits

    fn, args = task
    with threadpool_limits(1):  # one core per process: the processes share the machine
        return fn(args)


def fork_map(fn: Callable[[Any], Any], items: Sequence[Any], *, parallel: bool = True, workers: int | None = None,
             on_done: Callable[[], None] | None = None) -> list[Any]:
    """``[fn(item) for item in items]``, in forked processes (one thread each) when worth it.

    Args:
        fn: a module-level function of one argument (numpy/scipy work: no torch, no OpenMP).
        items: its arguments (pickled to the processes).
        parallel: False runs here, in order (small work: a process costs more than it saves).
        workers: processes (None: one per CPU core, at most one per item); 1 = here.
        on_done: called once per finished item (e.g. a progress bar's update).

    Returns:
        The results, in the order of ``items``.
    """
    n = len(items)
    workers = min(workers or os.cpu_count() or 1, n) if n else 1
    if workers <= 1 or not parallel:
        results = []
        for item in items:
            results.append(fn(item))
            if on_done:
                on_done()
        return results
    # fork: the children only run numpy/scipy/pyamg (no OpenMP, no torch), and start in ms
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(_single_threaded, (fn, item)) for item in items]
        if on_done:
            for future in as_completed(futures):
                future.result()
                on_done()
        return [f.result() for f in futures]

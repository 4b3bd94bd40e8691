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

__all__ = ["fork_map", "fork_start"]


def _single_threaded(task: tuple[Callable[[Any], Any], Any]) -> Any:
    from threadpoolctl import threadpool_limits

    fn, args = task
    with threadpool_limits(1):  # one core per process: the processes share the machine
        return fn(args)


def fork_start(fn: Callable[[Any], Any], items: Sequence[Any], *, parallel: bool = True,
               workers: int | None = None,
               in_process: bool = True) -> Callable[[Callable[[], None] | None], list[Any]]:
    """Start ``[fn(item) for item in items]`` in forked processes now; collect the results later.

    The caller goes on with other work while the processes run (e.g. the cheap statistics while
    the tortuosity solves). Serial work (``parallel`` False, one worker) runs at collection.

    Args:
        fn: a module-level function of one argument (numpy/scipy work: no torch, no OpenMP).
        items: its arguments (pickled to the processes).
        parallel: False runs in this process, in order (small work: a process costs more).
        workers: processes (None: one per CPU core, at most one per item); 1 = here, unless
            ``in_process`` is False (then one background process).
        in_process: run one-worker work in this process, at collection.

    Returns:
        ``collect(on_done)``: waits for the results (in the order of ``items``), calling
        ``on_done`` once per finished item, and shuts the processes down;
        ``collect.cancel()`` stops them without waiting (the caller failed meanwhile).
    """
    n = len(items)
    workers = min(workers or os.cpu_count() or 1, n) if n else 1
    if not parallel or (workers <= 1 and in_process) or not n:
        def serial(on_done: Callable[[], None] | None = None) -> list[Any]:
            results = []
            for item in items:
                results.append(fn(item))
                if on_done:
                    on_done()
            return results
        serial.cancel = lambda: None  # type: ignore[attr-defined]
        return serial
    # fork: the children only run numpy/scipy/pyamg (no OpenMP, no torch), and start in ms
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        futures = [pool.submit(_single_threaded, (fn, item)) for item in items]
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise

    def collect(on_done: Callable[[], None] | None = None) -> list[Any]:
        try:
            for future in as_completed(futures):
                future.result()
                if on_done:
                    on_done()
            return [f.result() for f in futures]
        finally:
            pool.shutdown(cancel_futures=True)

    def cancel() -> None:  # the caller failed before collecting: stop the workers, do not wait
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)

    collect.cancel = cancel  # type: ignore[attr-defined]
    return collect


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
    return fork_start(fn, items, parallel=parallel, workers=workers)(on_done)

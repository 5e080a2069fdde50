"""Worker processes: forked, and only when that is safe.

multiprocessing and ctypes are imported when workers are started: a build that reads
or renders a few entries in its own process (an edit) has no use for them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import multiprocessing.context

# Below this many posts or entries a process pool costs more than it saves (measured:
# ~0.15 s to start two workers; an entry takes ~1 ms).
PARALLEL_THRESHOLD = 400

Shared = TypeVar("Shared")
Task = TypeVar("Task")
Result = TypeVar("Result")


def can_fork() -> bool:
    """Workers are forked (they inherit the imported modules and start in
    milliseconds), which is only safe while this process runs one thread: a forked
    child can inherit a lock another thread held (logging, an HTTP server) and hang
    for ever. With other threads alive, the work stays in this process."""
    return threading.active_count() == 1


def pool_context() -> multiprocessing.context.BaseContext:
    import multiprocessing

    return multiprocessing.get_context("fork")


def chunk_ranges(count: int, workers: int, largest: int) -> list[tuple[int, int]]:
    """(start, stop) of the chunks `count` items are handed to workers in: a few a
    worker evens out the load, and at most `largest` items each keeps memory bounded."""
    size = min(-(-count // (workers * 4)), largest)
    return [(i, min(i + size, count)) for i in range(0, count, size)]


def _die_with_parent(parent: int) -> None:
    """A worker ends when the build that forked it is killed: left running, it would
    hold the build lock it inherited (an flock is the open file's, which the fork
    shares) and keep the next build waiting for work nobody reads."""
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # killed before the line above
        os._exit(1)


_PR_SET_PDEATHSIG = 1


# What map_inherited's workers inherit: set while they are forked, never sent.
_inherited: Any = None


def _call_inherited(function: Callable[[Any, Any], Any], task: Any) -> Any:
    return function(_inherited, task)


def map_inherited(function: Callable[[Shared, Task], Result], shared: Shared,
                  tasks: list[Task], workers: int) -> Iterator[Result]:
    """function(shared, task) for each task, in forked worker processes, results in
    order as they come. `shared` is not pickled to the workers: they are forked after
    it is set, so they have it (sending each chunk's posts would cost the parent
    ~1.6 s of CPU at 100k posts); tasks should be small (ranges into it)."""
    from concurrent.futures import ProcessPoolExecutor  # (~20 ms, for builds that fork)

    global _inherited
    _inherited = shared
    try:
        pool = ProcessPoolExecutor(workers, mp_context=pool_context(),
                                   initializer=_die_with_parent, initargs=(os.getpid(),))
        try:
            # submits every task, and with fork, starts every worker at the first
            # submit (no process is forked after the pool's manager thread starts):
            # from here on the workers have their own copy
            results = pool.map(_call_inherited, [function] * len(tasks), tasks)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    finally:
        _inherited = None
    with pool:
        yield from results

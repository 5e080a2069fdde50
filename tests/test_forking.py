"""map_inherited: forked workers that inherit what they work on instead of being sent
it (the posts of a cold read, the entries to render)."""

from __future__ import annotations

import os
import threading

import pytest

import aggregator.forking as forking
from aggregator.forking import can_fork, map_inherited


def _square_with(shared: tuple[threading.Lock, list[int]], bounds: tuple[int, int]
                 ) -> tuple[int, list[int]]:
    lock, numbers = shared
    with lock:  # a lock cannot be pickled: the worker has it because it was forked
        return os.getpid(), [n * n for n in numbers[bounds[0]:bounds[1]]]


def _fail_on_three(shared: list[int], index: int) -> int:
    if shared[index] == 3:
        raise ValueError("three")
    return shared[index]


def test_workers_inherit_what_they_are_not_sent() -> None:
    if not can_fork():
        pytest.skip("another thread is alive in this test process: workers would not fork")
    numbers = list(range(1000))
    ranges = [(i, i + 100) for i in range(0, 1000, 100)]
    results = list(map_inherited(_square_with, (threading.Lock(), numbers), ranges, 2))
    assert [n for _, chunk in results for n in chunk] == [n * n for n in numbers]  # in order
    assert os.getpid() not in {pid for pid, _ in results}
    assert forking._inherited is None  # not kept past the fork


def test_a_worker_error_reaches_the_caller_and_nothing_is_kept() -> None:
    if not can_fork():
        pytest.skip("another thread is alive in this test process: workers would not fork")
    with pytest.raises(ValueError, match="three"):
        list(map_inherited(_fail_on_three, [1, 2, 3, 4], [0, 1, 2, 3], 2))
    assert forking._inherited is None
    # and a later call works (each call forks its own workers with its own data)
    assert list(map_inherited(_fail_on_three, [5, 6], [0, 1], 2)) == [5, 6]


@pytest.mark.parametrize("count", [1, 7, 400, 1001, 100_000])
def test_chunk_ranges_cover_every_item_once_in_bounded_chunks(count: int) -> None:
    from aggregator.forking import chunk_ranges

    ranges = chunk_ranges(count, 2, 250)
    assert [i for start, stop in ranges for i in range(start, stop)] == list(range(count))
    assert all(0 < stop - start <= 250 for start, stop in ranges)
    assert len(ranges) >= min(count, 8)  # a few a worker, to even out the load


_SLOW_WORKERS = """
import os, sys, time
from aggregator.forking import map_inherited

def task(shared, n):
    # one write(2) a line: two workers' print() calls can interleave their parts
    os.write(1, f"{os.getpid()}\\n".encode())
    time.sleep(60)
    return n

for _ in map_inherited(task, None, [1, 2], 2):
    pass
"""


def test_workers_end_when_the_build_that_forked_them_is_killed() -> None:
    """A killed build's workers must not live on: they hold the build lock's open
    file (inherited by the fork), and the next build would wait for them."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WORKERS], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    workers = [int(proc.stdout.readline()) for _ in range(2)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in workers if _running(pid)]
    for pid in alive:  # (cleanup when the test fails)
        os.kill(pid, signal.SIGKILL)
    assert alive == []


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False

"""Worker processes: forked, and only when that is safe."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import threading


def can_fork() -> bool:
    """Workers are forked (they inherit the imported modules and start in
    milliseconds), which is only safe while this process runs one thread: a forked
    child can inherit a lock another thread held (logging, an HTTP server) and hang
    for ever. With other threads alive, the work stays in this process."""
    return threading.active_count() == 1


def pool_context() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("fork")

"""One build at a time per state file, across processes (service and shell `build`)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


def lock_path(state_path: Path) -> Path:
    # Next to the state file: it is the one path both the service and a shell build
    # already share and may write (StateDirectory / ReadWritePaths).
    return state_path.with_name(state_path.name + ".lock")


class BuildLock:
    """An flock(2) on `<state>.lock`; released by the kernel if the process dies."""

    def __init__(self, state_path: Path) -> None:
        self.path = lock_path(state_path)
        self._fd: int | None = None

    def acquire(self, cancel: threading.Event | None = None, poll: float = 0.1) -> bool:
        """Wait for the lock; False if `cancel` is set first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            # A read-only state dir must not refuse every build; flock works on a
            # read-only fd.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except BlockingIOError:
                if not waited:
                    log.info("another build holds %s; waiting for it", self.path)
                    waited = True
                if cancel is not None and cancel.is_set():
                    os.close(fd)
                    return False
                time.sleep(poll)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

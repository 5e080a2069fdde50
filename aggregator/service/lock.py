"""One build at a time per state, across processes (service and shell `build`): an
flock(2) beside the SQLite file, or a PostgreSQL advisory lock on a shared state; and
one publisher at a time on a shared state (held for the publisher's life)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from aggregator.config import Config
from aggregator.state.database import redacted
from aggregator.state.fleet import BUILD_LOCK, PUBLISHER_LOCK

if TYPE_CHECKING:
    from aggregator.state.postgres import PostgresDatabase

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


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection of its own: released by the
    server when the process dies or its connection drops. A database that cannot be
    reached is an OSError, as a lock file that cannot be opened."""

    def __init__(self, url: str, key: int, what: str) -> None:
        self.url = url
        self.key = key
        self.path = f"{redacted(url)} ({what})"  # for messages
        self._db: PostgresDatabase | None = None

    def acquire(self, cancel: threading.Event | None = None, poll: float = 0.5,
                waiting: str = "another build holds {}; waiting for it") -> bool:
        """Wait for the lock; False if `cancel` is set first."""
        from aggregator.state.postgres import PostgresDatabase, PostgresError

        waited = False
        try:
            db = PostgresDatabase(self.url)
            while not db.execute("SELECT pg_try_advisory_lock(?)", (self.key,)).fetchone()[0]:
                if not waited:
                    log.info(waiting.format(self.path))
                    waited = True
                if cancel is not None and cancel.wait(poll):
                    db.close()
                    return False
                if cancel is None:
                    time.sleep(poll)
        except PostgresError as exc:
            raise OSError(str(exc)) from exc
        self._db = db
        return True

    def held(self) -> bool:
        """Still held: its connection answers (a dropped one released it)."""
        if self._db is None:
            return False
        try:
            self._db.raw.execute("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure: the connection is gone
            return False
        return True

    def release(self) -> None:
        if self._db is not None:
            try:
                self._db.close()  # the server releases a session lock with its session
            finally:
                self._db = None

    def __enter__(self) -> AdvisoryLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def build_lock(config: Config) -> BuildLock | AdvisoryLock:
    """The lock one build at a time takes, for this config's state."""
    if config.state_url is not None:
        return AdvisoryLock(config.state_url, BUILD_LOCK, "the build lock")
    return BuildLock(config.state_path)


def publisher_lock(config: Config) -> AdvisoryLock:
    assert config.state_url is not None
    return AdvisoryLock(config.state_url, PUBLISHER_LOCK, "the publisher lock")

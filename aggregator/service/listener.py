"""The publisher's ear on a shared state: LISTEN for the fetch workers' stored entries
and ask for a build (after a short quiet window, so a burst of stored sources is one
build). A lost connection is made again, and a build is asked for then, since
notifications sent meanwhile are gone."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aggregator.state.fleet import CHANNEL

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

QUIET_SECONDS = 0.5  # more notifications within this are the same build
RECONNECT_SECONDS = 2.0


class EntryListener:
    def __init__(self, url: str, on_entries: Callable[[str], None],
                 stop: threading.Event, quiet: float = QUIET_SECONDS) -> None:
        self.url = url
        self.on_entries = on_entries
        self.quiet = quiet
        self._stop = stop
        self.notifications = 0
        self._thread = threading.Thread(target=self._run, name="entry-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        import psycopg  # noqa: F811 - at run time only with state.url set

        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                     application_name="aggregator-listener") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not first:  # what was sent while we were away is lost: look
                        self.on_entries("reconnected to the state database")
                    first = False
                    self._listen(conn)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                log.warning("listening for stored entries: %s; again in %.0fs", exc,
                            RECONNECT_SECONDS)
                self._stop.wait(RECONNECT_SECONDS)

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self._stop.is_set():
            count = sum(1 for _ in conn.notifies(timeout=1.0, stop_after=1))
            if not count:
                continue
            until = time.monotonic() + self.quiet
            while (left := until - time.monotonic()) > 0:
                count += sum(1 for _ in conn.notifies(timeout=left))
            self.notifications += count
            self.on_entries(f"{count} stored source{'s' if count != 1 else ''}")

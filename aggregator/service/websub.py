"""The service's WebSub sender: a thread of its own, so no ping (and no dead hub)
ever holds up a build. Woken after each build that wrote files, and every
`websub.retry_seconds` (at most a minute) to retry what failed, it sends the pings
whose time has come (fetch/websub.py decides how)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from aggregator.config import Config
from aggregator.fetch.websub import send_pings
from aggregator.service.metrics import ServiceStats
from aggregator.state.websub import PingQueue

log = logging.getLogger(__name__)

MAX_WAIT = 60.0  # seconds between looks at the waiting pings


class PingSender:
    def __init__(self, config: Callable[[], Config], stats: ServiceStats) -> None:
        self._config = config
        self.stats = stats
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="websub", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A build published: send its pings now."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the round in progress (pings not sent stay in the state)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            config = self._config()
            self._wake.wait(min(config.websub_retry, MAX_WAIT))
            self._wake.clear()
            if self._stopping.is_set():
                return
            if not config.websub_hubs:
                continue
            try:
                report = send_pings(self._config(), due_only=True)
                waiting = sum(hub.pending for hub in PingQueue(config.state_path).pending())
            except (OSError, sqlite3.Error) as exc:
                log.warning("WebSub pings not sent: %s", exc)
                continue
            except Exception:  # the sender outlives a bug in one round
                log.exception("WebSub sender: round failed")
                continue
            self.stats.record_pings(report.sent, report.failed, waiting)

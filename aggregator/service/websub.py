"""The service's WebSub sender: threads of its own, so no ping (and no dead hub)
ever holds up a build, and each hub has its own rounds, so a hub that does not
answer holds up no other hub. Woken after each build that wrote files, and every
`websub.retry_seconds` (at most a minute) to retry what failed, it starts a round for
each hub that has none running (fetch/websub.py sends the pings whose time has come)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from aggregator.config import Config
from aggregator.fetch.websub import send_pings
from aggregator.service.metrics import ServiceStats
from aggregator.state.address import StateAddress
from aggregator.state.websub import PingQueue

log = logging.getLogger(__name__)

MAX_WAIT = 60.0  # seconds between looks at the waiting pings


class PingSender:
    def __init__(self, config: Callable[[], Config], stats: ServiceStats) -> None:
        self._config = config
        self.stats = stats
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # hub → the thread of its round in progress (daemon threads: a hub that does
        # not answer never holds up the service's exit)
        self._rounds: dict[str, threading.Thread] = {}
        self._thread = threading.Thread(target=self._loop, name="websub", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A build published: send its pings now."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop starting rounds (pings not sent stay in the state for the next run);
        a round waiting on a hub is not waited for."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        forgotten: tuple[str, ...] | None = None
        while not self._stopping.is_set():
            self._wake.wait(min(self._config().websub_retry, MAX_WAIT))
            self._wake.clear()
            config = self._config()
            if self._stopping.is_set():
                return
            if not config.websub_hubs:
                continue
            if forgotten != config.websub_hubs:  # at start and after a reload
                try:
                    PingQueue(StateAddress.of(config)).forget_other_hubs(config.websub_hubs)
                    forgotten = config.websub_hubs
                except (OSError, sqlite3.Error) as exc:
                    log.warning("WebSub pings of removed hubs kept: %s", exc)
            for hub in config.websub_hubs:
                running = self._rounds.get(hub)
                if running is None or not running.is_alive():
                    thread = threading.Thread(target=self._round, args=(config, hub),
                                              name="websub-hub", daemon=True)
                    self._rounds[hub] = thread
                    thread.start()

    def _round(self, config: Config, hub: str) -> None:
        try:
            report = send_pings(config, due_only=True, hubs=[hub])
            waiting = sum(h.pending for h in PingQueue(StateAddress.of(config)).pending())
        except (OSError, sqlite3.Error) as exc:
            log.warning("%s: WebSub pings not sent: %s", hub, exc)
            return
        except Exception:  # the sender outlives a bug in one round
            log.exception("%s: WebSub round failed", hub)
            return
        self.stats.record_pings(report.sent, report.failed, waiting)

"""A fetch worker (`aggregator run --role fetch`, or inside the default role on a
PostgreSQL state): lease hosts that have due sources, poll those sources, store what
they gave (which wakes the publisher), give the hosts back; again when the next source
is due. Any number run at once, on any machines (state/fleet.py says how they share).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from aggregator.config import Config
from aggregator.fetch.poll import ParsePool, PollReport, poll
from aggregator.problems import ProblemLog
from aggregator.state import fleet
from aggregator.state.postgres import PostgresDatabase, PostgresError, PostgresStateStore
from aggregator.state.store import utc_now

log = logging.getLogger(__name__)

IDLE_SECONDS = 5.0  # the longest sleep between looks for due sources
RETRY_SECONDS = 2.0  # after the database failed


@dataclass
class WorkerTotals:
    polled: int = 0
    fetched: int = 0
    not_modified: int = 0
    failed: int = 0
    cycles: int = 0


class FetchWorker:
    """Runs in a thread until `stop` is set. `on_poll`: told each cycle's report
    (the service's metrics)."""

    def __init__(self, config: Callable[[], Config], stop: threading.Event,
                 on_poll: Callable[[PollReport], None] = lambda report: None) -> None:
        self._config = config
        self._stop = stop
        self._on_poll = on_poll
        self.name = fleet.WorkerName.here()
        self.started = time.time()
        self.totals = WorkerTotals()
        self._db: PostgresDatabase | None = None
        self._state: PostgresStateStore | None = None
        self._held: list[str] = []
        self._held_lock = threading.Lock()
        self._parsers = ParsePool()
        self._thread = threading.Thread(target=self.run, name="fetch-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def run(self) -> None:
        renewer = threading.Thread(target=self._renew_loop, name="lease-renewer",
                                   daemon=True)
        renewer.start()
        while not self._stop.is_set():
            try:
                busy = self.cycle()
            except PostgresError as exc:
                log.warning("fetch worker %s: state database: %s; retrying", self.name, exc)
                self._drop_connections()
                self._stop.wait(RETRY_SECONDS)
                continue
            except Exception:  # one bad cycle must not end the worker
                log.exception("fetch worker %s: a poll cycle crashed", self.name)
                self._parsers.close()  # (a broken pool is started again)
                self._stop.wait(RETRY_SECONDS)
                continue
            if not busy:
                self._stop.wait(self._idle_seconds())
        self._parsers.close()
        self._drop_connections()

    def cycle(self) -> bool:
        """One claim-poll-release round; False when no host had a due source."""
        db = self._database()
        config = self._config()
        now = utc_now()
        limit = max(1, config.fetch_concurrency // max(1, config.per_host_limit))
        hosts = fleet.claim_hosts(db, str(self.name), limit, self._config().lease_seconds,
                                  now.isoformat())
        if not hosts:
            self._heartbeat(db, 0)
            return False
        with self._held_lock:
            self._held = hosts
        try:
            sources = fleet.due_sources(db, hosts, now.isoformat())
            settings = fleet.shared_settings(db)
            shared = replace(config, site_url=settings.get("site_url", config.site_url),
                             id_date=settings.get("id_date", config.id_date),
                             upstream=tuple(sources))
            problems = ProblemLog()
            report = poll(shared, self._store(config), problems, utc_now, only=sources,
                          write=False, parse_pool=self._parsers)
        finally:
            with self._held_lock:
                self._held = []
            fleet.release(db, str(self.name), hosts)
        totals = self.totals
        totals.cycles += 1
        totals.polled += report.due
        totals.fetched += report.fetched
        totals.not_modified += report.not_modified
        totals.failed += len(report.failed)
        self._heartbeat(db, len(hosts))
        self._on_poll(report)
        log.info("fetch worker %s: %d hosts, %d sources: %d fetched, %d not modified, "
                 "%d failed; %d new entries in %.2fs", self.name, len(hosts), report.due,
                 report.fetched, report.not_modified, len(report.failed),
                 report.new_entries, report.seconds)
        return True

    def _idle_seconds(self) -> float:
        """Until the next source is due (at most IDLE_SECONDS; new sources and other
        workers' releases are seen at the next look)."""
        try:
            due = fleet.next_due(self._database())
        except PostgresError:
            return RETRY_SECONDS
        if not due:
            return IDLE_SECONDS
        try:
            wait = (datetime.fromisoformat(due) - utc_now()).total_seconds()
        except ValueError:
            return 0.2
        return min(IDLE_SECONDS, max(0.2, wait))

    def _renew_loop(self) -> None:
        """Keep this worker's leases alive while it polls (a long cycle outlives one)."""
        while not self._stop.wait(self._config().lease_seconds / 3):
            with self._held_lock:
                held = list(self._held)
            if not held:
                continue
            try:
                fleet.renew(self._database(), str(self.name), held, self._config().lease_seconds)
            except PostgresError as exc:
                log.warning("fetch worker %s: cannot renew leases: %s", self.name, exc)

    def _heartbeat(self, db: PostgresDatabase, hosts: int) -> None:
        t = self.totals
        fleet.heartbeat(db, self.name, self.started, t.polled, t.fetched, t.failed, hosts)

    def _database(self) -> PostgresDatabase:
        if self._db is None:
            url = self._config().state_url
            assert url is not None
            self._db = PostgresDatabase.migrated(url)
        return self._db

    def _store(self, config: Config) -> PostgresStateStore:
        if self._state is None:
            assert config.state_url is not None
            self._state = PostgresStateStore(config.state_url, utc_now, ProblemLog())
        return self._state

    def _drop_connections(self) -> None:
        for closing in (self._db, self._state):
            if closing is not None:
                try:
                    closing.close()
                except Exception:  # noqa: BLE001 - a dead connection may fail to close
                    log.debug("closing a connection failed", exc_info=True)
        self._db = None
        self._state = None

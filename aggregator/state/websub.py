"""WebSub pings waiting to be sent, in the state file (table websub_ping).

A build records a ping per hub for every feed whose bytes it replaced (it never
uses the network); `fetch` and the service send them (fetch/websub.py) and delete
each one its hub accepted. One row per (hub, feed URL): a feed that changes again
before its ping went out is pinged once (the hub fetches the feed as it is then).
`seq` grows each time a build records the row again, so a sender that read it
before deletes it only if no build recorded it since.

A plain connection to the state file the build opened (and migrated) already, as
state/published.py: each call opens, works in one transaction, closes, so the
service's sender thread and its build thread never share a connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aggregator.state.address import StateAddress
from aggregator.state.database import Database


@dataclass(frozen=True)
class Ping:
    hub: str
    url: str  # the feed's URL (hub.url)
    seq: int
    attempts: int  # failed tries so far


@dataclass(frozen=True)
class HubPending:
    """What `check` shows of one hub."""

    hub: str
    pending: int
    failed: int  # pings that failed at least once
    oldest: str  # when the oldest pending ping was recorded (ISO 8601, UTC)
    next_try: float  # the earliest time one is tried again (epoch seconds)
    last_error: str | None


class PingQueue:
    def __init__(self, state: Path | StateAddress) -> None:
        self.state = state if isinstance(state, StateAddress) else StateAddress(state)

    @contextmanager
    def _db(self, read_only: bool = False) -> Iterator[Database]:
        db = self.state.connect(read_only)
        try:
            yield db
        finally:
            db.close()

    def record(self, hubs: Iterable[str], urls: Iterable[str],
               now: datetime | None = None) -> int:
        """A ping to each hub for each feed URL; the number recorded."""
        when = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
        rows = [(hub, url, when) for hub in hubs for url in urls]
        if not rows:
            return 0
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO websub_ping (hub, url, queued_at) VALUES (?, ?, ?) "
                           "ON CONFLICT (hub, url) DO UPDATE SET seq = seq + 1", rows)
            db.execute("COMMIT")
        return len(rows)

    def waiting(self, hubs: Iterable[str], due_by: float | None) -> list[Ping]:
        """The pings to `hubs` (the configured ones, or some of them) that wait (with
        `due_by`, epoch seconds: those whose retry time has come), in order of hub
        and URL."""
        wanted = list(hubs)
        with self._db() as db:
            rows = db.execute(f"SELECT hub, url, seq, attempts FROM websub_ping "
                              f"WHERE next_try <= ? AND hub IN ({', '.join('?' * len(wanted))}) "
                              f"ORDER BY hub, url",
                              (float("inf") if due_by is None else due_by, *wanted)).fetchall()
        return [Ping(*row) for row in rows]

    def forget_other_hubs(self, hubs: Iterable[str]) -> None:
        """Drop the pings to hubs no longer configured."""
        wanted = list(hubs)
        with self._db() as db:
            db.execute(f"DELETE FROM websub_ping WHERE hub NOT IN "
                       f"({', '.join('?' * len(wanted))})", wanted)

    def settle(self, sent: list[Ping], failed: list[tuple[Ping, str, float]]) -> None:
        """`sent`: accepted by their hub (deleted unless recorded again since);
        `failed`: (ping, error, when to try again, epoch seconds)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM websub_ping WHERE hub = ? AND url = ? AND seq = ?",
                           [(p.hub, p.url, p.seq) for p in sent])
            db.executemany("UPDATE websub_ping SET attempts = attempts + 1, next_try = ?, "
                           "last_error = ? WHERE hub = ? AND url = ?",
                           [(when, error, p.hub, p.url) for p, error, when in failed])
            db.execute("COMMIT")

    def pending(self) -> list[HubPending]:
        """Per hub: the pings waiting (read-only; none when the state has no table)."""
        with self._db(read_only=True) as db:
            rows = db.execute(
                "SELECT hub, count(*), sum(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), "
                "min(queued_at), min(next_try), "
                "(SELECT last_error FROM websub_ping AS w WHERE w.hub = p.hub AND "
                " last_error IS NOT NULL ORDER BY next_try DESC LIMIT 1) "
                "FROM websub_ping AS p GROUP BY hub ORDER BY hub").fetchall()
        return [HubPending(*row) for row in rows]

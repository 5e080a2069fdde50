"""Fetch workers on many machines sharing a PostgreSQL state (docs/scaling.md).

- The publisher writes its config's sources (and the settings entry ids depend on) to
  the database; workers read them from there, so their own config needs only
  `state.url` and `fetch:`.
- A worker leases **hosts**, not single sources: `fetch_host` rows claimed with
  `FOR UPDATE SKIP LOCKED`, then every due source of those hosts is polled by it alone.
  The per-host limit of the worker's fetcher is then the limit across all workers,
  with no query per request. A lease runs out `lease_seconds` after it was last
  renewed: a killed worker's hosts go to the others.
- Stored entries wake the publisher: `NOTIFY aggregator_entries` in the transaction
  that stored them (delivered at commit).

Times of leases and heartbeats are the database's clock (epoch seconds), so machines
whose clocks differ still agree on who holds what.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from aggregator.config import Config, UpstreamSource
from aggregator.state.database import Database, transaction

CHANNEL = "aggregator_entries"
# advisory lock keys: one build at a time (the service's and a shell `build`'s), and
# one publisher at a time (held for its life; a standby waits for it)
BUILD_LOCK = 0x61676702
PUBLISHER_LOCK = 0x61676703
NOW = "extract(epoch from clock_timestamp())"
SHARED_SETTINGS = ("site_url", "id_date")


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def dump_source(source: UpstreamSource) -> str:
    return json.dumps(asdict(source), ensure_ascii=False, sort_keys=True)


def load_source(text: str) -> UpstreamSource:
    data: dict[str, Any] = json.loads(text)
    for key in ("category", "drop_selectors"):
        data[key] = tuple(data.get(key) or ())
    return UpstreamSource(**data)


def publish_sources(db: Database, config: Config) -> int:
    """The publisher's sources and settings, as workers will read them; sources gone
    from the config keep their rows (state, stored entries) but no longer polled."""
    with transaction(db):
        moved = dict(db.execute("SELECT url, moved_to FROM upstream_source "
                                "WHERE moved_to IS NOT NULL").fetchall())
        rows = [(s.url, dump_source(s), host_of(moved.get(s.url) or s.url))
                for s in config.upstream if s.enabled]
        db.execute("UPDATE upstream_source SET config = NULL WHERE config IS NOT NULL")
        db.executemany("INSERT INTO upstream_source (url, config, host) VALUES (?, ?, ?) "
                       "ON CONFLICT (url) DO UPDATE SET config = excluded.config, "
                       "host = excluded.host", rows)
        db.executemany("INSERT INTO fetch_host (host) VALUES (?) ON CONFLICT DO NOTHING",
                       [(host,) for host in sorted({row[2] for row in rows})])
        db.executemany("INSERT INTO shared_setting VALUES (?, ?) ON CONFLICT (name) "
                       "DO UPDATE SET value = excluded.value",
                       [(name, str(getattr(config, name))) for name in SHARED_SETTINGS])
    return len(rows)


def shared_settings(db: Database) -> dict[str, str]:
    return dict(db.execute("SELECT name, value FROM shared_setting").fetchall())


def claim_hosts(db: Database, worker: str, limit: int, lease_seconds: float,
                now_iso: str) -> list[str]:
    """Lease up to `limit` hosts that have a due source and no live lease (or a lease
    of this worker's own); their names."""
    rows = db.execute(
        f"UPDATE fetch_host SET owner = ?, lease_until = {NOW} + ? WHERE host IN ("  # noqa: S608
        "SELECT h.host FROM fetch_host AS h "
        f"WHERE (h.owner IS NULL OR h.owner = ? OR h.lease_until < {NOW}) "
        "AND EXISTS (SELECT 1 FROM upstream_source AS s WHERE s.host = h.host "
        "AND s.config IS NOT NULL AND s.disabled IS NULL "
        "AND (s.next_poll_at IS NULL OR s.next_poll_at <= ?)) "
        "ORDER BY h.lease_until NULLS FIRST, h.host LIMIT ? FOR UPDATE SKIP LOCKED) "
        "RETURNING host", (worker, lease_seconds, worker, now_iso, limit)).fetchall()
    return [row[0] for row in rows]


def due_sources(db: Database, hosts: Sequence[str], now_iso: str) -> list[UpstreamSource]:
    """The due sources of these (leased) hosts."""
    if not hosts:
        return []
    marks = ", ".join("?" * len(hosts))
    rows = db.execute(
        f"SELECT config FROM upstream_source WHERE host IN ({marks}) "  # noqa: S608
        "AND config IS NOT NULL AND disabled IS NULL "
        "AND (next_poll_at IS NULL OR next_poll_at <= ?) ORDER BY next_poll_at NULLS FIRST",
        (*hosts, now_iso)).fetchall()
    return [load_source(row[0]) for row in rows]


def renew(db: Database, worker: str, hosts: Iterable[str], lease_seconds: float) -> int:
    """Extend this worker's leases; how many it still held."""
    wanted = list(hosts)
    if not wanted:
        return 0
    marks = ", ".join("?" * len(wanted))
    return db.execute(
        f"UPDATE fetch_host SET lease_until = {NOW} + ? "  # noqa: S608
        f"WHERE owner = ? AND host IN ({marks})", (lease_seconds, worker, *wanted)).rowcount


def release(db: Database, worker: str, hosts: Iterable[str]) -> None:
    wanted = list(hosts)
    if wanted:
        marks = ", ".join("?" * len(wanted))
        db.execute(f"UPDATE fetch_host SET owner = NULL, lease_until = NULL "  # noqa: S608
                   f"WHERE owner = ? AND host IN ({marks})", (worker, *wanted))


def next_due(db: Database) -> str | None:
    """When the next enabled source is due (ISO), or None when none is."""
    row = db.execute("SELECT min(COALESCE(next_poll_at, '')) FROM upstream_source "
                     "WHERE config IS NOT NULL AND disabled IS NULL").fetchone()
    return None if row is None or row[0] is None else str(row[0])


def notify_entries(db: Database) -> None:
    """Wake the publishers listening (at the commit of the transaction this is in)."""
    db.execute(f"NOTIFY {CHANNEL}")


@dataclass(frozen=True)
class WorkerName:
    """A worker's name: machine, process id and a start stamp (unique across machines
    and restarts)."""

    machine: str
    pid: int

    @classmethod
    def here(cls) -> WorkerName:
        return cls(socket.gethostname(), os.getpid())

    def __str__(self) -> str:
        return f"{self.machine}:{self.pid}"


def heartbeat(db: Database, name: WorkerName, started: float, polled: int, fetched: int,
              failed: int, hosts: int) -> None:
    db.execute(
        "INSERT INTO fetch_worker (name, machine, pid, started_at, seen_at, polled, "
        f"fetched, failed, hosts) VALUES (?, ?, ?, ?, {NOW}, ?, ?, ?, ?) "
        f"ON CONFLICT (name) DO UPDATE SET seen_at = {NOW}, polled = excluded.polled, "
        "fetched = excluded.fetched, failed = excluded.failed, hosts = excluded.hosts",
        (str(name), name.machine, name.pid, started, polled, fetched, failed, hosts))


@dataclass(frozen=True)
class QueueView:
    """What `check` shows of the shared queue."""

    sources: int
    due: int
    running: int  # due sources of hosts leased now
    failing: int
    workers: list[dict[str, Any]]
    leases: list[tuple[str, str, float]]  # host, owner, seconds left


def queue_view(db: Database, now_iso: str, failing_after: int) -> QueueView:
    sources, due, running, failing = db.execute(
        "SELECT count(*), "
        "count(*) FILTER (WHERE next_poll_at IS NULL OR next_poll_at <= ?), "
        "count(*) FILTER (WHERE (next_poll_at IS NULL OR next_poll_at <= ?) AND host IN "
        f"(SELECT host FROM fetch_host WHERE lease_until > {NOW})), "
        "count(*) FILTER (WHERE error_count >= ?) "
        "FROM upstream_source WHERE config IS NOT NULL AND disabled IS NULL",
        (now_iso, now_iso, failing_after)).fetchone()
    columns = ("name", "machine", "pid", "started_at", "seen_seconds_ago", "polled",
               "fetched", "failed", "hosts")
    workers = [dict(zip(columns, row, strict=True)) for row in db.execute(
        f"SELECT name, machine, pid, started_at, {NOW} - seen_at, polled, fetched, "
        "failed, hosts FROM fetch_worker ORDER BY name")]
    leases = [(row[0], row[1], float(row[2])) for row in db.execute(
        f"SELECT host, owner, lease_until - {NOW} FROM fetch_host "
        f"WHERE lease_until > {NOW} ORDER BY host")]
    return QueueView(int(sources), int(due), int(running), int(failing), workers, leases)

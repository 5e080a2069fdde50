"""SQLite state: created and migrated automatically; a corrupt file never stops a build.

Holds what must survive between runs: first-seen times (stable `updated` for undated
posts and upstream entries), and the tables the upstream and cache layers add.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

# Each step runs once, in order; PRAGMA user_version records how many have run.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE first_seen (
        entry_id TEXT PRIMARY KEY,
        seen_at  TEXT NOT NULL
    );
    """,
    # 2: upstream sources (validators, health, schedule) and their stored entries
    """
    CREATE TABLE upstream_source (
        url            TEXT PRIMARY KEY,
        etag           TEXT,
        last_modified  TEXT,
        last_status    INTEGER,
        error_count    INTEGER NOT NULL DEFAULT 0,
        last_error     TEXT,
        last_polled_at TEXT,
        next_poll_at   TEXT
    );
    CREATE TABLE upstream_entry (
        source_url TEXT NOT NULL,
        entry_id   TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen  TEXT NOT NULL,
        sort_at    TEXT NOT NULL,
        data       TEXT NOT NULL,
        PRIMARY KEY (source_url, entry_id)
    );
    CREATE INDEX upstream_entry_sort ON upstream_entry (source_url, sort_at);
    """,
    # 3: politeness (410 disables, 301/308 moves), image probes, posts written for sources
    """
    ALTER TABLE upstream_source ADD COLUMN disabled TEXT;
    ALTER TABLE upstream_source ADD COLUMN moved_to TEXT;
    CREATE TABLE image_probe (
        url       TEXT PRIMARY KEY,
        status    INTEGER,
        mime_type TEXT,
        length    INTEGER NOT NULL DEFAULT 0,
        probed_at TEXT NOT NULL
    );
    CREATE TABLE written_post (
        entry_id   TEXT PRIMARY KEY,
        source_url TEXT NOT NULL,
        path       TEXT NOT NULL,
        sha256     TEXT NOT NULL,
        written_at TEXT NOT NULL
    );
    """,
    # 4: a generation counter bumped by every change to a table that shapes the output
    # so a build can tell "the state is as the last build saw it" without reading it
    # (the token tells a new state file from an old one whose counter is the same).
    """
    CREATE TABLE generation (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        token   TEXT NOT NULL,
        counter INTEGER NOT NULL
    );
    INSERT INTO generation VALUES (1, lower(hex(randomblob(16))), 0);
""" + "".join(
        f"CREATE TRIGGER {table}_{event.lower()} AFTER {event} ON {table} "
        "BEGIN UPDATE generation SET counter = counter + 1; END;\n"
        for table in ("first_seen", "upstream_entry", "image_probe", "written_post")
        for event in ("INSERT", "UPDATE", "DELETE")),
    # 5: upstream entries bump the generation once per stored source (store_dumped, the
    # only writer of upstream_entry), not once per row: a row trigger was a third of
    # storing 50k entries (~1 CPU-s of the thread a first poll waits on)
    "".join(f"DROP TRIGGER upstream_entry_{event};\n"
            for event in ("insert", "update", "delete")),
]

Clock = Callable[[], datetime]
# How long to wait for another process's lock on the state file before going on without
# it (a module constant so tests can shorten it).
BUSY_TIMEOUT_SECONDS = 30.0
DEFAULT_CHECKPOINT_PAGES = 1000  # SQLite's own default
BULK_CHECKPOINT_PAGES = 16384  # ~64 MB of 4 KiB pages


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class StateStore:
    def __init__(self, path: Path, clock: Clock = utc_now) -> None:
        self.path = path
        self.clock = clock
        self.db = self._open()
        self._first_seen: dict[str, datetime] | None = None
        self._read_only = False

    @contextmanager
    def bulk_writes(self) -> Iterator[None]:
        """Many large transactions ahead (a first poll writes ~250 MB of entries): the
        WAL is checkpointed every ~64 MB instead of every ~4 MB. Each checkpoint syncs
        the WAL and the database; at the default they were a third of the poll's
        storing time. Commits are as durable as before (synchronous=NORMAL)."""
        self.db.execute(f"PRAGMA wal_autocheckpoint={BULK_CHECKPOINT_PAGES}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA wal_autocheckpoint={DEFAULT_CHECKPOINT_PAGES}")

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = str(self.path) == ":memory:" or self.path.exists()
        try:
            db = self._connect_and_migrate()
        except sqlite3.DatabaseError as exc:
            if _locked(exc):
                # Busy is not corrupt: moving a file another process holds open aside
                # lost its data (seen with a foreign `BEGIN EXCLUSIVE`). The caller goes
                # on with a temporary state and says so.
                raise
            # Corrupt or foreign file: keep it for inspection, start a fresh one.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("%s: state file unusable (%s); moved to %s and rebuilt",
                      self.path, exc, aside.name)
            try:
                self.path.replace(aside)
            except OSError:
                self.path.unlink(missing_ok=True)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return self._connect_and_migrate()
        if not existed and Path(f"{self.path}.cache").exists():
            # Our build cache is there but the state is not: it was deleted.
            log.warning("%s: state file was missing (deleted?); started a new one: undated "
                        "entries get new first-seen dates, upstream entries are fetched again",
                        self.path)
        return db

    def _connect_and_migrate(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
                db.execute("BEGIN IMMEDIATE")
                for statement in _statements(step):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
                db.execute("COMMIT")
            db.execute("SELECT count(*) FROM first_seen").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def first_seen(self, entry_id: str) -> datetime:
        """When this id was first seen; recorded now if it is new."""
        if self._first_seen is None:
            self._first_seen = {
                row[0]: datetime.fromisoformat(row[1])
                for row in self.db.execute("SELECT entry_id, seen_at FROM first_seen")
            }
        seen = self._first_seen.get(entry_id)
        if seen is None:
            seen = self.clock()
            self._first_seen[entry_id] = seen
            if not self._read_only:
                try:
                    self.db.execute("INSERT OR IGNORE INTO first_seen VALUES (?, ?)",
                                    (entry_id, seen.isoformat()))
                except sqlite3.OperationalError as exc:
                    # Locked by another process, disk full, read-only: this crashed the
                    # build. Keep the time for this build, stop trying (each try waits
                    # BUSY_TIMEOUT_SECONDS) and say what it costs.
                    self._read_only = True
                    log.warning("%s: cannot record first-seen times (%s); undated entries "
                                "may get new dates on the next build", self.path, exc)
        return seen

    def generation(self) -> str | None:
        """Changes whenever first-seen times, upstream entries or image probes change;
        None for a temporary in-memory state (which no later build will see again)."""
        if str(self.path) == ":memory:":
            return None
        try:
            row = self.db.execute("SELECT token, counter FROM generation").fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else f"{row[0]}:{row[1]}"

    def close(self) -> None:
        self.db.close()


def _locked(exc: sqlite3.DatabaseError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) \
        or "locked" in str(exc)


def _statements(script: str) -> list[str]:
    # A statement ends with ";" at the end of a line (a trigger body has "; " inside).
    return [s.strip() for s in re.split(r";[ \t]*\n", script) if s.strip()]

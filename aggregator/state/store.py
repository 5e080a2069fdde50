"""SQLite state: created and migrated automatically; a corrupt file never stops a build.

Holds what must survive between runs: first-seen times (stable `updated` for undated
posts and upstream entries), and the tables the upstream and cache layers add.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from aggregator.problems import ProblemLog
from aggregator.state import inventory
from aggregator.state.database import Database
from aggregator.state.inventory import Inventory

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
    # only writer of upstream_entry), not once per row: a row trigger is a third of
    # storing 50k entries (~1 CPU-s of the thread a first poll waits on)
    "".join(f"DROP TRIGGER upstream_entry_{event};\n"
            for event in ("insert", "update", "delete")),
    # 6: the files the builds published, per output dir (state/published.py); no
    # generation trigger: they follow from the inputs, they do not shape the output
    """
    CREATE TABLE published_file (
        out_dir TEXT NOT NULL,
        rel     TEXT NOT NULL,
        PRIMARY KEY (out_dir, rel)
    ) WITHOUT ROWID;
    """,
    # 7: WebSub pings a build recorded and no sender has delivered yet (state/websub.py);
    # `seq` grows each time a build records the ping again; no generation trigger
    """
    CREATE TABLE websub_ping (
        hub        TEXT NOT NULL,
        url        TEXT NOT NULL,
        seq        INTEGER NOT NULL DEFAULT 0,
        queued_at  TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_try   REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (hub, url)
    ) WITHOUT ROWID;
    """,
]

Clock = Callable[[], datetime]
# How long to wait for another process's lock on the state file before going on without
# it (a module constant so tests can shorten it).
BUSY_TIMEOUT_SECONDS = 30.0
DEFAULT_CHECKPOINT_PAGES = 1000  # SQLite's own default
BULK_CHECKPOINT_PAGES = 16384  # ~64 MB of 4 KiB pages


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class StateUnusable(Exception):
    """The state file can neither be used nor be replaced by a new one (a damaged file
    in a read-only folder, an unreadable file): the caller goes on with a temporary
    state and says so. Never moved aside or deleted."""


class StateStore:
    def __init__(self, path: Path, clock: Clock = utc_now,
                 problems: ProblemLog | None = None) -> None:
        self.path = path
        self.where = str(path)  # for messages (the file, or the database without password)
        self.clock = clock
        self.problems = problems if problems is not None else ProblemLog()
        # Why the state cannot be written (a read-only file, folder or mount; a full
        # disk where SQLite cannot make its side files), or None.
        # Everything stored is still read and published; nothing new is recorded.
        self.read_only: str | None = None
        self.pruned = 0  # upstream entries dropped to honour a retention since opened
        self._first_seen: dict[str, datetime] | None = None
        self._writes_failed = False  # a write failed (locked, full): not tried again
        self._inventory: Inventory | None = None
        self.db: Database = self._open()

    @property
    def temporary(self) -> bool:
        return str(self.path) == ":memory:"

    @contextmanager
    def bulk_writes(self) -> Iterator[None]:
        """Many large transactions ahead (a first poll writes ~250 MB of entries): the
        WAL is checkpointed every ~64 MB instead of every ~4 MB. Each checkpoint syncs
        the WAL and the database; at the default they are a third of the poll's
        storing time. Commits are as durable as before (synchronous=NORMAL)."""
        self.db.execute(f"PRAGMA wal_autocheckpoint={BULK_CHECKPOINT_PAGES}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA wal_autocheckpoint={DEFAULT_CHECKPOINT_PAGES}")

    def _open(self) -> Database:
        if self.temporary:
            return self._connect_and_migrate()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size: int | None = self.path.stat().st_size
        except FileNotFoundError:
            size = None
        self._inventory = inventory.load(self.path)
        try:
            db = self._connect_and_migrate()
        except sqlite3.DatabaseError as exc:
            if _locked(exc):
                # Busy is not corrupt: moving a file another process holds open aside
                # loses its data (as with a foreign `BEGIN EXCLUSIVE`). The caller goes
                # on with a temporary state and says so.
                raise
            read_only = self._open_read_only(exc)
            return self._replace_unusable(exc) if read_only is None else read_only
        refused = _write_refused(db)
        self.read_only = None if refused is None else _read_only_reason(self.path, refused)
        if size is None:
            self._report_new(db, "was missing (deleted?)", missing=True)
        elif size == 0:
            self._report_new(db, "was empty (0 bytes: truncated?)")
        else:
            self._report_new(db, "is not the one the last build used (replaced?)")
        return db

    def _open_read_only(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection | None:
        """After `exc` from opening the state normally: the state opened read-only when
        `exc` says it cannot be written (a read-only file, folder or mount; in a
        read-only folder SQLite cannot make the WAL's side files). None when `exc`
        says the file is damaged or not a state file (it is then moved aside)."""
        if _error_code(exc) not in _ACCESS_ERRORS:
            return None
        # immutable: no side files at all; only when no WAL holds commits it would skip
        for query in ("mode=ro", "mode=ro&immutable=1"):
            if "immutable" in query and _wal_size(self.path):
                break
            try:
                db = sqlite3.connect(f"{self.path.absolute().as_uri()}?{query}", uri=True,
                                     timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
            except sqlite3.Error:
                continue
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                db.execute("SELECT count(*) FROM first_seen").fetchone()
            except sqlite3.DatabaseError:
                db.close()
                continue
            if version != len(MIGRATIONS):
                db.close()
                raise StateUnusable(f"{exc}; it is read-only and this version needs to "
                                    f"upgrade it") from exc
            self.read_only = _read_only_reason(self.path, exc)
            return db
        raise StateUnusable(str(exc)) from exc

    def _replace_unusable(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """A damaged or foreign file: kept aside for inspection, a new state started."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            self.path.replace(aside)
        except OSError as err:
            raise StateUnusable(f"{exc}; it cannot be moved aside ({err.strerror})") from err
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        db = self._connect_and_migrate()
        lost = self._lost(db)
        self.problems.error(str(self.path), f"state file unusable ({exc}); moved to "
                            f"{aside.name} and started a new one" + (f". {lost}" if lost else ""))
        return db

    def _report_new(self, db: sqlite3.Connection, how: str, *, missing: bool = False) -> None:
        """Report a state that is not the one the last build closed (`how` it looks),
        when that one held something: an error saying what was lost and how to get it
        back. A first run, even one killed before its first commit, says nothing."""
        lost = self._lost(db)
        if lost is not None:
            self.problems.error(str(self.path), f"state file {how}; started a new one. {lost}")
        elif missing and self._inventory is None and Path(f"{self.path}.cache").exists():
            # Our build cache is there but the state is not (and no inventory says
            # what it held): it was deleted.
            log.warning("%s: state file was missing (deleted?); started a new one: undated "
                        "entries get new first-seen dates, upstream entries are fetched again",
                        self.path)

    def _lost(self, db: sqlite3.Connection) -> str | None:
        """What the state the last build closed held, when `db` is another (a new) one:
        the inventory names the state by its token. Says how to get it back."""
        held = self._inventory
        if held is None or not held.held_anything or held.token == _token(db):
            return None
        again = []
        if held.upstream_entries or held.written_posts:
            again.append("run `aggregator fetch --all` to fetch the upstream entries again "
                         "(each source gives back what its feed still lists)")
        if held.first_seen:
            again.append("undated posts and entries get new first-seen dates")
        return f"Lost: {held.describe()}; " + "; ".join(again)

    def _connect_and_migrate(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # a new file, before anything (even the WAL switch) writes its first
                # page: pruned entries' pages can then be given back without
                # rewriting the file (close())
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
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
            self._record_first_seen(entry_id, seen)
        return seen

    def _record_first_seen(self, entry_id: str, seen: datetime) -> None:
        if self._writes_failed:
            return
        if self.read_only is not None:
            self._writes_failed = True
            self.problems.error(self.where, f"state file cannot be written "
                                f"({self.read_only}): new first-seen times are not recorded, "
                                "so undated entries get new dates at every build; make the "
                                "file and its folder writable for this user (owner, mode, "
                                "mount, free space) and build again")
            return
        try:
            self.db.execute("INSERT INTO first_seen VALUES (?, ?) ON CONFLICT DO NOTHING",
                            (entry_id, seen.isoformat()))
        except sqlite3.OperationalError as exc:
            # Locked by another process, disk full, read-only: not a reason to stop the
            # build. Keep the time for this build, stop trying (each try waits
            # BUSY_TIMEOUT_SECONDS) and say what it costs.
            if _error_code(exc) == sqlite3.SQLITE_READONLY:
                self.read_only = _read_only_reason(self.path, exc)
                self._record_first_seen(entry_id, seen)
                return
            self._writes_failed = True
            log.warning("%s: cannot record first-seen times (%s); undated entries "
                        "may get new dates on the next build", self.where, exc)

    def pipelined(self) -> AbstractContextManager[None]:
        """Statements inside need not wait for each other's answers (a network
        database's round trips: state/postgres.py); a file's are local calls."""
        return contextlib.nullcontext()

    def entries_stored(self) -> None:
        """Called in the transaction that stored a source's entries: a shared state
        wakes its publishers here (state/postgres.py); a file has no one to wake."""

    def generation(self) -> str | None:
        """Changes whenever first-seen times, upstream entries or image probes change;
        None for a temporary in-memory state (which no later build will see again)."""
        if self.temporary:
            return None
        try:
            row = self.db.execute("SELECT token, counter FROM generation").fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else f"{row[0]}:{row[1]}"

    def close(self) -> None:
        """Give pruned entries' pages back, note what the state holds (`inventory`),
        close. Neither ever fails the caller: the state is stored already."""
        try:
            if not self.temporary and self.read_only is None:
                if self.pruned:
                    self._vacuum()
                self._take_inventory()
        except sqlite3.Error as exc:
            log.warning("%s: %s (at close; what was stored stays stored)", self.where, exc)
        finally:
            self.db.close()

    def _vacuum(self) -> None:
        """After entries were pruned to a retention: the free pages go back to the file
        system, so a state with retentions stays about as big as what it holds. A file
        made with auto_vacuum=INCREMENTAL does it in proportion to what was freed; an
        older file is vacuumed once, which turns that mode on."""
        if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # incremental
            # executescript steps the pragma to its end; execute() frees one page
            cast(sqlite3.Connection, self.db).executescript("PRAGMA incremental_vacuum;")
        else:
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.db.execute("VACUUM")
        self.pruned = 0

    def _take_inventory(self) -> None:
        generation = self.generation()
        if generation is None or (self._inventory is not None
                                  and self._inventory.generation == generation):
            return
        counted = inventory.count(self.db, generation)
        if inventory.save(self.path, counted):
            self._inventory = counted


# primary result codes that say the file cannot be opened or written, not that it is bad
_ACCESS_ERRORS = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
                            sqlite3.SQLITE_PERM, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_AUTH})


def _error_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _token(db: sqlite3.Connection) -> str | None:
    try:
        row = db.execute("SELECT token FROM generation").fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def _wal_size(path: Path) -> int:
    try:
        return Path(f"{path}-wal").stat().st_size
    except OSError:
        return 0


def _read_only_reason(path: Path, exc: sqlite3.Error) -> str:
    """SQLite's words and, when it can be told, which file or folder cannot be
    written and why."""
    for where in (path, path.parent):
        try:
            fs = os.statvfs(where)
            if fs.f_flag & os.ST_RDONLY:
                return f"{exc}: {where}: {os.strerror(errno.EROFS)}"
            if not os.access(where, os.W_OK):
                return f"{exc}: {where}: {os.strerror(errno.EACCES)}"
            if fs.f_bavail == 0:
                return f"{exc}: {where}: {os.strerror(errno.ENOSPC)}"
        except OSError:
            continue
    return str(exc)


def _write_refused(db: sqlite3.Connection) -> sqlite3.OperationalError | None:
    """Why this state cannot be written (SQLite opens a file it may not write
    read-only, and says so only at the first write), or None. Asked with a write
    that changes nothing; a busy state is not waited for (it counts as writable)."""
    db.execute("PRAGMA busy_timeout = 0")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("UPDATE generation SET counter = counter WHERE 0")
        finally:
            db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        return exc if _error_code(exc) == sqlite3.SQLITE_READONLY else None
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    return None


def _locked(exc: sqlite3.DatabaseError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) \
        or "locked" in str(exc)


def _statements(script: str) -> list[str]:
    # A statement ends with ";" at the end of a line (a trigger body has "; " inside).
    return [s.strip() for s in re.split(r";[ \t]*\n", script) if s.strip()]

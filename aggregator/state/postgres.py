"""The state on PostgreSQL (`state.url`): the connection the state modules use, the
schema and its migrations, and the StateStore on it.

The state modules write one SQL for both databases (docs/scaling.md); this module turns
`?` into psycopg's `%s` and `BEGIN IMMEDIATE` into `BEGIN`. psycopg's errors reach them
as `PostgresError`, a `sqlite3.OperationalError`: the state code catches one DB-API
error family for both databases (a write that fails is reported and the work goes on,
as with a busy file). psycopg is imported only here, so a SQLite user never needs it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from aggregator.problems import ProblemLog
from aggregator.state.database import redacted, transaction
from aggregator.state.store import Clock, StateStore, utc_now

log = logging.getLogger(__name__)

CONNECT_SECONDS = 10
# Migrations of different processes (workers starting together) take turns under this
# advisory lock; the roles' own locks use other keys (state/fleet.py).
MIGRATION_LOCK = 0x61676701

# Each step runs once, in order; `state_version` records how many have run. The tables
# are SQLite's (state/store.py) plus what fetch workers on many machines share.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE first_seen (
        entry_id TEXT PRIMARY KEY,
        seen_at  TEXT NOT NULL
    );
    CREATE TABLE upstream_source (
        url            TEXT PRIMARY KEY,
        etag           TEXT,
        last_modified  TEXT,
        last_status    INTEGER,
        error_count    INTEGER NOT NULL DEFAULT 0,
        last_error     TEXT,
        last_polled_at TEXT,
        next_poll_at   TEXT,
        disabled       TEXT,
        moved_to       TEXT
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
    CREATE TABLE image_probe (
        url       TEXT PRIMARY KEY,
        status    INTEGER,
        mime_type TEXT,
        length    BIGINT NOT NULL DEFAULT 0,
        probed_at TEXT NOT NULL
    );
    CREATE TABLE written_post (
        entry_id   TEXT PRIMARY KEY,
        source_url TEXT NOT NULL,
        path       TEXT NOT NULL,
        sha256     TEXT NOT NULL,
        written_at TEXT NOT NULL
    );
    CREATE TABLE generation (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        token   TEXT NOT NULL,
        counter BIGINT NOT NULL
    );
    INSERT INTO generation VALUES (1, md5(random()::text || clock_timestamp()::text), 0);
    CREATE FUNCTION bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE generation SET counter = counter + 1;
        RETURN NULL;
    END $$;
    CREATE TRIGGER first_seen_bump AFTER INSERT OR UPDATE OR DELETE ON first_seen
        FOR EACH ROW EXECUTE FUNCTION bump_generation();
    CREATE TRIGGER image_probe_bump AFTER INSERT OR UPDATE OR DELETE ON image_probe
        FOR EACH ROW EXECUTE FUNCTION bump_generation();
    CREATE TRIGGER written_post_bump AFTER INSERT OR UPDATE OR DELETE ON written_post
        FOR EACH ROW EXECUTE FUNCTION bump_generation();
    CREATE TABLE published_file (
        out_dir TEXT NOT NULL,
        rel     TEXT NOT NULL,
        PRIMARY KEY (out_dir, rel)
    );
    CREATE TABLE websub_ping (
        hub        TEXT NOT NULL,
        url        TEXT NOT NULL,
        seq        INTEGER NOT NULL DEFAULT 0,
        queued_at  TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_try   DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (hub, url)
    );
    """,
    # 2: fetch workers on many machines (state/fleet.py): the sources as the publisher's
    # config gives them, host leases (one worker polls a host at a time, so the
    # per-host limit holds across workers), the workers seen, the publisher's settings
    """
    ALTER TABLE upstream_source ADD COLUMN config TEXT;
    ALTER TABLE upstream_source ADD COLUMN host TEXT;
    CREATE INDEX upstream_source_due ON upstream_source (host, next_poll_at)
        WHERE config IS NOT NULL AND disabled IS NULL;
    CREATE TABLE fetch_host (
        host        TEXT PRIMARY KEY,
        owner       TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE TABLE fetch_worker (
        name        TEXT PRIMARY KEY,
        machine     TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        started_at  DOUBLE PRECISION NOT NULL,
        seen_at     DOUBLE PRECISION NOT NULL,
        polled      BIGINT NOT NULL DEFAULT 0,
        fetched     BIGINT NOT NULL DEFAULT 0,
        failed      BIGINT NOT NULL DEFAULT 0,
        hosts       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE shared_setting (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
]


class PostgresError(sqlite3.OperationalError):
    """A psycopg error, as the state modules catch it."""


@lru_cache(maxsize=1024)
def translate(sql: str, with_parameters: bool) -> str:
    """Our SQL in psycopg's dialect: `?` → `%s` (and a literal `%` doubled, which
    psycopg reads only when parameters are given); `BEGIN IMMEDIATE` → `BEGIN`."""
    if sql.lstrip().upper().startswith("BEGIN"):
        return "BEGIN"
    return sql.replace("%", "%%").replace("?", "%s") if with_parameters else sql


class PostgresDatabase:
    """A psycopg connection in autocommit, speaking the state modules' SQL. A statement
    outside a transaction that finds the connection broken (the server restarted)
    reconnects once and runs again; inside a transaction the error goes to the caller,
    whose ROLLBACK then finds a fresh connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._in_transaction = False
        self._conn = self._open()

    @classmethod
    def migrated(cls, url: str) -> PostgresDatabase:
        """A connection to a database whose schema is this version's (migrated now if
        it is older: any process may be the first to reach a new database)."""
        db = cls(url)
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_SECONDS,
                                   application_name="aggregator")
        except psycopg.Error as exc:
            raise PostgresError(f"{redacted(self.url)}: {exc}".strip()) from exc

    @property
    def raw(self) -> Any:
        """The psycopg connection (the advisory locks of service/lock.py)."""
        return self._conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self._run(sql, parameters, many=False)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Any:
        return self._run(sql, list(seq_of_parameters), many=True)

    def _run(self, sql: str, parameters: Any, many: bool) -> Any:
        import psycopg

        word = sql.lstrip()[:8].upper()
        with self._lock:
            for attempt in (1, 2):
                if self._conn.broken or self._conn.closed:
                    if word.startswith("ROLLBACK"):  # the transaction died with it
                        self._in_transaction = False
                        self._reconnect()
                        return self._conn.cursor()
                    if self._in_transaction:
                        raise PostgresError(f"{redacted(self.url)}: the connection was lost "
                                            "in a transaction")
                    self._reconnect()
                try:
                    if many:
                        cursor = self._conn.cursor()
                        if parameters:
                            cursor.executemany(translate(sql, True), parameters)
                    else:
                        cursor = self._conn.execute(translate(sql, bool(parameters)),
                                                    parameters or None)
                except psycopg.OperationalError as exc:
                    if attempt == 1 and self._conn.broken and not self._in_transaction:
                        log.warning("%s: %s; reconnecting", redacted(self.url), exc)
                        continue
                    raise PostgresError(str(exc)) from exc
                except psycopg.Error as exc:
                    raise PostgresError(str(exc)) from exc
                if word.startswith("BEGIN"):
                    self._in_transaction = True
                elif word.startswith(("COMMIT", "ROLLBACK", "END")):
                    self._in_transaction = False
                return cursor
        raise AssertionError("unreachable")

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """The statements run inside are sent without waiting for each answer (one
        round trip at the end, or when a result is fetched). An error, raised at the
        latest when the block ends, rolls back the transaction it broke."""
        import psycopg

        with self._lock:
            try:
                with self._conn.pipeline():
                    yield
            except (psycopg.Error, PostgresError) as exc:
                self._in_transaction = False
                try:
                    self._conn.execute("ROLLBACK")
                except psycopg.Error:
                    log.debug("rolling back after a failed pipeline failed", exc_info=True)
                if isinstance(exc, PostgresError):
                    raise
                raise PostgresError(str(exc)) from exc

    def _reconnect(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close
            log.debug("closing a broken connection failed", exc_info=True)
        self._conn = self._open()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PostgresDatabase:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """As sqlite3's `with connection`: the open transaction committed, or rolled
        back on an error."""
        if self._in_transaction:
            self.execute("ROLLBACK" if kind is not None else "COMMIT")


def migrate(db: PostgresDatabase) -> None:
    """Run the steps this database has not run, one process at a time."""
    with transaction(db):
        db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS state_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM state_version").fetchone()
        version = 0 if row is None else int(row[0])
        for step in MIGRATIONS[version:]:
            db.execute(step)
        if row is None:
            db.execute("INSERT INTO state_version VALUES (?)", (len(MIGRATIONS),))
        elif version != len(MIGRATIONS):
            db.execute("UPDATE state_version SET version = ?", (len(MIGRATIONS),))


class PostgresStateStore(StateStore):
    """StateStore on a PostgreSQL database: the same tables and queries; no file to
    vacuum, inventory or replace (the database's own tools keep it)."""

    def __init__(self, url: str, clock: Clock = utc_now,
                 problems: ProblemLog | None = None) -> None:
        self.url = url
        super().__init__(Path("postgresql"), clock, problems)
        self.where = redacted(url)

    @property
    def temporary(self) -> bool:
        return False

    def _open(self) -> Any:
        return PostgresDatabase.migrated(self.url)

    @contextmanager
    def bulk_writes(self) -> Iterator[None]:
        yield

    def pipelined(self) -> AbstractContextManager[None]:
        return cast(PostgresDatabase, self.db).pipeline()

    def entries_stored(self) -> None:
        from aggregator.state.fleet import notify_entries

        notify_entries(self.db)

    def close(self) -> None:
        self.db.close()


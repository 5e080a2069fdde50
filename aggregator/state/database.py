"""What the state modules use of a database connection: the SQLite file's (the embedded
default) or a PostgreSQL database's (`state.url`). They write one SQL that both accept
(`?` parameters, `ON CONFLICT`, `BEGIN IMMEDIATE`); state/postgres.py adapts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    """What the state modules use of a connection: sqlite3.Connection has it, and
    state/postgres.PostgresDatabase. Both run in autocommit; a transaction is an
    explicit BEGIN … COMMIT."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...
    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /
                    ) -> Cursor: ...
    def close(self) -> None: ...


@contextmanager
def transaction(db: Database) -> Iterator[None]:
    """BEGIN … COMMIT, rolled back on any error."""
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def redacted(url: str) -> str:
    """A database URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))

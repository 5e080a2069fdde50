"""Where a config's state lives: the SQLite file (the embedded default) or a PostgreSQL
database (`state.url`), and plain connections to it for the side tasks (the record of
published files, WebSub pings)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from aggregator.config import Config
from aggregator.state.database import Database, redacted

BUSY_SECONDS = 5.0  # the longest wait for a file another process holds, in side tasks


@dataclass(frozen=True)
class StateAddress:
    """The state of a config: `url` (PostgreSQL) when set, else the SQLite file."""

    path: Path
    url: str | None = None

    @classmethod
    def of(cls, config: Config) -> StateAddress:
        return cls(config.state_path, config.state_url)

    @property
    def shared(self) -> bool:
        """A store several processes on several machines use (roles need one)."""
        return self.url is not None

    def __str__(self) -> str:
        """For messages: the file, or the URL without its password."""
        return self.path.as_posix() if self.url is None else redacted(self.url)

    def connect(self, read_only: bool = False) -> Database:
        """A plain connection to a state a StateStore opened (and migrated) already:
        it never creates a file and reports nothing of its own."""
        if self.url is not None:
            from aggregator.state.postgres import PostgresDatabase

            return PostgresDatabase.migrated(self.url)
        mode = "ro" if read_only else "rw"
        return sqlite3.connect(f"{self.path.absolute().as_uri()}?mode={mode}", uri=True,
                               timeout=BUSY_SECONDS, isolation_level=None)

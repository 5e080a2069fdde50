"""The record of what the builds published into an output dir, in the state file.

The publisher removes a file only when this record says an earlier build published
it and the current one did not (the feeds of a vanished category): nothing else in
the output dir is ever deleted. The record lives in the state file, not in the output
dir (a file there was shipped by every deploy: rsync, object storage) and not in the
disposable build cache (deleting that must not make us forget what we wrote).

An output dir published by an older version holds `.aggregator-manifest`: the
publisher reads it (never through a link), merges it and deletes it once this record
is saved (publish/atomic.py).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from aggregator.state.address import StateAddress
from aggregator.state.database import Database, transaction

log = logging.getLogger(__name__)


class PublishedRecord:
    """`previous()`: what the builds published into `out_dir` so far; `save(rels)`:
    what this build published. A state that cannot be read gives an empty record
    (nothing is removed); one that cannot be written keeps the old record."""

    def __init__(self, state: Path | StateAddress, out_dir: Path) -> None:
        self.state = state if isinstance(state, StateAddress) else StateAddress(state)
        self.key = str(out_dir)
        self._known: set[str] | None = None  # what the state holds, once read

    def previous(self) -> set[str]:
        try:
            db = self._connect()
            try:
                self._known = {row[0] for row in db.execute(
                    "SELECT rel FROM published_file WHERE out_dir = ?", (self.key,))}
            finally:
                db.close()
            return set(self._known)
        except (OSError, sqlite3.Error) as exc:
            log.warning("%s: cannot read the record of published files (%s); no stale "
                        "feed is removed this time", self.state, exc)
            return set()

    def _connect(self) -> Database:
        """The state the build opened (and migrated) already, in a plain connection
        that reports nothing of its own (the build's StateStore has said what there
        is to say about the state). A record not read removes nothing; one not saved
        keeps the last."""
        return self.state.connect()

    def save(self, published: set[str]) -> bool:
        """Record `published`; False when the record could not be read or written."""
        if self._known is None:
            return False  # never read: the record may hold more than we know
        added, gone = published - self._known, self._known - published
        if added or gone:
            try:
                db = self._connect()
                try:
                    with transaction(db):
                        db.executemany(
                            "DELETE FROM published_file WHERE out_dir = ? AND rel = ?",
                            [(self.key, rel) for rel in gone])
                        db.executemany("INSERT INTO published_file VALUES (?, ?) "
                                       "ON CONFLICT DO NOTHING",
                                       [(self.key, rel) for rel in added])
                finally:
                    db.close()
            except (OSError, sqlite3.Error) as exc:
                log.warning("%s: cannot record the published files (%s); feeds of "
                            "categories removed later may be left behind",
                            self.state, exc)
                return False
            self._known = set(published)
        return True

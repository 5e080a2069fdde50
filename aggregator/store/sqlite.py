"""The entry store in SQLite: the embedded default, in the disposable `<state>.cache`
file (deleting it, or it being corrupt, costs one cold build).

Tables:
- entry: a row a post file (with its entry, if it gave one) and a row an upstream
  entry (see store.rows.Row); `winner` marks the entries published after merging
  duplicates.
- node, member: a node per category path; a member row per published entry and
  node whose feed holds it (its paths' nodes and their ancestors, each once), keyed
  (node, undated, stamp, id, entry): a node's feed is a range of that key.
- dirty: the nodes whose feeds a change touched since they were last published;
  written in the transaction that changes the entries, cleared once published.
- folder: a print (digest of its posts' names and identities, as the walk made it) of
  each content folder whose rows hold exactly the identities the print was made of;
  a change of one of its post rows forgets it in the same transaction.
- rendered: an entry's Atom, RSS and JSON Feed bytes and its page card by render
  key; feed_state: each published feed's (or page's) fingerprint and file stats;
  last_build: see state/last_build.py.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from aggregator.state.last_build import LastBuild
from aggregator.store import FeedRow, Render, RenderRow
from aggregator.store.common import MemberChanges, follow_groups, pack_record, unpack_record
from aggregator.store.rows import Names, Row, node_key, node_names, paths_of, prefixes

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entry (
    rid        INTEGER PRIMARY KEY,
    key        BLOB NOT NULL,
    root       BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    inode      INTEGER NOT NULL,
    content    TEXT NOT NULL,
    id         BLOB,
    link       BLOB,
    updated    REAL NOT NULL,
    updated_iso TEXT NOT NULL,
    undated    INTEGER NOT NULL,
    neg_stamp  REAL NOT NULL,
    nodes      BLOB NOT NULL,
    digest     TEXT NOT NULL,
    rkey       TEXT NOT NULL,
    probe_url  TEXT,
    problems   BLOB,
    links      BLOB,
    probe_mime TEXT,
    probe_len  INTEGER,
    winner     INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS entry_key ON entry (key, root);
CREATE INDEX IF NOT EXISTS entry_id ON entry (id) WHERE id IS NOT NULL;
CREATE INDEX IF NOT EXISTS entry_link ON entry (link) WHERE link IS NOT NULL;
-- the entries themselves (with their html), apart: the entry table stays narrow for
-- the scans and counts a build makes
CREATE TABLE IF NOT EXISTS body (
    rid    INTEGER PRIMARY KEY,
    packed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS node (
    nid   INTEGER PRIMARY KEY,
    path  BLOB NOT NULL UNIQUE,
    count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS member (
    nid       INTEGER NOT NULL,
    undated   INTEGER NOT NULL,
    neg_stamp REAL NOT NULL,
    rid       INTEGER NOT NULL,
    PRIMARY KEY (nid, undated, neg_stamp, rid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirty (nid INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS folder (
    root   BLOB NOT NULL,
    prefix BLOB NOT NULL,
    print  BLOB NOT NULL,
    posts  INTEGER NOT NULL,
    PRIMARY KEY (root, prefix)
) WITHOUT ROWID;
-- entries put in since duplicates were last merged (with the change that put them in)
CREATE TABLE IF NOT EXISTS unmerged (rid INTEGER PRIMARY KEY);
CREATE INDEX IF NOT EXISTS entry_loser ON entry (rid) WHERE winner = 0 AND id IS NOT NULL;
-- small indexes for the counts and the problems every build reports (scanning 100k rows
-- for them would cost a patched build ~0.1 s each)
CREATE INDEX IF NOT EXISTS entry_upstream ON entry (key) WHERE root = x'';
CREATE INDEX IF NOT EXISTS entry_no_id ON entry (key) WHERE id IS NULL;
CREATE INDEX IF NOT EXISTS entry_linkless ON entry (winner) WHERE link IS NULL;
CREATE INDEX IF NOT EXISTS entry_problems ON entry (key, root)
    WHERE problems IS NOT NULL AND root != x'';
CREATE TABLE IF NOT EXISTS rendered (
    key  TEXT PRIMARY KEY,
    atom BLOB NOT NULL,
    rss  BLOB NOT NULL,
    json BLOB NOT NULL,
    card BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS feed_state (
    rel         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS last_build (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    record BLOB NOT NULL
);
"""
SCHEMA_VERSION = "15"
ENTRY_TABLES = ("entry", "body", "node", "member", "dirty", "unmerged", "folder")

_PACKED = Row._fields.index("packed")
# entries merged away or put in, above which duplicates are found by grouping every id
# and link instead of following theirs
_FOLLOW_AT_MOST = 2000
_COLUMNS = [name for name in Row._fields if name != "packed"]
_INSERT = (f"INSERT INTO entry (rid, {', '.join(_COLUMNS)}, winner) "
           f"VALUES ({', '.join('?' * (len(_COLUMNS) + 2))})")
# (rid, winner, nodes, undated, neg_stamp, id) of a row, to take it out of its nodes
_OLD = "SELECT rid, winner, nodes, undated, neg_stamp, id FROM entry"
_OLD_KEYED = "SELECT rid, winner, nodes, undated, neg_stamp, id, key, root FROM entry"


def _rows_in(db: sqlite3.Connection, query: str, values: list[Any]) -> Iterator[Any]:
    """The rows of `query`, whose `IN ({marks})` takes `values` 500 at a time (SQLite
    limits the variables of one statement)."""
    for start in range(0, len(values), 500):
        chunk = values[start:start + 500]
        yield from db.execute(query.format(marks=",".join("?" * len(chunk))), chunk)


def _disposable(method: Callable[..., None]) -> Callable[..., None]:
    """A write of renders or feed states that fails (disk full, read-only, locked)
    costs speed, never the build."""
    @functools.wraps(method)
    def wrapper(self: SQLiteStore, *args: object, **kwargs: object) -> None:
        try:
            method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            self.write_failed(exc)
    return wrapper


class SQLiteStore:
    """store.EntryStore on one SQLite file (None: in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stale: set[str] = set()  # tables we could not clear: read as empty
        self.failed = False
        self.db = self._open(path)
        # the file really in use (None when it fell back to memory): workers read it
        name = self.db.execute("PRAGMA database_list").fetchone()[2]
        self.file: Path | None = Path(name) if name else None
        self.readers: Path | None = self.file
        self._nids: dict[Names, int] | None = None
        self._node_nids: dict[bytes, list[int]] = {}  # an entry's `nodes` → its nodes
        # feed_states() as last read and since updated, with the data_version it read
        self._feed_states: tuple[int, dict[str, tuple[str, int, int]]] | None = None

    @staticmethod
    def _open(path: Path | None) -> sqlite3.Connection:
        if path is None:
            return _connect(":memory:")
        try:
            db = _connect(str(path))
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:  # another layout: start over
                db.close()
                _unlink(path)
                db = _connect(str(path))
                with db:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            return db
        except sqlite3.DatabaseError as exc:
            log.warning("%s: build cache unusable (%s); starting a new one", path, exc)
            with contextlib.suppress(OSError):  # a read-only dir: memory it is
                _unlink(path)
            try:
                db = _connect(str(path))
                with db:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                               (SCHEMA_VERSION,))
                return db
            except sqlite3.DatabaseError:
                return _connect(":memory:")

    def write_failed(self, exc: sqlite3.Error) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.rollback()
        self._nids, self._node_nids = None, {}  # (nodes made in the transaction rolled back)
        if not self.failed:
            log.warning("%s: build cache not updated (%s); the next build redoes the work",
                        self.path, exc)
        self.failed = True

    def lost(self, exc: BaseException) -> bool:
        return False  # a file does not go away mid-build (its errors are its own)

    def close(self) -> None:
        self.db.close()

    # -- settings ----------------------------------------------------------------

    def meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str | None) -> None:
        with self.db:
            if value is None:
                self.db.execute("DELETE FROM meta WHERE key=?", (name,))
            else:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def invalidate_if_changed(self, name: str, fingerprint: str, *tables: str) -> bool:
        """Forget `tables` when the settings they depend on changed (the entry tables:
        with what the syncs recorded of them); True if they were (or could not be: then
        they read as empty)."""
        if self.meta(name) == fingerprint:
            return False
        try:
            with self.db:
                for table in tables:
                    self.db.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed names)
                if "entry" in tables:
                    self.db.execute("DELETE FROM meta WHERE key IN ('upstream', 'probes')")
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, fingerprint))
        except sqlite3.OperationalError as exc:
            if "entry" in tables:
                raise  # entries the settings no longer make: the store is unusable
            self.write_failed(exc)
            self._stale.update(tables)
        self._nids, self._node_nids = None, {}
        self._feed_states = None
        return True

    # -- post files ----------------------------------------------------------------

    def post_identities(self) -> Iterator[tuple[bytes, bytes, int, int, int, str]]:
        """(key, root, size, mtime_ns, inode, content digest) of every post file's row,
        in post order (key, root)."""
        yield from self.db.execute(
            "SELECT key, root, size, mtime_ns, inode, content FROM entry "
            "WHERE root != x'' ORDER BY key, root")

    def post_count(self) -> int:
        return self._count("") - self._count("INDEXED BY entry_upstream WHERE root = x''")

    def _count(self, where: str) -> int:
        """count(*) of the entry rows `where` says (an index's: see SCHEMA)."""
        return int(self.db.execute(f"SELECT count(*) FROM entry {where}").fetchone()[0])

    def folder_prints(self) -> dict[tuple[bytes, bytes], tuple[bytes, int]]:
        """(root, prefix) → (print, posts) of every folder whose print is kept."""
        return {(root, prefix): (folder_print, posts) for root, prefix, folder_print, posts
                in self.db.execute("SELECT root, prefix, print, posts FROM folder")}

    def folder_posts(self, folders: list[tuple[bytes, bytes]]
                     ) -> list[tuple[bytes, bytes, int, int, int, str]]:
        """(key, root, size, mtime_ns, inode, content digest) of the posts right in
        these folders (root, prefix: its path in the content dir `root`, "" or ending
        in "/"): a range of the (key, root) index a folder, less the posts of its
        subfolders."""
        return [row for root, prefix in folders for row in self.db.execute(
            "SELECT key, root, size, mtime_ns, inode, content FROM entry WHERE key >= ? "
            "AND key < ? AND root = ? AND instr(substr(key, ?), x'2f') = 0",
            (prefix, prefix + b"\xff", root, len(prefix) + 1))]

    @_disposable
    def store_folders(self, rows: Iterable[tuple[bytes, bytes, bytes, int]]) -> None:
        """(root, prefix, print, posts) of folders whose rows now hold the identities
        of their print."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO folder VALUES (?, ?, ?, ?)", rows)

    def _forget_folders(self, keys: Iterable[tuple[bytes, bytes]]) -> None:
        """The prints of the folders of these posts (key, root): their rows change."""
        folders = {(root, key[:key.rfind(b"/") + 1]) for key, root in keys if root}
        self.db.executemany("DELETE FROM folder WHERE root=? AND prefix=?", folders)

    def post_contents(self, keys: list[tuple[bytes, bytes]]) -> dict[tuple[bytes, bytes], str]:
        """(key, root) → the digest of the bytes its row was read from."""
        out: dict[tuple[bytes, bytes], str] = {}
        for key, root in keys:
            row = self.db.execute("SELECT content FROM entry WHERE key=? AND root=?",
                                  (key, root)).fetchone()
            if row is not None:
                out[(key, root)] = row[0]
        return out

    def linking_posts(self) -> list[tuple[bytes, bytes, tuple[int, int, int], bytes]]:
        """(key, root, identity, links) of the posts whose bodies link to others."""
        return [(key, root, (size, mtime, inode), links) for key, root, size, mtime, inode, links
                in self.db.execute("SELECT key, root, size, mtime_ns, inode, links FROM entry "
                                   "WHERE links IS NOT NULL")]

    def move_posts(self, moves: list[tuple[bytes, bytes, tuple[int, int, int]]]) -> None:
        """Posts whose bytes are the ones read (touched or copied): their new identity."""
        with self.db:
            self._forget_folders((key, root) for key, root, _identity in moves)
            self.db.executemany("UPDATE entry SET size=?, mtime_ns=?, inode=? "
                                "WHERE key=? AND root=?",
                                [(*identity, key, root) for key, root, identity in moves])

    # -- entries -------------------------------------------------------------------

    def upsert(self, rows: Iterable[Row]) -> None:
        """Put each row in (replacing the one with its key), published until
        set_winners says otherwise; in one transaction with its members and the nodes
        it dirties. The rows' old versions are found with one query and the rows go in
        with one statement a table: a cold 100k build stores its rows in a third of
        the time one statement a row takes."""
        batch = list({(row.key, row.root): row for row in rows}.values())  # (keys once)
        with self.db:
            changes = MemberChanges()
            self._forget_folders((row.key, row.root) for row in batch)
            self._take_out(self._old_rows([(row.key, row.root) for row in batch]), changes)
            rid = self.db.execute("SELECT coalesce(max(rid), 0) FROM entry").fetchone()[0]
            entries, bodies, unmerged = [], [], []
            for row in batch:
                rid += 1
                entries.append((rid, *row[:_PACKED], *row[_PACKED + 1:],
                                int(row.id is not None)))
                if row.packed is not None:
                    bodies.append((rid, row.packed))
                if row.id is not None:
                    unmerged.append((rid,))
                    self._members(changes, rid, row.nodes, row.undated, row.neg_stamp, +1)
            self.db.executemany(_INSERT, entries)
            self.db.executemany("INSERT INTO body VALUES (?, ?)", bodies)
            self.db.executemany("INSERT OR IGNORE INTO unmerged VALUES (?)", unmerged)
            self._apply(changes)

    def delete(self, keys: Iterable[tuple[bytes, bytes]]) -> None:
        with self.db:
            changes = MemberChanges()
            keys = list(keys)
            self._forget_folders(keys)
            self._take_out(self._old_rows(keys), changes)
            self._apply(changes)

    def _old_rows(self, keys: list[tuple[bytes, bytes]]) -> list[tuple[Any, ...]]:
        """The (_OLD) rows stored under these (key, root) pairs."""
        wanted = set(keys)
        return [row[:6] for row in _rows_in(self.db, f"{_OLD_KEYED} WHERE key IN ({{marks}})",
                                            list({key for key, _root in keys}))
                if (row[6], row[7]) in wanted]

    def _take_out(self, old: list[tuple[Any, ...]], changes: MemberChanges) -> None:
        """Delete these rows, and their members."""
        for rid, winner, nodes, undated, neg_stamp, _id in old:
            if winner:
                self._members(changes, rid, nodes, undated, neg_stamp, -1)
        rids = [(row[0],) for row in old]
        self.db.executemany("DELETE FROM entry WHERE rid=?", rids)
        self.db.executemany("DELETE FROM body WHERE rid=?", rids)

    def _members(self, changes: MemberChanges, rid: int, nodes: bytes, undated: int,
                 neg_stamp: float, change: int) -> None:
        nids = self._node_nids.get(nodes)
        if nids is None:  # (many entries share their category paths)
            nids = self._node_nids[nodes] = [self.nid(names) for names in
                                             prefixes(paths_of(nodes))]
        changes.add(nids, rid, undated, neg_stamp, change)

    def _apply(self, changes: MemberChanges) -> None:
        """The member changes gathered, with their counts and dirty marks (a batch:
        one statement each, not one per entry and node)."""
        db = self.db
        db.executemany("DELETE FROM member WHERE nid=? AND undated=? AND neg_stamp=? "
                       "AND rid=?", changes.removed)
        changes.added.sort()  # in key order: each B-tree page is visited once
        db.executemany("INSERT OR IGNORE INTO member VALUES (?, ?, ?, ?)", changes.added)
        db.executemany("UPDATE node SET count = count + ? WHERE nid=?",
                       [(change, nid) for nid, change in changes.counts.items() if change])
        db.executemany("INSERT OR IGNORE INTO dirty VALUES (?)",
                       [(nid,) for nid in changes.counts])

    def nid(self, names: Names) -> int:
        """The node's number (made on first use)."""
        nids = self._nids
        if nids is None:
            nids = self._nids = {node_names(path): nid for nid, path in
                                 self.db.execute("SELECT nid, path FROM node")}
        found = nids.get(names)
        if found is None:
            cursor = self.db.execute("INSERT INTO node (path) VALUES (?)", (node_key(names),))
            assert cursor.lastrowid is not None
            found = nids[names] = cursor.lastrowid
        return found

    def upstream_rows(self) -> dict[bytes, tuple[int, str]]:
        """key → (seq, digest) of every upstream entry's row."""
        return {key: (seq, digest) for key, seq, digest in self.db.execute(
            "SELECT key, seq, digest FROM entry WHERE root = x''")}

    def set_seq(self, seqs: list[tuple[int, bytes]]) -> None:
        with self.db:
            self.db.executemany("UPDATE entry SET seq=? WHERE key=? AND root=x''", seqs)

    def duplicates(self) -> list[tuple[int, bytes, bytes, int, int, bytes]]:
        """(rid, key, root, seq, winner, packed) of every entry that may share its id or
        its link with another: every such group holds an entry merged away until now
        or one put in since (set_winners forgets those); a few are followed through
        their ids and links, many are found by grouping every id and link."""
        seeds = [rid for (rid,) in self.db.execute(
            "SELECT rid FROM unmerged UNION SELECT rid FROM entry INDEXED BY entry_loser "
            "WHERE winner = 0 AND id IS NOT NULL")]
        if len(seeds) > _FOLLOW_AT_MOST:
            shared_ids = [row[0] for row in self.db.execute(
                "SELECT id FROM entry WHERE id IS NOT NULL GROUP BY id HAVING count(*) > 1")]
            shared_links = [row[0] for row in self.db.execute(
                "SELECT link FROM entry WHERE link IS NOT NULL GROUP BY link "
                "HAVING count(*) > 1")]
            found = self._rows_where("id", shared_ids) | self._rows_where("link", shared_links)
            found |= self._rows_where("e.rid", [rid for (rid,) in self.db.execute(
                "SELECT rid FROM entry INDEXED BY entry_loser "
                "WHERE winner = 0 AND id IS NOT NULL")])
            return [row[:6] for row in found.values()]
        return follow_groups(self._rows_where("e.rid", seeds), self._rows_where)

    def _rows_where(self, column: str, values: list[Any]) -> dict[int, tuple[Any, ...]]:
        select = ("SELECT e.rid, key, root, seq, winner, packed, id, link FROM entry e "
                  f"JOIN body b ON b.rid = e.rid WHERE {column} IN ({{marks}})")
        return {row[0]: row for row in _rows_in(self.db, select, values)}

    def set_winners(self, winners: dict[int, bool]) -> None:
        """Publish (True) or merge away (False) these entries; in one transaction, which
        also forgets which entries were put in since the last merge."""
        with self.db:
            self.db.execute("DELETE FROM unmerged")
            changes = MemberChanges()
            for rid, winner in winners.items():
                old = self.db.execute(f"{_OLD} WHERE rid=?", (rid,)).fetchone()
                if old is None or bool(old[1]) == winner or old[5] is None:
                    continue
                self.db.execute("UPDATE entry SET winner=? WHERE rid=?", (int(winner), rid))
                self._members(changes, rid, old[2], old[3], old[4], +1 if winner else -1)
            self._apply(changes)

    def probe_candidates(self) -> list[tuple[int, str, str | None, int | None, str]]:
        """(rid, image URL, probed type, probed length, digest) of the posts whose
        image type a probe may tell."""
        return list(self.db.execute("SELECT rid, probe_url, probe_mime, probe_len, digest "
                                    "FROM entry WHERE probe_url IS NOT NULL"))

    def set_probes(self, rows: list[tuple[int, str | None, int | None, str]]) -> None:
        """(rid, probed type, length, the render key it makes) for each changed probe."""
        with self.db:
            for rid, mime, length, rkey in rows:
                self.db.execute("UPDATE entry SET probe_mime=?, probe_len=?, rkey=? "
                                "WHERE rid=?", (mime, length, rkey, rid))
                old = self.db.execute(f"{_OLD} WHERE rid=?", (rid,)).fetchone()
                if old is not None and old[1]:
                    nids = [self.nid(n) for n in prefixes(paths_of(old[2]))]
                    self.db.executemany("INSERT OR IGNORE INTO dirty VALUES (?)",
                                        [(nid,) for nid in nids])

    def packed(self, rids: list[int]) -> dict[int, tuple[bytes, str | None, int | None]]:
        """rid → (packed entry, probed type, probed length)."""
        return packed_rows(self.db, rids)

    # -- what a build reports --------------------------------------------------------

    def post_problems(self) -> Iterator[bytes]:
        """Each post's problems (pickled), in post order."""
        for (found,) in self.db.execute(
                "SELECT problems FROM entry INDEXED BY entry_problems WHERE root != x'' AND "
                "problems IS NOT NULL ORDER BY key, root"):
            yield found

    def counts(self) -> tuple[int, int, int]:
        """(posts that gave an entry, entries published, of them without a link), from
        the small indexes: rows without an id are posts', and the published ones are
        the rows with an id less those merged away."""
        no_id = self._count("INDEXED BY entry_no_id WHERE id IS NULL")
        posts = self.post_count() - no_id
        entries = self._count("") - no_id - self._count(
            "INDEXED BY entry_loser WHERE winner = 0 AND id IS NOT NULL")
        linkless = self._count("INDEXED BY entry_linkless WHERE link IS NULL AND winner = 1")
        return posts, entries, linkless

    def unknown_images(self) -> list[str]:
        """The image URLs of posts whose type no probe told yet, in post order."""
        return [url for (url,) in self.db.execute(
            "SELECT probe_url FROM entry WHERE probe_url IS NOT NULL AND probe_mime IS NULL "
            "AND root != x'' ORDER BY key, root")]

    # -- nodes and their feeds -------------------------------------------------------

    def nodes(self) -> list[tuple[int, Names, int]]:
        """(nid, names, entries in its feed at most) of every node with entries."""
        return [(nid, node_names(path), count) for nid, path, count in self.db.execute(
            "SELECT nid, path, count FROM node WHERE count > 0")]

    def feed(self, nid: int, limit: int) -> list[FeedRow]:
        """The node's entries, newest first, at most `limit` (0: all)."""
        return list(self.db.execute(
            "SELECT e.rid, e.rkey, e.updated, e.updated_iso FROM member m "
            "JOIN entry e ON e.rid = m.rid WHERE m.nid = ? "
            "ORDER BY m.undated, m.neg_stamp, e.id LIMIT ?", (nid, limit or -1)))

    def dirty(self) -> set[int]:
        return {nid for (nid,) in self.db.execute("SELECT nid FROM dirty")}

    def mark_dirty(self) -> None:
        """Every node: its feeds are planned again."""
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO dirty SELECT nid FROM node")

    @_disposable
    def clear_dirty(self, nids: Iterable[int]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM dirty WHERE nid=?", [(nid,) for nid in nids])

    # -- rendered entries --------------------------------------------------------------

    def rendered(self, keys: Iterable[str]) -> dict[str, Render]:
        """Render key → (atom, rss, json, card), each still packed (see pack_render)."""
        return rendered_rows(self.db, [] if "rendered" in self._stale else list(keys))

    def rendered_keys(self, keys: Iterable[str]) -> set[str]:
        wanted = [] if "rendered" in self._stale else list(keys)
        return {row[0] for row in _rows_in(
            self.db, "SELECT key FROM rendered WHERE key IN ({marks})", wanted)}

    def keeps_renders(self) -> bool:
        return not self.failed and "rendered" not in self._stale

    @_disposable
    def store_rendered(self, rows: Iterable[RenderRow]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO rendered VALUES (?, ?, ?, ?, ?)",
                                list(rows))

    @_disposable
    def drop_unused_renders(self) -> None:
        """Renders no entry has any more go (bounded disk). The keys to drop are found
        from the key index alone: `key NOT IN (...)` would scan the table, reading every
        render's bytes (~100 MB at 100k posts), for 3x the time."""
        with self.db:
            self.db.execute("DELETE FROM rendered WHERE key IN (SELECT key FROM rendered "
                            "EXCEPT SELECT rkey FROM entry WHERE winner=1)")

    # -- published feeds -----------------------------------------------------------------

    def feed_states(self) -> dict[str, tuple[str, int, int]]:
        """rel → (fingerprint, size, mtime_ns) of every published feed. Kept in memory
        between a session's builds for as long as SQLite's data_version says no other
        connection (a CLI build) committed."""
        if "feed_state" in self._stale:
            return {}
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        kept = self._feed_states
        if kept is None or kept[0] != version:
            kept = self._feed_states = (version, {
                row[0]: (row[1], row[2], row[3]) for row in self.db.execute(
                    "SELECT rel, fingerprint, size, mtime_ns FROM feed_state")})
        return dict(kept[1])

    @_disposable
    def update_feed_states(self, rows: Iterable[tuple[str, str, int, int]],
                           gone: Iterable[str]) -> None:
        rows, gone = list(rows), list(gone)
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO feed_state VALUES (?, ?, ?, ?)", rows)
            self.db.executemany("DELETE FROM feed_state WHERE rel=?", [(r,) for r in gone])
        if self._feed_states is not None:  # our own commits leave data_version alone
            states = self._feed_states[1]
            states.update((rel, (fingerprint, size, mtime)) for rel, fingerprint, size, mtime
                          in rows)
            for rel in gone:
                states.pop(rel, None)

    # -- the last complete build -----------------------------------------------------------

    def last_build(self) -> LastBuild | None:
        row = self.db.execute("SELECT record FROM last_build").fetchone()
        if row is None:
            return None
        return unpack_record(row[0])

    @_disposable
    def store_last_build(self, record: LastBuild | None) -> None:
        with self.db:
            self.db.execute("DELETE FROM last_build")
            if record is not None:
                self.db.execute("INSERT INTO last_build VALUES (1, ?)",
                                (pack_record(record),))


def packed_rows(db: sqlite3.Connection, rids: list[int]
                ) -> dict[int, tuple[bytes, str | None, int | None]]:
    """rid → (packed entry, probed type, probed length)."""
    return {rid: (packed, mime, length) for rid, packed, mime, length in _rows_in(
        db, "SELECT b.rid, packed, probe_mime, probe_len FROM body b JOIN entry e "
            "ON e.rid = b.rid WHERE b.rid IN ({marks})", rids)}



def open_read_only(path: Path) -> sqlite3.Connection:
    """For worker processes that read entries while the parent holds the store."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


class SQLiteReader:
    """store.EntryReader on the store file, read-only."""

    def __init__(self, path: Path) -> None:
        self.db = open_read_only(path)

    def packed(self, rids: list[int]) -> dict[int, tuple[bytes, str | None, int | None]]:
        return packed_rows(self.db, rids)

    def rendered(self, keys: Iterable[str]) -> dict[str, Render]:
        return rendered_rows(self.db, list(keys))

    def close(self) -> None:
        self.db.close()


def rendered_rows(db: sqlite3.Connection, keys: list[str]) -> dict[str, Render]:
    """Render key → (atom, rss, json, card), each still packed (see pack_render)."""
    return {row[0]: row[1:] for row in _rows_in(
        db, "SELECT key, atom, rss, json, card FROM rendered WHERE key IN ({marks})", keys)}


def _unlink(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _connect(target: str) -> sqlite3.Connection:
    db = sqlite3.connect(target, timeout=30)  # implicit BEGIN: batches commit once
    # 16 KiB pages: most rows are packed entries and renders of a few KB
    db.execute("PRAGMA page_size=16384")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # a lost cache costs one slow build, no data
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    return db

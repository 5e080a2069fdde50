"""The build cache: what a build can skip when its inputs did not change.

Kept in its own SQLite file beside the state (`<state>.cache`), because it is
disposable: deleting it (or it being corrupt) only costs one slow build.

- post_cache: a post file's identity (size, mtime, inode) and content digest → the
  Entry read from it *without its html* (small: a build loads 100k of them) and the
  problems reported while reading it (replayed, so a no-op build reports what a full
  one does). The html is not kept: an entry that must be rendered has its body read
  again from its file, whose bytes must still have that digest (storing every body
  was a third of a cold build's parent time and most of the cache's size, for the
  few entries a later build renders).
- rendered: an entry's render key (its fields + every setting and version that shapes
  the output) → its Atom and RSS bytes, sanitised and serialised once.
- feed_state: a published feed's fingerprint (its head + the render keys of its
  entries, in order) and the size/mtime it was written with: an unchanged
  fingerprint with an untouched file means nothing to render or write.
- last_build: the inputs digest, published files and problems of the last complete
  build (see state/last_build.py): a build whose inputs match stops after the walk.
- session, session_index, session_index_part: that build's posts and SessionIndex
  (incremental.SavedSession, entries without html; the index as a spine and a part a
  top-level category, a blob each): a build that finds a few changed post files
  patches them in, loading the parts they touch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import pickle
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import lz4.block

from aggregator.model import Entry, changed
from aggregator.problems import Problem
from aggregator.source_keys import source_key
from aggregator.state.last_build import LastBuild

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS post_cache (
    source   TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode    INTEGER NOT NULL,
    digest   TEXT NOT NULL,
    entry_digest TEXT NOT NULL,  -- its entry's digest ('' for a skipped post)
    payload  BLOB NOT NULL
);
-- (an index on entry_digest cost ~0.4 s of storing 100k posts: a post is found by its
-- source key instead, and caches made with that index drop it)
DROP INDEX IF EXISTS post_cache_entry;
CREATE TABLE IF NOT EXISTS rendered (
    key  TEXT PRIMARY KEY,
    atom BLOB NOT NULL,
    rss  BLOB NOT NULL
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
CREATE TABLE IF NOT EXISTS session (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS session_index (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    key    TEXT NOT NULL,  -- SessionIndex.content_key(): what the index was made from
    record BLOB NOT NULL
);
-- records 1, 2, ... of the saved index (session_index.record is record 0): a record
-- of its own reads without walking the overflow pages of the ones before it
CREATE TABLE IF NOT EXISTS session_index_part (
    number INTEGER PRIMARY KEY,
    record BLOB NOT NULL
);
-- the nodes whose feeds the one-off builds that patched the saved session wrote since
-- it was saved: a post added then removed between two of them is in no change set,
-- and its feeds were written
CREATE TABLE IF NOT EXISTS session_patched (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    record BLOB NOT NULL
);
"""
SCHEMA_VERSION = "9"


Links = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class CachedPost:
    size: int
    mtime_ns: int
    inode: int
    digest: str
    entry: Entry | None  # None: the post was skipped (its problems say why)
    problems: tuple[Problem, ...]
    # what its post_link/post_path tags found: (slug, the post's title and url, or None);
    # the record holds only while each slug still finds the same
    links: Links = ()

    def same_file(self, identity: tuple[int, int, int]) -> bool:
        """The file (size, mtime_ns, inode) is the one this record was read from."""
        return identity == (self.size, self.mtime_ns, self.inode)


class CacheIncomplete(Exception):
    """The build cache cannot give what it promised (a post file whose bytes changed
    since the cache read it, under the same identity): the build is redone once with
    the post cache emptied."""


def _rows_in(db: sqlite3.Connection, query: str, values: list[str]) -> Iterator[Any]:
    """The rows of `query`, whose `IN ({marks})` takes `values` 500 at a time (SQLite
    limits the variables of one statement)."""
    for start in range(0, len(values), 500):
        chunk = values[start:start + 500]
        yield from db.execute(query.format(marks=",".join("?" * len(chunk))), chunk)


def _post_files(db: sqlite3.Connection, roots: Sequence[str], entries: list[Entry]
                ) -> dict[str, list[tuple[str, str]]]:
    """Entry digest → the (source, content digest) of the post files that gave it: a
    post's source key is its content dir's and its own relative path (the entry's
    `source`), and the entry digest covers that path."""
    wanted = {e.digest for e in entries}
    keys = [source_key(root, entry.source) for entry in entries for root in roots]
    found: dict[str, list[tuple[str, str]]] = {}
    for entry_digest, source, content_digest in _rows_in(
            db, "SELECT entry_digest, source, digest FROM post_cache "
                "WHERE source IN ({marks})", keys):
        if entry_digest in wanted:
            found.setdefault(entry_digest, []).append((source, content_digest))
    return found


# (source, content digest) → the post's body html, or None when its file no longer
# has those bytes
BodyReader = Callable[[str, str], str | None]


def whole_entries(db: sqlite3.Connection, entries: Sequence[Entry], body_of: BodyReader,
                  roots: Sequence[str], chunk: int = 500) -> Iterator[Entry]:
    """`entries`, the partial ones made whole with their html read again from their
    post files (under the content dirs `roots`), a chunk at a time. Raises
    CacheIncomplete when a file changed since the cache read it (then only a new read
    of every post is sure to be right)."""
    for start in range(0, len(entries), chunk):
        part = entries[start:start + chunk]
        files = _post_files(db, roots, [e for e in part if e.partial])
        for entry in part:
            if entry.partial:
                html = next((html for source, content in files.get(entry.digest, ())
                             if (html := body_of(source, content)) is not None), None)
                if html is None:
                    raise CacheIncomplete(f"{entry.source}: changed while it was built")
                entry = changed(entry, html=html, partial=False)
            yield entry


def open_read_only(path: Path) -> sqlite3.Connection:
    """For worker processes that only look up post files while the parent holds the
    cache."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


PackedPost = tuple[str, int, int, int, str, str, bytes]  # a post_cache row
Dump = Callable[[BinaryIO], None]  # pickles a record into a file
# pickles records into a file one after the other; returns the offset each begins at
# (None: one record)
RecordsDump = Callable[[BinaryIO], list[int] | None]


def pack_post(source: str, post: CachedPost) -> PackedPost:
    """The row that caches a post: its entry without the html."""
    entry = post.entry
    light = changed(entry, html="", partial=True) if entry is not None else None
    # (links only when there are some: most posts link to no other, and their rows
    # keep the layout they had before links were recorded)
    record = (light, post.problems, post.links) if post.links else (light, post.problems)
    return (source, post.size, post.mtime_ns, post.inode, post.digest,
            entry.digest if entry is not None else "",
            pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))


def unpack_post(row: PackedPost) -> CachedPost:
    """The record pack_post made `row` from (its entry without html)."""
    return _post_record(row[1], row[2], row[3], row[4], pickle.loads(row[6]))


def _post_record(size: int, mtime_ns: int, inode: int, content_digest: str,
                 record: tuple[Any, ...]) -> CachedPost:
    entry, problems, *links = record
    return CachedPost(size, mtime_ns, inode, content_digest, entry, problems,
                      links[0] if links else ())


def pack_render(data: bytes) -> bytes:
    """An entry's rendered bytes as the cache stores and a build holds them. LZ4: a
    6 KB render packs in ~15 us and unpacks in ~5 (zlib level 1 took ~140 and ~45: 2 s
    of a cold 10k build, 1 s of a rewrite from the cache)."""
    return bytes(lz4.block.compress(data))


def unpack_render(blob: bytes) -> bytes:
    return bytes(lz4.block.decompress(blob))


def unpacked_size(blob: bytes) -> int:
    """The length unpack_render will give (LZ4 block format keeps it in front)."""
    return int.from_bytes(blob[:4], "little")


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _disposable(method: Callable[..., None]) -> Callable[..., None]:
    """A cache write that fails (disk full, read-only, locked) costs speed, never the
    build: it used to crash builds whose state dir was full."""
    @functools.wraps(method)
    def wrapper(self: BuildCache, *args: object, **kwargs: object) -> None:
        try:
            method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            self._write_failed(exc)
    return wrapper


class BuildCache:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stale: set[str] = set()  # tables we could not clear: read as empty
        self._failed = False
        self.db = self._open(path)
        # the file really in use (None when it fell back to memory): workers read it
        name = self.db.execute("PRAGMA database_list").fetchone()[2]
        self.file: Path | None = Path(name) if name else None
        self._posts: dict[str, tuple[int, int, int, str, bytes]] | None = None
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
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
                db = _connect(str(path))
                with db:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            return db
        except sqlite3.DatabaseError as exc:
            log.warning("%s: build cache unusable (%s); starting a new one", path, exc)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):  # read-only dir: crashed the build
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            try:
                return _connect(str(path))
            except sqlite3.DatabaseError:
                return _connect(":memory:")

    def _write_failed(self, exc: sqlite3.Error) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.rollback()
        if not self._failed:
            log.warning("%s: build cache not updated (%s); the next build redoes the work",
                        self.path, exc)
        self._failed = True

    # -- settings fingerprints ------------------------------------------------

    def invalidate_if_changed(self, name: str, fingerprint: str, *tables: str) -> None:
        """Forget `tables` when the settings they depend on changed."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
        if row is not None and row[0] == fingerprint:
            return
        try:
            with self.db:
                for table in tables:
                    self.db.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed names)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, fingerprint))
        except sqlite3.OperationalError as exc:
            self._write_failed(exc)
            self._stale.update(tables)  # outdated rows must not be used
        self._posts = None
        self._feed_states = None

    # -- posts -----------------------------------------------------------------

    def load_posts(self) -> None:
        """Every cached post in memory, in one query: for a read of every post. Until
        then each post is asked for on its own (a CLI build patching one edited post
        among 100k spent 0.7 s loading all the others)."""
        if self._posts is None and "post_cache" not in self._stale:
            self._posts = {row[0]: row[1:] for row in self.db.execute(
                "SELECT source, size, mtime_ns, inode, digest, payload FROM post_cache")}

    def release_posts(self) -> None:
        """Drop what load_posts loaded (~1 KB a post: ~100 MB at 100k posts, which a
        one-off build held to its end and a service for its whole life)."""
        self._posts = None

    def _post_row(self, source: str) -> tuple[int, int, int, str, bytes] | None:
        if "post_cache" in self._stale:
            return None
        if self._posts is not None:
            return self._posts.get(source)
        row = self.db.execute("SELECT size, mtime_ns, inode, digest, payload FROM post_cache "
                              "WHERE source = ?", (source,)).fetchone()
        return (row[0], row[1], row[2], row[3], row[4]) if row is not None else None

    def has_post(self, source: str, identity: tuple[int, int, int]) -> bool:
        """The post is cached as read from this very file (no unpickling)."""
        row = self._post_row(source)
        return row is not None and row[:3] == identity

    def content_digest(self, source: str) -> str | None:
        """The digest of the bytes the post was read from, if it is cached."""
        row = self._post_row(source)
        return row[3] if row is not None else None

    @_disposable
    def move_posts(self, moved: list[tuple[str, tuple[int, int, int]]]) -> None:
        """Posts whose files have a new identity (size, mtime_ns, inode) but the bytes
        they were read from: their rows now answer for the new identity."""
        if not moved:
            return
        with self.db:
            self.db.executemany(
                "UPDATE post_cache SET size=?, mtime_ns=?, inode=? WHERE source=?",
                [(*identity, source) for source, identity in moved])
        if self._posts is not None:
            for source, identity in moved:
                row = self._posts.get(source)
                if row is not None:
                    self._posts[source] = (*identity, row[3], row[4])

    def post(self, source: str) -> CachedPost | None:
        row = self._post_row(source)
        if row is None:
            return None
        size, mtime_ns, inode, content_digest, payload = row
        try:
            return _post_record(size, mtime_ns, inode, content_digest, pickle.loads(payload))
        except Exception:  # a cache from another version: just read the post again
            return None

    def linking_posts(self) -> dict[str, tuple[str, ...]]:
        """source → the slugs its post_link/post_path tags name, for every post that has
        such tags, as the last read of the posts left it (see store_linking_posts)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='linking'").fetchone()
        if row is None or "post_cache" in self._stale:
            return {}
        try:
            return {str(k): tuple(v) for k, v in json.loads(row[0]).items()}
        except (ValueError, AttributeError, TypeError):
            return {}

    @_disposable
    def store_linking_posts(self, linking: dict[str, tuple[str, ...]]) -> None:
        """Kept so that a build patching a few changed posts can read again the posts
        that link to one of them (without looking at every other post)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('linking', ?)",
                            (json.dumps(linking, ensure_ascii=False),))

    def store_posts(self, rows: Iterable[tuple[str, CachedPost]]) -> None:
        """Cache each post: its entry without the html."""
        self.store_packed([pack_post(source, post) for source, post in rows])

    @_disposable
    def store_packed(self, posts: list[PackedPost]) -> None:
        """Store what pack_post made (a worker process may have made it)."""
        if not posts:
            return
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO post_cache VALUES (?, ?, ?, ?, ?, ?, ?)",
                                posts)
        if self._posts is not None:  # rows loaded before these were stored are stale
            for row in posts:
                self._posts.pop(row[0], None)

    def whole(self, entries: Sequence[Entry], body_of: BodyReader,
              roots: Sequence[str]) -> Iterator[Entry]:
        """`entries` with the partial ones (no html) made whole (see whole_entries)."""
        yield from whole_entries(self.db, entries, body_of, roots)

    @_disposable
    def forget_posts_except(self, sources: set[str]) -> None:
        known = {row[0] for row in self.db.execute("SELECT source FROM post_cache")}
        gone = known - sources
        if gone:
            self.forget_posts(list(gone))

    @_disposable
    def forget_posts(self, sources: list[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM post_cache WHERE source=?", [(s,) for s in sources])
        if self._posts is not None:
            for source in sources:
                self._posts.pop(source, None)

    # -- rendered entries --------------------------------------------------------

    def rendered(self, keys: Iterable[str]) -> dict[str, tuple[bytes, bytes]]:
        """Render key → (atom, rss), both still packed (see pack_render): a build keeps
        them so until it writes them (100k renders unpacked held ~650 MB)."""
        wanted = [] if "rendered" in self._stale else list(keys)
        return {key: (atom, rss) for key, atom, rss in _rows_in(
            self.db, "SELECT key, atom, rss FROM rendered WHERE key IN ({marks})", wanted)}

    def rendered_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of `keys` have a render, without reading the renders."""
        wanted = [] if "rendered" in self._stale else list(keys)
        return {row[0] for row in _rows_in(
            self.db, "SELECT key FROM rendered WHERE key IN ({marks})", wanted)}

    def keeps_renders(self) -> bool:
        """What store_rendered was given can be read back (no write failed, and the
        table was cleared when its settings changed)."""
        return not self._failed and "rendered" not in self._stale

    @_disposable
    def store_rendered(self, rows: Iterable[tuple[str, bytes, bytes]]) -> None:
        """(key, atom, rss), packed by pack_render."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO rendered VALUES (?, ?, ?)", list(rows))

    @_disposable
    def keep_rendered(self, keys: set[str]) -> None:
        """Drop renders no feed uses any more (bounded disk)."""
        with self.db:
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS live (key TEXT PRIMARY KEY)")
            self.db.execute("DELETE FROM live")
            self.db.executemany("INSERT OR IGNORE INTO live VALUES (?)", [(k,) for k in keys])
            self.db.execute("DELETE FROM rendered WHERE key NOT IN (SELECT key FROM live)")

    # -- published feeds ------------------------------------------------------------

    def feed_states(self) -> dict[str, tuple[str, int, int]]:
        """rel → (fingerprint, size, mtime_ns) of every published feed. Kept in memory
        between a session's builds (reading 1,644 rows was ~4 ms of each rebuild) for as
        long as SQLite's data_version says no other connection (a CLI build) committed."""
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
        """Upsert the feeds whose state changed; drop those no longer published."""
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

    # -- the last complete build ---------------------------------------------------

    def last_build(self) -> LastBuild | None:
        row = self.db.execute("SELECT record FROM last_build").fetchone()
        if row is None:
            return None
        try:
            record = pickle.loads(row[0])
        except Exception:  # another version's record: a full build
            return None
        return record if isinstance(record, LastBuild) else None

    @_disposable
    def store_last_build(self, record: LastBuild | None) -> None:
        """Remember the build that just completed (None: forget, e.g. before publishing,
        so that a build that fails half way is never taken for a complete one)."""
        with self.db:
            self.db.execute("DELETE FROM last_build")
            if record is not None:
                self.db.execute("INSERT INTO last_build VALUES (1, ?)",
                                (pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL),))

    # -- the last one-off build's session index (incremental.SavedSession) -------------

    def saved_session(self) -> Any:
        """The pickled SavedSession without its index, or None (the caller checks its
        type: this module must not import the pipeline's)."""
        return self._unpickled("session")

    def saved_index_records(self) -> BlobRecords | None:
        """The saved index's blob, whose records are unpickled from chosen offsets
        (incremental.load_index: the index is saved in parts, loaded as a patch needs
        them), or None."""
        row = self.db.execute("SELECT rowid FROM session_index").fetchone()
        return None if row is None else BlobRecords(self.db, row[0])

    def patched_nodes(self) -> set[tuple[str, ...]] | None:
        """The nodes the builds that patched the saved session wrote (store_patched_nodes),
        or None when the record cannot be read (then nothing is known: build in full)."""
        row = self.db.execute("SELECT record FROM session_patched").fetchone()
        if row is None:
            return set()
        try:
            nodes = pickle.loads(row[0])
        except Exception:  # noqa: BLE001
            return None
        return nodes if isinstance(nodes, set) else None

    def store_patched_nodes(self, nodes: set[tuple[str, ...]]) -> bool:
        """What patched_nodes gives from now on: stored before those feeds are written;
        False when it could not be (then they must not be: the next patch would not
        know them)."""
        try:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO session_patched VALUES (1, ?)",
                                (pickle.dumps(nodes, protocol=pickle.HIGHEST_PROTOCOL),))
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return False
        return True

    def saved_session_index_key(self) -> str | None:
        """The content key of the saved index, without unpickling anything."""
        row = self.db.execute("SELECT key FROM session_index").fetchone()
        return str(row[0]) if row is not None else None

    def _unpickled(self, table: str) -> Any:
        """The record of `table` (one row), unpickled, or None."""
        row = self.db.execute(f"SELECT rowid FROM {table}").fetchone()  # noqa: S608
        if row is None:
            return None
        try:
            return _unpickle_blob(self.db, table, row[0])
        except Exception:  # another version's, or not a pickle: a full build
            return None

    def store_session(self, head: Dump | None,
                      index: tuple[str, RecordsDump] | None = None) -> None:
        """A SavedSession record and, when given, its index as (content key, records),
        each given as a function that pickles it into a file (the index's may write
        several records one after the other and return where each begins); written
        together. No head: both forgotten. A head without an index: the saved index
        stays (the caller found its key the same)."""
        if head is None:
            self._store_session(None, None)
            return
        folder = self.file.parent if self.file is not None else None
        try:
            # pickled to unnamed files first: a blob is written in place once its size
            # is known, in chunks, so neither we nor SQLite hold a record whole (the
            # index and the head were ~100 MB and ~26 MB at 100k posts)
            with contextlib.ExitStack() as spools:
                head_spool = spools.enter_context(tempfile.TemporaryFile(dir=folder))
                head(head_spool)
                spooled_index = None
                if index is not None:  # (no spool for an index that stays as it is)
                    index_spool = spools.enter_context(tempfile.TemporaryFile(dir=folder))
                    starts = index[1](index_spool) or [0]
                    spooled_index = (index[0], index_spool, starts)
                self._store_session(head_spool, spooled_index)
        except OSError as exc:  # disk full: no session, rather than a stale one
            log.warning("%s: build cache not updated (%s); the next build redoes the work",
                        self.path, exc)
            self._store_session(None, None)

    @_disposable
    def _store_session(self, head: BinaryIO | None,
                       index: tuple[str, BinaryIO, list[int]] | None) -> None:
        with self.db:
            self.db.execute("DELETE FROM session")
            self.db.execute("DELETE FROM session_patched")  # a new session: none yet
            if head is None or index is not None:
                self.db.execute("DELETE FROM session_index")
                self.db.execute("DELETE FROM session_index_part")
            if head is None:
                return
            self._insert_spooled("INSERT INTO session VALUES (1, zeroblob(?))", (), head,
                                 "session", 1, 0, head.tell())
            if index is not None:
                key, spool, starts = index
                ends = [*starts[1:], spool.tell()]
                self._insert_spooled("INSERT INTO session_index VALUES (1, ?, zeroblob(?))",
                                     (key,), spool, "session_index", 1, 0, ends[0])
                for number in range(1, len(starts)):
                    self._insert_spooled(
                        "INSERT INTO session_index_part VALUES (?, zeroblob(?))", (number,),
                        spool, "session_index_part", number, starts[number], ends[number])

    def _insert_spooled(self, insert: str, values: tuple[str | int, ...], spool: BinaryIO,
                        table: str, rowid: int, start: int, end: int) -> None:
        """Insert row `rowid` of `table` with a blob of the spool's bytes from `start`
        to `end`, copied in chunks."""
        self.db.execute(insert, (*values, end - start))
        spool.seek(start)
        with self.db.blobopen(table, "record", rowid) as blob:
            left = end - start
            while left > 0 and (chunk := spool.read(min(left, _CHUNK))):
                blob.write(chunk)
                left -= len(chunk)

    def close(self) -> None:
        self.db.close()


_CHUNK = 1 << 20  # bytes a blob is read or written at a time


class BlobRecords:
    """The saved index's records: record 0 in session_index, the others in
    session_index_part, each unpickled from its blob as a stream."""

    def __init__(self, db: sqlite3.Connection, first_rowid: int) -> None:
        self.db, self.first_rowid = db, first_rowid

    def load(self, number: int) -> Any:
        """Record `number`, unpickled (any error is the caller's to handle)."""
        table, rowid = ("session_index", self.first_rowid) if number == 0 else \
            ("session_index_part", number)
        return _unpickle_blob(self.db, table, rowid)


def _unpickle_blob(db: sqlite3.Connection, table: str, rowid: int) -> Any:
    """The record pickled in row `rowid`'s blob, read as a stream (the ~100 MB of an
    index at 100k posts are never in memory as one bytes object)."""
    with db.blobopen(table, "record", rowid, readonly=True) as blob:
        return pickle.load(io.BufferedReader(_BlobReader(blob), _CHUNK))


class _BlobReader(io.RawIOBase):
    """A SQLite blob as a raw stream (pickle.load needs readline: a BufferedReader
    over this gives it)."""

    def __init__(self, blob: sqlite3.Blob) -> None:
        self.blob = blob

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.blob.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _connect(target: str) -> sqlite3.Connection:
    db = sqlite3.connect(target, timeout=30)  # implicit BEGIN: batches commit once
    # A new cache's pages are 16 KiB, not 4: most rows are renders of ~4 KB, which
    # spilt into overflow pages (storing a cold build's renders: 0.43 -> 0.24 s in
    # isolation). An existing file keeps its size (SQLite sets it at creation only).
    db.execute("PRAGMA page_size=16384")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # a lost cache costs one slow build, no data
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    return db

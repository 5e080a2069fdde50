"""Upstream state: per-source validators, health and schedule; stored entries.

Entries are stored per source with their first-seen time, so they stay in our feeds
after they drop out of the upstream feed (up to the source's retention) and their
order and `updated` stay stable. Everything one poll of one source changes is written
in one transaction: a run killed half-way leaves each source either fully stored or
untouched (and still due), never half.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePath
from typing import Any

from aggregator.config import UpstreamSource
from aggregator.model import Enclosure, Entry, Image
from aggregator.state.store import StateStore

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(days=1)


@dataclass(frozen=True)
class SourceState:
    url: str
    etag: str | None = None
    last_modified: str | None = None
    last_status: int | None = None
    error_count: int = 0
    last_error: str | None = None
    last_polled_at: datetime | None = None
    next_poll_at: datetime | None = None
    disabled: str | None = None  # why polling stopped (410 Gone), or None
    moved_to: str | None = None  # where a permanent redirect pointed: polled instead

    @property
    def fetch_url(self) -> str:
        return self.moved_to or self.url


def _source_state(row: tuple[Any, ...]) -> SourceState:
    return SourceState(row[0], row[1], row[2], row[3], row[4], row[5], _dt(row[6]),
                       _dt(row[7]), row[8], row[9])


def _iso(stamp: datetime) -> str:
    return stamp.astimezone(UTC).replace(microsecond=0).isoformat()


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


_SOURCE_COLUMNS = ("url, etag, last_modified, last_status, error_count, last_error, "
                   "last_polled_at, next_poll_at, disabled, moved_to")
_UPSERT_SOURCE = (
    "INSERT INTO upstream_source (url, etag, last_modified, last_status, error_count, "
    "last_error, last_polled_at, next_poll_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (url) DO UPDATE SET etag = excluded.etag, "
    "last_modified = excluded.last_modified, last_status = excluded.last_status, "
    "error_count = excluded.error_count, last_error = excluded.last_error, "
    "last_polled_at = excluded.last_polled_at, next_poll_at = excluded.next_poll_at")


class UpstreamState:
    def __init__(self, store: StateStore, only: Collection[str] | None = None) -> None:
        """`only`: the URLs of the sources this poll may ask about (a fetch worker's
        batch of a shared state that holds many more)."""
        self.store = store
        self.db = store.db
        # Every source's row (or `only` those), read in one query when first needed: a
        # poll asks for each row four times (two queries each), ~1 s of a 1,000-source
        # re-poll. Our own writes keep it current; an UpstreamState lives for one poll.
        self._rows: dict[str, SourceState] | None = None
        self._only = None if only is None else list(only)
        # 304s waiting for flush(): one executemany for many sources. Each statement
        # of the polling thread gives up the GIL and waits to get it back from the
        # fetch threads (~0.8 ms), so one write per 304 was most of a re-poll.
        self._deferred: list[tuple[Any, ...]] = []

    def source(self, url: str) -> SourceState:
        if self._rows is None:
            self._rows = self._read_rows()
        return self._rows.get(url) or SourceState(url)

    def _read_rows(self) -> dict[str, SourceState]:
        query = f"SELECT {_SOURCE_COLUMNS} FROM upstream_source"  # noqa: S608
        if self._only is None:
            return {row[0]: _source_state(row) for row in self.db.execute(query)}
        rows: dict[str, SourceState] = {}
        for start in range(0, len(self._only), 500):  # SQLite allows 32,766 parameters
            part = self._only[start:start + 500]
            rows.update((row[0], _source_state(row)) for row in self.db.execute(
                f"{query} WHERE url IN ({', '.join('?' * len(part))})", part))
        return rows

    def _reload(self, url: str) -> None:
        """After a write: the row as stored."""
        if self._rows is None:
            return
        row = self.db.execute(f"SELECT {_SOURCE_COLUMNS} FROM upstream_source "  # noqa: S608
                              "WHERE url = ?", (url,)).fetchone()
        if row is None:
            self._rows.pop(url, None)
        else:
            self._rows[url] = _source_state(row)

    def due(self, sources: Iterable[UpstreamSource], now: datetime) -> list[UpstreamSource]:
        out = []
        for source in sources:
            state = self.source(source.url)
            if state.disabled is None and (state.next_poll_at is None
                                           or state.next_poll_at <= now):
                out.append(source)
        return out

    def store_entries(self, source: UpstreamSource, entries: Iterable[Entry],
                      etag: str | None, last_modified: str | None, now: datetime,
                      floor: timedelta | None = None) -> int:
        """Upsert a 200's entries, trim to retention, save validators; returns new ids."""
        return self.store_dumped(source, dump_entries(entries), etag, last_modified, now,
                                 floor)

    def store_dumped(self, source: UpstreamSource, entries: list[DumpedEntry],
                     etag: str | None, last_modified: str | None, now: datetime,
                     floor: timedelta | None = None) -> int:
        """store_entries for entries dump_entries made (in a parse worker: turning 50k
        entries into JSON in the parent would be a third of its time in a 1,000-source
        poll)."""
        stamp = _iso(now)
        base = now.astimezone(UTC).replace(microsecond=0)  # _iso's steps, done once
        # One round trip to a network database for BEGIN and the read, one for the
        # writes and COMMIT (not one a statement: the polling thread waits on them).
        with self.store.pipelined(), self._transaction():
            known = dict(self.db.execute(
                "SELECT entry_id, first_seen FROM upstream_entry WHERE source_url = ?",
                (source.url,)))
            rows: dict[str, tuple[str, str, str, str, str, str]] = {}
            for position, (entry_id, published, data) in enumerate(entries):
                # New entries of one poll are a second apart in feed order, so undated
                # ones keep the feed's order and get distinct `updated` values.
                first_seen = known.get(entry_id) or \
                    (base - timedelta(seconds=position)).isoformat()
                sort_at = published or first_seen
                rows.setdefault(entry_id, (source.url, entry_id, first_seen, stamp, sort_at,
                                           data))
            new = sum(1 for entry_id in rows if entry_id not in known)
            self.db.executemany(
                "INSERT INTO upstream_entry VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (source_url, entry_id) DO UPDATE SET "
                "last_seen = excluded.last_seen, sort_at = excluded.sort_at, "
                "data = excluded.data", list(rows.values()))
            pruning = self.db.execute(
                "DELETE FROM upstream_entry WHERE source_url = ? AND entry_id NOT IN ("
                "SELECT entry_id FROM upstream_entry WHERE source_url = ? "
                "ORDER BY sort_at DESC, first_seen DESC, entry_id LIMIT ?)",
                (source.url, source.url, source.retention))
            # (its rows changed: last_seen at least; once a source, not a trigger a row)
            self.db.execute("UPDATE generation SET counter = counter + 1")
            self.store.entries_stored()
            self._save(source, 200, etag, last_modified, None, now, floor=floor)
        # committed (the count is known once the writes were answered): close() gives
        # the pages back
        self.store.pruned += max(pruning.rowcount, 0)
        return new

    def not_modified(self, source: UpstreamSource, etag: str | None,
                     last_modified: str | None, now: datetime,
                     floor: timedelta | None = None) -> None:
        """Written at the next flush() (a 304 changes only the schedule: if the run
        is killed first, the source is simply polled again)."""
        old = self.source(source.url)
        self._save(source, 304, etag or old.etag, last_modified or old.last_modified, None, now,
                   floor=floor, defer=True)

    @property
    def deferred(self) -> int:
        """How many 304s wait for the next flush()."""
        return len(self._deferred)

    def flush(self) -> None:
        """Write the deferred 304s, in one transaction."""
        if not self._deferred:
            return
        rows, self._deferred = self._deferred, []
        with self._transaction():
            self.db.executemany(_UPSERT_SOURCE, rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction; rolled back on any error, and then the rows kept in memory
        are dropped (they may hold what was not stored)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self._rows = None
            raise

    def failed(self, source: UpstreamSource, message: str, now: datetime,
               status: int | None = None, floor: timedelta | None = None) -> None:
        """Validators are kept (the stored entries still match them); backoff grows,
        and a Retry-After (`floor`) is a minimum on top."""
        old = self.source(source.url)
        self._save(source, status, old.etag, old.last_modified, message, now,
                   errors=old.error_count + 1, floor=floor)

    def disable(self, source: UpstreamSource, message: str, now: datetime,
                status: int | None = None) -> None:
        """Stop polling (410 Gone); the stored entries stay published."""
        self.failed(source, message, now, status)
        self.db.execute("UPDATE upstream_source SET disabled = ? WHERE url = ?",
                        (message, source.url))
        self._reload(source.url)

    def move(self, source: UpstreamSource, url: str) -> None:
        """A permanent redirect: later polls ask `url` (state only, not config.yaml)."""
        self.db.execute("INSERT INTO upstream_source (url, moved_to) VALUES (?, ?) "
                        "ON CONFLICT (url) DO UPDATE SET moved_to = excluded.moved_to",
                        (source.url, None if url == source.url else url))
        self._reload(source.url)

    def _save(self, source: UpstreamSource, status: int | None, etag: str | None,
              last_modified: str | None, error: str | None, now: datetime,
              errors: int = 0, floor: timedelta | None = None, defer: bool = False) -> None:
        wait = timedelta(seconds=source.every_seconds)
        if errors:
            # Exponential backoff, bounded, with up to 25 % jitter so sources that failed
            # together (one host down) do not come back together.
            base = wait * 2 ** min(errors - 1, 16) * (1 + random.random() / 4)
            wait = min(base, max(MAX_BACKOFF, wait))
        if floor is not None:
            wait = max(wait, floor)
        row = (source.url, etag, last_modified, status, errors, error, _iso(now),
               _iso(now + wait))
        if defer:
            self._deferred.append(row)
        else:
            self.db.execute(_UPSERT_SOURCE, row)
        if self._rows is not None:  # the row as stored, without reading it back
            old = self._rows.get(source.url) or SourceState(source.url)
            self._rows[source.url] = _source_state((*row, old.disabled, old.moved_to))

    def entries(self, sources: Iterable[UpstreamSource]) -> list[Entry]:
        """Stored entries of these sources, with today's config (category, selectors)."""
        out: list[Entry] = []
        for source in sources:
            rows = self.db.execute(
                "SELECT first_seen, data FROM upstream_entry WHERE source_url = ?",
                (source.url,))
            for first_seen, data in rows:
                try:  # today's config (category, selectors) built in: no replace() per entry
                    out.append(_load(json.loads(data), datetime.fromisoformat(first_seen),
                                     source))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("%s: a stored entry is unreadable (%s); skipped", source.url, exc)
        return out


def stored_upstream_entries(store: StateStore, sources: Iterable[UpstreamSource]
                            ) -> Iterator[Entry]:
    """For `build`: what earlier polls stored, no network, a source at a time (50k
    entries with their html are ~0.5 GB: only one source's are held). Disabled sources
    are left out, so are entries published as a post (`write_posts`); cached image
    probes applied."""
    from aggregator.state.probes import apply_probes

    sources = list(sources)
    as_posts = written_ids(store) if any(s.write_posts for s in sources) else set()
    state = UpstreamState(store)
    for source in sources:
        if source.enabled:
            entries = state.entries([source])
            if as_posts:
                entries = [e for e in entries if e.id not in as_posts]
            yield from apply_probes(store, entries)


def written_ids(store: StateStore) -> set[str]:
    """Ids of upstream entries published as a post that still exists."""
    try:
        rows = store.db.execute("SELECT entry_id, path FROM written_post").fetchall()
    except Exception:  # noqa: BLE001 - a state without the table: nothing written
        return set()
    return {entry_id for entry_id, path in rows if os.path.exists(path)}


def written_posts(store: StateStore, content_dirs: Sequence[Path]) -> dict[str, str]:
    """The posts `write_posts` wrote into the first content dir, by their source (the
    path in it, as a post's Entry.source), each with the URL of its upstream source:
    the merge ranks them below the posts a person wrote."""
    if not content_dirs:
        return {}
    root = content_dirs[0]
    try:
        rows = store.db.execute("SELECT path, source_url FROM written_post").fetchall()
    except sqlite3.Error:  # an old or damaged state: nothing known as written
        return {}
    out: dict[str, str] = {}
    for path, url in rows:
        try:
            out[PurePath(path).relative_to(root).as_posix()] = url
        except ValueError:
            continue  # written under another content dir
    return out


DumpedEntry = tuple[str, str | None, str]  # id, published (ISO), the stored JSON


def dump_entries(entries: Iterable[Entry]) -> list[DumpedEntry]:
    return [(e.id, _iso(e.published) if e.published else None, _dump(e)) for e in entries]


def _dump(entry: Entry) -> str:
    return json.dumps({
        "id": entry.id, "title": entry.title, "link": entry.link, "author": entry.author,
        "published": _iso(entry.published) if entry.published else None,
        "updated": _iso(entry.updated) if entry.published else None,
        "tags": list(entry.tags), "html": entry.html, "summary": entry.summary,
        "image": [entry.image.url, entry.image.mime_type, entry.image.length]
        if entry.image else None,
        "enclosures": [[e.url, e.mime_type, e.length] for e in entry.enclosures],
        "base_url": entry.base_url,
    }, ensure_ascii=False)


def _load(data: dict[str, Any], first_seen: datetime,
          source: UpstreamSource | None = None) -> Entry:
    # Undated upstream entries take their first-seen time: stable across builds.
    published = _dt(data["published"]) or first_seen
    updated = _dt(data["updated"]) or published
    image = data.get("image")
    return Entry(
        id=data["id"], title=data["title"], link=data["link"], author=data["author"],
        published=published, updated=max(updated, published),
        category=source.category if source else (),
        source=source.url if source else "",
        drop_selectors=source.drop_selectors if source else (),
        tags=tuple(data["tags"]), html=data["html"], summary=data["summary"],
        image=Image(image[0], image[1], image[2]) if image else None,
        enclosures=tuple(Enclosure(u, m, n) for u, m, n in data["enclosures"]),
        base_url=data["base_url"],
    )

"""A build's archive documents (`output.archives`): planned node by node as the walk
reads each node's entries, written after the current feeds in a pass of their own.

A node's query reads all its entries and its pages are cut from them
(writers/archives.py); a page whose fingerprint and file are as the last build left
them is kept. Of a page to write, only what writing it takes is held: its head, its
newest update and its entries' render keys (each key string once, however many
nodes' pages hold it: 8 bytes an entry a page). The pass fetches the renders of a few
pages at a time, FETCH_KEYS keys or a page more, unpacks each as it is written and
drops them before the next: its memory is bounded by that, not by the corpus (the
root's pages hold every entry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from aggregator.fingerprints import fingerprint_of
from aggregator.publish.atomic import Publisher
from aggregator.store import RENDERS, FeedRow, Render, unpack_render, unpacked_size
from aggregator.writers.archives import ArchivePage
from aggregator.writers.parts import Parts

if TYPE_CHECKING:
    from aggregator.writers.feeds import FeedRenderer

# renders fetched at once at most (plus one page's): ~5.6 KB packed each, atom, RSS,
# JSON Feed and card
FETCH_KEYS = 1000


@dataclass(frozen=True, slots=True)
class _Page:
    """An archive document to write."""

    kind: str  # atom | rss
    rel: str
    title: str
    url: str
    extra: bytes
    updated: datetime  # its newest entry's
    keys: list[str]  # its entries' render keys, newest first
    feed_print: str


class ArchivePass:
    """The archive documents of one build: `plan` each node's pages as the walk
    splits them off, render the entries they need (`take_needed`) with the feeds',
    then `write`."""

    def __init__(self, untouched: Callable[[str, str], bool]) -> None:
        self.untouched = untouched  # (rel, fingerprint) → the file is as last written
        self.todo: list[_Page] = []
        self.kept: list[tuple[str, str]] = []  # (rel, fingerprint) planned, unchanged
        self.needed: dict[str, int] = {}  # render key → rid, of the pages to write
        self._keys: dict[str, str] = {}  # each key string held once

    def plan(self, pages: list[ArchivePage]) -> None:
        """Plan a node's pages (archives.split): keep those unchanged, hold the rest."""
        held, needed = self._keys, self.needed
        rows: list[FeedRow] | None = None
        for page in pages:
            if page.rows is not rows:  # (a page's two formats share their rows)
                rows, keys, shared = page.rows, [row[1] for row in page.rows], False
            feed_print = fingerprint_of(page.kind, page.title, page.url, keys, page.extra)
            if self.untouched(page.rel, feed_print):
                self.kept.append((page.rel, feed_print))
                continue
            if not shared:
                keys, shared = [held.setdefault(key, key) for key in keys], True
                for key, row in zip(keys, rows, strict=True):
                    needed[key] = row[0]
            self.todo.append(_Page(page.kind, page.rel, page.title, page.url, page.extra,
                                   newest_updated(page.rows), keys, feed_print))

    def take_needed(self) -> dict[str, int]:
        """The render keys (→ rid) of the pages to write; no longer held here."""
        needed, self.needed = self.needed, {}
        return needed

    def write(self, publisher: Publisher, renderer: FeedRenderer,
              fetch: Callable[[set[str]], dict[str, Render]], failed: set[str],
              prints: dict[str, str], done: Callable[[], None]) -> None:
        """Write the pages planned to write, in order, their renders fetched a few
        pages at a time; `prints` gets each one's fingerprint, unless an entry of it
        could not be rendered (`failed`: it is left out, and the next build tries
        again). `done()` after each page."""
        todo, self.todo, self._keys = self.todo, [], {}
        start = 0
        while start < len(todo):
            keys: set[str] = set()
            end = start
            while end < len(todo) and (end == start or len(keys) < FETCH_KEYS):
                keys.update(todo[end].keys)
                end += 1
            packed = fetch(keys)
            for page in todo[start:end]:
                write = renderer.atom_feed if page.kind == "atom" else renderer.rss_feed
                publisher.write(page.rel, write(page.title, page.url, page.updated,
                                                _parts(packed, page.keys, page.kind),
                                                page.extra))
                if not failed or failed.isdisjoint(page.keys):
                    prints[page.rel] = page.feed_print
                done()
            start = end


def _parts(packed: dict[str, Render], keys: list[str], kind: str) -> Parts:
    """A page's entries' bytes, unpacked as they are written (read twice: to compare
    with the file there, then to write)."""
    which = RENDERS.index(kind)
    return Parts(lambda: (unpack_render(packed[key][which]) for key in keys),
                 sum(unpacked_size(packed[key][which]) for key in keys))


def newest_updated(rows: list[FeedRow]) -> datetime:
    """The newest `updated` of a feed's entries, as the entry has it (its zone)."""
    if not rows:
        from aggregator.writers.feeds import EMPTY_FEED_UPDATED

        return EMPTY_FEED_UPDATED
    best = rows[0]
    for row in rows:
        if row[2] > best[2]:
            best = row
    return datetime.fromisoformat(best[3])

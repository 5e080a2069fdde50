"""RFC 5005 archived feeds: a node's entries beyond `max_items`, in archive documents.

The entries a node's current feed leaves out are cut into pages, oldest first, where
content says: a page ends after an entry whose render key hashes to 0 modulo
`max_items` (pages of `max_items` entries on average, as content-defined chunking
cuts files), or once it holds MAX_PAGE times `max_items`. A page is named by its
oldest entry. So a page's bytes depend on its own entries and its neighbours' names
alone: new entries only move the current feed's oldest into the newest page; an
entry edited, added with an old date or deleted changes its own page (and, when it
names or ends one, the pages beside it), never the rest. See docs/decisions.md.

Each page is an Atom and an RSS document marked `fh:archive`, linked `current` (the
node's feed), `prev-archive` (the older page) and `next-archive` (the newer page, not
on the newest); the current feed links the newest page as `prev-archive`. Pages are
`archive-<name>.atom.xml` / `archive-<name>.rss.xml` beside the node's `atom.xml`: a
dot is in no slug, so no category folder can take those names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from aggregator.config import Config
from aggregator.store import FeedRow
from aggregator.tree.categories import Node
from aggregator.writers.index import feed_title, feed_url
from aggregator.writers.links import head_links

FH_NS = "http://purl.org/syndication/history/1.0"
ARCHIVE_MARK = f'<fh:archive xmlns:fh="{FH_NS}"/>'.encode()
MAX_PAGE = 4  # a page holds at most this many times max_items entries
_PREFIX = "archive-"


@dataclass(frozen=True)
class ArchivePage:
    """One archive document of a node: where it goes, its head, its entries
    (newest first, as in a feed)."""

    kind: str  # atom | rss
    name: str
    rel: str
    title: str
    url: str
    extra: bytes  # the head elements after the self link: fh:archive and the links
    rows: list[FeedRow]


def archive_rel(node: Node, name: str, kind: str) -> str:
    return f"{node.rel_dir}{_PREFIX}{name}.{kind}.xml"


def is_archive(rel: str) -> bool:
    return rel.rpartition("/")[2].startswith(_PREFIX)


def archive_url(config: Config, node: Node, name: str, kind: str) -> str:
    return f"{config.site_url}{archive_rel(node, name, kind)}"


def _hash(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()


def cut(rows: Sequence[FeedRow], size: int) -> list[list[FeedRow]]:
    """`rows` (oldest first) cut into pages (each oldest first)."""
    pages: list[list[FeedRow]] = []
    page: list[FeedRow] = []
    for row in rows:
        page.append(row)
        if int.from_bytes(_hash(row[1]), "big") % size == 0 or len(page) >= MAX_PAGE * size:
            pages.append(page)
            page = []
    if page:
        pages.append(page)
    return pages


def split(config: Config, node: Node, rows: Sequence[FeedRow]
          ) -> tuple[list[FeedRow], list[ArchivePage]]:
    """(the current feed's rows, the archive pages, oldest first) of a node whose
    entries, newest first, are `rows` (every one of them)."""
    size = config.max_items
    if size <= 0 or len(rows) <= size:
        return list(rows), []
    pages = cut(rows[:size - 1:-1], size)
    names = [_hash(page[0][1])[:6].hex() for page in pages]
    title = feed_title(config, node)
    out: list[ArchivePage] = []
    for number, (name, page) in enumerate(zip(names, pages, strict=True)):
        newest_first = page[::-1]  # (one list for both formats)
        for kind in ("atom", "rss"):
            links = [("current", feed_url(config, node, kind))]
            if number > 0:
                links.append(("prev-archive", archive_url(config, node, names[number - 1],
                                                          kind)))
            if number + 1 < len(pages):
                links.append(("next-archive", archive_url(config, node, names[number + 1],
                                                          kind)))
            out.append(ArchivePage(kind, name, archive_rel(node, name, kind),
                                   f"{title} (archive from {page[0][3][:10]})",
                                   archive_url(config, node, name, kind),
                                   ARCHIVE_MARK + head_links(kind, links), newest_first))
    return list(rows[:size]), out

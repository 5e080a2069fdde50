"""RFC 5005 archived feeds: a node's entries beyond `max_items`, in archive documents.

The entries a node's current feed leaves out are cut into pages of `max_items`
entries counted from the oldest: page 1 holds the oldest `max_items` entries, page 2
the next, and the last page (the newest archive) what is left. New entries push the
oldest of the current feed into the last page only; a page below the last is
complete, and its bytes depend on its own entries alone (its links name pages by
number), so it changes only when one of its entries changes, or an older one is
added or goes (which moves every later page by one entry). See docs/decisions.md.

Each page is an Atom and an RSS document marked `fh:archive`, linked `current` (the
node's feed), `prev-archive` (the older page) and `next-archive` (the newer page, not
on the last page); the current feed links the last page as `prev-archive`. Pages are
`archive-<n>.atom.xml` / `archive-<n>.rss.xml` beside the node's `atom.xml`: a dot is
in no slug, so no category folder can take those names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aggregator.config import Config
from aggregator.store import FeedRow
from aggregator.tree.categories import Node
from aggregator.writers.index import feed_title, feed_url
from aggregator.writers.links import head_links

FH_NS = "http://purl.org/syndication/history/1.0"
ARCHIVE_MARK = f'<fh:archive xmlns:fh="{FH_NS}"/>'.encode()
_PREFIX = "archive-"


@dataclass(frozen=True)
class ArchivePage:
    """One archive document of a node: where it goes, its head, its entries
    (newest first, as in a feed)."""

    kind: str  # atom | rss
    rel: str
    title: str
    url: str
    extra: bytes  # the head elements after the self link: fh:archive and the links
    rows: list[FeedRow]


def archive_rel(node: Node, number: int, kind: str) -> str:
    return f"{node.rel_dir}{_PREFIX}{number}.{kind}.xml"


def is_archive(rel: str) -> bool:
    return rel.rpartition("/")[2].startswith(_PREFIX)


def archive_url(config: Config, node: Node, number: int, kind: str) -> str:
    return f"{config.site_url}{archive_rel(node, number, kind)}"


def page_count(entries: int, size: int) -> int:
    """Archive pages of a node with `entries` entries and feeds of `size` (0: none)."""
    return 0 if size <= 0 or entries <= size else -(-(entries - size) // size)


def split(config: Config, node: Node, rows: Sequence[FeedRow]
          ) -> tuple[list[FeedRow], list[ArchivePage]]:
    """(the current feed's rows, the archive pages) of a node whose entries, newest
    first, are `rows` (every one of them)."""
    size = config.max_items
    pages = page_count(len(rows), size)
    if not pages:
        return list(rows), []
    current, older = list(rows[:size]), rows[size:]
    out: list[ArchivePage] = []
    title = feed_title(config, node)
    for number in range(1, pages + 1):
        # page n: the n-th run of `size` entries from the oldest, newest first
        end = len(older) - (number - 1) * size
        page_rows = list(older[max(0, end - size):end])
        for kind in ("atom", "rss"):
            links = [("current", feed_url(config, node, kind))]
            if number > 1:
                links.append(("prev-archive", archive_url(config, node, number - 1, kind)))
            if number < pages:
                links.append(("next-archive", archive_url(config, node, number + 1, kind)))
            out.append(ArchivePage(kind, archive_rel(node, number, kind),
                                   f"{title} (archive {number})",
                                   archive_url(config, node, number, kind),
                                   ARCHIVE_MARK + head_links(kind, links), page_rows))
    return current, out

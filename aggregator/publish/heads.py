"""The parts of a build's feed heads beyond title and self link: WebSub `rel="hub"`
links in every node's feeds and, with `output.archives`, the archive documents
(writers/archives.py) and the current feed's link to the newest of them."""

from __future__ import annotations

from collections.abc import Iterable

from aggregator.config import Config
from aggregator.store import FeedRow
from aggregator.tree.categories import Node
from aggregator.writers import archives
from aggregator.writers.index import feed_title, feed_url
from aggregator.writers.links import head_links


class FeedHeads:
    """Asked node by node while a build plans its feeds; remembers each current feed's
    (title, self URL, extra head elements) for when it is written (an archive page
    carries its own)."""

    def __init__(self, config: Config, previous: Iterable[str]) -> None:
        self.config = config
        # with archives, a node's feed query reads every entry: the rest are archived
        self.query_limit = 0 if config.archives else config.max_items
        self._hubs = [("hub", hub) for hub in config.websub_hubs]
        self._archived: dict[str, list[str]] = {}  # node folder → archives published
        if config.archives:
            for rel in previous:
                if archives.is_archive(rel):
                    folder, _, _name = rel.rpartition("/")
                    self._archived.setdefault(f"{folder}/" if folder else "", []).append(rel)
        self._newest: dict[str, str] = {}  # node folder → the name of its newest page
        self._heads: dict[str, tuple[str, str, bytes]] = {}

    def archived(self, node: Node) -> list[str]:
        """The archive documents the last builds published for `node`."""
        return self._archived.get(node.rel_dir, [])

    def split(self, node: Node, rows: list[FeedRow]
              ) -> tuple[list[FeedRow], list[archives.ArchivePage]]:
        """(the current feed's rows, the archive pages) of a node's query."""
        if not self.config.archives:
            return rows, []
        current, pages = archives.split(self.config, node, rows)
        if pages:
            self._newest[node.rel_dir] = pages[-1].name
        return current, pages

    def current(self, node: Node, kind: str, rel: str) -> bytes:
        """The extra head elements of the node's current feed (after split)."""
        links = list(self._hubs)
        newest = self._newest.get(node.rel_dir)
        if newest is not None:
            links.append(("prev-archive", archives.archive_url(self.config, node, newest, kind)))
        extra = head_links(kind, links)
        if extra:
            self._heads[rel] = (feed_title(self.config, node), feed_url(self.config, node, kind),
                                extra)
        return extra

    def head(self, node: Node, kind: str, rel: str) -> tuple[str, str, bytes]:
        """(title, self URL, extra head elements) of a current feed to write."""
        return self._heads.get(rel) or (feed_title(self.config, node),
                                        feed_url(self.config, node, kind), b"")

"""Category paths → a tree of nodes with stable ASCII slugs.

A node's feed holds its own entries and all its descendants'; the root holds all.
Slugs only ever contain `a-z0-9-`, so no name can reach outside the output dir or
clobber a feed file (`atom.xml` has a dot; no slug does).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import heapq
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from slugify import slugify

from aggregator.model import Entry, sort_key

MAX_SLUG_CHARS = 60


@dataclass
class Node:
    names: tuple[str, ...]
    slugs: tuple[str, ...]
    children: dict[str, Node] = field(default_factory=dict)
    own: list[Entry] = field(default_factory=list)  # sorted by sort_key: add() keeps it
    # Folder of this node's feeds relative to the output dir ('' for the root); set with
    # the slugs (a service plans 1,644 nodes' file names on every rebuild).
    rel_dir: str = ""
    # some entry at or below this node sits in several category paths: merging the
    # runs below it meets that entry once for each path it has here
    shared: bool = False
    # entries(limit) as last merged, for that limit; None once this node or one below
    # it changed (add() and discard() clear it up the path through their callers).
    _merged: tuple[int, list[Entry]] | None = field(default=None, repr=False, compare=False)

    def add(self, entry: Entry) -> None:
        bisect.insort(self.own, entry, key=sort_key)
        self._merged = None

    def discard(self, entry: Entry) -> None:
        self.own.remove(entry)
        self._merged = None

    def changed(self) -> None:
        """A node below this one gained or lost an entry."""
        self._merged = None

    @property
    def merge(self) -> tuple[int, list[Entry]] | None:
        """(limit, entries(limit)) as last merged; None once it or a node below changed."""
        return self._merged

    def restore_merge(self, merge: tuple[int, list[Entry]] | None) -> None:
        """Take a merge saved with this node (a saved index's part or spine)."""
        self._merged = merge

    @property
    def title(self) -> str:
        return " / ".join(self.names)

    def walk(self) -> Iterator[Node]:
        """This node and every one below it, depth first, children in order."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            if node.children:
                stack.extend(reversed(node.children.values()))

    def entries(self, limit: int = 0) -> list[Entry]:
        """Own and descendants' entries, newest first; at most `limit` (0 = all).

        Merged from the children's own merges (kept until a change below clears them):
        a rebuild after one edit merges the few runs on the edited entry's path, where
        the root used to merge all 600 leaves' runs. Ties keep the depth-first order
        of the nodes, as one merge of every run in walk order did."""
        merged = self._merged
        if merged is not None and merged[0] == limit:
            return merged[1]
        runs = [self.own[:limit] if limit else self.own]
        runs += [child.entries(limit) for child in self.children.values()]
        runs = [run for run in runs if run]
        if len(runs) == 1:
            result = list(runs[0])
        else:
            stream: Iterator[Entry] = heapq.merge(*runs, key=sort_key)
            if self.shared:
                stream = _once(stream)
            result = list(itertools.islice(stream, limit) if limit else stream)
        self._merged = (limit, result)
        return result


def _once(stream: Iterator[Entry]) -> Iterator[Entry]:
    """A merged stream with each entry once: its copies are next to each other, as
    sort_key ends with the id (copies: a saved index loads each part apart)."""
    last_id = None
    for entry in stream:
        if entry.id != last_id:
            yield entry
            last_id = entry.id


def base_slug(name: str, overrides: dict[str, str]) -> str:
    if name in overrides:
        return overrides[name]
    return _auto_slug(name)


@functools.lru_cache(maxsize=65536)
def _auto_slug(name: str) -> str:
    """Cached: transliteration costs ~0.3 ms a name, and a service rebuilds often."""
    slug = slugify(name, max_length=MAX_SLUG_CHARS, word_boundary=True)
    if not slug:  # `..`, `/`, emoji: nothing readable survives
        slug = "c-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return slug


def build_tree(entries: Iterable[Entry], overrides: dict[str, str]) -> Node:
    root = Node(names=(), slugs=())
    for entry in entries:
        if entry.more_categories:
            for path in entry.categories:
                add_path(root, path, shared=True).own.append(entry)
        else:
            add_path(root, entry.category, shared=False).own.append(entry)
    for node in root.walk():
        node.own.sort(key=sort_key)
    _assign_slugs(root, overrides)
    return root


def add_path(root: Node, path: tuple[str, ...], *, shared: bool) -> Node:
    """The node at `path`, made with the nodes above it where missing; with `shared`,
    it and every node above it are marked `shared`."""
    node = root
    if shared:
        node.shared = True
    for name in path:
        child = node.children.get(name)
        if child is None:
            child = node.children[name] = Node(names=node.names + (name,), slugs=())
        node = child
        if shared:
            node.shared = True
    return node


def _assign_slugs(node: Node, overrides: dict[str, str]) -> None:
    used: set[str] = set()
    # Sorted by name, so collisions get -2, -3 in a stable order whatever else changes.
    for name in sorted(node.children):
        base = base_slug(name, overrides)
        slug, n = base, 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        child = node.children[name]
        child.slugs = node.slugs + (slug,)
        child.rel_dir = f"{node.rel_dir}{slug}/"
        _assign_slugs(child, overrides)
    node.children = dict(sorted(node.children.items(), key=lambda kv: kv[1].slugs))

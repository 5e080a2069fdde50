"""Category paths → a tree of nodes with stable ASCII slugs.

A node's feed holds its own entries and all its descendants'; the root holds all.
The entry store says which nodes have entries (and how many); this module gives
them their place and their slugs. Slugs only ever contain `a-z0-9-`, so no name can
reach outside the output dir or clobber a feed file (`atom.xml` has a dot; no slug
does).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from slugify import slugify

MAX_SLUG_CHARS = 60


@dataclass
class Node:
    names: tuple[str, ...]
    slugs: tuple[str, ...]
    children: dict[str, Node] = field(default_factory=dict)
    # Folder of this node's feeds relative to the output dir ('' for the root)
    rel_dir: str = ""
    nid: int = 0  # its number in the entry store (0: none, an empty root)
    count: int = 0  # entries in it and below it

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


def tree_of(nodes: Iterable[tuple[tuple[str, ...], int, int]],
            overrides: dict[str, str]) -> Node:
    """The tree of these (names, nid, count) nodes (each node's ancestors are among
    them), with slugs; the root is there even without entries."""
    root = Node(names=(), slugs=())
    for names, nid, count in sorted(nodes, key=lambda node: len(node[0])):
        node = root
        for name in names:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = Node(names=node.names + (name,), slugs=())
            node = child
        node.nid, node.count = nid, count
    _assign_slugs(root, overrides)
    return root


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

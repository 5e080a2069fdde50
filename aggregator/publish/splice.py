"""A planned file's bytes: its head around its entries' renders, which are fetched a
top-level subtree at a time (a very big file's, a chunk at a time) and unpacked as
the file is written."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import groupby
from typing import TYPE_CHECKING, Any

from aggregator.config import Config
from aggregator.publish.archive_pass import newest_updated
from aggregator.publish.heads import FeedHeads
from aggregator.store import RENDERS, FeedRow, Render, unpack_render, unpacked_size
from aggregator.tree.categories import Node
from aggregator.writers import jsonfeed, pages
from aggregator.writers.index import feed_title, feed_url, page_url
from aggregator.writers.parts import Parts

if TYPE_CHECKING:
    from aggregator.writers.feeds import FeedRenderer

# A file to plan: (node, kind, rel, its rows, their render keys, its fingerprint).
Plan = tuple[Node, str, str, list[FeedRow], list[str], str]
# A file of this many entries or more is written from its renders fetched a chunk at
# a time (SharedRenders), together with its node's other files that big.
STREAM_AT = 20_000
STREAM_CHUNK = 1_000


def feed_file(config: Config, renderer: FeedRenderer | None, heads: FeedHeads, node: Node,
              kind: str, rel: str, members: list[FeedRow], parts: Parts,
              frame: tuple[bytes, bytes] | None, failed: set[str]) -> Parts:
    """A planned file's bytes: a feed of `kind` or the node's page, around `parts`,
    its entries' renders."""
    if kind == "page":
        assert frame is not None
        return pages.page(frame, parts)
    if kind == "json":
        count = sum(1 for row in members if row[1] not in failed)
        return jsonfeed.feed(feed_title(config, node), feed_url(config, node, kind),
                             page_url(config, node), config.site_title, parts, count,
                             config.websub_hubs)
    assert renderer is not None
    title, url, extra = heads.head(node, kind, rel)
    return (renderer.atom_feed if kind == "atom" else renderer.rss_feed)(
        title, url, newest_updated(members), parts, extra)


def big_files(config: Config, renderer: FeedRenderer | None, heads: FeedHeads,
              frames: dict[str, tuple[bytes, bytes]], failed: set[str], plans: list[Plan],
              fetch: Callable[[set[str]], dict[str, Render]]
              ) -> tuple[list[tuple[str, Parts]], Callable[[int], int]]:
    """(rel, bytes) of one node's files of STREAM_AT entries or more (they hold the
    same entries), read from renders fetched a chunk at a time, once for all of them
    (SharedRenders); and how far the file at an index has read that stream, which
    atomic.stage_together follows to write them together."""
    node = plans[0][0]
    shared = SharedRenders(fetch, plans[0][4], len(plans))
    whiches = [RENDERS.index(plan[1]) for plan in plans]
    files = [(rel, feed_file(config, renderer, heads, node, kind, rel, members,
                             shared.parts(which), frames.get(rel), failed))
             for (_node, kind, rel, members, _keys, _print), which
             in zip(plans, whiches, strict=True)]
    return files, lambda index: shared.position(whiches[index])


def in_turn(plans: list[Plan], stream_at: int) -> Iterator[list[Plan]]:
    """The files of `plans` in the order they are written: each alone, but a node's
    files of `stream_at` entries or more together (big_files), where the first of them
    stands. Those share their keys' list: its id tells the node's."""
    big: dict[int, list[Plan]] = {}
    for plan in plans:
        if is_big(plan, stream_at):
            big.setdefault(id(plan[4]), []).append(plan)
    for plan in plans:
        together = big.pop(id(plan[4]), None)
        if together is not None:
            yield together
        elif not is_big(plan, stream_at):
            yield [plan]


def with_held(rendered: Callable[[set[str]], dict[str, Render]], held: dict[str, Render],
              keys: set[str]) -> dict[str, Render]:
    """The packed renders of `keys`: those held in memory (entries left out, or renders
    the store could not keep), the others from `rendered` (the store, or a worker's
    reader of it)."""
    found = rendered(keys - held.keys())
    found.update({key: held[key] for key in keys & held.keys()})
    return found


def is_big(plan: Plan, stream_at: int | None) -> bool:
    """A file of `stream_at` entries or more (None: none is)."""
    return stream_at is not None and len(plan[4]) >= stream_at


def uses_by_subtree(plans: list[Plan], todo: set[str], stream_at: int | None = None
                    ) -> dict[str | None, dict[str, int]]:
    """Top-level category (None: the root's feeds) → render key → how many of its
    nodes write a file holding that entry (not counting the files of `stream_at`
    entries or more: those fetch their own, see SharedRenders)."""
    uses: dict[str | None, dict[str, int]] = {}
    for _, node_plans in groupby(plans, key=lambda plan: id(plan[0])):  # (consecutive)
        group = list(node_plans)
        keys = set().union(*(plan[4] for plan in group if plan[2] in todo
                             and not is_big(plan, stream_at)))
        if keys:
            names = group[0][0].names
            counts = uses.setdefault(names[0] if names else None, {})
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
    return uses


class SubtreeRenders:
    """The renders of the feeds being written (but those of STREAM_AT entries or
    more: see SharedRenders). An entry sits in the feeds of its
    top-level category, of the ones below it and of the root: feeds are planned in walk
    order, the root's first, then one top-level subtree after the other. The packed
    renders of the root's feeds, then of each subtree's, are fetched when it starts
    and dropped when it ends. Within a subtree a render that more than one node's
    files hold is unpacked once and kept, up to a budget; the others, and the root's,
    are unpacked as they are written. With `max_items: 50` at 100k posts, two in three
    entries of a subtree sit in one node's files only: keeping those too would hold
    13 MB more at the peak (129 against 115 MB, rewriting every feed) and save no
    unpacking."""

    BUDGET = 128 << 20  # bytes kept unpacked at most

    def __init__(self, fetch: Callable[[set[str]], dict[str, Render]],
                 uses: dict[str | None, dict[str, int]]) -> None:
        self.fetch = fetch
        self.uses = uses  # subtree (None: the root's feeds) → key → nodes writing it
        self.packed: dict[str, Render] = {}
        self.top: str | None = None
        self.started = False
        self.kept: dict[tuple[str, int], bytes] = {}
        self.size = 0

    def parts(self, names: tuple[str, ...], keys: list[str], which: int) -> Parts:
        """The feed's entry bytes (their source is called once to compare, once to
        write)."""
        top = names[0] if names else None
        if top != self.top or not self.started:
            self.started, self.top, self.kept, self.size = True, top, {}, 0
            self.packed = {}  # (dropped before the next subtree's are fetched)
            self.packed = self.fetch(set(self.uses.get(top, ())))
        packed = self.packed
        size = sum(unpacked_size(packed[k][which]) for k in keys)
        if not names:
            return Parts(lambda: (unpack_render(packed[k][which]) for k in keys), size)
        kept = self.kept
        uses = self.uses.get(top, {})

        # (called from the publisher's staging threads, a few feeds at a time: two may
        # unpack one render, and the budget's count may be a render off; never wrong)
        def unpacked(key: str) -> bytes:
            data = kept.get((key, which))
            if data is None:
                data = unpack_render(packed[key][which])
                if self.size < self.BUDGET and uses.get(key, 0) > 1:
                    kept[(key, which)] = data
                    self.size += len(data)
            return data
        return Parts(lambda: map(unpacked, keys), size)

    def release(self) -> None:
        """Drop the renders held (a feed still being staged keeps its own)."""
        self.packed, self.kept, self.started = {}, {}, False


class SharedRenders:
    """The renders of `keys`, fetched STREAM_CHUNK at a time and once for the
    `readers` files of one node that hold them all (with `max_items: 0` the root's
    feeds hold every entry: ~500 MB of packed renders at 100k posts). The files are
    written together, a few parts of each in turn (atomic.stage_together), so a chunk
    is dropped soon after it is fetched."""

    def __init__(self, fetch: Callable[[set[str]], dict[str, Render]], keys: list[str],
                 readers: int) -> None:
        self.fetch = fetch
        self.keys = keys
        self.readers = readers
        self.chunks: dict[int, list[Any]] = {}  # start → [renders, readers left]
        self.read: dict[int, int] = {}  # RENDERS index → renders its file has read

    def parts(self, which: int) -> Parts:
        """The entry bytes of one of the files, RENDERS[which]: read once, as the file
        is written (the size is not known: stage_together does not need it)."""
        return Parts(lambda: self._renders(which), 0)

    def position(self, which: int) -> int:
        """How many renders the file of RENDERS[which] has read."""
        return self.read.get(which, 0)

    def _renders(self, which: int) -> Iterator[bytes]:
        read = self.read
        read[which] = 0
        for start in range(0, len(self.keys), STREAM_CHUNK):
            chunk = self.chunks.get(start)
            if chunk is None:
                chunk = self.chunks[start] = [self._fetched(start), self.readers]
            for render in chunk[0]:
                read[which] += 1
                yield unpack_render(render[which])
            chunk[1] -= 1
            if not chunk[1]:
                del self.chunks[start]

    def _fetched(self, start: int) -> list[Render]:
        chunk = self.keys[start:start + STREAM_CHUNK]
        found = self.fetch(set(chunk))
        return [found[key] for key in chunk]

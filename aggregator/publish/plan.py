"""Which feeds must be written, the renders they need, and writing them.

A feed whose fingerprint (head + the render keys of its entries, in order) and file
are as the last build left them is kept; only entries of feeds that must be written,
and only those not in the build cache, are sanitised and serialised.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aggregator import progress
from aggregator.config import Config
from aggregator.fingerprints import fingerprint_of, render_fingerprint, render_key
from aggregator.model import Entry
from aggregator.publish.atomic import Publisher
from aggregator.report import BuildReport
from aggregator.state.cache import BuildCache, pack_render, unpack_render, unpacked_size
from aggregator.state.published import PublishedRecord
from aggregator.tree.categories import Node

if TYPE_CHECKING:
    from aggregator.writers.feeds import FeedRenderer
from aggregator.writers.index import feed_title, feed_url, feeds_opml, index_html
from aggregator.writers.parts import Parts

log = logging.getLogger(__name__)

# Written by every build beside the feeds.
INDEX_FILES = ("index.html", "feeds.opml")


def publish(config: Config, root: Node, report: BuildReport, cache: BuildCache,
            workers: int = 1, clean_nodes: frozenset[tuple[str, ...]] = frozenset(),
            last_counts: dict[tuple[str, ...], int] | None = None,
            sweep_temps: bool = True, memo: dict[str, Any] | None = None,
            patched: bool = False,
            load: Callable[[list[Node], int], None] | None = None
            ) -> dict[tuple[str, ...], int]:
    """Write every feed whose inputs changed; render each needed entry once.

    `clean_nodes`: nodes the caller knows hold exactly the entries of the last build
    (a Builder session diffing its entries): their feeds are kept without even
    computing their fingerprints, unless their files were touched. `memo` (kept by a
    session) saves remaking the index and OPML files when no count or slug changed.
    `patched`: a build of a few changes, which leaves unused renders for a later one
    to drop. `load(nodes, max_items)` is called with the nodes whose feeds are planned
    before their entries are asked for (a saved index loads their parts).
    Returns the number of entries in each node's feed."""
    publisher = Publisher(config.output_dir,
                          PublishedRecord(config.state_path, config.output_dir))
    try:
        return _publish(publisher, config, root, report, cache, workers, clean_nodes,
                        last_counts, sweep_temps, memo, patched, load)
    except BaseException:
        publisher.abort()  # no staging thread may go on writing after this build
        raise


def _publish(publisher: Publisher, config: Config, root: Node, report: BuildReport,
             cache: BuildCache, workers: int, clean_nodes: frozenset[tuple[str, ...]],
             last_counts: dict[tuple[str, ...], int] | None, sweep_temps: bool,
             memo: dict[str, Any] | None, patched: bool,
             load: Callable[[list[Node], int], None] | None) -> dict[tuple[str, ...], int]:
    fingerprint = render_fingerprint(config)
    cache.invalidate_if_changed("render", fingerprint, "rendered", "feed_state")
    publisher.prepare(sweep_temps)
    keys: dict[str, str] = {}  # entry id -> render key

    def key(entry: Entry) -> str:
        found = keys.get(entry.id)
        if found is None:
            found = keys[entry.id] = render_key(fingerprint, entry)
        return found

    # Plan: a feed whose fingerprint and file are as the last build left them is kept.
    previous = cache.feed_states()
    plans: list[tuple[Node, str, str, list[Entry], list[str], str]] = []
    counts: dict[tuple[str, ...], int] = {}
    kept: list[str] = []
    kept_nodes: list[Node] = []
    planned: list[tuple[Node, tuple[str, str]]] = []  # (node, its feeds' files)
    for node in root.walk():
        names = node.names
        rels = (f"{node.rel_dir}atom.xml", f"{node.rel_dir}rss.xml")
        # A session's clean node is trusted without a stat between full walks (a feed
        # file edited by hand is repaired at the next walk, at most 10 minutes later).
        if names in clean_nodes and last_counts is not None and names in last_counts \
                and rels[0] in previous and rels[1] in previous and (not sweep_temps or (
                    _untouched(publisher, rels[0], previous[rels[0]][0], previous)
                    and _untouched(publisher, rels[1], previous[rels[1]][0], previous))):
            counts[names] = last_counts[names]
            kept += rels
            kept_nodes.append(node)
            continue
        counts[names] = 0  # (counted below: counts keeps the walk's order)
        planned.append((node, rels))
    if load is not None and planned:
        load([node for node, _ in planned], config.max_items)
    for node, rels in planned:
        members = node.entries(config.max_items)
        counts[node.names] = len(members)
        member_keys = [key(e) for e in members]  # once for both formats
        for kind, rel in zip(("atom", "rss"), rels, strict=True):
            feed_print = fingerprint_of(kind, feed_title(config, node),
                                        feed_url(config, node, kind), member_keys)
            plans.append((node, kind, rel, members, member_keys, feed_print))
    todo = {plan[2] for plan in plans if not _untouched(publisher, plan[2], plan[5], previous)}
    if log.isEnabledFor(logging.DEBUG):
        _explain_plans(plans, todo, previous, len(kept))

    needed = {e.id: e for plan in plans if plan[2] in todo for e in plan[3]}
    cached = cache.rendered_keys({key(e) for e in needed.values()})
    missing = [e for e in needed.values() if key(e) not in cached]
    renders = _Renders(cache)
    if missing:
        # (imported here, as the feed writer below: the sanitiser, feedgen and lxml are
        # ~90 ms of imports that a build with nothing to render or write does without)
        from aggregator.render import body_reader, content_roots, render_entries

        if any(e.partial for e in missing) and cache.file is None:
            # an in-memory cache: only this process can read it
            missing = list(cache.whole(missing, body_reader(config), content_roots(config)))
        # entries that came from the cache without their html are made whole by the
        # renderer, a chunk at a time (never all 100k bodies in memory at once)
        pairs = render_entries(config, missing, workers, cache.file)
        with progress.bar("entries rendered", len(missing), "entry") as shown:
            renders.store(_rendered(missing, pairs, key, renders, report), shown.advance)
    report.rendered += len(missing)  # (plus any rendered as they were read)

    prints: dict[str, str] = {}
    wanted: dict[str | None, set[str]] = {}  # top-level category (None: root) → keys
    for plan in plans:
        if plan[2] in todo:
            wanted.setdefault(plan[0].names[0] if plan[0].names else None,
                              set()).update(plan[4])
    unpacked = _SubtreeRenders(renders.fetch, wanted)
    publisher.keep_all(kept)
    report.feeds += len(kept)
    renderer = _feed_renderer(config) if todo else None
    with progress.bar("feeds written", len(todo), "feed") as shown:
        for node, kind, rel, members, member_keys, feed_print in plans:
            report.feeds += 1
            if renderer is not None and rel in todo:
                title, url = feed_title(config, node), feed_url(config, node, kind)
                parts = unpacked.parts(node.names, member_keys, 0 if kind == "atom" else 1)
                data = (renderer.atom_feed if kind == "atom" else renderer.rss_feed)(
                    title, url, members, parts)
                publisher.write(rel, data)
                shown.advance()
            else:
                publisher.keep(rel)
            # (isdisjoint walks the whole list even when nothing failed)
            if not renders.failed or renders.failed.isdisjoint(member_keys):
                prints[rel] = feed_print
            # (else no state is kept: the next build writes it again, trying that entry
            # again)
    index, opml = INDEX_FILES
    # counts holds every node in walk order, and within one config the names decide
    # the slugs: names and counts are the whole shape the two files show
    shape = tuple(counts.items())
    if memo is None or memo.get("shape") != shape:
        files = (index_html(config, root, counts), feeds_opml(config, root))
        if memo is not None:
            memo.update(shape=shape, files=files)
    else:
        files = memo["files"]
    publisher.write(index, files[0])
    publisher.write(opml, files[1])
    publisher.finish()
    states = []  # the kept feeds' states are as they were
    for rel, feed_print in prints.items():  # as published: size and mtime after the rename
        st = (config.output_dir / rel).stat()
        states.append((rel, feed_print, st.st_size, st.st_mtime_ns))
    published = set(kept)
    published.update(prints)
    cache.update_feed_states([row for row in states if previous.get(row[0]) != row[1:]],
                             previous.keys() - published)
    if report.rendered and (sweep_temps and not patched or not kept_nodes):
        # Renders no feed uses any more go (bounded disk). The keys of the kept nodes'
        # entries were never computed: computed now, or their renders would go too
        # (they did: a patched build emptied the cache); not in a patched build.
        for node in kept_nodes:
            for entry in node.entries(config.max_items):
                key(entry)
        cache.keep_rendered(set(keys.values()))
    report.written = publisher.written
    report.unchanged = len(publisher.unchanged)
    report.removed = publisher.removed
    return counts


def _rendered(entries: list[Entry], pairs: Iterable[tuple[bytes, bytes] | str],
              key: Callable[[Entry], str], renders: _Renders, report: BuildReport
              ) -> Iterator[tuple[str, bytes, bytes]]:
    """(render key, atom, rss) of each entry rendered. One that could not be is
    reported, held as an empty render (its feeds are written without it) and not
    cached: the next build tries it again."""
    for entry, pair in zip(entries, pairs, strict=True):
        if isinstance(pair, str):
            report.problems.error(entry.source or entry.id, pair)
            report.retry = True
            renders.leave_out(key(entry))
        else:
            yield key(entry), *pair


def _explain_plans(plans: list[tuple[Node, str, str, list[Entry], list[str], str]],
                   todo: set[str], previous: dict[str, tuple[str, int, int]],
                   kept: int) -> None:
    """Debug: each feed to write and why; how many were kept and how."""
    for _node, _kind, rel, members, _keys, feed_print in plans:
        if rel in todo:
            known = previous.get(rel)
            why = "new feed" if known is None else "its entries or head changed" \
                if known[0] != feed_print else "the file differs from what was written"
            log.debug("feed %s: written (%s; entries: %d)", rel, why, len(members))
    log.debug("feeds: %d to write, %d planned and unchanged, %d kept unplanned (their "
              "nodes' entries did not change)", len(todo), len(plans) - len(todo), kept)


def _feed_renderer(config: Config) -> FeedRenderer:
    from aggregator.writers.feeds import FeedRenderer

    return FeedRenderer(config)


_NOTHING = pack_render(b"")  # the render of an entry left out


class _Renders:
    """Packed renders by key, kept in the build cache as they are made and read back
    a subtree at a time (a cold 100k build held 30k renders, ~100 MB, from render to
    write). Those the cache could not keep (disk full, a table it could not clear)
    are held here instead."""

    def __init__(self, cache: BuildCache) -> None:
        self.cache = cache
        self.held: dict[str, tuple[bytes, bytes]] = {}
        self.failed: set[str] = set()  # keys of entries that could not be rendered

    def leave_out(self, key: str) -> None:
        self.failed.add(key)
        self.held[key] = (_NOTHING, _NOTHING)

    def store(self, rows: Iterable[tuple[str, bytes, bytes]],
              done: Callable[[int], None]) -> None:
        """Keep `rows`, 500 at a time; `done(n)` after each batch (progress)."""
        batch: list[tuple[str, bytes, bytes]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == 500:
                self._store(batch)
                done(len(batch))
                batch = []
        self._store(batch)
        done(len(batch))

    def _store(self, batch: list[tuple[str, bytes, bytes]]) -> None:
        self.cache.store_rendered(batch)
        if not self.cache.keeps_renders():
            self.held.update({k: (atom, rss) for k, atom, rss in batch})

    def fetch(self, keys: set[str]) -> dict[str, tuple[bytes, bytes]]:
        found = self.cache.rendered(keys - self.held.keys())
        found.update({k: self.held[k] for k in keys & self.held.keys()})
        return found


class _SubtreeRenders:
    """The renders of the feeds being written. An entry sits in the feeds of its
    top-level category, of the ones below it and of the root: feeds are planned in walk
    order, the root's first, then one top-level subtree after the other. The packed
    renders of the root's feeds, then of each subtree's, are fetched when it starts
    and dropped when it ends. Within a subtree each render is unpacked once and kept,
    up to a budget; the root's are unpacked as they are written. That halves the
    unpacking of a full rewrite (2.6 GB at 100k posts) while holding one subtree's
    renders, not all of them."""

    BUDGET = 128 << 20  # bytes kept unpacked at most

    def __init__(self, fetch: Callable[[set[str]], dict[str, tuple[bytes, bytes]]],
                 wanted: dict[str | None, set[str]]) -> None:
        self.fetch = fetch
        self.wanted = wanted  # subtree (None: the root's feeds) → the keys they need
        self.packed: dict[str, tuple[bytes, bytes]] = {}
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
            self.packed = self.fetch(self.wanted.get(top, set()))
        packed = self.packed
        size = sum(unpacked_size(packed[k][which]) for k in keys)
        if not names:
            return Parts(lambda: (unpack_render(packed[k][which]) for k in keys), size)
        kept = self.kept

        # (called from the publisher's staging threads, a few feeds at a time: two may
        # unpack one render, and the budget's count may be a render off; never wrong)
        def unpacked(key: str) -> bytes:
            data = kept.get((key, which))
            if data is None:
                data = unpack_render(packed[key][which])
                if self.size < self.BUDGET:
                    kept[(key, which)] = data
                    self.size += len(data)
            return data
        return Parts(lambda: map(unpacked, keys), size)


def _untouched(publisher: Publisher, rel: str, feed_print: str,
               previous: dict[str, tuple[str, int, int]]) -> bool:
    """Same inputs as last time, and the file is still what we wrote then."""
    known = previous.get(rel)
    if known is None or known[0] != feed_print:
        return False
    try:
        st = os.stat(os.path.join(publisher.out_dir, rel))
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == known[1:]

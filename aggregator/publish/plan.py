"""Which feeds must be written, the renders they need, and writing them.

A node's feeds are planned when a change dirtied the node (or their files are not
what was written): its entries are a query of the entry store. A feed whose
fingerprint (head + the render keys of its entries, in order) and file are as the
last build left them is kept; only entries of feeds that must be written, and only
those with no render in the store, are sanitised and serialised. A node's archive
pages (output.archives) are planned as its feeds are and written after all of them
(publish/archive_pass.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby
from typing import TYPE_CHECKING, Any

from aggregator import progress
from aggregator.config import Config
from aggregator.fingerprints import fingerprint_of, render_fingerprint
from aggregator.model import Entry
from aggregator.publish.archive_pass import ArchivePass, newest_updated
from aggregator.publish.atomic import Publisher
from aggregator.publish.heads import FeedHeads
from aggregator.publish.websub import record_pings
from aggregator.report import BuildReport
from aggregator.state.address import StateAddress
from aggregator.state.published import PublishedRecord
from aggregator.store import (
    RENDERS,
    EntryStore,
    FeedRow,
    Render,
    RenderRow,
    pack_render,
    unpack_render,
    unpacked_size,
)
from aggregator.tree.categories import Node

if TYPE_CHECKING:
    from aggregator.writers.feeds import FeedRenderer
from aggregator.writers import jsonfeed, pages
from aggregator.writers.index import (
    FEED_FILES,
    feed_title,
    feed_url,
    feeds_opml,
    index_html,
    page_url,
)
from aggregator.writers.parts import Parts

log = logging.getLogger(__name__)

# Written by every build beside the feeds.
INDEX_FILES = ("index.html", "feeds.opml")
# A node's files by kind: its feeds and its page.
_FILES = {**FEED_FILES, "page": pages.PAGE_FILE}


def index_files(config: Config) -> tuple[str, ...]:
    """The files every build writes beside the planned ones. With output.pages the
    root's index.html is the root node's page, planned like the others."""
    return ("feeds.opml", *pages.ASSETS) if config.pages else INDEX_FILES


def publish(config: Config, root: Node, store: EntryStore, report: BuildReport,
            workers: int = 1, *, stat: bool = True, memo: dict[str, Any] | None = None
            ) -> None:
    """Write every feed whose inputs changed; render each needed entry once.

    A node that no change dirtied (store.dirty) keeps its feeds as the last build
    left them, after a stat of their files when `stat` (a session trusts them between
    its walks). `memo` (kept by a session) saves remaking the index and OPML files
    when no count or slug changed."""
    publisher = Publisher(config.output_dir,
                          PublishedRecord(StateAddress.of(config), config.output_dir))
    try:
        _publish(publisher, config, root, store, report, workers, stat, memo)
    except BaseException:
        publisher.abort()  # no staging thread may go on writing after this build
        raise
    record_pings(config, report.written)  # (the files are replaced: hubs may fetch them)


Plan = tuple[Node, str, str, list[FeedRow], list[str], str]


def _publish(publisher: Publisher, config: Config, root: Node, store: EntryStore,
             report: BuildReport, workers: int, stat: bool,
             memo: dict[str, Any] | None) -> None:
    store.invalidate_if_changed("render", render_fingerprint(config), "rendered",
                                "feed_state")
    publisher.prepare(stat)
    previous = store.feed_states()
    dirty = store.dirty()
    limit = config.max_items
    plans: list[Plan] = []
    counts: dict[tuple[str, ...], int] = {}
    kept: list[str] = []
    heads = FeedHeads(config, previous)  # hub and archive links; archive documents
    archived_pages = ArchivePass(lambda rel, feed_print: _untouched(publisher, rel, feed_print,
                                                                    previous))
    kinds = (*config.formats, "page") if config.pages else config.formats
    newest = _Newest(store)
    frames: dict[str, tuple[bytes, bytes]] = {}  # a page's rel → its frame
    for node in root.walk():
        rels = [*(node.rel_dir + _FILES[kind] for kind in kinds), *heads.archived(node)]
        counts[node.names] = min(node.count, limit) if limit else node.count
        if node.nid not in dirty and node.nid and all(rel in previous for rel in rels) \
                and (not stat or all(_untouched(publisher, rel, previous[rel][0], previous)
                                     for rel in rels)):
            kept += rels
            continue
        members = store.feed(node.nid, heads.query_limit) if node.nid else []
        members, archived = heads.split(node, members)
        archived_pages.plan(archived)
        del archived  # (not held while the next node is queried)
        newest.seen(node, members)
        member_keys = [row[1] for row in members]  # once for every format
        for kind, rel in zip(kinds, rels[:len(kinds)], strict=True):
            if kind == "page":
                frames[rel] = pages.frame(config, root, node, newest)
                newest_rows = members[:pages.PAGE_ITEMS]
                keys = member_keys[:pages.PAGE_ITEMS]
                plans.append((node, kind, rel, newest_rows, keys,
                              fingerprint_of(kind, frames[rel], keys)))
                continue
            head = [feed_title(config, node), feed_url(config, node, kind)]
            if kind == "json":  # (its home page is the node's page when there is one)
                head += [page_url(config, node), *config.websub_hubs]
            extra = heads.current(node, kind, rel) if kind != "json" else b""
            plans.append((node, kind, rel, members, member_keys,
                          fingerprint_of(kind, *head, member_keys,
                                         *((extra,) if extra else ()))))
    todo = {plan[2] for plan in plans if not _untouched(publisher, plan[2], plan[5], previous)}
    if log.isEnabledFor(logging.DEBUG):
        _explain_plans(plans, todo, previous, len(kept), archived_pages)

    needed = {row[1]: row[0] for plan in plans if plan[2] in todo for row in plan[3]}
    needed.update(archived_pages.take_needed())
    cached = store.rendered_keys(needed)
    missing = [(rid, key) for key, rid in needed.items() if key not in cached]
    renders = _Renders(store)
    if missing:
        # (imported here, as the feed writer below: the sanitiser, feedgen and lxml are
        # ~90 ms of imports that a build with nothing to render or write does without)
        from aggregator.render import render_entries
        from aggregator.store.rows import entry_of

        def load(rids: list[int]) -> dict[int, Entry]:
            return {rid: entry_of(*row) for rid, row in store.packed(rids).items()}

        pairs = render_entries(config, [rid for rid, _ in missing], load, workers,
                               store.readers)
        with progress.bar("entries rendered", len(missing), "entry") as shown:
            renders.store(_rendered(missing, pairs, renders, report), shown.advance)
    report.rendered += len(missing)  # (plus any rendered as they were read)

    prints: dict[str, str] = {}
    unpacked = _SubtreeRenders(renders.fetch, _uses_by_subtree(plans, todo))
    publisher.keep_all(kept)
    report.feeds += sum(1 for rel in kept if not rel.endswith(pages.PAGE_FILE))
    archives_todo = len(archived_pages.todo)
    xml = archives_todo > 0 or any(plan[1] in ("atom", "rss") and plan[2] in todo
                               for plan in plans)
    renderer = _feed_renderer(config) if xml else None
    with progress.bar("feeds written", len(todo) + archives_todo, "feed") as shown:
        for node, kind, rel, members, member_keys, feed_print in plans:
            report.feeds += kind != "page"
            if rel in todo:
                parts = unpacked.parts(node.names, member_keys, RENDERS.index(kind))
                publisher.write(rel, _file(config, renderer, heads, node, kind, rel, members,
                                           parts, frames.get(rel), renders.failed))
                shown.advance()
            else:
                publisher.keep(rel)
            # (isdisjoint walks the whole list even when nothing failed)
            if not renders.failed or renders.failed.isdisjoint(member_keys):
                prints[rel] = feed_print
            # (else no state is kept: the next build writes it again, trying that entry
            # again)
        unpacked.release()
        if archives_todo:
            assert renderer is not None
            archived_pages.write(publisher, renderer, renders.fetch, renders.failed, prints,
                                 shown.advance)
    for rel, feed_print in archived_pages.kept:
        publisher.keep(rel)
        prints[rel] = feed_print
    report.feeds += archives_todo + len(archived_pages.kept)
    # counts holds every node in walk order, and within one config the names decide
    # the slugs: names and counts are the whole shape the two files show
    shape = tuple(counts.items())
    if memo is None or memo.get("shape") != shape:
        files = {"feeds.opml": feeds_opml(config, root)}
        if config.pages:
            files.update((name, pages.asset(name)) for name in pages.ASSETS)
        else:
            files["index.html"] = index_html(config, root, counts)
        if memo is not None:
            memo.update(shape=shape, files=files)
    else:
        files = memo["files"]
    for name, data in files.items():
        publisher.write(name, data)
    publisher.finish()
    states = []  # the kept feeds' states are as they were
    for rel, feed_print in prints.items():  # as published: size and mtime after the rename
        st = (config.output_dir / rel).stat()
        states.append((rel, feed_print, st.st_size, st.st_mtime_ns))
    published = set(kept)
    published.update(prints)
    store.update_feed_states([row for row in states if previous.get(row[0]) != row[1:]],
                             previous.keys() - published)
    store.clear_dirty(dirty)
    if report.rendered >= _SWEEP_AFTER or len(todo) == len(plans) and todo \
            and not archived_pages.kept:
        store.drop_unused_renders()  # bounded disk: no render of an entry gone
    report.written = publisher.written
    report.unchanged = len(publisher.unchanged)
    report.removed = publisher.removed


# renders a build makes before it drops those no entry has any more (an edit leaves
# one behind; the next larger build drops them)
_SWEEP_AFTER = 100


def _file(config: Config, renderer: FeedRenderer | None, heads: FeedHeads, node: Node,
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


class _Newest:
    """The last update a page shows for a node: its newest entry's (the first of its
    feed), from the feed when it was queried, else queried alone."""

    def __init__(self, store: EntryStore) -> None:
        self.store = store
        self.known: dict[int, str | None] = {}

    def seen(self, node: Node, members: list[FeedRow]) -> None:
        self.known[node.nid] = members[0][3] if members else None

    def __call__(self, node: Node) -> str | None:
        if node.nid not in self.known:
            first = self.store.feed(node.nid, 1) if node.nid else []
            self.known[node.nid] = first[0][3] if first else None
        return self.known[node.nid]


def _rendered(missing: list[tuple[int, str]], pairs: Iterable[Render | str],
              renders: _Renders, report: BuildReport) -> Iterator[RenderRow]:
    """(render key, atom, rss) of each entry rendered. One that could not be is
    reported, held as an empty render (its feeds are written without it) and not
    stored: the next build tries it again."""
    problems: dict[int, str] = {}
    for (rid, key), pair in zip(missing, pairs, strict=True):
        if isinstance(pair, str):
            problems[rid] = pair
            report.retry = True
            renders.leave_out(key)
        else:
            yield key, *pair
    if problems:
        from aggregator.store.rows import entry_of

        for rid, row in renders.store_rows(list(problems)).items():
            entry = entry_of(*row)
            report.problems.error(entry.source or entry.id, problems[rid])


def _explain_plans(plans: list[Plan],
                   todo: set[str], previous: dict[str, tuple[str, int, int]],
                   kept: int, archived: ArchivePass) -> None:
    """Debug: each feed to write and why; how many were kept and how."""
    for _node, _kind, rel, members, _keys, feed_print in plans:
        if rel in todo:
            known = previous.get(rel)
            why = "new feed" if known is None else "its entries or head changed" \
                if known[0] != feed_print else "the file differs from what was written"
            log.debug("feed %s: written (%s; entries: %d)", rel, why, len(members))
    log.debug("feeds: %d to write, %d planned and unchanged, %d kept unplanned (their "
              "nodes' entries did not change)", len(todo), len(plans) - len(todo), kept)
    if archived.todo or archived.kept:
        log.debug("archive documents: %d to write, %d planned and unchanged",
                  len(archived.todo), len(archived.kept))


def _feed_renderer(config: Config) -> FeedRenderer:
    from aggregator.writers.feeds import FeedRenderer

    return FeedRenderer(config)


_NOTHING = pack_render(b"")  # the render of an entry left out


class _Renders:
    """Packed renders by key, kept in the store as they are made and read back a
    subtree at a time for the feeds (30k renders are ~100 MB at 100k posts), a few
    pages at a time for the archive pages. Those the store could not keep (disk full,
    a table it could not clear) are held here instead."""

    def __init__(self, store: EntryStore) -> None:
        self.cache = store
        self.held: dict[str, Render] = {}
        self.failed: set[str] = set()  # keys of entries that could not be rendered

    def leave_out(self, key: str) -> None:
        self.failed.add(key)
        self.held[key] = (_NOTHING, _NOTHING, _NOTHING, _NOTHING)

    def store(self, rows: Iterable[RenderRow],
              done: Callable[[int], None]) -> None:
        """Keep `rows`, 500 at a time; `done(n)` after each batch (progress)."""
        batch: list[RenderRow] = []
        for row in rows:
            batch.append(row)
            if len(batch) == 500:
                self._store(batch)
                done(len(batch))
                batch = []
        self._store(batch)
        done(len(batch))

    def _store(self, batch: list[RenderRow]) -> None:
        self.cache.store_rendered(batch)
        if not self.cache.keeps_renders():
            self.held.update({row[0]: row[1:] for row in batch})

    def store_rows(self, rids: list[int]) -> dict[int, tuple[bytes, str | None, int | None]]:
        return self.cache.packed(rids)

    def fetch(self, keys: set[str]) -> dict[str, Render]:
        found = self.cache.rendered(keys - self.held.keys())
        found.update({k: self.held[k] for k in keys & self.held.keys()})
        return found


def _uses_by_subtree(plans: list[Plan],
                     todo: set[str]) -> dict[str | None, dict[str, int]]:
    """Top-level category (None: the root's feeds) → render key → how many of its
    nodes write a file holding that entry."""
    uses: dict[str | None, dict[str, int]] = {}
    for _, node_plans in groupby(plans, key=lambda plan: id(plan[0])):  # (consecutive)
        group = list(node_plans)
        keys = set().union(*(plan[4] for plan in group if plan[2] in todo))
        if keys:
            names = group[0][0].names
            counts = uses.setdefault(names[0] if names else None, {})
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
    return uses


class _SubtreeRenders:
    """The renders of the feeds being written. An entry sits in the feeds of its
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

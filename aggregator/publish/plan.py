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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator import progress
from aggregator.config import Config
from aggregator.fingerprints import fingerprint_of, render_fingerprint
from aggregator.model import Entry
from aggregator.publish import splice
from aggregator.publish.archive_pass import ArchivePass
from aggregator.publish.atomic import Publisher, PublishError
from aggregator.publish.forked_staging import (
    StagingJob,
    stage_in_workers,
    subtree_groups,
    worth_forking,
)
from aggregator.publish.heads import FeedHeads
from aggregator.publish.splice import (
    Plan,
    SubtreeRenders,
    big_files,
    feed_file,
    in_turn,
    is_big,
    uses_by_subtree,
    with_held,
)
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
)
from aggregator.tree.categories import Node

if TYPE_CHECKING:
    from aggregator.writers.feeds import FeedRenderer
from aggregator.writers import pages
from aggregator.writers.index import (
    FEED_FILES,
    feed_title,
    feed_url,
    feeds_opml,
    index_html,
    page_url,
)

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
    # An entry's row as first queried: an entry is in its node's feed and in each of
    # its ancestors', and every plan holds its rows until the files are written. Shared,
    # they cost a build with `max_items: 0` a quarter of the memory.
    rows: dict[int, FeedRow] = {}
    for node in root.walk():
        rels = [*(node.rel_dir + _FILES[kind] for kind in kinds), *heads.archived(node)]
        counts[node.names] = min(node.count, limit) if limit else node.count
        if node.nid not in dirty and node.nid and all(rel in previous for rel in rels) \
                and (not stat or all(_untouched(publisher, rel, previous[rel][0], previous)
                                     for rel in rels)):
            kept += rels
            continue
        members = [rows.setdefault(row[0], row) for row in store.feed(
            node.nid, heads.query_limit)] if node.nid else []
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
    publisher.keep_all(kept)
    report.feeds += sum(1 for rel in kept if not rel.endswith(pages.PAGE_FILE))
    archives_todo = len(archived_pages.todo)
    xml = archives_todo > 0 or any(plan[1] in ("atom", "rss") and plan[2] in todo
                               for plan in plans)
    renderer = _feed_renderer(config) if xml else None
    todo_plans = [plan for plan in plans if plan[2] in todo]
    source = store.readers if store.keeps_renders() else None
    forked = source is not None and worth_forking(todo_plans, workers)
    # (the renders of each subtree's files; the biggest files read theirs a chunk at a
    # time, see splice.big_files)
    uses = uses_by_subtree(plans, todo, splice.STREAM_AT)
    with progress.bar("feeds written", len(todo) + archives_todo, "feed") as shown:
        if forked:
            assert source is not None
            _stage_forked(publisher, StagingJob(
                config, renderer, heads, frames, uses, splice.STREAM_AT, renders.failed,
                renders.held, source, subtree_groups(todo_plans)), todo_plans, workers,
                shown.advance)
        else:
            unpacked = SubtreeRenders(renders.fetch, uses)
            for group in in_turn(todo_plans, splice.STREAM_AT):
                if is_big(group[0], splice.STREAM_AT):
                    publisher.write_together(*big_files(
                        config, renderer, heads, frames, renders.failed, group,
                        renders.fetch))
                else:
                    node, kind, rel, members, member_keys, _print = group[0]
                    parts = unpacked.parts(node.names, member_keys, RENDERS.index(kind))
                    publisher.write(rel, feed_file(config, renderer, heads, node, kind, rel,
                                                   members, parts, frames.get(rel),
                                                   renders.failed))
                shown.advance(len(group))
            unpacked.release()
        for _node, kind, rel, _members, member_keys, feed_print in plans:
            report.feeds += kind != "page"
            if rel not in todo:
                publisher.keep(rel)
            # (isdisjoint walks the whole list even when nothing failed)
            if not renders.failed or renders.failed.isdisjoint(member_keys):
                prints[rel] = feed_print
            # (else no state is kept: the next build writes it again, trying that entry
            # again)
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


def _stage_forked(publisher: Publisher, job: StagingJob, todo_plans: list[Plan],
                  workers: int, advance: Callable[[int], None]) -> None:
    """Stage every file to write in worker processes (forked_staging), then hand them to
    the publisher in plan order. A file one could not stage fails the publish as
    Publisher.write's staging does: nothing staged is published."""
    temps: dict[str, str | None] = {}
    problem: str | None = None
    try:
        for group, (staged, failed) in zip(job.groups, stage_in_workers(job, workers),
                                           strict=True):
            temps.update(staged)
            problem = problem or failed
            advance(len(group))
    except BaseException:  # (a worker died, or this build is stopped)
        for temp in temps.values():
            if temp is not None:
                Path(temp).unlink(missing_ok=True)
        raise
    for _node, _kind, rel, *_rest in todo_plans:
        if rel in temps:
            temp = temps[rel]
            publisher.adopt(rel, None if temp is None else Path(temp))
    if problem is not None:  # (publish aborts the publisher: every temp goes)
        raise PublishError(problem)


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
        return with_held(self.cache.rendered, self.held, keys)


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

"""One build: sources → entries → sanitiser → category tree → writers → atomic publish.

This is the only place that knows the order of the stages; the CLI and the service
only decide *when* to call `build`.
"""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from aggregator.config import Config
from aggregator.model import Entry, Image
from aggregator.problems import Problem, ProblemLog
from aggregator.publish.atomic import Publisher
from aggregator.render import (
    PARALLEL_THRESHOLD,
    can_fork,
    entry_key,
    fingerprint_of,
    finish_entry,
    pool_context,
    read_fingerprint,
    render_entries,
    render_fingerprint,
)
from aggregator.sources.content import PostFile, PostReader, discover, rediscover
from aggregator.state.cache import BuildCache, CachedPost, digest
from aggregator.state.probes import apply_probes, unknown_image
from aggregator.state.store import Clock, StateStore, utc_now
from aggregator.state.upstream import stored_upstream_entries
from aggregator.tree.categories import Node, build_tree
from aggregator.writers.feeds import FeedRenderer

__all__ = ["build", "finish_entry", "read_posts", "open_state", "BuildReport"]
from aggregator.writers.index import feed_title, feed_url, feeds_opml, index_html

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    posts_found: int = 0
    posts_read: int = 0
    entries: int = 0
    feeds: int = 0
    written: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    rendered: int = 0  # entries sanitised and serialised (the rest came from the cache)
    unknown_images: list[str] = field(default_factory=list)  # post images to probe
    seconds: float = 0.0
    problems: ProblemLog = field(default_factory=ProblemLog)

    @property
    def skipped(self) -> int:
        return self.posts_found - self.posts_read

    @property
    def exit_code(self) -> int:
        return 1 if self.problems.errors else 0


def open_state(config: Config, clock: Clock, problems: ProblemLog) -> StateStore:
    """The state file, or an in-memory one if it cannot be opened (the build goes on)."""
    try:
        return StateStore(config.state_path, clock)
    except (OSError, sqlite3.Error) as exc:
        problems.warn(str(config.state_path), f"state unusable ({exc}); using a temporary "
                      "one, so undated entries may get new dates")
        return StateStore(Path(":memory:"), clock)


def read_posts(config: Config, state: StateStore, report: BuildReport,
               cache: BuildCache | None = None, posts: list[PostFile] | None = None,
               memo: dict[str, ReadResult] | None = None,
               posts_walked: bool = True, workers: int = 1) -> list[Entry]:
    """Every post as an Entry (html not yet sanitised). With a cache, a post whose file
    identity or content is unchanged is not parsed again; its problems are replayed.
    `memo` (source → last result, kept by a long-lived Builder) skips even the cache."""
    cache = cache if cache is not None else BuildCache(None)
    cache.invalidate_if_changed("read", read_fingerprint(config), "post_cache")
    if posts is None:
        posts = discover(config, report.problems)
    report.posts_found = len(posts)
    reader = PostReader(config, report.problems, state.first_seen)
    entries: list[Entry] = []
    fresh: list[tuple[str, CachedPost]] = []
    seen: dict[str, ReadResult] = {}
    if workers > 1:
        _read_in_parallel(config, posts, cache, memo, workers, state, report.problems)
    for post in posts:
        source = f"{post.root}\0{post.rel}"
        known = memo.get(source) if memo is not None else None
        if known is not None and known[0] == post.identity:
            entry, found = known[1], known[2]
            report.problems.replay(found)
        else:
            entry, record, found = _read_post(post, cache.post(source), reader,
                                              report.problems)
            if record is not None:
                fresh.append((source, record))
        seen[source] = (post.identity, entry, found)
        if entry is not None:
            entries.append(entry)
    cache.store_posts(fresh)
    if fresh or memo is None or len(memo) != len(seen):
        cache.forget_posts_except(set(seen))
    if fresh and (memo is None or posts_walked):
        # O(all posts): on every one-off build, but in a session only after a full walk
        cache.keep_bodies({e.digest for e in entries})
    if memo is not None:
        memo.clear()
        memo.update(seen)
    report.posts_read = len(entries)
    return entries


# Read in a worker, an undated post cannot ask the state for its first-seen time: it
# gets this impossible date (parse_date refuses years before 1970) and the parent
# puts the real one in.
_NOT_SEEN_YET = datetime(1900, 1, 1, tzinfo=UTC)


def _read_in_parallel(config: Config, posts: list[PostFile], cache: BuildCache,
                      memo: dict[str, ReadResult] | None, workers: int,
                      state: StateStore, problems: ProblemLog) -> None:
    """Parse the posts the cache cannot answer in worker processes (a cold build spends
    most of its reading time in YAML and Markdown), and put the results in the cache so
    that the sequential pass below finds every one of them there."""
    pending = []
    for post in posts:
        source = f"{post.root}\0{post.rel}"
        known = memo.get(source) if memo is not None else None
        if known is not None and known[0] == post.identity:
            continue
        cached = cache.post(source)
        if cached is None or post.identity != (cached.size, cached.mtime_ns, cached.inode):
            pending.append(post)
    if len(pending) < PARALLEL_THRESHOLD or not can_fork():
        return
    size = -(-len(pending) // (workers * 4))
    chunks = [pending[i:i + size] for i in range(0, len(pending), size)]
    with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
        results = [r for chunk in pool.map(_read_chunk, [config] * len(chunks), chunks)
                   for r in chunk]
    records = []
    for post, (record, found) in zip(pending, results, strict=True):
        if record is None:
            continue  # unreadable: the sequential pass reports it
        entry = record.entry
        if entry is not None and entry.updated == _NOT_SEEN_YET:
            entry = replace(entry, updated=state.first_seen(entry.id))
            entry = replace(entry, digest=fingerprint_of(entry))
        records.append((f"{post.root}\0{post.rel}",
                        CachedPost(*post.identity, record.digest, entry, found)))
    cache.store_posts(records)


def _read_chunk(config: Config, posts: list[PostFile]
                ) -> list[tuple[CachedPost | None, tuple[Problem, ...]]]:
    """In a worker: read and parse each post; problems are returned, not logged (the
    parent reports them, in order, when it takes the results from the cache)."""
    out: list[tuple[CachedPost | None, tuple[Problem, ...]]] = []
    logging.getLogger("aggregator").disabled = True
    for post in posts:
        reader = PostReader(config, ProblemLog(), lambda _id: _NOT_SEEN_YET)
        data = reader.read_bytes(post)
        if data is None:
            out.append((None, ()))
            continue
        entry = reader.parse(post, data)
        if entry is not None:
            entry = replace(entry, digest=fingerprint_of(entry))
        found = tuple(reader.problems.items)
        out.append((CachedPost(*post.identity, digest(data), entry, found), found))
    return out


def _read_post(post: PostFile, cached: CachedPost | None, reader: PostReader,
               problems: ProblemLog
               ) -> tuple[Entry | None, CachedPost | None, tuple[Problem, ...]]:
    """(entry, what to cache if it changed, its problems). Unchanged identity: no read
    at all; unchanged bytes: no parse."""
    identity = post.identity
    if cached is not None and identity == (cached.size, cached.mtime_ns, cached.inode):
        problems.replay(cached.problems)
        return cached.entry, None, cached.problems
    reader.problems = ProblemLog()  # a log of this post's own problems, to cache with it
    data = reader.read_bytes(post)
    if data is None:
        problems.items.extend(reader.problems.items)
        return None, None, tuple(reader.problems.items)
    content_digest = digest(data)
    if cached is not None and cached.digest == content_digest:
        problems.replay(cached.problems)
        entry, found = cached.entry, cached.problems
    else:
        entry = reader.parse(post, data)
        if entry is not None:
            entry = replace(entry, digest=fingerprint_of(entry))
        found = tuple(reader.problems.items)
        problems.items.extend(found)
    return entry, CachedPost(*identity, content_digest, entry, found), found


def _with_probed_images(state: StateStore, entries: list[Entry]) -> list[Entry]:
    """Posts whose image type is unknown from the URL get what `fetch` probed (state,
    no network). The digest stays (it finds the post's cached body); render keys and
    the session's signatures include the image, so a probed type is re-rendered."""
    return apply_probes(state, entries)


def merge_duplicates(entries: Iterable[Entry], problems: ProblemLog) -> list[Entry]:
    """One entry per id and per link; a local post always beats an upstream entry
    (a stranger's feed claiming a post's id or link replaced the post), then the newest
    version wins, then the first source."""
    ordered = sorted(entries, key=lambda e: ("://" in e.source, -e.updated.timestamp(),
                                             e.source))
    by_id: dict[str, Entry] = {}
    by_link: dict[str, Entry] = {}
    for entry in ordered:
        kept = by_id.get(entry.id) or (by_link.get(entry.link) if entry.link else None)
        if kept is not None:
            problems.warn(entry.source or entry.id, f"duplicate of {kept.source or kept.id} "
                          f"(same {'id' if kept.id == entry.id else 'link'}); merged")
            continue
        by_id[entry.id] = entry
        if entry.link:
            by_link[entry.link] = entry
    return list(by_id.values())


def build(config: Config, clock: Clock = utc_now,
          extra_entries: Iterable[Entry] = (), workers: int = 1) -> BuildReport:
    """Publish every feed from the content dir (+ stored upstream entries)."""
    return Builder().build(config, clock, extra_entries=extra_entries, workers=workers)


ReadResult = tuple[tuple[int, int, int], Entry | None, tuple[Problem, ...]]


class CacheIncomplete(Exception):
    """The build cache cannot give what it promised (a body deleted by hand, a write
    that failed): the build is redone once with the post cache emptied."""


class Builder:
    """A build session that lasts (the service keeps one): the build cache stays open,
    the last read of every post stays in memory, and when the caller knows which files
    changed, only those are looked at instead of walking the whole tree."""

    def __init__(self, *, persistent: bool = False) -> None:
        self.persistent = persistent  # False: release everything after each build
        self._config: Config | None = None
        self._cache: BuildCache | None = None
        self._posts: dict[str, PostFile] | None = None  # location → post
        self._walk_problems: list[Problem] = []
        self._memo: dict[str, ReadResult] = {}
        self._signature: dict[str, tuple[tuple[str, ...], str, Image | None]] | None = None
        self._layout: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._counts: dict[tuple[str, ...], int] | None = None

    def build(self, config: Config, clock: Clock = utc_now, *,
              changed: set[str] | None = None, extra_entries: Iterable[Entry] = (),
              workers: int = 1) -> BuildReport:
        """`changed`: absolute paths that changed since the last build (None: unknown,
        walk everything)."""
        extra = list(extra_entries)
        try:
            return self._build(config, clock, changed, extra, workers)
        except CacheIncomplete as exc:
            log.warning("%s; reading every post again", exc)
            cache = open_cache(config)
            try:
                cache.invalidate_if_changed("read", "(emptied)", "post_cache", "post_body")
            finally:
                cache.close()
            return self._build(config, clock, None, extra, workers)

    def _build(self, config: Config, clock: Clock, changed: set[str] | None,
               extra_entries: list[Entry], workers: int) -> BuildReport:
        started = time.perf_counter()
        if config != self._config:
            self.close()
            self._config = config
        report = BuildReport()
        state = open_state(config, clock, report.problems)
        if self._cache is None:
            self._cache = open_cache(config)
        try:
            try:
                posts, walked = self._discover(config, changed, report.problems)
                post_entries = _with_probed_images(state, read_posts(
                    config, state, report, self._cache, posts, self._memo, walked, workers))
                report.unknown_images = [u for u in map(unknown_image, post_entries) if u]
                entries = merge_duplicates(
                    [*post_entries,
                     *stored_upstream_entries(state, config.upstream), *extra_entries],
                    report.problems)
            finally:
                state.close()
            report.entries = len(entries)
            root = build_tree(entries, config.slugs)
            clean = self._clean_nodes(entries, root) if self.persistent else frozenset()
            self._counts = publish(config, root, report, self._cache, workers, clean,
                                   self._counts, sweep_temps=walked)
        except BaseException:
            self.close()  # after a failure, trust nothing kept in memory
            raise
        if not self.persistent:
            self.close()  # a one-off build: release the cache file
        else:
            # What a session keeps lives long: move it out of the cyclic GC's scans
            # (a full collection over 10k entries cost ~0.1 s of every rebuild).
            gc.collect()
            gc.freeze()
        report.seconds = time.perf_counter() - started
        return report

    def _discover(self, config: Config, changed: set[str] | None,
                  problems: ProblemLog) -> tuple[list[PostFile], bool]:
        """(posts, whether the tree was walked)."""
        posts = None
        if changed is not None and self._posts is not None:
            posts = rediscover(config, self._posts, changed, problems)
            if posts is not None:
                problems.replay(self._walk_problems)
        walked = posts is None
        if posts is None:
            walk = ProblemLog()
            found = discover(config, walk)
            problems.items.extend(walk.items)
            self._walk_problems = list(walk.items)
            posts = {post.location: post for post in found}
        self._posts = posts
        return sorted(posts.values(), key=lambda p: (p.rel, str(p.root))), walked

    def _clean_nodes(self, entries: list[Entry], root: Node) -> frozenset[tuple[str, ...]]:
        """Nodes whose entries are the same as in the last build: no entry of theirs (or
        their descendants') was added, removed or changed, and no slug moved."""
        signature = {e.id: (e.category, e.digest or fingerprint_of(e), e.image)
                     for e in entries}
        layout = {node.names: node.slugs for node in root.walk()}
        last, last_layout = self._signature, self._layout
        self._signature, self._layout = signature, layout
        if last is None or layout != last_layout:
            return frozenset()
        dirty: set[tuple[str, ...]] = set()
        for entry_id in signature.keys() | last.keys():
            now, before = signature.get(entry_id), last.get(entry_id)
            if now != before:
                for category in (now[0] if now else (), before[0] if before else ()):
                    dirty.update(category[:depth] for depth in range(len(category) + 1))
        return frozenset(layout.keys() - dirty)

    def close(self) -> None:
        self._signature, self._layout, self._counts = None, {}, None
        if self._cache is not None:
            self._cache.close()
        self._cache, self._posts, self._config = None, None, None
        self._memo.clear()
        self._walk_problems = []


def open_cache(config: Config) -> BuildCache:
    if str(config.state_path) == ":memory:":
        return BuildCache(None)
    try:
        config.state_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return BuildCache(None)
    return BuildCache(config.state_path.with_name(config.state_path.name + ".cache"))


def publish(config: Config, root: Node, report: BuildReport, cache: BuildCache,
            workers: int = 1, clean_nodes: frozenset[tuple[str, ...]] = frozenset(),
            last_counts: dict[tuple[str, ...], int] | None = None,
            sweep_temps: bool = True) -> dict[tuple[str, ...], int]:
    """Write every feed whose inputs changed; render each needed entry once.

    `clean_nodes`: nodes the caller knows hold exactly the entries of the last build
    (a Builder session diffing its entries): their feeds are kept without even
    computing their fingerprints, unless their files were touched. Returns the number
    of entries in each node's feed."""
    fingerprint = render_fingerprint(config)
    cache.invalidate_if_changed("render", fingerprint, "rendered", "feed_state")
    renderer = FeedRenderer(config)
    publisher = Publisher(config.output_dir)
    publisher.prepare(sweep_temps)
    keys: dict[str, str] = {}  # entry id -> render key

    def key(entry: Entry) -> str:
        found = keys.get(entry.id)
        if found is None:
            # A digest made when the entry was read saves hashing its html again.
            found = keys[entry.id] = fingerprint_of(fingerprint, entry.digest, entry.image) \
                if entry.digest else entry_key(fingerprint, entry)
        return found

    # Plan: a feed whose fingerprint and file are as the last build left them is kept.
    previous = cache.feed_states()
    plans: list[tuple[Node, str, str, list[Entry], str]] = []
    counts: dict[tuple[str, ...], int] = {}
    kept: list[str] = []
    for node in root.walk():
        rels = [f"{node.rel_dir}{kind}.xml" for kind in ("atom", "rss")]
        # A session's clean node is trusted without a stat between full walks (a feed
        # file edited by hand is repaired at the next walk, at most 10 minutes later).
        if node.names in clean_nodes and last_counts is not None and node.names in last_counts \
                and all(rel in previous and (not sweep_temps or _untouched(
                    publisher, rel, previous[rel][0], previous)) for rel in rels):
            counts[node.names] = last_counts[node.names]
            kept += rels
            continue
        members = node.entries(config.max_items)
        counts[node.names] = len(members)
        for kind, rel in zip(("atom", "rss"), rels, strict=True):
            feed_print = fingerprint_of(kind, feed_title(config, node),
                                        feed_url(config, node, kind), [key(e) for e in members])
            plans.append((node, kind, rel, members, feed_print))
    todo = {plan[2] for plan in plans if not _untouched(publisher, plan[2], plan[4], previous)}

    needed = {e.id: e for plan in plans if plan[2] in todo for e in plan[3]}
    rendered = cache.rendered({key(e) for e in needed.values()})
    missing = [e for e in needed.values() if key(e) not in rendered]
    partial = [e.digest for e in missing if e.partial]
    if partial:  # entries that came from the cache without their html
        bodies = cache.full_entries(partial)
        # the image may have been filled by a probe since the body was cached
        missing = [replace(bodies[e.digest], image=e.image)
                   if e.partial and e.digest in bodies else e for e in missing]
        if any(e.partial for e in missing):
            raise CacheIncomplete("the build cache lost a post body")
    if missing:
        pairs = render_entries(config, missing, workers)
        fresh = [(key(e), atom, rss) for e, (atom, rss) in zip(missing, pairs, strict=True)]
        cache.store_rendered(fresh)
        rendered.update({k: (atom, rss) for k, atom, rss in fresh})
    report.rendered = len(missing)

    prints: dict[str, str] = {}
    for rel in kept:
        publisher.keep(rel)
        report.feeds += 1
    for node, kind, rel, members, feed_print in plans:
        report.feeds += 1
        if rel in todo:
            title, url = feed_title(config, node), feed_url(config, node, kind)
            parts = (rendered[key(e)][0 if kind == "atom" else 1] for e in members)
            data = (renderer.atom_feed if kind == "atom" else renderer.rss_feed)(
                title, url, members, parts)
            publisher.write(rel, data)
        else:
            publisher.keep(rel)
        prints[rel] = feed_print
    publisher.write("index.html", index_html(config, root, counts))
    publisher.write("feeds.opml", feeds_opml(config, root))
    publisher.finish()
    states = [(rel, *previous[rel]) for rel in kept]
    for rel, feed_print in prints.items():  # as published: size and mtime after the rename
        st = (config.output_dir / rel).stat()
        states.append((rel, feed_print, st.st_size, st.st_mtime_ns))
    cache.store_feed_states(states)
    if missing:
        cache.keep_rendered(set(keys.values()))
    report.written = publisher.written
    report.unchanged = len(publisher.unchanged)
    report.removed = publisher.removed
    return counts


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

"""One build: sources → entries → sanitiser → category tree → writers → atomic publish.

This is the only place that knows the order of the stages; the CLI and the service
only decide *when* to call `build`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aggregator.config import Config
from aggregator.fingerprints import fingerprint_of, read_fingerprint, render_fingerprint
from aggregator.model import Entry, Image
from aggregator.problems import Problem, ProblemLog
from aggregator.publish.atomic import Publisher, PublishError
from aggregator.report import BuildReport
from aggregator.sources.walk import PostFile, Walk, rediscover, walk_posts
from aggregator.state.cache import BuildCache, CacheIncomplete
from aggregator.state.last_build import LastBuild, inputs_print, published_files
from aggregator.state.open import open_state
from aggregator.state.store import Clock, StateStore, utc_now

# The stages' modules are imported where they are used: a build that finds nothing
# changed (most runs of a build timer) needs none of them, and they were ~0.15 s of
# its ~0.5 s at 10k posts.
if TYPE_CHECKING:
    from aggregator.incremental import Names, SessionIndex
    from aggregator.sources.read import ReadResult
    from aggregator.tree.categories import Node

__all__ = ["BuildReport", "Builder", "build"]

log = logging.getLogger(__name__)


def merge_duplicates(entries: Iterable[Entry], problems: ProblemLog,
                     written: Callable[[], Mapping[str, str]] = dict) -> list[Entry]:
    """One entry per id and per link; a local post always beats a post `write_posts`
    wrote, which beats an upstream entry (a stranger's feed claiming a post's id or
    link replaced the post), then the newest version wins, then the first source.
    `written`: the posts write_posts wrote (their source → the upstream URL), asked
    only when two entries share an id or a link."""
    entries = list(entries)
    if _all_distinct(entries):
        return entries  # the usual case: no sort needed (a second at 100k entries)
    from_upstream = written()

    def rank(entry: Entry) -> int:
        return 2 if "://" in entry.source else 1 if entry.source in from_upstream else 0

    ordered = sorted(entries, key=lambda e: (rank(e), -e.updated.timestamp(), e.source))
    by_id: dict[str, Entry] = {}
    by_link: dict[str, Entry] = {}
    for entry in ordered:
        kept = by_id.get(entry.id) or (by_link.get(entry.link) if entry.link else None)
        if kept is not None:
            same = "id" if kept.id == entry.id else "link"
            url = from_upstream.get(entry.source)
            if url is not None and rank(kept) == 0:
                problems.warn(entry.source, f"written for {url} (its entry {entry.id}), "
                              f"which has the {same} of the local post {kept.source}: "
                              f"the local post is published, not this one")
            else:
                problems.warn(entry.source or entry.id, f"duplicate of "
                              f"{kept.source or kept.id} (same {same}); merged")
            continue
        by_id[entry.id] = entry
        if entry.link:
            by_link[entry.link] = entry
    return list(by_id.values())


def _all_distinct(entries: list[Entry]) -> bool:
    ids = {e.id for e in entries}
    links = [e.link for e in entries if e.link]
    return len(ids) == len(entries) and len(set(links)) == len(links)


def build(config: Config, clock: Clock = utc_now, extra_entries: Iterable[Entry] = (),
          workers: int = 1, *, echo_problems: bool = True) -> BuildReport:
    """Publish every feed from the content dir (+ stored upstream entries).
    `echo_problems`: log each problem as it is found (else only collect them)."""
    with _no_cyclic_gc():
        return Builder().build(config, clock, extra_entries=extra_entries, workers=workers,
                               echo_problems=echo_problems)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """A one-off build creates ~10 objects per post and frees almost none of them until
    it ends, so the cyclic GC's full scans find nothing and cost ~15% of a 100k build.
    Reference counting still frees everything that is not a cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Builder:
    """A build session that lasts (the service keeps one): the build cache stays open,
    the last read of every post stays in memory, and when the caller knows which files
    changed, only those are looked at instead of walking the whole tree."""

    def __init__(self, *, persistent: bool = False) -> None:
        self.persistent = persistent  # False: release everything after each build
        self._config: Config | None = None
        self._cache: BuildCache | None = None
        self._posts: dict[str, PostFile] | None = None  # location → post
        self._walked: Walk | None = None  # the last walk, until _post_map()
        self._walk_problems: list[Problem] = []
        self._memo: dict[str, ReadResult] = {}
        self._signature: dict[str, tuple[tuple[tuple[str, ...], ...], str, Image | None]] \
            | None = None
        self._layout: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._counts: dict[tuple[str, ...], int] | None = None
        self._index: SessionIndex | None = None  # the last build, to patch edits into
        self._publish_memo: dict[str, Any] = {}

    def build(self, config: Config, clock: Clock = utc_now, *,
              changed: set[str] | None = None, extra_entries: Iterable[Entry] = (),
              workers: int = 1, echo_problems: bool = True) -> BuildReport:
        """`changed`: absolute paths that changed since the last build (None: unknown,
        walk everything)."""
        extra = list(extra_entries)
        try:
            return self._build(config, clock, changed, extra, workers, echo_problems)
        except CacheIncomplete as exc:
            log.warning("%s; reading every post again", exc)
            cache = open_cache(config)
            try:
                cache.invalidate_if_changed("read", "(emptied)", "post_cache")
            finally:
                cache.close()
            return self._build(config, clock, None, extra, workers, echo_problems)

    def _build(self, config: Config, clock: Clock, changed: set[str] | None,
               extra_entries: list[Entry], workers: int, echo_problems: bool) -> BuildReport:
        started = time.perf_counter()
        if config != self._config:
            self.close()
            self._config = config
        report = BuildReport(problems=ProblemLog(echo=echo_problems))
        state = open_state(config, clock, report.problems)
        if self._cache is None:
            self._cache = open_cache(config)
        try:
            try:
                found, before = self._discover(config, changed, report.problems)
                walked = before is None
                # the walk's digest; its posts are made only when the build goes on
                walk = found.digest if found is not None and not extra_entries else None
                if walk is not None and self._unchanged_since_last_build(
                        config, walk, state, report):
                    state.close()
                    self.close()
                    report.seconds = time.perf_counter() - started
                    return report
                found_after_walk = len(report.problems.items)
                if changed and before is not None and not extra_entries:
                    dirty = self._patch(config, state, report, before, changed)
                    if dirty is not None:
                        state.close()
                        self._publish_patched(config, report, dirty, workers, stat=False)
                        report.seconds = time.perf_counter() - started
                        return report
                if walk is not None and found is not None and self._patch_saved_session(
                        config, state, report, workers, found.posts):
                    generation = state.generation()
                    state.close()
                    self._remember_build(config, walk, generation, report, found_after_walk)
                    self.close()
                    report.seconds = time.perf_counter() - started
                    return report
                from aggregator.sources.read import read_posts
                from aggregator.state.probes import apply_probes, unknown_image
                from aggregator.state.upstream import stored_upstream_entries, written_posts

                self._index = None
                posts = found.posts if found is not None else self._sorted_posts()
                log.debug("full build: %d posts (each read unless the build cache has it)",
                          len(posts))
                # Posts whose image type the URL does not tell get what `fetch` probed
                # (state, no network). Render keys and the session's signatures include
                # the image, so a newly probed type is rendered again.
                post_entries = apply_probes(state, read_posts(
                    config, state, report, self._cache, posts, self._memo, workers=workers))
                report.unknown_images = [u for u in map(unknown_image, post_entries) if u]
                upstream = stored_upstream_entries(state, config.upstream)
                entries = merge_duplicates(
                    [*post_entries, *upstream, *extra_entries], report.problems,
                    lambda: written_posts(state, config.content_dirs[:1]))
                # after reading: this build's own first-seen times are part of its inputs
                generation = state.generation()
            finally:
                state.close()
            from aggregator.publish.plan import publish
            from aggregator.tree.categories import build_tree

            report.entries = len(entries)
            report.linkless = sum(1 for entry in entries if not entry.link)
            root = build_tree(entries, config.slugs)
            clean = self._clean_nodes(entries, root) if self.persistent else frozenset()
            self._counts = publish(config, root, report, self._cache, workers, clean,
                                   self._counts, sweep_temps=walked, memo=self._publish_memo)
            # nothing was merged away: later edits can be patched in (a one-off build
            # saves its index for the next one: posts only, upstream bodies are not
            # in the build cache)
            patchable = not extra_entries and len(entries) == report.posts_read + len(upstream)
            self._index = None
            # (none after a failure that need not be the input's: the next build retries)
            if generation is not None and patchable and (self.persistent or not upstream) \
                    and not report.retry:
                self._index = self._index_of(post_entries, entries, root, generation)
            if not self.persistent:
                self._memo.clear()  # a one-off build is done reading (~16 MB at 100k)
                if walked:
                    self._save_session(config)
            if walk is not None:
                self._remember_build(config, walk, generation, report, found_after_walk)
        except BaseException as exc:
            self.close()  # after a failure, trust nothing kept in memory
            if isinstance(exc, PublishError):  # the caller reports the inputs' problems too
                exc.found = tuple(report.problems.items)
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

    def _patch(self, config: Config, state: StateStore, report: BuildReport,
               before: Mapping[str, PostFile | None], changed: set[str]) -> set[Names] | None:
        """Read the changed posts and patch them into the session index: the nodes whose
        feeds may differ, or None when a full build is needed."""
        from aggregator.sources.read import read_changed
        from aggregator.state.probes import apply_probes

        index, cache = self._index, self._cache
        if index is None or cache is None or state.generation() != index.generation:
            log.debug("%d posts changed; a full build (%s)", len(changed),
                      "no index of the last build" if index is None or cache is None
                      else "the state changed since the last build")
            return None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%d posts changed: %s", len(changed), _listed(config, changed))
        now = self._post_map() or {}
        fresh, gone = [], []
        for location in changed:
            post, old = now.get(location), before.get(location)
            if post is not None:
                fresh.append(post)
            elif old is not None:
                gone.append(old.source)
        results = read_changed(config, state, cache, fresh, gone, self._memo)
        read = [(source, result[1]) for source, result in results.items() if result[1]]
        probed = dict(zip([s for s, _ in read], apply_probes(state, [e for _, e in read]),
                          strict=True))
        changes: dict[str, Entry | None] = dict.fromkeys(gone)
        changes.update({source: probed.get(source) for source in results})
        index.prepare(changes)  # (a saved index loads the parts they touch)
        dirty = index.patch(changes)
        if dirty is None:
            return None
        generation = state.generation()
        if generation is None:
            return None
        index.generation = generation  # the changed posts' own first-seen times
        for source in gone:
            index.problems.pop(source, None)
        for source, result in results.items():  # (also the posts linking to changed ones)
            index.problems.pop(source, None)
            if result[2]:
                index.problems[source] = result[2]
        report.problems.replay(index.ordered_problems())
        report.posts_found, report.posts_read = len(now), index.post_count()
        report.entries = index.entry_count()
        if not self.persistent:  # for `fetch` and the saved record; a session has no use
            report.unknown_images = index.unknown_images()  # (~3 ms a rebuild at 100k)
        self._signature = None  # the next full build plans every node again
        return dirty

    def _patch_saved_session(self, config: Config, state: StateStore, report: BuildReport,
                             workers: int, walked: list[PostFile]) -> bool:
        """A one-off build that walked and found a few changed post files: patch them
        into the last one-off build's saved index (as a session does) instead of
        building."""
        from aggregator.incremental import SavedSession, load_index

        if self.persistent or self._cache is None:
            return False
        saved = self._cache.saved_session()
        if not isinstance(saved, SavedSession) or getattr(saved, "format", None) != \
                SavedSession.FORMAT or saved.settings != _settings_digest(config):
            return False
        now = self._post_map() or {}
        changed = saved.posts.changed(now, walked)
        if len(changed) > max(100, len(now) // 50):
            log.debug("%d posts changed since the saved build: a full build", len(changed))
            return False  # many changes: a full build is as quick and simpler
        log.debug("%d posts changed since the saved build: patching them in", len(changed))
        cache = self._cache
        earlier = cache.patched_nodes()  # (None: unreadable, so nothing is known)
        if earlier is None:
            cache.store_session(None)
            return False
        index = load_index(cache.saved_index_records())
        if index is None:
            cache.store_session(None)  # so the full build saves a new index
            return False
        index.forget = lambda: cache.store_session(None)
        self._index, self._counts = index, saved.counts
        dirty = self._patch(config, state, report, saved.posts.before(changed), changed)
        if dirty is None:
            self._index, self._counts = None, None
            return False
        self._publish_memo = saved.publish_memo
        if not changed:
            # The inputs are the saved build's, but some output is not (deleted or
            # edited by hand, or the last build failed while publishing): every feed
            # is planned from the index, and only the ones that differ are written.
            dirty = set(self._index.nodes)
        # Feeds earlier patches wrote are planned again: a post added, then removed,
        # since the saved build is in no change set, and those feeds still show it.
        # Recorded before writing: a build that stops half way leaves a superset.
        dirty |= earlier & self._index.nodes.keys()
        if not cache.store_patched_nodes(dirty):
            # not recorded: every feed is planned now, and the next build is full
            cache.store_session(None)
            dirty = set(self._index.nodes)
        # unlike a session, trust no published file without a stat
        self._publish_patched(config, report, dirty, workers, stat=True)
        # Not saved again (pickling 100k entries takes seconds): the next build patches
        # every change since the saved build, which stays exact; once they are too many,
        # a full build saves a new one.
        return True

    def _save_session(self, config: Config) -> None:
        from aggregator.incremental import SavedPosts, SavedSession, dump_index

        assert self._cache is not None
        posts = self._post_map()
        if self._index is None or self._counts is None or posts is None:
            self._cache.store_session(None)
            return
        settings = _settings_digest(config)
        head = SavedSession(settings, SavedPosts(posts), self._counts,
                            SavedSession.FORMAT, self._publish_memo)
        # Every post touched, none changed: the same index as the saved one, which is
        # kept (pickling it again took ~0.3 s at 10k posts, ~3 s at 100k).
        key = self._index.content_key(settings)
        same = self._cache.saved_session_index_key() == key
        index = self._index
        self._cache.store_session(head.dump, None if same else (
            key, lambda out: dump_index(index, out)))

    def _publish_patched(self, config: Config, report: BuildReport, dirty: set[Names],
                         workers: int, *, stat: bool) -> None:
        """Publish the patched index, replanning only the `dirty` nodes' feeds; the
        others are kept, after a stat of their files when `stat` (else trusted: a
        session checks them at its next full walk)."""
        from aggregator.publish.plan import publish

        assert self._index is not None and self._cache is not None
        clean = frozenset(self._index.nodes.keys() - dirty)
        self._counts = publish(config, self._index.root, report, self._cache, workers, clean,
                               self._counts, sweep_temps=stat, memo=self._publish_memo,
                               patched=True, load=self._index.load_nodes)
        report.patched = True

    def _index_of(self, post_entries: list[Entry], merged: list[Entry],
                  root: Node, generation: str) -> SessionIndex:
        from aggregator.incremental import SessionIndex

        # read_posts keyed the memo by source in post order: its keys, not 100k more
        # strings made again (~30 MB at 100k posts)
        sources = list(self._memo)
        read = [s for s in sources if self._memo[s][1] is not None]
        return SessionIndex.of(
            generation, dict(zip(read, post_entries, strict=True)),
            {s: self._memo[s][2] for s in sources if self._memo[s][2]}, merged, root)

    def _unchanged_since_last_build(self, config: Config, walk: str, state: StateStore,
                                    report: BuildReport) -> bool:
        """True (and the report filled in) when the last complete build had these very
        inputs (`walk`: this walk's digest) and its output is untouched: nothing to
        read, render or write."""
        if self.persistent or self._cache is None:
            return False  # a session's own memo answers its rebuilds
        inputs = inputs_print(_settings(config), walk, self._walk_problems,
                              state.generation())
        last = self._cache.last_build() if inputs is not None else None
        if last is None or last.inputs != inputs or not last.outputs_untouched(
                config.output_dir):
            log.debug("not up to date: %s", "the state is a temporary one" if inputs is None
                      else "no complete build recorded in the build cache" if last is None
                      else "posts, config, program or state changed since the last build"
                      if last.inputs != inputs else
                      "a published file was changed or deleted since the last build")
            return False
        Publisher(config.output_dir).remove_temp_files()  # a killed build's leftovers
        report.problems.replay(last.problems)
        report.posts_found, report.posts_read = last.posts_found, last.posts_read
        report.entries, report.feeds = last.entries, last.feeds
        report.unchanged = len(last.outputs)
        report.unknown_images = list(last.unknown_images)
        report.linkless = last.linkless
        report.up_to_date = True
        return True

    def _remember_build(self, config: Config, walk: str, generation: str | None,
                        report: BuildReport, found_after_walk: int) -> None:
        from aggregator.publish.plan import INDEX_FILES

        assert self._cache is not None
        inputs = inputs_print(_settings(config), walk, self._walk_problems, generation)
        if inputs is None or report.retry:
            return
        rels = [*self._cache.feed_states(), *INDEX_FILES]
        try:
            outputs = published_files(config.output_dir, rels)
        except OSError:
            return  # changed under us: the next build does the full work
        self._cache.store_last_build(LastBuild(
            inputs, outputs, report.posts_found, report.posts_read, report.entries,
            report.feeds, tuple(report.problems.items[found_after_walk:]),
            tuple(report.unknown_images), report.linkless))

    def _discover(self, config: Config, changed: set[str] | None, problems: ProblemLog
                  ) -> tuple[Walk | None, dict[str, PostFile | None] | None]:
        """(the walk of the content dirs, or None; the changed files' posts as they
        were before this build, or None when the tree was walked). Without a walk the
        posts are not sorted: a patched build does not need them (sorting 10k paths
        was a fifth of its time); `_sorted_posts()` gives them."""
        posts = self._post_map() if changed is not None else None
        if changed is not None and posts is not None:
            updates = rediscover(config, changed, problems)
            if updates is not None:
                problems.replay(self._walk_problems)
                before = {location: posts.get(location) for location in updates}
                for location, post in updates.items():  # in place: no copy of 100k posts
                    if post is None:
                        posts.pop(location, None)
                    else:
                        posts[location] = post
                return None, before
        walk_problems = ProblemLog()
        found = walk_posts(config, walk_problems)
        problems.items.extend(walk_problems.items)
        self._walk_problems = list(walk_problems.items)
        # indexed by location only when a build goes on (0.08 s at 100k posts)
        self._posts, self._walked = None, found
        return found, None

    def _post_map(self) -> dict[str, PostFile] | None:
        """The posts of the last walk (kept up to date by patches), by location."""
        if self._posts is None and self._walked is not None:
            self._posts = {post.location: post for post in self._walked.posts}
            self._walked = None
        return self._posts

    def _sorted_posts(self) -> list[PostFile]:
        return sorted((self._post_map() or {}).values(), key=lambda p: p.order)

    def _clean_nodes(self, entries: list[Entry], root: Node) -> frozenset[tuple[str, ...]]:
        """Nodes whose entries are the same as in the last build: no entry of theirs (or
        their descendants') was added, removed or changed, and no slug moved."""
        signature = {e.id: (e.categories, e.digest or fingerprint_of(e), e.image)
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
                for category in (*(now[0] if now else ((),)), *(before[0] if before else ((),))):
                    dirty.update(category[:depth] for depth in range(len(category) + 1))
        return frozenset(layout.keys() - dirty)

    def close(self) -> None:
        self._signature, self._layout, self._counts = None, {}, None
        self._index = None
        self._publish_memo.clear()
        if self._cache is not None:
            self._cache.close()
        self._cache, self._posts, self._walked, self._config = None, None, None, None
        self._memo.clear()
        self._walk_problems = []


def _listed(config: Config, locations: set[str], most: int = 20) -> str:
    """Up to `most` post paths, relative to their content dir, for a debug line."""
    roots = [str(d) + "/" for d in config.content_dirs]
    shown = [next((loc[len(r):] for r in roots if loc.startswith(r)), loc)
             for loc in sorted(locations)[:most]]
    return ", ".join(shown) + (" …" if len(locations) > most else "")


def _settings(config: Config) -> tuple[str, ...]:
    """The config and every program and library version that shapes the output."""
    return (repr(config), read_fingerprint(config), render_fingerprint(config))


def _settings_digest(config: Config) -> str:
    return fingerprint_of(*_settings(config))


def open_cache(config: Config) -> BuildCache:
    if str(config.state_path) == ":memory:":
        return BuildCache(None)
    try:
        config.state_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return BuildCache(None)
    return BuildCache(config.state_path.with_name(config.state_path.name + ".cache"))



"""One build: sources → entries → sanitiser → category tree → writers → atomic publish.

This is the only place that knows the order of the stages; the CLI and the service
only decide *when* to call `build`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

from aggregator.config import Config
from aggregator.fingerprints import read_fingerprint, render_fingerprint
from aggregator.model import Entry
from aggregator.problems import Problem, ProblemLog
from aggregator.publish.atomic import Publisher, PublishError
from aggregator.report import BuildReport
from aggregator.sources.walk import PostFile, Posts, Walk, rediscover, walk_posts
from aggregator.state.address import StateAddress
from aggregator.state.last_build import LastBuild, inputs_print, published_files
from aggregator.state.open import StateUnreachable, open_state
from aggregator.state.postgres import PostgresError
from aggregator.state.store import Clock, StateStore, utc_now
from aggregator.store import EntryStore, StoreUnavailable, open_store
from aggregator.store.rows import decode
from aggregator.store.sqlite import SQLiteStore

# The stages' modules (reading, merging, planning, rendering) are imported where they
# are used: a build that finds nothing changed (most runs of a build timer) needs none
# of them.

__all__ = ["BuildReport", "Builder", "build"]

log = logging.getLogger(__name__)


def build(config: Config, clock: Clock = utc_now, extra_entries: Iterable[Entry] = (),
          workers: int = 1, *, echo_problems: bool = True,
          unknown_images: bool = False) -> BuildReport:
    """Publish every feed from the content dir (+ stored upstream entries).
    `echo_problems`: log each problem as it is found (else only collect them);
    `unknown_images`: list the post images whose type no probe told yet (for `fetch`:
    tens of thousands of URLs at 100k posts, which other builds do not need)."""
    with _no_cyclic_gc():
        return Builder().build(config, clock, extra_entries=extra_entries, workers=workers,
                               echo_problems=echo_problems, unknown_images=unknown_images)


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
    """A build session that lasts (the service keeps one): the store stays open, and
    when the caller knows which files changed, only those are looked at instead of
    walking the whole tree. Every build takes one path: the changed inputs into the
    entry store, then the feeds of the nodes they dirtied."""

    def __init__(self, *, persistent: bool = False) -> None:
        self.persistent = persistent  # False: release everything after each build
        self._config: Config | None = None
        self._store: EntryStore | None = None
        self._posts: dict[str, PostFile] | None = None  # location → post (a session's)
        self._walk_problems: list[Problem] = []
        self._publish_memo: dict[str, Any] = {}

    def build(self, config: Config, clock: Clock = utc_now, *,
              changed: set[str] | None = None, extra_entries: Iterable[Entry] = (),
              workers: int = 1, echo_problems: bool = True,
              unknown_images: bool = False) -> BuildReport:
        """`changed`: absolute paths that changed since the last build (None: unknown,
        walk everything)."""
        started = time.perf_counter()
        extra = list(extra_entries)
        if config != self._config:
            self.close()
            self._config = config
        report = BuildReport(problems=ProblemLog(echo=echo_problems))
        try:
            state = open_state(config, clock, report.problems)
        except StateUnreachable as exc:  # nothing published: the previous feeds stay
            raise PublishError(str(exc)) from exc
        if self._store is None:
            try:
                self._store = open_store(config)
            except StoreUnavailable as exc:  # as an unreachable state: nothing published
                state.close()
                raise PublishError(str(exc)) from exc
        store = self._store
        try:
            try:
                found, updates = self._discover(config, changed, report.problems)
                walk = found.digest if found is not None and not extra else None
                if walk is not None and self._unchanged_since_last_build(
                        config, walk, state, report):
                    state.close()
                    if unknown_images:
                        report.unknown_images = store.unknown_images()
                    self.close()
                    report.seconds = time.perf_counter() - started
                    return report
                found_after_walk = len(report.problems.items)
                store.store_last_build(None)  # not up to date until this one completes
                try:
                    generation = self._sync(config, state, store, report, found, updates,
                                            extra, workers)
                except sqlite3.OperationalError as exc:  # disk full, read-only, locked
                    if store.file is None:
                        raise
                    log.warning("%s: entry store not writable (%s); this build reads every "
                                "post into memory", store.file, exc)
                    store.close()
                    store = self._store = SQLiteStore(None)
                    del report.problems.items[found_after_walk:]
                    report.rendered = 0
                    if found is None:  # (a session's changed paths: every post instead)
                        found, updates = self._discover(config, None, report.problems)
                        found_after_walk = len(report.problems.items)
                    generation = self._sync(config, state, store, report, found, updates,
                                            extra, workers)
            finally:
                state.close()
            from aggregator.publish.plan import publish
            from aggregator.tree.categories import tree_of

            root = tree_of(((names, nid, count) for nid, names, count in store.nodes()),
                           config.slugs)
            publish(config, root, store, report, workers, stat=found is not None,
                    memo=self._publish_memo)
            if walk is not None:
                self._remember_build(config, walk, generation, report, found_after_walk)
            if unknown_images:
                report.unknown_images = store.unknown_images()
        except BaseException as exc:
            self.close()  # after a failure, trust nothing kept in memory
            if not isinstance(exc, PublishError) and (
                    store.lost(exc) or isinstance(exc, PostgresError)):
                # a database lost mid-build: the feeds replaced so far stay, the rest are
                # the previous ones; the next build (the database back) redoes the rest
                failed = PublishError(f"{StateAddress.of(config)}: the database was lost "
                                      f"during the build ({exc}); feeds not yet replaced "
                                      "stay as they were")
                failed.found = tuple(report.problems.items)
                raise failed from exc
            if isinstance(exc, PublishError):  # the caller reports the inputs' problems too
                exc.found = tuple(report.problems.items)
            raise
        if not self.persistent:
            self.close()  # a one-off build: release the store
        report.seconds = time.perf_counter() - started
        return report

    def _sync(self, config: Config, state: StateStore, store: EntryStore,
              report: BuildReport, found: Walk | None,
              updates: tuple[dict[str, PostFile | None], dict[str, PostFile | None]] | None,
              extra: list[Entry], workers: int) -> str | None:
        """The changed inputs into the store; the report's counts and problems. Returns
        the state's generation after reading (this build's first-seen times are part
        of its inputs)."""
        from aggregator import sync

        sync.forget_if_settings_changed(config, store)
        every_post = None
        if found is not None:
            every_post = found.posts
            changed, known, gone = sync.walk_changes(store, found)
            report.posts_found = len(every_post)
        else:
            assert updates is not None
            now, before = updates
            changed = Posts([post for post in now.values() if post is not None])
            known_by_key = store.post_contents([sync.post_key(post) for post in changed])
            known = [known_by_key.get(sync.post_key(post)) for post in changed]
            gone = [sync.post_key(old) for location, old in before.items()
                    if old is not None and now.get(location) is None]
            report.posts_found = len(self._posts or ())
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%d posts changed: %s", len(changed) + len(gone), _listed(
                [post.rel for post in changed] + [decode(key) for key, _root in gone]))
        report.patched = len(changed) < report.posts_found or not changed
        retried = sync.sync_posts(config, store, state, report, changed, known, gone,
                                  workers, every_post)
        if found is not None:
            sync.store_folders(store, found, retried)
        generation = state.generation()
        sync.sync_upstream(config, store, state, extra)
        sync.sync_probes(store, state)
        sync.replay_problems(store, report.problems)
        sync.merge(config, store, state, report.problems)
        report.posts_read, report.entries, report.linkless = store.counts()
        return generation

    def _unchanged_since_last_build(self, config: Config, walk: str, state: StateStore,
                                    report: BuildReport) -> bool:
        """True (and the report filled in) when the last complete build had these very
        inputs (`walk`: this walk's digest) and its output is untouched: nothing to
        read, render or write."""
        if self.persistent or self._store is None:
            return False  # a session's store answers its rebuilds
        inputs = inputs_print(_settings(config), walk, self._walk_problems,
                              state.generation())
        last = self._store.last_build() if inputs is not None else None
        if last is None or last.inputs != inputs or not last.outputs_untouched(
                config.output_dir):
            log.debug("not up to date: %s", "the state is a temporary one" if inputs is None
                      else "no complete build recorded in the store" if last is None
                      else "posts, config, program or state changed since the last build"
                      if last.inputs != inputs else
                      "a published file was changed or deleted since the last build")
            return False
        Publisher(config.output_dir).remove_temp_files()  # a killed build's leftovers
        report.problems.replay(last.problems)
        report.posts_found, report.posts_read = last.posts_found, last.posts_read
        report.entries, report.feeds = last.entries, last.feeds
        report.unchanged = len(last.outputs)
        report.linkless = last.linkless
        report.up_to_date = True
        return True

    def _remember_build(self, config: Config, walk: str, generation: str | None,
                        report: BuildReport, found_after_walk: int) -> None:
        from aggregator.publish.plan import index_files

        assert self._store is not None
        inputs = inputs_print(_settings(config), walk, self._walk_problems, generation)
        if inputs is None or report.retry:
            return
        rels = [*self._store.feed_states(), *index_files(config)]
        try:
            outputs = published_files(config.output_dir, rels)
        except OSError:
            return  # changed under us: the next build does the full work
        self._store.store_last_build(LastBuild(
            inputs, outputs, report.posts_found, report.posts_read, report.entries,
            report.feeds, tuple(report.problems.items[found_after_walk:]),
            report.linkless))

    def _discover(self, config: Config, changed: set[str] | None, problems: ProblemLog
                  ) -> tuple[Walk | None, tuple[dict[str, PostFile | None],
                                                dict[str, PostFile | None]] | None]:
        """(the walk of the content dirs, or None; else the changed files' posts now
        and as they were before this build). A session with the changed paths known
        looks at those alone."""
        posts = self._posts
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
                return None, (updates, before)
        walk_problems = ProblemLog()
        found = walk_posts(config, walk_problems)
        problems.items.extend(walk_problems.items)
        self._walk_problems = list(walk_problems.items)
        self._posts = {post.location: post for post in found.posts} if self.persistent \
            else None
        return found, None

    def close(self) -> None:
        self._publish_memo.clear()
        if self._store is not None:
            self._store.close()
        self._store, self._posts, self._config = None, None, None
        self._walk_problems = []


def _listed(rels: list[str], most: int = 20) -> str:
    """Up to `most` post paths, relative to their content dir, for a debug line."""
    return ", ".join(sorted(rels)[:most]) + (" …" if len(rels) > most else "")


def _settings(config: Config) -> tuple[str, ...]:
    """The config and every program and library version that shapes the output."""
    return (repr(config), read_fingerprint(config), render_fingerprint(config))

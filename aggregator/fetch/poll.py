"""One poll: fetch due sources in a thread pool, parse them (in worker processes for
big polls: feedparser is pure Python and holds the GIL), store each result as it lands.

All SQLite writes happen in the calling thread, one transaction per source, in the
order results arrive.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import (
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from queue import SimpleQueue
from typing import Any

from aggregator import progress
from aggregator.config import Config, UpstreamSource
from aggregator.fetch.limits import limits_from
from aggregator.problems import ProblemLog
from aggregator.sources.upstream.http import Fetcher, FetchError, Response, StatusError
from aggregator.sources.upstream.politeness import cache_floor, floor_of, retry_after, ttl_floor
from aggregator.state.store import Clock, StateStore
from aggregator.state.upstream import DumpedEntry, UpstreamState, dump_entries

log = logging.getLogger(__name__)

# Below this many sources, starting worker processes costs more than it saves.
PROCESS_THRESHOLD = 16
# 304s are written in batches: a commit each time a future finishes costs ~1 ms of the
# polling thread's time per source (1.1 s of a 1,000-source re-poll).
# A kill loses at most this much schedule (those sources are simply polled again).
FLUSH_ROWS = 500
FLUSH_SECONDS = 1.0
# Bodies fetched and waiting for a parse process, in bytes, above which no other fetch
# starts: parsing is slower than fetching, and without a bound a first poll held every
# body (1,000 bench feeds: 241 MB) until its turn to be parsed.
PARSE_BACKLOG_BYTES = 32 << 20


@dataclass
class PollReport:
    due: int = 0
    fetched: int = 0  # 200 and stored
    not_modified: int = 0
    failed: list[str] = field(default_factory=list)  # source URLs
    new_entries: int = 0
    seconds: float = 0.0
    outcomes: dict[str, str] = field(default_factory=dict)  # url -> fetched|not_modified|failed
    # enabled sources not polled because they are not due: (url, next poll, errors in a
    # row); those with errors wait out their backoff
    waiting: list[tuple[str, datetime, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _Parsed:
    entries: list[DumpedEntry]  # ready to store: made where the feed was parsed
    warnings: list[str]
    kind: str
    error: str | None = None
    ttl: str | None = None  # RSS <ttl>, minutes
    skipped: tuple[str, ...] = ()  # entries that could not be read, and why


@dataclass(frozen=True)
class _Outcome:
    source: UpstreamSource
    response: Response | None = None
    parsed: _Parsed | None = None  # None with a 200: not parsed yet (goes to a process)
    error: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # of a failed response


def parse_job(body: bytes, headers: dict[str, str], url: str, source: UpstreamSource,
              site_host: str, id_date: str, now: datetime) -> _Parsed:
    """bytes → entries; runs in a fetch thread or a worker process (so: picklable)."""
    # Imported here: a re-poll answered by 304s parses nothing (feedparser and lxml
    # are ~0.1 s of imports).
    from aggregator.sources.upstream.normalise import Normaliser
    from aggregator.sources.upstream.parse import ParseError, parse_feed

    try:
        feed = parse_feed(body, headers, url)
        entries = dump_entries(Normaliser(source, site_host, id_date, now).entries(feed))
    except ParseError as exc:
        return _Parsed([], [], "", str(exc))
    except Exception as exc:  # a parser bug must cost one source, not the run
        return _Parsed([], [], "", f"could not parse: {exc!r}")
    ttl = feed.xml.feed.get("ttl") if feed.xml is not None else None
    return _Parsed(entries, feed.warnings, feed.kind, ttl=str(ttl) if ttl else None,
                   skipped=tuple(feed.errors))


def _fetch_one(fetcher: Fetcher, source: UpstreamSource, etag: str | None,
               last_modified: str | None, config: Config | None, now: datetime,
               url: str | None = None) -> _Outcome:
    """Fetch (`url`: where a permanent redirect moved it); also parse here when
    `config` is given (no worker processes)."""
    try:
        response = fetcher.get(url or source.url, etag, last_modified)
    except StatusError as exc:
        return _Outcome(source, error=str(exc), status=exc.status, headers=exc.headers)
    except FetchError as exc:
        status = int(str(exc).split()[1]) if str(exc).startswith("HTTP ") else None
        return _Outcome(source, error=str(exc), status=status)
    if response.not_modified or config is None:
        return _Outcome(source, response)
    return _Outcome(source, response, parse_job(response.body, response.headers, response.url,
                                                source, config.site_host, config.id_date, now))


def _processes(config: Config, count: int) -> int:
    if config.parse_processes:
        return config.parse_processes
    return min(os.cpu_count() or 1, 4) if count >= PROCESS_THRESHOLD else 1


def poll(config: Config, store: StateStore, problems: ProblemLog, clock: Clock,
         everything: bool = False, only: Sequence[UpstreamSource] | None = None,
         write: bool = True, parse_pool: ParsePool | None = None) -> PollReport:
    """Poll the due enabled sources (`everything`: all enabled; `only`: exactly these).
    `write`: also write the posts `write_posts` sources ask for (a fetch worker does
    not: the publisher, which has the content dir, does). `parse_pool`: processes kept
    between polls (a fetch worker's), instead of ones started for this poll."""
    started = time.perf_counter()
    report = PollReport()
    state = UpstreamState(store, None if only is None else [s.url for s in only])
    enabled = [s for s in config.upstream if s.enabled]
    if only is not None:
        sources = list(only)
    else:
        sources = enabled if everything else state.due(enabled, clock())
        report.waiting = _waiting(state, enabled, sources)
    sources = [s for s in sources if not _disabled(s, state, problems)]
    if log.isEnabledFor(logging.DEBUG):
        _explain(config, state, sources, "asked for" if only is not None
                 else "--all" if everything else None)
    report.due = len(sources)
    if not sources:
        return report
    validators = {s.url: state.source(s.url) for s in sources}
    limits = limits_from(config)
    processes = _processes(config, len(sources))
    parsers: Executor | None
    if parse_pool is not None:
        parsers = parse_pool.get(processes) if processes > 1 else None
    else:
        parsers = spawn_parsers(processes) if processes > 1 else None
    finished: SimpleQueue[Future[Any]] = SimpleQueue()  # futures, as they complete
    pending: set[Future[Any]] = set()  # fetches and parses, both

    def start(future: Future[Any]) -> None:
        pending.add(future)
        future.add_done_callback(finished.put)

    with Fetcher(limits) as fetcher, store.bulk_writes(), \
            ThreadPoolExecutor(max_workers=max(1, limits.concurrency),
                               thread_name_prefix="fetch") as pool, \
            progress.bar("sources polled", len(sources), "source") as shown:
        waiting: dict[Future[_Parsed], _Outcome] = {}
        flush_at = time.monotonic() + FLUSH_SECONDS
        to_fetch = iter(sources)
        # fetches started and not done, and the bytes of the bodies waiting for a parse
        # process: a few more fetches than threads keep the threads busy, and the
        # backlog bounds the bodies held
        fetching, backlog = 0, 0
        most_fetching = 2 * max(1, limits.concurrency)

        def fetch_more() -> None:
            nonlocal fetching
            while fetching < most_fetching and backlog < PARSE_BACKLOG_BYTES:
                source = next(to_fetch, None)
                if source is None:
                    return
                known = validators[source.url]
                start(pool.submit(_fetch_one, fetcher, source, known.etag,
                                  known.last_modified, None if parsers else config, clock(),
                                  known.fetch_url))
                fetching += 1

        try:
            fetch_more()
            # A queue, not wait(pending): wait() locks every pending future each time
            # it is called, ~1M lock operations for 1,000 sources.
            while pending:
                done = [finished.get()]
                while not finished.empty():
                    done.append(finished.get())
                pending.difference_update(done)
                for future in done:
                    parsed_here = future in waiting
                    outcome = _resolve(future, waiting)
                    response = outcome.response
                    if parsed_here:
                        assert response is not None
                        backlog -= len(response.body)
                    else:
                        fetching -= 1
                    if parsers is not None and outcome.error is None and outcome.parsed is None \
                            and response is not None and not response.not_modified:
                        args = (response.body, response.headers, response.url,
                                outcome.source, config.site_host, config.id_date, clock())
                        try:
                            job = parsers.submit(parse_job, *args)
                        except BrokenProcessPool:
                            # a parse process died (out of memory, a crash in a parser):
                            # the feeds it held have failed; the others go to a new pool
                            parsers = _new_parsers(parsers, parse_pool, processes)
                            job = parsers.submit(parse_job, *args)
                        waiting[job] = outcome
                        backlog += len(response.body)
                        start(job)
                        continue
                    _record(outcome, state, problems, clock, report)
                    shown.advance()
                fetch_more()
                if state.deferred >= FLUSH_ROWS or time.monotonic() >= flush_at:
                    state.flush()
                    flush_at = time.monotonic() + FLUSH_SECONDS
            state.flush()
        except BaseException:
            for future in pending:  # interrupted: do not start what has not started
                future.cancel()
            try:
                state.flush()  # the 304s recorded so far are kept
            except Exception as exc:  # never in place of the error that stopped us
                log.warning("could not store the last not-modified results: %s", exc)
            raise
        finally:
            if parsers is not None and parse_pool is None:
                parsers.shutdown(wait=False, cancel_futures=True)
    _after_poll(config, store, problems, clock, sources, write)
    report.seconds = time.perf_counter() - started
    return report


def _new_parsers(broken: Executor, pool: ParsePool | None, processes: int) -> Executor:
    """Parse processes in place of a broken pool (the poll's own, or the kept ones)."""
    if pool is not None:
        pool.close()
        return pool.get(processes)
    broken.shutdown(wait=False, cancel_futures=True)
    return spawn_parsers(processes)


def spawn_parsers(processes: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent has live fetch and SQLite threads.
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))


def exit_with_parent(parent: int) -> None:
    """In a parse process: exit once `parent` is gone. A parent killed by SIGKILL
    (`kill -9` of a poll, a fetch worker killed) never shuts its pool down, and the
    pool's processes, each holding the task queue's pipe open for the others, would
    wait on it for ever."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


PARENT_CHECK_SECONDS = 1.0


class ParsePool:
    """Parse processes that outlive one poll: a fetch worker polls a batch of hosts
    every few seconds, and starting processes (~0.3 s of CPU each, with their imports)
    for each batch would cost more than the parsing of a batch of mostly 304s."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self._size = 0

    def get(self, processes: int) -> ProcessPoolExecutor:
        if self._executor is None or self._size != processes:
            self.close()
            self._executor, self._size = spawn_parsers(processes), processes
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _explain(config: Config, state: UpstreamState, sources: list[UpstreamSource],
             why: str | None) -> None:
    """Debug: why each source is polled (or, disabled in the config, not)."""
    for source in sources:
        known = state.source(source.url)
        log.debug("%s: polled (%s)", source.url, why or ("never polled"
                  if known.next_poll_at is None else
                  f"due since {known.next_poll_at.isoformat()}"))
    for source in config.upstream:
        if not source.enabled:
            log.debug("%s: not polled (enabled: false in the config)", source.url)


def _waiting(state: UpstreamState, enabled: list[UpstreamSource],
             due: list[UpstreamSource]) -> list[tuple[str, datetime, int]]:
    due_urls = {s.url for s in due}
    out = []
    for source in enabled:
        known = state.source(source.url)
        if source.url not in due_urls and known.disabled is None \
                and known.next_poll_at is not None:
            out.append((source.url, known.next_poll_at, known.error_count))
            log.debug("%s: not polled: not due until %s (%d errors in a row)", source.url,
                      known.next_poll_at.isoformat(), known.error_count)
    return out


def _resolve(future: Future[Any], waiting: dict[Future[_Parsed], _Outcome]) -> _Outcome:
    fetched = waiting.pop(future, None)
    if fetched is None:
        outcome: _Outcome = future.result()
        return outcome
    try:
        parsed: _Parsed = future.result()
    except Exception as exc:  # the worker process died (memory, signal)
        parsed = _Parsed([], [], "", f"could not parse: {exc!r}")
    return _Outcome(fetched.source, fetched.response, parsed)


def _record(outcome: _Outcome, state: UpstreamState, problems: ProblemLog, clock: Clock,
            report: PollReport) -> None:
    source, response, now = outcome.source, outcome.response, clock()
    parsed = outcome.parsed
    error = outcome.error or (parsed.error if parsed is not None else None)
    if response is not None and response.moved_to:
        _moved(source, response.moved_to, state, problems)
    if error is not None:
        status = outcome.status or (200 if response else None)
        report.failed.append(source.url)
        report.outcomes[source.url] = "failed"
        if status == 410:
            message = f"{error}: the source is gone; polling stopped (its stored entries " \
                      f"stay published; remove it from the config)"
            problems.error(source.url, message)
            state.disable(source, message, now, status)
            return
        problems.error(source.url, f"{error}; stored entries kept")
        wait = retry_after(outcome.headers, now) if status in (429, 503) else None
        state.failed(source, error, now, status, floor=wait)
        return
    assert response is not None
    etag, last_modified = response.headers.get("etag"), response.headers.get("last-modified")
    floor = floor_of(cache_floor(response.headers, now),
                     ttl_floor(parsed.ttl) if parsed is not None else None)
    if response.not_modified:
        state.not_modified(source, etag, last_modified, now, floor)
        report.not_modified += 1
        report.outcomes[source.url] = "not_modified"
        return
    assert parsed is not None
    for warning in parsed.warnings:
        problems.warn(source.url, warning)
    for error in parsed.skipped:
        problems.error(source.url, error)
    if not parsed.entries:
        problems.warn(source.url, "feed has no entries; stored entries kept")
    report.new_entries += state.store_dumped(source, parsed.entries, etag, last_modified, now,
                                             floor)
    report.fetched += 1
    report.outcomes[source.url] = "fetched"
    log.debug("%s: %d entries (%s)", source.url, len(parsed.entries), parsed.kind)


def _disabled(source: UpstreamSource, state: UpstreamState, problems: ProblemLog) -> bool:
    reason = state.source(source.url).disabled
    if reason is not None:
        problems.warn(source.url, f"disabled: {reason}")
    return reason is not None


def _moved(source: UpstreamSource, url: str, state: UpstreamState,
           problems: ProblemLog) -> None:
    old = state.source(source.url)
    if url != old.fetch_url:
        state.move(source, url)
        problems.warn(source.url, f"moved permanently to {url}; polling that from now on "
                                  f"(update the url in the config)")


def _after_poll(config: Config, store: StateStore, problems: ProblemLog, clock: Clock,
                sources: list[UpstreamSource], write: bool = True) -> None:
    """write_posts sources become posts; unknown image types are probed (never fatal)."""
    from aggregator.fetch.probe import probe_images

    if write:
        write_posts_of(config, store, sources, problems, clock)
    try:
        probe_images(config, store, sources, clock())
    except Exception as exc:  # probing is an extra: it never fails a poll
        log.warning("image probing stopped: %s", exc)


def write_posts_of(config: Config, store: StateStore, sources: Sequence[UpstreamSource],
                   problems: ProblemLog, clock: Clock) -> None:
    """The posts `write_posts` sources ask for, written into the first content dir
    (never fatal: the poll is stored; a post we could not write is reported)."""
    from aggregator.fetch.posts import write_posts

    try:
        write_posts(config, store, list(sources), problems, clock())
    except Exception as exc:
        problems.error(str(config.content_dirs[0]) if config.content_dirs else "write_posts",
                       f"writing posts stopped: {exc!r}")

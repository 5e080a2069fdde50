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
from collections.abc import Callable, Sequence
from concurrent.futures import (
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
    parsers = _Parsers(parse_pool, processes) if processes > 1 else None
    with Fetcher(limits) as fetcher, store.bulk_writes(), \
            ThreadPoolExecutor(max_workers=max(1, limits.concurrency),
                               thread_name_prefix="fetch") as pool, \
            progress.bar("sources polled", len(sources), "source") as shown:

        def fetch(source: UpstreamSource) -> Future[_Outcome]:
            known = validators[source.url]
            return pool.submit(_fetch_one, fetcher, source, known.etag, known.last_modified,
                               None if parsers else config, clock(), known.fetch_url)

        def parse(fetched: _Outcome) -> Future[_Parsed]:
            assert parsers is not None and fetched.response is not None
            response = fetched.response
            return parsers.submit(response.body, response.headers, response.url,
                                  fetched.source, config.site_host, config.id_date, clock())

        work = _InFlight(sources, fetch, parse if parsers else None,
                         2 * max(1, limits.concurrency))
        flush_at = time.monotonic() + FLUSH_SECONDS
        try:
            work.fetch_more()
            while work.pending:
                for outcome in work.results():
                    _record(outcome, state, problems, clock, report)
                    shown.advance()
                work.fetch_more()
                if state.deferred >= FLUSH_ROWS or time.monotonic() >= flush_at:
                    state.flush()
                    flush_at = time.monotonic() + FLUSH_SECONDS
            state.flush()
        except BaseException:
            work.cancel()  # interrupted: do not start what has not started
            try:
                state.flush()  # the 304s recorded so far are kept
            except Exception as exc:  # never in place of the error that stopped us
                log.warning("could not store the last not-modified results: %s", exc)
            raise
        finally:
            if parsers is not None:
                parsers.close()
    _after_poll(config, store, problems, clock, sources, write)
    report.seconds = time.perf_counter() - started
    return report


class _InFlight:
    """The fetches and parses of one poll under way. Fetches start as results come in:
    at most `most_fetching` at a time (a few more than the fetch threads keep them
    busy), and none while the bodies waiting for a parse process reach
    PARSE_BACKLOG_BYTES (fetching outruns parsing)."""

    def __init__(self, sources: Sequence[UpstreamSource],
                 fetch: Callable[[UpstreamSource], Future[_Outcome]],
                 parse: Callable[[_Outcome], Future[_Parsed]] | None,
                 most_fetching: int) -> None:
        self._to_fetch = iter(sources)
        self._fetch, self._parse = fetch, parse
        self._most_fetching = most_fetching
        self._finished: SimpleQueue[Future[Any]] = SimpleQueue()  # as they complete
        self.pending: set[Future[Any]] = set()  # fetches and parses, both
        self._parsing: dict[Future[_Parsed], _Outcome] = {}  # parse → its fetch
        self._fetching = 0  # fetches started and not done
        self._backlog = 0  # bytes of the bodies waiting for a parse process

    def fetch_more(self) -> None:
        while self._fetching < self._most_fetching and self._backlog < PARSE_BACKLOG_BYTES:
            source = next(self._to_fetch, None)
            if source is None:
                return
            self._start(self._fetch(source))
            self._fetching += 1

    def results(self) -> list[_Outcome]:
        """The outcomes to record among the futures finished (waiting for one): a
        fetched body that goes to a parse process is not one yet. A queue, not
        wait(pending): wait() locks every pending future each time it is called, ~1M
        lock operations for 1,000 sources."""
        done = [self._finished.get()]
        while not self._finished.empty():
            done.append(self._finished.get())
        self.pending.difference_update(done)
        out = []
        for future in done:
            parsed = future in self._parsing
            outcome = _resolve(future, self._parsing)
            response = outcome.response
            if parsed:
                assert response is not None
                self._backlog -= len(response.body)
                out.append(outcome)
                continue
            self._fetching -= 1
            if self._parse is not None and outcome.error is None \
                    and outcome.parsed is None and response is not None \
                    and not response.not_modified:
                job = self._parse(outcome)
                self._parsing[job] = outcome
                self._backlog += len(response.body)
                self._start(job)
            else:
                out.append(outcome)
        return out

    def cancel(self) -> None:
        for future in self.pending:
            future.cancel()

    def _start(self, future: Future[Any]) -> None:
        self.pending.add(future)
        future.add_done_callback(self._finished.put)


class _Parsers:
    """The parse processes of a poll: its own, or a fetch worker's kept ones."""

    def __init__(self, kept: ParsePool | None, processes: int) -> None:
        self._kept, self._processes = kept, processes
        self._executor = kept.get(processes) if kept is not None else \
            spawn_parsers(processes)

    def submit(self, *args: Any) -> Future[_Parsed]:
        try:
            return self._executor.submit(parse_job, *args)
        except BrokenProcessPool:
            # a parse process died (out of memory, a crash in a parser): the feeds it
            # held have failed; the others go to new processes
            if self._kept is not None:
                self._kept.close()
                self._executor = self._kept.get(self._processes)
            else:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = spawn_parsers(self._processes)
            return self._executor.submit(parse_job, *args)

    def close(self) -> None:
        if self._kept is None:
            self._executor.shutdown(wait=False, cancel_futures=True)


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

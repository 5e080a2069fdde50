"""One poll: fetch + parse due sources in a thread pool, store each result as it lands.

Network and parsing run in worker threads; all SQLite writes happen in the calling
thread, one transaction per source, in the order results arrive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from aggregator.config import Config, UpstreamSource
from aggregator.problems import ProblemLog
from aggregator.sources.upstream.http import Fetcher, FetchError, Limits, Response
from aggregator.sources.upstream.normalise import Normaliser
from aggregator.sources.upstream.parse import ParsedFeed, ParseError, parse_feed
from aggregator.state.store import Clock, StateStore
from aggregator.state.upstream import UpstreamState

log = logging.getLogger(__name__)


@dataclass
class PollReport:
    due: int = 0
    fetched: int = 0  # 200 and stored
    not_modified: int = 0
    failed: list[str] = field(default_factory=list)  # source URLs
    new_entries: int = 0
    seconds: float = 0.0
    outcomes: dict[str, str] = field(default_factory=dict)  # url -> fetched|not_modified|failed


@dataclass(frozen=True)
class _Outcome:
    source: UpstreamSource
    response: Response | None = None
    feed: ParsedFeed | None = None
    error: str | None = None
    status: int | None = None


def limits_from(config: Config) -> Limits:
    return Limits(timeout=config.fetch_timeout, deadline=config.fetch_deadline,
                  max_bytes=config.max_bytes, per_host=config.per_host_limit,
                  concurrency=config.fetch_concurrency)


def _fetch_one(fetcher: Fetcher, source: UpstreamSource, etag: str | None,
               last_modified: str | None) -> _Outcome:
    try:
        response = fetcher.get(source.url, etag, last_modified)
    except FetchError as exc:
        status = int(str(exc).split()[1]) if str(exc).startswith("HTTP ") else None
        return _Outcome(source, error=str(exc), status=status)
    if response.not_modified:
        return _Outcome(source, response)
    try:
        feed = parse_feed(response.body, response.headers, response.url)
    except ParseError as exc:
        return _Outcome(source, response, error=str(exc), status=200)
    except Exception as exc:  # a parser bug must cost one source, not the run
        log.debug("parser crashed on %s", source.url, exc_info=True)
        return _Outcome(source, response, error=f"could not parse: {exc!r}", status=200)
    return _Outcome(source, response, feed)


def poll(config: Config, store: StateStore, problems: ProblemLog, clock: Clock,
         everything: bool = False, only: Sequence[UpstreamSource] | None = None) -> PollReport:
    """Poll the due enabled sources (`everything`: all enabled; `only`: exactly these)."""
    started = time.perf_counter()
    report = PollReport()
    state = UpstreamState(store)
    enabled = [s for s in config.upstream if s.enabled]
    if only is not None:
        sources = list(only)
    else:
        sources = enabled if everything else state.due(enabled, clock())
    report.due = len(sources)
    if not sources:
        return report
    validators = {s.url: state.source(s.url) for s in sources}
    limits = limits_from(config)
    with Fetcher(limits) as fetcher, \
            ThreadPoolExecutor(max_workers=max(1, limits.concurrency),
                               thread_name_prefix="fetch") as pool:
        futures: list[Future[_Outcome]] = [
            pool.submit(_fetch_one, fetcher, s, validators[s.url].etag,
                        validators[s.url].last_modified) for s in sources]
        try:
            for future in as_completed(futures):
                _record(future.result(), config, state, problems, clock, report)
        except BaseException:
            for future in futures:  # interrupted: do not start what has not started
                future.cancel()
            raise
    report.seconds = time.perf_counter() - started
    return report


def _record(outcome: _Outcome, config: Config, state: UpstreamState, problems: ProblemLog,
            clock: Clock, report: PollReport) -> None:
    source, response, now = outcome.source, outcome.response, clock()
    if outcome.error is not None:
        problems.error(source.url, f"{outcome.error}; stored entries kept")
        state.failed(source, outcome.error, now, outcome.status)
        report.failed.append(source.url)
        report.outcomes[source.url] = "failed"
        return
    assert response is not None
    etag, last_modified = response.headers.get("etag"), response.headers.get("last-modified")
    if response.not_modified:
        state.not_modified(source, etag, last_modified, now)
        report.not_modified += 1
        report.outcomes[source.url] = "not_modified"
        return
    feed = outcome.feed
    assert feed is not None
    for warning in feed.warnings:
        problems.warn(source.url, warning)
    normaliser = Normaliser(source, config.site_host, config.id_date, now)
    entries = list(normaliser.entries(feed))
    if not entries:
        problems.warn(source.url, "feed has no entries; stored entries kept")
    report.new_entries += state.store_entries(source, entries, etag, last_modified, now)
    report.fetched += 1
    report.outcomes[source.url] = "fetched"
    log.debug("%s: %d entries (%s)", source.url, len(entries), feed.kind)

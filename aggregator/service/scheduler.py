"""One APScheduler 3.11 interval job per enabled upstream source.

Polling itself belongs to aggregator.fetch (issue 4); this module only
decides when, then asks for a rebuild the same way a file change does.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from aggregator.config import Config, UpstreamSource
from aggregator.service.metrics import ServiceStats

log = logging.getLogger(__name__)

# First polls are spread over this many seconds so a restart does not hit every host at once.
STARTUP_SPREAD = 30.0


class PollScheduler:
    def __init__(self, config: Callable[[], Config], stats: ServiceStats,
                 request_build: Callable[[str], None]) -> None:
        self._config = config
        self.stats = stats
        self.request_build = request_build
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._import_warned = False

    def start(self) -> None:
        self._scheduler.start()
        self.schedule(self._config())

    def schedule(self, config: Config) -> int:
        """(Re)create the jobs from `config`; called at start and after SIGHUP."""
        self._scheduler.remove_all_jobs()
        self.stats.forget_sources_except({s.url for s in config.upstream if s.enabled})
        now = datetime.now(UTC)
        count = 0
        for source in config.upstream:
            if not source.enabled:
                continue
            every = source.every_seconds
            first = random.uniform(0, min(every, STARTUP_SPREAD))
            self._scheduler.add_job(
                self._poll, IntervalTrigger(seconds=every, jitter=min(every / 10, 300)),
                args=[source], id=source.url, name=source.url, replace_existing=True,
                coalesce=True, max_instances=1, misfire_grace_time=max(every // 2, 1),
                next_run_time=now + timedelta(seconds=first))
            count += 1
        if count:
            log.info("scheduled %d upstream sources", count)
        return count

    def shutdown(self) -> None:
        if self._scheduler.running:
            # wait=False: a poll stuck on the network must not hold up SIGTERM.
            self._scheduler.shutdown(wait=False)

    def _poll(self, source: UpstreamSource) -> None:
        try:
            from aggregator.fetch import poll_sources
        except ImportError as exc:
            if not self._import_warned:
                log.warning("upstream polling is not available (%s); sources are not polled",
                            exc)
                self._import_warned = True
            return
        try:
            result = poll_sources(self._config(), [source])
        except Exception as exc:
            log.exception("%s: poll failed", source.url)
            self.stats.record_poll(source.url, "error", str(exc))
        else:
            for url, outcome in _outcomes(result, source).items():
                self.stats.record_poll(url, outcome, "" if outcome != "failed" else "poll failed")
        self.request_build(f"poll {source.url}")


def _outcomes(result: object, source: UpstreamSource) -> dict[str, str]:
    """Best effort over poll_sources' result, so its exact type can evolve: a mapping
    url → outcome (or `.outcomes`), or a report with `failed` (URLs), `not_modified`,
    `fetched` and `due` counts (fetch.poll.PollReport); else ok."""
    found = getattr(result, "outcomes", result)
    if isinstance(found, Mapping):
        out: dict[str, str] = {}
        for url, value in found.items():
            outcome = value if isinstance(value, str) else getattr(value, "outcome", None)
            out[str(url)] = str(outcome or "ok")
        if out:
            return out
    failed = getattr(result, "failed", None)
    if isinstance(failed, list | tuple | set | frozenset):
        if source.url in failed or (failed and not all(isinstance(f, str) for f in failed)):
            return {source.url: "failed"}
        for name in ("not_modified", "fetched"):
            if getattr(result, name, 0):
                return {source.url: name}
        if getattr(result, "due", 1) == 0:
            return {source.url: "not_due"}
    return {source.url: "ok"}

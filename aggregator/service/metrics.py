"""Prometheus metrics and the health snapshot, kept in one place the server reads."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServiceStats"]


@dataclass
class ServiceStats:
    """What /healthz and /metrics report; written by the build and poll threads."""

    # One registry per service (not the global one): tests run several in one process.
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    last_build: datetime | None = None
    last_build_ok: bool | None = None
    last_build_seconds: float | None = None
    failing_sources: dict[str, str] = field(default_factory=dict)
    builds_here: bool = True  # False for a fetch worker: healthy without a build
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        r = self.registry
        self.builds = Counter("aggregator_builds", "Builds run, by outcome",
                              ["outcome"], registry=r)
        self.build_seconds = Histogram(
            "aggregator_build_seconds", "Wall time of a build",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.polls = Counter("aggregator_polls", "Upstream polls, by outcome",
                             ["outcome"], registry=r)
        self.entries = Gauge("aggregator_entries", "Entries in the last published build",
                             registry=r)
        self.feeds = Gauge("aggregator_feeds", "Feed files in the last published build",
                           registry=r)
        self.last_success = Gauge("aggregator_last_build_success_timestamp_seconds",
                                  "When the last build was published", registry=r)
        self.file_events = Counter("aggregator_file_events", "Relevant content file events",
                                   registry=r)
        self.websub_pings = Counter("aggregator_websub_pings",
                                    "WebSub pings to hubs, by outcome", ["outcome"],
                                    registry=r)
        self.websub_waiting = Gauge("aggregator_websub_pings_waiting",
                                    "WebSub pings recorded and not yet accepted by a hub",
                                    registry=r)
        for outcome in ("published", "failed"):
            self.builds.labels(outcome)  # exported as 0 before the first build
        for outcome in ("sent", "failed"):
            self.websub_pings.labels(outcome)

    def record_build(self, ok: bool, seconds: float, entries: int = 0, feeds: int = 0) -> None:
        with self._lock:
            self.last_build = datetime.now(UTC)
            self.last_build_ok = ok
            self.last_build_seconds = seconds
        self.builds.labels("published" if ok else "failed").inc()
        self.build_seconds.observe(seconds)
        if ok:
            self.entries.set(entries)
            self.feeds.set(feeds)
            self.last_success.set_to_current_time()

    def record_pings(self, sent: int, failed: int, waiting: int) -> None:
        self.websub_pings.labels("sent").inc(sent)
        self.websub_pings.labels("failed").inc(failed)
        self.websub_waiting.set(waiting)

    def record_poll(self, url: str, outcome: str, message: str = "") -> None:
        self.polls.labels(outcome).inc()
        with self._lock:
            if outcome in ("failed", "error"):
                self.failing_sources[url] = message or outcome
            else:
                self.failing_sources.pop(url, None)

    def forget_sources_except(self, urls: set[str]) -> None:
        """After a reload: a removed or disabled source is no longer 'failing'."""
        with self._lock:
            for url in set(self.failing_sources) - urls:
                del self.failing_sources[url]

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {
                "ok": bool(self.last_build_ok) or not self.builds_here,
                "last_build": self.last_build.isoformat() if self.last_build else None,
                "last_build_ok": self.last_build_ok,
                "last_build_seconds": self.last_build_seconds,
                "failing_sources": [{"url": u, "error": m}
                                    for u, m in sorted(self.failing_sources.items())],
            }

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)

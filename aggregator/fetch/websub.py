"""Sending the WebSub pings builds recorded (state/websub.py): to each hub a
`POST hub.mode=publish&hub.url=<feed URL>` per changed feed, as the hubs of the
W3C Recommendation's implementations expect (the Recommendation leaves the
publisher's notice to the hub; this form is the one they share). A 2xx answer is
accepted; anything else, or no answer within `websub.timeout_seconds`, leaves the
ping waiting, tried again after `websub.retry_seconds`, doubling up to an hour.

Hubs are contacted at once, each on its own thread; a hub that fails one ping gets
no more this round (its other pings wait for the same retry time), so a dead hub
costs at most one timeout and delays no other hub.

The SSRF guard (sources/upstream/guard.py) does not apply: the only addresses
contacted are the hub URLs the operator wrote in the config (an intranet hub is a
normal setup), no redirect is followed and nothing of the answer is read but its
status. Nothing from a feed or a post decides where a request goes.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import httpcore

from aggregator.config import Config
from aggregator.sources.upstream.guard import tls_context
from aggregator.sources.upstream.http import USER_AGENT
from aggregator.state.address import StateAddress
from aggregator.state.websub import Ping, PingQueue

log = logging.getLogger(__name__)

MAX_RETRY_SECONDS = 3600.0


@dataclass
class PingReport:
    sent: int = 0
    failed: int = 0  # pings left waiting after a failure (a hub's untried ones included)
    errors: dict[str, str] = field(default_factory=dict)  # hub → its error this round

    def add(self, other: PingReport) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.errors.update(other.errors)


def retry_after(config: Config, attempts: int) -> float:
    """Seconds before the next try of a ping that failed `attempts` times before."""
    return float(min(config.websub_retry * 2 ** min(attempts, 20), MAX_RETRY_SECONDS))


def send_pings(config: Config, *, due_only: bool, hubs: Sequence[str] | None = None,
               clock: Callable[[], float] = time.time) -> PingReport:
    """Send the waiting pings (`due_only`: those whose retry time has come; else all
    of them, once) to `hubs` (default: every configured hub; then the pings to hubs
    no longer configured are dropped); record what became of each."""
    report = PingReport()
    if not config.websub_hubs:
        return report
    queue = PingQueue(StateAddress.of(config))
    try:
        if hubs is None:
            queue.forget_other_hubs(config.websub_hubs)
        waiting = queue.waiting(config.websub_hubs if hubs is None else hubs,
                                clock() if due_only else None)
    except (OSError, sqlite3.Error) as exc:
        log.warning("%s: cannot read the WebSub pings (%s)", config.state_path, exc)
        return report
    if not waiting:
        return report
    by_hub: dict[str, list[Ping]] = {}
    for ping in waiting:
        by_hub.setdefault(ping.hub, []).append(ping)
    sent: list[Ping] = []
    failed: list[tuple[Ping, str, float]] = []
    with httpcore.ConnectionPool(ssl_context=tls_context(), max_connections=len(by_hub),
                                 retries=0) as pool, \
            ThreadPoolExecutor(len(by_hub), thread_name_prefix="websub") as threads:
        rounds = [threads.submit(_hub_round, pool, config, hub, pings)
                  for hub, pings in by_hub.items()]
        for future in rounds:
            accepted, error, untried = future.result()
            sent += accepted
            if error is not None:
                hub = untried[0].hub
                report.errors[hub] = error
                failed += [(p, error, clock() + retry_after(config, p.attempts))
                           for p in untried]
    report.sent, report.failed = len(sent), len(failed)
    try:
        queue.settle(sent, failed)
    except (OSError, sqlite3.Error) as exc:  # sent again next time: hubs take repeats
        log.warning("%s: cannot record the WebSub pings sent (%s)", config.state_path, exc)
    for hub, error in report.errors.items():
        log.warning("%s: WebSub ping failed (%s); %d pings wait for a retry", hub, error,
                    sum(1 for p, _, _ in failed if p.hub == hub))
    if sent:
        log.info("WebSub: %d pings sent to %d hubs", len(sent), len({p.hub for p in sent}))
    return report


def _hub_round(pool: httpcore.ConnectionPool, config: Config, hub: str, pings: list[Ping]
               ) -> tuple[list[Ping], str | None, list[Ping]]:
    """(the pings the hub accepted, the error that stopped the round or None, the
    pings left: the failed one and those after it)."""
    accepted: list[Ping] = []
    for index, ping in enumerate(pings):
        error = _ping(pool, config, hub, ping.url)
        if error is not None:
            return accepted, error, pings[index:]
        accepted.append(ping)
    return accepted, None, []


def _ping(pool: httpcore.ConnectionPool, config: Config, hub: str, url: str) -> str | None:
    """POST one publish notice; None when the hub accepted it, else what went wrong."""
    body = urlencode({"hub.mode": "publish", "hub.url": url}).encode("ascii")
    timeout = config.websub_timeout
    try:
        response = pool.request(
            "POST", hub, content=body,
            headers=[("Host", urlsplit(hub).netloc), ("User-Agent", USER_AGENT),
                     ("Content-Type", "application/x-www-form-urlencoded"),
                     ("Content-Length", str(len(body)))],
            extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout,
                                    "pool": timeout}})
    except httpcore.TimeoutException:
        return f"no answer within {timeout:g}s"
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
            OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if 200 <= response.status < 300:
        return None
    return f"HTTP {response.status}"

"""Image probing: a HEAD (or one-byte ranged GET) for entry images whose type is not
known from the URL, so the RSS `<enclosure>` can carry a type and length.

Runs after a poll (network allowed), through the same Fetcher as feeds: the SSRF guard
and the per-host limit apply. Bounded per run in count (`images.probe_max`) and time
(`images.probe_seconds`); results are cached in state for `images.probe_refresh_days`.
A failure is cached too (so a dead image is not asked again every poll) and never fails
anything.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta

from aggregator.config import Config, UpstreamSource
from aggregator.fetch.limits import limits_from
from aggregator.sources.upstream.http import Fetcher, FetchError
from aggregator.state.probes import Probe, ProbeCache, unknown_image
from aggregator.state.store import StateStore
from aggregator.state.upstream import UpstreamState

log = logging.getLogger(__name__)


def _probe_one(fetcher: Fetcher, url: str, now: datetime) -> Probe:
    try:
        status, content_type, length = fetcher.probe(url)
    except Exception as exc:  # refused, timeout, a URL urls.py rejects: never fatal
        log.debug("%s: image probe failed: %s", url, exc if isinstance(exc, FetchError)
                  else repr(exc))
        return Probe(url, None, None, 0, now)
    mime = (content_type or "").split(";")[0].strip().lower()
    ok = status in (200, 206) and mime.startswith("image/")
    return Probe(url, status, mime if ok else None, length if ok else 0, now)


def probe_images(config: Config, store: StateStore, sources: list[UpstreamSource],
                 now: datetime, fetcher: Fetcher | None = None) -> int:
    """Probe the unknown-type images of these sources' stored entries; returns how many
    were probed."""
    if not config.images_probe or config.probe_max <= 0:
        return 0
    entries = UpstreamState(store).entries(s for s in sources if s.enabled)
    return probe_urls(config, store, [u for u in map(unknown_image, entries) if u], now,
                      fetcher)


def probe_urls(config: Config, store: StateStore, urls: list[str], now: datetime,
               fetcher: Fetcher | None = None) -> int:
    """Probe these image URLs unless a fresh result is cached; returns how many were
    probed. Also used for the images of posts (which `build` reports as unknown)."""
    if not config.images_probe or config.probe_max <= 0:
        return 0
    cache = ProbeCache(store)
    todo = cache.stale(urls, now, timedelta(days=config.probe_refresh_days))[:config.probe_max]
    if not todo:
        return 0
    own = fetcher is None
    fetcher = fetcher or Fetcher(limits_from(config))
    started = time.monotonic()
    done = 0
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(config.fetch_concurrency, 8)),
                                thread_name_prefix="probe") as pool:
            futures = [pool.submit(_probe_one, fetcher, url, now) for url in todo]
            finished, late = wait(futures, timeout=config.probe_seconds)
            for future in late:  # over the time budget: the rest waits for the next run
                future.cancel()
            for future in finished:
                cache.put(future.result())
                done += 1
    finally:
        if own:
            fetcher.close()
    log.info("probed %d images in %.1fs", done, time.monotonic() - started)
    return done

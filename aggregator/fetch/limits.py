"""The fetcher's limits, from the config's `fetch:` section (feeds and image probes
share them)."""

from __future__ import annotations

from aggregator.config import Config
from aggregator.sources.upstream.http import Limits


def limits_from(config: Config) -> Limits:
    return Limits(timeout=config.fetch_timeout, deadline=config.fetch_deadline,
                  max_bytes=config.max_bytes, per_host=config.per_host_limit,
                  concurrency=config.fetch_concurrency,
                  allow_private=config.allow_private_addresses)

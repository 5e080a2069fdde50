"""WebSub (W3C Recommendation, 2018): after a build replaced feed files, a ping per
hub and changed feed is recorded in the state (state/websub.py) for `fetch` or the
service to send (fetch/websub.py); a build itself never uses the network.

The pinged documents are the node feeds readers subscribe to (`atom.xml`, `rss.xml`,
`feed.json`: the topics carrying `rel="hub"`); archive documents, the index and the
OPML are not topics."""

from __future__ import annotations

import logging
import sqlite3

from aggregator.config import Config
from aggregator.state.address import StateAddress
from aggregator.state.websub import PingQueue

log = logging.getLogger(__name__)

TOPIC_FILES = frozenset({"atom.xml", "rss.xml", "feed.json"})


def topic_urls(config: Config, written: list[str]) -> list[str]:
    """The URLs of the WebSub topics among the files a build wrote (relative paths)."""
    return [f"{config.site_url}{rel}" for rel in written
            if rel.rpartition("/")[2] in TOPIC_FILES]


def record_pings(config: Config, written: list[str]) -> int:
    """Record a ping to every hub for each topic the build wrote; how many. A state
    that cannot be written loses them (said once, as a warning): the feeds are out."""
    if not config.websub_hubs:
        return 0
    urls = topic_urls(config, written)
    try:
        return PingQueue(StateAddress.of(config)).record(config.websub_hubs, urls)
    except (OSError, sqlite3.Error) as exc:
        log.warning("%s: cannot record %d WebSub pings (%s); the hubs learn of these "
                    "feeds' changes at their next change", config.state_path,
                    len(urls) * len(config.websub_hubs), exc)
        return 0

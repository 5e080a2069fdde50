"""The image probe cache: what a HEAD (or ranged GET) said about an image URL.

`fetch` fills it (network); `build` only applies it (no network): an entry image whose
type was unknown from its URL gets the probed type and length *before* render keys are
computed, so the build cache sees the change like any other field.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from aggregator.model import Entry, Image
from aggregator.state.store import StateStore


@dataclass(frozen=True)
class Probe:
    url: str
    status: int | None  # None: the request failed (refused, timeout)
    mime_type: str | None  # an image/* type, else None
    length: int
    probed_at: datetime


class ProbeCache:
    def __init__(self, store: StateStore) -> None:
        self.db = store.db

    def get(self, urls: Iterable[str]) -> dict[str, Probe]:
        out: dict[str, Probe] = {}
        wanted = set(urls)
        if len(wanted) > 200:  # many: one scan beats a lookup each
            for url, *row in self.db.execute("SELECT url, status, mime_type, length, "
                                             "probed_at FROM image_probe"):
                if url in wanted:
                    out[url] = Probe(url, row[0], row[1], row[2],
                                     datetime.fromisoformat(row[3]))
            return out
        for url in wanted:
            row = self.db.execute("SELECT status, mime_type, length, probed_at FROM "
                                  "image_probe WHERE url = ?", (url,)).fetchone()
            if row is not None:
                out[url] = Probe(url, row[0], row[1], row[2], datetime.fromisoformat(row[3]))
        return out

    def put(self, probe: Probe) -> None:
        self.db.execute("INSERT INTO image_probe VALUES (?, ?, ?, ?, ?) ON CONFLICT (url) "
                        "DO UPDATE SET status = excluded.status, mime_type = "
                        "excluded.mime_type, length = excluded.length, "
                        "probed_at = excluded.probed_at",
                        (probe.url, probe.status, probe.mime_type, probe.length,
                         probe.probed_at.astimezone(UTC).isoformat()))

    def stale(self, urls: Iterable[str], now: datetime, refresh: timedelta) -> list[str]:
        """URLs never probed or probed longer than `refresh` ago, in the given order."""
        known = self.get(urls)
        seen: set[str] = set()
        out = []
        for url in urls:
            probe = known.get(url)
            if url not in seen and (probe is None or now - probe.probed_at >= refresh):
                out.append(url)
            seen.add(url)
        return out


def unknown_image(entry: Entry) -> str | None:
    """The entry's image URL when its type is unknown and it is worth a probe."""
    image = entry.image
    if image is None or image.mime_type is not None:
        return None
    return image.url if image.url.startswith(("http://", "https://")) else None


def apply_probes(store: StateStore, entries: list[Entry]) -> list[Entry]:
    """Entries whose image type was unknown get the cached probe result (no network)."""
    urls = [u for u in map(unknown_image, entries) if u]
    if not urls:
        return entries
    try:
        found = ProbeCache(store).get(urls)
    except sqlite3.Error:  # an old or damaged state: probing is an extra, never a failure
        return entries
    out = []
    for entry in entries:
        probe = found.get(unknown_image(entry) or "")
        if probe is not None and probe.mime_type and entry.image is not None:
            entry = replace(entry, image=Image(entry.image.url, probe.mime_type, probe.length))
        out.append(entry)
    return out

"""Entry → sanitised → Atom and RSS bytes, once per entry, in parallel when it pays
(cached under the keys of aggregator.fingerprints)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser

from aggregator.config import Config
from aggregator.forking import PARALLEL_THRESHOLD, can_fork, chunk_ranges, map_inherited
from aggregator.media import image_type_from_url
from aggregator.model import Entry, Image
from aggregator.problems import ProblemLog
from aggregator.sanitize.html import Sanitizer
from aggregator.sanitize.text import summarize
from aggregator.sources.content import PostReader
from aggregator.sources.walk import post_of_source
from aggregator.state.cache import (
    BodyReader,
    CacheIncomplete,
    digest,
    open_read_only,
    pack_render,
    whole_entries,
)
from aggregator.writers.feeds import FeedRenderer


def finish_entry(entry: Entry, sanitizer: Sanitizer) -> Entry:
    """Sanitise the body; fill the summary and the image from it when missing."""
    html = sanitizer.clean(entry.html, entry.base_url, entry.drop_selectors)
    image = entry.image or _first_image(html)
    summary = entry.summary or summarize(html)
    return replace(entry, html=html, image=image, summary=summary)


def _first_image(html: str) -> Image | None:
    if "<img" not in html:
        return None
    body = LexborHTMLParser(html).body
    for img in body.css("img") if body is not None else []:
        src = img.attributes.get("src") or ""
        if src.startswith(("http://", "https://")):
            return Image(url=src, mime_type=image_type_from_url(src))
    return None


def content_roots(config: Config) -> list[str]:
    """The content dirs as post source keys begin (see PostFile.source)."""
    return [str(root) for root in config.content_dirs]


def body_reader(config: Config) -> BodyReader:
    """(source, content digest) → the html of that post's body, read again from its
    file; None when the file is gone or its bytes are no longer those."""
    # what the reader reports was reported when the post was parsed
    reader = PostReader(config, ProblemLog(echo=False), lambda _id: _ANY_TIME)

    def body_of(source: str, content_digest: str) -> str | None:
        reader.problems = ProblemLog(echo=False)
        post = post_of_source(source)
        data = reader.read_bytes(post)
        if data is None or digest(data) != content_digest:
            return None  # gone, unreadable, over the size limit or other bytes
        return reader.html_of(data, post)
    return body_of


_ANY_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def entry_renderer(config: Config) -> Callable[[Entry], tuple[bytes, bytes]]:
    """Entry (with its html) → its (atom, rss) bytes, sanitised, serialised, packed."""
    sanitizer = Sanitizer(config.drop_selectors, config.iframe_hosts)
    renderer = FeedRenderer(config)

    def render(entry: Entry) -> tuple[bytes, bytes]:
        atom, rss = renderer.entry_pair(finish_entry(entry, sanitizer))
        return pack_render(atom), pack_render(rss)
    return render


# What render_entries gives for an entry that cannot be rendered: why not.
RenderFailure = str


def _render(config: Config, entries: Sequence[Entry],
            cache_file: Path | None = None) -> list[tuple[bytes, bytes] | RenderFailure]:
    """Partial entries (no html) are made whole, a chunk at a time, by the process
    that renders them: `cache_file` (the build cache) says which post file each came
    from. An entry whose render fails costs only itself: its place holds why."""
    render = entry_renderer(config)
    out: list[tuple[bytes, bytes] | RenderFailure] = []
    db = open_read_only(cache_file) if cache_file is not None else None
    try:
        whole = iter(entries) if db is None else \
            whole_entries(db, entries, body_reader(config), content_roots(config))
        for entry in whole:
            if entry.partial:
                raise CacheIncomplete("a post body was not loaded")
            try:
                out.append(render(entry))
            except Exception as exc:  # noqa: BLE001 (one entry's failure costs that entry)
                out.append(f"cannot be rendered ({type(exc).__name__}: {exc}); left out "
                           f"of the feeds")
    finally:
        if db is not None:
            db.close()
    return out


def render_entries(config: Config, entries: Sequence[Entry], workers: int = 1,
                   cache_file: Path | None = None
                   ) -> Iterator[tuple[bytes, bytes] | RenderFailure]:
    """(atom, rss) bytes for each entry, in order, packed (state.cache.pack_render:
    in the workers, not the parent), as each chunk is done: the caller stores them and
    need not hold them all (30k entries' were ~100 MB of a cold build's peak). Partial
    entries need `cache_file`, the build cache that read them. An entry that cannot
    be rendered gives a RenderFailure, the reason, in its place."""
    workers = min(workers, os.cpu_count() or 1)
    if workers <= 1 or len(entries) < PARALLEL_THRESHOLD or not can_fork():
        yield from _render(config, entries, cache_file)
        return
    ranges = chunk_ranges(len(entries), workers, 1000)
    for chunk in map_inherited(_render_range, (config, entries, cache_file), ranges, workers):
        yield from chunk


def _render_range(shared: tuple[Config, Sequence[Entry], Path | None],
                  bounds: tuple[int, int]) -> list[tuple[bytes, bytes] | RenderFailure]:
    config, entries, cache_file = shared
    return _render(config, entries[bounds[0]:bounds[1]], cache_file)

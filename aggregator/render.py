"""Entry → sanitised → Atom, RSS and JSON Feed bytes and a page card, once per entry,
in parallel when it pays (the store keeps them under each entry's render key)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from html import unescape

from aggregator.config import Config
from aggregator.forking import PARALLEL_THRESHOLD, can_fork, chunk_ranges, map_inherited
from aggregator.media import image_type_from_url
from aggregator.model import Entry, Image, changed
from aggregator.sanitize.html import Sanitizer
from aggregator.sanitize.text import IFRAME, SERIALISED_TAG, summarize
from aggregator.store import EntryReader, ReaderSource, Render, open_reader, pack_render
from aggregator.store.rows import entry_of
from aggregator.writers import jsonfeed, pages
from aggregator.writers.feeds import FeedRenderer


def finish_entry(entry: Entry, sanitizer: Sanitizer) -> Entry:
    """Sanitise the body; fill the summary and the image from it when missing."""
    html = sanitizer.clean(entry.html, entry.base_url, entry.drop_selectors)
    image = entry.image or first_image(html)
    summary = entry.summary or summarize(html, sanitized=True)
    return changed(entry, html=html, image=image, summary=summary)


# An img tag or an iframe (whose content is raw text, not tags) in html the Sanitizer
# wrote (see sanitize.text.sanitized_text), and an img's src: html5ever writes every
# value double-quoted, its '"' escaped, so ' src="' cannot occur inside another value.
_IMG_OR_IFRAME = re.compile(
    rf'<img(?=[\s>/]){SERIALISED_TAG[1:]}|{IFRAME}', re.DOTALL)
_SRC = re.compile(r'\ssrc="([^"]*)"')


def first_image(html: str) -> Image | None:
    """The first img of sanitised html with an http(s) src, as a parse of it finds it
    (tests hold the two equal on corpus, hostile and generated html)."""
    if "<img" not in html:
        return None
    for match in _IMG_OR_IFRAME.finditer(html):
        tag = match.group()
        src = _SRC.search(tag) if tag.startswith("<img") else None
        if src is None:
            continue
        url = unescape(src.group(1))
        if url.startswith(("http://", "https://")):
            return Image(url=url, mime_type=image_type_from_url(url))
    return None


_EMPTY = pack_render(b"")  # a format not published: nothing rendered


def entry_renderer(config: Config) -> Callable[[Entry], Render]:
    """Entry (with its html) → its renders (store.RENDERS) sanitised, serialised,
    packed; only those of the formats (and pages) the config publishes."""
    sanitizer = Sanitizer(config.drop_selectors, config.iframe_hosts)
    renderer = FeedRenderer(config)
    xml = "atom" in config.formats or "rss" in config.formats
    json = "json" in config.formats

    def render(entry: Entry) -> Render:
        entry = renderer.with_published_id(finish_entry(entry, sanitizer))
        atom, rss = (pack_render(data) for data in renderer.entry_pair(entry)) if xml \
            else (_EMPTY, _EMPTY)
        return (atom, rss,
                pack_render(jsonfeed.item(entry, config.full_content)) if json else _EMPTY,
                pack_render(pages.card(entry)) if config.pages else _EMPTY)
    return render


# What render_entries gives for an entry that cannot be rendered: why not.
RenderFailure = str
# rids → their entries (with their html), as the store keeps them
Loader = Callable[[list[int]], dict[int, Entry]]


def _render(config: Config, rids: Sequence[int], load: Loader | None,
            source: ReaderSource | None) -> list[Render | RenderFailure]:
    """The entries are loaded from the store a chunk at a time, by the process that
    renders them (a worker opens a reader of its own: the store file read-only, or
    a connection). An entry whose render fails costs only itself: its place holds
    why."""
    render = entry_renderer(config)
    out: list[Render | RenderFailure] = []
    reader = open_reader(source) if load is None and source is not None else None
    if reader is not None:
        load = _loader(reader)
    assert load is not None
    try:
        for start in range(0, len(rids), 500):
            chunk = list(rids[start:start + 500])
            entries = load(chunk)
            for rid in chunk:
                try:
                    out.append(render(entries[rid]))
                except Exception as exc:  # noqa: BLE001 (one entry's failure costs that entry)
                    out.append(f"cannot be rendered ({type(exc).__name__}: {exc}); left "
                               f"out of the feeds")
    finally:
        if reader is not None:
            reader.close()
    return out


def _loader(reader: EntryReader) -> Loader:
    return lambda rids: {rid: entry_of(*row) for rid, row in reader.packed(rids).items()}


def render_entries(config: Config, rids: Sequence[int], load: Loader, workers: int = 1,
                   source: ReaderSource | None = None
                   ) -> Iterator[Render | RenderFailure]:
    """The renders (store.RENDERS) of each entry (by its rid), in order, packed (in the
    workers, not the parent), as each chunk is done: the caller stores them and need
    not hold them all. Workers read the entries through a reader of `source`
    (store.open_reader); without one, this process renders them all, loaded by
    `load`. An entry that cannot be rendered gives a RenderFailure, the reason, in
    its place."""
    workers = min(workers, os.cpu_count() or 1)
    if workers <= 1 or len(rids) < PARALLEL_THRESHOLD or not can_fork() \
            or source is None:
        yield from _render(config, rids, load, None)
        return
    ranges = chunk_ranges(len(rids), workers, 1000)
    for chunk in map_inherited(_render_range, (config, rids, source), ranges, workers):
        yield from chunk


def _render_range(shared: tuple[Config, Sequence[int], ReaderSource],
                  bounds: tuple[int, int]) -> list[Render | RenderFailure]:
    config, rids, source = shared
    return _render(config, rids[bounds[0]:bounds[1]], None, source)

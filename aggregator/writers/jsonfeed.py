"""JSON Feed 1.1 (https://jsonfeed.org/version/1.1): one item's bytes, rendered once
per entry like its Atom and RSS, and the feed around them.

An item is one line of compact JSON; the feed joins its items with `,\\n` inside the
head's `"items":[…]`, so a feed is spliced from stored item bytes as the XML feeds are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from aggregator.model import Entry
from aggregator.writers import entry_xml
from aggregator.writers.parts import Parts

VERSION = "https://jsonfeed.org/version/1.1"
MIME_TYPE = "application/feed+json"
# What the spec calls a URL (an absolute one: a scheme first) and a MIME type; an
# attachment or image that is neither is left out rather than published invalid.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_MIME = re.compile(r"^[a-z]+/\S+$")
_SEPARATOR = b",\n"


def _url(value: str | None) -> str | None:
    return value if value and _URL.match(value) else None


def rfc3339(when: datetime) -> str:
    """RFC 3339 as the spec wants it: an offset of whole minutes (a zone's local mean
    time, +08:05:43, is written in UTC instead), no naive time."""
    offset = when.utcoffset()
    if offset is None or offset.seconds % 60 or offset.microseconds:
        when = when.replace(tzinfo=UTC) if offset is None else when.astimezone(UTC)
    return when.isoformat()


def _dumps(value: object) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate (scraped text) stays a `\\udXXX` escape."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "backslashreplace")


def item(entry: Entry, full_content: bool) -> bytes:
    """The entry's item: its id as published, the sanitised HTML as content_html (the
    summary as content_text with `full_content: false` or no body)."""
    out: dict[str, Any] = {"id": entry.id}
    url = _url(entry.link)
    if url:
        out["url"] = url
    out["title"] = entry.title
    if full_content and entry.html:
        out["content_html"] = entry.html
    else:
        out["content_text"] = entry.summary or entry.title
    if entry.summary:
        out["summary"] = entry.summary
    image = _url(entry.image.url) if entry.image is not None else None
    if image:
        out["image"] = image
    if entry.published is not None:
        out["date_published"] = rfc3339(entry.published)
    out["date_modified"] = rfc3339(entry.updated)
    if entry.author:
        out["authors"] = [{"name": entry.author}]
    tags = entry_xml.categories(entry)
    if tags:
        out["tags"] = tags
    attachments = []
    for href, mime, length in entry_xml.enclosures(entry):
        if _url(href) and _MIME.match(mime):
            attachment: dict[str, Any] = {"url": href, "mime_type": mime}
            if int(length) > 0:
                attachment["size_in_bytes"] = int(length)
            attachments.append(attachment)
    if attachments:
        out["attachments"] = attachments
    return _dumps(out)


def feed(title: str, feed_url: str, home_page_url: str, author: str, items: Parts,
         count: int, hubs: tuple[str, ...] = ()) -> Parts:
    """The feed of `count` items (`items`: their bytes, in order; an empty one, an
    entry that could not be rendered, is left out and not counted); `hubs`: its
    WebSub hubs."""
    head: dict[str, Any] = {
        "version": VERSION, "title": title, "home_page_url": home_page_url,
        "feed_url": feed_url, "description": f"{title}: every entry, newest first",
        "authors": [{"name": author}]}
    if hubs:
        head["hubs"] = [{"type": "WebSub", "url": hub} for hub in hubs]
    start = _dumps(head)[:-1] + b',"items":[\n'
    end = b"\n]}\n"

    def parts() -> Iterator[bytes]:
        yield start
        first = True
        for data in items.source():
            if data:
                if not first:
                    yield _SEPARATOR
                first = False
                yield data
        yield end
    separators = len(_SEPARATOR) * max(count - 1, 0)
    return Parts(parts, len(start) + items.size + separators + len(end))

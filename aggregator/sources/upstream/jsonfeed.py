"""JSON Feed 1.0 / 1.1 (jsonfeed.org): feedparser cannot read it, so we do, strictly.

Only what the spec requires is enforced (version, items, an id per item, content);
a bad item is dropped with a reason, a bad document raises JSONFeedError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

VERSIONS = ("https://jsonfeed.org/version/1", "https://jsonfeed.org/version/1.1")


class JSONFeedError(ValueError):
    pass


@dataclass(frozen=True)
class JSONItem:
    id: str
    url: str | None
    title: str | None
    content_html: str | None
    content_text: str | None
    summary: str | None
    image: str | None
    date_published: str | None
    date_modified: str | None
    authors: tuple[str, ...]
    tags: tuple[str, ...]
    attachments: tuple[tuple[str, str, int], ...]  # url, mime type, size in bytes


@dataclass(frozen=True)
class JSONFeed:
    version: str
    title: str
    home_page_url: str | None
    feed_url: str | None
    items: tuple[JSONItem, ...]
    authors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = field(default=())  # reasons, one per dropped item


def looks_like_json(body: bytes, content_type: str) -> bool:
    if "json" in content_type.lower():
        return True
    return body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def parse_json_feed(body: bytes) -> JSONFeed:
    try:
        doc = json.loads(body.decode("utf-8-sig"))  # JSON Feed is UTF-8 by spec
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise JSONFeedError(f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise JSONFeedError("JSON Feed must be an object")
    version = doc.get("version")
    if not isinstance(version, str) or version.rstrip("/") not in VERSIONS:
        raise JSONFeedError(f"not a JSON Feed (version {version!r})")
    items = doc.get("items")
    if not isinstance(items, list):
        raise JSONFeedError("JSON Feed has no 'items' list")
    parsed: list[JSONItem] = []
    dropped: list[str] = []
    for i, raw in enumerate(items):
        try:
            parsed.append(_item(raw))
        except JSONFeedError as exc:
            dropped.append(f"item {i + 1}: {exc}")
    return JSONFeed(
        version=version, title=_str(doc.get("title")) or "",
        home_page_url=_str(doc.get("home_page_url")), feed_url=_str(doc.get("feed_url")),
        items=tuple(parsed), authors=_authors(doc), dropped=tuple(dropped),
    )


def _item(raw: Any) -> JSONItem:
    if not isinstance(raw, dict):
        raise JSONFeedError("not an object")
    ident = raw.get("id")
    # 1.0 allowed numbers in the wild; the spec says to coerce them to strings.
    if isinstance(ident, bool) or not isinstance(ident, str | int | float) or str(ident) == "":
        raise JSONFeedError("no 'id'")
    html, text = _str(raw.get("content_html")), _str(raw.get("content_text"))
    if html is None and text is None:
        raise JSONFeedError("neither content_html nor content_text")
    attachments = []
    for att in raw.get("attachments") or []:
        if isinstance(att, dict) and _str(att.get("url")) and _str(att.get("mime_type")):
            size = att.get("size_in_bytes")
            attachments.append((att["url"], att["mime_type"],
                                size if isinstance(size, int) and size > 0 else 0))
    tags = raw.get("tags")
    return JSONItem(
        id=str(ident), url=_str(raw.get("url")) or _str(raw.get("external_url")),
        title=_str(raw.get("title")), content_html=html, content_text=text,
        summary=_str(raw.get("summary")),
        image=_str(raw.get("image")) or _str(raw.get("banner_image")),
        date_published=_str(raw.get("date_published")),
        date_modified=_str(raw.get("date_modified")),
        authors=_authors(raw),
        tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        attachments=tuple(attachments),
    )


def _authors(obj: dict[str, Any]) -> tuple[str, ...]:
    people = obj.get("authors")
    if not isinstance(people, list):  # 1.0: a single `author`
        people = [obj["author"]] if isinstance(obj.get("author"), dict) else []
    return tuple(p["name"] for p in people if isinstance(p, dict) and _str(p.get("name")))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None

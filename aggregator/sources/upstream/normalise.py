"""Parsed upstream entries → aggregator.model.Entry, html left UNSANITISED.

render.finish_entry sanitises later with Entry.base_url (xml:base, else the feed
URL) and Entry.drop_selectors (the source's own junk selectors). An entry without a
usable date gets published=None here; the state layer replaces it with the entry's
first-seen time, so its place in our feeds stays stable.
"""

from __future__ import annotations

import hashlib
import html as htmllib
import re
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urljoin

from aggregator.config import UpstreamSource
from aggregator.media import image_type_from_url
from aggregator.model import Enclosure, Entry, Image
from aggregator.sanitize.html import PLAIN_HTTP_URL, absolute_url
from aggregator.sanitize.text import clean_line, html_to_text, summarize
from aggregator.sources.dates import DateError, parse_date
from aggregator.sources.upstream.jsonfeed import JSONItem
from aggregator.sources.upstream.parse import ParsedFeed

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")
_HTML_TYPES = ("text/html", "application/xhtml+xml", "html", "xhtml")
# A little slack for clocks that run fast; anything later is a bogus future date.
FUTURE_SLACK = timedelta(minutes=10)


class Normaliser:
    def __init__(self, source: UpstreamSource, site_host: str, id_date: str,
                 now: datetime) -> None:
        self.source = source
        self.now = now
        # Non-URI guids are only unique within their feed; scope them by source.
        digest = hashlib.sha1(source.url.encode()).hexdigest()[:12]
        self.id_prefix = f"tag:{site_host},{id_date}:upstream/{digest}/"

    def entries(self, feed: ParsedFeed) -> Iterator[Entry]:
        """The first entry of each id; repeats (whatever their content) are reported in
        feed.warnings, never dropped silently."""
        seen: set[str] = set()
        repeats = 0
        for entry in self._all_entries(feed):
            if entry.id in seen:
                repeats += 1
                continue
            seen.add(entry.id)
            yield entry
        if repeats:
            feed.warnings.append(f"{repeats} entries repeat the id of an earlier entry "
                                 f"(duplicate id); the first of each kept")

    def _all_entries(self, feed: ParsedFeed) -> Iterator[Entry]:
        """Each entry that can be made; one that cannot (whatever the reason) is
        reported in feed.errors and costs only itself, never the feed."""
        made: Entry | None
        if feed.json is not None:
            base = feed.json.feed_url or feed.url
            base = absolute_url(base, feed.url) or feed.url
            for number, item in enumerate(feed.json.items, 1):
                made = self._guarded(feed, number, item.id, self._json_entry, item, base)
                if made is not None:
                    yield made
        elif feed.xml is not None:
            for number, raw in enumerate(feed.xml.entries, 1):
                made = self._guarded(feed, number, raw.get("id") or raw.get("link"),
                                     self._xml_entry, raw, feed.url)
                if made is not None:
                    yield made

    @staticmethod
    def _guarded(feed: ParsedFeed, number: int, name: object,
                 make: Callable[[Any, str], Entry], raw: Any, base: str) -> Entry | None:
        try:
            return make(raw, base)
        except Exception as exc:  # noqa: BLE001 (one entry's failure costs that entry)
            named = f" ({str(name)[:200]})" if name else ""
            feed.errors.append(f"entry {number}{named} cannot be read "
                               f"({type(exc).__name__}: {exc}); skipped")
            return None

    def entry_id(self, raw_id: str | None, link: str | None, title: str, html: str) -> str:
        raw_id = (raw_id or "").strip()
        if raw_id and _URI.match(raw_id):
            return raw_id  # guid/id that is already an IRI: keeps cross-source dedupe
        if raw_id:
            return self.id_prefix + quote(raw_id, safe="")
        if link:
            return link
        digest = hashlib.sha256(f"{title}\0{html}".encode()).hexdigest()[:32]
        return f"{self.id_prefix}sha256-{digest}"

    def _date(self, *candidates: Any) -> datetime | None:
        for value in candidates:
            if value is None:
                continue
            try:
                if isinstance(value, time.struct_time):
                    stamp = datetime(*value[:6], tzinfo=UTC)
                else:
                    stamp = parse_date(value, UTC)
            except (DateError, ValueError, OverflowError):
                continue
            if stamp.year < 1970 or stamp > self.now + FUTURE_SLACK:
                continue
            return stamp.replace(microsecond=0)
        return None

    def _make(self, *, raw_id: str | None, title: str, link: str | None, author: str | None,
              published: datetime | None, updated: datetime | None, tags: tuple[str, ...],
              html: str, image: Image | None, enclosures: tuple[Enclosure, ...],
              base_url: str) -> Entry:
        entry_id = self.entry_id(raw_id, link, title, html)
        if not title:
            title = summarize(html, 80) or link or "(untitled)"
        if "<img" not in html and not _has_text(html):
            # writers/feeds.py gives feedgen no link when there is no content, and
            # feedgen then refuses the entry: never hand over an empty body.
            html = f"<p>{htmllib.escape(title)}</p>"
        published = published or updated
        return Entry(
            id=entry_id, title=title, link=link, author=author or None,
            published=published,
            # placeholder when undated: replaced by the first-seen time when stored
            updated=max(updated or published or self.now, published or self.now),
            category=self.source.category, tags=tags, html=html, summary="",
            image=image, enclosures=enclosures, source=self.source.url,
            base_url=base_url, drop_selectors=self.source.drop_selectors,
        )

    # -- RSS / Atom / RDF (feedparser) ---------------------------------------------

    def _xml_entry(self, raw: Any, feed_url: str) -> Entry:
        content, base = _xml_content(raw)
        base = absolute_url(base, feed_url) if base else feed_url
        base = base or feed_url
        link = _link(raw.get("link"), base)
        title_detail = raw.get("title_detail") or {}
        title = raw.get("title") or ""
        title = html_to_text(title) if title_detail.get("type") in _HTML_TYPES \
            else clean_line(title)
        enclosures = tuple(_xml_enclosures(raw, base))
        tags = tuple(clean_line(t.get("term") or t.get("label") or "")
                     for t in raw.get("tags") or [])
        return self._make(
            raw_id=raw.get("id"), title=title, link=link,
            author=clean_line(raw.get("author") or "") or None,
            published=self._date(raw.get("published_parsed"), raw.get("created_parsed")),
            updated=self._date(_updated(raw)),
            tags=tuple(t for t in tags if t), html=content,
            image=_xml_image(raw, base, enclosures), enclosures=enclosures, base_url=base,
        )

    # -- JSON Feed -----------------------------------------------------------------

    def _json_entry(self, item: JSONItem, base: str) -> Entry:
        if item.content_html is not None:
            content = item.content_html
        else:
            content = _text_to_html(item.content_text or "")
        link = _link(item.url, base)
        enclosures = tuple(
            Enclosure(url, mime, size) for url, mime, size in
            ((absolute_url(u, base), m, s) for u, m, s in item.attachments) if url)
        image = None
        if item.image and (url := absolute_url(item.image, base)):
            image = Image(url, image_type_from_url(url))
        return self._make(
            raw_id=item.id, title=clean_line(item.title or ""), link=link,
            author=", ".join(item.authors) or None,
            published=self._date(item.date_published), updated=self._date(item.date_modified),
            tags=tuple(clean_line(t) for t in item.tags if clean_line(t)), html=content,
            image=image or _image_from_enclosures(enclosures), enclosures=enclosures,
            base_url=base,
        )


def _updated(raw: Any) -> Any:
    # feedparser maps a missing updated_parsed to published_parsed, with a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return raw.get("updated_parsed")


def _xml_content(raw: Any) -> tuple[str, str | None]:
    """The fullest body (content, else summary) as HTML, and its xml:base."""
    details = list(raw.get("content") or [])
    details.sort(key=lambda d: d.get("type") not in _HTML_TYPES)  # html first, stable
    summary = raw.get("summary_detail")
    if summary is not None:
        details.append(summary)
    for detail in details:
        value = detail.get("value") or ""
        if value.strip():
            if detail.get("type") not in _HTML_TYPES:
                value = _text_to_html(value)
            return value, detail.get("base")
    return "", summary.get("base") if summary is not None else None


def _text_to_html(text: str) -> str:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return "".join(f"<p>{htmllib.escape(p)}</p>" for p in paragraphs)


def _link(value: str | None, base: str) -> str | None:
    if not value:
        return None
    value = value.strip()
    if PLAIN_HTTP_URL.match(value):
        return value
    try:
        return absolute_url(urljoin(base, value), None)
    except ValueError:  # urljoin: "Invalid IPv6 URL" and the like
        return None


def _has_text(html: str) -> bool:
    """Whether anything but whitespace is left once every tag, a '<' to the next '>',
    is removed (as `re.sub("<[^>]*>", "", html).strip()` tells, but stopping at the
    first text: ~14 us less an entry). A cheap test; the sanitiser does the real work."""
    position = 0
    # (str.find, not a regex: after a '<' with no '>' a regex tries every later '<'
    # to the end, so 1 MB of '<' would take minutes)
    while (start := html.find("<", position)) >= 0 and (end := html.find(">", start)) >= 0:
        if start > position and not html[position:start].isspace():
            return True
        position = end + 1
    return bool(html[position:].strip())


def _xml_enclosures(raw: Any, base: str) -> Iterator[Enclosure]:
    seen: set[str] = set()
    for enc in raw.get("enclosures") or []:
        url = absolute_url(enc.get("href") or enc.get("url") or "", base)
        mime = (enc.get("type") or "").strip()
        if not url or url in seen:
            continue
        mime = mime or image_type_from_url(url) or ""
        if not mime:
            continue  # RSS <enclosure> needs a type; the body still links it
        seen.add(url)
        yield Enclosure(url, mime, _int(enc.get("length")))


def _xml_image(raw: Any, base: str, enclosures: tuple[Enclosure, ...]) -> Image | None:
    for media in raw.get("media_content") or []:
        url = absolute_url(media.get("url") or "", base)
        mime = media.get("type") or ""
        if url and (media.get("medium") == "image" or mime.startswith("image/")):
            return Image(url, mime or image_type_from_url(url), _int(media.get("fileSize")))
    for thumb in raw.get("media_thumbnail") or []:
        url = absolute_url(thumb.get("url") or "", base)
        if url:
            return Image(url, image_type_from_url(url))
    return _image_from_enclosures(enclosures)


def _image_from_enclosures(enclosures: tuple[Enclosure, ...]) -> Image | None:
    for enc in enclosures:
        if enc.mime_type.startswith("image/"):
            return Image(enc.url, enc.mime_type, enc.length)
    return None


def _int(value: Any) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return 0
    return number if number > 0 else 0

"""Atom 1.0 and RSS 2.0 through feedgen, with its traps fixed in this one module.

feedgen 1.0.0 (unmaintained) is used to build each element, then corrected:
- Atom entry `<link>`s lose every attribute (a shadowed variable), so an enclosure
  turns into a second alternate link: entry links are rebuilt here.
- `updated`/`lastBuildDate` default to now: always set from the entries (stable).
- RSS channel `<link>` is whatever link came last: self first, alternate last.
- RSS `<author>` must be an e-mail address: names go to `dc:creator` instead.
Each entry is rendered once per format and the bytes are spliced into every feed
that holds it (a post sits in one feed per ancestor node). Entries are written by
entry_xml, which produces these feedgen paths' bytes directly (they stay as its
reference and its fallback); the feed heads are feedgen's, made once as templates.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from datetime import UTC, datetime
from xml.sax.saxutils import escape as xml_escape

from feedgen.entry import FeedEntry
from feedgen.feed import FeedGenerator
from feedgen.util import formatRFC2822
from lxml import etree

from aggregator import PROJECT_URL, __version__
from aggregator.config import Config
from aggregator.ids import published_id
from aggregator.model import Entry, changed
from aggregator.writers import entry_xml
from aggregator.writers.parts import Parts

ATOM_NS = "http://www.w3.org/2005/Atom"
MEDIA_NS = "http://search.yahoo.com/mrss/"
CONTENT_NS = "http://purl.org/rss/1.0/modules/content/"
DC_NS = "http://purl.org/dc/elements/1.1/"
# A feed with no entries still needs an `updated`: a fixed instant keeps it stable.
EMPTY_FEED_UPDATED = datetime(2000, 1, 1, tzinfo=UTC)

_ATOM_SCOPE: dict[str | None, str] = {None: ATOM_NS, "media": MEDIA_NS}
_RSS_SCOPE: dict[str | None, str] = {"media": MEDIA_NS, "content": CONTENT_NS, "dc": DC_NS,
                                     "atom": ATOM_NS}


def _serialise_in_scope(element: etree._Element, scope: dict[str | None, str]) -> bytes:
    """The element's XML with the namespace declarations the feed root already makes
    removed from its start tag (they are in scope once spliced into the feed)."""
    wrapper = etree.Element("wrapper", nsmap=scope)
    wrapper.append(element)
    text: str = etree.tostring(element, encoding="unicode")
    end = text.index(">")  # attribute values escape '>', so this ends the start tag
    head = text[:end]
    for prefix, uri in scope.items():
        head = head.replace(f' xmlns:{prefix}="{uri}"' if prefix else f' xmlns="{uri}"', "")
    return (head + text[end:] + "\n").encode("utf-8")


# Placeholders for the feed-head templates: plain ASCII that no title, URL or date
# produced by feedgen for these fields can contain by accident.
_TITLE = "aggregator-placeholder-title-5f0c"
_URL = "https://aggregator-placeholder.invalid/self-5f0c"
_PLACEHOLDER_DATE = datetime(1999, 12, 31, 23, 59, 58, tzinfo=UTC)


class FeedRenderer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._templates: dict[str, bytes] = {}

    # -- entries -------------------------------------------------------------

    def _feed_entry(self, entry: Entry) -> FeedEntry:
        fe = FeedEntry()
        fe.id(entry.id)
        fe.title(entry.title)
        fe.updated(entry.updated)
        # feedgen's pubDate *is* Atom's published: an undated entry gets one in RSS
        # (its stable first-seen time, for ordering) but none in Atom.
        if entry.published is not None:
            fe.published(entry.published)
        if entry.author:
            fe.author({"name": entry.author})
        if entry.summary:
            fe.summary(entry.summary)
        for term in entry_xml.categories(entry):
            fe.category({"term": term})
        return fe

    @staticmethod
    def _add_media(element: etree._Element, entry: Entry) -> None:
        """media:content + media:thumbnail, whether or not the type is known.
        Not feedgen's: it wraps one media:content in a media:group, which the
        validator rejects (a group needs alternatives)."""
        if entry.image is None:
            return
        content = etree.SubElement(element, f"{{{MEDIA_NS}}}content")
        content.set("url", entry.image.url)
        content.set("medium", "image")
        if entry.image.mime_type:
            content.set("type", entry.image.mime_type)
            if entry.image.length:
                content.set("fileSize", str(entry.image.length))
        etree.SubElement(element, f"{{{MEDIA_NS}}}thumbnail").set("url", entry.image.url)

    def entry_pair(self, entry: Entry) -> tuple[bytes, bytes]:
        """(atom_entry, rss_entry), made together."""
        entry = self.with_published_id(entry)
        fast = entry_xml.entry_pair(entry, self.config.full_content)
        return fast if fast is not None else (self.feedgen_atom_entry(entry),
                                              self.feedgen_rss_entry(entry))

    def with_published_id(self, entry: Entry) -> Entry:
        """An id validators reject (`urn:uuid:` without a UUID, "123", a tag: with an
        upper-case authority) is published as a tag: URI made from it."""
        published = published_id(entry.id, self.config.site_host, self.config.id_date)
        return entry if published == entry.id else changed(entry, id=published)

    def feedgen_atom_entry(self, entry: Entry) -> bytes:
        """The reference for entry_xml.atom_entry (tests hold them equal)."""
        fe = self._feed_entry(entry)
        # Atom needs content or an alternate link; without a link, content it is.
        if entry.html and (self.config.full_content or not entry.link):
            fe.content(entry.html, type="html")
        elif not entry.link:
            fe.content(entry.summary or entry.title, type="text")
        if entry.link:  # feedgen insists on it; rebuilt below with its attributes
            fe.link(href=entry.link)
        element = fe.atom_entry(extensions=True)
        for link in element.findall("link"):
            element.remove(link)
        anchor = element.find("content")
        position = list(element).index(anchor) + 1 if anchor is not None else len(element)
        links = []
        if entry.link:
            links.append({"rel": "alternate", "type": "text/html", "href": entry.link})
        for enclosure in self._enclosures(entry):
            links.append({"rel": "enclosure", **enclosure})
        for offset, attributes in enumerate(links):
            link = etree.Element("link")
            for key, value in attributes.items():
                link.set(key, value)
            element.insert(position + offset, link)
        self._add_media(element, entry)
        return _serialise_in_scope(element, _ATOM_SCOPE)

    def feedgen_rss_entry(self, entry: Entry) -> bytes:
        """The reference for entry_xml.rss_entry (tests hold them equal)."""
        fe = self._feed_entry(entry)
        if entry.published is None:
            fe.pubDate(entry.updated)
        if entry.link:
            fe.link(href=entry.link)
        fe.guid(entry.id, permalink=False)
        # RSS <description> is HTML: escape the plain-text summary so "A & B" stays text.
        fe.description(html.escape(entry.summary or entry.title, quote=False))
        if self.config.full_content and entry.html:
            # Escaped text, not CDATA: lxml refuses CDATA holding "]]>", which hostile
            # attribute values can carry.
            fe.content(entry.html)
        element = fe.rss_entry(extensions=True)
        for enclosure in self._enclosures(entry)[:1]:  # RSS allows one per item
            old = element.find("enclosure")
            if old is not None:
                element.remove(old)
            node = etree.SubElement(element, "enclosure")
            node.set("url", enclosure["href"])
            node.set("length", enclosure["length"])
            node.set("type", enclosure["type"])
        if entry.author:
            creator = etree.SubElement(element, f"{{{DC_NS}}}creator")
            creator.text = entry.author
        self._add_media(element, entry)
        return _serialise_in_scope(element, _RSS_SCOPE)

    @staticmethod
    def _enclosures(entry: Entry) -> list[dict[str, str]]:
        return [{"href": url, "type": mime, "length": length}
                for url, mime, length in entry_xml.enclosures(entry)]

    # -- feeds ---------------------------------------------------------------

    def _head(self, title: str, self_url: str, updated: datetime, kind: str) -> FeedGenerator:
        fg = FeedGenerator()
        fg.load_extension("media")
        fg.id(self_url)
        fg.title(title)
        fg.updated(updated)
        fg.lastBuildDate(updated)
        fg.author({"name": self.config.site_title})
        fg.generator("aggregator", version=__version__, uri=PROJECT_URL)
        mime = "application/atom+xml" if kind == "atom" else "application/rss+xml"
        fg.link(href=self_url, rel="self", type=mime)  # self first: RSS keeps the last
        fg.link(href=self.config.site_url, rel="alternate", type="text/html")
        fg.description(f"{title}: every entry, newest first")
        return fg

    def _template(self, kind: str) -> bytes:
        """feedgen's head for `kind` with placeholders, made once per renderer: building
        a FeedGenerator for each of 1,600 feeds would cost a quarter of a publish."""
        template = self._templates.get(kind)
        if template is None:
            fg = self._head(_TITLE, _URL, _PLACEHOLDER_DATE, kind)
            template = fg.atom_str(pretty=False) if kind == "atom" else fg.rss_str(pretty=False)
            if kind == "rss":
                # feedgen declares dc only when its own extension is loaded: add it.
                for prefix, uri in (("content", CONTENT_NS), ("dc", DC_NS)):
                    if f"xmlns:{prefix}=".encode() not in template[:template.index(b"<channel")]:
                        template = template.replace(
                            b"<rss ", f'<rss xmlns:{prefix}="{uri}" '.encode(), 1)
            self._templates[kind] = template
        return template

    def _fill(self, kind: str, title: str, self_url: str, updated: datetime) -> bytes:
        """The template with this feed's values, escaped as lxml would escape them."""
        head = self._template(kind).decode("utf-8")
        head = head.replace(_TITLE, xml_escape(title))
        head = head.replace(_URL, xml_escape(self_url, {'"': "&quot;"}))
        head = head.replace(_PLACEHOLDER_DATE.isoformat(), updated.isoformat())
        head = head.replace(formatRFC2822(_PLACEHOLDER_DATE), formatRFC2822(updated))
        return head.encode("utf-8")

    def atom_feed(self, title: str, self_url: str, updated: datetime,
                  rendered: Parts, extra: bytes = b"") -> Parts:
        """The feed as parts to write one after the other: `rendered`, the entries'
        bytes, spliced into the head (never joined into one string). `updated`: the
        newest of its entries' (EMPTY_FEED_UPDATED without any). `extra`: head
        elements written right after the self link (writers/links.py: hub, archive links)."""
        return _splice(_after_self(self._fill("atom", title, self_url, updated), extra),
                       b"</feed>", rendered)

    def rss_feed(self, title: str, self_url: str, updated: datetime,
                 rendered: Parts, extra: bytes = b"") -> Parts:
        return _splice(_after_self(self._fill("rss", title, self_url, updated), extra),
                       b"</channel>", rendered)


def _after_self(head: bytes, extra: bytes) -> bytes:
    """`extra` inserted after the head's self link (the URL in it is escaped: its
    attributes hold no quote, so the first `/>` after `rel="self"` ends it)."""
    if not extra:
        return head
    end = head.index(b"/>", head.index(b' rel="self"')) + 2
    return head[:end] + extra + head[end:]


def _splice(head: bytes, closing: bytes, rendered: Parts) -> Parts:
    cut = head.rindex(closing)
    start, end = head[:cut] + b"\n", head[cut:] + b"\n"

    def parts() -> Iterator[bytes]:
        yield start
        yield from rendered.source()
        yield end
    return Parts(parts, len(start) + rendered.size + len(end))

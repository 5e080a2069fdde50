"""Bytes + response headers → a list of raw entries, from RSS/Atom/RDF or JSON Feed.

feedparser does the XML (it resists entity bombs and sniffs encodings); its sanitiser
and URI resolution are off because we do both once, later, with nh3 and our URL code.
Plain RSS 2.0 and Atom 1.0 take lean.py's faster path to the same result.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import feedparser

from aggregator.sources.upstream.feedparser_private import PREFERRED_XML_PARSERS
from aggregator.sources.upstream.jsonfeed import (
    JSONFeed,
    JSONFeedError,
    looks_like_json,
    parse_json_feed,
)
from aggregator.sources.upstream.lean import parse_lean

log = logging.getLogger(__name__)

# Tried first by feedparser (see buffered_expat.py); libxml2 is never installed here.
_PARSER = "aggregator.sources.upstream.buffered_expat"
if _PARSER not in PREFERRED_XML_PARSERS:
    PREFERRED_XML_PARSERS.insert(0, _PARSER)

_HTML_PAGE = re.compile(rb"<(!doctype\s+html|html[\s>]|head[\s>]|body[\s>])", re.IGNORECASE)
# Whitespace before the XML declaration (a template's stray newline: common). XML says
# the declaration comes first, so feedparser's strict parser refuses the feed and its
# loose parser reads it, slowly and with entities decoded its own way.
_LATE_DECLARATION = re.compile(rb"(\xef\xbb\xbf)?[ \t\r\n]+(?=<\?xml[ \t\r\n])")


class ParseError(Exception):
    """Nothing usable in the body; the message is meant for users."""


@dataclass
class ParsedFeed:
    kind: str  # feedparser's version ("rss20", "atom10", …) or "json1"/"json11"
    url: str  # where it was fetched from (after redirects): the base for relative URLs
    title: str = ""
    xml: Any = None  # feedparser's result, for kind != json
    json: JSONFeed | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # entries skipped, and why

    @property
    def entry_count(self) -> int:
        if self.json is not None:
            return len(self.json.items)
        return len(self.xml.entries) if self.xml is not None else 0


def parse_feed(body: bytes, headers: dict[str, str], url: str) -> ParsedFeed:
    if not body.strip():
        raise ParseError("empty response body")
    content_type = headers.get("content-type", "")
    if looks_like_json(body, content_type):
        try:
            doc = parse_json_feed(body)
        except JSONFeedError as exc:
            raise ParseError(str(exc)) from exc
        kind = "json11" if doc.version.rstrip("/").endswith("1.1") else "json1"
        parsed = ParsedFeed(kind, url, doc.title, json=doc)
        parsed.warnings += [f"JSON Feed {reason}; dropped" for reason in doc.dropped]
        return parsed
    late = _LATE_DECLARATION.match(body)
    if late is not None:  # read as the document it is without the whitespace
        body = (late.group(1) or b"") + body[late.end():]
    parsed = _parse_xml(body, content_type, url)
    if late is not None:
        parsed.warnings.insert(0, "whitespace before the XML declaration (not well-formed"
                                  " XML); read without it")
    return parsed


def _parse_xml(body: bytes, content_type: str, url: str) -> ParsedFeed:
    try:
        lean = parse_lean(body, content_type or "application/xml", url)
    except Exception:  # a bug of the fast path must cost speed, never the feed
        log.warning("%s: the lean parser failed; feedparser reads it", url, exc_info=True)
        lean = None
    if lean is not None and lean.entries:  # no entries: feedparser's messages say why
        return ParsedFeed(lean.version, url, str(lean.feed.get("title", "")), xml=lean)
    result = feedparser.parse(
        io.BytesIO(body),  # a bytes argument would be tried as a file name first
        response_headers={"content-type": content_type or "application/xml",
                          "content-location": url},
        sanitize_html=False, resolve_relative_uris=False,
    )
    entries = result.get("entries") or []
    version = result.get("version") or ""
    problem = result.get("bozo_exception") if result.get("bozo") else None
    if not entries:
        if not version or problem is not None and not result.get("feed"):
            if _HTML_PAGE.search(body[:4096]):
                raise ParseError("not a feed: the server sent an HTML page")
            raise ParseError(f"not a feed: {_describe(problem) if problem else 'unknown format'}")
        if problem is not None:
            raise ParseError(f"malformed feed with no entries: {_describe(problem)}")
    parsed = ParsedFeed(version or "unknown", url, str(result.feed.get("title", "")), xml=result)
    if problem is not None:
        # reader drops such feeds whole; we keep what feedparser recovered and say so.
        parsed.warnings.append(f"{_describe(problem)}; used the {len(entries)} entries "
                               f"recovered")
    return parsed


def _describe(exc: object) -> str:
    name = type(exc).__name__
    if name == "CharacterEncodingOverride":
        return f"wrong encoding declared ({exc})"
    if name == "NonXMLContentType":
        return f"served with a non-XML content type ({exc})"
    text = str(exc).strip() or name
    return f"malformed XML ({text})" if "SAX" in name or "Parse" in name else text

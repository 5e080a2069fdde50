"""feedparser's internals that we use, all in this one module.

feedparser's public interface is `feedparser.parse`. The lean parser (lean.py) gives
what `parse` would without running it, so it calls feedparser's own helpers (date
parser, encoding detection, URL joining, text fixes, author and tag handling) and asks
its parser class which elements it handles; parse.py puts our expat parser first in
feedparser's list of XML parsers. None of these names is public: feedparser is pinned
to one version in pyproject.toml, and tests/test_feedparser_private.py checks every
name here, its signature and the behaviour we rely on, and names what an upgrade
changed. No other module imports from feedparser's submodules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import feedparser.api
from feedparser.datetimes import _parse_date
from feedparser.encodings import convert_to_utf8
from feedparser.html import _cp1252
from feedparser.mixin import _FeedParserMixin
from feedparser.namespaces.georss import (
    _parse_georss_box,
    _parse_georss_line,
    _parse_georss_point,
    _parse_georss_polygon,
)
from feedparser.urls import _urljoin, make_safe_absolute_uri

__all__ = ["CAN_BE_RELATIVE_URI", "CP1252", "GEORSS", "HTML_TYPES", "NAMESPACES",
           "PREFERRED_XML_PARSERS", "add_tag", "convert_to_utf8", "ends_xhtml_specially",
           "enforce_href", "has_handler", "looks_like_html", "make_safe_absolute_uri",
           "map_content_type", "parse_date", "sync_author_detail", "urljoin"]

# The module names feedparser tries, in order, for its strict XML parser (the list
# itself: inserting into it is how a parser is added).
PREFERRED_XML_PARSERS: list[str] = feedparser.api.PREFERRED_XML_PARSERS

parse_date: Callable[[str], Any] = _parse_date  # a date string -> struct_time or None
urljoin: Callable[[str, str], str] = _urljoin
CP1252: dict[int, str] = _cp1252  # str.translate table: C1 controls read as cp1252
GEORSS: dict[str, Callable[[str], Any]] = {
    "georss:point": _parse_georss_point, "georss:line": _parse_georss_line,
    "georss:polygon": _parse_georss_polygon, "georss:box": _parse_georss_box}

_MIXIN: Any = _FeedParserMixin
NAMESPACES: dict[str, str] = _MIXIN.namespaces  # namespace URI -> standard prefix
HTML_TYPES: set[str] = _MIXIN.html_types
CAN_BE_RELATIVE_URI: set[str] = _MIXIN.can_be_relative_uri  # keys resolved as URIs
map_content_type: Callable[[str], str] = _MIXIN.map_content_type
looks_like_html: Callable[[str], bool] = _MIXIN.looks_like_html
enforce_href: Callable[[dict[str, str]], None] = _MIXIN._enforce_href  # url/uri -> href


def has_handler(name: str) -> bool:
    """feedparser has a start or end handler for the element it names `name`."""
    return hasattr(_MIXIN, "_start_" + name) or hasattr(_MIXIN, "_end_" + name)


def ends_xhtml_specially(name: str) -> bool:
    """feedparser ends this XHTML element its own way inside xhtml content."""
    return hasattr(_MIXIN, "_end_xhtml_" + name)


def sync_author_detail(entry: dict[str, Any]) -> None:
    """feedparser's sync of an entry's `author` and `author_detail` (name and email
    out of "name (email)" and back)."""
    _MIXIN._sync_author_detail(_Context(entry))


def add_tag(entry: dict[str, Any], term: str | None, scheme: str | None,
            label: str | None) -> None:
    """feedparser's way of adding a category to an entry's `tags`."""
    _MIXIN._add_tag(_Context(entry), term, scheme, label)


class _Context:
    """Stands in for feedparser's parser in the two calls above: they ask it only for
    the dict being filled."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry

    def _get_context(self) -> dict[str, Any]:
        return self.entry

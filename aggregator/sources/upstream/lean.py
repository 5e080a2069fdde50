"""The fast path of upstream parsing: RSS 2.0, RSS 1.0 and Atom 1.0 read with lxml into
what feedparser gives for the keys the Normaliser reads.

feedparser runs Python handlers for every SAX event of a feed: ~1 ms an entry here,
most of a first poll's CPU. This path builds the tree in C and looks at each entry's
elements once. It takes a feed only when it knows what feedparser would do with every
element of its entries, and does exactly that (the same encoding detection, date
parser, URL joining, HTML sniffing and text fixes, all called from feedparser itself,
through feedparser_private.py).
Anything else returns None and feedparser reads the feed: RSS 0.9x, a
DOCTYPE, XHTML or base64 content, a feed feedparser would flag as malformed (bozo) or
that lxml will not parse, an element it does not know in an entry.

tests/test_upstream_lean.py holds both paths equal, entry by entry after normalising,
on every corpus feed and on thousands of generated hostile ones.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

from aggregator.sanitize.html import PLAIN_HTTP_URL
from aggregator.sources.upstream.feedparser_private import (
    CAN_BE_RELATIVE_URI,
    CP1252,
    GEORSS,
    HTML_TYPES,
    NAMESPACES,
    add_tag,
    convert_to_utf8,
    ends_xhtml_specially,
    enforce_href,
    has_handler,
    looks_like_html,
    make_safe_absolute_uri,
    map_content_type,
    parse_date,
    sync_author_detail,
    urljoin,
)

_STANDARD_PREFIX = {uri.lower(): prefix for uri, prefix in NAMESPACES.items()}
_USERLAND = "http://backend.userland.com/rss"
_ATOM = "http://www.w3.org/2005/Atom"
_DECLARATIONS = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_QUERY_ENTITY = re.compile("&([A-Za-z0-9_]+);")
_C1 = re.compile("[\x80-\x9f]")
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}RDF"
_RSS10 = b"http://purl.org/rss/1.0/"
_OTHER_VERSIONS = re.compile(
    rb"http://www\.w3\.org/2005/atom|http://my\.netscape\.com/rdf/simple/0\.9/", re.IGNORECASE)
# Every element named item or entry, in any case and namespace (counted in C).
_ITEMS_ANYWHERE = ("count(//*[translate(local-name(), 'ITEMNRY', 'itemnry') = 'item' or "
                   "translate(local-name(), 'ITEMNRY', 'itemnry') = 'entry'])")
# Content types feedparser keeps as text; any other one it base64-decodes.
_TEXT_TYPES = {"text/plain", "text/html"}
# Keys the Normaliser reads: an element feedparser would store under one of these
# names without a handler of its own must not be taken for harmless.
_READ_KEYS = {"link", "title", "title_detail", "tags", "author", "id", "published_parsed",
              "created_parsed", "updated_parsed", "content", "summary", "summary_detail",
              "enclosures", "links", "media_content", "media_thumbnail"}
# Elements with a feedparser handler whose effect never reaches those keys (read in
# feedparser 6.0's handlers): taken as long as they hold no elements of their own
# ("contributor": only name, email and uri).
_HARMLESS = {"rights", "itunes:explicit", "contributor"}
_XHTML_TYPE = "application/xhtml+xml"
_XHTML_NS = "{http://www.w3.org/1999/xhtml}"
_XLINK = "http://www.w3.org/1999/xlink"  # feedparser writes its declaration as an attribute
_QUOTE = {'"': "&quot;"}


class _Unsupported(Exception):
    """Something this path does not do exactly as feedparser: feedparser reads it."""


@dataclass
class LeanFeed:
    """Shaped like the parts of feedparser's result that parse.py and the Normaliser
    use (`entries` of dicts, `feed`, `version`)."""

    version: str
    feed: dict[str, Any] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)


def parse_lean(body: bytes, content_type: str, url: str) -> LeanFeed | None:
    """The feed as feedparser would give it, or None when feedparser must read it."""
    result: dict[str, Any] = {}
    headers = {"content-type": content_type, "content-location": url}
    data = convert_to_utf8(headers, body, result)  # also decides bozo for the encoding
    if result.get("bozo") or not result.get("encoding"):
        return None
    start = re.search(rb"<\w", data)
    if start is None or _DECLARATIONS.search(data, 0, start.start()):
        return None
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        return None
    if len(parser.error_log) or root.getroottree().docinfo.doctype:
        return None
    if root.xpath("boolean(//@mode)"):
        return None  # base64 content
    # RSS 1.0's version is the first feed namespace declared: plain only without the
    # others anywhere (feedparser would call it atom10 and stop sniffing HTML titles).
    rss10 = root.tag == _RDF and _RSS10 in data and not _OTHER_VERSIONS.search(data)
    try:
        return _Reader().read(root, url, rss10)
    except _Unsupported:
        return None


def _name(element: Any) -> str:
    """feedparser's name for an element: its namespace's standard prefix, else the
    prefix the document gave it, and the local name in lower case."""
    key = (element.tag, element.prefix)
    name = _NAMES.get(key)
    if name is None:
        if len(_NAMES) >= 4096:  # a hostile feed's made-up tags must not pile up
            _NAMES.clear()
        name = _NAMES[key] = _name_of(element)
    return name


_NAMES: dict[tuple[str, str | None], str] = {}  # a few dozen distinct tags in practice


def _name_of(element: Any) -> str:
    qname = etree.QName(element)
    namespace: str | None = qname.namespace
    local = str(qname.localname).lower()
    if namespace is None:
        return local
    if _USERLAND in namespace.lower():
        namespace = _USERLAND
    prefix = _STANDARD_PREFIX.get(namespace.lower())
    if prefix is None:
        prefix = element.prefix or ""
    return f"{prefix.lower()}:{local}" if prefix else local


def _attributes(element: Any) -> dict[str, str]:
    """feedparser's attribute dict: a namespaced name gets its namespace's standard
    prefix, or none when the namespace is not one feedparser knows; names are in lower
    case, and so are the values of rel and type."""
    out: dict[str, str] = {}
    for key, value in element.attrib.items():
        qname = etree.QName(key)
        name = str(qname.localname).lower()
        if qname.namespace is not None:
            prefix = _STANDARD_PREFIX.get(str(qname.namespace).lower())
            if prefix:
                name = f"{prefix}:{name}"
        out[name] = value.lower() if name in ("rel", "type") else value
    if "mode" in out:
        raise _Unsupported  # base64 content
    return out


def _based(base: str, attrs: dict[str, str]) -> str:
    """An element's base URI, as feedparser tracks it: its xml:base (or base)
    joined to its parent's, when that is a URI of a scheme feedparser accepts."""
    return _join_base(base, attrs.get("xml:base", attrs.get("base")) or base)


@functools.lru_cache(maxsize=256)
def _join_base(base: str, own: str) -> str:
    # cached: every element of a feed asks again with the same two
    if base:
        return str(make_safe_absolute_uri(base, own) or base)
    return str(urljoin(base, own))


def _text(element: Any) -> str:
    if len(element):
        raise _Unsupported  # child elements, comments or instructions inside
    return element.text or ""


def _fixed(text: str) -> str:
    """feedparser's last steps for text it stores: UTF-8 read as Latin-1 repaired, and
    C1 controls mapped as cp1252 would. Both leave ASCII as it is, and str.translate
    costs a dict lookup a character: skipped when there is nothing to map."""
    if text.isascii():
        return text
    try:
        text = text.encode("iso-8859-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    return text.translate(CP1252) if _C1.search(text) else text


def _xhtml_content(content: Any) -> str:
    """An Atom `type="xhtml"` content as feedparser serialises it: a start tag
    `<name attr="value">` (name and attribute names in lower case, rel and type values
    too, attributes in document order) and an end tag `</name>` for every element (an
    empty one too), text escaped, comments and processing instructions dropped; then
    the one enclosing <div> removed when everything else is inside it, and the ends
    stripped. Only plain XHTML is taken: an element of another namespace, a
    namespaced attribute, attribute names that differ only in case, an xlink
    declaration or an element feedparser ends specially (body) go to feedparser."""
    pieces: list[str] = []
    if content.text:
        pieces.append(escape(content.text))
    for child in content:
        _serialise_xhtml(child, pieces)
    # feedparser's pop(): the same steps on the same pieces
    while len(pieces) > 1 and not pieces[-1].strip():
        del pieces[-1]
    while len(pieces) > 1 and not pieces[0].strip():
        del pieces[0]
    if pieces and (pieces[0] == "<div>" or pieces[0].startswith("<div ")) \
            and pieces[-1] == "</div>":
        depth = 0
        for piece in pieces[:-1]:
            if piece.startswith("</"):
                depth -= 1
                if depth == 0:
                    break
            elif piece.startswith("<") and not piece.endswith("/>"):
                depth += 1
        else:
            pieces = pieces[1:-1]
    return "".join(pieces).strip()


def _serialise_xhtml(element: Any, pieces: list[str]) -> None:
    if isinstance(element.tag, str):
        if not element.tag.startswith(_XHTML_NS):
            raise _Unsupported
        name = element.tag[len(_XHTML_NS):].lower()
        if ends_xhtml_specially(name) or _XLINK in element.nsmap.values():
            raise _Unsupported
        start = ["<", name]
        seen = set()
        for key, value in element.attrib.items():
            if key.startswith("{") or key.lower() in seen:
                raise _Unsupported
            key = key.lower()
            seen.add(key)
            if key in ("rel", "type"):
                value = value.lower()
            start.append(f' {key}="{escape(value, _QUOTE)}"')
        start.append(">")
        pieces.append("".join(start))
        if element.text:
            pieces.append(escape(element.text))
        for child in element:
            _serialise_xhtml(child, pieces)
        pieces.append(f"</{name}>")
    elif not isinstance(element, etree._Comment | etree._ProcessingInstruction):
        raise _Unsupported  # an entity reference left unresolved
    if element.tail:
        pieces.append(escape(element.tail))


def _child_elements(parent: Any) -> Iterator[Any]:
    """The elements inside `parent`; comments are skipped (feedparser's SAX handler never
    sees them), and anything else (an instruction, an entity) goes to feedparser."""
    for child in parent:
        if isinstance(child.tag, str):
            yield child
        elif not isinstance(child, etree._Comment):
            raise _Unsupported


def _handled(name: str) -> bool:
    key = name.replace(":", "_")
    return has_handler(key)


class _Reader:
    def __init__(self) -> None:
        self.base = ""  # of the element being read
        self.atom = False

    def read(self, root: Any, url: str, rss10: bool = False) -> LeanFeed:
        name = _name(root)
        if root.tag == _RDF and rss10:
            container, version = root, "rss10"  # RSS 1.0: items beside the channel
        elif name == "rss" and root.get("version", "").startswith("2."):
            channels = [c for c in root if isinstance(c.tag, str) and _name(c) == "channel"]
            if len(channels) != 1:
                raise _Unsupported
            container, version = channels[0], "rss20"
        elif root.tag == f"{{{_ATOM}}}feed":
            container, version, self.atom = root, "atom10", True
        else:
            raise _Unsupported
        base = _based(_based(url, _attributes(root)), _attributes(container)) \
            if container is not root else _based(url, _attributes(root))
        items = [c for c in container if isinstance(c.tag, str)
                 and _name(c) in ("item", "entry")]
        if root.xpath(_ITEMS_ANYWHERE) != len(items):
            raise _Unsupported  # entries feedparser may find elsewhere
        feed = LeanFeed(version, self._feed_fields(container))
        feed.entries = [self._entry(item, base) for item in items]
        return feed

    def _feed_fields(self, container: Any) -> dict[str, Any]:
        """The two feed-level fields anyone reads: the title and RSS's ttl."""
        fields: dict[str, Any] = {}
        for child in container:
            if not isinstance(child.tag, str):
                continue
            name = _name(child)
            if name == "title" and "title" not in fields and not len(child):
                fields["title"] = _fixed((child.text or "").strip())
            elif name == "ttl" and not len(child):
                fields["ttl"] = _fixed((child.text or "").strip())
        return fields

    # -- one entry -------------------------------------------------------------------

    def _entry(self, item: Any, base: str) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        attrs = _attributes(item)
        if "lastmod" in attrs or "href" in attrs:
            raise _Unsupported  # CDF
        base = _based(base, attrs)
        if attrs.get("rdf:about"):
            entry["id"] = attrs["rdf:about"]  # feedparser: as it is, not resolved
        state = {"title_locked": False, "has_content": False, "media_title": False}
        for child in _child_elements(item):
            self._nested(entry, state, _name(child), child, base)
        if "links" in entry:  # feedparser derives them from the links
            entry["enclosures"] = [{k: v for k, v in link.items() if k != "rel"}
                                   for link in entry["links"] if link["rel"] == "enclosure"]
        return entry

    def _element(self, entry: dict[str, Any], state: dict[str, bool], name: str,
                 element: Any, attrs: dict[str, str]) -> None:
        if name == "title":
            self._title(entry, state, element, attrs)
        elif name in ("description", "summary"):
            if "summary" in entry and not state["has_content"]:
                raise _Unsupported  # a second one: feedparser makes it content
            default = "text/html" if name == "description" else "text/plain"
            value, detail = self._content(element, attrs, default)
            entry["summary"] = value
            entry["summary_detail"] = detail
        elif name in ("content", "content:encoded"):
            self._body(entry, state, element, attrs,
                       "text/plain" if name == "content" else "text/html")
        elif name == "link":
            self._link(entry, state, element, attrs)
        elif name in ("guid", "id"):
            self._guid(entry, element, attrs)
        elif name in ("pubdate", "published", "issued", "dcterms:issued"):
            entry["published_parsed"] = parse_date(self._value(element, "published"))
        elif name in ("updated", "modified", "dc:date", "dcterms:modified", "lastbuilddate"):
            entry["updated_parsed"] = parse_date(self._value(element, "updated"))
        elif name in ("created", "dcterms:created"):
            entry["created_parsed"] = parse_date(self._value(element, "created"))
        elif name in ("author", "dc:creator", "dc:author"):
            self._author(entry, element)
        elif name in ("category", "dc:subject"):
            self._category(entry, element, attrs)
        elif name == "enclosure":
            _text(element)  # no elements inside
            self._enclosure(entry, attrs)
        elif name == "media:content":
            entry.setdefault("media_content", []).append(attrs)
            for inner in _child_elements(element):  # the two children we know
                inner_name = _name(inner)
                if inner_name == "media:title" and not len(inner):
                    self._media_title(entry, state, inner)
                elif inner_name == "media:thumbnail":
                    self._nested(entry, state, inner_name, inner, self.base)
                else:
                    raise _Unsupported
        elif name == "media:thumbnail":
            url = self._thumbnail_text(element)
            if url and "url" not in attrs:
                attrs["url"] = url
            entry.setdefault("media_thumbnail", []).append(attrs)
        elif name == "source":
            _text(element)
            state["title_locked"] = False  # feedparser resets its title depth here
        elif name in GEORSS:  # feedparser files the shape under "where": never read
            try:
                GEORSS[name](_text(element).strip())
            except _Unsupported:
                raise
            except Exception as exc:  # (feedparser would fail the same way: its call)
                raise _Unsupported from exc
        elif name in _HARMLESS:
            for inner in element:
                if isinstance(inner.tag, str) and (
                        name != "contributor" or _name(inner) not in ("name", "email", "uri")
                        or len(inner)):
                    raise _Unsupported
        elif _handled(name):
            raise _Unsupported  # feedparser does something with it that we do not
        else:
            # No handler: feedparser stores it under its own name, or its attributes.
            if len(element) or name.replace(":", "_") in _READ_KEYS:
                raise _Unsupported

    def _thumbnail_text(self, element: Any) -> str:
        """A media:thumbnail's text (feedparser reads it as the URL when there is no
        url attribute). Elements inside are taken when feedparser files them away
        under their own names (attributes, no handler, nothing inside) and the text
        around them is blank, so that the URL text is blank too."""
        if not len(element):
            return self._value(element, "url")
        if (element.text or "").strip():
            raise _Unsupported
        for inner in element:
            if (inner.tail or "").strip():
                raise _Unsupported
            if isinstance(inner, etree._Comment):
                continue
            if not isinstance(inner.tag, str) or len(inner) or not inner.attrib \
                    or (inner.text or "").strip():
                raise _Unsupported
            name = _name(inner)
            if _handled(name) or name.replace(":", "_") in _READ_KEYS:
                raise _Unsupported
            _attributes(inner)  # (base64 mode refused, as everywhere)
        return ""

    def _value(self, element: Any, key: str) -> str:
        """What feedparser's pop() makes of an element's text (URI keys resolved)."""
        text = _text(element).strip()
        if text and key in CAN_BE_RELATIVE_URI and not PLAIN_HTTP_URL.match(text):
            text = urljoin(self.base, text)  # (which gives a plain URL back as it is)
        return _fixed(text)

    def _content(self, element: Any, attrs: dict[str, str],
                 default_type: str) -> tuple[str, dict[str, Any]]:
        """A text construct: its value and detail (type, language, base, value)."""
        kind = map_content_type(attrs.get("type", default_type))
        if kind not in _TEXT_TYPES or "src" in attrs:
            raise _Unsupported  # xhtml, base64 or out-of-line content
        value = _text(element).strip()
        if not self.atom and kind == "text/plain" and looks_like_html(value):
            kind = "text/html"
        value = _fixed(value)
        return value, {"type": kind, "language": None, "base": self.base, "value": value}

    def _title(self, entry: dict[str, Any], state: dict[str, bool], element: Any,
               attrs: dict[str, str]) -> None:
        value, detail = self._content(element, attrs, "text/plain")
        if state["title_locked"]:
            return  # feedparser keeps the first non-empty title of an entry
        entry["title"], entry["title_detail"] = value, detail
        state["media_title"] = False
        if value:
            state["title_locked"] = True

    def _media_title(self, entry: dict[str, Any], state: dict[str, bool],
                     element: Any) -> None:
        """A media:title inside media:content is a title one level deeper: it never
        replaces a title the entry's own level stored, and locks nothing. Its detail
        (the type the normaliser reads) replaces the entry's all the same, unless a
        title is locked: feedparser checks the depth for the value only."""
        outer = self.base
        self.base = _based(outer, attrs := _attributes(element))
        value, detail = self._content(element, attrs, "text/plain")
        self.base = outer
        if state["title_locked"]:
            return
        if "title" not in entry or state["media_title"]:
            entry["title"] = value
            state["media_title"] = True
        entry["title_detail"] = detail

    def _body(self, entry: dict[str, Any], state: dict[str, bool], element: Any,
              attrs: dict[str, str], default_type: str) -> None:
        state["has_content"] = True
        if self.atom and default_type == "text/plain" and "src" not in attrs and \
                map_content_type(attrs.get("type", "")) == _XHTML_TYPE:
            value = _fixed(_xhtml_content(element))
            detail = {"type": _XHTML_TYPE, "language": None, "base": self.base,
                      "value": value}
        else:
            value, detail = self._content(element, attrs, default_type)
        entry.setdefault("content", []).append(detail)
        # feedparser copies text and HTML content to the summary (_content takes no
        # other type)
        entry.setdefault("summary", value)

    def _link(self, entry: dict[str, Any], state: dict[str, bool], element: Any,
              attrs: dict[str, str]) -> None:
        attrs.setdefault("rel", "alternate")
        attrs.setdefault("type", "application/atom+xml" if attrs["rel"] == "self"
                         else "text/html")
        enforce_href(attrs)
        if "href" in attrs:  # an empty one too: it resolves to the base
            attrs["href"] = urljoin(self.base, attrs["href"])
        links = entry.setdefault("links", [])
        links.append(attrs)
        if "href" in attrs:
            if attrs["rel"] == "alternate" and map_content_type(
                    attrs["type"]) in HTML_TYPES:
                entry["link"] = attrs["href"]
            if len(element):
                self._inside_link(entry, state, element)
            return
        value = self._value(element, "link")
        value = _QUERY_ENTITY.sub(r"&\g<1>", value.replace("&amp;", "&"))
        entry["link"] = value
        if value:
            links[-1]["href"] = value

    def _inside_link(self, entry: dict[str, Any], state: dict[str, bool],
                     element: Any) -> None:
        """Elements inside a link that has an href (BBC's feeds put an xhtml:link and
        media:content there): feedparser pushes nothing for such a link, so its
        children are handled as if they were the entry's own, and its text goes
        nowhere. Taken: media:content without a title, media:thumbnail, and
        elements feedparser has no handler for; anything else goes to feedparser."""
        for child in _child_elements(element):
            name = _name(child)
            if name == "media:content":
                if any(isinstance(inner.tag, str) and _name(inner) == "media:title"
                       for inner in child):
                    raise _Unsupported  # a title at another depth: not modelled here
            elif name != "media:thumbnail" and _handled(name):
                raise _Unsupported
            self._nested(entry, state, name, child, self.base)

    def _nested(self, entry: dict[str, Any], state: dict[str, bool], name: str,
                element: Any, outer: str) -> None:
        """An element handled as one of the entry's own, under its own base URI
        (`outer` joined with its xml:base), which is undone after it."""
        attrs = _attributes(element)
        self.base = _based(outer, attrs)
        self._element(entry, state, name, element, attrs)
        self.base = outer

    def _guid(self, entry: dict[str, Any], element: Any, attrs: dict[str, str]) -> None:
        is_link = attrs.get("ispermalink", "true") == "true"
        # resolved like a URI only when it is one (isPermaLink)
        value = self._value(element, "id") if is_link else _fixed(_text(element).strip())
        entry["id"] = value
        if is_link:
            entry.setdefault("link", value)

    def _author(self, entry: dict[str, Any], element: Any) -> None:
        """feedparser's author events in order: each child saved into the entry's last
        author after a sync of what came before (its sync can carry an earlier author's
        name into this one), then the element's own text, then a last sync."""
        authors: list[dict[str, Any]] = entry.setdefault("authors", [])
        authors.append({})
        for inner in element:
            if not isinstance(inner.tag, str):
                raise _Unsupported
            name = _name(inner)
            attrs = _attributes(inner)
            if name in ("name", "email"):
                value = _text(inner).strip()  # pushed without text fixes
            elif name in ("uri", "url", "homepage"):
                outer, self.base = self.base, _based(self.base, attrs)
                value, name = self._value(inner, "href"), "href"
                self.base = outer
            else:
                raise _Unsupported
            sync_author_detail(entry)
            authors[-1][name] = value
        own = "".join((element.text or "", *(inner.tail or "" for inner in element)))
        entry["author"] = _fixed(own.strip())
        sync_author_detail(entry)

    def _category(self, entry: dict[str, Any], element: Any, attrs: dict[str, str]) -> None:
        add_tag(entry, attrs.get("term"), attrs.get("scheme", attrs.get("domain")),
                attrs.get("label"))
        value = self._value(element, "category")
        if not value:
            return
        tags = entry["tags"]
        if tags and not tags[-1]["term"]:
            tags[-1]["term"] = value
        else:
            add_tag(entry, value, None, None)

    def _enclosure(self, entry: dict[str, Any], attrs: dict[str, str]) -> None:
        enforce_href(attrs)  # a url or uri attribute becomes href
        attrs["rel"] = "enclosure"
        entry.setdefault("links", []).append(attrs)


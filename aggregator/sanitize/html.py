"""Article HTML → safe HTML, treating every byte as hostile.

Order matters: nesting deeper than MAX_DEPTH is flattened (both parsers are quadratic
in depth), junk selectors are removed (selectolax, a real HTML5 parser), then nh3
(ammonia, html5ever) applies the allowlist and is the last thing to serialise, so what
reaches a feed is exactly what the allowlist sanitiser wrote: nothing a pre-pass does
can add markup that nh3 has not seen. URLs (srcset too, split the way browsers split
it) are checked and made absolute inside nh3's attribute filter, after entity decoding.
Proven by the XSS corpus in tests/data/xss (tests/test_sanitize_xss.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urljoin, urlsplit

import nh3
from selectolax.lexbor import LexborHTMLParser

from aggregator.sanitize.text import strip_xml_illegal

log = logging.getLogger(__name__)

TAGS = set(nh3.ALLOWED_TAGS) | {
    "figure", "figcaption", "picture", "source", "video", "audio", "track", "iframe",
    "section", "main", "address",
}
# Removed with their content (nh3 keeps the text of other disallowed tags).
CONTENT_TAGS = {"script", "style", "noscript", "template", "object", "embed", "applet",
                "form", "button", "select", "textarea", "title", "head", "frameset"}
TAGS -= CONTENT_TAGS

_GLOBAL = {"title", "lang", "dir"}
ATTRIBUTES: dict[str, set[str]] = {tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
ATTRIBUTES.setdefault("a", set()).update({"href", "title", "hreflang"})
ATTRIBUTES["img"] = {"src", "srcset", "sizes", "alt", "width", "height", "referrerpolicy",
                     "loading"}
ATTRIBUTES["source"] = {"src", "srcset", "type", "media", "sizes"}
ATTRIBUTES["video"] = {"src", "poster", "controls", "width", "height", "loop", "muted",
                       "preload"}
ATTRIBUTES["audio"] = {"src", "controls", "loop", "preload"}
ATTRIBUTES["track"] = {"src", "kind", "srclang", "label"}
ATTRIBUTES["iframe"] = {"src", "width", "height", "allowfullscreen", "frameborder"}
ATTRIBUTES["code"] = {"class"}  # language-xxx hints
ATTRIBUTES["*"] = _GLOBAL

URL_ATTRIBUTES = {"href", "src", "poster", "cite", "longdesc"}
_RASTER_DATA = re.compile(r"^data:image/(png|jpeg|gif|webp)[;,]", re.IGNORECASE)
# Browsers drop ASCII tab/newline anywhere and C0 controls + space at the ends of a URL
# before they read its scheme: `jav\tascript:` is `javascript:`.
_URL_NOISE = re.compile(r"[\x00-\x20\x7f]+")
_URL_TAB_NEWLINE = re.compile(r"[\t\n\r]+")
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SRCSET_SPACE = " \t\n\r\f"
# Both parsers take time quadratic in nesting depth (10,000 nested divs: ~1 s, 100,000:
# minutes), so tags nested deeper than this are dropped (their text kept) beforehand.
MAX_DEPTH = 512
# No '<' inside a tag, and the name possessive (`*+`): a failed match gives back
# nothing, so a scan is linear. Backtracking into the name would make `<` + 20,000
# letters and no `>` take 3 s, a 1 MB body hours: a hostile upstream could stall every
# build.
_TAG = re.compile(r"<(/?)([A-Za-z][^\s/<>]*+)[^<>]*+>")
# _TAG's groups, and a '/' just before the '>' (a self-closed tag)
_TAG_PARTS = re.compile(r"<(/?)([A-Za-z][^\s/<>]*+)[^<>]*?(/?)>")
_NO_DEPTH = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
         "source", "track", "wbr", "param", "keygen", "frame", "isindex",
         # optional end tags: often left open in legacy HTML, so never counted as depth
         "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "rp", "rt",
         "thead", "tbody", "tfoot", "colgroup", "caption"}
_SRCSET_DESCRIPTOR = re.compile(r"^(?:\d+w|\d+(?:\.\d+)?x)$")


class Sanitizer:
    def __init__(self, drop_selectors: Iterable[str], iframe_hosts: Iterable[str]) -> None:
        self.drop_selectors = tuple(drop_selectors)
        self.iframe_hosts = frozenset(h.lower() for h in iframe_hosts)
        self._needles = _selector_needles(self.drop_selectors)
        # nh3.clean builds its allowlist anew on every call (~100 us, half the cost of
        # cleaning a post): one Cleaner each way, whose attribute filter reads the
        # base URL of the html being cleaned (so a Sanitizer cleans one html at a time).
        self._cleaners: dict[bool, nh3.Cleaner] = {}
        self._base_url: str | None = None

    def clean(self, html: str, base_url: str | None = None,
              extra_selectors: Iterable[str] = ()) -> str:
        html = strip_xml_illegal(html)
        if not html.strip():
            return ""
        html = cap_depth(html)
        selectors = (*self.drop_selectors, *extra_selectors)
        if extra_selectors or self._may_have_junk(html):
            html = self._drop_junk(html, selectors)
        cleaned = self._allowlist(html, base_url, allow_iframes=True)
        if "<iframe" in cleaned and self._has_unsafe_iframe(cleaned):
            # The two parsers disagreed about an iframe (a parser-differential trick):
            # clean again with no iframes at all rather than keep an unchecked frame.
            cleaned = self._allowlist(html, base_url, allow_iframes=False)
        return strip_xml_illegal(cleaned).strip()

    def _may_have_junk(self, html: str) -> bool:
        """False only when no selector and no frame can match: then the pre-pass (a
        third of the sanitiser's time on the corpus) has nothing to do. nh3 still
        checks every iframe src, so a miss here can only leave junk, never a frame."""
        if self._needles is None:
            return True
        lowered = html.lower()
        return any(needle in lowered for needle in self._needles)

    def _drop_junk(self, html: str, selectors: tuple[str, ...]) -> str:
        # An explicit <body> first: a leading <frameset> would otherwise replace the body,
        # leaving nothing to clean here and unchecked iframes for nh3.
        tree = LexborHTMLParser("<body>" + html)
        body = tree.body
        if body is None:
            return html
        for selector in selectors:
            try:
                nodes = body.css(selector)
            except Exception:  # a bad selector from config must not stop the build
                continue
            for node in nodes:
                node.decompose()
        for frame in body.css("iframe"):
            if not self._iframe_src_allowed(frame.attributes.get("src")):
                frame.decompose()
        return body.inner_html or ""

    def _allowlist(self, html: str, base_url: str | None, *, allow_iframes: bool) -> str:
        cleaner = self._cleaners.get(allow_iframes)
        if cleaner is None:
            cleaner = self._cleaners[allow_iframes] = self._cleaner(allow_iframes)
        self._base_url = base_url
        try:
            return str(cleaner.clean(html))
        finally:
            self._base_url = None

    def _cleaner(self, allow_iframes: bool) -> nh3.Cleaner:
        tags = TAGS if allow_iframes else TAGS - {"iframe"}
        # ammonia panics (a BaseException) when a tag has attributes and is a content tag.
        attributes = ATTRIBUTES if allow_iframes else {
            tag: attrs for tag, attrs in ATTRIBUTES.items() if tag != "iframe"}
        content_tags = CONTENT_TAGS if allow_iframes else CONTENT_TAGS | {"iframe"}

        def attribute_filter(tag: str, attr: str, value: str) -> str | None:
            return self._filter_attribute(tag, attr, value, self._base_url)

        return nh3.Cleaner(
            tags=tags,
            clean_content_tags=content_tags,
            attributes=attributes,
            attribute_filter=attribute_filter,
            strip_comments=True,
            link_rel="noopener noreferrer",
            url_schemes={"http", "https", "mailto", "data"},
        )

    def _filter_attribute(self, tag: str, attr: str, value: str,
                          base_url: str | None) -> str | None:
        if attr == "srcset":
            return _clean_srcset(value, base_url)
        if attr not in URL_ATTRIBUTES:
            return value
        if tag == "iframe" and attr == "src":
            url = absolute_url(value, base_url)
            return url if url and self._iframe_src_allowed(url) else None
        if tag == "img" and attr == "src" and _RASTER_DATA.match(_URL_NOISE.sub("", value)):
            return _URL_NOISE.sub("", value)
        return absolute_url(value, base_url, allow_mailto=(attr == "href"))

    def _iframe_src_allowed(self, src: str | None) -> bool:
        if not src:
            return False
        url = absolute_url(src, None)
        if url is None:
            return False
        parts = urlsplit(url)
        return parts.scheme == "https" and (parts.hostname or "") in self.iframe_hosts

    @staticmethod
    def _has_unsafe_iframe(html: str) -> bool:
        body = LexborHTMLParser(html).body
        return body is not None and any(
            not frame.attributes.get("src") for frame in body.css("iframe"))


_SIMPLE_SELECTOR = re.compile(r"^([a-zA-Z][a-zA-Z0-9-]*)?((?:[.#][\w-]+)*)$")


def _selector_needles(selectors: Iterable[str]) -> tuple[str, ...] | None:
    """Lower-case substrings one of which must occur for any selector to match, or
    None when a selector is too complex to tell (then the pre-pass always runs)."""
    needles = ["<iframe", "<frame"]
    for selector in selectors:
        match = _SIMPLE_SELECTOR.match(selector.strip())
        if not match or not selector.strip():
            return None
        tag, rest = match.groups()
        parts = [p for p in re.split(r"[.#]", rest) if p]
        needles.append(parts[-1].lower() if parts else f"<{tag.lower()}")
    return tuple(needles)


# An absolute http(s) URL that urljoin (with any base) and absolute_url give back as it
# is: a host first, no path parameters and no empty query or fragment for urlparse to
# re-assemble, no brackets (IPv6 checks), no spaces, controls or backslashes to rewrite.
# Most links are such: urljoin cost ~15 us each. tests/test_upstream_link_fast_paths.py
# holds the shortcut equal to the long way.
PLAIN_HTTP_URL = re.compile(r"https?://[^\x00-\x20\x7f\\;?#\[\]/][^\x00-\x20\x7f\\;?#\[\]]*"
                            r"(?:\?[^\x00-\x20\x7f\\#\[\]]+)?(?:#[^\x00-\x20\x7f\\\[\]]+)?\Z")


def absolute_url(value: str, base_url: str | None, *, allow_mailto: bool = False) -> str | None:
    """An http(s) URL (or mailto:), made absolute; None for anything else.

    Cleaned the way browsers read URLs (WHATWG URL parsing): C0 controls and spaces at
    the ends and tab/CR/LF anywhere are removed, so `jav\tascript:` is `javascript:`;
    inner spaces are kept as %20 (`/img/a b.png` is a real file name), and any other
    control character inside makes the URL unusable."""
    if PLAIN_HTTP_URL.match(value):
        return value  # what _resolve_url gives back (most URLs: ~10 a post)
    return _resolve_url(value, base_url, allow_mailto)


def _resolve_url(value: str, base_url: str | None, allow_mailto: bool) -> str | None:
    url = _URL_TAB_NEWLINE.sub("", value).strip("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b"
                                                "\x0c\x0e\x0f\x10\x11\x12\x13\x14\x15\x16"
                                                "\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x20")
    if not url or _URL_CONTROL.search(url):
        return None
    url = url.replace(" ", "%20")
    url = url.replace("\\", "/")
    if url.startswith("//"):
        url = "https:" + url
    try:
        scheme = urlsplit(url).scheme.lower()
        if not scheme:
            if base_url is None:
                return None if ":" in url.split("/", 1)[0] else url
            url = urljoin(base_url, url)
            scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    if scheme in ("http", "https"):
        return url
    if scheme == "mailto" and allow_mailto:
        return url
    return None


def html_depth(html: str) -> int:
    """Deepest tag nesting, counted the way cap_depth counts it (void tags, self-closed
    tags and tags with optional end tags do not nest)."""
    depth = deepest = 0
    # (the tags' parts as tuples, not match objects: ~4x quicker over the 1 % of posts
    # with hundreds of tags, which take a tenth of reading all of them)
    for closing, name, self_closed in _TAG_PARTS.findall(html):
        if self_closed or name.lower() in _NO_DEPTH:
            continue
        if closing:
            depth = depth - 1 if depth else 0
        else:
            depth += 1
            if depth > deepest:
                deepest = depth
    return deepest


def may_nest_deeper(html: str, limit: int) -> bool:
    """False when `html` cannot nest deeper than `limit` (without parsing it): every
    level needs an opening tag, so a '<' that does not start '</'."""
    return html.count("<") - html.count("</") > limit


def _nests(match: re.Match[str]) -> bool:
    return match.group(2).lower() not in _NO_DEPTH and not match.group(0).endswith("/>")


def cap_depth(html: str, limit: int = MAX_DEPTH) -> str:
    """Drop start and end tags nested deeper than `limit`, by a tag count (an estimate:
    what it drops is only markup, and the real parsers still see everything else)."""
    if not may_nest_deeper(html, limit):
        return html
    deepest = html_depth(html)
    if deepest <= limit:
        return html
    depth = 0

    def visit(match: re.Match[str]) -> str:
        nonlocal depth
        if not _nests(match):
            return match.group(0)
        if match.group(1):
            depth = max(depth - 1, 0)
            return match.group(0) if depth < limit else ""
        depth += 1
        return match.group(0) if depth <= limit else ""

    log.warning("HTML nested %d deep; tags below depth %d dropped", deepest, limit)
    return _TAG.sub(visit, html)


def _srcset_candidates(value: str) -> list[tuple[str, str]]:
    """(url, descriptors) pairs exactly as the HTML srcset algorithm splits them.

    A plain split on ", " let `a.png 1x,javascript:alert(1) 2x` pass the second URL
    off as a descriptor of the first; browsers end a candidate at any bare comma.
    """
    candidates: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in _SRCSET_SPACE + ",":
            i += 1
        start = i
        while i < n and value[i] not in _SRCSET_SPACE:
            i += 1
        url = value[start:i]
        if not url:
            break
        descriptors = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:  # descriptors end at the next comma outside parentheses (not nested)
            start, in_parens = i, False
            while i < n and (value[i] != "," or in_parens):
                in_parens = {"(": True, ")": False}.get(value[i], in_parens)
                i += 1
            descriptors = value[start:i].strip()
        candidates.append((url, descriptors))
    return candidates


def _clean_srcset(value: str, base_url: str | None) -> str | None:
    kept = []
    for raw_url, descriptors in _srcset_candidates(value):
        url = absolute_url(raw_url, base_url)
        # Whitespace can only come from a hostile base URL; in srcset it would split the
        # URL and start a new candidate (`https://a/, javascript:...`).
        if url is None or _URL_NOISE.search(url):
            continue
        # Only one well-formed width or density survives; anything else is dropped.
        kept.append(f"{url} {descriptors}" if _SRCSET_DESCRIPTOR.match(descriptors) else url)
    return ", ".join(kept) or None

"""XSS corpus: every tests/data/xss/*.html vector through the Sanitizer, 0 survivors.

Each file is one hostile input; leading header comments give a description
(`<!-- desc: ... -->`), substrings the output must keep (`<!-- keep: ... -->`) and
optionally the base URL (`<!-- base: ... -->`). Survivors are found by parsing the
output with html5lib (a real HTML5 parser), never by string matching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import html5lib
import pytest

from aggregator.config import DEFAULT_DROP_SELECTORS, DEFAULT_IFRAME_HOSTS
from aggregator.sanitize.html import Sanitizer

XSS_DIR = Path(__file__).parent / "data" / "xss"
BASE_URL = "https://base.example/post/"
HTML_NS = "http://www.w3.org/1999/xhtml"

FORBIDDEN_ELEMENTS = {"script", "style", "object", "embed", "applet", "base", "meta", "link",
                      "form", "frame", "frameset"}
SRCSET_ATTRS = {"srcset", "imagesrcset"}
_HEADER = re.compile(r"<!-- (desc|keep|base): (.*?) -->\n")
_RASTER_DATA = re.compile(r"data:image/(png|jpeg|gif|webp)[;,]")
# WHATWG URL parsing: C0 controls and space trimmed at the ends, tab/LF/CR removed anywhere.
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))
_TAB_NEWLINE = re.compile("[\t\n\r]")


@dataclass
class Vector:
    path: Path
    html: str
    desc: str = ""
    base: str = BASE_URL
    keep: list[str] = field(default_factory=list)


def load_vector(path: Path) -> Vector:
    text = path.read_bytes().decode("utf-8")
    vector = Vector(path=path, html="")
    while match := _HEADER.match(text):
        kind, value = match.groups()
        if kind == "keep":
            vector.keep.append(value)
        elif kind == "base":
            vector.base = value
        else:
            vector.desc = value
        text = text[match.end():]
    vector.html = text
    return vector


VECTORS = [load_vector(p) for p in sorted(XSS_DIR.glob("*.html"))]


def browser_url(value: str) -> str:
    """The URL as a browser reads its scheme: trimmed, tab/newline removed, case-folded."""
    return _TAB_NEWLINE.sub("", value.strip(_C0_OR_SPACE)).lower()


def srcset_urls(value: str) -> list[str]:
    """Candidate URLs as the HTML srcset parsing algorithm finds them."""
    urls, i, n = [], 0, len(value)
    while i < n:
        while i < n and (value[i] in " \t\n\r\f,"):
            i += 1
        start = i
        while i < n and value[i] not in " \t\n\r\f":
            i += 1
        url = value[start:i]
        if not url:
            break
        if url.endswith(","):
            url = url.rstrip(",")
        else:  # descriptors run to the next comma outside parentheses (not nested)
            in_parens = False
            while i < n and (value[i] != "," or in_parens):
                in_parens = {"(": True, ")": False}.get(value[i], in_parens)
                i += 1
        urls.append(url)
    return urls


def _local(name: str) -> tuple[str, str]:
    if name.startswith("{"):
        ns, local = name[1:].split("}", 1)
        return ns, local.lower()
    return HTML_NS, name.lower()


def _url_problem(element: str, attr: str, url: str) -> str | None:
    folded = browser_url(url)
    if folded.startswith(("javascript:", "vbscript:")):
        return "script URL"
    if folded.startswith("data:") and not (
            element == "img" and attr == "src" and _RASTER_DATA.match(folded)):
        return "data: URL"
    return None


def _iframe_allowed(src: str | None, hosts: frozenset[str]) -> bool:
    if not src:
        return False
    try:
        parts = urlsplit(_TAB_NEWLINE.sub("", src.strip(_C0_OR_SPACE)))
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    return parts.scheme.lower() == "https" and host in hosts


def survivors(html: str, iframe_hosts: tuple[str, ...] = DEFAULT_IFRAME_HOSTS) -> list[str]:
    """Everything dangerous html5lib finds in `html`, one description each."""
    hosts = frozenset(h.lower() for h in iframe_hosts)
    fragment = html5lib.parseFragment(html, treebuilder="etree", namespaceHTMLElements=False)
    found: list[str] = []
    for node in fragment.iter():
        if not isinstance(node.tag, str):  # a comment: nh3 strips them all
            found.append(f"comment {node.text!r}")
            continue
        if node.tag == "DOCUMENT_FRAGMENT":
            continue
        ns, name = _local(node.tag)
        if ns != HTML_NS:
            found.append(f"foreign element {node.tag}")
        if name in FORBIDDEN_ELEMENTS:
            found.append(f"<{name}> element")
        if name == "iframe" and not _iframe_allowed(node.get("src"), hosts):
            found.append(f"iframe src={node.get('src')!r}")
        for key, value in node.attrib.items():
            _, attr = _local(key)
            if attr.startswith("on"):
                found.append(f"<{name} {attr}> handler")
            elif attr in ("srcdoc", "style"):
                found.append(f"<{name} {attr}> attribute")
            urls = srcset_urls(value) if attr in SRCSET_ATTRS else [value]
            for url in urls:
                problem = _url_problem(name, attr, url)
                if problem:
                    found.append(f"<{name} {attr}={url!r}> {problem}")
    return found


@pytest.fixture(scope="module")
def sanitizer() -> Sanitizer:
    return Sanitizer(drop_selectors=DEFAULT_DROP_SELECTORS, iframe_hosts=DEFAULT_IFRAME_HOSTS)


def test_corpus_is_large_enough() -> None:
    assert len(VECTORS) >= 100
    assert all(v.desc for v in VECTORS), "every vector needs a desc header"


@pytest.mark.parametrize("vector", VECTORS, ids=[v.path.stem for v in VECTORS])
def test_no_survivors(vector: Vector, sanitizer: Sanitizer) -> None:
    out = sanitizer.clean(vector.html, vector.base)
    assert survivors(out) == [], f"{vector.desc}: {out!r}"
    for text in vector.keep:
        assert text in out, f"{vector.desc}: expected {text!r} in {out!r}"


def test_all_vectors_together(sanitizer: Sanitizer) -> None:
    # Vectors concatenated: one vector's unclosed tag must not unlock the next.
    html = "".join(v.html for v in VECTORS)
    assert survivors(sanitizer.clean(html, BASE_URL)) == []


# The checker itself must see what it is meant to see.
@pytest.mark.parametrize("html", [
    "<script>alert(1)</script>",
    "<svg><style>x</style></svg>",
    "<img src=x onerror=alert(1)>",
    "<a href=' jav&#9;ascript:alert(1)'>x</a>",
    "<a href='\x01VBSCRIPT:x'>x</a>",
    "<img srcset='https://a/b.png 1x,javascript:alert(1) 2x'>",
    "<img src='data:image/svg+xml;base64,AAAA'>",
    "<source src='data:image/png;base64,AAAA'>",
    "<iframe srcdoc='x' src='https://www.youtube.com/embed/x'></iframe>",
    "<iframe src='http://www.youtube.com/embed/x'></iframe>",
    "<iframe src='https://evil.example/'></iframe>",
    "<iframe></iframe>",
    "<p style='color:red'>x</p>",
    "<object></object>", "<embed>", "<applet></applet>", "<form></form>",
    "<p>x</p><base href='https://a/'>", "<p>x</p><meta charset=utf-8>", "<p>x</p><link rel=x>",
    "<svg><a xlink:href='javascript:alert(1)'>x</a></svg>",
    "<p><!-- c --></p>",
])
def test_checker_finds(html: str) -> None:
    assert survivors(html) != []


@pytest.mark.parametrize("html", [
    "<p>plain <b>text</b> &lt;script&gt;</p>",
    "<img src='data:image/png;base64,AAAA' srcset='https://a/b,c.png 1x, https://a/d.png 2x'>",
    "<iframe src='https://www.youtube.com/embed/x'></iframe>",
    "<a href='mailto:a@example.org' title='a javascript: talk'>x</a>",
])
def test_checker_accepts(html: str) -> None:
    assert survivors(html) == []


# Each vector again inside the contexts where parsers (lexbor, html5ever, html5lib) are
# most likely to disagree; the full matrix, plus cleaning the output twice, is slow.
CONTEXTS = ["<table>{}</table>", "<svg>{}</svg>", "<math><mtext>{}</mtext></math>",
            "<select>{}</select>", "<noscript>{}</noscript>", "<template>{}</template>",
            "<frameset>{}", "<svg><foreignObject>{}</foreignObject></svg>"]
SLOW_CONTEXTS = CONTEXTS + [
    "<math>{}</math>", "<a href='https://ok.example/'>{}</a>", "<p>{}", "<textarea>{}</textarea>",
    "<iframe src='https://www.youtube.com/embed/x'>{}</iframe>",
    "<div class='appendQr_wrap'>x</div>{}", "{}<!--", "<title>{}", "<svg><title>{}</title></svg>",
    "<style>{}</style>", "<xmp>{}</xmp>", "<noembed>{}</noembed>", "<head>{}</head>",
    "<html><body>{}", "<table><tr><td>{}", "<svg><desc>{}", "<object>{}",
    "<math><annotation-xml encoding='text/html'>{}", "<frameset><noframes>{}",
    "<body><frameset>{}"]


@pytest.mark.parametrize("context", CONTEXTS)
def test_no_survivors_in_context(context: str, sanitizer: Sanitizer) -> None:
    for vector in VECTORS:
        out = sanitizer.clean(context.replace("{}", vector.html), vector.base)
        assert survivors(out) == [], f"{vector.path.name} in {context}: {out!r}"


@pytest.mark.slow
@pytest.mark.parametrize("context", SLOW_CONTEXTS)
def test_no_survivors_in_context_twice(context: str, sanitizer: Sanitizer) -> None:
    for vector in VECTORS:
        out = sanitizer.clean(context.replace("{}", vector.html), vector.base)
        assert survivors(out) == [], f"{vector.path.name} in {context}: {out!r}"
        again = sanitizer.clean(out, vector.base)
        assert survivors(again) == [], f"{vector.path.name} in {context}, cleaned twice"

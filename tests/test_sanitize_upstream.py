"""The XSS corpus through the other input: upstream feed entries → build → Atom/RSS.

Each vector rides in an RSS <description> (escaped once, and double-escaped), an Atom
<content type="html">, and a few well-formed ones in Atom type="xhtml"; the feeds are
parsed with the upstream parser, normalised, published, read back, and checked with
html5lib: 0 survivors.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
import yaml
from test_sanitize_e2e import atom_html, feedparser_html, rss_html
from test_sanitize_xss import VECTORS, Vector, survivors

from aggregator.config import UpstreamSource, load_config
from aggregator.model import Entry
from aggregator.pipeline import build
from aggregator.sanitize.text import strip_xml_illegal
from aggregator.sources.upstream.normalise import Normaliser
from aggregator.sources.upstream.parse import parse_feed

FEED_URL = "https://upstream.example/feed.xml"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
XHTML_VECTORS = [
    '<script>alert(1)</script>',
    '<img src="x" onerror="alert(1)"/>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(1)</script></svg>',
    '<iframe src="https://evil.example/"></iframe>',
    '<img src="data:image/svg+xml;base64,PHN2Zz4=" srcset="a.png 1x,javascript:alert(1) 2x"/>',
    '<math xmlns="http://www.w3.org/1998/Math/MathML" href="javascript:alert(1)">x</math>',
    '<p style="x:expression(alert(1))">x</p><base href="javascript:alert(1)//"/>',
]


def body(vector: Vector, tag: str) -> str:
    # The marker comes first: some vectors (plaintext, unclosed tags) eat the rest.
    return f"<p>{tag}</p>{strip_xml_illegal(vector.html)}"


def rss(double: bool) -> bytes:
    items = []
    for v in VECTORS:
        tag = f"RSS{'2' if double else '1'}-{v.path.stem[:3]}"
        html = escape(body(v, tag))
        items.append(f"<item><title>{tag}</title><guid>{FEED_URL}#{tag}</guid>"
                     f"<link>https://upstream.example/{tag}</link>"
                     f"<description>{escape(html) if double else html}</description></item>")
    return ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>up</title><link>https://upstream.example/</link>{''.join(items)}"
            "</channel></rss>").encode()


def atom() -> bytes:
    entries = [
        f"<entry><title>ATOM-{v.path.stem[:3]}</title><id>{FEED_URL}#a{v.path.stem[:3]}</id>"
        f'<updated>2025-01-01T00:00:00Z</updated><content type="html">'
        f"{escape(body(v, 'ATOM-' + v.path.stem[:3]))}</content></entry>" for v in VECTORS]
    entries += [
        f"<entry><title>XHTML-{n}</title><id>{FEED_URL}#x{n}</id>"
        f'<updated>2025-01-01T00:00:00Z</updated><content type="xhtml">'
        f'<div xmlns="http://www.w3.org/1999/xhtml"><p>XHTML-{n}</p>{x}</div></content></entry>'
        for n, x in enumerate(XHTML_VECTORS)]
    return ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>up</title><id>{FEED_URL}</id><updated>2025-01-01T00:00:00Z</updated>"
            f"{''.join(entries)}</feed>").encode()


def upstream_entries() -> list[Entry]:
    source = UpstreamSource(url=FEED_URL, category=("Upstream",))
    entries: list[Entry] = []
    for feed in (rss(False), rss(True), atom()):
        parsed = parse_feed(feed, {"content-type": "application/xml"}, FEED_URL)
        assert not parsed.warnings, parsed.warnings
        entries += Normaliser(source, "feeds.example", "2026", NOW).entries(parsed)
    return entries


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("xss-upstream")
    (tmp / "posts").mkdir()
    config = {
        "site": {"url": "https://feeds.example/", "title": "xss"},
        "content": {"dir": "posts"},
        "output": {"dir": "feeds", "max_items": 0},
        "images": {"probe": False},
        "state": {"path": "state/xss.sqlite"},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    build(load_config(path), clock=lambda: NOW, extra_entries=upstream_entries())
    return tmp / "feeds"


def expected_titles() -> list[str]:
    titles = [f"{kind}-{v.path.stem[:3]}" for v in VECTORS for kind in ("RSS1", "RSS2", "ATOM")]
    return sorted(titles + [f"XHTML-{n}" for n in range(len(XHTML_VECTORS))])


@pytest.mark.parametrize("name", ["atom.xml", "rss.xml"])
def test_upstream_entries_have_no_survivors(feeds: Path, name: str) -> None:
    path = feeds / name
    for read in (atom_html if name == "atom.xml" else rss_html, feedparser_html):
        entries = read(path)
        assert sorted(entries) == expected_titles(), read.__name__
        for title, htmls in entries.items():
            assert any(title in h for h in htmls), f"{title}: body lost in {name}"
            for html in htmls:
                assert survivors(html) == [], f"{title} in {name} ({read.__name__}): {html!r}"


def test_double_escaped_description_stays_text(feeds: Path) -> None:
    entries = rss_html(feeds / "rss.xml")
    html = entries[f"RSS2-{VECTORS[0].path.stem[:3]}"][1]
    assert "&lt;script&gt;" in html  # shown as text, never run

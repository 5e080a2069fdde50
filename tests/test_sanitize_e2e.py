"""The XSS corpus end to end: each vector as a post body → build → atom.xml / rss.xml,
feed.json and the pages.

The published entry HTML (Atom content type="html", RSS content:encoded and description)
is read back with lxml and with feedparser, then checked with html5lib: 0 survivors.
"""

from __future__ import annotations

import json
from pathlib import Path

import feedparser
import pytest
import yaml
from lxml import etree
from lxml import html as lxml_html
from test_sanitize_xss import VECTORS, Vector, survivors

from aggregator.config import load_config
from aggregator.pipeline import build
from aggregator.writers.pages import PAGE_ITEMS

ATOM = "{http://www.w3.org/2005/Atom}"
CONTENT = "{http://purl.org/rss/1.0/modules/content/}encoded"


def marker(vector: Vector) -> str:
    return f"MARKER-{vector.path.stem[:3]}"


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("xss-e2e")
    posts = tmp / "posts"
    posts.mkdir()
    for n, vector in enumerate(VECTORS):
        front = {"title": marker(vector), "date": f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}Z",
                 "categories": ["XSS", vector.path.stem.split("-")[1]]}
        # The marker comes first: some vectors (plaintext, unclosed tags) eat the rest.
        body = f"<div><p>{marker(vector)}</p>{vector.html}</div>\n"
        (posts / f"{vector.path.stem}.md").write_text(
            "---\n" + yaml.safe_dump(front) + "---\n\n" + body, encoding="utf-8")
    config = {
        "site": {"url": "https://feeds.example/", "title": "xss",
                 "post_url": "https://base.example/{path}/"},
        "content": {"dir": "posts", "body": "html"},
        "output": {"dir": "feeds", "max_items": 0},
        "images": {"probe": False},
        "state": {"path": "state/xss.sqlite"},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    build(load_config(path))
    return tmp / "feeds"


def atom_html(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in etree.parse(str(path)).iter(f"{ATOM}entry"):
        title = entry.findtext(f"{ATOM}title") or ""
        for tag in ("content", "summary"):
            element = entry.find(f"{ATOM}{tag}")
            # type="text" is shown as text by readers; only html is parsed as markup.
            if element is not None and element.get("type") == "html":
                out.setdefault(title, []).append(element.text or "")
    return out


def rss_html(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in etree.parse(str(path)).iter("item"):
        title = item.findtext("title") or ""
        out[title] = [item.findtext("description") or "", item.findtext(CONTENT) or ""]
    return out


def feedparser_html(path: Path) -> dict[str, list[str]]:
    parsed = feedparser.parse(path.read_bytes(), sanitize_html=False,
                              resolve_relative_uris=False)
    out: dict[str, list[str]] = {}
    for entry in parsed.entries:
        parts = [*entry.get("content", []), entry.get("summary_detail") or {}]
        out[entry.title] = [p.get("value", "") for p in parts
                            if p.get("type") in ("text/html", "application/xhtml+xml")]
    return out


@pytest.mark.parametrize("name", ["atom.xml", "rss.xml", "xss/atom.xml", "xss/rss.xml"])
def test_published_feeds_have_no_survivors(feeds: Path, name: str) -> None:
    path = feeds / name
    readers = [feedparser_html]
    readers.insert(0, atom_html if name.endswith("atom.xml") else rss_html)
    for read in readers:
        entries = read(path)
        # Every vector reached the feed (a skipped post would hide a survivor).
        assert sorted(entries) == sorted(marker(v) for v in VECTORS), read.__name__
        for title, htmls in entries.items():
            assert htmls, f"{title}: no HTML in {name} ({read.__name__})"
            assert any(title in h for h in htmls), f"{title}: body lost in {name}"
            for html in htmls:
                assert survivors(html) == [], f"{title} in {name} ({read.__name__}): {html!r}"


@pytest.mark.parametrize("name", ["feed.json", "xss/feed.json"])
def test_json_feed_content_html_has_no_survivors(feeds: Path, name: str) -> None:
    items = json.loads((feeds / name).read_bytes())["items"]
    assert sorted(i["title"] for i in items) == sorted(marker(v) for v in VECTORS)
    for item in items:
        assert item["title"] in item["content_html"], f"{item['title']}: body lost"
        assert survivors(item["content_html"]) == [], f"{item['title']} in {name}"


@pytest.mark.parametrize("name", ["index.html", "xss/index.html"])
def test_pages_show_entries_without_any_of_their_markup(feeds: Path, name: str) -> None:
    """A page's cards (the only part made from entries) hold no survivor; the page's
    only script is ours."""
    page = lxml_html.fromstring((feeds / name).read_bytes())
    cards = page.find_class("entry")
    assert len(cards) == min(len(VECTORS), PAGE_ITEMS)
    for card in cards:
        markup = lxml_html.tostring(card, encoding="unicode")
        assert survivors(markup) == [], markup
    assert [s.get("src") for s in page.iter("script")] in (["page.js"], ["../page.js"])

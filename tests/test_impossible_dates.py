"""Dates that do not exist, and one post or entry that cannot be read: neither stops
the build. The post is published undated, or skipped with an error naming it, and
every other one is published."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import feedparser
import pytest
from helpers import REPO, write_config, write_post
from pytest_httpserver import HTTPServer
from upstream_support import published, run, upstream_config

from aggregator import render
from aggregator.forking import PARALLEL_THRESHOLD
from aggregator.model import Entry
from aggregator.sources.content import PostReader
from aggregator.sources.upstream.normalise import Normaliser
from aggregator.sources.walk import PostFile

# In a post's date: none exists (PyYAML raises ValueError), or it is a real one whose
# conversion to UTC overflows (OverflowError), or an RFC 822 text of the same.
BAD_DATES = ["2025-02-30", "2026-13-45", "2025-01-01 25:61:61", "0000-01-01",
             "2025-01-01 00:00:00 +25", "9999-12-31T23:59:59-14:00",
             "0001-01-01T00:00:00+05:00", "9999-12-31 23:59:59",
             "'Fri, 31 Dec 9999 23:59:59 -1400'"]
# Front matter the fast path reads, and front matter only PyYAML reads (a nested
# mapping): the bad date in `date`, `updated`, a key of our own, a list and a mapping.
SHAPES = {
    "flat": "title: {title}\ndate: {date}\nupdated: {date}\nbirthday: {date}\n"
            "tags:\n  - t\n  - {date}",
    "nested": "title: {title}\ndate: {date}\nupdated: {date}\nextra: {{when: {date}}}\n"
              "tags: [t, {date}]",
}


def _bad_site(tmp_path: Path, good: int) -> tuple[Path, list[str]]:
    posts = tmp_path / "posts"
    for i in range(good):
        write_post(posts, f"good/p{i:04d}.md", f"title: Good {i}\ncategories: [Good]\n"
                   f"date: 2025-{i % 12 + 1:02d}-{i % 28 + 1:02d} 10:00:00")
    bad = []
    for n, date in enumerate(BAD_DATES):
        for shape, front in SHAPES.items():
            rel = f"bad/{shape}-{n}.md"
            write_post(posts, rel, front.format(title=f"Bad {shape} {n}", date=date))
            bad.append(rel)
    return write_config(tmp_path), bad


@pytest.mark.parametrize("good", [30, PARALLEL_THRESHOLD + 20], ids=["serial", "workers"])
def test_a_post_with_a_date_that_cannot_be_is_published_undated(
        tmp_path: Path, capsys: Any, good: int) -> None:
    config, bad = _bad_site(tmp_path, good)
    code, err = run(config, capsys, "build")
    assert code == 0, err[-3000:]  # published, warnings only
    entries = feedparser.parse((tmp_path / "feeds/atom.xml").read_bytes()).entries
    titles = [e.title for e in entries]
    assert len(titles) == good + len(bad)
    # every bad one is undated: below every dated one, without a published date
    assert all(t.startswith("Good") for t in titles[:good]), titles[good - 3:good + 3]
    undated = entries[good:]
    assert all(not e.get("published") for e in undated)
    for rel in bad:
        date_line = 4  # (write_post: a blank line, "---", the title, the date)
        assert re.search(rf"^{re.escape(rel)}:{date_line}: warning: date .*; the post is "
                         rf"treated as undated$", err, re.M), (rel, err[-3000:])
        assert re.search(rf"^{re.escape(rel)}:{date_line + 1}: warning: .*; updated ignored$",
                         err, re.M), rel
    for n, date in enumerate(BAD_DATES[:5]):  # (the others are real dates: kept as such)
        text = date.strip("'")
        assert f"bad/flat-{n}.md:6: warning: birthday {text!r} is not a real date; " \
               f"read as text" in err
        assert f"bad/flat-{n}.md:9: warning: tags {text!r} is not a real date" in err
        assert f"bad/nested-{n}.md:6: warning: extra {text!r} is not a real date" in err
        assert f"bad/nested-{n}.md:7: warning: tags {text!r} is not a real date" in err
    assert "Traceback" not in err
    # and the next build, from the cache, is the same
    code, again = run(config, capsys, "build")
    assert code == 0 and again.count("warning:") == err.count("warning:")


def _inject_failure(monkeypatch: pytest.MonkeyPatch, rel: str, record: Path) -> None:
    """PostReader._parse raises for the post `rel` (in whichever process reads it),
    noting each process it raised in."""
    parse = PostReader._parse

    def failing(self: PostReader, post: PostFile, text: str, where: str) -> Any:
        if post.rel == rel:
            with record.open("a", encoding="utf-8") as out:
                out.write(f"{os.getpid()}\n")
            raise RuntimeError("injected fault")
        return parse(self, post, text, where)
    monkeypatch.setattr(PostReader, "_parse", failing)


@pytest.mark.parametrize("count", [20, PARALLEL_THRESHOLD + 50], ids=["serial", "workers"])
def test_a_post_whose_read_fails_is_skipped_and_the_others_published(
        tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    for i in range(count):
        write_post(tmp_path / "posts", f"Cat/p{i:04d}.md",
                   f"title: P{i}\ncategories: [Cat]\ndate: 2025-01-01 10:{i % 60:02d}:00")
    config = write_config(tmp_path)
    record = tmp_path / "raised-in"
    _inject_failure(monkeypatch, "Cat/p0007.md", record)
    code, err = run(config, capsys, "build")
    assert code == 1, err[-3000:]  # published, an input skipped
    assert re.search(r"^Cat/p0007\.md:1: error: cannot be read \(RuntimeError: injected "
                     r"fault\); skipped$", err, re.M), err[-3000:]
    titles = {e.title for e in feedparser.parse(
        (tmp_path / "feeds/atom.xml").read_bytes()).entries}
    assert titles == {f"P{i}" for i in range(count)} - {"P7"}
    pids = set(record.read_text(encoding="utf-8").split())
    if count > PARALLEL_THRESHOLD and (os.cpu_count() or 1) > 1:
        assert pids - {str(os.getpid())}, "the workers never read the post"
    # not cached as the post's own: the next build reads it again, and says so again
    raised = len(record.read_text(encoding="utf-8").split())
    code, again = run(config, capsys, "build")
    assert code == 1 and "Cat/p0007.md:1: error: cannot be read" in again
    assert len(record.read_text(encoding="utf-8").split()) > raised


def test_an_upstream_entry_that_cannot_be_normalised_costs_only_itself(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    items = "".join(
        f"<item><guid>https://u.example/{i}</guid><title>T{i}</title>"
        f"<description>x</description><pubDate>Mon, 02 Jun 2025 10:0{i}:00 GMT</pubDate>"
        f"</item>" for i in range(5))
    body = (f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
            f"<link>https://u.example/</link><description>d</description>{items}"
            f"</channel></rss>").encode()
    httpserver.expect_request("/f").respond_with_data(body, content_type="application/rss+xml")
    make = Normaliser._xml_entry

    def failing(self: Normaliser, raw: Any, feed_url: str) -> Any:
        if raw.get("title") == "T3":
            raise RuntimeError("injected fault")
        return make(self, raw, feed_url)
    monkeypatch.setattr(Normaliser, "_xml_entry", failing)
    url = httpserver.url_for("/f")
    config = upstream_config(tmp_path, [{"url": url, "category": "U"}])
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 1, err
    assert f"{url}: error: entry 4 (https://u.example/3) cannot be read (RuntimeError: " \
           f"injected fault); skipped" in err
    assert sorted(e.title for e in published(tmp_path).entries) == ["T0", "T1", "T2", "T4"]


UPSTREAM_BAD = [("Mon, 30 Feb 2025 10:00:00 GMT", "2025-02-30T00:00:00Z"),
                ("Wed, 01 Jan 2025 25:61:61 GMT", "2025-01-01T25:61:61Z"),
                ("Fri, 31 Dec 9999 23:59:59 -1400", "9999-12-31T23:59:59-14:00"),
                ("Mon, 01 Jan 0001 00:00:00 +0500", "0001-01-01T00:00:00+05:00"),
                ("Sat, 01 Jan 0000 00:00:00 GMT", "0000-01-01T00:00:00Z")]


@pytest.mark.parametrize(("rfc822", "iso"), UPSTREAM_BAD)
def test_upstream_entries_with_dates_that_cannot_be_are_published_undated(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any, rfc822: str, iso: str) -> None:
    rss = (f'<?xml version="1.0"?><rss version="2.0"><channel><title>r</title>'
           f"<link>https://r.example/</link><description>d</description>"
           f"<item><guid>https://r.example/1</guid><title>RSS bad</title>"
           f"<pubDate>{rfc822}</pubDate><description>x</description></item>"
           f"<item><guid>https://r.example/2</guid><title>RSS good</title>"
           f"<pubDate>Mon, 02 Jun 2025 10:00:00 GMT</pubDate><description>y</description>"
           f"</item></channel></rss>").encode()
    atom = (f'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>a</title>'
            f"<id>urn:a</id><updated>{iso}</updated>"
            f"<entry><id>urn:a:1</id><title>Atom bad</title><updated>{iso}</updated>"
            f"<published>{iso}</published><content>x</content></entry>"
            f"<entry><id>urn:a:2</id><title>Atom good</title>"
            f"<updated>2025-06-01T00:00:00Z</updated><content>y</content></entry></feed>"
            ).encode()
    json_feed = {"version": "https://jsonfeed.org/version/1.1", "title": "J", "items": [
        {"id": "1", "title": "JSON bad", "content_html": "<p>x</p>", "date_published": iso,
         "date_modified": iso},
        {"id": "2", "title": "JSON good", "content_html": "<p>y</p>",
         "date_published": "2025-06-02T10:00:00Z"}]}
    httpserver.expect_request("/rss").respond_with_data(rss, content_type="application/rss+xml")
    httpserver.expect_request("/atom").respond_with_data(atom,
                                                         content_type="application/atom+xml")
    httpserver.expect_request("/json").respond_with_json(json_feed)
    config = upstream_config(tmp_path, [{"url": httpserver.url_for(f"/{kind}"),
                                         "category": kind} for kind in ("rss", "atom", "json")])
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    entries = published(tmp_path).entries
    assert sorted(e.title for e in entries) == ["Atom bad", "Atom good", "JSON bad",
                                                "JSON good", "RSS bad", "RSS good"]
    assert all(e.updated[:4] not in ("0001", "9999") for e in entries)



def test_an_entry_whose_render_fails_is_left_out_and_the_others_published(
        tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(6):
        write_post(tmp_path / "posts", f"Cat/p{i}.md",
                   f"title: P{i}\ncategories: [Cat]\ndate: 2025-01-0{i + 1} 10:00:00")
    config = write_config(tmp_path)
    finish = render.finish_entry

    def failing(entry: Entry, sanitizer: Any) -> Entry:
        if entry.source == "Cat/p3.md":
            raise RuntimeError("injected fault")
        return finish(entry, sanitizer)
    monkeypatch.setattr(render, "finish_entry", failing)
    for _build in range(2):  # not cached: the next build tries it again, and says so
        code, err = run(config, capsys, "build")
        assert code == 1, err
        assert "Cat/p3.md: error: cannot be rendered (RuntimeError: injected fault); left " \
               "out of the feeds" in err
        assert "nothing changed since the last build" not in err  # rendered again
        for rel in ("feeds/atom.xml", "feeds/cat/atom.xml", "feeds/rss.xml"):
            feed = feedparser.parse((tmp_path / rel).read_bytes())
            assert not feed.bozo, rel
            assert sorted(e.title for e in feed.entries) == ["P0", "P1", "P2", "P4", "P5"]
    monkeypatch.undo()
    code, err = run(config, capsys, "build")
    assert code == 0, err
    assert len(published(tmp_path).entries) == 6


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _served_titles(port: int, path: str) -> set[str]:
    status, body = _get(port, path)
    return {e.title for e in feedparser.parse(body).entries} if status == 200 else set()


def _until(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except OSError:  # not listening yet
            pass
        time.sleep(0.05)
    return False


def test_the_service_stays_healthy_and_fresh_beside_a_post_with_an_impossible_date(
        tmp_path: Path) -> None:
    posts = tmp_path / "posts"
    write_post(posts, "Tech/good.md", "title: Good\ncategories: [Tech]\ndate: 2025-01-01")
    write_post(posts, "Tech/bad.md", "title: Bad\ncategories: [Tech]\ndate: 2025-02-30\n"
               "updated: 9999-12-31T23:59:59-14:00")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = write_config(tmp_path, serve={"host": "127.0.0.1", "port": port})
    proc = subprocess.Popen([sys.executable, "-m", "aggregator", "run", "-c", str(config)],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _until(lambda: _get(port, "/healthz")[0] == 200, 30), "never healthy"
        assert _served_titles(port, "/tech/atom.xml") == {"Good", "Bad"}
        # later builds go on too: a new post, with a date that cannot be in its own key
        write_post(posts, "Tech/later.md", "title: Later\ncategories: [Tech]\n"
                   "date: 2025-06-01\nreviewed: 2026-13-45")
        assert _until(lambda: "Later" in _served_titles(port, "/tech/atom.xml"), 15)
        status, body = _get(port, "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert "Tech/bad.md:5: warning: date '2025-02-30'" in err, err
    assert "Tech/later.md:6: warning: reviewed '2026-13-45' is not a real date" in err, err

"""Upstream abuse (issue 8, part 4): servers and feeds written to hurt us.

A server on 127.0.0.1 started by each test (fetch.allow_private_addresses true) plays
the hostile upstream: slowloris, endless bodies, entity bombs, external entities,
huge feeds and entries, duplicate and colliding ids. Each: a clear `url: error|warning`
line, bounded time (and memory where it matters), stored good entries kept.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import write_post
from pytest_httpserver import HTTPServer
from upstream_support import published, rss, run, titles, upstream_config
from werkzeug import Request, Response

XML = "application/rss+xml"
GOOD = rss([("a1", "Alpha"), ("b2", "Beta")])


class RawServer:
    """A bare TCP server on 127.0.0.1: counts connections, runs `handler` for each."""

    def __init__(self, handler: Any = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.handler = handler
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            if self.handler is not None:
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
            else:
                conn.close()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            self.handler(conn, self.stop)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[type[RawServer]]:
    servers: list[RawServer] = []

    def make(handler: Any = None) -> RawServer:
        server = RawServer(handler)
        servers.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in servers:
        server.close()


def _good_first(tmp_path: Path, capsys: Any, url: str, serve: Any, **fetch: Any) -> Path:
    """Store a good poll of `url` first, so a failure must keep its entries."""
    config = upstream_config(tmp_path, [{"url": url, "category": "Up"}], **fetch)
    serve()
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert titles(tmp_path) == ["Alpha", "Beta"]
    return config


def _all_output(tmp_path: Path) -> bytes:
    """Every byte we wrote: feeds, index, OPML, state and cache."""
    out = b""
    for folder in ("feeds", "state"):
        for path in (tmp_path / folder).rglob("*"):
            if path.is_file():
                out += path.read_bytes()
    return out


# -- slowloris ---------------------------------------------------------------------------


def _trickle_body(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\n"
                 b"Content-Length: 100000\r\n\r\n" + GOOD[:60])
    while not stop.is_set():
        conn.sendall(b" ")
        time.sleep(0.2)  # well under the 0.5 s read timeout: only the deadline ends it


def _trickle_headers(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.is_set():
        conn.sendall(b"X")  # one endless header line, a byte at a time
        time.sleep(0.2)


def _trickle_header_lines(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    n = 0
    while not stop.is_set():
        conn.sendall(f"X-{n}: y\r\n".encode())  # endless short header lines
        n += 1
        time.sleep(0.2)


@pytest.mark.parametrize("handler", [_trickle_body, _trickle_headers, _trickle_header_lines],
                         ids=["body", "status-line-header", "header-lines"])
def test_slowloris_ends_at_the_deadline(handler: Any, tmp_path: Path, capsys: Any,
                                        raw: Any) -> None:
    good = raw(lambda c, s: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml"
                                      b"\r\nConnection: close\r\nContent-Length: "
                                      + str(len(GOOD)).encode() + b"\r\n\r\n" + GOOD))
    config = _good_first(tmp_path, capsys, good.url("/feed"), lambda: None)
    slow = raw(handler)
    config = upstream_config(tmp_path, [{"url": slow.url("/feed"), "category": "Up"},
                                        {"url": good.url("/feed"), "category": "Up"}])
    started = time.monotonic()
    result: list[tuple[int, str]] = []
    # In a thread, so a regression fails here instead of hanging the suite.
    worker = threading.Thread(target=lambda: result.append(
        run(config, capsys, "fetch", "--all")), daemon=True)
    worker.start()
    worker.join(timeout=15)
    assert not worker.is_alive(), "fetch still running after 15 s: the deadline did not end it"
    code, err = result[0]
    seconds = time.monotonic() - started
    assert seconds < 6, f"took {seconds:.1f}s; deadline is 2s"
    assert code == 1, err
    assert f"{slow.url('/feed')}: error: " in err
    assert "deadline of 2s passed" in err, err
    assert titles(tmp_path) == ["Alpha", "Beta"]


# -- endless and huge bodies ----------------------------------------------------------------


def _endless(request: Request) -> Response:
    def chunks() -> Iterator[bytes]:
        yield GOOD[:60]
        block = b"<!-- " + b"x" * 65_000 + b" -->"
        while True:
            yield block
    return Response(chunks(), content_type=XML)  # no Content-Length: chunked


def test_endless_chunked_body_ends_at_the_size_cap(tmp_path: Path, capsys: Any,
                                                   httpserver: HTTPServer) -> None:
    url = httpserver.url_for("/feed")
    config = _good_first(tmp_path, capsys, url, lambda: httpserver.expect_request(
        "/feed").respond_with_data(GOOD, content_type=XML))
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_handler(_endless)
    started = time.monotonic()
    code, err = run(config, capsys, "fetch", "--all")
    assert time.monotonic() - started < 10
    assert code == 1, err
    assert f"{url}: error: body larger than 1000000 bytes" in err, err
    assert titles(tmp_path) == ["Alpha", "Beta"]


def _huge_entry_feed(size: int) -> bytes:
    body = "&lt;p&gt;" + "word " * (size // 5) + "&lt;/p&gt;"
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Up</title><link>https://up.example/</link><description>d</description>"
            f"<item><guid>huge</guid><title>Huge</title><link>https://up.example/huge</link>"
            f"<description>{body}</description>"
            f"<pubDate>Mon, 09 Jun 2025 10:00:00 GMT</pubDate></item>"
            f"</channel></rss>").encode()


def test_huge_entry_reduced(tmp_path: Path, capsys: Any, httpserver: HTTPServer) -> None:
    """The 100 MB case, scaled: an entry over the cap is refused, one under it is used."""
    url = httpserver.url_for("/feed")
    config = _good_first(tmp_path, capsys, url, lambda: httpserver.expect_request(
        "/feed").respond_with_data(GOOD, content_type=XML))
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(_huge_entry_feed(2_000_000),
                                                         content_type=XML)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 1 and f"{url}: error: body larger than 1000000 bytes" in err, err
    assert titles(tmp_path) == ["Alpha", "Beta"]
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(_huge_entry_feed(900_000),
                                                         content_type=XML)
    started = time.monotonic()
    code, err = run(config, capsys, "fetch", "--all")
    assert time.monotonic() - started < 20
    assert code == 0, err
    assert titles(tmp_path) == ["Alpha", "Beta", "Huge"]


def _backtracking_feed() -> bytes:
    """Bodies that make backtracking regexes quadratic: an untitled entry of '<p' (its title is
    the summary of its raw body) and a long unclosed tag after 600 tags (the depth
    check), each well under the size cap."""
    items = [("untitled", "", "<p" * 150_000),
             ("unclosed", "Unclosed", "<b>" * 600 + "<" + "x" * 200_000 + " <p>end</p>")]
    body = "".join(
        f"<item><guid>{guid}</guid><title>{title}</title><link>https://up.example/{guid}"
        f"</link><description><![CDATA[{html}]]></description>"
        f"<pubDate>Mon, 09 Jun 2025 10:00:00 GMT</pubDate></item>"
        for guid, title, html in items)
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Up</title><link>https://up.example/</link><description>d</description>"
            f"{body}</channel></rss>").encode()


def test_bodies_that_made_regexes_backtrack_are_read_in_linear_time(
        tmp_path: Path, capsys: Any, httpserver: HTTPServer) -> None:
    # With backtracking regexes the first takes ~10 s and the second ~5 minutes, in
    # every build.
    url = httpserver.url_for("/feed")
    config = _good_first(tmp_path, capsys, url, lambda: httpserver.expect_request(
        "/feed").respond_with_data(GOOD, content_type=XML))
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(_backtracking_feed(),
                                                         content_type=XML)
    started = time.monotonic()
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    code, err = run(config, capsys, "build")
    assert time.monotonic() - started < 30
    assert code == 0, err
    assert {"Alpha", "Beta", "Unclosed"} <= set(titles(tmp_path))
    assert len(titles(tmp_path)) == 4  # and the untitled one, under a title of its own


# Peak RSS of the child itself: VmHWM belongs to the process image after exec, while
# getrusage's ru_maxrss survives execve and would count the parent's (pytest's) memory.
_MEASURE = """
import re, sys
from aggregator.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print("MAXRSS", re.search(r"VmHWM:\\s*(\\d+)", status).group(1), file=sys.stderr)
sys.exit(code)
"""


def _measured(config: Path, *args: str, timeout: float = 300) -> tuple[int, str, float, int]:
    """Run the CLI in a child: (exit code, stderr, seconds, max RSS in MiB)."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - started
    rss_mib = int(proc.stderr.split("MAXRSS ")[1].split()[0]) // 1024
    return proc.returncode, proc.stderr, seconds, rss_mib


@pytest.mark.slow
def test_100_mb_entry(tmp_path: Path, httpserver: HTTPServer) -> None:
    """A real 100 MB entry against the default cap (15 MiB): refused, never held whole."""
    url = httpserver.url_for("/feed")
    httpserver.expect_request("/feed").respond_with_data(_huge_entry_feed(100_000_000),
                                                         content_type=XML)
    config = upstream_config(tmp_path, [{"url": url, "category": "Up"}],
                             max_bytes=15 * 1024 * 1024, deadline_seconds=60,
                             timeout_seconds=20)
    code, err, seconds, rss_mib = _measured(config, "fetch", "--all")
    print(f"100 MB entry: {seconds:.1f}s, max RSS {rss_mib} MiB")
    assert code == 1 and "body larger than 15728640 bytes" in err, err
    assert seconds < 60 and rss_mib < 300


# -- XML entity attacks ------------------------------------------------------------------------


def _laughs(levels: int = 10) -> bytes:
    ents = ['<!ENTITY lol0 "lollollollollollollollollollol">']
    ents += [f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, levels)]
    return (f'<?xml version="1.0"?><!DOCTYPE rss [{"".join(ents)}]>'
            f'<rss version="2.0"><channel><title>Laughs</title><link>https://up.example/</link>'
            f"<description>d</description><item><guid>bomb</guid><title>&lol{levels - 1};"
            f"</title><description>&lol{levels - 1};</description>"
            f"<link>https://up.example/bomb</link></item></channel></rss>").encode()


def test_billion_laughs(tmp_path: Path, capsys: Any, httpserver: HTTPServer) -> None:
    url = httpserver.url_for("/feed")
    config = _good_first(tmp_path, capsys, url, lambda: httpserver.expect_request(
        "/feed").respond_with_data(GOOD, content_type=XML))
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(_laughs(), content_type=XML)
    code, err, seconds, rss_mib = _measured(config, "fetch", "--all", timeout=60)
    assert seconds < 20 and rss_mib < 400, (seconds, rss_mib)
    assert "Traceback" not in err
    assert f"{url}: " in err, err  # reported: either refused or used without expansion
    assert b"lollollollollollollollollollollollollollollollol" * 100 not in _all_output(tmp_path)
    assert {"Alpha", "Beta"} <= set(titles(tmp_path))


def test_external_entities_read_no_file_and_call_no_network(tmp_path: Path, capsys: Any,
                                                            httpserver: HTTPServer,
                                                            raw: Any) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("XXE-SECRET-MARKER-7f3a")
    spy = raw()  # counts every TCP connection made to it
    dtd = spy.url("/evil.dtd")
    attacks = {
        "file-entity": f'<!DOCTYPE rss [<!ENTITY x SYSTEM "file://{secret}">]>',
        "http-entity": f'<!DOCTYPE rss [<!ENTITY x SYSTEM "{spy.url("/x")}">]>',
        "param-entity": f'<!DOCTYPE rss [<!ENTITY % p SYSTEM "{dtd}"> %p;]>',
        "external-dtd": f'<!DOCTYPE rss SYSTEM "{dtd}">',
        "public-dtd": f'<!DOCTYPE rss PUBLIC "-//X//Y" "{dtd}">',
    }
    sources = []
    for name, doctype in attacks.items():
        use = "&x;" if "entity" in name and name != "param-entity" else "plain"
        body = (f'<?xml version="1.0"?>{doctype}<rss version="2.0"><channel><title>T</title>'
                f"<link>https://up.example/</link><description>d</description><item>"
                f"<guid>{name}</guid><title>{name} {use}</title><link>https://up.example/"
                f"{name}</link><description>body {use}</description></item></channel>"
                f"</rss>").encode()
        httpserver.expect_request(f"/{name}").respond_with_data(body, content_type=XML)
        sources.append({"url": httpserver.url_for(f"/{name}"), "category": name})
    # also as Atom, and with the file entity in an attribute-bearing element
    atom = (f'<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY x SYSTEM "file://{secret}">]>'
            f'<feed xmlns="http://www.w3.org/2005/Atom"><title>A</title><id>urn:a</id>'
            f"<updated>2025-06-01T00:00:00Z</updated><entry><id>urn:a:1</id>"
            f"<title>atom &x;</title><updated>2025-06-01T00:00:00Z</updated>"
            f'<content type="html">&x;</content></entry></feed>').encode()
    httpserver.expect_request("/atom").respond_with_data(atom,
                                                         content_type="application/atom+xml")
    sources.append({"url": httpserver.url_for("/atom"), "category": "atom"})
    config = upstream_config(tmp_path, sources)
    code, err = run(config, capsys, "fetch", "--all")
    assert "Traceback" not in err
    time.sleep(0.3)  # let the spy's accept loop see any late connection
    assert spy.connections == 0, "an external entity or DTD was fetched"
    everything = _all_output(tmp_path) + err.encode()
    assert b"XXE-SECRET-MARKER" not in everything
    print(f"exit {code}; published: {titles(tmp_path)}")


# -- big feeds and retention -------------------------------------------------------------------


def _many(n: int) -> bytes:
    """n entries, newest first, a minute apart (Entry 0 is the newest)."""
    start = datetime(2025, 6, 1, tzinfo=UTC)
    items = "".join(
        f"<item><guid>g{i}</guid><title>Entry {i}</title><link>https://up.example/{i}</link>"
        f"<description>&lt;p&gt;Body {i}&lt;/p&gt;</description><pubDate>"
        f"{format_datetime(start - timedelta(minutes=i), usegmt=True)}</pubDate></item>"
        for i in range(n))
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Big</title><link>https://up.example/</link><description>d</description>"
            f"{items}</channel></rss>").encode()


def _big_feed(tmp_path: Path, httpserver: HTTPServer, entries: int,
              retention: int) -> tuple[Path, str]:
    url = httpserver.url_for("/big")
    httpserver.expect_request("/big").respond_with_data(_many(entries), content_type=XML)
    config = upstream_config(tmp_path, [{"url": url, "category": "Big",
                                         "retention": retention}],
                             max_bytes=50_000_000, deadline_seconds=60, timeout_seconds=20)
    return config, url


def _stored(tmp_path: Path) -> int:
    db = sqlite3.connect(tmp_path / "state" / "test.sqlite")
    try:
        return db.execute("SELECT count(*) FROM upstream_entry").fetchone()[0]
    finally:
        db.close()


def test_big_feed_reduced(tmp_path: Path, httpserver: HTTPServer) -> None:
    """The 100,000-entry case, scaled to 10,000 (the full one is `-m slow`)."""
    config, url = _big_feed(tmp_path, httpserver, 10_000, retention=300)
    code, err, seconds, rss_mib = _measured(config, "fetch", "--all")
    print(f"10,000 entries: {seconds:.1f}s, max RSS {rss_mib} MiB")
    assert code == 0, err
    assert seconds < 40 and rss_mib < 400
    assert _stored(tmp_path) == 300
    assert len(published(tmp_path).entries) == 300
    assert "Entry 0" in titles(tmp_path) and "Entry 9999" not in titles(tmp_path)


@pytest.mark.slow
def test_100000_entry_feed(tmp_path: Path, httpserver: HTTPServer) -> None:
    config, url = _big_feed(tmp_path, httpserver, 100_000, retention=200)
    code, err, seconds, rss_mib = _measured(config, "fetch", "--all", timeout=600)
    print(f"100,000 entries: {seconds:.1f}s, max RSS {rss_mib} MiB")
    assert code == 0, err
    assert seconds < 300 and rss_mib < 1500
    assert _stored(tmp_path) == 200
    assert len(published(tmp_path).entries) == 200


# -- ids ----------------------------------------------------------------------------------------


def test_duplicate_ids_with_different_content(tmp_path: Path, capsys: Any,
                                              httpserver: HTTPServer) -> None:
    url = httpserver.url_for("/feed")
    dupes = rss([("same", "First version"), ("same", "Second version"), ("c3", "Other")])
    httpserver.expect_request("/feed").respond_with_data(dupes, content_type=XML)
    config = upstream_config(tmp_path, [{"url": url, "category": "Up"}])
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert f"{url}: warning: " in err and "duplicate id" in err, err
    assert titles(tmp_path) == ["First version", "Other"]  # the first one, in feed order
    # the same feed again: nothing flips
    code, err = run(config, capsys, "fetch", "--all")
    assert titles(tmp_path) == ["First version", "Other"]


def test_upstream_ids_cannot_replace_our_posts(tmp_path: Path, capsys: Any,
                                               httpserver: HTTPServer) -> None:
    """An upstream entry claiming a local post's id (or link) must not replace it."""
    write_post(tmp_path / "posts", "mine.md", "title: My post\ncategories: [Local]\n"
               "date: 2025-01-01 00:00:00")
    write_post(tmp_path / "posts", "custom.md", "title: Custom id\nid: urn:me:custom\n"
               "categories: [Local]\ndate: 2025-01-01 00:00:00")
    ours = "tag:example.org,2026:mine.md"
    feed = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>Up</title>'
            b"<link>https://up.example/</link><description>d</description>"
            b"<item><guid>" + ours.encode() + b"</guid><title>Hijack by id</title>"
            b"<link>https://up.example/1</link><description>evil</description>"
            b"<pubDate>Mon, 02 Jun 2025 10:00:00 GMT</pubDate></item>"
            b"<item><guid>urn:me:custom</guid><title>Hijack custom id</title>"
            b"<link>https://up.example/2</link><description>evil</description>"
            b"<pubDate>Mon, 02 Jun 2025 10:00:00 GMT</pubDate></item>"
            b"<item><guid>x3</guid><title>Hijack by link</title>"
            b"<link>https://example.org/mine/</link><description>evil</description>"
            b"<pubDate>Mon, 02 Jun 2025 10:00:00 GMT</pubDate></item>"
            b"</channel></rss>")
    url = httpserver.url_for("/feed")
    httpserver.expect_request("/feed").respond_with_data(feed, content_type=XML)
    config = upstream_config(tmp_path, [{"url": url, "category": "Up"}])
    # upstream_config's site has no post_url: give the local posts links to collide with
    text = config.read_text().replace("title: Test site",
                                      "title: Test site\n  post_url: https://example.org/{path}/")
    config.write_text(text)
    code, err = run(config, capsys, "fetch", "--all")
    assert code in (0, 1), err
    entries = {e.title: e for e in published(tmp_path).entries}
    assert "My post" in entries and "Custom id" in entries, sorted(entries)
    assert entries["My post"].id == ours
    assert entries["Custom id"].id == "urn:me:custom"
    # the colliding upstream entries are either namespaced (published under another
    # id) or dropped with a message naming them; never silently in our posts' place
    for title in ("Hijack by id", "Hijack custom id", "Hijack by link"):
        if title in entries:
            assert entries[title].id not in (ours, "urn:me:custom")
        else:
            assert "duplicate of" in err or "collides" in err, err
    local = published(tmp_path, "local/atom.xml").entries
    assert sorted(e.title for e in local) == ["Custom id", "My post"]

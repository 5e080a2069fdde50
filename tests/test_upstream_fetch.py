"""`aggregator fetch` against a real HTTP server on 127.0.0.1 (pytest-httpserver).

Every failure case first stores a good poll, then breaks the source, and checks the
exit code, the `url: message` line and that the published feeds keep the good entries.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from upstream_support import published, rss, run, titles, upstream_config
from werkzeug import Request, Response

GOOD = rss([("a1", "Alpha"), ("b2", "Beta")])
XML = "application/rss+xml"


def _setup(tmp_path: Path, httpserver: HTTPServer, capsys: Any, **fetch: Any) -> Path:
    config = upstream_config(tmp_path, [{"url": httpserver.url_for("/feed"),
                                         "category": ["Up", "Stream"]}], **fetch)
    httpserver.expect_request("/feed").respond_with_data(GOOD, content_type=XML)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert titles(tmp_path) == ["Alpha", "Beta"]
    httpserver.clear()
    return config


def test_200_then_304_with_validators(tmp_path: Path, httpserver: HTTPServer,
                                      capsys: Any) -> None:
    seen: list[dict[str, str]] = []
    stamp = "Mon, 02 Jun 2025 10:00:00 GMT"

    def handler(request: Request) -> Response:
        seen.append(dict(request.headers))
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304, headers={"ETag": '"v1"'})
        return Response(GOOD, content_type=XML, headers={"ETag": '"v1"', "Last-Modified": stamp})

    httpserver.expect_request("/feed").respond_with_handler(handler)
    config = upstream_config(tmp_path, [{"url": httpserver.url_for("/feed"), "category": "Up"}])
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert "1 fetched, 0 not modified, 0 failed; 2 new entries" in err
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert "0 fetched, 1 not modified, 0 failed" in err
    assert seen[1]["If-None-Match"] == '"v1"'
    assert seen[1]["If-Modified-Since"] == stamp
    assert "If-None-Match" not in seen[0]
    assert seen[0]["User-Agent"].startswith("aggregator/") and "(+https://" in seen[0]["User-Agent"]
    assert titles(tmp_path) == ["Alpha", "Beta"]
    assert {e.category for e in published(tmp_path, "up/atom.xml").entries} == {"Up"}
    # Not due again for 30 minutes: a plain fetch asks nothing.
    code, err = run(config, capsys, "fetch")
    assert code == 0 and "polled 0 sources" in err and len(seen) == 2


def _slow(request: Request) -> Response:
    time.sleep(1.2)
    return Response(GOOD, content_type=XML)


def _drip(request: Request) -> Response:
    def chunks() -> Iterator[bytes]:
        yield GOOD[:40]
        for _ in range(12):
            time.sleep(0.25)
            yield b" "
    return Response(chunks(), content_type=XML)


def _loop(server: HTTPServer) -> None:
    server.expect_request("/feed").respond_with_response(
        Response(status=302, headers={"Location": server.url_for("/feed2")}))
    server.expect_request("/feed2").respond_with_response(
        Response(status=302, headers={"Location": server.url_for("/feed")}))


BOMB = gzip.compress(b"\0" * 40_000_000, compresslevel=9)  # ~40 KB on the wire
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Shop</title></head><body><p>Hi</p></body></html>"

# name -> (install the broken source, expected exit code, message part)
FAILURES: dict[str, tuple[Callable[[HTTPServer], None], int, str]] = {
    "404": (lambda s: s.expect_request("/feed").respond_with_data("gone", status=404),
            1, "HTTP 404 NOT FOUND; stored entries kept"),
    "500": (lambda s: s.expect_request("/feed").respond_with_data("oops", status=500),
            1, "HTTP 500 INTERNAL SERVER ERROR"),
    "timeout": (lambda s: s.expect_request("/feed").respond_with_handler(_slow),
                1, "timed out (ReadTimeout)"),
    "deadline": (lambda s: s.expect_request("/feed").respond_with_handler(_drip),
                 1, "deadline of 2s passed while reading"),
    "redirect loop": (_loop, 1, "more than 5 redirects"),
    "over the cap": (lambda s: s.expect_request("/feed").respond_with_data(
        GOOD + b" " * 1_100_000, content_type=XML), 1, "body larger than 1000000 bytes"),
    "gzip bomb": (lambda s: s.expect_request("/feed").respond_with_data(
        BOMB, content_type=XML, headers={"Content-Encoding": "gzip"}),
        1, "body larger than 1000000 bytes (decoded)"),
    "malformed XML": (lambda s: s.expect_request("/feed").respond_with_data(
        b"<?xml version='1.0'?><rss><<<&&&", content_type=XML), 1, "not a feed"),
    "empty body": (lambda s: s.expect_request("/feed").respond_with_data(b"", content_type=XML),
                   1, "empty response body"),
    "HTML page": (lambda s: s.expect_request("/feed").respond_with_data(
        HTML_PAGE, content_type="text/html"), 1, "not a feed: the server sent an HTML page"),
    "bad JSON Feed": (lambda s: s.expect_request("/feed").respond_with_data(
        b'{"version": "https://jsonfeed.org/version/1.1"}', content_type="application/feed+json"),
        1, "JSON Feed has no 'items' list"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_failure_keeps_last_good_entries(case: str, tmp_path: Path, httpserver: HTTPServer,
                                         capsys: Any) -> None:
    config = _setup(tmp_path, httpserver, capsys)
    install, expected, message = FAILURES[case]
    install(httpserver)
    started = time.monotonic()
    code, err = run(config, capsys, "fetch", "--all")
    assert time.monotonic() - started < 5
    assert code == expected, err
    url = httpserver.url_for("/feed")
    assert f"{url}: error: " in err and message in err, err
    assert titles(tmp_path) == ["Alpha", "Beta"]
    assert titles(tmp_path, "rss.xml") == ["Alpha", "Beta"]
    # build (no network) still publishes them too
    httpserver.clear()
    code, err = run(config, capsys, "build")
    assert code == 0, err
    assert titles(tmp_path) == ["Alpha", "Beta"] and not httpserver.log


def test_recoverable_malformed_xml_is_used_with_a_warning(tmp_path: Path,
                                                          httpserver: HTTPServer,
                                                          capsys: Any) -> None:
    config = _setup(tmp_path, httpserver, capsys)
    broken = rss([("c3", "Gamma & Co")]).replace(b"</channel></rss>", b"")  # unclosed, bare &
    httpserver.expect_request("/feed").respond_with_data(broken, content_type=XML)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert "warning: " in err and "used the 1 entries recovered" in err
    assert titles(tmp_path) == ["Alpha", "Beta", "Gamma & Co"]


def test_wrong_charset_is_recovered(tmp_path: Path, httpserver: HTTPServer,
                                    capsys: Any) -> None:
    config = _setup(tmp_path, httpserver, capsys)
    # Latin-1 bytes declared as UTF-8 (in the XML and in the HTTP header)
    body = rss([("d4", "Café crème")], encoding="iso-8859-1").replace(
        b'encoding="iso-8859-1"', b'encoding="utf-8"')
    httpserver.expect_request("/feed").respond_with_data(
        body, content_type="application/rss+xml; charset=utf-8")
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert "wrong encoding declared" in err
    assert titles(tmp_path) == ["Alpha", "Beta", "Café crème"]


def test_http_charset_and_utf16_bom(tmp_path: Path, httpserver: HTTPServer,
                                    capsys: Any) -> None:
    config = upstream_config(tmp_path, [
        {"url": httpserver.url_for("/cp1251"), "category": "A"},
        {"url": httpserver.url_for("/utf16"), "category": "B"}])
    cp1251 = rss([("e5", "Привет")], encoding="windows-1251").replace(
        b' encoding="windows-1251"', b"")  # only the HTTP header says it
    httpserver.expect_request("/cp1251").respond_with_data(
        cp1251, content_type="text/xml; charset=windows-1251")
    utf16 = rss([("f6", "Grüße")], encoding="utf-16")
    httpserver.expect_request("/utf16").respond_with_data(utf16, content_type="application/xml")
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert titles(tmp_path) == ["Grüße", "Привет"]


def test_one_failure_does_not_stop_the_others(tmp_path: Path, httpserver: HTTPServer,
                                              capsys: Any) -> None:
    config = upstream_config(tmp_path, [
        {"url": httpserver.url_for("/ok"), "category": "A"},
        {"url": httpserver.url_for("/bad"), "category": "B"}])
    httpserver.expect_request("/ok").respond_with_data(GOOD, content_type=XML)
    httpserver.expect_request("/bad").respond_with_data("no", status=503)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 1 and "1 fetched, 0 not modified, 1 failed" in err
    assert titles(tmp_path) == ["Alpha", "Beta"]
    assert (tmp_path / "feeds" / "a" / "atom.xml").exists()


def test_a_re_poll_of_304s_reuses_connections(tmp_path: Path, capsys: Any) -> None:
    """A 304 must hand its connection back to the pool: left unread, every re-polled
    source would open a new TCP connection (and the server a new thread)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def setup(self) -> None:
            connections.append(1)
            super().setup()

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.headers.get("If-None-Match") == '"v1"':
                self.send_response(304)
                self.send_header("ETag", '"v1"')
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", XML)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        sources = [{"url": f"http://127.0.0.1:{port}/feed-{i}", "category": "Up"}
                   for i in range(30)]
        config = upstream_config(tmp_path, sources, concurrency=3, per_host_limit=3)
        code, err = run(config, capsys, "fetch", "--all")
        assert code == 0 and "30 fetched" in err, err
        before = len(connections)
        code, err = run(config, capsys, "fetch", "--all")
        assert code == 0 and "30 not modified" in err, err
        assert len(connections) - before <= 3
    finally:
        server.shutdown()
        server.server_close()


def test_bodies_waiting_for_a_parse_process_are_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetching outruns parsing: a poll holds the bodies waiting for a parse process up
    to PARSE_BACKLOG_BYTES (plus the fetches under way), not every body fetched. 24
    feeds of ~370 KB, parsed by 2 processes, the backlog set to 1 MB: the poll's Python
    peak stays under half the bodies' total, and every feed is stored. (The files are
    served by http.server from disk: its sendfile allocates nothing the peak counts.)"""
    import functools
    import random
    import threading
    import tracemalloc
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import aggregator.fetch.poll as poll_module
    from aggregator.config import load_config
    from aggregator.fetch import poll_sources

    www = tmp_path / "www"
    www.mkdir()
    rng = random.Random(5)
    for n in range(24):
        text = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(8000))
        (www / f"f{n}.xml").write_bytes(rss([(f"g{n}-{k}", f"T{n}-{k}") for k in range(8)],
                                            extra=f"<!-- {text} -->"))  # (kept by no entry)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(poll_module, "PARSE_BACKLOG_BYTES", 1 << 20)
        config = load_config(upstream_config(
            tmp_path, [{"url": f"http://127.0.0.1:{server.server_port}/f{n}.xml",
                        "category": "B"} for n in range(24)],
            timeout_seconds=30, deadline_seconds=60, concurrency=2, per_host_limit=2,
            parse_processes=2))
        poll_sources(config, config.upstream[:1])  # (the modules a poll imports, first)
        total = sum((www / f"f{n}.xml").stat().st_size for n in range(1, 24))
        tracemalloc.start()
        try:
            report = poll_sources(config, config.upstream[1:])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        server.shutdown()
        server.server_close()
    assert report.fetched == 23 and not report.failed
    assert peak < total / 2, (peak, total)

"""The optional HTTP server: conditional GET, gzip, Content-Types, /healthz, /metrics."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, write_config, write_post
from prometheus_client.parser import text_string_to_metric_families

from aggregator.config import load_config
from aggregator.pipeline import build
from aggregator.service.http import HTTPService, accepts_gzip
from aggregator.service.metrics import ServiceStats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, \
            response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("http")
    for i in range(3):
        write_post(tmp / "posts", f"Tech/Python/p{i}.md",
                   f"title: Post {i}\ncategories: [Tech, Python]\ndate: 2026-01-0{i + 1}",
                   "<div><p>" + "Long enough to be worth compressing. " * 20 + "</p></div>")
    config = load_config(write_config(tmp))
    report = build(config)
    stats = ServiceStats()
    stats.record_build(True, report.seconds, report.entries, report.feeds)
    stats.record_poll("https://feeds.example/a.xml", "not_modified")
    stats.record_poll("https://feeds.example/b.xml", "failed", "HTTP 500")
    (tmp / "secret.txt").write_text("outside", encoding="utf-8")
    service = HTTPService("127.0.0.1", free_port(), lambda: config.output_dir, stats)
    service.start()
    try:
        yield service.address[1], config.output_dir
    finally:
        service.stop()


def test_etag_then_304(served: tuple[int, Path]) -> None:
    port, _out = served
    status, headers, body = get(port, "/atom.xml")
    assert status == 200 and body.startswith(b"<?xml")
    assert headers["etag"].startswith('"') and headers["last-modified"]
    status, headers2, body2 = get(port, "/atom.xml", **{"If-None-Match": headers["etag"]})
    assert status == 304 and body2 == b"" and headers2["etag"] == headers["etag"]
    status, _h, _b = get(port, "/atom.xml", **{"If-Modified-Since": headers["last-modified"]})
    assert status == 304
    status, _h, _b = get(port, "/atom.xml", **{"If-None-Match": '"other"'})
    assert status == 200


def test_gzip_when_accepted(served: tuple[int, Path]) -> None:
    port, out = served
    status, headers, body = get(port, "/tech/atom.xml", **{"Accept-Encoding": "gzip, br"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == (out / "tech/atom.xml").read_bytes()
    assert "accept-encoding" in headers["vary"].lower()
    # the gzip ETag validates the identity one too (weak comparison)
    status, _h, _b = get(port, "/tech/atom.xml", **{"If-None-Match": headers["etag"]})
    assert status == 304
    status, plain, body = get(port, "/tech/atom.xml", **{"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in plain and body.startswith(b"<?xml")
    assert accepts_gzip("deflate, gzip;q=0.5") and not accepts_gzip("identity")


@pytest.mark.parametrize(("path", "ctype"), [
    ("/atom.xml", "application/atom+xml"),
    ("/rss.xml", "application/rss+xml"),
    ("/tech/python/rss.xml", "application/rss+xml"),
    ("/", "text/html"),
    ("/index.html", "text/html"),
    ("/feeds.opml", "text/x-opml"),
    ("/tech/python/feed.json", "application/json"),
    ("/tech/python/", "text/html"),
    ("/style.css", "text/css"),
    ("/page.js", "text/javascript"),  # else nosniff stops browsers running it
])
def test_content_types(served: tuple[int, Path], path: str, ctype: str) -> None:
    status, headers, _body = get(served[0], path)
    assert status == 200
    assert headers["content-type"].split(";")[0] == ctype


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/tech/../../secret.txt", "/.aggregator-manifest",
    "/tech/%2e%2e/%2e%2e/secret.txt", "/nope.xml", "/tech/nope/", "/..%2fsecret.txt",
    "/%00atom.xml",
])
def test_no_traversal_or_hidden_files(served: tuple[int, Path], path: str) -> None:
    status, _headers, body = get(served[0], path)
    assert status == 404 and b"outside" not in body


def test_healthz(served: tuple[int, Path]) -> None:
    status, headers, body = get(served[0], "/healthz")
    assert status == 200 and headers["content-type"] == "application/json"
    health = json.loads(body)
    assert health["ok"] is True and health["last_build"]
    assert [s["url"] for s in health["failing_sources"]] == ["https://feeds.example/b.xml"]


def test_metrics_parse(served: tuple[int, Path]) -> None:
    status, headers, body = get(served[0], "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}
    assert samples[("aggregator_builds_total", (("outcome", "published"),))] == 1
    assert samples[("aggregator_build_seconds_count", ())] == 1
    assert samples[("aggregator_polls_total", (("outcome", "failed"),))] == 1
    assert samples[("aggregator_polls_total", (("outcome", "not_modified"),))] == 1
    assert samples[("aggregator_entries", ())] == 3


def test_run_serves_when_configured(tmp_path: Path) -> None:
    """The subprocess path: `serve:` in config starts the server after the first build."""
    write_post(tmp_path / "posts", "Tech/a.md", "title: A\ncategories: [Tech]")
    port = free_port()
    config = write_config(tmp_path, serve={"host": "127.0.0.1", "port": port})
    proc = subprocess.Popen([sys.executable, "-m", "aggregator", "run", "-c", str(config)],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _h, body = get(port, "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert status == 200 and json.loads(body)["ok"] is True
        status, _h, body = get(port, "/metrics")
        families = {f.name for f in text_string_to_metric_families(body.decode())}
        assert {"aggregator_builds", "aggregator_build_seconds", "aggregator_polls",
                "aggregator_entries"} <= families
        assert get(port, "/tech/atom.xml")[0] == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


# --- hostile clients: smuggling, idle and slow sockets, Range, Accept-Encoding -------

def read_all(sock: socket.socket, quiet: float = 1.0) -> bytes:
    """Everything the server sends until it closes or is quiet for `quiet` seconds."""
    sock.settimeout(quiet)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk


SMUGGLED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("framing", [
    b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
])
def test_a_get_body_is_never_a_second_request(served: tuple[int, Path], framing: bytes) -> None:
    """CL.0: a GET's body holding a request gets one response (or a close), never two."""
    with socket.create_connection(("127.0.0.1", served[0]), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + framing)
        data = read_all(sock)
    assert data.count(b"HTTP/1.1 ") <= 1, data[:600]
    assert b"aggregator_builds_total" not in data


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True once the server closes the socket (EOF or reset), False after `within` s."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def test_idle_and_slow_sockets_cost_no_thread_and_are_closed(tmp_path: Path) -> None:
    """200 idle + 100 slowloris sockets: /healthz answers within 100 ms, the thread count
    stays put, and every one of them is closed after the idle timeout."""
    (tmp_path / "index.html").write_text("<p>hi</p>", encoding="utf-8")
    stats = ServiceStats()
    stats.record_build(True, 0.1, 1, 1)
    service = HTTPService("127.0.0.1", free_port(), lambda: tmp_path, stats, idle_timeout=1.0)
    service.start()
    port = service.address[1]
    sockets: list[socket.socket] = []
    try:
        get(port, "/healthz")  # the loop's first request warms up what it lazily creates
        before = thread_count()
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 3 == 0:  # slowloris: a request line and headers that never end
                sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\nX-a: ")
            sockets.append(sock)
        time.sleep(0.2)
        started = time.perf_counter()
        status, _h, _b = get(port, "/healthz")
        took = time.perf_counter() - started
        assert status == 200 and took < 0.1, took
        assert thread_count() - before <= 4, (before, thread_count())
        # the slow ones keep trickling bytes; the server's deadline is for a whole request
        for _ in range(8):
            time.sleep(0.25)
            for sock in sockets[::3]:
                try:
                    sock.sendall(b"a")
                except OSError:
                    pass
        assert all(closed_by_server(sock, within=3.0) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
        service.stop()


def test_connections_over_the_cap_are_closed_and_the_rest_served(tmp_path: Path) -> None:
    service = HTTPService("127.0.0.1", free_port(), lambda: tmp_path, ServiceStats(),
                          max_connections=20)
    service.start()
    port = service.address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    time.sleep(0.3)  # the loop accepts them
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            assert closed_by_server(extra, within=2.0)
        held.pop().close()
        time.sleep(0.2)  # the server sees the close
        assert get(port, "/healthz")[0] == 503  # served again (no build recorded: 503)
        started = time.monotonic()
        service.stop()  # with 19 idle connections open: they are closed, not waited for
        assert time.monotonic() - started < 1.0
        assert all(closed_by_server(sock, within=1.0) for sock in held)
    finally:
        for sock in held:
            sock.close()
        service.stop()


def test_range_gets_206(served: tuple[int, Path]) -> None:
    port, out = served
    whole = (out / "atom.xml").read_bytes()
    for encoding in ("identity", "gzip"):
        status, headers, body = get(port, "/atom.xml", Range="bytes=10-19",
                                    **{"Accept-Encoding": encoding})
        assert status == 206 and body == whole[10:20], (status, body[:40])
        assert headers["content-range"] == f"bytes 10-19/{len(whole)}"
    status, headers, body = get(port, "/atom.xml", Range="bytes=-5")
    assert status == 206 and body == whole[-5:]
    status, headers, _b = get(port, "/atom.xml", Range=f"bytes={len(whole)}-")
    assert status == 416 and headers["content-range"] == f"bytes */{len(whole)}"
    # If-Range: the current tag (or date) gets the part, any other tag the whole file
    etag = get(port, "/atom.xml")[1]["etag"]
    status, _h, body = get(port, "/atom.xml", Range="bytes=0-9", **{"If-Range": etag})
    assert status == 206 and body == whole[:10]
    for stale in ('"0-0"', f"W/{etag}"):
        status, _h, body = get(port, "/atom.xml", Range="bytes=0-9", **{"If-Range": stale})
        assert status == 200 and body == whole, stale


@pytest.mark.parametrize("accept", [
    "*;q=1, gzip;q=0", "gzip;level=9;q=0", "*, x-gzip; Q=0, gzip;q=0",
])
def test_gzip_refused_by_q_zero_gets_identity(served: tuple[int, Path], accept: str) -> None:
    port, out = served
    status, headers, body = get(port, "/tech/atom.xml", **{"Accept-Encoding": accept})
    assert status == 200 and "content-encoding" not in headers
    assert body == (out / "tech/atom.xml").read_bytes()


@pytest.mark.parametrize(("link", "to", "url", "served_it"), [
    ("leak.txt", "../secret.txt", "/leak.txt", False),       # a file link leading out
    ("up", "..", "/up/secret.txt", False),                   # a folder link leading out
    ("alias.xml", "atom.xml", "/alias.xml", True),           # a link that stays inside
    ("t", "tech", "/t/atom.xml", True),
])
def test_symlinks_are_served_only_inside_the_output_dir(
        served: tuple[int, Path], link: str, to: str, url: str, served_it: bool) -> None:
    port, out = served
    (out / link).symlink_to(to)
    try:
        status, _h, body = get(port, url)
    finally:
        (out / link).unlink()
    assert b"outside" not in body
    assert status == (200 if served_it else 404)

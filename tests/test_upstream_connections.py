"""The Fetcher's own redirects and connection pool, against a real keep-alive HTTP/1.1
server on 127.0.0.1 that counts the TCP connections it accepts."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from aggregator.sources.upstream.http import Fetcher, FetchError, Limits

Route = Callable[[BaseHTTPRequestHandler], None]


class _QuietServer(ThreadingHTTPServer):
    """Prints the errors of its handlers, except a client hanging up on a kept-alive
    connection: the tests below close and reset connections on purpose."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class Server:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.connections = 0
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.paths.append(self.path)
                routes.get(self.path, _not_found)(self)

            do_HEAD = do_GET  # noqa: N815

        self.http = _QuietServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, Route]], Server]]:
    started: list[Server] = []

    def start(routes: dict[str, Route]) -> Server:
        server = Server(routes)
        threading.Thread(target=server.http.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.http.shutdown()
        server.http.server_close()


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    with Fetcher(Limits(timeout=5, deadline=10, allow_private=True)) as fetcher:
        yield fetcher


def _not_found(h: BaseHTTPRequestHandler) -> None:
    _send(h, 404, b"no")


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes = b"<rss/>",
          headers: tuple[tuple[str, str], ...] = ()) -> None:
    h.send_response(status)
    for name, value in headers:
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def _redirect(status: int, location: str, body: bytes = b"moved") -> Route:
    return lambda h: _send(h, status, body, (("Location", location),))


def test_redirects_are_followed_on_one_connection(serve: Any, fetcher: Fetcher) -> None:
    server = serve({"/a": _redirect(301, "/b"), "/b": _redirect(302, "c?x=1"),
                    "/c?x=1": lambda h: _send(h, 200, b"<rss>c</rss>")})
    response = fetcher.get(server.url("/a"))
    assert (response.status, response.body) == (200, b"<rss>c</rss>")
    assert response.url == server.url("/c?x=1")  # relative Locations resolved
    assert response.moved_to is None  # a 302 on the way: not a permanent move
    assert server.paths == ["/a", "/b", "/c?x=1"]
    assert server.connections == 1  # each hop's body read, its connection reused


def test_permanent_redirects_only_are_a_move(serve: Any, fetcher: Fetcher) -> None:
    server = serve({"/a": _redirect(301, "/b"), "/b": _redirect(308, "/c"),
                    "/c": lambda h: _send(h, 200)})
    assert fetcher.get(server.url("/a")).moved_to == server.url("/c")


def test_redirect_to_another_scheme_is_refused(serve: Any, fetcher: Fetcher) -> None:
    server = serve({"/a": _redirect(302, "ftp://example.com/feed")})
    with pytest.raises(FetchError, match="not an http.s. URL: 'ftp://example.com/feed'"):
        fetcher.get(server.url("/a"))


def test_a_big_redirect_body_is_not_read(serve: Any, fetcher: Fetcher) -> None:
    """A redirect's body is drained only up to 64 KiB; past that its connection is
    dropped rather than read to the end."""
    server = serve({"/a": _redirect(302, "/b", b"x" * 1_000_000),
                    "/b": lambda h: _send(h, 200, b"<rss>b</rss>")})
    assert fetcher.get(server.url("/a")).body == b"<rss>b</rss>"
    assert server.connections == 2


def test_too_many_redirects(serve: Any, fetcher: Fetcher) -> None:
    server = serve({f"/{i}": _redirect(302, f"/{i + 1}") for i in range(10)})
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetcher.get(server.url("/0"))
    assert server.paths == [f"/{i}" for i in range(6)]


def test_a_connection_the_server_closed_is_not_reused(serve: Any, fetcher: Fetcher) -> None:
    closed: list[bool] = []

    def close_after(h: BaseHTTPRequestHandler) -> None:
        _send(h, 200, b"<rss/>", (("Connection", "close"),))
        closed.append(True)

    server = serve({"/close": close_after, "/ok": lambda h: _send(h, 200, b"<rss>ok</rss>")})
    for _ in range(3):
        assert fetcher.get(server.url("/close")).status == 200
        assert fetcher.get(server.url("/ok")).body == b"<rss>ok</rss>"
    # each "Connection: close" ends the connection it came on; /ok opens the next
    assert server.connections == 4 and len(closed) == 3


def test_a_kept_alive_connection_the_server_dropped_is_replaced(serve: Any,
                                                                fetcher: Fetcher) -> None:
    """The server hangs up on a kept-alive connection when the next request comes (as
    servers do at their keep-alive timeout, racing our check of the idle socket): the
    request is sent again on a new connection, not reported as a failure."""
    def answer_once(h: BaseHTTPRequestHandler) -> None:
        if getattr(h, "answered", False):  # the handler lives as long as its connection
            h.close_connection = True
            return
        h.answered = True  # type: ignore[attr-defined]
        _send(h, 200, b"<rss/>")

    server = serve({"/feed": answer_once})
    for _ in range(3):
        assert fetcher.get(server.url("/feed")).status == 200
    assert server.connections == 3 and len(server.paths) == 5


def test_non_ascii_paths_are_percent_encoded(serve: Any, fetcher: Fetcher) -> None:
    server = serve({"/%E6%97%A5%E6%8A%A5.xml?q=%C3%A9": lambda h: _send(h, 200)})
    assert fetcher.get(server.url("/日报.xml?q=é")).status == 200


def test_repeated_headers_are_joined(serve: Any, fetcher: Fetcher) -> None:
    server = serve({"/feed": lambda h: _send(h, 200, b"<rss/>", (
        ("Cache-Control", "max-age=60"), ("Cache-Control", "public")))})
    assert fetcher.get(server.url("/feed")).headers["cache-control"] == "max-age=60, public"


def test_probes_keep_their_connection(serve: Any, fetcher: Fetcher) -> None:
    image = (("Content-Type", "image/png"),)
    server = serve({f"/{i}.png": lambda h: _send(h, 200, b"\x89PNG" * 100, image)
                    for i in range(5)})
    for i in range(5):
        assert fetcher.probe(server.url(f"/{i}.png")) == (200, "image/png", 400)
    assert server.connections == 1

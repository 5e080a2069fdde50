"""An upstream of many hosts for the fetch workers' tests: real HTTP on 127.0.0.2-21.

All of 127.0.0.0/8 is loopback on Linux, so each address is a distinct host to a
fetcher (its per-host limits, its connection pools) while everything stays on this
machine. One listening socket an address, the same port on each, served by threads of
the test process (http.server, HTTP/1.1 keep-alive): one thread accepts on every
address, a thread a connection answers.

    with MultiHostUpstream(sources=100, delay=0.05) as upstream:
        upstream.urls()                 # http://127.0.0.X:PORT/feed/<n>.xml, n = 0..99
        ...                             # fetch them
        upstream.max_in_flight()        # {"127.0.0.2": 2, ...}: per host, the most
                                        #   requests it was answering at once
        upstream.source_stats(7)        # SourceStats(ok=1, not_modified=2, times=[...])
        upstream.change(7)              # source 7 gains an item and a new ETag

- Source n lives on host `hosts[n % len(hosts)]`; its URL is `url(n)`.
- Each feed is RSS 2.0 with `items` items at first (guids `urn:multihost:<n>:<k>`,
  k = 0, 1, …, newest first); `change(n)` adds item k = (items so far) and gives the
  source a new ETag. The ETag is `"<n>-<version>"`, version = the number of changes.
- A GET with If-None-Match naming the current ETag (weak comparison, lists and `*`
  allowed) is answered 304; other GETs 200 with the feed. Unknown paths: 404.
- `delay` (seconds, settable at any time) is slept before each answer, so requests
  overlap and the in-flight counts show a fetcher's concurrency.
- Counters are kept under one lock: per host the requests in flight now and the most
  at once (`max_in_flight`), per source the 200s, the 304s and the time.time() of each
  request's arrival (`source_stats`). `reset_stats()` zeroes them. A request is in
  flight from its head's arrival until its answer is ready to send, and is counted then,
  before the client can have the answer: what a client has received is counted.
"""

from __future__ import annotations

import email.utils
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import ClassVar
from xml.sax.saxutils import escape

FIRST_HOST = 2  # 127.0.0.2: 127.0.0.1 is left to the other test servers
# the items' dates: item k is k hours after this (2024-01-01T00:00:00Z)
EPOCH = 1_704_067_200


@dataclass
class SourceStats:
    """What one source was asked: 200s, 304s and each request's arrival time."""

    ok: int = 0
    not_modified: int = 0
    times: list[float] = field(default_factory=list)


@dataclass
class _HostStats:
    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0


class MultiHostUpstream:
    """Feeds of `sources` sources over `hosts` loopback hosts; see the module docstring."""

    def __init__(self, sources: int, hosts: int = 20, items: int = 3,
                 delay: float = 0.0) -> None:
        if not 1 <= hosts <= 250:
            raise ValueError("hosts must be within 1..250 (127.0.0.2 … 127.0.0.251)")
        self.sources = sources
        self.hosts = [f"127.0.0.{FIRST_HOST + i}" for i in range(hosts)]
        self.delay = delay
        self.port = 0
        self._lock = threading.Lock()
        self._versions = [0] * sources
        self._items = [items] * sources
        self._host_stats = {host: _HostStats() for host in self.hosts}
        self._source_stats = [SourceStats() for _ in range(sources)]
        self._servers: list[_Server] = []
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()

    # -- the sources ------------------------------------------------------------------

    def host_of(self, n: int) -> str:
        return self.hosts[n % len(self.hosts)]

    def url(self, n: int) -> str:
        return f"http://{self.host_of(n)}:{self.port}/feed/{n}.xml"

    def urls(self) -> list[str]:
        return [self.url(n) for n in range(self.sources)]

    def etag(self, n: int) -> str:
        with self._lock:
            return f'"{n}-{self._versions[n]}"'

    def change(self, n: int) -> str:
        """Source n gains a new newest item and a new ETag; the new ETag."""
        with self._lock:
            self._versions[n] += 1
            self._items[n] += 1
            return f'"{n}-{self._versions[n]}"'

    def feed(self, n: int) -> tuple[str, bytes]:
        """Source n's current (ETag, RSS document)."""
        with self._lock:
            etag, items = f'"{n}-{self._versions[n]}"', self._items[n]
        link = escape(f"http://{self.host_of(n)}:{self.port}/")
        parts = [f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
                 f"<title>Source {n}</title><link>{link}</link>"
                 f"<description>Test source {n}</description>"]
        for k in reversed(range(items)):
            date = email.utils.formatdate(EPOCH + 3600 * k, usegmt=True)
            parts.append(f"<item><title>Source {n} item {k}</title>"
                         f"<link>{link}posts/{n}/{k}</link>"
                         f'<guid isPermaLink="false">urn:multihost:{n}:{k}</guid>'
                         f"<pubDate>{date}</pubDate>"
                         f"<description>Item {k} of source {n}.</description></item>")
        parts.append("</channel></rss>\n")
        return etag, "".join(parts).encode("utf-8")

    # -- the counters -----------------------------------------------------------------

    def max_in_flight(self) -> dict[str, int]:
        """Per host, the most requests it was answering at once."""
        with self._lock:
            return {host: s.max_in_flight for host, s in self._host_stats.items()}

    def host_requests(self) -> dict[str, int]:
        """Per host, the requests it got (any path)."""
        with self._lock:
            return {host: s.requests for host, s in self._host_stats.items()}

    def source_stats(self, n: int) -> SourceStats:
        """A copy of source n's counts and request times."""
        with self._lock:
            s = self._source_stats[n]
            return SourceStats(s.ok, s.not_modified, list(s.times))

    def reset_stats(self) -> None:
        with self._lock:
            for host in self.hosts:
                self._host_stats[host] = _HostStats()
            self._source_stats = [SourceStats() for _ in range(self.sources)]

    def _arrived(self, host: str) -> None:
        with self._lock:
            s = self._host_stats[host]
            s.requests += 1
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)

    def _answered(self, host: str, n: int | None, status: int, at: float) -> None:
        with self._lock:
            self._host_stats[host].in_flight -= 1
            if n is None:
                return
            s = self._source_stats[n]
            s.times.append(at)
            if status == 200:
                s.ok += 1
            elif status == 304:
                s.not_modified += 1

    # -- serving ----------------------------------------------------------------------

    def start(self) -> None:
        """Listen on every host at one free port (tried anew when one address's is taken);
        one thread accepts on all of them, a thread a connection answers."""
        for _attempt in range(20):
            try:
                self._bind_all()
                break
            except OSError:
                self._close_servers()
        else:
            raise OSError(f"no port free on all of {self.hosts[0]}…{self.hosts[-1]}")
        self._stopping.clear()
        self._acceptor = threading.Thread(target=self._accept, name="multihost-upstream",
                                          daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            for server in self._servers:
                server.timeout = 0
                selector.register(server, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _events in selector.select(timeout=0.05):
                    ready = key.fileobj
                    assert isinstance(ready, _Server)
                    ready.handle_request()

    def _bind_all(self) -> None:
        port = 0
        for host in self.hosts:
            server = _Server((host, port), _Handler)
            server.upstream = self
            self._servers.append(server)
            port = server.server_address[1]
        self.port = port

    def stop(self) -> None:
        """Stop listening and close the open keep-alive connections."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
            self._acceptor = None
        with self._lock:
            open_now = list(self._connections)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._close_servers()

    def _close_servers(self) -> None:
        for server in self._servers:
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> MultiHostUpstream:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    upstream: MultiHostUpstream

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket],
                        client_address: tuple[str, int]) -> None:
        assert isinstance(request, socket.socket)
        with self.upstream._lock:
            self.upstream._connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket],
                     client_address: tuple[str, int] | str) -> None:
        """A client gone mid-answer (a killed worker) is expected: no traceback for it."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        assert isinstance(request, socket.socket)
        with self.upstream._lock:
            self.upstream._connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "multihost-upstream/1"
    timeout = 10  # an idle keep-alive connection is closed after this many seconds
    server: _Server
    PREFIX: ClassVar[str] = "/feed/"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        upstream = self.server.upstream
        host = self.server.server_address[0]
        assert isinstance(host, str)
        at = time.time()
        upstream._arrived(host)
        n = self._source(upstream)
        answer: tuple[int, bytes, str | None, str | None] = (404, b"not found\n",
                                                            "text/plain", None)
        try:
            if upstream.delay > 0:
                time.sleep(upstream.delay)
            if n is not None:
                etag, body = upstream.feed(n)
                if _etag_matches(self.headers.get("If-None-Match"), etag):
                    answer = (304, b"", None, etag)
                else:
                    answer = (200, body, "application/rss+xml; charset=utf-8", etag)
        finally:
            # counted before the answer is sent: a client holding it sees it counted
            upstream._answered(host, n, answer[0], at)
        self._reply(*answer)

    def _source(self, upstream: MultiHostUpstream) -> int | None:
        """The source number of /feed/<n>.xml when n lives on this host, else None."""
        path = self.path.split("?", 1)[0]
        if not (path.startswith(self.PREFIX) and path.endswith(".xml")):
            return None
        number = path[len(self.PREFIX):-len(".xml")]
        if not number.isdigit() or int(number) >= upstream.sources:
            return None
        n = int(number)
        return n if upstream.host_of(n) == self.server.server_address[0] else None

    def _reply(self, status: int, body: bytes, content_type: str | None,
               etag: str | None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if etag:
            self.send_header("ETag", etag)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match's weak comparison: `*`, or any listed tag equal to etag sans W/."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))

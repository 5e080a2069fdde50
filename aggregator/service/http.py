"""A small read-only HTTP server for the output dir (stdlib ThreadingHTTPServer).

Feed readers poll often, so conditional GET (ETag / Last-Modified → 304) and gzip
matter more than anything else here. Only regular files under the output dir are
served; dot-names (the manifest, temp files) never are.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import os
import posixpath
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from aggregator import __version__
from aggregator.service.metrics import CONTENT_TYPE_LATEST, ServiceStats

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "atom.xml": "application/atom+xml; charset=utf-8",
    "rss.xml": "application/rss+xml; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".opml": "text/x-opml; charset=utf-8",
    ".xml": "application/xml; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
GZIP_MIN_BYTES = 256
_GZIP_CACHE_MAX = 256


def content_type(name: str) -> str:
    if name in CONTENT_TYPES:
        return CONTENT_TYPES[name]
    return CONTENT_TYPES.get(posixpath.splitext(name)[1].lower(), "application/octet-stream")


def accepts_gzip(header: str | None) -> bool:
    for part in (header or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


class FeedServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow client must not hold up shutdown

    def __init__(self, address: tuple[str, int], root: Callable[[], Path],
                 stats: ServiceStats) -> None:
        self.root = root  # a callable: SIGHUP may move the output dir
        self.stats = stats
        self.gzip_cache: dict[tuple[str, str], bytes] = {}
        self.cache_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, FeedHandler)


class FeedHandler(BaseHTTPRequestHandler):
    server: FeedServer
    server_version = f"aggregator/{__version__}"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("http %s " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._respond(head=False)

    def _respond(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path == "/healthz":
            health = self.server.stats.health()
            body = json.dumps(health).encode("utf-8")
            status = HTTPStatus.OK if health["ok"] else HTTPStatus.SERVICE_UNAVAILABLE
            return self._send(status, body, "application/json", head, cache=False)
        if path == "/metrics":
            return self._send(HTTPStatus.OK, self.server.stats.prometheus(),
                              CONTENT_TYPE_LATEST, head, cache=False)
        target = self._resolve(path)
        if target is None:
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n",
                              "text/plain; charset=utf-8", head, cache=False)
        self._send_file(target, head)

    def _resolve(self, path: str) -> Path | None:
        """The file for a URL path, or None: no '..', no dot-names, no way out of root."""
        if "\0" in path or "\\" in path or not path.startswith("/"):
            return None
        parts = [p for p in path.split("/") if p]
        if any(p.startswith(".") for p in parts):
            return None
        root = self.server.root().resolve()
        target = root.joinpath(*parts)
        if path.endswith("/") or not parts:
            target = target / "index.html"
        try:
            real = target.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if root != real and root not in real.parents:
            return None  # a symlink pointing outside
        return real if real.is_file() else None

    def _send_file(self, target: Path, head: bool) -> None:
        try:
            with open(target, "rb") as handle:
                st = os.fstat(handle.fileno())
                data = handle.read()
        except OSError:
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n",
                              "text/plain; charset=utf-8", head, cache=False)
        # Size + mtime_ns: the publisher never rewrites unchanged bytes, so this only
        # changes when the content does, and costs no hashing per request.
        tag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        use_gzip = len(data) >= GZIP_MIN_BYTES and accepts_gzip(
            self.headers.get("Accept-Encoding"))
        etag = f'"{tag}-gz"' if use_gzip else f'"{tag}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        headers = {"ETag": etag, "Last-Modified": last_modified,
                   "Vary": "Accept-Encoding", "Cache-Control": "no-cache"}
        if self._not_modified(tag, int(st.st_mtime)):
            return self._send(HTTPStatus.NOT_MODIFIED, b"", None, True, extra=headers)
        if use_gzip:
            data = self._gzip(str(target), tag, data)
            headers["Content-Encoding"] = "gzip"
        self._send(HTTPStatus.OK, data, content_type(target.name), head, extra=headers)

    def _not_modified(self, tag: str, mtime: int) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:  # RFC 9110: If-None-Match wins over If-Modified-Since
            if inm.strip() == "*":
                return True
            for candidate in inm.split(","):
                value = candidate.strip().removeprefix("W/").strip('"')
                if value in (tag, f"{tag}-gz"):  # weak comparison: either encoding
                    return True
            return False
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                since = email.utils.parsedate_to_datetime(ims)
            except (TypeError, ValueError):
                return False
            return since is not None and mtime <= since.timestamp()
        return False

    def _gzip(self, key: str, tag: str, data: bytes) -> bytes:
        with self.server.cache_lock:
            cached = self.server.gzip_cache.get((key, tag))
        if cached is not None:
            return cached
        packed = gzip.compress(data, compresslevel=6, mtime=0)
        with self.server.cache_lock:
            cache = self.server.gzip_cache
            if len(cache) >= _GZIP_CACHE_MAX:
                cache.clear()  # simple bound; feeds are few and rebuilt rarely
            cache[(key, tag)] = packed
        return packed

    def _send(self, status: HTTPStatus, body: bytes, ctype: str | None, head: bool,
              cache: bool = True, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if not cache:
            self.send_header("Cache-Control", "no-store")
        if status != HTTPStatus.NOT_MODIFIED:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head and status != HTTPStatus.NOT_MODIFIED:
            self.wfile.write(body)


class HTTPService:
    """The server on its own thread; start/stop from the runner."""

    def __init__(self, host: str, port: int, root: Callable[[], Path],
                 stats: ServiceStats) -> None:
        self.server = FeedServer((host, port), root, stats)
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.25}, name="http",
                                        daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        host, port = self.address
        log.info("serving %s on http://%s:%d/", self.server.root(), host, port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

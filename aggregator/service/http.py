"""A small read-only HTTP server for the output dir: aiohttp on a thread of its own.

aiohttp parses HTTP/1.1 with llhttp, which reads every request's body by its
Content-Length or chunks, so a body is never taken for a second request (CL.0
smuggling). One event loop serves every connection: an idle or slow client costs a
socket, not a thread, and a connection that has not sent a whole request within
`idle_timeout` seconds is closed (aiohttp starts that clock when the connection opens).

Feed readers poll often, so conditional GET (ETag / Last-Modified → 304) and gzip
matter more than anything else here. The 304 and gzip answers are ours (one ETag for
both encodings, q-values read as RFC 9110 says, compressed bytes cached); the identity
file goes out through aiohttp's FileResponse, which adds Range (206/416), If-Range,
If-Match and sendfile. Only regular files under the output dir are served, never
through a symlink that leads outside it; dot-names (temp files, an older version's
manifest) never are.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import logging
import os
import posixpath
import resource
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

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
    ".js": "text/javascript; charset=utf-8",  # the pages' script (nosniff: needs its type)
}
GZIP_MIN_BYTES = 256
_GZIP_CACHE_MAX = 256
# A client gets this long to send a whole request, on a new connection and between
# keep-alive requests; slow and idle sockets are closed after it.
IDLE_TIMEOUT = 15.0
MAX_CONNECTIONS = 4096
SHUTDOWN_TIMEOUT = 5.0
SERVER = f"aggregator/{__version__}"
_TEXT = "text/plain; charset=utf-8"


def content_type(name: str) -> str:
    if name in CONTENT_TYPES:
        return CONTENT_TYPES[name]
    return CONTENT_TYPES.get(posixpath.splitext(name)[1].lower(), "application/octet-stream")


def _qvalue(params: list[str]) -> float:
    """The q parameter of one Accept-Encoding member (RFC 9110 12.4.2); 1 when absent,
    0 when malformed (a value the client did not mean to accept)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def accepts_gzip(header: str | None) -> bool:
    """True if Accept-Encoding allows gzip: an explicit gzip/x-gzip member decides over
    `*`, whatever their order, and q=0 refuses."""
    explicit: float | None = None
    wildcard: float | None = None
    for member in (header or "").split(","):
        coding, *params = member.split(";")
        name = coding.strip().lower()
        if name in ("gzip", "x-gzip"):
            explicit = max(explicit or 0.0, _qvalue(params))
        elif name == "*":
            wildcard = _qvalue(params)
    if explicit is not None:
        return explicit > 0
    return wildcard is not None and wildcard > 0


def resolve(root: Path, path: str) -> tuple[Path, os.stat_result] | None:
    """The file for a URL path and its stat, or None: no '..', no dot-names, no way out
    of root.

    A symlink under the root is followed only if what it leads to stays under the
    resolved root, so a link placed in the output dir never leads outside it. The walk
    lstats each part once and resolves the whole path only when it meets a link: this
    runs on every request, and the publisher writes no links.
    """
    if "\0" in path or "\\" in path or not path.startswith("/"):
        return None
    parts = [p for p in path.split("/") if p]
    if any(p.startswith(".") for p in parts):
        return None
    if path.endswith("/") or not parts:
        parts.append("index.html")
    base = os.path.realpath(root)
    current = base
    try:
        for part in parts:
            current = os.path.join(current, part)
            st = os.lstat(current)
            if stat.S_ISLNK(st.st_mode):
                current = os.path.realpath(os.path.join(base, *parts))
                if not current.startswith(base.rstrip("/") + "/"):
                    return None  # a symlink pointing outside
                st = os.stat(current)
                break
    except OSError:
        return None
    return (Path(current), st) if stat.S_ISREG(st.st_mode) else None


def not_modified(headers: Mapping[str, str], tag: str, mtime: int) -> bool:
    """If-None-Match (weak comparison, either encoding's tag) or If-Modified-Since."""
    inm = headers.get("If-None-Match")
    if inm is not None:  # RFC 9110: If-None-Match wins over If-Modified-Since
        if inm.strip() == "*":
            return True
        for candidate in inm.split(","):
            value = candidate.strip().removeprefix("W/").strip('"')
            if value in (tag, f"{tag}-gz"):
                return True
        return False
    ims = headers.get("If-Modified-Since")
    if ims:
        try:
            since = email.utils.parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        return since is not None and mtime <= since.timestamp()
    return False


def connection_limit() -> int:
    """At most half the process's file descriptors go to clients, so a flood of
    connections never leaves a build without descriptors."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // 2))


class _Refused(asyncio.Protocol):
    """A connection over the limit: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _IdentityFile(web.FileResponse):
    """aiohttp's FileResponse for the file as stored: Accept-Encoding is hidden from it,
    so it never picks a `.gz`/`.br` sibling (it matches codings by substring, so
    `gzip;q=0` would select one); gzip is decided and served by FeedApp. It reads
    If-Range only as a date, so an If-Range entity tag is checked here: one that is
    not the file's current (strong) tag hides the Range, and the whole file is sent."""

    def __init__(self, path: Path, tag: str, headers: Mapping[str, str]) -> None:
        super().__init__(path, headers=headers)
        self._tag = tag

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        headers = request.headers.copy()
        headers.popall(hdrs.ACCEPT_ENCODING, None)
        if_range = headers.get(hdrs.IF_RANGE, "").strip()
        if if_range.startswith(('"', "W/")) and if_range != f'"{self._tag}"':
            headers.popall(hdrs.RANGE, None)
        return await super().prepare(request.clone(headers=headers))


class FeedApp:
    """The request handler: /healthz, /metrics and the files of the output dir."""

    def __init__(self, root: Callable[[], Path], stats: ServiceStats) -> None:
        self.root = root  # a callable: SIGHUP may move the output dir
        self.stats = stats
        self.gzip_cache: dict[tuple[str, str], bytes] = {}

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return _response(405, b"method not allowed\n", _TEXT, cache=False,
                             extra={"Allow": "GET, HEAD"})
        path = unquote(urlsplit(request.raw_path).path)
        if path == "/healthz":
            health = self.stats.health()
            return _response(200 if health["ok"] else 503, json.dumps(health).encode(),
                             "application/json", cache=False)
        if path == "/metrics":
            return _response(200, self.stats.prometheus(), CONTENT_TYPE_LATEST, cache=False)
        # resolve() and stat() stay on the loop: a few system calls on a local dir cost
        # less than a hop to a worker thread, and most requests are 304s that need no more.
        found = resolve(self.root(), path)
        if found is None:
            return _response(404, b"not found\n", _TEXT, cache=False)
        return await self._file(request, *found)

    async def _file(self, request: web.BaseRequest, target: Path,
                    st: os.stat_result) -> web.StreamResponse:
        # Size + mtime_ns, as aiohttp's FileResponse tags: the publisher never rewrites
        # unchanged bytes, so this only changes when the content does.
        tag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        # A Range is answered from the file as stored, so its offsets are the file's.
        use_gzip = (st.st_size >= GZIP_MIN_BYTES and hdrs.RANGE not in request.headers
                    and accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING)))
        headers = {"Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                   "Vary": "Accept-Encoding", "Cache-Control": "no-cache",
                   "ETag": f'"{tag}-gz"' if use_gzip else f'"{tag}"'}
        if not_modified(request.headers, tag, int(st.st_mtime)):
            return _response(304, b"", None, extra=headers)
        ctype = content_type(target.name)
        if not use_gzip:
            del headers["ETag"], headers["Last-Modified"]  # FileResponse sets both
            return _IdentityFile(target, tag, _headers(ctype, True, headers))
        body = self.gzip_cache.get((str(target), tag))
        if body is None:
            loop = asyncio.get_running_loop()
            try:
                body = await loop.run_in_executor(None, _gzip_file, target)
            except OSError:
                return _response(404, b"not found\n", _TEXT, cache=False)
            if len(self.gzip_cache) >= _GZIP_CACHE_MAX:
                self.gzip_cache.clear()  # simple bound; feeds are few and rebuilt rarely
            self.gzip_cache[(str(target), tag)] = body
        headers["Content-Encoding"] = "gzip"
        return _response(200, body, ctype, extra=headers)


def _gzip_file(target: Path) -> bytes:
    return gzip.compress(target.read_bytes(), compresslevel=6, mtime=0)


def _headers(ctype: str | None, cache: bool, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Server": SERVER, "X-Content-Type-Options": "nosniff"}
    if ctype:
        headers["Content-Type"] = ctype
    headers.update(extra or {})
    if not cache:
        headers["Cache-Control"] = "no-store"
    return headers


def _response(status: int, body: bytes, ctype: str | None, cache: bool = True,
              extra: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body if status != 304 else None,
                        headers=_headers(ctype, cache, extra))


class HTTPService:
    """The server on its own thread and event loop; start/stop from the runner.

    The constructor binds the port (an OSError names what is wrong: a busy port, a bad
    host), so the caller learns it at once; start() listens and serves.
    """

    def __init__(self, host: str, port: int, root: Callable[[], Path],
                 stats: ServiceStats, *, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int | None = None) -> None:
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections or connection_limit()
        self.app = FeedApp(root, stats)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Listen and serve; raises the OSError if the socket cannot listen."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        host, port = self.address
        log.info("serving %s on http://%s:%d/", self.app.root(), host, port)

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
            self._thread.join(timeout=SHUTDOWN_TIMEOUT + 2)
        self.sock.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to start() or logged
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                log.exception("the HTTP server stopped")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        handler = web.Server(self.app, keepalive_timeout=self.idle_timeout, access_log=None)
        limit = self.max_connections

        def protocol() -> asyncio.Protocol:
            if len(handler.connections) >= limit:
                return _Refused()
            return handler()

        server = await self._loop.create_server(protocol, sock=self.sock, backlog=512)
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            handler.pre_shutdown()  # idle keep-alive connections close now, not at the timeout
            await handler.shutdown(SHUTDOWN_TIMEOUT)

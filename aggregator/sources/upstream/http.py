"""HTTP for upstream feeds: conditional GET, timeouts, a total deadline, a decoded-size cap.

We decode gzip/deflate ourselves from the raw stream with a bounded decompressor, so a
small compressed body can never expand past `max_bytes` in memory (gzip bombs), and we
stop reading as soon as the cap or the deadline is passed.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from aggregator import PROJECT_URL, __version__
from aggregator.sources.upstream.guard import AddressRefused, GuardedTransport, deadline

log = logging.getLogger(__name__)
# httpx logs every request at INFO: one line per source is noise at 1,000 sources.
logging.getLogger("httpx").setLevel(logging.WARNING)

USER_AGENT = f"aggregator/{__version__} (+{PROJECT_URL})"
MAX_REDIRECTS = 5


class FetchError(Exception):
    """The source could not be fetched; the message is meant for users."""


class StatusError(FetchError):
    """The server answered with a status other than 200/304 (its headers kept, for
    Retry-After)."""

    def __init__(self, message: str, status: int, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


@dataclass(frozen=True)
class Response:
    status: int  # 200 or 304
    url: str  # after redirects
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    moved_to: str | None = None  # where permanent redirects (301/308 only) led


    @property
    def not_modified(self) -> bool:
        return self.status == 304


@dataclass(frozen=True)
class Limits:
    timeout: float = 20.0  # connect and per-read
    deadline: float = 60.0  # whole request, redirects and body included
    max_bytes: int = 15 * 1024 * 1024  # decoded body
    per_host: int = 2
    concurrency: int = 16
    allow_private: bool = False  # False: the SSRF guard refuses non-public addresses


class _Decoder:
    """gzip / deflate / identity, never producing more than `limit` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._deflate = False
        self._z: zlib._Decompress | None = None
        encoding = encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._deflate = True  # zlib-wrapped or raw: decided on the first bytes
        elif encoding not in ("", "identity"):
            raise FetchError(f"unsupported Content-Encoding {encoding!r}")

    def feed(self, chunk: bytes) -> bytes:
        if self._z is None and self._deflate and chunk:
            wbits = zlib.MAX_WBITS if chunk[:1] and chunk[0] & 0x0F == 8 else -zlib.MAX_WBITS
            self._z = zlib.decompressobj(wbits)
        if self._z is None:
            out = chunk
        else:
            # max_length bounds this call's output; when it is reached we are over the
            # cap and stop, otherwise all input was consumed (no unconsumed_tail).
            try:
                out = self._z.decompress(chunk, self.limit - self.size + 1)
            except zlib.error as exc:
                raise FetchError(f"corrupt compressed body: {exc}") from exc
        self.size += len(out)
        if self.size > self.limit:
            raise FetchError(f"body larger than {self.limit} bytes (decoded); not read")
        return out


class Fetcher:
    """One shared httpx client; per-host semaphores bound how hard we hit one server."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        pool = httpx.Limits(max_connections=max(limits.concurrency, 1) * 2,
                            max_keepalive_connections=max(limits.concurrency, 1))
        self.client = httpx.Client(
            transport=GuardedTransport(pool, limits.allow_private),
            timeout=httpx.Timeout(limits.timeout),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate",
                     "Accept": "application/atom+xml, application/rss+xml, "
                               "application/feed+json, application/json;q=0.9, "
                               "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.8"},
        )
        self._hosts: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _host_slot(self, url: str) -> threading.Semaphore:
        host = (urlsplit(url).hostname or "").lower()
        with self._lock:
            slot = self._hosts.get(host)
            if slot is None:
                slot = self._hosts[host] = threading.Semaphore(max(self.limits.per_host, 1))
            return slot

    def get(self, url: str, etag: str | None = None,
            last_modified: str | None = None) -> Response:
        """200 with the decoded body, or 304; FetchError for anything else."""
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        with self._host_slot(url):
            started = time.monotonic()
            try:
                with deadline(started + self.limits.deadline):
                    return self._get(url, headers, started)
            except FetchError:
                raise
            except AddressRefused as exc:
                raise FetchError(str(exc)) from exc
            except httpx.TooManyRedirects as exc:
                raise FetchError(f"more than {MAX_REDIRECTS} redirects") from exc
            except httpx.TimeoutException as exc:
                if time.monotonic() - started >= self.limits.deadline:
                    raise FetchError(f"deadline of {self.limits.deadline:g}s passed while "
                                     "reading") from exc
                raise FetchError(f"timed out ({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                raise FetchError(f"request failed: {type(exc).__name__}: {exc}") from exc

    def _get(self, url: str, headers: dict[str, str], started: float) -> Response:
        limits = self.limits
        with self.client.stream("GET", url, headers=headers) as resp:
            final = str(resp.url)
            moved = final if resp.history and all(
                r.status_code in (301, 308) for r in resp.history) else None
            if resp.status_code == 304:
                # A 304 has no body (h11 reads none), but the connection goes back to
                # the pool only once its end is read: left unread, every re-polled
                # source cost a new TCP connection (and the server a new thread).
                resp.read()
                return Response(304, final, _headers(resp), moved_to=moved)
            if resp.status_code != 200:
                reason = resp.reason_phrase or ""
                raise StatusError(f"HTTP {resp.status_code} {reason}".rstrip(),
                                  resp.status_code, _headers(resp))
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes \
                    and not resp.headers.get("content-encoding"):
                raise FetchError(f"body larger than {limits.max_bytes} bytes "
                                 f"(Content-Length {declared}); not read")
            decoder = _Decoder(resp.headers.get("content-encoding", ""), limits.max_bytes)
            parts: list[bytes] = []
            for chunk in resp.iter_raw():
                parts.append(decoder.feed(chunk))
                if time.monotonic() - started > limits.deadline:
                    raise FetchError(f"deadline of {limits.deadline:g}s passed while reading")
            return Response(200, final, _headers(resp), b"".join(parts), moved)

    def probe(self, url: str) -> tuple[int, str | None, int]:
        """(status, Content-Type, length) of an image without its body: HEAD, or a
        one-byte ranged GET when the server refuses HEAD. Same guard, same host slots."""
        with self._host_slot(url):
            try:
                head = self.client.head(url)
                if head.status_code not in (403, 405, 501) and head.status_code < 500:
                    return head.status_code, head.headers.get("content-type"), \
                        _int(head.headers.get("content-length"))
                with self.client.stream("GET", url, headers={"Range": "bytes=0-0"}) as resp:
                    total = resp.headers.get("content-range", "").rpartition("/")[2]
                    length = _int(total) if resp.status_code == 206 else \
                        _int(resp.headers.get("content-length"))
                    return resp.status_code, resp.headers.get("content-type"), length
            except AddressRefused as exc:
                raise FetchError(str(exc)) from exc
            except httpx.HTTPError as exc:
                raise FetchError(f"request failed: {type(exc).__name__}: {exc}") from exc


def _int(text: str | None) -> int:
    return int(text) if text and text.strip().isdigit() else 0


def _headers(resp: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items()}

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

import httpcore

from aggregator import PROJECT_URL, __version__
from aggregator.sources.upstream.guard import AddressRefused, deadline, guarded_pool
from aggregator.sources.upstream.urls import URL, InvalidURL, parse_url, resolve_redirect

log = logging.getLogger(__name__)

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
    """One shared connection pool (connections.py); per-host semaphores bound how hard
    we hit one server.

    We speak to httpcore directly, not through a client such as httpx's: a conditional
    GET costs ~1.9 ms of CPU through httpx's Client (request and response models, header
    merging, cookies, hooks) and ~0.9 ms here, and a re-poll of 1,000 sources is bound
    by that CPU under the GIL. What a client would do is done below: redirects (at most
    MAX_REDIRECTS, method kept), URL normalisation (urls.py), timeouts. No cookie jar
    is kept between sources (a feed poll needs none)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.pool = guarded_pool(max(limits.concurrency, 1), limits.allow_private)
        timeout = limits.timeout
        self._extensions = {"timeout": {"connect": timeout, "read": timeout,
                                        "write": timeout, "pool": timeout}}
        self._hosts: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.pool.close()

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
        headers: list[tuple[bytes, bytes]] = []
        if etag:
            headers.append((b"If-None-Match", etag.encode("latin-1", "replace")))
        if last_modified:
            headers.append((b"If-Modified-Since", last_modified.encode("latin-1", "replace")))
        with self._host_slot(url):
            started = time.monotonic()
            try:
                with deadline(started + self.limits.deadline):
                    return self._get(url, headers, started)
            except httpcore.TimeoutException as exc:
                if time.monotonic() - started >= self.limits.deadline:
                    raise FetchError(f"deadline of {self.limits.deadline:g}s passed while "
                                     "reading") from exc
                raise _failed(exc) from exc
            except _TRANSPORT_ERRORS as exc:
                raise _failed(exc) from exc

    def _get(self, url: str, headers: list[tuple[bytes, bytes]],
             started: float) -> Response:
        limits = self.limits
        with self._open(b"GET", url, headers) as (resp, final, moved):
            status = resp.status
            if status == 304:
                # A 304 has no body (h11 reads none), but the connection goes back to
                # the pool only once its end is read: left unread, every re-polled
                # source would cost a new TCP connection (and the server a new thread).
                resp.read()
                return Response(304, final, _headers(resp), moved_to=moved)
            if status != 200:
                reason = resp.extensions.get("reason_phrase", b"").decode("latin-1")
                raise StatusError(f"HTTP {status} {reason}".rstrip(), status,
                                  _headers(resp))
            response_headers = _headers(resp)
            declared = response_headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes \
                    and not response_headers.get("content-encoding"):
                raise FetchError(f"body larger than {limits.max_bytes} bytes "
                                 f"(Content-Length {declared}); not read")
            decoder = _Decoder(response_headers.get("content-encoding", ""), limits.max_bytes)
            parts: list[bytes] = []
            for chunk in resp.iter_stream():
                parts.append(decoder.feed(chunk))
                if time.monotonic() - started > limits.deadline:
                    raise FetchError(f"deadline of {limits.deadline:g}s passed while reading")
            return Response(200, final, response_headers, b"".join(parts), moved)

    @contextmanager
    def _open(self, method: bytes, url: str, headers: list[tuple[bytes, bytes]]
              ) -> Iterator[tuple[httpcore.Response, str, str | None]]:
        """The response at the end of the redirects, streamed, with its URL and where
        permanent redirects (301/308 only, every hop) led. The method is kept on every
        hop (we send GET and HEAD only, which no redirect status changes)."""
        target = _target(url)
        permanent = True
        for hops in range(MAX_REDIRECTS + 1):
            request_headers = [(b"Host", target.url.netloc.encode("ascii")),
                               *_DEFAULT_HEADERS, *headers]
            with self.pool.stream(method, target.core, request_headers,
                                  self._extensions) as resp:
                location = _location(resp)
                if location is None:
                    yield resp, target.text, target.text if hops and permanent else None
                    return
                permanent = permanent and resp.status in (301, 308)
                _drain(resp)  # so the connection can serve the next hop
            target = _target(_redirect(target.url, location))
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    def probe(self, url: str) -> tuple[int, str | None, int]:
        """(status, Content-Type, length) of an image without its body: HEAD, or a
        one-byte ranged GET when the server refuses HEAD. Same guard, same host slots."""
        with self._host_slot(url):
            try:
                with self._open(b"HEAD", url, []) as (head, _final, _moved):
                    head.read()  # no body; reading its end keeps the connection
                    headers = _headers(head)
                if head.status not in (403, 405, 501) and head.status < 500:
                    return head.status, headers.get("content-type"), \
                        _int(headers.get("content-length"))
                with self._open(b"GET", url, [(b"Range", b"bytes=0-0")]) as (resp, _f, _m):
                    headers = _headers(resp)
                    total = headers.get("content-range", "").rpartition("/")[2]
                    length = _int(total) if resp.status == 206 else \
                        _int(headers.get("content-length"))
                    return resp.status, headers.get("content-type"), length
            except _TRANSPORT_ERRORS as exc:
                raise _failed(exc) from exc


_DEFAULT_HEADERS = [
    (b"User-Agent", USER_AGENT.encode("ascii")),
    (b"Accept-Encoding", b"gzip, deflate"),
    (b"Accept", b"application/atom+xml, application/rss+xml, application/feed+json, "
                b"application/json;q=0.9, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.8"),
]
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
# A redirect's body is read (to keep its connection) only up to this; past it the
# connection is dropped instead.
_REDIRECT_BODY = 64 * 1024
_TRANSPORT_ERRORS = (AddressRefused, httpcore.TimeoutException, httpcore.NetworkError,
                     httpcore.ProtocolError, httpcore.UnsupportedProtocol, httpcore.ProxyError,
                     InvalidURL)


def _failed(exc: Exception) -> FetchError:
    if isinstance(exc, AddressRefused):
        return FetchError(str(exc))
    if isinstance(exc, httpcore.TimeoutException):
        return FetchError(f"timed out ({type(exc).__name__})")
    if isinstance(exc, InvalidURL):
        return FetchError(f"invalid URL: {exc}")
    return FetchError(f"request failed: {type(exc).__name__}: {exc}")


class _Target(NamedTuple):
    url: URL  # IDNA host names, percent-encoded paths; http(s) only
    core: httpcore.URL  # what the pool is asked for
    text: str  # str(url)


@lru_cache(maxsize=4096)
def _target(text: str) -> _Target:
    """Parsed once per URL: a poll asks the same URLs every time, and parsing one costs
    about a tenth of a conditional GET's CPU."""
    url = parse_url(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise httpcore.UnsupportedProtocol(f"not an http(s) URL: {text!r}")
    core = httpcore.URL(scheme=url.scheme.encode("ascii"), host=url.host.encode("ascii"),
                        port=url.port, target=url.target.encode("ascii"))
    return _Target(url, core, str(url))


def _location(resp: httpcore.Response) -> str | None:
    """Where a redirect points (None: not a redirect, or one without a Location)."""
    if resp.status not in _REDIRECTS:
        return None
    for name, value in resp.headers:
        if name.lower() == b"location":
            return value.decode("latin-1")
    return None


def _redirect(current: URL, location: str) -> str:
    """The next hop (urls.resolve_redirect); a Location that is no URL is a FetchError
    that says so."""
    try:
        url = parse_url(location)
    except InvalidURL as exc:
        raise FetchError(f"invalid URL in a redirect's Location: {exc}") from exc
    return str(resolve_redirect(current, url))


def _drain(resp: httpcore.Response) -> None:
    read = 0
    for chunk in resp.iter_stream():
        read += len(chunk)
        if read > _REDIRECT_BODY:
            return  # closing an unread response drops its connection


def _int(text: str | None) -> int:
    return int(text) if text and text.strip().isdigit() else 0


def _headers(resp: httpcore.Response) -> dict[str, str]:
    """Lower-case names; a repeated header's values joined with ", " (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in resp.headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out

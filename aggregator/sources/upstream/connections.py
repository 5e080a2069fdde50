"""Kept-alive HTTP/1.1 connections, one idle list per origin.

httpcore's ConnectionPool, under its one lock, walks every connection it holds on each
request and on each response's close, and asks each idle one whether its socket is
readable (a `poll` syscall per connection). With 16 fetch threads that walk is most
of a conditional GET: 1,000 304s take 1.2-1.3 s of CPU through it and 0.6-0.65 s
through this pool (`bench/pool.py`, docs/decisions.md). With a connection cap below
the thread count, its pool can also close a connection it has just handed to a
waiting request (encode/httpcore#1110, open against 1.0.9: requests fail with "Bad
file descriptor"). Here a request takes an idle connection of its own origin (one
check of that one socket) or opens one, and gives it back when its response is
closed; the lock only guards a dict of lists.

At most one request is on a connection at a time (HTTP/1.1, no pipelining), so the
connections in use are bounded by the fetch threads, the idle ones by `max_idle`.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpcore

_Origin = tuple[bytes, bytes, int]  # scheme, host, port
# What a request on a connection the server has already closed fails with.
_STALE = (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError)


class ConnectionPool:
    def __init__(self, ssl_context: ssl.SSLContext, backend: httpcore.NetworkBackend,
                 max_idle: int, keepalive_expiry: float) -> None:
        self._ssl_context = ssl_context
        self._backend = backend
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[_Origin, list[httpcore.HTTPConnection]] = {}
        self._idle_count = 0
        self._lock = threading.Lock()

    @contextmanager
    def stream(self, method: bytes, url: httpcore.URL, headers: list[tuple[bytes, bytes]],
               extensions: dict[str, Any]) -> Iterator[httpcore.Response]:
        """The response, its body unread; closed (and its connection given back when
        the exchange ended cleanly) on leaving the block. Only for GET and HEAD: a
        request that failed on a reused connection is sent again."""
        origin = url.origin
        key = (origin.scheme, origin.host, origin.port)
        request = httpcore.Request(method, url, headers=headers, extensions=extensions)
        connection = self._take(key)
        response = _send(connection, request, reused=True) if connection else None
        if connection is None or response is None:
            connection = httpcore.HTTPConnection(
                origin=origin, ssl_context=self._ssl_context,
                keepalive_expiry=self._keepalive_expiry, network_backend=self._backend)
            response = _send(connection, request, reused=False)
            assert response is not None
        try:
            yield response
        finally:
            try:
                response.close()  # a body left unread closes the connection (h11)
            finally:
                self._give_back(key, connection)

    def _take(self, key: _Origin) -> httpcore.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                connection = idle.pop()
                self._idle_count -= 1
                if not connection.has_expired():  # expired, or the server closed it
                    return connection
                connection.close()
        return None

    def _give_back(self, key: _Origin, connection: httpcore.HTTPConnection) -> None:
        if connection.is_closed() or not connection.is_idle() or connection.has_expired():
            connection.close()
            return
        with self._lock:
            if self._idle_count < self._max_idle:
                self._idle.setdefault(key, []).append(connection)
                self._idle_count += 1
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._idle_count = self._idle, {}, 0
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _send(connection: httpcore.HTTPConnection, request: httpcore.Request,
          reused: bool) -> httpcore.Response | None:
    """The response; None when a reused connection turned out closed by the server (its
    close not seen yet when we checked it): the request was not answered, and GET and
    HEAD are safe to send again, on a new connection."""
    try:
        return connection.handle_request(request)
    except _STALE:
        connection.close()
        if reused:
            return None
        raise
    except BaseException:
        connection.close()
        raise

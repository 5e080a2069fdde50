"""SSRF guard: refuse to connect to loopback, private, link-local, multicast, reserved
or unspecified addresses, checked on the address the socket actually connects to.

httpcore asks its *network backend* to open every TCP connection (`connect_tcp(host,
port)`), for the first request and for every redirect hop. Our backend resolves the
name itself, checks every address the resolver returned, and connects to a checked IP
literal: there is no second DNS lookup for a rebinding server to answer differently.
TLS is untouched: httpcore still does the handshake with the URL's host name (SNI and
certificate check), and the Host header comes from the URL as always.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import certifi
import httpcore

from aggregator.sources.upstream.connections import ConnectionPool

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Test-only: (ip, port) pairs treated as public addresses, so a test on 127.0.0.1 can
# play an "allowed host" that redirects to a refused one. Empty in production.
TREAT_AS_PUBLIC: set[tuple[str, int]] = set()
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4


class AddressRefused(Exception):
    """A connection to a non-public address was refused (nothing was sent)."""


def is_refused(ip: IPAddress) -> bool:
    """True for every address that is not a plain public unicast one."""
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address: judge the IPv4 one too.
        # Mapped (::ffff:127.0.0.1) and NAT64 (DNS64 on IPv6-only hosts) addresses
        # are the IPv4 address; 6to4 and Teredo must pass as both.
        if ip.ipv4_mapped is not None:
            return is_refused(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_refused(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        tunnelled = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if tunnelled is not None and is_refused(tunnelled):
            return True
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def _refusal(address: str) -> AddressRefused:
    return AddressRefused(f"refused: {address} is {_kind(address)} address "
                          f"(fetch.allow_private_addresses is false)")


def _kind(address: str) -> str:
    """What kind of non-public address this is, in words (`a loopback`, `a private`)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "a non-public"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # in this order: a loopback or link-local address is also "private" to ipaddress
    for kind, test in (("a loopback", ip.is_loopback), ("a link-local", ip.is_link_local),
                       ("a multicast", ip.is_multicast), ("an unspecified", ip.is_unspecified),
                       ("a private", ip.is_private), ("a reserved", ip.is_reserved)):
        if test:
            return kind
    return "a non-public"


def resolve_checked(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, all of them public; else AddressRefused.
    One refused address refuses the host (a name answering both is not trusted)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone id
        ip = ipaddress.ip_address(text)
        if is_refused(ip) and (text, port) not in TREAT_AS_PUBLIC:
            raise _refusal(text)
        if text not in addresses:
            addresses.append(text)
    return addresses


# The whole-request deadline of the fetching thread: every socket operation waits at
# most what is left of it. httpcore has no total timeout, and a server trickling its
# *headers* a byte at a time under the read timeout would never be stopped (slowloris; the
# body loop's own deadline check only runs once the headers are in).
_deadline = threading.local()


@contextmanager
def deadline(at: float) -> Iterator[None]:
    """Socket operations in this thread end (httpcore timeouts) at monotonic `at`."""
    _deadline.at = at
    try:
        yield
    finally:
        _deadline.at = None


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    at: float | None = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise error("deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to checked IP literals (unless
    `check` is false), every stream bounded by the thread's deadline."""

    def __init__(self, check: bool = True) -> None:
        self.check = check

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in resolve_checked(host, port) if self.check else [host]:
            try:
                return _DeadlineStream(super().connect_tcp(
                    address, port, _left(timeout, httpcore.ConnectTimeout), local_address,
                    socket_options))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc  # try the next address of the same host
        raise last if last is not None else httpcore.ConnectError(f"no address for {host}")


def tls_context() -> ssl.SSLContext:
    """Certificates and host names checked against certifi's roots, or against the
    file or folder named by SSL_CERT_FILE or SSL_CERT_DIR when one is set."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())


def guarded_pool(concurrency: int, allow_private: bool) -> ConnectionPool:
    """Our connection pool on the guarded backend (which also carries the request
    deadline, so it is used with `allow_private` too), with tls_context(), keeping up
    to `concurrency` idle connections for 5 s."""
    return ConnectionPool(tls_context(), GuardedBackend(check=not allow_private),
                          max_idle=concurrency, keepalive_expiry=5.0)

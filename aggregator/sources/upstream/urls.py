"""URLs as the fetcher requests them: parsed once, checked, and normalised.

The rules are those of the WHATWG URL standard's percent-encode sets and RFC 3986, as
httpx's URL type applies them (the fetcher's URLs and the redirects it follows read as
they did through it; tests/test_upstream_urls.py holds the cases):
- at most 65,536 characters, no ASCII control character anywhere;
- the scheme and host in lower case; a host that is not ASCII is IDNA 2008-encoded
  (refused when it cannot be), a dotted-quad host must be an IPv4 address and a
  bracketed one an IPv6 address (kept without brackets, written with them);
- a port that is the scheme's default is dropped (and any port must read as an int);
- `.` and `..` segments are removed from the path of a URL with a scheme or host;
- each part is percent-encoded with its own safe set, keeping `%XX` escapes as they
  are.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple
from urllib.parse import unquote, urljoin

import idna


class InvalidURL(ValueError):
    """Text that is no URL under the rules above (the message says why)."""


MAX_LENGTH = 65_536
_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_SUB_DELIMS = "!$&'()*+,;="


def _printable_except(*codes: int) -> str:
    return "".join(chr(i) for i in range(0x20, 0x7F) if i not in codes)


# The WHATWG percent-encode sets, as the characters each part keeps as they are.
_FRAGMENT_SAFE = _printable_except(0x20, 0x22, 0x3C, 0x3E, 0x60)
_QUERY_SAFE = _printable_except(0x20, 0x22, 0x23, 0x3C, 0x3E)
_PATH_SAFE = _printable_except(0x20, 0x22, 0x23, 0x3C, 0x3E, 0x3F, 0x60, 0x7B, 0x7D)
# the userinfo set without `:` (user and password are one part here)
_USERINFO_SAFE = _printable_except(0x20, 0x22, 0x23, 0x3C, 0x3E, 0x3F, 0x60, 0x7B, 0x7D,
                                   0x2F, 0x3B, 0x3D, 0x40, 0x5B, 0x5C, 0x5D, 0x5E, 0x7C)
_HOST_SAFE = _SUB_DELIMS + '"`{}%|\\'  # what WHATWG lets through in an ASCII host

_ESCAPE = re.compile("%[A-Fa-f0-9]{2}")
# scheme:, //authority, path, ?query, #fragment; every part but the path optional (and
# the scheme may be empty: `:x` is a relative reference to `x`)
_URL = re.compile(r"(?:(?P<scheme>(?:[a-zA-Z][a-zA-Z0-9+.-]*)?):)?(?://(?P<authority>[^/?#]*))?"
                  r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?")
# userinfo@, host (an IPv6 literal in brackets, or up to a `:`), :port
_AUTHORITY = re.compile(r"(?:(?P<userinfo>.*)@)?(?P<host>\[.*\]|[^:@]*):?(?P<port>.*)?")
_IPV4_SHAPED = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$")
_DEFAULT_PORTS = {"ftp": 21, "http": 80, "https": 443, "ws": 80, "wss": 443}


class URL(NamedTuple):
    """A normalised URL or relative reference; `str()` writes it back."""

    scheme: str  # "" in a relative reference
    userinfo: str
    host: str  # IDNA-encoded; an IPv6 address without its brackets
    port: int | None  # None: none given, or the scheme's default
    path: str
    query: str | None  # None: no `?`
    fragment: str | None  # None: no `#`

    @property
    def authority(self) -> str:
        return (f"{self.userinfo}@" if self.userinfo else "") + self.netloc

    @property
    def netloc(self) -> str:
        """host[:port], as the Host header carries it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def target(self) -> str:
        """The request target: the path (at least `/`) and the query."""
        path = self.path or "/"
        return path if self.query is None else f"{path}?{self.query}"

    @property
    def is_absolute(self) -> bool:
        """It names a scheme and a host to connect to."""
        return bool(self.scheme and self.host)

    def __str__(self) -> str:
        authority = self.authority
        return "".join((f"{self.scheme}:" if self.scheme else "",
                        f"//{authority}" if authority else "", self.path,
                        "" if self.query is None else f"?{self.query}",
                        "" if self.fragment is None else f"#{self.fragment}"))


def parse_url(text: str) -> URL:
    """`text` normalised; InvalidURL when it breaks a rule above."""
    _check_characters(text)
    parts = _URL.match(text)
    assert parts is not None  # every part may be empty
    authority = _AUTHORITY.match(parts["authority"] or "")
    assert authority is not None
    scheme = (parts["scheme"] or "").lower()
    userinfo = _quote(authority["userinfo"] or "", _USERINFO_SAFE)
    host = _host(authority["host"] or "")
    port = _port(authority["port"], parts["scheme"] or "")  # (`HTTP://a:80` keeps its port)
    path = parts["path"] or ""
    has_authority = bool(userinfo or host or port is not None)
    if has_authority and path and not path.startswith("/"):
        raise InvalidURL("For absolute URLs, path must be empty or begin with '/'")
    if not scheme and not has_authority:
        if path.startswith("//"):
            raise InvalidURL("Relative URLs cannot have a path starting with '//'")
        if path.startswith(":"):
            raise InvalidURL("Relative URLs cannot have a path starting with ':'")
    if scheme or has_authority:
        path = _without_dot_segments(path)
    query, fragment = parts["query"], parts["fragment"]
    return URL(scheme, userinfo, host, port, _quote(path, _PATH_SAFE),
               None if query is None else _quote(query, _QUERY_SAFE),
               None if fragment is None else _quote(fragment, _FRAGMENT_SAFE))


def resolve_redirect(current: URL, location: URL) -> URL:
    """Where a redirect's (parsed) `Location` leads from `current`: a relative
    reference is resolved against it (RFC 3986, by urljoin), a scheme without a host
    takes its host, and its fragment carries over when the Location has none (RFC 7231
    7.1.2). InvalidURL when the result breaks a rule above."""
    url = location
    if url.scheme and not url.host:
        url = _copy(url, host=current.host)
    if not url.is_absolute:
        url = parse_url(urljoin(str(current), str(url)))
    if current.fragment and not url.fragment:
        url = _copy(url, fragment=unquote(current.fragment))  # escapes decoded, then made
    return url


def _copy(url: URL, host: str | None = None, fragment: str | None = None) -> URL:
    """`url` with another host or fragment (as text), each part checked as if given on
    its own."""
    for name, value in (("scheme", url.scheme), ("authority", url.authority),
                        ("path", url.path), ("query", url.query),
                        ("fragment", url.fragment if fragment is None else fragment),
                        ("host", host)):
        if value is not None:
            _check_characters(value, name)
    if host is not None:
        if (url.userinfo or host or url.port is not None) and url.path \
                and not url.path.startswith("/"):
            raise InvalidURL("For absolute URLs, path must be empty or begin with '/'")
        url = url._replace(host=host)
    if fragment is not None:
        url = url._replace(fragment=_quote(fragment, _FRAGMENT_SAFE))
    # its host and port made again from their text: lower case (escapes too), and the
    # port dropped when it is the (now lower-case) scheme's default
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = _port("" if url.port is None else str(url.port), url.scheme)
    return url._replace(host=_host(host), port=port)


def _check_characters(text: str, part: str | None = None) -> None:
    """InvalidURL for text too long or holding an ASCII control character; `part`
    names the URL component when one is checked on its own."""
    if len(text) > MAX_LENGTH:
        raise InvalidURL("URL too long" if part is None else f"URL component '{part}' too long")
    where = "URL" if part is None else f"URL {part} component"
    for index, char in enumerate(text):
        if char.isascii() and not char.isprintable():
            raise InvalidURL(f"Invalid non-printable ASCII character in {where}, {char!r} at "
                             f"position {index}.")


def _host(host: str) -> str:
    if not host:
        return ""
    if _IPV4_SHAPED.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ipaddress.AddressValueError:
            raise InvalidURL(f"Invalid IPv4 address: {host!r}") from None
        return host
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ipaddress.AddressValueError:
            raise InvalidURL(f"Invalid IPv6 address: {host!r}") from None
        return host[1:-1]
    if host.isascii():
        return _quote(host.lower(), _HOST_SAFE)
    try:
        return idna.encode(host.lower()).decode("ascii")
    except idna.IDNAError:
        raise InvalidURL(f"Invalid IDNA hostname: {host!r}") from None


def _port(port: str | None, scheme: str) -> int | None:
    if not port:
        return None
    try:
        number = int(port)
    except ValueError:
        raise InvalidURL(f"Invalid port: {port!r}") from None
    return None if number == _DEFAULT_PORTS.get(scheme) else number


def _without_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on a path's segments (`..` never climbs above the root)."""
    if "." not in path:
        return path
    segments = path.split("/")
    if "." not in segments and ".." not in segments:
        return path
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept and kept != [""]:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    return "/".join(kept)


def _quote(text: str, safe: str) -> str:
    """`text` with every character outside the unreserved set and `safe` written as
    `%XX` of its UTF-8 bytes; `%XX` escapes already there are kept."""
    out: list[str] = []
    start = 0
    for escape in _ESCAPE.finditer(text):
        out.append(_encode(text[start:escape.start()], safe))
        out.append(escape.group())
        start = escape.end()
    out.append(_encode(text[start:], safe))
    return "".join(out)


def _encode(text: str, safe: str) -> str:
    keep = _UNRESERVED + safe
    if not text.rstrip(keep):
        return text
    return "".join(char if char in keep else
                   "".join(f"%{byte:02X}" for byte in char.encode("utf-8")) for char in text)

"""URLs as the fetcher requests them (sources/upstream/urls.py): each rule of its
docstring, and redirects resolved as before (the cases are what the fetcher sent and
followed through httpx's URL type, which these rules are)."""

from __future__ import annotations

import pytest

from aggregator.sources.upstream.urls import InvalidURL, parse_url, resolve_redirect

# text -> (the URL written back, the Host header, the request target)
NORMALISED = [
    ("HTTP://Example.COM", "http://example.com", "example.com", "/"),
    ("http://example.com:80/a", "http://example.com/a", "example.com", "/a"),
    ("https://a.example:443/", "https://a.example/", "a.example", "/"),
    ("https://a.example:8443/x", "https://a.example:8443/x", "a.example:8443", "/x"),
    # the default port is known by the scheme as written
    ("HTTP://a.example:80/x", "http://a.example:80/x", "a.example:80", "/x"),
    ("http://中国.icom.museum/", "http://xn--fiqs8s.icom.museum/", "xn--fiqs8s.icom.museum",
     "/"),
    ("http://Faß.de/", "http://xn--fa-hia.de/", "xn--fa-hia.de", "/"),  # IDNA 2008
    ("http://a.example/a b/é?q=a b&r=é#f g",
     "http://a.example/a%20b/%C3%A9?q=a%20b&r=%C3%A9#f%20g", "a.example",
     "/a%20b/%C3%A9?q=a%20b&r=%C3%A9"),
    ("http://a.example/%7e%41/%zz?%", "http://a.example/%7e%41/%zz?%", "a.example",
     "/%7e%41/%zz?%"),
    ("http://a.example/a/./b/../c/", "http://a.example/a/c/", "a.example", "/a/c/"),
    ("http://a.example/../..", "http://a.example", "a.example", "/"),
    ("http://u%20:p w@a.example/", "http://u%20:p%20w@a.example/", "a.example", "/"),
    ("http://[::1]:8080/x", "http://[::1]:8080/x", "[::1]:8080", "/x"),
    ("http://1.2.3.4/", "http://1.2.3.4/", "1.2.3.4", "/"),
    ("http://a.example/{x}`|^\\", "http://a.example/%7Bx%7D%60|^\\", "a.example",
     "/%7Bx%7D%60|^\\"),
    ("http://a.example/?{x}`|'#{x}`|'", "http://a.example/?{x}`|'#{x}%60|'", "a.example",
     "/?{x}`|'"),
    ("http:foo", "http:foo", "", "foo"),
    # relative references: no dot segments removed
    (":x", "x", "", "x"),
    ("../a b", "../a%20b", "", "../a%20b"),
    ("?q r", "?q%20r", "", "/?q%20r"),
    ("//Other.example/p", "//other.example/p", "other.example", "/p"),
]

REFUSED = [
    ("http://a.example:8o/", "Invalid port: '8o'"),
    ("http://999.1.1.1/", "Invalid IPv4 address: '999.1.1.1'"),
    ("http://[bad]/", "Invalid IPv6 address: '[bad]'"),
    ("http://😀.com/", "Invalid IDNA hostname: '😀.com'"),
    ("http://a.example/\tx", "Invalid non-printable ASCII character in URL, '\\t' at "
                             "position 17."),
    ("http://a.example/" + "a" * 65_536, "URL too long"),
    ("http://a.example/x:y", None),  # (a colon in the path is fine)
]

# (current URL, Location) -> the next hop, or the error
REDIRECTS = [
    ("http://a.example/b/c?d#e", "../x", "http://a.example/x#e"),
    ("http://a.example/b/c", "//other.example/p", "http://other.example/p"),
    ("http://a.example/b/c", "http:/p", "http://a.example/p"),
    ("http://a.example/b/c", "https:p",
     InvalidURL("For absolute URLs, path must be empty or begin with '/'")),
    ("http://a.example/b#%41%25", "/x", "http://a.example/x#A%"),
    ("http://a.example/b#%0A", "/x", InvalidURL(
        "Invalid non-printable ASCII character in URL fragment component, '\\n' at "
        "position 0.")),
    ("http://a.example/b#frag", "/x#own", "http://a.example/x#own"),
    ("http://a.example:8080/b", "?q", "http://a.example:8080/b?q"),
    ("http://a.example/", "HTTP://B.example:80/%7e", "http://b.example:80/%7e"),
    # a fragment carried over makes the host and port again
    ("http://a.example/#f", "http://b.example%3E/", "http://b.example%3e/#f"),
    ("http://a.example/#f", "HTTPS://b.example:443/", "https://b.example/#f"),
]


@pytest.mark.parametrize(("text", "written", "netloc", "target"), NORMALISED)
def test_a_url_is_normalised_part_by_part(text: str, written: str, netloc: str,
                                          target: str) -> None:
    url = parse_url(text)
    assert (str(url), url.netloc, url.target) == (written, netloc, target)


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_a_url_breaking_a_rule_is_refused_saying_which(text: str,
                                                       message: str | None) -> None:
    if message is None:
        parse_url(text)
        return
    with pytest.raises(InvalidURL) as caught:
        parse_url(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(("current", "location", "expected"), REDIRECTS)
def test_a_redirect_resolves_against_the_current_url(current: str, location: str,
                                                     expected: str | InvalidURL) -> None:
    if isinstance(expected, InvalidURL):
        with pytest.raises(InvalidURL) as caught:
            resolve_redirect(parse_url(current), parse_url(location))
        assert str(caught.value) == str(expected)
    else:
        assert str(resolve_redirect(parse_url(current), parse_url(location))) == expected

"""The URL and text fast paths give exactly what the slow ways they skip give."""

from __future__ import annotations

import random
import re
import time
from urllib.parse import urljoin

from aggregator.sanitize.html import PLAIN_HTTP_URL, _resolve_url, absolute_url
from aggregator.sources.upstream.normalise import _has_text, _link

BASES = ["https://feeds.example.org/blog/feed.xml", "http://x.example/a/b/", "https://h.example"]
PIECES = ["http", "https", "HTTP", "://", ":/", "//", "/", "x.example", "ex-ample.org", ":8080",
          "user@", "a", "b c", "%20", "..", ".", ";p=1", ";", "?q=1", "?", "#f", "#", "?a;b",
          "[::1]", "[bad", "\\",
          "\t", "\n", "\x00", "\x7f", "é", "中", "&amp;", "~", "=", "-", "_", "mailto:",
          "javascript:", " "]


def _slow_link(value: str, base: str) -> str | None:
    try:
        return absolute_url(urljoin(base, value.strip()), None)
    except ValueError:
        return None


def test_the_plain_url_fast_path_gives_what_urljoin_and_absolute_url_give() -> None:
    rng = random.Random(20261127)
    fast = 0
    for _ in range(20_000):
        value = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.5:
            value = rng.choice(["http://", "https://"]) + value
        base = rng.choice(BASES)
        assert _link(value, base) == _slow_link(value, base), (value, base)
        fast += bool(PLAIN_HTTP_URL.match(value.strip()))
    assert fast > 1_000  # the fast path was taken often enough to mean something


def test_a_link_urljoin_refuses_is_no_link() -> None:
    assert _link("http://[bad/x", BASES[0]) is None


def test_has_text_is_what_removing_every_tag_tells() -> None:
    rng = random.Random(7)
    pieces = ["<p>", "</p>", "<img src=x>", " ", "\n", "\u3000", "text", "<", ">", "a>b",
              "<!-- c -->", "<br/>", "\xa0", "&nbsp;"]
    for _ in range(20_000):
        html = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert _has_text(html) == bool(re.sub(r"<[^>]*>", "", html).strip()), html


def test_has_text_is_linear_in_unclosed_tags() -> None:
    # '<' with no '>' after it: a regex tries each '<' to the end (20,000 of them:
    # 0.15 s; this 1 MB: ~6 minutes).
    started = time.perf_counter()
    assert _has_text("<" * 1_000_000)
    assert not _has_text("<p>" * 300_000 + " ")
    assert time.perf_counter() - started < 2


def test_absolute_url_takes_a_plain_url_as_the_long_way_would() -> None:
    rng = random.Random(20261128)
    for _ in range(20_000):
        value = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.5:
            value = rng.choice(["http://", "https://"]) + value
        base = rng.choice([None, *BASES])
        mailto = rng.random() < 0.5
        assert absolute_url(value, base, allow_mailto=mailto) == \
            _resolve_url(value, base, mailto), (value, base)

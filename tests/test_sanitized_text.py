"""The text and the first image of sanitised html are read by regular expressions
(sanitize.text.sanitized_text, render.first_image), not by a second parse: they must be
what lexbor's parse of the same html gives, on real, hostile and generated bodies."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SHARED
from selectolax.lexbor import LexborHTMLParser

from aggregator.config import DEFAULT_DROP_SELECTORS, DEFAULT_IFRAME_HOSTS
from aggregator.media import image_type_from_url
from aggregator.model import Image
from aggregator.render import first_image
from aggregator.sanitize.html import Sanitizer
from aggregator.sanitize.text import html_to_text, sanitized_text, summarize

XSS = Path(__file__).parent / "data" / "xss"
BASE = "https://base.example/a/"


def _parsed_first_image(html: str) -> Image | None:
    """The first img with an http(s) src, as a parse finds it."""
    body = LexborHTMLParser(html).body
    for img in body.css("img") if body is not None else []:
        src = img.attributes.get("src") or ""
        if src.startswith(("http://", "https://")):
            return Image(url=src, mime_type=image_type_from_url(src))
    return None


def _read_the_same_both_ways(html: str) -> None:
    assert sanitized_text(html) == html_to_text(html), html[:300]
    assert first_image(html) == _parsed_first_image(html), html[:300]
    for limit in (80, 300):
        assert summarize(html, limit, sanitized=True) == summarize(html, limit), html[:300]


def _bodies() -> Iterator[Path]:
    yield from sorted(XSS.glob("*.html"))
    for folder in ("posts", "hexo-unit-test", "upstream"):
        root = SHARED / "corpus" / folder
        if root.is_dir():
            yield from sorted(p for p in root.rglob("*") if p.is_file())


def test_every_corpus_and_xss_body_read_as_a_parse_reads_it() -> None:
    sanitizer = Sanitizer(DEFAULT_DROP_SELECTORS, DEFAULT_IFRAME_HOSTS)
    bodies = list(_bodies())
    if len(bodies) < 300:
        pytest.skip(f"{SHARED / 'corpus'} absent (../shared is not beside the project): "
                    f"{len(bodies)} bodies only")
    images = 0
    for path in bodies:
        html = sanitizer.clean(path.read_text(encoding="utf-8", errors="replace"), BASE)
        _read_the_same_both_ways(html)
        images += first_image(html) is not None
    assert images > 50  # many of them have images


PIECES = ["word ", "字", "<p>", "</p>", "<P>", "<DIV class=x>", "</div>", "&amp;", "&lt;b&gt;",
          "&#233;", "&CounterClockwiseContourIntegral;", "&#123;", "<br>", "\n\n", "   ",
          '<img src="https://x.example/a.png" alt="a > b">', "<table><tr><td>cell</td>",
          "</tr></table>", "<b><i>mis</b>nested</i>", "<!-- comment -->", "<a href='x'>",
          "</a>", "<li>item", "\t", "\x00", "<script>x</script>", "<h2>Head</h2>",
          '<iframe src="https://www.youtube.com/embed/x">', "</iframe>", "<iframe>", "&#13;",
          '<img src="/rel.png">', "<img src='https://a.example/?a=1&amp;b=\"2\"'>",
          "<pre>\n", "&nbsp;", "<", ">", '"', "<svg><text>svg</text></svg>", "<caption>c",
          "<math><mi>x</mi></math>", "<noscript><img src='https://n.example/x.png'></noscript>",
          "<textarea>t</textarea>", "<tbody>", "<select><option>o</select>", "<plaintext>",
          "<xmp>x</xmp>", "<frameset>", "<img alt='<img src=\"https://q.example/q.png\">'>"]


def test_generated_html_read_as_a_parse_reads_it() -> None:
    sanitizer = Sanitizer(DEFAULT_DROP_SELECTORS, DEFAULT_IFRAME_HOSTS)
    rng = random.Random(20261208)
    for _ in range(2000):
        html = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 300)))
        _read_the_same_both_ways(sanitizer.clean(html, BASE))


def test_a_prefix_cut_inside_a_tag_gives_no_text_of_it() -> None:
    html = '<p>one two</p><a href="https://example.org/a-long-path">three</a>'
    for cut in range(len(html)):
        text = sanitized_text(html[:cut])
        assert "<" not in text and "href" not in text and "https" not in text
        # a parse may read a cut tag's '<' as text, and no more
        assert html_to_text(html[:cut]).startswith(text)

"""What the sanitiser must keep (and the junk it must drop), checked with html5lib."""

from __future__ import annotations

import random
import time

import html5lib
import pytest
from test_sanitize_xss import survivors

from aggregator.config import DEFAULT_DROP_SELECTORS, DEFAULT_IFRAME_HOSTS
from aggregator.sanitize.html import (
    _TAG,
    MAX_DEPTH,
    Sanitizer,
    _nests,
    _srcset_candidates,
    cap_depth,
    html_depth,
    may_nest_deeper,
)
from aggregator.sanitize.text import (
    _BLOCK_TAG,
    block_boundaries,
    clean_line,
    html_to_text,
    strip_xml_illegal,
    summarize,
)

BASE = "https://blog.example/2024/post/"
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


@pytest.fixture(scope="module")
def clean() -> Sanitizer:
    return Sanitizer(DEFAULT_DROP_SELECTORS, DEFAULT_IFRAME_HOSTS)


def elements(html: str, tag: str) -> list[dict[str, str]]:
    fragment = html5lib.parseFragment(html, treebuilder="etree", namespaceHTMLElements=False)
    return [dict(e.attrib) for e in fragment.iter(tag)]


def test_youtube_iframe_survives(clean: Sanitizer) -> None:
    src = "https://www.youtube.com/embed/dQw4w9WgXcQ"
    out = clean.clean(f'<iframe src="{src}" width="560" height="315" allowfullscreen '
                      f'frameborder="0"></iframe>', BASE)
    assert elements(out, "iframe") == [{"src": src, "width": "560", "height": "315",
                                        "allowfullscreen": "", "frameborder": "0"}]
    assert survivors(out) == []


@pytest.mark.parametrize("src", ["https://player.bilibili.com/player.html?bvid=BV1",
                                 "https://player.vimeo.com/video/1",
                                 "https://www.youtube-nocookie.com/embed/x"])
def test_other_allowlisted_iframes_survive(clean: Sanitizer, src: str) -> None:
    assert elements(clean.clean(f'<iframe src="{src}"></iframe>', BASE), "iframe") == [
        {"src": src}]


def test_protocol_relative_youtube_becomes_https(clean: Sanitizer) -> None:
    out = clean.clean('<iframe src="//www.youtube.com/embed/x"></iframe>', BASE)
    assert elements(out, "iframe") == [{"src": "https://www.youtube.com/embed/x"}]


def test_img_srcset_referrerpolicy_and_absolute_urls(clean: Sanitizer) -> None:
    out = clean.clean('<img src="a.jpg" srcset="a.jpg 1x, /img/b.jpg 2x" alt="A" '
                      'referrerpolicy="no-referrer" loading="lazy" sizes="50vw">', BASE)
    assert elements(out, "img") == [{
        "src": BASE + "a.jpg",
        "srcset": f"{BASE}a.jpg 1x, https://blog.example/img/b.jpg 2x",
        "alt": "A", "referrerpolicy": "no-referrer", "loading": "lazy", "sizes": "50vw"}]


def test_srcset_urls_with_commas_and_width_descriptors(clean: Sanitizer) -> None:
    out = clean.clean('<img srcset="https://cdn.example/w_100,h_50/a.jpg 100w,'
                      'https://cdn.example/b.jpg 200w">', BASE)
    assert elements(out, "img")[0]["srcset"] == (
        "https://cdn.example/w_100,h_50/a.jpg 100w, https://cdn.example/b.jpg 200w")


def test_srcset_parser_matches_the_html_algorithm() -> None:
    assert _srcset_candidates("a.png 1x,b.png 2x") == [("a.png", "1x"), ("b.png", "2x")]
    assert _srcset_candidates(" a,b.png, c.png ") == [("a,b.png", ""), ("c.png", "")]
    assert _srcset_candidates("a.png 1x (x, y),b.png") == [("a.png", "1x (x, y)"),
                                                           ("b.png", "")]


def test_relative_links_made_absolute(clean: Sanitizer) -> None:
    out = clean.clean('<p><a href="../other/">o</a> <a href="#top">t</a> '
                      '<a href="mailto:me@example.org">m</a></p>', BASE)
    assert [a["href"] for a in elements(out, "a")] == [
        "https://blog.example/2024/other/", BASE + "#top", "mailto:me@example.org"]


def test_figure_table_code_survive(clean: Sanitizer) -> None:
    html = ('<figure><img src="https://i.example/a.png"><figcaption>Cap</figcaption></figure>'
            '<table><thead><tr><th>h</th></tr></thead><tbody><tr><td>d</td></tr></tbody></table>'
            '<pre><code class="language-python">x = {1: 2}</code></pre>'
            '<h2>T</h2><ul><li>i</li></ul><blockquote>q</blockquote>')
    out = clean.clean(html, BASE)
    for tag in ("figure", "figcaption", "table", "thead", "tbody", "tr", "th", "td", "pre",
                "h2", "ul", "li", "blockquote"):
        assert elements(out, tag), tag
    assert elements(out, "code") == [{"class": "language-python"}]
    assert survivors(out) == []


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif", "webp"])
def test_raster_data_url_in_img_src_survives(clean: Sanitizer, kind: str) -> None:
    src = PNG.replace("png", kind, 1)
    assert elements(clean.clean(f'<img src="{src}">', BASE), "img") == [{"src": src}]


def test_hexo_braces_undone(clean: Sanitizer) -> None:
    out = clean.clean("<p>&#123;&#123; page.title &#125;&#125;</p>", BASE)
    assert out == "<p>{{ page.title }}</p>"
    assert clean_line("a &#123;b&#125;") == "a {b}"


def test_xml_illegal_characters_removed(clean: Sanitizer) -> None:
    out = clean.clean("<p>a\x00b\x01c\x08d\x0be\x0cf\x1fg\ufffeh\uffffi\tj</p>", BASE)
    assert out == "<p>abcdefghi\tj</p>"
    assert clean.clean("<p>&#1;x&#xFFFE;</p>", BASE) == "<p>x</p>"
    assert strip_xml_illegal("ok\x00") == "ok"


def test_junk_selectors_and_comments_removed(clean: Sanitizer) -> None:
    html = ('<div><p>keep me</p><div class="appendQr_wrap"><img src="qr.png">scan</div>'
            '<p class="article-editor">edited by bot</p><p class="article">also kept</p>'
            '<!-- a comment --><ins class="adsbygoogle">ad</ins><input value="x"></div>')
    out = clean.clean(html, BASE)
    assert "keep me" in out and "also kept" in out
    for gone in ("scan", "qr.png", "edited by bot", "a comment", "<!--", "ad<", "<input"):
        assert gone not in out
    assert survivors(out) == []


def test_extra_selectors(clean: Sanitizer) -> None:
    out = clean.clean('<p>a</p><p class="promo">buy</p>', BASE, extra_selectors=[".promo"])
    assert out == "<p>a</p>"


def test_empty_and_blank_input(clean: Sanitizer) -> None:
    assert clean.clean("", BASE) == ""
    assert clean.clean(" \n\x00 ", BASE) == ""


def test_no_base_url_keeps_relative_urls(clean: Sanitizer) -> None:
    out = clean.clean('<a href="/x">x</a><a href="javascript:alert(1)">y</a>', None)
    assert [a.get("href") for a in elements(out, "a")] == ["/x", None]


def test_summary_is_plain_text() -> None:
    html = "<p><b>A</b>, b</p><p>&lt;script&gt;</p>"
    assert html_to_text(html) == "A, b <script>"
    assert summarize("<p>" + "word " * 100 + "</p>", 50).endswith("…")


def test_block_boundaries_are_the_regex_substitution() -> None:
    pieces = ["<p", "<p>", "</p>", "<div ", "<br/>", "<b>", ">", "<", " ", "x", "<P class=a>",
              "<pre>", "<h2", "'>'", "</DIV", "<td>"]
    rng = random.Random(11)
    for _ in range(20_000):
        html = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert block_boundaries(html) == _BLOCK_TAG.sub(" ", html), html


@pytest.mark.parametrize("hostile", ["<p" * 200_000, "<div " * 80_000, "</p" * 130_000])
def test_text_of_hostile_html_is_linear(hostile: str) -> None:
    # Raw upstream html meets these before any sanitiser (an untitled entry's title is
    # the summary of its body; an html title is made text): a scan from each '<p' to
    # the end makes 400 KB of '<p' take 21 s.
    started = time.perf_counter()
    summarize(hostile, 80)
    html_to_text(hostile)
    assert time.perf_counter() - started < 2


def test_leading_frameset_does_not_skip_the_pre_pass(clean: Sanitizer) -> None:
    # A leading <frameset> leaves lexbor without a body unless one is given first: junk
    # would be kept, and an off-list iframe would send nh3 into its no-iframe fallback,
    # which panics (a BaseException).
    out = clean.clean('<frameset><div class="appendQr_wrap">QR</div><p>kept</p>'
                      '<iframe src="https://evil.example/"></iframe>', BASE)
    assert out == "<p>kept</p>"


def test_no_iframe_fallback_does_not_panic(clean: Sanitizer) -> None:
    out = clean._allowlist('<iframe src="https://www.youtube.com/embed/x"></iframe><p>x</p>',
                           BASE, allow_iframes=False)
    assert out == "<p>x</p>"


@pytest.mark.parametrize("html", ["<div>" * 100_000 + "deep" + "</div>" * 100_000,
                                  "<i><b>" * 100_000 + "deep",
                                  "<table><tr><td>" * 10_000 + "deep"])
def test_deep_nesting_is_bounded(clean: Sanitizer, html: str) -> None:
    # html5ever and lexbor are quadratic in depth: 100,000 divs take minutes uncapped.
    started = time.perf_counter()
    out = clean.clean(html, BASE)
    assert time.perf_counter() - started < 5
    assert "deep" in out and survivors(out) == []


@pytest.mark.parametrize("opening", ["<", "</", "<a ", "<a href=x"])
def test_an_unclosed_tag_with_a_long_name_is_scanned_in_linear_time(
        clean: Sanitizer, opening: str) -> None:
    # A '<', a long name and no '>', in a body with enough tags to be measured for
    # depth: a tag regex that backtracks through the name is quadratic (20,000
    # letters: 3 s, this one ~5 minutes), in the reader's depth check and in the
    # sanitiser's cap_depth.
    html = "<b>" * (MAX_DEPTH + 50) + opening + "x" * 200_000 + " <p>after</p>"
    started = time.perf_counter()
    assert html_depth(html) == MAX_DEPTH + 50
    out = clean.clean(html, BASE)
    assert time.perf_counter() - started < 5
    assert "after" in out


def _depth_by_matches(html: str) -> int:
    """html_depth spelt out on cap_depth's own matches, one at a time."""
    depth = deepest = 0
    for match in _TAG.finditer(html):
        if _nests(match):
            depth = max(depth - 1, 0) if match.group(1) else depth + 1
            deepest = max(deepest, depth)
    return deepest


def test_html_depth_counts_as_cap_depth_does() -> None:
    pieces = ["<", ">", "/", "a", "div", "br", " ", "p", '"', "'", "=", "x/", "</", "<b/>",
              "<div/ >", "< div>", "<A>", "</DIV>", "<br/>", "<img src=a/>", "<a href='x/'>"]
    rng = random.Random(7)
    samples = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 80)))
               for _ in range(5_000)]
    samples += ["<div>" * 600 + "</div>" * 600, "<div><br/></div/><x/ ></x>", "</div>" * 3]
    for html in samples:
        depth = _depth_by_matches(html)
        assert html_depth(html) == depth, html
        # the quick bound never says "no deeper" when it is deeper
        assert depth == 0 or may_nest_deeper(html, depth - 1), html


def test_depth_cap_keeps_shallow_and_flat_html() -> None:
    flat = "<ul>" + "<li><p>item" * 5_000 + "</ul>"  # optional end tags are not depth
    assert cap_depth(flat) == flat
    assert cap_depth("<div>" * 5 + "x" + "</div>" * 5, 3) == "<div>" * 3 + "x" + "</div>" * 3

"""Post bodies as Hexo renders them (aggregator.sources.hexo): tag plugins, Markdown as
hexo-renderer-marked, excerpts and post asset folders, compared with what Hexo 8.1.2
itself wrote for the same posts (tests/data/hexo_bodies/expected, and the shared
hexo-unit-test site's hexo-atom.xml)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from urllib.parse import unquote

import pytest
from helpers import SHARED, write_config
from selectolax.lexbor import LexborHTMLParser

from aggregator.config import load_config
from aggregator.problems import ProblemLog
from aggregator.sanitize.text import html_to_text
from aggregator.sources.content import PostReader
from aggregator.sources.hexo.assets import PostAssets
from aggregator.sources.hexo.body import BodySettings, render_body
from aggregator.sources.hexo.tags import LinkedPost
from aggregator.sources.walk import discover

CASES = Path(__file__).parent / "data" / "hexo_bodies"
UNIT_TEST = SHARED / "corpus" / "hexo-unit-test"
# Where the oracle site (CASES/expected/_config.yml) published each fixture post.
POST_URL = "http://example.com/2024/01/07/{name}/"

# Every difference left between our bodies' text and Hexo's, and why:
KNOWN = {
    # Hexo writes asset_path as a path from the site's root ("/2024/…"); a feed is read
    # away from the site, so ours is the whole URL.
    "assets": [("http://example.com/2024/01/07/assets/cat.png", "/2024/01/07/assets/cat.png")],
}


def _text(html: str) -> str:
    """The text a reader sees, whitespace removed: Hexo's feed drops newlines
    (noControlChars) and its highlighter puts line breaks in other places. Scripts
    (the sanitiser drops them) and the highlighter's line-number gutters (we write no
    highlighting: `<pre><code>`, as Hexo does with its highlighter off) are left out."""
    tree = LexborHTMLParser("<body>" + html + "</body>")
    for node in tree.css("script, td.gutter"):
        node.decompose()
    body = tree.body
    return "".join(html_to_text(body.html if body is not None else "").split())


def _body(path: Path) -> str:
    """The body of a fixture post (after its front matter's closing ---)."""
    return path.read_text(encoding="utf-8").split("\n---\n", 1)[1]


def _render(name: str, warnings: list[str] | None = None) -> tuple[str, object, object]:
    assets = PostAssets(CASES / name, CASES, POST_URL.format(name=name))
    told = warnings if warnings is not None else []
    rendered = render_body(_body(CASES / f"{name}.md"), True, BodySettings(post_asset_folder=True),
                           assets, lambda _tag, message: told.append(message))
    return rendered.html, rendered.excerpt, rendered.image


@pytest.mark.parametrize("expected", sorted((CASES / "expected").glob("*.html")),
                         ids=lambda p: p.stem)
def test_fixture_bodies_read_as_hexo_wrote_them(expected: Path) -> None:
    ours, _, _ = _render(expected.stem)
    text = _text(ours)
    for mine, hexos in KNOWN.get(expected.stem, []):
        assert mine in text, "a listed difference is gone: drop it from KNOWN"
        text = text.replace(mine, hexos)
    assert text == _text(expected.read_text(encoding="utf-8"))


def _unit_test_posts() -> dict[str, str]:
    """Hexo's published content of each hexo-unit-test post, by post file stem."""
    atom = (UNIT_TEST / "hexo-atom.xml").read_text(encoding="utf-8")
    out = {}
    for entry in re.findall(r"<entry>.*?</entry>", atom, re.S):
        link = re.search(r'<link href="([^"]*)"', entry)
        content = re.search(r'<content type="html"><!\[CDATA\[(.*?)\]\]></content>', entry, re.S)
        assert link and content
        out[unquote(link.group(1).rstrip("/").rsplit("/", 1)[1])] = content.group(1)
    return out


@pytest.mark.skipif(not UNIT_TEST.is_dir(), reason="../shared/corpus/hexo-unit-test absent")
def test_the_unit_test_sites_bodies_read_as_hexo_published_them() -> None:
    """All 15 posts of Hexo's theme unit-test site (tag plugins, code, Markdown
    elements, CJK) give Hexo's text; no tag syntax is left in any."""
    published = _unit_test_posts()
    posts = sorted((UNIT_TEST / "posts").glob("*.md"))
    assert len(posts) == len(published) == 15
    warnings: list[str] = []
    for post in posts:
        html = render_body(_body(post), True, BodySettings(), None,
                           lambda _tag, message: warnings.append(message)).html
        assert "{%" not in html, post.name
        assert _text(html) == _text(published[post.stem]), post.name
    assert not warnings


def _reader(tmp_path: Path, site: BodySettings,
            follow_symlinks: bool = False) -> tuple[PostReader, ProblemLog]:
    config = load_config(write_config(tmp_path, site={"post_url": "http://example.com/{path}/"},
                                      content={"follow_symlinks": follow_symlinks}))
    problems = ProblemLog(echo=False)
    return PostReader(config, problems, lambda _id: datetime(2024, 1, 1, tzinfo=UTC),
                      bodies=site), problems


def _write(tmp_path: Path, rel: str, text: str) -> None:
    path = tmp_path / "posts" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _read_all(reader: PostReader, tmp_path: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for post in discover(reader.config, ProblemLog(echo=False)):
        out[post.rel] = reader.parse(post, Path(post.location).read_bytes())
    return out


@pytest.mark.skipif(not UNIT_TEST.is_dir(), reason="../shared/corpus/hexo-unit-test absent")
def test_the_excerpt_posts_summary_is_its_excerpt(tmp_path: Path) -> None:
    """The unit-test site's Excerpts post: its summary is the part before
    <!-- more -->, the text of what Hexo's feed gives as its summary."""
    atom = (UNIT_TEST / "hexo-atom.xml").read_text(encoding="utf-8")
    entry = next(e for e in re.findall(r"<entry>.*?</entry>", atom, re.S)
                 if "<title>Excerpts</title>" in e)
    summary = re.search(r'<summary type="html">(.*?)</summary>', entry, re.S)
    assert summary is not None
    hexo_excerpt = html_to_text(unescape(summary.group(1)))
    # (its front matter has no opening ---: read here with one, a test of bodies)
    _write(tmp_path, "excerpts.md", "---\n" + (UNIT_TEST / "posts" / "excerpts.md").read_text())
    reader, _ = _reader(tmp_path, BodySettings())
    entry_read = _read_all(reader, tmp_path)["excerpts.md"]
    assert entry_read.summary == hexo_excerpt  # type: ignore[attr-defined]
    assert "Lorem ipsum" in entry_read.html  # type: ignore[attr-defined]


@pytest.mark.parametrize("marker", ["<!-- more -->", "<!--more-->", "<!-- MORE-->"])
def test_the_part_before_the_more_marker_is_the_summary_else_excerpt_else_description(
        tmp_path: Path, marker: str) -> None:
    front = "---\ntitle: T\ndescription: The description.\nexcerpt: The excerpt.\n---\n"
    _write(tmp_path, "marked.md", front + f"First *part*.\n\n{marker}\n\nThe rest.\n")
    _write(tmp_path, "excerpt.md", front + "No marker.\n")
    _write(tmp_path, "description.md", "---\ntitle: T\ndescription: The description.\n---\nB\n")
    _write(tmp_path, "html.md", f"---\ntitle: T\n---\n<p>Lead.</p>{marker}<p>More.</p>")
    _write(tmp_path, "none.md", "---\ntitle: T\n---\nJust a body.\n")
    reader, _ = _reader(tmp_path, BodySettings())
    read = _read_all(reader, tmp_path)
    summaries = {rel: entry.summary for rel, entry in read.items()}  # type: ignore[attr-defined]
    assert summaries == {"marked.md": "First part.", "excerpt.md": "The excerpt.",
                         "description.md": "The description.", "html.md": "Lead.",
                         "none.md": ""}


def test_tag_syntax_in_code_stays_text_and_raw_passes_through() -> None:
    html, _, _ = _render("tags-in-code")
    assert "<code>&#123;% youtube abc %&#125;</code>" in html  # inline code
    assert "&#123;% iframe https://example.org/indented %&#125;" in html  # indented code
    assert "<pre><code>{{ a_variable }}\n</code></pre>" in html  # fenced
    assert 'const a = "{% blockquote %}";\n{% raw %}not a tag{% endraw %}' in html
    assert "<b>{% youtube kept %}</b>" in html  # raw
    assert html.count("<iframe") == 1  # only the tag outside code


def test_an_unknown_tag_is_reported_once_at_its_line_and_keeps_its_text(
        tmp_path: Path) -> None:
    _write(tmp_path, "a/unknown.md", (CASES / "unknown-tag.md").read_text())
    reader, problems = _reader(tmp_path, BodySettings())
    entry = _read_all(reader, tmp_path)["a/unknown.md"]
    html = entry.html  # type: ignore[attr-defined]
    assert "<strong>theme's</strong> note, its text kept." in html.replace("’", "'")
    assert "{% note" not in html and "{% label" not in html
    assert "after an inline unknown tag" in html
    assert '<pre><code>print("hi") # {% not a tag %}</code></pre>' in html  # code: text
    messages = [str(p) for p in problems.items]
    assert messages == [
        "a/unknown.md:7: unknown tag plugin {% note %}; its content kept",
        "a/unknown.md:11: unknown tag plugin {% label %}; dropped",
    ]


def test_an_unclosed_tag_or_brace_keeps_the_rest_of_the_post() -> None:
    warnings: list[str] = []
    html = render_body("Before {% blockquote %} and {{ never closed\n\nAfter `{%` too.\n",
                       True, BodySettings(), None, lambda _t, m: warnings.append(m)).html
    assert "After" in html and "never closed" in html
    assert warnings == ["{% blockquote %} is never closed with {% endblockquote %}; kept as text"]


def test_post_link_resolves_through_the_sites_index_and_is_reported_without_one() -> None:
    posts = {"hello-world": LinkedPost("Hello <World>", "http://example.com/2013/hello/")}
    body = "See {% post_link hello-world %}, {% post_link hello-world 'its text' %} at " \
           "{% post_path hello-world %}; {% post_link nowhere %}.\n"
    warnings: list[str] = []
    html = render_body(body, True, BodySettings(find_post=posts.get), None,
                       lambda _t, m: warnings.append(m)).html
    # (Hexo writes the link's path; the sanitiser makes it absolute on the same site)
    assert ('<a href="/2013/hello/" title="Hello &lt;World&gt;">'
            "Hello &lt;World&gt;</a>") in html
    assert '<a href="/2013/hello/" title="Hello &lt;World&gt;">its text</a>' in html
    assert " at /2013/hello/;" in html
    assert warnings == ["{% post_link nowhere %}: no post has that slug"]
    warnings.clear()
    html = render_body(body, True, BodySettings(), None, lambda _t, m: warnings.append(m)).html
    assert "See hello-world, its text at" in html
    assert warnings == ["{% post_link hello-world %}: no other posts are known to link to",
                        "{% post_path hello-world %}: no other posts are known to link to",
                        "{% post_link nowhere %}: no other posts are known to link to"]


def test_asset_images_resolve_and_the_first_is_the_enclosure_sized_from_disk(
        tmp_path: Path) -> None:
    warnings: list[str] = []
    html, _, image = _render("assets", warnings)
    url = POST_URL.format(name="assets")
    assert f'<img src="{url}cat.png" alt="A cat">' in html
    assert f'<img src="{url}cat.png" alt="raw html">' in html  # raw HTML's relative img
    assert f'<img src="{url}dog.jpg" class="" title="A dog">' in html
    assert image is not None and image.url == url + "cat.png"  # type: ignore[attr-defined]
    assert image.mime_type == "image/png"  # type: ignore[attr-defined]
    assert image.length == (CASES / "assets" / "cat.png").stat().st_size  # type: ignore[attr-defined]
    assert warnings == ["{% asset_img missing.png %}: no such file in the post's asset "
                        "folder; dropped"]
    # without an asset folder the same body keeps its relative images
    html = render_body(_body(CASES / "assets.md"), True, BodySettings(), None, lambda *_: None).html
    assert '<img src="cat.png" alt="A cat">' in html


@pytest.mark.parametrize("follow", [False, True])
def test_assets_never_leave_the_content_dir(tmp_path: Path, follow: bool) -> None:
    """A symlink in the asset folder to a file outside the content dir, and a path
    climbing out with .., are no assets: not linked, not sized, followed or not."""
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG secret")
    _write(tmp_path, "p.md", "---\ntitle: P\n---\n![](link.png) ![](../../secret.png)\n"
           "{% asset_path link.png %}\n")
    (tmp_path / "posts" / "p").mkdir()
    os.symlink(outside, tmp_path / "posts" / "p" / "link.png")
    reader, problems = _reader(tmp_path, BodySettings(post_asset_folder=True), follow)
    entry = _read_all(reader, tmp_path)["p.md"]
    assert entry.image is None  # type: ignore[attr-defined]
    assert "secret" not in entry.html.replace("../../secret.png", "")  # type: ignore[attr-defined]
    assert '<img src="link.png"' in entry.html  # type: ignore[attr-defined]
    assert [p.message for p in problems.items] == [
        "{% asset_path link.png %}: no such file in the post's asset folder; dropped"]


def test_tags_in_an_html_body_are_rendered_as_hexo_does(tmp_path: Path) -> None:
    """Hexo runs tag plugins over every post, HTML bodies too; an HTML body without
    tags is used as it is."""
    _write(tmp_path, "t.md", "---\ntitle: T\n---\n<p>a</p>\n{% youtube abc %}\n")
    _write(tmp_path, "h.md", "---\ntitle: H\n---\n<p>a  &#123;% x %&#125;</p>\n\n")
    reader, _ = _reader(tmp_path, BodySettings())
    read = _read_all(reader, tmp_path)
    assert 'src="https://www.youtube.com/embed/abc"' in read["t.md"].html  # type: ignore[attr-defined]
    assert read["h.md"].html == "\n<p>a  &#123;% x %&#125;</p>\n\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize("follow", [False, True])
def test_a_symlinked_asset_inside_the_content_dir_counts_only_when_links_are_followed(
        tmp_path: Path, follow: bool) -> None:
    _write(tmp_path, "p.md", "---\ntitle: P\n---\n![](in.png)\n")
    (tmp_path / "posts" / "p").mkdir()
    (tmp_path / "posts" / "real.png").write_bytes(b"\x89PNG12345")
    os.symlink(tmp_path / "posts" / "real.png", tmp_path / "posts" / "p" / "in.png")
    reader, _ = _reader(tmp_path, BodySettings(post_asset_folder=True), follow)
    entry = _read_all(reader, tmp_path)["p.md"]
    image = entry.image  # type: ignore[attr-defined]
    assert (image.length if image else None) == (9 if follow else None)


HOSTILE = {
    "unclosed tags": "{%a " * 75_000,
    "unclosed variables, one comment closer at the end": "{{a " * 75_000 + "#}",
    "unknown blocks, one end": "{% note %}x " * 25_000 + "{% endnote %}",
    "tags never ended, their end named in the text": "endnote " + "{% note %} " * 25_000,
    "nested 5,000 deep": "{% note %}" * 5_000 + "x" + "{% endnote %}" * 5_000,
    "blocks": "{% blockquote %}x{% endblockquote %}\n" * 5_000,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_tag_soup_renders_in_linear_time(body: str) -> None:
    """Unclosed and unended tags, deep nesting: each text is scanned a bounded number
    of times (looking for an end to the end of the post again for each of 25,000
    tags takes minutes)."""
    import time
    started = time.perf_counter()
    for is_markdown in (False, True):
        render_body(body, is_markdown, BodySettings(), None, lambda *_: None)
    assert time.perf_counter() - started < 30

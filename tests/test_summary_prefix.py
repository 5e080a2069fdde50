"""summarize() reads a prefix of long html first: its summaries must be the ones the
whole text gives, on every real body and on generated html cut at awkward places."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import SHARED

from aggregator.config import DEFAULT_DROP_SELECTORS, DEFAULT_IFRAME_HOSTS
from aggregator.sanitize.html import Sanitizer
from aggregator.sanitize.text import _SUMMARY_PREFIX, html_to_text, shortened, summarize


def _whole_text_summary(html: str, limit: int = 300) -> str:
    """summarize() the long way: the text of all of the html."""
    return shortened(html_to_text(html), limit)


def test_every_corpus_body_summarised_as_from_its_whole_text() -> None:
    posts = SHARED / "corpus" / "posts"
    if not posts.is_dir():
        pytest.skip(f"{posts} absent (../shared is not beside the project)")
    sanitizer = Sanitizer(DEFAULT_DROP_SELECTORS, DEFAULT_IFRAME_HOSTS)
    long = 0
    for path in sorted(Path(posts).rglob("*.md")):
        body = path.read_text(encoding="utf-8", errors="replace").split("---", 2)[-1]
        for html in (body, sanitizer.clean(body)):
            long += len(html) > _SUMMARY_PREFIX
            for limit in (80, 300):
                assert summarize(html, limit) == _whole_text_summary(html, limit), path.name
    assert long > 20  # the prefix was tried on many of them


PIECES = ["word ", "字", "<p>", "</p>", "<div class=\"x\">", "</div>", "&amp;", "&lt;b&gt;",
          "&#233;", "&CounterClockwiseContourIntegral;", "&#123;", "<br>", "\n\n", "   ",
          '<img src="https://x.example/a.png" alt="a > b">', "<table><tr><td>cell</td>",
          "</tr></table>", "<b><i>mis</b>nested</i>", "<!-- comment -->", "<a href='x'>",
          "</a>", "<li>item", "\t", "\x00", "<script>x</script>", "<h2>Head</h2>"]


def test_generated_html_cut_anywhere_summarised_as_from_its_whole_text() -> None:
    rng = random.Random(20261127)
    for _ in range(400):
        html = "".join(rng.choice(PIECES) for _ in range(rng.randint(300, 1500)))
        # and with the prefix's end moved through tags, entities and text
        html = "x" * rng.randint(0, 40) + html
        for limit in (80, 300):
            assert summarize(html, limit) == _whole_text_summary(html, limit), html[:200]

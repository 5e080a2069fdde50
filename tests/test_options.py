"""Output options: slugs, max_items, full_content, index.html and feeds.opml."""

from __future__ import annotations

from pathlib import Path

import feedparser
from helpers import fixed_clock, write_config, write_post
from lxml import etree

from aggregator.config import load_config
from aggregator.pipeline import build
from aggregator.tree.categories import base_slug


def _posts(tmp_path: Path, count: int = 5) -> None:
    for i in range(count):
        write_post(tmp_path / "posts", f"p{i}.md", f"""
            title: Post {i}
            categories: [二次元, "{'..' if i % 2 else '🙂'}"]
            date: 2026-01-0{i + 1} 00:00:00
        """, body=f"<div><p>Full body {i}</p></div>")


def test_slugs_transliterate_hash_and_obey_overrides(tmp_path: Path) -> None:
    assert base_slug("二次元", {}) == "er-ci-yuan"
    assert base_slug("..", {}).startswith("c-") and base_slug("..", {}) != base_slug("🙂", {})
    _posts(tmp_path)
    config = load_config(write_config(tmp_path, output={"slugs": {"二次元": "anime"}}))
    build(config, clock=fixed_clock())
    folders = sorted(p.name for p in (config.output_dir / "anime").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(f.startswith("c-") for f in folders)


def test_max_items_bounds_every_feed_newest_first(tmp_path: Path) -> None:
    _posts(tmp_path)
    config = load_config(write_config(tmp_path, output={"max_items": 2}))
    build(config, clock=fixed_clock())
    titles = [e.title for e in feedparser.parse(config.output_dir / "rss.xml").entries]
    assert titles == ["Post 4", "Post 3"]


def test_full_content_false_publishes_summaries_only(tmp_path: Path) -> None:
    _posts(tmp_path, 1)
    config = load_config(write_config(tmp_path, output={"full_content": False}))
    build(config, clock=fixed_clock())
    atom = (config.output_dir / "atom.xml").read_text()
    rss = (config.output_dir / "rss.xml").read_text()
    assert "<content" not in atom and "content:encoded>" not in rss
    entry = feedparser.parse(config.output_dir / "atom.xml").entries[0]
    assert entry.summary == "Full body 0"


def test_index_and_opml_list_every_feed(tmp_path: Path) -> None:
    _posts(tmp_path)
    config = load_config(write_config(tmp_path))
    build(config, clock=fixed_clock())
    out = config.output_dir
    feeds = {p.relative_to(out).as_posix() for p in out.rglob("*.xml")}
    index = (out / "index.html").read_text()
    for rel in feeds:
        assert f'href="https://example.org/feeds/{rel}"' in index  # autodiscovery
    opml = etree.parse(str(out / "feeds.opml"))
    urls = {o.get("xmlUrl") for o in opml.iter("outline")}
    assert urls == {f"https://example.org/feeds/{r}" for r in feeds if r.endswith("atom.xml")}

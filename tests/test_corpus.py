"""The real sample posts in ../shared: every feed valid, every post published, real
readers show them. Skips (with a message) when ../shared or its checkers are absent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import feedparser
import pytest
from helpers import ATOM, SHARED, atom_ids, fixed_clock, write_config
from lxml import etree

from aggregator.config import load_config
from aggregator.pipeline import BuildReport, build

POSTS = SHARED / "corpus" / "posts"
LEGACY = SHARED / "corpus" / "legacy-posts"
TOOLS = SHARED / "tools"
SITE = "https://example.org/feeds/"

pytestmark = pytest.mark.skipif(not POSTS.is_dir(), reason=f"{POSTS} absent: corpus tests skipped")


@pytest.fixture(scope="module")
def corpus_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildReport]:
    tmp = tmp_path_factory.mktemp("corpus")
    config = load_config(write_config(tmp, content_dir=[str(POSTS), str(LEGACY)],
                                      site={"url": SITE, "timezone": "Asia/Shanghai"}))
    return config.output_dir, build(config, clock=fixed_clock())


def test_every_post_is_published_or_reported(corpus_build: tuple[Path, BuildReport]) -> None:
    out, report = corpus_build
    found = len(list(POSTS.rglob("*.md"))) + len(list(LEGACY.rglob("*.md")))
    assert report.posts_found == found
    assert report.posts_read + len({p.where.split(":")[0] for p in report.problems.errors}) \
        >= found
    entries = feedparser.parse(out / "atom.xml").entries
    assert len(entries) == report.entries
    assert report.entries == report.posts_read  # no corpus post shares an id or a link
    # "Invalid Date" posts sort below every dated one
    tree = etree.parse(str(out / "atom.xml"))
    dated = [e.find(f"{ATOM}published") is not None for e in tree.iter(f"{ATOM}entry")]
    assert dated.count(False) == 6 and dated[-6:] == [False] * 6


def test_category_feed_contains_subcategory_entries(corpus_build: tuple[Path, BuildReport]
                                                    ) -> None:
    out, _ = corpus_build
    top = out / "er-ci-yuan"
    parent = set(atom_ids(top / "atom.xml"))
    children = set()
    for child in top.glob("*/atom.xml"):
        children |= set(atom_ids(child))
    # and the one post whose `[二次元, Animen 动漫平台, [news]]` is three top-level
    # categories by Hexo's rule (a list holding a list: each item its own hierarchy)
    several = {i for i in parent if "%E5%B9%BC%E5%A5%B3" in i}  # 幼女 in its path
    assert children and len(several) == 1 and parent == children | several
    for other in ("animen-dong-man-ping-tai", "news"):
        assert several <= set(atom_ids(out / other / "atom.xml"))
    assert atom_ids(out / "atom.xml").count(several.pop()) == 1  # once in the root's feed


def test_validator_finds_no_errors(corpus_build: tuple[Path, BuildReport]) -> None:
    validator = TOOLS / "validate_feed"
    probe = subprocess.run([sys.executable, "-c", "import html5lib, rdflib"],
                           capture_output=True)
    if not validator.exists() or probe.returncode:
        pytest.skip("validate_feed or its deps (html5lib, rdflib) absent")
    out, _ = corpus_build
    run = subprocess.run([sys.executable, str(validator), "--root", str(out), "--root-url", SITE,
                          str(out)], capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(list(out.rglob("*.xml")))
    errors = [(r["file"], e["class"]) for r in results for e in r["errors"]]
    assert errors == [], errors[:10]
    assert all(r["valid"] for r in results)


@pytest.mark.parametrize("feed", ["atom.xml", "rss.xml"])
def test_real_clients_read_the_feeds(corpus_build: tuple[Path, BuildReport], feed: str) -> None:
    tool = TOOLS / "client_view"
    if not tool.exists() or not shutil.which("newsboat") or not shutil.which("sfeed"):
        pytest.skip("client_view, newsboat or sfeed absent")
    out, report = corpus_build
    run = subprocess.run([sys.executable, str(tool), str(out / "atom.xml" if feed == "atom.xml"
                                                         else out / "rss.xml")],
                         capture_output=True, text=True, timeout=300)
    views = {v["client"]: v for v in map(json.loads, run.stdout.splitlines())}
    assert set(views) == {"newsboat", "sfeed", "reader", "feedparser"}, run.stderr[-500:]
    for client, view in views.items():
        assert view["ok"], (client, view["errors"])
        assert view["entry_count"] == report.entries, client
        titled = [e for e in view["entries"] if e["title"]]
        assert len(titled) == report.entries, client
        assert all(e["link"] and e["link"].startswith("https://") for e in view["entries"])
    with_enclosure = [e for e in views["reader"]["entries"] if e["enclosures"]]
    assert with_enclosure and all(x["type"].startswith("image/")
                                  for e in with_enclosure for x in e["enclosures"])

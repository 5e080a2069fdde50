"""Hexo itself is the oracle: Hexo 8 (pinned in tests/data/hexo-oracle, installed with
`npm ci` once into a cache dir keyed by the lock file) generates its Atom feed from a
site, and every entry we publish from the same site must have Hexo's link, title,
date and categories. Sites: ../shared/corpus/hexo-unit-test (the posts Hexo's themes
are tested with) and a fixture of ours (no opening `---`, JSON front matter, several
category hierarchies, dates from file names, a time zone, drafts, every permalink
parameter we can reproduce).

Skips, saying why, where node or npm is absent or the install fails (no registry).
Bodies are compared by tests of their own (`compare_bodies` is the hook)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import yaml
from helpers import ATOM, REPO, SHARED, fixed_clock, write_config
from lxml import etree
from lxml import html as lxml_html

from aggregator.config import load_config
from aggregator.pipeline import build

ORACLE = REPO / "tests" / "data" / "hexo-oracle"
UNIT_TEST = SHARED / "corpus" / "hexo-unit-test"
TOOLS = SHARED / "tools"


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aggregator-tests"


@pytest.fixture(scope="session")
def hexo_modules() -> Path:
    """node_modules with the pinned Hexo, installed once per lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node or npm absent: the Hexo oracle is not run (Debian: nodejs npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    if tuple(int(n) for n in version.strip().lstrip("v").split(".")[:2]) < (20, 19):
        pytest.skip(f"node {version.strip()} is older than Hexo 8 needs (20.19)")
    lock = (ORACLE / "package-lock.json").read_bytes()
    root = _cache_root()
    target = root / f"hexo-{hashlib.sha256(lock).hexdigest()[:16]}"
    if (target / "node_modules" / "hexo" / "package.json").is_file():
        return target / "node_modules"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".hexo-install.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # (another test run may be installing it)
        if not (target / "node_modules" / "hexo" / "package.json").is_file():
            work = root / f".{target.name}.{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            for name in ("package.json", "package-lock.json"):
                shutil.copy(ORACLE / name, work / name)
            try:
                run = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                                     cwd=work, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                shutil.rmtree(work, ignore_errors=True)
                pytest.skip("npm ci of the pinned Hexo took over 600 s")
            if run.returncode:
                shutil.rmtree(work, ignore_errors=True)
                pytest.skip(f"npm ci of the pinned Hexo failed: {run.stderr[-300:]}")
            shutil.rmtree(target, ignore_errors=True)
            work.rename(target)
    return target / "node_modules"


def _hexo_generate(modules: Path, site: Path) -> Path:
    """Run Hexo on a site (its _config.yml and source/); its public/atom.xml."""
    shutil.copy(ORACLE / "package.json", site / "package.json")
    (site / "node_modules").symlink_to(modules, target_is_directory=True)
    # Hexo reads a file name's date and writes a permalink's date parts in the
    # machine's zone: a site's own machine is in the site's zone
    zone = yaml.safe_load((site / "_config.yml").read_text(encoding="utf-8")).get("timezone")
    env = {**os.environ, "TZ": zone or "UTC"}
    run = subprocess.run(["node", str(modules / "hexo" / "bin" / "hexo"), "generate"],
                         cwd=site, capture_output=True, text=True, timeout=120, env=env)
    feed = site / "public" / "atom.xml"
    assert run.returncode == 0 and feed.is_file(), run.stdout[-2000:] + run.stderr[-2000:]
    return feed


def _hexo_site(tmp: Path, config: dict[str, Any], posts: Path | dict[str, str]) -> Path:
    site = tmp / "hexo"
    (site / "source").mkdir(parents=True)
    if isinstance(posts, Path):
        shutil.copytree(posts, site / "source" / "_posts")
    else:
        for rel, text in posts.items():
            path = site / "source" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    config = {**config, "feed": {"type": "atom", "path": "atom.xml", "limit": 0,
                                 "content": True}}
    (site / "_config.yml").write_text(yaml.safe_dump(config, allow_unicode=True),
                                      encoding="utf-8")
    return site


def _ours(tmp: Path, site: Path) -> Path:
    """Our build of the Hexo site's posts with its _config.yml: our root Atom feed."""
    path = write_config(tmp, str(site / "source" / "_posts"),
                        content={"hexo_config": str(site / "_config.yml")})
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    del data["site"]["post_url"], data["site"]["timezone"]  # the Hexo site's, as a user's
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    report = build(load_config(path), clock=fixed_clock())
    assert report.problems.errors == []
    return tmp / "feeds" / "atom.xml"


def _entries(feed: Path) -> dict[str, dict[str, Any]]:
    """link → what we compare of each entry of an Atom feed."""
    out: dict[str, dict[str, Any]] = {}
    for entry in etree.parse(str(feed)).iter(f"{ATOM}entry"):
        link = entry.find(f"{ATOM}link[@rel='alternate']")
        if link is None:
            link = entry.find(f"{ATOM}link")
        published = entry.findtext(f"{ATOM}published")
        href = link.get("href") if link is not None else None
        out[href or ""] = {
            "title": entry.findtext(f"{ATOM}title") or "",
            "published": datetime.fromisoformat(published.replace("Z", "+00:00"))
            if published else None,
            "categories": {c.get("term") for c in entry.iter(f"{ATOM}category")},
            "content": entry.findtext(f"{ATOM}content") or "",
        }
    return out


def _compare(hexo_feed: Path, our_feed: Path,
             compare_bodies: Callable[[str, str], None] | None = None) -> int:
    """Every entry alike (the title: Hexo's, or for a post without one, the file name
    Hexo's use_slug_as_post_title would give); how many."""
    theirs, ours = _entries(hexo_feed), _entries(our_feed)
    assert sorted(ours) == sorted(theirs)  # the links
    for link, hexo in theirs.items():
        mine = ours[link]
        expected_title = hexo["title"] or link.rstrip("/").rsplit("/", 1)[-1]
        assert (mine["title"], mine["published"], mine["categories"]) == \
            (expected_title, hexo["published"], hexo["categories"]), link
        if compare_bodies is not None:
            compare_bodies(hexo["content"], mine["content"])
    return len(theirs)


@pytest.mark.skipif(not UNIT_TEST.is_dir(), reason=f"{UNIT_TEST} absent")
def test_the_unit_test_site_as_hexo_publishes_it(hexo_modules: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((UNIT_TEST / "_config.yml").read_text(encoding="utf-8"))
    config["timezone"] = "UTC"  # as hexo-atom.xml was made
    site = _hexo_site(tmp_path, config, UNIT_TEST / "posts")
    hexo_feed = _hexo_generate(hexo_modules, site)
    assert _compare(hexo_feed, _ours(tmp_path, site)) == 15
    # and Hexo made what the corpus keeps (its feed's title aside)
    stored = _entries(UNIT_TEST / "hexo-atom.xml")
    assert {k: (v["title"], v["published"], v["categories"]) for k, v in stored.items()} == \
        {k: (v["title"], v["published"], v["categories"])
         for k, v in _entries(hexo_feed).items()}


FIXTURE_CONFIG = {
    "title": "Fixture", "url": "https://blog.example/sub/", "timezone": "Asia/Shanghai",
    "permalink": ":lang/:year/:i_month/:i_day/:category/:title/:post_title-:hash.html",
    "permalink_defaults": {"lang": "en"}, "pretty_urls": {"trailing_html": False},
    "new_post_name": ":year-:month-:day-:title.md", "default_category": "misc",
    "category_map": {"生活": "life"}, "filename_case": 1,
}
FIXTURE_POSTS = {
    "_posts/2014-02-03-file-date.md": "title: From the file name\ncategories: Notes\n---\nA.\n",
    "_posts/2014-02-04-json.md": ';;;\n"title": "JSON, with ;;;",\n"date": "2014-02-04 '
                                 '10:11:12",\n"tags": ["json", "x"]\n;;;\nB.\n',
    "_posts/2014-02-05-several.md": "\n---\ntitle: Several hierarchies\ndate: 2014-02-05 "
                                    "08:00:00\ncategories: [[Diary, PlayStation], [Diary, "
                                    "Games], [Life]]\n---\n\nC.\n",
    "_posts/2014-02-06-no-opening.md": "title: 没有 opening 的 front matter\ndate: 2014/2/6 "
                                       "9:05:03\ncategories: 生活\nlang: zh\n---\nD.\n",
    "_posts/2014-02-07-late.md": "---\ntitle: Late at night\ndate: 2014-2-7 23:59:59\n"
                                 "categories: [Diary, Games]\n---\nE.\n",
    "_posts/2014-02-08-override.md": "title: Overridden\ndate: 2014-02-08 12:00:00\n"
                                     "permalink: custom/path/\n---\nF.\n",
    "_posts/sub/2014-02-09-nested.md": "title: Nested, Ünïcode & Co.\ndate: 2014-02-09 "
                                       "12:00:00\ntags: Solo\n---\nG.\n",
    "_posts/2014-02-10-hidden.md": "title: Hidden\ndate: 2014-02-10 12:00:00\n"
                                   "published: false\n---\nH.\n",
    "_drafts/2014-02-11-draft.md": "title: A draft\ndate: 2014-02-11 12:00:00\n---\nI.\n",
}


def test_a_fixture_of_hexo_features_as_hexo_publishes_it(hexo_modules: Path,
                                                          tmp_path: Path) -> None:
    site = _hexo_site(tmp_path, FIXTURE_CONFIG, FIXTURE_POSTS)
    hexo_feed = _hexo_generate(hexo_modules, site)
    assert _compare(hexo_feed, _ours(tmp_path, site)) == 7


@pytest.mark.skipif(not UNIT_TEST.is_dir(), reason=f"{UNIT_TEST} absent")
def test_the_unit_test_sites_feeds_are_valid(tmp_path: Path) -> None:
    validator = TOOLS / "validate_feed"
    probe = subprocess.run([sys.executable, "-c", "import html5lib, rdflib"],
                           capture_output=True)
    if not validator.exists() or probe.returncode:
        pytest.skip("validate_feed or its deps (html5lib, rdflib) absent")
    config = yaml.safe_load((UNIT_TEST / "_config.yml").read_text(encoding="utf-8"))
    site = _hexo_site(tmp_path, config, UNIT_TEST / "posts")
    out = _ours(tmp_path, site).parent
    run = subprocess.run([sys.executable, str(validator), "--root", str(out), "--root-url",
                          "https://example.org/feeds/", str(out)],
                         capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(list(out.rglob("*.xml"))) > 2
    assert [(r["file"], e) for r in results for e in r["errors"]] == []


LINKING_POSTS = {
    "_posts/2014-03-01-target.md": "title: The <target> & Co.\ndate: 2014-03-01 10:00:00\n"
                                   "categories: [Diary, Games]\n---\nThe target.\n",
    "_posts/2014-03-02-linker.md": "title: Linker\ndate: 2014-03-02 10:00:00\n---\n"
                                   "See {% post_link target %}, {% post_link target "
                                   "'its <b>own</b> words' false %} and {% post_link target "
                                   "'a & b' %}; its path is {% post_path target %}.\n",
}


def _links_and_text(content: str, base: str) -> tuple[list[tuple[str, str, str]], str]:
    """The body's links (absolute href, title, text) and its whitespace-normalised text."""
    root = lxml_html.fromstring(f"<div>{content}</div>")
    links = [(urljoin(base, a.get("href", "")), a.get("title", ""), a.text_content())
             for a in root.iter("a")]
    return links, " ".join(root.text_content().split())


def test_post_link_and_post_path_as_hexo_writes_them(hexo_modules: Path,
                                                      tmp_path: Path) -> None:
    """A post linking another by post_link (its title, given words, escaped or not) and
    post_path: the same links, titles and text as Hexo's; the link is the target's."""
    site = _hexo_site(tmp_path, FIXTURE_CONFIG, LINKING_POSTS)
    hexo_feed = _hexo_generate(hexo_modules, site)
    base = str(FIXTURE_CONFIG["url"])
    bodies: list[tuple[tuple[list[tuple[str, str, str]], str], ...]] = []

    def compare(theirs: str, mine: str) -> None:
        bodies.append((_links_and_text(theirs, base), _links_and_text(mine, base)))
    assert _compare(hexo_feed, _ours(tmp_path, site), compare) == 2
    linker = next(pair for pair in bodies if pair[0][0])
    assert linker[1] == linker[0]
    target = next(link for link in _entries(hexo_feed) if "target" in link)
    assert {href for href, _t, _x in linker[1][0]} == {target}
    assert linker[1][1].endswith(f"its path is {urlsplit(target).path}.")

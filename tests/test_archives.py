"""RFC 5005 archived feeds (`output.archives`): a reader walking `prev-archive` from
any node's current feed gets every entry of the node exactly once, through random
histories of added, edited, moved and deleted posts; complete archives keep their
bytes while no old entry changes; an incremental build equals a clean one; the
validator finds no error in the archive documents."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import ATOM, SHARED, fixed_clock, write_config, write_post
from lxml import etree
from test_cache import _clean_build, _feeds

from aggregator.config import load_config
from aggregator.pipeline import build

SITE = "https://example.org/feeds/"
FH = "{http://purl.org/syndication/history/1.0}"
PAGE = 3  # max_items: small pages, many of them
TOPS = ("A", "B", "C")
SUBS = ("X", "Y")


class History:
    """Posts with random dates, categories and texts, changed at random."""

    def __init__(self, root: Path, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.posts = root / "posts"
        self.live: dict[str, tuple[str, ...]] = {}  # title → category path
        self.made = 0

    def add(self) -> None:
        self.made += 1
        self._write(f"P{self.made}", (self.rnd.choice(TOPS), self.rnd.choice(SUBS)),
                    newest=False)

    def add_newest(self) -> None:
        self.made += 1
        self._write(f"P{self.made}", (self.rnd.choice(TOPS), self.rnd.choice(SUBS)),
                    newest=True)

    def _write(self, title: str, path: tuple[str, ...], newest: bool, body: str = "Body",
               date: str | None = None) -> None:
        if date is None:
            if newest:
                date = f"2027-01-01 00:{self.made % 60:02d}:{self.made // 60 % 60:02d}"
            elif self.rnd.random() < 0.1:
                date = ""  # undated: sorts below the dated ones
            else:
                date = (f"2025-{self.rnd.randint(1, 12):02d}-{self.rnd.randint(1, 28):02d} "
                        f"{self.rnd.randint(0, 23):02d}:00:00")
        front = f"title: {title}\ncategories: [{', '.join(path)}]\n"
        if date:
            front += f"date: {date}\n"
        write_post(self.posts, f"{title}.md", front, body=f"<div><p>{body}</p></div>")
        self.live[title] = path

    def step(self) -> None:
        """One random change: add, edit, move or delete a post."""
        action = self.rnd.choice(("add", "add", "edit", "move", "delete"))
        if action == "add" or not self.live:
            self.add()
            return
        title = self.rnd.choice(sorted(self.live))
        path = self.posts / f"{title}.md"
        if action == "edit":
            path.write_text(path.read_text().replace("Body", "Edited body"))
        elif action == "move":
            old = self.live[title]
            new = (self.rnd.choice(TOPS), self.rnd.choice(SUBS))
            path.write_text(path.read_text().replace(f"[{', '.join(old)}]",
                                                     f"[{', '.join(new)}]"))
            self.live[title] = new
        else:
            path.unlink()
            del self.live[title]

    def expected(self, names: tuple[str, ...]) -> set[str]:
        return {t for t, path in self.live.items() if path[:len(names)] == names}


def _config(tmp_path: Path, archives: bool = True) -> Path:
    return write_config(tmp_path, output={"dir": "feeds", "max_items": PAGE,
                                          "archives": archives})


def _build(config: Path) -> None:
    build(load_config(config), clock=fixed_clock())


def _links(root: etree._Element, rel: str) -> list[str]:
    return [link.get("href") for link in root.iter(f"{ATOM}link") if link.get("rel") == rel]


def _titles(root: etree._Element, kind: str) -> list[str]:
    if kind == "atom":
        return [e.findtext(f"{ATOM}title") for e in root.iter(f"{ATOM}entry")]
    return [i.findtext("title") for i in root.iter("item")]


def walk(out: Path, folder: str, kind: str) -> list[str]:
    """Every entry title a reader gets following prev-archive from the node's current
    feed, checking each archive document's marks and links on the way."""
    current_url = f"{SITE}{folder}{kind}.xml"
    url: str | None = current_url
    seen: list[str] = []
    newer: str | None = None
    while url is not None:
        root = etree.parse(str(out / url.removeprefix(SITE))).getroot()
        seen += _titles(root, kind)
        prev = _links(root, "prev-archive")
        assert len(prev) <= 1
        if url != current_url:
            assert root.find(f".//{FH}archive") is not None, url
            assert _links(root, "current") == [current_url], url
            assert _links(root, "self") == [url]
            assert _links(root, "next-archive") == ([newer] if newer != current_url else [])
        else:
            assert root.find(f".//{FH}archive") is None
        newer, url = url, (prev[0] if prev else None)
    return seen


def _nodes(history: History) -> list[tuple[tuple[str, ...], str]]:
    nodes: list[tuple[tuple[str, ...], str]] = [((), "")]
    for top in TOPS:
        nodes.append(((top,), f"{top.lower()}/"))
        nodes += [((top, sub), f"{top.lower()}/{sub.lower()}/") for sub in SUBS]
    return [(names, folder) for names, folder in nodes if history.expected(names)]


def _archives(files: dict[str, bytes]) -> dict[str, bytes]:
    return {rel: data for rel, data in files.items() if "/archive-" in f"/{rel}"}


def _newest_archives(out: Path, history: History) -> set[str]:
    """Each node's newest page (the one still filling): its feeds' prev-archive."""
    newest = set()
    for _names, folder in _nodes(history):
        for kind in ("atom", "rss"):
            root = etree.parse(str(out / f"{folder}{kind}.xml")).getroot()
            newest.update(url.removeprefix(SITE) for url in _links(root, "prev-archive"))
    return newest


@pytest.mark.parametrize("seed", range(6))
def test_walking_the_archives_gives_every_entry_once(tmp_path: Path, seed: int) -> None:
    history = History(tmp_path, seed)
    for _ in range(25):
        history.add()
    config = _config(tmp_path)
    out = tmp_path / "feeds"
    for round_ in range(8):
        _build(config)
        for names, folder in _nodes(history):
            for kind in ("atom", "rss"):
                seen = walk(out, folder, kind)
                assert sorted(seen) == sorted(history.expected(names)), (round_, folder, kind)
        files = _feeds(out)
        assert files == _clean_build(tmp_path, config), round_  # incremental == clean
        newest = _newest_archives(out, history)

        # no old entry changes: a rebuild, then a new newest post and an edit of it
        _build(config)
        assert _feeds(out) == files
        history.add_newest()
        _build(config)
        path = tmp_path / "posts" / f"P{history.made}.md"
        path.write_text(path.read_text().replace("Body", "Edited"))
        _build(config)
        after = _feeds(out)
        complete = set(_archives(files)) - newest
        assert complete and {rel: after.get(rel) for rel in complete} == \
            {rel: files[rel] for rel in complete}, round_
        for _ in range(history.rnd.randint(1, 4)):
            history.step()


def _changed_pages(before: dict[str, bytes], after: dict[str, bytes]) -> Counter[str]:
    """Archive documents written, added or removed, by node folder and format."""
    old, new = _archives(before), _archives(after)
    return Counter(f"{rel.rpartition('/')[0]} {rel.rsplit('.', 2)[1]}"
                   for rel in old.keys() | new.keys() if old.get(rel) != new.get(rel))


@pytest.mark.parametrize("seed", range(4))
def test_an_old_entry_changes_only_the_pages_beside_it(tmp_path: Path, seed: int) -> None:
    """Deleting, adding (with an old date) or editing an archived entry rewrites, adds
    or removes a few pages around it (its page, renamed when its oldest entry changes;
    merged with or split from the next when its end moves; the neighbours whose links
    name them), never the rest: at most 6 of a node's documents per format."""
    history = History(tmp_path, seed)
    for _ in range(60):
        history.add()
    config = _config(tmp_path)
    out = tmp_path / "feeds"
    _build(config)
    for change in ("delete", "add", "edit"):
        before = _feeds(out)
        if change == "add":
            history.add()
        else:
            title = history.rnd.choice(sorted(history.live))
            path = tmp_path / "posts" / f"{title}.md"
            if change == "delete":
                path.unlink()
                del history.live[title]
            else:
                path.write_text(path.read_text().replace("Body", "Edited"))
        _build(config)
        changed = _changed_pages(before, _feeds(out))
        assert max(changed.values(), default=0) <= 6, (change, changed)
        assert len(_archives(before)) > 4 * 2 * 6  # many pages that could have changed
    for names, folder in _nodes(history):
        assert sorted(walk(out, folder, "atom")) == sorted(history.expected(names))


def test_archives_off_by_default_and_gone_when_turned_off(tmp_path: Path) -> None:
    history = History(tmp_path, 99)
    for _ in range(12):
        history.add()
    config = _config(tmp_path, archives=False)
    _build(config)
    plain = _feeds(tmp_path / "feeds")
    assert not _archives(plain)
    _config(tmp_path, archives=True)
    _build(config)
    assert _archives(_feeds(tmp_path / "feeds"))
    _config(tmp_path, archives=False)
    _build(config)
    assert _feeds(tmp_path / "feeds") == plain


def test_validator_finds_no_errors_in_archives(tmp_path: Path) -> None:
    validator = SHARED / "tools" / "validate_feed"
    probe = subprocess.run([sys.executable, "-c", "import html5lib, rdflib"],
                           capture_output=True)
    if not validator.exists() or probe.returncode:
        pytest.skip("validate_feed or its deps (html5lib, rdflib) absent")
    history = History(tmp_path, 7)
    for _ in range(20):
        history.add()
    _build(_config(tmp_path))
    out = tmp_path / "feeds"
    files = sorted(str(p) for p in out.rglob("*.xml"))
    assert any("archive-" in f for f in files)
    run = subprocess.run([sys.executable, str(validator), "--root", str(out), "--root-url",
                          SITE, *files], capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(files), run.stderr[-2000:]
    errors = [(r["file"], e) for r in results for e in r["errors"]]
    assert errors == [], errors[:5]

"""The core build: posts in, one Atom + one RSS feed per category node out."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest
from helpers import ATOM, atom_ids, fixed_clock, rss_guids, write_config, write_post
from lxml import etree

from aggregator.cli import main
from aggregator.config import load_config
from aggregator.pipeline import build


def _site(tmp_path: Path) -> Path:
    posts = tmp_path / "posts"
    write_post(posts, "a/b/deep.md", """
        title: Deep post
        categories: [Tech, Python, Typing]
        date: Mon, 02 Mar 2026 09:00:00 GMT
        headimg: https://img.example/deep.jpg
    """)
    write_post(posts, "a/mid.md", """
        title: Mid post
        categories: [Tech, Python]
        date: 2026-02-01 10:00:00
        thumbnail: https://img.example/th?id=OHR.Thing_1920x1080.jpg&rf=x
    """)
    write_post(posts, "other.md", """
        title: Other post
        categories: Photos
        date: Sun, 01 Feb 2026 12:00:00 GMT
    """, body='<div><img src="https://picsum.photos/400/300"><p>x</p></div>')
    return write_config(tmp_path)


def test_parent_feeds_hold_every_descendant_entry(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    out = config.output_dir
    deep = atom_ids(out / "tech/python/typing/atom.xml")
    mid = atom_ids(out / "tech/python/atom.xml")
    top = atom_ids(out / "tech/atom.xml")
    root = atom_ids(out / "atom.xml")
    assert len(deep) == 1
    assert set(deep) < set(mid) and len(mid) == 2
    assert set(mid) == set(top)
    assert set(top) | set(atom_ids(out / "photos/atom.xml")) == set(root)
    assert len(root) == 3
    # the same holds in RSS, and the newest comes first
    assert rss_guids(out / "tech/python/rss.xml") == mid
    assert root[0].endswith("a/b/deep.md")


def test_unchanged_input_gives_identical_bytes_ids_and_updated(tmp_path: Path) -> None:
    config_path = _site(tmp_path)
    write_post(tmp_path / "posts", "undated.md", """
        title: No date
        categories: [Tech]
        date: Invalid Date
    """)
    config = load_config(config_path)
    build(config, clock=fixed_clock(datetime(2026, 1, 1, tzinfo=UTC)))
    # every file: feeds (Atom, RSS, JSON Feed), pages, OPML, the pages' assets
    first = {p: p.read_bytes() for p in config.output_dir.rglob("*") if p.is_file()}
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    # a later clock: nothing may depend on "now" once an entry has been seen
    report = build(config, clock=fixed_clock(datetime(2026, 6, 1, tzinfo=UTC)))
    second = {p: p.read_bytes() for p in config.output_dir.rglob("*") if p.is_file()}
    assert first == second
    assert report.written == [] and report.unchanged == len(first)
    assert mtimes == {p: p.stat().st_mtime_ns for p in second}
    parsed = feedparser.parse(config.output_dir / "tech/atom.xml")
    undated = [e for e in parsed.entries if e.title == "No date"][0]
    assert undated.updated.startswith("2026-01-01")
    assert parsed.entries[-1].title == "No date"  # undated sorts below dated


def test_every_rss_enclosure_has_url_length_and_type(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    enclosures = list(etree.parse(str(config.output_dir / "rss.xml")).iter("enclosure"))
    assert len(enclosures) == 2  # picsum has no known type: media:* only
    for enclosure in enclosures:
        assert enclosure.get("url", "").startswith("https://")
        assert enclosure.get("length", "").isdigit()
        assert enclosure.get("type", "").startswith("image/")
    atom = etree.parse(str(config.output_dir / "atom.xml"))
    links = [link for link in atom.iter(f"{ATOM}link") if link.get("rel") == "enclosure"]
    assert {link.get("type") for link in links} == {"image/jpeg"}
    media = atom.getroot().nsmap["media"]
    thumbnails = {t.get("url") for t in atom.iter(f"{{{media}}}thumbnail")}
    assert "https://picsum.photos/400/300" in thumbnails  # first content image, untyped


@pytest.mark.parametrize("name", ["..", "../../escape", "/etc/passwd", ".", "a/../../b",
                                  "\u202eevil", "atom.xml", "x\x00y", "🙂", "C:\\win",
                                  "index.html", "-" * 300])
def test_hostile_category_names_stay_inside_output_dir(tmp_path: Path, name: str) -> None:
    posts = tmp_path / "posts"
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\0")
    write_post(posts, "p.md", f"""
        title: Hostile
        categories: ["{escaped}", "{escaped}"]
        date: Mon, 02 Mar 2026 09:00:00 GMT
    """)
    write_post(posts, "good.md", "title: Good\ncategories: [Fine]\n"
                                 "date: Mon, 02 Mar 2026 09:00:00 GMT")
    config = load_config(write_config(tmp_path))
    build(config, clock=fixed_clock())
    out = config.output_dir.resolve()
    outside = [p for p in tmp_path.rglob("*")
               if p.is_file() and out not in p.resolve().parents
               and p.parent.name not in ("posts", "state") and p.name != "config.yaml"]
    assert outside == []
    assert (out / "atom.xml").is_file() and (out / "fine/atom.xml").is_file()
    assert len(atom_ids(out / "atom.xml")) == 2
    index = (out / "index.html").read_bytes()
    assert index.startswith(b"<!DOCTYPE html>")  # never clobbered by a category


def test_broken_post_is_reported_and_everything_else_published(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    posts = tmp_path / "posts"
    write_post(posts, "good.md", "title: Good\ncategories: [A]\ndate: 2026-01-01 00:00:00")
    (posts / "broken.md").write_text("\n---\ntitle: [unclosed\n  - : :\n---\nbody\n")
    (posts / "unclosed.md").write_text("---\ntitle: never closed\n")
    (posts / "binary.md").write_bytes(b"\n---\ntitle: \xff\xfe bad\n---\n<p>x</p>")
    config_path = write_config(tmp_path)
    code = main(["build", "-c", str(config_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.md:3: error:" in err
    assert "unclosed.md:1: error:" in err
    assert "binary.md:3: warning: not valid UTF-8" in err
    titles = [e.title for e in feedparser.parse(tmp_path / "feeds/atom.xml").entries]
    assert "Good" in titles and len(titles) == 2


def test_config_errors_exit_2_and_write_nothing(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("site:\n  url: not-a-url\n")
    assert main(["build", "-c", str(bad)]) == 2
    assert "config.yaml:2:" in capsys.readouterr().err
    missing = write_config(tmp_path, content_dir="nowhere")
    assert main(["build", "-c", str(missing)]) == 2
    assert not (tmp_path / "feeds").exists()


def test_publish_failure_exits_3_and_keeps_previous_feeds(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions; the read-only case needs a user")
    config_path = _site(tmp_path)
    assert main(["build", "-c", str(config_path)]) == 0
    before = (tmp_path / "feeds/atom.xml").read_bytes()
    write_post(tmp_path / "posts", "new.md", "title: New\ncategories: [Tech]\n"
                                             "date: 2026-05-01 00:00:00")
    (tmp_path / "feeds").chmod(0o555)
    try:
        assert main(["build", "-c", str(config_path)]) == 3
    finally:
        (tmp_path / "feeds").chmod(0o755)
    assert (tmp_path / "feeds/atom.xml").read_bytes() == before


def test_vanished_categories_are_removed_and_nothing_else(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    keep = config.output_dir / "README.txt"
    keep.write_text("not ours")
    (tmp_path / "posts/other.md").unlink()
    report = build(config, clock=fixed_clock())
    assert not (config.output_dir / "photos").exists()
    assert sorted(report.removed) == ["photos/atom.xml", "photos/feed.json",
                                      "photos/index.html", "photos/rss.xml"]
    assert keep.read_text() == "not ours"


def test_duplicates_by_id_and_link_are_merged(tmp_path: Path) -> None:
    posts = tmp_path / "posts"
    write_post(posts, "one.md", "title: One\nid: same\ncategories: [A]\ndate: 2026-01-01 00:00:00")
    write_post(posts, "two.md", "title: Two\nid: same\ncategories: [A]\ndate: 2026-01-02 00:00:00")
    write_post(posts, "three.md", "title: Three\nlink: https://x.example/p\ncategories: [A]\n"
                                  "date: 2026-01-01 00:00:00")
    write_post(posts, "four.md", "title: Four\nlink: https://x.example/p\ncategories: [B]\n"
                                 "date: 2026-01-03 00:00:00")
    config = load_config(write_config(tmp_path))
    report = build(config, clock=fixed_clock())
    titles = [e.title for e in feedparser.parse(config.output_dir / "atom.xml").entries]
    assert titles == ["Four", "Two"]
    assert sum("duplicate of" in p.message for p in report.problems.warnings) == 2


def test_posts_found_everywhere_editor_artefacts_and_symlinks_skipped(tmp_path: Path) -> None:
    posts = tmp_path / "posts"
    write_post(posts, ".md", "title: '..'\ncategories: [A]\ndate: 2026-01-01 00:00:00")
    write_post(posts, "_under.md", "title: '01'\ncategories: [A]\ndate: 2026-01-01 00:00:00")
    write_post(posts, "x/.hidden.md", "title: 2021\ndate: 2026-01-01 00:00:00")
    write_post(posts, "draft.md~", "title: backup")
    write_post(posts, ".#lock.md", "title: emacs lock")
    outside = write_post(tmp_path / "elsewhere", "secret.md", "title: Secret")
    (posts / "link.md").symlink_to(outside)
    config = load_config(write_config(tmp_path))
    report = build(config, clock=fixed_clock())
    parsed = feedparser.parse(config.output_dir / "atom.xml")
    assert sorted(e.title for e in parsed.entries) == ["..", "01", "2021"]
    assert any("symlink not followed" in p.message for p in report.problems.warnings)
    # the folder is the category only when front matter has none
    assert atom_ids(config.output_dir / "x/atom.xml") == [
        e.id for e in parsed.entries if e.title == "2021"]


def test_symlink_out_of_content_dir_refused_even_when_following(tmp_path: Path) -> None:
    posts = tmp_path / "posts"
    write_post(posts, "ok.md", "title: Ok\ndate: 2026-01-01 00:00:00")
    outside = write_post(tmp_path / "elsewhere", "secret.md", "title: Secret")
    (posts / "inside.md").symlink_to(posts / "ok.md")
    (posts / "out.md").symlink_to(outside)
    config = load_config(write_config(tmp_path, content={"follow_symlinks": True}))
    report = build(config, clock=fixed_clock())
    titles = [e.title for e in feedparser.parse(config.output_dir / "atom.xml").entries]
    assert "Secret" not in titles
    assert any("outside the content dirs" in p.message for p in report.problems.errors)

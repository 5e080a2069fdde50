"""The build cache never serves a stale feed.

After every kind of change, an incremental build (warm cache) must publish exactly
the bytes a clean build (no cache, no state) publishes, and touch only what it must.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import pytest
import yaml
from helpers import SHARED, fixed_clock, write_config, write_post

import aggregator.fingerprints
from aggregator.config import Config, load_config
from aggregator.pipeline import BuildReport, build


def _site(tmp_path: Path) -> Path:
    posts = tmp_path / "posts"
    for i in range(12):
        write_post(posts, f"{'a' if i % 2 else 'b'}/p{i}.md", f"""
            title: Post {i}
            categories: [{'Alpha' if i % 2 else 'Beta'}, Sub{i % 3}]
            date: 2026-01-{i + 1:02d} 08:00:00
            headimg: https://img.example/{i}.jpg
        """, body=f'<div><p class="junk">junk {i}</p><p>Body {i} <a href="/x">x</a></p></div>')
    return write_config(tmp_path)


def _feeds(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _clean_build(tmp_path: Path, config_path: Path) -> dict[str, bytes]:
    """The same inputs built from nothing: the reference an incremental build must match."""
    clean = tmp_path / "clean"
    shutil.rmtree(clean, ignore_errors=True)
    clean.mkdir()
    shutil.copytree(tmp_path / "posts", clean / "posts", symlinks=True)
    shutil.copy(config_path, clean / "config.yaml")
    build(load_config(clean / "config.yaml"), clock=fixed_clock())
    return _feeds(clean / "feeds")


def _edit_config(path: Path, section: str, key: str, value: object) -> None:
    data = yaml.safe_load(path.read_text())
    data.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


CHANGES: dict[str, tuple[Callable[[Path, Path], None], set[str] | None]] = {
    # name: (change, the feeds that must be rewritten; None = not checked exactly)
    "edit": (lambda t, c: _rewrite(t / "posts/a/p1.md", "Body 1", "Edited 1"),
             {"atom.xml", "rss.xml", "alpha/atom.xml", "alpha/rss.xml",
              "alpha/sub1/atom.xml", "alpha/sub1/rss.xml"}),
    "rename": (lambda t, c: (t / "posts/a/p1.md").rename(t / "posts/a/renamed.md"),
               {"atom.xml", "rss.xml", "alpha/atom.xml", "alpha/rss.xml",
                "alpha/sub1/atom.xml", "alpha/sub1/rss.xml"}),
    "delete": (lambda t, c: (t / "posts/b/p0.md").unlink(),
               {"atom.xml", "rss.xml", "beta/atom.xml", "beta/rss.xml",
                "beta/sub0/atom.xml", "beta/sub0/rss.xml"}),
    "recategorise": (lambda t, c: _rewrite(t / "posts/a/p1.md", "[Alpha, Sub1]", "[Beta, Sub1]"),
                     {"atom.xml", "rss.xml", "alpha/atom.xml", "alpha/rss.xml",
                      "alpha/sub1/atom.xml", "alpha/sub1/rss.xml", "beta/atom.xml",
                      "beta/rss.xml", "beta/sub1/atom.xml", "beta/sub1/rss.xml"}),
    "several-categories": (lambda t, c: _rewrite(t / "posts/a/p1.md", "[Alpha, Sub1]",
                                                 "[[Alpha, Sub1], [Beta, Sub0]]"),
                           {"atom.xml", "rss.xml", "alpha/atom.xml", "alpha/rss.xml",
                            "alpha/sub1/atom.xml", "alpha/sub1/rss.xml", "beta/atom.xml",
                            "beta/rss.xml", "beta/sub0/atom.xml", "beta/sub0/rss.xml"}),
    "touch-only": (lambda t, c: (t / "posts/a/p1.md").write_bytes(
        (t / "posts/a/p1.md").read_bytes()), set()),
    "sanitiser-setting": (lambda t, c: _edit_config(c, "sanitize", "drop_selectors",
                                                    ["p.junk"]), None),
    "site-url": (lambda t, c: _edit_config(c, "site", "url", "https://moved.example/f/"), None),
    "max-items": (lambda t, c: _edit_config(c, "output", "max_items", 2), None),
    "timezone": (lambda t, c: _edit_config(c, "site", "timezone", "Asia/Tokyo"), None),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_incremental_build_equals_clean_build(tmp_path: Path, change: str) -> None:
    config_path = _site(tmp_path)
    config = load_config(config_path)
    build(config, clock=fixed_clock())
    before = _feeds(config.output_dir)
    apply, must_write = CHANGES[change]
    apply(tmp_path, config_path)
    config = load_config(config_path)
    report = build(config, clock=fixed_clock())
    after = _feeds(config.output_dir)
    assert after == _clean_build(tmp_path, config_path)
    feeds_written = {rel for rel in report.written if rel.endswith(".xml")}
    if must_write is not None:
        assert feeds_written == must_write
    else:
        assert after != before


def test_a_new_program_version_rerenders_everything(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(_site(tmp_path))
    first = build(config, clock=fixed_clock())
    assert first.rendered == 12
    assert build(config, clock=fixed_clock()).rendered == 0
    monkeypatch.setattr(aggregator.fingerprints, "__version__", "999.0")
    again: BuildReport = build(config, clock=fixed_clock())
    assert again.rendered == 12


def test_a_new_sanitiser_library_rerenders_everything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nh3 upgraded (a newer dist-info first on sys.path, as an upgrade leaves it): the
    versions are read from dist-info folder names, so this must re-render."""
    config = load_config(_site(tmp_path))
    assert build(config, clock=fixed_clock()).rendered == 12
    upgraded = tmp_path / "site-packages"
    (upgraded / "nh3-99.1.dist-info").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(upgraded))
    for cached in (aggregator.fingerprints.version,
                   aggregator.fingerprints._dist_info_versions):
        cached.cache_clear()
    try:
        assert aggregator.fingerprints.version("nh3") == "99.1"
        assert build(config, clock=fixed_clock()).rendered == 12
    finally:
        monkeypatch.undo()
        aggregator.fingerprints.version.cache_clear()
        aggregator.fingerprints._dist_info_versions.cache_clear()


@pytest.mark.parametrize("package", ["PyYAML", "markdown-it-py", "nh3", "selectolax",
                                     "feedgen", "lxml"])
def test_versions_are_the_ones_importlib_metadata_reads(package: str) -> None:
    from importlib import metadata

    assert aggregator.fingerprints.version(package) == metadata.version(package)


def test_feed_states_kept_in_memory_see_another_process_commit(tmp_path: Path) -> None:
    """A session keeps the published feeds' states in memory; a CLI build (another
    connection) that rewrites them must not leave the session reading its old copy."""
    import sqlite3

    from aggregator.state.cache import BuildCache

    path = tmp_path / "state.cache"
    session = BuildCache(path)
    session.update_feed_states([("a/atom.xml", "p1", 10, 1), ("b/atom.xml", "p1", 20, 2)], [])
    assert session.feed_states() == {"a/atom.xml": ("p1", 10, 1), "b/atom.xml": ("p1", 20, 2)}
    session.update_feed_states([("a/atom.xml", "p2", 11, 3)], ["b/atom.xml"])
    assert session.feed_states() == {"a/atom.xml": ("p2", 11, 3)}  # its own writes
    other = sqlite3.connect(path)
    with other:
        other.execute("UPDATE feed_state SET fingerprint='cli', size=12 WHERE rel='a/atom.xml'")
    other.close()
    assert session.feed_states() == {"a/atom.xml": ("cli", 12, 3)}
    session.invalidate_if_changed("render", "another", "feed_state")
    assert session.feed_states() == {}
    session.close()


def test_a_lost_or_corrupt_cache_costs_only_time(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    reference = _feeds(config.output_dir)
    cache = config.state_path.with_name(config.state_path.name + ".cache")
    assert cache.exists()
    cache.write_bytes(b"this is not sqlite" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{cache}{suffix}").unlink(missing_ok=True)
    report = build(config, clock=fixed_clock())
    assert _feeds(config.output_dir) == reference and report.written == []


def test_a_cache_made_with_4k_pages_still_serves_an_edit(tmp_path: Path) -> None:
    # New caches use 16 KiB pages; one made before (4 KiB) keeps its size, and an
    # edit patched from it gives the feeds a clean build gives.
    config_path = _site(tmp_path)
    config = load_config(config_path)
    cache = config.state_path.with_name(config.state_path.name + ".cache")
    build(config, clock=fixed_clock())
    assert _page_size(cache) == 16384
    old = sqlite3.connect(cache)  # as a cache made before
    for statement in ("PRAGMA journal_mode=DELETE", "PRAGMA page_size=4096", "VACUUM",
                      "PRAGMA journal_mode=WAL"):
        old.execute(statement)
    old.close()
    assert _page_size(cache) == 4096
    _rewrite(tmp_path / "posts/a/p1.md", "Body 1", "Edited 1")
    report = build(config, clock=fixed_clock())
    assert report.patched
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)
    assert _page_size(cache) == 4096


def _page_size(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


def test_a_feed_edited_by_hand_is_rewritten(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    target = config.output_dir / "alpha/atom.xml"
    good = target.read_bytes()
    target.write_bytes(b"<broken")
    report = build(config, clock=fixed_clock())
    assert target.read_bytes() == good and report.written == ["alpha/atom.xml"]


def test_warnings_are_reported_again_from_cache(tmp_path: Path) -> None:
    config_path = _site(tmp_path)
    write_post(tmp_path / "posts", "undated.md", "title: U\ndate: Invalid Date")
    config = load_config(config_path)
    first = build(config, clock=fixed_clock())
    second = build(config, clock=fixed_clock())
    assert [str(p) for p in first.problems.items] == [str(p) for p in second.problems.items]
    assert any("Invalid Date" in p.message for p in second.problems.warnings)


SESSION_CHANGES: dict[str, Callable[[Path], set[Path]]] = {
    # name: change the content dir, return the paths a watcher would report
    "edit": lambda t: (_rewrite(t / "posts/a/p1.md", "Body 1", "Edited 1"),
                       {t / "posts/a/p1.md"})[1],
    "create": lambda t: (write_post(t / "posts", "a/new.md", "title: New\ncategories: [Alpha]\n"
                                    "date: 2026-02-01 00:00:00"), {t / "posts/a/new.md"})[1],
    "delete": lambda t: ((t / "posts/b/p0.md").unlink(), {t / "posts/b/p0.md"})[1],
    "rename": lambda t: ((t / "posts/a/p1.md").rename(t / "posts/a/q.md"),
                         {t / "posts/a/p1.md", t / "posts/a/q.md"})[1],
    "folder-rename": lambda t: ((t / "posts/a").rename(t / "posts/z"),
                                {t / "posts/a", t / "posts/z"})[1],
    "editor-artefact": lambda t: ((t / "posts/a/.#p1.md").write_text("lock"),
                                  {t / "posts/a/.#p1.md"})[1],
    "recategorise": lambda t: (_rewrite(t / "posts/a/p1.md", "[Alpha, Sub1]", "[Beta, New]"),
                               {t / "posts/a/p1.md"})[1],
    "new-sibling-shifts-slugs": lambda t: (write_post(t / "posts", "a/x.md",
                                                      "title: X\ncategories: [Alpha, 'SUB1']\n"
                                                      "date: 2026-02-01 00:00:00"),
                                           {t / "posts/a/x.md"})[1],
    "feed-edited-by-hand": lambda t: ((t / "feeds/beta/atom.xml").write_text("<x/>"), set())[1],
    "duplicate-id": lambda t: (_rewrite(t / "posts/a/p3.md", "title: Post 3",
                                        f"title: Post 3\nid: '{_published_id(t, 'Post 2')}'"),
                               {t / "posts/a/p3.md"})[1],
    "duplicate-link": lambda t: ((t / "posts/a/p3.md").write_text(
        (t / "posts/a/p3.md").read_text().replace("title: Post 3", "title: Post 3\n"
                                                  "link: https://x.example/same")),
        (t / "posts/a/p5.md").write_text((t / "posts/a/p5.md").read_text().replace(
            "title: Post 5", "title: Post 5\nlink: https://x.example/same")),
        {t / "posts/a/p3.md", t / "posts/a/p5.md"})[2],
    "undated-new": lambda t: (write_post(t / "posts", "a/undated.md",
                                         "title: U\ncategories: [Alpha, Sub1]"),
                              {t / "posts/a/undated.md"})[1],
    "broken": lambda t: ((t / "posts/a/p1.md").write_text("---\ntitle: never closed\n"),
                         {t / "posts/a/p1.md"})[1],
    "move-to-existing-category": lambda t: (_rewrite(t / "posts/a/p1.md", "[Alpha, Sub1]",
                                                     "[Beta, Sub0]"), {t / "posts/a/p1.md"})[1],
    "several-categories": lambda t: (_rewrite(t / "posts/a/p1.md", "[Alpha, Sub1]",
                                              "[[Alpha, Sub1], [Beta, Sub0], [Alpha, Sub2]]"),
                                     {t / "posts/a/p1.md"})[1],
    "back-to-one-category": lambda t: (
        _rewrite(t / "posts/a/p1.md", "[Alpha, Sub1]", "[[Alpha, Sub1], [Beta, Sub1]]"),
        _rewrite(t / "posts/a/p3.md", "[Alpha, Sub0]", "[Alpha, [Beta, Sub0]]"),
        {t / "posts/a/p1.md", t / "posts/a/p3.md"})[2],
    "empty-a-category": lambda t: ((t / "posts/a/p1.md").unlink(),
                                   (t / "posts/a/p7.md").unlink(),
                                   {t / "posts/a/p1.md", t / "posts/a/p7.md"})[2],
}


@pytest.mark.parametrize("change", sorted(SESSION_CHANGES))
def test_service_session_with_changed_paths_equals_clean_build(tmp_path: Path,
                                                               change: str) -> None:
    from aggregator.pipeline import Builder

    config_path = _site(tmp_path)
    config = load_config(config_path)
    session = Builder(persistent=True)
    session.build(config, clock=fixed_clock())
    changed = SESSION_CHANGES[change](tmp_path)
    report = session.build(config, clock=fixed_clock(), changed={str(p) for p in changed})
    if change == "feed-edited-by-hand":
        # between full walks a session trusts its own output; the next walk repairs it
        report = session.build(config, clock=fixed_clock(), changed=None)
        assert report.written == ["beta/atom.xml"]
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)
    if change == "editor-artefact":
        assert report.written == []
    if change in ("edit", "create", "delete", "rename", "move-to-existing-category",
                  "undated-new", "broken", "several-categories"):
        assert report.patched  # patched into the last build, not rebuilt
    # and a later build that is told nothing changed publishes nothing new
    assert session.build(config, clock=fixed_clock(), changed=set()).written == []
    session.close()


def test_parallel_cold_build_equals_sequential_build(tmp_path: Path) -> None:
    from aggregator.forking import can_fork
    from aggregator.render import PARALLEL_THRESHOLD

    if not can_fork():
        pytest.skip("another thread is alive in this test process: workers would not fork")
    for site in ("one", "two"):
        for i in range(PARALLEL_THRESHOLD + 20):
            dated = f"date: 2026-01-{1 + i % 28:02d} 08:00:00" if i % 7 else "date: Invalid Date"
            write_post(tmp_path / site / "posts", f"c{i % 9}/p{i}.md",
                       f"title: Post {i}\ncategories: [C{i % 9}, D{i % 4}]\n{dated}\n"
                       f"headimg: https://img.example/{i}.jpg")
    one = load_config(write_config(tmp_path / "one"))
    two = load_config(write_config(tmp_path / "two"))
    first = build(one, clock=fixed_clock(), workers=1)
    second = build(two, clock=fixed_clock(), workers=2)
    assert _feeds(one.output_dir) == _feeds(two.output_dir)
    assert [str(p) for p in first.problems.items] == [str(p) for p in second.problems.items]
    assert first.rendered == second.rendered == PARALLEL_THRESHOLD + 20
    # a render setting changes: cached posts (no html in memory) are made whole from the
    # cache by the worker processes that render them
    for site in ("one", "two"):
        _edit_config(tmp_path / site / "config.yaml", "site", "title", "Renamed")
    one = load_config(tmp_path / "one" / "config.yaml")
    two = load_config(tmp_path / "two" / "config.yaml")
    third = build(one, clock=fixed_clock(), workers=1)
    fourth = build(two, clock=fixed_clock(), workers=2)
    assert third.rendered == fourth.rendered == PARALLEL_THRESHOLD + 20
    assert _feeds(one.output_dir) == _feeds(two.output_dir)
    assert b"Renamed" in (one.output_dir / "atom.xml").read_bytes()


def test_a_parallel_read_shares_the_values_posts_repeat(tmp_path: Path) -> None:
    """Entries read by the workers come back unpickled, each with its own copy of its
    category path, author, image type and source: equal posts must share one object
    (~600 bytes a post), and the entries must still equal a sequential read's."""
    from aggregator.forking import can_fork
    from aggregator.model import changed
    from aggregator.problems import ProblemLog
    from aggregator.render import PARALLEL_THRESHOLD
    from aggregator.sources.read import read_posts
    from aggregator.state.cache import BuildCache
    from aggregator.state.store import StateStore

    if not can_fork():
        pytest.skip("another thread is alive in this test process: workers would not fork")
    count = PARALLEL_THRESHOLD + 20
    for i in range(count):
        write_post(tmp_path / "posts", f"c{i % 3}/p{i}.md",
                   f"title: Post {i}\ncategories: [C{i % 3}, D]\nauthor: Ann {i % 2}\n"
                   f"date: 2026-01-{1 + i % 28:02d}\nheadimg: https://img.example/{i}.png")
    config = load_config(write_config(tmp_path))
    entries = {}
    for workers in (1, 2):
        state = StateStore(tmp_path / f"state{workers}.sqlite", fixed_clock())
        cache = BuildCache(tmp_path / f"cache{workers}.sqlite")
        entries[workers] = read_posts(config, state, BuildReport(problems=ProblemLog()),
                                      cache, workers=workers)
        cache.close()
        state.close()
    # (the workers' entries come without their html: it is read again to render)
    assert [changed(e, html="") for e in entries[2]] == \
        [changed(e, html="") for e in entries[1]]
    assert [e.digest for e in entries[2]] == [e.digest for e in entries[1]]
    assert len(entries[2]) == count
    assert len({id(e.category) for e in entries[2]}) == 3
    assert len({id(e.author) for e in entries[2]}) == 2
    assert len({id(e.image.mime_type) for e in entries[2] if e.image}) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_renders_the_cache_cannot_keep_are_held_until_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Renders go into the build cache as they are made and are read back a subtree
    at a time; when the cache cannot store them (disk full), the build holds them
    itself and publishes the same feeds."""
    import sqlite3

    from aggregator.forking import can_fork
    from aggregator.render import PARALLEL_THRESHOLD
    from aggregator.state.cache import BuildCache

    if workers > 1 and not can_fork():
        pytest.skip("another thread is alive in this test process: workers would not fork")
    for i in range(PARALLEL_THRESHOLD + 20):
        write_post(tmp_path / "posts", f"c{i % 5}/p{i}.md",
                   f"title: Post {i}\ncategories: [C{i % 5}, D{i % 3}]\n"
                   f"date: 2026-01-{1 + i % 28:02d} {i % 24:02d}:00:00")
    config_path = write_config(tmp_path, output={"dir": "feeds", "max_items": 30})

    def full_disk(self: BuildCache, rows: object) -> None:
        self._write_failed(sqlite3.OperationalError("database or disk is full"))
    monkeypatch.setattr(BuildCache, "store_rendered", full_disk)
    report = build(load_config(config_path), clock=fixed_clock(), workers=workers)
    assert report.rendered > 0 and report.written
    monkeypatch.undo()
    assert _feeds(tmp_path / "feeds") == _clean_build(tmp_path, config_path)


def test_touched_posts_are_hashed_not_parsed_again_by_the_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every post file touched (a checkout, a copy): a parallel build must find their
    bytes unchanged and parse none, render none, write nothing; one really edited post
    among them is parsed."""
    from aggregator.forking import can_fork
    from aggregator.render import PARALLEL_THRESHOLD
    from aggregator.sources.content import PostReader

    if not can_fork():
        pytest.skip("another thread is alive in this test process: workers would not fork")
    for i in range(PARALLEL_THRESHOLD + 20):
        write_post(tmp_path / "posts", f"c{i % 9}/p{i}.md",
                   f"title: Post {i}\ncategories: [C{i % 9}]\ndate: 2026-01-{1 + i % 28:02d}")
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    build(config, clock=fixed_clock(), workers=2)
    before = _feeds(config.output_dir)
    for post in (tmp_path / "posts").rglob("*.md"):
        os.utime(post, ns=(10**18, 10**18))
    real_parse = PostReader.parse

    def no_parse(self: PostReader, post: object, data: bytes) -> None:
        raise AssertionError("a post with unchanged bytes was parsed again")
    monkeypatch.setattr(PostReader, "parse", no_parse)  # the forked workers inherit it
    report = build(config, clock=fixed_clock(), workers=2)
    assert report.rendered == 0 and report.written == [] and not report.up_to_date
    assert _feeds(config.output_dir) == before
    monkeypatch.setattr(PostReader, "parse", real_parse)
    for post in (tmp_path / "posts").rglob("*.md"):
        os.utime(post, ns=(2 * 10**18, 2 * 10**18))
    _rewrite(tmp_path / "posts/c1/p10.md", "Body", "Edited")
    report = build(config, clock=fixed_clock(), workers=2)
    assert report.rendered == 1 and b"Edited" in (config.output_dir / "atom.xml").read_bytes()
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)


def test_a_post_changed_behind_the_caches_back_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies are read again from the post files to render: a file whose bytes no
    longer match the cache (same size and mtime, so the walk could not tell) makes
    the build read every post again, not publish a body with another post's fields."""
    config_path = _site(tmp_path)
    config = load_config(config_path)
    build(config, clock=fixed_clock())
    post = tmp_path / "posts/a/p1.md"
    st = post.stat()
    post.write_bytes(post.read_bytes().replace(b"Body 1", b"Bodz 1")
                     .replace(b"Post 1", b"Pozt 1"))  # same size
    os.utime(post, ns=(st.st_atime_ns, st.st_mtime_ns))
    # a new sanitiser: every entry is rendered again, from the cached (light) entries
    monkeypatch.setattr(aggregator.fingerprints, "SANITIZER_VERSION", "999")
    report = build(config, clock=fixed_clock())
    assert report.rendered == 12
    assert b"Bodz 1" in (config.output_dir / "alpha/atom.xml").read_bytes()
    assert b"Pozt 1" in (config.output_dir / "alpha/atom.xml").read_bytes()
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)


# -- a build whose inputs did not change stops after the walk -------------------------

UPSTREAM_URL = "http://127.0.0.1:9/feed.xml"  # never fetched: `build` uses the state


def _undated_site(tmp_path: Path) -> Path:
    config_path = _site(tmp_path)
    write_post(tmp_path / "posts", "undated.md", "title: U\ndate: Invalid Date")
    data = yaml.safe_load(config_path.read_text())
    data["upstream"] = [{"url": UPSTREAM_URL, "category": "Up"}]
    config_path.write_text(yaml.safe_dump(data))
    return config_path


def test_unchanged_inputs_reuse_the_last_build_and_report_the_same(tmp_path: Path) -> None:
    config = load_config(_undated_site(tmp_path))
    first = build(config, clock=fixed_clock())
    reference = _feeds(config.output_dir)
    # a later clock: the undated post's first-seen time comes from the state
    again = build(config, clock=fixed_clock(datetime(2030, 1, 1, tzinfo=UTC)))
    assert not first.up_to_date and again.up_to_date
    assert [str(p) for p in again.problems.items] == [str(p) for p in first.problems.items]
    assert again.problems.warnings  # the undated post's warning, replayed
    assert (again.entries, again.feeds, again.posts_read) == \
        (first.entries, first.feeds, first.posts_read)
    assert again.written == [] and _feeds(config.output_dir) == reference


def _store_upstream_entry(config_path: Path) -> None:
    from aggregator.config import UpstreamSource
    from aggregator.model import Entry
    from aggregator.state.store import StateStore
    from aggregator.state.upstream import UpstreamState

    config = load_config(config_path)
    state = StateStore(config.state_path)
    when = datetime(2026, 2, 1, tzinfo=UTC)
    UpstreamState(state).store_entries(
        UpstreamSource(url=UPSTREAM_URL, category=("Up",)),
        [Entry(id="urn:up:1", title="From upstream", link="https://up.example/1",
               author=None, published=when, updated=when, category=(), tags=(),
               html="<p>u</p>", summary="", image=None)],
        None, None, when)
    state.close()


def test_a_state_from_before_migration_5_still_bumps_its_generation(tmp_path: Path) -> None:
    """Migration 5 replaces upstream_entry's row triggers with one bump per stored
    source: a state made by migration 4 loses those three triggers (the others stay),
    and storing, re-storing or trimming a source's entries still changes the
    generation a build's up-to-date check reads."""
    import sqlite3

    from aggregator.state.store import MIGRATIONS, StateStore, _statements

    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    for number, step in enumerate(MIGRATIONS[:4], start=1):
        for statement in _statements(step):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {number}")
    db.close()
    state = StateStore(path)
    triggers = {row[0] for row in state.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert not {t for t in triggers if t.startswith("upstream_entry")}
    assert {"first_seen_insert", "image_probe_update", "written_post_delete"} <= triggers
    state.close()
    config_path = write_config(tmp_path, state={"path": str(path)})
    generations = []
    for _ in range(2):  # stored, then stored again as a re-poll with a 200 would
        _store_upstream_entry(config_path)
        state = StateStore(path)
        generations.append(state.generation())
        state.close()
    assert None not in generations and len(set(generations)) == 2


def _store_probe(config_path: Path) -> None:
    from aggregator.state.probes import Probe, ProbeCache
    from aggregator.state.store import StateStore

    state = StateStore(load_config(config_path).state_path)
    ProbeCache(state).put(Probe("https://img.example/x", 200, "image/png", 10,
                                datetime(2026, 1, 1, tzinfo=UTC)))
    state.close()


NOT_UP_TO_DATE: dict[str, Callable[[Path, Path], None]] = {
    "post touched": lambda t, c: os.utime(t / "posts/a/p1.md", ns=(1, 1)),
    "post added": lambda t, c: write_post(t / "posts", "c/new.md", "title: New"),
    "config changed": lambda t, c: _edit_config(c, "output", "max_items", 3),
    "feed edited": lambda t, c: (t / "feeds/alpha/atom.xml").write_bytes(b"<broken"),
    "feed deleted": lambda t, c: (t / "feeds/beta/rss.xml").unlink(),
    "index deleted": lambda t, c: (t / "feeds/index.html").unlink(),
    "state deleted": lambda t, c: [Path(f"{t}/state/test.sqlite{s}").unlink(missing_ok=True)
                                   for s in ("", "-wal", "-shm")],
    "upstream entry stored": lambda t, c: _store_upstream_entry(c),
    "image probe stored": lambda t, c: _store_probe(c),
}


@pytest.mark.parametrize("change", sorted(NOT_UP_TO_DATE))
def test_any_change_of_input_or_output_means_a_real_build(tmp_path: Path,
                                                          change: str) -> None:
    config_path = _undated_site(tmp_path)
    build(load_config(config_path), clock=fixed_clock())
    NOT_UP_TO_DATE[change](tmp_path, config_path)
    config = load_config(config_path)
    before = _feeds(config.output_dir)
    report = build(config, clock=fixed_clock())
    assert not report.up_to_date
    after = _feeds(config.output_dir)
    assert after == _reference_with_state(tmp_path, config_path)
    if change == "upstream entry stored":
        assert b"From upstream" in after["atom.xml"] and after != before
    assert build(config, clock=fixed_clock()).up_to_date  # and settled again


def test_damaged_output_with_unchanged_inputs_is_repaired_from_the_saved_index(
        tmp_path: Path) -> None:
    config_path = _site(tmp_path)
    config = load_config(config_path)
    first = build(config, clock=fixed_clock())
    (config.output_dir / "alpha/atom.xml").write_bytes(b"<broken")
    (config.output_dir / "beta/sub0/rss.xml").unlink()
    report = build(config, clock=fixed_clock())
    # nothing read again or rendered: only the two damaged files are written
    assert report.patched and not report.up_to_date and report.rendered == 0
    assert sorted(report.written) == ["alpha/atom.xml", "beta/sub0/rss.xml"]
    assert (report.entries, report.feeds, [str(p) for p in report.problems.items]) == \
        (first.entries, first.feeds, [str(p) for p in first.problems.items])
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)
    shutil.rmtree(config.output_dir)  # all of it gone: all of it written again
    report = build(config, clock=fixed_clock())
    assert report.patched and len(report.written) == first.feeds + 2  # + index, OPML
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)
    assert build(config, clock=fixed_clock()).up_to_date


def _reference_with_state(tmp_path: Path, config_path: Path) -> dict[str, bytes]:
    """A build of the same inputs with no build cache (the state, which holds upstream
    entries and probes, is copied along)."""
    clean = tmp_path / "clean"
    shutil.rmtree(clean, ignore_errors=True)
    shutil.copytree(tmp_path / "posts", clean / "posts", symlinks=True)
    shutil.copy(config_path, clean / "config.yaml")
    config = load_config(clean / "config.yaml")
    state = load_config(config_path).state_path
    config.state_path.parent.mkdir(parents=True)
    if state.exists():
        shutil.copy(state, config.state_path)
    build(config, clock=fixed_clock())
    return _feeds(clean / "feeds")


def test_a_build_with_nothing_to_render_or_write_imports_no_writer(tmp_path: Path) -> None:
    """Every post touched, nothing changed: the build reads, plans and keeps every
    feed; the renderer, feedgen and lxml (~90 ms of imports) are not loaded, in a
    fresh interpreter, as a CLI build runs."""
    import subprocess
    import sys

    config_path = _site(tmp_path)
    script = ("import sys\n"
              "from aggregator.config import load_config\n"
              "from aggregator.pipeline import build\n"
              f"report = build(load_config({str(config_path)!r}))\n"
              "print(len(report.written), report.rendered, sorted(m for m in ('feedgen',"
              " 'lxml.etree', 'aggregator.render', 'aggregator.writers.feeds')"
              " if m in sys.modules))\n")

    def run() -> str:
        return subprocess.run([sys.executable, "-c", script], check=True, text=True,
                              capture_output=True).stdout.strip()
    assert run() == ("20 12 ['aggregator.render', 'aggregator.writers.feeds', 'feedgen', "
                     "'lxml.etree']")  # the first build renders and writes
    for post in (tmp_path / "posts").rglob("*.md"):
        os.utime(post, ns=(post.stat().st_atime_ns, post.stat().st_mtime_ns + 10**9))
    assert run() == "0 0 []"


def test_a_killed_builds_temp_files_are_swept_even_when_up_to_date(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    leftover = config.output_dir / "alpha" / ".atom.xml.123.aggregator-tmp"
    leftover.write_bytes(b"<half")
    assert build(config, clock=fixed_clock()).up_to_date
    assert not leftover.exists()


@pytest.mark.parametrize("seed", [7, 2])  # (2 adds a post, then deletes it)
@pytest.mark.parametrize(("one_off", "max_items"), [(False, 0), (False, 2), (True, 0), (True, 2)])
def test_a_long_session_of_random_edits_always_equals_a_clean_build(
        tmp_path: Path, one_off: bool, max_items: int, seed: int) -> None:
    """Patched and full builds, in any order, publish what a clean build does and
    report the same problems: in a service session (told the changed paths), and in
    one-off builds (which patch the last one-off build's saved index, loading the parts
    of it they touch: with max_items, the root's feed takes the other top-level
    categories' entries from their saved merges)."""
    import random

    from aggregator.pipeline import Builder

    config_path = _site(tmp_path)
    if max_items:
        _edit_config(config_path, "output", "max_items", max_items)
    config = load_config(config_path)
    posts = tmp_path / "posts"
    session = Builder(persistent=not one_off)
    session.build(config, clock=fixed_clock())
    rng = random.Random(seed)
    several = random.Random(seed + 1)  # several hierarchies (Hexo's rule), or one again
    patched = 0
    for step in range(40):
        files = sorted(posts.rglob("*.md"))
        victim = rng.choice(files)
        action = rng.choices(["body", "title", "move", "add", "delete", "undated", "dup-id",
                              "warning"], weights=[4, 3, 3, 3, 2, 1, 0.3, 1])[0]
        touched = {victim}
        if action == "body":
            _rewrite(victim, "</p></div>", f" step {step}</p></div>")
        elif action == "title":
            _rewrite(victim, "title: ", f"title: S{step} ")
        elif action == "move":
            text = victim.read_text()
            for old in ("[Alpha, Sub0]", "[Alpha, Sub1]", "[Alpha, Sub2]", "[Beta, Sub0]",
                        "[Beta, Sub1]", "[Beta, Sub2]"):
                text = text.replace(old, rng.choice(["[Alpha, Sub1]", "[Beta, Sub0]"]))
            victim.write_text(text)
        elif action in ("add", "undated"):
            victim = posts / f"n/new{step}.md"
            date = "" if action == "undated" else f"\ndate: 2026-03-{step % 28 + 1:02d} 08:00"
            write_post(posts, f"n/new{step}.md", f"title: New {step}\n"
                       f"categories: [{rng.choice(['Alpha', 'Beta'])}, Sub1]{date}")
            touched = {victim}
        elif action == "delete" and len(files) > 4:
            victim.unlink()
        elif action == "dup-id":
            other = rng.choice(sorted(posts.glob("?/p*.md")))
            _rewrite(victim, "title: ", f"id: '{_post_id(posts, other)}'\ntitle: ")
        else:
            _rewrite(victim, "title: ", "date: Invalid Date\ntitle: ")
        if several.random() < 0.3:  # (its own generator: the edits above stay the seed's)
            other = several.choice(sorted(posts.rglob("*.md")))
            text = other.read_text()
            start = text.index("categories: ") + len("categories: ")
            end = text.index("\n", start)
            other.write_text(text[:start] + several.choice(SEVERAL) + text[end:])
            touched.add(other)
        report = session.build(config, clock=fixed_clock(),
                               changed=None if one_off else {str(p) for p in touched})
        patched += report.patched
        clean_problems = _clean_problems(tmp_path, config_path)
        assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path), (step, action)
        assert sorted(map(str, report.problems.items)) == clean_problems, (step, action)
    session.close()
    assert patched >= 15  # most steps were patched in, not rebuilt
    if one_off:  # and a hand-edited feed is still repaired by a patched one-off build
        (config.output_dir / "beta" / "rss.xml").write_bytes(b"<x/>")
        _rewrite(next(posts.glob("a/p*.md")), "</p></div>", " last</p></div>")
        report = build(config, clock=fixed_clock())
        assert report.patched and "beta/rss.xml" in report.written
        assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)


# category lists a random edit puts a post in: several paths in one or two top-level
# categories, a path inside another, one path again
SEVERAL = ["[[Alpha, Sub1], [Beta, Sub0]]", "[[Alpha, Sub1], [Alpha, Sub0]]",
           "[Alpha, [Beta, Sub1]]", "[[Beta, Sub0], [Beta]]", "[[Alpha], [Alpha, Sub2]]",
           "[Beta, Sub1]", "[[Alpha, Sub0], [Beta, Sub2], [Alpha, Sub1]]"]


@pytest.mark.parametrize("change", ["[Alpha, Sub1]", "[Beta, Sub2]", "delete"])
@pytest.mark.parametrize("session", [False, True])
def test_a_post_in_two_top_level_categories_is_patched_out_of_both(
        tmp_path: Path, change: str, session: bool) -> None:
    """Its node entries sit in both top-level categories' parts of the saved index: a
    patch that moves it to one of them, or deletes it, loads and patches both."""
    from aggregator.pipeline import Builder

    config_path = _site(tmp_path)
    post = tmp_path / "posts/a/p1.md"
    _rewrite(post, "[Alpha, Sub1]", "[[Alpha, Sub1], [Beta, Sub0]]")
    config = load_config(config_path)
    builder = Builder(persistent=session)
    builder.build(config, clock=fixed_clock())
    if change == "delete":
        post.unlink()
    else:
        _rewrite(post, "[[Alpha, Sub1], [Beta, Sub0]]", change)
    report = builder.build(config, clock=fixed_clock(),
                           changed={str(post)} if session else None)
    builder.close()
    assert report.patched
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)


def _post_id(posts: Path, post: Path) -> str:
    """The id a build gives this post (the root's feed may not show it): its front
    matter's, or the one made from its path."""
    text = post.read_text()
    if "\nid: '" in text:
        return text.split("\nid: '", 1)[1].split("'", 1)[0]
    return f"tag:example.org,2026:{quote(post.relative_to(posts).as_posix())}"


def _published_id(tmp_path: Path, title: str) -> str:
    """The id the last build gave the entry with this title (from the root Atom feed)."""
    from lxml import etree

    ns = {"a": "http://www.w3.org/2005/Atom"}
    feed = etree.parse(str(tmp_path / "feeds" / "atom.xml"))
    found: list[str] = feed.xpath(f"//a:entry[a:title='{title}']/a:id/text()", namespaces=ns)
    assert found, title
    return found[0]


def _clean_problems(tmp_path: Path, config_path: Path) -> list[str]:
    clean = tmp_path / "clean-problems"
    shutil.rmtree(clean, ignore_errors=True)
    clean.mkdir()
    shutil.copytree(tmp_path / "posts", clean / "posts", symlinks=True)
    shutil.copy(config_path, clean / "config.yaml")
    report = build(load_config(clean / "config.yaml"), clock=fixed_clock())
    return sorted(map(str, report.problems.items))


@pytest.mark.parametrize("session", [False, True])
def test_cached_posts_stay_one_per_post_file_and_hold_no_body(tmp_path: Path,
                                                              session: bool) -> None:
    """Edited and deleted posts leave the cache (its disk use is bounded); no row holds
    a body (they are read from the post files when rendered)."""
    import sqlite3

    from aggregator.pipeline import Builder

    config = load_config(_site(tmp_path))
    builder = Builder(persistent=session)
    builder.build(config, clock=fixed_clock())
    for step in range(3):
        _rewrite(tmp_path / "posts/a/p1.md", "</p></div>", f" {step}</p></div>")
        builder.build(config, clock=fixed_clock(),
                      changed={str(tmp_path / "posts/a/p1.md")} if session else None)
    (tmp_path / "posts/b/p0.md").unlink()
    builder.build(config, clock=fixed_clock(),
                  changed={str(tmp_path / "posts/b/p0.md")} if session else None)
    builder.close()
    db = sqlite3.connect(f"{config.state_path}.cache")
    rows = db.execute("SELECT payload FROM post_cache").fetchall()
    db.close()
    assert len(rows) == 11
    assert not any(b"Body" in row[0] or b"junk" in row[0] for row in rows)


@pytest.mark.parametrize("session", [False, True])
def test_a_patched_build_keeps_the_other_entries_renders(tmp_path: Path, session: bool) -> None:
    """A build that planned only a few feeds must not drop the renders of the others
    (they are still published: dropping them would make the next full build render all)."""
    import sqlite3

    from aggregator.pipeline import Builder

    config_path = _site(tmp_path)
    _edit_config(config_path, "output", "max_items", 2)  # beta's entries: not in alpha's
    config = load_config(config_path)
    builder = Builder(persistent=session)
    builder.build(config, clock=fixed_clock())
    victim = tmp_path / "posts/a/p1.md"
    for step in range(2):
        _rewrite(victim, "</p></div>", f" {step}</p></div>")
        report = builder.build(config, clock=fixed_clock(),
                               changed={str(victim)} if session else None)
        assert report.patched and report.rendered == 1
    builder.close()
    db = sqlite3.connect(f"{config.state_path}.cache")
    renders = db.execute("SELECT count(*) FROM rendered").fetchone()[0]
    db.close()
    assert renders >= 12  # every published entry's, and perhaps an old one of p1


def test_the_saved_session_index_carries_no_html(tmp_path: Path) -> None:
    import sqlite3

    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    db = sqlite3.connect(f"{config.state_path}.cache")
    head = db.execute("SELECT record FROM session").fetchone()[0]
    blob = b"".join(row[0] for row in db.execute(
        "SELECT record FROM session_index UNION ALL SELECT record FROM session_index_part"))
    db.close()
    assert b"Body 3" not in blob and b"junk 3" not in blob  # bodies stay in the posts
    assert b"Post 3" in blob  # titles are there
    assert b"Post 3" not in head  # the posts' record holds no entry


def test_a_saved_session_of_another_layout_is_ignored(tmp_path: Path) -> None:
    import pickle
    import sqlite3

    from aggregator.incremental import SavedSession

    config = load_config(_site(tmp_path))
    build(config, clock=fixed_clock())
    from aggregator.pipeline import _settings_digest

    old = object.__new__(SavedSession)  # an earlier layout's record, same settings
    vars(old).update(settings=_settings_digest(config), posts={}, index=None, counts={})
    for record in (pickle.dumps(old), b"not a pickle"):
        db = sqlite3.connect(f"{config.state_path}.cache")
        with db:
            db.execute("UPDATE session SET record = ?", (record,))
        db.close()
        _rewrite(tmp_path / "posts/a/p1.md", "</p></div>", " again</p></div>")
        report = build(config, clock=fixed_clock())
        assert not report.patched
        assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path=config.path)


def _built_big_site(tmp_path: Path) -> tuple[Path, Config]:
    """_site() with 118 more posts (more than the 100 changed files a patch takes),
    built once."""
    config_path = _site(tmp_path)
    for i in range(12, 130):
        write_post(tmp_path / "posts", f"c/p{i}.md", f"title: Post {i}\ncategories: [Gamma]\n"
                   f"date: 2026-02-01 08:00:00", body=f"<p>Body {i}</p>")
    config = load_config(config_path)
    build(config, clock=fixed_clock())
    return config_path, config


def test_the_saved_index_is_read_only_to_patch(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Many changed files: a full build, without unpickling the saved index (~2 s at
    100k posts); one edited file: the index is read and the edit patched in; a broken
    index record: a full build, the same feeds."""
    import sqlite3

    from aggregator.state.cache import BuildCache

    config_path, config = _built_big_site(tmp_path)
    reads: list[int] = []
    original = BuildCache.saved_index_records
    monkeypatch.setattr(BuildCache, "saved_index_records",
                        lambda self: reads.append(1) or original(self))
    for i in range(12, 130):
        _rewrite(tmp_path / f"posts/c/p{i}.md", "Body", "Changed")
    report = build(config, clock=fixed_clock())
    assert not report.patched and reads == []
    _rewrite(tmp_path / "posts/a/p1.md", "Body 1", "Edited 1")
    report = build(config, clock=fixed_clock())
    assert report.patched and reads == [1]
    db = sqlite3.connect(f"{config.state_path}.cache")
    with db:
        db.execute("UPDATE session_index SET record = ?", (b"not a pickle",))
    db.close()
    _rewrite(tmp_path / "posts/a/p1.md", "Edited 1", "Edited again 1")
    report = build(config, clock=fixed_clock())
    assert not report.patched
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)
    _rewrite(tmp_path / "posts/a/p1.md", "Edited again 1", "Edited a third time 1")
    assert build(config, clock=fixed_clock()).patched  # that full build saved an index


def test_the_saved_index_is_streamed_to_and_from_its_blob(tmp_path: Path) -> None:
    """The saved session and its index are pickled into spool files and copied into
    their blobs in chunks, then unpickled from the blobs as streams (~26 and ~100 MB at
    100k posts, never held whole): a record of several chunks comes back equal; a dump
    that fails (disk full) leaves no session at all rather than a head without its
    index or a stale pair."""
    import pickle

    from aggregator.state.cache import BuildCache

    cache = BuildCache(tmp_path / "cache.sqlite")
    record = {"entries": [os.urandom(1000) for _ in range(3000)], "text": "ü" * 10}
    cache.store_session(lambda out: pickle.dump("head", out),
                        ("key", lambda out: pickle.dump(record, out)))
    records = cache.saved_index_records()
    assert cache.saved_session() == "head" and records is not None
    assert records.load(0) == record and cache.saved_session_index_key() == "key"
    cache.close()
    cache = BuildCache(tmp_path / "cache.sqlite")
    records = cache.saved_index_records()
    assert records is not None and records.load(0) == record  # as the next build reads it

    def three_records(out: BinaryIO) -> list[int]:
        starts = []
        for number in range(3):
            starts.append(out.tell())
            pickle.dump([number, record], out)
        return starts
    cache.store_session(lambda out: pickle.dump("head", out), ("key 3", three_records))
    records = cache.saved_index_records()
    assert records is not None
    assert [records.load(number) for number in (2, 0, 1)] == [[2, record], [0, record],
                                                               [1, record]]

    def disk_full(out: object) -> None:
        raise OSError(28, "No space left on device")
    cache.store_session(lambda out: pickle.dump("head 2", out), ("key 2", disk_full))
    assert cache.saved_session() is None and cache.saved_index_records() is None
    cache.close()


def test_the_saved_index_gives_back_every_field_of_its_entries(tmp_path: Path) -> None:
    """The index pickles each entry flat (dates as their pickle states, the image as
    its fields): every field but the html comes back the same, to the repr (render
    keys and digests are made from reprs), dates in every kind of zone and fold,
    undated and image-less entries, and an updated date that is the published one
    stays one object."""
    import pickle
    from datetime import timedelta, timezone
    from zoneinfo import ZoneInfo

    from aggregator.incremental import SessionIndex, dump_index, load_index
    from aggregator.model import Entry, Image, changed
    from aggregator.state.cache import BuildCache
    from aggregator.tree.categories import build_tree

    berlin = ZoneInfo("Europe/Berlin")
    stamps = [datetime(2026, 3, 1, 8, 0, tzinfo=UTC),
              datetime(2025, 10, 26, 2, 30, tzinfo=berlin, fold=1),  # the second 02:30
              datetime(2025, 3, 30, 2, 30, tzinfo=berlin),  # in the gap: kept as written
              datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-9,
                                                                                  minutes=-30))),
              datetime(2026, 1, 1)]  # naive
    entries = []
    for i, stamp in enumerate(stamps):
        for published in (stamp, None):
            entries.append(Entry(
                id=f"tag:x,2026:{i}{published is None}", title=f"T{i}", link=None if i % 2
                else f"https://x.example/{i}", author="A" if i else None,
                published=published, updated=stamp if i % 2 else stamps[0],
                category=("C", f"D{i}"), tags=("t",) if i else (), html=f"<p>{i}</p>",
                summary="s" if i else "", image=None if i == 2 else Image(
                    f"https://img.example/{i}.png", "image/png" if i else None, i * 100),
                source=f"c/p{i}.md", base_url="https://x.example/", digest=f"d{i}"))
    index = SessionIndex.of("g", {e.source + e.id: e for e in entries}, {}, entries,
                            build_tree(entries, {}))
    cache = BuildCache(tmp_path / "cache.sqlite")
    cache.store_session(lambda out: pickle.dump("head", out),
                        ("key", lambda out: dump_index(index, out)))
    back = load_index(cache.saved_index_records())
    assert back is not None
    back.load_nodes(list(back.nodes.values()), 0)
    for before, after in zip(index.posts.values(), back.posts.values(), strict=True):
        assert after.partial and after.html == "" and after.digest == before.digest
        assert repr(after) == repr(changed(before, html=""))
        assert [getattr(after, f) for f in ("published", "updated")] == \
            [getattr(before, f) for f in ("published", "updated")]
        assert (after.updated is after.published) == (before.updated is before.published)
        if before.published is not None:
            assert after.published.fold == before.published.fold
            assert after.published.tzinfo == before.published.tzinfo
            if isinstance(before.published.tzinfo, ZoneInfo):
                assert after.published.tzinfo is berlin  # as pickle gives it: the cached one
    assert back.merged[entries[0].id] is back.posts[entries[0].source + entries[0].id]


def test_touched_posts_keep_the_saved_index(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every post touched, none changed: the full build saves the posts' new identities
    but not the index again (the same content key); an edit after it is patched right.
    A changed post among many touched ones: the index is saved again."""
    from aggregator.state.cache import BuildCache

    config_path, config = _built_big_site(tmp_path)
    dumps: list[bool] = []  # for each saved session: was its index written again?
    original = BuildCache.store_session
    monkeypatch.setattr(BuildCache, "store_session",
                        lambda self, head, index=None: dumps.append(index is not None) or
                        original(self, head, index))
    for post in (tmp_path / "posts").rglob("*.md"):
        os.utime(post, ns=(post.stat().st_atime_ns, post.stat().st_mtime_ns + 10**9))
    assert not build(config, clock=fixed_clock()).patched
    assert dumps == [False]
    _rewrite(tmp_path / "posts/a/p1.md", "Body 1", "Edited 1")
    assert build(config, clock=fixed_clock()).patched
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)
    dumps.clear()  # the clean build's own
    for post in (tmp_path / "posts").rglob("*.md"):
        os.utime(post, ns=(post.stat().st_atime_ns, post.stat().st_mtime_ns + 10**9))
    _rewrite(tmp_path / "posts/c/p20.md", "Body 20", "Edited 20")
    assert not build(config, clock=fixed_clock()).patched
    assert dumps == [True]
    _rewrite(tmp_path / "posts/b/p2.md", "Body 2", "Edited 2")
    assert build(config, clock=fixed_clock()).patched
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)


def test_saved_posts_tell_what_changed_since() -> None:
    import pickle

    from aggregator.incremental import SavedPosts
    from aggregator.sources.walk import PostFile

    one, two = Path("/site/posts"), Path("/site/more")
    then = {f"/site/posts/{n}.md": PostFile(f"/site/posts/{n}.md", f"{n}.md", one,
                                            (n, 10 + n, 100 + n)) for n in range(5)}
    then["/site/more/x.md"] = PostFile("/site/more/x.md", "x.md", two, (1, 2, 3))
    saved = pickle.loads(pickle.dumps(SavedPosts(then)))  # as a build reads it back
    now = dict(then)
    assert saved.changed(now) == set()
    now["/site/posts/1.md"] = then["/site/posts/1.md"]._replace(identity=(1, 99, 101))
    now["/site/posts/2.md"] = then["/site/posts/2.md"]._replace(rel="sub/2.md")
    now["/site/posts/3.md"] = then["/site/posts/3.md"]._replace(root=Path("/elsewhere"))
    del now["/site/posts/4.md"]
    now["/site/posts/new.md"] = PostFile("/site/posts/new.md", "new.md", Path("/site/posts"),
                                         (7, 7, 7))  # an equal root, another object
    expected = {f"/site/posts/{n}.md" for n in (1, 2, 3, 4)} | {"/site/posts/new.md"}
    assert saved.changed(now) == expected
    assert saved.before(expected) == {**{f"/site/posts/{n}.md": then[f"/site/posts/{n}.md"]
                                         for n in (1, 2, 3, 4)}, "/site/posts/new.md": None}


def test_saved_posts_compared_in_bulk_as_one_by_one() -> None:
    """changed_in_place (identity arrays compared by halves) finds what changed() finds
    when the same files are walked in the same order, and declines anything else."""
    import pickle
    import random

    from aggregator.incremental import SavedPosts
    from aggregator.sources.walk import PostFile

    root = Path("/site/posts")
    rng = random.Random(7)
    for size in (1, 2, 9, 100, 1000):
        walked = [PostFile(f"/site/posts/{n:05d}.md", f"{n:05d}.md", root, (n, 10 + n, 100 + n))
                  for n in range(size)]
        saved = pickle.loads(pickle.dumps(SavedPosts({p.location: p for p in walked})))
        assert saved.changed_in_place(walked) == set()
        for _ in range(20):
            now = list(walked)
            for i in rng.sample(range(size), rng.randint(1, min(size, 12))):
                field = rng.randrange(3)
                identity = list(now[i].identity)
                identity[field] += rng.choice([1, -1, 1 << 40])
                now[i] = now[i]._replace(identity=tuple(identity))
            expected = saved.changed({p.location: p for p in now})
            assert expected and saved.changed_in_place(now) == expected
            assert saved.changed({p.location: p for p in now}, now) == expected
    walked = [PostFile(f"/site/posts/{n}.md", f"{n}.md", root, (n, n, n)) for n in range(5)]
    saved = SavedPosts({p.location: p for p in walked})
    assert saved.changed_in_place(walked[:-1]) is None  # one gone
    assert saved.changed_in_place(walked[::-1]) is None  # another order
    moved = [*walked[:-1], walked[-1]._replace(rel="x/4.md")]
    assert saved.changed_in_place(moved) is None
    elsewhere = [p._replace(root=Path("/other")) for p in walked]
    assert saved.changed_in_place(elsewhere) is None


REAL_POSTS = SHARED / "corpus" / "posts"
BODY_CASES = {
    "html": "---\ntitle: A\n---\n\n<div><p>x &amp; y</p></div>",
    "markdown": "---\ntitle: A\n---\n# Head\n\n*em* <b>raw</b>\n",
    "no front matter": "<p>only a body</p>\n",
    "no front matter, markdown": "just *text*\n",
    "leading blank lines and BOM": "\ufeff\n\n---\ntitle: A\n---\n<p>b</p>",
    "NUL bytes": "---\ntitle: A\n---\n<p>a\x00b</p>",
    "bad UTF-8": b"---\ntitle: A\n---\n<p>\xff\xfe</p>",
    "front matter only": "---\ntitle: A\n---\n",
    "a --- inside the body": "---\ntitle: A\n---\n<p>a</p>\n---\n<p>b</p>",
    "bad YAML line": '---\ntitle: "a" b\n---\n<p>c</p>',
}


@pytest.mark.parametrize("body", ["html", "markdown", "auto"])
def test_a_body_read_again_is_the_body_parse_gave(tmp_path: Path, body: str) -> None:
    """Renders read bodies again from the post files (PostReader.html_of): it must give
    the html `parse` gave, for every shape of post, and for every real one."""
    from aggregator.problems import ProblemLog
    from aggregator.sources.content import PostReader
    from aggregator.sources.walk import discover

    posts = tmp_path / "posts"
    for name, text in BODY_CASES.items():
        path = posts / f"{name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    dirs = [str(posts)] + ([str(REAL_POSTS)] if REAL_POSTS.is_dir() else [])
    config = load_config(write_config(tmp_path, dirs, content={"body": body}))
    reader = PostReader(config, ProblemLog(echo=False), lambda _id: datetime(2024, 1, 1,
                                                                             tzinfo=UTC))
    compared = 0
    for post in discover(config, ProblemLog(echo=False)):
        data = Path(post.location).read_bytes()
        entry = reader.parse(post, data)
        if entry is not None:
            assert reader.html_of(data) == entry.html, post.rel
            compared += 1
    assert compared >= len(BODY_CASES) - 1 + (100 if REAL_POSTS.is_dir() else 0)


def test_bodies_are_read_again_from_every_content_dir(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Entries cached without their html find their post files by content dir and
    relative path (the same relative path in two dirs included) when they are rendered
    again: no post is read again in full, and the feeds equal a clean build's."""
    for folder in ("posts", "more"):
        for i in range(4):
            write_post(tmp_path / folder, f"same/p{i}.md" if i < 2 else f"{folder}-{i}.md", f"""
                title: {folder} {i}
                categories: [{folder}]
                date: 2026-02-{i + 1:02d} 08:00:00
            """, body=f'<div><p class="junk">junk</p><p>{folder} body {i}</p></div>')
    config_path = write_config(tmp_path, ["posts", "more"])
    build(load_config(config_path), clock=fixed_clock())
    _edit_config(config_path, "sanitize", "drop_selectors", ["p.junk"])
    config = load_config(config_path)
    caplog.clear()
    report = build(config, clock=fixed_clock())
    assert report.rendered == report.entries > 0
    assert not [r for r in caplog.records if "reading every post again" in r.getMessage()]
    after = _feeds(config.output_dir)
    assert b"posts body 2" in after["atom.xml"] and b"more body 3" in after["atom.xml"]
    assert b"junk" not in after["atom.xml"]

    clean = tmp_path / "clean"
    for folder in ("posts", "more"):
        shutil.copytree(tmp_path / folder, clean / folder)
    shutil.copy(config_path, clean / "config.yaml")
    build(load_config(clean / "config.yaml"), clock=fixed_clock())
    assert after == _feeds(clean / "feeds")


def _parts_site(tmp_path: Path, tops: int = 4) -> Path:
    """Posts in several top-level categories, two levels deep, and max_items 2."""
    for i in range(8 * tops):
        write_post(tmp_path / "posts", f"t{i % tops}/p{i}.md", f"""
            title: Post {i}
            categories: [Top{i % tops}, Sub{i % 2}]
            date: 2026-01-{i % 28 + 1:02d} 08:{i % 60:02d}:00
        """, body=f"<p>Body {i}</p>")
    return write_config(tmp_path, output={"dir": "feeds", "max_items": 2})


def test_an_edit_loads_only_the_parts_of_the_saved_index_it_touches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-off build patching one edited post unpickles the saved index's spine, the
    root's own part and the edited post's top-level category, not the others, and
    reports the counts a full build does; a new post in another category loads that
    one too."""
    from aggregator.incremental import PartialIndex
    from aggregator.state.cache import BlobRecords

    config_path = _parts_site(tmp_path)
    config = load_config(config_path)
    full = build(config, clock=fixed_clock())
    loaded: list[int] = []
    original = BlobRecords.load
    monkeypatch.setattr(BlobRecords, "load",
                        lambda self, offset, *a: loaded.append(offset) or original(self, offset))
    parts: list[PartialIndex] = []
    original_prepare = PartialIndex.prepare
    monkeypatch.setattr(PartialIndex, "prepare",
                        lambda self, changes: parts.append(self) or original_prepare(self, changes))

    _rewrite(tmp_path / "posts/t1/p25.md", "Body 25", "Edited 25")  # Top1/Sub1's newest
    report = build(config, clock=fixed_clock())
    assert report.patched and "top1/sub1/atom.xml" in report.written
    assert (report.posts_read, report.entries) == (full.posts_read, full.entries)
    index = parts[-1]
    assert index.spine is not None and len(index.spine.tops) == 4
    top1 = index.spine.tops.index("Top1")
    assert index.loaded == {top1, 4}  # the edited post's category and the root's own
    assert len(loaded) == 3  # and the spine
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)

    write_post(tmp_path / "posts", "t3/new.md", """
        title: New
        categories: [Top3, Sub1]
        date: 2026-02-01 08:00:00
    """, body="<p>New</p>")
    report = build(config, clock=fixed_clock())
    assert report.patched and parts[-1].loaded == {top1, index.spine.tops.index("Top3"), 4}
    assert report.posts_read == full.posts_read + 1
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)


def test_parts_that_share_a_key_hash_are_all_loaded(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys are found by a 32-bit hash: keys of other parts with the same hash only
    load those parts too (here every key has one hash), and the feeds stay right."""
    import aggregator.incremental

    config_path = _parts_site(tmp_path)
    config = load_config(config_path)
    monkeypatch.setattr(aggregator.incremental, "_key_hash", lambda key: 7)
    build(config, clock=fixed_clock())
    _rewrite(tmp_path / "posts/t2/p6.md", "Body 6", "Edited 6")
    assert build(config, clock=fixed_clock()).patched
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)


@pytest.mark.parametrize("garbage", ["bytes", "another object"])
def test_an_unreadable_part_of_the_saved_index_means_a_full_build(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: str) -> None:
    """A part that cannot be unpickled, or is not a part: the build says so and builds
    in full, with the same feeds; the saved index it could not read is gone, and the
    next edit is patched into the new one."""
    import pickle
    import sqlite3

    config_path = _parts_site(tmp_path)
    config = load_config(config_path)
    build(config, clock=fixed_clock())
    db = sqlite3.connect(f"{config.state_path}.cache")
    with db, db.blobopen("session_index_part", "record", 1) as blob:  # part 0
        blob.write(b"\x00" * 64 if garbage == "bytes" else pickle.dumps({"posts": 1}))
    db.close()
    for i in range(4):  # one post in each part: part 0 is among those loaded
        _rewrite(tmp_path / f"posts/t{i}/p{i}.md", f"Body {i}<", f"Edited {i}<")
    caplog.clear()
    report = build(config, clock=fixed_clock())
    assert not report.patched
    assert any("saved index part 0 unreadable" in r.getMessage() for r in caplog.records)
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)
    _rewrite(tmp_path / "posts/t1/p5.md", "Body 5", "Edited 5")
    assert build(config, clock=fixed_clock()).patched
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)


@pytest.mark.parametrize("max_items", [0, 2])
@pytest.mark.parametrize("change", ["add, then delete", "rename, then rename back"])
def test_a_change_undone_between_patched_builds_leaves_no_stale_feed(
        tmp_path: Path, max_items: int, change: str) -> None:
    """One-off builds patch every change since the saved build. A post added and then
    deleted (or renamed and renamed back) by the time of the second patch is in no
    change set since the saved build, but the first patch wrote it into feeds: those
    feeds are planned again (it stayed published, and a clean build's feeds had no
    such entry)."""
    config_path = _site(tmp_path)
    _edit_config(config_path, "output", "max_items", max_items)
    config = load_config(config_path)
    build(config, clock=fixed_clock())
    posts = tmp_path / "posts"
    _rewrite(posts / "a/p1.md", "Body 1", "Edited 1")  # so the second build patches too
    if change == "add, then delete":
        write_post(posts, "n/new.md", "title: New\ncategories: [Beta, Sub1]\n"
                   "date: 2026-03-01 08:00")
        first = build(config, clock=fixed_clock())
        (posts / "n/new.md").unlink()
    else:
        (posts / "b/p4.md").rename(posts / "b/renamed.md")
        first = build(config, clock=fixed_clock())
        (posts / "b/renamed.md").rename(posts / "b/p4.md")
    assert first.patched and b"New" in (config.output_dir / "atom.xml").read_bytes() \
        if change == "add, then delete" else first.patched
    second = build(config, clock=fixed_clock())
    assert second.patched
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)

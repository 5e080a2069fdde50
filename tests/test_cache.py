"""The build cache never serves a stale feed.

After every kind of change, an incremental build (warm cache) must publish exactly
the bytes a clean build (no cache, no state) publishes, and touch only what it must.
Tests taking `store` run on the SQLite store and on the PostgreSQL one (`state.url`);
the clean build they are compared with is always a SQLite one.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from helpers import fixed_clock, write_config, write_post

import aggregator.fingerprints
from aggregator.config import load_config
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


def _use_store(request: pytest.FixtureRequest, config_path: Path, store: str) -> None:
    """The site's entry store: the SQLite file its config names, or (postgres) a
    fresh PostgreSQL database named by state.url."""
    if store == "postgres":
        url = request.getfixturevalue("pg_url")
        data = yaml.safe_load(config_path.read_text())
        data["state"] = {"url": url}
        config_path.write_text(yaml.safe_dump(data, allow_unicode=True))
        request.addfinalizer(lambda: _assert_stored_in(url))


def _assert_stored_in(url: str) -> None:
    """The test's builds really kept their entries in the PostgreSQL database."""
    import psycopg

    with psycopg.connect(url) as db:
        found = db.execute("SELECT to_regclass('entry_store.entry')").fetchone()
        assert found is not None and found[0] is not None, "no entry store in PostgreSQL"
        assert db.execute("SELECT count(*) FROM entry_store.entry").fetchone() != (0,)


def _copy_config(config_path: Path, target: Path) -> None:
    """The config for a build of the same inputs from nothing: always the SQLite store
    (a state.url would share the database of the build compared)."""
    data = yaml.safe_load(config_path.read_text())
    data.get("state", {}).pop("url", None)
    target.write_text(yaml.safe_dump(data, allow_unicode=True))


def _feeds(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _clean_build(tmp_path: Path, config_path: Path) -> dict[str, bytes]:
    """The same inputs built from nothing: the reference an incremental build must match."""
    return _clean_build_and_problems(tmp_path, config_path)[0]


def _clean_build_and_problems(tmp_path: Path,
                              config_path: Path) -> tuple[dict[str, bytes], list[str]]:
    """The feeds of a build of the same inputs from nothing, and the problems it reports."""
    clean = tmp_path / "clean"
    shutil.rmtree(clean, ignore_errors=True)
    clean.mkdir()
    shutil.copytree(tmp_path / "posts", clean / "posts", symlinks=True)
    _copy_config(config_path, clean / "config.yaml")
    report = build(load_config(clean / "config.yaml"), clock=fixed_clock())
    return _feeds(clean / "feeds"), sorted(map(str, report.problems.items))


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
    # the walk's folder prints (sources/walk.py) must see posts leave and join folders
    "move-to-another-folder": (lambda t, c: (t / "posts/a/p1.md").rename(t / "posts/b/p1.md"),
                               None),
    "folder-deleted": (lambda t, c: shutil.rmtree(t / "posts/a"), None),
    "new-folder": (lambda t, c: (t / "posts/a/c").mkdir() or (t / "posts/a/p3.md").rename(
        t / "posts/a/c/p3.md"), None),
    "sanitiser-setting": (lambda t, c: _edit_config(c, "sanitize", "drop_selectors",
                                                    ["p.junk"]), None),
    "site-url": (lambda t, c: _edit_config(c, "site", "url", "https://moved.example/f/"), None),
    "max-items": (lambda t, c: _edit_config(c, "output", "max_items", 2), None),
    "timezone": (lambda t, c: _edit_config(c, "site", "timezone", "Asia/Tokyo"), None),
}


# the changes also run on the PostgreSQL store (each kind of change to the rows, and a
# setting that changes them all)
POSTGRES_CHANGES = ["edit", "rename", "delete", "recategorise",
                    "touch-only", "move-to-another-folder", "sanitiser-setting"]


@pytest.mark.parametrize(("store", "change"), [*(("sqlite", c) for c in sorted(CHANGES)),
                                               *(("postgres", c) for c in POSTGRES_CHANGES)])
def test_incremental_build_equals_clean_build(tmp_path: Path, change: str, store: str,
                                              request: pytest.FixtureRequest) -> None:
    config_path = _site(tmp_path)
    _use_store(request, config_path, store)
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

    from aggregator.store.sqlite import SQLiteStore

    path = tmp_path / "state.cache"
    session = SQLiteStore(path)
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


@pytest.mark.parametrize("loss", ["schema dropped", "tables emptied", "another version"])
def test_a_lost_postgresql_store_costs_only_time(tmp_path: Path, loss: str,
                                                 request: pytest.FixtureRequest) -> None:
    """The PostgreSQL store dropped, emptied (as a server crash empties UNLOGGED
    tables) or of another schema version: the next build is a cold one that publishes
    the same files, and writes none."""
    import psycopg

    from aggregator.store import postgres

    config_path = _site(tmp_path)
    _use_store(request, config_path, "postgres")
    config = load_config(config_path)
    build(config, clock=fixed_clock())
    reference = _feeds(config.output_dir)
    assert config.state_url is not None
    with psycopg.connect(config.state_url, autocommit=True) as db:
        if loss == "schema dropped":
            db.execute("DROP SCHEMA entry_store CASCADE")
        elif loss == "tables emptied":
            tables = [name for (name,) in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'entry_store'")]
            db.execute(f"TRUNCATE {', '.join(f'entry_store.{t}' for t in tables)}")
        else:
            db.execute("UPDATE entry_store.meta SET value = 'old' WHERE key = 'schema'")
    report = build(config, clock=fixed_clock())
    assert _feeds(config.output_dir) == reference and report.written == []
    assert report.rendered == 12  # (cold: the store held nothing usable)
    with psycopg.connect(config.state_url) as db:
        assert db.execute("SELECT value FROM entry_store.meta WHERE key = 'schema'"
                          ).fetchone() == (postgres.SCHEMA_VERSION,)


def test_the_sqlite_and_postgresql_stores_publish_the_same_bytes(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The same posts (an undated one, a duplicate link, several categories) and the
    same upstream entry, built cold and then patched on each store: byte-identical
    files and the same problems."""
    published, problems = [], []
    for store in ("sqlite", "postgres"):
        config_path = _undated_site(tmp_path / store)
        _use_store(request, config_path, store)
        posts = tmp_path / store / "posts"
        for name in ("a/p3.md", "a/p5.md"):
            _rewrite(posts / name, "title: ", "link: https://x.example/same\ntitle: ")
        _rewrite(posts / "a/p1.md", "[Alpha, Sub1]", "[[Alpha, Sub1], [Beta, Sub0]]")
        _store_upstream_entry(config_path)
        config = load_config(config_path)
        report = build(config, clock=fixed_clock())
        cold = _feeds(config.output_dir)
        _rewrite(posts / "b/p0.md", "[Beta, Sub0]", "[Alpha, Sub0]")
        (posts / "a/p7.md").unlink()
        again = build(config, clock=fixed_clock())
        assert again.patched
        published.append((cold, _feeds(config.output_dir)))
        problems.append([str(p) for p in [*report.problems.items, *again.problems.items]])
    assert published[0] == published[1] and problems[0] == problems[1]
    assert b"From upstream" in published[1][0]["atom.xml"] and problems[0]


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


@pytest.mark.parametrize(("store", "change"), [
    *(("sqlite", c) for c in sorted(SESSION_CHANGES)),
    *(("postgres", c) for c in ("edit", "create", "delete", "rename", "duplicate-link",
                                "back-to-one-category", "empty-a-category"))])
def test_service_session_with_changed_paths_equals_clean_build(
        tmp_path: Path, change: str, store: str, request: pytest.FixtureRequest) -> None:
    from aggregator.pipeline import Builder

    config_path = _site(tmp_path)
    _use_store(request, config_path, store)
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


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_parallel_cold_build_equals_sequential_build(
        tmp_path: Path, store: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A parallel build (on `store`: its render workers read the entries through a
    connection of their own) publishes what a sequential SQLite one does."""
    from aggregator.forking import can_fork
    from aggregator.render import PARALLEL_THRESHOLD
    from aggregator.store import sqlite

    if not can_fork():
        pytest.skip("another thread is alive in this test process: workers would not fork")
    for site in ("one", "two"):
        for i in range(PARALLEL_THRESHOLD + 20):
            dated = f"date: 2026-01-{1 + i % 28:02d} 08:00:00" if i % 7 else "date: Invalid Date"
            write_post(tmp_path / site / "posts", f"c{i % 9}/p{i}.md",
                       f"title: Post {i}\ncategories: [C{i % 9}, D{i % 4}]\n{dated}\n"
                       f"headimg: https://img.example/{i}.jpg")
    one = load_config(write_config(tmp_path / "one"))
    _use_store(request, write_config(tmp_path / "two"), store)
    two = load_config(tmp_path / "two" / "config.yaml")
    readers = tmp_path / "readers"  # the processes that read entries through a reader
    if store == "postgres":
        from aggregator.store import postgres
        reader: type[sqlite.SQLiteReader | postgres.PostgresReader] = postgres.PostgresReader
    else:
        reader = sqlite.SQLiteReader
    read = reader.packed

    def packed(self: Any, rids: list[int]) -> Any:
        with readers.open("a") as log:
            log.write(f"{os.getpid()}\n")
        return read(self, rids)
    monkeypatch.setattr(reader, "packed", packed)  # (the forked workers inherit it)
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
    workers = set(readers.read_text().split())
    assert len(workers) >= 2 and str(os.getpid()) not in workers


@pytest.mark.parametrize("workers", [1, 2])
def test_renders_the_cache_cannot_keep_are_held_until_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Renders go into the build cache as they are made and are read back a subtree
    at a time; when the cache cannot store them (disk full), the build holds them
    itself and publishes the same feeds."""
    import sqlite3

    from aggregator.forking import can_fork
    from aggregator.render import PARALLEL_THRESHOLD
    from aggregator.store.sqlite import SQLiteStore

    if workers > 1 and not can_fork():
        pytest.skip("another thread is alive in this test process: workers would not fork")
    for i in range(PARALLEL_THRESHOLD + 20):
        write_post(tmp_path / "posts", f"c{i % 5}/p{i}.md",
                   f"title: Post {i}\ncategories: [C{i % 5}, D{i % 3}]\n"
                   f"date: 2026-01-{1 + i % 28:02d} {i % 24:02d}:00:00")
    config_path = write_config(tmp_path, output={"dir": "feeds", "max_items": 30})

    def full_disk(self: SQLiteStore, rows: object) -> None:
        self.write_failed(sqlite3.OperationalError("database or disk is full"))
    monkeypatch.setattr(SQLiteStore, "store_rendered", full_disk)
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


def test_a_post_changed_behind_the_stores_back_is_published_as_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Renders come from the stored entry, html included, never from the post file
    again: a file whose bytes changed under the same size, mtime and inode (which the
    walk cannot tell) is published whole as it was read, never a body of one version
    with the fields of another; touching it makes the next build read it."""
    config_path = _site(tmp_path)
    config = load_config(config_path)
    build(config, clock=fixed_clock())
    post = tmp_path / "posts/a/p1.md"
    st = post.stat()
    post.write_bytes(post.read_bytes().replace(b"Body 1", b"Bodz 1")
                     .replace(b"Post 1", b"Pozt 1"))  # same size
    os.utime(post, ns=(st.st_atime_ns, st.st_mtime_ns))
    # a new sanitiser: every entry is rendered again, from the stored entries
    monkeypatch.setattr(aggregator.fingerprints, "SANITIZER_VERSION", "999")
    report = build(config, clock=fixed_clock())
    assert report.rendered == 12
    published = (config.output_dir / "alpha/atom.xml").read_bytes()
    assert b"Body 1" in published and b"Post 1" in published
    assert b"Bodz 1" not in published and b"Pozt 1" not in published
    os.utime(post)
    build(config, clock=fixed_clock())
    assert b"Bodz 1" in (config.output_dir / "alpha/atom.xml").read_bytes()
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
    from aggregator.problems import ProblemLog
    from aggregator.state.open import open_state
    from aggregator.state.upstream import UpstreamState

    config = load_config(config_path)
    state = open_state(config, fixed_clock(), ProblemLog())  # (SQLite or PostgreSQL)
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
    # every feed, page, the OPML and the pages' style and script
    assert report.patched and sorted(report.written) == sorted(_feeds(config.output_dir))
    assert _feeds(config.output_dir) == _clean_build(tmp_path, config_path)
    assert build(config, clock=fixed_clock()).up_to_date


def _reference_with_state(tmp_path: Path, config_path: Path) -> dict[str, bytes]:
    """A build of the same inputs with no build cache (the state, which holds upstream
    entries and probes, is copied along)."""
    clean = tmp_path / "clean"
    shutil.rmtree(clean, ignore_errors=True)
    shutil.copytree(tmp_path / "posts", clean / "posts", symlinks=True)
    _copy_config(config_path, clean / "config.yaml")
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
    first = run()  # the first build renders and writes every file
    assert first == (f"{len(_feeds(tmp_path / 'feeds'))} 12 ['aggregator.render', "
                     "'aggregator.writers.feeds', 'feedgen', 'lxml.etree']")
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


# (one_off, max_items) -> the seeds the default suite runs it with: each of the four
# ways three seeds, each seed two ways (a session and a one-off); `-m slow` runs every
# seed every way. (2 adds a post, then deletes it before the next one-off build.)
RANDOM_EDIT_SEEDS = {(False, 0): (7, 13, 41), (False, 2): (7, 29, 58),
                     (True, 0): (2, 13, 58), (True, 2): (2, 29, 41)}


@pytest.mark.parametrize(("store", "seed", "one_off", "max_items"), [
    *(pytest.param("sqlite", seed, one_off, max_items, marks=() if seed in seeds
                   else pytest.mark.slow)
      for seed in (7, 2, 13, 29, 41, 58)
      for (one_off, max_items), seeds in RANDOM_EDIT_SEEDS.items()),
    ("postgres", 7, True, 2)])
def test_a_long_session_of_random_edits_always_equals_a_clean_build(
        tmp_path: Path, one_off: bool, max_items: int, seed: int, store: str,
        request: pytest.FixtureRequest) -> None:
    """Random edits, each followed by an incremental build through the entry store,
    publish what a clean build does and report the same problems: in a service session
    (told the changed paths) and in one-off builds (which compare the walk with the
    stored file identities)."""
    import random

    from aggregator.pipeline import Builder

    config_path = _site(tmp_path)
    _use_store(request, config_path, store)
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
        clean_feeds, clean_problems = _clean_build_and_problems(tmp_path, config_path)
        assert _feeds(config.output_dir) == clean_feeds, (step, action)
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


@pytest.mark.parametrize("session", [False, True])
def test_stored_posts_stay_one_per_post_file(tmp_path: Path, session: bool) -> None:
    """Edited and deleted posts leave the store (its disk use is bounded): one row a
    post file, and the renders of the entries published."""
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
    rows = db.execute("SELECT count(*) FROM entry").fetchone()[0]
    renders = db.execute("SELECT count(*) FROM rendered").fetchone()[0]
    db.close()
    assert rows == 11 and renders <= 11 + 100


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


def test_entries_of_every_content_dir_are_rendered_again(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A render setting changed: every entry is rendered again from its stored row
    (the same relative path in two dirs included), no post is read again, and the
    feeds equal a clean build's."""
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
    _copy_config(config_path, clean / "config.yaml")
    build(load_config(clean / "config.yaml"), clock=fixed_clock())
    assert after == _feeds(clean / "feeds")


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


@pytest.mark.parametrize(("store", "seed", "session"), [
    *(("sqlite", seed, session) for seed in (3, 17) for session in (False, True)),
    ("postgres", 3, True)])
def test_upstream_rows_added_changed_and_pruned_equal_a_clean_build(
        tmp_path: Path, seed: int, session: bool, store: str,
        request: pytest.FixtureRequest) -> None:
    """Polls that add upstream entries, change them, claim a local post's link and push
    old ones out of a source's retention: each following build, through the entry
    store, publishes what a build with no store (the same state) does."""
    import random

    from aggregator.config import UpstreamSource
    from aggregator.model import Entry
    from aggregator.pipeline import Builder
    from aggregator.problems import ProblemLog
    from aggregator.state.open import open_state
    from aggregator.state.store import StateStore
    from aggregator.state.upstream import UpstreamState

    config_path = _site(tmp_path)
    _use_store(request, config_path, store)
    data = yaml.safe_load(config_path.read_text())
    data["upstream"] = [{"url": UPSTREAM_URL, "category": "Up", "retention": 4},
                        {"url": UPSTREAM_URL + "?2", "category": "Alpha/Sub1"}]
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path)
    sources = [UpstreamSource(url=UPSTREAM_URL, category=("Up",), retention=4),
               UpstreamSource(url=UPSTREAM_URL + "?2", category=("Alpha", "Sub1"))]
    builder = Builder(persistent=session)
    builder.build(config, clock=fixed_clock())
    rng = random.Random(seed)
    local_link = "https://example.org/a/p1/"  # post p1's link (write_config's post_url)
    claimed = 0
    for step in range(10):
        source = rng.choice(sources)
        entries = []
        for n in rng.sample(range(8), rng.randint(1, 4)):
            when = datetime(2026, 1, 1 + n + step % 3, 9, tzinfo=UTC)
            link = local_link if rng.random() < 0.15 else f"https://up.example/{n}"
            claimed += link == local_link
            entries.append(Entry(
                id=f"urn:up:{n}", title=f"Up {n} v{rng.randint(0, 2)}", link=link,
                author=None, published=when, updated=when, category=(), tags=(),
                html=f"<p>u{n} step {step}</p>", summary="", image=None))
        # the site's state, and (PostgreSQL) a SQLite one alike for the reference build
        for state in (StateStore(config.state_path), *(
                [open_state(config, fixed_clock(), ProblemLog())] if store != "sqlite" else [])):
            UpstreamState(state).store_entries(source, entries, None, None,
                                               datetime(2026, 2, 1 + step, tzinfo=UTC))
            state.close()
        builder.build(config, clock=fixed_clock())
        assert _feeds(config.output_dir) == _reference_with_state(tmp_path, config_path), step
    builder.close()
    assert b"Up " in _feeds(config.output_dir)["atom.xml"] and claimed


def test_upstream_entries_are_stored_a_source_at_a_time(tmp_path: Path) -> None:
    """The upstream entries' rows go into the store holding one source's entries and
    one batch of rows at a time, not every upstream entry: 60 sources of 25 entries
    with 15 KB of html each (22 MB) are stored under half that of Python memory."""
    import random
    import tracemalloc

    from aggregator import sync
    from aggregator.model import Entry
    from aggregator.problems import ProblemLog
    from aggregator.state.open import open_state
    from aggregator.state.store import StateStore
    from aggregator.state.upstream import UpstreamState
    from aggregator.store import open_store

    config_path = _site(tmp_path)
    data = yaml.safe_load(config_path.read_text())
    data["upstream"] = [{"url": f"https://up{n}.example/feed", "category": "Up"}
                        for n in range(60)]
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path)
    rng = random.Random(7)
    when = datetime(2026, 1, 1, 9, tzinfo=UTC)
    state = StateStore(config.state_path)
    html_bytes = 0
    for n, source in enumerate(config.upstream):
        entries = [Entry(id=f"urn:up:{n}:{k}", title=f"Up {n} {k}", link=f"https://up.example/{n}/{k}",
                         author=None, published=when, updated=when, category=(), tags=(),
                         html=f"<p>{rng.randbytes(7500).hex()}</p>", summary="", image=None)
                   for k in range(25)]
        html_bytes += sum(len(entry.html) for entry in entries)
        UpstreamState(state).store_entries(source, entries, None, None, when)
    state.close()
    store = open_store(config)
    state = open_state(config, fixed_clock(), ProblemLog())
    tracemalloc.start()
    try:
        sync.sync_upstream(config, store, state, [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        state.close()
    assert len(store.upstream_rows()) == 60 * 25
    store.close()
    assert peak < html_bytes / 2, (peak, html_bytes)

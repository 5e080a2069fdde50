"""kill -9 during a build (cold or incremental) never leaves a truncated feed; the next
build cleans up and publishes what a clean build does (the entry store stays whole).

The default suite kills at 12 moments and compares with a clean build after every
4th; `-m slow` kills at 100 and compares after every kill.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import write_config, write_post
from lxml import etree

from aggregator.publish.atomic import TEMP_SUFFIX


def _content(tmp_path: Path, posts: int = 400) -> Path:
    rng = random.Random(7)
    for i in range(posts):
        a, b = rng.randrange(8), rng.randrange(6)
        write_post(tmp_path / "posts", f"p{i}.md", f"""
            title: Post {i}
            categories: [Top {a}, Sub {a}-{b}, Leaf {i % 5}]
            date: 2026-01-{1 + i % 28:02d} 10:{i % 60:02d}:00
            headimg: https://img.example/{i}.jpg
        """, body="<div>" + "<p>Paragraph with <b>bold</b> text.</p>" * 20 + "</div>")
    return write_config(tmp_path)


# A build that stages every feed in forked workers whatever its size (400 posts are
# below publish/forked_staging.py's threshold).
_STAGING_IN_WORKERS = ("import sys; from aggregator.publish import forked_staging; "
                       "forked_staging.FORK_AT_ENTRIES = 1; from aggregator.cli import main; "
                       "sys.exit(main(sys.argv[1:]))")


def _build(config: Path, staging_in_workers: bool = False) -> subprocess.Popen[bytes]:
    command = ["-c", _STAGING_IN_WORKERS] if staging_in_workers else ["-m", "aggregator"]
    return subprocess.Popen([sys.executable, *command, "--log-level", "error",
                             "build", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _assert_every_feed_parses(out: Path) -> int:
    count = 0
    for path in out.rglob("*.xml"):
        etree.parse(str(path))  # raises on a truncated or empty file
        count += 1
    return count


def _kill_loop(tmp_path: Path, kills: int, check_every: int, url: str | None = None,
               staging_in_workers: bool = False) -> None:
    """Kill `kills` builds at random moments; every `check_every` kills, let the next
    build finish and compare its output with a clean build of the same posts (on
    SQLite). `url`: the store in that PostgreSQL database instead;
    `staging_in_workers`: the killed builds stage their feeds in forked workers."""
    config = _content(tmp_path)
    if url is not None:
        data = yaml.safe_load(config.read_text())
        data["state"] = {"url": url}
        config.write_text(yaml.safe_dump(data))
    out = tmp_path / "feeds"
    cold = _timed_build(config)
    rng = random.Random(11)
    posts = sorted((tmp_path / "posts").glob("*.md"))
    for post in posts[:5]:
        post.write_text(post.read_text().replace("text.", "text, edited."))
    incremental = _timed_build(config)  # how long each kind of build takes here, now
    caught_mid_write = 0
    for round_ in range(kills):
        # change a few posts so the build has real writes to do
        for post in rng.sample(posts, 5):
            post.write_text(post.read_text().replace("text.", f"text {round_}."))
        if round_ % 4 == 1:  # a cold build: the store lost
            for cache in (tmp_path / "state").glob("*.cache*"):
                cache.unlink()
            if url is not None:
                _drop_entry_store(url)
        proc = _build(config, staging_in_workers)
        # a moment anywhere in the build, from its start to its last write
        time.sleep(rng.uniform(0, cold if round_ % 4 == 1 else incremental))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        caught_mid_write += bool(list(out.rglob(f"*{TEMP_SUFFIX}")))
        assert _assert_every_feed_parses(out) > 0
        if (round_ + 1) % check_every == 0:
            _assert_next_build_equals_a_clean_one(tmp_path, config, f"clean{round_}")
    print(f"{caught_mid_write} of {kills} kills left a temp file behind")
    if url is not None:  # (the builds' entries were in PostgreSQL, not in a cache file)
        import psycopg

        with psycopg.connect(url) as db:
            assert db.execute("SELECT count(*) FROM entry_store.entry").fetchone() == (400,)


def _drop_entry_store(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DROP SCHEMA IF EXISTS entry_store CASCADE")


def _timed_build(config: Path) -> float:
    start = time.monotonic()
    assert _build(config).wait(timeout=120) == 0
    return time.monotonic() - start


def _assert_next_build_equals_a_clean_one(tmp_path: Path, config: Path, name: str) -> None:
    out = tmp_path / "feeds"
    assert _build(config).wait(timeout=120) == 0
    assert list(out.rglob(f"*{TEMP_SUFFIX}")) == []
    assert _assert_every_feed_parses(out) >= 2 * (1 + 8 + 8 * 6)
    clean = tmp_path / name
    shutil.copytree(tmp_path / "posts", clean / "posts")
    data = yaml.safe_load(config.read_text())
    data["state"].pop("url", None)  # (the clean build's store: a SQLite file)
    (clean / "config.yaml").write_text(yaml.safe_dump(data))
    assert _build(clean / "config.yaml").wait(timeout=120) == 0
    assert _files(out) == _files(clean / "feeds")
    shutil.rmtree(clean)


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_killed_builds_leave_only_whole_feeds(tmp_path: Path) -> None:
    _kill_loop(tmp_path, kills=12, check_every=4)


def test_killed_builds_staging_in_workers_leave_only_whole_feeds(tmp_path: Path) -> None:
    _kill_loop(tmp_path, kills=8, check_every=4, staging_in_workers=True)


def test_killed_builds_on_postgresql_leave_a_store_the_next_build_uses(
        tmp_path: Path, pg_url: str) -> None:
    """The same on the PostgreSQL store: a killed build's transactions are rolled back
    by the server, and the next build equals a clean one."""
    _kill_loop(tmp_path, kills=4, check_every=2, url=pg_url)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_killed_builds_leave_only_whole_feeds_100_times(tmp_path: Path) -> None:
    _kill_loop(tmp_path, kills=100, check_every=1)

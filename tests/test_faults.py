"""Faults around a build (issue 8, part 3): full disk, read-only output, and a state
file that is locked, corrupt or deleted.

The disk cases mount a small tmpfs (root only; they skip with a message when mount is
not permitted). The kill -9 loop is tests/test_kill.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import feedparser
import pytest
from helpers import write_config, write_post

import aggregator.state.store as store
from aggregator.cli import main
from aggregator.publish.atomic import TEMP_SUFFIX


@contextmanager
def tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; run as root (e.g. in CI's container)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount not permitted here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def _site(tmp_path: Path, posts: int = 10, **sections: Any) -> Path:
    for i in range(posts):
        write_post(tmp_path / "posts", f"p{i}.md", f"title: Post {i}\n"
                   f"categories: [A, B, C]\ndate: 2026-01-{i + 1:02d} 10:00:00")
    return write_config(tmp_path, **sections)


def _build(config: Path, capsys: Any) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["build", "-c", str(config)])
    return code, capsys.readouterr().err


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _titles(out: Path, rel: str = "atom.xml") -> list[str]:
    return sorted(e.title for e in feedparser.parse(out / rel).entries)


def _fill(where: Path, leave: int) -> Path:
    """A file not ours that leaves about `leave` bytes free on the filesystem."""
    st = os.statvfs(where)
    filler = where / "filler.bin"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
    return filler


# -- disk full -------------------------------------------------------------------------


def test_disk_full_keeps_old_feeds_exit_3_then_recovers(tmp_path: Path, capsys: Any) -> None:
    config = _site(tmp_path)
    with tmpfs(tmp_path / "feeds", "4m") as out:
        code, err = _build(config, capsys)
        assert code == 0, err
        before = _snapshot(out)
        # a big new post: its body goes into 4 nodes x 3 feeds, far more than is free
        write_post(tmp_path / "posts", "big.md", "title: Big\ncategories: [A, B, C]\n"
                   "date: 2026-02-01 10:00:00", body="<p>" + "word " * 40_000 + "</p>")
        filler = _fill(out, 64 * 1024)
        code, err = _build(config, capsys)
        assert code == 3, err
        assert "No space left on device" in err and "the previous feeds are kept" in err
        assert "Traceback" not in err
        after = _snapshot(out)
        after.pop("filler.bin")
        assert after == before  # every feed byte-identical: nothing half-written
        assert not list(out.rglob(f"*{TEMP_SUFFIX}"))
        # space freed: the next build publishes everything
        filler.unlink()
        code, err = _build(config, capsys)
        assert code == 0, err
        assert "Big" in _titles(out) and "Big" in _titles(out, "a/b/c/rss.xml")
        assert not list(out.rglob(f"*{TEMP_SUFFIX}"))


def test_disk_full_under_the_state_dir_still_publishes(tmp_path: Path, capsys: Any) -> None:
    config = _site(tmp_path)
    with tmpfs(tmp_path / "state", "2m") as state:
        code, err = _build(config, capsys)
        assert code == 0, err
        for i in range(300):  # undated posts: their first-seen times must be written
            write_post(tmp_path / "posts", f"new/u{i}.md", f"title: Undated {i}\n"
                       f"categories: [A]\ndate: Invalid Date", body=f"<p>{'x' * 2000}</p>")
        filler = _fill(state, 0)
        code, err = _build(config, capsys)
        assert code in (0, 1), err
        assert "Traceback" not in err
        assert "full" in err  # "database or disk is full" / "No space left on device"
        assert len(_titles(tmp_path / "feeds")) == 310
        filler.unlink()
        code, err = _build(config, capsys)
        assert code == 0, err
        assert len(_titles(tmp_path / "feeds")) == 310


# -- read-only ---------------------------------------------------------------------------


def test_read_only_output_dir_keeps_old_feeds_exit_3(tmp_path: Path, capsys: Any) -> None:
    """chmod does not stop root, so the output dir is a tmpfs remounted read-only."""
    config = _site(tmp_path)
    with tmpfs(tmp_path / "feeds") as out:
        code, err = _build(config, capsys)
        assert code == 0, err
        before = _snapshot(out)
        write_post(tmp_path / "posts", "new.md", "title: New\ncategories: [A]\n"
                   "date: 2026-02-01 10:00:00")
        _remount(out, "ro")
        started = time.monotonic()
        code, err = _build(config, capsys)
        assert time.monotonic() - started < 20
        assert code == 3, err
        assert "Read-only file system" in err and "the previous feeds are kept" in err
        assert "Traceback" not in err
        assert _snapshot(out) == before
        _remount(out, "rw")
        code, err = _build(config, capsys)
        assert code == 0, err
        assert "New" in _titles(out)


def test_read_only_state_dir_still_publishes(tmp_path: Path, capsys: Any) -> None:
    """What the state stores is published; an undated post's first-seen time cannot be
    recorded: an error saying so and what to do (exit 1), and nothing claimed moved."""
    config = _site(tmp_path)
    with tmpfs(tmp_path / "state") as state:
        code, err = _build(config, capsys)
        assert code == 0, err
        write_post(tmp_path / "posts", "new.md", "title: New\ncategories: [A]\n"
                   "date: Invalid Date")
        _remount(state, "ro")
        code, err = _build(config, capsys)
        assert code == 1, err
        assert "Traceback" not in err
        assert "Read-only file system" in err and "make the file and its folder writable" \
            in err, err
        assert "moved to" not in err and "corrupt" not in err, err
        assert "New" in _titles(tmp_path / "feeds")
        assert len(_titles(tmp_path / "feeds")) == 11
        _remount(state, "rw")
        code, err = _build(config, capsys)
        assert code == 0, err


# -- the state file ------------------------------------------------------------------------


def _undated_site(tmp_path: Path, capsys: Any) -> tuple[Path, str]:
    config = _site(tmp_path, posts=3)
    write_post(tmp_path / "posts", "undated.md", "title: Undated\ncategories: [A]\n"
               "date: Invalid Date")
    code, err = _build(config, capsys)
    assert code == 0, err
    write_post(tmp_path / "posts", "later.md", "title: Later\ncategories: [A]")
    return config, str(tmp_path / "state" / "test.sqlite")


def _published_all(tmp_path: Path) -> None:
    assert _titles(tmp_path / "feeds") == sorted(
        ["Later", "Undated", "Post 0", "Post 1", "Post 2"])


@pytest.mark.parametrize("mode", ["exclusive", "immediate"])
def test_state_locked_by_another_process(mode: str, tmp_path: Path, capsys: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Another connection holds the state file: the build waits (shortened here), then
    publishes without it, and never mistakes the busy file for a corrupt one."""
    monkeypatch.setattr(store, "BUSY_TIMEOUT_SECONDS", 1.0)
    config, path = _undated_site(tmp_path, capsys)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        if mode == "exclusive":
            holder.execute("PRAGMA locking_mode=EXCLUSIVE")
            holder.execute("BEGIN EXCLUSIVE")
        else:
            holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO first_seen VALUES ('held', '2026-01-01T00:00:00+00:00')")
        started = time.monotonic()
        code, err = _build(config, capsys)
        assert time.monotonic() - started < 15
        assert code == 0, err
        assert "Traceback" not in err
        assert "database is locked" in err
        assert "corrupt" not in err and "moved to" not in err
        _published_all(tmp_path)
        holder.execute("COMMIT")
    finally:
        holder.close()
    # the holder's write survived: the file was never moved aside
    assert [p.name for p in (tmp_path / "state").iterdir() if ".corrupt-" in p.name] == []
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM first_seen WHERE entry_id='held'").fetchone() == (1,)
    db.close()
    code, err = _build(config, capsys)
    assert code == 0 and "locked" not in err, err


@pytest.mark.slow
def test_state_locked_with_the_real_30s_timeout(tmp_path: Path, capsys: Any) -> None:
    config, path = _undated_site(tmp_path, capsys)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO first_seen VALUES ('held', '2026-01-01T00:00:00+00:00')")
        started = time.monotonic()
        code, err = _build(config, capsys)
        seconds = time.monotonic() - started
        print(f"locked state: build took {seconds:.1f}s")
        assert code == 0 and "database is locked" in err, err
        assert seconds < store.BUSY_TIMEOUT_SECONDS * 2 + 10  # one wait, not one per post
        _published_all(tmp_path)
    finally:
        holder.close()


@pytest.mark.parametrize("garbage", [b"garbage!" * 4096, b"SQLite format 3\x00" + b"\xff" * 8192,
                                     b""])
def test_state_corrupt(garbage: bytes, tmp_path: Path, capsys: Any) -> None:
    """The state held a first-seen time: losing it is an error saying so (exit 1); a
    damaged file is kept aside. An empty file is a valid empty database to SQLite:
    only the inventory next to it tells it from a first run."""
    config, path = _undated_site(tmp_path, capsys)
    Path(path).write_bytes(garbage)
    for suffix in ("-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    code, err = _build(config, capsys)
    assert code == 1, err
    assert "Traceback" not in err
    assert "Lost: 1 first-seen time;" in err, err
    if garbage:
        assert "state file unusable" in err and "moved to" in err, err
        aside = [p for p in (tmp_path / "state").iterdir() if ".corrupt-" in p.name]
        assert len(aside) == 1 and aside[0].read_bytes() == garbage  # kept to inspect
    else:
        assert "state file was empty (0 bytes: truncated?); started a new one" in err, err
    _published_all(tmp_path)
    code, err = _build(config, capsys)
    assert code == 0 and "unusable" not in err and "Lost" not in err, err


def test_state_and_cache_corrupt_together(tmp_path: Path, capsys: Any) -> None:
    config, path = _undated_site(tmp_path, capsys)
    Path(path).write_bytes(os.urandom(20_000))
    Path(path + ".cache").write_bytes(os.urandom(20_000))
    code, err = _build(config, capsys)
    assert code == 1, err
    assert "state file unusable" in err and "build cache unusable" in err
    _published_all(tmp_path)


def test_state_deleted_between_builds(tmp_path: Path, capsys: Any) -> None:
    config, path = _undated_site(tmp_path, capsys)
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    code, err = _build(config, capsys)
    assert code == 1, err
    assert "state file was missing (deleted?); started a new one. Lost: 1 first-seen time;" in err
    _published_all(tmp_path)
    code, err = _build(config, capsys)
    assert code == 0 and "missing" not in err, err


def test_state_deleted_without_its_inventory(tmp_path: Path, capsys: Any) -> None:
    """No inventory (a state from before it existed): the build cache still tells a
    deleted state from a first run, as a warning."""
    config, path = _undated_site(tmp_path, capsys)
    for suffix in ("", "-wal", "-shm", ".inventory"):
        Path(path + suffix).unlink(missing_ok=True)
    code, err = _build(config, capsys)
    assert code == 0, err
    assert "state file was missing (deleted?); started a new one" in err
    _published_all(tmp_path)


def test_state_dir_deleted_between_builds(tmp_path: Path, capsys: Any) -> None:
    config, path = _undated_site(tmp_path, capsys)
    for p in (tmp_path / "state").iterdir():
        p.unlink()
    (tmp_path / "state").rmdir()
    code, err = _build(config, capsys)
    assert code == 0, err
    _published_all(tmp_path)

"""The state file against faults (issue 20, items 6 and 7): read-only for `fetch`,
`build` and the service's polls; truncated, deleted or damaged after it stored upstream
entries; pruned entries' pages given back. Real SQLite files, real servers on
127.0.0.1, feeds parsed back. Read-only files are read-only bind mounts (root ignores
file modes); the tests skip with a message where mounting is not permitted.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import write_post
from pytest_httpserver import HTTPServer
from test_faults import tmpfs
from upstream_support import rss, run, titles, upstream_config

from aggregator.config import load_config
from aggregator.fetch import poll_sources
from aggregator.problems import ProblemLog

XML = "application/rss+xml"


@contextmanager
def read_only_file(path: Path) -> Iterator[Path]:
    """`path` bind-mounted read-only on itself: even root cannot write it."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root; run as root (e.g. in CI's container)")
    done = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"mount not permitted here: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fetched_site(tmp: Path, httpserver: HTTPServer, capsys: Any) -> tuple[Path, Path]:
    """A local post and a source whose two entries are stored: (config, state path)."""
    httpserver.expect_request("/feed").respond_with_data(
        rss([("a1", "Alpha"), ("b2", "Beta")]), content_type=XML)
    config = upstream_config(tmp, [{"url": httpserver.url_for("/feed"), "category": "Up"}])
    write_post(tmp / "posts", "local.md", "title: Local\ndate: 2025-01-01 10:00:00")
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert titles(tmp) == ["Alpha", "Beta", "Local"]
    return config, tmp / "state" / "test.sqlite"


def _feed_requests(httpserver: HTTPServer) -> int:
    return sum(1 for request, _ in httpserver.log if request.path == "/feed")


# --- item 6: a state that cannot be written ------------------------------------------------

def test_fetch_with_a_read_only_state_publishes_what_is_stored(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    config, state = _fetched_site(tmp_path, httpserver, capsys)
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(
        rss([("a1", "Alpha"), ("b2", "Beta"), ("c3", "Gamma")]), content_type=XML)
    write_post(tmp_path / "posts", "undated.md", "title: Undated\ndate: Invalid Date")
    with read_only_file(state):
        code, err = run(config, capsys, "fetch", "--all")
        assert code == 1, err
        assert "Traceback" not in err
        line = next(x for x in err.splitlines() if "polling not done" in x)
        assert line.startswith(f"{state}: error: state file cannot be written"), line
        assert "readonly database" in line and "writable" in line, line
        assert _feed_requests(httpserver) == 0  # nothing polled that could not be kept
        assert titles(tmp_path) == ["Alpha", "Beta", "Local", "Undated"]
        # build: the undated post's first-seen time cannot be recorded
        code, err = run(config, capsys, "build")
        assert code == 1, err
        assert "Traceback" not in err and "new first-seen times are not recorded" in err, err
        assert titles(tmp_path) == ["Alpha", "Beta", "Local", "Undated"]
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert titles(tmp_path) == ["Alpha", "Beta", "Gamma", "Local", "Undated"]


def test_a_service_poll_with_a_read_only_state_fails_cleanly(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    """The service's seam (`poll_sources`): a failed poll, reported, not an exception
    (which the scheduler would log with a traceback at every poll)."""
    config_path, state = _fetched_site(tmp_path, httpserver, capsys)
    config = load_config(config_path, ProblemLog())
    with read_only_file(state):
        report = poll_sources(config, config.upstream)
        err = capsys.readouterr().err
    assert report.failed == [s.url for s in config.upstream]
    assert report.outcomes == {s.url: "failed" for s in config.upstream}
    assert "state file cannot be written" in err and "Traceback" not in err, err
    assert _feed_requests(httpserver) == 1  # the first fetch only


# --- item 7: a lost state ----------------------------------------------------------------------

def test_a_truncated_state_is_a_lost_state(tmp_path: Path, httpserver: HTTPServer,
                                           capsys: Any) -> None:
    config, state = _fetched_site(tmp_path, httpserver, capsys)
    state.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    code, err = run(config, capsys, "build")
    assert code == 1, err
    line = next(x for x in err.splitlines() if "Lost:" in x)
    assert line.startswith(f"{state}: error: state file was empty (0 bytes: truncated?)")
    assert "2 upstream entries of 1 source" in line and "aggregator fetch --all" in line
    assert titles(tmp_path) == ["Local"]  # published: the posts are all there
    code, err = run(config, capsys, "build")  # said once: the new state is the one now
    assert code == 0 and "Lost" not in err, err
    code, err = run(config, capsys, "fetch", "--all")  # the way back
    assert code == 0, err
    assert titles(tmp_path) == ["Alpha", "Beta", "Local"]


def test_an_empty_state_before_anything_was_stored_is_a_first_run(
        tmp_path: Path, capsys: Any) -> None:
    """A first run killed before its first commit leaves an empty file, and a state
    that never held entries or first-seen times loses nothing: no error."""
    config = upstream_config(tmp_path, [])
    write_post(tmp_path / "posts", "local.md", "title: Local\ndate: 2025-01-01 10:00:00")
    state = tmp_path / "state" / "test.sqlite"
    state.parent.mkdir()
    state.write_bytes(b"")  # killed before its first commit: no inventory either
    code, err = run(config, capsys, "build")
    assert code == 0 and "Lost" not in err and "was empty" not in err, err
    assert (tmp_path / "state" / "test.sqlite.inventory").exists()
    state.write_bytes(b"")  # the inventory counted nothing: nothing lost
    code, err = run(config, capsys, "build")
    assert code == 0 and "Lost" not in err and "was empty" not in err, err
    assert titles(tmp_path) == ["Local"]


def test_a_damaged_state_in_a_read_only_folder_is_not_claimed_moved(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    with tmpfs(tmp_path / "state") as folder:
        config, state = _fetched_site(tmp_path, httpserver, capsys)
        garbage = b"garbage!" * 512
        state.write_bytes(garbage)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        try:
            code, err = run(config, capsys, "build")
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        assert code == 1, err
        assert "moved to" not in err and "cannot be moved aside" in err, err
        assert "Traceback" not in err
        assert state.read_bytes() == garbage
        assert titles(tmp_path) == ["Local"]


# --- item 7: pruned entries' pages given back ------------------------------------------------

def _store_rounds(state: Path, rounds: int) -> tuple[int, int]:
    """Store `rounds` polls of 50 new 4 KB entries each into a source keeping 50;
    the file's (size, free pages) after closing."""
    from aggregator.config import UpstreamSource
    from aggregator.model import Entry
    from aggregator.state.store import StateStore
    from aggregator.state.upstream import UpstreamState

    source = UpstreamSource(url="https://up.example/feed", category=("Up",), retention=50)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for round_ in range(rounds):
        store = StateStore(state)
        entries = [Entry(id=f"urn:{round_}:{i}", title=f"T{i}",
                         link=f"https://up.example/{round_}/{i}", author=None,
                         published=now + timedelta(minutes=round_ * 100 + i),
                         updated=now + timedelta(minutes=round_ * 100 + i), category=(),
                         tags=(), html="<p>" + os.urandom(2000).hex() + "</p>", summary="",
                         image=None, source=source.url)
                   for i in range(50)]
        UpstreamState(store).store_entries(source, entries, None, None, now)
        store.close()
    db = sqlite3.connect(state)
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    assert db.execute("SELECT count(*) FROM upstream_entry").fetchone()[0] == 50
    db.close()
    return state.stat().st_size, free


def test_pruning_to_retention_gives_the_pages_back(tmp_path: Path) -> None:
    once, _ = _store_rounds(tmp_path / "once.sqlite", 1)
    size, free = _store_rounds(tmp_path / "many.sqlite", 6)
    assert free == 0
    assert size < once * 1.5, (size, once)  # as big as what it holds, not 6 times that


def test_an_older_state_is_vacuumed_once_when_it_prunes(tmp_path: Path) -> None:
    """A file made before incremental auto-vacuum: the first pruning vacuums it whole,
    which also turns the mode on."""
    state = tmp_path / "old.sqlite"
    once, _ = _store_rounds(state, 1)
    db = sqlite3.connect(state, isolation_level=None)
    db.execute("PRAGMA auto_vacuum=NONE")
    db.execute("VACUUM")
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    size, free = _store_rounds(state, 3)
    assert free == 0 and size < once * 1.5, (size, once)
    db = sqlite3.connect(state)
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    db.close()

"""Fetch workers and publishers on a PostgreSQL state, as separate processes against a
real PostgreSQL server (tests/pg_cluster.py) and a 20-host upstream on 127.0.0.2-21
(tests/multihost_upstream.py): every due source polled once, per-host limits held
across workers, the feeds equal to a SQLite build of the same stored entries; a worker
killed mid-poll, a publisher killed, the database restarted under load."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import feedparser
import pytest
from multihost_upstream import MultiHostUpstream

if TYPE_CHECKING:
    from pg_cluster import PgCluster

PER_HOST = 2


def _config(folder: Path, url: str, upstream: MultiHostUpstream | None, *,
            lease: float = 30.0, state: str | None = None) -> Path:
    """A publisher's config (with `upstream`) or a worker's (without)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ['site: {url: "https://agg.example/", title: Fleet}',
             "content: {dir: posts}", "output: {dir: out, max_items: 20}",
             state or f'state: {{url: "{url}"}}',
             f"fetch: {{allow_private_addresses: true, per_host_limit: {PER_HOST}, "
             f"concurrency: 16, lease_seconds: {lease}}}"]
    if upstream is not None:
        (folder / "posts").mkdir(exist_ok=True)
        lines.append("upstream:")
        lines += [f'  - {{url: "{u}", category: [h{n % 20}], every: 1h}}'
                  for n, u in enumerate(upstream.urls())]
    path = folder / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Proc:
    """`aggregator run` in a process of its own, its log in a file."""

    def __init__(self, config: Path, role: str, log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run", "--role", role, "-c", str(config)],
            stdout=self.handle, stderr=subprocess.STDOUT, cwd=config.parent)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        finally:
            self.handle.close()
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self.handle.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    running: list[Proc] = []
    yield running
    for proc in running:
        if proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait(10)


def _start_publisher(config: Path, tmp_path: Path, procs: list[Proc]) -> None:
    """A publisher (`procs[0]`), once it has written its sources for the workers."""
    procs.append(Proc(config, "publish", tmp_path / "pub.log"))
    _wait("the publisher wrote the sources", lambda: "written to the state database"
          in procs[0].text(), 60)


def _wait(what: str, done: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.2)


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())


def _stored(url: str) -> int:
    try:
        return int(_query(url, "SELECT count(*) FROM upstream_source WHERE last_status = 200 "
                          "AND config IS NOT NULL")[0][0])
    except Exception:  # noqa: BLE001 - not migrated yet
        return 0


def _feeds_parse(out: Path) -> int:
    count = 0
    for path in out.rglob("*.xml"):
        if path.name in ("atom.xml", "rss.xml"):
            parsed = feedparser.parse(path.read_bytes())
            assert not parsed.bozo, (path, parsed.get("bozo_exception"))
            count += 1
    return count


def test_a_role_needs_a_shared_state(tmp_path: Path) -> None:
    config = _config(tmp_path, "", None, state="state: {path: s.sqlite}")
    done = subprocess.run([sys.executable, "-m", "aggregator", "run", "--role", "fetch",
                           "-c", str(config)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert "--role fetch needs a shared state" in done.stderr


def test_two_workers_and_a_publisher_poll_each_source_once(
        tmp_path: Path, pg_url: str, procs: list[Proc]) -> None:
    with MultiHostUpstream(sources=2000, hosts=20, delay=0.01) as upstream:
        publisher = _config(tmp_path / "pub", pg_url, upstream)
        worker = _config(tmp_path / "worker", pg_url, None)
        _start_publisher(publisher, tmp_path, procs)
        procs += [Proc(worker, "fetch", tmp_path / f"w{i}.log") for i in (1, 2)]
        _wait("2,000 sources stored", lambda: _stored(pg_url) == 2000, 240)
        time.sleep(1.0)  # a poll cycle's end (release, heartbeat) reaches the database
        assert [p.stop() for p in procs[1:]] == [0, 0]
        stats = [upstream.source_stats(n) for n in range(2000)]
        assert [n for n, s in enumerate(stats) if (s.ok, s.not_modified) != (1, 0)] == []
        assert max(upstream.max_in_flight().values()) <= PER_HOST
        assert max(upstream.max_in_flight().values()) == PER_HOST  # the limit was reached
        checked = subprocess.run([sys.executable, "-m", "aggregator", "check", "--json",
                                  "-c", str(publisher)], capture_output=True, text=True,
                                 timeout=120, check=False)
        fleet = json.loads(checked.stdout)["fleet"]
        assert (fleet["sources"], fleet["due"], fleet["leases"]) == (2000, 0, [])
        assert len(fleet["workers"]) == 2, fleet["workers"]
        assert all(w["polled"] > 0 for w in fleet["workers"])
        assert sum(w["polled"] for w in fleet["workers"]) == 2000
        _wait("the publisher built the stored entries", lambda: _root_entries(
            tmp_path / "pub" / "out") == 20, 120)
        assert procs[0].stop() == 0
    # The same stored entries, published from a SQLite state: the same files.
    sqlite_dir = tmp_path / "sqlite"
    sqlite_config = _config(sqlite_dir, "", upstream, state="state: {path: s.sqlite}")
    _copy_state(pg_url, sqlite_dir / "s.sqlite", sqlite_config)
    subprocess.run([sys.executable, "-m", "aggregator", "build", "-q", "-c",
                    str(sqlite_config)], check=True, timeout=300)
    pg_build = subprocess.run([sys.executable, "-m", "aggregator", "build", "-q", "-c",
                               str(publisher)], capture_output=True, text=True, timeout=300,
                              check=False)
    assert pg_build.returncode == 0, pg_build.stderr
    ours, theirs = tmp_path / "pub" / "out", sqlite_dir / "out"
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    assert len(files) > 40
    assert files == sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    assert [f for f in files if (ours / f).read_bytes() != (theirs / f).read_bytes()] == []


def _root_entries(out: Path) -> int:
    path = out / "atom.xml"
    return len(feedparser.parse(path.read_bytes()).entries) if path.exists() else 0


def _copy_state(url: str, path: Path, config: Path) -> None:
    """The PostgreSQL state's stored entries and first-seen times, into a new SQLite
    state file (made by the program itself, so its schema is the current one)."""
    from aggregator.state.store import StateStore

    StateStore(path).close()
    db = sqlite3.connect(path)
    with db:
        for table, columns in (("first_seen", "entry_id, seen_at"),
                               ("upstream_entry", "source_url, entry_id, first_seen, "
                                "last_seen, sort_at, data"),
                               ("upstream_source", "url, etag, last_modified, last_status, "
                                "error_count, last_error, last_polled_at, next_poll_at, "
                                "disabled, moved_to")):
            rows = _query(url, f"SELECT {columns} FROM {table}")  # noqa: S608
            marks = ", ".join("?" * len(columns.split(",")))
            db.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})",  # noqa: S608
                           rows)
    db.close()


def test_a_killed_worker_s_sources_go_to_another_within_the_lease(
        tmp_path: Path, pg_url: str, procs: list[Proc]) -> None:
    lease = 3.0
    with MultiHostUpstream(sources=200, hosts=20, delay=0.3) as upstream:
        publisher = _config(tmp_path / "pub", pg_url, upstream, lease=lease)
        worker = _config(tmp_path / "worker", pg_url, None, lease=lease)
        _start_publisher(publisher, tmp_path, procs)
        first = Proc(worker, "fetch", tmp_path / "w1.log")
        procs.append(first)
        _wait("the first worker polls", lambda: sum(
            upstream.source_stats(n).ok for n in range(200)) >= 10, 60)
        first.kill()
        killed_at = time.time()
        procs.append(Proc(worker, "fetch", tmp_path / "w2.log"))
        _wait("every source stored", lambda: _stored(pg_url) == 200, 120)
        stats = [upstream.source_stats(n) for n in range(200)]
        twice = [n for n, s in enumerate(stats) if s.ok > 1]
        # Only sources of the batch the killed worker held (8 hosts: concurrency 16 /
        # per_host_limit 2; 10 sources each), fetched but not yet stored when it died,
        # are asked again, after its lease ran out, never while it lived.
        assert len(twice) <= 8 * 200 // 20, twice
        for n in twice:
            assert stats[n].times[1] >= killed_at - 0.5, (n, stats[n].times)
        assert all(s.ok >= 1 for s in stats)
        taken = [s.times[-1] for s in stats if s.times[-1] > killed_at]
        assert taken and min(taken) - killed_at <= lease + 10
        assert max(upstream.max_in_flight().values()) <= PER_HOST


def test_a_standby_publisher_takes_over_from_a_killed_one(
        tmp_path: Path, pg_url: str, procs: list[Proc]) -> None:
    with MultiHostUpstream(sources=40, hosts=20, delay=0.0) as upstream:
        publisher = _config(tmp_path / "pub", pg_url, upstream)
        worker = _config(tmp_path / "worker", pg_url, None)
        first = Proc(publisher, "publish", tmp_path / "p1.log")
        procs.append(first)
        _wait("the first publisher publishes", lambda: "service ready" in first.text(), 60)
        standby = Proc(publisher, "publish", tmp_path / "p2.log")
        procs.append(standby)
        _wait("the second stands by", lambda: "standing by" in standby.text(), 60)
        procs.append(Proc(worker, "fetch", tmp_path / "w.log"))
        _wait("entries published", lambda: _root_entries(tmp_path / "pub" / "out") == 20, 120)
        first.kill()
        killed = time.monotonic()
        _wait("the standby publishes", lambda: "service ready" in standby.text(), 30)
        took = time.monotonic() - killed
        assert took < 10, took
        assert _feeds_parse(tmp_path / "pub" / "out") > 20
        # it is the publisher now: a new post is published by it
        post = tmp_path / "pub" / "posts" / "new.md"
        post.write_text("---\ntitle: After the takeover\ndate: 2030-01-01\n---\n<p>x</p>\n")
        _wait("the new post published", lambda: "After the takeover" in (
            tmp_path / "pub" / "out" / "atom.xml").read_text(), 30)
        assert _feeds_parse(tmp_path / "pub" / "out") > 20


def test_workers_survive_a_database_restart_under_load(
        tmp_path: Path, pg_cluster: PgCluster, pg_url: str, procs: list[Proc]) -> None:
    with MultiHostUpstream(sources=400, hosts=20, delay=0.05) as upstream:
        publisher = _config(tmp_path / "pub", pg_url, upstream)
        worker = _config(tmp_path / "worker", pg_url, None)
        _start_publisher(publisher, tmp_path, procs)
        procs += [Proc(worker, "fetch", tmp_path / f"w{i}.log") for i in (1, 2)]
        _wait("polling under way", lambda: sum(
            upstream.source_stats(n).ok for n in range(400)) >= 40, 60)
        assert _stored(pg_url) < 400  # the restart comes mid-poll
        pg_cluster.restart()
        _wait("every source stored after the restart", lambda: _stored(pg_url) == 400, 180)
        assert all(p.process.poll() is None for p in procs[1:])  # the workers lived on
        said = procs[1].text() + procs[2].text()
        assert "state database" in said or "reconnecting" in said, said
        stored = _query(pg_url, "SELECT count(*) FROM upstream_entry")[0][0]
        assert stored == 400 * 3
        assert max(upstream.max_in_flight().values()) <= PER_HOST


def test_a_fetch_worker_serves_its_own_metrics(tmp_path: Path, pg_url: str,
                                               procs: list[Proc]) -> None:
    import urllib.request

    from pg_cluster import free_port

    with MultiHostUpstream(sources=30, hosts=20, delay=0.0) as upstream:
        publisher = _config(tmp_path / "pub", pg_url, upstream)
        _start_publisher(publisher, tmp_path, procs)
        port = free_port()
        worker = _config(tmp_path / "worker", pg_url, None)
        with worker.open("a") as config:
            config.write(f"serve: {{host: 127.0.0.1, port: {port}}}\n")
        procs.append(Proc(worker, "fetch", tmp_path / "w.log"))
        _wait("every source stored", lambda: _stored(pg_url) == 30, 60)

        def get(path: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return str(r.read().decode())

        _wait("the polls counted", lambda: 'aggregator_polls_total{outcome="fetched"} 30.0'
              in get("/metrics"), 30)
        assert json.loads(get("/healthz"))["ok"] is True

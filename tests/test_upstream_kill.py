"""A poll killed half-way, then re-run, loses nothing and duplicates nothing.

Two ways: a real `aggregator fetch` subprocess SIGKILLed while one source hangs (five
sources already stored), and an exception injected in the middle of storing a source
(its transaction must roll back whole).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from upstream_support import published, rss, run, upstream_config

import aggregator.state.upstream as upstream_state

SOURCES = [f"/s{n}.xml" for n in range(6)]
HANG = "/s5.xml"


def _feed(path: str) -> bytes:
    n = path[2:].removesuffix(".xml")  # ("/s12.xml": 12)
    return rss([(f"https://e.example/{n}/{i}", f"S{n}-{i}") for i in range(3)])


class _Server:
    def __init__(self) -> None:
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == HANG and not owner.release.is_set():
                    owner.release.wait(30)
                body = _feed(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()


def _check_complete(tmp: Path) -> None:
    ids = Counter(e.id for e in published(tmp).entries)
    assert len(ids) == 18 and set(ids.values()) == {1}
    db = sqlite3.connect(tmp / "state" / "test.sqlite")
    assert db.execute("SELECT count(*), count(DISTINCT entry_id) FROM upstream_entry"
                      ).fetchone() == (18, 18)


def test_subprocess_killed_mid_poll(tmp_path: Path, server: _Server, capsys: Any) -> None:
    config = upstream_config(tmp_path, [{"url": server.url(p), "category": "K"}
                                        for p in SOURCES],
                             timeout_seconds=30, deadline_seconds=60, concurrency=6,
                             per_host_limit=6)
    proc = subprocess.Popen([sys.executable, "-m", "aggregator", "fetch", "--all", "-c",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = tmp_path / "state" / "test.sqlite"
    stored = 0
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and stored < 5:
            time.sleep(0.05)
            if state.exists():
                try:
                    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
                        stored = db.execute("SELECT count(*) FROM upstream_source "
                                            "WHERE last_status = 200").fetchone()[0]
                except sqlite3.Error:
                    continue  # not migrated yet
        assert stored == 5, proc.stderr.read() if proc.poll() is not None else "too slow"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(state) as db:
        before = dict(db.execute("SELECT entry_id, first_seen FROM upstream_entry"))
    assert len(before) == 15
    server.release.set()
    code, err = run(config, capsys, "fetch")  # only the unfinished source is still due
    assert code == 0, err
    assert "polled 1 sources" in err and "3 new entries" in err
    _check_complete(tmp_path)
    with sqlite3.connect(state) as db:
        after = dict(db.execute("SELECT entry_id, first_seen FROM upstream_entry"))
    assert {k: after[k] for k in before} == before  # first-seen times untouched


def test_exception_while_storing_rolls_the_source_back(tmp_path: Path, server: _Server,
                                                       capsys: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    server.release.set()
    config = upstream_config(tmp_path, [{"url": server.url(p), "category": "K"}
                                        for p in SOURCES], concurrency=2)
    real_save = upstream_state.UpstreamState._save
    calls = 0

    def save_then_die(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # the 3rd source: its entries are written, its state is next
            raise KeyboardInterrupt("killed half-way")
        real_save(self, *args, **kwargs)

    monkeypatch.setattr(upstream_state.UpstreamState, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(config, capsys, "fetch", "--all")
    with sqlite3.connect(tmp_path / "state" / "test.sqlite") as db:
        assert db.execute("SELECT count(*) FROM upstream_entry").fetchone()[0] == 6
        assert db.execute("SELECT count(*) FROM upstream_source").fetchone()[0] == 2
    monkeypatch.setattr(upstream_state.UpstreamState, "_save", real_save)
    code, err = run(config, capsys, "fetch")
    assert code == 0, err
    assert "polled 4 sources" in err
    _check_complete(tmp_path)


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_parse_processes_exit_when_a_poll_is_killed(tmp_path: Path, server: _Server) -> None:
    """A poll of 16 sources or more parses in worker processes; SIGKILL of the poll
    never shuts them down, so they must notice their parent is gone and exit."""
    paths = [f"/s{n}.xml" for n in range(20)]
    config = upstream_config(tmp_path, [{"url": server.url(p), "category": "K"}
                                        for p in paths],
                             timeout_seconds=30, deadline_seconds=60, concurrency=20,
                             per_host_limit=20, parse_processes=2)
    proc = subprocess.Popen([sys.executable, "-m", "aggregator", "fetch", "--all", "-c",
                             str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        parsers: set[int] = set()
        while time.monotonic() < deadline and len(parsers) < 2:
            time.sleep(0.1)
            parsers = {pid for pid in _children(proc.pid) if b"spawn_main" in
                       Path(f"/proc/{pid}/cmdline").read_bytes()}
        assert len(parsers) == 2, "no parse processes started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in parsers):
            time.sleep(0.1)
        left = [pid for pid in parsers if _alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert left == []
    finally:
        proc.kill()
        proc.wait()
        server.release.set()


def test_a_parse_process_that_dies_costs_only_its_feeds(tmp_path: Path,
                                                       server: _Server) -> None:
    """A parse process killed mid-poll (out of memory, a crash in a parser) breaks its
    pool: the feeds it held fail, and the poll goes on with a new pool for the feeds
    fetched after (here HANG, held back by the server until the kill)."""
    from aggregator.config import load_config
    from aggregator.fetch import poll_sources

    paths = [f"/s{n}.xml" for n in range(20)]
    config = load_config(upstream_config(
        tmp_path, [{"url": server.url(p), "category": "K"} for p in paths],
        timeout_seconds=30, deadline_seconds=60, concurrency=4, per_host_limit=4,
        parse_processes=2))
    before = _children(os.getpid())
    outcome: dict[str, Any] = {}

    def poll() -> None:
        try:
            outcome["report"] = poll_sources(config, config.upstream)
        except BaseException as exc:  # noqa: BLE001 (what the test reports)
            outcome["error"] = exc

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        state = tmp_path / "state" / "test.sqlite"
        deadline = time.monotonic() + 30
        stored = 0
        while time.monotonic() < deadline and stored < 19:
            time.sleep(0.1)
            if state.exists():
                with sqlite3.connect(state) as db:
                    stored = db.execute("SELECT count(DISTINCT source_url) FROM "
                                        "upstream_entry").fetchone()[0]
        assert stored == 19, "the feeds not held back were not stored"
        parsers = {pid for pid in _children(os.getpid()) - before
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}
        assert parsers
        os.kill(next(iter(parsers)), signal.SIGKILL)
        time.sleep(0.5)  # (the pool notices the death)
    finally:
        server.release.set()
        poller.join(60)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert report.fetched == 20 and not report.failed

"""`aggregator run` end to end, as a real subprocess on a temp content dir."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import feedparser
import pytest
from helpers import REPO, write_config, write_post

from aggregator.service.lock import BuildLock

ID = "tag:example.org,2026:"


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def feed(out: Path, rel: str = "") -> feedparser.FeedParserDict:
    path = out / rel / "atom.xml"
    return feedparser.parse(path.read_bytes()) if path.exists() else feedparser.parse(b"")


def ids(out: Path, rel: str = "") -> set[str]:
    return {e.get("id", "") for e in feed(out, rel).entries}


def titles(out: Path, rel: str = "") -> dict[str, str]:
    return {e.get("id", ""): e.get("title", "") for e in feed(out, rel).entries}


class Running:
    """The service subprocess, its stderr lines and its sd_notify messages."""

    def __init__(self, tmp: Path, config: Path | None = None) -> None:
        self.tmp = tmp
        self.posts = tmp / "posts"
        self.out = tmp / "feeds"
        self.config = config or write_config(tmp)
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self.lines: list[str] = []
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), WATCHDOG_USEC="1000000",
                   PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run", "-c", str(self.config)],
            cwd=tmp, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_notify, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _read_notify(self) -> None:
        while self.proc.poll() is None:
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.extend(data.decode().split("\n"))

    def builds(self) -> int:
        return sum(1 for line in self.lines if re.match(r"build #\d+ \(", line))

    def log(self) -> str:
        return "\n".join(self.lines)

    def write_config(self, **sections: object) -> None:
        write_config(self.tmp, **sections)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("svc")
    write_post(tmp / "posts", "Tech/Python/first.md", """
        title: First
        categories: [Tech, Python]
        date: 2026-01-01 10:00:00
    """)
    running = Running(tmp)
    try:
        assert wait_for(lambda: "READY=1" in running.messages, 30), running.log()
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
        running.notify.close()


def test_ready_after_first_build(svc: Running) -> None:
    assert ID + "Tech/Python/first.md" in ids(svc.out, "tech/python")
    # stderr is read by another thread than the notify socket: allow it a moment
    assert wait_for(lambda: any("first build published" in line for line in svc.lines), 2), \
        svc.log()
    assert svc.builds() >= 1
    ready = svc.messages.index("READY=1")
    assert any(m.startswith("STATUS=") for m in svc.messages[:ready + 2])
    assert wait_for(lambda: "WATCHDOG=1" in svc.messages, 3)


def test_add_post_reaches_category_and_every_ancestor(svc: Running) -> None:
    write_post(svc.posts, "Tech/Python/Async/new.md", """
        title: Brand new
        categories: [Tech, Python, Async]
        date: 2026-02-01 10:00:00
    """)
    new = ID + "Tech/Python/Async/new.md"
    for rel in ("tech/python/async", "tech/python", "tech", ""):
        assert wait_for(lambda rel=rel: new in ids(svc.out, rel), 2.0), (rel, svc.log())


def test_edit_changes_the_feed(svc: Running) -> None:
    write_post(svc.posts, "Tech/Python/Async/new.md", """
        title: Edited title
        categories: [Tech, Python, Async]
        date: 2026-02-01 10:00:00
    """)
    new = ID + "Tech/Python/Async/new.md"
    assert wait_for(lambda: titles(svc.out, "tech/python").get(new) == "Edited title", 2.0)


def test_delete_removes_the_entry_and_the_empty_category(svc: Running) -> None:
    (svc.posts / "Tech/Python/Async/new.md").unlink()
    new = ID + "Tech/Python/Async/new.md"
    assert wait_for(lambda: new not in ids(svc.out) and new not in ids(svc.out, "tech"), 2.0)
    assert wait_for(lambda: not (svc.out / "tech/python/async/atom.xml").exists(), 2.0)


def test_rename_swaps_the_entries(svc: Running) -> None:
    old, new = svc.posts / "Tech/Python/first.md", svc.posts / "Tech/Python/renamed.md"
    os.rename(old, new)
    assert wait_for(lambda: ids(svc.out, "tech/python") == {ID + "Tech/Python/renamed.md"}, 2.0)
    assert ID + "Tech/Python/first.md" not in ids(svc.out)


def test_editor_artefacts_and_other_files_do_not_rebuild(svc: Running) -> None:
    time.sleep(0.3)
    before = svc.builds()
    for name in (".#renamed.md", "renamed.md~", ".renamed.md.swp", "notes.txt"):
        (svc.posts / "Tech/Python" / name).write_text("junk", encoding="utf-8")
    time.sleep(0.5)
    assert svc.builds() == before


def test_shell_build_waits_for_the_lock(svc: Running) -> None:
    lock = BuildLock(svc.tmp / "state/test.sqlite")
    lock.acquire()
    try:
        write_post(svc.posts, "Tech/locked.md", "title: Locked\ncategories: [Tech]")
        time.sleep(0.6)
        assert ID + "Tech/locked.md" not in ids(svc.out, "tech")  # the service waits
    finally:
        lock.release()
    assert wait_for(lambda: ID + "Tech/locked.md" in ids(svc.out, "tech"), 2.0)
    # and a shell build meanwhile is fine too
    done = subprocess.run([sys.executable, "-m", "aggregator", "build", "-c", str(svc.config)],
                          cwd=svc.tmp, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr, svc.log()[-2000:])


def test_thousand_posts_copied_in_are_few_rebuilds(svc: Running, tmp_path: Path) -> None:
    staging = tmp_path / "bulk"
    for i in range(1000):
        write_post(staging, f"post-{i:04d}.md",
                   f"title: Bulk {i}\ncategories: [Bulk]\ndate: 2025-01-01 00:00:00")
    time.sleep(0.3)
    before = svc.builds()
    shutil.copytree(staging, svc.posts / "Bulk")
    want = {f"{ID}Bulk/post-{i:04d}.md" for i in range(1000)}
    assert wait_for(lambda: want <= ids(svc.out, "bulk"), 60), svc.log()[-2000:]
    time.sleep(1.5)  # let any trailing build finish before counting
    rebuilds = svc.builds() - before
    assert 1 <= rebuilds <= 6, svc.log()[-3000:]
    print(f"1,000 posts: {rebuilds} rebuilds")
    assert want <= ids(svc.out)


def test_sighup_applies_a_changed_config(svc: Running) -> None:
    svc.write_config(site={"title": "Reloaded site"})
    svc.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: feed(svc.out).feed.get("title", "").startswith("Reloaded site"),
                    10), svc.log()[-2000:]
    assert any("config reloaded" in line for line in svc.lines)


def test_sighup_with_a_broken_config_keeps_the_old_one(svc: Running) -> None:
    svc.config.write_text("site: [unclosed\n", encoding="utf-8")
    svc.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any("config reload failed" in line for line in svc.lines), 5)
    assert any("not valid YAML" in line for line in svc.lines), svc.log()[-2000:]
    # still running on the old config: a new post appears, the title is kept
    write_post(svc.posts, "Tech/after-bad-reload.md", "title: Still alive\ncategories: [Tech]")
    assert wait_for(lambda: ID + "Tech/after-bad-reload.md" in ids(svc.out, "tech"), 2.0)
    assert feed(svc.out).feed.get("title", "").startswith("Reloaded site")


def test_sigterm_exits_zero_without_temp_files(svc: Running) -> None:
    write_post(svc.posts, "Tech/last.md", "title: Last\ncategories: [Tech]")
    time.sleep(0.1)  # likely mid-build: SIGTERM must let the publish finish
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=30) == 0, svc.log()[-2000:]
    assert not list(svc.tmp.rglob("*.aggregator-tmp"))
    assert "STOPPING=1" in svc.messages
    assert feed(svc.out).entries  # a complete, parseable feed is left


def test_unusable_config_at_start_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("site: {url: not-a-url}\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "aggregator", "run", "-c", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr


RSS = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>Up</title>
<link>https://up.example/</link><description>d</description>
<item><title>From upstream</title><link>https://up.example/1</link><guid>up-1</guid>
<pubDate>Sat, 10 Jan 2026 05:10:03 GMT</pubDate><description>Hello</description></item>
</channel></rss>"""


def test_upstream_poll_then_rebuild(tmp_path: Path, httpserver: object) -> None:
    """A scheduled poll stores the upstream entry and triggers a rebuild."""
    from pytest_httpserver import HTTPServer

    assert isinstance(httpserver, HTTPServer)
    httpserver.expect_request("/feed.xml").respond_with_data(
        RSS, content_type="application/rss+xml")
    write_post(tmp_path / "posts", "Tech/a.md", "title: A\ncategories: [Tech]")
    config = write_config(tmp_path, fetch={"allow_private_addresses": True})
    text = config.read_text(encoding="utf-8") + (
        f"upstream:\n  - url: {httpserver.url_for('/feed.xml')}\n"
        f"    category: [News, Up]\n    every: 2s\n")
    config.write_text(text, encoding="utf-8")
    running = Running(tmp_path, config)
    try:
        assert wait_for(lambda: "READY=1" in running.messages, 30), running.log()
        assert wait_for(lambda: any(e.get("title") == "From upstream"
                                    for e in feed(running.out, "news/up").entries), 10), \
            running.log()[-2000:]
        # the log line follows the publish: wait for it too
        assert wait_for(lambda: any(re.match(r"build #\d+ \(poll http", line)
                                    for line in running.lines), 5), running.log()[-2000:]
    finally:
        running.proc.terminate()
        assert running.proc.wait(timeout=30) == 0
        running.notify.close()


def busy_port() -> socket.socket:
    """A port held by a listener of the test's own."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def test_busy_serve_port_at_start_exits_1_naming_the_port(tmp_path: Path) -> None:
    write_post(tmp_path / "posts", "Tech/a.md", "title: A\ncategories: [Tech]")
    with busy_port() as holder:
        port = holder.getsockname()[1]
        config = write_config(tmp_path, serve={"host": "127.0.0.1", "port": port})
        try:
            done = subprocess.run(
                [sys.executable, "-m", "aggregator", "run", "-c", str(config)], cwd=tmp_path,
                env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                timeout=30)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"still running with its port busy: {exc.stderr!r}")
    assert done.returncode == 1, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "in use" in done.stderr, done.stderr


def test_sighup_to_a_busy_port_keeps_the_old_listener(tmp_path: Path) -> None:
    from test_service_http import free_port, get

    write_post(tmp_path / "posts", "Tech/a.md", "title: A\ncategories: [Tech]")
    old_port = free_port()
    config = write_config(tmp_path, serve={"host": "127.0.0.1", "port": old_port})
    running = Running(tmp_path, config)
    try:
        assert wait_for(lambda: "READY=1" in running.messages, 30), running.log()
        assert get(old_port, "/healthz")[0] == 200
        with busy_port() as holder:
            new_port = holder.getsockname()[1]
            running.write_config(serve={"host": "127.0.0.1", "port": new_port})
            running.proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: any("still serving on" in line for line in running.lines),
                            10), running.log()[-2000:]
        line = next(line for line in running.lines if "still serving on" in line)
        assert f":{new_port}" in line and f":{old_port}/" in line, line
        assert get(old_port, "/healthz")[0] == 200
        assert get(old_port, "/tech/atom.xml")[0] == 200
    finally:
        running.proc.terminate()
        assert running.proc.wait(timeout=30) == 0, running.log()[-2000:]
        running.notify.close()

"""Service building blocks in-process: event filter, debouncer, sd_notify, build lock;
and the systemd units that run the service."""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO
from watchdog.events import (
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from aggregator.config import UpstreamSource
from aggregator.service.lock import BuildLock
from aggregator.service.notify import Notifier
from aggregator.service.scheduler import _outcomes
from aggregator.service.watcher import Debouncer, is_relevant


@pytest.mark.parametrize(("event", "relevant"), [
    (FileCreatedEvent("/c/a/post.md"), True),
    (FileModifiedEvent("/c/a/.hidden.md"), True),
    (FileDeletedEvent("/c/a/_draft.md"), True),
    (FileMovedEvent("/c/a/.post.md.swp", "/c/a/post.md"), True),  # vim's save
    (FileMovedEvent("/c/a/post.md", "/c/a/post.txt"), True),  # a post went away
    (FileCreatedEvent("/c/a/.#post.md"), False),  # emacs lock
    (FileModifiedEvent("/c/a/post.md~"), False),
    (FileModifiedEvent("/c/a/.post.md.swp"), False),
    (FileCreatedEvent("/c/a/image.png"), False),
    (FileOpenedEvent("/c/a/post.md"), False),  # our own build reading it
    (FileClosedNoWriteEvent("/c/a/post.md"), False),
    (DirModifiedEvent("/c/a"), False),
    (DirMovedEvent("/c/a", "/c/b"), True),  # folder rename moves every post in it
])
def test_event_filter(event: object, relevant: bool) -> None:
    assert is_relevant(event) is relevant  # type: ignore[arg-type]


def test_debounce_burst_is_one_fire() -> None:
    fired: list[int] = []
    debouncer = Debouncer(fired.append, quiet=0.05, max_delay=1.0)
    debouncer.start()
    try:
        for _ in range(500):
            debouncer.poke()
        time.sleep(0.3)
        assert fired == [500]
    finally:
        debouncer.stop()


def test_debounce_steady_stream_still_fires_every_max_delay() -> None:
    fired: list[float] = []
    debouncer = Debouncer(lambda n: fired.append(time.monotonic()), quiet=0.05, max_delay=0.3)
    debouncer.start()
    try:
        start = time.monotonic()
        while time.monotonic() - start < 1.0:  # never 50 ms quiet
            debouncer.poke()
            time.sleep(0.01)
        assert 2 <= len(fired) <= 5
    finally:
        debouncer.stop()


def test_notify_sends_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_seconds == 15.0
        notifier.ready("first build published")
        assert sock.recv(1024) == b"READY=1\nSTATUS=first build published"
        notifier.watchdog()
        assert sock.recv(1024) == b"WATCHDOG=1"
        notifier.close()


def test_notify_without_socket_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert not notifier.enabled and notifier.watchdog_seconds is None
    assert notifier.send("READY=1") is False


def test_build_lock_excludes_and_can_be_cancelled(tmp_path: Path) -> None:
    state = tmp_path / "state" / "s.sqlite"
    held = BuildLock(state)
    held.acquire()
    cancel = threading.Event()
    other = BuildLock(state)
    threading.Timer(0.2, cancel.set).start()
    assert other.acquire(cancel=cancel, poll=0.02) is False
    held.release()
    with BuildLock(state) as again:
        assert again.path == tmp_path / "state" / "s.sqlite.lock"


def test_poll_outcomes_are_read_loosely() -> None:
    source = UpstreamSource(url="https://a.example/f.xml", category=())

    class Result:
        outcomes = {"https://a.example/f.xml": "not_modified"}

    assert _outcomes(Result(), source) == {source.url: "not_modified"}
    assert _outcomes(None, source) == {source.url: "ok"}
    assert _outcomes({source.url: "failed"}, source) == {source.url: "failed"}

    class Report:  # the shape of fetch.poll.PollReport
        def __init__(self, failed: list[str], not_modified: int, fetched: int) -> None:
            self.due, self.failed = 1, failed
            self.not_modified, self.fetched = not_modified, fetched

    assert _outcomes(Report([source.url], 0, 0), source) == {source.url: "failed"}
    assert _outcomes(Report([], 1, 0), source) == {source.url: "not_modified"}
    assert _outcomes(Report([], 0, 1), source) == {source.url: "fetched"}


def test_poll_job_without_poll_sources_warns_once(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import sys
    import types

    from aggregator.service.metrics import ServiceStats
    from aggregator.service.scheduler import PollScheduler

    source = UpstreamSource(url="https://a.example/f.xml", category=())
    requests: list[str] = []
    scheduler = PollScheduler(lambda: None, ServiceStats(), requests.append)  # type: ignore[arg-type,return-value]
    monkeypatch.setitem(sys.modules, "aggregator.fetch", types.ModuleType("empty"))
    scheduler._poll(source)
    scheduler._poll(source)
    assert [r.message for r in caplog.records].count(
        next(r.message for r in caplog.records if "not available" in r.message)) == 1
    assert requests == []

    fake = types.ModuleType("fake")
    fake.poll_sources = lambda config, sources: {s.url: "fetched" for s in sources}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aggregator.fetch", fake)
    scheduler._poll(source)
    assert requests == [f"poll {source.url}"]
    assert scheduler.stats.health()["failing_sources"] == []


def test_one_job_per_enabled_source() -> None:
    from types import SimpleNamespace

    from aggregator.service.metrics import ServiceStats
    from aggregator.service.scheduler import PollScheduler

    config = SimpleNamespace(upstream=(
        UpstreamSource(url="https://a.example/f.xml", category=(), every_seconds=600),
        UpstreamSource(url="https://b.example/f.xml", category=(), enabled=False),
        UpstreamSource(url="https://c.example/f.xml", category=(), every_seconds=3600),
    ))
    scheduler = PollScheduler(lambda: config, ServiceStats(), lambda reason: None)  # type: ignore[arg-type,return-value]
    assert scheduler.schedule(config) == 2  # type: ignore[arg-type]
    jobs = {job.id: job for job in scheduler._scheduler.get_jobs()}
    assert set(jobs) == {"https://a.example/f.xml", "https://c.example/f.xml"}
    job = jobs["https://a.example/f.xml"]
    assert job.coalesce is True and job.max_instances == 1
    assert job.trigger.interval.total_seconds() == 600 and job.trigger.jitter == 60


# -- the systemd units -------------------------------------------------------------------

UNITS = REPO / "systemd"


def _unit(path: Path) -> dict[str, list[str]]:
    """`Section.Key` → its values in order, as systemd reads a unit file (blank lines
    and `#`/`;` comments skipped; a key may be given more than once)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return values


def _runs_the_service(path: Path) -> bool:
    words = _unit(path).get("Service.ExecStart", [""])[-1].split()
    return len(words) > 1 and words[1] == "run"


SERVICE_UNITS = [p for p in sorted(UNITS.glob("*.service")) if _runs_the_service(p)]


def test_a_unit_runs_the_service() -> None:
    assert [p.name for p in SERVICE_UNITS] == [
        "aggregator-fetch@.service", "aggregator-publish.service", "aggregator.service"]


@pytest.mark.parametrize("unit", SERVICE_UNITS, ids=lambda p: p.name)
def test_the_service_unit_leaves_descriptors_for_clients_and_for_the_rest(unit: Path) -> None:
    """Under the unit's LimitNOFILE, the HTTP server's own rule (run in a process with
    that limit) gives clients its full cap, and leaves at least as many descriptors
    for polls, builds and SQLite. systemd's default soft limit (1,024) cuts the cap to
    512 and leaves 512: a unit without the setting fails here."""
    given = _unit(unit).get("Service.LimitNOFILE")
    assert given, f"{unit.name}: no LimitNOFILE= (systemd's default soft limit is 1,024)"
    soft_text, _, hard_text = given[-1].partition(":")
    soft, hard = int(soft_text), int(hard_text or soft_text)
    assert soft <= hard

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    done = subprocess.run(
        [sys.executable, "-c", "from aggregator.service.http import MAX_CONNECTIONS, "
                               "connection_limit; print(connection_limit(), MAX_CONNECTIONS)"],
        capture_output=True, text=True, timeout=60, check=True, preexec_fn=limited)
    cap, most = map(int, done.stdout.split())
    assert cap == most, f"{unit.name}: clients capped at {cap} of {most}"
    assert soft - cap >= cap


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """Every unit as systemd reads it: no unknown key, no value it ignores. The copies
    start this checkout's `aggregator` (verify wants ExecStart's program to exist)."""
    program = Path(sys.executable).with_name("aggregator")
    if not program.exists():
        pytest.skip("no aggregator script next to the interpreter")
    copies = []
    for unit in sorted(p for p in UNITS.iterdir() if p.suffix in {".service", ".timer"}):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text(encoding="utf-8").replace(
            "/opt/aggregator/.venv/bin/aggregator", str(program)), encoding="utf-8")
        copies.append(str(copy))
    done = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr

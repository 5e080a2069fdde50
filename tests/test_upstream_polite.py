"""Politeness and the SSRF guard, against real HTTP servers on 127.0.0.1.

Retry-After (seconds and HTTP date), Cache-Control max-age / Expires, RSS <ttl>,
backoff growth, 410 Gone, 301/308 moves, the per-host limit seen by the server,
private-address refusal (the server sees no request) and `aggregator check`.
"""

from __future__ import annotations

import ipaddress
import re
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from upstream_support import rss, run, titles, upstream_config
from werkzeug import Request, Response

from aggregator.sources.upstream import guard

XML = "application/rss+xml"
GOOD = rss([("a1", "Alpha"), ("b2", "Beta")])


def _row(tmp: Path, url: str) -> dict[str, Any]:
    db = sqlite3.connect(tmp / "state" / "test.sqlite")
    db.row_factory = sqlite3.Row
    try:
        row = db.execute("SELECT * FROM upstream_source WHERE url = ?", (url,)).fetchone()
    finally:
        db.close()
    assert row is not None
    return dict(row)


def _wait(row: dict[str, Any]) -> float:
    """Seconds from the last poll to the next one."""
    return (datetime.fromisoformat(row["next_poll_at"])
            - datetime.fromisoformat(row["last_polled_at"])).total_seconds()


def _one_source(tmp: Path, server: HTTPServer, path: str = "/feed", every: str = "1m",
                **extra: Any) -> tuple[Path, str]:
    url = server.url_for(path)
    return upstream_config(tmp, [{"url": url, "category": "Up", "every": every, **extra}]), url


def test_429_retry_after_seconds(tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    config, url = _one_source(tmp_path, httpserver)
    httpserver.expect_request("/feed").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "7200"})
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 1 and f"{url}: error: HTTP 429" in err
    row = _row(tmp_path, url)
    assert row["last_status"] == 429 and row["error_count"] == 1
    assert _wait(row) >= 7200  # the every (1m) and the backoff are far below it
    # A plain fetch right after: not due, nothing asked.
    code, err = run(config, capsys, "fetch")
    assert "polled 0 sources" in err and len(httpserver.log) == 1


def test_503_retry_after_http_date(tmp_path: Path, httpserver: HTTPServer,
                                   capsys: Any) -> None:
    config, url = _one_source(tmp_path, httpserver)
    later = datetime.now(UTC) + timedelta(hours=3)
    httpserver.expect_request("/feed").respond_with_data(
        "maintenance", status=503, headers={"Retry-After": format_datetime(later, usegmt=True)})
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 1 and "HTTP 503" in err
    next_poll = datetime.fromisoformat(_row(tmp_path, url)["next_poll_at"])
    assert next_poll >= later - timedelta(seconds=2)


@pytest.mark.parametrize("kind", ["max-age", "expires"])
def test_cache_hints_are_a_floor(tmp_path: Path, httpserver: HTTPServer, capsys: Any,
                                 kind: str) -> None:
    config, url = _one_source(tmp_path, httpserver)
    headers = {"Cache-Control": "public, max-age=7200"} if kind == "max-age" else \
        {"Expires": format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)}
    httpserver.expect_request("/feed").respond_with_data(GOOD, content_type=XML,
                                                         headers=headers)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert _wait(_row(tmp_path, url)) >= 7200 - 2


def test_rss_ttl_is_a_floor(tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    config, url = _one_source(tmp_path, httpserver)
    body = GOOD.replace(b"<description>d</description>", b"<description>d</description>"
                                                         b"<ttl>180</ttl>")
    httpserver.expect_request("/feed").respond_with_data(body, content_type=XML)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert _wait(_row(tmp_path, url)) >= 3 * 3600


def test_backoff_grows_with_jitter_and_is_bounded(tmp_path: Path, httpserver: HTTPServer,
                                                  capsys: Any) -> None:
    config, url = _one_source(tmp_path, httpserver, every="60s")
    httpserver.expect_request("/feed").respond_with_data("down", status=500)
    waits = []
    for _ in range(4):
        code, err = run(config, capsys, "fetch", "--all")
        assert code == 1 and "HTTP 500" in err
        waits.append(_wait(_row(tmp_path, url)))
    # 60 s doubled per error, plus up to 25 % jitter
    for n, wait in enumerate(waits):
        assert 60 * 2 ** n <= wait <= 60 * 2 ** n * 1.25 + 1, waits
    assert _row(tmp_path, url)["error_count"] == 4

    from aggregator.config import UpstreamSource
    from aggregator.state.store import StateStore
    from aggregator.state.upstream import UpstreamState

    store = StateStore(tmp_path / "state" / "bound.sqlite")
    state, now = UpstreamState(store), datetime.now(UTC).replace(microsecond=0)
    source = UpstreamSource("https://x.example/feed", (), every_seconds=1800)
    for _ in range(40):
        state.failed(source, "HTTP 500", now, 500)
    assert state.source(source.url).next_poll_at == now + timedelta(days=1)
    store.close()


def test_410_disables_the_source(tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    config, url = _one_source(tmp_path, httpserver)
    httpserver.expect_request("/feed").respond_with_data(GOOD, content_type=XML)
    assert run(config, capsys, "fetch", "--all")[0] == 0
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data("gone", status=410)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 1
    assert re.search(rf"{re.escape(url)}: error: HTTP 410 \w+: the source is gone; "
                     r"polling stopped \(its stored entries stay published", err), err
    assert titles(tmp_path) == ["Alpha", "Beta"]  # its stored entries stay published
    assert _row(tmp_path, url)["disabled"]
    code, err = run(config, capsys, "fetch", "--all")
    assert len(httpserver.log) == 1  # never asked again
    assert f"{url}: warning: disabled:" in err and titles(tmp_path) == ["Alpha", "Beta"]
    code, err = run(config, capsys, "check")
    assert code == 1 and f"{url}: error: disabled: HTTP 410" in err


@pytest.mark.parametrize("status", [301, 308])
def test_permanent_redirect_moves_the_source(tmp_path: Path, httpserver: HTTPServer,
                                             capsys: Any, status: int) -> None:
    config, url = _one_source(tmp_path, httpserver, path="/old")
    new = httpserver.url_for("/new")
    httpserver.expect_request("/old").respond_with_data(
        "", status=status, headers={"Location": new})
    httpserver.expect_request("/new").respond_with_data(GOOD, content_type=XML)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert f"{url}: warning: moved permanently to {new}; polling that from now on" in err
    assert _row(tmp_path, url)["moved_to"] == new
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0 and "moved permanently" not in err
    paths = [request.path for request, _response in httpserver.log]
    assert paths == ["/old", "/new", "/new"]  # the second poll went straight to /new
    assert titles(tmp_path) == ["Alpha", "Beta"]
    assert "url: " + url in (tmp_path / "config.yaml").read_text()  # config untouched


def test_temporary_redirect_does_not_move(tmp_path: Path, httpserver: HTTPServer,
                                          capsys: Any) -> None:
    config, url = _one_source(tmp_path, httpserver, path="/old")
    httpserver.expect_request("/old").respond_with_data(
        "", status=302, headers={"Location": httpserver.url_for("/new")})
    httpserver.expect_request("/new").respond_with_data(GOOD, content_type=XML)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0 and "moved permanently" not in err
    assert _row(tmp_path, url)["moved_to"] is None


def test_per_host_limit_seen_by_the_server(tmp_path: Path, httpserver: HTTPServer,
                                           capsys: Any) -> None:
    lock, active, peak = threading.Lock(), [0], [0]

    def handler(request: Request) -> Response:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.25)
        with lock:
            active[0] -= 1
        return Response(GOOD, content_type=XML)

    sources = []
    for i in range(6):
        httpserver.expect_request(f"/f{i}").respond_with_handler(handler)
        sources.append({"url": httpserver.url_for(f"/f{i}"), "category": "Up"})
    config = upstream_config(tmp_path, sources)  # fetch.per_host_limit: the default, 2
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert len(httpserver.log) == 6 and peak[0] == 2


PRIVATE = re.compile(r"refused: (127\.0\.0\.1|::1) is a loopback address "
                     r"\(fetch\.allow_private_addresses is false\)")


def test_guard_refuses_private_addresses_and_sends_nothing(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    """`localhost` is a name: the refusal happens after DNS, on the resolved address."""
    httpserver.expect_request("/feed").respond_with_data(GOOD, content_type=XML)
    for host in ("localhost", "127.0.0.1"):
        url = f"http://{host}:{httpserver.port}/feed"
        config = upstream_config(tmp_path, [{"url": url, "category": "Up"}],
                                 allow_private_addresses=False)
        code, err = run(config, capsys, "fetch", "--all")
        assert code == 1
        line = next(x for x in err.splitlines() if x.startswith(f"{url}: error: "))
        assert PRIVATE.search(line), line
    assert len(httpserver.log) == 0  # no request reached the server
    # The same with the guard off: fetched.
    config = upstream_config(tmp_path, [{"url": httpserver.url_for("/feed"), "category": "Up"}],
                             allow_private_addresses=True)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert len(httpserver.log) == 1 and titles(tmp_path) == ["Alpha", "Beta"]


def test_redirect_from_an_allowed_host_to_a_private_one_is_refused(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: both servers are on 127.0.0.1; the test-only hook
    `guard.TREAT_AS_PUBLIC` makes the first one (this ip and port only) count as a
    public host. It redirects to the second server, which stays private: the redirect
    hop is checked on its own resolved address and refused before any request."""
    inner = HTTPServer(host="127.0.0.1")
    inner.start()
    try:
        inner.expect_request("/secret").respond_with_data(GOOD, content_type=XML)
        monkeypatch.setattr(guard, "TREAT_AS_PUBLIC", {("127.0.0.1", httpserver.port)})
        httpserver.expect_request("/ok").respond_with_data(GOOD, content_type=XML)
        httpserver.expect_request("/jump").respond_with_data(
            "", status=302, headers={"Location": f"http://localhost:{inner.port}/secret"})
        ok, jump = httpserver.url_for("/ok"), httpserver.url_for("/jump")
        config = upstream_config(tmp_path, [{"url": ok, "category": "Ok"},
                                            {"url": jump, "category": "Jump"}],
                                 allow_private_addresses=False)
        code, err = run(config, capsys, "fetch", "--all")
        assert code == 1
        assert f"{ok}: error" not in err  # the "public" host itself is fetched
        line = next(x for x in err.splitlines() if x.startswith(f"{jump}: error: "))
        assert PRIVATE.search(line), line
        assert len(inner.log) == 0
        assert sorted(r.path for r, _ in httpserver.log) == ["/jump", "/ok"]
    finally:
        inner.clear()
        inner.stop()


@pytest.mark.parametrize("address,refused", [
    ("127.0.0.1", True), ("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True),
    ("169.254.169.254", True), ("100.64.0.1", True), ("0.0.0.0", True), ("224.0.0.1", True),
    ("240.0.0.1", True), ("255.255.255.255", True), ("::1", True), ("::", True),
    ("fe80::1", True), ("fc00::1", True), ("ff02::1", True), ("::ffff:127.0.0.1", True),
    ("::ffff:10.0.0.1", True), ("::ffff:8.8.8.8", False), ("8.8.8.8", False),
    ("2002:7f00:1::1", True), ("64:ff9b::a9fe:a9fe", True), ("64:ff9b::808:808", False),
    ("2001:db8::1", True),
    ("93.184.216.34", False), ("2606:4700:4700::1111", False),
])
def test_address_classes(address: str, refused: bool) -> None:
    assert guard.is_refused(ipaddress.ip_address(address)) is refused


def test_check_lists_source_state_and_failing_sources(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    config, url = _one_source(tmp_path, httpserver, every="60s")
    code, err = run(config, capsys, "check")
    assert code == 0 and f"source {url}: never polled" in err
    httpserver.expect_request("/feed").respond_with_data("down", status=500)
    run(config, capsys, "fetch", "--all")
    code, err = run(config, capsys, "check")
    assert code == 0, err  # one error is not "failing" yet
    assert re.search(rf"source {re.escape(url)}: last status 500, 1 errors in a row, "
                     r"last error: HTTP 500 INTERNAL SERVER ERROR, next poll 20\d\d-", err), err
    run(config, capsys, "fetch", "--all")
    run(config, capsys, "fetch", "--all")
    code, err = run(config, capsys, "check")
    assert code == 1
    assert f"{url}: error: failing: 3 errors in a row; last: HTTP 500" in err
    assert "1 sources failing" in err


def test_hint_parsing() -> None:
    from aggregator.sources.upstream.politeness import cache_floor, retry_after, ttl_floor

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after({"retry-after": "120"}, now) == timedelta(seconds=120)
    assert retry_after({"retry-after": "Thu, 01 Jan 2026 01:00:00 GMT"}, now) == \
        timedelta(hours=1)
    assert retry_after({"retry-after": "Wed, 31 Dec 2025 23:00:00 GMT"}, now) == timedelta(0)
    assert retry_after({"retry-after": "soon"}, now) is None
    assert retry_after({"retry-after": "99999999"}, now) == timedelta(days=7)
    assert cache_floor({"cache-control": "max-age=60, s-maxage=5"}, now) == \
        timedelta(seconds=60)
    assert cache_floor({"cache-control": "no-cache, max-age=600"}, now) is None
    assert cache_floor({"cache-control": "max-age=31536000"}, now) == timedelta(days=1)
    assert cache_floor({"expires": "0"}, now) is None
    assert ttl_floor("60") == timedelta(hours=1) and ttl_floor("x") is None
    assert ttl_floor("0") is None

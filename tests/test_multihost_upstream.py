"""The many-host test upstream (tests/multihost_upstream.py) answers and counts truly:
304s to its ETags, concurrency per host, changed feeds."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Iterator

import feedparser
import pytest
from multihost_upstream import MultiHostUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[MultiHostUpstream]:
    with MultiHostUpstream(sources=60) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_counts(upstream: MultiHostUpstream) -> None:
    upstream.delay = 0.0
    upstream.reset_stats()


def get(url: str, etag: str | None = None) -> tuple[int, str | None, bytes]:
    """(status, ETag, body) of one GET on a connection of its own."""
    rest = url.removeprefix("http://")
    hostport, path = rest.split("/", 1)
    host, port = hostport.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/" + path, headers={"If-None-Match": etag} if etag else {})
        response = conn.getresponse()
        return response.status, response.getheader("ETag"), response.read()
    finally:
        conn.close()


def test_every_host_serves_its_sources_with_304s(upstream: MultiHostUpstream) -> None:
    assert len(set(upstream.hosts)) == 20 and upstream.hosts[0] == "127.0.0.2"
    assert {url.split("/")[2] for url in upstream.urls()} == {
        f"{host}:{upstream.port}" for host in upstream.hosts}
    for n in (0, 19, 20, 59):
        status, etag, body = get(upstream.url(n))
        assert status == 200 and etag == upstream.etag(n)
        parsed = feedparser.parse(body)
        assert not parsed.bozo and parsed.version == "rss20"
        assert [e.id for e in parsed.entries] == [f"urn:multihost:{n}:{k}" for k in (2, 1, 0)]
        assert get(upstream.url(n), etag)[:2] == (304, etag)
        assert get(upstream.url(n), f'W/"x", W/{etag}')[0] == 304
        assert get(upstream.url(n), '"stale"')[0] == 200
        stats = upstream.source_stats(n)
        assert (stats.ok, stats.not_modified, len(stats.times)) == (2, 2, 4)
        assert stats.times == sorted(stats.times) and time.time() - stats.times[0] < 30
    # a source asked of another host than its own is not there
    assert get(upstream.url(1).replace(upstream.host_of(1), upstream.host_of(2)))[0] == 404
    assert upstream.host_requests()[upstream.host_of(0)] == 8


def test_in_flight_maximum_per_host(upstream: MultiHostUpstream) -> None:
    upstream.delay = 0.5
    # sources 0, 20, 40 live on 127.0.0.2; 1 and 21 on 127.0.0.3
    urls = [upstream.url(n) for n in (0, 20, 40, 1, 21)]
    threads = [threading.Thread(target=get, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    in_flight = upstream.max_in_flight()
    assert in_flight["127.0.0.2"] == 3 and in_flight["127.0.0.3"] == 2
    assert sum(in_flight.values()) == 5
    # one after the other: never more than one at once, each counted once answered
    upstream.reset_stats()
    upstream.delay = 0.0
    for i in range(30):
        get(upstream.url(5))
        assert upstream.source_stats(5).ok == i + 1
    assert upstream.max_in_flight()[upstream.host_of(5)] == 1


def test_change_gives_a_new_item_and_etag(upstream: MultiHostUpstream) -> None:
    _status, old_etag, _body = get(upstream.url(33))
    new_etag = upstream.change(33)
    assert new_etag != old_etag and upstream.etag(33) == new_etag
    status, etag, body = get(upstream.url(33), old_etag)
    assert (status, etag) == (200, new_etag)
    ids = [e.id for e in feedparser.parse(body).entries]
    assert ids[0] == "urn:multihost:33:3" and len(ids) == 4
    assert get(upstream.url(33), new_etag)[0] == 304
    assert get(upstream.url(34), upstream.etag(34))[0] == 304  # the others unchanged


def test_a_client_gone_mid_answer_is_counted_quietly(upstream: MultiHostUpstream,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """A killed fetcher's request: counted (the upstream did answer it), no traceback."""
    upstream.delay = 0.2
    with socket.create_connection((upstream.host_of(3), upstream.port), timeout=5) as conn:
        conn.sendall(b"GET /feed/3.xml HTTP/1.1\r\nHost: upstream\r\n\r\n")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 10
    while upstream.source_stats(3).ok == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.1)  # the failed send and its handling
    assert "Traceback" not in capfd.readouterr().err

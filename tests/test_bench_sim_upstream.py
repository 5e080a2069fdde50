"""The benchmark's simulated upstream (bench/sim_upstream.py) runs: feeds on many hosts,
304s and changes as its rule says, counts at /stats and in the file at SIGTERM."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import feedparser
import yaml
from helpers import REPO, bench_module, write_config

from aggregator.config import load_config

SCRIPT = REPO / "bench" / "sim_upstream.py"


sim = bench_module("sim_upstream")


@contextmanager
def running(*args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The server started with `args`, its port; SIGTERM and a wait at the end."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        found = re.fullmatch(r"listening http://127\.1\.0\.1:(\d+)/ hosts=\d+ sources=\d+\n",
                             line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield proc, int(found.group(1))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


class Client:
    """One keep-alive connection a host, as a fetcher would hold them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections: dict[str, http.client.HTTPConnection] = {}

    def get(self, host: str, path: str,
            etag: str | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = self.connections.get(host)
        if conn is None:
            conn = self.connections[host] = http.client.HTTPConnection(host, self.port,
                                                                       timeout=10)
        conn.request("GET", path, headers={"If-None-Match": etag} if etag else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()


def test_answers_follow_the_rule_and_are_counted(tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    sources, hosts = 200, 5
    with running("--sources", str(sources), "--hosts", str(hosts), "--bucket", "0.4",
                 "--stats", str(stats_file)) as (proc, port):
        client = Client(port)
        addresses = [sim.host_address(i) for i in range(hosts)]
        assert addresses == ["127.1.0.1", "127.1.0.2", "127.1.0.3", "127.1.0.4", "127.1.0.5"]
        first: dict[int, tuple[int, str]] = {}
        for n in range(sources):
            status, headers, body = client.get(addresses[n % hosts], f"/feed/{n}.xml")
            assert status == 200
            bucket = int(headers["X-Sim-Bucket"])
            assert headers["ETag"] == sim.etag_of(n, sim.version(n, bucket, 0.1))
            first[n] = bucket, headers["ETag"]
            if n in (0, 7):
                parsed = feedparser.parse(body)
                assert not parsed.bozo and parsed.version == "rss20"
                assert len(parsed.entries) in (4, 5)
        time.sleep(0.5)  # a bucket or more later: ~10% changed a bucket
        answered: Counter[int] = Counter()
        for n in range(sources):
            status, headers, body = client.get(addresses[n % hosts], f"/feed/{n}.xml",
                                               first[n][1])
            bucket = int(headers["X-Sim-Bucket"])
            now = sim.version(n, bucket, 0.1)
            same = now == sim.version(n, first[n][0], 0.1)
            assert (status, headers["ETag"]) == (304 if same else 200, sim.etag_of(n, now))
            if status == 200:
                ids = [e.id for e in feedparser.parse(body).entries]
                assert ids[0] == f"sim:{n}:v{now}" and len(ids) == 5
            answered[status] += 1
        assert answered[200] > 0 and answered[304] > answered[200]
        # a source asked of a host it does not live on is not there
        assert client.get(addresses[1], "/feed/0.xml")[0] == 404
        status, _headers, body = client.get(addresses[3], "/stats")
        live = json.loads(body)
        assert status == 200 and live["requests"] == 2 * sources + 1
        client.close()
    assert proc.returncode == 0
    final = json.loads(stats_file.read_text())
    assert final["requests"] == 2 * sources + 1 and final["conditional"] == sources
    assert final["status"] == {"200": sources + answered[200], "304": answered[304],
                               "404": 1}
    assert set(final["per_host"]) == set(addresses)
    assert [h["requests"] for h in final["per_host"].values()] == [80, 81, 80, 80, 80]
    assert all(h["max_in_flight"] == 1 for h in final["per_host"].values())


def test_the_change_rate_is_kept() -> None:
    """About 10% of (source, bucket) pairs change, none in bucket 0, the same each run."""
    pairs = [(n, b) for n in range(2000) for b in range(1, 11)]
    share = sum(sim.changed(n, b, 0.1) for n, b in pairs) / len(pairs)
    assert 0.09 < share < 0.11
    assert not any(sim.changed(n, 0, 0.1) for n in range(1000))
    assert sim.version(5, 0, 0.1) == 0
    last = max((b for b in range(1, 50) if sim.changed(5, b, 0.1)), default=0)
    assert sim.version(5, 49, 0.1) == last


def test_in_flight_per_host_with_a_delay(tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    with running("--sources", "20", "--hosts", "2", "--delay", "0.4",
                 "--stats", str(stats_file)) as (_proc, port):
        # sources 0, 2, 4, 6 on 127.1.0.1; 1 and 3 on 127.1.0.2: all at once
        asked = [(sim.host_address(n % 2), f"/feed/{n}.xml") for n in (0, 2, 4, 6, 1, 3)]
        threads = [threading.Thread(target=lambda a=a: Client(port).get(*a)) for a in asked]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    per_host = json.loads(stats_file.read_text())["per_host"]
    assert per_host["127.1.0.1"]["max_in_flight"] == 4
    assert per_host["127.1.0.2"]["max_in_flight"] == 2


def test_write_config_lists_every_source(tmp_path: Path) -> None:
    listing = tmp_path / "upstream.yaml"
    subprocess.run([sys.executable, str(SCRIPT), "--sources", "30", "--hosts", "4",
                    "--port", "8123", "--write-config", str(listing), "--config-only"],
                   check=True, timeout=60)
    upstream = yaml.safe_load(listing.read_text(encoding="utf-8"))["upstream"]
    assert len(upstream) == 30
    assert upstream[5] == {"url": "http://127.1.0.2:8123/feed/5.xml",
                           "category": ["Sim 5", "Group 05"], "every": "5m"}
    # the project's own config reader takes it
    config_path = write_config(tmp_path, fetch={"allow_private_addresses": True})
    with open(config_path, "a", encoding="utf-8") as out:
        out.write(listing.read_text(encoding="utf-8"))
    (tmp_path / "posts").mkdir()
    config = load_config(config_path)
    assert [s.url for s in config.upstream][:2] == ["http://127.1.0.1:8123/feed/0.xml",
                                                    "http://127.1.0.2:8123/feed/1.xml"]
    assert {s.every_seconds for s in config.upstream} == {300}
    assert config.upstream[13].category == ("Sim 3", "Group 13")


def test_config_only_needs_a_port() -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), "--config-only", "--port", "0",
                          "--write-config", "x.yaml"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "a --port other than 0" in run.stderr

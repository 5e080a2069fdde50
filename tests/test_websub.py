"""WebSub: rel="hub" links in every feed, and a ping per hub for every feed whose bytes
changed, sent by `fetch` and by the service to real hubs on 127.0.0.1 (never by
`build`); a dead hub delays nothing and its pings are sent once it is back."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from helpers import ATOM, write_config, write_post
from lxml import etree
from test_service import Running, wait_for

from aggregator.cli import main

SITE = "https://example.org/feeds/"


class Hub:
    """A WebSub hub on 127.0.0.1 that accepts every publish notice (202) and keeps
    each one's form fields."""

    def __init__(self, port: int = 0) -> None:
        self.pings: list[dict[str, list[str]]] = []
        lock = threading.Lock()
        pings = self.pings

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode("ascii"))
                with lock:
                    pings.append(form)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hub"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def topics(self) -> Counter[str]:
        """How many publish notices each feed URL got."""
        assert all(p["hub.mode"] == ["publish"] for p in self.pings)
        return Counter(url for p in self.pings for url in p["hub.url"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hubs() -> Iterator[list[Hub]]:
    made = [Hub(), Hub()]
    yield made
    for hub in made:
        hub.close()


def _site(tmp_path: Path, hub_urls: list[str], **websub: object) -> Path:
    for i in range(6):
        write_post(tmp_path / "posts", f"p{i}.md", f"""
            title: Post {i}
            categories: [{'Alpha' if i % 2 else 'Beta'}, Sub{i % 3}]
            date: 2026-01-{i + 1:02d} 08:00:00
        """)
    return write_config(tmp_path, websub={"hubs": hub_urls, **websub})


def _feeds(out: Path) -> set[str]:
    return {SITE + p.relative_to(out).as_posix() for p in out.rglob("*")
            if p.name in ("atom.xml", "rss.xml", "feed.json")}


def _run(*args: str) -> int:
    return main(["--log-level", "warning", *args])


def test_every_feed_links_each_hub(tmp_path: Path, hubs: list[Hub]) -> None:
    config = _site(tmp_path, [h.url for h in hubs])
    assert _run("build", "-c", str(config)) == 0
    for path in (tmp_path / "feeds").rglob("*.xml"):
        tree = etree.parse(str(path))
        if path.name == "atom.xml":
            links = tree.getroot().findall(f"{ATOM}link")
        else:
            links = tree.getroot().find("channel").findall(f"{ATOM}link")
        assert [link.get("href") for link in links if link.get("rel") == "hub"] == \
            [h.url for h in hubs], path
        assert [link.get("href") for link in links if link.get("rel") == "self"] == \
            [SITE + path.relative_to(tmp_path / "feeds").as_posix()]
    for path in (tmp_path / "feeds").rglob("feed.json"):  # JSON Feed's `hubs`
        assert json.loads(path.read_bytes())["hubs"] == [
            {"type": "WebSub", "url": h.url} for h in hubs], path


def test_one_ping_per_changed_feed_per_publish(tmp_path: Path, hubs: list[Hub]) -> None:
    config = _site(tmp_path, [h.url for h in hubs])
    assert _run("build", "-c", str(config)) == 0
    assert all(not hub.pings for hub in hubs)  # build never uses the network
    assert _run("fetch", "-c", str(config)) == 0
    everything = _feeds(tmp_path / "feeds")
    assert len(everything) == 3 * 9  # root, 2 categories, 3 sub-categories each
    for hub in hubs:
        assert hub.topics() == Counter(everything)  # each once: the first build's files

    for hub in hubs:
        hub.pings.clear()
    post = tmp_path / "posts/p1.md"  # Alpha / Sub1
    post.write_text(post.read_text().replace("Body", "Edited"))
    assert _run("fetch", "-c", str(config)) == 0
    changed = {SITE + folder + name for folder in ("", "alpha/", "alpha/sub1/")
               for name in ("atom.xml", "rss.xml", "feed.json")}
    for hub in hubs:
        assert hub.topics() == Counter(changed)

    for hub in hubs:
        hub.pings.clear()
    assert _run("fetch", "-c", str(config)) == 0  # nothing changed: no ping
    assert _run("build", "-c", str(config)) == 0
    assert _run("fetch", "-c", str(config)) == 0
    assert all(not hub.pings for hub in hubs)


def _dead_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()  # nothing listens: connections are refused
    return port


def test_a_dead_hub_keeps_its_pings_for_the_next_fetch(
        tmp_path: Path, hubs: list[Hub], capsys: pytest.CaptureFixture[str]) -> None:
    port = _dead_port()
    dead = f"http://127.0.0.1:{port}/hub"
    config = _site(tmp_path, [dead, hubs[0].url])
    started = time.monotonic()
    assert main(["fetch", "-c", str(config), "--json"]) == 0  # a hub is not a source
    assert time.monotonic() - started < 10
    report = json.loads(capsys.readouterr().out)
    everything = _feeds(tmp_path / "feeds")
    assert report["websub"]["sent"] == len(everything)
    assert report["websub"]["failed"] == len(everything)
    assert hubs[0].topics() == Counter(everything)  # the live hub is not held up

    assert main(["check", "-c", str(config), "--json"]) == 1
    shown = {h["hub"]: h for h in json.loads(capsys.readouterr().out)["websub"]}
    assert shown[dead]["waiting"] == len(everything) and shown[dead]["failed"] > 0
    assert "ConnectError" in shown[dead]["last_error"]
    assert shown[hubs[0].url]["waiting"] == 0

    back = Hub(port)  # the hub is back: the next fetch sends what waited, once
    try:
        assert _run("fetch", "-c", str(config)) == 0
        assert back.topics() == Counter(everything)
        assert len(hubs[0].pings) == len(everything)  # nothing new for the live one
        assert _run("fetch", "-c", str(config)) == 0
        assert back.topics() == Counter(everything)
    finally:
        back.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_service_pings_off_the_build_path_and_retries(
        tmp_path: Path, hubs: list[Hub]) -> None:
    """A hub that accepts connections and never answers: builds go on at their
    pace, the live hub gets its pings; once the silent hub is a working one, the
    retries deliver its pings, each feed once."""
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # never accepted: every request waits for its timeout
    port = silent.getsockname()[1]
    serve = _free_port()
    config = _site(tmp_path, [f"http://127.0.0.1:{port}/hub", hubs[0].url],
                   timeout_seconds=8, retry_seconds=0.2)
    text = config.read_text() + f"serve:\n  host: 127.0.0.1\n  port: {serve}\n"
    config.write_text(text)
    svc = Running(tmp_path, config)
    back: Hub | None = None
    try:
        everything = {SITE + rel for rel in ("atom.xml", "rss.xml")}
        assert wait_for(lambda: (tmp_path / "feeds/atom.xml").exists(), 20)
        assert wait_for(lambda: set(hubs[0].topics()) >= everything, 10)
        write_post(tmp_path / "posts", "new.md", "title: New\ncategories: [Beta]\n"
                                                 "date: 2026-02-01 08:00:00")
        built = time.monotonic()
        assert wait_for(lambda: b"New" in (tmp_path / "feeds/beta/atom.xml").read_bytes(), 10)
        assert time.monotonic() - built < 6  # not held up by the silent hub's timeout
        # the live hub's pings are not held up by the silent hub's round either
        assert wait_for(lambda: hubs[0].topics()[SITE + "beta/atom.xml"] == 2, 10)
        assert time.monotonic() - built < 6
        silent.close()
        back = Hub(port)
        all_feeds = _feeds(tmp_path / "feeds")
        assert wait_for(lambda: set(back.topics()) == all_feeds, 30)
        time.sleep(1)  # a few more retry rounds: nothing is sent twice
        assert back.topics() == Counter(all_feeds)
        with urllib.request.urlopen(f"http://127.0.0.1:{serve}/metrics") as answer:
            metrics = answer.read().decode()
        assert 'aggregator_websub_pings_total{outcome="sent"}' in metrics
        assert "aggregator_websub_pings_waiting 0.0" in metrics
    finally:
        svc.proc.send_signal(signal.SIGTERM)
        svc.proc.wait(30)
        svc.notify.close()
        silent.close()
        if back is not None:
            back.close()

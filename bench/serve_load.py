"""Load figures for `serve:`: two builds of the server side by side, under wrk.

    python bench/serve_load.py --other /tmp/aggregator-main   # this checkout vs another
    python bench/serve_load.py                                 # this checkout alone

Each server (aggregator.service.http.HTTPService from each checkout) runs in a child
process of its own on the same output dir: 50-entry feeds built from 200 generated
posts. The scenarios, run alternately on each server so both see the same machine:

- `304`: conditional GETs of /atom.xml (If-None-Match with the current ETag);
- `gzip 200`: GETs of /atom.xml with Accept-Encoding: gzip;

both with `wrk -t2 -c200 -d<seconds>s` (200 connections held open); and the
server process's RSS and thread count with 1,000 idle connections open to it (measured
first, on fresh processes). Needs
`wrk` (Debian: apt-get install wrk). Not part of the test suite: figures on a shared
2-core machine are noisy; compare servers within one run.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVE = """
import signal, sys, threading
from pathlib import Path
from aggregator.service.http import HTTPService
from aggregator.service.metrics import ServiceStats
stats = ServiceStats()
stats.record_build(True, 0.1, 1, 1)
root = Path(sys.argv[1])
service = HTTPService("127.0.0.1", 0, lambda: root, stats)
service.start()
print(service.address[1], flush=True)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
done.wait()
service.stop()
"""
WORDS = ("feed reader poll entry category atom channel publish content summary author "
         "update link title date server client cache gzip header request response").split()


def make_site(tmp: Path) -> Path:
    rng = random.Random(7)
    for i in range(200):
        body = "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(80)) for _ in range(4))
        post = tmp / "posts" / f"Tech/p{i:03d}.md"
        post.parent.mkdir(parents=True, exist_ok=True)
        post.write_text(f"---\ntitle: Post {i}\ncategories: [Tech]\n"
                        f"date: 2026-01-01 {i % 24:02d}:{i % 60:02d}:00\n---\n{body}\n",
                        encoding="utf-8")
    config = tmp / "config.yaml"
    config.write_text(
        "site: {url: 'https://example.org/', title: Bench, timezone: UTC,\n"
        "       post_url: 'https://example.org/{path}/'}\n"
        "content: {dir: posts}\noutput: {dir: feeds, max_items: 50}\n"
        "images: {probe: false}\nstate: {path: state/bench.sqlite}\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "aggregator", "build", "-c", str(config)],
                   cwd=tmp, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True,
                   stdout=subprocess.DEVNULL)
    return tmp / "feeds"


class Server:
    def __init__(self, name: str, checkout: Path, root: Path) -> None:
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE, str(root)],
                                     env=dict(os.environ, PYTHONPATH=str(checkout)),
                                     cwd=checkout, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        # cwd too: `python -c` puts the working dir first on sys.path
        # (stderr: a server may print a traceback for each client wrk drops)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/atom.xml"

    def status(self, field: str) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text(encoding="utf-8")
        match = re.search(rf"^{field}:\s+(\d+)", text, re.M)
        assert match is not None
        return int(match.group(1))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wrk(url: str, seconds: int, *headers: str) -> tuple[float, str]:
    """Requests/s and wrk's error counts (socket errors, non-2xx/3xx answers)."""
    args = ["wrk", "-t2", "-c200", f"-d{seconds}s"]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match is not None, out
    errors = re.findall(r"Socket errors: .*|Non-2xx or 3xx responses: \d+", out)
    return float(match.group(1)), "; ".join(errors)


def idle_memory(server: Server, count: int) -> tuple[int, int, int]:
    """(RSS KiB before, RSS KiB with `count` idle connections, threads with them)."""
    before = server.status("VmRSS")
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    try:
        time.sleep(2.0)
        return before, server.status("VmRSS"), server.status("Threads")
    finally:
        for sock in sockets:
            sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="another checkout to compare with")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = make_site(Path(tmp))
        servers = [Server("this", REPO, root)]
        if args.other:
            servers.insert(0, Server(args.other.name, args.other, root))
        try:
            etag = urllib.request.urlopen(servers[-1].url).headers["ETag"]
            print(f"/atom.xml: {(root / 'atom.xml').stat().st_size} bytes, ETag {etag}")
            for server in servers:  # first, on fresh processes
                before, after, threads = idle_memory(server, args.idle)
                print(f"{args.idle} idle     {server.name:20} RSS {before / 1024:.1f} -> "
                      f"{after / 1024:.1f} MiB, {threads} threads")
            for name, headers in (("304", [f"If-None-Match: {etag}"]),
                                  ("gzip 200", ["Accept-Encoding: gzip"])):
                for rnd in range(args.rounds):
                    for server in servers:
                        rps, errors = wrk(server.url, args.seconds, *headers)
                        print(f"{name:9} round {rnd + 1} {server.name:20} {rps:10.0f} req/s"
                              f"  {errors}")
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

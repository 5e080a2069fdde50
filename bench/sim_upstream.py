"""Simulated upstream for the 100,000-source benchmark: many hosts, feeds made on the fly.

    python bench/sim_upstream.py --sources 100000 --hosts 1000 --port 8700 --stats out.json
    python bench/sim_upstream.py --sources 100000 --hosts 1000 --port 8700 \\
        --write-config upstream.yaml --config-only       # the config's list, no server

One process, asyncio, one listening socket on each of `--hosts` loopback addresses
(127.1.X.Y: host i is 127.1.(i // 254).(i % 254 + 1); all of 127/8 is loopback on
Linux), the same port on all. Source n lives on host n % hosts at
`http://127.1.X.Y:PORT/feed/<n>.xml`. The first stdout line is
`listening http://127.1.0.1:PORT/ hosts=H sources=N` (flushed), so a caller learns the
port (`--port 0`: one free on every address).

What a source answers, reproducibly: time since the server's start is cut into buckets
of `--bucket` seconds (default 300). In each bucket b >= 1 source n changes or not, a
pure function of (n, b): `changed(n, b)` is true for a `--change-rate` share (default
0.1) of pairs. The source's version in bucket b is the last bucket <= b in which it
changed (0 when none); its ETag is `"<n>.<version>"`. A GET whose If-None-Match names
the current ETag gets 304; any other GET gets 200 with the feed of that version: RSS 2.0,
four standing items plus, from version 1 on, the version's own new item (~1.5 KB). So a
client polling each source once a bucket sees about 90% 304s and 10% changed feeds.
Every response carries `X-Sim-Bucket: b`, so a check can recompute what it was owed.

Counted per host: requests, responses by status, conditional requests, and the most
requests answered at once (`max_in_flight`; `--delay` seconds slept before each answer
makes overlap visible). GET /stats on any address returns them as JSON (not counted);
at SIGTERM or SIGINT they are written to `--stats FILE` and the process exits 0.

`--write-config FILE` writes the config's `upstream:` list for these sources (url,
category [Sim <n % 10>, Group <n % 100>], every: 5m); with `--port 0` it is written once
the port is known. The fetcher must allow private addresses
(`fetch: {allow_private_addresses: true}`) to poll 127.1.X.Y.

The listening sockets need file descriptors: the soft RLIMIT_NOFILE is raised to the
hard one; when even that is short of the hosts (plus a margin), the server says so and
exits 2, and when it leaves little room for connections it says how many it can hold.
Not part of the test suite (tests/test_bench_sim_upstream.py starts a small one).
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hashlib
import json
import os
import resource
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

FIRST_OCTETS = "127.1"
PER_THIRD_OCTET = 254  # .1 … .254 of each 127.1.X
EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: the standing items' dates
IDLE_TIMEOUT_S = 60.0  # an idle keep-alive connection is closed after this
HEAD_LIMIT = 16 * 1024  # bytes of request line and headers accepted
FD_MARGIN = 64  # descriptors kept for stdio, the stats file, the event loop
MAX_SCAN = 100_000  # buckets looked back for the last change (a run of ~1 year at 5m)


def host_address(i: int) -> str:
    return f"{FIRST_OCTETS}.{i // PER_THIRD_OCTET}.{i % PER_THIRD_OCTET + 1}"


def changed(n: int, bucket: int, rate: float) -> bool:
    """Whether source n changes in `bucket` (never in bucket 0): a hash of both, so the
    same pair gives the same answer in every run."""
    if bucket <= 0:
        return False
    digest = hashlib.blake2b(f"{n}:{bucket}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def version(n: int, bucket: int, rate: float) -> int:
    """The last bucket <= `bucket` in which source n changed; 0 when none."""
    for b in range(bucket, max(0, bucket - MAX_SCAN), -1):
        if changed(n, b, rate):
            return b
    return 0


def etag_of(n: int, ver: int) -> str:
    return f'"{n}.{ver}"'


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match's weak comparison: `*`, or any listed tag equal to etag sans W/."""
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def feed_body(n: int, ver: int, base: str, bucket_s: float, started: float) -> bytes:
    """Source n's RSS 2.0 document at version `ver`: the newest item first."""
    items = []
    if ver > 0:
        date = email.utils.formatdate(started + ver * bucket_s, usegmt=True)
        items.append(_item(n, f"v{ver}", f"Update {ver} of source {n}", date, base))
    for k in range(3, -1, -1):
        date = email.utils.formatdate(EPOCH + k * 86_400 + n % 86_400, usegmt=True)
        items.append(_item(n, f"base{k}", f"Standing item {k} of source {n}", date, base))
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
            f"<title>Simulated source {n}</title><link>{base}</link>"
            f"<description>Source {n} of the simulated upstream</description>"
            + "".join(items) + "</channel></rss>\n").encode()


def _item(n: int, key: str, title: str, date: str, base: str) -> str:
    return (f"<item><title>{title}</title><link>{base}post/{n}/{key}</link>"
            f'<guid isPermaLink="false">sim:{n}:{key}</guid><pubDate>{date}</pubDate>'
            f"<description>&lt;p&gt;{title}: a paragraph of simulated text, long enough "
            f"to look like a summary.&lt;/p&gt;</description></item>")


@dataclass
class HostStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    conditional: int = 0
    status: Counter[int] = field(default_factory=Counter)


@dataclass
class Simulation:
    """The sources, the clock and the counters of one server process."""

    sources: int
    hosts: list[str]
    port: int
    bucket_s: float
    rate: float
    delay_s: float
    started_wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    stats: list[HostStats] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stats = [HostStats() for _ in self.hosts]

    def bucket(self) -> int:
        return int((time.monotonic() - self.started) // self.bucket_s)

    def answer(self, host: int, path: str,
               if_none_match: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) of a GET of `path` on host number `host`."""
        bucket = self.bucket()
        headers = [("X-Sim-Bucket", str(bucket))]
        n = self._source(host, path)
        if n is None:
            return 404, headers + [("Content-Type", "text/plain")], b"not found\n"
        ver = version(n, bucket, self.rate)
        etag = etag_of(n, ver)
        headers.append(("ETag", etag))
        if if_none_match is not None and etag_matches(if_none_match, etag):
            return 304, headers, b""
        body = feed_body(n, ver, f"http://{self.hosts[host]}:{self.port}/", self.bucket_s,
                         self.started_wall)
        return 200, headers + [("Content-Type", "application/rss+xml; charset=utf-8")], body

    def _source(self, host: int, path: str) -> int | None:
        """n of /feed/<n>.xml when source n lives on this host, else None."""
        if not (path.startswith("/feed/") and path.endswith(".xml")):
            return None
        number = path[len("/feed/"):-len(".xml")]
        if not number.isdigit() or len(number) > 9:
            return None
        n = int(number)
        return n if n < self.sources and n % len(self.hosts) == host else None

    def snapshot(self) -> dict[str, Any]:
        totals: Counter[int] = Counter()
        for s in self.stats:
            totals.update(s.status)
        return {
            "sources": self.sources, "hosts": len(self.hosts), "port": self.port,
            "bucket_s": self.bucket_s, "change_rate": self.rate, "delay_s": self.delay_s,
            "seconds": round(time.monotonic() - self.started, 3),
            "requests": sum(s.requests for s in self.stats),
            "conditional": sum(s.conditional for s in self.stats),
            "status": {str(code): count for code, count in sorted(totals.items())},
            "max_in_flight": max((s.max_in_flight for s in self.stats), default=0),
            "per_host": {
                address: {"requests": s.requests, "conditional": s.conditional,
                          "max_in_flight": s.max_in_flight,
                          "status": {str(c): k for c, k in sorted(s.status.items())}}
                for address, s in zip(self.hosts, self.stats, strict=True)},
        }


class BadRequest(Exception):
    pass


def parse_head(raw: bytes) -> tuple[str, str, str, dict[str, str]]:
    """(method, path, HTTP version, lower-cased headers) of a request head."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(lines[0][:80])
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest(line[:80])
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], parts[2], headers


REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed"}


def response(status: int, headers: list[tuple[str, str]], body: bytes, length: int,
             keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS[status]}", "Server: sim-upstream/1",
             *(f"{name}: {value}" for name, value in headers)]
    if status != 304:
        lines.append(f"Content-Length: {length}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def serve_connection(sim: Simulation, host: int, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """Answer the requests of one connection in order until it closes or idles."""
    stats = sim.stats[host]
    try:
        while True:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                    ConnectionError):
                return
            try:
                method, path, http_version, headers = parse_head(raw)
            except BadRequest:
                writer.write(response(400, [], b"", 0, False))
                await writer.drain()
                return
            keep_alive = (headers.get("connection", "").lower() != "close"
                          if http_version == "HTTP/1.1"
                          else headers.get("connection", "").lower() == "keep-alive")
            if path == "/stats":
                body = json.dumps(sim.snapshot()).encode()
                writer.write(response(200, [("Content-Type", "application/json")], body,
                                      len(body), keep_alive))
            elif method not in ("GET", "HEAD") or "content-length" in headers \
                    or "transfer-encoding" in headers:
                writer.write(response(405, [("Allow", "GET, HEAD")], b"", 0, False))
                await writer.drain()
                return
            else:
                await _counted(sim, stats, host, method, path, headers, keep_alive, writer)
            await writer.drain()
            if not keep_alive:
                return
    except ConnectionError:
        return
    finally:
        writer.close()


async def _counted(sim: Simulation, stats: HostStats, host: int, method: str, path: str,
                   headers: dict[str, str], keep_alive: bool,
                   writer: asyncio.StreamWriter) -> None:
    """One feed request, counted in flight from its head's arrival to its answer's end."""
    stats.requests += 1
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    inm = headers.get("if-none-match")
    if inm is not None or "if-modified-since" in headers:
        stats.conditional += 1
    try:
        if sim.delay_s > 0:
            await asyncio.sleep(sim.delay_s)
        status, extra, body = sim.answer(host, path, inm)
        stats.status[status] += 1
        writer.write(response(status, extra, b"" if method == "HEAD" else body, len(body),
                              keep_alive))
        await writer.drain()
    finally:
        stats.in_flight -= 1


def raise_file_limit(hosts: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard one; the limit now. Exits 2 when it cannot hold
    the listening sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            print(f"sim_upstream: cannot raise the open-file limit from {soft} to {hard} "
                  f"({error}); going on with {soft}", file=sys.stderr)
    if soft != resource.RLIM_INFINITY and soft < hosts + FD_MARGIN:
        sys.exit(f"sim_upstream: the open-file limit ({soft}) is too low for {hosts} "
                 f"listening sockets; raise it (ulimit -n, as root) or pass fewer --hosts")
    room = soft - hosts - FD_MARGIN if soft != resource.RLIM_INFINITY else None
    if room is not None and room < 4 * hosts:
        print(f"sim_upstream: the open-file limit ({soft}) leaves room for {room} client "
              f"connections at once; more are refused", file=sys.stderr)
    return soft


def bind_all(addresses: list[str], port: int) -> list[socket.socket]:
    """A listening socket on every address at `port` (0: a port free on all of them)."""
    last: OSError | None = None
    for _attempt in range(20 if port == 0 else 1):
        sockets: list[socket.socket] = []
        chosen = port
        try:
            for address in addresses:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, chosen))
                sock.listen(1024)
                sock.setblocking(False)
                chosen = sock.getsockname()[1]
            return sockets
        except OSError as error:
            for sock in sockets:
                sock.close()
            last = error
    sys.exit(f"sim_upstream: cannot listen on {addresses[0]} … {addresses[-1]} "
             f"port {port}: {last}")


def write_config(path: Path, sources: int, hosts: list[str], port: int, every: str) -> None:
    """The config's `upstream:` list for every source (JSON strings are YAML scalars)."""
    lines = [f"# bench/sim_upstream.py: {sources} sources on {len(hosts)} hosts "
             f"({hosts[0]} … {hosts[-1]}), port {port}", "upstream:"]
    for n in range(sources):
        url = f"http://{hosts[n % len(hosts)]}:{port}/feed/{n}.xml"
        category = [f"Sim {n % 10}", f"Group {n % 100:02d}"]
        lines += [f"  - url: {url}", f"    category: {json.dumps(category)}",
                  f"    every: {every}"]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_stats(path: Path, sim: Simulation) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sim.snapshot(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


async def serve(sim: Simulation, sockets: list[socket.socket], stats_path: Path | None) -> None:
    servers = [await asyncio.start_server(partial(serve_connection, sim, i), sock=sock,
                                          limit=HEAD_LIMIT)
               for i, sock in enumerate(sockets)]
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(f"listening http://{sim.hosts[0]}:{sim.port}/ hosts={len(sim.hosts)} "
          f"sources={sim.sources}", flush=True)
    await done.wait()
    for server in servers:
        server.close()
    if stats_path is not None:
        write_stats(stats_path, sim)
    snapshot = sim.snapshot()
    print(f"sim_upstream: {snapshot['requests']} requests, status {snapshot['status']}, "
          f"max in flight on a host {snapshot['max_in_flight']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=100_000)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--port", type=int, default=0, help="0: one free on every address")
    parser.add_argument("--stats", type=Path, help="write the counts here as JSON at exit")
    parser.add_argument("--write-config", type=Path, metavar="FILE",
                        help="write the config's upstream: list for the sources here")
    parser.add_argument("--config-only", action="store_true",
                        help="write --write-config and exit (needs a --port other than 0)")
    parser.add_argument("--every", default="5m", help="each source's `every:` (default 5m)")
    parser.add_argument("--bucket", type=float, default=300.0,
                        help="seconds a time bucket lasts (default 300)")
    parser.add_argument("--change-rate", type=float, default=0.1,
                        help="share of sources changing in each bucket (default 0.1)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds slept before each feed answer (default 0)")
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= PER_THIRD_OCTET * 256:
        parser.error(f"--hosts must be within 1..{PER_THIRD_OCTET * 256}")
    if args.sources < 1 or args.bucket <= 0 or not 0 <= args.change_rate <= 1:
        parser.error("--sources >= 1, --bucket > 0 and 0 <= --change-rate <= 1")
    hosts = [host_address(i) for i in range(args.hosts)]
    if args.config_only:
        if args.write_config is None or args.port == 0:
            parser.error("--config-only needs --write-config and a --port other than 0")
        write_config(args.write_config, args.sources, hosts, args.port, args.every)
        return 0
    raise_file_limit(args.hosts)
    sockets = bind_all(hosts, args.port)
    port = sockets[0].getsockname()[1]
    if args.write_config is not None:
        write_config(args.write_config, args.sources, hosts, port, args.every)
    sim = Simulation(args.sources, hosts, port, args.bucket, args.change_rate, args.delay)
    asyncio.run(serve(sim, sockets, args.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())

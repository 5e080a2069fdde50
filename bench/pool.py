"""Benchmark: our connection pool (connections.py) against httpcore's ConnectionPool.

    python bench/pool.py --sources 1000 --runs 5 --origins 4

Serves ../shared/bench/make_upstream's feeds with ../shared/bench/serve_upstream on
127.0.0.1 (one server per origin, each on its own port), then has the Fetcher (the
same one `aggregator fetch` uses: guarded backend, deadline, redirects, decoding) get
every source from `--threads` threads, first unconditionally (200s with bodies), then
with the ETags it got (304s). Each run times both pools, in alternating order, in this
one process; the CPU time is this process's (the servers are other processes). Prints
each run and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpcore

from aggregator.sources.upstream.guard import GuardedBackend, guarded_pool
from aggregator.sources.upstream.http import Fetcher, Limits

SHARED_BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"


class HttpcorePool:
    """httpcore's ConnectionPool behind our pool's `stream` call, with the same backend,
    TLS context, idle bound and keep-alive expiry as guard.guarded_pool gives ours."""

    def __init__(self, concurrency: int) -> None:
        ours = guarded_pool(concurrency, allow_private=True)
        self.pool = httpcore.ConnectionPool(
            ssl_context=ours._ssl_context, max_connections=None,
            max_keepalive_connections=concurrency,
            keepalive_expiry=5.0, network_backend=GuardedBackend(check=False))

    @contextmanager
    def stream(self, method: bytes, url: httpcore.URL, headers: list[tuple[bytes, bytes]],
               extensions: dict[str, Any]) -> Iterator[httpcore.Response]:
        with self.pool.stream(method, url, headers=headers, extensions=extensions) as resp:
            yield resp

    def close(self) -> None:
        self.pool.close()


def poll(fetcher: Fetcher, urls: list[str], etags: dict[str, str], threads: int
         ) -> tuple[float, float, dict[int, int]]:
    """(wall s, CPU s, responses by status) of getting every URL once."""
    def one(url: str) -> tuple[str, int, str | None]:
        resp = fetcher.get(url, etag=etags.get(url))
        return url, resp.status, resp.headers.get("etag")

    wall, cpu = time.perf_counter(), time.process_time()
    statuses: dict[int, int] = {}
    with ThreadPoolExecutor(threads) as pool:
        for url, status, etag in pool.map(one, urls):
            statuses[status] = statuses.get(status, 0) + 1
            if etag:
                etags[url] = etag
    return time.perf_counter() - wall, time.process_time() - cpu, statuses


def start_servers(folder: Path, origins: int) -> tuple[list[subprocess.Popen[str]], list[int]]:
    servers, ports = [], []
    for _ in range(origins):
        server = subprocess.Popen([sys.executable, str(SHARED_BENCH / "serve_upstream"),
                                   str(folder), "--port", "0", "--seconds", "3600", "--quiet"],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        line = server.stdout.readline()  # `listening http://127.0.0.1:PORT`
        servers.append(server)
        ports.append(int(line.rsplit(":", 1)[1]))
    return servers, ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=16)  # fetch.concurrency's default
    parser.add_argument("--origins", type=int, default=1)
    parser.add_argument("--work", type=Path, help="keep the feeds here (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pool-"))
    folder = work / f"upstream-{args.sources}x{args.entries}"
    if not folder.is_dir():
        subprocess.run([sys.executable, str(SHARED_BENCH / "make_upstream"), str(folder),
                        "--sources", str(args.sources), "--entries", str(args.entries)],
                       check=True, stdout=subprocess.DEVNULL)
    names = sorted(p.name for p in folder.iterdir() if p.suffix != ".yaml")[:args.sources]
    servers, ports = start_servers(folder, args.origins)
    urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/{name}" for i, name in enumerate(names)]
    limits = Limits(per_host=args.threads, concurrency=args.threads, allow_private=True)
    pools: dict[str, Any] = {"ours": lambda: guarded_pool(args.threads, allow_private=True),
                             "httpcore": lambda: HttpcorePool(args.threads)}
    figures: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in pools}
    try:
        for run in range(args.runs):
            order = list(pools) if run % 2 == 0 else list(reversed(pools))
            for kind in order:
                with Fetcher(limits) as fetcher:
                    fetcher.pool = pools[kind]()
                    etags: dict[str, str] = {}
                    first = poll(fetcher, urls, etags, args.threads)
                    again = poll(fetcher, urls, etags, args.threads)
                assert first[2] == {200: len(urls)} and again[2] == {304: len(urls)}, \
                    (kind, first[2], again[2])
                figures[kind].append((first[0], first[1], again[0], again[1]))
                print(f"run {run + 1} {kind:9} 200s: {first[0]:6.3f} s wall {first[1]:6.3f} s "
                      f"CPU   304s: {again[0]:6.3f} s wall {again[1]:6.3f} s CPU", flush=True)
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    print(f"medians of {args.runs} runs, {len(urls)} sources, {args.threads} threads, "
          f"{args.origins} origin(s):")
    for kind, rows in figures.items():
        med = [statistics.median(row[i] for row in rows) for i in range(4)]
        print(f"  {kind:9} 200s: {med[0]:6.3f} s wall {med[1]:6.3f} s CPU   "
              f"304s: {med[2]:6.3f} s wall {med[3]:6.3f} s CPU")


if __name__ == "__main__":
    main()

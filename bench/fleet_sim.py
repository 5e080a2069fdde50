"""Fetch workers on a PostgreSQL state against a simulated upstream of many sources.

    python bench/fleet_sim.py --sources 100000 --hosts 1000 --minutes 10 --workers 1 2 4

For each worker count, in turn: a fresh PostgreSQL cluster (tests/pg_cluster.py, with
fsync on and pg_stat_statements loaded), bench/sim_upstream.py serving the sources
(~90 % of conditional answers 304, ~10 % a small changed feed a bucket of `every`), the
sources written to the database as a publisher does (state/fleet.publish_sources; no
publisher runs, so no build competes for the cores), then N `aggregator run --role
fetch` processes for the given minutes. Measured over the run:

- polls/s: the upstream's answered requests / seconds (and each worker's own count);
- lateness against the schedule, from the sources' rows sampled every few seconds: a
  poll's lateness is when it was stored minus when it was due (the first poll of
  every source is due at the start: that round is reported apart from the later ones);
- statements/s and transactions/s on the database (pg_stat_statements, pg_stat_database);
- CPU seconds of the workers (with their parse processes), of PostgreSQL and of the
  upstream, from /proc, to say which runs out of cores;
- the most requests any host answered at once (the per-host limit is 2).

Not part of the test suite (it takes minutes); docs/scaling.md has its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from pg_cluster import PgCluster  # noqa: E402

PER_HOST = 2
SAMPLE_SECONDS = 5.0
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Lateness:
    """Polls seen between samples, each with how late it was (seconds)."""

    first: list[float] = field(default_factory=list)
    later: list[float] = field(default_factory=list)


def _seconds(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def sample_lateness(url: str, started: float, stop: threading.Event, out: Lateness) -> None:
    import psycopg

    seen: dict[str, tuple[str | None, str | None]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute("SELECT url, last_polled_at, next_poll_at FROM "
                                "upstream_source WHERE config IS NOT NULL").fetchall()
            for source, polled, due in rows:
                before = seen.get(source)
                if polled is not None and (before is None or before[0] != polled):
                    at = _seconds(polled)
                    assert at is not None
                    if before is None or before[0] is None:
                        out.first.append(at - started)
                    else:
                        was_due = _seconds(before[1])
                        if was_due is not None:
                            out.later.append(at - was_due)
                seen[source] = (polled, due)
            if stop.wait(SAMPLE_SECONDS):
                return


def cpu_seconds(pids: set[int]) -> float:
    """utime + stime of these processes and their children, alive now."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def tree(root: int) -> set[int]:
    """`root` and its descendants now."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += parents.get(pid, [])
    return found


def user_processes(user: str) -> set[int]:
    uid = pwd.getpwnam(user).pw_uid if os.geteuid() == 0 else os.getuid()
    return {int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _owner(p) == uid}


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


class CpuMeter:
    """CPU seconds used since the last look, per group; processes are remembered so
    parse processes and database backends started meanwhile are counted too."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}
        self.used: dict[str, float] = {}

    def look(self, groups: dict[str, set[int]]) -> None:
        for name, pids in groups.items():
            for pid in pids:
                now = cpu_seconds({pid})
                before = self.last.get(pid)
                if before is not None:
                    self.used[name] = self.used.get(name, 0.0) + max(0.0, now - before)
                elif name != "_":
                    self.used.setdefault(name, 0.0)
                self.last[pid] = now


def stats_of(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.1.0.1:{port}/stats", timeout=30) as answer:
        data: dict[str, Any] = json.loads(answer.read())
        return data


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(workers: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import psycopg

    from aggregator.config import load_config
    from aggregator.state.fleet import publish_sources
    from aggregator.state.postgres import PostgresStateStore

    work.mkdir(parents=True, exist_ok=True)
    cluster = PgCluster.create()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(cluster.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("fsync = on\nfull_page_writes = on\nshared_buffers = 128MB\n"
                       "shared_preload_libraries = 'pg_stat_statements'\n"
                       "max_connections = 300\n")
        cluster.restart()
        url = cluster.create_database()
        sim_log = (work / "sim.log").open("w")
        sim = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "sim_upstream.py"), "--sources",
             str(args.sources), "--hosts", str(args.hosts), "--port", "0", "--stats",
             str(work / "sim-stats.json"), "--write-config", str(work / "upstream.yaml"),
             "--every", f"{args.every}s", "--bucket", str(args.every)],
            stdout=subprocess.PIPE, stderr=sim_log)
        procs.append(sim)
        assert sim.stdout is not None
        port = int(sim.stdout.readline().decode().split(":")[2].split("/")[0])
        fetch = (f"fetch: {{allow_private_addresses: true, per_host_limit: {PER_HOST}, "
                 f"concurrency: {args.concurrency}}}")
        (work / "worker.yaml").write_text(f'state: {{url: "{url}"}}\n{fetch}\n')
        (work / "publisher.yaml").write_text(
            f'site: {{url: "https://sim.example/"}}\nstate: {{url: "{url}"}}\n{fetch}\n'
            + (work / "upstream.yaml").read_text())
        store = PostgresStateStore(url)
        written = publish_sources(store.db, load_config(work / "publisher.yaml"))
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
            before_db = conn.execute("SELECT xact_commit + xact_rollback FROM "
                                     "pg_stat_database WHERE datname = current_database()"
                                     ).fetchone()
        started = time.time()
        lateness = Lateness()
        stop = threading.Event()
        sampler = threading.Thread(target=sample_lateness, args=(url, started, stop, lateness))
        sampler.start()
        logs = [(work / f"worker{i}.log").open("w") for i in range(workers)]
        for i in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "aggregator", "run", "--role", "fetch", "-c",
                 str(work / "worker.yaml")], stdout=logs[i], stderr=subprocess.STDOUT,
                cwd=work))
        meter = CpuMeter()
        end = started + args.minutes * 60
        while time.time() < end:
            meter.look({"workers": set().union(*(tree(p.pid) for p in procs[1:])),
                        "postgresql": user_processes("postgres"), "upstream": {sim.pid}})
            time.sleep(min(2.0, max(0.0, end - time.time())))
        meter.look({"workers": set().union(*(tree(p.pid) for p in procs[1:])),
                    "postgresql": user_processes("postgres"), "upstream": {sim.pid}})
        seconds = time.time() - started
        upstream = stats_of(port)
        with psycopg.connect(url, autocommit=True) as conn:
            statements = conn.execute("SELECT sum(calls) FROM pg_stat_statements "
                                      "WHERE dbid = (SELECT oid FROM pg_database WHERE "
                                      "datname = current_database())").fetchone()
            after_db = conn.execute("SELECT xact_commit + xact_rollback FROM "
                                    "pg_stat_database WHERE datname = current_database()"
                                    ).fetchone()
            per_worker = conn.execute("SELECT name, polled, fetched, failed FROM "
                                      "fetch_worker ORDER BY name").fetchall()
        stop.set()
        sampler.join()
        for proc in procs[1:]:
            proc.send_signal(signal.SIGTERM)
        for proc in procs[1:]:
            proc.wait(120)
        polls = int(upstream["requests"])
        return {
            "workers": workers, "sources": written, "hosts": args.hosts,
            "every_s": args.every, "seconds": round(seconds, 1),
            "polls": polls, "polls_per_s": round(polls / seconds, 1),
            "status": upstream["status"],
            "max_in_flight_a_host": upstream["max_in_flight"],
            "per_worker_polled": [int(row[1]) for row in per_worker],
            "first_round": {"polls": len(lateness.first),
                            "p50_s": round(percentile(lateness.first, 0.5), 1),
                            "p99_s": round(percentile(lateness.first, 0.99), 1)},
            "later": {"polls": len(lateness.later),
                      "p50_s": round(percentile(lateness.later, 0.5), 1),
                      "p99_s": round(percentile(lateness.later, 0.99), 1),
                      "mean_s": round(statistics.fmean(lateness.later), 1)
                      if lateness.later else None},
            "statements_per_s": round(float(statements[0] or 0) / seconds, 1),
            "transactions_per_s": round((after_db[0] - before_db[0]) / seconds, 1),
            "cpu_s": {name: round(value, 1) for name, value in meter.used.items()},
            "cores_busy": {name: round(value / seconds, 2)
                           for name, value in meter.used.items()},
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=100_000)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=int, default=300, help="seconds (default 300: 5m)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=16,
                        help="each worker's fetch.concurrency (default 16)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fleet-sim"))
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = []
    for count in args.workers:
        result = run(count, args, args.work / f"w{count}")
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: time the build, rebuild and poll scenarios; print a table (or --json).

    python bench/run.py --posts 1000 10000            # build scenarios
    python bench/run.py --posts 10000 --service       # + one edit seen by `aggregator run`
    python bench/run.py --posts --upstream 1000       # first poll and re-poll only
    python bench/run.py --posts 200 --json            # the smoke run the tests use

Every scenario runs `python -m aggregator …` as a child process and reads its wall
time, CPU time and peak RSS from os.wait4, so the figures are the CLI's own. The
corpus comes from ../shared/bench/make_corpus (real posts cycled; 600 leaves) or,
without ../shared, from a generator of ours. Not part of the test suite: timings on
a shared 2-core machine are noisy; run it on a quiet machine, more than once.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "bench"


@dataclass
class Result:
    scenario: str
    posts: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    posts_per_s: float
    feeds: int
    bytes_written: int
    note: str = ""
    # How fast the machine was just before this corpus's scenarios (see machine_speed):
    # a shared machine's speed drifts by 2x from hour to hour, these tell which hour.
    machine_python_s: float = 0.0
    machine_stat_us: float = 0.0


def make_corpus(folder: Path, posts: int) -> None:
    if folder.is_dir() and any(folder.iterdir()):
        return
    tool = SHARED_BENCH / "make_corpus"
    if tool.exists():
        subprocess.run([sys.executable, str(tool), str(folder), "--posts", str(posts)],
                       check=True, stdout=subprocess.DEVNULL)
        return
    _generate(folder, posts)


def _generate(folder: Path, posts: int) -> None:
    """Our own stand-in corpus: ~2.5 KB HTML posts, 3-level categories, 600 leaves."""
    rng = random.Random(20240101)
    paragraph = "<p>Lorem <b>ipsum</b> dolor sit amet, <a href='/x'>consectetur</a>.</p>"
    for i in range(posts):
        leaf = i % 600
        cats = [f"Top {leaf % 12}", f"Mid {leaf % 60}", f"Leaf {leaf}"]
        path = folder / cats[0] / cats[1] / f"post {i:06d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = 1_600_000_000 + rng.randrange(100_000_000)
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(stamp))
        body = "<div>" + paragraph * 30 + f"<img src='https://img.example/{i}.jpg'></div>"
        path.write_text(f"\n---\ntitle: 'Post {i}'\ncategories:\n"
                        + "".join(f" - '{c}'\n" for c in cats)
                        + f"date: {date}\n---\n\n{body}", encoding="utf-8")


def write_config(site: Path, content: Path, max_items: int, extra: str = "") -> Path:
    config = site / "config.yaml"
    config.write_text(
        "site: {url: 'http://127.0.0.1:8080/', title: Bench, timezone: UTC}\n"
        f"content: {{dir: '{content}'}}\n"
        f"output: {{dir: feeds, max_items: {max_items}}}\n"
        "images: {probe: false}\n"
        "state: {path: state/bench.sqlite}\n" + extra, encoding="utf-8")
    return config


def precompile() -> None:
    """Byte-compile the package first, as `pip install` does: a source checkout run with
    PYTHONDONTWRITEBYTECODE set (as on our dev machines) compiled ~40 modules in every
    child, 0.1–0.2 s that no installed copy pays."""
    import aggregator

    compileall.compile_dir(Path(aggregator.__file__).parent, quiet=1)


def run_cli(args: list[str], timeout: float = 3600) -> tuple[float, float, float, str]:
    """(wall s, cpu s, peak RSS MB, stderr) of one `python -m aggregator` run."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "aggregator", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    # 1 means "some inputs skipped", but an uncaught exception exits 1 too
    if proc.returncode not in (0, 1) or "Traceback (most recent call last)" in err:
        raise RuntimeError(f"aggregator {' '.join(args)} exited {proc.returncode}:\n{err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, err


def machine_speed(corpus: Path) -> tuple[float, float]:
    """(seconds of a fixed pure-Python loop, microseconds a file of a bare scandir +
    lstat walk of `corpus`), each the best of three. The first scales the per-post
    work of a cold build, the second the walk that bounds a no-op and an edit: compare
    runs by these before comparing their timings."""
    def python_loop() -> None:
        seen: dict[str, int] = {}
        for i in range(300_000):
            key = f"post {i % 5000}"
            seen[key] = seen.get(key, 0) + len(key.split(" "))

    def stat_walk(folder: str) -> int:
        count = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                entry.stat(follow_symlinks=False)
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    count += stat_walk(entry.path)
        return count

    loop = walk = float("inf")
    files = 1
    for _ in range(3):
        started = time.perf_counter()
        python_loop()
        loop = min(loop, time.perf_counter() - started)
        started = time.perf_counter()
        files = max(1, stat_walk(str(corpus)))
        walk = min(walk, time.perf_counter() - started)
    return round(loop, 3), round(walk / files * 1e6, 2)


def output_size(out: Path) -> tuple[int, int]:
    files = [p for p in out.rglob("*.xml")]
    return len(files), sum(p.stat().st_size for p in files)


def build_scenarios(work: Path, posts: int) -> list[Result]:
    corpus = work / f"corpus-{posts}"
    make_corpus(corpus, posts)
    # warm the OS page cache: the targets are for warm runs
    for path in corpus.rglob("*.md"):
        path.read_bytes()
    speed = machine_speed(corpus)
    results: list[Result] = []
    for max_items in (0, 50):
        site = work / f"site-{posts}-{max_items}"
        shutil.rmtree(site, ignore_errors=True)
        site.mkdir()
        config = str(write_config(site, corpus, max_items))
        label = f"max_items={max_items}"

        def record(name: str, wall: float, cpu: float, rss: float, note: str = "",
                   site: Path = site, label: str = label) -> None:
            feeds, size = output_size(site / "feeds")
            results.append(Result(f"{name} ({label})", posts, round(wall, 3), round(cpu, 3),
                                  round(rss, 1), round(posts / wall, 1), feeds, size, note,
                                  *speed))

        record("full build, empty cache", *run_cli(["build", "-c", config])[:3])
        shutil.rmtree(site / "feeds")
        # the inputs are the last build's: the feeds are rewritten from its saved index
        record("output deleted, warm cache", *run_cli(["build", "-c", config])[:3])
        # every post looks new to the walk, its bytes do not: a full build that parses
        # and renders nothing (a checkout or a copy that touches every file)
        stamp = time.time_ns()
        for path in corpus.rglob("*.md"):
            os.utime(path, ns=(stamp, stamp))
        record("every post touched, warm cache", *run_cli(["build", "-c", config])[:3])
        record("no-op rebuild", *run_cli(["build", "-c", config])[:3])
        victim = sorted(corpus.rglob("*.md"))[posts // 2]
        original = victim.read_bytes()
        victim.write_bytes(original.replace(b"</div>", b"<p>edited</p></div>", 1))
        record("one edited post", *run_cli(["build", "-c", config])[:3])
        victim.write_bytes(original)
        new_dir = corpus / "zz-bench-new"
        sources = sorted(corpus.rglob("*.md"))[:100]
        for i, source in enumerate(sources):
            new_dir.mkdir(exist_ok=True)
            (new_dir / f"new {i}.md").write_bytes(source.read_bytes().replace(
                b"title: '", b"title: 'New ", 1))
        record("100 new posts", *run_cli(["build", "-c", config])[:3])
        shutil.rmtree(new_dir)
        run_cli(["build", "-c", config])  # back to the corpus as made
    return results


def service_scenario(work: Path, posts: int) -> Result:
    """Time from an edited post's close to its leaf feed's os.replace, in the service."""
    corpus = work / f"corpus-{posts}"
    make_corpus(corpus, posts)
    site = work / f"site-{posts}-service"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir()
    config = write_config(site, corpus, 50)
    run_cli(["build", "-c", str(config)])
    proc = subprocess.Popen([sys.executable, "-m", "aggregator", "--log-level", "warning", "run",
                             "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(3 + posts / 5000)  # first build and watcher start
        # the newest post: its edit must change the all-items feed whatever max_items is
        root_feed = site / "feeds" / "atom.xml"
        newest = re.search(rb"<id>tag:[^,]+,[^:]+:([^<]+)</id>", root_feed.read_bytes()
                           .split(b"<entry>", 1)[1])
        assert newest is not None
        victim = corpus / unquote(newest.group(1).decode())
        original = victim.read_bytes()
        timings = []
        for attempt in range(5):
            before = root_feed.stat().st_mtime_ns
            edited = original.replace(b"</div>", f"<p>edit {attempt}</p></div>".encode(), 1)
            with open(victim, "wb") as handle:
                handle.write(edited)
            closed = time.perf_counter()
            deadline = closed + 30
            while root_feed.stat().st_mtime_ns == before and time.perf_counter() < deadline:
                time.sleep(0.0005)
            timings.append(time.perf_counter() - closed)
            time.sleep(0.5)
        victim.write_bytes(original)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    best = min(timings)
    return Result("one edited post, service (close → feed replaced)", posts, round(best, 4),
                  0.0, 0.0, 0.0, 0, 0, note="best of 5; median "
                  f"{sorted(timings)[len(timings) // 2]:.4f}s; includes the debounce window")


def upstream_scenarios(work: Path, sources: int) -> list[Result]:
    make = SHARED_BENCH / "make_upstream"
    serve = SHARED_BENCH / "serve_upstream"
    if not make.exists():
        print("../shared/bench absent: upstream scenarios skipped", file=sys.stderr)
        return []
    folder = work / f"upstream-{sources}"
    port = 18765
    if not folder.is_dir():
        subprocess.run([sys.executable, str(make), str(folder), "--sources", str(sources),
                        "--entries", "50", "--base-url", f"http://127.0.0.1:{port}/"],
                       check=True, stdout=subprocess.DEVNULL)
    server = subprocess.Popen([sys.executable, str(serve), str(folder), "--port", str(port),
                               "--seconds", "1200", "--quiet"])
    try:
        time.sleep(1)
        site = work / f"site-upstream-{sources}"
        shutil.rmtree(site, ignore_errors=True)
        (site / "posts").mkdir(parents=True)
        listing = (folder / "upstream.yaml").read_text(encoding="utf-8")
        config = write_config(site, site / "posts", 50,
                              "fetch: {allow_private_addresses: true, per_host_limit: 64}\n"
                              + listing)
        results = []
        for name in ("upstream first poll", "upstream re-poll, nothing changed"):
            wall, cpu, rss, _ = run_cli(["fetch", "--all", "-c", str(config)])
            feeds, size = output_size(site / "feeds")
            results.append(Result(f"{name} ({sources} x 50)", sources * 50, round(wall, 3),
                                  round(cpu, 3), round(rss, 1), round(sources * 50 / wall, 1),
                                  feeds, size))
        return results
    finally:
        server.terminate()
        server.wait()


def print_table(results: list[Result]) -> None:
    header = f"{'scenario':58} {'posts':>7} {'wall s':>8} {'cpu s':>8} {'RSS MB':>8} " \
             f"{'posts/s':>9} {'feeds':>6} {'MB out':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.scenario:58} {r.posts:7d} {r.wall_s:8.3f} {r.cpu_s:8.2f} "
              f"{r.peak_rss_mb:8.1f} {r.posts_per_s:9.1f} {r.feeds:6d} "
              f"{r.bytes_written / 1e6:8.1f}" + (f"  {r.note}" if r.note else ""))
    speeds = {r.posts: (r.machine_python_s, r.machine_stat_us) for r in results
              if r.machine_python_s}
    for posts, (loop, stat_us) in speeds.items():
        print(f"machine before the {posts}-post scenarios: Python loop {loop:.3f} s, "
              f"walk {stat_us:.2f} us a file")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--service", action="store_true", help="also time the service")
    parser.add_argument("--upstream", type=int, default=0, metavar="SOURCES",
                        help="also time upstream polls of this many sources")
    parser.add_argument("--work", type=Path, help="keep corpora here (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    precompile()
    work = args.work or Path(tempfile.mkdtemp(prefix="aggregator-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    for posts in args.posts:
        results += build_scenarios(work, posts)
        if args.service:
            results.append(service_scenario(work, posts))
    if args.upstream:
        results += upstream_scenarios(work, args.upstream)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    else:
        print_table(results)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

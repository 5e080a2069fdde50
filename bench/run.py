"""Benchmark: time the build, rebuild and poll scenarios; print a table (or --json).

    python bench/run.py --posts 1000 10000            # build scenarios
    python bench/run.py --posts 10000 --service       # + one edit seen by `aggregator run`
    python bench/run.py --posts --upstream 1000       # first poll and re-poll only
    python bench/run.py --posts 200 --json            # the smoke run the tests use
    python bench/run.py --compare main --posts 10000 --repeat 3   # main beside this tree
    python bench/run.py --posts 10000 --max-items 0 --cold-cache  # cold builds from disk
    python bench/run.py --posts 10000 --state-url postgresql://postgres@/postgres?host=/run/x
                                                      # the SQLite store beside PostgreSQL

Every scenario runs `python -m aggregator …` as a child process and reads its wall
time, CPU time and peak RSS from os.wait4 (the largest single process of the build), so
the figures are the CLI's own. The corpus comes from ../shared/bench/make_corpus (real
posts cycled; 600 leaves) or, without ../shared, from a generator of ours. A cold build
with `max_items: 0` is also timed with Hugo (../shared/bench/peer_hugo) on the same
corpus when `hugo` is installed.

`--compare REV` runs commit REV's code (see trees.py) and the working tree's on the same
corpora, each in a site of its own, interleaved: every measurement is taken of one and
then of the other, and the order flips from one repeat to the next, so the machine's
drift (2x by the hour on the shared machine) hits both alike. The table gives both
columns and new/old. `--state-url URL` compares the same way the working tree on its
SQLite store (old) and on the PostgreSQL server of URL (new; every site a database of
its own, made afresh: the URL's user may create databases). Not part of the test
suite: timings on a shared 2-core machine are noisy; compare figures taken in one run.
"""

from __future__ import annotations

import argparse
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
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from report import COLD, PEER, Result, comparison_json, medians, print_comparison, print_table
from trees import REPO, Code, commit_tree, working_tree

SHARED_BENCH = REPO.parent / "shared" / "bench"


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


# more keys of the `output` mapping of every site's config (--output), e.g.
# "formats: [atom, rss], pages: false"
OUTPUT_KEYS: list[str] = []
# more keys for the working tree's sites only (--new-output): a compared commit may not
# know them
NEW_OUTPUT_KEYS: list[str] = []


def write_config(site: Path, content: Path, max_items: int, extra: str = "",
                 archives: bool = False, state_url: str | None = None,
                 working_tree: bool = True) -> Path:
    config = site / "config.yaml"
    more = "".join(f", {keys}" for keys in
                   OUTPUT_KEYS + (NEW_OUTPUT_KEYS if working_tree else []))
    config.write_text(
        "site: {url: 'http://127.0.0.1:8080/', title: Bench, timezone: UTC}\n"
        f"content: {{dir: '{content}'}}\n"
        f"output: {{dir: feeds, max_items: {max_items}{more}"
        f"{', archives: true' if archives else ''}}}\n"
        "images: {probe: false}\n"
        + (f"state: {{url: '{state_url}'}}\n" if state_url else
           "state: {path: state/bench.sqlite}\n") + extra, encoding="utf-8")
    return config


def site_state_url(code: Code, site: Path) -> str | None:
    """The state.url of a site of `code`: a new empty database on its server, named
    after the site (None: the SQLite store)."""
    if code.state_url is None:
        return None
    import psycopg
    from psycopg import sql

    name = "bench_" + re.sub(r"\W", "_", site.name)
    with psycopg.connect(code.state_url, autocommit=True) as db:
        db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(code.state_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


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


# The children are started by this small process, launched before the benchmark lists
# any corpus: a child started by (v)fork counts its parent's peak RSS in its own
# ru_maxrss, and the benchmark's own peak (~75 MB after listing 100k posts) would be
# the floor of every figure. The launcher's is ~10 MB.
_LAUNCHER_CODE = """
import json, os, subprocess, sys, time
for line in sys.stdin:
    job = json.loads(line)
    started = time.perf_counter()
    proc = subprocess.Popen(job["argv"], cwd=job["cwd"], env=job["env"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    print(json.dumps({"wall": time.perf_counter() - started,
                      "cpu": usage.ru_utime + usage.ru_stime,
                      "rss": usage.ru_maxrss / 1024,
                      "rc": os.waitstatus_to_exitcode(status), "err": err[-4000:]}),
          flush=True)
"""


class Launcher:
    """Runs commands in the launcher process; one at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER_CODE],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def run(self, argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "env": env}) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer


_launcher: Launcher | None = None


def run_cli(code: Code, args: list[str]) -> tuple[float, float, float]:
    """(wall s, cpu s, peak RSS MB) of one `python -m aggregator` run of `code`."""
    global _launcher
    if _launcher is None:
        _launcher = Launcher()
    result = _launcher.run(code.command(*args), code.tree, code.env())
    err = result["err"]
    # 1 means "some inputs skipped", but an uncaught exception exits 1 too
    if result["rc"] not in (0, 1) or "Traceback (most recent call last)" in err:
        raise RuntimeError(f"{code.describe}: aggregator {' '.join(args)} exited "
                           f"{result['rc']}:\n{err[-2000:]}")
    return result["wall"], result["cpu"], result["rss"]


def _site(work: Path, name: str, code: Code) -> Path:
    site = work / (f"{name}-{code.label}" if code.label else name)
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    return site


def warm_page_cache(corpus: Path) -> None:
    """Read every post once, so the builds that follow find them cached."""
    for path in corpus.rglob("*.md"):
        path.read_bytes()


def drop_page_cache() -> None:
    """Empty the OS page cache (root only), so the next build reads its posts from disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _build_each(codes: list[Code], sites: dict[Code, Path], scenario: str, posts: int,
                speed: tuple[float, float], cold_cache: bool = False,
                warm: Path | None = None) -> list[Result]:
    """One build of each code's site, in the order of `codes` (`cold_cache`: each
    after drop_page_cache; `warm`: each after reading that corpus, since this machine
    evicts files not read for a few minutes and a build of 100k posts that finds a
    third of them evicted takes seconds longer: whichever code ran first would pay)."""
    results = []
    for code in codes:
        site = sites[code]
        if cold_cache:
            drop_page_cache()
        elif warm is not None:
            warm_page_cache(warm)
        wall, cpu, rss = run_cli(code, ["build", "-c", str(site / "config.yaml")])
        feeds, size = output_size(site / "feeds")
        results.append(Result(scenario, posts, round(wall, 3), round(cpu, 3), round(rss, 1),
                              round(posts / wall, 1), feeds, size, "", *speed,
                              code=code.label))
        progress(f"{scenario}, {posts} posts, {code.label or 'code'}: {wall:.2f} s, "
                 f"{rss:.0f} MB")
    return results


def progress(message: str) -> None:
    """A line on stderr as each figure is taken: a 100k comparison runs for many minutes."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def build_scenarios(work: Path, posts: int, codes: list[Code], max_items_values: list[int],
                    hugo: bool, archives: bool = False,
                    cold_cache: bool = False) -> list[Result]:
    """Each build scenario on one corpus, each measured of every code in `codes` in turn
    (each code builds a site of its own from the same corpus). `archives`: the working
    tree's sites (not a compared commit's) build with output.archives on. `cold_cache`:
    the page cache is dropped before each cold build (ours and Hugo's); the other
    scenarios run warm."""
    corpus = work / f"corpus-{posts}"
    make_corpus(corpus, posts)
    warm_page_cache(corpus)  # the targets are for warm runs
    speed = machine_speed(corpus)
    results: list[Result] = []
    for max_items in max_items_values:
        label = f"max_items={max_items}"
        sites = {code: _site(work, f"site-{posts}-{max_items}", code) for code in codes}
        for code, site in sites.items():
            write_config(site, corpus, max_items, archives=archives and code.label != "old",
                         state_url=site_state_url(code, site),
                         working_tree=code.label != "old")

        def measure(name: str, label: str = label, sites: dict[Code, Path] = sites,
                    cold_cache: bool = False, warm: Path | None = None) -> None:
            results.extend(_build_each(codes, sites, f"{name} ({label})", posts, speed,
                                       cold_cache, warm))

        measure(COLD, cold_cache=cold_cache, warm=corpus)
        if max_items == 0 and hugo:
            if cold_cache:
                drop_page_cache()
            results.extend(hugo_scenario(work, corpus, posts))
        if cold_cache:  # the other scenarios are for warm runs
            warm_page_cache(corpus)
        for site in sites.values():
            shutil.rmtree(site / "feeds")
        # the inputs are the last build's: the feeds are rewritten from its saved index
        measure("output deleted, warm cache")
        # every post looks new to the walk, its bytes do not: a full build that parses
        # and renders nothing (a checkout or a copy that touches every file)
        stamp = time.time_ns()
        for path in corpus.rglob("*.md"):
            os.utime(path, ns=(stamp, stamp))
        measure("every post touched, warm cache")
        measure("no-op rebuild")
        victim = sorted(corpus.rglob("*.md"))[posts // 2]
        original = victim.read_bytes()
        victim.write_bytes(original.replace(b"</div>", b"<p>edited</p></div>", 1))
        try:
            measure("one edited post")
        finally:
            victim.write_bytes(original)
        new_dir = corpus / "zz-bench-new"
        sources = sorted(corpus.rglob("*.md"))[:100]
        try:
            for i, source in enumerate(sources):
                new_dir.mkdir(exist_ok=True)
                (new_dir / f"new {i}.md").write_bytes(source.read_bytes().replace(
                    b"title: '", b"title: 'New ", 1))
            measure("100 new posts")
        finally:
            shutil.rmtree(new_dir, ignore_errors=True)
    return results


def hugo_available() -> bool:
    if not (SHARED_BENCH / "peer_hugo").exists() or shutil.which("hugo") is None:
        progress("hugo or ../shared/bench/peer_hugo absent: the Hugo row is skipped "
                 "(Debian: apt-get install hugo)")
        return False
    return True


def hugo_scenario(work: Path, corpus: Path, posts: int) -> list[Result]:
    """Hugo's cold build of the same corpus (every post in its category terms' feeds)."""
    env = dict(os.environ, PEER_HUGO_HOME=str(work / "hugo-site"))
    run = subprocess.run([sys.executable, str(SHARED_BENCH / "peer_hugo"), str(corpus)],
                         capture_output=True, text=True, env=env, check=True)
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    wall = float(figures["wall_s"])
    progress(f"Hugo cold build, {posts} posts: {wall:.2f} s")
    return [Result("Hugo cold build, every post (peer_hugo)", posts, wall, 0.0,
                   float(figures["peak_rss_mb"]), round(posts / wall, 1),
                   int(figures["feed_files"]), int(figures["feed_bytes"]),
                   f"Hugo {figures['hugo']}", code=PEER)]


def service_scenario(work: Path, posts: int, code: Code) -> Result:
    """Time from an edited post's close to its leaf feed's os.replace, in the service."""
    corpus = work / f"corpus-{posts}"
    make_corpus(corpus, posts)
    site = _site(work, f"site-{posts}-service", code)
    config = write_config(site, corpus, 50, state_url=site_state_url(code, site))
    run_cli(code, ["build", "-c", str(config)])
    proc = subprocess.Popen(code.command("--log-level", "warning", "run", "-c", str(config)),
                            cwd=code.tree, env=code.env(), stdout=subprocess.DEVNULL,
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
        try:
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
        finally:
            victim.write_bytes(original)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    best = min(timings)
    progress(f"service edit, {posts} posts, {code.label or 'code'}: best {best:.4f} s")
    return Result("one edited post, service (close → feed replaced)", posts, round(best, 4),
                  0.0, 0.0, 0.0, 0, 0, note="best of 5; median "
                  f"{sorted(timings)[len(timings) // 2]:.4f}s; includes the debounce window",
                  code=code.label)


def upstream_scenarios(work: Path, sources: int, codes: list[Code]) -> list[Result]:
    """A first poll and a re-poll of `sources` feeds served on 127.0.0.1, each measured of
    every code in turn."""
    make = SHARED_BENCH / "make_upstream"
    serve = SHARED_BENCH / "serve_upstream"
    if not make.exists():
        progress("../shared/bench absent: upstream scenarios skipped")
        return []
    folder = work / f"upstream-{sources}"
    if not folder.is_dir():
        subprocess.run([sys.executable, str(make), str(folder), "--sources", str(sources),
                        "--entries", "50"], check=True, stdout=subprocess.DEVNULL)
    # a free port of the server's choosing: other benchmarks may run on the machine
    server = subprocess.Popen([sys.executable, str(serve), str(folder), "--port", "0",
                               "--seconds", "7200", "--quiet"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        base = server.stdout.readline().split()[-1] + "/"
        listing = re.sub(r"http://127\.0\.0\.1:(\{port\}|\d+)/", base,
                         (folder / "upstream.yaml").read_text(encoding="utf-8"))
        configs = {}
        for code in codes:
            site = _site(work, f"site-upstream-{sources}", code)
            (site / "posts").mkdir()
            configs[code] = (site, write_config(
                site, site / "posts", 50,
                "fetch: {allow_private_addresses: true, per_host_limit: 64}\n" + listing,
                state_url=site_state_url(code, site)))
        results = []
        for name in ("upstream first poll", "upstream re-poll, nothing changed"):
            for code in codes:
                site, config = configs[code]
                wall, cpu, rss = run_cli(code, ["fetch", "--all", "-c", str(config)])
                feeds, size = output_size(site / "feeds")
                progress(f"{name}, {sources} sources, {code.label or 'code'}: {wall:.2f} s")
                results.append(Result(f"{name} ({sources} x 50)", sources * 50, round(wall, 3),
                                      round(cpu, 3), round(rss, 1),
                                      round(sources * 50 / wall, 1), feeds, size,
                                      code=code.label))
        return results
    finally:
        server.terminate()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--max-items", type=int, nargs="+", default=[0, 50],
                        help="the output.max_items values to build with (default 0 50)")
    parser.add_argument("--service", action="store_true", help="also time the service")
    parser.add_argument("--upstream", type=int, default=0, metavar="SOURCES",
                        help="also time upstream polls of this many sources")
    parser.add_argument("--compare", metavar="REV",
                        help="run commit REV's code beside the working tree's, interleaved")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="measure everything N times; report the medians")
    parser.add_argument("--no-hugo", dest="hugo", action="store_false",
                        help="skip the Hugo cold build (../shared/bench/peer_hugo)")
    parser.add_argument("--archives", action="store_true",
                        help="the working tree's builds with output.archives: true (a "
                             "--compare'd commit's without: the cost of the archives)")
    parser.add_argument("--cold-cache", action="store_true",
                        help="drop the OS page cache before every cold build, ours and "
                             "Hugo's (root only): the first build of posts not read lately")
    parser.add_argument("--work", type=Path, help="keep corpora here (default: a temp dir)")
    parser.add_argument("--output", metavar="KEYS",
                        help="more output keys for every site, e.g. "
                             "'formats: [atom, rss], pages: false'")
    parser.add_argument("--new-output", metavar="KEYS",
                        help="as --output, for the working tree's sites only (keys a "
                             "--compare'd commit does not know)")
    parser.add_argument("--state-url", metavar="URL",
                        help="compare the SQLite store (old) with PostgreSQL (new): a server's "
                             "database URL; each site gets a new database there")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.state_url and args.compare:
        parser.error("--state-url and --compare: one comparison at a time")
    if args.output:
        OUTPUT_KEYS.append(args.output)
    if args.new_output:
        NEW_OUTPUT_KEYS.append(args.new_output)
    if args.cold_cache and not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        parser.error("--cold-cache: only root may drop the page cache")
    global _launcher
    _launcher = Launcher()  # (before any corpus is listed: see _LAUNCHER_CODE)
    work = (args.work or Path(tempfile.mkdtemp(prefix="aggregator-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    codes = [commit_tree(args.compare, work), working_tree("new")] if args.compare \
        else [working_tree("old"), working_tree("new", args.state_url)] if args.state_url \
        else [working_tree()]
    described: dict[str, dict[str, str]] = {}
    for code in codes:
        code.precompile()
        described[code.label] = {"code": code.describe, "package": code.package_file(),
                                 "python": code.python}
        progress(f"{code.label or 'code'}: {code.describe}, package "
                 f"{described[code.label]['package']}, python {code.python}")
    hugo = args.hugo and 0 in args.max_items and hugo_available()
    samples: list[Result] = []
    for repeat in range(args.repeat):
        order = codes if repeat % 2 == 0 else codes[::-1]
        for posts in args.posts:
            samples += build_scenarios(work, posts, order, args.max_items, hugo,
                                       args.archives, args.cold_cache)
            if args.service:
                samples += [service_scenario(work, posts, code) for code in order]
        if args.upstream:
            samples += upstream_scenarios(work, args.upstream, order)
    results = medians(samples)
    progress(f"{time.perf_counter() - started:.0f} s in all")
    if args.json and len(codes) > 1:
        print(json.dumps(comparison_json(results, described), indent=1))
    elif args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    elif len(codes) > 1:
        print_comparison(results, {label: f"{info['code']}, package {info['package']}"
                                   for label, info in described.items()})
    else:
        print_table(results)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

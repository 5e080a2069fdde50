"""The benchmark's figures: one measurement, their medians, and the printed tables.

Alone, a table of one column of figures. In a comparison (`run.py --compare REV`),
the old and the new code side by side with new/old ratios, the RSS growth a post
between corpus sizes, and the cold build against Hugo when it ran.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

COLD = "full build, empty cache"
PEER = "peer"  # the code label of Hugo's rows


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
    # How fast the machine was just before this corpus's scenarios (see run.machine_speed):
    # a shared machine's speed drifts by 2x from hour to hour, these tell which hour.
    machine_python_s: float = 0.0
    machine_stat_us: float = 0.0
    code: str = ""  # which code ran it: "old", "new", "peer" (Hugo), "" alone
    runs: int = 1  # how many measurements these figures are the median of


def medians(samples: Iterable[Result]) -> list[Result]:
    """One result per (scenario, posts, code), in first-measured order: each figure the
    median of its measurements (the output size is the last's)."""
    groups: dict[tuple[str, int, str], list[Result]] = {}
    for sample in samples:
        groups.setdefault((sample.scenario, sample.posts, sample.code), []).append(sample)
    merged = []
    for group in groups.values():
        wall = statistics.median(r.wall_s for r in group)
        merged.append(replace(
            group[-1], wall_s=round(wall, 4),
            cpu_s=round(statistics.median(r.cpu_s for r in group), 3),
            peak_rss_mb=round(statistics.median(r.peak_rss_mb for r in group), 1),
            posts_per_s=round(group[-1].posts / wall, 1) if wall else 0.0,
            machine_python_s=round(statistics.median(r.machine_python_s for r in group), 3),
            machine_stat_us=round(statistics.median(r.machine_stat_us for r in group), 2),
            runs=len(group)))
    return merged


def ratio(new: float, old: float) -> float | None:
    return round(new / old, 3) if old else None


@dataclass(frozen=True)
class Growth:
    """Peak RSS a post between two corpus sizes, of the cold build with one max_items."""

    code: str
    max_items: int
    posts_from: int
    posts_to: int
    kb_a_post: float


def rss_growth(results: list[Result]) -> list[Growth]:
    cold: dict[tuple[str, int], dict[int, float]] = {}
    for r in results:
        found = re.fullmatch(re.escape(COLD) + r" \(max_items=(\d+)\)", r.scenario)
        if found:
            cold.setdefault((r.code, int(found.group(1))), {})[r.posts] = r.peak_rss_mb
    growth = []
    for (code, max_items), by_posts in cold.items():
        sizes = sorted(by_posts)
        for small, large in zip(sizes, sizes[1:], strict=False):
            kb = (by_posts[large] - by_posts[small]) * 1024 / (large - small)
            growth.append(Growth(code, max_items, small, large, round(kb, 3)))
    return growth


def _hugo_lines(results: list[Result], codes: list[str]) -> list[str]:
    lines = []
    for peer in (r for r in results if r.code == PEER):
        ours = {r.code: r for r in results if r.posts == peer.posts
                and r.scenario == f"{COLD} (max_items=0)"}
        parts = [f"Hugo {peer.wall_s:.2f} s, {peer.peak_rss_mb:.0f} MB"]
        for code in codes:
            if code in ours:
                mine = ours[code]
                parts.append(f"{code or 'ours'} {mine.wall_s:.2f} s, "
                             f"{peer.wall_s / mine.wall_s:.2f}x Hugo's speed")
        lines.append(f"cold build, max_items=0, {peer.posts} posts, against {peer.note} "
                     f"(same run): " + "; ".join(parts))
    return lines


def _machine_lines(results: list[Result]) -> list[str]:
    speeds = {r.posts: (r.machine_python_s, r.machine_stat_us) for r in results
              if r.machine_python_s}
    return [f"machine before the {posts}-post scenarios: Python loop {loop:.3f} s, "
            f"walk {stat_us:.2f} us a file" for posts, (loop, stat_us) in speeds.items()]


def print_table(results: list[Result]) -> None:
    header = f"{'scenario':58} {'posts':>7} {'wall s':>8} {'cpu s':>8} {'RSS MB':>8} " \
             f"{'posts/s':>9} {'feeds':>6} {'MB out':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.scenario:58} {r.posts:7d} {r.wall_s:8.3f} {r.cpu_s:8.2f} "
              f"{r.peak_rss_mb:8.1f} {r.posts_per_s:9.1f} {r.feeds:6d} "
              f"{r.bytes_written / 1e6:8.1f}" + (f"  {r.note}" if r.note else ""))
    for growth in rss_growth(results):
        print(f"peak RSS growth a post, cold, max_items={growth.max_items}, "
              f"{growth.posts_from} -> {growth.posts_to} posts: {growth.kb_a_post:.2f} KB")
    for line in _hugo_lines(results, [""]) + _machine_lines(results):
        print(line)


@dataclass(frozen=True)
class Pair:
    scenario: str
    posts: int
    old: Result
    new: Result

    def as_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "posts": self.posts, "old": asdict(self.old),
                "new": asdict(self.new),
                "wall_ratio": ratio(self.new.wall_s, self.old.wall_s),
                "cpu_ratio": ratio(self.new.cpu_s, self.old.cpu_s),
                "rss_ratio": ratio(self.new.peak_rss_mb, self.old.peak_rss_mb)}


def pairs(results: list[Result]) -> list[Pair]:
    """The old and new results of each (scenario, posts), in measured order."""
    by_key: dict[tuple[str, int], dict[str, Result]] = {}
    for r in results:
        if r.code in ("old", "new"):
            by_key.setdefault((r.scenario, r.posts), {})[r.code] = r
    return [Pair(scenario, posts, codes["old"], codes["new"])
            for (scenario, posts), codes in by_key.items() if len(codes) == 2]


def _ratio_text(new: float, old: float) -> str:
    value = ratio(new, old)
    return "-" if value is None else f"{value:.2f}"


def _output_text(pair: Pair) -> str:
    old, new = pair.old, pair.new
    if (old.feeds, old.bytes_written) == (new.feeds, new.bytes_written):
        return "same size"
    return (f"differs: {old.feeds}/{new.feeds} feeds, "
            f"{new.bytes_written - old.bytes_written:+,} bytes")


def print_comparison(results: list[Result], codes: dict[str, str]) -> None:
    """The table of a comparison: the old code's figures, the new's, new/old."""
    for label, describe in codes.items():
        print(f"{label}: {describe}")
    runs = sorted({r.runs for r in results})
    print("figures: " + ("one run each" if runs == [1] else
                         f"median of {'/'.join(map(str, runs))} runs each")
          + ", old and new interleaved; RSS is the largest single process (os.wait4)")
    header = (f"{'scenario':52} {'posts':>7} | {'wall old':>8} {'new':>8} {'new/old':>7} | "
              f"{'cpu old':>7} {'new':>7} | {'RSS old':>7} {'new':>7} {'new/old':>7} | output")
    print(header)
    print("-" * len(header))
    for pair in pairs(results):
        old, new = pair.old, pair.new
        print(f"{pair.scenario:52} {pair.posts:7d} | {old.wall_s:8.3f} {new.wall_s:8.3f} "
              f"{_ratio_text(new.wall_s, old.wall_s):>7} | {old.cpu_s:7.2f} {new.cpu_s:7.2f} | "
              f"{old.peak_rss_mb:7.1f} {new.peak_rss_mb:7.1f} "
              f"{_ratio_text(new.peak_rss_mb, old.peak_rss_mb):>7} | {_output_text(pair)}")
    growth = {(g.max_items, g.posts_from, g.posts_to, g.code): g.kb_a_post
              for g in rss_growth(results)}
    for max_items, small, large in sorted({key[:3] for key in growth}):
        old_kb = growth.get((max_items, small, large, "old"), 0.0)
        new_kb = growth.get((max_items, small, large, "new"), 0.0)
        print(f"peak RSS growth a post, cold, max_items={max_items}, {small} -> {large} posts: "
              f"old {old_kb:.2f} KB, new {new_kb:.2f} KB")
    for line in _hugo_lines(results, ["old", "new"]) + _machine_lines(results):
        print(line)


def comparison_json(results: list[Result], codes: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {"codes": codes, "rows": [pair.as_json() for pair in pairs(results)],
            "peer": [asdict(r) for r in results if r.code == PEER],
            "rss_growth": [asdict(g) for g in rss_growth(results)]}

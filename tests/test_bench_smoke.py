"""The benchmark still runs: a tiny corpus, every build scenario, JSON out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import REPO, bench_module


def test_bench_smoke_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--posts", "30",
                          "--json", "--no-hugo", "--work", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout)
    assert len(results) == 12
    assert all(r["posts"] == 30 and r["wall_s"] > 0 and r["feeds"] > 0 for r in results)
    # each row says how fast the machine was, so runs of different hours compare
    assert all(r["machine_python_s"] > 0 and r["machine_stat_us"] > 0 for r in results)
    no_op = [r for r in results if r["scenario"].startswith("no-op")]
    assert len(no_op) == 2


def test_bench_compare_runs_both_codes_side_by_side(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--compare HEAD`: the commit's tree (exported apart) and the working tree build the
    same corpus, each figure in both columns, with its ratio."""
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--compare", "HEAD",
                          "--posts", "30", "--max-items", "50", "--no-hugo", "--json",
                          "--work", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    # the old column ran the commit's own copy of the package, the new one this tree's
    old_package = Path(report["codes"]["old"]["package"])
    assert old_package.is_relative_to(tmp_path / f"rev-{head[:12]}"), old_package
    assert Path(report["codes"]["new"]["package"]) == REPO / "aggregator" / "__init__.py"
    rows = report["rows"]
    scenarios = {"full build, empty cache", "output deleted, warm cache",
                 "every post touched, warm cache", "no-op rebuild", "one edited post",
                 "100 new posts"}
    assert {(r["scenario"], r["posts"]) for r in rows} == {
        (f"{name} (max_items=50)", 30) for name in scenarios}
    for row in rows:
        old, new = row["old"], row["new"]
        assert (old["code"], new["code"]) == ("old", "new")
        for side in (old, new):
            assert side["posts"] == row["posts"] and side["feeds"] > 0
            assert 0 < side["wall_s"] < 60 and 10 < side["peak_rss_mb"] < 1000
        assert row["wall_ratio"] == round(new["wall_s"] / old["wall_s"], 3)
        assert row["rss_ratio"] == round(new["peak_rss_mb"] / old["peak_rss_mb"], 3)


def test_bench_compare_table_prints_both_columns(capsys) -> None:  # type: ignore[no-untyped-def]
    """The printed comparison: a row a scenario with old, new and new/old of wall time and
    RSS, a differing output named, the growth a post and Hugo's line."""
    report = bench_module("report")

    def result(scenario: str, posts: int, code: str, wall: float, rss: float,
               size: int = 1000) -> object:
        return report.Result(scenario, posts, wall, wall / 2, rss, posts / wall, 10, size,
                             code=code)

    cold = "full build, empty cache (max_items=0)"
    report.print_comparison([
        result(cold, 100, "old", 2.0, 50.0), result(cold, 100, "new", 1.0, 40.0),
        result("no-op rebuild (max_items=0)", 100, "new", 0.3, 20.0),
        result("no-op rebuild (max_items=0)", 100, "old", 0.2, 25.0, size=1200),
        result(cold, 1000, "old", 8.0, 68.0), result(cold, 1000, "new", 4.0, 49.0),
        report.Result("Hugo cold build", 100, 3.0, 0.0, 80.0, 1.0, 5, 5, "Hugo v0.111.3",
                      code="peer")], {"old": "main (abc)", "new": "working tree"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["old: main (abc)", "new: working tree"]
    header = next(line for line in lines if line.startswith("scenario"))
    assert "wall old" in header and "RSS old" in header and header.count("new/old") == 2

    def row(scenario: str, posts: int) -> list[str]:
        found = [line.split("|") for line in lines if "|" in line
                 and line.split("|")[0].rsplit(None, 1) == [scenario, str(posts)]]
        assert len(found) == 1, lines
        return found[0]

    cells = row(cold, 100)
    assert cells[1].split() == ["2.000", "1.000", "0.50"]
    assert cells[3].split() == ["50.0", "40.0", "0.80"] and "same size" in cells[4]
    no_op = row("no-op rebuild (max_items=0)", 100)
    assert no_op[1].split() == ["0.200", "0.300", "1.50"] and "-200 bytes" in no_op[4]
    growth = "peak RSS growth a post, cold, max_items=0, 100 -> 1000 posts: "
    assert f"{growth}old {18 * 1024 / 900:.2f} KB, new {9 * 1024 / 900:.2f} KB" in lines
    hugo = next(line for line in lines if "against Hugo v0.111.3" in line)
    assert "old 2.00 s, 1.50x Hugo's speed" in hugo and "new 1.00 s, 3.00x" in hugo


def test_bench_old_tree_needs_a_venv_when_its_dependencies_are_unmet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A commit whose dependencies this interpreter lacks (absent, or outside the range)
    is not run with it: those requirements are named; met and other-platform ones are not."""
    trees = bench_module("trees")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["PyYAML>=6", "no-such-dist-here>=1",\n'
                         '  "lxml<1", "other-os-only; sys_platform == \'nonexistent\'"]\n')
    unmet = trees.unmet_requirements(pyproject)
    assert unmet[0] == "no-such-dist-here>=1" and unmet[1].startswith("lxml<1 (have ")
    assert len(unmet) == 2
    assert trees.unmet_requirements(REPO / "pyproject.toml") == []


def test_bench_rss_growth_a_post_between_corpus_sizes() -> None:
    """(peak at the larger corpus - peak at the smaller) / the posts between, in KB, for
    each code and max_items, from the cold builds only."""
    report = bench_module("report")

    def cold(code: str, posts: int, rss: float, max_items: int = 50) -> object:
        return report.Result(f"full build, empty cache (max_items={max_items})", posts, 1.0,
                             1.0, rss, 1.0, 1, 1, code=code)

    results = [cold("old", 10_000, 101.0), cold("new", 10_000, 100.0),
               cold("old", 100_000, 394.0), cold("new", 100_000, 130.0),
               cold("old", 1_000, 59.0, max_items=0), cold("old", 10_000, 128.0, max_items=0),
               report.Result("no-op rebuild (max_items=50)", 100_000, 1.0, 1.0, 900.0, 1.0, 1,
                             1, code="old")]
    growth = {(g.code, g.max_items): (g.posts_from, g.posts_to, g.kb_a_post)
              for g in report.rss_growth(results)}
    assert growth == {("old", 50): (10_000, 100_000, round(293 * 1024 / 90_000, 3)),
                      ("new", 50): (10_000, 100_000, round(30 * 1024 / 90_000, 3)),
                      ("old", 0): (1_000, 10_000, round(69 * 1024 / 9_000, 3))}

"""The benchmark still runs: a tiny corpus, every build scenario, JSON out."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO


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
                          "--posts", "30", "40", "--max-items", "50", "--no-hugo", "--json",
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
        (f"{name} (max_items=50)", posts) for name in scenarios for posts in (30, 40)}
    for row in rows:
        old, new = row["old"], row["new"]
        assert (old["code"], new["code"]) == ("old", "new")
        for side in (old, new):
            assert side["posts"] == row["posts"] and side["feeds"] > 0
            assert 0 < side["wall_s"] < 60 and 10 < side["peak_rss_mb"] < 1000
        assert row["wall_ratio"] == round(new["wall_s"] / old["wall_s"], 3)
        assert row["rss_ratio"] == round(new["peak_rss_mb"] / old["peak_rss_mb"], 3)
    # the growth a post between the two corpora, of each code's cold build
    growth = {g["code"]: g for g in report["rss_growth"]}
    assert set(growth) == {"old", "new"}
    assert all((g["posts_from"], g["posts_to"], g["max_items"]) == (30, 40, 50)
               for g in growth.values())


def test_bench_compare_table_prints_both_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--compare", "HEAD",
                          "--posts", "20", "--max-items", "50", "--no-hugo",
                          "--work", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("old: HEAD (") and lines[1].startswith("new: working tree")
    header = next(line for line in lines if line.startswith("scenario"))
    assert "wall old" in header and "RSS old" in header and header.count("new/old") == 2
    no_op = next(line for line in lines if line.startswith("no-op rebuild (max_items=50)"))
    figures = [float(x) for x in re.findall(r"\d+\.\d+", no_op.split("|", 1)[1])]
    old_wall, new_wall, wall_ratio = figures[:3]
    assert old_wall > 0 and new_wall > 0 and abs(wall_ratio - new_wall / old_wall) < 0.01


def test_bench_old_tree_needs_a_venv_when_its_dependencies_are_unmet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A commit whose dependencies this interpreter lacks (absent, or outside the range)
    is not run with it: those requirements are named; met and other-platform ones are not."""
    spec = importlib.util.spec_from_file_location("bench_trees", REPO / "bench" / "trees.py")
    assert spec is not None and spec.loader is not None
    trees = importlib.util.module_from_spec(spec)
    sys.modules["bench_trees"] = trees  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(trees)
    finally:
        del sys.modules["bench_trees"]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["PyYAML>=6", "no-such-dist-here>=1",\n'
                         '  "lxml<1", "other-os-only; sys_platform == \'nonexistent\'"]\n')
    unmet = trees.unmet_requirements(pyproject)
    assert unmet[0] == "no-such-dist-here>=1" and unmet[1].startswith("lxml<1 (have ")
    assert len(unmet) == 2
    assert trees.unmet_requirements(REPO / "pyproject.toml") == []

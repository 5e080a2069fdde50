"""The benchmark still runs: a tiny corpus, every build scenario, JSON out."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO


def test_bench_smoke_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--posts", "30",
                          "--json", "--work", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout)
    assert len(results) == 12
    assert all(r["posts"] == 30 and r["wall_s"] > 0 and r["feeds"] > 0 for r in results)
    # each row says how fast the machine was, so runs of different hours compare
    assert all(r["machine_python_s"] > 0 and r["machine_stat_us"] > 0 for r in results)
    no_op = [r for r in results if r["scenario"].startswith("no-op")]
    assert len(no_op) == 2

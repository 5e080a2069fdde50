"""Golden output: the feeds of a small fixed content dir, compared byte for byte.

After an intended change of output, regenerate with
`UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py` and review the diff.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from helpers import fixed_clock

from aggregator.config import load_config
from aggregator.pipeline import build

GOLDEN = Path(__file__).parent / "data" / "golden"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_feeds_match_golden_files(tmp_path: Path) -> None:
    work = tmp_path / "site"
    shutil.copytree(GOLDEN / "posts", work / "posts")
    shutil.copy(GOLDEN / "config.yaml", work / "config.yaml")
    report = build(load_config(work / "config.yaml"),
                   clock=fixed_clock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC)))
    assert report.problems.errors == []
    produced = _tree(work / "feeds")
    expected_dir = GOLDEN / "expected"
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(expected_dir, ignore_errors=True)
        shutil.copytree(work / "feeds", expected_dir)
    assert produced == _tree(expected_dir)

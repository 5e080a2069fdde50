"""ruff and mypy --strict over the package: typed code is part of the contract."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers import REPO


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(tool) is None and subprocess.run(
            [sys.executable, "-m", tool, "--version"], capture_output=True).returncode:
        pytest.skip(f"{tool} is not installed")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_ruff_is_clean() -> None:
    run = _run("ruff", "check", "aggregator", "tests", "bench")
    assert run.returncode == 0, run.stdout[-3000:]


def test_mypy_strict_is_clean() -> None:
    run = _run("mypy", "aggregator")
    assert run.returncode == 0, run.stdout[-3000:]

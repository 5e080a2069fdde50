"""The import-linter contracts of pyproject.toml (the layers of docs/architecture.md):
an import from a lower layer to a higher one, or a cycle between sibling packages or
modules, fails here with import-linter's report."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

# Run in a child: import-linter configures itself once per process, and it finds the
# package to check from the folder it runs in (put first on sys.path).
_LINT = ("import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")


def _lint(package_parent: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _LINT, str(REPO / "pyproject.toml")],
                          cwd=package_parent, capture_output=True, text=True, timeout=300)


def test_imports_keep_the_layers_and_make_no_cycles() -> None:
    run = _lint(REPO)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert " 0 broken" in run.stdout


@pytest.mark.parametrize(("module", "added", "report"), [
    # upward, and inside a function (hidden from a reader of the imports, not from grimp)
    ("problems.py", "def _upward() -> None:\n    from aggregator.pipeline import build\n",
     "aggregator.problems is not allowed to import aggregator.pipeline"),
    # a cycle between siblings of one layer (sources/content.py imports walk.py)
    ("sources/walk.py", "from aggregator.sources import content\n",
     "No cycles are allowed in aggregator.sources."),
])
def test_an_upward_import_or_a_cycle_breaks_a_contract(tmp_path: Path, module: str,
                                                        added: str, report: str) -> None:
    shutil.copytree(REPO / "aggregator", tmp_path / "aggregator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    changed = tmp_path / "aggregator" / module
    changed.write_text(changed.read_text(encoding="utf-8") + "\n\n" + added, encoding="utf-8")
    run = _lint(tmp_path)
    assert run.returncode == 1, run.stdout[-5000:] + run.stderr[-2000:]
    assert report in run.stdout, run.stdout[-5000:]

"""The code a benchmark runs: the working tree, or a commit's tree beside it.

A commit is exported with `git archive` into the benchmark's work folder (no git
worktree is registered, nothing to clean up in the repository) and reused by later runs
of the same commit. Its children run with the benchmark's own interpreter and
PYTHONPATH (and the working directory) set to that tree, so `python -m aggregator`
imports the tree's package before any installed copy. When the commit's
`project.dependencies` are not all met by that interpreter, the tree gets a venv of its
own (`pip install` of the tree) and its children run with that venv's python instead.
"""

from __future__ import annotations

import compileall
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Code:
    """One tree's `aggregator` package and the interpreter that runs it."""

    label: str  # "old" or "new" in a comparison, "" alone
    tree: Path  # the folder that holds aggregator/
    python: str
    describe: str  # what the tree is, for the report: a revision and its commit
    state_url: str | None = None  # its sites' store: a PostgreSQL server (else SQLite)

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "aggregator", *args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.tree)
        return env

    def package_file(self) -> str:
        """Where a child of this code imports `aggregator` from (checked, not assumed)."""
        run = subprocess.run([self.python, "-c", "import aggregator; print(aggregator.__file__)"],
                             cwd=self.tree, env=self.env(), capture_output=True, text=True,
                             check=True)
        return run.stdout.strip()

    def precompile(self) -> None:
        """Byte-compile the package first, as `pip install` does: a source tree run with
        PYTHONDONTWRITEBYTECODE set (as on our dev machines) compiles ~40 modules in every
        child, 0.1–0.2 s that no installed copy pays."""
        compileall.compile_dir(self.tree / "aggregator", quiet=1)


def working_tree(label: str = "", state_url: str | None = None) -> Code:
    described = _git("describe", "--always", "--dirty")
    store = "" if state_url is None else ", PostgreSQL store (state.url)"
    return Code(label, REPO, sys.executable, f"working tree ({described}){store}",
                state_url)


def commit_tree(rev: str, work: Path, label: str = "old") -> Code:
    """The tree of commit `rev`, exported under `work`, with an interpreter that has
    its dependencies."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = work / f"rev-{sha[:12]}"
    if not (tree / "pyproject.toml").is_file():
        partial = work / f"rev-{sha[:12]}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(partial, filter="data")
        shutil.rmtree(tree, ignore_errors=True)
        partial.rename(tree)
    missing = unmet_requirements(tree / "pyproject.toml")
    python = sys.executable
    if missing:
        print(f"bench: {rev} needs {', '.join(missing)}, not in {sys.executable}'s "
              "environment: running it from a venv of its own", file=sys.stderr)
        python = _tree_venv(tree)
    return Code(label, tree, python, f"{rev} ({sha[:12]})")


def unmet_requirements(pyproject: Path) -> list[str]:
    """The project dependencies of `pyproject` that this interpreter does not satisfy
    (all of them when `packaging` is not there to check them)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    wanted: list[str] = list(project.get("dependencies", []))
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return wanted
    unmet = []
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(text)
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{text} (have {version})")
    return unmet


def _tree_venv(tree: Path) -> str:
    venv = tree.parent / f"{tree.name}-venv"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(tree)], check=True)
        (venv / ".installed").touch()
    return str(python)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=True).stdout.strip()

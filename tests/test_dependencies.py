"""The package depends on what it uses: every third-party module it imports comes from
a distribution pyproject.toml declares, and every declared distribution is imported
(or named below with the code that uses it through another)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from helpers import REPO

# Declared, and used through another package rather than imported by ours.
USED_THROUGH = {
    "linkify-it-py": "markdown-it-py's `linkify` option (sources/hexo/markdown.py) imports it",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# Extras a user installs for a feature (the test extra is not one): declared too.
FEATURE_EXTRAS = ("postgres",)


def _declared() -> set[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    extras = data["project"]["optional-dependencies"]
    return {_name(requirement) for requirement in data["project"]["dependencies"]} | {
        _name(requirement) for extra in FEATURE_EXTRAS for requirement in extras[extra]}


def _imported() -> dict[str, set[str]]:
    """Distribution -> the modules of ours that import from it."""
    distributions = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "aggregator").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "aggregator":
                    continue
                for distribution in distributions.get(top, [top]):
                    found.setdefault(_name(distribution), set()).add(
                        str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared() -> None:
    declared = _declared()
    undeclared = {name: sorted(paths) for name, paths in _imported().items()
                  if name not in declared}
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def test_every_declared_package_is_used() -> None:
    unused = _declared() - set(_imported()) - set(USED_THROUGH)
    assert not unused, f"declared in pyproject but never imported: {sorted(unused)} " \
                       "(drop it, or name in USED_THROUGH what uses it)"
    assert set(USED_THROUGH) <= _declared()

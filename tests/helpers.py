"""Shared test helpers: temp content dirs and configs, feeds parsed back."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from lxml import etree

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ATOM = "{http://www.w3.org/2005/Atom}"


def write_post(root: Path, rel: str, front: str, body: str = "<div><p>Body</p></div>") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n---\n" + textwrap.dedent(front).strip() + "\n---\n\n" + body,
                    encoding="utf-8")
    return path


def write_config(tmp: Path, content_dir: str | list[str] = "posts", **sections: Any) -> Path:
    data: dict[str, Any] = {
        "site": {"url": "https://example.org/feeds/", "title": "Test site",
                 "timezone": "UTC", "post_url": "https://example.org/{path}/"},
        "content": {"dir": content_dir},
        "output": {"dir": "feeds", "max_items": 0},
        "images": {"probe": False},
        "state": {"path": "state/test.sqlite"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def fixed_clock(when: datetime = datetime(2026, 1, 1, tzinfo=UTC)):  # type: ignore[no-untyped-def]
    return lambda: when


def atom_ids(path: Path) -> list[str]:
    tree = etree.parse(str(path))
    return [e.findtext(f"{ATOM}id") for e in tree.iter(f"{ATOM}entry")]


def rss_guids(path: Path) -> list[str]:
    tree = etree.parse(str(path))
    return [i.findtext("guid") for i in tree.iter("item")]


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py, loaded apart (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module

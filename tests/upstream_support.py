"""Helpers for the upstream tests: configs listing sources, runs of the CLI, feeds read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import feedparser
import yaml

from aggregator.cli import main


def upstream_config(tmp: Path, sources: list[dict[str, Any]], max_items: int = 0,
                    **fetch: Any) -> Path:
    (tmp / "posts").mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "site": {"url": "https://example.org/feeds/", "title": "Test site"},
        "content": {"dir": "posts"},
        "output": {"dir": "feeds", "max_items": max_items},
        "images": {"probe": False},
        "state": {"path": "state/test.sqlite"},
        "fetch": {"allow_private_addresses": True, "timeout_seconds": 0.5,
                  "deadline_seconds": 2, "max_bytes": 1_000_000, **fetch},
        "upstream": sources,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def run(config: Path, capsys: Any, *args: str) -> tuple[int, str]:
    """Run the CLI in-process; returns the exit code and what it wrote to stderr."""
    capsys.readouterr()
    code = main(["--log-level", "info", *args, "-c", str(config)])
    return code, capsys.readouterr().err


def published(tmp: Path, name: str = "atom.xml") -> Any:
    return feedparser.parse((tmp / "feeds" / name).read_bytes())


def titles(tmp: Path, name: str = "atom.xml") -> list[str]:
    return sorted(e.title for e in published(tmp, name).entries)


def rss(items: list[tuple[str, str]], extra: str = "", encoding: str = "utf-8") -> bytes:
    """A small RSS 2.0 feed; items are (guid, title)."""
    body = "".join(
        f"<item><guid>{guid}</guid><title>{title}</title><link>https://up.example/{guid}</link>"
        f"<description>&lt;p&gt;Body of {title}&lt;/p&gt;</description>"
        f"<pubDate>Mon, 0{i + 1} Jun 2025 10:00:00 GMT</pubDate>{extra}</item>"
        for i, (guid, title) in enumerate(items))
    return (f'<?xml version="1.0" encoding="{encoding}"?><rss version="2.0"><channel>'
            f"<title>Up</title><link>https://up.example/</link><description>d</description>"
            f"{body}</channel></rss>").encode(encoding)

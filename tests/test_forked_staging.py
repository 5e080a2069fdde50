"""A big build stages its feeds in forked workers (publish/forked_staging.py): it
publishes byte for byte what one process does, on either store, and a file a worker
cannot stage fails the publish as one process's staging does (nothing replaced, no
temp file left, nothing written through a link)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import fixed_clock, write_config, write_post

from aggregator.config import load_config
from aggregator.forking import can_fork
from aggregator.pipeline import build
from aggregator.publish import forked_staging
from aggregator.publish.atomic import TEMP_SUFFIX, PublishError
from aggregator.store import postgres, sqlite


def _posts(root: Path, count: int = 60) -> None:
    for i in range(count):
        write_post(root, f"t{i % 3}/p{i}.md",
                   f"title: Post {i}\ncategories: [Top {i % 3}, Mid {i % 5}]\n"
                   f"date: 2026-01-{1 + i % 28:02d} 08:{i % 60:02d}:00\n"
                   f"headimg: https://img.example/{i}.jpg")


def _site(tmp_path: Path, name: str, state_url: str | None = None) -> Path:
    _posts(tmp_path / name / "posts")
    path = write_config(tmp_path / name)
    if state_url is not None:
        data = yaml.safe_load(path.read_text())
        data["state"] = {"url": state_url}
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def _stagers(monkeypatch: pytest.MonkeyPatch, reader: Any, log: Path) -> None:
    """Each process that fetches renders through a reader notes its pid in `log` (the
    forked workers inherit the patch)."""
    fetch = reader.rendered

    def rendered(self: Any, keys: Any) -> Any:
        with log.open("a") as out:
            out.write(f"{os.getpid()}\n")
        return fetch(self, keys)
    monkeypatch.setattr(reader, "rendered", rendered)


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch) -> None:
    if not can_fork():
        pytest.skip("another thread is alive in this test process: workers would not fork")
    monkeypatch.setattr(forked_staging, "FORK_AT_ENTRIES", 1)  # (60 posts: fork anyway)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_feeds_staged_by_workers_are_the_ones_one_process_writes(
        tmp_path: Path, store: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch, forking: None) -> None:
    url = request.getfixturevalue("pg_url") if store == "postgres" else None
    one = load_config(_site(tmp_path, "one"))
    two = load_config(_site(tmp_path, "two", url))
    log = tmp_path / "stagers"
    _stagers(monkeypatch, postgres.PostgresReader if url else sqlite.SQLiteReader, log)
    first = build(one, clock=fixed_clock(), workers=1)
    assert not log.exists()  # (one process: no reader, no worker)
    second = build(two, clock=fixed_clock(), workers=2)
    assert _files(one.output_dir) == _files(two.output_dir)
    assert sorted(first.written) == sorted(second.written)
    stagers = set(log.read_text().split())
    assert len(stagers) == 2 and str(os.getpid()) not in stagers
    # an edit that reaches every feed of one subtree, staged by the workers again
    for site in ("one", "two"):
        write_post(tmp_path / site / "posts", "t0/p0.md",
                   "title: Edited\ncategories: [Top 0, Mid 0]\ndate: 2026-02-01 08:00:00")
    third = build(one, clock=fixed_clock(), workers=1)
    fourth = build(two, clock=fixed_clock(), workers=2)
    assert _files(one.output_dir) == _files(two.output_dir)
    assert sorted(third.written) == sorted(fourth.written) != []
    assert third.unchanged == fourth.unchanged > 0


def test_a_linked_folder_fails_the_forked_publish_and_replaces_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forking: None) -> None:
    config = load_config(_site(tmp_path, "site"))
    build(config, clock=fixed_clock(), workers=2)
    out = config.output_dir
    before = _files(out)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    linked = out / "top-1"
    for path in sorted(linked.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    linked.rmdir()
    linked.symlink_to(outside, target_is_directory=True)
    for i in range(3):  # every top-level subtree changes: each worker stages files
        write_post(tmp_path / "site" / "posts", f"t{i}/new.md",
                   f"title: New {i}\ncategories: [Top {i}]\ndate: 2026-03-01 08:00:00")
    log = tmp_path / "stagers"
    _stagers(monkeypatch, sqlite.SQLiteReader, log)
    with pytest.raises(PublishError, match="a symlink in the output dir"):
        build(config, clock=fixed_clock(), workers=2)
    assert len(set(log.read_text().split())) == 2  # (staged by the workers)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"precious"
    after = _files(out)
    assert [rel for rel in after if rel.endswith(TEMP_SUFFIX)] == []
    assert {rel: data for rel, data in after.items() if not rel.startswith("top-1/")} == \
        {rel: data for rel, data in before.items() if not rel.startswith("top-1/")}

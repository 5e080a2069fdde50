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

from aggregator.config import Config, load_config
from aggregator.forking import can_fork
from aggregator.pipeline import build
from aggregator.publish import atomic, forked_staging, splice
from aggregator.publish.atomic import TEMP_SUFFIX, PublishError
from aggregator.store import pack_render, postgres, sqlite
from aggregator.writers.parts import Parts


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


def _every_entry_site(tmp_path: Path, name: str, state_url: str | None = None) -> Config:
    """_site with `max_items: 0`: the root's files hold all 60 entries."""
    path = _site(tmp_path, name, state_url)
    data = yaml.safe_load(path.read_text())
    data["output"]["max_items"] = 0
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return load_config(path)


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


def _edited_then_store_lost(tmp_path: Path, one: Config, two: Config,
                            url: str | None) -> None:
    """One process (`one`) and the workers (`two`) publish the same after an edit that
    reaches every feed of a subtree and the root, and after the entry store is lost:
    every file planned again, found unchanged (files written together are compared as
    they are written, their temp files removed)."""
    for site in ("one", "two"):
        write_post(tmp_path / site / "posts", "t0/p0.md",
                   "title: Edited\ncategories: [Top 0, Mid 0]\ndate: 2026-02-01 08:00:00")
    third = build(one, clock=fixed_clock(), workers=1)
    fourth = build(two, clock=fixed_clock(), workers=2)
    assert _files(one.output_dir) == _files(two.output_dir)
    assert sorted(third.written) == sorted(fourth.written) != []
    assert third.unchanged == fourth.unchanged > 0
    if url is None:
        for config in (one, two):
            for path in config.state_path.parent.iterdir():
                path.unlink()
        fifth = build(one, clock=fixed_clock(), workers=1)
        sixth = build(two, clock=fixed_clock(), workers=2)
        assert fifth.written == sixth.written == [] and fifth.unchanged == sixth.unchanged
        assert not [rel for rel in _files(two.output_dir) if rel.endswith(TEMP_SUFFIX)]


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
    _edited_then_store_lost(tmp_path, one, two, url)


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


def _noting(method: Any, name: str, log: Path) -> Any:
    """A reader's method that notes its name and how many keys it was asked for."""
    def noted(self: Any, keys: Any, *args: Any) -> Any:
        keys = list(keys)
        with log.open("a") as out:
            out.write(f"{name} {len(keys)}\n")
        return method(self, keys, *args)
    return noted


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_big_files_streamed_by_the_workers_are_the_ones_one_process_writes(
        tmp_path: Path, store: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch, forking: None) -> None:
    """With `max_items: 0` the root's files hold every entry: the workers write a
    node's files of STREAM_AT entries or more together, from their renders read
    STREAM_CHUNK at a time and once for all of them, and publish the same bytes."""
    url = request.getfixturevalue("pg_url") if store == "postgres" else None
    monkeypatch.setattr(splice, "STREAM_AT", 25)
    monkeypatch.setattr(splice, "STREAM_CHUNK", 7)
    one, two = _every_entry_site(tmp_path, "one"), _every_entry_site(tmp_path, "two", url)
    reader = postgres.PostgresReader if url else sqlite.SQLiteReader
    log = tmp_path / "fetched"
    monkeypatch.setattr(reader, "rendered", _noting(reader.rendered, "rendered", log))
    build(one, clock=fixed_clock(), workers=1)
    build(two, clock=fixed_clock(), workers=2)
    assert _files(one.output_dir) == _files(two.output_dir)
    asked = [int(line.split()[1]) for line in log.read_text().splitlines()]
    # each top's 20 entries fetched for its subtree; the root's 60 (its Atom, RSS and
    # JSON Feed) 7 at a time, once for the three files; its page's 50 likewise
    assert sorted(asked) == sorted([20] * 3 + [7] * 8 + [4] + [7] * 7 + [1]), asked
    _edited_then_store_lost(tmp_path, one, two, url)


def test_files_staged_together_hold_a_few_chunks_of_renders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stage_together advances the file furthest behind in the shared renders, so a
    chunk is dropped soon after it is fetched, even when one file (as a JSON Feed's)
    writes two parts an entry; each file gets all its entries, in order."""
    monkeypatch.setattr(splice, "STREAM_CHUNK", 10)
    monkeypatch.setattr(atomic, "_TOGETHER_PARTS", 4)
    keys = [f"k{i}" for i in range(100)]
    packed = {key: tuple(pack_render(f"{key}.{which};".encode()) for which in range(4))
              for key in keys}
    alive: list[int] = []

    def fetch(wanted: set[str]) -> dict[str, Any]:
        alive.append(len(shared.chunks) + 1)
        return {key: packed[key] for key in wanted}
    shared = splice.SharedRenders(fetch, keys, 3)
    json_like = shared.parts(2)
    files = [(["a.xml"], shared.parts(0)), (["b.xml"], shared.parts(1)),
             (["c.json"], Parts(lambda: (piece for part in json_like.source()
                                         for piece in (b",", part)), 0))]
    whiches = [0, 1, 2]
    temps = atomic.stage_together(tmp_path, None, files,
                                  lambda index: shared.position(whiches[index]))
    assert len(alive) == 10 and max(alive) <= 2 and shared.chunks == {}
    for temp, which, prefix in zip(temps, whiches, (b"", b"", b","), strict=True):
        assert temp is not None
        assert temp.read_bytes() == b"".join(prefix + f"{key}.{which};".encode()
                                             for key in keys)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_big_files_written_in_one_process_read_their_renders_a_chunk_at_a_time(
        tmp_path: Path, store: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The service builds in its own process (its threads forbid forking): a node's
    files of STREAM_AT entries or more are written together there too, from renders
    fetched STREAM_CHUNK at a time, and hold what the files written whole hold, cold,
    after an edit and after the entry store is lost."""
    url = request.getfixturevalue("pg_url") if store == "postgres" else None
    whole, streamed = _every_entry_site(tmp_path, "whole"), \
        _every_entry_site(tmp_path, "streamed", url)
    store_class = postgres.PostgresStore if url else sqlite.SQLiteStore
    log = tmp_path / "fetched"

    def both() -> Any:
        """The whole site's build report, after both sites are built and compared."""
        monkeypatch.setattr(splice, "STREAM_CHUNK", 7)
        monkeypatch.setattr(splice, "STREAM_AT", 20_000)
        first = build(whole, clock=fixed_clock(), workers=1)
        monkeypatch.setattr(splice, "STREAM_AT", 25)
        monkeypatch.setattr(store_class, "rendered",
                            _noting(store_class.rendered, "rendered", log))
        log.unlink(missing_ok=True)
        second = build(streamed, clock=fixed_clock(), workers=1)
        monkeypatch.undo()
        assert _files(whole.output_dir) == _files(streamed.output_dir)
        assert sorted(first.written) == sorted(second.written)
        assert first.unchanged == second.unchanged
        assert not [rel for rel in _files(streamed.output_dir) if rel.endswith(TEMP_SUFFIX)]
        return first

    both()
    asked = [int(line.split()[1]) for line in log.read_text().splitlines()]
    # each top's 20 entries fetched for its subtree; the root's 60 (its Atom, RSS and
    # JSON Feed) 7 at a time, once for the three files; its page's 50 likewise
    assert sorted(asked) == sorted([20] * 3 + [7] * 8 + [4] + [7] * 7 + [1]), asked
    for site in ("whole", "streamed"):  # an edit that reaches the root's files
        write_post(tmp_path / site / "posts", "t0/p0.md",
                   "title: Edited\ncategories: [Top 0, Mid 0]\ndate: 2026-02-01 08:00:00")
    first = both()
    assert "atom.xml" in first.written
    if url is None:  # the store lost: every file planned again and found unchanged
        for config in (whole, streamed):
            for path in config.state_path.parent.iterdir():
                path.unlink()
        first = both()
        assert first.written == [] and first.unchanged

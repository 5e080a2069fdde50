"""Reading a post file's bytes (PostReader.read_bytes): the file as it is when opened,
whatever the walk saw (symlinks swapped in: tests/test_read_safety.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import write_config

from aggregator.config import load_config
from aggregator.problems import ProblemLog
from aggregator.sources.content import PostReader
from aggregator.sources.walk import PostFile, discover

LIMIT = 4096


def _reader(tmp_path: Path) -> PostReader:
    config = load_config(write_config(tmp_path, content={"max_post_bytes": LIMIT}))
    return PostReader(config, ProblemLog(echo=False), lambda _id: None)  # type: ignore[arg-type,return-value]


def _walked(tmp_path: Path, body: bytes) -> PostFile:
    """The post as the walk finds it (its identity holds the size then)."""
    (tmp_path / "posts").mkdir(exist_ok=True)
    (tmp_path / "posts" / "p.md").write_bytes(body)
    config = load_config(write_config(tmp_path, content={"max_post_bytes": LIMIT}))
    [post] = discover(config, ProblemLog(echo=False))
    assert post.identity[0] == len(body)
    return post


@pytest.mark.parametrize("after", [b"", b"---\ntitle: grown\n---\n<p>more</p>\n" * 20,
                                   b"shrunk", b"x" * 300])
def test_the_bytes_are_the_files_now_whatever_the_walk_saw(tmp_path: Path,
                                                            after: bytes) -> None:
    """Unchanged, grown, shrunk or rewritten with the same size since the walk: the
    bytes read are the file's as it is."""
    original = b"---\ntitle: T\n---\n" + b"x" * 283
    post = _walked(tmp_path, original)
    if after:
        Path(post.location).write_bytes(after)
    reader = _reader(tmp_path)
    assert reader.read_bytes(post) == (after or original)
    # and without the walk's identity (a render reads a body again from its path)
    assert reader.read_bytes(post._replace(identity=(0, 0, 0))) == (after or original)
    assert reader.problems.items == []


def test_a_post_grown_over_the_limit_since_the_walk_is_skipped(tmp_path: Path) -> None:
    post = _walked(tmp_path, b"---\ntitle: T\n---\nsmall\n")
    Path(post.location).write_bytes(b"y" * (LIMIT + 1))
    reader = _reader(tmp_path)
    assert reader.read_bytes(post) is None
    assert [str(p) for p in reader.problems.items] == [
        f"p.md:1: post is {LIMIT + 1} bytes, over content.max_post_bytes ({LIMIT}); "
        "skipped"]


def test_a_fifo_put_in_place_of_a_post_does_not_hang_the_read(tmp_path: Path) -> None:
    post = _walked(tmp_path, b"---\ntitle: T\n---\nsmall\n")
    os.unlink(post.location)
    os.mkfifo(post.location)
    started = time.monotonic()
    reader = _reader(tmp_path)
    assert reader.read_bytes(post) is None
    assert time.monotonic() - started < 5
    assert [str(p) for p in reader.problems.items] == ["p.md: not a regular file; skipped"]


def test_a_post_gone_since_the_walk_is_reported(tmp_path: Path) -> None:
    post = _walked(tmp_path, b"---\ntitle: T\n---\nsmall\n")
    os.unlink(post.location)
    reader = _reader(tmp_path)
    assert reader.read_bytes(post) is None
    assert [str(p) for p in reader.problems.items] == [
        "p.md: cannot read: No such file or directory"]

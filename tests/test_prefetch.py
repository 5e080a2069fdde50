"""The prefetch thread (aggregator/sources/prefetch.py): the kernel is asked to read
the posts about to be parsed, and nothing the content dir can swap in after the walk
(a symlink out of it, a FIFO) is opened or waited on. Page-cache residency is read
with util-linux's `fincore`, on real files."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import write_config, write_post

from aggregator.config import Config, load_config
from aggregator.problems import ProblemLog
from aggregator.sources.prefetch import Prefetch
from aggregator.sources.walk import PostFile, discover

pytestmark = pytest.mark.skipif(shutil.which("fincore") is None,
                                reason="fincore (util-linux) is not installed")

BODY = "<p>" + "x" * (64 << 10) + "</p>"  # 16 pages: residency is clear-cut


def resident(paths: list[Path]) -> list[int]:
    """The bytes of each file in the page cache (one `fincore` for all)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,FILE",
                          *map(str, paths)], capture_output=True, text=True, check=True)
    by_name = dict(reversed(line.strip().split(maxsplit=1))
                   for line in out.stdout.splitlines() if line.strip())
    return [int(by_name[str(path)]) for path in paths]


def resident_bytes(path: Path) -> int:
    return resident([path])[0]


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (written back first: clean pages go)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def wait_resident(path: Path, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if resident_bytes(path) > 0:
            return True
        time.sleep(0.02)
    return False


def site(tmp_path: Path, posts: int) -> tuple[Config, list[PostFile]]:
    """A content dir of `posts` posts, walked, their pages out of the cache."""
    for number in range(posts):
        write_post(tmp_path / "posts", f"f{number // 10}/p{number:03}.md",
                   f"title: Post {number}\ndate: 2026-01-01", BODY)
    config = load_config(write_config(tmp_path))
    found = discover(config, ProblemLog(echo=False))
    assert len(found) == posts
    for post in found:
        evict(Path(post.root) / post.rel)
    if any(resident([Path(post.root) / post.rel for post in found])):
        pytest.skip("this filesystem keeps the pages of clean files (tmpfs?)")
    return config, found


def test_posts_are_read_into_the_page_cache_ahead(tmp_path: Path) -> None:
    config, posts = site(tmp_path, 30)
    with Prefetch(config, posts):
        assert wait_resident(Path(posts[-1].root) / posts[-1].rel)
    assert all(resident([Path(post.root) / post.rel for post in posts]))


def test_nothing_swapped_in_after_the_walk_is_opened(tmp_path: Path) -> None:
    """A post and a folder replaced by symlinks out of the content dir, and a post by a
    FIFO, between the walk and the prefetch: the outside file is never read (its pages
    stay out of the cache), the FIFO is not waited on, and the posts after them are
    still prefetched."""
    config, posts = site(tmp_path, 30)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.md"
    secret.write_text("---\ntitle: secret\n---\n" + BODY, encoding="utf-8")
    (outside / "p010.md").write_text(secret.read_text(encoding="utf-8"), encoding="utf-8")
    evict(secret)
    evict(outside / "p010.md")
    content = Path(posts[0].root)
    (content / "f0" / "p003.md").unlink()
    (content / "f0" / "p003.md").symlink_to(secret)  # a post swapped for a link out
    shutil.rmtree(content / "f1")
    (content / "f1").symlink_to(outside)  # a folder swapped for a link out
    (content / "f2" / "p020.md").unlink()
    os.mkfifo(content / "f2" / "p020.md")  # a post swapped for a FIFO
    started = time.monotonic()
    with Prefetch(config, posts):
        assert wait_resident(Path(posts[-1].root) / posts[-1].rel)
    assert time.monotonic() - started < 10
    assert resident_bytes(secret) == 0
    assert resident_bytes(outside / "p010.md") == 0
    untouched = [post for post in posts if not post.rel.startswith("f1/")
                 and post.rel not in ("f0/p003.md", "f2/p020.md")]
    assert all(resident([Path(post.root) / post.rel for post in untouched]))


def test_leaving_the_context_stops_the_thread_and_closes_everything(tmp_path: Path) -> None:
    config, posts = site(tmp_path, 30)
    before = set(os.listdir("/proc/self/fd"))
    prefetch = Prefetch(config, posts)
    with prefetch:
        pass
    assert prefetch._thread is not None and not prefetch._thread.is_alive()
    assert set(os.listdir("/proc/self/fd")) == before


def test_posts_already_cached_are_not_asked_for_again(tmp_path: Path) -> None:
    """Out of the cache every post is asked for; once cached, the probes (one post in
    16) find them there and none is."""
    config, posts = site(tmp_path, 64)
    cold = Prefetch(config, posts)
    with cold:
        assert cold._thread is not None
        cold._thread.join()
    assert cold.advised == len(posts)
    for post in posts:
        (Path(post.root) / post.rel).read_bytes()  # as the reader does
    warm = Prefetch(config, posts)
    with warm:
        assert warm._thread is not None
        warm._thread.join()
    assert warm.advised == 0
    evict(Path(posts[32].root) / posts[32].rel)  # the third probe's post out again
    again = Prefetch(config, posts)
    with again:
        assert again._thread is not None
        again._thread.join()
    assert again.advised == 16  # that probe's run of posts, no other

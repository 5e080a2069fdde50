"""The walk of the content dirs (`aggregator.sources.walk`): its digest, which the
up-to-date check trusts to say "nothing changed", and its bounds on deep trees."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

from helpers import REPO, write_config, write_post

from aggregator.config import load_config
from aggregator.pipeline import build
from aggregator.problems import ProblemLog
from aggregator.sources.walk import walk_posts
from aggregator.store.rows import encode
from aggregator.store.sqlite import SQLiteStore
from aggregator.sync import walk_changes


def _walk(config_path: Path) -> tuple[list[str], str]:
    walk = walk_posts(load_config(config_path), ProblemLog(echo=False))
    return [post.rel for post in walk.posts], walk.digest


def test_digest_changes_with_every_change_the_up_to_date_check_must_see(
        tmp_path: Path) -> None:
    posts = tmp_path / "posts"
    for rel in ("a.md", "b/c.md", "b/d.md", "e.md"):
        write_post(posts, rel, f"title: {rel}")
    config = write_config(tmp_path)
    rels, first = _walk(config)
    assert rels == ["a.md", "b/c.md", "b/d.md", "e.md"]
    assert _walk(config)[1] == first  # the same tree: the same digest

    seen = {first}

    def changed() -> str:
        digest = _walk(config)[1]
        assert digest not in seen
        seen.add(digest)
        return digest

    # a rename keeps size, mtime and inode: only the path tells
    os.rename(posts / "b/d.md", posts / "b/f.md")
    changed()
    # a move to another folder under a name that joins to the same characters
    os.mkdir(posts / "b" / "c")
    os.rename(posts / "b/f.md", posts / "b/c/f.md")
    changed()
    # an edit that keeps the size: the mtime tells
    stat = (posts / "a.md").stat()
    os.utime(posts / "a.md", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))
    changed()
    # the same bytes under a new inode (an editor's save by rename)
    (posts / "e.tmp").write_bytes((posts / "e.md").read_bytes())
    os.utime(posts / "e.tmp", ns=((posts / "e.md").stat().st_atime_ns,
                                  (posts / "e.md").stat().st_mtime_ns))
    os.replace(posts / "e.tmp", posts / "e.md")
    changed()
    # a post that is not a plain file (a followed symlink) is part of the digest too
    config = write_config(tmp_path, content={"follow_symlinks": True})
    os.symlink(posts / "a.md", posts / "z.md")
    rels, digest = _walk(config)
    assert rels == ["a.md", "b/c.md", "b/c/f.md", "e.md", "z.md"]
    assert digest not in seen
    seen.add(digest)
    os.remove(posts / "z.md")
    os.symlink(posts / "e.md", posts / "z.md")  # the same name, another target
    changed()


def test_deep_tree_walked_with_few_descriptors(tmp_path: Path) -> None:
    """1,200 nested folders: deeper than Python's recursion limit, and far more than
    the 64 descriptors the walk gets here (it holds one folder open at a time)."""
    posts = tmp_path / "posts"
    write_post(posts, "top.md", "title: Top")
    fd = os.open(posts, os.O_RDONLY)
    for _ in range(1_200):  # (os.makedirs recurses: too deep for it)
        os.mkdir("d", dir_fd=fd)
        fd, parent = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(parent)
    post = os.open("deep.md", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
    os.write(post, (posts / "top.md").read_bytes())
    os.close(post)
    os.close(fd)
    config = write_config(tmp_path)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "from pathlib import Path\n"
        "from aggregator.config import load_config\n"
        "from aggregator.problems import ProblemLog\n"
        "from aggregator.sources.walk import discover\n"
        "problems = ProblemLog(echo=False)\n"
        "found = discover(load_config(Path(sys.argv[1])), problems)\n"
        "print(len(problems.items), *[p.rel.count('/') for p in found])\n")
    try:
        done = subprocess.run([sys.executable, "-c", script, str(config)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=True)
    finally:
        _remove_chain(posts, 1_200)
    assert done.stdout.split() == ["0", "1200", "0"]


def _remove_chain(posts: Path, depth: int) -> None:
    """Removed here, bottom up: pytest's clean-up of old temp dirs (shutil.rmtree,
    recursive) would hit the recursion limit on it in a later session."""
    fd = os.open(posts, os.O_RDONLY)
    try:
        os.unlink("d/" * depth + "deep.md", dir_fd=fd)
        for level in range(depth, 0, -1):
            os.rmdir("d/" * level, dir_fd=fd)
    finally:
        os.close(fd)


def test_the_walk_holds_no_object_a_post(tmp_path: Path) -> None:
    """A folder's posts are one string of names and one array of identities: at 100k
    posts a PostFile a post (~600 bytes with its strings and tuples) would be most of
    an up-to-date build's memory."""
    posts = tmp_path / "posts"
    for folder in range(10):
        (posts / f"folder {folder}").mkdir(parents=True)
        for i in range(400):
            (posts / f"folder {folder}" / f"a post named {i:04d} with some words.md"
             ).write_bytes(b"x")  # (any bytes do: the walk reads none)
    config = load_config(write_config(tmp_path))
    tracemalloc.start()
    try:
        walk = walk_posts(config, ProblemLog(echo=False))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(walk.posts) == 4000
    assert held / 4000 < 120  # bytes a post: the name's ~40 and the identity's 24
    # a post is made when asked for
    post = walk.posts[1234]
    assert post.rel == "folder 3/a post named 0034 with some words.md"
    assert post.identity == (1, *[getattr(os.stat(post.location), f) for f in
                                  ("st_mtime_ns", "st_ino")])
    assert [p.rel for p in walk.posts[398:402]] == [
        f"folder {f}/a post named {i:04d} with some words.md"
        for f, i in ((0, 398), (0, 399), (1, 0), (1, 1))]


def test_an_edit_reads_the_stored_rows_of_its_folder_only(tmp_path: Path) -> None:
    """With the folders' prints stored, an edit compares the rows of the folder whose
    print changed, not every stored identity."""
    posts = tmp_path / "posts"
    for folder in ("a", "b", "c"):
        for i in range(3):
            write_post(posts, f"{folder}/p{i}.md", f"title: {folder}{i}")
    write_post(posts, "top.md", "title: Top")
    config = load_config(write_config(tmp_path))
    build(config)
    write_post(posts, "b/p1.md", "title: Edited")
    (posts / "c" / "p2.md").unlink()
    store = SQLiteStore(config.state_path.with_name(config.state_path.name + ".cache"))
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    changed, known, gone = walk_changes(store, walk_posts(config, ProblemLog(echo=False)))
    store.close()
    assert [post.rel for post in changed] == ["b/p1.md"] and known[0] is not None
    assert gone == [(b"c/p2.md", encode(str(config.content_dirs[0])))]
    folder_reads = [s for s in statements if "instr(substr(key" in s]
    assert len(folder_reads) == 2  # b/ and c/
    assert not [s for s in statements if "ORDER BY key, root" in s]  # no full scan

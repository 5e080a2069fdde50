"""A post's file is opened without being led out of the content dirs (issue 20, item 1).

The walk looks at a post's name; the read opens it later, and by then the name may be
a symlink to anything. The race tests swap a post for a link to a secret file outside
the content dir from another process, as fast as it can, while real builds run; the
deterministic ones swap it once, between the walk and the read.
"""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import feedparser
import pytest
from helpers import write_config, write_post

from aggregator.cli import main
from aggregator.config import load_config
from aggregator.problems import ProblemLog
from aggregator.sources.content import PostReader
from aggregator.sources.walk import PostFile, discover

SECRET = b"root:x:0:0:SECRET-MARKER"

# Run in its own process (no GIL shared with the builds): replace `target` by a regular
# file, then by a symlink to `secret`, each with one rename, until killed.
_SWAPPER = """
import os, sys
target, secret = sys.argv[1], sys.argv[2]
folder = os.path.dirname(target)
plain, link = os.path.join(folder, "swap.tmp"), os.path.join(folder, "link.tmp")
body = b"---\\ntitle: Swapped\\ndate: 2026-01-03 00:00:00\\n---\\n<p>plain</p>\\n"
while True:
    with open(plain, "wb") as out:
        out.write(body)
    os.replace(plain, target)
    try:
        os.symlink(secret, link)
    except FileExistsError:
        pass
    os.replace(link, target)
"""


def _race(tmp_path: Path, seconds: float, posts: int, **content: object) -> tuple[int, int]:
    """Builds run one after another for `seconds` while posts/sub/zz.md is swapped
    between a regular file and a symlink to a secret outside the content dir:
    (builds run, builds whose output held the secret)."""
    secret = tmp_path / "secret.md"
    secret.write_bytes(b"---\ntitle: " + SECRET + b"\n---\n<p>" + SECRET + b"</p>\n")
    root = tmp_path / "posts"
    for i in range(posts):
        write_post(root, f"sub/p{i:04d}.md", f"title: Post {i}\ndate: 2026-01-02 00:00:00")
    write_post(root, "sub/zz.md", "title: Start")
    config = write_config(tmp_path, content=content)
    swapper = subprocess.Popen([sys.executable, "-c", _SWAPPER, str(root / "sub" / "zz.md"),
                                str(secret)])
    builds = leaks = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            code = main(["build", "-c", str(config)])
            assert code in (0, 1)
            builds += 1
            out = b"".join(p.read_bytes() for p in (tmp_path / "feeds").rglob("*.xml"))
            assert b"Post 0" in out  # the build published
            leaks += SECRET in out
    finally:
        swapper.kill()
        swapper.wait()
    return builds, leaks


@pytest.mark.parametrize("follow", [False, True])
def test_a_post_swapped_for_a_symlink_never_publishes_its_target(tmp_path: Path,
                                                                follow: bool) -> None:
    builds, leaks = _race(tmp_path, 4.0, 150, follow_symlinks=follow)
    assert builds >= 3
    assert leaks == 0, f"the secret was published by {leaks} of {builds} builds"


@pytest.mark.slow
def test_a_post_swapped_for_a_symlink_for_two_minutes(tmp_path: Path) -> None:
    builds, leaks = _race(tmp_path, 120.0, 2000)
    print(f"{builds} builds in 120 s, {leaks} published the secret")
    assert leaks == 0, f"the secret was published by {leaks} of {builds} builds"


# -- one swap between the walk and the read -----------------------------------------


def _walked(tmp_path: Path, rel: str = "sub/p.md", **content: object
            ) -> tuple[PostReader, PostFile, ProblemLog]:
    """A reader, and the post at `rel` as the walk found it (a regular file then)."""
    write_post(tmp_path / "posts", rel, "title: Plain")
    config = load_config(write_config(tmp_path, content=content))
    [post] = discover(config, ProblemLog(echo=False))
    problems = ProblemLog(echo=False)
    return PostReader(config, problems, lambda _id: None), post, problems  # type: ignore[arg-type,return-value]


def _secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.md"
    path.parent.mkdir()
    path.write_bytes(b"---\ntitle: " + SECRET + b"\n---\n")
    return path


def _swap_for_link(path: Path, target: Path) -> None:
    link = path.with_name("link.tmp")
    link.symlink_to(target)
    os.replace(link, path)


def _messages(problems: ProblemLog) -> list[str]:
    return [f"{p.severity.value}: {p.message}" for p in problems.items]


def test_a_post_replaced_by_a_symlink_after_the_walk_is_skipped(tmp_path: Path) -> None:
    reader, post, problems = _walked(tmp_path)
    _swap_for_link(post.path, _secret(tmp_path))
    assert reader.read_bytes(post) is None
    assert _messages(problems) == ["warning: symlink not followed "
                                   "(content.follow_symlinks is false); skipped"]
    assert problems.items[0].where == "sub/p.md"


def test_a_folder_replaced_by_a_symlink_after_the_walk_is_skipped(tmp_path: Path) -> None:
    reader, post, problems = _walked(tmp_path, "sub/deeper/p.md")
    secret = _secret(tmp_path)
    (secret.parent / "deeper").mkdir()
    os.replace(secret, secret.parent / "deeper" / "p.md")
    os.rename(tmp_path / "posts" / "sub", tmp_path / "gone")
    (tmp_path / "posts" / "sub").symlink_to(secret.parent, target_is_directory=True)
    assert reader.read_bytes(post) is None
    assert _messages(problems) == ["warning: a folder on its path is a symlink: not "
                                   "followed (content.follow_symlinks is false); skipped"]


def test_following_symlinks_a_swapped_link_out_of_the_content_dir_is_refused(
        tmp_path: Path) -> None:
    reader, post, problems = _walked(tmp_path, follow_symlinks=True)
    secret = _secret(tmp_path)
    _swap_for_link(post.path, secret)
    assert reader.read_bytes(post) is None
    assert _messages(problems) == [
        f"error: symlink points outside the content dirs ({secret}); skipped"]


def test_following_symlinks_a_swapped_link_inside_is_read(tmp_path: Path) -> None:
    reader, post, problems = _walked(tmp_path, follow_symlinks=True)
    other = write_post(tmp_path / "posts", "other/q.md", "title: Other")
    _swap_for_link(post.path, Path("../other/q.md"))
    assert reader.read_bytes(post) == other.read_bytes()
    assert problems.items == []


def test_a_post_saved_by_rename_is_still_the_post(tmp_path: Path) -> None:
    """An editor writes a new file and renames it over the post: a new inode at the
    same path, read as the post."""
    reader, post, problems = _walked(tmp_path)
    new = post.path.with_name("p.md.new")
    new.write_bytes(b"---\ntitle: Saved\n---\n<p>new</p>\n")
    os.replace(new, post.path)
    assert os.stat(post.path).st_ino != post.identity[2]
    assert reader.read_bytes(post) == b"---\ntitle: Saved\n---\n<p>new</p>\n"
    assert problems.items == []


def test_read_posts_with_a_post_swapped_since_the_walk_reads_the_rest(
        tmp_path: Path) -> None:
    """The same through read_posts (the build's read): walked, swapped, then read."""
    from aggregator.sources.read import read_posts
    from aggregator.state.store import StateStore

    reader, post, _ = _walked(tmp_path)
    reader.close()
    write_post(tmp_path / "posts", "a.md", "title: Kept")
    config = load_config(write_config(tmp_path))
    posts = discover(config, ProblemLog(echo=False))
    _swap_for_link(post.path, _secret(tmp_path))
    state = StateStore(tmp_path / "state.sqlite")
    try:
        reads = list(read_posts(config, posts, [None] * len(posts), state.first_seen,
                                lambda read: read))
    finally:
        state.close()
    assert [r.entry.title for r in reads if r.entry is not None] == ["Kept"]
    assert [(p.where, p.severity.value) for r in reads for p in r.problems] == [
        ("sub/p.md", "warning")]


# -- symlink loops (item 9) ---------------------------------------------------------


def test_symlink_loops_are_skipped_with_a_warning_and_the_rest_published(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    posts = tmp_path / "posts"
    write_post(posts, "good.md", "title: Good\ndate: 2026-01-02 00:00:00")
    write_post(posts, "sub/inner.md", "title: Inner\ndate: 2026-01-02 00:00:00")
    (posts / "self.md").symlink_to("self.md")
    (posts / "a.md").symlink_to("b.md")
    (posts / "b.md").symlink_to("a.md")
    (posts / "folder-self").symlink_to("folder-self")
    (posts / "x").symlink_to("y")
    (posts / "y").symlink_to("x")
    (posts / "sub" / "up").symlink_to("..")
    config = write_config(tmp_path, content={"follow_symlinks": True})
    capsys.readouterr()
    code = main(["build", "-c", str(config)])
    err = capsys.readouterr().err
    assert code == 0, err
    for line in ("self.md: warning: symlink loop; skipped",
                 "a.md: warning: symlink loop; skipped",
                 "b.md: warning: symlink loop; skipped",
                 "folder-self: warning: symlink loop; skipped",
                 "x: warning: symlink loop; skipped",
                 "y: warning: symlink loop; skipped",
                 "sub/up: warning: folder already walked through another path"):
        assert line in err, f"missing {line!r} in:\n{err}"
    out = (tmp_path / "feeds" / "atom.xml").read_text(encoding="utf-8")
    assert "Good" in out and "Inner" in out


# -- files that are not text (item 8) -----------------------------------------------


def _binaries() -> dict[str, bytes]:
    rng = random.Random(20)
    post = b"---\ntitle: Zipped\n---\n<p>" + b"compressed words " * 400 + b"</p>\n"
    return {"random.md": bytes(rng.randrange(256) for _ in range(3000)),
            "gzip.md": gzip.compress(post),
            "every-byte.md": bytes(range(256)) * 64}


@pytest.mark.parametrize("name", sorted(_binaries()))
def test_a_binary_file_named_md_is_skipped_with_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    posts = tmp_path / "posts"
    write_post(posts, "good.md", "title: Good\ndate: 2026-01-02 00:00:00")
    (posts / name).write_bytes(_binaries()[name])
    config = write_config(tmp_path)
    capsys.readouterr()
    code = main(["build", "-c", str(config)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{name}:1: error: not text: " in err, err
    titles = [e.title for e in feedparser.parse(tmp_path / "feeds" / "atom.xml").entries]
    assert titles == ["Good"]


def test_text_in_other_encodings_and_a_stray_nul_are_still_posts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Below the not-text share: a Latin-1 post without front matter (a warning),
    UTF-16 with either BOM (read as UTF-16), a good post with a NUL (a warning)."""
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "latin1.md").write_bytes(("Le café était très agréable à l'école, près de "
                                       "la forêt. " * 50).encode("latin-1"))
    for codec in ("utf-16-le", "utf-16-be"):
        (posts / f"{codec}.md").write_bytes(
            f"\ufeff---\ntitle: Wide 寛 {codec}\n---\n<p>x</p>\n".encode(codec))
    (posts / "nul.md").write_bytes(b"---\ntitle: Nul\n---\n<p>a\0b</p>")
    config = write_config(tmp_path)
    capsys.readouterr()
    code = main(["build", "-c", str(config)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "latin1.md:1: warning: not valid UTF-8" in err
    assert "nul.md:4: warning: NUL bytes removed" in err
    titles = sorted(e.title for e in feedparser.parse(tmp_path / "feeds" / "atom.xml").entries)
    assert titles == ["Nul", "Wide 寛 utf-16-be", "Wide 寛 utf-16-le", "latin1"]


# -- OPML files named in the config ---------------------------------------------------


_OPML = ('<opml version="2.0"><body><outline type="rss" text="Up" '
         'xmlUrl="https://up.example/feed"/></body></opml>')


@pytest.mark.timeout(30)
def test_an_opml_file_swapped_for_a_symlink_or_a_fifo_is_not_read(tmp_path: Path) -> None:
    from aggregator.sources.upstream.opml import read_opml

    (tmp_path / "real.opml").write_text(_OPML, encoding="utf-8")
    problems = ProblemLog(echo=False)
    assert [s.url for s in read_opml(tmp_path / "real.opml", problems)] == [
        "https://up.example/feed"]
    (tmp_path / "linked.opml").symlink_to(tmp_path / "real.opml")
    os.mkfifo(tmp_path / "fifo.opml")  # a plain read would wait for a writer forever
    for name in ("linked.opml", "fifo.opml"):
        assert read_opml(tmp_path / name, problems) == []
    assert [str(p) for p in problems.items] == [
        f"{tmp_path / 'linked.opml'}: cannot read OPML: it is a symlink, not followed "
        "(name the file itself); its sources skipped",
        f"{tmp_path / 'fifo.opml'}: cannot read OPML: not a regular file; its sources "
        "skipped"]

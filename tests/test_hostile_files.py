"""Hostile files in the content dir (issue 8, part 2).

Every case puts one hostile input next to a good post and runs the real CLI
(`aggregator.cli.main`). Each must give a clear `path:line: error|warning: ...` line
naming the file on stderr, finish in bounded time and memory, and still publish the
good post (and everything else).

Linux file names cannot hold NUL or `/` (the kernel refuses them: NUL ends the C
string, `/` separates components), so those two are tested as *category names*
instead; `\\`, `..`, control characters and RTL overrides are real file names here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import feedparser
import pytest
from helpers import write_config, write_post

from aggregator.cli import main

GOOD_FRONT = "title: Good\ncategories: [Fine]\ndate: 2026-01-01 00:00:00"
TIME_BOUND = 20.0  # seconds; every case here takes well under 2 s
MEMORY_BOUND = 150 * 1024 * 1024  # bytes of Python allocations at peak (tracemalloc)


def _run(tmp_path: Path, capsys: Any, **sections: Any) -> tuple[int, str, float, int]:
    """Build with the CLI; (exit code, stderr, seconds, peak traced bytes)."""
    write_post(tmp_path / "posts", "good.md", GOOD_FRONT)
    config = write_config(tmp_path, **sections)
    capsys.readouterr()
    tracemalloc.start()
    started = time.monotonic()
    try:
        code = main(["build", "-c", str(config)])
    finally:
        seconds = time.monotonic() - started
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return code, capsys.readouterr().err, seconds, peak


def _titles(tmp_path: Path, rel: str = "atom.xml") -> list[str]:
    return sorted(e.title for e in feedparser.parse(tmp_path / "feeds" / rel).entries)


def _check(tmp_path: Path, code: int, err: str, seconds: float, peak: int,
           expected_code: int, lines: list[str], titles: list[str]) -> None:
    assert code == expected_code, err
    for line in lines:
        assert line in err, f"missing {line!r} in:\n{err}"
    assert seconds < TIME_BOUND
    assert peak < MEMORY_BOUND, f"peak {peak / 2**20:.0f} MiB"
    assert _titles(tmp_path) == sorted(["Good", *titles])
    assert "Good" in _titles(tmp_path, "fine/atom.xml")
    assert "Good" in _titles(tmp_path, "fine/rss.xml")
    for line in err.splitlines():  # nothing raw from a file name reaches the terminal
        assert "\x1b" not in line and "\u202e" not in line


# -- symlinks ----------------------------------------------------------------------


def test_symlinks_out_of_the_content_dir(tmp_path: Path, capsys: Any) -> None:
    posts = tmp_path / "posts"
    secret = write_post(tmp_path / "secret", "s.md", "title: SECRET-MARKER")
    posts.mkdir()
    (posts / "file-out.md").symlink_to(secret)
    (posts / "dir-out").symlink_to(tmp_path / "secret", target_is_directory=True)
    (posts / "etc-passwd.md").symlink_to("/etc/passwd")
    (posts / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    (posts / "loop").mkdir()
    (posts / "loop" / "back").symlink_to(posts, target_is_directory=True)
    write_post(posts, "inner/ok.md", "title: Inner\ndate: 2026-01-02 00:00:00")
    (posts / "inside.md").symlink_to(posts / "inner" / "ok.md")
    code, err, seconds, peak = _run(tmp_path, capsys, content={"follow_symlinks": True})
    _check(tmp_path, code, err, seconds, peak, 1, [
        "file-out.md: error: symlink points outside the content dirs",
        "dir-out: error: symlink points outside the content dirs",
        "etc-passwd.md: error: symlink points outside the content dirs",
        "dangling.md: error: symlink points outside the content dirs",
    ], ["Inner", "Inner"])  # inside.md and inner/ok.md: two files, two posts
    out = b"".join(p.read_bytes() for p in (tmp_path / "feeds").rglob("*") if p.is_file())
    assert b"SECRET-MARKER" not in out and b"root:x:0" not in out


def test_symlinks_not_followed_by_default(tmp_path: Path, capsys: Any) -> None:
    posts = tmp_path / "posts"
    secret = write_post(tmp_path / "secret", "s.md", "title: SECRET-MARKER")
    posts.mkdir()
    (posts / "file-out.md").symlink_to(secret)
    (posts / "dir-out").symlink_to(tmp_path / "secret", target_is_directory=True)
    code, err, seconds, peak = _run(tmp_path, capsys)
    _check(tmp_path, code, err, seconds, peak, 0, [
        "file-out.md: warning: symlink not followed",
        "dir-out: warning: symlink not followed"], [])


def test_walk_order_is_the_sorted_order_of_relative_paths(tmp_path: Path) -> None:
    """discover() does not sort what it found: the walk must meet posts in the order
    of their relative paths, even where a folder's name is a prefix of a post's or
    another folder's ("a" < "a b" as names, but "a b/x" < "a/x" as paths)."""
    from aggregator.config import load_config
    from aggregator.problems import ProblemLog
    from aggregator.sources.walk import discover

    rels = ["a.md", "a-b.md", "a0.md", "a/x.md", "a/b/c.md", "a b/x.md", "a.b/y.md",
            "ab/x.md", "ab.md", "A/z.md", "é/x.md", "e/x.md", "z.md", "二/三.md",
            "二 次/一.md", "a/b.md", "a/b0/c.md", "a/b-/c.md"]
    for rel in rels:
        write_post(tmp_path / "posts", rel, f"title: {rel}")
    config = load_config(write_config(tmp_path))
    found = [post.rel for post in discover(config, ProblemLog(echo=False))]
    assert found == sorted(rels)


# -- encodings and bytes -----------------------------------------------------------


def test_not_utf8(tmp_path: Path, capsys: Any) -> None:
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "latin1.md").write_bytes(
        "\n---\ntitle: Latin\ndate: 2026-01-02 00:00:00\n---\n<p>caf\xe9</p>\n".encode("latin-1"))
    (posts / "utf16.md").write_bytes(
        "---\ntitle: Wide\n---\n<p>x</p>\n".encode("utf-16"))
    (posts / "random.md").write_bytes(bytes(range(256)) * 64)
    code, err, seconds, peak = _run(tmp_path, capsys)
    assert "latin1.md:6: warning: not valid UTF-8; undecodable bytes replaced" in err
    assert "utf16.md" not in err  # UTF-16 with a BOM is read as such
    assert "random.md:2: warning: not valid UTF-8" in err  # first bad byte: 0x80
    assert "random.md:1: warning: NUL bytes removed" in err
    # random.md is not text (skipped: tests/test_read_safety.py); nothing crashes the build
    _check(tmp_path, code, err, seconds, peak, code, [], [
        t for t in _titles(tmp_path) if t != "Good"])
    assert "Latin" in _titles(tmp_path) and "Wide" in _titles(tmp_path)


def test_post_of_nul_bytes(tmp_path: Path, capsys: Any) -> None:
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "nul.md").write_bytes(b"\0" * 65536)
    (posts / "nul-front.md").write_bytes(b"---\ntitle: Nul\0Title\n---\n<p>a\0b</p>")
    code, err, seconds, peak = _run(tmp_path, capsys)
    _check(tmp_path, code, err, seconds, peak, 1, [
        "nul.md:1: warning: NUL bytes removed", "nul.md:1: error: empty post; skipped",
        "nul-front.md:2: warning: NUL bytes removed"], ["NulTitle"])


def _big_post(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = b"---\ntitle: Huge\n---\n<p>"
    with open(path, "wb") as handle:
        handle.write(head)
        block = b"A" * (1 << 20)
        left = size - len(head)
        while left > 0:
            handle.write(block[:left])
            left -= len(block)


def test_oversized_post_reduced(tmp_path: Path, capsys: Any) -> None:
    """The 200 MB case, scaled down: a 1 MB post over a 64 KB content.max_post_bytes."""
    _big_post(tmp_path / "posts" / "huge.md", 1 << 20)
    code, err, seconds, peak = _run(tmp_path, capsys, content={"max_post_bytes": 65536})
    _check(tmp_path, code, err, seconds, peak, 1, [
        "huge.md:1: error: post is 1048576 bytes, over content.max_post_bytes (65536); "
        "skipped"], [])
    assert peak < 16 * 1024 * 1024  # never read: the size is checked first


# Peak RSS of the child itself: VmHWM belongs to the process image after exec, while
# getrusage's ru_maxrss survives execve and would count the parent's (pytest's) memory.
_MEASURE = """
import re, sys
from aggregator.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print("MAXRSS", re.search(r"VmHWM:\\s*(\\d+)", status).group(1), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_200_mb_post(tmp_path: Path) -> None:
    """A real 200 MB post with the default max_post_bytes (10 MiB): skipped unread."""
    _big_post(tmp_path / "posts" / "huge.md", 200 * 1024 * 1024)
    write_post(tmp_path / "posts", "good.md", GOOD_FRONT)
    config = write_config(tmp_path)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, "build", "-c", str(config)],
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert "huge.md:1: error: post is 209715200 bytes, over content.max_post_bytes " \
           "(10485760); skipped" in proc.stderr
    maxrss_kib = int(proc.stderr.split("MAXRSS ")[1].split()[0])
    print(f"200 MB post: {seconds:.2f}s, max RSS {maxrss_kib // 1024} MiB")
    assert seconds < 60 and maxrss_kib < 200 * 1024  # less than the file: never read whole
    assert _titles(tmp_path) == ["Good"]


# -- nesting and front matter --------------------------------------------------------


def test_html_nested_10000_levels(tmp_path: Path, capsys: Any) -> None:
    depth = 10_000
    write_post(tmp_path / "posts", "deep.md", "title: Deep\ndate: 2026-01-02 00:00:00",
               body="<div>" * depth + "<p>bottom</p>" + "</div>" * depth)
    write_post(tmp_path / "posts", "deep-md.md", "title: Quotes\ndate: 2026-01-02 00:00:00",
               body="> " * 5_000 + "quoted\n")  # markdown-it caps nesting itself (20)
    code, err, seconds, peak = _run(tmp_path, capsys)
    _check(tmp_path, code, err, seconds, peak, 0, [
        "deep.md:7: warning: HTML nested 10000 levels deep; tags below level 512 dropped",
        ], ["Deep", "Quotes"])
    assert "deep-md.md" not in err
    deep = [e for e in feedparser.parse(tmp_path / "feeds/atom.xml").entries
            if e.title == "Deep"][0]
    assert "bottom" in deep.content[0].value  # the text survives, only markup is cut


def test_yaml_alias_bomb(tmp_path: Path, capsys: Any) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 12):  # 9**12 ≈ 2.8e11 strings when expanded
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    front = "\n".join(levels) + "\ntitle: *l\ncategories: *l\ntags: *l\nauthor: *l"
    write_post(tmp_path / "posts", "bomb.md", front)
    write_post(tmp_path / "posts", "small-bomb.md",  # a small expansion is fine
               "x: &x [a, b]\ntitle: Small\ntags: *x\ndate: 2026-01-02 00:00:00")
    code, err, seconds, peak = _run(tmp_path, capsys)
    _check(tmp_path, code, err, seconds, peak, 1, [
        "bomb.md:3: error: front matter expands to more than 10000 values "
        "(YAML alias bomb?); skipped"], ["Small"])


def test_category_path_500_levels(tmp_path: Path, capsys: Any) -> None:
    posts = tmp_path / "posts"
    cats = ", ".join(f"L{i}" for i in range(500))
    write_post(posts, "deep-front.md", f"title: Front\ndate: 2026-01-02 00:00:00\n"
                                      f"categories: [{cats}]")
    folder = "/".join(f"d{i}" for i in range(500))  # the path from the folders
    write_post(posts, f"{folder}/deep-dir.md", "title: Folders\ndate: 2026-01-02 00:00:00")
    code, err, seconds, peak = _run(tmp_path, capsys)
    _check(tmp_path, code, err, seconds, peak, 0, [
        "deep-front.md:5: warning: category path has 500 levels; cut to output.max_depth (16)",
        f"{folder}/deep-dir.md:2: warning: category path has 500 levels"],
        ["Folders", "Front"])
    deepest = max(len(p.relative_to(tmp_path / "feeds").parts)
                  for p in (tmp_path / "feeds").rglob("atom.xml"))
    assert deepest == 17  # 16 levels + atom.xml


def test_category_name_10000_chars(tmp_path: Path, capsys: Any) -> None:
    long = "x" * 10_000
    words = " ".join(["word"] * 2_000)
    wide = "二" * 10_000  # 30,000 bytes of UTF-8
    write_post(tmp_path / "posts", "long.md", f"title: Long\ndate: 2026-01-02 00:00:00\n"
                                             f"categories: [{long}, {words}, {wide}]")
    code, err, seconds, peak = _run(tmp_path, capsys)
    _check(tmp_path, code, err, seconds, peak, 0, [], ["Long"])
    for path in (tmp_path / "feeds").rglob("*"):
        assert len(path.name.encode()) < 100
    # the category itself stays in the entry (a reader shows it), just not in paths
    long_entry = feedparser.parse(tmp_path / "feeds/atom.xml").entries
    assert any(len(t.term) >= 10_000 for e in long_entry for t in e.get("tags", []))


# -- file names -------------------------------------------------------------------------


NAMES = {
    "backslash": "C:\\Users\\evil.md",
    "dots": "..md",
    "dots-inside": "a..b..md",
    "dot-folder": "..x/y.md",
    "newline": "two\nlines.md",
    "escape": "\x1b[31mred\x1b[0m.md",
    "bell-tab": "bell\x07tab\t.md",
    "del": "del\x7f.md",
    "rtl-override": "evil\u202egnp.md",
    "bidi-isolate": "iso\u2066late\u2069.md",
    "invalid-utf8-name": os.fsdecode(b"bad\xff\xfename.md"),
}


@pytest.mark.parametrize("case", NAMES)
def test_hostile_file_names(case: str, tmp_path: Path, capsys: Any) -> None:
    name = NAMES[case]
    posts = tmp_path / "posts"
    write_post(posts, name, "title: Hostile name\ndate: 2026-01-02 00:00:00")
    # the same name, broken: its error line must name it, escaped
    broken = name[:-3] + "-broken.md"
    (posts / broken).write_bytes(b"---\ntitle: never closed\n")
    code, err, seconds, peak = _run(tmp_path, capsys)
    if case == "invalid-utf8-name":  # no id, link or log line could encode it: skipped
        _check(tmp_path, code, err, seconds, peak, 1, [
            "bad\\udcff\\udcfename.md: error: file name is not valid UTF-8 (rename it); "
            "skipped"], [])
        return
    _check(tmp_path, code, err, seconds, peak, 1, [], ["Hostile name"])
    lines = [line for line in err.splitlines() if "error: front matter opened" in line]
    assert len(lines) == 1, err
    shown = lines[0].split(":1: error:")[0]
    assert "-broken" in shown
    assert not any(ord(c) < 32 or c == "\x7f" or 0x202a <= ord(c) <= 0x202e
                   or 0x2066 <= ord(c) <= 0x2069 for c in shown), repr(shown)
    # everything published is well-formed XML, inside the output dir
    out = (tmp_path / "feeds").resolve()
    for path in out.rglob("*.xml"):
        assert out in path.resolve().parents
    entry = [e for e in feedparser.parse(out / "atom.xml").entries
             if e.title == "Hostile name"][0]
    assert not any(ord(c) < 32 for c in entry.id + entry.link)


@pytest.mark.parametrize("name", ["x\x00y", "/etc/passwd", "a/../../b", "..", "\u202eevil",
                                  "C:\\win\\..\\x", "\x1b[2J"])
def test_names_linux_forbids_as_categories(name: str, tmp_path: Path, capsys: Any) -> None:
    """NUL and `/` cannot be in a Linux file name: the same attack as a category name."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\0") \
        .replace("\x1b", "\\e")
    write_post(tmp_path / "posts", "p.md",
               f'title: Cat\ndate: 2026-01-02 00:00:00\ncategories: ["{escaped}", sub]')
    code, err, seconds, peak = _run(tmp_path, capsys)
    _check(tmp_path, code, err, seconds, peak, 0, [], ["Cat"])
    out = (tmp_path / "feeds").resolve()
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.parent.name not in ("posts", "state"):
            assert path.name == "config.yaml" or out in path.resolve().parents, path
    index = (out / "index.html").read_text()
    assert "\x00" not in index and "\x1b" not in index


def test_many_hostile_inputs_at_once_everything_else_published(tmp_path: Path,
                                                               capsys: Any) -> None:
    """All of the above in one content dir, with 50 good posts: every good one published."""
    posts = tmp_path / "posts"
    for i in range(50):
        write_post(posts, f"ok/p{i}.md", f"title: Ok {i}\ncategories: [Fine]\n"
                                        f"date: 2026-01-02 00:00:{i:02d}")
    (posts / "nul.md").write_bytes(b"\0" * 4096)
    (posts / "out.md").symlink_to("/etc/passwd")
    _big_post(posts / "huge.md", 200_000)
    write_post(posts, "deep.md", "title: Deep", body="<b>" * 10_000)
    write_post(posts, "bomb.md", 'a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,'
                                 '*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
                                 'd: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ntitle: Bomb')
    (posts / "bad\x1b.md").write_bytes(b"\xff\xfe\x00garbage")
    code, err, seconds, peak = _run(tmp_path, capsys, content={"max_post_bytes": 100_000,
                                                               "follow_symlinks": True})
    assert code == 1, err
    assert seconds < TIME_BOUND and peak < MEMORY_BOUND
    titles = _titles(tmp_path, "fine/atom.xml")
    assert sorted(titles) == sorted(["Good", *(f"Ok {i}" for i in range(50))])
    for where in ("nul.md:1: error", "out.md: error", "huge.md:1: error", "bomb.md:3: error",
                  "deep.md:6: warning", "bad\\u001b.md:1: warning"):
        assert where in err, (where, err)


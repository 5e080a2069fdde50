"""`write_posts` against hostile feeds and trees (issue 20, items 3 and 4): an upstream
item claiming a local post's id or link never replaces it, and a post is never written
through a symbolic link. Real servers on 127.0.0.1, real files, feeds parsed back."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers import write_post
from pytest_httpserver import HTTPServer
from upstream_support import published, run, upstream_config

XML = "application/rss+xml"


def _feed(items: list[tuple[str, str, str]]) -> bytes:
    """RSS 2.0 with (guid, title, link) items, dated after every local post here."""
    body = "".join(
        f"<item><guid isPermaLink=\"false\">{guid}</guid><title>{title}</title>"
        f"<link>{link}</link><description>&lt;p&gt;Body of {title}&lt;/p&gt;</description>"
        f"<pubDate>Mon, 0{i + 1} Jun 2026 10:00:00 GMT</pubDate></item>"
        for i, (guid, title, link) in enumerate(items))
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Up</title><link>https://up.example/</link><description>d</description>"
            f"{body}</channel></rss>").encode()


def _entries(tmp: Path) -> dict[str, tuple[str, str]]:
    """id -> (title, link) of the root feed."""
    return {e.id: (e.title, e.link) for e in published(tmp).entries}


# --- item 3: a local post always wins ---------------------------------------------------

def test_an_upstream_item_never_replaces_a_local_post(tmp_path: Path, httpserver: HTTPServer,
                                                      capsys: Any) -> None:
    """Items claiming a local post's (predictable) id or its link are written as posts
    (write_posts), yet the local posts stay published and each collision is reported
    with the source URL and the local post's path."""
    config = upstream_config(tmp_path, [{"url": httpserver.url_for("/feed"), "category": "Up",
                                         "write_posts": True}])
    write_post(tmp_path / "posts", "blog/hello.md", "title: Hello\ndate: 2025-01-01 10:00:00")
    write_post(tmp_path / "posts", "blog/linked.md", "title: Linked\n"
               "date: 2025-01-02 10:00:00\nlink: https://example.org/linked/")
    httpserver.expect_request("/feed").respond_with_data(_feed([]), content_type=XML)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    local = _entries(tmp_path)
    hello_id = next(i for i, (title, _) in local.items() if title == "Hello")
    linked_id = next(i for i, (title, _) in local.items() if title == "Linked")
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(_feed([
        (hello_id, "Stolen id", "https://evil.example/1"),
        ("urn:x:2", "Stolen link", "https://example.org/linked/"),
        ("urn:x:3", "Honest", "https://up.example/3")]), content_type=XML)
    url = httpserver.url_for("/feed")
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    entries = _entries(tmp_path)
    assert entries[hello_id][0] == "Hello"
    assert entries[linked_id] == ("Linked", "https://example.org/linked/")
    titles = sorted(title for title, _ in entries.values())
    assert titles == ["Hello", "Honest", "Linked"]
    for local_path in ("blog/hello.md", "blog/linked.md"):
        assert any(url in line and local_path in line and "warning" in line
                   for line in err.splitlines()), err
    # the same on a build without the network, and again (nothing remembered wrongly)
    for _ in range(2):
        code, err = run(config, capsys, "build")
        assert code == 0, err
        assert _entries(tmp_path) == entries


# --- item 4: never written through a link -------------------------------------------------

def _outside(tmp: Path) -> Path:
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return elsewhere


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


def test_a_linked_category_folder_is_refused(tmp_path: Path, httpserver: HTTPServer,
                                             capsys: Any) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        _feed([("urn:x:1", "Alpha", "https://up.example/1")]), content_type=XML)
    url = httpserver.url_for("/feed")
    config = upstream_config(tmp_path, [{"url": url, "category": ["Up", "Tech"],
                                         "write_posts": True}])
    elsewhere = _outside(tmp_path)
    (tmp_path / "posts" / "up").mkdir(parents=True)
    os.symlink(elsewhere, tmp_path / "posts" / "up" / "tech")  # a nested folder
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 1, err
    assert _files(elsewhere) == {}
    line = next(x for x in err.splitlines() if "never written through a link" in x)
    assert str(tmp_path / "posts" / "up" / "tech") in line and url in line
    assert "Traceback" not in err
    # the entry is still published, as the upstream entry it is
    assert [e.title for e in published(tmp_path).entries] == ["Alpha"]


def _one_written_post(tmp: Path, httpserver: HTTPServer, capsys: Any) -> tuple[Path, str, Path]:
    """(config, source URL, the post written for its one item under posts/tech)."""
    httpserver.expect_request("/feed").respond_with_data(
        _feed([("urn:x:1", "Alpha", "https://up.example/1")]), content_type=XML)
    url = httpserver.url_for("/feed")
    config = upstream_config(tmp, [{"url": url, "category": "Tech", "write_posts": True}])
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    (written,) = (tmp / "posts" / "tech").iterdir()
    return config, url, written


def _fetch_a_change(config: Path, url: str, written: Path, httpserver: HTTPServer,
                    capsys: Any) -> None:
    """The item changes upstream; the fetch refuses to write it and says where, why."""
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(
        _feed([("urn:x:1", "Alpha", "https://up.example/1")]).replace(b"Body of", b"New body"),
        content_type=XML)
    code, err = run(config, capsys, "fetch", "--all")
    line = next(x for x in err.splitlines() if "never written through a link" in x)
    assert str(written) in line and url in line
    assert code == 1 and "Traceback" not in err


def test_a_written_post_whose_folder_became_a_link_is_not_rewritten(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    """A post we wrote, then its folder moved away and replaced by a link to the copy:
    the next change upstream must not rewrite the copy outside the content dir."""
    config, url, written = _one_written_post(tmp_path, httpserver, capsys)
    tech = written.parent
    elsewhere = _outside(tmp_path) / "tech"
    tech.rename(elsewhere)
    os.symlink(elsewhere, tech)
    before = _files(elsewhere)
    _fetch_a_change(config, url, written, httpserver, capsys)
    assert _files(elsewhere) == before


def test_a_linked_post_file_is_never_replaced_or_read(tmp_path: Path, httpserver: HTTPServer,
                                                      capsys: Any) -> None:
    config, url, written = _one_written_post(tmp_path, httpserver, capsys)
    victim = _outside(tmp_path) / "victim.md"
    victim.write_bytes(written.read_bytes())  # the bytes we wrote: "unedited"
    written.unlink()
    os.symlink(victim, written)
    _fetch_a_change(config, url, written, httpserver, capsys)
    assert written.is_symlink() and os.readlink(written) == str(victim)
    assert b"New body" not in victim.read_bytes()


@pytest.mark.timeout(30)
def test_a_written_post_replaced_by_a_fifo_is_refused_without_waiting(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    """A FIFO where a post we wrote was: reading it back to see whether it was edited
    must not wait for a writer forever; it is not a regular file, so it is refused."""
    config, url, written = _one_written_post(tmp_path, httpserver, capsys)
    written.unlink()
    os.mkfifo(written)
    _fetch_a_change(config, url, written, httpserver, capsys)
    assert stat.S_ISFIFO(written.lstat().st_mode)

"""OPML import/export, image probing and `write_posts`, against real servers on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_httpserver import HTTPServer
from upstream_support import published, rss, run, titles, upstream_config
from werkzeug import Request, Response

from aggregator.config import load_config
from aggregator.problems import ProblemLog
from aggregator.sources.upstream import guard
from aggregator.sources.upstream.opml import with_opml_sources

XML = "application/rss+xml"


def _edit(config: Path, section: str, **values: Any) -> None:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data.setdefault(section, {}).update(values)
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


# --- OPML -----------------------------------------------------------------------------

SUBSCRIPTIONS = """<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <head><title>My feeds</title></head>
  <body>
    <outline text="Tech">
      <outline text="Python">
        <outline type="rss" text="Planet Python" title="Planet Python"
                 xmlUrl="{base}/planet"/>
        <outline type="rss" text="Løb &amp; Co" xmlUrl="https://lob.example/feed"/>
      </outline>
      <outline type="rss" text="LWN" xmlUrl="https://lwn.example/rss"/>
    </outline>
    <outline text="二次元">
      <outline type="rss" text="Anime" xmlUrl="https://anime.example/atom"/>
    </outline>
    <outline type="rss" text="Flat" category="/News/World,/Other" xmlUrl="https://flat.example/f"/>
    <outline type="rss" text="https://untitled.example/f" xmlUrl="https://untitled.example/f"/>
    <outline type="rss" text="bad" xmlUrl="ftp://nope.example/f"/>
  </body>
</opml>
"""


def _sources(config: Path) -> set[tuple[str, str | None, tuple[str, ...]]]:
    loaded = with_opml_sources(load_config(config), ProblemLog())
    return {(s.url, s.title, s.category) for s in loaded.upstream}


def test_opml_import_export_round_trip(tmp_path: Path, httpserver: HTTPServer,
                                       capsys: Any) -> None:
    base = httpserver.url_for("").rstrip("/")
    (tmp_path / "subs.opml").write_text(SUBSCRIPTIONS.format(base=base), encoding="utf-8")
    config = upstream_config(tmp_path, [
        {"url": "https://inline.example/feed", "category": ["Inline", "Sub"], "title": "In"},
        {"opml": "subs.opml"},
        {"url": "https://lwn.example/rss", "category": "Dup"}])
    expected = {
        ("https://inline.example/feed", "In", ("Inline", "Sub")),
        ("https://lwn.example/rss", None, ("Dup",)),  # inline wins over the OPML line
        (f"{base}/planet", "Planet Python", ("Tech", "Python")),
        ("https://lob.example/feed", "Løb & Co", ("Tech", "Python")),
        ("https://anime.example/atom", "Anime", ("二次元",)),
        ("https://flat.example/f", "Flat", ("News", "World")),
        ("https://untitled.example/f", None, ()),
    }
    assert _sources(config) == expected
    code, err = run(config, capsys, "check")
    assert "is not an http(s) URL; skipped" in err and "listed twice" in err

    out = tmp_path / "out" / "export.opml"
    out.parent.mkdir()
    code, err = run(config, capsys, "opml", "export", "-o", str(out))
    assert code == 0, err
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<?xml") and '<opml version="2.0">' in text
    # A second config made only of the exported file reads back the same sources.
    other = tmp_path / "other"
    other.mkdir()
    again = upstream_config(other, [{"opml": str(out)}])
    assert _sources(again) == expected
    # Standard output too.
    capsys.readouterr()
    from aggregator.cli import main
    assert main(["opml", "export", "-c", str(config)]) == 0
    assert capsys.readouterr().out == text

    # An OPML source is polled like an inline one and lands in its category.
    httpserver.expect_request("/planet").respond_with_data(rss([("p1", "Py")]),
                                                           content_type=XML)
    only = tmp_path / "only"
    only.mkdir()
    (only / "subs.opml").write_text(
        '<opml version="2.0"><body><outline text="Tech"><outline text="Python">'
        f'<outline type="rss" text="Planet" xmlUrl="{base}/planet"/></outline></outline>'
        "</body></opml>", encoding="utf-8")  # only the local server: no outside DNS
    cfg = upstream_config(only, [{"opml": "subs.opml"}])
    code, err = run(cfg, capsys, "fetch", "--all")
    assert code == 0, err
    assert titles(only, "tech/python/atom.xml") == ["Py"]


def test_opml_broken_file_is_reported(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "bad.opml").write_text("<opml><body><outline", encoding="utf-8")
    config = upstream_config(tmp_path, [{"opml": "bad.opml"}, {"opml": "missing.opml"}])
    code, err = run(config, capsys, "check")
    assert code == 1
    assert "bad.opml: error: cannot read OPML" in err
    assert "missing.opml: error: cannot read OPML" in err


# --- image probing ----------------------------------------------------------------------

def _media_feed(images: list[str]) -> bytes:
    items = "".join(
        f"<item><guid>g{i}</guid><title>T{i}</title><link>https://up.example/{i}</link>"
        f"<description>&lt;p&gt;b&lt;/p&gt;</description>"
        f"<pubDate>Mon, 0{i + 1} Jun 2025 10:00:00 GMT</pubDate>"
        f'<media:content url="{url}" medium="image"/></item>'
        for i, url in enumerate(images))
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0" '
            f'xmlns:media="http://search.yahoo.com/mrss/"><channel><title>Up</title>'
            f"<link>https://up.example/</link><description>d</description>{items}"
            f"</channel></rss>").encode()


def _enclosures(tmp: Path) -> dict[str, tuple[str, str]]:
    return {e.title: tuple((x.get("type"), x.get("length")) for x in e.get("enclosures", ()))
            for e in published(tmp, "rss.xml").entries}


def test_image_probing(tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    head = httpserver.url_for("/img/head")
    ranged = httpserver.url_for("/img/ranged")
    missing = httpserver.url_for("/img/missing")
    httpserver.expect_request("/feed").respond_with_data(
        _media_feed([head, ranged, missing]), content_type=XML)

    def image(request: Request) -> Response:
        if request.path == "/img/head":
            return Response(b"x" * 1234, content_type="image/png")
        if request.path == "/img/missing":
            return Response("no", status=404)
        if request.method == "HEAD":  # this server refuses HEAD: a ranged GET it is
            return Response("", status=405)
        assert request.headers.get("Range") == "bytes=0-0"
        return Response(b"\xff", status=206, content_type="image/webp",
                        headers={"Content-Range": "bytes 0-0/5678"})

    for path in ("/img/head", "/img/ranged", "/img/missing"):
        httpserver.expect_request(path).respond_with_handler(image)
    config = upstream_config(tmp_path, [{"url": httpserver.url_for("/feed"), "category": "Up"}])
    _edit(config, "images", probe=True)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert _enclosures(tmp_path) == {"T0": (("image/png", "1234"),),
                                     "T1": (("image/webp", "5678"),), "T2": ()}
    probes = [(r.method, r.path) for r, _ in httpserver.log if r.path.startswith("/img/")]
    assert sorted(probes) == [("GET", "/img/ranged"), ("HEAD", "/img/head"),
                              ("HEAD", "/img/missing"), ("HEAD", "/img/ranged")]
    count = len(httpserver.log)
    # Cached: a second poll and a build ask nothing about images; results still applied.
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert len(httpserver.log) == count + 1  # the feed only
    (tmp_path / "feeds" / "rss.xml").unlink()
    code, err = run(config, capsys, "build")
    assert code == 0, err
    assert len(httpserver.log) == count + 1
    assert _enclosures(tmp_path)["T0"] == (("image/png", "1234"),)


def test_image_probe_obeys_the_guard(tmp_path: Path, httpserver: HTTPServer, capsys: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: the feed server counts as public (test hook `TREAT_AS_PUBLIC`); the
    image sits on a second loopback server, which the guard refuses."""
    inner = HTTPServer(host="127.0.0.1")
    inner.start()
    try:
        inner.expect_request("/img").respond_with_data(b"", content_type="image/png")
        monkeypatch.setattr(guard, "TREAT_AS_PUBLIC", {("127.0.0.1", httpserver.port)})
        httpserver.expect_request("/feed").respond_with_data(
            _media_feed([f"http://localhost:{inner.port}/img"]), content_type=XML)
        config = upstream_config(tmp_path, [{"url": httpserver.url_for("/feed"),
                                             "category": "Up"}],
                                 allow_private_addresses=False)
        _edit(config, "images", probe=True)
        code, err = run(config, capsys, "fetch", "--all")
        assert code == 0, err  # a refused probe never fails anything
        assert len(inner.log) == 0
        assert _enclosures(tmp_path) == {"T0": ()}
    finally:
        inner.clear()
        inner.stop()


# --- write_posts ------------------------------------------------------------------------

def _posts(tmp: Path) -> dict[str, bytes]:
    root = tmp / "posts"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.md"))}


def test_write_posts_idempotent_and_never_overwrites_edits(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    feed = rss([("a1", "Alpha"), ("b2", "Beta <b>bold</b>")],
               extra="<category>tagged</category>")
    feed = feed.replace(b"Body of Alpha", b"Body&lt;script&gt;alert(1)&lt;/script&gt;")
    httpserver.expect_request("/feed").respond_with_data(feed, content_type=XML)
    url = httpserver.url_for("/feed")
    config = upstream_config(tmp_path, [{"url": url, "category": ["Up", "Stream"],
                                         "write_posts": True}])
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    first = _posts(tmp_path)
    assert len(first) == 2 and all(name.startswith("up/stream/") for name in first)
    alpha = next(v for k, v in first.items() if k.startswith("up/stream/alpha-"))
    assert b"<script" not in alpha and b"<p>Body</p>" in alpha
    assert b"upstream: " + url.encode() in alpha
    stamps = {p: (tmp_path / "posts" / p).stat().st_mtime_ns for p in first}
    # Each entry once in the feeds (as the post), with the upstream entry's id.
    ids = {yaml.safe_load(v.split(b"---\n")[1])["id"] for v in first.values()}
    feed_entries = published(tmp_path).entries
    assert len(feed_entries) == 2 and {e.id for e in feed_entries} == ids
    assert len(titles(tmp_path, "up/stream/atom.xml")) == 2
    assert "duplicate" not in err
    # Second poll: nothing rewritten.
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0 and "duplicate" not in err
    assert _posts(tmp_path) == first
    assert {p: (tmp_path / "posts" / p).stat().st_mtime_ns for p in first} == stamps
    assert len(published(tmp_path).entries) == 2
    # A person edits Alpha; upstream changes both: Beta (unedited) follows, Alpha stays.
    alpha_path = next(tmp_path / "posts" / p for p in first if p.startswith("up/stream/alpha"))
    alpha_path.write_bytes(alpha.replace(b"title: Alpha", b"title: Alpha (edited)"))
    edited = alpha_path.read_bytes()
    httpserver.clear()
    httpserver.expect_request("/feed").respond_with_data(
        feed.replace(b"Body of Beta", b"New body of Beta").replace(b"Body&lt;", b"Changed&lt;"),
        content_type=XML)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert alpha_path.read_bytes() == edited
    beta = next(v for k, v in _posts(tmp_path).items() if k.startswith("up/stream/beta"))
    assert b"New body of Beta" in beta
    assert "Alpha (edited)" in titles(tmp_path)
    assert not [p for p in (tmp_path / "posts").rglob(".*.tmp")]  # no temp files left


def test_write_posts_never_overwrites_a_foreign_file(tmp_path: Path, httpserver: HTTPServer,
                                                     capsys: Any) -> None:
    httpserver.expect_request("/feed").respond_with_data(rss([("a1", "Alpha")]),
                                                         content_type=XML)
    config = upstream_config(tmp_path, [{"url": httpserver.url_for("/feed"), "category": "Up",
                                         "write_posts": True}])
    # Find where it would go, put a person's file there first.
    run(config, capsys, "fetch", "--all")
    (target,) = (tmp_path / "posts").rglob("*.md")
    os.remove(tmp_path / "state" / "test.sqlite")
    target.write_text("---\ntitle: Mine\n---\n<p>mine</p>\n", encoding="utf-8")
    code, err = run(config, capsys, "fetch", "--all")
    assert "a file we did not write is already there" in err
    assert target.read_text(encoding="utf-8").startswith("---\ntitle: Mine")


def test_image_probes_bounded_per_run(tmp_path: Path, httpserver: HTTPServer,
                                      capsys: Any) -> None:
    urls = [httpserver.url_for(f"/pic/{i}") for i in range(3)]
    httpserver.expect_request("/feed").respond_with_data(_media_feed(urls), content_type=XML)
    for i in range(3):
        httpserver.expect_request(f"/pic/{i}").respond_with_data(b"x" * 10,
                                                                 content_type="image/gif")
    config = upstream_config(tmp_path, [{"url": httpserver.url_for("/feed"), "category": "Up"}])
    _edit(config, "images", probe=True, probe_max=2)

    def probes() -> int:
        return sum(1 for r, _ in httpserver.log if r.path.startswith("/pic/"))

    run(config, capsys, "fetch", "--all")
    assert probes() == 2
    run(config, capsys, "fetch", "--all")
    assert probes() == 3  # the one left over, then nothing more
    run(config, capsys, "fetch", "--all")
    assert probes() == 3
    assert all(e == (("image/gif", "10"),) for e in _enclosures(tmp_path).values())


def test_probe_cache_many_urls(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from aggregator.state.probes import Probe, ProbeCache
    from aggregator.state.store import StateStore

    store = StateStore(tmp_path / "s.sqlite")
    cache, now = ProbeCache(store), datetime.now(UTC).replace(microsecond=0)
    for i in range(300):
        cache.put(Probe(f"https://i.example/{i}", 200, "image/png", i, now))
    urls = [f"https://i.example/{i}" for i in range(0, 600, 2)]
    found = cache.get(urls)
    assert len(found) == 150 and found["https://i.example/8"].length == 8
    assert len(cache.get(urls[:3])) == 3
    store.close()


def _post_with_unknown_image(tmp_path: Path, httpserver: HTTPServer, date: str) -> Path:
    """A site (probing on) with one post whose headimg URL has no extension: a 42-byte
    PNG only a probe can type."""
    httpserver.expect_request("/api/logo").respond_with_data(b"p" * 42,
                                                             content_type="image/png")
    config = upstream_config(tmp_path, [])
    _edit(config, "images", probe=True)
    (tmp_path / "posts" / "p.md").write_text(
        f"---\ntitle: Logo\ncategories: [A]\ndate: {date}\n"
        f"headimg: {httpserver.url_for('/api/logo')}\n---\n<p>x</p>\n", encoding="utf-8")
    return config


def test_post_images_probed_by_fetch_and_applied_by_build(tmp_path: Path,
                                                         httpserver: HTTPServer,
                                                         capsys: Any) -> None:
    """A post's headimg with no extension: `build` cannot tell its type (no network),
    `fetch` probes it, and from then on every build carries the enclosure."""
    config = _post_with_unknown_image(tmp_path, httpserver, "2026-01-01 00:00:00")
    code, _ = run(config, capsys, "build")
    assert code == 0 and _enclosures(tmp_path) == {"Logo": ()}
    assert len(httpserver.log) == 0  # build never touches the network
    code, _ = run(config, capsys, "fetch", "--all")
    assert code == 0
    assert _enclosures(tmp_path) == {"Logo": (("image/png", "42"),)}
    requests = len(httpserver.log)
    assert requests == 1
    run(config, capsys, "build")
    run(config, capsys, "fetch", "--all")
    assert _enclosures(tmp_path) == {"Logo": (("image/png", "42"),)}
    assert len(httpserver.log) == requests  # cached: not probed again


def test_fetch_prints_each_warning_once_when_it_probes_post_images(
        tmp_path: Path, httpserver: HTTPServer, capsys: Any) -> None:
    """After probing, `fetch` builds again with the probed types: the same inputs, so
    the same problems, which were printed by the first build already."""
    config = _post_with_unknown_image(tmp_path, httpserver, "not a date")
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0 and _enclosures(tmp_path) == {"Logo": (("image/png", "42"),)}
    assert err.count("treated as undated") == 1, err


def test_bulk_writes_checkpoint_less_often_and_restore_the_default(tmp_path: Path) -> None:
    """A poll stores its entries with the WAL checkpointed every ~64 MB, not every
    ~4 MB; the connection gets SQLite's default back afterwards, after an error too."""
    from aggregator.state.store import StateStore

    store = StateStore(tmp_path / "state.sqlite")

    def pages() -> int:
        return int(store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    assert pages() == 1000
    with store.bulk_writes():
        assert pages() == 16384
    assert pages() == 1000
    with pytest.raises(RuntimeError), store.bulk_writes():
        raise RuntimeError("a poll that failed")
    assert pages() == 1000

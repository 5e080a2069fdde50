"""JSON Feed 1.1 (`feed.json`) beside every node's Atom and RSS: valid against the
schema in ../shared, read by a real client, the same entries as the Atom feed, and
`output.formats` choosing the files."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import feedparser
import pytest
from helpers import SHARED, atom_ids, fixed_clock, write_config, write_post
from lxml import etree

from aggregator.config import load_config
from aggregator.model import Entry, Image
from aggregator.pipeline import build
from aggregator.problems import ConfigError
from aggregator.writers.jsonfeed import item, rfc3339

SCHEMA = SHARED / "schemas" / "jsonfeed-1.1.schema.json"
CORPUS = SHARED / "corpus" / "posts"
CLIENT_VIEW = SHARED / "tools" / "client_view"


def _hostile_site(tmp: Path) -> Path:
    """Posts with what JSON and the schema are strict about: odd dates and zones, no
    date, quotes and controls in text, enclosures, an image without a type."""
    posts = tmp / "posts"
    write_post(posts, "a.md", 'title: "Quote \\" back\\\\slash \\u2028 line"\n'
                              "categories: [Tech, Deep, Deeper]\ntags: [x, y]\n"
                              "author: Ann\ndate: 2024-03-01 10:00:00\n"
                              "headimg: https://img.example/a.jpg",
               body="<div><p>Body with <b>bold</b> &amp; ]]&gt; and \x0b control</p></div>")
    write_post(posts, "b.md", "title: Undated\ncategories: [Tech]\ndate: Invalid Date",
               body="<div><p>No date <img src='https://picsum.photos/400/300'></p></div>")
    write_post(posts, "c.md", "title: Zone\ncategories: [Other]\n"
                              "date: 2024-01-01T00:00:00+05:45")
    return write_config(tmp)


def _schema_validator():  # type: ignore[no-untyped-def]
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} absent: JSON Feed schema checks skipped")
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


def _check_tree(out: Path) -> list[Path]:
    """Every feed.json valid against the schema, with the Atom feed's ids in order."""
    validator = _schema_validator()
    feeds = sorted(out.rglob("feed.json"))
    assert feeds and len(feeds) == len(list(out.rglob("atom.xml")))
    for path in feeds:
        data = json.loads(path.read_bytes())
        errors = [f"{path}: {e.json_path}: {e.message}" for e in validator.iter_errors(data)]
        assert errors == [], errors[:5]
        published = [entry.findtext("{http://www.w3.org/2005/Atom}id") for entry in
                     etree.parse(str(path.with_name("atom.xml"))).iter(
                         "{http://www.w3.org/2005/Atom}entry")]
        assert [i["id"] for i in data["items"]] == published == atom_ids(
            path.with_name("atom.xml"))
        assert data["feed_url"].endswith(path.relative_to(out).as_posix())
    return feeds


def test_every_feed_json_is_valid_and_matches_atom(tmp_path: Path) -> None:
    config = load_config(_hostile_site(tmp_path))
    build(config, clock=fixed_clock())
    _check_tree(config.output_dir)
    data = json.loads((config.output_dir / "tech/feed.json").read_bytes())
    first, undated = data["items"]
    atom = feedparser.parse(config.output_dir / "tech/atom.xml").entries[0]
    assert first["title"] == atom.title and first["content_html"] == atom.content[0].value
    assert first["authors"] == [{"name": "Ann"}] and first["tags"] == [
        "Tech", "Deep", "Deeper", "x", "y"]
    assert first["attachments"] == [{"url": "https://img.example/a.jpg",
                                     "mime_type": "image/jpeg"}]
    assert first["image"] == "https://img.example/a.jpg"
    assert "date_published" not in undated and undated["date_modified"]
    assert undated["image"] == "https://picsum.photos/400/300" and "attachments" not in undated
    zone = json.loads((config.output_dir / "other/feed.json").read_bytes())["items"][0]
    assert zone["date_published"] == "2023-12-31T18:15:00+00:00"


def test_rfc3339_dates_have_whole_minute_offsets() -> None:
    lmt = timezone(timedelta(hours=8, minutes=5, seconds=43))
    assert rfc3339(datetime(1900, 1, 1, 8, 5, 43, tzinfo=lmt)) == "1900-01-01T00:00:00+00:00"
    assert rfc3339(datetime(2024, 1, 1, 8, tzinfo=timezone(timedelta(hours=8)))) == \
        "2024-01-01T08:00:00+08:00"


def test_item_without_body_or_valid_urls_stays_valid() -> None:
    """No html (or `full_content: false`): content_text; a link, image or attachment
    that is not an absolute URL, or a type the spec's shape refuses, is left out."""
    when = datetime(2024, 1, 1, tzinfo=UTC)
    entry = Entry(id="tag:x,2024:1", title="T", link="/relative", author=None,
                  published=when, updated=when, category=(), tags=(), html="",
                  summary="", image=Image("picture.jpg", "image/jpeg"))
    data = json.loads(item(entry, True))
    assert data == {"id": "tag:x,2024:1", "title": "T", "content_text": "T",
                    "date_published": "2024-01-01T00:00:00+00:00",
                    "date_modified": "2024-01-01T00:00:00+00:00"}
    summary_only = json.loads(item(Entry(**{**entry.__dict__, "html": "<p>x</p>",
                                            "summary": "x"}), False))
    assert summary_only["content_text"] == "x" and "content_html" not in summary_only


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS} absent: corpus checks skipped")
def test_corpus_feed_json_valid_and_read_by_reader(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, content_dir=str(CORPUS),
                                      site={"timezone": "Asia/Shanghai"}))
    report = build(config, clock=fixed_clock())
    feeds = _check_tree(config.output_dir)
    assert len(feeds) > 10
    probe = subprocess.run([sys.executable, "-c", "import reader"], capture_output=True)
    if not CLIENT_VIEW.exists() or probe.returncode:
        pytest.skip("client_view or reader absent: the reader check skipped")
    root = config.output_dir / "feed.json"
    run = subprocess.run([sys.executable, str(CLIENT_VIEW), "--clients", "reader", str(root)],
                         capture_output=True, text=True, timeout=300)
    view = json.loads(run.stdout.splitlines()[0])
    assert view["ok"], view["errors"]
    assert view["entry_count"] == report.entries
    assert sorted(e["id"] for e in view["entries"]) == sorted(
        i["id"] for i in json.loads(root.read_bytes())["items"])
    assert all(e["title"] and e["link"].startswith("https://") for e in view["entries"])


def test_formats_choose_the_files_and_what_lists_them(tmp_path: Path) -> None:
    _hostile_site(tmp_path)
    config = load_config(write_config(tmp_path, output={"formats": ["json"]}))
    build(config, clock=fixed_clock())
    out = config.output_dir
    assert not list(out.rglob("*.xml")) and (out / "tech/deep/deeper/feed.json").is_file()
    opml = etree.parse(str(out / "feeds.opml"))
    assert {o.get("xmlUrl") for o in opml.iter("outline")} == {
        f"https://example.org/feeds/{p.relative_to(out).as_posix()}"
        for p in out.rglob("feed.json")}
    config = load_config(write_config(tmp_path, output={"formats": ["rss", "atom"]}))
    build(config, clock=fixed_clock())
    assert not list(out.rglob("feed.json")) and (out / "tech/rss.xml").is_file()
    assert "feed.json" not in (out / "index.html").read_text()
    assert "feed.json" not in (out / "feeds.opml").read_text()


def test_formats_listed_in_index_opml_and_autodiscovery(tmp_path: Path) -> None:
    config = load_config(_hostile_site(tmp_path))
    build(config, clock=fixed_clock())
    out = config.output_dir
    index = (out / "index.html").read_text()
    opml = (out / "feeds.opml").read_text()
    for path in out.rglob("feed.json"):
        url = f"https://example.org/feeds/{path.relative_to(out).as_posix()}"
        assert '<link rel="alternate" type="application/feed+json"' in index
        assert f'href="{url}"' in index and f'jsonUrl="{url}"' in opml


@pytest.mark.parametrize("value", ["[atom, html]", "[]", "atom"])
def test_bad_formats_are_config_errors_with_their_line(tmp_path: Path, value: str) -> None:
    path = write_config(tmp_path)
    text = path.read_text().replace("output:\n", f"output:\n  formats: {value}\n")
    path.write_text(text)
    line = text.splitlines().index(f"  formats: {value}") + 1
    with pytest.raises(ConfigError, match=rf"config.yaml:{line}: output.formats"):
        load_config(path)

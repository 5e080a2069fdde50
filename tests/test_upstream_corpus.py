"""Every feed of ../shared/corpus/upstream served on 127.0.0.1 and polled.

Entries stored per source must match what feedparser (or, for JSON Feed, the JSON
itself) sees directly; the published feeds must pass the W3C validator with 0 errors.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import feedparser
import pytest
from helpers import SHARED
from pytest_httpserver import HTTPServer
from upstream_support import published, run, upstream_config

CORPUS = SHARED / "corpus" / "upstream"
VALIDATE = SHARED / "tools" / "validate_feed"
TYPES = {".xml": "application/xml", ".rss": "application/rss+xml",
         ".atom": "application/atom+xml", ".json": "application/feed+json"}

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(),
                                reason=f"{CORPUS} absent: the shared corpus is not checked out")


def _direct_count(path: Path) -> int:
    """Distinct entries as the reference parser sees them (ids, else links)."""
    data = path.read_bytes()
    if path.suffix == ".json":
        items = json.loads(data)["items"]
        return len({str(i["id"]) for i in items if "id" in i})
    entries = feedparser.parse(data).entries
    return len({e.get("id") or e.get("link") or n for n, e in enumerate(entries)})


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    # 127.0.0.1, not "localhost": the validator calls a URL whose host has no dot
    # (our resolved relative enclosure URLs) "not a full URL".
    server = HTTPServer(host="127.0.0.1")
    server.start()
    yield server
    server.clear()
    server.stop()


def test_corpus_polled_counts_match_and_feeds_validate(tmp_path: Path, server: HTTPServer,
                                                       capsys: Any) -> None:
    httpserver = server
    files = sorted(p for p in CORPUS.iterdir() if p.is_file())
    sources = []
    for path in files:
        httpserver.expect_request(f"/{path.name}").respond_with_data(
            path.read_bytes(), content_type=TYPES.get(path.suffix, "application/xml"))
        sources.append({"url": httpserver.url_for(f"/{path.name}"),
                        "category": ["Corpus", path.name.split("__")[0]]})
    config = upstream_config(tmp_path, sources, timeout_seconds=10, deadline_seconds=20,
                             max_bytes=15_000_000, per_host_limit=4)
    code, err = run(config, capsys, "fetch", "--all")
    assert code == 0, err
    assert f"{len(files)} fetched, 0 not modified, 0 failed" in err

    db = sqlite3.connect(tmp_path / "state" / "test.sqlite")
    stored = dict(db.execute("SELECT source_url, count(*) FROM upstream_entry GROUP BY 1"))
    mismatches = {}
    for path, source in zip(files, sources, strict=True):
        want, got = _direct_count(path), stored.get(source["url"], 0)
        if want != got:
            mismatches[path.name] = (want, got)
    assert not mismatches, f"direct vs stored entry counts differ: {mismatches}"

    # Everything stored is published, except entries merged because they share a
    # link (weird-dates.xml has three items with one link): pipeline.merge_duplicates.
    everything = published(tmp_path)
    ids = {e.id for e in everything.entries}
    links = {e.link for e in everything.entries}
    rows = db.execute("SELECT entry_id, json_extract(data, '$.link') FROM upstream_entry")
    for entry_id, link in rows:
        assert entry_id in ids or link in links, entry_id
    assert len(everything.entries) == sum(stored.values()) - 2

    if not VALIDATE.exists():
        pytest.skip(f"{VALIDATE} absent: feeds not validated")
    # Validate feeds of the usual size (50 entries): rebuilt from state, no network.
    upstream_config(tmp_path, sources, max_items=50)
    code, err = run(config, capsys, "build")
    assert code == 0, err
    feeds = [str(p) for p in sorted((tmp_path / "feeds").rglob("*.xml"))]
    result = subprocess.run(
        [sys.executable, str(VALIDATE), "--root", str(tmp_path / "feeds"),
         "--root-url", "https://example.org/feeds/", *feeds],
        capture_output=True, text=True, timeout=120)
    if result.returncode == 2:
        pytest.skip(f"validator unusable here: {result.stderr.strip()[-300:]}")
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    errors = {r["file"]: r["errors"] for r in reports if r["errors"]}
    assert len(reports) == len(feeds) and not errors, errors


def test_buffered_expat_parses_every_corpus_feed_as_plain_expat_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The text-coalescing parser we give feedparser changes nothing it returns."""
    import io

    from aggregator.sources.upstream import parse

    feeds = [p for p in sorted(CORPUS.iterdir()) if p.suffix != ".json"]
    assert feeds

    def parse_all() -> list[Any]:
        return [feedparser.parse(io.BytesIO(p.read_bytes()), sanitize_html=False,
                                 resolve_relative_uris=False) for p in feeds]

    assert feedparser.api.PREFERRED_XML_PARSERS[0] == parse._PARSER
    buffered = parse_all()
    monkeypatch.setattr(feedparser.api, "PREFERRED_XML_PARSERS", [])
    plain = parse_all()
    for path, ours, theirs in zip(feeds, buffered, plain, strict=True):
        assert ours.entries == theirs.entries, path
        assert ours.feed == theirs.feed, path
        assert ours.get("bozo_exception", None).__class__ is \
            theirs.get("bozo_exception", None).__class__, path

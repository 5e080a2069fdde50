"""A build with archives holds the archive documents' renders a few pages at a time:
the root's pages hold every entry, so fetching a node's (or a subtree's) renders at once
would hold the corpus. The largest fetch stays under the archive pass's bound however
many entries the archives hold, and every entry is still in them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from test_archives import PAGE, History, _build, _config, _nodes, walk

from aggregator.publish import archive_pass
from aggregator.store import Render
from aggregator.store.sqlite import SQLiteStore
from aggregator.writers.archives import MAX_PAGE

POSTS = 90
FETCH = 8


def test_archive_renders_are_fetched_a_few_pages_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_pass, "FETCH_KEYS", FETCH)
    fetched: list[int] = []
    rendered = SQLiteStore.rendered

    def counted(self: SQLiteStore, keys: Iterable[str]) -> dict[str, Render]:
        wanted = list(keys)
        fetched.append(len(wanted))
        return rendered(self, wanted)

    monkeypatch.setattr(SQLiteStore, "rendered", counted)
    history = History(tmp_path, 11)
    for _ in range(POSTS):
        history.add()
    _build(_config(tmp_path))
    for names, folder in _nodes(history):
        for kind in ("atom", "rss"):
            assert sorted(walk(tmp_path / "feeds", folder, kind)) == \
                sorted(history.expected(names))
    # a batch ends with the page that takes it to FETCH keys; the feeds' own fetches
    # (a subtree's current feeds: 3 nodes of PAGE entries) are smaller
    assert sum(fetched) >= POSTS
    assert max(fetched) < FETCH + MAX_PAGE * PAGE < POSTS

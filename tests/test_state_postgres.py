"""The state on a real PostgreSQL server: the SQL adapter, reconnecting, pipelined
transactions, and a build whose database cannot be reached."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aggregator.config import UpstreamSource
from aggregator.state.postgres import PostgresError, PostgresStateStore, translate
from aggregator.state.store import StateStore
from aggregator.state.upstream import UpstreamState

if TYPE_CHECKING:
    from pg_cluster import PgCluster

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
SOURCE = UpstreamSource(url="https://feeds.example/a.xml", category=("a",))


def test_translate_turns_our_sql_into_psycopg_s() -> None:
    assert translate("SELECT ? FROM t WHERE a LIKE '5%' AND b = ?", True) == \
        "SELECT %s FROM t WHERE a LIKE '5%%' AND b = %s"
    assert translate("SELECT '5%' FROM t", False) == "SELECT '5%' FROM t"
    assert translate("BEGIN IMMEDIATE", False) == "BEGIN"


def _entries(version: int) -> list[tuple[str, str | None, str]]:
    return [(f"urn:e:{k}", f"2026-12-0{k + 1}T10:00:00+00:00",
             f'{{"version": {version}, "k": {k}}}') for k in range(3)]


def _stored(store: StateStore) -> list[tuple[str, str, str]]:
    return sorted(store.db.execute("SELECT entry_id, sort_at, data FROM upstream_entry"
                                   ).fetchall())


def test_postgres_stores_what_sqlite_stores(tmp_path: Path, pg_url: str) -> None:
    stores = [PostgresStateStore(pg_url, lambda: NOW), StateStore(tmp_path / "s.sqlite",
                                                                 lambda: NOW)]
    for store in stores:
        state = UpstreamState(store)
        assert state.store_dumped(SOURCE, _entries(1), '"e1"', None, NOW) == 3
        assert state.store_dumped(SOURCE, _entries(2), '"e2"', None, NOW) == 0
        assert store.first_seen("urn:post") == NOW
    pg, lite = stores
    assert [tuple(r) for r in _stored(pg)] == [tuple(r) for r in _stored(lite)]
    assert UpstreamState(pg).source(SOURCE.url).etag == '"e2"'
    generation = pg.generation()
    pg.first_seen("urn:another")
    assert pg.generation() != generation  # a new first-seen time bumps it
    for store in stores:
        store.close()


def test_a_failed_pipelined_transaction_stores_nothing(pg_url: str) -> None:
    store = PostgresStateStore(pg_url, lambda: NOW)
    db = store.db
    with pytest.raises(PostgresError), store.pipelined():
        db.execute("BEGIN")
        db.execute("INSERT INTO first_seen VALUES (?, ?)", ("urn:x", "2026"))
        db.execute("INSERT INTO first_seen VALUES (?, ?)", ("urn:x", "2026"))  # duplicate
        db.execute("COMMIT")
    assert db.execute("SELECT count(*) FROM first_seen").fetchone()[0] == 0
    store.close()


def test_a_statement_after_a_server_restart_reconnects(pg_cluster: PgCluster,
                                                       pg_url: str) -> None:
    store = PostgresStateStore(pg_url, lambda: NOW)
    store.first_seen("urn:before")
    pg_cluster.restart()
    assert store.db.execute("SELECT count(*) FROM first_seen").fetchone()[0] == 1
    store.close()


def test_a_build_whose_database_is_unreachable_fails_and_keeps_the_feeds(
        tmp_path: Path) -> None:
    from pg_cluster import free_port

    (tmp_path / "posts").mkdir()
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "atom.xml").write_text("the last good feed")
    config = tmp_path / "config.yaml"
    config.write_text('site: {url: "https://x.example/"}\ncontent: {dir: posts}\n'
                      f'state: {{url: "postgresql://nobody@127.0.0.1:{free_port()}/x"}}\n')
    done = subprocess.run([sys.executable, "-m", "aggregator", "build", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    assert "state database unusable" in done.stderr or "build lock" in done.stderr
    assert (tmp_path / "feeds" / "atom.xml").read_text() == "the last good feed"


def test_a_database_lost_mid_build_fails_the_build_and_the_next_one_finishes(
        tmp_path: Path, pg_cluster: PgCluster, pg_url: str) -> None:
    import time

    import psycopg

    posts = tmp_path / "posts"
    for n in range(3000):
        folder = posts / f"c{n % 30}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"p{n}.md").write_text(f"---\ntitle: Post {n}\n"
                                         f"date: 2026-01-01 10:00:{n % 60:02d}\n---\n"
                                         f"<p>{'body ' * 200}</p>\n")
    config = tmp_path / "config.yaml"
    config.write_text('site: {url: "https://x.example/"}\ncontent: {dir: posts}\n'
                      f'state: {{url: "{pg_url}"}}\n')
    build = subprocess.Popen([sys.executable, "-m", "aggregator", "build", "-q", "-c",
                              str(config)], stderr=subprocess.PIPE, text=True)

    def writing() -> bool:
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                return bool(conn.execute("SELECT count(*) FROM entry_store.entry"
                                         ).fetchone()[0])
        except psycopg.Error:
            return False

    while not writing():
        assert build.poll() is None, build.stderr.read() if build.stderr else ""
        time.sleep(0.05)
    pg_cluster.kill()
    _, err = build.communicate(timeout=120)
    assert build.returncode == 3, err
    assert "Traceback" not in err and "lost during the build" in err, err
    pg_cluster.start()
    again = subprocess.run([sys.executable, "-m", "aggregator", "build", "-q", "-c",
                            str(config)], capture_output=True, text=True, timeout=300,
                           check=False)
    assert again.returncode == 0, again.stderr
    import feedparser

    assert len(feedparser.parse((tmp_path / "feeds" / "atom.xml").read_bytes()).entries) == 50

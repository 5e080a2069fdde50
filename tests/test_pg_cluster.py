"""The test PostgreSQL server (tests/pg_cluster.py) is real and survives what the store's
fault tests do to it: restarts, a killed postmaster, fresh databases apart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pg_cluster import PgCluster, PgUnavailable, find_bin_dir

psycopg = pytest.importorskip("psycopg")


def test_pg_url_is_a_fresh_empty_database(pg_cluster: PgCluster, pg_url: str) -> None:
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/")
    other = pg_cluster.create_database()
    assert other != pg_url
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)
        conn.execute("CREATE TABLE only_here (x int)")
    with psycopg.connect(other) as conn:
        found = conn.execute("SELECT to_regclass('only_here') IS NULL").fetchone()
        assert found == (True,)
        encoding = conn.execute("SHOW server_encoding").fetchone()
        assert encoding == ("UTF8",)


def test_data_survives_a_restart_and_old_connections_break(pg_cluster: PgCluster,
                                                           pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1), (2)")
    before = psycopg.connect(pg_url)
    try:
        port = pg_cluster.port
        pg_cluster.restart()
        assert pg_cluster.port == port
        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1")
    finally:
        before.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT x FROM kept ORDER BY x").fetchall() == [(1,), (2,)]


def test_kill_breaks_connections_and_start_recovers(pg_cluster: PgCluster,
                                                    pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE committed (x int)")
        conn.execute("INSERT INTO committed VALUES (7)")
    before = psycopg.connect(pg_url)
    try:
        postmaster = pg_cluster.postmaster_pid()
        assert postmaster is not None
        pg_cluster.kill()
        assert pg_cluster.postmaster_pid() is None
        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_url, connect_timeout=2)
    finally:
        before.close()
    pg_cluster.start()
    assert pg_cluster.postmaster_pid() not in (None, postmaster)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT x FROM committed").fetchall() == [(7,)]


def test_stop_then_start(pg_cluster: PgCluster, pg_url: str) -> None:
    pg_cluster.stop()
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_url, connect_timeout=2)
    finally:
        pg_cluster.start()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_close_returns_with_the_server_stopped_and_the_folder_goes() -> None:
    """close() waits for the server to stop, not for its folder's removal (a session's
    databases take seconds to unlink), which the watchdog finishes on its own."""
    cluster = PgCluster.create()
    pid = cluster.postmaster_pid()
    assert pid is not None
    cluster.close()
    assert not _running(pid)
    deadline = time.monotonic() + 30
    while cluster.folder.exists():
        assert time.monotonic() < deadline, f"{cluster.folder} left behind"
        time.sleep(0.05)
    cluster.close()  # (idempotent)


def test_no_server_outlives_a_killed_test_process(pg_cluster: PgCluster) -> None:
    """A process that made a cluster and died by SIGKILL leaves neither a postmaster nor
    the cluster's folder behind (the watchdog stops and removes them)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, signal\n"
         f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
         "from pg_cluster import PgCluster\n"
         "c = PgCluster.create()\n"
         "print(c.folder, c.postmaster_pid(), flush=True)\n"
         "os.kill(os.getpid(), signal.SIGKILL)\n"], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    folder, pid = child.stdout.readline().split()
    child.wait(timeout=60)
    deadline = time.monotonic() + 30
    while Path(folder).exists() or _running(int(pid)):
        assert time.monotonic() < deadline, f"{folder} or postmaster {pid} left behind"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_unavailable_says_why(tmp_path: Path) -> None:
    """No binaries: none found. A failing initdb: its own message, for the skip."""
    assert find_bin_dir(tmp_path) is None
    (tmp_path / "15" / "bin").mkdir(parents=True)
    assert find_bin_dir(tmp_path) is None
    # outside tmp_path (root's, 0700): the server user runs these tools when we are root
    fake = Path(tempfile.mkdtemp(prefix="pgfake-"))
    try:
        os.chmod(fake, 0o755)
        for tool in ("initdb", "pg_ctl", "postgres"):
            (fake / tool).write_text("#!/bin/sh\necho 'initdb: error: no space left' >&2\n"
                                     "exit 1\n")
            os.chmod(fake / tool, 0o755)
        with pytest.raises(PgUnavailable, match="initdb failed .*no space left"):
            PgCluster.create(bin_dir=fake)
    finally:
        shutil.rmtree(fake)

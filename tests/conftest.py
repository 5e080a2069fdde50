import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pg_cluster import PgCluster
    from pytest_httpserver import HTTPServer

# tests/helpers.py is imported as a plain module by every test file.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def _threaded_httpserver() -> Iterator["HTTPServer"]:
    from pytest_httpserver import HTTPServer

    # Threaded, so a handler still sleeping from a timeout case blocks nothing else.
    server = HTTPServer(host="127.0.0.1", threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def httpserver(_threaded_httpserver: "HTTPServer") -> Iterator["HTTPServer"]:
    """pytest-httpserver's fixture, threaded and per module, cleared after each test."""
    yield _threaded_httpserver
    _threaded_httpserver.clear()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator["PgCluster"]:
    """A real PostgreSQL server for the session (tests/pg_cluster.py), stopped and removed
    at the session's end; the tests using it skip, saying why, when it cannot run here."""
    from pg_cluster import PgCluster, PgUnavailable

    try:
        cluster = PgCluster.create()
    except PgUnavailable as reason:
        pytest.skip(f"no PostgreSQL server: {reason}")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster: "PgCluster") -> str:
    """The URL of a fresh empty database on the session's server (running: a test that
    stopped or killed it gets it started again)."""
    if pg_cluster.postmaster_pid() is None:
        pg_cluster.start()
    return pg_cluster.create_database()

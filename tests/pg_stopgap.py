"""Stand-in for tests/pg_cluster.py (branch pginfra) until it lands: `pg_url` gives a
fresh database on the server PGSTORE_ADMIN_URL names."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

_COUNT = itertools.count()


@pytest.fixture
def pg_url() -> Iterator[str]:
    admin = os.environ.get("PGSTORE_ADMIN_URL")
    if not admin:
        pytest.skip("PostgreSQL absent (PGSTORE_ADMIN_URL unset)")
    import psycopg

    name = f"t_{os.getpid()}_{next(_COUNT)}"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name}")
        db.execute(f"CREATE DATABASE {name}")
    yield admin.replace("/postgres?", f"/{name}?")
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
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

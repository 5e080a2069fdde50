"""The atomic publisher stages feeds on threads: what it reports, what it leaves on
disk and which threads it leaves running must be as if it staged them one by one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.publish.atomic import STAGING_THREADS, TEMP_SUFFIX, Publisher, PublishError
from aggregator.writers.parts import Parts

FEEDS = 5 * STAGING_THREADS  # more than the staging in flight at once


def _staging_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("aggregator-stage")]


def _temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def _parts(chunks: list[bytes]) -> Parts:
    return Parts(lambda: iter(chunks), sum(map(len, chunks)))


def _published(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in out.rglob("*.xml") if p.is_file()}


def test_reports_in_the_order_asked_and_leaves_no_thread(tmp_path: Path) -> None:
    out = tmp_path / "feeds"
    first = Publisher(out)
    first.prepare()
    for i in range(FEEDS):
        first.write(f"c{i}/atom.xml", _parts([b"<feed>", f"{i}".encode(), b"</feed>"]))
    first.finish()
    assert first.written == [f"c{i}/atom.xml" for i in range(FEEDS)]

    again = Publisher(out)
    again.prepare()
    for i in range(FEEDS):  # every third one changes; the others hold the same bytes
        body = f"{i}{'new' if i % 3 == 0 else ''}".encode()
        again.write(f"c{i}/atom.xml", _parts([b"<feed>", body, b"</feed>"]))
    again.finish()
    assert again.written == [f"c{i}/atom.xml" for i in range(FEEDS) if i % 3 == 0]
    assert again.unchanged == [f"c{i}/atom.xml" for i in range(FEEDS) if i % 3]
    assert _published(out)["c3/atom.xml"] == b"<feed>3new</feed>"
    assert _published(out)["c4/atom.xml"] == b"<feed>4</feed>"
    assert _temps(out) == []
    assert _staging_threads() == []


def _failing_parts(exc: BaseException) -> Parts:
    def source() -> Iterator[bytes]:
        yield b"<feed>half"
        raise exc
    return Parts(source, 100)


@pytest.mark.parametrize("failure", ["source", "disk"])
def test_a_failed_staging_replaces_nothing_and_leaves_nothing(tmp_path: Path,
                                                              failure: str) -> None:
    out = tmp_path / "feeds"
    before = Publisher(out)
    before.prepare()
    for i in range(FEEDS):
        before.write(f"c{i}/atom.xml", b"old")
    before.finish()
    if failure == "disk":  # a folder that cannot be made: a file is in its place
        (out / "blocked").write_bytes(b"")
    publisher = Publisher(out)
    publisher.prepare()
    expected: type[BaseException] = RuntimeError if failure == "source" else PublishError
    with pytest.raises(expected) as raised:
        for i in range(FEEDS):
            if i == FEEDS // 2:
                publisher.write("blocked/atom.xml" if failure == "disk" else f"c{i}/atom.xml",
                                _failing_parts(RuntimeError("render lost")))
            else:
                publisher.write(f"c{i}/atom.xml", b"new")
        publisher.finish()
    if failure == "disk":
        assert "blocked/atom.xml: cannot publish" in str(raised.value)
    else:
        assert str(raised.value) == "render lost"
    assert set(_published(out).values()) == {b"old"}  # nothing was replaced
    assert _temps(out) == []
    assert _staging_threads() == []

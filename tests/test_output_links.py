"""Nothing is written, read or removed through a symlink placed in the output dir
(issue 20, item 1): a link is refused and reported, what it points to is untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import write_config, write_post

from aggregator.cli import main
from aggregator.publish.atomic import MANIFEST, TEMP_SUFFIX, Publisher, PublishError


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    return victim


def test_a_folder_linked_out_of_the_output_dir_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = _victim(tmp_path).parent
    write_post(tmp_path / "posts", "p.md", "title: P\ncategories: [Tech]")
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "tech").symlink_to(outside, target_is_directory=True)
    config = write_config(tmp_path)
    capsys.readouterr()
    code = main(["build", "-c", str(config)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert f"{tmp_path / 'feeds' / 'tech'}: error: a symlink in the output dir" in err
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]


def test_a_link_named_as_a_temp_file_is_replaced_not_written_through(
        tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    out = tmp_path / "feeds"
    (out / "tech").mkdir(parents=True)
    for folder, name in ((out / "tech", "atom.xml"), (out, MANIFEST)):
        (folder / f".{name}.{os.getpid()}{TEMP_SUFFIX}").symlink_to(victim)
    (out / "tech" / "rss.xml").symlink_to(victim)  # a feed's own name as a link
    publisher = Publisher(out)
    publisher.prepare(sweep_temps=False)
    publisher.write("tech/atom.xml", b"<feed/>")
    publisher.write("tech/rss.xml", b"<rss/>")
    publisher.finish()
    assert victim.read_bytes() == b"precious"
    assert (out / "tech" / "atom.xml").read_bytes() == b"<feed/>"
    assert not (out / "tech" / "rss.xml").is_symlink()
    assert (out / "tech" / "rss.xml").read_bytes() == b"<rss/>"


def test_a_stale_feed_behind_a_linked_folder_is_not_removed(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    (victim.parent / "atom.xml").write_bytes(b"not ours")
    out = tmp_path / "feeds"
    first = Publisher(out)
    first.prepare()
    first.write("gone/atom.xml", b"<feed/>")
    first.write("kept/atom.xml", b"<feed/>")
    first.finish()
    (out / "gone" / "atom.xml").unlink()
    (out / "gone").rmdir()
    (out / "gone").symlink_to(victim.parent, target_is_directory=True)
    second = Publisher(out)
    second.prepare()
    second.write("kept/atom.xml", b"<feed/>")
    second.finish()
    assert (victim.parent / "atom.xml").read_bytes() == b"not ours"
    assert second.removed == []


def test_a_linked_folder_deeper_down_is_refused(tmp_path: Path) -> None:
    outside = _victim(tmp_path).parent
    out = tmp_path / "feeds"
    (out / "top").mkdir(parents=True)
    (out / "top" / "leaf").symlink_to(outside, target_is_directory=True)
    publisher = Publisher(out)
    publisher.prepare()
    with pytest.raises(PublishError, match="a symlink in the output dir"):
        publisher.write("top/leaf/atom.xml", b"<feed/>")
        publisher.finish()
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]

"""The direct entry writer (writers/entry_xml.py) against its reference, feedgen + lxml
(FeedRenderer.feedgen_*_entry): the same bytes for random hostile entries, for every
real post and upstream entry of ../shared, and the same refusal of text XML forbids."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import SHARED, write_config

from aggregator.config import UpstreamSource, load_config
from aggregator.model import Enclosure, Entry, Image
from aggregator.problems import ProblemLog
from aggregator.render import finish_entry
from aggregator.sanitize.html import Sanitizer
from aggregator.sources.content import PostReader
from aggregator.sources.upstream.normalise import Normaliser
from aggregator.sources.upstream.parse import ParseError, parse_feed
from aggregator.sources.walk import discover
from aggregator.writers import entry_xml
from aggregator.writers.feeds import FeedRenderer

# Everything lxml escapes or treats specially, plus non-ASCII and astral characters.
ALPHABET = list("aZ9 &<>\"'\t\r\n;#]]>=/?%") + ["é", "中文", "😀", "\u2028", "\x85",
                                                  "&amp;", "<![CDATA[", "]]>", "\x7f"]
ZONES = [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-3, minutes=-30)),
         timezone(timedelta(hours=5, minutes=45, seconds=7))]


def _text(rng: random.Random, empty_ok: bool = True) -> str:
    size = rng.choice([0, 1, 3, 12, 40]) if empty_ok else rng.choice([1, 3, 12, 40])
    return "".join(rng.choice(ALPHABET) for _ in range(size))


def _when(rng: random.Random) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        seconds=rng.randrange(2_000_000_000), microseconds=rng.choice([0, 0, 123, 999_999]))


def _random_entry(rng: random.Random) -> Entry:
    image = None
    if rng.random() < 0.6:
        image = Image(url="https://img.example/" + _text(rng),
                      mime_type=rng.choice([None, "image/jpeg", "image/png"]),
                      length=rng.choice([0, 0, 1234]))
    enclosures = tuple(Enclosure(url=rng.choice(["https://v.example/" + _text(rng),
                                                 image.url if image else "https://x.example/"]),
                                 mime_type=rng.choice(["video/mp4", "audio/mpeg"]),
                                 length=rng.choice([0, 99]))
                       for _ in range(rng.choice([0, 0, 1, 2])))
    published = _when(rng).astimezone(rng.choice(ZONES)) if rng.random() < 0.8 else None
    return Entry(
        id="tag:example.org,2024:" + _text(rng, empty_ok=False),
        title=_text(rng, empty_ok=False),
        link=rng.choice([None, "https://example.org/p?a=1&b=" + _text(rng)]),
        author=rng.choice([None, "", _text(rng)]),
        published=published,
        updated=_when(rng).astimezone(rng.choice(ZONES)),
        category=tuple(_text(rng, empty_ok=False) for _ in range(rng.choice([0, 1, 3]))),
        tags=tuple(rng.choice(["shared", _text(rng, empty_ok=False)])
                   for _ in range(rng.choice([0, 2]))),
        html=rng.choice(["", "<p>" + _text(rng) + "</p>", _text(rng)]),
        summary=rng.choice(["", _text(rng)]),
        image=image,
        enclosures=enclosures,
    )


def _renderers(tmp_path: Path) -> list[FeedRenderer]:
    renderers = []
    for full in (True, False):
        (tmp_path / str(full)).mkdir(exist_ok=True)
        renderers.append(FeedRenderer(load_config(write_config(
            tmp_path / str(full), output={"dir": "feeds", "full_content": full}))))
    return renderers


def _assert_same(renderers: list[FeedRenderer], entry: Entry) -> None:
    for renderer in renderers:
        full = renderer.config.full_content
        assert entry_xml.entry_pair(entry, full) == (renderer.feedgen_atom_entry(entry),
                                                     renderer.feedgen_rss_entry(entry)), entry


def test_random_hostile_entries_match_feedgen(tmp_path: Path) -> None:
    renderers = _renderers(tmp_path)
    rng = random.Random(4287)
    for _ in range(3000):
        entry = _random_entry(rng)
        if "shared" in entry.tags:  # a tag equal to a category is written once
            entry = replace(entry, category=(*entry.category, "shared"))
        _assert_same(renderers, entry)


def test_text_xml_forbids_goes_the_feedgen_way_and_is_refused(tmp_path: Path) -> None:
    renderer = _renderers(tmp_path)[0]
    base = _random_entry(random.Random(1))
    for field in ("title", "html", "summary", "author", "link"):
        for bad in ("\x0b", "\ud800", "\ufffe"):
            entry = replace(base, **{field: f"x{bad}y"})
            assert entry_xml.entry_pair(entry, True) is None
            with pytest.raises(ValueError):
                renderer.entry_pair(entry)
    # feedgen refuses an entry without a title; so does the renderer, through it
    with pytest.raises(ValueError):
        renderer.entry_pair(replace(base, title=""))


POSTS = SHARED / "corpus" / "posts"
UPSTREAM = SHARED / "corpus" / "upstream"


@pytest.mark.skipif(not POSTS.is_dir(), reason=f"{POSTS} absent: no real posts to compare")
def test_every_real_post_matches_feedgen(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, content_dir=str(POSTS)))
    problems = ProblemLog(echo=False)
    reader = PostReader(config, problems, lambda _id: datetime(2024, 1, 1, tzinfo=UTC))
    sanitizer = Sanitizer(config.drop_selectors, config.iframe_hosts)
    renderers = _renderers(tmp_path)
    compared = 0
    for post in discover(config, problems):
        entry = reader.read(post)
        if entry is not None:
            _assert_same(renderers, finish_entry(entry, sanitizer))
            compared += 1
    assert compared > 100


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason=f"{UPSTREAM} absent: no upstream feeds")
def test_every_real_upstream_entry_matches_feedgen(tmp_path: Path) -> None:
    renderers = _renderers(tmp_path)
    sanitizer = Sanitizer((), ())
    now = datetime(2030, 1, 1, tzinfo=UTC)
    compared = 0
    for path in sorted(p for p in UPSTREAM.iterdir() if p.is_file()):
        url = f"http://127.0.0.1/{path.name}"
        try:
            feed = parse_feed(path.read_bytes(), {}, url)
        except ParseError:
            continue
        source = UpstreamSource(url=url, category=("Up",))
        normaliser = Normaliser(source, "example.org", "2024", now)
        for entry in normaliser.entries(feed):
            _assert_same(renderers, finish_entry(entry, sanitizer))
            compared += 1
    assert compared > 100


def test_rfc2822_dates_are_feedgens() -> None:
    from feedgen.util import formatRFC2822

    rng = random.Random(8)
    offsets = [timedelta(0), timedelta(hours=-9, minutes=-30), timedelta(hours=14),
               timedelta(minutes=-1), timedelta(hours=23, minutes=59, seconds=59),
               timedelta(seconds=-1), timedelta(microseconds=5)]
    for _ in range(5000):
        when = datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28),
                        rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
                        tzinfo=timezone(rng.choice(offsets)))
        assert entry_xml.rfc2822(when) == formatRFC2822(when), when
    assert entry_xml.rfc2822(datetime(2024, 1, 1)) == formatRFC2822(datetime(2024, 1, 1))

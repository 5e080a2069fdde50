"""A post's usual RFC 822 date is read without the email package's parser: what it
reads is what parsedate_to_datetime reads, on generated dates (with days, times and
offsets out of range) and on every such date of the shared corpus."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from aggregator.sources import dates
from aggregator.sources.dates import DateError, parse_date

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


def _generated(rng: random.Random) -> str:
    weekday = rng.choice((*(f"{day}, " for day in _DAYS), ""))
    day = rng.choice((f"{rng.randrange(0, 40)}", f"{rng.randrange(0, 40):02d}"))
    zone = rng.choice(("GMT", "UT", "UTC", "Z", "+0000", "-0000",
                       f"{rng.choice('+-')}{rng.randrange(0, 10000):04d}",
                       f"{rng.choice('+-')}{rng.randrange(0, 15):02d}{rng.choice((0, 30, 45))}"))
    return (f"{weekday}{day} {rng.choice(_MONTHS)} {rng.randrange(1000, 10000)} "
            f"{rng.randrange(0, 30):02d}:{rng.randrange(0, 65):02d}:"
            f"{rng.randrange(0, 65):02d} {zone}")


def _read_by_email(text: str) -> datetime | None:
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _read_here(text: str) -> datetime | None:
    try:
        return dates._parse_text(text)
    except DateError:
        return None


def _same(text: str) -> None:
    ours, theirs = _read_here(text), _read_by_email(text)
    assert (ours, ours and ours.utcoffset()) == (theirs, theirs and theirs.utcoffset()), text


def test_generated_rfc822_dates_read_as_the_email_package_reads_them() -> None:
    rng = random.Random(822)
    texts = [_generated(rng) for _ in range(20_000)]
    assert sum(dates._RFC822.fullmatch(text) is not None for text in texts) > 15_000
    assert sum(_read_by_email(text) is None for text in texts) > 1_000  # (out of range)
    for text in texts:
        _same(text)


def test_the_corpus_rfc822_dates_read_as_the_email_package_reads_them() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} is absent: the corpus dates are not checked")
    # the posts' dates, and the upstream feeds' (real RFC 822 dates from the wild)
    found = {(match.group(1) or match.group(2)).strip().strip("'\"") for path in CORPUS.rglob("*")
             if path.suffix in (".md", ".xml", ".rss") and path.is_file()
             for match in re.finditer(r"^(?:date|updated): *(.+)$|<pubDate>([^<]*)</pubDate>",
                                      path.read_text(encoding="utf-8", errors="replace"),
                                      re.MULTILINE)}
    strict = [text for text in found if dates._RFC822.fullmatch(text)]
    assert len(strict) >= 100
    for text in strict:
        _same(text)


def test_a_naive_rfc822_date_is_in_the_site_zone_and_a_bad_one_an_error() -> None:
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    assert parse_date("Thu, 28 Nov 2024 07:04:08 -0000", paris) == \
        datetime(2024, 11, 28, 6, 4, 8, tzinfo=UTC)
    assert parse_date("28 Nov 2024 07:04:08 +0130", paris) == \
        datetime(2024, 11, 28, 5, 34, 8, tzinfo=UTC)
    with pytest.raises(DateError, match="not a real RFC 822"):
        parse_date("Fri, 30 Feb 2024 07:04:08 GMT", paris)

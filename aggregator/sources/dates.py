"""Dates as they occur in posts: RFC 822, naive ISO-like, YAML timestamps, junk."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from email.utils import parsedate_to_datetime

# Years outside this window are scraper garbage (0001, 2999, "Invalid Date" → NaN),
# not history: such a post is treated as undated. The window is also what keeps every
# date downstream (zone conversion, RFC 822 and ISO formatting, sort keys, the cache)
# far from datetime's own limits: a date near them (`9999-12-31T23:59:59-14:00`,
# `0001-01-01 00:00:00+05:00`), whose conversion to UTC overflows, is refused here
# too, not clamped: a clamped date would be a made-up one.
MIN_YEAR, MAX_YEAR = 1970, 2200


class DateError(ValueError):
    pass


def parse_date(value: object, zone: tzinfo) -> datetime:
    """An aware UTC datetime, or DateError saying why not. Naive values are in `zone`."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        parsed = _parse_text(value.strip())
    else:
        raise DateError(f"date {value!r} is not a date")
    if not MIN_YEAR - 1 <= parsed.year <= MAX_YEAR + 1:  # (a day's offset either way)
        raise DateError(f"date {_shown(value)} has an implausible year")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    parsed = parsed.astimezone(UTC)
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise DateError(f"date {_shown(value)} has an implausible year")
    return parsed


def _shown(value: object) -> str:
    return repr(value.isoformat(" ") if isinstance(value, datetime) else str(value))


def _parse_text(text: str) -> datetime:
    if not text:
        raise DateError("date is empty")
    strict = _RFC822.fullmatch(text)
    if strict is not None:  # (posts made from feeds: most of their dates)
        try:
            return _rfc822_date(strict)
        except ValueError:
            pass  # (what parsedate_to_datetime says of it, below)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        pass
    loose = _LOOSE.fullmatch(text)
    if loose is not None:
        return _loose_date(loose, text)
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        parsed = None
    if parsed is None:
        raise DateError(f"date {text!r} is not a real RFC 822 or ISO 8601 date")
    return parsed


# The usual RFC 822 date (`Thu, 28 Nov 2024 07:04:08 GMT`), read as
# parsedate_to_datetime reads it (tests hold the two equal) in a fifth of its time: it
# tries ISO 8601 first, and its tokenizer takes every form RFC 822 allows.
_RFC822 = re.compile(r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(\d{1,2}) "
                     r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([1-9]\d{3}) "
                     r"(\d{2}):(\d{2}):(\d{2}) (GMT|UTC?|Z|[+-]\d{4})")
_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def _rfc822_date(match: re.Match[str]) -> datetime:
    """The date of an _RFC822 match; ValueError for a day, time or offset out of range.
    As parsedate_to_datetime: `-0000` is a naive time, an offset's minutes may pass 59."""
    day, month, year, hour, minute, second, zone = match.groups()
    when = (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
    if zone == "-0000":
        return datetime(*when)
    offset = 0
    if zone[0] in "+-":
        offset = int(zone[1:3]) * 3600 + int(zone[3:]) * 60
        offset = -offset if zone[0] == "-" else offset
    return datetime(*when, tzinfo=timezone(timedelta(seconds=offset)))


# The dates Hexo's posts are written with that ISO 8601 does not allow: one-digit
# months, days and hours, "/" between the parts (`2013/7/13 20:46:25`, `2018-7-24 9:05`).
_LOOSE = re.compile(r"(\d{4})([-/])(\d{1,2})\2(\d{1,2})"
                    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?")


def _loose_date(match: re.Match[str], text: str) -> datetime:
    year, _, month, day, hour, minute, second, fraction = match.groups()
    try:
        return datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                        int(second or 0), int((fraction or "0").ljust(6, "0")))
    except ValueError as exc:
        raise DateError(f"date {text!r} is not a date ({exc})") from exc

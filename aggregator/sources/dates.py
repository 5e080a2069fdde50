"""Dates as they occur in posts: RFC 822, naive ISO-like, YAML timestamps, junk."""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo
from email.utils import parsedate_to_datetime

# Years outside this window are scraper garbage (0001, 2999, "Invalid Date" → NaN),
# not history: such a post is treated as undated.
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
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    parsed = parsed.astimezone(UTC)
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise DateError(f"date {value!r} has an implausible year")
    return parsed


def _parse_text(text: str) -> datetime:
    if not text:
        raise DateError("date is empty")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        pass
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        parsed = None
    if parsed is None:
        raise DateError(f"date {text!r} is not RFC 822 or ISO 8601")
    return parsed

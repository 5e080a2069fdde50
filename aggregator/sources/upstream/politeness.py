"""What a server asks of us: Retry-After, Cache-Control max-age / Expires, RSS <ttl>.

Each becomes a *floor* for the next poll (never sooner than that), capped so that a
typo upstream (a max-age of a year) cannot silence a source for good.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

# A server's hint never pushes the next poll further than this.
MAX_HINT = timedelta(days=1)
MAX_RETRY_AFTER = timedelta(days=7)
_MAX_AGE = re.compile(r"(?:^|[,\s])(?:s-)?max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


def _http_date(text: str) -> datetime | None:
    try:
        stamp = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return stamp if stamp.tzinfo is not None else None


def retry_after(headers: dict[str, str], now: datetime) -> timedelta | None:
    """`Retry-After: 120` or `Retry-After: <HTTP date>` → how long to wait."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        wait = timedelta(seconds=int(value))
    else:
        stamp = _http_date(value)
        if stamp is None:
            return None
        wait = stamp - now
    return min(max(wait, timedelta(0)), MAX_RETRY_AFTER)


def cache_floor(headers: dict[str, str], now: datetime) -> timedelta | None:
    """Cache-Control max-age (wins, as in RFC 9111), else Expires - now."""
    control = headers.get("cache-control", "")
    if "no-cache" in control.lower() or "no-store" in control.lower():
        return None
    match = _MAX_AGE.search(control)
    if match:
        wait = timedelta(seconds=int(match.group(1)))
    else:
        stamp = _http_date(headers.get("expires", ""))
        if stamp is None:
            return None
        wait = stamp - now
    return min(wait, MAX_HINT) if wait > timedelta(0) else None


def ttl_floor(ttl: object) -> timedelta | None:
    """RSS 2.0 <ttl>: minutes the channel may be cached."""
    try:
        minutes = int(str(ttl).strip())
    except ValueError:
        return None
    return min(timedelta(minutes=minutes), MAX_HINT) if minutes > 0 else None


def floor_of(*hints: timedelta | None) -> timedelta | None:
    found = [h for h in hints if h is not None]
    return max(found) if found else None

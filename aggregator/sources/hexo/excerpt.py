"""Hexo's excerpt: the part of a post's HTML before its `<!-- more -->` (one optional
space each side, any case: Hexo's own pattern)."""

from __future__ import annotations

import re

_MORE = re.compile(r"<!-- ?more ?-->", re.IGNORECASE)


def excerpt_of(html: str) -> str | None:
    """The HTML before the first `<!-- more -->`, trimmed; None without one."""
    if "<!--" not in html:
        return None
    match = _MORE.search(html)
    return html[:match.start()].strip() if match else None

"""PyYAML's safe loading of front matter, with dates that do not exist read as text.

YAML resolves every plain scalar shaped like a date as a timestamp: `2025-02-30`,
`2026-13-45`, `2025-01-01 25:61:61`, `0000-01-01` and an offset of 24 hours or more
all are, and PyYAML's constructor then raises ValueError for them. One such value, in
any field of one post, would stop the whole build. Here it stays the text it was
written as, and the loader lists where it was so the reader can warn about it. Real
dates are built exactly as PyYAML builds them (a date, a naive or aware datetime):
one in datetime's range but near its edges (`9999-12-31T23:59:59-14:00`) is a real
date here, and `sources.dates.parse_date` refuses it when it is used as a post's date.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

try:
    from yaml import CSafeLoader as SafeLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader  # type: ignore[assignment]

TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_BUILDER = SafeConstructor()


def real_timestamp(text: str) -> date | datetime | None:
    """What PyYAML's safe loader builds from a scalar its resolver reads as a
    timestamp, or None when `text` names no date datetime can hold."""
    try:
        value: date | datetime = _BUILDER.construct_yaml_timestamp(
            yaml.ScalarNode(TIMESTAMP_TAG, text))
    except (ValueError, OverflowError):  # month 13, day 30 of February, year 0, +25:00
        return None
    return value


class FrontMatterLoader(SafeLoader):
    """The C safe loader (the Python one where libyaml is missing) whose timestamps
    that name no date are read as their text, each listed in `not_dates` as
    (0-based line in the document, text)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.not_dates: list[tuple[int, str]] = []


def _timestamp_or_text(loader: FrontMatterLoader, node: yaml.Node) -> object:
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    # (`!!timestamp junk` is not even shaped like one: PyYAML's constructor would fail
    # on the regex's None)
    shaped = SafeConstructor.timestamp_regexp.match(text) is not None
    value = real_timestamp(text) if shaped else None
    if value is None:
        loader.not_dates.append((node.start_mark.line, text))
        return text
    return value


FrontMatterLoader.add_constructor(TIMESTAMP_TAG, _timestamp_or_text)


def load_front_matter(text: str) -> tuple[Any, list[tuple[int, str]]]:
    """(the document, its timestamps that name no date: (0-based line, text)).
    Raises what yaml.load raises for a document that is not YAML, and ValueError,
    TypeError or KeyError when an explicit tag's constructor refuses its value
    (`!!int x`, `!!bool x`)."""
    loader = FrontMatterLoader(text)
    try:
        return loader.get_single_data(), loader.not_dates
    finally:
        loader.dispose()

"""Front matter in the shape nearly every post has, read without a YAML parser.

Hexo-style front matter is a flat block of `key: scalar` lines and `key:` followed
by `- scalar` items. PyYAML (even its C loader) spends ~0.3 ms a post building nodes
for that: a third of reading a post. This reads that shape only, with PyYAML's own
resolver deciding what a plain scalar means and its constructors building numbers
and dates, and gives up (returns None: the caller uses PyYAML) on anything else:
nested mappings, flow collections, anchors, tags, multi-line or escaped scalars,
comments after a value, and a date that does not exist (`2025-02-30`: the loader
of sources.front_matter_yaml reads it as text and says where it was). Giving up is
always safe; a test checks that whatever this returns, that loader returns too.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from aggregator.sources.front_matter_yaml import TIMESTAMP_TAG, real_timestamp

_CONSTRUCTOR = SafeConstructor()
_STR = "tag:yaml.org,2002:str"
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}"
                         for name in ("bool", "null", "int", "float", "timestamp"))
# Characters PyYAML refuses, or treats as line breaks, anywhere in the document.
_AWKWARD = re.compile("[^\x09\x0a\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd"
                      "\U00010000-\U0010ffff]")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SINGLE_QUOTED = re.compile(r"'((?:[^']|'')*)'")
_DOUBLE_QUOTED = re.compile(r'"([^"\\]*)"')
# A plain scalar may not start with an indicator; these mean something inside one.
_INDICATOR_START = frozenset("-?:,[]{}#&*!|>'\"%@`")


class _NotSimple(Exception):
    pass


def parse_simple(text: str) -> dict[str, Any] | None:
    """The mapping PyYAML would load from `text`, or None if `text` is not in the
    simple shape (then ask PyYAML)."""
    if _AWKWARD.search(text):
        return None
    try:
        return _parse(text.split("\n")) or None  # nothing: PyYAML says None or {}
    except _NotSimple:
        return None


def _parse(lines: list[str]) -> dict[str, Any]:
    # (str methods, not a regex a line: this is ~15 % of reading a post)
    out: dict[str, Any] = {}
    key: str | None = None  # the key whose value may still be a list of items
    items: list[Any] | None = None
    indent = -1
    for line in lines:
        stripped = line.lstrip(" ")
        if not stripped or stripped[0] == "#":
            continue
        if stripped[0] == "-" and stripped[1:2] == " ":  # `( *)- +(.*)`
            if key is None or (items and len(line) - len(stripped) != indent):
                raise _NotSimple
            if items is None:
                items, indent = [], len(line) - len(stripped)
                out[key] = items
            value = stripped[2:].strip(" ")
            if not value:
                raise _NotSimple  # an empty item
            items.append(_scalar(value))
            continue
        name, colon, rest = line.partition(":")  # `([A-Za-z_][A-Za-z0-9_-]*):(?: +(.*))?`
        if not colon or not _plain_key(name) or (rest and rest[0] != " "):
            raise _NotSimple  # indented text, a continuation, a key YAML reads as a bool...
        raw = rest.strip(" ")
        if raw:
            out[name] = _scalar(raw)
            key = None
        else:
            out[name] = None  # unless items follow
            key = name
        items, indent = None, -1
    return out


@functools.lru_cache(maxsize=256)
def _plain_key(name: str) -> bool:
    """A key of the simple shape that YAML reads as text (not `yes`, `null`, `1`)."""
    return _KEY.fullmatch(name) is not None and _resolve(name) == _STR


def _scalar(raw: str) -> Any:
    """A value, stripped of spaces and not empty."""
    first = raw[0]
    if first == "'":
        inner = raw[1:-1]
        if len(raw) > 1 and raw[-1] == "'" and "'" not in inner:
            return inner  # the usual quoted title or URL
        match = _SINGLE_QUOTED.fullmatch(raw)
        if match is None:
            raise _NotSimple  # multi-line, or text after the closing quote
        return match.group(1).replace("''", "'")
    if first == '"':
        match = _DOUBLE_QUOTED.fullmatch(raw)
        if match is None:
            raise _NotSimple  # escapes, multi-line, or text after the closing quote
        return match.group(1)
    if first in _INDICATOR_START or ": " in raw or " #" in raw or raw[-1] == ":" \
            or "\t" in raw:
        raise _NotSimple
    tag = _resolve(raw)
    if tag == _STR:
        return raw
    if tag not in _SCALAR_TAGS:
        raise _NotSimple  # "<<" (merge) and "=" (value) mean more than a scalar
    if tag == TIMESTAMP_TAG:
        value = real_timestamp(raw)
        if value is None:
            raise _NotSimple  # no such date: the loader reads it as text and reports it
        return value
    # numbers, booleans, null: built by the very functions PyYAML uses
    return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, yaml.ScalarNode(tag, raw))


# PyYAML's implicit resolvers by first character (what Resolver.resolve looks up for a
# plain scalar), so that the usual text value costs one dict lookup.
_IMPLICIT: dict[str | None, list[tuple[str, re.Pattern[str]]]] = \
    yaml.resolver.Resolver.yaml_implicit_resolvers
_WILDCARD = tuple(_IMPLICIT.get(None, []))


def _resolve(value: str) -> str:
    for tag, pattern in _RESOLVERS.get(value[:1], _WILDCARD):
        if pattern.match(value):
            return tag
    return _STR


# each first character's resolvers, then the wildcard ones (as Resolver.resolve tries them)
_RESOLVERS = {first: (*resolvers, *_WILDCARD) for first, resolvers in _IMPLICIT.items()
              if first is not None}

"""The front matter fast path reads exactly what the front-matter loader (PyYAML's
C safe loader, dates that do not exist read as text) reads, or leaves it to it."""

from __future__ import annotations

import random

import pytest
import yaml
from helpers import SHARED

from aggregator.sources.front_matter import split_front_matter
from aggregator.sources.front_matter_yaml import FrontMatterLoader, load_front_matter
from aggregator.sources.simple_yaml import parse_simple

# Shaped like YAML timestamps, so resolved as such, but no date datetime can hold: the
# loader reads each as its text; plain PyYAML raises ValueError for every one.
IMPOSSIBLE_DATES = ["2025-02-30", "2026-13-45", "2025-01-01 25:61:61", "0000-01-01",
                    "2025-01-01 00:00:00 +25", "2025-01-01T00:00:00-24:30", "2025-00-10",
                    "2025-1-32 0:00:00", "0000-01-01T00:00:00Z"]
# Real dates near datetime's edges: read as dates (a post's date refuses them later).
EDGE_DATES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+05:00", "0001-01-01",
              "9999-12-31 23:59:59.999999", "2024-02-29"]

# Each is either in the simple shape (the fast path must agree with PyYAML) or not (it
# must return None). Many are traps: YAML reads them as something other than text.
CASES = [
    "title: Hello",
    "title: 'It''s'\ncategories:\n - 'A'\n - B\nauthor: me",
    'title: "double"\ntags:\n- one\n- two',
    "title: a [b] {c}, d\nurl: http://x.example/a?b=c#frag",
    "comments: false\ndraft: True\nflag: off\nother: yes",
    "nothing:\nnull_value: ~\nnull2: null\nempty: ''",
    "title: 123", "title: 0x1f", "title: 1:20", "title: 1e3", "title: .inf",
    "date: 2024-06-26", "date: 2024-06-26 03:33:19",
    "date: Wed, 26 Jun 2024 03:33:19 GMT",
    "title: a # comment", "title: 'a' # comment", "title: a: b", "title: ends:",
    "title: 'open", "title: \"esc\\\"aped\"", "title: \"a\\nb\"",
    "title: &anchor x\nother: *anchor", "title: !!str 12", "title: |\n  block",
    "title: >\n  folded", "title: [flow, list]", "title: {a: 1}",
    "title: multi\n  line", "title:\n  nested: map", "categories:\n - - deep",
    "categories:\n - a\n   - b", "categories:\n  - a\n - b", "categories:\n -",
    "categories:\n - a: b", "- top level item", "yes: key is a bool", "null: x",
    "1: int key", "'quoted key': x", "key : spaced", "key:\tvalue", "title: tab\there",
    "title: a\r\nother: b", "title: line\u2028sep", "title: nel\x85x", "title: bom\ufeffx",
    "title: ctrl\x01x", "title: \u00e9t\u00e9 \u4e8c\u6b21\u5143 \U0001f600",
    "# only a comment", "", "title: x\n# comment\n\ncategories:\n  # inside\n  - a",
    "title: x\ntitle: duplicate wins", "title: -5", "title: -", "title: ?x", "title: :x",
    "title: %x", "title: @x", "title: `x", "title: trailing   ", "t-i_t1e: ok",
    "title: <<", "<<: {a: 1}", "title: =", "on: key", "Title: Case",
    "title: 'multi\n  line quoted'", "title: 'a'b'", "title: ''''",
    *(f"date: {value}" for value in IMPOSSIBLE_DATES + EDGE_DATES),
    "title: x\ntags:\n - 2025-02-30\n - 2024-02-29", "born: 0000-01-01\ntitle: y",
]


def _yaml(text: str) -> object:
    try:
        return yaml.load(text, Loader=FrontMatterLoader)
    except yaml.YAMLError:
        return "<error>"


@pytest.mark.parametrize("value", IMPOSSIBLE_DATES)
def test_a_date_that_does_not_exist_is_read_as_its_text_wherever_it_is(value: str) -> None:
    text = (f"date: {value}\ncustom: {value}\nlist:\n  - ok\n  - {value}\n"
            f"map: {{inner: {value}}}\nnested:\n  deeper: [{value}]")
    with pytest.raises(ValueError):  # what every build met: PyYAML's own reading
        yaml.load(text, Loader=yaml.CSafeLoader)
    data, not_dates = load_front_matter(text)
    assert data == {"date": value, "custom": value, "list": ["ok", value],
                    "map": {"inner": value}, "nested": {"deeper": [value]}}
    assert not_dates == [(0, value), (1, value), (4, value), (5, value), (7, value)]
    assert parse_simple(f"title: t\ndate: {value}") is None  # the loader reads it


@pytest.mark.parametrize("value", EDGE_DATES)
def test_a_real_date_near_the_edges_is_read_as_pyyaml_reads_it(value: str) -> None:
    text = f"date: {value}\nlist:\n - {value}"
    expected = yaml.load(text, Loader=yaml.CSafeLoader)
    assert load_front_matter(text) == (expected, [])
    assert parse_simple(text) == expected


@pytest.mark.parametrize("text", CASES)
def test_fast_path_agrees_with_pyyaml_or_declines(text: str) -> None:
    fast = parse_simple(text)
    if fast is not None:
        assert fast == _yaml(text)
        assert all(type(fast[k]) is type(v) for k, v in _yaml(text).items())  # type: ignore[union-attr]


def test_an_explicit_timestamp_tag_on_text_is_read_as_the_text() -> None:
    with pytest.raises(AttributeError):  # PyYAML's constructor on its regex's None
        yaml.load("when: !!timestamp junk", Loader=yaml.CSafeLoader)
    assert load_front_matter("when: !!timestamp junk\nok: !!timestamp 2024-02-29") == (
        {"when": "junk", "ok": yaml.load("d: 2024-02-29", Loader=yaml.CSafeLoader)["d"]},
        [(0, "junk")])


def test_the_usual_shapes_take_the_fast_path() -> None:
    for text in CASES[:6]:
        assert parse_simple(text) is not None, text
    assert parse_simple("date: 2024-06-26 03:33:19\ncount: 12") is not None


def test_every_real_post_reads_the_same_and_most_take_the_fast_path() -> None:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent: the real posts are not available")
    files = sorted((SHARED / "corpus").rglob("*.md"))
    fast_count = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            fm = split_front_matter(text).front
        except ValueError:
            continue
        if fm is None:
            continue
        fast = parse_simple(fm)
        if fast is not None:
            fast_count += 1
            assert fast == _yaml(fm), path
    assert fast_count >= len(files) * 0.8, (fast_count, len(files))


def test_random_front_matter_reads_as_pyyaml_reads_it_or_declines() -> None:
    # Lines of the usual shape with traps mixed in: whatever the fast path accepts,
    # PyYAML must read the same, with the same types (a `yes` read as text, a date
    # read as a string, would change a post).
    keys = ["title", "author", "date", "tags", "t-i_t1e", "yes", "null", "1", "Title", "a b"]
    values = ["x", "'q r'", "'it''s'", "''", "'a'b'", '"d"', '"e\\"x"', "a # c", "a: b",
              "ends:", "12", "0x1f", "1e3", ".inf", "-5", "false", "True", "~", "null",
              "2024-06-26", "2024-06-26 03:33:19", "Tue, 26 Apr 2022 23:48:36 GMT", "[a]",
              "{a: 1}", "&a x", "*a", "!!str 1", "|", "-", "?x", "<<", "=", "é 中", "x ",
              "'x' y", "x\ty", *IMPOSSIBLE_DATES, *EDGE_DATES]
    rng = random.Random(20261127)
    fast_count = 0
    for _ in range(20_000):
        lines = []
        for _ in range(rng.randint(0, 6)):
            roll = rng.random()
            value = rng.choice(values) if rng.random() < 0.4 else rng.choice(values[:2])
            if roll < 0.6:
                key = rng.choice(keys) if rng.random() < 0.3 else rng.choice(keys[:4])
                lines.append(key + rng.choice([": ", ": ", ":", " :", ":  "]) +
                             (value if rng.random() < 0.8 else ""))
            elif roll < 0.9:
                lines.append(" " * rng.choice([0, 1, 1, 2]) + rng.choice(["- ", "-"]) + value)
            else:
                lines.append(rng.choice(["", "  ", "# c", value]))
        text = "\n".join(lines)
        fast = parse_simple(text)
        if fast is not None:
            fast_count += 1
            expected = _yaml(text)
            assert fast == expected, text
            assert _types(fast) == _types(expected), text
    assert fast_count > 1_000  # enough of them took the fast path to mean something


def _types(value: object) -> object:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value)

"""feedparser's private names that we use (sources/upstream/feedparser_private.py) are
there, with the signatures and the behaviour we rely on. An upgrade of feedparser that
changes one fails here, with a message naming what changed."""

from __future__ import annotations

import ast
import importlib
import inspect
import time
import tomllib
from pathlib import Path
from typing import Any

import feedparser
import pytest
from helpers import REPO

from aggregator.sources.upstream import buffered_expat, parse
from aggregator.sources.upstream import feedparser_private as fp

PRIVATE = REPO / "aggregator" / "sources" / "upstream" / "feedparser_private.py"
HANDLERS = REPO / "tests" / "data" / "feedparser_handlers.txt"

# Every feedparser name feedparser_private.py takes: its signature (callables) or type.
RELIED_ON: dict[str, str | type] = {
    "feedparser.api.PREFERRED_XML_PARSERS": list,
    "feedparser.datetimes._parse_date": "(date_string)",
    "feedparser.encodings.convert_to_utf8": "(http_headers, data, result)",
    "feedparser.html._cp1252": dict,
    "feedparser.mixin._FeedParserMixin": type,
    "feedparser.mixin._FeedParserMixin.namespaces": dict,
    "feedparser.mixin._FeedParserMixin.html_types": set,
    "feedparser.mixin._FeedParserMixin.can_be_relative_uri": set,
    "feedparser.mixin._FeedParserMixin.map_content_type": "(content_type)",
    "feedparser.mixin._FeedParserMixin.looks_like_html": "(s)",
    "feedparser.mixin._FeedParserMixin._enforce_href": "(attrs_d)",
    "feedparser.mixin._FeedParserMixin._sync_author_detail": "(self, key='author')",
    "feedparser.mixin._FeedParserMixin._add_tag": "(self, term, scheme, label)",
    "feedparser.namespaces.georss._parse_georss_point": "(value, swap=True, dims=2)",
    "feedparser.namespaces.georss._parse_georss_line": "(value, swap=True, dims=2)",
    "feedparser.namespaces.georss._parse_georss_polygon": "(value, swap=True, dims=2)",
    "feedparser.namespaces.georss._parse_georss_box": "(value, swap=True, dims=2)",
    "feedparser.urls._urljoin": "(base, uri)",
    "feedparser.urls.make_safe_absolute_uri": "(base, rel=None)",
}


def _changed(what: str) -> str:
    return (f"feedparser {feedparser.__version__} changed {what}: lean.py gives what "
            "feedparser.parse would only for the version pinned in pyproject.toml; "
            "read the change, adapt sources/upstream/feedparser_private.py and lean.py, "
            "then update this test")


def _resolve(dotted: str) -> Any:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _pinned() -> str:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in data["project"]["dependencies"] if d.startswith("feedparser")]
    assert len(pins) == 1 and "==" in pins[0], \
        f"pyproject.toml must pin feedparser exactly (feedparser==X.Y.Z), not {pins}"
    return pins[0].split("==", 1)[1].strip()


def test_the_installed_feedparser_is_the_pinned_one() -> None:
    assert feedparser.__version__ == _pinned(), _changed(
        f"version: {feedparser.__version__} is installed, pyproject.toml pins {_pinned()}")


def test_every_private_name_we_use_is_there_with_its_signature() -> None:
    problems = []
    for dotted, expected in RELIED_ON.items():
        try:
            obj = _resolve(dotted)
        except (ImportError, AttributeError):
            problems.append(f"{dotted} is gone")
            continue
        if isinstance(expected, type):
            if not isinstance(obj, expected):
                problems.append(f"{dotted} is a {type(obj).__name__}, not a "
                                f"{expected.__name__}")
        elif str(inspect.signature(obj)) != expected:
            problems.append(f"{dotted}{expected} is now {dotted}{inspect.signature(obj)}")
    assert not problems, _changed("; ".join(problems))


def _feedparser_names_in(path: Path) -> set[str]:
    """The feedparser names a module takes: `from feedparser.x import y` as x.y, and
    attributes of what it imported (`feedparser.api.X`, `_MIXIN.y`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("feedparser"):
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        if isinstance(value, ast.Name) and value.id in aliases:
            for target in targets:
                if isinstance(target, ast.Name):
                    aliases[target.id] = aliases[value.id]
    aliases["feedparser"] = "feedparser"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = [node.attr]
            base: ast.expr = node.value
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.add(".".join([aliases[base.id], *chain]))
    return found


def test_the_check_covers_every_name_the_module_takes() -> None:
    taken = _feedparser_names_in(PRIVATE)
    # feedparser.api is a module reached through `import feedparser.api`; a method of a
    # value checked by its type (`.insert` of a list) is that value's
    unchecked = {name for name in taken if name not in RELIED_ON and name != "feedparser.api"
                 and RELIED_ON.get(name.rpartition(".")[0], type) is type}
    assert not unchecked, f"feedparser_private.py uses {sorted(unchecked)}: add them to " \
                          "RELIED_ON in this test, with what the code relies on"


def test_no_other_module_reaches_into_feedparser() -> None:
    """Only feedparser.parse (and its result) outside feedparser_private.py."""
    offenders = []
    for path in sorted((REPO / "aggregator").rglob("*.py")):
        if path == PRIVATE:
            continue
        for name in sorted(_feedparser_names_in(path)):
            if name != "feedparser.parse":
                offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders, "feedparser's internals are used outside " \
                          f"sources/upstream/feedparser_private.py: {offenders}"


def test_feedparser_handles_the_elements_lean_py_was_written_for() -> None:
    lines = HANDLERS.read_text(encoding="utf-8").splitlines()
    recorded = {line for line in lines if line and not line.startswith("#")}
    mixin = _resolve("feedparser.mixin._FeedParserMixin")
    now = {name for name in dir(mixin) if name.startswith(("_start_", "_end_"))}
    added, removed = sorted(now - recorded), sorted(recorded - now)
    assert not added and not removed, _changed(
        f"its element handlers (added {added}, removed {removed}); lean.py takes an "
        f"element only when it knows what feedparser does with it ({HANDLERS.name})")
    assert fp.has_handler("title") and not fp.has_handler("no-such-element")
    assert fp.ends_xhtml_specially("body")


def test_dates_urls_and_text_fixes_behave_as_lean_py_expects() -> None:
    utc = time.struct_time((2022, 9, 10, 3, 10, 3, 5, 253, 0))
    checks: list[tuple[str, object, object]] = [
        ("_parse_date (RFC 822)", fp.parse_date("Sat, 10 Sep 2022 03:10:03 GMT"), utc),
        ("_parse_date (W3C-DTF, to UTC)", fp.parse_date("2022-09-10T05:10:03+02:00"), utc),
        ("_parse_date (not a date)", fp.parse_date("Invalid Date"), None),
        ("_urljoin", fp.urljoin("http://a.example/b/c", "../d"), "http://a.example/d"),
        ("make_safe_absolute_uri (relative)",
         fp.make_safe_absolute_uri("http://a.example/b/", "c"), "http://a.example/b/c"),
        ("make_safe_absolute_uri (javascript:)",
         fp.make_safe_absolute_uri("http://a.example/", "javascript:alert(1)"), ""),
        ("_cp1252", "\x80\x93".translate(fp.CP1252), "\u20ac\u201c"),
        ("namespaces (Dublin Core)", fp.NAMESPACES.get("http://purl.org/dc/elements/1.1/"),
         "dc"),
        ("namespaces (Media RSS)", fp.NAMESPACES.get("http://search.yahoo.com/mrss/"),
         "media"),
        ("html_types", fp.HTML_TYPES, {"text/html", "application/xhtml+xml"}),
        ("can_be_relative_uri (link)", "link" in fp.CAN_BE_RELATIVE_URI, True),
        ("map_content_type", [fp.map_content_type(t) for t in ("html", "xhtml", "text")],
         ["text/html", "application/xhtml+xml", "text/plain"]),
        ("looks_like_html", [fp.looks_like_html(t) for t in ("<b>x</b>", "a < b")],
         [True, False]),
        ("_parse_georss_point", fp.GEORSS["georss:point"]("45.256 -71.92"),
         {"type": "Point", "coordinates": (-71.92, 45.256)}),
    ]
    wrong = [f"{name} gives {got!r}, not {want!r}" for name, got, want in checks
             if got != want]
    assert not wrong, _changed("; ".join(wrong))


def test_encoding_detection_behaves_as_lean_py_expects() -> None:
    declared: dict[str, Any] = {}
    data = fp.convert_to_utf8({"content-type": "application/xml"},
                              '<?xml version="1.0" encoding="iso-8859-1"?><rss>\xe9</rss>'
                              .encode("latin-1"), declared)
    overridden: dict[str, Any] = {}
    fp.convert_to_utf8({"content-type": "text/xml; charset=utf-8"}, b"<rss>\xff</rss>",
                       overridden)
    wrong = []
    if data != b"<?xml version='1.0' encoding='utf-8'?><rss>\xc3\xa9</rss>" or \
            declared != {"encoding": "iso-8859-1"}:
        wrong.append(f"a declared Latin-1 document gives {data!r}, {declared!r}")
    if overridden.get("encoding") != "windows-1252" or overridden.get("bozo") is not True:
        wrong.append(f"a utf-8 label on cp1252 bytes gives {overridden!r}")
    assert not wrong, _changed("convert_to_utf8: " + "; ".join(wrong))


def test_author_tag_and_link_helpers_behave_as_lean_py_expects() -> None:
    split: dict[str, Any] = {"authors": [{}], "author": "Jane (jane@example.com)"}
    fp.sync_author_detail(split)
    joined: dict[str, Any] = {"authors": [{"name": "N", "email": "e@x.org"}]}
    fp.sync_author_detail(joined)
    tagged: dict[str, Any] = {}
    for term in ("a", "a", None):
        fp.add_tag(tagged, term, None, None)
    attrs = {"url": "http://a.example/i.png"}
    fp.enforce_href(attrs)
    checks: list[tuple[str, object, object]] = [
        ("_sync_author_detail (split)", split.get("author_detail"),
         {"name": "Jane", "email": "jane@example.com"}),
        ("_sync_author_detail (joined)", joined.get("author"), "N (e@x.org)"),
        ("_add_tag", tagged, {"tags": [{"term": "a", "scheme": None, "label": None}]}),
        ("_enforce_href", attrs, {"href": "http://a.example/i.png"}),
    ]
    wrong = [f"{name} gives {got!r}, not {want!r}" for name, got, want in checks
             if got != want]
    assert not wrong, _changed("; ".join(wrong))


def test_feedparser_reads_xml_with_the_parser_we_put_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert fp.PREFERRED_XML_PARSERS[0] == parse._PARSER
    made: list[object] = []
    create = buffered_expat.create_parser

    def counting(*args: Any, **kwargs: Any) -> buffered_expat.BufferedExpatParser:
        made.append(None)
        return create(*args, **kwargs)

    monkeypatch.setattr(buffered_expat, "create_parser", counting)
    result = feedparser.parse(b'<?xml version="1.0"?><rss version="2.0"><channel>'
                              b"<item><title>t</title></item></channel></rss>")
    assert made and result.entries[0].title == "t", _changed(
        "how it picks its XML parser: feedparser.api.PREFERRED_XML_PARSERS is not asked")

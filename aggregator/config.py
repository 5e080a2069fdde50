"""config.yaml: every key, its default and its check, in one place.

Relative paths are relative to the config file. A problem is reported with the file
and line it comes from; a broken upstream line only drops that source, anything that
makes the whole run meaningless (no site URL, no content dir) is a ConfigError.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from aggregator.hexo_site import HexoSite, load_hexo_site
from aggregator.problems import ConfigError, ProblemLog

try:  # libyaml is ~10x faster; fall back silently where it is not compiled in
    from yaml import CSafeLoader as SafeLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader  # type: ignore[assignment]

DEFAULT_DROP_SELECTORS = (
    ".appendQr_wrap",
    "p.article-editor",
    "style",
    "script",
    "ins.adsbygoogle",
    "input",
)
DEFAULT_IFRAME_HOSTS = (
    "www.youtube.com",
    "www.youtube-nocookie.com",
    "player.bilibili.com",
    "player.vimeo.com",
)
# The feed formats a node may have, in the order they are listed and written.
FEED_FORMATS = ("atom", "rss", "json")
_EVERY = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass(frozen=True)
class UpstreamSource:
    url: str
    category: tuple[str, ...]
    title: str | None = None
    every_seconds: int = 1800
    enabled: bool = True
    drop_selectors: tuple[str, ...] = ()
    retention: int = 200
    write_posts: bool = False
    where: str = ""  # config file and line, for messages


@dataclass(frozen=True)
class Config:
    path: Path
    site_url: str
    site_title: str
    timezone: ZoneInfo
    post_url: str | None
    id_date: str
    content_dirs: tuple[Path, ...]
    body: str
    follow_symlinks: bool
    max_post_bytes: int
    output_dir: Path
    max_items: int
    full_content: bool
    slugs: dict[str, str]
    max_depth: int
    drop_selectors: tuple[str, ...]
    iframe_hosts: tuple[str, ...]
    images_probe: bool
    upstream: tuple[UpstreamSource, ...]
    opml_files: tuple[Path, ...]
    allow_private_addresses: bool
    per_host_limit: int
    max_bytes: int
    state_path: Path
    serve_host: str | None
    serve_port: int | None
    fetch_timeout: float = 20.0  # seconds, connect and each read
    fetch_deadline: float = 60.0  # seconds, one whole request
    fetch_concurrency: int = 16  # sources fetched at once
    parse_processes: int = 0  # 0: one per CPU (max 4) for big polls; 1: parse in threads
    failing_after: int = 3  # errors in a row before `check` lists a source as failing
    probe_max: int = 50  # image probes per fetch run
    probe_seconds: float = 20.0  # time budget for the image probes of one fetch run
    probe_refresh_days: int = 30  # a cached probe result is trusted this long
    hexo: HexoSite | None = None  # content.hexo_config: links and dates as Hexo makes them
    archives: bool = False  # output.archives: RFC 5005 archive documents (writers/archives)
    websub_hubs: tuple[str, ...] = ()  # WebSub hubs: rel="hub" links, a ping per changed feed
    websub_timeout: float = 10.0  # seconds, one ping (connect and answer)
    websub_retry: float = 60.0  # seconds before the first retry of a failed ping (doubling)
    formats: tuple[str, ...] = FEED_FORMATS  # output.formats: the feed files of each node
    pages: bool = True  # output.pages: an index.html page for every node
    # state.url: a PostgreSQL database holding the whole store (else the SQLite file)
    state_url: str | None = None
    # fetch.lease_seconds: how long a fetch worker's hosts stay its own after its last
    # renewal (a killed worker's sources wait this long for another worker)
    lease_seconds: float = 30.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def site_host(self) -> str:
        return urlsplit(self.site_url).hostname or "localhost"


class _LineLoader(SafeLoader):
    """Records the line of every mapping key, so messages can say where."""


def _checked_timestamp(loader: _LineLoader, node: yaml.Node) -> object:
    """PyYAML's timestamp, or a YAML error at its line for one that names no date
    (`id_date: 2026-13-45`): PyYAML's own constructor raises a bare ValueError there."""
    try:
        return loader.construct_yaml_timestamp(node)  # type: ignore[arg-type]
    except (ValueError, OverflowError, TypeError) as exc:
        raise yaml.constructor.ConstructorError(
            problem=f"{node.value!r} is not a real date ({exc})",
            problem_mark=node.start_mark) from None


_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _checked_timestamp)


def _load_with_lines(text: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    lines: dict[tuple[str, ...], int] = {}
    # One parse: the node tree gives the lines and is then constructed into data
    # (a second parse would cost ~40 ms of a 1,000-source config).
    loader = _LineLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (str(i),))

    if root is not None:
        walk(root, ())
    return data, lines


def parse_every(value: object) -> int:
    """`30m`, `2h`, `1d`, `45s` or a number of seconds → seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _EVERY.match(str(value))
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"'every' must look like 30m, 2h or 1d, not {value!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def category_path(value: object) -> tuple[str, ...]:
    """A list is a path (nested lists flattened, however deep: a loop, not a
    recursion); a string is one level; empty items, None and mappings are dropped."""
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(reversed(item))
        elif item is not None and not isinstance(item, dict):
            text = str(item).strip()
            if text:
                out.append(text)
    return tuple(out)


class _Reader:
    """Typed access to the raw mapping, reporting `file:line: message`."""

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[tuple[str, ...], int],
                 problems: ProblemLog) -> None:
        self.path, self.data, self.lines, self.problems = path, data, lines, problems

    def where(self, *keys: str) -> str:
        for n in range(len(keys), -1, -1):
            if keys[:n] in self.lines:
                return f"{self.path}:{self.lines[keys[:n]]}"
        return str(self.path)

    def get(self, *keys: str, default: Any = None) -> Any:
        node: Any = self.data
        for key in keys:
            if not isinstance(node, dict) or key not in node or node[key] is None:
                return default
            node = node[key]
        return node

    def typed(self, kind: type | tuple[type, ...], *keys: str, default: Any) -> Any:
        value = self.get(*keys, default=default)
        if isinstance(value, bool) and kind in (int, float):
            value = None
        if not isinstance(value, kind):
            raise ConfigError(f"{self.where(*keys)}: {'.'.join(keys)} must be "
                              f"{getattr(kind, '__name__', kind)}, not {value!r}")
        return value


# Every key config.yaml may hold, by section (`upstream`: the keys of one source; an
# OPML item holds only `opml`). The one table the unknown-key check reads: a new key is
# added here and read in load_config.
KNOWN_KEYS: dict[str, set[str]] = {
    "site": {"url", "title", "timezone", "post_url", "id_date"},
    "content": {"dir", "body", "follow_symlinks", "max_post_bytes", "hexo_config"},
    "output": {"dir", "max_items", "full_content", "slugs", "max_depth", "archives",
               "formats", "pages"},
    "sanitize": {"drop_selectors", "iframe_hosts"},
    "images": {"probe", "probe_max", "probe_seconds", "probe_refresh_days"},
    "upstream": {"url", "category", "title", "every", "enabled", "drop_selectors",
                 "retention", "write_posts"},
    "fetch": {"allow_private_addresses", "per_host_limit", "max_bytes", "timeout_seconds",
              "deadline_seconds", "concurrency", "parse_processes", "failing_after",
              "lease_seconds"},
    "state": {"path", "url"},
    "serve": {"host", "port"},
    "websub": {"hubs", "timeout_seconds", "retry_seconds"},
}
OPML_ITEM_KEYS = {"opml"}


class UnknownKeys(ConfigError):
    """Keys the config may not hold (typos, mostly): each as (where, message)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{where}: {message}" for where, message in items))
        self.items = items


def _did_you_mean(name: str, candidates: set[str], section: str | None) -> str:
    """`; did you mean 'output'?` from difflib, else the section that holds the key."""
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if section is not None:
        for other, keys in KNOWN_KEYS.items():
            if name in keys and other != section and other != "upstream":
                return f"; did you mean '{other}.{name}'?"
    return ""


def _unknown_keys(r: _Reader) -> list[tuple[str, str]]:
    """Every key not in KNOWN_KEYS, sections that are not mappings and upstream items
    with unknown keys, each with its line and a suggestion."""
    found: list[tuple[str, str]] = []
    for section, value in r.data.items():
        name = str(section)
        if name not in KNOWN_KEYS:
            found.append((r.where(name), f"unknown config section '{name}'"
                                         f"{_did_you_mean(name, set(KNOWN_KEYS), None)}"))
            continue
        if value is None:
            continue
        if name == "upstream":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        found += _unknown_in(r, item, ("upstream", str(i)),
                                             OPML_ITEM_KEYS if "opml" in item
                                             else KNOWN_KEYS["upstream"])
            continue
        if not isinstance(value, dict):
            found.append((r.where(name), f"'{name}' must be a mapping of keys, "
                                         f"not {value!r}"))
            continue
        found += _unknown_in(r, value, (name,), KNOWN_KEYS[name])
    return found


def _unknown_in(r: _Reader, mapping: dict[Any, Any], keys: tuple[str, ...],
                allowed: set[str]) -> list[tuple[str, str]]:
    section = keys[0]
    label = "an upstream source" if section == "upstream" else f"'{section}'"
    other = None if section == "upstream" else section  # (no hint of another section's key)
    return [(r.where(*keys, str(key)),
             f"unknown key '{key}' in {label}{_did_you_mean(str(key), allowed, other)}")
            for key in mapping if str(key) not in allowed]


def load_config(path: Path, problems: ProblemLog | None = None) -> Config:
    problems = problems if problems is not None else ProblemLog()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no config file (looked for {path.absolute()}); start "
                          f"from the example config.yaml of the aggregator's source, or "
                          f"give another file with -c FILE") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    try:
        data, lines = _load_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    except (ValueError, TypeError) as exc:  # an explicit tag that refuses its value: `!!int x`
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: config must be a mapping of sections")
    r = _Reader(path, data, lines, problems)
    unknown = _unknown_keys(r)
    if unknown:
        raise UnknownKeys(unknown)
    base = path.parent

    site_url = r.typed(str, "site", "url", default="http://localhost:8080/")
    parts = urlsplit(site_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{r.where('site', 'url')}: site.url must be an absolute http(s) URL, "
                          f"not {site_url!r}")
    if not site_url.endswith("/"):
        site_url += "/"
    hexo_path = r.get("content", "hexo_config")
    if hexo_path is not None and not (isinstance(hexo_path, str) and hexo_path):
        raise ConfigError(f"{r.where('content', 'hexo_config')}: content.hexo_config must be "
                          f"the path of a Hexo site's _config.yml")
    hexo = load_hexo_site((base / hexo_path).resolve()) if hexo_path else None
    # naive dates are in site.timezone, else in the Hexo site's, else in UTC
    tz_name = r.typed(str, "site", "timezone",
                      default=hexo.timezone if hexo is not None and hexo.timezone else "UTC")
    try:
        timezone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{r.where('site', 'timezone')}: unknown timezone {tz_name!r}") from exc
    post_url = r.get("site", "post_url")
    if post_url is not None and (not isinstance(post_url, str) or "{path}" not in post_url):
        raise ConfigError(f"{r.where('site', 'post_url')}: site.post_url must be a string "
                          f"holding {{path}}")

    dirs_value = r.get("content", "dir", default="content/posts")
    dirs = dirs_value if isinstance(dirs_value, list) else [dirs_value]
    if not dirs or not all(isinstance(d, str) and d for d in dirs):
        raise ConfigError(f"{r.where('content', 'dir')}: content.dir must be a folder or a list")
    content_dirs = tuple((base / d).resolve() for d in dirs)
    body = r.typed(str, "content", "body", default="auto")
    if body not in ("auto", "html", "markdown"):
        raise ConfigError(f"{r.where('content', 'body')}: content.body must be auto, html "
                          f"or markdown, not {body!r}")

    max_items = r.typed(int, "output", "max_items", default=50)
    if max_items < 0:
        raise ConfigError(f"{r.where('output', 'max_items')}: output.max_items must be >= 0")
    slugs_raw = r.typed(dict, "output", "slugs", default={})
    slugs: dict[str, str] = {}
    for name, slug in slugs_raw.items():
        if not isinstance(slug, str) or not _SLUG.match(slug):
            problems.warn(r.where("output", "slugs", str(name)),
                          f"slug {slug!r} for {name!r} ignored: use a-z, 0-9 and '-'")
            continue
        slugs[str(name)] = slug

    formats = _formats(r)
    selectors = r.typed(list, "sanitize", "drop_selectors", default=list(DEFAULT_DROP_SELECTORS))
    hosts = r.typed(list, "sanitize", "iframe_hosts", default=list(DEFAULT_IFRAME_HOSTS))

    upstream, opml_files = _read_upstream(r, base)  # OPML files: sources.upstream.opml
    serve = r.get("serve")
    serve_host = serve_port = None
    if isinstance(serve, dict):
        serve_host = r.typed(str, "serve", "host", default="127.0.0.1")
        serve_port = r.typed(int, "serve", "port", default=8080)

    return Config(
        path=path.resolve(),
        site_url=site_url,
        site_title=str(r.get("site", "title", default="aggregator")),
        timezone=timezone,
        post_url=post_url,
        id_date=str(r.get("site", "id_date", default="2026")),
        content_dirs=content_dirs,
        body=body,
        follow_symlinks=r.typed(bool, "content", "follow_symlinks", default=False),
        max_post_bytes=r.typed(int, "content", "max_post_bytes", default=10 * 1024 * 1024),
        output_dir=(base / r.typed(str, "output", "dir", default="feeds")).resolve(),
        max_items=max_items,
        full_content=r.typed(bool, "output", "full_content", default=True),
        slugs=slugs,
        max_depth=r.typed(int, "output", "max_depth", default=16),
        drop_selectors=tuple(str(s) for s in selectors),
        iframe_hosts=tuple(str(h).lower() for h in hosts),
        images_probe=r.typed(bool, "images", "probe", default=True),
        upstream=upstream,
        opml_files=opml_files,
        allow_private_addresses=r.typed(bool, "fetch", "allow_private_addresses", default=False),
        per_host_limit=r.typed(int, "fetch", "per_host_limit", default=2),
        max_bytes=r.typed(int, "fetch", "max_bytes", default=15 * 1024 * 1024),
        state_path=(base / r.typed(str, "state", "path",
                                   default="state/aggregator.sqlite")).resolve(),
        serve_host=serve_host,
        serve_port=serve_port,
        fetch_timeout=_positive(r, "timeout_seconds", 20.0),
        fetch_deadline=_positive(r, "deadline_seconds", 60.0),
        fetch_concurrency=int(_positive(r, "concurrency", 16)),
        parse_processes=r.typed(int, "fetch", "parse_processes", default=0),
        failing_after=max(1, r.typed(int, "fetch", "failing_after", default=3)),
        probe_max=max(0, r.typed(int, "images", "probe_max", default=50)),
        probe_seconds=float(r.typed((int, float), "images", "probe_seconds", default=20.0)),
        probe_refresh_days=max(1, r.typed(int, "images", "probe_refresh_days", default=30)),
        hexo=hexo,
        archives=r.typed(bool, "output", "archives", default=False),
        websub_hubs=_hubs(r),
        websub_timeout=_positive(r, "timeout_seconds", 10.0, "websub"),
        websub_retry=_positive(r, "retry_seconds", 60.0, "websub"),
        formats=formats,
        pages=r.typed(bool, "output", "pages", default=True),
        state_url=_state_url(r),
        lease_seconds=_positive(r, "lease_seconds", 30.0),
        raw=data,
    )


def _formats(r: _Reader) -> tuple[str, ...]:
    """output.formats: a non-empty list of feed formats, kept in FEED_FORMATS' order."""
    value = r.typed(list, "output", "formats", default=list(FEED_FORMATS))
    unknown = [item for item in value if item not in FEED_FORMATS]
    if unknown or not value:
        raise ConfigError(f"{r.where('output', 'formats')}: output.formats must list some of "
                          f"{', '.join(FEED_FORMATS)}, not {value!r}")
    return tuple(kind for kind in FEED_FORMATS if kind in value)


def _positive(r: _Reader, key: str, default: float, section: str = "fetch") -> float:
    value = r.typed((int, float), section, key, default=default)
    if isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{r.where(section, key)}: {section}.{key} must be a positive number")
    return float(value)


def _state_url(r: _Reader) -> str | None:
    """state.url: a PostgreSQL URL; with state.path as well it is a config error (which
    of the two holds the state would be a guess)."""
    url = r.get("state", "url")
    if url is None:
        return None
    if not isinstance(url, str):
        raise ConfigError(f"{r.where('state', 'url')}: state.url must be str, not {url!r}")
    if r.get("state", "path") is not None:
        raise ConfigError(f"{r.where('state', 'url')}: state.url and state.path are both "
                          "set; keep one (state.url: the PostgreSQL database, state.path: "
                          "the SQLite file)")
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{r.where('state', 'url')}: state.url must be a PostgreSQL URL "
                          "(postgresql://user@host/database)")
    return str(url)


def _hubs(r: _Reader) -> tuple[str, ...]:
    """websub.hubs: absolute http(s) URLs, each once, in the order given."""
    hubs: list[str] = []
    for i, hub in enumerate(r.typed(list, "websub", "hubs", default=[])):
        parts = urlsplit(hub) if isinstance(hub, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{r.where('websub', 'hubs', str(i))}: a WebSub hub must be "
                              f"an absolute http(s) URL, not {hub!r}")
        if hub not in hubs:
            hubs.append(hub)
    return tuple(hubs)


def _read_upstream(r: _Reader, base: Path) -> tuple[tuple[UpstreamSource, ...], tuple[Path, ...]]:
    """Each bad line is reported and skipped; the rest of the sources still run."""
    items = r.get("upstream", default=[])
    if not isinstance(items, list):
        r.problems.error(r.where("upstream"), "upstream must be a list of sources; ignored")
        return (), ()
    sources: list[UpstreamSource] = []
    opml: list[Path] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = r.where("upstream", str(i))
        if isinstance(item, dict) and "opml" in item:
            opml.append(base / str(item["opml"]))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            r.problems.error(where, "upstream entry needs a 'url'; skipped")
            continue
        url = item["url"].strip()
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            r.problems.error(where, f"upstream url {url!r} is not an http(s) URL; skipped")
            continue
        if url in seen:
            r.problems.warn(where, f"upstream {url} listed twice; the first entry is used")
            continue
        try:
            every = parse_every(item.get("every", "30m"))
        except ValueError as exc:
            r.problems.error(where, f"{exc}; skipped")
            continue
        category = category_path(item.get("category"))
        if not category:
            r.problems.warn(where, f"upstream {url} has no category; its entries are only "
                                   f"in the all-items feeds")
        selectors = item.get("drop_selectors") or []
        retention = item.get("retention", 200)
        if not isinstance(retention, int) or isinstance(retention, bool) or retention < 1:
            r.problems.warn(where, f"retention {retention!r} is not a positive number; 200 used")
            retention = 200
        seen.add(url)
        sources.append(UpstreamSource(
            url=url, category=category,
            title=str(item["title"]) if item.get("title") is not None else None,
            every_seconds=every, enabled=bool(item.get("enabled", True)),
            drop_selectors=tuple(str(s) for s in selectors) if isinstance(selectors, list) else (),
            retention=retention, write_posts=bool(item.get("write_posts", False)), where=where,
        ))
    return tuple(sources), tuple(opml)

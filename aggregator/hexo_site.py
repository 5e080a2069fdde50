"""A Hexo site's `_config.yml` (config key `content.hexo_config`): the settings that
shape what Hexo publishes for a post, read as Hexo reads them (its defaults for the
keys the file leaves out, `url` without its trailing slashes, `root` from the url's
path when not given)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from aggregator.problems import ConfigError

try:
    from yaml import CSafeLoader as SafeLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader  # type: ignore[assignment]


@dataclass(frozen=True)
class HexoSite:
    path: str  # the _config.yml, for messages
    url: str  # without a trailing slash, as Hexo keeps it
    root: str  # the site's path on its host, ending in "/"
    permalink: str = ":year/:month/:day/:title/"
    permalink_defaults: dict[str, str] = field(default_factory=dict)
    trailing_index: bool = True  # pretty_urls
    trailing_html: bool = True
    new_post_name: str = ":title.md"
    post_asset_folder: bool = False
    timezone: str | None = None  # None: Hexo's '' (the machine's zone)
    default_category: str = "uncategorized"
    filename_case: int = 0  # category slugs: 0 as written, 1 lower, 2 upper case
    category_map: dict[str, str] = field(default_factory=dict)


def load_hexo_site(path: Path) -> HexoSite:
    """The site's settings; ConfigError when the file cannot be used."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the Hexo config: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: the Hexo config is not valid YAML: "
                          f"{getattr(exc, 'problem', exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the Hexo config is not a mapping")
    url = _text(data, "url", "http://example.com")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{path}: url must be an absolute http(s) URL, not {url!r}")
    root = _text(data, "root", "") or (parts.path if parts.path.endswith("/")
                                       else parts.path + "/")
    pretty = data.get("pretty_urls") if isinstance(data.get("pretty_urls"), dict) else {}
    assert isinstance(pretty, dict)
    timezone = data.get("timezone")
    return HexoSite(
        path=str(path),
        url=url.rstrip("/"),
        root=root.rstrip("/") + "/",
        permalink=_text(data, "permalink", ":year/:month/:day/:title/"),
        permalink_defaults=_strings(data.get("permalink_defaults")),
        trailing_index=pretty.get("trailing_index") is not False,
        trailing_html=pretty.get("trailing_html") is not False,
        new_post_name=_text(data, "new_post_name", ":title.md"),
        post_asset_folder=data.get("post_asset_folder") is True,
        timezone=str(timezone) if isinstance(timezone, str) and timezone.strip() else None,
        default_category=_text(data, "default_category", "uncategorized"),
        filename_case=data["filename_case"] if data.get("filename_case") in (1, 2) else 0,
        category_map=_strings(data.get("category_map")),
    )


def _text(data: dict[str, Any], key: str, default: str) -> str:
    value = data.get(key)
    if value is None or isinstance(value, dict | list):
        return default
    return str(value)


def _strings(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}

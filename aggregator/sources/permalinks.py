"""Hexo's permalinks: the link Hexo publishes a post under, and the date it takes
from the post's file name.

Hexo makes a post's slug from its path under `_posts/` (matched against
`new_post_name`), fills the site's `permalink` rule (`:year/:month/:day/:title/`)
from the slug, the date and the front matter, puts it after the site's `url` and
percent-encodes it as encodeURI does. A front-matter `permalink` replaces the rule.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from urllib.parse import quote

from aggregator.hexo_site import HexoSite

# a rule's parameters: `:name`, a word not ending in "_"
_PARAM = re.compile(r":(\w*[^_\W])", re.ASCII)
# what new_post_name's date parameters match in a file name
_FILE_NAME_SEGMENTS = {"year": r"(\d{4})", "month": r"(\d{2})", "day": r"(\d{2})",
                       "i_month": r"(\d{1,2})", "i_day": r"(\d{1,2})",
                       "hash": r"([0-9a-f]{12})"}
# the keys a file name's match does not copy into the post's data
_PRESERVED = frozenset(("title", "year", "month", "day", "i_month", "i_day", "hash"))
# parameters that need the post's date
DATE_PARAMS = frozenset(("year", "month", "day", "i_month", "i_day", "hour", "minute",
                         "second", "hash", "timestamp"))
_SPECIAL = re.compile(r"[\s~`!@#$%^&*()\-_+=\[\]{}|\\;:\"'<>,.?/]+")
_CONTROL = re.compile(r"[\x00-\x1f]")
# Latin letters that do not decompose into a base letter and marks
_UNDECOMPOSED = str.maketrans({"Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Đ": "D",
                               "đ": "d", "Ł": "L", "ł": "l", "Œ": "OE", "œ": "oe",
                               "ß": "s", "Ħ": "H", "ħ": "h", "ı": "i", "Ŀ": "L", "ŀ": "l",
                               "Ŧ": "T", "ŧ": "t", "Ð": "D"})
_LATIN = re.compile("[\u00c0-\u024f\u1e00-\u1eff\u24b6-\u24e9\uff21-\uff3a\uff41-\uff5a]")
# what encodeURI leaves as it is (besides ASCII letters, digits and "-_.~")
_URI_SAFE = ";,/?:@&=+$#!*'()"
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_RESERVED = frozenset(";/?:@&=+$,#")


def slugize(text: str, transform: int = 0) -> str:
    """hexo-util's slugize: Latin diacritics dropped, control characters removed,
    every run of spaces and punctuation one "-", none at either end; `transform`
    1 lower-cases, 2 upper-cases."""
    text = _LATIN.sub(_base_letter, text.translate(_UNDECOMPOSED))
    text = _SPECIAL.sub("-", _CONTROL.sub("", text)).strip("-")
    return text.lower() if transform == 1 else text.upper() if transform == 2 else text


def _base_letter(match: re.Match[str]) -> str:
    decomposed = unicodedata.normalize("NFKD", match.group())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@functools.lru_cache(maxsize=64)
def _rule_pattern(rule: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A rule as the regex that parses a file name, and its parameters in order."""
    names: list[str] = []

    def param(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return _FILE_NAME_SEGMENTS.get(match.group(1), "(.+?)")
    return re.compile("^" + _PARAM.sub(param, re.escape(rule)) + "$", re.DOTALL), tuple(names)


def _without_extension(name: str) -> str:
    """posixpath.splitext as node's path.extname splits (a leading dot is no extension)."""
    return posixpath.splitext(name)[0]


@dataclass(frozen=True)
class FileName:
    """What Hexo reads from a post's path under `_posts/`."""

    slug: str
    values: dict[str, str]  # the other parameters new_post_name matched

    def date(self, zone: tzinfo) -> datetime | None:
        """The day the name gives (its year, month and day), at midnight in `zone`."""
        values = self.values
        month = values.get("month") or values.get("i_month")
        day = values.get("day") or values.get("i_day")
        if not values.get("year") or not month or not day:
            return None
        try:
            return datetime(int(values["year"]), int(month), int(day), tzinfo=zone)
        except ValueError:
            return None


def under_posts(rel: str) -> str:
    """A post's path under Hexo's `_posts/` (the content dir may be the source dir)."""
    return rel[len("_posts/"):] if rel.startswith("_posts/") else rel


def read_file_name(site: HexoSite, path: str) -> FileName:
    """`path`: the post's path under `_posts/` (posix)."""
    pattern, names = _rule_pattern(_without_extension(site.new_post_name))
    bare = _without_extension(path)
    match = pattern.match(bare)
    if match is None:
        return FileName(slugize(bare), {})
    values = dict(zip(names, match.groups(), strict=True))
    return FileName(values.pop("title", None) or slugize(bare), values)


@dataclass(frozen=True)
class PostFacts:
    """What a permalink is made of, besides the site."""

    file: FileName
    published: datetime | None
    title: str
    categories: tuple[tuple[str, ...], ...]
    front_matter: Mapping[str, object]
    zone: tzinfo


def permalink(site: HexoSite, post: PostFacts) -> str | None:
    """The post's full URL as Hexo publishes it; None when the rule needs a date and
    the post has none (Hexo would take the file's creation time)."""
    override = post.front_matter.get("permalink")
    if isinstance(override, str) and override:
        path = override if override.startswith("/") else "/" + override
    else:
        values = _values(site, post)
        if values is None:
            return None
        path = _PARAM.sub(lambda m: values.get(m.group(1), "undefined"), site.permalink)
    if site.post_asset_folder and not path.endswith(("/", ".html")):
        path += "/"
    return full_url(site, path)


@functools.lru_cache(maxsize=64)
def _rule_params(rule: str) -> frozenset[str]:
    """The parameters a permalink rule names (the rule is the same all build)."""
    return frozenset(m.group(1) for m in _PARAM.finditer(rule))


def _values(site: HexoSite, post: PostFacts) -> dict[str, str] | None:
    """The values of the rule's parameters (those that cost a slug or a hash are
    made only when the rule names them: `permalink` fills in nothing else)."""
    rule_params = _rule_params(site.permalink)
    when = post.published
    if when is None and rule_params & DATE_PARAMS:
        return None
    slug = post.file.slug
    values = {"id": _js_text(post.front_matter.get("id", "")), "title": slug,
              "name": posixpath.basename(slug)}
    if "post_title" in rule_params:
        values["post_title"] = slugize(post.title, transform=1)
    if "category" in rule_params:
        values["category"] = _category_slug(site, post.categories)
    if when is not None:
        local = when.astimezone(post.zone)
        values.update(year=f"{local.year:04d}", month=f"{local.month:02d}",
                      day=f"{local.day:02d}", hour=f"{local.hour:02d}",
                      minute=f"{local.minute:02d}", second=f"{local.second:02d}",
                      i_month=str(local.month), i_day=str(local.day),
                      timestamp=str(int(when.timestamp())))
        if "hash" in rule_params:
            values["hash"] = hashlib.sha1(f"{slug}{int(when.timestamp())}".encode(),
                                          usedforsecurity=False).hexdigest()[:12]
    for key, text in post.file.values.items():
        if key not in _PRESERVED:
            values.setdefault(key, text)
    for key, value in post.front_matter.items():
        values.setdefault(key, _js_text(value))
    for key, text in site.permalink_defaults.items():
        values.setdefault(key, text)
    return values


def _category_slug(site: HexoSite, categories: tuple[tuple[str, ...], ...]) -> str:
    """`:category`: the slug of the post's last category (its parents' slugs first),
    or the site's default_category."""
    if not categories:
        return site.default_category
    return "/".join(slugize(site.category_map.get(name, name), site.filename_case)
                    for name in categories[-1])


def _js_text(value: object) -> str:
    """A front-matter value as JavaScript makes it a string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join("" if v is None else _js_text(v) for v in value)
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def full_url(site: HexoSite, path: str) -> str:
    """The site's url, then `path` (runs of "/" made one), percent-encoded as Hexo's
    encodeURL does, then its pretty_urls applied."""
    url = encode_url(site.url + re.sub(r"/{2,}", "/", "/" + path))
    if not site.trailing_index:
        url = url.removesuffix("index.html")
    if not site.trailing_html and not url.endswith("index.html"):
        url = url.removesuffix(".html")
    return url


def encode_url(url: str) -> str:
    """encodeURI(decodeURI(...)) of the URL's path, query and fragment: what is
    already percent-encoded stays so (an escape of a reserved character is encoded
    again, as decodeURI leaves it), the rest is encoded as UTF-8."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host}{slash}{quote(_decode_uri(path), safe=_URI_SAFE)}"


def _decode_uri(text: str) -> str:
    """decodeURI: escapes of UTF-8 decoded, except those of reserved characters; an
    escape that is not UTF-8 is left as it is."""
    def run(match: re.Match[str]) -> str:
        escapes = match.group()
        try:
            decoded = bytes.fromhex(escapes.replace("%", "")).decode("utf-8")
        except UnicodeDecodeError:
            return escapes
        return "".join(f"%{ord(c):02X}" if c in _RESERVED else c for c in decoded)
    return _ESCAPES.sub(run, text)

"""The content directory: find the posts, read their front matter and body into entries.

Every problem is reported as `path:line: message` (path relative to its content dir)
and either recovered (a warning; the post is used) or the post is skipped (an error).
"""

from __future__ import annotations

import codecs
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import yaml

from aggregator.config import Config, category_path
from aggregator.media import image_type_from_url
from aggregator.model import Entry, Image
from aggregator.problems import ProblemLog
from aggregator.sanitize.html import MAX_DEPTH as MAX_HTML_DEPTH
from aggregator.sanitize.html import Sanitizer, absolute_url, html_depth, may_nest_deeper
from aggregator.sanitize.text import clean_line, sanitized_text
from aggregator.sources.dates import DateError, parse_date
from aggregator.sources.front_matter import LEADING, Split, split_front_matter
from aggregator.sources.front_matter_yaml import load_front_matter
from aggregator.sources.hexo.assets import PostAssets, asset_folder
from aggregator.sources.hexo.body import BodySettings, Rendered, render_body, site_of
from aggregator.sources.hexo.excerpt import excerpt_of
from aggregator.sources.hexo.tags import LinkedPost
from aggregator.sources.linked_posts import PostsBySlug
from aggregator.sources.permalinks import (
    FileName,
    PostFacts,
    permalink,
    read_file_name,
    under_posts,
)
from aggregator.sources.safe_open import Refused, SafeOpener
from aggregator.sources.simple_yaml import parse_simple
from aggregator.sources.walk import PostFile, display

# Bounds for hostile front matter: a YAML alias bomb is small on disk but huge when walked.
MAX_FRONT_MATTER_NODES = 10_000
MAX_TITLE_CHARS = 1_000
# A post without front matter is skipped as not text above this share of undecodable
# bytes and control characters in its first 8 KiB (NULs are removed before, with their
# own warning): random and compressed bytes score 0.46-0.61, an executable 0.38, text
# in a Latin-1 code page 0.13-0.15 (docs/decisions.md).
NOT_TEXT_SHARE = 0.3
_NOT_TEXT = re.compile("[\ufffd\x01-\x08\x0e-\x1f\x7f-\x9f]")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# clean_line of a category or tag name: a blog's posts share a few hundred of them
_clean_name = functools.lru_cache(maxsize=4096)(clean_line)
_HTML_START = re.compile(r"<[A-Za-z!/?]")
_KEY_LINE = re.compile(r"^([A-Za-z_][\w-]*)\s*:(.*)$")
_LEADING_TABS = re.compile(r"\n\t+")
log = logging.getLogger(__name__)


class PostReader:
    """Reads one post file into an Entry whose html is not yet sanitised."""

    def __init__(self, config: Config, problems: ProblemLog,
                 first_seen: Callable[[str], datetime],
                 bodies: BodySettings | None = None,
                 posts: Iterable[PostFile] | None = None) -> None:
        self.config = config
        self.problems = problems
        self.first_seen = first_seen
        self.bodies = bodies if bodies is not None else site_of(config)
        self._linked_opener = SafeOpener([str(d) for d in config.content_dirs],
                                         config.follow_symlinks)
        # what the post_link and post_path tags of the post parsed last found
        self.links: list[tuple[str, LinkedPost | None]] = []
        self._slugs: PostsBySlug | None = None
        if config.hexo is not None and self.bodies.find_post is None:
            # post_link and post_path find the other post by its slug, as Hexo does
            # (`posts`: the build's walk, so the slugs need no walk of their own)
            self._slugs = PostsBySlug(config, self.linked_post, posts)
            self.bodies = replace(self.bodies, find_post=self._find_post)
        self._sanitizer: Sanitizer | None = None
        self._id_prefix = f"tag:{config.site_host},{config.id_date}:"
        # folder → its quoted path: every post of a category shares it (quoting a whole
        # path of CJK names byte by byte costs ~4 us of each post's ~100)
        self._quoted_folders: dict[str, str] = {}
        self._opener = SafeOpener([str(d) for d in config.content_dirs],
                                  config.follow_symlinks)

    def _find_post(self, slug: str) -> LinkedPost | None:
        assert self._slugs is not None
        found = self._slugs.find(slug)
        self.links.append((slug, found))
        return found

    def read(self, post: PostFile) -> Entry | None:
        data = self.read_bytes(post)
        return None if data is None else self.parse(post, data)

    def read_bytes(self, post: PostFile) -> bytes | None:
        """The post's bytes, or None with the reason reported. Opened through the
        SafeOpener: never through a symlink it may not follow, only a regular file
        (the walk looked at the name earlier: it may be a link to anything by now)."""
        where = display(post.rel)
        try:
            fd, st = self._opener.open(str(post.root), post.rel)
        except Refused as why:
            (self.problems.warn if why.warning else self.problems.error)(
                where, f"{why.message}; skipped")
            return None
        except OSError as exc:
            self.problems.error(where, f"cannot read: {exc.strerror}")
            return None
        try:
            limit = self.config.max_post_bytes
            if st.st_size > limit:
                self.problems.error(f"{where}:1", f"post is {st.st_size} bytes, over "
                                    f"content.max_post_bytes ({limit}); skipped")
                return None
            # The fstat's size and one byte more in one read (~2 us a post less than
            # open() and its buffered reader): a file grown since shows it.
            data = os.read(fd, st.st_size + 1)
            if len(data) > st.st_size:
                data = (data + _read_to_end(fd, limit - len(data)))[:limit]
            return data
        except OSError as exc:
            self.problems.error(where, f"cannot read: {exc.strerror}")
            return None
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the folders the reader holds open (see SafeOpener)."""
        self._opener.close()
        self._linked_opener.close()

    def parse(self, post: PostFile, data: bytes) -> Entry | None:
        """The post's entry; `links` says what its post_link and post_path found."""
        self.links = []
        where = display(post.rel)
        return self._parse(post, self._text(data, where), where)

    def _text(self, data: bytes, where: str) -> str:
        text = self._decode(data, where)
        if "\x00" in text:
            self.problems.warn(f"{where}:{text[:text.index(chr(0))].count(chr(10)) + 1}",
                               "NUL bytes removed")
            text = text.replace("\x00", "")
        return text

    def _decode(self, data: bytes, where: str) -> str:
        """UTF-8 (a BOM dropped), or UTF-16 after its BOM (Notepad's "Unicode")."""
        codec = "utf-16" if data.startswith(_UTF16_BOMS) else "utf-8-sig"
        try:
            return data.decode(codec)
        except UnicodeDecodeError as exc:
            line = data[:exc.start].decode(codec, errors="replace").count("\n") + 1
            name = "UTF-16" if codec == "utf-16" else "UTF-8"
            self.problems.warn(f"{where}:{line}",
                               f"not valid {name}; undecodable bytes replaced")
            return data.decode(codec, errors="replace")

    def _parse(self, post: PostFile, text: str, where: str) -> Entry | None:
        meta, body, fm_line = self._front_matter(text, where)
        if meta is None:
            return None
        lines: dict[str, int] = {}

        def at(key: str) -> str:
            """`path:line` of a front-matter key, for a message (worked out only then:
            it costs 8 % of reading a post)."""
            if not lines:
                lines.update(_key_lines(text, fm_line) or {"": 0})
            return f"{where}:{lines.get(key, max(fm_line, 1))}"

        if meta.get("published") is False:
            self.problems.note(at("published"), "published: false; not published")
            return None
        title = self._title(meta.get("title"), post, at)
        categories = self._categories(meta, post, at)

        entry_id = self._entry_id(meta.get("id"), post, at)
        hexo = self.config.hexo
        file_name = read_file_name(hexo, under_posts(post.rel)) if hexo is not None else None
        published, updated = self._dates(meta, at, file_name)
        if updated is None or (published is not None and updated < published):
            updated = published if published is not None else self.first_seen(entry_id)
        link = self._link(meta, post, at, file_name, published, categories)
        category, *more = categories or ((),)
        image = None
        for key in ("headimg", "thumbnail"):
            url = self._url(meta.get(key), at, key)
            if url:
                image = Image(url=url, mime_type=image_type_from_url(url))
                break
        rendered = self._body(body, where, text, post, link)
        html = rendered.html
        if image is None and rendered.image is not None:
            image = rendered.image
        if may_nest_deeper(html, MAX_HTML_DEPTH):
            depth = html_depth(html)
            if depth > MAX_HTML_DEPTH:
                start = text.rfind(body.lstrip()) if body.strip() else -1
                line = text.count("\n", 0, start) + 1 if start >= 0 else fm_line
                self.problems.warn(f"{where}:{line}", f"HTML nested {depth} levels deep; tags "
                                   f"below level {MAX_HTML_DEPTH} dropped")
        return Entry(
            id=entry_id,
            title=title,
            link=link,
            author=_text(meta.get("author")),
            published=published,
            updated=updated,
            category=category,
            more_categories=tuple(more),
            tags=tuple(t for t in (_clean_name(str(x)) for x in _as_list(meta.get("tags"))) if t),
            html=html,
            summary=self._summary(rendered.excerpt, meta, link),
            image=image,
            source=post.rel,
            base_url=link or self.config.site_url,
        )

    def _front_matter(self, text: str, where: str) -> tuple[dict[str, Any] | None, str, int]:
        """(metadata, body, 1-based line of the opening separator, or the line before
        the front matter that has none); recovers bad value lines."""
        try:
            split = split_front_matter(text)
        except ValueError:
            opening = text.lstrip(LEADING)[:3]
            self.problems.error(f"{where}:1",
                                f"front matter opened with {opening} is never closed; skipped")
            return None, "", 1
        fm_line = text.count("\n", 0, split.lead) + split.opened
        if split.front is not None and not split.opened:
            # Hexo's front matter without its opening line: only if it reads as one
            found = ProblemLog(echo=False)
            problems, self.problems = self.problems, found
            try:
                meta, body, _ = self._front_matter_of(split, text, where, fm_line)
            finally:
                self.problems = problems
            if meta is not None:
                problems.replay(found.items)
                return meta, body, fm_line
            split = Split(None, text, split.kind, False, 0)
        if split.front is None:
            if not text.strip():
                self.problems.error(f"{where}:1", "empty post; skipped")
                return None, "", 1
            share = _not_text_share(text)
            if share > NOT_TEXT_SHARE:
                self.problems.error(f"{where}:1", f"not text: {share:.0%} of its first 8 KiB "
                                    "is neither UTF-8 nor UTF-16 with a BOM, or control "
                                    "characters (a binary file?); skipped")
                return None, "", 1
            self.problems.warn(f"{where}:1", "no front matter; title and category from the path")
            return {}, text, 1
        return self._front_matter_of(split, text, where, fm_line)

    def _front_matter_of(self, split: Split, text: str, where: str, fm_line: int
                         ) -> tuple[dict[str, Any] | None, str, int]:
        """_front_matter of a split of `text` that has one."""
        fm, body = split.front or "", split.body
        if split.kind == "json":
            try:
                loaded = json.loads("{" + fm + "}")
            except ValueError as exc:
                if split.opened:
                    self.problems.error(f"{where}:{fm_line}", f"front matter closed by ;;; is "
                                        f"not valid JSON ({exc}); skipped")
                return None, "", fm_line
            return {str(k): v for k, v in loaded.items()}, body, fm_line
        if "\n\t" in fm:  # hexo-front-matter indents with tabs: two spaces each
            fm = _LEADING_TABS.sub(lambda m: "\n" + "  " * (len(m.group()) - 1), fm)
        meta = parse_simple(fm)  # the usual flat shape, without a YAML parser
        # its values are scalars and lists of them, one line each: a key and its value
        # are at most two nodes a line
        simple = meta is not None and 2 * fm.count("\n") + 3 <= MAX_FRONT_MATTER_NODES
        if meta is None:
            loaded, meta = self._load_yaml(fm, where, split.first_line(text))
            if not loaded:
                return None, "", fm_line
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            self.problems.error(f"{where}:{fm_line + 1}", "front matter is not a mapping; skipped")
            return None, "", fm_line
        if not simple and not _bounded(meta, MAX_FRONT_MATTER_NODES):
            self.problems.error(f"{where}:{fm_line + 1}", "front matter expands to more than "
                                f"{MAX_FRONT_MATTER_NODES} values (YAML alias bomb?); skipped")
            return None, "", fm_line
        return {str(k): v for k, v in meta.items()}, body, fm_line

    def _load_yaml(self, fm: str, where: str, first_line: int) -> tuple[bool, Any]:
        """(loaded, data) from PyYAML; a bad `key: value` line is quoted and tried again.
        A date that does not exist is read as its text, with a warning naming its key
        (not for `date` and `updated`: reading them as dates says why they are not).
        `first_line`: the line of the file that is the front matter's first."""
        lines = fm.split("\n")
        top = first_line + len(fm) - len(fm.lstrip("\n"))  # its first line with text
        # The lines read as plain text are reported only if the post is then used: a
        # post that is skipped after all gets one message, the error.
        recovered: list[str] = []
        for _attempt in range(20):
            try:
                data, not_dates = load_front_matter("\n".join(lines))
            except (ValueError, TypeError, KeyError) as exc:  # `!!int x`, `!!bool x`
                self.problems.error(f"{where}:{top}", f"front matter is not valid YAML: "
                                    f"a tagged value cannot be built ({exc}); skipped")
                return False, None
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
                bad = _recover_line(lines, mark.line if mark is not None else -1)
                line_no = first_line + bad if bad is not None else top
                if bad is None:
                    self.problems.error(f"{where}:{line_no}", f"front matter is not valid YAML: "
                                        f"{getattr(exc, 'problem', exc)}; skipped")
                    return False, None
                recovered.append(f"{where}:{line_no}")
                continue
            for line_where in dict.fromkeys(recovered):
                self.problems.warn(line_where, "malformed YAML value read as plain text")
            for index, text in not_dates:
                key = _key_above(lines, index)
                if key not in _DATE_KEYS:
                    self.problems.warn(f"{where}:{first_line + index}",
                                       f"{key} {text!r} is not a real date; read as text")
            return True, data
        self.problems.error(f"{where}:{top}", "front matter is not valid YAML; skipped")
        return False, None

    def _dates(self, meta: dict[str, Any], at: Callable[[str], str], file_name: FileName | None
               ) -> tuple[datetime | None, datetime | None]:
        """(published, updated as given): `date`, else the file name's (new_post_name),
        else `updated`."""
        published = self._date(meta.get("date"), at, "date")
        if published is None and file_name is not None and not meta.get("date"):
            published = file_name.date(self.config.timezone)  # new_post_name's date
        updated = self._date(meta.get("updated"), at, "updated")
        if published is None and updated is not None:
            published = updated
        return published, updated

    def _link(self, meta: dict[str, Any], post: PostFile, at: Callable[[str], str],
              file_name: FileName | None, published: datetime | None,
              categories: tuple[tuple[str, ...], ...]) -> str | None:
        """The entry's link: its `link`, else site.post_url's, else Hexo's permalink."""
        link = self._url(meta.get("link"), at, "link") or self._post_url(post)
        hexo = self.config.hexo
        if link is None and hexo is not None and file_name is not None:
            link = permalink(hexo, PostFacts(file_name, published, _js_title(meta.get("title")),
                                             categories, meta, self.config.timezone))
        return link

    def linked_post(self, post: PostFile) -> LinkedPost | None:
        """Another post as `post_link` and `post_path` see it: its title (Hexo's: the
        front matter's, else the slug) and the link its own entry gets, from its front
        matter alone (its body is not rendered). None when it is not published or
        cannot be read; its problems are not reported here (its own read reports them)."""
        hexo = self.config.hexo
        if hexo is None:
            return None
        problems, self.problems = self.problems, ProblemLog(echo=False)
        opener, self._opener = self._opener, self._linked_opener
        try:
            data = self.read_bytes(post)
            if data is None:
                return None
            meta, _body, _line = self._front_matter(self._text(data, ""), "")
            if meta is None or meta.get("published") is False:
                return None

            def at(_key: str) -> str:
                return ""
            file_name = read_file_name(hexo, under_posts(post.rel))
            published, _updated = self._dates(meta, at, file_name)
            link = self._link(meta, post, at, file_name, published,
                              self._categories(meta, post, at))
        finally:
            self.problems, self._opener = problems, opener
        if link is None:
            return None
        title = meta.get("title")
        text = clean_line(title) if isinstance(title, str) else ""
        return LinkedPost(title=text or file_name.slug, url=link)

    def _title(self, value: object, post: PostFile, at: Callable[[str], str]) -> str:
        if isinstance(value, str):  # the usual case
            title = clean_line(value)
            if title:
                return title if len(title) <= MAX_TITLE_CHARS else self._cut(title, at)
        where = at("title")
        fallback = clean_line(PurePosixPath(post.rel).stem) or "(untitled)"
        if value is None:
            self.problems.warn(where, f"no title; the file name {fallback!r} is used")
            return fallback
        if isinstance(value, list):
            self.problems.warn(where, "title is a list; its items are joined")
            value = ", ".join(str(v) for v in value if v is not None)
        elif isinstance(value, dict):
            self.problems.warn(where, f"title is a mapping; the file name {fallback!r} is used")
            return fallback
        title = clean_line(str(value))
        if not title:
            self.problems.warn(where, f"blank title; the file name {fallback!r} is used")
            return fallback
        return title if len(title) <= MAX_TITLE_CHARS else self._cut(title, at)

    def _cut(self, title: str, at: Callable[[str], str]) -> str:
        self.problems.warn(at("title"), f"title has {len(title):,} characters; cut to "
                                        f"{MAX_TITLE_CHARS:,}")
        return title[:MAX_TITLE_CHARS]

    def _categories(self, meta: dict[str, Any], post: PostFile,
                    at: Callable[[str], str]) -> tuple[tuple[str, ...], ...]:
        """The post's category paths by Hexo's rule (category_paths); without any, its
        folder (unless the content is a Hexo site's: there it is in none)."""
        value = meta.get("categories") or meta.get("category")
        if type(value) is list and all(type(item) is str for item in value):
            paths = [tuple(c for c in map(_clean_name, value) if c)]  # the usual: one path
        else:
            paths = [tuple(c for c in map(_clean_name, path) if c)
                     for path in category_paths(value)]
        if not any(paths) and self.config.hexo is None:
            paths = [tuple(c for c in map(_clean_name, PurePosixPath(post.rel).parent.parts)
                           if c)]
        depth = self.config.max_depth
        for i, path in enumerate(paths):
            if len(path) > depth:
                self.problems.warn(at("categories"), f"category path has {len(path)} levels; "
                                   f"cut to output.max_depth ({depth})")
                paths[i] = path[:depth]
        return _distinct_paths(paths)

    def _entry_id(self, value: object, post: PostFile, at: Callable[[str], str]) -> str:
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return clean_line(str(value))
        if value is not None:
            self.problems.warn(at("id"), "id is not text; the path-based id is used")
        return self._id_prefix + self._quoted(post.rel)

    def _quoted(self, rel: str) -> str:
        """quote(rel), its folder's part quoted once per folder (quote works a
        character at a time, and '/' is safe: the parts quote apart)."""
        folder, slash, name = rel.rpartition("/")
        quoted = self._quoted_folders.get(folder)
        if quoted is None:
            quoted = self._quoted_folders[folder] = quote(folder)
        return quoted + slash + quote(name)

    def _date(self, value: object, at: Callable[[str], str], key: str) -> datetime | None:
        if value is None:
            return None
        try:
            return parse_date(value, self.config.timezone)
        except DateError as exc:
            self.problems.warn(at(key), f"{exc}; the post is treated as undated"
                               if key == "date" else f"{exc}; {key} ignored")
            return None

    def _url(self, value: object, at: Callable[[str], str], key: str) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        url = absolute_url(str(value), None) if isinstance(value, str) else None
        if url is None or not url.startswith(("http://", "https://")):
            self.problems.warn(at(key),
                               f"{key} {str(value)[:200]!r} is not an http(s) URL; ignored")
            return None
        return url

    def _post_url(self, post: PostFile) -> str | None:
        if not self.config.post_url:
            return None
        path = post.rel[:-3] if post.rel.endswith(".md") else post.rel
        return self.config.post_url.replace("{path}", quote(path))

    def _body(self, body: str, where: str, text: str, post: PostFile | None = None,
              link: str | None = None) -> Rendered:
        """The body's html as Hexo renders it (its tag plugins, Markdown when the body
        is not HTML, its asset folder's images), its excerpt and first asset image.
        An HTML body without tags or asset images is used as it is (the usual case)."""
        mode = self.config.body
        if mode == "auto":
            start = body.lstrip()
            mode = "html" if _HTML_START.match(start[:2]) else "markdown"
        assets = None
        if self.bodies.post_asset_folder and post is not None:
            assets = PostAssets(asset_folder(post.path), post.root, link,
                                self.config.follow_symlinks)
        if mode == "html" and "{%" not in body and (assets is None or "<img" not in body):
            return Rendered(body, excerpt_of(body), None)

        def warn(tag: str, message: str) -> None:
            at = re.search(r"\{%-?\s*" + re.escape(tag) + r"\b", text)
            line = text.count("\n", 0, at.start()) + 1 if at else 1
            self.problems.warn(f"{where}:{line}", message)
        try:
            return render_body(body, mode == "markdown", self.bodies, assets, warn)
        except Exception as exc:  # markdown-it on pathological input: keep the text
            self.problems.warn(where, f"Markdown failed ({exc}); body kept as text")
            kept = "<pre>" + body.replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
            return Rendered(kept, None, None)

    def _summary(self, excerpt: str | None, meta: dict[str, Any], base: str | None) -> str:
        """Hexo's excerpt (the html before <!-- more -->) as text, else the front
        matter's `excerpt`, else its `description`; "" leaves it to the body."""
        if excerpt:
            if self._sanitizer is None:
                self._sanitizer = Sanitizer(self.config.drop_selectors,
                                            self.config.iframe_hosts)
            return sanitized_text(self._sanitizer.clean(excerpt, base or self.config.site_url))
        for key in ("excerpt", "description"):
            value = meta.get(key)
            if isinstance(value, str | int):
                text = clean_line(str(value))
                if text:
                    return text
        return ""


def _read_to_end(fd: int, limit: int) -> bytes:
    """The rest of the file, up to `limit` bytes (it was no bigger when it was sized:
    one that grows meanwhile is cut at the limit, and its digest tells the next
    build)."""
    parts = []
    left = limit
    while left > 0 and (part := os.read(fd, min(left, 1 << 20))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _not_text_share(text: str) -> float:
    """The share of undecodable bytes (each one U+FFFD) and control characters other
    than whitespace in the first 8 Ki characters (of a binary file: its first 8 KiB)."""
    head = text[:8192]
    return len(_NOT_TEXT.findall(head)) / len(head)


def category_paths(value: object) -> list[tuple[str, ...]]:
    """Hexo's rule for `categories`: a string is one level; a list is one hierarchy,
    unless one of its items is a list: then each item is a hierarchy of its own (a
    string being one level). Empty items are dropped; deeper lists are flattened."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(item, list) for item in items):
        return [category_path(item) for item in items]
    return [category_path(items)]


def _distinct_paths(paths: list[tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
    """The non-empty paths in their order, each once, without one that another path
    starts with (the entry is in that node's feed through the longer one)."""
    if len(paths) == 1:
        return (paths[0],) if paths[0] else ()
    kept = [path for path in dict.fromkeys(paths) if path]
    if len(kept) < 2:
        return tuple(kept)
    return tuple(path for path in kept
                 if not any(len(other) > len(path) and other[:len(path)] == path
                            for other in kept))


def _js_title(value: object) -> str:
    """The title Hexo's permalink sees (`:post_title`): text, else nothing."""
    return value if isinstance(value, str) else "" if value is None else str(value)


def _recover_line(lines: list[str], index: int) -> int | None:
    """Quote the raw value of a `key: value` line YAML choked on; None if not possible."""
    for i in (index, index - 1):
        if 0 <= i < len(lines):
            match = _KEY_LINE.match(lines[i])
            value = match.group(2).strip() if match else ""
            if match and value and not value.startswith(("'", '"')) or (
                    match and value.count('"') + value.count("'") > 2):
                lines[i] = f"{match.group(1)}: {json.dumps(value, ensure_ascii=False)}"
                return i
    return None


_DATE_KEYS = frozenset({"date", "updated"})


def _key_above(lines: list[str], index: int) -> str:
    """The top-level key whose value holds front-matter line `index`."""
    for line in reversed(lines[:index + 1]):
        match = _KEY_LINE.match(line)
        if match:
            return match.group(1)
    return "a value"


def _key_lines(text: str, fm_line: int) -> dict[str, int]:
    """Top-level front-matter key → 1-based line in the file (for messages)."""
    out: dict[str, int] = {}
    lines = text.split("\n")
    for number in range(fm_line, min(len(lines), fm_line + 500)):
        line = lines[number]
        if line.startswith("---"):
            break
        match = _KEY_LINE.match(line)
        if match:
            out.setdefault(match.group(1), number + 1)
    return out


def _bounded(value: object, limit: int) -> bool:
    """True if walking `value` visits at most `limit` nodes (stops early otherwise)."""
    budget = [limit]
    stack = [value]
    while stack:
        item = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, list):
        return [v for v in value if v is not None and not isinstance(v, dict | list)]
    return [value]


def _text(value: object) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = clean_line(str(value))
    return text or None

"""Hexo's tag plugins (`{% name args %}`, `{% name %}…{% endname %}`) rendered to the
HTML Hexo writes for them.

The steps are Hexo's (its post renderer): before Markdown every tag is set aside as a
placeholder comment (`protect`), so Markdown cannot change it; after Markdown the tags
are put back (`restore`) and rendered over the HTML (`render_tags`), where braces inside
`<code>` are escaped first, so tag syntax in code stays text. Fenced code is set aside
even before the tags (`protect_fences`), as Hexo's backtick filter does.
"""

from __future__ import annotations

import bisect
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# One placeholder character, as Hexo's: U+FFFC cannot be typed by chance in a post.
_MARK = "\ufffc"
# A placeholder as Markdown may leave it: raw, escaped (in code) or percent-encoded (in
# a link destination, where markdown-it reads `<…>` as brackets and encodes the rest).
_SWIG_HOLE = re.compile(r"(<|&lt;|%3C)?!--swig(?:\ufffc|%EF%BF%BC)(\d+)--(>|&gt;|%3E)?")
_CODE_HOLE = re.compile(r"<!--code\ufffc(\d+)-->")
_TAG = re.compile(r"\{%-?\s*([A-Za-z_]\w*)(.*?)-?%\}", re.S)
_CODE = re.compile(r"<code[^<>]*>[\s\S]+?</code>")
_RAW = re.compile(r"\{%-?\s*raw\s*-?%\}")
_VERBATIM = frozenset({"code", "codeblock"})
_INDENT = re.compile(r"^[ \t]*(?=\S)", re.M)


@dataclass(frozen=True)
class LinkedPost:
    """Another post as `post_link`/`post_path` link to it."""

    title: str
    url: str


InlineTag = Callable[[list[str], "TagContext"], str]
BlockTag = Callable[[list[str], str, "TagContext"], str]


@dataclass
class TagContext:
    """What the tags of one post need: its Markdown renderer, its assets, the other
    posts, and a place to report problems (`warn(tag name, message)`, once a message)."""

    markdown: Callable[[str], str]
    asset_url: Callable[[str], str | None]
    find_post: Callable[[str], LinkedPost | None] | None
    warn: Callable[[str, str], None]
    inline_tags: Mapping[str, InlineTag]
    block_tags: Mapping[str, BlockTag]
    reported: set[str] = field(default_factory=set)

    def report(self, name: str, message: str) -> None:
        if message not in self.reported:
            self.reported.add(message)
            self.warn(name, message)


class Holes:
    """Texts set aside behind placeholders, put back by index."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def hole(self, kind: str, text: str) -> str:
        self.stored.append(text)
        return f"<!--{kind}{_MARK}{len(self.stored) - 1}-->"


def protect_fences(text: str, holes: Holes, render: Callable[[str, str], str]) -> str:
    """Fenced code blocks (``` or ~~~, also after list markers and `>`) replaced by
    placeholders of their rendered HTML (`render(code, info)`); the line's prefix kept."""
    if "```" not in text and "~~~" not in text:
        return text
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        prefix, fence, info = match.group(1), match.group(2), match.group(3)
        depth = prefix.count(">")
        close = re.compile(rf"^(?:[ \t]*>){{0,{depth}}}[ \t]*"
                           rf"{re.escape(fence)}{re.escape(fence[0])}*[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), None)
        if end is None:  # never closed: Markdown reads it as code to the end
            out.extend(lines[i:])
            break
        body = lines[i + 1:end]
        if depth:
            strip = re.compile(rf"^(?:[ \t]*>){{0,{depth}}} ?")
            body = [strip.sub("", line, count=1) for line in body]
        code = strip_indent("\n".join(body))
        out.append(prefix + holes.hole("code", render(code + "\n" if body else "", info)))
        i = end + 1
    return "\n".join(out)


_FENCE_OPEN = re.compile(
    r"^((?:[ \t]*>){1,3}[ \t]*|[ \t]{0,3}(?:[-*+]|\d+\.)[ \t]+|[ \t]{0,3})"
    r"(`{3,}|~{3,})[ \t]*([^`\n]*?)[ \t]*$")


def protect(text: str, holes: Holes) -> str:
    """Every `{% tag %}`, `{% tag %}…{% endtag %}` and `{{ var }}` replaced by a
    placeholder, `{# comments #}` dropped: Hexo's escapeAllSwigTags. (An unclosed
    `{%`, `{{` or `{#` is kept as text where Hexo loses the rest of the post.)
    Linear in the text: where the last closer of each kind is, and where each
    `{% endname %}` is, are found once, so a hostile post of many unclosed or
    unended tags is not scanned to its end again for each."""
    last = {closer: text.rfind(closer) for closer in ("}}", "#}", "%}")}
    past = max(last.values())  # no tag or comment starts after this
    end_tags = _end_tags(text)
    out: list[str] = []
    pos = 0
    start = text.find("{", pos)
    while 0 <= start < past:
        kind = text[start + 1]
        closer = _CLOSERS.get(kind)
        end = -1
        if closer is not None and start + 2 <= last[closer]:
            end = text.find(closer, start + 2) + 2
            if kind == "%":
                end = _block_end(text, start, end, end_tags)
            out.append(text[pos:start])
            if kind != "#":
                out.append(holes.hole("swig", text[start:end]))
        if end < 0:
            out.append(text[pos:start + 1])
            pos = start + 1
        else:
            pos = end
        start = text.find("{", pos)
    out.append(text[pos:])
    return "".join(out)


_CLOSERS = {"{": "}}", "#": "#}", "%": "%}"}


def _end_tags(text: str) -> dict[str, list[int]]:
    """name → the end offsets of its `{% endname … %}` tags, in order."""
    ends: dict[str, list[int]] = {}
    for match in _END_TAG.finditer(text, 0, text.rfind("%}") + 2):
        ends.setdefault(match.group(1), []).append(match.end())
    return ends


_END_TAG = re.compile(r"\{%-?\s*end(\w+)[^%]*(?:%(?!\})[^%]*)*%\}")


def _block_end(text: str, start: int, close: int, end_tags: dict[str, list[int]]) -> int:
    """End of the tag opened at `start` (its own `%}` ends at `close`): past the first
    `{% endname %}` after it when there is one, else `close`."""
    words = text[start + 2:close - 2].split(None, 1)
    name = words[0].lstrip("-") if words else ""
    ends = end_tags.get(name)
    if not ends or ends[-1] <= close:
        return close
    return ends[bisect.bisect_right(ends, close)]


def restore(html_text: str, holes: Holes) -> str:
    """Placeholders made by `protect` back to their tags (HTML-escaped where Markdown
    escaped the placeholder: inside code, it is text)."""
    if _MARK not in html_text and "%EF%BF%BC" not in html_text:
        return html_text

    def back(match: re.Match[str]) -> str:
        index = int(match.group(2))
        if index >= len(holes.stored):
            return match.group(0)
        original = holes.stored[index]
        return html.escape(original, quote=False) if match.group(1) == "&lt;" else original
    return _SWIG_HOLE.sub(back, html_text)


def restore_code(html_text: str, holes: Holes) -> str:
    if _MARK not in html_text:
        return html_text
    return _CODE_HOLE.sub(lambda m: holes.stored[int(m.group(1))], html_text)


def render_tags(html_text: str, ctx: TagContext) -> str:
    """The tags in html rendered; braces inside `<code>` escaped first (kept as text)."""
    if "{%" not in html_text:
        return html_text
    html_text = _CODE.sub(lambda m: m.group(0) if _RAW.search(m.group(0)) else
                          m.group(0).replace("{", "&#123;").replace("}", "&#125;"), html_text)
    return _render(html_text, ctx)


def _render(text: str, ctx: TagContext, depth: int = 0) -> str:
    tags = list(_TAG.finditer(text, 0, text.rfind("%}") + 2))
    ends = _pairs(tags, ctx)
    out: list[str] = []
    pos = 0
    for index, match in enumerate(tags):
        if match.start() < pos:
            continue  # inside a block already written
        out.append(text[pos:match.start()])
        name, args = match.group(1), match.group(2)
        pos = match.end()
        if name.startswith("end"):
            continue  # an end tag without its start: nothing to write
        inline = ctx.inline_tags.get(name)
        if inline is not None:
            out.append(inline(split_args(args), ctx))
            continue
        end = ends.get(index)
        if end is None:
            if name in ctx.block_tags:
                ctx.report(name, f"{{% {name} %}} is never closed with {{% end{name} %}}; "
                           "kept as text")
                out.append(html.escape(match.group(0), quote=False))
            else:
                ctx.report(name, f"unknown tag plugin {{% {name} %}}; dropped")
            continue
        body = text[match.end():tags[end].start()]
        pos = tags[end].end()
        if name == "raw":
            out.append(body)
            continue
        # (a code block's content is code: tag syntax in it stays text; tags nested
        # deeper than MAX_DEPTH are left as they are, each level is a pass over its text)
        plain = name in _VERBATIM or depth >= MAX_DEPTH
        content = trim_body(body if plain else _render(body, ctx, depth + 1))
        block = ctx.block_tags.get(name)
        if block is None:
            ctx.report(name, f"unknown tag plugin {{% {name} %}}; its content kept")
            out.append(ctx.markdown(content))
        else:
            out.append(block(split_args(args), content, ctx))
    out.append(text[pos:])
    return "".join(out)


MAX_DEPTH = 20


def _pairs(tags: list[re.Match[str]], ctx: TagContext) -> dict[int, int]:
    """Index of each block tag → index of the `{% endname %}` closing it (the latest
    open one of its name: same-name blocks nest), in one pass."""
    open_tags: dict[str, list[int]] = {}
    pairs: dict[int, int] = {}
    for index, match in enumerate(tags):
        name = match.group(1)
        if name.startswith("end") and open_tags.get(name[3:]):
            pairs[open_tags[name[3:]].pop()] = index
        elif name not in ctx.inline_tags:
            open_tags.setdefault(name, []).append(index)
    return pairs


def split_args(text: str) -> list[str]:
    """A tag's arguments as Nunjucks' lexer gives them to Hexo: split at whitespace,
    a quoted part's quotes removed (`"a b"c` is one argument `a bc`), empty ones dropped."""
    args: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t\r\n":
            if current:
                args.append("".join(current))
                current = []
            i += 1
        elif char in "\"'":
            i += 1
            while i < n and text[i] != char:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                current.append(text[i])
                i += 1
            i += 1
        else:
            current.append(char)
            i += 1
    if current:
        args.append("".join(current))
    return [a for a in (arg.strip() for arg in args) if a]


def strip_indent(text: str) -> str:
    """The text without the indentation its non-blank lines share (strip-indent)."""
    indents = _INDENT.findall(text)
    if not indents:
        return text
    least = min(len(i) for i in indents)
    if least == 0:
        return text
    return re.sub(rf"^[ \t]{{{least}}}", "", text, flags=re.M)


def trim_body(text: str) -> str:
    """A block tag's content as Hexo passes it: unindented, one newline trimmed each end."""
    text = strip_indent(text)
    text = text[1:] if text.startswith("\n") else text
    return text[:-1] if text.endswith("\n") else text

"""Markdown as hexo-renderer-marked renders it by default: GitHub's flavour (tables,
strikethrough, bare URLs linked), a line break for every newline in a paragraph
(`breaks: true`), task list checkboxes and marked's smartypants (curly quotes, dashes,
ellipses)."""

from __future__ import annotations

import functools
import re
from typing import Any

_DASHES = re.compile(r"---|--|\.\.\.")
_SMART = {"---": "\u2014", "--": "\u2013", "...": "\u2026"}


@functools.cache
def renderer() -> Any:
    """markdown-it set as hexo-renderer-marked sets marked, imported on first use."""
    from markdown_it import MarkdownIt
    from mdit_py_plugins.tasklists import tasklists_plugin

    md = MarkdownIt("commonmark", {"html": True, "breaks": True, "linkify": True,
                                   "typographer": True, "xhtmlOut": False,
                                   "quotes": "\u201c\u201d\u2018\u2019"})
    md.enable(["table", "strikethrough", "linkify", "smartquotes"])
    # marked's smartypants changes three things; markdown-it's `replacements` more
    # ((c) → ©, +- → ±…), so it stays off and this rule does marked's three.
    md.disable("replacements")
    md.core.ruler.push("hexo_smartypants", _smartypants)
    md.use(tasklists_plugin)  # GFM's `- [ ]` items: a checkbox, as marked writes
    return md


def _smartypants(state: Any) -> None:
    for token in state.tokens:
        if token.type != "inline" or not token.children:
            continue
        for child in token.children:
            if child.type == "text" and ("--" in child.content or "..." in child.content):
                child.content = _DASHES.sub(lambda m: _SMART[m.group(0)], child.content)


def render(text: str) -> str:
    return str(renderer().render(text))

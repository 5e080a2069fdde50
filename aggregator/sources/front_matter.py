"""Where a post's front matter ends and its body begins, as hexo-front-matter splits
a post: YAML between `---` lines, or JSON (without its braces) closed by `;;;`, each
with or without the opening separator line.

Without an opening separator, everything before the first line that starts with
`---` or `;;;` is the front matter, if it reads as one (Hexo: if it loads as an
object). The blank lines our sample posts have before the opening `---` are allowed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import frontmatter

# what may come before front matter
LEADING = "\n\r\t "
# the first line that starts with a separator (hexo-front-matter: `\n(-{3,}|;{3,})\n?`)
_SEPARATOR_LINE = re.compile(r"\n(-{3,}|;{3,})[ \t]*(?:\r?\n)?")
_OPENING_JSON = re.compile(r";{3,}[ \t]*\r?\n")
_OPENING_YAML = frontmatter.default_handlers.YAMLHandler.FM_BOUNDARY
# a YAML front matter without its opening line starts with a `key:` line
_FIRST_KEY = re.compile(r"[A-Za-z_][\w-]*[ \t]*:(?:[ \t]|\r?$)")


class Split(NamedTuple):
    front: str | None  # None: no front matter, the whole text is the body
    body: str
    kind: str  # "yaml" or "json"
    opened: bool  # the front matter has its opening separator line
    lead: int  # characters before its first separator or key (blank lines)

    def first_line(self, text: str) -> int:
        """The 1-based line of `text` that is the front matter's first (for messages:
        worked out only then)."""
        start = self.lead
        if self.opened:  # after what the split cut off as the opening separator
            opening = (_OPENING_YAML if self.kind == "yaml" else _OPENING_JSON).match(
                text, self.lead)
            start = opening.end() if opening is not None else start
        return text.count("\n", 0, start) + 1


def split_front_matter(text: str) -> Split:
    """The post's front matter and body. ValueError: it is opened with `---` or `;;;`
    and never closed."""
    stripped = text.lstrip(LEADING)
    lead = len(text) - len(stripped)
    if stripped.startswith("---"):
        fm, body = frontmatter.default_handlers.YAMLHandler().split(stripped)
        return Split(str(fm), str(body), "yaml", True, lead)
    if stripped.startswith(";;;"):
        opening = _OPENING_JSON.match(stripped)
        if opening is None:
            raise ValueError("not a separator line")
        rest = stripped[opening.end():]
        closing = re.search(r"^" + re.escape(opening.group().strip()) + r"[ \t]*(?:\r?\n|$)",
                            rest, re.MULTILINE)
        if closing is None:
            raise ValueError("never closed")
        return Split(rest[:closing.start()], rest[closing.end():], "json", True, lead)
    closing = _SEPARATOR_LINE.search(stripped)
    if closing is None:
        return Split(None, text, "yaml", False, 0)
    kind = "json" if closing.group(1)[0] == ";" else "yaml"
    if kind == "yaml" and not _FIRST_KEY.match(stripped):
        return Split(None, text, "yaml", False, 0)
    return Split(stripped[:closing.start()], stripped[closing.end():], kind, False, lead)

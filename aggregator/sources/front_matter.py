"""Where a post's front matter ends and its body begins, as hexo-front-matter splits
a post: YAML between `---` lines, or JSON (without its braces) closed by `;;;`, each
with or without the opening separator line.

Without an opening separator, everything before the first line that starts with
`---` or `;;;` is the front matter, if it reads as one (Hexo: if it loads as an
object). The blank lines our sample posts have before the opening `---` are allowed.

The split is ours, not python-frontmatter's: its YAML split is the one pattern below,
and reading front matter its way (PyYAML's loader on every post) has neither Hexo's
forms nor our reading of impossible dates (docs/decisions.md).
"""

from __future__ import annotations

import re
from typing import NamedTuple

# what may come before front matter
LEADING = "\n\r\t "
# the first line that starts with a separator (hexo-front-matter: `\n(-{3,}|;{3,})\n?`)
_SEPARATOR_LINE = re.compile(r"\n(-{3,}|;{3,})[ \t]*(?:\r?\n)?")
_OPENING_JSON = re.compile(r";{3,}[ \t]*\r?\n")
# a YAML separator line: three or more dashes, then whitespace only (`\s*` may take
# blank lines after it too: the front matter and body start after what it took)
_YAML_SEPARATOR = re.compile(r"^-{3,}\s*$", re.MULTILINE)
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
            opening = (_YAML_SEPARATOR if self.kind == "yaml" else _OPENING_JSON).match(
                text, self.lead)
            start = opening.end() if opening is not None else start
        return text.count("\n", 0, start) + 1


def split_front_matter(text: str) -> Split:
    """The post's front matter and body. ValueError: it is opened with `---` or `;;;`
    and never closed."""
    stripped = text.lstrip(LEADING)
    lead = len(text) - len(stripped)
    if stripped.startswith("---"):
        # the text before the first separator line, the front matter, the body (the
        # first separator is not always the opening line: `--- x` is not one)
        parts = _YAML_SEPARATOR.split(stripped, 2)
        if len(parts) < 3:
            raise ValueError("never closed")
        return Split(parts[1], parts[2], "yaml", True, lead)
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

"""The YAML front-matter split: where the front matter ends and the body begins, for the
separator lines python-frontmatter's pattern allows (which the split keeps)."""

from __future__ import annotations

import pytest

from aggregator.sources.front_matter import split_front_matter

# (post, front matter, body); the separator's pattern is `^-{3,}\s*$` (multi-line)
CASES = [
    ("---\ntitle: a\n---\nbody", "\ntitle: a\n", "\nbody"),
    ("\n\n---\nt: 1\n---\nb", "\nt: 1\n", "\nb"),  # blank lines before the opening
    # whitespace after a separator runs to the last line end before text
    ("---\ntitle: a\n---\n\n\nbody\n", "\ntitle: a\n", "\nbody\n"),
    ("---\n\n\ntitle: a\n---\nb", "\ntitle: a\n", "\nb"),
    ("---\r\ntitle: a\r\n---\r\nbody", "\ntitle: a\r\n", "\nbody"),
    ("-----\ntitle: a\n---   \nbody\n---\nmore", "\ntitle: a\n", "\nbody\n---\nmore"),
    ("---\ntitle: a\n--- \t\n", "\ntitle: a\n", ""),
    ("---\ntitle: a\n---", "\ntitle: a\n", ""),
    ("---\ntitle: a\n---x\n---\nb", "\ntitle: a\n---x\n", "\nb"),  # `---x` is text
    # `--- x` is no separator: the first two separator lines enclose the front matter
    ("--- x\ntitle: a\n---\nbody\n---\nmore", "\nbody\n", "\nmore"),
]


@pytest.mark.parametrize(("text", "front", "body"), CASES)
def test_yaml_front_matter_is_split_at_its_separator_lines(text: str, front: str,
                                                           body: str) -> None:
    split = split_front_matter(text)
    assert (split.front, split.body, split.kind, split.opened) == (front, body, "yaml", True)


@pytest.mark.parametrize("text", ["---\ntitle: a\n", "---\ntitle: a\n---x", "--- x\n---\n"])
def test_yaml_front_matter_never_closed_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        split_front_matter(text)

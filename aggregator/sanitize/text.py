"""Plain-text helpers: XML-legal strings and summaries of sanitised HTML."""

from __future__ import annotations

import re

from selectolax.lexbor import LexborHTMLParser

# XML 1.0 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SPACE = re.compile(r"\s+")
# Hexo escapes braces in bodies and sometimes in titles; nothing else is touched.
_HEXO_BRACES = {"&#123;": "{", "&#125;": "}"}


def strip_xml_illegal(text: str) -> str:
    return _XML_ILLEGAL.sub("", text)


def clean_line(text: str) -> str:
    """One line of plain text: legal XML, braces unescaped, whitespace collapsed."""
    text = strip_xml_illegal(text)
    for escaped, brace in _HEXO_BRACES.items():
        text = text.replace(escaped, brace)
    return _SPACE.sub(" ", text).strip()


# Block boundaries become spaces; inline tags join their text ("<b>A</b>, b" → "A, b").
_BLOCK_TAGS = (
    r"<(?:/?(?:p|div|br|li|ul|ol|h[1-6]|figure|figcaption|tr|td|th|table|blockquote|pre|hr|"
    r"section|article|dd|dt)\b)[^>]*>")
_BLOCK_TAG = re.compile(_BLOCK_TAGS, re.IGNORECASE)
_LOWER_CASE_BLOCK_TAG = re.compile(_BLOCK_TAGS)


def html_to_text(html: str) -> str:
    if not html:
        return ""
    body = LexborHTMLParser(block_boundaries(html)).body
    if body is None:
        return ""
    return clean_line(body.text(separator=""))


# The text of html the Sanitizer wrote (html5ever's serialisation), read without a
# parse: there every '<' starts a tag (text has '&lt;', comments are stripped), a tag
# ends at the first '>' outside its double-quoted values, text escapes only '&', '<',
# '>' and no-break spaces, and an iframe's content is raw text, kept as written.
SERIALISED_TAG = r'<[^>"]*(?:"[^"]*"[^>"]*)*>'
_TAG = re.compile(SERIALISED_TAG)
IFRAME = rf'<iframe(?=[\s>/]){SERIALISED_TAG[1:]}(.*?)(?:</iframe>|\Z)'
_PARTS = re.compile(rf"{IFRAME}|{SERIALISED_TAG}|&(lt|gt|nbsp|amp);", re.DOTALL)
_UNESCAPED = {"lt": "<", "gt": ">", "nbsp": "\xa0", "amp": "&"}


def sanitized_text(html: str) -> str:
    """html_to_text(html) of html the Sanitizer wrote, or of a prefix of it (tests hold
    the two equal on every corpus body and on hostile and generated html), at a
    fraction of the cost of a parse."""
    if not html:
        return ""
    cut = html.rfind("<")
    if cut > html.rfind(">"):  # a tag cut off at the end of a prefix: no text
        html = html[:cut]
    if "<iframe" in html:  # raw text, in which block tags may be in capitals
        return clean_line(_PARTS.sub(_part_text, block_boundaries(html)))
    # the Sanitizer writes every tag name in lower case
    text = _TAG.sub("", _LOWER_CASE_BLOCK_TAG.sub(" ", html))
    if "&" in text:
        text = (text.replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", "\xa0")
                .replace("&amp;", "&"))
    return clean_line(text)


def _part_text(match: re.Match[str]) -> str:
    raw, escape = match.groups()
    if raw is not None:
        return raw  # an iframe's content
    return _UNESCAPED[escape] if escape is not None else ""


def block_boundaries(html: str) -> str:
    """`_BLOCK_TAG.sub(" ", html)`, in linear time: only up to the last '>', past which
    no block tag can end (from each '<p' there the regex alone scans to the end: 400 KB
    of '<p' in a raw upstream title or body would take 21 s). Before it, every try that names a
    block tag matches."""
    end = html.rfind(">") + 1
    return _BLOCK_TAG.sub(" ", html[:end]) + html[end:]


# summarize() reads the text of a prefix of the html first: a summary needs the first
# 300 characters, not the text of a 50 KB body. The prefix's text is the full text's
# but for its last few characters (a tag or entity cut in two), so it is used only
# when it runs well past the limit; tests hold both ways equal on every corpus body.
_SUMMARY_PREFIX = 3000  # characters of html
_SUMMARY_MARGIN = 100  # characters of text past the limit


def summarize(html: str, limit: int = 300, *, sanitized: bool = False) -> str:
    """The first `limit` characters of the text of `html` (`sanitized`: html the
    Sanitizer wrote, read by sanitized_text)."""
    to_text = sanitized_text if sanitized else html_to_text
    text = ""
    if len(html) > _SUMMARY_PREFIX + _SUMMARY_MARGIN:
        text = to_text(html[:_SUMMARY_PREFIX])
    if len(text) <= limit + _SUMMARY_MARGIN:
        text = to_text(html)
    return shortened(text, limit)


def shortened(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word when one ends late enough, + "…"."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,.;:") + "…"

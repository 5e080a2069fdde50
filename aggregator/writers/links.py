"""Links in a feed's head beyond its self and alternate links (WebSub hubs, RFC 5005
archives), written as bytes the feed writer splices in after the self link."""

from __future__ import annotations

from collections.abc import Iterable
from xml.sax.saxutils import escape


def head_links(kind: str, links: Iterable[tuple[str, str]]) -> bytes:
    """(rel, href) links for a feed's head: Atom `<link>`s, or `<atom:link>`s in RSS
    (its root declares the atom prefix)."""
    tag = "link" if kind == "atom" else "atom:link"
    return "".join(f'<{tag} href="{escape(href, {chr(34): "&quot;"})}" rel="{rel}"/>'
                   for rel, href in links).encode("utf-8")

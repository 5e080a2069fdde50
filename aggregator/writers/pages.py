"""A readable page per node (`<slug>/…/index.html`; the root's lists the whole tree).

A page is a frame (title, breadcrumbs, the subscribe box, the sub-categories with
their counts and last update) around the cards of the node's newest entries. A card is
rendered once per entry, like its feed items, and spliced into every page that shows
it. Everything taken from an entry or a category name is plain text, escaped; URLs
are only ever http(s) and sit in quoted, escaped attributes: no entry HTML reaches a
page. The pages load one stylesheet and one script of ours (assets/), which a strict
Content-Security-Policy allows and nothing else; they work without the script (it
adds the copy buttons and the root page's filter box).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import cache
from html import escape
from pathlib import Path

from aggregator.config import Config
from aggregator.model import Entry
from aggregator.tree.categories import Node
from aggregator.writers.index import (
    FEED_FILES,
    FEED_LABELS,
    alternate_links,
    feed_title,
    feed_url,
)
from aggregator.writers.parts import Parts

PAGE_FILE = "index.html"
# The files every page refers to, beside the root page (no slug has a dot: no node
# folder can take their names).
ASSETS = ("style.css", "page.js")
# Entries a page shows at most (the feeds hold max_items).
PAGE_ITEMS = 50
SUMMARY_CHARS = 300
CSP = ("default-src 'none'; img-src http: https:; style-src 'self'; script-src 'self'; "
       "base-uri 'none'; form-action 'none'")
# Characters HTML forbids in text (C0 and C1 controls but whitespace, noncharacters,
# lone surrogates): the Nu checker rejects them and no reader needs them.
_NOT_HTML = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff"
                       "\ud800-\udfff]")
_WEB = re.compile(r"^https?://", re.IGNORECASE)
# The newest update of a node's entries (ISO 8601, as stored), None without entries.
Newest = Callable[[Node], str | None]


def _text(value: str) -> str:
    """Plain text, escaped for an element or a quoted attribute."""
    return escape(_NOT_HTML.sub("", value), quote=True)


def _web_url(value: str | None) -> str | None:
    return _text(value) if value and _WEB.match(value) else None


@cache
def asset(name: str) -> bytes:
    return (Path(__file__).parent / "assets" / name).read_bytes()


# -- an entry's card ---------------------------------------------------------------

def card(entry: Entry) -> bytes:
    """The entry as a page shows it: title (linked), date, author, thumbnail,
    summary; all plain text."""
    from aggregator.sanitize.text import shortened  # (selectolax: only where cards are made)

    title = _text(entry.title) or "(untitled)"
    link = _web_url(entry.link)
    heading = f'<a href="{link}">{title}</a>' if link else title
    when = (entry.published or entry.updated).date().isoformat()
    meta = f'<time datetime="{when}">{when}</time>'
    if entry.author:
        meta += f' · <span class="author">{_text(entry.author)}</span>'
    image = _web_url(entry.image.url) if entry.image is not None else None
    thumb = (f'<img class="thumb" src="{image}" alt="" width="120" height="90" '
             f'loading="lazy" decoding="async" referrerpolicy="no-referrer">' if image else "")
    summary = _text(shortened(entry.summary, SUMMARY_CHARS)) if entry.summary else ""
    return (f'<li class="entry">{thumb}<h3>{heading}</h3>'
            f'<p class="meta">{meta}</p>'
            + (f'<p class="summary">{summary}</p>' if summary else "")
            + "</li>\n").encode("utf-8")


# -- a node's page -----------------------------------------------------------------

def _up(node: Node) -> str:
    """The relative path from the node's folder to the root's."""
    return "../" * len(node.slugs)


def _count(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def _updated(newest: str | None) -> str:
    if not newest:
        return ""
    day = _text(newest[:10])
    return f', updated <time datetime="{day}">{day}</time>'


def _subscribe(config: Config, node: Node) -> list[str]:
    lines = ['<section class="subscribe" aria-labelledby="subscribe">',
             '<h2 id="subscribe">Subscribe</h2>',
             "<p>A feed reader (NetNewsWire, Feedly, Thunderbird, newsboat …) checks "
             "these addresses for you and shows each new entry as it appears: paste one "
             "into yours.</p>", '<ul class="feeds">']
    for kind in config.formats:
        url = _text(feed_url(config, node, kind))
        lines.append(f'<li><label for="feed-{kind}">{FEED_LABELS[kind]}</label> '
                     f'<input id="feed-{kind}" type="url" readonly value="{url}"> '
                     f'<button type="button" class="copy" data-copy="feed-{kind}" hidden>'
                     f'Copy</button> <a href="{FEED_FILES[kind]}">open</a></li>')
    lines += ["</ul>", "</section>"]
    return lines


def _children(node: Node, newest: Newest) -> list[str]:
    if not node.children:
        return []
    lines = ['<section aria-labelledby="categories">', '<h2 id="categories">Categories</h2>',
             '<ul class="categories">']
    for child in node.children.values():
        lines.append(f'<li><a href="{child.slugs[-1]}/{PAGE_FILE}">{_text(child.names[-1])}'
                     f'</a> <span class="info">{_count(child.count)}'
                     f"{_updated(newest(child))}</span></li>")
    lines += ["</ul>", "</section>"]
    return lines


def _tree(config: Config, root: Node, newest: Newest) -> list[str]:
    """The root page's list of every node, nested, with its feeds."""
    lines = ['<section aria-labelledby="categories">',
             '<h2 id="categories">Every category</h2>',
             '<p class="filter" hidden><label for="filter">Filter</label> '
             '<input id="filter" type="search" placeholder="a category name"></p>',
             '<ul class="tree">']
    stack: list[Node | None] = list(reversed(root.children.values()))
    while stack:
        node = stack.pop()
        if node is None:
            lines.append("</ul></li>")
            continue
        feeds = " ".join(f'<a class="feed" href="{node.rel_dir}{FEED_FILES[kind]}">'
                         f"{FEED_LABELS[kind]}</a>" for kind in config.formats)
        item = (f'<li data-path="{_text(" / ".join(node.names).lower())}">'
                f'<a href="{node.rel_dir}{PAGE_FILE}">{_text(node.names[-1])}</a> '
                f'<span class="info">{_count(node.count)}{_updated(newest(node))}</span> '
                f"{feeds}")
        if node.children:
            lines.append(item + "<ul>")
            stack.append(None)
            stack.extend(reversed(node.children.values()))
        else:
            lines.append(item + "</li>")
    lines += ["</ul>", "</section>"]
    return lines


def _breadcrumbs(config: Config, node: Node) -> list[str]:
    up = _up(node)
    crumbs = [f'<li><a href="{up}{PAGE_FILE}">{_text(config.site_title)}</a></li>']
    for depth, name in enumerate(node.names[:-1], start=1):
        crumbs.append(f'<li><a href="{"../" * (len(node.names) - depth)}{PAGE_FILE}">'
                      f"{_text(name)}</a></li>")
    crumbs.append(f'<li aria-current="page">{_text(node.names[-1])}</li>')
    return ['<nav aria-label="Breadcrumbs"><ol class="crumbs">', *crumbs, "</ol></nav>"]


def frame(config: Config, root: Node, node: Node, newest: Newest) -> tuple[bytes, bytes]:
    """The page's bytes before and after its entries' cards."""
    up = _up(node)
    heading = _text(node.names[-1]) if node.names else _text(config.site_title)
    head = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="color-scheme" content="light dark">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            f"<title>{_text(feed_title(config, node))}</title>",
            f'<link rel="stylesheet" href="{up}style.css">']
    # the root page keeps every node's autodiscovery links (the index it replaces had
    # them); a node's page has its own
    for each in root.walk() if not node.names else (node,):
        head += alternate_links(config, each)
    head += [f'<script src="{up}page.js" defer></script>', "</head>", "<body>", "<header>"]
    if node.names:
        head += _breadcrumbs(config, node)
    head += [f"<h1>{heading}</h1>", f'<p class="count">{_count(node.count)}'
             f"{_updated(newest(node))}</p>"]
    if not node.names:  # the tree can be long: the entries are a link away
        head.append('<p class="jump"><a href="#categories">Every category</a> · '
                    '<a href="#newest">Newest entries</a></p>')
    head += ["</header>", "<main>"]
    head += _subscribe(config, node)
    head += _tree(config, root, newest) if not node.names else _children(node, newest)
    head += ['<section aria-labelledby="newest">', '<h2 id="newest">Newest entries</h2>',
             '<ol class="entries">', ""]
    tail = ["</ol>", "</section>", "</main>",
            f'<footer><p><a href="{up}feeds.opml">Every feed as OPML</a> · '
            f'<a href="{up}{PAGE_FILE}">All categories</a></p></footer>',
            "</body>", "</html>", ""]
    return "\n".join(head).encode("utf-8"), "\n".join(tail).encode("utf-8")


def page(frame_bytes: tuple[bytes, bytes], cards: Parts) -> Parts:
    """The page: its frame around the cards."""
    start, end = frame_bytes

    def parts() -> Iterator[bytes]:
        yield start
        yield from cards.source()
        yield end
    return Parts(parts, len(start) + cards.size + len(end))

"""feeds/index.html (the tree, with autodiscovery links) and feeds/feeds.opml."""

from __future__ import annotations

from html import escape
from xml.sax.saxutils import quoteattr

from aggregator.config import Config
from aggregator.tree.categories import Node

# Each feed format's file in a node's folder, and its media type.
FEED_FILES = {"atom": "atom.xml", "rss": "rss.xml", "json": "feed.json"}
FEED_TYPES = {"atom": "application/atom+xml", "rss": "application/rss+xml",
              "json": "application/feed+json"}
FEED_LABELS = {"atom": "Atom", "rss": "RSS", "json": "JSON Feed"}


def feed_url(config: Config, node: Node, kind: str) -> str:
    return f"{config.site_url}{node.rel_dir}{FEED_FILES[kind]}"


def alternate_links(config: Config, node: Node) -> list[str]:
    """The `<link rel="alternate">` of each of the node's feeds (autodiscovery)."""
    name = escape(feed_title(config, node), quote=True)
    return [f'<link rel="alternate" type="{FEED_TYPES[kind]}" '
            f'title="{name} ({FEED_LABELS[kind]})" '
            f'href="{escape(feed_url(config, node, kind), quote=True)}">'
            for kind in config.formats]


def page_url(config: Config, node: Node) -> str:
    """The node's page (output.pages), else the site."""
    return f"{config.site_url}{node.rel_dir}" if config.pages else config.site_url


def feed_title(config: Config, node: Node) -> str:
    return f"{config.site_title} — {node.title}" if node.names else config.site_title


def index_html(config: Config, root: Node, counts: dict[tuple[str, ...], int]) -> bytes:
    title = escape(config.site_title)
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{title}: feeds</title>",
    ]
    for node in root.walk():
        lines += alternate_links(config, node)
    lines += ["</head>", "<body>", f"<h1>{title}</h1>",
              '<p><a href="feeds.opml">All feeds as OPML</a></p>', "<ul>"]
    _index_items(config, root, counts, lines)
    lines += ["</ul>", "</body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")


def _index_items(config: Config, node: Node, counts: dict[tuple[str, ...], int],
                 lines: list[str]) -> None:
    label = escape(node.names[-1] if node.names else "Everything")
    folder = escape(node.rel_dir, quote=True)
    links = " · ".join(f'<a href="{folder}{FEED_FILES[kind]}">{FEED_LABELS[kind]}</a>'
                       for kind in config.formats)
    lines.append(f"<li>{label} ({counts.get(node.names, 0)}): {links}")
    if node.children:
        lines.append("<ul>")
        for child in node.children.values():
            _index_items(config, child, counts, lines)
        lines.append("</ul>")
    lines.append("</li>")


def feeds_opml(config: Config, root: Node) -> bytes:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<opml version="2.0">',
             f"<head><title>{escape(config.site_title)}</title></head>", "<body>"]
    _opml_outline(config, root, lines, 0)
    lines += ["</body>", "</opml>", ""]
    return "\n".join(lines).encode("utf-8")


def _opml_outline(config: Config, node: Node, lines: list[str], depth: int) -> None:
    pad = "  " * depth
    text = quoteattr(node.names[-1] if node.names else config.site_title)
    # One outline a node (a reader subscribes to each xmlUrl): its first format; the
    # JSON Feed, when there is another, as jsonUrl.
    kinds = config.formats
    attrs = (f'text={text} title={quoteattr(feed_title(config, node))} type="rss" '
             f'xmlUrl={quoteattr(feed_url(config, node, kinds[0]))} '
             f'htmlUrl={quoteattr(page_url(config, node))}')
    if "json" in kinds[1:]:
        attrs += f' jsonUrl={quoteattr(feed_url(config, node, "json"))}'
    if not node.children:
        lines.append(f"{pad}<outline {attrs}/>")
        return
    lines.append(f"{pad}<outline {attrs}>")
    for child in node.children.values():
        _opml_outline(config, child, lines, depth + 1)
    lines.append(f"{pad}</outline>")

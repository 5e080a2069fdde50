"""feeds/index.html (the tree, with autodiscovery links) and feeds/feeds.opml."""

from __future__ import annotations

from html import escape
from xml.sax.saxutils import quoteattr

from aggregator.config import Config
from aggregator.tree.categories import Node


def feed_url(config: Config, node: Node, kind: str) -> str:
    return f"{config.site_url}{node.rel_dir}{kind}.xml"


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
        name = escape(feed_title(config, node), quote=True)
        lines.append(f'<link rel="alternate" type="application/atom+xml" title="{name} (Atom)" '
                     f'href="{escape(feed_url(config, node, "atom"), quote=True)}">')
        lines.append(f'<link rel="alternate" type="application/rss+xml" title="{name} (RSS)" '
                     f'href="{escape(feed_url(config, node, "rss"), quote=True)}">')
    lines += ["</head>", "<body>", f"<h1>{title}</h1>",
              '<p><a href="feeds.opml">All feeds as OPML</a></p>', "<ul>"]
    _index_items(config, root, counts, lines)
    lines += ["</ul>", "</body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")


def _index_items(config: Config, node: Node, counts: dict[tuple[str, ...], int],
                 lines: list[str]) -> None:
    label = escape(node.names[-1] if node.names else "Everything")
    lines.append(f'<li>{label} ({counts.get(node.names, 0)}): '
                 f'<a href="{escape(node.rel_dir, quote=True)}atom.xml">Atom</a> · '
                 f'<a href="{escape(node.rel_dir, quote=True)}rss.xml">RSS</a>')
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
    attrs = (f'text={text} title={quoteattr(feed_title(config, node))} type="rss" '
             f'xmlUrl={quoteattr(feed_url(config, node, "atom"))} '
             f'htmlUrl={quoteattr(config.site_url)}')
    if not node.children:
        lines.append(f"{pad}<outline {attrs}/>")
        return
    lines.append(f"{pad}<outline {attrs}>")
    for child in node.children.values():
        _opml_outline(config, child, lines, depth + 1)
    lines.append(f"{pad}</outline>")

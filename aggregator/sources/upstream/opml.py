"""OPML subscription lists: read (`upstream: - opml: file.opml`) and write (`opml export`).

Outline nesting is the category path: a folder outline (no `xmlUrl`) is one level, an
outline with `xmlUrl` is a source. A source at the top level with an OPML 2.0
`category` attribute (`/Tech/Python`) takes its first path instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from lxml import etree

from aggregator.config import Config, UpstreamSource
from aggregator.problems import ProblemLog
from aggregator.sources.safe_open import Refused, open_regular

# No entities, no network, no DTDs: an OPML file is data, not a program.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=True)


def read_opml(path: Path, problems: ProblemLog) -> list[UpstreamSource]:
    try:
        root = etree.fromstring(_read(path), _PARSER)
    except Refused as why:
        problems.error(str(path), f"cannot read OPML: {why.message}; its sources skipped")
        return []
    except (OSError, etree.XMLSyntaxError) as exc:
        problems.error(str(path), f"cannot read OPML: {exc}; its sources skipped")
        return []
    body = root.find("body")
    if root.tag != "opml" or body is None:
        problems.error(str(path), "not an OPML file (no <opml><body>); its sources skipped")
        return []
    out: list[UpstreamSource] = []

    def walk(node: etree._Element, category: tuple[str, ...]) -> None:
        for outline in node.iterchildren("outline"):
            label = (outline.get("title") or outline.get("text") or "").strip()
            url = (outline.get("xmlUrl") or "").strip()
            if not url:
                walk(outline, category + ((label,) if label else ()))
                continue
            where = f"{path}:{outline.sourceline}"
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                problems.error(where, f"OPML outline url {url!r} is not an http(s) URL; skipped")
                continue
            path_ = category or _category_attribute(outline.get("category"))
            out.append(UpstreamSource(url=url, category=path_,
                                      title=label if label and label != url else None,
                                      where=where))

    walk(body, ())
    return out


def _read(path: Path) -> bytes:
    """The OPML file's bytes: a symlink put in its place is not followed, a FIFO or
    a device not read (Refused)."""
    fd, _st = open_regular(str(path))
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _category_attribute(value: str | None) -> tuple[str, ...]:
    first = (value or "").split(",")[0]
    return tuple(p.strip() for p in first.split("/") if p.strip())


def sources_from_opml(paths: Iterable[Path], seen: set[str],
                      problems: ProblemLog) -> tuple[UpstreamSource, ...]:
    """Sources of every OPML file, leaving out URLs already listed (inline ones win)."""
    out: list[UpstreamSource] = []
    for path in paths:
        for source in read_opml(path, problems):
            if source.url in seen:
                problems.warn(source.where, f"upstream {source.url} listed twice; the first "
                                            f"entry is used")
                continue
            seen.add(source.url)
            out.append(source)
    return tuple(out)


def with_opml_sources(config: Config, problems: ProblemLog) -> Config:
    """The config with the sources of its OPML files (`upstream: - opml: file`) after
    its inline ones. Loading the config lists the files; reading them is this layer's."""
    if not config.opml_files:
        return config
    seen = {source.url for source in config.upstream}
    found = sources_from_opml(config.opml_files, seen, problems)
    return replace(config, upstream=config.upstream + found)


def export_opml(sources: Iterable[UpstreamSource], title: str) -> bytes:
    """OPML 2.0: one folder outline per category level, sources in config order."""
    root = etree.Element("opml", version="2.0")
    head = etree.SubElement(root, "head")
    etree.SubElement(head, "title").text = title
    body = etree.SubElement(root, "body")
    folders: dict[tuple[str, ...], etree._Element] = {(): body}

    def folder(path: tuple[str, ...]) -> etree._Element:
        found = folders.get(path)
        if found is None:
            found = folders[path] = etree.SubElement(folder(path[:-1]), "outline",
                                                     text=path[-1], title=path[-1])
        return found

    for source in sources:
        attrs = {"type": "rss", "text": source.title or source.url, "xmlUrl": source.url}
        if source.title:
            attrs["title"] = source.title
        if source.category:
            attrs["category"] = "/" + "/".join(source.category)
        etree.SubElement(folder(source.category), "outline", attrs)
    data: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8",
                                 pretty_print=True)
    return data

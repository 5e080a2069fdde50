"""One build: sources → entries → sanitiser → category tree → writers → atomic publish.

This is the only place that knows the order of the stages; the CLI and the service
only decide *when* to call `build`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser

from aggregator.config import Config
from aggregator.media import image_type_from_url
from aggregator.model import Entry, Image
from aggregator.problems import ProblemLog
from aggregator.publish.atomic import Publisher
from aggregator.sanitize.html import Sanitizer
from aggregator.sanitize.text import summarize
from aggregator.sources.content import PostReader, discover
from aggregator.state.store import Clock, StateStore, utc_now
from aggregator.state.upstream import stored_upstream_entries
from aggregator.tree.categories import Node, build_tree
from aggregator.writers.feeds import FeedRenderer
from aggregator.writers.index import feed_title, feed_url, feeds_opml, index_html

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    posts_found: int = 0
    posts_read: int = 0
    entries: int = 0
    feeds: int = 0
    written: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    problems: ProblemLog = field(default_factory=ProblemLog)

    @property
    def skipped(self) -> int:
        return self.posts_found - self.posts_read

    @property
    def exit_code(self) -> int:
        return 1 if self.problems.errors else 0


def open_state(config: Config, clock: Clock, problems: ProblemLog) -> StateStore:
    """The state file, or an in-memory one if it cannot be opened (the build goes on)."""
    try:
        return StateStore(config.state_path, clock)
    except (OSError, sqlite3.Error) as exc:
        problems.warn(str(config.state_path), f"state unusable ({exc}); using a temporary "
                      "one, so undated entries may get new dates")
        return StateStore(Path(":memory:"), clock)


def read_posts(config: Config, state: StateStore, report: BuildReport) -> list[Entry]:
    posts = discover(config, report.problems)
    report.posts_found = len(posts)
    reader = PostReader(config, report.problems, state.first_seen)
    entries = [entry for post in posts if (entry := reader.read(post)) is not None]
    report.posts_read = len(entries)
    return entries


def merge_duplicates(entries: Iterable[Entry], problems: ProblemLog) -> list[Entry]:
    """One entry per id and per link; the newest version wins, then the first source."""
    ordered = sorted(entries, key=lambda e: (-e.updated.timestamp(), e.source))
    by_id: dict[str, Entry] = {}
    by_link: dict[str, Entry] = {}
    for entry in ordered:
        kept = by_id.get(entry.id) or (by_link.get(entry.link) if entry.link else None)
        if kept is not None:
            problems.warn(entry.source or entry.id, f"duplicate of {kept.source or kept.id} "
                          f"(same {'id' if kept.id == entry.id else 'link'}); merged")
            continue
        by_id[entry.id] = entry
        if entry.link:
            by_link[entry.link] = entry
    return list(by_id.values())


def finish_entry(entry: Entry, sanitizer: Sanitizer) -> Entry:
    """Sanitise the body; fill the summary and the image from it when missing."""
    html = sanitizer.clean(entry.html, entry.base_url, entry.drop_selectors)
    image = entry.image or _first_image(html)
    summary = entry.summary or summarize(html)
    return replace(entry, html=html, image=image, summary=summary)


def _first_image(html: str) -> Image | None:
    if "<img" not in html:
        return None
    body = LexborHTMLParser(html).body
    for img in body.css("img") if body is not None else []:
        src = img.attributes.get("src") or ""
        if src.startswith(("http://", "https://")):
            return Image(url=src, mime_type=image_type_from_url(src))
    return None


def build(config: Config, clock: Clock = utc_now,
          extra_entries: Iterable[Entry] = ()) -> BuildReport:
    """Publish every feed from the content dir (+ stored upstream entries)."""
    started = time.perf_counter()
    report = BuildReport()
    state = open_state(config, clock, report.problems)
    try:
        entries = merge_duplicates([*read_posts(config, state, report),
                                    *stored_upstream_entries(state, config.upstream),
                                    *extra_entries], report.problems)
    finally:
        state.close()
    report.entries = len(entries)
    root = build_tree(entries, config.slugs)
    publish(config, root, report)
    report.seconds = time.perf_counter() - started
    return report


def publish(config: Config, root: Node, report: BuildReport) -> None:
    limit = config.max_items
    sanitizer = Sanitizer(config.drop_selectors, config.iframe_hosts)
    renderer = FeedRenderer(config)
    # Only entries that reach some feed are sanitised and rendered, each once per format.
    selected = {node.names: node.entries(limit) for node in root.walk()}
    finished: dict[str, Entry] = {}
    atom: dict[str, bytes] = {}
    rss: dict[str, bytes] = {}
    for members in selected.values():
        for entry in members:
            if entry.id not in finished:
                done = finished[entry.id] = finish_entry(entry, sanitizer)
                atom[entry.id] = renderer.atom_entry(done)
                rss[entry.id] = renderer.rss_entry(done)

    publisher = Publisher(config.output_dir)
    publisher.prepare()
    counts: dict[tuple[str, ...], int] = {}
    for node in root.walk():
        members = [finished[e.id] for e in selected[node.names]]
        counts[node.names] = len(members)
        title = feed_title(config, node)
        publisher.write(f"{node.rel_dir}atom.xml", renderer.atom_feed(
            title, feed_url(config, node, "atom"), members, (atom[e.id] for e in members)))
        publisher.write(f"{node.rel_dir}rss.xml", renderer.rss_feed(
            title, feed_url(config, node, "rss"), members, (rss[e.id] for e in members)))
        report.feeds += 2
    publisher.write("index.html", index_html(config, root, counts))
    publisher.write("feeds.opml", feeds_opml(config, root))
    publisher.finish()
    report.written = publisher.written
    report.unchanged = len(publisher.unchanged)
    report.removed = publisher.removed

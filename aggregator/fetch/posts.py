"""`write_posts: true`: each upstream entry of the source also becomes a Hexo post.

Written under its category path in the first content dir, atomically (temp file in the
same folder, then a rename), never through a symbolic link (`nofollow`: a linked
folder or file on the way is refused and reported). The SHA-256 of what we wrote is
kept in state (`written_post`): a file whose bytes differ from it was edited by a
person and is never touched again; a file we did not write is never overwritten; a
deleted one is not brought back. The post's front-matter `id` is the upstream entry's
id, and `build` leaves the stored upstream entry out while the post exists, so the
entry is published once, as the post (which a person may edit), with the id readers
already know. The state's `written_post` rows also mark these posts as upstream ones:
the merge ranks every post a person wrote above them, so an item claiming a local
post's id or link never replaces it (pipeline.merge_duplicates).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from pathlib import Path

import yaml
from slugify import slugify

from aggregator.config import Config, UpstreamSource
from aggregator.model import Entry
from aggregator.problems import ProblemLog
from aggregator.render import finish_entry
from aggregator.sanitize.html import Sanitizer
from aggregator.sources.upstream import nofollow
from aggregator.state.store import StateStore
from aggregator.state.upstream import UpstreamState

log = logging.getLogger(__name__)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _name(text: str, fallback: str) -> str:
    return slugify(text, max_length=60, word_boundary=True) or fallback


def post_parts(entry: Entry) -> tuple[str, ...]:
    """`<category slugs…>/<title slug>-<8 hex of the id>.md` under the content dir: only
    a-z0-9- names, so no title or category can name a path outside it (a link inside
    it is refused by `nofollow`)."""
    tag = _sha(entry.id.encode())[:8]
    folders = [_name(part, "c-" + _sha(part.encode())[:8]) for part in entry.category]
    return (*folders, f"{_name(entry.title, 'entry')}-{tag}.md")


def post_bytes(entry: Entry, sanitizer: Sanitizer) -> bytes:
    """Front matter + sanitised HTML; the same entry always gives the same bytes."""
    done = finish_entry(entry, sanitizer)
    meta: dict[str, object] = {"title": done.title, "id": done.id}
    if done.published is not None:
        meta["date"] = _stamp(done.published)
    meta["updated"] = _stamp(done.updated)
    if done.category:
        meta["categories"] = list(done.category)
    if done.tags:
        meta["tags"] = list(done.tags)
    for key, value in (("author", done.author), ("link", done.link),
                       ("headimg", done.image.url if done.image else None)):
        if value:
            meta[key] = value
    meta["upstream"] = done.source
    front = yaml.safe_dump(meta, allow_unicode=True, sort_keys=False, width=1000)
    body = done.html.strip() or "<p></p>"
    return f"---\n{front}---\n{body}\n".encode()


def _stamp(value: datetime) -> str:
    return value.isoformat()


def write_posts(config: Config, store: StateStore, sources: list[UpstreamSource],
                problems: ProblemLog, now: datetime) -> int:
    """Write (or update, while unedited) the posts of these sources; returns files written."""
    chosen = [s for s in sources if s.write_posts and s.enabled]
    if not chosen or not config.content_dirs:
        return 0
    root = config.content_dirs[0]
    sanitizer = Sanitizer(config.drop_selectors, config.iframe_hosts)
    state = UpstreamState(store)
    written = 0
    for source in chosen:
        for entry in state.entries([source]):
            try:
                written += _write_one(store, root, source, entry, sanitizer, problems, now)
            except OSError as exc:
                problems.error(source.url, f"cannot write the post for {entry.id}: {exc}")
    return written


def _write_one(store: StateStore, root: Path, source: UpstreamSource, entry: Entry,
               sanitizer: Sanitizer, problems: ProblemLog, now: datetime) -> int:
    row = store.db.execute("SELECT path, sha256 FROM written_post WHERE entry_id = ?",
                           (entry.id,)).fetchone()
    path = Path(row[0]) if row is not None else root.joinpath(*post_parts(entry))
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return 0  # written under another content dir: not ours to touch now
    data = post_bytes(entry, sanitizer)
    try:
        if not _due(root, parts, None if row is None else row[1], data, path, entry,
                    problems):
            return 0
        nofollow.replace_file(root, parts, data)
    except nofollow.LinkRefused as exc:
        problems.error(str(path), f"not written for {entry.id} from {source.url}: "
                                  f"{exc.strerror}; posts are never written through a link")
        return 0
    store.db.execute("INSERT INTO written_post VALUES (?, ?, ?, ?, ?) ON CONFLICT "
                     "(entry_id) DO UPDATE SET source_url = excluded.source_url, "
                     "path = excluded.path, sha256 = excluded.sha256, "
                     "written_at = excluded.written_at",
                     (entry.id, source.url, str(path), _sha(data), now.isoformat()))
    log.info("%s: wrote %s", source.url, path)
    return 1


def _due(root: Path, parts: tuple[str, ...], written_sha: str | None, data: bytes,
         path: Path, entry: Entry, problems: ProblemLog) -> bool:
    """Whether to write `data` at `parts`: a new post where nothing is, or one we wrote
    (`written_sha`: the SHA-256 of what we wrote) that nobody edited and that changed."""
    if written_sha is None:
        if nofollow.exists(root, parts):
            problems.warn(str(path), f"not written for {entry.id}: a file we did not write "
                                     f"is already there")
            return False
        return True
    current = nofollow.read_file(root, parts)
    if current is None:
        return False  # deleted by a person: not brought back
    if _sha(current) != written_sha:
        log.debug("%s: edited by hand; left alone", path)
        return False
    return current != data

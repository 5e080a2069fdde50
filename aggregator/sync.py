"""Inputs → the entry store: the changed post files read and their rows upserted, the
vanished ones deleted, the upstream entries' rows kept as the state has them, and
duplicates merged (a query for the entries sharing an id or a link).

One path for every build: a cold build is the one where every post changed; the CLI
learns what changed by comparing the walk with the stored file identities, the
service from the watcher's paths.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from aggregator.config import Config
from aggregator.fingerprints import fingerprint_of, read_fingerprint, render_fingerprint
from aggregator.model import Entry, Image
from aggregator.problems import ProblemLog
from aggregator.report import BuildReport
from aggregator.sources.read import Read, read_posts
from aggregator.sources.walk import PostFile, Posts, Run, Walk
from aggregator.state.probes import unknown_image
from aggregator.state.store import StateStore
from aggregator.store import EntryStore, Render, RenderRow
from aggregator.store.rows import (
    READ_AGAIN,
    Row,
    decode,
    encode,
    entry_digest,
    entry_row,
    render_key,
    unpack_entry,
    unpack_links,
    unpack_problems,
    with_probe,
)
from aggregator.store.sqlite import ENTRY_TABLES

log = logging.getLogger(__name__)

PostKey = tuple[bytes, bytes]  # (relative path, content dir), encoded
# what _pack makes of a Read: (the row, or the key and new identity of a post whose
# bytes are the ones stored; a render made as it was read; whether to retry it)
Packed = tuple[Row | tuple[PostKey, tuple[int, int, int]], RenderRow | None, bool]
# A transaction stores this many rows at most, or this many bytes of packed entries and
# renders: each commit writes every page it touched (members land all over their index),
# so fewer, larger batches write less (docs/decisions.md has the figure); the bytes
# bound the memory held.
_BATCH_ROWS = 5000
_BATCH_BYTES = 8 << 20


def forget_if_settings_changed(config: Config, store: EntryStore) -> None:
    """Every entry goes when what shapes an entry read from a post changed; every
    node's feeds are planned again when the config changed."""
    store.invalidate_if_changed("read", read_fingerprint(config), *ENTRY_TABLES)
    if store.meta("config") != (printed := fingerprint_of(repr(config))):
        store.mark_dirty()
        store.set_meta("config", printed)


def walk_changes(store: EntryStore, walk: Walk
                 ) -> tuple[Posts, list[str | None], list[PostKey]]:
    """(the posts whose file is not the one stored, the digest of the bytes each was
    read from if known, the stored posts no longer found): the walk compared with the
    stored identities a folder at a time. A folder whose print is the one stored holds
    the identities stored (the store forgets a folder's print when it changes one of
    its rows), so only the other folders' rows are read and compared post by post."""
    stored = store.folder_prints()
    roots: dict[str, bytes] = {}
    clean: set[tuple[str, str]] = set()
    compared: list[tuple[bytes, bytes]] = []
    counted = 0
    for folder in walk.folders:
        root = roots.get(folder.root)
        if root is None:
            root = roots[folder.root] = encode(folder.root)
        where = (root, encode(folder.prefix))
        if folder.whole and stored.pop(where, None) == (folder.print, folder.posts):
            clean.add((folder.root, folder.prefix))
            counted += folder.posts
        else:
            compared.append(where)
    compared += stored  # folders kept but no longer walked: their posts are gone
    rows = {(key, root): (size, mtime, inode, content) for key, root, size, mtime, inode, content
            in store.folder_posts(sorted(set(compared)))}
    if counted + len(rows) != store.post_count():  # rows of folders no print names
        return _every_change(store, walk)
    parts: list[PostFile | Run] = []
    known: list[str | None] = []
    for part in walk.parts:
        if isinstance(part, Run):
            if (str(part.root), part.prefix) in clean:
                continue
            root, prefix = roots[str(part.root)], encode(part.prefix)
            numbers = iter(part.identities)
            chosen = []
            for i, (name, identity) in enumerate(zip(
                    part.names.split(b"\0"), zip(numbers, numbers, numbers, strict=True),
                    strict=True)):
                old = rows.pop((prefix + name, root), None)
                if old is None or old[:3] != identity:
                    chosen.append(i)
                    known.append(old[3] if old is not None else None)
            if len(chosen) == len(part.identities) // 3:
                parts.append(part)
            elif chosen:
                parts.append(part.subset(chosen))
        else:
            old = rows.pop(post_key(part), None)
            if old is None or old[:3] != part.identity:
                parts.append(part)
                known.append(old[3] if old is not None else None)
    if walk.sort:  # several content dirs: their posts sorted, with their digests
        by_key = {post_key(post): content
                  for post, content in zip(Posts(parts), known, strict=True)}
        posts = walk.chosen(parts)
        return posts, [by_key[post_key(post)] for post in posts], sorted(rows)
    return Posts(parts), known, sorted(rows)


def _every_change(store: EntryStore, walk: Walk
                  ) -> tuple[Posts, list[str | None], list[PostKey]]:
    """walk_changes post by post: every stored identity read and compared."""
    stored = {(key, root): (size, mtime, inode, content) for key, root, size, mtime, inode,
              content in store.post_identities()}
    changed: list[PostFile | Run] = []
    known: list[str | None] = []
    for post in walk.posts:
        old = stored.pop(post_key(post), None)
        if old is None or old[:3] != post.identity:
            changed.append(post)
            known.append(old[3] if old is not None else None)
    return Posts(changed), known, sorted(stored)


def post_key(post: PostFile) -> PostKey:
    return encode(post.rel), encode(str(post.root))


def sync_posts(config: Config, store: EntryStore, state: StateStore, report: BuildReport,
               changed: Posts, known: list[str | None], gone: list[PostKey],
               workers: int, every_post: Posts | None) -> list[PostKey]:
    """Read the changed posts into their rows, delete the gone ones' rows; then read
    again the posts whose post_link/post_path tags name a changed or gone post."""
    if config.hexo is not None and (changed or gone):
        linking = _linking(config, store, changed, gone)
        changed, known = changed.plus(linking), [*known, *[None] * len(linking)]
    if gone:
        store.delete(gone)
    if not changed:
        return []
    render_print = render_fingerprint(config) if config.max_items == 0 else None
    if render_print is not None:  # every entry is published: rendered as it is read
        store.invalidate_if_changed("render", render_print, "rendered", "feed_state")
    batch = _Batch()
    moves: list[tuple[bytes, bytes, tuple[int, int, int]]] = []
    retried: list[PostKey] = []
    pack = functools.partial(_pack, config, render_print)
    for row, render, again in read_posts(config, changed, known, state.first_seen, pack,
                                         workers, every_post):
        report.retry = report.retry or again
        if isinstance(row, Row):
            batch.add(row)
            if row.size == READ_AGAIN[0]:
                retried.append((row.key, row.root))
        else:
            moves.append((*row[0], row[1]))
        if render is not None:
            batch.add_render(render)
        if batch.full():
            _store_batch(store, state, report, batch)
    _store_batch(store, state, report, batch)
    if moves:
        store.move_posts(moves)
    return retried


class _Batch:
    """Rows, and renders made as they were read, held until a transaction stores them:
    _BATCH_ROWS rows at most, or _BATCH_BYTES of packed entries and renders."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.renders: list[RenderRow] = []
        self.held = 0  # bytes of the packed entries and renders

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.held += len(row.packed or b"")

    def add_render(self, render: RenderRow) -> None:
        self.renders.append(render)
        self.held += sum(map(len, render[1:]))

    def full(self) -> bool:
        return len(self.rows) >= _BATCH_ROWS or self.held >= _BATCH_BYTES

    def take(self) -> tuple[list[Row], list[RenderRow]]:
        """The rows and renders held, which the batch then no longer holds."""
        taken = self.rows, self.renders
        self.rows, self.renders, self.held = [], [], 0
        return taken


def _store_batch(store: EntryStore, state: StateStore, report: BuildReport,
                 batch: _Batch) -> None:
    """One batch of rows and the renders made as they were read (a transaction each,
    none when there is nothing to store)."""
    rows, renders = batch.take()
    if renders:
        store.store_rendered(renders)
        report.rendered += len(renders)
    if rows:
        store.upsert(_probed(state, rows))


def store_folders(store: EntryStore, walk: Walk, retried: list[PostKey]) -> None:
    """Once the changed posts are stored: the prints of the walked folders whose rows
    now hold the walk's identities (all but those of a post to read again, and those
    with a post the walk looked at alone), for the next build's walk_changes."""
    kept = store.folder_prints()
    unsettled = {(root, key[:key.rfind(b"/") + 1]) for key, root in retried}
    rows = []
    for folder in walk.folders:
        where = (encode(folder.root), encode(folder.prefix))
        if folder.whole and where not in unsettled and \
                kept.get(where) != (folder.print, folder.posts):
            rows.append((*where, folder.print, folder.posts))
    store.store_folders(rows)


def _probed(state: StateStore, rows: list[Row]) -> list[Row]:
    """The rows with the image types `fetch` probed (state, no network) for their
    posts' images whose URL does not tell."""
    urls = [row.probe_url for row in rows if row.probe_url is not None]
    if not urls:
        return rows
    from aggregator.state.probes import ProbeCache

    try:
        found = ProbeCache(state).get(urls)
    except Exception:  # noqa: BLE001 (an old or damaged state: probing is an extra)
        return rows
    out = []
    for row in rows:
        probe = found.get(row.probe_url) if row.probe_url is not None else None
        if probe is not None and probe.mime_type:
            row = with_probe(row, probe.mime_type, probe.length)
        out.append(row)
    return out


def _linking(config: Config, store: EntryStore, changed: Posts,
             gone: list[PostKey]) -> list[PostFile]:
    """The posts (not among `changed`) whose bodies link to the slug of a changed or
    gone post: the link or title they show may not be what it was."""
    from aggregator.sources.linked_posts import slug_of

    touched = {slug_of(config, post.rel) for post in changed}
    touched.update(slug_of(config, decode(key)) for key, _root in gone)
    skip = {post_key(post) for post in changed} | set(gone)
    out = []
    for key, root, identity, links in store.linking_posts():
        if (key, root) in skip or touched.isdisjoint(slug for slug, _ in unpack_links(links)):
            continue
        rel, folder = decode(key), decode(root)
        out.append(PostFile(os.path.join(folder, *rel.split("/")), rel, Path(folder), identity))
    return out


# the entry renderer of a process (a worker's, made on its first entry) and its config
_renderer: list[tuple[Config, Callable[[Entry], Render]]] = []


def _pack(config: Config, render_print: str | None, read: Read) -> Packed:
    """The row of a post just read (in the worker that read it), and its render when
    every entry is published (`render_print`)."""
    post = read.post
    if read.same:
        return (post_key(post), post.identity), None, False
    entry = read.entry
    identity = READ_AGAIN if not read.content else post.identity
    row = entry_row(*post_key(post), 0, identity, read.content, entry, read.problems,
                    read.links, unknown_image(entry) if entry is not None else None)
    render = None
    if render_print is not None and entry is not None:
        if not _renderer or _renderer[0][0] != config:
            from aggregator.render import entry_renderer

            _renderer[:] = [(config, entry_renderer(config))]
        try:
            render = (row.rkey, *_renderer[0][1](entry))
        except Exception:  # noqa: BLE001 (the publisher renders it again, and reports)
            render = None
    return row, render, read.again


def sync_upstream(config: Config, store: EntryStore, state: StateStore,
                  extra: list[Entry]) -> None:
    """The upstream entries' rows as the state has them (with today's config), when
    the state or the config changed since they were stored; `extra` entries too."""
    generation = state.generation()
    key = None if generation is None or extra else \
        fingerprint_of(generation, repr(config.upstream))
    if key is not None and store.meta("upstream") == key:
        return
    from aggregator.state.upstream import stored_upstream_entries

    existing = store.upstream_rows()
    batch = _Batch()
    seqs: list[tuple[int, bytes]] = []
    keys: set[bytes] = set()
    # (the entries a source at a time, their rows stored a batch at a time: memory
    # holds one source's entries and one batch, not every upstream entry)
    for seq, entry in enumerate(itertools.chain(
            stored_upstream_entries(state, config.upstream), extra)):
        row_key = encode(f"{entry.source}\0{entry.id}")
        if row_key in keys:  # (the same id twice in one source: a duplicate to merge)
            row_key += encode(f"\0{seq}")
        keys.add(row_key)
        old = existing.pop(row_key, None)
        if old is None or old[1] != entry_digest(entry):
            batch.add(entry_row(row_key, b"", seq, (0, 0, 0), "", entry, (), ()))
            if batch.full():
                store.upsert(batch.take()[0])
        elif old[0] != seq:
            seqs.append((seq, row_key))
    store.delete((row_key, b"") for row_key in existing)
    store.upsert(batch.take()[0])
    store.set_seq(seqs)
    store.set_meta("upstream", key)


def sync_probes(store: EntryStore, state: StateStore) -> None:
    """When the state changed: the posts' rows with the image types probed since (or
    without one a probe no longer tells); their render keys follow."""
    generation = state.generation()
    if generation is not None and store.meta("probes") == generation:
        return
    candidates = store.probe_candidates()
    if candidates:
        from aggregator.state.probes import ProbeCache

        try:
            found = ProbeCache(state).get([row[1] for row in candidates])
        except Exception:  # noqa: BLE001 (an old or damaged state: probing is an extra)
            found = {}
        updates = []
        for rid, url, mime, length, digest in candidates:
            probe = found.get(url)
            now = (probe.mime_type, probe.length) if probe is not None and probe.mime_type \
                else (None, None)
            if now == (mime, length):
                continue
            if now[0] is not None:
                image: Image | None = Image(url, now[0], now[1] or 0)
            else:  # the image as the post has it
                image = unpack_entry(store.packed([rid])[rid][0]).image
            updates.append((rid, now[0], now[1], render_key(digest, image)))
        store.set_probes(updates)
    store.set_meta("probes", generation)


def replay_problems(store: EntryStore, problems: ProblemLog) -> None:
    """Every post's problems, in post order (as a read of every post reports them)."""
    for found in store.post_problems():
        problems.replay(unpack_problems(found))


def merge(config: Config, store: EntryStore, state: StateStore, problems: ProblemLog) -> None:
    """Publish one entry per id and per link (merge_duplicates over the entries that
    share one: the others are published as they are)."""
    rows = store.duplicates()
    if not rows:
        store.set_winners({})
        return
    # in the order a build meets them: posts in post order, then upstream entries
    rows.sort(key=lambda row: (0, row[1], row[2], 0) if row[2] else (1, b"", b"", row[3]))
    entries = [unpack_entry(row[5]) for row in rows]
    from aggregator.state.upstream import written_posts

    kept = {id(entry) for entry in merge_duplicates(
        entries, problems, lambda: written_posts(state, config.content_dirs[:1]))}
    store.set_winners({row[0]: id(entry) in kept for row, entry in zip(rows, entries,
                                                                        strict=True)})


def merge_duplicates(entries: Iterable[Entry], problems: ProblemLog,
                     written: Callable[[], Mapping[str, str]] = dict) -> list[Entry]:
    """One entry per id and per link; a local post always beats a post `write_posts`
    wrote, which beats an upstream entry (a stranger's feed claiming a post's id or
    link replaced the post), then the newest version wins, then the first source.
    `written`: the posts write_posts wrote (their source → the upstream URL), asked
    only when two entries share an id or a link."""
    entries = list(entries)
    if _all_distinct(entries):
        return entries
    from_upstream = written()

    def rank(entry: Entry) -> int:
        return 2 if "://" in entry.source else 1 if entry.source in from_upstream else 0

    ordered = sorted(entries, key=lambda e: (rank(e), -e.updated.timestamp(), e.source))
    by_id: dict[str, Entry] = {}
    by_link: dict[str, Entry] = {}
    for entry in ordered:
        kept = by_id.get(entry.id) or (by_link.get(entry.link) if entry.link else None)
        if kept is not None:
            same = "id" if kept.id == entry.id else "link"
            url = from_upstream.get(entry.source)
            if url is not None and rank(kept) == 0:
                problems.warn(entry.source, f"written for {url} (its entry {entry.id}), "
                              f"which has the {same} of the local post {kept.source}: "
                              f"the local post is published, not this one")
            else:
                problems.warn(entry.source or entry.id, f"duplicate of "
                              f"{kept.source or kept.id} (same {same}); merged")
            continue
        by_id[entry.id] = entry
        if entry.link:
            by_link[entry.link] = entry
    return list(by_id.values())


def _all_distinct(entries: list[Entry]) -> bool:
    ids = {e.id for e in entries}
    links = [e.link for e in entries if e.link]
    return len(ids) == len(entries) and len(set(links)) == len(links)

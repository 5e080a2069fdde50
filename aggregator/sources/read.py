"""Posts → entries through the build cache: a post whose file identity or content is
unchanged is not parsed again (its problems are replayed); a cold build parses in
worker processes."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import fields, replace
from datetime import UTC, datetime

from aggregator import progress
from aggregator.config import Config
from aggregator.fingerprints import read_fingerprint, render_fingerprint, render_key
from aggregator.forking import PARALLEL_THRESHOLD, can_fork, chunk_ranges, map_inherited
from aggregator.model import Entry, changed
from aggregator.problems import Problem, ProblemLog
from aggregator.report import BuildReport
from aggregator.source_keys import split_source
from aggregator.sources.content import PostReader
from aggregator.sources.linked_posts import slug_of
from aggregator.sources.walk import PostFile, discover, display, post_of_source
from aggregator.state.cache import (
    BuildCache,
    CachedPost,
    Links,
    PackedPost,
    digest,
    pack_post,
    unpack_post,
)
from aggregator.state.store import StateStore

# identity, entry, problems, what its post_link/post_path tags found
ReadResult = tuple[tuple[int, int, int], Entry | None, tuple[Problem, ...], Links]

# Above this many posts that the memo cannot answer, the cache's rows are loaded in one
# query; below it, each is looked up (a service's rebuild after a few edits).
_LOAD_ALL_AT = 200


def read_posts(config: Config, state: StateStore, report: BuildReport,
               cache: BuildCache | None = None, posts: list[PostFile] | None = None,
               memo: dict[str, ReadResult] | None = None, workers: int = 1) -> list[Entry]:
    """Every post as an Entry (html not yet sanitised). With a cache, a post whose file
    identity or content is unchanged is not parsed again; its problems are replayed.
    `memo` (source → last result, kept by a long-lived Builder) skips even the cache."""
    cache = cache if cache is not None else BuildCache(None)
    cache.invalidate_if_changed("read", read_fingerprint(config), "post_cache")
    if posts is None:
        posts = discover(config, report.problems)
    sources = [post.source for post in posts]  # made once: ~0.1 s each time at 100k
    unknown = len(posts) if memo is None else sum(
        1 for post, source in zip(posts, sources, strict=True)
        if (known := memo.get(source)) is None or known[0] != post.identity)
    if unknown > _LOAD_ALL_AT:
        cache.load_posts()  # most posts will be asked for: one query, not one each
    report.posts_found = len(posts)
    reader = PostReader(config, report.problems, state.first_seen, posts=posts)
    entries: list[Entry] = []
    fresh: list[tuple[str, CachedPost]] = []
    seen: dict[str, ReadResult] = {}
    shared = _Sharing()
    parsed: dict[str, CachedPost] = {}
    failed: list[str] = []  # posts whose read raised
    if workers > 1:
        rendered, parsed = _read_in_parallel(config, posts, sources, cache, memo, workers,
                                             state, shared)
        report.rendered += rendered
    for post, source in zip(posts, sources, strict=True):
        known = memo.get(source) if memo is not None else None
        if known is not None and known[0] == post.identity and (
                not known[3] or reader.links_hold(known[3])):
            entry, found, links = known[1], known[2], known[3]
            report.problems.replay(found)
        else:
            cached = parsed.pop(source, None)
            if cached is None and (cached := cache.post(source)) is not None:
                shared.entry(cached.entry, post.rel)
            entry, record, found, links = _read_post(post, cached, reader, report.problems,
                                                     failed)
            if record is not None:
                fresh.append((source, record))
        seen[source] = (post.identity, entry, found, links)
        if entry is not None:
            entries.append(entry)
    cache.store_posts(fresh)
    if config.hexo is not None:
        cache.store_linking_posts({source: _slugs(known[3]) for source, known in seen.items()
                                   if known[3]})
    report.retry = report.retry or bool(failed)
    cache.release_posts()  # the memo (or nothing) answers from here on
    if fresh or memo is None or len(memo) != len(seen):
        cache.forget_posts_except(set(seen))
    if memo is not None:
        memo.clear()
        memo.update(seen)
    report.posts_read = len(entries)
    return entries


def read_changed(config: Config, state: StateStore, cache: BuildCache,
                 posts: list[PostFile], gone: list[str],
                 memo: dict[str, ReadResult]) -> dict[str, ReadResult]:
    """A session's few changed posts (source → result) and forgotten ones (`gone`
    sources), with the cache and the memo kept as read_posts would leave them. Problems
    are collected, not reported: the caller replays every post's in post order."""
    reader = PostReader(config, ProblemLog(echo=False), state.first_seen)
    out: dict[str, ReadResult] = {}
    fresh: list[tuple[str, CachedPost]] = []
    for post in posts:
        source = post.source
        entry, record, found, links = _read_post(post, cache.post(source), reader,
                                                 ProblemLog(echo=False))
        if record is not None:
            fresh.append((source, record))
        out[source] = memo[source] = (post.identity, entry, found, links)
    if config.hexo is not None:
        _read_linking(config, cache, reader, posts, gone, out, fresh, memo)
    cache.store_posts(fresh)
    if gone:
        cache.forget_posts(gone)
        for source in gone:
            memo.pop(source, None)
    return out


def _read_linking(config: Config, cache: BuildCache, reader: PostReader,
                  posts: list[PostFile], gone: list[str], out: dict[str, ReadResult],
                  fresh: list[tuple[str, CachedPost]], memo: dict[str, ReadResult]) -> None:
    """The posts whose post_link/post_path name the slug of a changed or gone post
    are read again too (into `out`, `fresh` and `memo`): the link or title they show
    may have changed. Which posts link where is kept in the cache."""
    linking = cache.linking_posts()
    touched = {slug_of(config, post.rel) for post in posts}
    touched.update(slug_of(config, split_source(source)[1]) for source in gone)
    for source, slugs in list(linking.items()):
        if source in out or source in gone or touched.isdisjoint(slugs):
            continue
        cached = cache.post(source)
        known = memo.get(source)
        identity = known[0] if known is not None else \
            (cached.size, cached.mtime_ns, cached.inode) if cached is not None else (0, 0, 0)
        post = post_of_source(source, identity)
        entry, record, found, links = _read_post(post, cached, reader, ProblemLog(echo=False))
        if record is not None:
            fresh.append((source, record))
        out[source] = memo[source] = (identity, entry, found, links)
    for source, result in out.items():
        if result[3]:
            linking[source] = _slugs(result[3])
        else:
            linking.pop(source, None)
    for source in gone:
        linking.pop(source, None)
    cache.store_linking_posts(linking)


def _slugs(links: Links) -> tuple[str, ...]:
    return tuple(dict.fromkeys(slug for slug, _found in links))


# Read in a worker, an undated post cannot ask the state for its first-seen time: it
# gets this impossible date (parse_date refuses years before 1970) and the parent
# puts the real one in.
_NOT_SEEN_YET = datetime(1900, 1, 1, tzinfo=UTC)


def _read_in_parallel(config: Config, posts: list[PostFile], sources: list[str],
                      cache: BuildCache, memo: dict[str, ReadResult] | None, workers: int,
                      state: StateStore, shared: _Sharing
                      ) -> tuple[int, dict[str, CachedPost]]:
    """Parse the posts the cache cannot answer in worker processes (a cold build spends
    most of its reading time in YAML and Markdown) and put the results in the cache.
    Returns how many entries were rendered as they were read (max_items 0), and what
    was read (source → record), for the sequential pass: it used to find them in the
    cache's rows loaded in memory, ~1 KB a post held beside the entries they become."""
    pending, pending_sources, digests = [], [], []  # (posts: all, for post_link's slugs)
    for post, source in zip(posts, sources, strict=True):
        known = memo.get(source) if memo is not None else None
        if known is not None and known[0] == post.identity:
            continue
        if not cache.has_post(source, post.identity):
            pending.append(post)
            pending_sources.append(source)
            digests.append(cache.content_digest(source))
    parsed: dict[str, CachedPost] = {}
    if len(pending) < PARALLEL_THRESHOLD or not can_fork():
        return 0, parsed
    # Small chunks, stored as they come back: the parent never holds more than a few
    # chunks of whole posts (all 100k of them at once took 1.3 GB).
    ranges = chunk_ranges(len(pending), workers, 250)
    render_print, rendered = None, 0
    if config.max_items == 0:  # every entry is published: render as it is read
        render_print = render_fingerprint(config)
        cache.invalidate_if_changed("render", render_print, "rendered", "feed_state")
    with progress.bar("posts read", len(pending), "post") as shown:
        for (start, stop), (results, renders) in zip(ranges, map_inherited(
                _read_range, (config, pending, pending_sources, digests, render_print, posts),
                ranges, workers),
                strict=True):
            rendered += _store_read(cache, state, shared, parsed, renders, results,
                                    pending[start:stop], pending_sources[start:stop])
            shown.advance(stop - start)
    return rendered, parsed


def _store_read(cache: BuildCache, state: StateStore, shared: _Sharing,
                parsed: dict[str, CachedPost], renders: list[RenderRow],
                results: list[PackedPost | CachedPost | str | None], posts: list[PostFile],
                sources: list[str]) -> int:
    """Put one chunk a worker read into the cache (and `parsed`); the renders made."""
    cache.store_rendered(renders)
    packed: list[PackedPost] = []
    moved = []
    for post, source, result in zip(posts, sources, results, strict=True):
        if isinstance(result, str):  # _SAME_BYTES: touched or copied, not parsed
            moved.append((source, post.identity))
            continue
        if isinstance(result, CachedPost):  # undated: its first-seen time is ours
            entry = result.entry
            assert entry is not None
            entry = _stamped(replace(entry, updated=state.first_seen(entry.id)))
            result = pack_post(source, replace(result, entry=entry))
        if result is not None:  # None: unreadable, the sequential pass says why
            packed.append(result)
            parsed[source] = record = unpack_post(result)
            shared.entry(record.entry, post.rel)
    cache.store_packed(packed)
    cache.move_posts(moved)
    return len(renders)


RenderRow = tuple[str, bytes, bytes]  # render key, packed atom, packed rss
_SAME_BYTES = "same bytes"  # the post's bytes are the ones the cache read


def _read_range(shared: tuple[Config, list[PostFile], list[str], list[str | None],
                              str | None, list[PostFile]],
                bounds: tuple[int, int]
                ) -> tuple[list[PackedPost | CachedPost | str | None], list[RenderRow]]:
    """_read_chunk of the posts pending[start:stop], in a worker that inherited them
    (and their source keys: the parent made them, the worker need not again)."""
    config, pending, sources, digests, render_print, posts = shared
    start, stop = bounds
    return _read_chunk(config, pending[start:stop], sources[start:stop], digests[start:stop],
                       render_print, posts)


def _read_chunk(config: Config, posts: list[PostFile], sources: list[str],
                known_digests: list[str | None], render_print: str | None,
                every_post: list[PostFile] | None = None
                ) -> tuple[list[PackedPost | CachedPost | str | None], list[RenderRow]]:
    """In a worker: read, parse and pack each post for the cache (pickling and packing
    here, not in the parent); problems are returned, not logged (the parent reports
    them, in order, when it takes the results from the cache). An undated post comes
    back unpacked: only the parent can give it its first-seen time. A post whose bytes
    still have the digest the cache knows (a new mtime, a copy) is only hashed.

    With `render_print` (every entry goes into some feed: max_items 0), each dated
    entry is rendered here too, while its body is at hand, under the render key the
    publisher will look for; an entry that turns out not to be published (a merged
    duplicate, a probed image) only leaves an unused render for the cache to drop."""
    out: list[PackedPost | CachedPost | str | None] = []
    renders: list[RenderRow] = []
    render = _speculative_renderer(config, render_print) if render_print is not None \
        else None
    logging.getLogger("aggregator").disabled = True
    # one reader for the chunk (it remembers each folder's quoted path), a log a post
    reader = PostReader(config, ProblemLog(), lambda _id: _NOT_SEEN_YET, posts=every_post)
    for post, source, known in zip(posts, sources, known_digests, strict=True):
        reader.problems = ProblemLog()
        try:
            result, entry = _read_one(reader, post, source, known)
        except Exception:  # noqa: BLE001 (None: the parent's pass reads it again, reports)
            result, entry = None, None
        out.append(result)
        if entry is not None and render is not None:
            row = render(entry)
            if row is not None:
                renders.append(row)
    return out, renders


def _read_one(reader: PostReader, post: PostFile, source: str, known: str | None
              ) -> tuple[PackedPost | CachedPost | str | None, Entry | None]:
    """One post of _read_chunk: its result (packed; unpacked when undated;
    _SAME_BYTES; None when unreadable) and the dated entry to render, if any."""
    data = reader.read_bytes(post)
    if data is None:
        return None, None
    content = digest(data)
    if content == known:
        return _SAME_BYTES, None
    entry = _parse(reader, post, data)
    record = CachedPost(*post.identity, content, entry, tuple(reader.problems.items),
                        tuple(reader.links))
    if entry is not None and entry.updated == _NOT_SEEN_YET:
        return record, None
    return pack_post(source, record), entry


class _Sharing:
    """One object for the values many entries hold equal, each entry as it is read:
    every post of a category has the same path, most posts one of a few authors and
    image types, and its source is its file's relative path. Unpickled, each held its
    own copies: ~600 bytes a post, 60 MB at 100k posts."""

    def __init__(self) -> None:
        self._values: dict[object, object] = {}

    def entry(self, entry: Entry | None, rel: str) -> None:
        """Changes `entry` in place: call it only on one just unpickled, that nothing
        else holds yet."""
        if entry is None:
            return
        fields = vars(entry)
        values = self._values
        fields["category"] = values.setdefault(entry.category, entry.category)
        if entry.author is not None:
            fields["author"] = values.setdefault(entry.author, entry.author)
        if entry.source == rel:
            fields["source"] = rel
        image = entry.image
        if image is not None and image.mime_type is not None:
            vars(image)["mime_type"] = values.setdefault(image.mime_type, image.mime_type)


def _speculative_renderer(config: Config,
                          render_print: str) -> Callable[[Entry], RenderRow | None]:
    # (imported here: the sanitiser and the writers are ~90 ms of imports that a
    # build with nothing to render does without)
    from aggregator.render import entry_renderer

    render = entry_renderer(config)

    def render_row(entry: Entry) -> RenderRow | None:
        try:
            return (render_key(render_print, entry), *render(entry))
        except Exception:  # noqa: BLE001 (the publisher renders it again, and reports)
            return None
    return render_row


def _parse(reader: PostReader, post: PostFile, data: bytes) -> Entry | None:
    entry = reader.parse(post, data)
    return None if entry is None else _stamped(entry)


_DIGESTED = tuple(f.name for f in fields(Entry) if f.repr and f.name != "html")


def _stamped(entry: Entry) -> Entry:
    """The entry with the digest of all its fields (render keys and cache lookups):
    the repr of every field but the html, then the html's bytes (its repr, escaping
    3 KB of text, took most of the time)."""
    described = repr(tuple(getattr(entry, name) for name in _DIGESTED))
    hashed = hashlib.blake2b(described.encode("utf-8", "surrogatepass"), digest_size=16)
    hashed.update(b"\0")
    hashed.update(entry.html.encode("utf-8", "surrogatepass"))
    return changed(entry, digest=hashed.hexdigest())


def _read_post(post: PostFile, cached: CachedPost | None, reader: PostReader,
               problems: ProblemLog, failed: list[str] | None = None
               ) -> tuple[Entry | None, CachedPost | None, tuple[Problem, ...], Links]:
    """(entry, what to cache if it changed, its problems, what its post_link tags
    found). Unchanged identity: no read at all; unchanged bytes: no parse; unless a
    post it links to is not what it was. A read or parse that raises costs this post
    only: reported as an error, not cached, and its path added to `failed`."""
    identity = post.identity
    if cached is not None and cached.links and not reader.links_hold(cached.links):
        cached = None  # its body shows another post's old link or title
    if cached is not None and cached.same_file(identity):
        problems.replay(cached.problems)
        return cached.entry, None, cached.problems, cached.links
    # a log of this post's own problems, to cache with it
    reader.problems = ProblemLog(echo=problems.echo)
    try:
        data = reader.read_bytes(post)
        if data is None:
            problems.items.extend(reader.problems.items)
            return None, None, tuple(reader.problems.items), ()
        content_digest = digest(data)
        if cached is not None and cached.digest == content_digest:
            problems.replay(cached.problems)
            entry, found, links = cached.entry, cached.problems, cached.links
        else:
            entry = _parse(reader, post, data)
            found = tuple(reader.problems.items)
            links = tuple(reader.links)
            problems.items.extend(found)
    except Exception as exc:  # noqa: BLE001 (one post's failure costs that post only)
        # not cached: the failure need not be the file's (the next build tries again)
        reader.problems.error(f"{display(post.rel)}:1", f"cannot be read "
                              f"({type(exc).__name__}: {exc}); skipped")
        problems.items.extend(reader.problems.items)
        if failed is not None:
            failed.append(post.rel)
        return None, None, tuple(reader.problems.items), ()
    return entry, CachedPost(*identity, content_digest, entry, found, links), found, links

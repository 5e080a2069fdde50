"""Reading post files: each changed post parsed once (in worker processes when there
are many), handed to the caller's `pack` as it is read, in post order."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

from aggregator import progress
from aggregator.config import Config
from aggregator.forking import PARALLEL_THRESHOLD, can_fork, chunk_ranges, map_inherited
from aggregator.model import Entry
from aggregator.problems import Problem, ProblemLog
from aggregator.sources.content import PostReader
from aggregator.sources.prefetch import Prefetch
from aggregator.sources.walk import PostFile, display

Links = tuple[tuple[str, object], ...]
Packed = TypeVar("Packed")


class Read(NamedTuple):
    """What reading one post file gave."""

    post: PostFile
    content: str  # digest of its bytes ('' when they could not be read)
    entry: Entry | None  # None: no entry (its problems say why), or `same`
    problems: tuple[Problem, ...]
    links: Links  # what its post_link/post_path tags found
    same: bool = False  # its bytes are the ones known: not parsed again
    again: bool = False  # not read, for a reason that need not be the file's: retry


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# Read in a worker, an undated post cannot ask the state for its first-seen time: it
# gets this impossible date (parse_date refuses years before 1970) and the parent
# puts the real one in.
_NOT_SEEN_YET = datetime(1900, 1, 1, tzinfo=UTC)


def read_posts(config: Config, posts: Sequence[PostFile], known: list[str | None],
               first_seen: Callable[[str], datetime], pack: Callable[[Read], Packed],
               workers: int = 1, every_post: Sequence[PostFile] | None = None
               ) -> Iterator[Packed]:
    """pack(read) of each post, in order. `known`: the digest of the bytes each post
    was last read from (equal bytes are not parsed again). `every_post`: the walk, for
    post_link's slugs (None: walked when a post links to another). Problems are not
    reported: they are in each Read, for the caller to keep and replay."""
    if workers > 1 and len(posts) >= PARALLEL_THRESHOLD and can_fork():
        ranges = chunk_ranges(len(posts), workers, 250)
        with progress.bar("posts read", len(posts), "post") as shown:
            for (start, stop), results in zip(ranges, map_inherited(
                    _read_range, (config, posts, known, pack, every_post), ranges, workers),
                    strict=True):
                for result in results:
                    if isinstance(result, Read):  # undated: its first-seen time is ours
                        yield pack(_seen(result, first_seen))
                    else:
                        yield result
                shown.advance(stop - start)
        return
    reader = PostReader(config, ProblemLog(echo=False), first_seen, posts=every_post)
    with Prefetch(config, posts if len(posts) >= PARALLEL_THRESHOLD else ()):
        for post, content in zip(posts, known, strict=True):
            yield pack(read_one(reader, post, content))


def _seen(read: Read, first_seen: Callable[[str], datetime]) -> Read:
    entry = read.entry
    assert entry is not None
    return read._replace(entry=replace(entry, updated=first_seen(entry.id)))


def _read_range(shared: tuple[Config, Sequence[PostFile], list[str | None],
                              Callable[[Read], Packed], Sequence[PostFile] | None],
                bounds: tuple[int, int]) -> list[Packed | Read]:
    """In a worker: read and pack posts[start:stop]; an undated post's Read comes back
    unpacked (only the parent can give it its first-seen time)."""
    config, posts, known, pack, every_post = shared
    start, stop = bounds
    logging.getLogger("aggregator").disabled = True
    # one reader for the chunk (it remembers each folder's quoted path)
    reader = PostReader(config, ProblemLog(), lambda _id: _NOT_SEEN_YET, posts=every_post)
    out: list[Packed | Read] = []
    with Prefetch(config, posts[start:stop]):
        for post, content in zip(posts[start:stop], known[start:stop], strict=True):
            read = read_one(reader, post, content)
            entry = read.entry
            out.append(read if entry is not None and entry.updated == _NOT_SEEN_YET
                       else pack(read))
    return out


def read_one(reader: PostReader, post: PostFile, known: str | None) -> Read:
    """Read and parse one post (its bytes only hashed when they are `known`). A read
    or parse that raises costs this post only: reported as an error, to be retried."""
    reader.problems = ProblemLog(echo=False)
    try:
        data = reader.read_bytes(post)
        if data is None:  # unreadable now: read again next time
            return Read(post, "", None, tuple(reader.problems.items), ())
        content = digest(data)
        if content == known:
            return Read(post, content, None, (), (), same=True)
        entry = reader.parse(post, data)
        return Read(post, content, entry, tuple(reader.problems.items), tuple(reader.links))
    except Exception as exc:  # noqa: BLE001 (one post's failure costs that post only)
        reader.problems.error(f"{display(post.rel)}:1", f"cannot be read "
                              f"({type(exc).__name__}: {exc}); skipped")
        return Read(post, "", None, tuple(reader.problems.items), (), again=True)


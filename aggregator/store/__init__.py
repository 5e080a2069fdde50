"""The entry store: every entry a row, a node's feed a query (see docs/entry-store.md).

`EntryStore` is what the build stages use; `sqlite.SQLiteStore` is the embedded
implementation, `postgres.PostgresStore` the one in PostgreSQL (`state.url`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import lz4.block

from aggregator.config import Config
from aggregator.state.last_build import LastBuild
from aggregator.store.rows import Names, Row

# (rid, render key, updated, updated as written) of each entry of a feed, in order
FeedRow = tuple[int, str, float, str]
# An entry's renders, each packed (pack_render): its Atom entry, RSS item, JSON Feed
# item and page card (empty for a format or page not published), in RENDERS' order.
RENDERS = ("atom", "rss", "json", "page")
Render = tuple[bytes, bytes, bytes, bytes]
RenderRow = tuple[str, bytes, bytes, bytes, bytes]  # (render key, *Render)


# rid → (packed entry, probed type, probed length)
Packed = dict[int, tuple[bytes, str | None, int | None]]
# what a worker process opens to read entries: the SQLite file or the PostgreSQL URL
ReaderSource = Path | str


class StoreUnavailable(Exception):
    """The store's database cannot be used (PostgreSQL: unreachable, refused)."""


class EntryReader(Protocol):
    """A worker process's own read-only access to the entries (open_reader)."""

    def packed(self, rids: list[int]) -> Packed: ...
    def rendered(self, keys: Iterable[str]) -> dict[str, Render]: ...
    def close(self) -> None: ...


class EntryStore(Protocol):
    file: Path | None  # the store's file (None: in memory, or not a file)

    @property
    def readers(self) -> ReaderSource | None:
        """What worker processes open (open_reader) to read entries; None: none can."""

    def close(self) -> None: ...
    def lost(self, exc: BaseException) -> bool:
        """Whether `exc` says the store's database went away (a network database's
        connection lost mid-build): the build fails, what it did not publish stays."""
        ...
    def meta(self, name: str) -> str | None: ...
    def set_meta(self, name: str, value: str | None) -> None: ...
    def invalidate_if_changed(self, name: str, fingerprint: str, *tables: str) -> bool: ...

    # post files
    def post_identities(self) -> Iterator[tuple[bytes, bytes, int, int, int, str]]: ...
    def post_count(self) -> int: ...
    def folder_prints(self) -> dict[tuple[bytes, bytes], tuple[bytes, int]]: ...
    def folder_posts(self, folders: list[tuple[bytes, bytes]]
                     ) -> list[tuple[bytes, bytes, int, int, int, str]]: ...
    def store_folders(self, rows: Iterable[tuple[bytes, bytes, bytes, int]]) -> None: ...
    def post_contents(self, keys: list[tuple[bytes, bytes]]
                      ) -> dict[tuple[bytes, bytes], str]: ...
    def linking_posts(self) -> list[tuple[bytes, bytes, tuple[int, int, int], bytes]]: ...
    def move_posts(self, moves: list[tuple[bytes, bytes, tuple[int, int, int]]]) -> None: ...

    # entries
    def upsert(self, rows: Iterable[Row]) -> None: ...
    def delete(self, keys: Iterable[tuple[bytes, bytes]]) -> None: ...
    def upstream_rows(self) -> dict[bytes, tuple[int, str]]: ...
    def set_seq(self, seqs: list[tuple[int, bytes]]) -> None: ...
    def duplicates(self) -> list[tuple[int, bytes, bytes, int, int, bytes]]: ...
    def set_winners(self, winners: dict[int, bool]) -> None: ...
    def probe_candidates(self) -> list[tuple[int, str, str | None, int | None, str]]: ...
    def set_probes(self, rows: list[tuple[int, str | None, int | None, str]]) -> None: ...
    def packed(self, rids: list[int]) -> Packed: ...

    # what a build reports
    def post_problems(self) -> Iterator[bytes]: ...
    def counts(self) -> tuple[int, int, int]: ...
    def unknown_images(self) -> list[str]: ...

    # nodes and feeds
    def nodes(self) -> list[tuple[int, Names, int]]: ...
    def feed(self, nid: int, limit: int) -> list[FeedRow]: ...
    def dirty(self) -> set[int]: ...
    def mark_dirty(self) -> None: ...
    def clear_dirty(self, nids: Iterable[int]) -> None: ...

    # renders, published feeds, the last complete build
    def rendered(self, keys: Iterable[str]) -> dict[str, Render]: ...
    def rendered_keys(self, keys: Iterable[str]) -> set[str]: ...
    def keeps_renders(self) -> bool: ...
    def store_rendered(self, rows: Iterable[RenderRow]) -> None: ...
    def drop_unused_renders(self) -> None: ...
    def feed_states(self) -> dict[str, tuple[str, int, int]]: ...
    def update_feed_states(self, rows: Iterable[tuple[str, str, int, int]],
                           gone: Iterable[str]) -> None: ...
    def last_build(self) -> LastBuild | None: ...
    def store_last_build(self, record: LastBuild | None) -> None: ...


def open_store(config: Config) -> EntryStore:
    """The store in the PostgreSQL database of `state.url` when it is set; else the
    one beside the state file (`<state>.cache`), or one in memory when the state is
    (or its folder cannot be made)."""
    if config.state_url is not None:
        from aggregator.store.postgres import PostgresStore

        return PostgresStore(config.state_url)
    from aggregator.store.sqlite import SQLiteStore

    if str(config.state_path) == ":memory:":
        return SQLiteStore(None)
    try:
        config.state_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return SQLiteStore(None)
    return SQLiteStore(config.state_path.with_name(config.state_path.name + ".cache"))


def open_reader(source: ReaderSource) -> EntryReader:
    """A worker's own connection to the store that `source` names."""
    if isinstance(source, Path):
        from aggregator.store.sqlite import SQLiteReader

        return SQLiteReader(source)
    from aggregator.store.postgres import PostgresReader

    return PostgresReader(source)


def pack_render(data: bytes) -> bytes:
    """An entry's rendered bytes as the store keeps them and a build holds them (LZ4:
    a 6 KB render packs in ~15 us and unpacks in ~5)."""
    return bytes(lz4.block.compress(data))


def unpack_render(blob: bytes) -> bytes:
    return bytes(lz4.block.decompress(blob))


def unpacked_size(blob: bytes) -> int:
    """The length unpack_render will give (LZ4 block format keeps it in front)."""
    return int.from_bytes(blob[:4], "little")

"""A service's rebuild for a few changed posts, patched into its last build.

A full build re-runs every stage over every entry: at 10k posts that is ~0.3 s of
dict building, sorting and tree walking even when one post changed. A session keeps
what its last build produced (entries, merge maps, the category tree) in a
`SessionIndex`; when the watcher names the changed files, their old entries are taken
out of it and the new ones put in, and only the feeds of the nodes they sit in are
planned again. Anything the patch cannot do exactly as a full build would (a merged
duplicate, a new or emptied category, a change in the state) returns None, and the
caller does the full build. tests/test_cache.py checks patched builds against clean
ones.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import functools
import hashlib
import pickle
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, BinaryIO

from aggregator.model import Entry, Image
from aggregator.problems import Problem
from aggregator.source_keys import split_source
from aggregator.sources.walk import PostFile
from aggregator.state.cache import BlobRecords, CacheIncomplete
from aggregator.state.probes import unknown_image
from aggregator.tree.categories import Node

Names = tuple[str, ...]


@dataclass
class SessionIndex:
    generation: str  # of the state when the build read it: upstream entries, probes
    posts: dict[str, Entry]  # source → the entry its post gave (probes applied)
    problems: dict[str, tuple[Problem, ...]]  # source → its problems, non-empty only
    merged: dict[str, Entry]  # id → the published entry
    link_owner: dict[str, str]  # link → id of the published entry that has it
    root: Node
    nodes: dict[Names, Node]
    totals: dict[Names, int]  # node → entries in it and below it
    unknown: dict[str, str]  # source → its image URL whose type a probe must tell

    @classmethod
    def of(cls, generation: str, posts: dict[str, Entry],
           problems: dict[str, tuple[Problem, ...]], merged: list[Entry],
           root: Node) -> SessionIndex:
        nodes = {node.names: node for node in root.walk()}
        totals = dict.fromkeys(nodes, 0)
        for entry in merged:
            _count(totals, entry, +1)
        unknown = {source: url for source, entry in posts.items()
                   if (url := unknown_image(entry))}
        return cls(generation, posts, problems, {e.id: e for e in merged},
                   {e.link: e.id for e in merged if e.link}, root, nodes, totals, unknown)

    def patch(self, changes: dict[str, Entry | None]) -> set[Names] | None:
        """Replace each changed source's entry (None: the post is gone or unreadable).
        Returns the nodes whose feeds may differ, or None (index untouched) when only a
        full build can tell."""
        old = {source: self.posts.get(source) for source in changes}
        leaving = {e.id for e in old.values() if e is not None}
        arriving: dict[str, Entry] = {}
        links: dict[str, str] = {}
        delta: dict[Names, int] = {}
        for source, entry in changes.items():
            before = old[source]
            if before is not None:
                if self.merged.get(before.id) is not before:
                    return None  # it lost a merge last time: the winner may change
                _count(delta, before, -1)
            if entry is None:
                continue
            clash = self.merged.get(entry.id)
            if entry.id in arriving or (clash is not None and clash.id not in leaving):
                return None  # a duplicate id: merge_duplicates decides
            if entry.link:
                owner = links.get(entry.link) or self.link_owner.get(entry.link)
                if owner is not None and owner not in leaving or entry.link in links:
                    return None  # a duplicate link
                links[entry.link] = entry.id
            arriving[entry.id] = entry
            _count(delta, entry, +1)
        for names, change in delta.items():
            if names not in self.nodes or self.totals[names] + change <= 0:
                return None  # a category appears or empties: the tree's shape changes
        dirty: set[Names] = set()
        for source in changes:
            before = old[source]
            if before is not None:
                for path in before.categories:
                    self.nodes[path].discard(before)
                del self.merged[before.id]
                if before.link and self.link_owner.get(before.link) == before.id:
                    del self.link_owner[before.link]
                dirty.update(_nodes_of(before))
                del self.posts[source]
                self.unknown.pop(source, None)
        for source, entry in changes.items():
            if entry is not None:
                for path in entry.categories:
                    self.nodes[path].add(entry)
                nodes = _nodes_of(entry)
                if entry.more_categories:
                    for names in nodes:
                        self.nodes[names].shared = True
                self.merged[entry.id] = entry
                if entry.link:
                    self.link_owner[entry.link] = entry.id
                dirty.update(nodes)
                self.posts[source] = entry
                if url := unknown_image(entry):
                    self.unknown[source] = url
        for names, change in delta.items():
            self.totals[names] += change
        for names in dirty:
            self.nodes[names].changed()  # their merged entries are out of date
        return dirty

    def content_key(self, settings: str) -> str:
        """What this index was made from: the settings, the state's generation and
        every post's entry (its digest covers every field but the image, which probes
        change under the generation anyway) and problems. The merged entries, the tree
        and the counts follow from those. Two indexes with one key are equal."""
        hashed = hashlib.blake2b(f"{SavedSession.FORMAT}\0{settings}\0{self.generation}"
                                 .encode(), digest_size=16)
        for source, entry in self.posts.items():
            image = entry.image
            hashed.update(f"\0{source}\0{entry.digest}\0{image.url}\0{image.mime_type}\0"
                          f"{image.length}".encode("utf-8", "surrogatepass") if image else
                          f"\0{source}\0{entry.digest}".encode("utf-8", "surrogatepass"))
        hashed.update(repr(sorted(self.problems.items())).encode("utf-8", "surrogatepass"))
        return hashed.hexdigest()

    def unknown_images(self) -> list[str]:
        return list(self.unknown.values())  # for `fetch` to probe: any order will do

    def post_count(self) -> int:
        return len(self.posts)

    def entry_count(self) -> int:
        return len(self.merged)

    def prepare(self, changes: dict[str, Entry | None]) -> None:
        """Have in memory what patch(changes) looks at (see PartialIndex)."""

    def load_nodes(self, nodes: list[Node], limit: int) -> None:
        """Have in memory what these nodes' entries(limit) are made of (see
        PartialIndex)."""

    def ordered_problems(self) -> list[Problem]:
        return [p for source in sorted(self.problems, key=_post_order)
                for p in self.problems[source]]


def _post_order(source: str) -> tuple[str, str]:
    """PostFile.order from the post's source key (a map of them was ~15 MB at 100k
    posts)."""
    root, rel = split_source(source)
    return rel, root


def _nodes_of(entry: Entry) -> set[Names] | list[Names]:
    """The nodes whose feeds hold the entry: those on its paths from the root."""
    category = entry.category
    if not entry.more_categories:
        return [category[:depth] for depth in range(len(category) + 1)]
    return {path[:depth] for path in entry.categories for depth in range(len(path) + 1)}


def _count(delta: dict[Names, int], entry: Entry, change: int) -> None:
    for names in _nodes_of(entry):
        delta[names] = delta.get(names, 0) + change


@dataclass
class SavedSession:
    """A one-off build's SessionIndex kept in the build cache, so that the next
    `aggregator build` that finds only a few changed files patches them in too."""

    settings: str  # digest of the config and versions it was built with
    posts: SavedPosts  # the post files as that build found them
    counts: dict[Names, int]  # entries in each node's feed, as published
    format: int  # FORMAT when saved: a record of another layout is not used
    # publish()'s memo: index.html and feeds.opml for the tree's shape, so a patched
    # build that leaves the shape alone does not make them again (~50 ms at 10k posts)
    publish_memo: dict[str, Any] = dataclasses.field(default_factory=dict)

    FORMAT = 9

    def dump(self, out: BinaryIO) -> None:
        """This record, pickled into `out`; the index it goes with is saved apart
        (dump_index): a build that finds many changed files reads this alone and does a
        full build, where it used to unpickle the index too (~2 s at 100k posts)."""
        pickle.dump(self, out, protocol=pickle.HIGHEST_PROTOCOL)


def dump_index(index: SessionIndex, out: BinaryIO) -> list[int]:
    """The index pickled into `out` in parts, with every entry's html left out (a
    render reads it again from the post file: the index of 100k posts would otherwise
    carry 500 MB of html). Written to a file, not built in memory: the ~100 MB that
    100k posts still take, and SQLite's copy of them, were most of a cold build's peak
    memory. (Saved flat instead, each entry once and the tree rebuilt on load, used as
    much memory and made an edit at 100k posts 3 s slower.)

    Record 0 is a spine: the tree without entries, counts, problems, unknown images
    and where each source, id and link is. Record 1 + n is part n: a top-level
    category's posts, merged entries, links and nodes' own entries and merges (the
    last part: the root's own). Returns where each record begins (the cache stores
    each in a blob of its own). An edit loads the spine and the parts it touches
    (load_index): unpickling all 100k entries was ~0.5 s of a 1.3 s CLI edit at 100k
    posts."""
    tops = list(index.root.children)
    part_of = _part_numbers(tops)
    root_part = len(tops)

    def part(entry: Entry) -> int:
        return part_of[entry.category[0]] if entry.category else root_part

    parts = [_Part({}, {}, {}, {}, {}) for _ in range(root_part + 1)]
    source_parts = [part(entry) for entry in index.posts.values()]
    for (source, entry), number in zip(index.posts.items(), source_parts, strict=True):
        parts[number].posts[source] = entry
    # An entry in several top-level categories is owned by nodes of each one's part:
    # its source is found in all of them (a patch takes it out of every node).
    located, located_parts = list(index.posts), list(source_parts)
    for source, entry in index.posts.items():
        if entry.more_categories:
            for number in {part_of[path[0]] for path in entry.more_categories} - {part(entry)}:
                located.append(source)
                located_parts.append(number)
    id_parts = [part(entry) for entry in index.merged.values()]
    for (entry_id, entry), number in zip(index.merged.items(), id_parts, strict=True):
        parts[number].merged[entry_id] = entry
    link_parts = [part(index.merged[entry_id]) for entry_id in index.link_owner.values()]
    for (link, entry_id), number in zip(index.link_owner.items(), link_parts, strict=True):
        parts[number].link_owner[link] = entry_id
    for node in index.root.walk():
        piece = parts[part_of[node.names[0]] if node.names else root_part]
        if node.own:
            piece.own[node.names] = node.own
        if node.merge is not None and node.names:  # (the root's is remade by any patch)
            piece.merges[node.names] = node.merge
    # Each top-level node's merged entries as its feed holds them (at most max_items):
    # the root's feed is made of them, so an edit elsewhere need not load that part.
    # (None with max_items 0: that would be every entry again.)
    merged_tops = {top: node.merge if node.merge is not None and node.merge[0] > 0
                   else None for top, node in index.root.children.items()}
    spine = _Spine(index.generation, index.problems, index.totals, index.unknown,
                   index.root, tops, [(len(p.posts), len(p.merged)) for p in parts],
                   merged_tops, _Locator.of(located, located_parts),
                   _Locator.of(index.merged, id_parts),
                   _Locator.of(index.link_owner, link_parts))
    starts = [out.tell()]
    _SpinePickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(spine)
    for piece in parts:
        starts.append(out.tell())
        _LightPickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(piece)
    return starts


def load_index(records: BlobRecords | None) -> PartialIndex | None:
    """The index dump_index saved, with no part loaded yet; None when there is none or
    it is not one (another version's)."""
    if records is None:
        return None
    try:
        spine = records.load(0)
    except Exception:  # noqa: BLE001 (not ours to read: a full build)
        return None
    if not isinstance(spine, _Spine):
        return None
    return PartialIndex.of_spine(spine, records)


@dataclass
class _Part:
    posts: dict[str, Entry]
    merged: dict[str, Entry]
    link_owner: dict[str, str]
    own: dict[Names, list[Entry]]  # node → its own entries
    # node → its merged entries as last published (Node.merge): with max_items 0 a
    # top-level node's are all of its entries, which the root's feed would merge again
    merges: dict[Names, tuple[int, list[Entry]]]


@dataclass
class _Spine:
    generation: str
    problems: dict[str, tuple[Problem, ...]]
    totals: dict[Names, int]
    unknown: dict[str, str]
    root: Node  # every node, without entries
    tops: list[str]  # part number → its top-level category
    sizes: list[tuple[int, int]]  # part number → (posts, merged entries) in it
    merged_tops: dict[str, tuple[int, list[Entry]] | None]
    sources: _Locator
    ids: _Locator
    links: _Locator

    @functools.cached_property
    def part_numbers(self) -> dict[str, int]:
        """Top-level category → its part number."""
        return _part_numbers(self.tops)

    @property
    def root_part(self) -> int:
        """The number of the part with the root's own entries (the last)."""
        return len(self.tops)


def _part_numbers(tops: list[str]) -> dict[str, int]:
    """Each top-level category's part number: its place among the root's children
    (the root's own entries are the part after them)."""
    return {top: number for number, top in enumerate(tops)}


class _Locator:
    """Which parts hold a key: a 32-bit hash of each key and its part, in two arrays
    sorted by hash (~17 steps of a bisection; a scan of 100k hashes took ~1.2 ms, and
    100 new posts ask 300 times). A hash that keys of several parts share names them
    all (a part loaded for nothing is only slower)."""

    def __init__(self, hashes: array.array[int], parts: array.array[int]) -> None:
        self.hashes, self.parts = hashes, parts

    @classmethod
    def of(cls, keys: Iterable[str], parts: list[int]) -> _Locator:
        """`keys` and the part of each, in the same order."""
        hashes = list(map(_key_hash, keys))
        order = sorted(range(len(hashes)), key=hashes.__getitem__)
        return cls(array.array("I", [hashes[i] for i in order]),
                   array.array("I", [parts[i] for i in order]))

    def parts_of(self, key: str) -> set[int]:
        wanted, hashes = _key_hash(key), self.hashes
        found: set[int] = set()
        at = bisect.bisect_left(hashes, wanted)
        while at < len(hashes) and hashes[at] == wanted:
            found.add(self.parts[at])
            at += 1
        return found


def _key_hash(key: str) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogatepass"))


@dataclass
class PartialIndex(SessionIndex):
    """A saved index with only some of its parts (top-level categories) in memory:
    `prepare` and `load_nodes` load what a patch and its publish look at. Until then
    the posts, merged entries and links of the other parts are missing from their
    maps, and their nodes own no entries."""

    records: BlobRecords | None = None
    spine: _Spine | None = None
    loaded: set[int] = dataclasses.field(default_factory=set)
    # called when a part cannot be read, before CacheIncomplete is raised: the saved
    # index goes, so that the full build done instead does not read it again
    forget: Callable[[], None] | None = None

    @classmethod
    def of_spine(cls, spine: _Spine, records: BlobRecords) -> PartialIndex:
        root = spine.root
        for top, merged in spine.merged_tops.items():
            root.children[top].restore_merge(merged)
        return cls(spine.generation, {}, spine.problems, {}, {}, root,
                   {node.names: node for node in root.walk()}, spine.totals, spine.unknown,
                   records, spine)

    def post_count(self) -> int:
        assert self.spine is not None
        return len(self.posts) + sum(size[0] for number, size in enumerate(self.spine.sizes)
                                     if number not in self.loaded)

    def entry_count(self) -> int:
        assert self.spine is not None
        return len(self.merged) + sum(size[1] for number, size in enumerate(self.spine.sizes)
                                      if number not in self.loaded)

    def prepare(self, changes: dict[str, Entry | None]) -> None:
        """Load the parts that hold the changed sources' entries, any entry with the
        new entries' ids or links, and their categories."""
        spine = self.spine
        assert spine is not None
        wanted = {spine.root_part}
        numbers = spine.part_numbers
        for source, entry in changes.items():
            wanted |= spine.sources.parts_of(source)
            if entry is None:
                continue
            wanted.update(numbers[path[0]] for path in entry.categories
                          if path and path[0] in numbers)
            wanted |= spine.ids.parts_of(entry.id)
            if entry.link:
                wanted |= spine.links.parts_of(entry.link)
        self._load(wanted)

    def load_nodes(self, nodes: list[Node], limit: int) -> None:
        spine = self.spine
        assert spine is not None
        numbers = spine.part_numbers
        wanted: set[int] = set()
        for node in nodes:
            if node.names:
                wanted.add(numbers[node.names[0]])
                continue
            wanted.add(spine.root_part)
            # the root's feed: from each top-level node's saved merge, or its part
            for top, child in self.root.children.items():
                merged = child.merge
                if numbers[top] not in self.loaded and (merged is None or merged[0] != limit):
                    wanted.add(numbers[top])
        self._load(wanted)

    def _load(self, numbers: set[int]) -> None:
        spine, records = self.spine, self.records
        assert spine is not None and records is not None
        for number in sorted(numbers - self.loaded):
            try:
                part = records.load(1 + number)
                posts, merged, links, own, merges = (
                    part.posts, part.merged, part.link_owner, part.own, part.merges)
            except Exception as exc:  # not a part (of this layout)
                if self.forget is not None:
                    self.forget()
                raise CacheIncomplete(f"saved index part {number} unreadable ({exc})") from exc
            self.posts.update(posts)
            self.merged.update(merged)
            self.link_owner.update(links)
            for names, entries in own.items():
                self.nodes[names].own = entries
            if number < spine.root_part:  # (its merge made of these entries, not copies)
                self.root.children[spine.tops[number]].restore_merge(None)
            for names, merge in merges.items():
                self.nodes[names].restore_merge(merge)
            self.loaded.add(number)


class _LightPickler(pickle.Pickler):
    """Pickles each post's entry as one flat tuple: its fields without the html, its
    image's fields and its dates' pickle states as plain ints. Pickled as themselves,
    the image (with its args tuple and state dict) and the dates (their state bytes and
    args tuples) were five more objects a post that the pickler's memo keeps alive to
    the end: 1.5M objects at 100k posts, whose memo table alone doubled to 64 MB."""

    def reducer_override(self, obj: object) -> Any:
        if type(obj) is Entry and obj.digest:  # a post's entry: its html is in its file
            fields = vars(obj)
            published, updated, image = obj.published, obj.updated, obj.image
            return _light_entry, (
                *_time_state(published),
                *((None, None) if updated is published else _time_state(updated)),
                *((image.url, image.mime_type, image.length) if image is not None
                  else (None, None, 0)),
                *[fields[name] for name in _LIGHT_FIELDS])
        return NotImplemented


class _SpinePickler(_LightPickler):
    """Pickles the tree's nodes without their entries (those are in the parts)."""

    def reducer_override(self, obj: object) -> Any:
        if type(obj) is Node:
            return _bare_node, (obj.names, obj.slugs, obj.children, obj.rel_dir, obj.shared)
        return super().reducer_override(obj)


def _bare_node(names: Names, slugs: Names, children: dict[str, Node], rel_dir: str,
               shared: bool) -> Node:
    return Node(names, slugs, children, rel_dir=rel_dir, shared=shared)


# every field but those _LightPickler spreads out, the html and the flag that says it
# is missing
_LIGHT_FIELDS = tuple(f.name for f in dataclasses.fields(Entry) if f.name not in (
    "published", "updated", "image", "html", "partial"))
_DATETIME: Any = datetime  # called with a pickle state, as pickle itself does


def _time_state(value: datetime | None) -> tuple[int | None, tzinfo | None]:
    """A datetime's pickle state (10 bytes) as an int (ints are not memoized), and its
    tzinfo (one object for all)."""
    if value is None:
        return None, None
    state: tuple[Any, ...] = value.__reduce_ex__(4)[1]  # type: ignore[assignment]
    return int.from_bytes(state[0], "big"), state[1] if len(state) > 1 else None


def _light_entry(published_state: int | None, published_zone: tzinfo | None,
                 updated_state: int | None, updated_zone: tzinfo | None,
                 image_url: str | None, image_type: str | None, image_length: int,
                 *values: Any) -> Entry:
    """The entry without its html (as pickle itself restores a dataclass: no __init__,
    which costs ~7 us a frozen entry)."""
    published = None if published_state is None else \
        _DATETIME(published_state.to_bytes(10, "big"), published_zone)
    updated = published if updated_state is None else \
        _DATETIME(updated_state.to_bytes(10, "big"), updated_zone)
    image = None
    if image_url is not None:
        image = object.__new__(Image)
        vars(image).update(url=image_url, mime_type=image_type, length=image_length)
    entry: Entry = object.__new__(Entry)
    vars(entry).update(zip(_LIGHT_FIELDS, values, strict=True), published=published,
                       updated=updated, image=image, html="", partial=True)
    return entry


class SavedPosts:
    """The walk a saved session was built from, as flat lists: unpickling 100k PostFile
    tuples took ~0.8 s of every patched CLI build at 100k posts, these ~0.15 s."""

    def __init__(self, posts: dict[str, PostFile]) -> None:
        roots: dict[Path, int] = {}  # the content dirs: a handful of Path objects
        self.locations = list(posts)
        self.rels = [post.rel for post in posts.values()]
        self.root_of = array.array("I", [roots.setdefault(post.root, len(roots))
                                         for post in posts.values()])
        self.roots = list(roots)
        self.identities = array.array("q", [part for post in posts.values()
                                            for part in post.identity])

    def changed(self, now: dict[str, PostFile],
                walked: list[PostFile] | None = None) -> set[str]:
        """Post files added, removed or changed (identity, rel or root) since. `walked`:
        the same posts in walk order, for the bulk comparison (changed_in_place)."""
        if walked is not None and (in_place := self.changed_in_place(walked)) is not None:
            return in_place
        changed: set[str] = set()
        ids, rels, root_of = self.identities, self.rels, self.root_of
        # Each pair of root Paths is compared once (comparing them a post took ~0.5 s
        # at 100k posts).
        same_root: dict[tuple[int, int], bool] = {}
        matched = 0
        for i, location in enumerate(self.locations):
            post = now.get(location)
            if post is None:
                changed.add(location)
                continue
            matched += 1
            identity, j = post.identity, 3 * i
            if identity[0] != ids[j] or identity[1] != ids[j + 1] or identity[2] != ids[j + 2] \
                    or post.rel != rels[i]:
                changed.add(location)
                continue
            pair = (root_of[i], id(post.root))
            same = same_root.get(pair)
            if same is None:
                same = same_root[pair] = self.roots[root_of[i]] == post.root
            if not same:
                changed.add(location)
        if matched != len(now):
            changed.update(now.keys() - set(self.locations))
        return changed

    def changed_in_place(self, walked: list[PostFile]) -> set[str] | None:
        """changed() for the usual case, in bulk: the walk found the very same files,
        in the same order, under one content dir, and only identities may differ. The
        identity arrays are compared by halves (memcmp), so k edits cost ~k log n
        comparisons instead of a Python loop over every post (~0.4 s at 100k). None
        when files were added, removed or moved, or there are several content dirs."""
        if len(walked) != len(self.locations) or len(self.roots) != 1 or not walked:
            return None
        root = walked[0].root
        if root != self.roots[0] or any(post.root is not root for post in walked):
            return None
        if [post.location for post in walked] != self.locations \
                or [post.rel for post in walked] != self.rels:
            return None
        now = array.array("q", [part for post in walked for part in post.identity]).tobytes()
        then = self.identities.tobytes()
        changed: set[str] = set()
        ranges = [(0, len(walked))]
        width = 3 * self.identities.itemsize  # bytes a post
        while ranges:
            low, high = ranges.pop()
            if now[low * width:high * width] == then[low * width:high * width]:
                continue
            if high - low <= 8:
                changed.update(self.locations[i] for i in range(low, high)
                               if now[i * width:(i + 1) * width]
                               != then[i * width:(i + 1) * width])
                continue
            middle = (low + high) // 2
            ranges += [(low, middle), (middle, high)]
        return changed

    def before(self, locations: set[str]) -> dict[str, PostFile | None]:
        """The saved posts at these locations (None: there was none)."""
        found: dict[str, PostFile | None] = dict.fromkeys(locations)
        ids = self.identities
        for i, location in enumerate(self.locations):
            if location in found:
                found[location] = PostFile(location, self.rels[i], self.roots[self.root_of[i]],
                                           (ids[3 * i], ids[3 * i + 1], ids[3 * i + 2]))
        return found

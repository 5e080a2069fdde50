"""An entry as a store row: the columns a build queries (ids, links, sort stamp,
category paths, render key) and the entry itself, packed with its html.

Made in the read workers (pickling and compressing there, not in the parent) and by
the parent for upstream entries; the store only moves the bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import marshal
import pickle
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import NamedTuple

import lz4.block

from aggregator.model import Enclosure, Entry, Image
from aggregator.problems import Problem

Names = tuple[str, ...]
# what a post's post_link/post_path tags found: (slug, the post's title and url, or None)
Links = tuple[tuple[str, object], ...]

# identity of a post file whose read failed in a way that need not be the file's: the
# next build reads it again
READ_AGAIN = (-1, -1, -1)


class Row(NamedTuple):
    """One entry (or one post file that gave none) as the store keeps it."""

    key: bytes  # a post's relative path; an upstream entry's source and id
    root: bytes  # a post's content dir; b"" for an upstream entry
    seq: int  # an upstream entry's place among them (ties of the merge); 0 for posts
    size: int  # the post file's identity when read (0, 0, 0 upstream)
    mtime_ns: int
    inode: int
    content: str  # digest of the post file's bytes ('' upstream)
    id: bytes | None  # None: the post gave no entry (its problems say why)
    link: bytes | None
    updated: float  # the merge ranks by it
    updated_iso: str  # the feed head's `updated` is the newest entry's, as written
    undated: int  # sort stamp, as model.sort_key: undated below dated,
    neg_stamp: float  # then newest first,
    nodes: bytes  # its category paths (JSON)
    digest: str  # of every field of the entry, its html included
    rkey: str  # its render's key: the digest and the image (a probe may fill it in)
    probe_url: str | None  # its image URL when the type is unknown (a probe may tell)
    packed: bytes | None  # the entry with its html (pack_entry)
    problems: bytes | None  # the problems reported while reading it (pickled)
    links: bytes | None  # what its post_link tags found (pickled), None: none
    probe_mime: str | None = None  # the image type a probe told (None: none did)
    probe_len: int | None = None


def encode(text: str) -> bytes:
    """Text as the store compares it: UTF-8 bytes order as Python orders code points
    (lone surrogates of undecodable file names included)."""
    return text.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def node_key(names: Names) -> bytes:
    return encode(json.dumps(names, ensure_ascii=False))


def node_names(key: bytes) -> Names:
    return tuple(json.loads(decode(key)))


def paths_of(nodes: bytes) -> list[Names]:
    """An entry's category paths from its `nodes` column."""
    return [tuple(path) for path in json.loads(decode(nodes))]


def prefixes(paths: list[Names]) -> list[Names]:
    """The nodes whose feeds hold an entry with these category paths, each once."""
    return list(dict.fromkeys(path[:depth] for path in paths for depth in range(len(path) + 1)))


def entry_digest(entry: Entry) -> str:
    """A digest of every field."""
    plain = _plain(entry)
    return _digest(plain, _marshalled(plain))


def _marshalled(plain: list[object]) -> bytes | None:
    """The entry's plain values marshalled in version 2, which writes equal values as
    equal bytes (later versions mark objects referenced twice, which depends on how
    the entry was built), or None when one is of a type marshal does not know."""
    try:
        return marshal.dumps(plain, 2)
    except ValueError:
        return None


def _digest(plain: list[object], marshalled: bytes | None) -> str:
    """The digest of an entry's values: of the bytes it is packed from when marshal
    knows every value, else of their repr."""
    data = marshalled if marshalled is not None else encode(repr(plain))
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def render_key(digest: str, image: Image | None) -> str:
    """What an entry's render is stored under (the render settings are the store's:
    it drops every render when they change)."""
    text = f"{digest}\0{image!r}" if image is not None else digest
    return hashlib.blake2b(encode(text), digest_size=16).hexdigest()


def pack_entry(entry: Entry) -> bytes:
    """The entry with its html, LZ4-compressed: its fields as plain values (a UTC
    date as its numbers, an image as a tuple) marshalled, which with the digest made
    from the same bytes takes under half the time of pickling the dataclass (whose
    dates and classes pickle by name); an entry holding anything else is pickled."""
    plain = _plain(entry)
    return _packed(entry, _marshalled(plain))


def _packed(entry: Entry, marshalled: bytes | None) -> bytes:
    data = _MARSHALLED + marshalled if marshalled is not None else \
        _PICKLED + pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)
    return bytes(lz4.block.compress(data))


def unpack_entry(data: bytes) -> Entry:
    raw = lz4.block.decompress(data)
    if raw[:1] == _PICKLED:
        entry = pickle.loads(raw[1:])
        assert isinstance(entry, Entry)
        return entry
    values = marshal.loads(raw[1:])
    fields = dict(zip(_FIELDS, values, strict=True))
    fields["published"] = _time(fields["published"])
    fields["updated"] = _time(fields["updated"])
    image = fields["image"]
    fields["image"] = Image(*image) if image is not None else None
    fields["enclosures"] = tuple(Enclosure(*item) for item in fields["enclosures"])
    entry = object.__new__(Entry)  # (as model.changed: no __init__ to run again)
    entry.__dict__.update(fields)
    return entry


_MARSHALLED, _PICKLED = b"m", b"p"
_FIELDS = tuple(f.name for f in fields(Entry))
_TIME = _FIELDS.index("published"), _FIELDS.index("updated")
_IMAGE, _ENCLOSURES = _FIELDS.index("image"), _FIELDS.index("enclosures")
_HTML = _FIELDS.index("html")


def _plain(entry: Entry) -> list[object]:
    """The entry's field values, in order, as marshal writes them."""
    values: list[object] = list(map(entry.__dict__.__getitem__, _FIELDS))
    values[_TIME[0]] = _plain_time(entry.published)
    values[_TIME[1]] = _plain_time(entry.updated)
    image = entry.image
    values[_IMAGE] = None if image is None else (image.url, image.mime_type, image.length)
    values[_ENCLOSURES] = tuple((item.url, item.mime_type, item.length)
                                for item in entry.enclosures)
    return values


def _plain_time(value: datetime | None) -> tuple[int, ...] | bytes | None:
    """A UTC date as its numbers; another zone's pickled (its zone kept as it is)."""
    if value is None or value.tzinfo is not UTC:
        return None if value is None else pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return (value.year, value.month, value.day, value.hour, value.minute, value.second,
            value.microsecond, value.fold)


def _time(value: tuple[int, ...] | bytes | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        found = pickle.loads(value)
        assert isinstance(found, datetime)
        return found
    year, month, day, hour, minute, second, microsecond, fold = value
    return datetime(year, month, day, hour, minute, second, microsecond, UTC, fold=fold)


def pack_problems(problems: tuple[Problem, ...]) -> bytes | None:
    return pickle.dumps(problems, protocol=pickle.HIGHEST_PROTOCOL) if problems else None


def unpack_problems(data: bytes | None) -> tuple[Problem, ...]:
    if not data:
        return ()
    problems = pickle.loads(data)
    return problems if isinstance(problems, tuple) else ()


def unpack_links(data: bytes | None) -> Links:
    if not data:
        return ()
    links = pickle.loads(data)
    return links if isinstance(links, tuple) else ()


def probed(image: Image | None, mime: str | None, length: int) -> Image | None:
    """The image with a probe's type and length (when the probe told one)."""
    if image is None or mime is None:
        return image
    return Image(image.url, mime, length)


def entry_row(key: bytes, root: bytes, seq: int, identity: tuple[int, int, int],
              content: str, entry: Entry | None, problems: tuple[Problem, ...],
              links: Links, probe_url: str | None = None) -> Row:
    """The row of an entry (None: a post that gave none, kept for its problems)."""
    found = pack_problems(problems)
    linked = pickle.dumps(links, protocol=pickle.HIGHEST_PROTOCOL) if links else None
    if entry is None:
        return Row(key, root, seq, *identity, content, None, None, 0.0, "", 1, 0.0, b"[]",
                   "", "", None, None, found, linked)
    plain = _plain(entry)
    marshalled = _marshalled(plain)
    digest = _digest(plain, marshalled)
    stamp = (entry.published or entry.updated).timestamp()
    return Row(key, root, seq, *identity, content, encode(entry.id),
               encode(entry.link) if entry.link else None, entry.updated.timestamp(),
               entry.updated.isoformat(), 0 if entry.published is not None else 1, -stamp,
               _nodes_column(entry.categories), digest,
               render_key(digest, entry.image), probe_url, _packed(entry, marshalled), found,
               linked)


@functools.lru_cache(maxsize=4096)
def _nodes_column(categories: tuple[Names, ...]) -> bytes:
    """The `nodes` column of an entry in these category paths (most posts share theirs
    with the posts of their folder: made once)."""
    return encode(json.dumps(categories, ensure_ascii=False))


def with_probe(row: Row, mime: str | None, length: int | None) -> Row:
    """The row with the image type and length a probe told (mime None: none did)."""
    if mime is None or row.probe_url is None:
        return row
    return row._replace(probe_mime=mime, probe_len=length,
                        rkey=render_key(row.digest, Image(row.probe_url, mime, length or 0)))


def entry_of(packed: bytes, mime: str | None, length: int | None) -> Entry:
    """A row's entry, with the image type a probe told (if any)."""
    entry = unpack_entry(packed)
    if mime is not None and entry.image is not None:
        entry = replace(entry, image=probed(entry.image, mime, length or 0))
    return entry

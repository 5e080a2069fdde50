"""What every entry store computes alike in Python: a batch's member changes, the
groups of entries sharing ids and links, the last build's record as stored."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from aggregator.state.last_build import LastBuild

# A member: (node, undated, stamp, rid). A node's feed reads them in key order, an
# equal (undated, stamp) ordered by the entries' ids (kept in the entry row only: at
# ~240 bytes an id, four copies of it made the member rows 40 % of the store).
Member = tuple[int, int, float, int]
# (rid, key, root, seq, winner, packed, id, link) of the entries whose `column` is one
# of `values`, by rid
RowsWhere = Callable[[str, list[Any]], dict[int, tuple[Any, ...]]]


class MemberChanges:
    """Member rows to add and remove, and each node's change of count."""

    def __init__(self) -> None:
        self.added: list[Member] = []
        self.removed: list[Member] = []
        self.counts: dict[int, int] = {}

    def add(self, nids: list[int], rid: int, undated: int, neg_stamp: float,
            change: int) -> None:
        """The entry `rid` goes into (change +1) or out of (-1) the nodes `nids`."""
        member = self.added if change > 0 else self.removed
        counts = self.counts
        for nid in nids:
            member.append((nid, undated, neg_stamp, rid))
            counts[nid] = counts.get(nid, 0) + change


def follow_groups(seeds: dict[int, tuple[Any, ...]], rows_where: RowsWhere
                  ) -> list[tuple[Any, ...]]:
    """(rid, key, root, seq, winner, packed) of the seeds and of every entry sharing an
    id or a link with them, through the ids and links of what is found, until the
    groups hold nothing more."""
    found = dict(seeds)
    ids: set[bytes] = set()
    links: set[bytes] = set()
    new = dict(found)
    while new:
        new_ids = {row[6] for row in new.values()} - ids
        new_links = {row[7] for row in new.values() if row[7] is not None} - links
        ids |= new_ids
        links |= new_links
        more = rows_where("id", list(new_ids)) | rows_where("link", list(new_links))
        new = {rid: row for rid, row in more.items() if rid not in found}
        found.update(new)
    return [row[:6] for row in found.values()]


def pack_record(record: LastBuild) -> bytes:
    return pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_record(data: bytes) -> LastBuild | None:
    try:
        record = pickle.loads(data)
    except Exception:  # noqa: BLE001 (another version's record: a full build)
        return None
    return record if isinstance(record, LastBuild) else None

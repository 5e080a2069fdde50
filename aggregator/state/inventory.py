"""What the state file held when it was last closed: `<state>.inventory`, a few lines
of JSON next to it.

SQLite takes an empty file for a new, empty database, so a state truncated to 0 bytes
(or deleted, or replaced) looks like a first run. The inventory tells the two apart:
it names the state file by its random generation token and counts what it held. A
state whose token differs from the inventory's, while the inventory counted stored
entries or first-seen times, is a lost state; no inventory, or one that counted
nothing, is a first run (or one killed before its first commit): nothing was lost.

It is rewritten only when the state's generation moved since it was read, so a build
that changed nothing in the state writes nothing here.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from aggregator.state.database import Database


@dataclass(frozen=True)
class Inventory:
    generation: str  # "token:counter" (StateStore.generation)
    first_seen: int = 0
    upstream_entries: int = 0
    sources: int = 0  # upstream sources with stored entries
    written_posts: int = 0

    @property
    def token(self) -> str:
        return self.generation.partition(":")[0]

    @property
    def held_anything(self) -> bool:
        return bool(self.first_seen or self.upstream_entries or self.written_posts)

    def describe(self) -> str:
        """What it held, in words: "120 upstream entries of 3 sources, 4 first-seen
        times"."""
        parts = []
        if self.upstream_entries:
            parts.append(f"{_count(self.upstream_entries, 'upstream entry', 'upstream entries')}"
                         f" of {_count(self.sources, 'source', 'sources')}")
        if self.first_seen:
            parts.append(_count(self.first_seen, "first-seen time", "first-seen times"))
        if self.written_posts:
            parts.append("the record of " + _count(self.written_posts, "post", "posts") +
                         " write_posts wrote")
        return ", ".join(parts) or "nothing"


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def inventory_path(state: Path) -> Path:
    return state.with_name(state.name + ".inventory")


def load(state: Path) -> Inventory | None:
    """The inventory next to `state`; None when there is none or it is unreadable
    (then nothing is known, as before a first run)."""
    try:
        data = json.loads(inventory_path(state).read_bytes())
        return Inventory(**data)
    except (OSError, ValueError, TypeError):
        return None


def count(db: Database, generation: str) -> Inventory:
    """What the state behind `db` holds now."""
    def one(sql: str) -> int:
        return int(db.execute(sql).fetchone()[0])

    return Inventory(
        generation,
        first_seen=one("SELECT count(*) FROM first_seen"),
        upstream_entries=one("SELECT count(*) FROM upstream_entry"),
        # (one index probe a source: a DISTINCT over every entry is ~10x slower)
        sources=one("SELECT count(*) FROM upstream_source WHERE EXISTS (SELECT 1 FROM "
                    "upstream_entry WHERE source_url = upstream_source.url)"),
        written_posts=one("SELECT count(*) FROM written_post"))


def save(state: Path, inventory: Inventory) -> bool:
    """Write it next to `state` (a temp file renamed over it); False when the folder
    cannot be written (the inventory is a safety net, never a reason to fail)."""
    target = inventory_path(state)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(asdict(inventory)) + "\n", encoding="utf-8")
        os.replace(temp, target)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        return False
    return True

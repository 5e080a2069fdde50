""""Nothing changed since the last build": answered from file stats alone.

A one-off build first walks the content dirs (it must, to see edits). When every post
file has the identity it had at the last successful build, the config and program are
the same, the state's generation counter has not moved (no new upstream entry, probe
or first-seen time) and every published file is still as that build left it, the
output would be byte-for-byte what is there: the build replays that build's problems
and stops, without loading a single entry: a no-op costs the walk. A build that goes
on forgets this record before it changes the entry store, and writes it once it has
published.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from aggregator.problems import Problem


@dataclass(frozen=True)
class LastBuild:
    inputs: str  # inputs_print() of the build
    outputs: tuple[tuple[str, int, int], ...]  # (rel, size, mtime_ns) of each published file
    posts_found: int
    posts_read: int
    entries: int
    feeds: int
    problems: tuple[Problem, ...]
    linkless: int | None = None  # entries published without a link

    def outputs_untouched(self, out_dir: Path) -> bool:
        """Every file the build published is still there, as it left it."""
        base = str(out_dir)
        for rel, size, mtime_ns in self.outputs:
            try:
                st = os.stat(os.path.join(base, rel))
            except OSError:
                return False
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                return False
        return True


def inputs_print(settings: tuple[str, ...], walk: str, walk_problems: list[Problem],
                 generation: str | None) -> str | None:
    """A digest of everything a build's output depends on: `settings` (the config and
    the program and library versions), the walk's digest (`sources.walk.walk_posts`)
    and problems, and the state's generation; None when the state is a temporary one."""
    if generation is None:
        return None
    return hashlib.blake2b(repr((settings, walk, walk_problems, generation)).encode(),
                           digest_size=16).hexdigest()


def published_files(out_dir: Path, rels: list[str]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for rel in rels:
        st = os.stat(os.path.join(str(out_dir), rel))
        out.append((rel, st.st_size, st.st_mtime_ns))
    return tuple(out)

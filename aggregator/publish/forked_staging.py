"""Staging a big build's feeds in forked worker processes, a top-level subtree a task.

Splicing renders into feeds is Python work, and writing them is system time: in one
process a cold build of 10k posts with `max_items: 0` spends ~5 s there on one core
of two. Each worker opens its own reader of the store, fetches a subtree's renders,
splices and stages its files as temp files (atomic.stage); the parent adopts them in
plan order and publishes them with the rest (Publisher.finish: one sync, the renames).
A worker never renames, so a kill still leaves every published file whole.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator import nofollow
from aggregator.config import Config
from aggregator.forking import can_fork, map_inherited
from aggregator.publish.atomic import PublishError, cannot_publish, stage, stage_together
from aggregator.publish.heads import FeedHeads
from aggregator.publish.splice import (
    Plan,
    SubtreeRenders,
    big_files,
    feed_file,
    in_turn,
    is_big,
    with_held,
)
from aggregator.store import RENDERS, ReaderSource, Render, open_reader

if TYPE_CHECKING:
    from aggregator.writers.feeds import FeedRenderer

# Entries written at least (summed over the files): below it a build stages its files
# in its own threads (starting two workers costs ~0.15 s).
FORK_AT_ENTRIES = 20_000

# A worker's answer for its subtree: (rel, temp file or None when the file there holds
# its bytes) of each file staged, and what stopped it (None: nothing did).
Staged = tuple[list[tuple[str, str | None]], str | None]


@dataclass(frozen=True)
class StagingJob:
    """What the workers inherit (never pickled): every file to write, grouped by
    top-level subtree, and what making their bytes takes."""

    config: Config
    renderer: FeedRenderer | None
    heads: FeedHeads
    frames: dict[str, tuple[bytes, bytes]]
    uses: dict[str | None, dict[str, int]]  # uses_by_subtree(..., stream_at)
    stream_at: int  # a node's files of this many entries or more: staged together
    failed: set[str]  # render keys of entries left out
    held: dict[str, Render]  # renders the store does not hold (those left out)
    source: ReaderSource
    groups: list[list[Plan]]


def worth_forking(todo_plans: list[Plan], workers: int) -> bool:
    return workers > 1 and can_fork() and \
        sum(len(plan[4]) for plan in todo_plans) >= FORK_AT_ENTRIES


def subtree_groups(todo_plans: list[Plan]) -> list[list[Plan]]:
    """The files to write by top-level subtree (the root's own apart), those with the
    most entries first: the workers take them in turn, so the largest do not come
    last."""
    groups: dict[str | None, list[Plan]] = {}
    for plan in todo_plans:
        names = plan[0].names
        groups.setdefault(names[0] if names else None, []).append(plan)
    return sorted(groups.values(), key=lambda group: -sum(len(plan[4]) for plan in group))


def stage_in_workers(job: StagingJob, workers: int) -> Iterator[Staged]:
    """Each group's staged files, in the order of job.groups, as they are done."""
    yield from map_inherited(_stage_group, job, list(range(len(job.groups))), workers)


def _stage_group(job: StagingJob, index: int) -> Staged:
    """Stage one group's files (in a worker). A file that cannot be staged stops the
    group: what it staged is handed back for the parent to drop."""
    out_dir = job.config.output_dir
    staged: list[tuple[str, str | None]] = []
    reader = open_reader(job.source)
    top: int | None = None
    rel = ""
    try:
        top = nofollow.open_root(out_dir)
        fetch = functools.partial(with_held, reader.rendered, job.held)
        renders = SubtreeRenders(fetch, job.uses)
        for group in in_turn(job.groups[index], job.stream_at):
            # (rel: the file named if staging fails)
            node, kind, rel, members, member_keys, _print = group[0]
            if is_big(group[0], job.stream_at):
                _stage_big(job, out_dir, top, group, fetch, staged)
            else:
                parts = renders.parts(node.names, member_keys, RENDERS.index(kind))
                data = feed_file(job.config, job.renderer, job.heads, node, kind, rel,
                                 members, parts, job.frames.get(rel), job.failed)
                temp = stage(out_dir, top, rel.split("/"), data)
                staged.append((rel, None if temp is None else str(temp)))
        return staged, None
    except PublishError as exc:
        return staged, str(exc)
    except OSError as exc:
        return staged, cannot_publish(Path(out_dir, rel), exc)
    finally:
        if top is not None:
            os.close(top)
        reader.close()


def _stage_big(job: StagingJob, out_dir: Path, top: int, plans: list[Plan],
               fetch: Callable[[set[str]], dict[str, Render]],
               staged: list[tuple[str, str | None]]) -> None:
    """Stage one node's files of job.stream_at entries or more together
    (splice.big_files)."""
    files, position = big_files(job.config, job.renderer, job.heads, job.frames, job.failed,
                                plans, fetch)
    temps = stage_together(out_dir, top, [(rel.split("/"), parts) for rel, parts in files],
                           position)
    staged += [(rel, None if temp is None else str(temp))
               for (rel, _parts), temp in zip(files, temps, strict=True)]

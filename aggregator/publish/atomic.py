"""Atomic publishing into the output dir.

Every changed file is first staged as a temp file in its own folder; then one sync
makes all of them durable, and each is moved over its target with os.replace, so a
reader (or a kill, or a full disk) only ever sees the old or the new bytes of a file.
One sync for the whole batch instead of one fsync per file: publishing 1,600 feeds
went from ~4 s of fsyncs to one flush. If staging fails (disk full, read-only), the
staged temps are removed and nothing is replaced. Unchanged bytes are not rewritten (mtime and
ETag stay stable for feed readers). A record of what we published (kept by the caller
in the state file: state/published.py) lets the next run remove feeds of vanished
categories without touching anything else in the folder; the manifest an older
version kept in the output dir is read once (not through a link), merged into it and
removed.

Nothing is written, read or removed through a symlink placed in the output dir
(`feeds/tech -> /etc`, `atom.xml -> /etc/passwd`, a temp file's name as a link): each
folder below the output dir is opened from its parent's descriptor with O_NOFOLLOW,
and files are made there with O_CREAT|O_EXCL|O_NOFOLLOW. A link met refuses the
publish (PublishError: the previous feeds stay). The final rename is by path: after a
folder is swapped for a link it finds no temp file there and fails, never writing
through it.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol

from aggregator import nofollow
from aggregator.problems import Problem
from aggregator.writers.parts import Parts

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".aggregator-tmp"
MANIFEST = ".aggregator-manifest"  # an older version's record, in the output dir
WRITE_BUFFER = 1 << 20
STAGING_THREADS = 4  # feeds staged at once: they mostly wait on the filesystem


class PublishError(Exception):
    """Writing the output failed; what was there before is still there. `found`: the
    problems the build had found in its inputs by then (the build sets them), so the
    command that reports the failure reports those too."""

    found: tuple[Problem, ...] = ()


class Record(Protocol):
    """What earlier runs published into the output dir (relative paths)."""

    def previous(self) -> set[str]: ...

    def save(self, published: set[str]) -> bool:
        """Record this run's files; False when they could not be recorded."""


class Publisher:
    def __init__(self, out_dir: Path, record: Record | None = None) -> None:
        """`record`: what was published before, so that what no longer is can be
        removed (None: nothing is removed)."""
        self.out_dir = out_dir
        self.record = record
        self.written: list[str] = []
        self.unchanged: list[str] = []
        self.removed: list[str] = []
        self._published: set[str] = set()
        self._staged: list[tuple[str, Path, Path]] = []
        self._pending: deque[tuple[str, Path, Future[Path | None]]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._top: int | None = None  # the output dir's descriptor, while staging

    def prepare(self, sweep_temps: bool = True) -> None:
        """Create the output dir; with `sweep_temps`, drop temp files of killed builds
        (a walk of the whole output tree, so a service does it only now and then)."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PublishError(f"{self.out_dir}: cannot create output dir: {exc}") from exc
        if sweep_temps:
            self.remove_temp_files()

    def remove_temp_files(self) -> int:
        """Temp files left by a killed build: never valid output, always safe to drop."""
        count = 0
        # os.walk, not Path.rglob (which makes a Path of every name): 37 → 21 ms over
        # 1,644 feeds, on every build, the ones that find nothing to do included.
        for folder, _, names in os.walk(self.out_dir):
            for name in names:
                if not name.endswith(TEMP_SUFFIX):
                    continue
                path = os.path.join(folder, name)
                try:
                    os.unlink(path)
                    count += 1
                except OSError as exc:
                    log.warning("%s: cannot remove stale temp file: %s", path, exc)
        return count

    def write(self, rel: str, data: bytes | Parts) -> None:
        """Stage `data` for `rel` (relative, '/'-separated); `finish` publishes it.

        Staging runs on a few threads: it is mostly waiting on the filesystem
        (creating 1,648 folders and temp files cost a cold 100k build ~1.7 s of its
        2.1 s of writing, in mkdir and open), which those waits let the caller spend
        making the next feed. Parts must stay readable until `finish` (or `abort`)."""
        target = self._target(rel)
        self._published.add(rel)
        parts = data if isinstance(data, Parts) else Parts(lambda: (data,), len(data))
        self._start()
        assert self._pool is not None
        while len(self._pending) >= 2 * STAGING_THREADS:
            self._settle(self._pending.popleft())  # bounded: each holds its feed's parts
        self._pending.append((rel, target, self._pool.submit(
            stage, self.out_dir, self._top, rel.split("/"), parts)))

    def write_together(self, files: list[tuple[str, Parts]],
                       position: Callable[[int], int]) -> None:
        """write() of a node's biggest files, whose parts read one shared stream
        (splice.big_files): staged now, in this thread, by stage_together."""
        targets = [self._target(rel) for rel, _parts in files]
        self._published.update(rel for rel, _parts in files)
        self._start()
        self._settle_all()  # (staged in the order they were asked for)
        try:
            temps = stage_together(self.out_dir, self._top,
                                   [(rel.split("/"), parts) for rel, parts in files],
                                   position)
        except OSError as exc:
            self.abort()
            raise PublishError(cannot_publish(targets[0], exc)) from exc
        except BaseException:
            self.abort()
            raise
        for (rel, _parts), temp, target in zip(files, temps, targets, strict=True):
            self._take(rel, temp, target)

    def _start(self) -> None:
        """The output dir's descriptor and the staging threads, on the first write."""
        if self._pool is None:
            try:
                self._top = nofollow.open_root(self.out_dir)
            except OSError as exc:
                raise PublishError(f"{self.out_dir}: cannot publish: {exc.strerror}") from exc
            self._pool = ThreadPoolExecutor(STAGING_THREADS,
                                            thread_name_prefix="aggregator-stage")

    def _settle(self, pending: tuple[str, Path, Future[Path | None]]) -> None:
        """Wait for one staging (in the order they were asked for); on a failure,
        drop everything staged and raise."""
        rel, target, future = pending
        try:
            temp = future.result()
        except OSError as exc:
            self.abort()
            raise PublishError(cannot_publish(target, exc)) from exc
        except BaseException:
            self.abort()
            raise
        self._take(rel, temp, target)

    def _take(self, rel: str, temp: Path | None, target: Path) -> None:
        """A file staged as `temp` (None: the target already holds its bytes)."""
        if temp is None:
            self.unchanged.append(rel)
        else:
            self._staged.append((rel, temp, target))

    def _settle_all(self) -> None:
        while self._pending:
            self._settle(self._pending.popleft())

    def abort(self) -> None:
        """Drop everything staged; the published files stay as they were. No staging
        thread is still writing once this returns."""
        pending, self._pending = self._pending, deque()
        for rel, target, future in pending:
            with contextlib.suppress(BaseException):
                temp = future.result()
                if temp is not None:
                    self._staged.append((rel, temp, target))
        for _rel, temp, _target in self._staged:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
        self._staged.clear()
        self._close_pool()

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._top is not None:
            os.close(self._top)
            self._top = None

    def adopt(self, rel: str, temp: Path | None) -> None:
        """`rel`, staged by a worker process (`stage`) as `temp`, beside its target
        (None: the file there already holds its bytes): `finish` publishes it with the
        rest, `abort` removes it."""
        target = self._target(rel)
        self._published.add(rel)
        self._take(rel, temp, target)

    def keep(self, rel: str) -> None:
        """`rel` is current as it is: published, not rewritten."""
        self._published.add(rel)
        self.unchanged.append(rel)

    def keep_all(self, rels: list[str]) -> None:
        self._published.update(rels)
        self.unchanged.extend(rels)

    def _target(self, rel: str) -> Path:
        # Slugs make an escape impossible; check anyway, on the string (resolving every
        # path cost ~0.4 ms a file: a third of publishing 1,600 unchanged feeds).
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or "\0" in rel or \
                any(part in ("", ".", "..") for part in parts):
            raise PublishError(f"{rel!r}: refusing to write outside {self.out_dir}")
        return self.out_dir.joinpath(*parts)

    def finish(self) -> None:
        """Publish what was staged, remove what the last run published and this one did
        not, save the record."""
        try:
            self._settle_all()
        finally:
            self._close_pool()
        if self._staged:
            _sync_filesystem(self.out_dir)  # every staged byte durable before any rename
            try:
                for rel, temp, target in self._staged:
                    os.replace(temp, target)
                    self.written.append(rel)
            except OSError as exc:
                self.abort()
                raise PublishError(f"{self.out_dir}: cannot publish: {exc}") from exc
            self._staged.clear()
            _sync_filesystem(self.out_dir)  # the renames themselves
        if self.record is None:
            return
        previous = self.record.previous() | set(_read_manifest(self.out_dir).split("\n"))
        for rel in sorted(previous - self._published - {""}):
            try:
                target = self._target(rel)
            except PublishError:
                continue
            parts = rel.split("/")
            try:
                _remove(self.out_dir, parts)
                self.removed.append(rel)
            except FileNotFoundError:
                continue
            except (OSError, PublishError) as exc:
                log.warning("%s: cannot remove stale feed: %s", target, exc)
                continue
            _remove_empty_folders(self.out_dir, parts[:-1])
        if self.record.save(self._published):
            try:  # merged into the record: no longer shipped with the feeds
                os.unlink(self.out_dir / MANIFEST)
                log.info("%s: moved into the state file", self.out_dir / MANIFEST)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("%s: cannot remove: %s", self.out_dir / MANIFEST, exc)


def _open_folder(out_dir: Path, names: list[str], create: bool = False,
                 top: int | None = None) -> int:
    """A descriptor of the folder out_dir/names... (`nofollow.open_folder`: made when
    missing, with `create`), from `top` (out_dir's, left open) if given.
    PublishError: one is a symlink; OSError: it cannot be opened."""
    try:
        if top is None:
            return nofollow.open_path(out_dir, names, create)  # (out_dir: the config's)
        return nofollow.open_folder(top, names, create)
    except nofollow.LinkMet as met:
        raise _link_refused(out_dir, names[:met.index + 1]) from None


def _link_refused(out_dir: Path, names: list[str]) -> PublishError:
    return PublishError(f"{out_dir.joinpath(*names)}: a symlink in the output dir; "
                        "nothing is written through it (remove it)")


def _remove(out_dir: Path, parts: list[str]) -> None:
    folder = _open_folder(out_dir, parts[:-1])
    try:
        os.unlink(parts[-1], dir_fd=folder)  # (a link is removed, not followed)
    finally:
        os.close(folder)


def _remove_empty_folders(out_dir: Path, names: list[str]) -> None:
    """Remove out_dir/names... and its parents below out_dir while they are empty."""
    while names:
        try:
            parent = _open_folder(out_dir, names[:-1])
        except (OSError, PublishError):
            return
        try:
            os.rmdir(names[-1], dir_fd=parent)
        except OSError:
            return
        finally:
            os.close(parent)
        names = names[:-1]


def _read_manifest(out_dir: Path) -> str:
    """The old manifest's text; "" when it is missing, unreadable or not a regular file
    (a link is not followed)."""
    try:
        fd, _ = nofollow.open_file(None, str(out_dir / MANIFEST))
    except (OSError, nofollow.LinkMet, nofollow.NotRegular):
        return ""
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


def _same_bytes(folder: int, name: str, parts: Parts) -> bool:
    """The regular file `name` in `folder` holds exactly these parts, in order
    (compared as they come, without joining them; a file of another size is not
    read; a symlink is not followed)."""
    try:
        fd, st = nofollow.open_file(folder, name)
    except (OSError, nofollow.LinkMet, nofollow.NotRegular):
        return False
    with os.fdopen(fd, "rb") as handle:
        try:
            return st.st_size == parts.size and \
                all(handle.read(len(part)) == part for part in parts.source())
        except OSError:
            return False


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs: Callable[[int], int] = libc.syncfs
        return syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def _sync_filesystem(folder: Path) -> None:
    """Flush the filesystem holding `folder` (Linux syncfs: only ours, not every disk
    of the machine as os.sync would); os.sync where syncfs is missing."""
    if _syncfs is not None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


def cannot_publish(target: Path, exc: OSError) -> str:
    """Why a file could not be staged, as a failed publish says it."""
    return f"{target}: cannot publish: {exc.strerror or exc}"


# parts written at a time by stage_together (an entry is one or two)
_TOGETHER_PARTS = 64


def stage_together(out_dir: Path, top: int | None, files: list[tuple[list[str], Parts]],
                   position: Callable[[int], int]) -> list[Path | None]:
    """stage() of several files whose sources read one shared stream (a node's
    biggest feeds, splice.SharedRenders): a few parts at a time of the unfinished file
    furthest behind in that stream (`position(index)`: how far files[index] has read),
    so the sources advance together and what they share is dropped as they pass it.
    Each is compared with the file it replaces as it is written, not by its size
    first: None for one that holds exactly its bytes (its temp file removed)."""
    opened: list[_Staging] = []
    try:
        for names, parts in files:
            opened.append(_Staging(_open_folder(out_dir, names[:-1], create=True, top=top),
                                   names[-1], iter(parts.source())))
        active = list(range(len(opened)))
        while active:
            index = min(active, key=position)
            if not opened[index].write(_TOGETHER_PARTS):
                active.remove(index)
        return [None if staging.finish() else out_dir.joinpath(*names[:-1], staging.temp)
                for staging, (names, _) in zip(opened, files, strict=True)]
    except BaseException:
        for staging in opened:
            staging.discard()
        raise
    finally:
        for staging in opened:
            staging.close()


class _Staging:
    """One file of stage_together: its temp file, and the file there while it still
    matches what is written."""

    def __init__(self, folder: int, name: str, parts: Iterator[bytes]) -> None:
        self.folder, self.name, self.parts = folder, name, parts
        self.temp = f".{name}.{os.getpid()}{TEMP_SUFFIX}"
        self.old: BinaryIO | None = None
        try:
            fd, _st = nofollow.open_file(folder, name)
            self.old = os.fdopen(fd, "rb")
        except (OSError, nofollow.LinkMet, nofollow.NotRegular):
            pass
        try:
            self.out = os.fdopen(nofollow.create(folder, self.temp), "wb",
                                 buffering=WRITE_BUFFER)
        except BaseException:
            self.close()
            raise

    def write(self, most: int) -> bool:
        """Write up to `most` parts; False when there are no more."""
        written = 0
        for part in itertools.islice(self.parts, most):
            self.out.write(part)
            written += 1
            if self.old is not None and self.old.read(len(part)) != part:
                self.old.close()
                self.old = None  # differs: no more comparing
        return written == most

    def finish(self) -> bool:
        """Close the temp file; True (and the temp file removed) when the file there
        holds exactly what was written."""
        self.out.close()
        same = self.old is not None and self.old.read(1) == b""
        if same:
            os.unlink(self.temp, dir_fd=self.folder)
        return same

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.out.close()
            os.unlink(self.temp, dir_fd=self.folder)

    def close(self) -> None:
        if self.old is not None:
            self.old.close()
        os.close(self.folder)


def stage(out_dir: Path, top: int | None, names: list[str], parts: Parts) -> Path | None:
    """The temp file holding `parts` beside out_dir/names... (`top`: out_dir's
    descriptor); None when that file already holds exactly those bytes. Runs in a
    staging thread, or in a worker process (Publisher.adopt)."""
    folder = _open_folder(out_dir, names[:-1], create=True, top=top)
    try:
        name = names[-1]
        if _same_bytes(folder, name, parts):
            return None
        temp = f".{name}.{os.getpid()}{TEMP_SUFFIX}"
        # A big buffer: a feed is thousands of entry-sized parts, and one write call
        # each (500k of them for 2.6 GB) cost more than writing the bytes.
        nofollow.write_new(folder, temp, parts.source(), buffering=WRITE_BUFFER)
        return out_dir.joinpath(*names[:-1], temp)
    finally:
        os.close(folder)

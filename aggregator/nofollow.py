"""Paths walked one name at a time from a folder's descriptor, never through a symlink.

Any name below a configured folder (a content dir, the output dir) may be a symlink
put there, or become one between two steps (`mv -Tf link posts/tech`). Opening a path
in one call follows it wherever it points. Here each folder is opened from its
parent's descriptor with O_NOFOLLOW | O_DIRECTORY, a file with O_NOFOLLOW, and what
was opened is checked with fstat (of the descriptor, not of the name); a file is
written as a new temp file (O_EXCL | O_NOFOLLOW, mode 0666 less the umask) renamed
over its target within the same folder descriptor. No step resolves a path again, so
a swap made between two steps cannot redirect a later one.

The configured folder itself (`open_root`) is the config's to choose and may be a
link. What a refusal means (a warning, an error, an exit status) is the caller's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # a configured folder: followed
# O_NONBLOCK: a FIFO put in place of a file must not hang the open; O_NOCTTY: a
# terminal device must not become ours.
FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LinkMet(Exception):
    """The name at `index` of the path being walked is a symlink: not followed."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class NotRegular(Exception):
    """What was opened is not a regular file (a folder, a FIFO, a device…)."""


def open_root(path: str | Path) -> int:
    """A descriptor of the configured folder `path` (a link there is followed)."""
    return os.open(path, ROOT)


def open_dir(parent: int, name: str, index: int = 0, create: bool = False) -> int:
    """A descriptor of the folder `name` in `parent`, made first when missing with
    `create`. LinkMet(index): `name` is a symlink; OSError: it cannot be opened (a
    file there: NotADirectoryError)."""
    try:
        return os.open(name, DIR, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=parent)
        return open_dir(parent, name, index)
    except OSError as exc:
        # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR, as on a file
        if exc.errno in (errno.ENOTDIR, errno.ELOOP) and is_link(parent, name):
            raise LinkMet(index) from None
        raise


def open_folder(top: int, names: Sequence[str], create: bool = False) -> int:
    """A new descriptor of the folder top/names… (`top` stays open), each name opened
    by `open_dir`; LinkMet's index is the position in `names`."""
    fd = top
    try:
        for index, name in enumerate(names):
            below = open_dir(fd, name, index, create)
            if fd != top:
                os.close(fd)
            fd = below
    except BaseException:
        if fd != top:
            os.close(fd)
        raise
    return os.dup(top) if fd == top else fd


def open_path(root: str | Path, names: Sequence[str], create: bool = False) -> int:
    """A descriptor of the folder root/names…: the configured folder `root` opened by
    `open_root`, then each name by `open_dir` (`open_folder`)."""
    top = open_root(root)
    try:
        return open_folder(top, names, create)
    finally:
        os.close(top)


def open_file(parent: int | None, name: str, index: int = 0) -> tuple[int, os.stat_result]:
    """(descriptor, its fstat) of the regular file `name` in `parent` (None: `name` is
    a path whose folders are the caller's to trust). LinkMet(index): `name` is a
    symlink; NotRegular: it is not a regular file; OSError: it cannot be opened."""
    try:
        fd = os.open(name, FILE, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # one name, O_NOFOLLOW: that name is a symlink
            raise LinkMet(index) from None
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(name)
    return fd, st


def is_link(parent: int, name: str) -> bool:
    """`name` in the folder `parent` is a symlink (False when it cannot be told)."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def create(folder: int, name: str) -> int:
    """A new file `name` in `folder` for writing, mode 0666 less the umask: a file or a
    symlink left there under that name is removed first (the link itself, never what
    it points to)."""
    try:
        return os.open(name, NEW_FILE, 0o666, dir_fd=folder)
    except FileExistsError:
        os.unlink(name, dir_fd=folder)
        return os.open(name, NEW_FILE, 0o666, dir_fd=folder)


def write_new(folder: int, name: str, chunks: Iterable[bytes], *, durable: bool = False,
              buffering: int = -1) -> None:
    """Write `chunks` to a new file `name` in `folder` (`create`), fsynced with
    `durable`; on any failure the file is removed again."""
    try:
        with os.fdopen(create(folder, name), "wb", buffering=buffering) as out:
            out.writelines(chunks)
            if durable:
                out.flush()
                os.fsync(out.fileno())
    except BaseException:
        _discard(folder, name)
        raise


def replace(folder: int, name: str, data: bytes) -> None:
    """Write `data` to `name` in `folder` atomically: a new temp file beside it
    (`write_new`, fsynced), then renamed over `name` (a link there is replaced, not
    written through)."""
    temp = f".{name}.{secrets.token_hex(6)}.tmp"
    write_new(folder, temp, (data,), durable=True)
    try:
        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        _discard(folder, temp)
        raise


def _discard(folder: int, name: str) -> None:
    # On a read-only fs unlink fails too (EROFS, even for a missing file): that
    # OSError must not replace the one that says why the write failed.
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=folder)


def replace_path(path: Path, data: bytes) -> None:
    """`replace` of the file at `path`, a path the user named (its folders are made
    when missing and followed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = open_root(path.parent)
    try:
        replace(folder, path.name, data)
    finally:
        os.close(folder)

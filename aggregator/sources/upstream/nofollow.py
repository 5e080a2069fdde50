"""Files under a content dir, written and read without following a symbolic link.

A person (or another program) may replace any folder or file under the content dir
with a link to somewhere else (`posts/tech -> /elsewhere`). Each step here is taken
from the descriptor of the folder above it: a folder is made with `mkdir(dir_fd=…)` and
entered with `O_NOFOLLOW | O_DIRECTORY`, a file is opened with `O_NOFOLLOW` and must be
a regular file, and a write goes to a new temp file (`O_EXCL`) renamed over the target
within the same folder descriptor. A link met on the way raises `LinkRefused`; a swap
made between two steps cannot redirect a later step, because no later step resolves a
path again.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LinkRefused(OSError):
    """A symbolic link (or something that is not a plain folder or file) was met."""


@contextmanager
def folder(root: Path, parts: Sequence[str], *, create: bool) -> Iterator[int]:
    """A descriptor of `root/parts…`, each part entered without following a link
    (`create`: missing folders are made). The content dir itself (`root`) is the
    configured path and may be a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts):
            if create:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[: depth + 1])
                    raise LinkRefused(exc.errno, f"{where} is a symbolic link or not a "
                                                 f"folder") from None
                raise
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def read_file(root: Path, parts: Sequence[str]) -> bytes | None:
    """The bytes of `root/parts…`, None when it does not exist; LinkRefused when it or a
    folder on the way is a link or it is not a regular file."""
    *folders, name = parts
    try:
        with folder(root, folders, create=False) as dir_fd:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise LinkRefused(exc.errno, f"{'/'.join(parts)} is a symbolic link") \
                        from None
                raise
            with open(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise LinkRefused(errno.EINVAL, f"{'/'.join(parts)} is not a regular file")
                return handle.read()
    except FileNotFoundError:
        return None


def exists(root: Path, parts: Sequence[str]) -> bool:
    """Anything (a file, a folder, a link, even a dangling one) is at `root/parts…`;
    LinkRefused when a folder on the way is a link."""
    *folders, name = parts
    try:
        with folder(root, folders, create=False) as dir_fd:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def replace_file(root: Path, parts: Sequence[str], data: bytes) -> None:
    """Write `data` to `root/parts…` atomically (a new temp file in the same folder,
    fsynced, then renamed over the target), making missing folders; never through a
    link. A link (or a folder) at the target itself is refused, not replaced."""
    *folders, name = parts
    with folder(root, folders, create=True) as dir_fd:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(st.st_mode):
                raise LinkRefused(errno.EEXIST, f"{'/'.join(parts)} is a symbolic link or "
                                                f"not a regular file")
        temp = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o666, dir_fd=dir_fd)
        try:
            with open(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass
            raise

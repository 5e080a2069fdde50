"""Post files under a content dir, written and read without following a symbolic link.

A person (or another program) may replace any folder or file under the content dir
with a link to somewhere else (`posts/tech -> /elsewhere`). The steps are
`aggregator.nofollow`'s, each from the descriptor of the folder above it; here a link
(or a file where a folder belongs, or anything not a regular file where a post
belongs) is refused with `LinkRefused`, which write_posts reports as an error.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aggregator import nofollow


class LinkRefused(OSError):
    """A symbolic link (or something that is not a plain folder or file) was met."""


@contextmanager
def folder(root: Path, parts: Sequence[str], *, create: bool) -> Iterator[int]:
    """A descriptor of `root/parts…`, each part entered without following a link
    (`create`: missing folders are made). The content dir itself (`root`) is the
    configured path and may be a link."""
    try:
        fd = nofollow.open_path(root, parts, create)
    except nofollow.LinkMet as met:
        raise _refused(errno.ELOOP, parts[:met.index + 1]) from None
    except NotADirectoryError:
        raise _refused(errno.ENOTDIR, parts) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _refused(code: int, parts: Sequence[str]) -> LinkRefused:
    return LinkRefused(code, f"{'/'.join(parts)} is a symbolic link or not a folder")


def read_file(root: Path, parts: Sequence[str]) -> bytes | None:
    """The bytes of `root/parts…`, None when it does not exist; LinkRefused when it or a
    folder on the way is a link or it is not a regular file."""
    *folders, name = parts
    where = "/".join(parts)
    try:
        with folder(root, folders, create=False) as dir_fd:
            try:
                fd, _ = nofollow.open_file(dir_fd, name)
            except nofollow.LinkMet:
                raise LinkRefused(errno.ELOOP, f"{where} is a symbolic link") from None
            except nofollow.NotRegular:
                raise LinkRefused(errno.EINVAL, f"{where} is not a regular file") from None
            with open(fd, "rb") as handle:
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
    """Write `data` to `root/parts…` atomically (`nofollow.replace`), making missing
    folders; never through a link. A link (or a folder) at the target itself is
    refused, not replaced."""
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
        nofollow.replace(dir_fd, name, data)

"""Opening a file under a content dir without being led out of it by a symlink.

A post is found by the walk and opened later: in between, any name on its path may
become a symlink (`mv -Tf link posts/zz.md`). Opening the path in one call would follow
it wherever it points. Here the relative path is opened one component at a time from
the content dir's descriptor (`aggregator.nofollow`), so what is opened is reached
through real directory entries under the content dir at the moment of opening; only a
regular file is accepted (fstat of what was opened, not of the name).

A symlink met on the way is refused when `content.follow_symlinks` is false. When it is
true, the path is resolved and the resolved path is opened again the same way, from the
descriptor of the content dir it lies in: the file opened is inside the content dirs
even if the links change meanwhile (a link that changes between the two steps makes
the second refuse, never follow).

The folders of the last path opened stay open (a few descriptors), so posts read in
path order cost one `openat` of their own name and no path lookup from `/`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable

from aggregator import nofollow
from aggregator.nofollow import LinkMet, NotRegular


class Refused(Exception):
    """The file is not opened, for a reason about the file (not an I/O failure):
    `message` says why; `warning` tells a symlink skipped by choice from an error."""

    def __init__(self, message: str, warning: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.warning = warning


class SafeOpener:
    """Opens files by their path relative to a content dir; see the module's doc.
    Holds descriptors of folders between calls: `close` releases them."""

    def __init__(self, roots: Iterable[str], follow: bool) -> None:
        self.follow = follow
        # resolved once: where a followed symlink's target must lie
        self._resolved = [os.path.realpath(root) for root in roots]
        self._root = ""  # the content dir of the folders held open
        self._folder: str | None = None  # their path relative to it ("" for itself)
        self._names: list[str] = []  # that path's components
        self._fds: list[int] = []  # the content dir's descriptor, then each folder's

    def open(self, root: str, rel: str) -> tuple[int, os.stat_result]:
        """(descriptor, its fstat) of the regular file at `rel` ('/'-separated) under
        `root`. Refused: a symlink not to follow, a loop, a link out of the content
        dirs, not a regular file; OSError: it cannot be opened."""
        folder, _, name = rel.rpartition("/")
        try:
            if root != self._root or folder != self._folder:
                self._hold(root, folder)
            return _open_file(self._fds[-1], name, len(self._names))
        except LinkMet as met:
            if not self.follow:
                what = "symlink" if met.index == rel.count("/") else \
                    "a folder on its path is a symlink:"
                raise Refused(f"{what} not followed (content.follow_symlinks is false)",
                              warning=True) from None
            return self._open_followed(root, rel)

    def close(self) -> None:
        fds, self._fds, self._names = self._fds, [], []
        self._root, self._folder = "", None
        for fd in fds:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # (at exit, os may be gone)
            self.close()

    def _hold(self, root: str, folder: str) -> None:
        """Make the folders of `folder` under `root` the ones held open, keeping those
        it shares with the path held now."""
        names = folder.split("/") if folder else []
        _check_names(names)
        keep = 0
        if root == self._root and self._fds:
            keep = 1
            for held, name in zip(self._names, names, strict=False):
                if held != name:
                    break
                keep += 1
        else:
            self.close()
        for fd in self._fds[keep:]:
            os.close(fd)
        del self._fds[keep:]
        del self._names[max(keep - 1, 0):]
        self._folder = None  # until every folder below is open
        if not self._fds:
            self._fds.append(nofollow.open_root(root))
            self._root = root
        for index in range(len(self._names), len(names)):
            self._fds.append(nofollow.open_dir(self._fds[-1], names[index], index))
            self._names.append(names[index])
        self._folder = folder

    def _open_followed(self, root: str, rel: str) -> tuple[int, os.stat_result]:
        """The file `rel` names with its symlinks followed, opened only if it lies in a
        content dir, through real entries from that dir's descriptor."""
        try:
            target = os.path.realpath(os.path.join(root, rel), strict=True)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused("symlink loop", warning=True) from None
            if exc.errno == errno.ENOENT:
                raise Refused("broken symlink") from None
            raise
        inside = next((base for base in self._resolved
                       if target.startswith(base.rstrip("/") + "/")), None)
        if inside is None:
            raise Refused(f"symlink points outside the content dirs ({target})")
        names = target[len(inside.rstrip("/")) + 1:].split("/")
        try:
            folder = nofollow.open_path(inside, names[:-1])
            try:
                return _open_file(folder, names[-1], len(names) - 1)
            finally:
                os.close(folder)
        except LinkMet:
            raise Refused("symlink changed while it was read", warning=True) from None


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """(descriptor, its fstat) of the regular file at `path`, a file named in the
    config (its folders are the config's to choose): its own name is not followed if
    something put a symlink there, and only a regular file is accepted."""
    try:
        return nofollow.open_file(None, path)
    except LinkMet:
        raise Refused("it is a symlink, not followed (name the file itself)") from None
    except NotRegular:
        raise Refused("not a regular file") from None


def _check_names(names: list[str]) -> None:
    if any(name in ("", ".", "..") for name in names):
        raise Refused("not a path inside the content dir")


def _open_file(parent: int, name: str, index: int) -> tuple[int, os.stat_result]:
    """`nofollow.open_file` of a name under a content dir; LinkMet is the caller's."""
    _check_names([name])
    try:
        return nofollow.open_file(parent, name, index)
    except NotRegular:
        raise Refused("not a regular file") from None

"""Finding the post files of the content dirs: the walk every one-off build starts with.

A module of its own, light to import: an up-to-date build walks and stops, and at 100k
posts the walk is most of its time.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import logging
import operator
import os
import re
import stat
from array import array
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from aggregator import nofollow
from aggregator.config import Config
from aggregator.problems import ProblemLog
from aggregator.source_keys import source_key, split_source

# (Hexo's drafts folder too: its posts are not published)
SKIPPED_DIRS = {".git", ".hg", ".svn", "_drafts"}
# Lone surrogates too: os.fsdecode's stand-ins for file-name bytes that are not UTF-8.
_CONTROL = re.compile("[\x00-\x1f\x7f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
log = logging.getLogger(__name__)


class PostFile(NamedTuple):
    """A post file as found by the walk (a tuple: 100k dataclasses cost ~0.15 s more)."""

    location: str  # where it is read from (a str: 100k Path objects cost ~0.2 s)
    rel: str  # posix path relative to its content dir: the post's identity
    root: Path
    identity: tuple[int, int, int] = (0, 0, 0)  # size, mtime_ns, inode when found

    @property
    def path(self) -> Path:
        return Path(self.location)

    @property
    def source(self) -> str:
        """Its key in the build cache and in a session: content dir + relative path."""
        return source_key(str(self.root), self.rel)

    @property
    def order(self) -> tuple[str, str]:
        """Posts (and their problems) are handled in this order."""
        return self.rel, str(self.root)


def post_of_source(source: str,
                   identity: tuple[int, int, int] = (0, 0, 0)) -> PostFile:
    """The PostFile a PostFile.source key names (`identity`: as last seen, if known)."""
    root, rel = split_source(source)
    return PostFile(os.path.join(root, *rel.split("/")), rel, Path(root), identity)


# PostFile(...) goes through a generated Python __new__: ~0.1 s for 100k posts
_new_post = tuple.__new__


def display(rel: str) -> str:
    """A path safe to print: control and bidi-override characters escaped."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", rel)


def _folder(prefix: str, dirpath: str) -> str:
    """A folder as messages name it: relative to its content dir (`sub/dir/`), or the
    content dir itself."""
    return display(prefix) if prefix else dirpath


def is_editor_artefact(name: str) -> bool:
    return name.startswith(".#") or name.endswith("~") or name.endswith(".swp")


class _Run(NamedTuple):
    """Plain posts next to each other in one folder, in order, kept as their names and
    identities: an up-to-date build needs only the walk's digest, and making 100k
    PostFiles (two paths each) would be ~0.15 s of it."""

    base: str  # the folder's location + "/"
    prefix: str  # its path relative to the content dir + "/"
    root: Path
    names: list[str]
    identities: list[tuple[int, int, int]]


class Walk:
    """A walk of the content dirs: its digest, and its posts made on first use."""

    def __init__(self, parts: list[PostFile | _Run], digest: str, sort: bool) -> None:
        self.digest = digest  # of every post's relative path and identity
        self._parts: list[PostFile | _Run] | None = parts
        self._sort = sort  # several content dirs: their walks are merged by order
        self._posts: list[PostFile] | None = None

    @property
    def posts(self) -> list[PostFile]:
        """Every post, sorted by relative path."""
        if self._posts is None:
            posts: list[PostFile] = []
            for part in self._parts or ():
                if isinstance(part, _Run):
                    base, prefix, root, names, identities = part
                    posts += [_new_post(PostFile, (base + name, prefix + name, root, ident))
                              for name, ident in zip(names, identities, strict=True)]
                else:
                    posts.append(part)
            if self._sort:
                posts.sort(key=_order)
            self._posts, self._parts = posts, None
        return self._posts


def discover(config: Config, problems: ProblemLog) -> list[PostFile]:
    """Every regular `*.md` file under the content dirs, sorted by relative path."""
    return walk_posts(config, problems).posts


def walk_posts(config: Config, problems: ProblemLog) -> Walk:
    """The posts, and a digest of the walk made on the way (hashing 100k paths and
    identities afterwards would take ~0.1 s: here a run of a folder's names is joined
    once)."""
    found: list[PostFile | _Run] = []
    roots = [d.resolve() for d in config.content_dirs]
    text: list[str] = []
    numbers: list[int] = []
    # The walk makes ~3 objects a post and no reference cycles: the collector's passes
    # over a heap growing by 300k objects would be a fifth of it at 100k posts.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for root in config.content_dirs:
            walker = _Walker(root, roots, config.follow_symlinks, text, numbers)
            walker.visit(str(root), "", found, problems)
    finally:
        if collecting:
            gc.enable()
    # rel paths, not the longer locations: the content dirs are in the config
    digest = hashlib.blake2b("".join(text).encode("utf-8", "surrogateescape"),
                             digest_size=16)
    digest.update(array("q", numbers).tobytes())
    # one dir's walk order is the sorted order (see _Walker)
    return Walk(found, digest.hexdigest(), sort=len(config.content_dirs) > 1)


def _order(post: PostFile) -> tuple[str, str]:
    return post.order


_FIRST = operator.itemgetter(0)


class _Later(NamedTuple):
    """A folder to walk or a file post_file must look at, in its place in the order."""

    location: str
    rel: str  # a folder's ends in "/"
    is_folder: bool


class _Walker:
    """Walks one content dir depth first, meeting the posts in the order of their
    relative paths. A folder is listed through a descriptor, so a plain post costs one
    `fstatat` by its name (its identity): no path lookup from `/` a post. The walk is a
    loop over a stack, not a recursion: a hostile tree may be 1,000s of folders deep."""

    def __init__(self, root: Path, roots: list[Path], follow: bool, text: list[str],
                 numbers: list[int]) -> None:
        self.root, self.roots, self.follow = root, roots, follow
        self.seen_dirs: set[tuple[int, int]] = set()
        # What the walk's digest hashes, in walk order: for each group of posts
        # "prefix\0count\0name\0name...\0" (no name holds a NUL: unambiguous), and
        # their identities, three numbers a post.
        self.text, self.numbers = text, numbers

    def _record(self, prefix: str, names: list[str]) -> None:
        self.text.append(f"{prefix}\0{len(names)}\0" + "\0".join(names) + "\0")

    def visit(self, top: str, prefix: str, found: list[PostFile | _Run],
              problems: ProblemLog) -> None:
        # appended to, not yielded: a generator per level costs 30%
        stack: list[Iterator[_Run | _Later]] = []
        items, later = self._items(top, prefix, problems)
        while True:
            if later:
                stack.append(iter(items))
            else:  # a folder of plain posts alone (the common case): no _Later in it
                found.extend(items)  # type: ignore[arg-type]  # (runs only)
            if not stack:
                return
            for item in stack[-1]:
                if not isinstance(item, _Later):
                    found.append(item)
                elif item.is_folder:
                    items, later = self._items(item.location, item.rel, problems)
                    break
                else:
                    post = post_file(self.root, self.roots, item.location, item.rel,
                                     self.follow, problems)
                    if post is not None:
                        found.append(post)
                        self._record("", [post.rel])
                        self.numbers.extend(post.identity)
            else:
                stack.pop()
                items, later = [], False

    def _items(self, dirpath: str, prefix: str,
               problems: ProblemLog) -> tuple[list[_Run | _Later], bool]:
        """A folder's runs of plain posts and what to look at later, in order, and
        whether there is anything to look at later. Its descriptor is closed before the
        walk goes deeper (one open folder at a time)."""
        try:
            fd = nofollow.open_root(dirpath)
        except OSError as exc:
            problems.error(_folder(prefix, dirpath), f"cannot read folder: {exc.strerror}")
            return [], False
        try:
            if self.follow:  # a symlinked folder may loop back on itself
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) in self.seen_dirs:
                    problems.warn(display(prefix.rstrip("/")), "folder already walked through "
                                  "another path (a symlink loop?); skipped")
                    return [], False
                self.seen_dirs.add((st.st_dev, st.st_ino))
            try:
                with os.scandir(fd) as scan:
                    entries = list(scan)
            except OSError as exc:
                problems.error(_folder(prefix, dirpath), f"cannot read folder: {exc.strerror}")
                return [], False
            return self._listing(dirpath, prefix, entries, problems)
        finally:
            os.close(fd)

    def _listing(self, dirpath: str, prefix: str, entries: list[os.DirEntry[str]],
                 problems: ProblemLog) -> tuple[list[_Run | _Later], bool]:
        base = dirpath if dirpath.endswith("/") else dirpath + "/"
        # (sort key, name, the entry of a plain post file or None, is a folder). Sorted
        # by name, a folder keyed as its name + "/" (the character its posts' paths
        # have there): the depth-first walk then gives the sorted order.
        keyed: list[tuple[str, str, os.DirEntry[str] | None, bool]] = []
        for entry in entries:
            name = entry.name
            if name.endswith(".md") and not name.startswith(".#") \
                    and entry.is_file(follow_symlinks=False):
                keyed.append((name, name, entry, False))  # the usual case
                continue
            try:
                is_folder = entry.is_dir()
            except OSError:  # a symlink in a loop (ELOOP): reported, skipped
                is_folder = False
                if not name.endswith(".md") and entry.is_symlink():
                    _symlink_ok(Path(base + name), self.root, self.roots, self.follow,
                                problems)
            if is_folder:
                if name == "_drafts":
                    problems.note(display(f"{prefix}{name}/"),
                                  "Hexo's drafts folder; its posts are not published")
                if name not in SKIPPED_DIRS and not (
                        entry.is_symlink() and not _symlink_ok(
                            Path(base + name), self.root, self.roots, self.follow, problems)):
                    keyed.append((name + "/", name, None, True))
            elif name.endswith(".md") and not is_editor_artefact(name):
                keyed.append((name, name, None, False))  # post_file decides
        keyed.sort(key=_FIRST)
        root = self.root
        # Names that are not UTF-8 (surrogates) get post_file's error: one search a folder
        plain = not _SURROGATE.search(prefix + "".join([key for key, *_ in keyed]))
        items: list[_Run | _Later] = []
        later = False
        numbers = self.numbers
        run = _Run(base, prefix, root, [], [])
        for key, name, plain_file, is_folder in keyed:
            if plain_file is not None and plain:
                try:
                    st = plain_file.stat(follow_symlinks=False)  # fstatat(fd, name)
                except OSError:
                    pass
                else:
                    identity = (st.st_size, st.st_mtime_ns, st.st_ino)
                    run.names.append(name)
                    run.identities.append(identity)
                    numbers.extend(identity)
                    continue
            if run.names:  # a folder or a file to look at later ends the run
                items.append(run)
                self._record(prefix, run.names)
                run = _Run(base, prefix, root, [], [])
            items.append(_Later(base + name, prefix + key, is_folder))
            later = True
        if run.names:
            items.append(run)
            self._record(prefix, run.names)
        return items, later


def post_file(root: Path, roots: list[Path], location: str, rel: str, follow: bool,
              problems: ProblemLog) -> PostFile | None:
    """The post at `location` if it is one we read (regular file, allowed symlink)."""
    if _SURROGATE.search(rel):
        # Not UTF-8 (os.fsdecode surrogates): ids, links and logs cannot encode
        # it, and quote() raises on it.
        problems.error(display(rel), "file name is not valid UTF-8 (rename it); skipped")
        return None
    try:
        st = os.lstat(location)
    except OSError as exc:
        problems.error(display(rel), f"cannot stat: {exc.strerror}")
        return None
    if stat.S_ISLNK(st.st_mode):
        if not _symlink_ok(Path(location), root, roots, follow, problems):
            return None
        try:
            st = os.stat(location)
        except OSError:
            problems.error(display(rel), "broken symlink; skipped")
            return None
    if not stat.S_ISREG(st.st_mode):
        problems.error(display(rel), "not a regular file; skipped")
        return None
    return PostFile(location=location, rel=rel, root=root,
                    identity=(st.st_size, st.st_mtime_ns, st.st_ino))


def rediscover(config: Config, changed: set[str],
               problems: ProblemLog) -> dict[str, PostFile | None] | None:
    """What became of the files in `changed` (location → its post now, or None: gone or
    not a post), found without walking the tree; None when a change needs a full walk
    (a folder, a path outside)."""
    roots = [d.resolve() for d in config.content_dirs]
    updates: dict[str, PostFile | None] = {}
    for location in changed:
        root = next((r for r in config.content_dirs
                     if location.startswith(str(r) + os.sep)), None)
        if root is None or os.path.isdir(location):
            return None
        rel = location[len(str(root)) + 1:].replace(os.sep, "/")
        parts = rel.split("/")
        name = parts[-1]
        if any(part in SKIPPED_DIRS for part in parts[:-1]) or any(
                os.path.islink(os.path.join(str(root), *parts[:i]))
                for i in range(1, len(parts))):
            return None  # inside a skipped or symlinked folder: let the walk decide
        updates[location] = None
        if name.endswith(".md") and not is_editor_artefact(name) and os.path.lexists(location):
            updates[location] = post_file(root, roots, location, rel, config.follow_symlinks,
                                          problems)
    return updates


def _symlink_ok(path: Path, root: Path, roots: list[Path], follow: bool,
                problems: ProblemLog) -> bool:
    rel = display(PurePosixPath(path.relative_to(root)).as_posix())
    if not follow:
        problems.warn(rel, "symlink not followed (content.follow_symlinks is false)")
        return False
    try:
        target = Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # s.md -> s.md, a.md -> b.md -> a.md, a folder's
            problems.warn(rel, "symlink loop; skipped")
            return False
        target = Path(os.path.realpath(path))  # dangling: where it would point
    if not any(target == r or r in target.parents for r in roots):
        problems.error(rel, f"symlink points outside the content dirs ({target}); skipped")
        return False
    return True

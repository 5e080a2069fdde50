"""Finding the post files of the content dirs: the walk every one-off build starts with.

A module of its own, light to import: an up-to-date build walks and stops, and at 100k
posts the walk is most of its time.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import logging
import operator
import os
import re
import stat
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple, overload

from aggregator import nofollow
from aggregator.config import Config
from aggregator.problems import ProblemLog
from aggregator.source_keys import source_key

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


class Run(NamedTuple):
    """Plain posts next to each other in one folder, in order, kept as one string of
    their names and one array of their identities: no object a post (~80 bytes a post
    at 100k, where a PostFile with its tuples and strings is ~600). PostFiles are made
    only for the posts a build reads."""

    base: str  # the folder's location + "/"
    prefix: str  # its path relative to the content dir + "/"
    root: Path
    names: bytes  # the names joined by NULs (no name holds one), UTF-8: a name with an
    # emoji would make a str of them 4 bytes a character
    identities: array[int]  # size, mtime_ns, inode of each post in turn

    def posts(self) -> list[PostFile]:
        base, prefix, root = self.base, self.prefix, self.root
        numbers = iter(self.identities)
        return [_new_post(PostFile, (base + name, prefix + name, root, identity))
                for name, identity in zip(self.names.decode().split("\0"),
                                          zip(numbers, numbers, numbers, strict=True),
                                          strict=True)]

    def subset(self, chosen: list[int]) -> Run:
        """The run of the posts at these places in it."""
        names = self.names.split(b"\0")
        ids = self.identities
        kept: array[int] = array("q")
        for i in chosen:
            kept.extend(ids[3 * i:3 * i + 3])
        return Run(self.base, self.prefix, self.root, b"\0".join([names[i] for i in chosen]),
                    kept)


def _size(part: PostFile | Run) -> int:
    return len(part.identities) // 3 if isinstance(part, Run) else 1


class Posts(Sequence[PostFile]):
    """Post files in order, held as runs (see Run) and the few posts the walk looked
    at one by one: a PostFile is made when one is asked for, so a build holds one
    object a post only for the posts it reads (a worker: those of its chunk)."""

    def __init__(self, parts: list[PostFile | Run]) -> None:
        self._parts = parts
        self._starts: array[int] = array("q")
        count = 0
        for part in parts:
            self._starts.append(count)
            count += _size(part)
        self._count = count

    def __len__(self) -> int:
        return self._count

    def plus(self, more: list[PostFile]) -> Posts:
        """These posts, then `more`."""
        return Posts([*self._parts, *more]) if more else self

    def __iter__(self) -> Iterator[PostFile]:
        for part in self._parts:
            if isinstance(part, Run):
                yield from part.posts()
            else:
                yield part

    @overload
    def __getitem__(self, index: int) -> PostFile: ...
    @overload
    def __getitem__(self, index: slice) -> list[PostFile]: ...

    def __getitem__(self, index: int | slice) -> PostFile | list[PostFile]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step != 1:
                return list(self)[index]
            return self._range(start, stop)
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self._range(index, index + 1)[0]

    def _range(self, start: int, stop: int) -> list[PostFile]:
        out: list[PostFile] = []
        if start >= stop:
            return out
        at = bisect.bisect_right(self._starts, start) - 1
        while at < len(self._parts) and self._starts[at] < stop:
            part, first = self._parts[at], self._starts[at]
            if isinstance(part, Run):
                posts = part.posts()
                out += posts[max(0, start - first):stop - first]
            else:
                out.append(part)
            at += 1
        return out


class Folder(NamedTuple):
    """A folder's plain posts as the walk found them (what the store keeps to tell an
    unchanged folder at a glance, without comparing its posts one by one)."""

    root: str  # its content dir, as PostFile.root
    prefix: str  # its path relative to the content dir + "/" ("" for the dir itself)
    print: bytes  # a digest of its plain posts' names and identities
    posts: int  # how many
    whole: bool  # False: it also has posts the walk looked at one by one (symlinks)


class Walk:
    """A walk of the content dirs: its digest, its folders' prints, and its posts."""

    def __init__(self, parts: list[PostFile | Run], folders: list[Folder], digest: str,
                 sort: bool) -> None:
        self.digest = digest  # of every post's relative path and identity
        self.parts = parts  # in walk order
        self.folders = folders
        self.sort = sort  # several content dirs: their walks are merged by order
        self._posts: Posts | None = None

    @property
    def posts(self) -> Posts:
        """Every post, sorted by relative path."""
        if self._posts is None:
            self._posts = self.chosen(self.parts)
        return self._posts

    def chosen(self, parts: list[PostFile | Run]) -> Posts:
        """Some of the walk's parts (or parts of them: Run.subset), as posts in order."""
        if self.sort:
            ordered: list[PostFile] = sorted(Posts(parts), key=_order)
            return Posts([*ordered])
        return Posts(parts)


def discover(config: Config, problems: ProblemLog) -> list[PostFile]:
    """Every regular `*.md` file under the content dirs, sorted by relative path."""
    return list(walk_posts(config, problems).posts)


def walk_posts(config: Config, problems: ProblemLog) -> Walk:
    """The posts, and a digest of the walk made on the way (each folder's names are
    joined and hashed once, with the array of their identities)."""
    found: list[PostFile | Run] = []
    folders: list[Folder] = []
    roots = [d.resolve() for d in config.content_dirs]
    digest = hashlib.blake2b(digest_size=16)
    for root in config.content_dirs:
        # rel paths, not the longer locations: the content dirs are in the config
        digest.update(b"\1root\0")
        walker = _Walker(root, roots, config.follow_symlinks, digest, folders)
        walker.visit(str(root), "", found, problems)
    # one dir's walk order is the sorted order (see _Walker)
    return Walk(found, folders, digest.hexdigest(), sort=len(config.content_dirs) > 1)


def _order(post: PostFile) -> tuple[str, str]:
    return post.order


_FIRST = operator.itemgetter(0)
_NAME = operator.attrgetter("name")


class _Later(NamedTuple):
    """A folder to walk or a file post_file must look at, in its place in the order."""

    location: str
    rel: str  # a folder's ends in "/"
    is_folder: bool


def _joined(names: list[str]) -> bytes:
    return "\0".join(names).encode()  # (plain names: no surrogates)


def _hashed(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _Walker:
    """Walks one content dir depth first, meeting the posts in the order of their
    relative paths. A folder is listed through a descriptor, so a plain post costs one
    `fstatat` by its name (its identity): no path lookup from `/` a post. The walk is a
    loop over a stack, not a recursion: a hostile tree may be 1,000s of folders deep."""

    def __init__(self, root: Path, roots: list[Path], follow: bool,
                 digest: hashlib.blake2b, folders: list[Folder]) -> None:
        self.root, self.roots, self.follow = root, roots, follow
        self.seen_dirs: set[tuple[int, int]] = set()
        # What the walk's digest hashes, in walk order: for each folder with plain
        # posts "prefix\0count\0" and the folder's print; for each post looked at one
        # by one "\0rel\0" and its identity (no name holds a NUL: unambiguous).
        self.digest, self.folders = digest, folders

    def visit(self, top: str, prefix: str, found: list[PostFile | Run],
              problems: ProblemLog) -> None:
        # appended to, not yielded: a generator per level costs 30%
        stack: list[Iterator[Run | _Later]] = []
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
                        self.digest.update(_hashed(f"\0{post.rel}\0"))
                        self.digest.update(array("q", post.identity).tobytes())
            else:
                stack.pop()
                items, later = [], False

    def _items(self, dirpath: str, prefix: str,
               problems: ProblemLog) -> tuple[list[Run | _Later], bool]:
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
                 problems: ProblemLog) -> tuple[list[Run | _Later], bool]:
        base = dirpath if dirpath.endswith("/") else dirpath + "/"
        plain_files = [entry for entry in entries if entry.name.endswith(".md")
                       and not entry.name.startswith(".#")
                       and entry.is_file(follow_symlinks=False)]
        if plain_files and len(plain_files) == len(entries):
            run = self._plain_folder(base, prefix, plain_files)
            if run is not None:
                return [run], False
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
        items: list[Run | _Later] = []
        later = False
        whole = True  # no post in it is left to post_file
        names: list[str] = []
        identities: array[int] = array("q")
        runs: list[Run] = []
        for key, name, plain_file, is_folder in keyed:
            if plain_file is not None and plain:
                try:
                    st = plain_file.stat(follow_symlinks=False)  # fstatat(fd, name)
                except OSError:
                    pass
                else:
                    names.append(name)
                    identities.extend((st.st_size, st.st_mtime_ns, st.st_ino))
                    continue
            if names:  # a folder or a file to look at later ends the run
                runs.append(Run(base, prefix, root, _joined(names), identities))
                items.append(runs[-1])
                names, identities = [], array("q")
            items.append(_Later(base + name, prefix + key, is_folder))
            later = True
            whole = whole and is_folder
        if names:
            runs.append(Run(base, prefix, root, _joined(names), identities))
            items.append(runs[-1])
        if runs or not whole:
            self._record(prefix, runs, whole)
        return items, later

    def _plain_folder(self, base: str, prefix: str, files: list[os.DirEntry[str]]
                      ) -> Run | None:
        """A folder of plain posts alone (most folders), in one run: no per-post
        record to sort, the stats in one comprehension. None: a name that is not UTF-8
        or a stat that fails, which the general path reports."""
        files.sort(key=_NAME)
        names = [entry.name for entry in files]
        if _SURROGATE.search(prefix + "".join(names)):
            return None
        try:
            stats = [entry.stat(follow_symlinks=False) for entry in files]
        except OSError:
            return None
        run = Run(base, prefix, self.root, _joined(names), array("q", [
            number for st in stats for number in (st.st_size, st.st_mtime_ns, st.st_ino)]))
        self._record(prefix, [run], True)
        return run

    def _record(self, prefix: str, runs: list[Run], whole: bool) -> None:
        """The folder's print (its runs' names and identities), into the walk's digest."""
        hashed = hashlib.blake2b(digest_size=16)
        count = 0
        for run in runs:
            posts = len(run.identities) // 3
            hashed.update(b"%d\0%s\0" % (posts, run.names))
            hashed.update(run.identities)
            count += posts
        folder_print = hashed.digest()
        self.digest.update(_hashed(f"{prefix}\0{count}\0"))
        self.digest.update(folder_print)
        self.folders.append(Folder(str(self.root), prefix, folder_print, count, whole))


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

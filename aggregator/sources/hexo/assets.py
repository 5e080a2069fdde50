"""A post's asset folder (Hexo's `post_asset_folder: true`): the folder named as the
post file without its extension, beside it, published under the post's URL.

Files are only looked at (os.stat, never opened), and only regular files inside the
content dir: as for posts, symlinks count only with `content.follow_symlinks`, and
then never one that leads out of the content dir.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

from aggregator.media import image_type_from_url
from aggregator.model import Image

_HTML_END = re.compile(r"(?:index)?\.html?$")


class PostAssets:
    """The assets of one post: `folder` on disk, published under `url`'s folder."""

    def __init__(self, folder: Path, root: Path, post_url: str | None,
                 follow_symlinks: bool = False) -> None:
        self.folder = folder
        self.root = root
        self.follow_symlinks = follow_symlinks
        self.base = asset_base(post_url) if post_url else None
        self._real_root: str | None = None

    def url(self, name: str) -> str | None:
        """The published URL of asset `name` (a path inside the folder, as written in
        the post); None if there is no such file."""
        rel = self._rel(name)
        if rel is None or self._stat(rel) is None:
            return None
        return (self.base or "") + quote(rel)

    def image(self, src: str) -> Image | None:
        """The Image for an img src naming one of the assets (relative, or under the
        post's URL), its length the file's size and its type from its name."""
        name = src
        if self.base is not None and src.startswith(self.base):
            name = src[len(self.base):]
        rel = self._rel(unquote(name))
        found = self._stat(rel) if rel is not None else None
        if found is None or rel is None:
            return None
        return Image(url=(self.base or "") + quote(rel),
                     mime_type=image_type_from_url(rel), length=found.st_size)

    def _rel(self, name: str) -> str | None:
        """`name` as a clean relative path inside the folder; None for a URL, an
        absolute path or one that climbs out."""
        if not name or name.startswith(("/", "\\", "#")) or urlsplit(name).scheme:
            return None
        path = name.split("#", 1)[0].split("?", 1)[0]
        norm = posixpath.normpath(path)
        if norm.startswith("../") or norm in ("..", ".") or "\x00" in norm:
            return None
        return norm

    def _stat(self, rel: str) -> os.stat_result | None:
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        path = self.folder.joinpath(*rel.split("/"))
        real = os.path.realpath(path)
        if not real.startswith(self._real_root + os.sep):
            return None
        if not self.follow_symlinks and real != os.path.join(
                self._real_root, os.path.relpath(path, self.root)):
            return None  # a symlink on the way, and content.follow_symlinks is off
        try:
            found = os.stat(real)
        except (OSError, ValueError):
            return None
        return found if stat.S_ISREG(found.st_mode) else None


def asset_base(post_url: str) -> str:
    """The URL a post's assets are under: its own URL as a folder (`/a/b/` stays,
    `/a/b.html` and `/a/b/index.html` become `/a/b/`)."""
    parts = urlsplit(post_url)
    path = parts.path
    if not path.endswith("/"):
        path = _HTML_END.sub("", path).rstrip("/") + "/"
    return urljoin(post_url, path)


def asset_folder(post_file: Path) -> Path:
    """Hexo's folder for a post's assets: the post's path without its extension."""
    return post_file.with_suffix("")

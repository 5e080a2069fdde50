"""Finding another post by its slug, for Hexo's `post_link` and `post_path` tags.

Hexo looks a post up by its slug: its path under `_posts/` without the extension, or
the `:title` part of it that `new_post_name` matches (`2014-02-03-hello.md` is
`hello` under `:year-:month-:day-:title.md`). Here the slugs come from the file
names alone: the content dirs are walked (names and identities, no post read) the
first time a post links to another, and only the posts linked to are read, their
front matter only, by the reader's `linked_post`. Each slug is looked up once per
reader: once per build (the walk is the build's own when it is given), once per worker
process of a parallel build.

Hexo falls back to a post whose title is the text given; that needs every post's
front matter, so it is not done here: such a link is reported as not found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aggregator.config import Config
from aggregator.problems import ProblemLog
from aggregator.sources.hexo.tags import LinkedPost
from aggregator.sources.permalinks import read_file_name, under_posts
from aggregator.sources.walk import PostFile, discover


class PostsBySlug:
    """slug → the post published under it, as `read(post)` makes it (see module)."""

    def __init__(self, config: Config, read: Callable[[PostFile], LinkedPost | None],
                 posts: Iterable[PostFile] | None = None) -> None:
        """`posts`: every post file, when the caller has walked already."""
        self._config = config
        self._read = read
        self._posts = posts
        self._files: dict[str, PostFile] | None = None
        self._found: dict[str, LinkedPost | None] = {}

    def find(self, slug: str) -> LinkedPost | None:
        if slug not in self._found:
            post = self._index().get(slug)
            self._found[slug] = self._read(post) if post is not None else None
        return self._found[slug]

    def _index(self) -> dict[str, PostFile]:
        """slug → its post file (the first in path order when names share a slug).
        The walk's problems are not reported: the build's own walk reports them."""
        if self._files is None:
            files: dict[str, PostFile] = {}
            if self._config.hexo is not None:
                posts = self._posts
                if posts is None:
                    posts = discover(self._config, ProblemLog(echo=False))
                for post in posts:
                    slug = slug_of(self._config, post.rel)
                    if slug is not None:
                        files.setdefault(slug, post)
            self._files, self._posts = files, None
        return self._files


def slug_of(config: Config, rel: str) -> str | None:
    """The slug a post file is found by (None: not a Hexo site's)."""
    return read_file_name(config.hexo, under_posts(rel)).slug if config.hexo else None

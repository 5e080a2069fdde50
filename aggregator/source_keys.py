"""The key that names a post file everywhere (the walk, the build cache, a session):
its content dir and its path in that dir, joined by a NUL, which neither may hold."""

from __future__ import annotations


def source_key(root: str, rel: str) -> str:
    """The PostFile.source key of the post at `rel` under the content dir `root`."""
    return f"{root}\0{rel}"


def split_source(source: str) -> tuple[str, str]:
    """(content dir, relative path) of a PostFile.source key."""
    root, _, rel = source.partition("\0")
    return root, rel

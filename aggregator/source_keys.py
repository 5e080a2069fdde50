"""The key that names a post file everywhere (the walk, the entry store, a session):
its content dir and its path in that dir, joined by a NUL, which neither may hold."""

from __future__ import annotations


def source_key(root: str, rel: str) -> str:
    """The PostFile.source key of the post at `rel` under the content dir `root`."""
    return f"{root}\0{rel}"


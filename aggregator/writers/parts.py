"""A file's bytes as the writers make them and the publisher writes them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Parts:
    """Bytes to write in order, from a `source` called once to compare with the file
    there and once to write (so no part need be held: a feed of 100k entries is
    300 MB); `size`, their total, tells a file of another size apart unread."""

    source: Callable[[], Iterable[bytes]]
    size: int

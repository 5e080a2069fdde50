"""Progress of long work, as a bar on stderr: shown only when the CLI asks for it.

The stages report how far they are (`bar(...)`, then `advance(n)` per chunk of work);
unless the CLI called `show(True)` (stderr is a terminal, no --quiet) a bar is a
shared object whose methods do nothing. A shown bar appears only once its work has
run for SHOW_AFTER_SECONDS, and tqdm is imported only then: short runs (and the
up-to-date build) never load it.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

SHOW_AFTER_SECONDS = 1.0  # work shorter than this shows no bar

_shown = False
_open: list[_Bar] = []  # bars on screen, innermost last


def show(on: bool) -> None:
    """Turn bars on (stderr is a terminal and the user did not ask for quiet) or off."""
    global _shown
    _shown = on


class Silent:
    """A bar that shows nothing (the default)."""

    def advance(self, n: int = 1) -> None:
        """Nothing to show."""

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Nothing to close."""


_SILENT = Silent()


class _Bar(Silent):
    """Counts from the start; draws with tqdm once the work has lasted long enough."""

    def __init__(self, what: str, total: int, unit: str) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.count = 0
        self.started = time.monotonic()
        self.drawn: Any = None  # the tqdm bar, once shown

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self.drawn is not None:
            self.drawn.update(n)
        elif time.monotonic() - self.started >= SHOW_AFTER_SECONDS:
            self._draw()

    def _draw(self) -> None:
        from tqdm import tqdm

        # No monitor thread: with one running, the build would not fork its workers.
        tqdm.monitor_interval = 0
        self.drawn = tqdm(total=self.total, initial=self.count, desc=self.what,
                          unit=self.unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                          mininterval=0.25)
        _open.append(self)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.drawn is not None:
            self.drawn.close()
            _open.remove(self)


def bar(what: str, total: int, unit: str) -> Silent:
    """A bar for `total` units of work called `what` (`with bar(...) as b: b.advance()`)."""
    if not _shown or total <= 0:
        return _SILENT
    return _Bar(what, total, unit)


def write(line: str) -> bool:
    """Print `line` above the bars on screen (so a problem does not break a bar); False
    when no bar is shown, and the caller prints it as usual."""
    if not _open:
        return False
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
    return True

"""watchdog on the content dirs → debounced rebuild requests.

A burst of events (a thousand posts copied in, an editor's save dance) becomes one
request once the dir has been quiet for `quiet` seconds; a steady stream still fires
at least every `max_delay` seconds so the feeds never lag far behind.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from aggregator.sources.walk import is_editor_artefact

log = logging.getLogger(__name__)

# Opened / closed-without-write / attrib are what our own build causes by reading the
# posts: reacting to them would rebuild forever.
_CHANGES = {EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_DELETED, EVENT_TYPE_MOVED,
            EVENT_TYPE_CLOSED}


def _is_post(path: str | bytes) -> bool:
    name = os.path.basename(os.fsdecode(path))
    return name.endswith(".md") and not is_editor_artefact(name)


def is_relevant(event: FileSystemEvent) -> bool:
    """Posts created/changed/deleted/moved; folders created, deleted or moved."""
    if event.event_type not in _CHANGES:
        return False
    if event.is_directory:
        # A folder's own mtime changes with every file in it; the files report themselves.
        return event.event_type != EVENT_TYPE_MODIFIED
    paths: list[str | bytes] = [event.src_path]
    if event.event_type == EVENT_TYPE_MOVED:
        paths.append(event.dest_path)  # editor saves: foo.md.swp → foo.md
    return any(_is_post(p) for p in paths)


class Debouncer:
    """Calls `fire(count)` from its own thread after a quiet window, capped at max_delay."""

    def __init__(self, fire: Callable[[int], None], quiet: float = 0.05,
                 max_delay: float = 1.0) -> None:
        self.fire, self.quiet, self.max_delay = fire, quiet, max(max_delay, quiet)
        self._cv = threading.Condition()
        self._first: float | None = None
        self._last = 0.0
        self._count = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="debounce", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        with self._cv:
            now = time.monotonic()
            if self._first is None:
                self._first = now
            self._last = now
            self._count += 1
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._stopped:
                    return
                if self._first is None:
                    self._cv.wait()
                    continue
                due = min(self._last + self.quiet, self._first + self.max_delay)
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                count, self._first, self._count = self._count, None, 0
            try:
                self.fire(count)
            except Exception:  # a failing callback must not kill the watcher
                log.exception("rebuild request failed")


class _Handler(FileSystemEventHandler):
    def __init__(self, on_change: Callable[[FileSystemEvent], None]) -> None:
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if is_relevant(event):
            log.debug("file event: %s %s", event.event_type, event.src_path)
            self.on_change(event)


class ContentWatcher:
    """Recursive watches on every content dir feeding one Debouncer."""

    def __init__(self, dirs: Iterable[Path], fire: Callable[[int], None],
                 quiet: float = 0.05, max_delay: float = 1.0) -> None:
        self.dirs = tuple(dirs)
        self.debouncer = Debouncer(fire, quiet, max_delay)
        self._observer: BaseObserver | None = None
        self._lock = threading.Lock()
        self._changed: set[str] | None = set()  # None: a folder changed, walk everything

    def _record(self, event: FileSystemEvent) -> None:
        with self._lock:
            if event.is_directory:
                self._changed = None
            elif self._changed is not None:
                self._changed.add(os.fsdecode(event.src_path))
                if event.event_type == EVENT_TYPE_MOVED:
                    self._changed.add(os.fsdecode(event.dest_path))
        self.debouncer.poke()

    def take_changes(self) -> set[str] | None:
        """The paths changed since the last call (None: unknown, rescan everything)."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def start(self) -> None:
        self.debouncer.start()
        handler = _Handler(self._record)
        try:
            self._observer = self._observe(Observer(), handler)
        except OSError as exc:
            # Typically the inotify watch limit (fs.inotify.max_user_watches) on a huge
            # tree: stat-polling is slower to notice but still correct.
            log.warning("cannot watch the content dirs with inotify (%s); polling them "
                        "every 2 s instead", exc)
            self._observer = self._observe(PollingObserver(timeout=2), handler)
        log.debug("watching %s", ", ".join(map(str, self.dirs)))

    def _observe(self, observer: BaseObserver, handler: _Handler) -> BaseObserver:
        for folder in self.dirs:
            observer.schedule(handler, str(folder), recursive=True)
        try:
            observer.start()
        except OSError:
            observer.unschedule_all()
            raise
        return observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self.debouncer.stop()

"""Atomic publishing into the output dir.

Each file: temp file in the same folder → fsync → os.replace, so a reader (or a kill)
only ever sees the old or the new bytes. Unchanged bytes are not rewritten (mtime and
ETag stay stable for feed readers). A manifest of what we published lets the next run
remove feeds of vanished categories without touching anything else in the folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".aggregator-tmp"
MANIFEST = ".aggregator-manifest"


class PublishError(Exception):
    """Writing the output failed; what was there before is still there."""


class Publisher:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.written: list[str] = []
        self.unchanged: list[str] = []
        self.removed: list[str] = []
        self._published: set[str] = set()

    def prepare(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PublishError(f"{self.out_dir}: cannot create output dir: {exc}") from exc
        self.remove_temp_files()

    def remove_temp_files(self) -> int:
        """Temp files left by a killed build: never valid output, always safe to drop."""
        count = 0
        for path in self.out_dir.rglob(f"*{TEMP_SUFFIX}"):
            try:
                path.unlink()
                count += 1
            except OSError as exc:
                log.warning("%s: cannot remove stale temp file: %s", path, exc)
        return count

    def write(self, rel: str, data: bytes) -> bool:
        """Publish `data` at `rel` (relative, '/'-separated). True if the file changed."""
        target = self._target(rel)
        self._published.add(rel)
        try:
            if target.is_file() and target.stat().st_size == len(data) \
                    and target.read_bytes() == data:
                self.unchanged.append(rel)
                return False
        except OSError:
            pass
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(target, data)
        except OSError as exc:
            raise PublishError(f"{target}: cannot publish: {exc.strerror or exc}") from exc
        self.written.append(rel)
        return True

    def keep(self, rel: str) -> None:
        """`rel` is current as it is: published, not rewritten."""
        self._published.add(rel)
        self.unchanged.append(rel)

    def _target(self, rel: str) -> Path:
        target = (self.out_dir / rel).resolve()
        root = self.out_dir.resolve()
        if root not in target.parents:  # slugs make this impossible; check anyway
            raise PublishError(f"{rel}: refusing to write outside {root}")
        return target

    def finish(self) -> None:
        """Remove what the last run published and this one did not; save the manifest."""
        manifest = self.out_dir / MANIFEST
        try:
            previous = set(manifest.read_text(encoding="utf-8").split("\n")) - {""}
        except OSError:
            previous = set()
        for rel in sorted(previous - self._published):
            try:
                target = self._target(rel)
            except PublishError:
                continue
            try:
                target.unlink()
                self.removed.append(rel)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("%s: cannot remove stale feed: %s", target, exc)
                continue
            self._remove_empty_parents(target.parent)
        listing = "\n".join(sorted(self._published)) + "\n"
        try:
            _atomic_write(manifest, listing.encode("utf-8"))
        except OSError as exc:
            raise PublishError(f"{manifest}: cannot write manifest: {exc}") from exc

    def _remove_empty_parents(self, folder: Path) -> None:
        root = self.out_dir.resolve()
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _atomic_write(target: Path, data: bytes) -> None:
    temp = target.with_name(f".{target.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""The fingerprints that say when stored work is still valid: every setting and
library version that shapes a stage's output is in its fingerprint, so changing one
invalidates exactly what that stage stored.

Kept apart from render.py, which imports the renderers: a build that finds nothing
changed needs these, and not the ~0.15 s of imports behind them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys

from aggregator import __version__
from aggregator.config import Config
from aggregator.sanitize import SANITIZER_VERSION


@functools.cache
def version(package: str) -> str:
    """An installed package's version, as importlib.metadata finds it: the first
    distribution of that name on sys.path. Read from the names of the `.dist-info`
    folders (PEP 427: `{name}-{version}.dist-info`): importing importlib.metadata costs
    ~50 ms, a third of an up-to-date build's imports."""
    found = _dist_info_versions().get(_normalised(package))
    if found is None:  # an egg-info or zipped install: ask the slow way
        from importlib import metadata
        found = metadata.version(package)
    return found


@functools.cache
def _dist_info_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for folder in sys.path:
        try:
            with os.scandir(folder or ".") as entries:
                names = [entry.name for entry in entries if entry.name.endswith(".dist-info")]
        except OSError:
            continue
        for name in names:
            project, _, release = name.removesuffix(".dist-info").rpartition("-")
            if project and release:
                versions.setdefault(_normalised(project), release)
    return versions


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def fingerprint_of(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=16).hexdigest()


# Bumped when a post's body is made into other html for the same file (sources/hexo):
# 1 = Hexo's tag plugins, Markdown as hexo-renderer-marked, excerpts, asset folders.
BODY_FORMAT = 1


def read_fingerprint(config: Config) -> str:
    """What shapes an Entry read from a post file (besides the file itself)."""
    return fingerprint_of(__version__, version("PyYAML"), version("markdown-it-py"),
                 version("mdit-py-plugins"), version("linkify-it-py"), BODY_FORMAT,
                 str(config.timezone), config.post_url, config.id_date,
                 config.site_host, config.site_url, config.body, config.max_depth,
                 config.max_post_bytes, config.follow_symlinks,
                 tuple(map(str, config.content_dirs)), config.hexo)


# Bumped when the writers (writers/feeds.py, entry_xml.py, jsonfeed.py, pages.py)
# write other bytes for the same entry: 2 = ids validators reject are published as
# tag: URIs; 3 = JSON Feed items and page cards.
ENTRY_FORMAT = 3


def render_fingerprint(config: Config) -> str:
    """What shapes an entry's sanitised, serialised bytes (besides the entry)."""
    return fingerprint_of(__version__, ENTRY_FORMAT, SANITIZER_VERSION, version("nh3"),
                          version("selectolax"),
                          version("feedgen"), version("lxml"),
                          config.site_url, config.site_title, config.full_content,
                          config.drop_selectors, config.iframe_hosts,
                          config.id_date,  # in the ids published for invalid ones
                          config.formats, config.pages)  # which renders are made


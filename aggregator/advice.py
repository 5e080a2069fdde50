"""Warnings about defaults that give silently wrong output: said once per config load.

A config without `site.url` publishes self links, the index and the OPML under
`http://localhost:8080/`; one without `site.post_url` publishes post entries with no
link at all. Both builds are otherwise clean, so nothing else tells the user.
"""

from __future__ import annotations

import os

from aggregator.config import Config
from aggregator.problems import ProblemLog


def config_label(config: Config) -> str:
    """The config's path as a user would type it: relative to the working directory
    when it is below it, else absolute."""
    try:
        rel = os.path.relpath(config.path)
    except ValueError:  # (another drive)
        return str(config.path)
    return str(config.path) if rel.startswith("..") else rel


def warn_defaults(config: Config, linkless: int | None, problems: ProblemLog) -> None:
    """A warning for each silent default the config leaves in place.
    `linkless`: entries the build published without a link (None: not counted)."""
    site = config.raw.get("site")
    given = site if isinstance(site, dict) else {}
    where = config_label(config)
    if given.get("url") is None:
        problems.warn(where, f"site.url is not set: every feed's self link, the index and "
                             f"the OPML point to {config.site_url}; set site.url to where "
                             f"output.dir is published")
    if config.post_url is None and linkless != 0:
        count = "entries without a `link` in their front matter have" if linkless is None \
            else f"{linkless} entr{'y has' if linkless == 1 else 'ies have'}"
        problems.warn(where, f"{count} no link: set site.post_url (e.g. "
                             f"\"https://example.org/{{path}}/\") so every post gets one")

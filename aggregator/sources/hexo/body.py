"""A post's body as Hexo renders it: tag plugins, Markdown, excerpt and assets.

The order is Hexo's: fenced code and tags are set aside, Markdown renders the rest,
the tags are put back and rendered over its HTML, then the code is put back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from aggregator.config import Config
from aggregator.model import Image
from aggregator.sources.hexo import markdown, plugins
from aggregator.sources.hexo.assets import PostAssets
from aggregator.sources.hexo.excerpt import excerpt_of
from aggregator.sources.hexo.tags import (
    Holes,
    LinkedPost,
    TagContext,
    protect,
    protect_fences,
    render_tags,
    restore,
    restore_code,
)

_IMG_SRC = re.compile(r"""<img\b[^>]*?\ssrc\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""",
                      re.IGNORECASE)


@dataclass(frozen=True)
class BodySettings:
    """What rendering a body needs from its Hexo site (its _config.yml and its posts):
    whether posts have asset folders, and how to find another post by slug or title
    (for post_link and post_path; None: not known, those tags are reported)."""

    post_asset_folder: bool = False
    find_post: Callable[[str], LinkedPost | None] | None = None


def site_of(config: Config) -> BodySettings:
    """What a config says about its posts' bodies: Hexo's `post_asset_folder` from its
    _config.yml (`content.hexo_config`); no index of posts."""
    return BodySettings(post_asset_folder=config.hexo is not None
                        and config.hexo.post_asset_folder)


@dataclass(frozen=True)
class Rendered:
    html: str
    excerpt: str | None  # the html before <!-- more -->; None without one
    image: Image | None  # the body's first image when it is one of the post's assets


def render_body(body: str, is_markdown: bool, site: BodySettings, assets: PostAssets | None,
                warn: Callable[[str, str], None]) -> Rendered:
    """The body's html. `assets`: the post's asset folder (None: it has none);
    `warn(tag name, message)` reports a problem with one of its tags."""
    ctx = TagContext(markdown=markdown.render, warn=warn, find_post=site.find_post,
                     asset_url=assets.url if assets is not None else _no_asset,
                     inline_tags=plugins.INLINE, block_tags=plugins.BLOCKS)
    if is_markdown:
        holes = Holes()
        text = protect_fences(body, holes, _fenced_code)
        text = protect(text, holes) if "{" in text else text
        html = markdown.render(text)
        html = restore_code(render_tags(restore(html, holes), ctx), holes)
    else:
        html = render_tags(body, ctx)
    image = None
    if assets is not None and "<img" in html:
        html, image = _resolve_images(html, assets)
    return Rendered(html=html, excerpt=excerpt_of(html), image=image)


def _no_asset(_name: str) -> str | None:
    return None


def _fenced_code(code: str, info: str) -> str:
    return plugins.pre_code(code, info.split(None, 1)[0] if info.strip() else "")


def _resolve_images(html: str, assets: PostAssets) -> tuple[str, Image | None]:
    """Relative img srcs naming the post's assets made their published URLs; the first
    image, when it is an asset, with its length from the file."""
    first: list[Image | None] = []

    def resolve(match: re.Match[str]) -> str:
        src = next(g for g in match.groups() if g is not None)
        found = assets.image(src)
        if not first:
            first.append(found)
        if found is None or src == found.url:
            return match.group(0)
        url = escape(found.url)
        start = match.start(match.lastindex or 0) - match.start()
        end = match.end(match.lastindex or 0) - match.start()
        whole = match.group(0)
        return whole[:start] + url + whole[end:]
    html = _IMG_SRC.sub(resolve, html)
    return html, first[0] if first else None

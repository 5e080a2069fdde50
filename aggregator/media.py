"""Image MIME types from URLs: an image extension anywhere in the path or query."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

IMAGE_TYPES = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "jpe": "image/jpeg", "png": "image/png",
    "gif": "image/gif", "webp": "image/webp", "avif": "image/avif", "bmp": "image/bmp",
}
# `.jpg` followed by end, `!`, `?`, `&`, `/`, `_` …: Bing's `th?id=OHR.x_1920x1080.jpg&rf=`,
# jandan's `.jpg!custom`, OSS's `.jpg?x-oss-process=…`
_EXTENSION = re.compile(r"\.(jpe?g|jpe|png|gif|webp|avif|bmp)(?![a-z0-9])", re.IGNORECASE)


def image_type_from_url(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    for piece in (parts.path, parts.query):
        matches = _EXTENSION.findall(piece)
        if matches:
            return IMAGE_TYPES[matches[-1].lower()]
    return None

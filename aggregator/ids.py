"""Entry ids that feed validators and readers accept.

Atom's id and RSS's guid must be IRIs, and the W3C validator also checks the syntax of
the two schemes ids use most: `urn:` (RFC 8141; `urn:uuid:` must hold a UUID, RFC
9562) and `tag:` (RFC 4151). An id from a post or an upstream feed is published as it
is only when it passes those checks; anything else is wrapped in a `tag:` URI of ours,
the same way every time, so it stays stable.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# Characters a URI may hold as they are (RFC 3986's unreserved, reserved and "%");
# anything beyond ASCII is left to IRIs (RFC 3987).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[0-9A-Za-z;/?:@&=+$._!~*'()%,#\[\]-]+$")
_SPACE = re.compile(r"\s")
_UUID = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
                   re.IGNORECASE)
_URN = re.compile(r"^urn:[a-z0-9][a-z0-9-]{1,31}:(?:[a-z0-9()+,.:=@;$_!*'-]|%[0-9a-f]{2})+$",
                  re.IGNORECASE)
# tag:[email@]dns.name,YYYY[-MM[-DD]]:specific[#fragment], the authority in lower case
_TAG = re.compile(r"^tag:(?:[a-z0-9._-]+@)?[a-z0-9.-]+,\d{4}(?:-\d{2}(?:-\d{2})?)?:"
                  r"[0-9A-Za-z;/?:@&=+$._!~*'()%,-]*(?:#[0-9A-Za-z;/?:@&=+$._!~*'()%,-]*)?$")


def is_valid_id(value: str) -> bool:
    """True for an absolute IRI that validators take as an entry id."""
    if value.isascii():  # the usual case: no IRI characters to set aside
        if not _URI.match(value):
            return False
    elif not _URI.match("".join(c for c in value if c < "\x80")) or _SPACE.search(value):
        return False
    scheme = value.split(":", 1)[0].lower()
    if scheme == "tag":
        return bool(_TAG.match(value))
    if scheme == "urn":
        if value.lower().startswith("urn:uuid:"):
            return bool(_UUID.match(value))
        return bool(_URN.match(value))
    return True


def published_id(value: str, site_host: str, id_date: str) -> str:
    """The id an entry is published under: `value` when it is a valid id, else a tag:
    URI made from it (entries keep their own id inside, for merging duplicates)."""
    if is_valid_id(value):
        return value
    return f"tag:{site_host},{id_date}:id:{quote(value, safe='')}"

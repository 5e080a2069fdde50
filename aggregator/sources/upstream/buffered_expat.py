"""feedparser's XML parser, with expat told to hand over text in whole runs.

Without `buffer_text`, expat calls the character handler once per run between
entities: an escaped HTML description (`&lt;p&gt;…`) arrives in hundreds of pieces,
and feedparser does dictionary work for each. Coalescing them made parsing the
1,000-feed bench set ~1.5x faster with identical results (SAX allows any split of
character data; tests/test_upstream_corpus.py compares both on every corpus feed).

feedparser picks its parser from `feedparser.api.PREFERRED_XML_PARSERS` (module names
with a `create_parser()`), so this is plugged in there, not patched into the stdlib.
"""

from __future__ import annotations

from typing import Any
from xml.sax.expatreader import ExpatParser


class BufferedExpatParser(ExpatParser):
    def reset(self) -> None:
        super().reset()
        self._parser.buffer_text = True  # type: ignore[attr-defined]  # set by reset()


def create_parser(*args: Any, **kwargs: Any) -> BufferedExpatParser:
    return BufferedExpatParser(*args, **kwargs)

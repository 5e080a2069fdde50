"""The lean parsing path (lxml) against feedparser: for every feed the lean path takes,
the normalised entries, their order and the warnings must be the ones feedparser's
path gives. Checked on every corpus feed and on thousands of generated RSS 2.0, RSS 1.0
and Atom 1.0 feeds built from the awkward cases (links after guids, empty titles, xml:base,
mojibake, C1 characters, tag quirks, unknown and colliding elements, comments)."""

from __future__ import annotations

import functools
import io
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser
import pytest

from aggregator.config import UpstreamSource
from aggregator.sources.upstream.lean import parse_lean
from aggregator.sources.upstream.normalise import Normaliser
from aggregator.sources.upstream.parse import ParsedFeed, ParseError, parse_feed
from aggregator.state.upstream import dump_entries

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "upstream"
NOW = datetime(2026, 11, 26, tzinfo=UTC)
URL = "http://feeds.example.org/blog/feed.xml"


def _normalised(parsed: ParsedFeed) -> tuple[Any, list[str]]:
    source = UpstreamSource(url=parsed.url, category=("Up",))
    entries = dump_entries(Normaliser(source, "example.org", "2026", NOW).entries(parsed))
    return entries, parsed.warnings


def _feedparser_path(body: bytes, content_type: str, url: str) -> ParsedFeed:
    """parse.py's feedparser call, without the lean path."""
    result = feedparser.parse(io.BytesIO(body), response_headers={
        "content-type": content_type, "content-location": url},
        sanitize_html=False, resolve_relative_uris=False)
    return ParsedFeed(result.get("version") or "unknown", url, "", xml=result)


def _same_as_feedparser(body: bytes, content_type: str = "application/xml",
                        url: str = URL) -> bool:
    """True when the lean path took the feed (and gave feedparser's result); False when
    it left it to feedparser."""
    lean = parse_lean(body, content_type, url)
    if lean is None or not lean.entries:
        return False
    old = _feedparser_path(body, content_type, url)
    assert old.kind == lean.version, body.decode("utf-8", "replace")
    ours = _normalised(ParsedFeed(lean.version, url, "", xml=lean))
    theirs = _normalised(old)
    assert ours == theirs, body.decode("utf-8", "replace")
    return True


def test_every_corpus_feed_the_lean_path_takes_reads_as_feedparser_reads_it() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} absent (../shared is not beside the project)")
    taken = [path.name for path in sorted(CORPUS.iterdir())
             if path.suffix != ".json" and _same_as_feedparser(path.read_bytes())]
    assert len(taken) >= 24, taken  # it must actually take the plain RSS and Atom ones
    # and the ones with XHTML content and georss (osm), and elements inside links (bbc)
    assert {"kagisearch__fastfeedparser__osm.xml",
            "rss2email__rss2email__bbc-chinese_feed.atom"} <= set(taken)


def test_parse_feed_uses_the_lean_path_and_falls_back() -> None:
    rss = _rss([_item(["<title>One</title>", "<guid>https://x.example/1</guid>"])])
    assert parse_feed(rss, {"content-type": "application/rss+xml"}, URL).xml.__class__ \
        .__name__ == "LeanFeed"
    rdf = (b'<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
           b'syntax-ns#" xmlns="http://purl.org/rss/1.0/"><channel rdf:about="x"><title>t'
           b'</title></channel><item rdf:about="https://x.example/1"><title>One</title>'
           b'<link>https://x.example/1</link></item></rdf:RDF>')
    parsed = parse_feed(rdf, {"content-type": "application/rdf+xml"}, URL)
    assert parsed.kind == "rss10" and parsed.entry_count == 1  # feedparser read it


def test_a_media_title_after_a_source_keeps_the_title_but_not_its_type() -> None:
    """Found by the generator: <source> unlocks the title, and a later media:title
    cannot replace the item's title but does replace its detail (feedparser checks the
    depth for the value only), so an HTML-looking title is read as text."""
    item = _item(["<title>a &lt;/span&gt; close</title>", "<source url=\"https://s.example/\">"
                  "s</source>", "<media:content url=\"https://m.example/x.jpg\">"
                  "<media:title>Plain title</media:title></media:content>"])
    assert _same_as_feedparser(_rss([item]))


def test_a_failing_lean_path_costs_speed_not_the_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the fast path (simulated: no input makes it raise) falls back."""
    import aggregator.sources.upstream.parse as parse_module

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(parse_module, "parse_lean", broken)
    rss = _rss([_item(["<title>One</title>", "<guid>https://x.example/1</guid>"])])
    parsed = parse_feed(rss, {"content-type": "application/rss+xml"}, URL)
    assert parsed.kind == "rss20" and parsed.entry_count == 1
    assert parsed.xml.__class__.__name__ != "LeanFeed"


@pytest.mark.parametrize("why, body", [
    ("doctype", b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY e "x">]><rss version="2.0">'
                b"<channel><item><title>&e;</title></item></channel></rss>"),
    ("RSS 0.91", b'<rss version="0.91"><channel><item><title>t</title></item></channel></rss>'),
    ("itunes:summary sets the summary",
     b'<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel>'
     b"<item><title>t</title><itunes:summary>s</itunes:summary></item></channel></rss>"),
    ("a second description becomes content",
     b'<rss version="2.0"><channel><item><description>a</description><description>b'
     b"</description></item></channel></rss>"),
    ("an unknown element named like a key the normaliser reads",
     b'<rss version="2.0"><channel><item><title>t</title><published_parsed>x'
     b"</published_parsed></item></channel></rss>"),
    ("xhtml content in the Atom namespace",
     b'<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>x</id>'
     b'<content type="xhtml"><div><p>hi</p></div></content></entry></feed>'),
    ("xhtml summary", b'<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>x</id>'
                      b'<summary type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">'
                      b"<p>hi</p></div></summary></entry></feed>"),
    ("malformed", b'<rss version="2.0"><channel><item><title>t &nbsp;</title></item>'
                  b"</channel></rss>"),
    ("an undeclared prefix (feedparser: bozo)",
     b'<rss version="2.0"><channel><item><title>t</title><foo:bar>x</foo:bar></item>'
     b"</channel></rss>"),
    ("nested past lxml's depth limit",
     b'<rss version="2.0"><channel><item><title>t</title><x>' + b"<a>" * 3000
     + b"</a>" * 3000 + b"</x></item></channel></rss>"),
    ("text/plain is bozo", b""),
])
def test_left_to_feedparser(why: str, body: bytes) -> None:
    if not body:
        body, content_type = _rss([_item(["<title>t</title>"])]), "text/plain"
    else:
        content_type = "application/xml"
    assert parse_lean(body, content_type, URL) is None, why


# -- generated feeds -----------------------------------------------------------------

TEXTS = ["Plain title", "  padded  ", "", "Fish &amp; chips", "&lt;b&gt;bold&lt;/b&gt; news",
         "<![CDATA[<p>cdata <i>html</i></p>]]>", "caf\u00e9 \u4e2d\u6587", "Ã©tÃ© mojibake",
         "C1 &#133; and &#150; dashes", "a &lt;/span&gt; close", "&amp;copy; &amp;bogus;",
         "x &lt; y &amp;&amp; z", "line\nbreak", "&#x1F600; emoji", "&lt;script&gt;x"]
URIS = ["https://x.example/a", "/relative/path", "rel?a=1&amp;b=2", "", "  https://x.example/sp ",
        "urn:uuid:1234", "tag:x.example,2020:1", "javascript:alert(1)", "http:///triple",
        "https://x.example/a&amp;amp;b", "../up", "//proto.example/x", "mailto:a@b.example"]
DATES = ["Mon, 02 Jun 2025 10:00:00 GMT", "2025-06-02T10:00:00Z", "2025-06-02", "garbage",
         "", "Tue, 31 Feb 2025 10:00:00 +0200", "2031-01-01T00:00:00Z", "1960-01-01T00:00:00Z",
         " 2024-12-01T08:30:00+05:30 "]
TYPES = ["", ' type="html"', ' type="text"', ' type="text/html"', ' type="TEXT/PLAIN"']
LINK_TYPES = ["text/html", "image/png", "application/xhtml+xml", ""]
BASES = ["", "", "", ' xml:base="https://base.example/dir/"', ' xml:base="sub/"',
         ' xml:lang="en"', ' base="https://other.example/"']


def _pick(rng: random.Random, values: list[str]) -> str:
    return rng.choice(values)


def _draws(rng: random.Random) -> tuple[Callable[[], str], ...]:
    """A random text, URI, date and base/lang attribute, each drawn when called."""
    return tuple(functools.partial(rng.choice, values) for values in (TEXTS, URIS, DATES, BASES))


def _rss_children(rng: random.Random) -> list[str]:
    t, u, d, b = _draws(rng)
    pool = [
        lambda: f"<title{b()}>{t()}</title>",
        lambda: f"<link{b()}>{u()}</link>",
        lambda: f'<guid isPermaLink="{rng.choice(["true", "false", "TRUE"])}"{b()}>{u()}</guid>',
        lambda: f"<guid>{u()}</guid>",
        lambda: f"<description{_pick(rng, TYPES)}{b()}>{t()}</description>",
        lambda: f"<content:encoded{b()}>{t()}</content:encoded>",
        lambda: f"<pubDate>{d()}</pubDate>",
        lambda: f"<dc:date>{d()}</dc:date>",
        lambda: f"<dcterms:modified>{d()}</dcterms:modified>",
        lambda: f"<author>{rng.choice(['a@b.example (Ann)', 'Bob', '', ' c@d.example '])}</author>",
        lambda: f"<dc:creator>{t()}</dc:creator>",
        lambda: f"<category>{t()}</category>",
        lambda: f'<category domain="{u()}">{t()}</category>',
        lambda: f'<enclosure url="{u()}" type="{rng.choice(["image/PNG", "audio/mpeg", ""])}"'
                f' length="{rng.choice(["12", "-1", "x", ""])}"/>',
        lambda: f'<media:content url="{u()}" medium="image" fileSize="9"/>',
        lambda: f'<media:content url="{u()}"><media:title{b()}>{t()}</media:title>'
                f"{rng.choice(['', '<media:title>again</media:title>'])}</media:content>",
        lambda: f'<media:thumbnail url="{u()}"/>',
        lambda: f"<media:thumbnail>{u()}</media:thumbnail>",
        lambda: f'<atom:link rel="{rng.choice(["alternate", "self", "enclosure", "related"])}"'
                f' href="{u()}" type="{rng.choice(["text/html", "image/png", "TEXT/HTML"])}"/>',
        lambda: f'<source url="{u()}">{t()}</source>',
        lambda: f"<comments>{u()}</comments>",
        lambda: f"<wfw:commentRss>{u()}</wfw:commentRss>",
        lambda: f"<slash:comments>{rng.randint(0, 9)}</slash:comments>",
        lambda: f"<foo:bar>{t()}</foo:bar>",
        lambda: f'<foo:bar x="1">{t()}</foo:bar>',
        lambda: "<!-- a comment -->",
        lambda: f'<enclosure href="{u()}" TYPE="Image/JPEG" Length="3"/>',
        lambda: f'<link foo:href="{u()}" href="{u()}" Rel="Alternate"/>',
        lambda: f'<media:thumbnail url="{u()}">{u()}</media:thumbnail>',
        lambda: f"<title>{t()}<!-- inside --></title>",
        lambda: f"<foo:wrap><title>{t()}</title></foo:wrap>",
        lambda: f"<itunes:explicit>{rng.choice(['yes', 'no', 'clean'])}</itunes:explicit>",
        lambda: f"<itunes:summary>{t()}</itunes:summary>",  # handled: the feed falls back
    ]
    weights = [3] * (len(pool) - 1) + [1]
    return [rng.choices(pool, weights)[0]() for _ in range(rng.randint(0, 9))]


def _atom_children(rng: random.Random) -> list[str]:
    t, u, d, b = _draws(rng)
    pool = [
        lambda: f"<title{_pick(rng, TYPES)}{b()}>{t()}</title>",
        lambda: f"<id{b()}>{u()}</id>",
        lambda: f'<link href="{u()}"{b()}/>',
        lambda: f'<link rel="{rng.choice(["alternate", "self", "enclosure", "related", "edit"])}"'
                f' href="{u()}" type="{_pick(rng, LINK_TYPES)}"'
                f' length="{rng.choice(["5", ""])}"/>',
        lambda: f"<published>{d()}</published>",
        lambda: f"<updated>{d()}</updated>",
        lambda: f"<author{b()}><name>{t()}</name><email>e@x.example</email></author>",
        lambda: f"<author><name>{t()}</name><uri{b()}>{u()}</uri></author>",
        lambda: f"<author><email> {t()} </email></author>",
        lambda: f"<content{_pick(rng, TYPES)}{b()}>{t()}</content>",
        lambda: f"<summary{_pick(rng, TYPES)}{b()}>{t()}</summary>",
        lambda: f'<category term="{t()}" scheme="{u()}" label="{t()}"/>',
        lambda: f'<category term="{t()}"/>',
        lambda: f"<contributor><name>{t()}</name></contributor>",
        lambda: f"<rights>{t()}</rights>",
        lambda: f'<media:thumbnail url="{u()}"/>',
        lambda: "<!-- a comment -->",
        lambda: f"<foo:bar>{t()}</foo:bar>",
        lambda: f'<link rel="{rng.choice(["alternate", "related"])}" href="{u()}"{b()}>'
                + "".join(_inside_link(rng) for _ in range(rng.randint(1, 4))) + "</link>",
        lambda: f'<media:content url="{u()}">{_thumbnail(rng)}</media:content>',
        lambda: f'<content type="{rng.choice(["xhtml", "application/xhtml+xml"])}"{b()}>'
                f"{_xhtml(rng)}</content>",
        lambda: rng.choice(GEORSS),
    ]
    return [rng.choice(pool)() for _ in range(rng.randint(0, 9))]


XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'


def _xhtml(rng: random.Random, depth: int = 0) -> str:
    """Atom XHTML content: mostly one <div> around it all, sometimes not."""
    t, u, _, b = _draws(rng)
    space = rng.choice(["", "\n  ", " "])
    inner = "".join(_xhtml_node(rng, depth) for _ in range(rng.randint(0, 4)))
    return rng.choice([
        f"{space}<div {XHTML}>{space}{inner}{space}</div>{space}",
        f'<div {XHTML} class="c">{inner}</div>',
        f"<div {XHTML}>{inner}</div><div {XHTML}>{t()}</div>",
        f"<p {XHTML}>{inner}</p>",
        f"{t()}<div {XHTML}>{inner}</div>",
        f"<xhtml:div xmlns:xhtml=\"http://www.w3.org/1999/xhtml\">{t()}</xhtml:div>",
        f"<div>{t()}</div>",  # the Atom namespace: feedparser
        inner,
    ])


def _xhtml_node(rng: random.Random, depth: int) -> str:
    t, u, _, b = _draws(rng)
    nested = _xhtml_node(rng, depth + 1) if depth < 3 else t()
    return rng.choice([
        t(), t(), "\n ", "<!-- c -->", "<?pi x?>", "<br/>", f'<img src="{u()}" alt="{t()}"/>',
        f'<a href="{u()}" REL="NoFollow" Title="{t()}">{nested}</a>',
        f"<p>{nested}</p>", f"<div>{nested}</div>", "<div/>", f"<P>{t()}</P>",
        f'<span style="x" type="TEXT">{nested}</span>',
        f"<table><tr><td>{nested}</td></tr></table>",
        "<style>th { text-align: left }</style>", f"<![CDATA[{t()}]]>", "&#233;&amp;&lt;",
        f'<p lang="en"{b()}>{t()}</p>',  # xml:base and xml:lang: feedparser
        '<svg xmlns="http://www.w3.org/2000/svg"><circle r="1"/></svg>',  # feedparser
        "<body>x</body>",  # feedparser ends its content there
        f'<a xmlns:xlink="http://www.w3.org/1999/xlink" href="{u()}">x</a>',  # feedparser
    ])


def _thumbnail(rng: random.Random) -> str:
    t, u, _, b = _draws(rng)
    space = rng.choice(["", "\n   ", " "])
    return rng.choice([
        f'<media:thumbnail url="{u()}" width="106"{b()}>{space}<img alt="" src="{u()}"/>'
        f"{space}</media:thumbnail>",
        f"<media:thumbnail{b()}>{space}<img src=\"{u()}\"/>{space}</media:thumbnail>",
        f'<media:thumbnail url="{u()}"/>',
        f"<media:thumbnail>{u()}</media:thumbnail>",
        f"<media:thumbnail>{u()}<img src=\"{u()}\"/></media:thumbnail>",  # text: feedparser
        f'<media:thumbnail url="{u()}"><img/></media:thumbnail>',  # pushed: feedparser
        f'<media:thumbnail url="{u()}"><foo:bar x="1">{t()}</foo:bar></media:thumbnail>',
        "<!-- c -->",
    ])


def _inside_link(rng: random.Random) -> str:
    """What BBC's Atom feeds put inside a <link href> (and a few things around it)."""
    t, u, _, b = _draws(rng)
    return rng.choice([
        '<xhtml:link xmlns:xhtml="http://www.w3.org/1999/xhtml" rel="alternate" '
        f'media="handheld" type="text/html" href="{u()}"/>',
        f"<media:content{b()}>{_thumbnail(rng)}</media:content>",
        f'<media:content url="{u()}" medium="image"/>',
        f"<media:content><media:title>{t()}</media:title></media:content>",  # feedparser
        f"<media:thumbnail url=\"{u()}\"{b()}/>",
        f"<foo:bar>{t()}</foo:bar>",
        '<foo:bar x="1"/>',
        "<!-- c -->", "\n  ", t(),
        f"<title>{t()}</title>",  # feedparser
    ])


NAMESPACES = ('xmlns:content="http://purl.org/rss/1.0/modules/content/" '
              'xmlns:dc="http://purl.org/dc/elements/1.1/" '
              'xmlns:dcterms="http://purl.org/dc/terms/" '
              'xmlns:media="http://search.yahoo.com/mrss/" xmlns:foo="http://foo.example/ns" '
              'xmlns:wfw="http://wellformedweb.org/CommentAPI/" '
              'xmlns:slash="http://purl.org/rss/1.0/modules/slash/" '
              'xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd" '
              'xmlns:georss="http://www.georss.org/georss"')
GEORSS = ["<georss:point>45.256 -71.92</georss:point>",
          "<georss:box>42.9 -71 43 -69</georss:box>",
          "<georss:line>45 -110 46 -109 47 -108</georss:line>",
          "<georss:point>x y</georss:point>",
          "<georss:polygon>45 -110 46 -109 45 -110</georss:polygon>",
          "<georss:box>1 2 3</georss:box>",
          "<georss:point><b>1 2</b></georss:point>"]


def _item(children: list[str]) -> str:
    return "<item>" + "".join(children) + "</item>"


def _rss(items: list[str], channel_attrs: str = "", encoding: str = "utf-8") -> bytes:
    return (f'<?xml version="1.0" encoding="{encoding}"?><rss version="2.0" {NAMESPACES} '
            f'xmlns:atom="http://www.w3.org/2005/Atom"><channel{channel_attrs}>'
            f"<title>Feed</title><link>https://x.example/</link><ttl>60</ttl>"
            + "".join(items) + "</channel></rss>").encode(encoding, "xmlcharrefreplace")


def _rdf(items: list[str], rng: random.Random) -> bytes:
    """RSS 1.0: items beside the channel, an rdf:about on some."""
    starts = ["<item>", f'<item rdf:about="{rng.choice(URIS)}">']
    tagged = [item.replace("<item>", rng.choice(starts), 1) for item in items]
    return ('<?xml version="1.0" encoding="utf-8"?><rdf:RDF xmlns:rdf="http://www.w3.org/'
            f'1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/" {NAMESPACES}>'
            '<channel rdf:about="https://x.example/"><title>Feed</title></channel>'
            + "".join(tagged)
            + "</rdf:RDF>").encode()


def _atom(entries: list[str], feed_attrs: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"'
            f" {NAMESPACES}{feed_attrs}><title>Feed</title><id>urn:x</id>"
            + "".join(f"<entry>{''.join(e)}</entry>" for e in entries) + "</feed>").encode()


def test_generated_feeds_read_as_feedparser_reads_them() -> None:
    rng = random.Random(20261126)
    taken = total = 0
    for _ in range(1500):
        draw = rng.random()
        if draw < 0.15:
            body = _rdf([_item(_rss_children(rng)) for _ in range(rng.randint(1, 3))], rng)
        elif draw < 0.55:
            body = _rss([_item(_rss_children(rng)) for _ in range(rng.randint(1, 3))],
                        _pick(rng, BASES), rng.choice(["utf-8", "utf-8", "iso-8859-1",
                                                       "windows-1252", "utf-16"]))
        else:
            body = _atom([_atom_children(rng) for _ in range(rng.randint(1, 3))],
                         _pick(rng, BASES))
        content_type = rng.choice(["application/xml", "application/rss+xml",
                                   "application/atom+xml", "text/xml; charset=utf-8"])
        total += 1
        taken += _same_as_feedparser(body, content_type)
    assert taken > total // 2, (taken, total)  # most of them take the lean path


def test_whitespace_before_the_declaration_is_read_as_the_document_without_it() -> None:
    """A stray newline before `<?xml` sends feedparser to its loose parser (slow, and
    entities decoded its own way): the feed reads exactly as it does without the
    whitespace, with a warning that says why."""
    rng = random.Random(20261127)
    fast = 0
    for _ in range(300):
        if rng.random() < 0.5:
            body = _rss([_item(_rss_children(rng)) for _ in range(rng.randint(1, 3))],
                        _pick(rng, BASES), rng.choice(["utf-8", "windows-1252"]))
        else:
            body = _atom([_atom_children(rng) for _ in range(rng.randint(1, 3))],
                         _pick(rng, BASES))
        bom = rng.choice([b"", b"", b"\xef\xbb\xbf"])  # a BOM stays first (it says UTF-8)
        whitespace = rng.choice([b"\n", b" \r\n\t"])
        try:
            plain = parse_feed(bom + body, {"content-type": "application/xml"}, URL)
        except ParseError:
            with pytest.raises(ParseError):
                parse_feed(bom + whitespace + body, {"content-type": "application/xml"}, URL)
            continue
        padded = parse_feed(bom + whitespace + body, {"content-type": "application/xml"}, URL)
        assert padded.kind == plain.kind
        assert padded.warnings[0].startswith("whitespace before the XML declaration")
        assert _normalised(padded)[0] == _normalised(plain)[0]
        assert padded.warnings[1:] == plain.warnings
        fast += padded.xml.__class__.__name__ == "LeanFeed"
    assert fast > 100  # and most of them take the lean path
    # whitespace before the root element, without a declaration, is well-formed XML
    rss = b"\n\n" + _rss([_item(["<title>One</title>"])]).split(b"?>", 1)[-1]
    assert not parse_feed(rss, {"content-type": "application/xml"}, URL).warnings


def test_corpus_feeds_with_whitespace_first_read_by_the_strict_parser() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} absent (../shared is not beside the project)")
    late = [path for path in sorted(CORPUS.iterdir())
            if re.match(rb"\s+<\?xml", path.read_bytes())]
    assert late, "the corpus has feeds with a newline before <?xml"
    for path in late:
        body = path.read_bytes()
        parsed = parse_feed(body, {"content-type": "application/xml"}, URL)
        strict = _feedparser_path(body.lstrip(), "application/xml", URL)
        assert not strict.xml.bozo, path.name
        assert _normalised(parsed)[0] == _normalised(strict)[0], path.name

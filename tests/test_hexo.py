"""Posts read as Hexo reads them: its front matter (without the opening `---`, JSON
closed by `;;;`), its dates, its category lists, its permalinks, its drafts. Each
test builds a real site and reads the published feeds back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ATOM, fixed_clock, write_config
from lxml import etree
from lxml import html as lxml_html

from aggregator.config import load_config
from aggregator.pipeline import Builder, BuildReport, build
from aggregator.problems import ProblemLog
from aggregator.sources.content import PostReader
from aggregator.sources.permalinks import encode_url, slugize
from aggregator.sources.walk import discover


def _site(tmp_path: Path, posts: dict[str, str], hexo: dict[str, Any] | None = None,
          **sections: Any) -> Path:
    """Posts under source/_posts (written as given), the Hexo site's _config.yml (when
    `hexo` is given) and our config, without site.post_url unless `sections` has one."""
    for rel, text in posts.items():
        path = tmp_path / "source" / "_posts" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    content: dict[str, Any] = {}
    if hexo is not None:
        (tmp_path / "_config.yml").write_text(yaml.safe_dump(hexo, allow_unicode=True),
                                              encoding="utf-8")
        content["hexo_config"] = "_config.yml"
    config = write_config(tmp_path, "source/_posts", content=content, **sections)
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    if "post_url" not in sections.get("site", {}):
        del data["site"]["post_url"]
    if "timezone" not in sections.get("site", {}):
        del data["site"]["timezone"]
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return config


def _build(config: Path) -> BuildReport:
    return build(load_config(config), clock=fixed_clock())


def _entries(feed: Path) -> dict[str, dict[str, Any]]:
    """title → link, published, categories of each entry of an Atom feed."""
    out = {}
    for entry in etree.parse(str(feed)).iter(f"{ATOM}entry"):
        link = entry.find(f"{ATOM}link[@rel='alternate']")
        out[entry.findtext(f"{ATOM}title") or ""] = {
            "link": link.get("href") if link is not None else None,
            "published": entry.findtext(f"{ATOM}published"),
            "categories": [c.get("term") for c in entry.iter(f"{ATOM}category")],
            "id": entry.findtext(f"{ATOM}id"),
        }
    return out


UNIT_CONFIG = {"url": "http://example.com", "permalink": ":year/:month/:day/:title/",
               "new_post_name": ":title.md", "timezone": ""}


def test_front_matter_without_its_opening_line_is_read(tmp_path: Path) -> None:
    config = _site(tmp_path, {
        "categories.md": "title: Categories\ndate: 2013-12-24 23:30:09\ncategories:\n- Foo\n"
                         "- Bar\n---\n\nThis post contains 3 categories.",
        "tabs.md": "title: Tabbed\ncategories:\n\t- One\ndate: 2013/7/13 20:46:25\n---\nBody",
        "setext.md": "A title in Markdown\n-------------------\n\nJust text, no front matter.",
    }, hexo=UNIT_CONFIG)
    report = _build(config)
    entries = _entries(tmp_path / "feeds" / "atom.xml")
    assert entries["Categories"]["published"] == "2013-12-24T23:30:09+00:00"
    assert entries["Categories"]["categories"] == ["Foo", "Bar"]
    assert entries["Tabbed"]["published"] == "2013-07-13T20:46:25+00:00"
    assert entries["Tabbed"]["categories"] == ["One"]
    # a first line that is no `key:` is a body (Hexo: it does not load as an object)
    assert "setext" in entries
    assert [str(p) for p in report.problems.items] == [
        "setext.md:1: no front matter; title and category from the path",
        "setext.md:1: no title; the file name 'setext' is used"]
    body = (tmp_path / "feeds" / "atom.xml").read_text(encoding="utf-8")
    assert "This post contains 3 categories." in body and "Bar\n---" not in body


def test_problems_in_front_matter_without_its_opening_line_name_their_line(
        tmp_path: Path) -> None:
    """The same lines as with the opening `---` (on the blank line before them)."""
    front = "title: [unclosed\ntags: {a: 1}\ndate: yesterday\n---\nBody"
    found = []
    for name, text in (("bare", "\n\n" + front), ("opened", "\n---\n" + front)):
        report = _build(_site(tmp_path / name, {"p.md": text}, hexo=UNIT_CONFIG))
        found.append([str(p) for p in report.problems.items])
        assert _entries(tmp_path / name / "feeds" / "atom.xml")["[unclosed"]["published"] \
            is None
    assert found[0] == found[1]
    assert found[1][:2] == ["p.md:4: malformed YAML value read as plain text",
                            "p.md:3: malformed YAML value read as plain text"]
    assert any(p.startswith("p.md:5: date 'yesterday' ") for p in found[0])


@pytest.mark.parametrize("opening", [";;;\n", ""])
def test_json_front_matter_closed_by_semicolons(tmp_path: Path, opening: str) -> None:
    config = _site(tmp_path, {"j.md": opening + '"title": "JSON post",\n"date": "2014-01-02 '
                              '03:04:05",\n"categories": ["A", ["B", "C"]]\n;;;\n\nBody'},
                   hexo=UNIT_CONFIG)
    report = _build(config)
    assert report.problems.items == []
    entries = _entries(tmp_path / "feeds" / "atom.xml")
    assert entries["JSON post"]["published"] == "2014-01-02T03:04:05+00:00"
    assert entries["JSON post"]["link"] == "http://example.com/2014/01/02/j/"
    assert set(_entries(tmp_path / "feeds" / "b" / "c" / "atom.xml")) == {"JSON post"}


def test_hexo_date_formats_are_in_the_hexo_timezone(tmp_path: Path) -> None:
    hexo = {**UNIT_CONFIG, "timezone": "Asia/Shanghai"}
    posts = {"a.md": "---\ntitle: A\ndate: 2013/7/13 20:46:25\n---\n",
             "b.md": "---\ntitle: B\ndate: 2018-7-24 9:05\n---\n",
             "c.md": "---\ntitle: C\ndate: 2013-12-24 23:30:09\n---\n"}
    _build(_site(tmp_path / "hexo", posts, hexo=hexo))
    entries = _entries(tmp_path / "hexo" / "feeds" / "atom.xml")
    assert [entries[t]["published"] for t in "ABC"] == [
        "2013-07-13T12:46:25+00:00", "2018-07-24T01:05:00+00:00", "2013-12-24T15:30:09+00:00"]
    assert entries["C"]["link"] == "http://example.com/2013/12/24/c/"  # the day there
    # site.timezone, when set, wins
    _build(_site(tmp_path / "site", posts, hexo=hexo, site={"timezone": "UTC"}))
    entries = _entries(tmp_path / "site" / "feeds" / "atom.xml")
    assert entries["A"]["published"] == "2013-07-13T20:46:25+00:00"


def test_several_category_hierarchies_put_the_entry_once_in_each_feed(tmp_path: Path) -> None:
    config = _site(tmp_path, {
        "games.md": "---\ntitle: Games\ndate: 2020-01-02 00:00:00\ncategories: "
                    "[[Diary, PlayStation], [Diary, Games], [Life]]\n---\n",
        "flat.md": "---\ntitle: Flat\ndate: 2020-01-01 00:00:00\ncategories: [Diary, Games]\n"
                   "---\n",
        "mixed.md": "---\ntitle: Mixed\ndate: 2020-01-03 00:00:00\ncategories: "
                    "[Diary, [Diary, Games], Life]\n---\n",
        "string.md": "---\ntitle: String\ndate: 2020-01-04 00:00:00\ncategories: Life\n---\n",
    })
    _build(config)
    feeds = tmp_path / "feeds"

    def titles(rel: str) -> list[str]:
        tree = etree.parse(str(feeds / rel / "atom.xml"))
        return [e.findtext(f"{ATOM}title") for e in tree.iter(f"{ATOM}entry")]
    assert titles(".") == ["String", "Mixed", "Games", "Flat"]  # each once
    assert titles("diary") == ["Mixed", "Games", "Flat"]
    assert titles("diary/playstation") == ["Games"]
    assert titles("diary/games") == ["Mixed", "Games", "Flat"]
    assert titles("life") == ["String", "Mixed", "Games"]
    assert not (feeds / "diary" / "games" / "diary").exists()  # no flattened path
    # the names of every path, then the tags, as the entry's categories
    assert _entries(feeds / "atom.xml")["Games"]["categories"] == [
        "Diary", "PlayStation", "Games", "Life"]
    rss = etree.parse(str(feeds / "life" / "rss.xml"))
    assert [i.findtext("title") for i in rss.iter("item")] == ["String", "Mixed", "Games"]


def _permalinked(tmp_path: Path, hexo: dict[str, Any], posts: dict[str, str],
                 **sections: Any) -> dict[str, dict[str, Any]]:
    _build(_site(tmp_path, posts, hexo={**UNIT_CONFIG, **hexo}, **sections))
    return _entries(tmp_path / "feeds" / "atom.xml")


def test_permalinks_follow_the_hexo_rule(tmp_path: Path) -> None:
    post = "---\ntitle: {title}\ndate: 2013-07-05 08:09:10\n{more}---\nBody\n"
    entries = _permalinked(tmp_path, {
        "url": "https://blog.example/sub/", "timezone": "UTC",
        "permalink": ":category/:i_month/:i_day/:hour:minute:second/:post_title/:name/:hash/"
                     ":lang.html",
        "permalink_defaults": {"lang": "en"}, "pretty_urls": {"trailing_html": False},
        "category_map": {"计算机": "computer"}, "filename_case": 1,
    }, {
        "folder/Hello World.md": post.format(title="Héllo, Wörld!", more="categories: [计算机, "
                                             "C++ Tips]\n"),
        "中文 標題.md": post.format(title="中文", more="lang: zh\n"),
    })
    hashed = __import__("hashlib").sha1(
        f"folder/Hello World{1373011750}".encode()).hexdigest()[:12]
    assert entries["Héllo, Wörld!"]["link"] == (
        f"https://blog.example/sub/computer/c-tips/7/5/080910/hello-world/Hello%20World/"
        f"{hashed}/en")
    assert entries["中文"]["link"].startswith(
        "https://blog.example/sub/uncategorized/7/5/080910/%E4%B8%AD%E6%96%87/"
        "%E4%B8%AD%E6%96%87%20%E6%A8%99%E9%A1%8C/")
    assert entries["中文"]["link"].endswith("/zh")  # front matter before the defaults


def test_a_front_matter_permalink_and_site_post_url(tmp_path: Path) -> None:
    posts = {"a.md": "---\ntitle: A\ndate: 2013-07-05 08:09:10\npermalink: about/me\n---\n",
             "b.md": "---\ntitle: B\ndate: 2013-07-05 08:09:10\n---\n"}
    entries = _permalinked(tmp_path / "hexo", {"post_asset_folder": True}, posts)
    assert entries["A"]["link"] == "http://example.com/about/me/"
    assert entries["B"]["link"] == "http://example.com/2013/07/05/b/"
    entries = _permalinked(tmp_path / "ours", {}, posts,
                           site={"post_url": "https://ours.example/{path}/"})
    assert entries["B"]["link"] == "https://ours.example/b/"  # site.post_url wins


def test_an_undated_post_takes_its_date_from_its_file_name(tmp_path: Path) -> None:
    entries = _permalinked(tmp_path, {"new_post_name": ":year-:month-:day-:title.md",
                                      "permalink": ":year/:i_month/:title.html"}, {
        "2019-03-07-spring.md": "title: Spring\n---\nBody",
        "2019-03-08-dated.md": "title: Dated\ndate: 2020-01-01 10:00:00\n---\nBody",
        "no-date-here.md": "title: Loose\n---\nBody",
    })
    assert entries["Spring"]["published"] == "2019-03-07T00:00:00+00:00"
    assert entries["Spring"]["link"] == "http://example.com/2019/3/spring.html"
    assert entries["Dated"]["link"] == "http://example.com/2020/1/dated.html"
    assert entries["Loose"]["published"] is None and entries["Loose"]["link"] is None


def test_drafts_and_unpublished_posts_are_left_out_quietly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _site(tmp_path, {"kept.md": "title: Kept\n---\n",
                              "hidden.md": "title: Hidden\npublished: false\n---\n",
                              "_drafts/draft.md": "title: Draft\n---\n"}, hexo=UNIT_CONFIG)
    with caplog.at_level(logging.DEBUG, logger="aggregator"):
        report = _build(config)
    assert list(_entries(tmp_path / "feeds" / "atom.xml")) == ["Kept"]
    # not warnings, not errors: notes, said at debug level (and listed by --json)
    assert not report.problems.errors and not report.problems.warnings
    assert sorted((p.where, p.message) for p in report.problems.notes) == [
        ("_drafts/", "Hexo's drafts folder; its posts are not published"),
        ("hidden.md:2", "published: false; not published")]
    assert report.exit_code == 0
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("hidden.md" in m and "published: false" in m for m in debug)
    assert any("_drafts/" in m for m in debug)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("text", "slug"), [
    ("Hello, World!", "Hello-World"), ("  --a__b--  ", "a-b"), ("Crème brûlée", "Creme-brulee"),
    ("Straße Æon", "Strase-AEon"), ("中文 標題", "中文-標題"), ("a\x01b", "ab")])
def test_slugize_as_hexo_util(text: str, slug: str) -> None:
    assert slugize(text) == slug


@pytest.mark.parametrize(("url", "encoded"), [
    ("http://x.example/2013/中文/", "http://x.example/2013/%E4%B8%AD%E6%96%87/"),
    ("http://x.example/a%20b/c d/", "http://x.example/a%20b/c%20d/"),
    ("http://x.example/a%2Fb/[x]", "http://x.example/a%252Fb/%5Bx%5D"),
    ("http://x.example/(a)!*';:@&=+$,", "http://x.example/(a)!*';:@&=+$,")])
def test_urls_are_encoded_as_encode_uri_after_decode_uri(url: str, encoded: str) -> None:
    assert encode_url(url) == encoded


@pytest.mark.parametrize(("text", "message"), [
    (None, "cannot read the Hexo config"), ("url: [\n", "_config.yml:2: the Hexo config is "
                                            "not valid YAML"),
    ("url: ftp://x.example\n", r"url must be an absolute http\(s\) URL")])
def test_an_unusable_hexo_config_is_a_config_error(tmp_path: Path, text: str | None,
                                                   message: str) -> None:
    from aggregator.problems import ConfigError

    config = _site(tmp_path, {"a.md": "title: A\n---\n"}, hexo={})
    if text is None:
        (tmp_path / "_config.yml").unlink()
    else:
        (tmp_path / "_config.yml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_hexo_defaults_and_url_forms(tmp_path: Path) -> None:
    """Hexo's defaults for what its config leaves out; its url without the trailing
    slash, its root from the url's path."""
    config = _site(tmp_path, {"a.md": "title: A\n---\n"}, hexo={"url": "https://x.example/blog//"})
    hexo = load_config(config).hexo
    assert hexo is not None
    assert (hexo.url, hexo.root, hexo.permalink, hexo.new_post_name, hexo.post_asset_folder,
            hexo.timezone, hexo.default_category) == (
        "https://x.example/blog", "/blog/", ":year/:month/:day/:title/", ":title.md", False,
        None, "uncategorized")


def test_the_hexo_configs_asset_folders_are_under_the_posts_permalink(tmp_path: Path) -> None:
    config = _site(tmp_path, {"2020-05-06-trip.md": "title: Trip\n---\n![A view](view.jpg)\n"},
                   hexo={**UNIT_CONFIG, "post_asset_folder": True,
                         "new_post_name": ":year-:month-:day-:title.md"})
    folder = tmp_path / "source" / "_posts" / "2020-05-06-trip"
    folder.mkdir()
    (folder / "view.jpg").write_bytes(b"\xff\xd8" + b"x" * 998)
    assert _build(config).problems.items == []
    entry = next(etree.parse(str(tmp_path / "feeds" / "atom.xml")).iter(f"{ATOM}entry"))
    link = "http://example.com/2020/05/06/trip/"
    assert entry.find(f"{ATOM}link[@rel='alternate']").get("href") == link
    assert f'src="{link}view.jpg"' in entry.findtext(f"{ATOM}content")
    enclosure = entry.find(f"{ATOM}link[@rel='enclosure']")
    assert (enclosure.get("href"), enclosure.get("length")) == (link + "view.jpg", "1000")


_LINKER = ("title: Linker\ndate: 2014-03-02 10:00:00\n---\nFirst line.\n\n"
           "See {% post_link hello %} at {% post_path hello %}, and "
           "{% post_link gone 'gone words' %}.\n")
_TARGET = "title: Hello <there>\ndate: 2014-03-01 10:00:00\n---\nThe target.\n"


def _content(feed: Path, title: str) -> str:
    for entry in etree.parse(str(feed)).iter(f"{ATOM}entry"):
        if entry.findtext(f"{ATOM}title") == title:
            return entry.findtext(f"{ATOM}content") or ""
    raise AssertionError(f"no entry {title!r}")


def test_post_link_finds_the_other_post_by_its_file_names_slug(tmp_path: Path) -> None:
    """The target is found by the slug new_post_name gives its file name, its link is
    its own entry's; a missing target is a warning at the tag's line, its text kept."""
    hexo = {"url": "https://blog.example", "permalink": ":year/:title/",
            "new_post_name": ":year-:month-:day-:title.md"}
    config = _site(tmp_path, {"2014-03-02-linker.md": _LINKER,
                              "2014-03-01-hello.md": _TARGET}, hexo)
    report = _build(config)
    feed = tmp_path / "feeds" / "atom.xml"
    link = _entries(feed)["Hello <there>"]["link"]
    assert link == "https://blog.example/2014/hello/"
    html = _content(feed, "Linker")
    assert f'<a href="{link}" title="Hello &lt;there&gt;"' in html
    assert ">Hello &lt;there&gt;</a> at /2014/hello/, and gone words." in html
    assert [str(p) for p in report.problems.items] == [
        "2014-03-02-linker.md:6: {% post_link gone %}: no post has that slug"]


def test_post_link_does_not_read_a_symlinked_target_when_links_are_not_followed(
        tmp_path: Path) -> None:
    """follow_symlinks false: a target that is a symlink (to a post it could follow to)
    is not read, whether the walk sees the link or it replaces the file later."""
    hexo = {"url": "https://blog.example", "permalink": ":title/"}
    config = _site(tmp_path, {"linker.md": _LINKER.replace("gone", "other"),
                              "other.md": _TARGET, "real/secret.md": "title: SECRET title\n"
                              "date: 2014-03-01 10:00:00\n---\nx\n"}, hexo)
    outside = tmp_path / "source" / "_posts" / "real" / "secret.md"
    (tmp_path / "source" / "_posts" / "hello.md").symlink_to(outside)
    _build(config)
    html = _content(tmp_path / "feeds" / "atom.xml", "Linker")
    assert "SECRET" not in html and "/hello/" not in html
    # the link put in place after the posts were indexed: the opener refuses it
    loaded = load_config(config)
    posts = discover(loaded, ProblemLog(echo=False))
    (tmp_path / "source" / "_posts" / "hello.md").unlink()
    (tmp_path / "source" / "_posts" / "hello.md").write_text(_TARGET, encoding="utf-8")
    reader = PostReader(loaded, ProblemLog(echo=False), lambda _id: fixed_clock()())
    linker = next(post for post in posts if post.rel == "linker.md")
    assert reader.bodies.find_post is not None
    assert reader.bodies.find_post("other") is not None  # the slugs are indexed now
    (tmp_path / "source" / "_posts" / "hello.md").unlink()
    (tmp_path / "source" / "_posts" / "hello.md").symlink_to(outside)
    entry = reader.read(linker)
    reader.close()
    assert entry is not None and "SECRET" not in entry.html and "/hello/" not in entry.html


def _linked(feed: Path) -> tuple[str | None, str | None, str]:
    """The linker's first link (href, title) and its second paragraph's text."""
    body = lxml_html.fromstring(_content(feed, "Linker"))
    link = next(body.iter("a"), None)
    return (link.get("href") if link is not None else None,
            link.get("title") if link is not None else None,
            " ".join(body.xpath("//p")[1].text_content().split()))


@pytest.mark.parametrize("how", ["one-off", "fresh session", "session walk",
                                 "session told the change"])
def test_a_post_linking_another_is_read_again_when_the_other_changes(
        tmp_path: Path, how: str) -> None:
    """The build cache keys a post by its own bytes: one whose post_link found another
    post is read again when that post's title or link changes, or it goes, on every
    way a build reuses what it read (one-off builds patching their saved session; a
    session's first build, from the cache; its walks, from its memory; its rebuilds
    of the files it is told changed)."""
    hexo = {"url": "https://blog.example", "permalink": ":title/"}
    config_path = _site(tmp_path, {"linker.md": _LINKER, "hello.md": _TARGET,
                                   "other.md": "title: Other\ndate: 2014-01-01\n---\nx\n"}, hexo)
    config = load_config(config_path)
    target = tmp_path / "source" / "_posts" / "hello.md"
    feed = tmp_path / "feeds" / "atom.xml"
    builder = Builder(persistent=True)

    def rebuild(changed: set[str]) -> BuildReport:
        if how == "one-off":
            return build(config, clock=fixed_clock())
        if how == "fresh session":
            return Builder(persistent=True).build(config, clock=fixed_clock())
        return builder.build(config, clock=fixed_clock(),
                             changed=changed if how == "session told the change" else None)

    (build if how == "one-off" or how == "fresh session" else builder.build)(
        config, clock=fixed_clock())
    assert _linked(feed) == ("https://blog.example/hello/", "Hello <there>",
                             "See Hello <there> at /hello/, and gone words.")
    target.write_text("title: Renamed\ndate: 2014-03-01 10:00:00\npermalink: moved/\n"
                      "---\nThe target.\n", encoding="utf-8")
    rebuild({str(target)})
    assert _linked(feed) == ("https://blog.example/moved/", "Renamed",
                             "See Renamed at /moved/, and gone words.")
    gone = tmp_path / "source" / "_posts" / "goodbye.md"
    target.rename(gone)
    report = rebuild({str(target), str(gone)})
    assert _linked(feed) == (None, None, "See hello at , and gone words.")
    assert "linker.md:6: {% post_link hello %}: no post has that slug" in \
        [str(p) for p in report.problems.items]

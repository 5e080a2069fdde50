"""The tag plugins Hexo 8 has built in, and hexo-tag-embed's (youtube, vimeo, gist,
jsfiddle), each writing the HTML Hexo writes for the same arguments. Code is written
as Hexo writes it with syntax highlighting off (`<pre><code>`)."""

from __future__ import annotations

import re
from html import escape
from urllib.parse import urljoin, urlsplit

from aggregator.sources.hexo.tags import BlockTag, InlineTag, LinkedPost, TagContext

_URL_LIKE = re.compile(
    r"((([A-Za-z]{3,9}:(?://)?)(?:[-;:&=+$,\w]+@)?[A-Za-z0-9.-]+|"
    r"(?:www.|[-;:&=+$,\w]+@)[A-Za-z0-9.-]+))")
_FULL_CITE_TITLE = re.compile(r"(\S.*)\s+(https?://\S+)\s+(.+)", re.I)
_FULL_CITE = re.compile(r"(\S.*)\s+(https?://\S+)", re.I)
_AUTHOR_TITLE = re.compile(r"([^,]+),\s*([^,]+)")
_CAPTION_URL_TITLE = re.compile(r"(\S[\S\s]*)\s+(https?://\S+)\s+(.+)", re.I)
_CAPTION_URL = re.compile(r"(\S[\S\s]*)\s+(https?://\S+)", re.I)
_SOURCE_DISPLAY = re.compile(r"^https?://|/(index.html?)?$")


def html_tag(tag: str, attrs: dict[str, str | bool | None], text: str | None = None) -> str:
    """hexo-util's htmlTag: None attributes left out, True ones bare, text escaped."""
    out = [f"<{tag}"]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        out.append(f" {name}" if value is True else f' {name}="{escape(value)}"')
    if text is None:
        return "".join(out) + ">"
    return "".join(out) + f">{escape(text, quote=False)}</{tag}>"


def blockquote(args: list[str], content: str, ctx: TagContext) -> str:
    footer = _footer(" ".join(args))
    return ("<blockquote>" + ctx.markdown(content)
            + (f"<footer>{footer}</footer>" if footer else "") + "</blockquote>")


def _footer(text: str) -> str:
    if not text:
        return ""
    source = title = ""
    if match := _FULL_CITE_TITLE.search(text):
        author, source, title = match.groups()
    elif match := _FULL_CITE.search(text):
        author, source = match.groups()
    elif match := _AUTHOR_TITLE.search(text):
        author, title = match.groups()
    else:
        author = text
    footer = f"<strong>{author}</strong>" if author else ""
    if source:
        shown = title or _SOURCE_DISPLAY.sub("", source)
        footer += f'<cite><a href="{escape(source)}">{shown}</a></cite>'
    elif title:
        footer += f"<cite>{title}</cite>"
    return footer


def codeblock(args: list[str], content: str, ctx: TagContext) -> str:
    """Hexo's `code` tag without a highlighter: `<pre><code>`; a caption (Hexo writes
    one only when it highlights) is kept in a figure, as its highlighter wraps it."""
    lang = ""
    rest: list[str] = []
    for arg in args:
        key, colon, value = arg.partition(":")
        if not colon:
            rest.append(arg)
        elif key == "lang":
            lang = value
        elif key == "highlight" and value != "true":
            return f"<pre><code>{escape(content, quote=False)}</code></pre>"
        elif key not in ("line_number", "line_threshold", "first_line", "mark", "wrap",
                         "language_attr", "highlight"):
            rest.append(arg)
    code = pre_code(content, lang)
    caption = _caption(" ".join(rest))
    if not caption:
        return code
    return (f'<figure class="highlight {escape(lang or "plaintext")}">'
            f"<figcaption>{caption}</figcaption>{code}</figure>")


def pre_code(code: str, lang: str) -> str:
    klass = f' class="language-{escape(lang)}"' if lang else ""
    return f"<pre><code{klass}>{escape(code, quote=False)}</code></pre>"


def _caption(text: str) -> str:
    if match := _CAPTION_URL_TITLE.search(text):
        return f'<span>{match[1]}</span><a href="{escape(match[2])}">{match[3]}</a>'
    if match := _CAPTION_URL.search(text):
        return f'<span>{match[1]}</span><a href="{escape(match[2])}">link</a>'
    stripped = text.strip()
    return f"<span>{stripped}</span>" if stripped else ""


def pullquote(args: list[str], content: str, ctx: TagContext) -> str:
    classes = escape(" ".join(["pullquote", *args]))
    return f'<blockquote class="{classes}">{ctx.markdown(content)}</blockquote>'


def raw(_args: list[str], content: str, _ctx: TagContext) -> str:
    return content


def iframe(args: list[str], _ctx: TagContext) -> str:
    def given(i: int, default: str) -> str:
        return args[i] if len(args) > i and args[i] != "default" else default
    return html_tag("iframe", {"src": args[0] if args else None, "width": given(1, "100%"),
                               "height": given(2, "300"), "frameborder": "0",
                               "loading": "lazy", "allowfullscreen": True}, "")


def img(args: list[str], _ctx: TagContext) -> str:
    """`{% img [class names] /path/to/image [width] [height] [title text [alt text]] %}`"""
    args = list(args)
    classes: list[str] = []
    src = None
    while args:
        item = args.pop(0)
        if _URL_LIKE.search(item) or item.startswith("/"):
            src = item
            break
        classes.append(item)
    width = height = title = alt = None
    if args:
        if args[0].isdigit():
            width = args.pop(0)
            if args and args[0].isdigit():
                height = args.pop(0)
        title, alt = _title_alt(" ".join(args))
    return html_tag("img", {"src": src, "class": " ".join(classes), "width": width,
                            "height": height, "title": title, "alt": alt})


def _title_alt(meta: str) -> tuple[str | None, str | None]:
    """Hexo's reading of `"title" "alt"` (or single quotes) after the image size."""
    first = r'"?([^"]+)?"?' if meta.startswith('"') else r"'?([^']+)?'?"
    second = r'"?([^"]+)?"?' if meta.endswith('"') else r"'?([^']+)?'?"
    match = re.search(first + r"\s*" + second, meta)
    return (match[1], match[2]) if match else (None, None)


def link(args: list[str], _ctx: TagContext) -> str:
    """`{% link text url [external] [title] %}`"""
    url = ""
    text: list[str] = []
    rest: list[str] = []
    for i, item in enumerate(args):
        if _URL_LIKE.search(item):
            url, rest = item, args[i + 1:]
            break
        text.append(item)
    external = False
    if rest and rest[0] in ("true", "false"):
        external = rest.pop(0) == "true"
    return html_tag("a", {"href": url, "title": " ".join(rest),
                          "target": "_blank" if external else ""}, " ".join(text))


def post_path(args: list[str], ctx: TagContext) -> str:
    """`{% post_path slug %}`: the other post's URL path, as Hexo writes it."""
    found = _linked(args[:1], ctx, "post_path")
    return escape(_path_of(found.url)) if found else ""


def post_link(args: list[str], ctx: TagContext) -> str:
    """`{% post_link slug [title] [escape] %}`: a link to the other post by its URL
    path (the sanitiser makes it absolute against the entry's link, on the same site)."""
    found = _linked(args[:1], ctx, "post_link")
    words, escaped = _escape_flag(args[1:])
    if found is None:
        return escape(" ".join(words) or (args[0] if args else ""), quote=False)
    title = " ".join(words) or found.title
    return (f'<a href="{escape(_path_of(found.url))}" title="{escape(found.title)}">'
            f"{escape(title, quote=False) if escaped else title}</a>")


def _path_of(url: str) -> str:
    """The path of a post's link (Hexo: `new URL(post.path, config.url).pathname`)."""
    return urlsplit(url).path or "/"


def _linked(slug: list[str], ctx: TagContext, tag: str) -> LinkedPost | None:
    if not slug:
        return None
    if ctx.find_post is None:
        ctx.report(tag, f"{{% {tag} {slug[0]} %}}: no other posts are known to link to")
        return None
    found = ctx.find_post(slug[0])
    if found is None:
        ctx.report(tag, f"{{% {tag} {slug[0]} %}}: no post has that slug")
    return found


def _escape_flag(args: list[str]) -> tuple[list[str], bool]:
    if args and args[-1] in ("true", "false"):
        return args[:-1], args[-1] == "true"
    return args, True


def asset_path(args: list[str], ctx: TagContext) -> str:
    url = _asset(args[:1], ctx, "asset_path")
    return escape(url) if url else ""


def asset_link(args: list[str], ctx: TagContext) -> str:
    """`{% asset_link slug [title] [escape] %}`"""
    url = _asset(args[:1], ctx, "asset_link")
    if url is None:
        return ""
    words, escaped = _escape_flag(args[1:])
    title = " ".join(words) or args[0]
    return (f'<a href="{escape(url)}" title="{escape(title)}">'
            f"{escape(title, quote=False) if escaped else title}</a>")


def asset_img(args: list[str], ctx: TagContext) -> str:
    """`{% asset_img [class names] slug [width] [height] [title text [alt text]] %}`:
    the first argument that names an asset is the image."""
    for i, arg in enumerate(args):
        url = ctx.asset_url(arg)
        if url is not None:
            return img([*args[:i], url, *args[i + 1:]], ctx)
    if args:
        ctx.report("asset_img", f"{{% asset_img {' '.join(args)} %}}: no such file in the "
                   "post's asset folder; dropped")
    return ""


def _asset(slug: list[str], ctx: TagContext, tag: str) -> str | None:
    if not slug:
        return None
    url = ctx.asset_url(slug[0])
    if url is None:
        ctx.report(tag, f"{{% {tag} {slug[0]} %}}: no such file in the post's asset "
                   "folder; dropped")
    return url


def url_for(args: list[str], _ctx: TagContext) -> str:
    """`{% url_for text path %}` (the site's root is /; relative URLs stay relative)."""
    text = args[0] if args else ""
    path = args[1] if len(args) > 1 else ""
    return html_tag("a", {"href": urljoin("/", path) if path.startswith("/") else path}, text)


def youtube(args: list[str], _ctx: TagContext) -> str:
    """hexo-tag-embed: `{% youtube id [type] [cookie] %}` (any cookie argument given as
    text is true there)."""
    video = args[0] if args else ""
    kind = args[1] if len(args) > 1 else "video"
    embed = "/embed/" if kind == "video" else "/embed/videoseries?list="
    return _video("https://www.youtube.com" + embed + video)


def vimeo(args: list[str], _ctx: TagContext) -> str:
    return _video("https://player.vimeo.com/video/" + ",".join(args))


def _video(src: str) -> str:
    frame = html_tag("iframe", {"src": src, "frameborder": "0", "loading": "lazy",
                                "allowfullscreen": True}, "")
    return f'<div class="video-container">{frame}</div>'


def gist(args: list[str], _ctx: TagContext) -> str:
    """A script, as hexo-tag-embed writes: the sanitiser removes it like any script."""
    file = f"?file={args[1]}" if len(args) > 1 else ""
    return f'<script src="//gist.github.com/{escape(args[0] if args else "")}.js{escape(file)}">' \
        "</script>"


def jsfiddle(args: list[str], _ctx: TagContext) -> str:
    def given(i: int, default: str) -> str:
        return args[i] if len(args) > i and args[i] != "default" else default
    src = (f"https://jsfiddle.net/{args[0] if args else ''}/embedded/"
           f"{given(1, 'js,resources,html,css,result')}/{given(2, 'light')}")
    return html_tag("iframe", {"scrolling": "no", "width": given(3, "100%"),
                               "height": given(4, "300"), "src": src, "frameborder": "0",
                               "loading": "lazy", "allowfullscreen": True}, "")


INLINE: dict[str, InlineTag] = {
    "iframe": iframe, "img": img, "image": img, "link": link, "a": link, "anchor": link,
    "post_path": post_path, "post_link": post_link, "asset_path": asset_path,
    "asset_link": asset_link, "asset_img": asset_img, "asset_image": asset_img,
    "url_for": url_for, "youtube": youtube, "vimeo": vimeo, "gist": gist,
    "jsfiddle": jsfiddle,
}
BLOCKS: dict[str, BlockTag] = {
    "blockquote": blockquote, "quote": blockquote, "codeblock": codeblock, "code": codeblock,
    "pullquote": pullquote, "raw": raw,
}

"""The floor of a cold build in Python: what the least program that writes an Atom and
an RSS feed for every node of the category tree (`max_items: 0`, full sanitised
content) costs on this machine, to set beside Hugo (../shared/bench/peer_hugo) and our
own build on the same corpus. No entry store, no problems, no digests, no ids beyond
the path, no incremental state, no fsync; two worker processes (the machine's cores).
It reads only the bench corpus's shape (../shared/bench/make_corpus): single-quoted
title, a `date:` line, categories as `- '...'` items. Not valid feeds: a measure only.

usage: python bench/python_floor.py CORPUS OUT
"""
import html
import os
import re
import sys
import time
from email.utils import parsedate_to_datetime
from multiprocessing import Pool

import nh3

T0 = time.perf_counter()
CORPUS, OUT = sys.argv[1], sys.argv[2]
TITLE = re.compile(r"^title:\s*'?(.*?)'?\s*$", re.M)
DATE = re.compile(r"^date:\s*(.*?)\s*$", re.M)
CATS = re.compile(r"^ - '(.*?)'\s*$", re.M)
CLEANER = nh3.Cleaner()


def one(path: str) -> tuple[tuple[str, ...], float, str, str]:
    with open(path, "rb") as f:
        text = f.read().decode()
    start = text.index("---") + 3
    end = text.index("\n---", start)
    head, body = text[start:end], text[end + 4:]
    title_line, date_line = TITLE.search(head), DATE.search(head)
    assert title_line is not None and date_line is not None, path
    title = html.escape(title_line.group(1))
    date = parsedate_to_datetime(date_line.group(1))
    cats = tuple(CATS.findall(head))
    clean = html.escape(CLEANER.clean(body))
    link = "http://x/" + path
    atom = (f"<entry><title>{title}</title><id>{link}</id><link href=\"{link}\"/>"
            f"<updated>{date.isoformat()}</updated><content type=\"html\">{clean}"
            "</content></entry>")
    rss = (f"<item><title>{title}</title><link>{link}</link><guid>{link}</guid>"
           f"<pubDate>{date.strftime('%a, %d %b %Y %H:%M:%S +0000')}</pubDate>"
           f"<description>{clean}</description></item>")
    return cats, date.timestamp(), atom, rss


def main() -> None:
    paths = [os.path.join(d, n) for d, _, names in os.walk(CORPUS) for n in names
             if n.endswith(".md")]
    with Pool(2) as pool:
        rows = pool.map(one, paths, chunksize=64)
    t_read = time.perf_counter()
    nodes: dict[tuple[str, ...], list[int]] = {}
    for i, (cats, _, _, _) in enumerate(rows):
        for depth in range(len(cats) + 1):
            nodes.setdefault(cats[:depth], []).append(i)
    written = 0
    for node, members in nodes.items():
        members.sort(key=lambda i: -rows[i][1])
        folder = os.path.join(OUT, *node)
        os.makedirs(folder, exist_ok=True)
        atom = "".join(rows[i][2] for i in members)
        rss = "".join(rows[i][3] for i in members)
        for name, text in (("atom.xml", "<feed>" + atom + "</feed>"),
                           ("rss.xml", "<rss><channel>" + rss + "</channel></rss>")):
            data = text.encode()
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
            written += len(data)
    t_end = time.perf_counter()
    print(f"{len(rows)} posts, {len(nodes)} nodes, {2 * len(nodes)} files, "
          f"{written / 1e6:.0f} MB; read+render {t_read - T0:.2f} s, "
          f"write {t_end - t_read:.2f} s, total {t_end - T0:.2f} s")


if __name__ == "__main__":
    main()

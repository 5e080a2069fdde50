"""The entry store on real SQLite and real PostgreSQL: a node's feed is a query in
model.sort_key's order, members follow upserts, deletes and merges, and a failed batch
leaves the old rows."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from aggregator.model import Enclosure, Entry, Image, changed, sort_key
from aggregator.store import EntryStore
from aggregator.store.rows import (
    Row,
    encode,
    entry_digest,
    entry_row,
    pack_entry,
    unpack_entry,
)
from aggregator.store.sqlite import SQLiteStore

# opens the test's store (again: the same one each call)
Opener = Callable[[], EntryStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Each store test runs on both stores (PostgreSQL: a fresh database)."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "store.sqlite")
    from aggregator.store.postgres import PostgresStore

    url: str = request.getfixturevalue("pg_url")
    return lambda: PostgresStore(url)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _entry(n: int, category: tuple[str, ...], *, dated: bool = True,
           more: tuple[tuple[str, ...], ...] = (), minutes: int | None = None) -> Entry:
    when = T0 + timedelta(minutes=n if minutes is None else minutes)
    return Entry(id=f"id-{n:03d}", title=f"T{n}", link=f"https://x.example/{n}",
                 author=None, published=when if dated else None, updated=when,
                 category=category, tags=(), html=f"<p>{n}</p>", summary="", image=None,
                 source=f"p{n}.md", more_categories=more)


def _row(entry: Entry, n: int) -> Row:
    return entry_row(encode(entry.source), b"/posts", 0, (n, n, n), f"c{n}", entry, (), ())


def _feed_ids(store: EntryStore, names: tuple[str, ...], limit: int = 0) -> list[str]:
    nid = {names_: nid for nid, names_, _count in store.nodes()}[names]
    rows = store.packed([rid for rid, *_ in store.feed(nid, limit)])
    return [unpack_entry(rows[rid][0]).id for rid, *_ in store.feed(nid, limit)]


def test_a_nodes_feed_is_its_own_and_its_descendants_entries_in_sort_key_order(
        open_store: Opener) -> None:
    store = open_store()
    entries = [_entry(n, ("A", "B") if n % 2 else ("A",), dated=n % 5 != 0,
                      minutes=(n * 37) % 11) for n in range(30)]
    entries.append(_entry(30, ("C",), more=(("A", "B"),)))  # in two paths: once each
    store.upsert(_row(e, n) for n, e in enumerate(entries))
    for names, members in ((("A",), [e for e in entries if e.category[0] == "A"
                                     or e.more_categories]),
                           (("A", "B"), [e for e in entries if e.category == ("A", "B")
                                         or e.more_categories]),
                           ((), entries)):
        expected = [e.id for e in sorted(members, key=sort_key)]
        assert _feed_ids(store, names) == expected
        assert _feed_ids(store, names, 5) == expected[:5]
    counts = {names: count for _nid, names, count in store.nodes()}
    assert counts[()] == 31 and counts[("C",)] == 1
    store.close()


def test_entries_of_one_stamp_are_in_id_order_whatever_order_their_rows_came_in(
        open_store: Opener) -> None:
    """Members are keyed by row, not by id: the feed orders the entries of one stamp by
    their ids (UTF-8 bytes: code point order), and a limit may cut inside such a group."""
    store = open_store()
    rng = random.Random(5)
    ids = [f"{rng.choice(['tag:x,2026:', 'https://x.example/', 'é', 'Ω', 'z'])}"
           f"{rng.randrange(1000)}-{n}" for n in range(40)]
    entries = [changed(_entry(n, ("A",), dated=n % 4 != 0, minutes=n % 3), id=ids[n])
               for n in range(40)]
    rng.shuffle(entries)
    store.upsert(_row(e, n) for n, e in enumerate(entries))
    expected = [e.id for e in sorted(entries, key=sort_key)]
    assert expected != [e.id for e in entries]
    for limit in (0, 1, 5, 13, 27):
        assert _feed_ids(store, ("A",), limit) == expected[:limit or None]


def test_upserts_and_deletes_move_members_and_dirty_their_nodes(open_store: Opener) -> None:
    store = open_store()
    store.upsert([_row(_entry(1, ("A", "B")), 1), _row(_entry(2, ("C",)), 2)])
    nids = {names: nid for nid, names, _ in store.nodes()}
    store.clear_dirty(store.dirty())
    store.upsert([_row(_entry(1, ("C", "D")), 1)])  # moved: out of A/B, into C/D
    counts = {names: count for _nid, names, count in store.nodes()}
    assert ("A",) not in counts and counts[("C",)] == 2 and counts[("C", "D")] == 1
    assert {nids[("A",)], nids[("A", "B")], nids[()], nids[("C",)]} <= store.dirty()
    store.delete([(encode("p2.md"), b"/posts")])
    assert _feed_ids(store, ("C",)) == ["id-001"]
    store.close()


def test_a_nodes_newest_entry_follows_every_change(open_store: Opener) -> None:
    """feed(nid, 1), which a page asks of every node it links (the PostgreSQL store
    answers it for every node at once), is the feed's first entry after each change."""
    store = open_store()

    def newest_of_each() -> dict[tuple[str, ...], list[object]]:
        return {names: [row[0] for row in store.feed(nid, 1)]
                for nid, names, _count in store.nodes()}

    def first_of_each() -> dict[tuple[str, ...], list[object]]:
        return {names: [row[0] for row in store.feed(nid, 0)[:1]]
                for nid, names, _count in store.nodes()}

    store.upsert([_row(_entry(n, ("A", "B") if n % 2 else ("C",)), n) for n in range(6)])
    for change in (lambda: store.upsert([_row(_entry(9, ("A", "B")), 1)]),  # newest now
                   lambda: store.upsert([_row(_entry(1, ("C",)), 1)]),  # moved
                   lambda: store.delete([(encode("p4.md"), b"/posts")]),
                   lambda: store.set_winners({3: False}),
                   lambda: store.invalidate_if_changed("read", "x", "entry", "member")):
        assert newest_of_each() == first_of_each()
        change()
        assert newest_of_each() == first_of_each()
    store.close()


def test_a_merged_entry_leaves_every_feed_and_comes_back(open_store: Opener) -> None:
    store = open_store()
    store.upsert([_row(_entry(1, ("A",)), 1), _row(_entry(2, ("A",)), 2)])
    rids = {row[1]: row[0] for row in store.duplicates()}
    assert set(rids.values()) == {1, 2}  # put in, not merged yet
    store.set_winners({})
    assert store.duplicates() == []  # merged, and nothing shared
    store.set_winners({rids[encode("p2.md")]: False})
    assert _feed_ids(store, ()) == ["id-001"]
    assert [row[0] for row in store.duplicates()] == [rids[encode("p2.md")]]  # a loser
    store.set_winners({rids[encode("p2.md")]: True})
    assert _feed_ids(store, ()) == ["id-002", "id-001"]
    store.close()


def test_the_render_sweep_keeps_exactly_the_published_entries_renders(
        open_store: Opener) -> None:
    """drop_unused_renders keeps the render of every entry published, and drops those
    of entries merged away, deleted or edited since (their render keys gone)."""
    store = open_store()
    rows = [_row(_entry(n, ("A",)), n) for n in range(4)]
    store.upsert(rows)
    edited = _row(changed(_entry(3, ("A",)), title="T3 again"), 3)
    store.upsert([edited])
    store.delete([(rows[2].key, rows[2].root)])
    rids = {row[1]: row[0] for row in store.duplicates()}  # (all unmerged yet)
    store.set_winners({rids[rows[1].key]: False})  # merged away
    keys = [row.rkey for row in rows] + [edited.rkey, "not-an-entry"]
    store.store_rendered([(key, b"a", b"r", b"j", b"c") for key in keys])
    store.drop_unused_renders()
    assert store.rendered_keys(keys) == {rows[0].rkey, edited.rkey}
    store.close()


def test_a_batch_that_fails_half_way_leaves_the_old_rows(open_store: Opener) -> None:
    store = open_store()
    store.upsert([_row(_entry(1, ("A",)), 1)])

    def rows() -> object:
        yield _row(_entry(1, ("B",)), 1)
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        store.upsert(rows())  # type: ignore[arg-type]
    store.close()
    store = open_store()
    assert {names for _nid, names, _ in store.nodes()} == {(), ("A",)}
    assert _feed_ids(store, ("A",)) == ["id-001"]
    store.close()


def test_settings_that_change_entries_forget_them(open_store: Opener) -> None:
    store = open_store()
    assert store.invalidate_if_changed("read", "one", "entry", "body", "node", "member")
    store.upsert([_row(_entry(1, ("A",)), 1)])
    store.set_meta("upstream", "g1")
    assert not store.invalidate_if_changed("read", "one", "entry", "body", "node", "member")
    assert store.invalidate_if_changed("read", "two", "entry", "body", "node", "member")
    assert store.nodes() == [] and store.meta("upstream") is None
    store.close()


def test_a_change_of_a_post_row_forgets_its_folders_print(open_store: Opener) -> None:
    """walk_changes trusts a folder's print to say its rows hold the identities it was
    made of: every write of a post row forgets it, in the same transaction."""
    store = open_store()
    store.upsert([_row(_entry(1, ("A",)), 1), _row(_entry(2, ("A",)), 2)])
    folders = [(b"/posts", b"", b"print", 2), (b"/posts", b"sub/", b"print", 1),
               (b"/other", b"", b"print", 1)]
    for change in (lambda: store.upsert([_row(_entry(1, ("B",)), 1)]),
                   lambda: store.move_posts([(encode("p1.md"), b"/posts", (7, 7, 7))]),
                   lambda: store.delete([(encode("p2.md"), b"/posts")])):
        store.store_folders(folders)
        change()
        assert set(store.folder_prints()) == {(b"/posts", b"sub/"), (b"/other", b"")}
    assert [key for key, *_ in store.folder_posts([(b"/posts", b"")])] == [encode("p1.md")]
    store.close()


class _Title(str):
    """A str subclass: a value marshal does not write."""


@pytest.mark.parametrize("entry", [
    _entry(1, ("A", "B")),
    Entry(id="u-1", title="Ü", link=None, author="a", published=None,
          updated=datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo("Europe/Paris")),
          category=("X",), tags=("t", "u"), html="<p>\ud800</p>", summary="s",
          image=Image("https://i.example/1.png", None), source="https://up.example/f",
          enclosures=(Enclosure("https://i.example/a.mp3", "audio/mpeg", 3),),
          base_url="https://up.example/", drop_selectors=(".ad",),
          more_categories=(("Y", "Z"),)),
    Entry(id="u-2", title=_Title("T"), link="https://x.example/", author=None,
          published=datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=9), "JST")),
          updated=T0.replace(fold=1), category=(), tags=(), html="", summary="",
          image=Image("https://i.example/2.jpg", "image/jpeg", 7)),
])
def test_a_packed_entry_unpacks_equal_with_its_zones_and_types(entry: Entry) -> None:
    again = unpack_entry(pack_entry(entry))
    assert again == entry and repr(again) == repr(entry)
    for name in ("published", "updated"):
        before, after = getattr(entry, name), getattr(again, name)
        assert before is None or (after.tzinfo == before.tzinfo
                                  and after.tzname() == before.tzname()
                                  and after.fold == before.fold)
    assert type(again.title) is type(entry.title)
    assert entry_digest(again) == entry_digest(entry)


def test_equal_entries_have_equal_digests_however_their_values_were_made() -> None:
    """A digest depends on the values only: not on whether two fields hold the same
    string object, or whether a string is interned (a post read again, an entry
    unpacked from the store)."""
    link = "https://x.example/" + "post-1"
    shared = changed(_entry(1, ("A",)), link=link, base_url=link, title=sys.intern("T1"))
    apart = changed(_entry(1, ("A",)), link="".join(link), base_url="".join(link),
                    title="".join(["T", "1"]))
    assert shared == apart and shared.base_url is shared.link
    assert entry_digest(shared) == entry_digest(apart)
    assert entry_digest(unpack_entry(pack_entry(shared))) == entry_digest(apart)


def test_entries_differing_in_any_field_have_different_digests() -> None:
    entry = _entry(1, ("A",))
    digests = {entry_digest(changed(entry, **{name: value})) for name, value in (
        ("title", "other"), ("html", "<p>other</p>"), ("updated", T0 + timedelta(days=9)),
        ("published", None), ("image", Image("https://i.example/x.png", None)),
        ("category", ("B",)), ("summary", "s"))}
    assert len(digests) == 7 and entry_digest(entry) not in digests


def test_a_postgresql_store_that_cannot_be_opened_says_so_without_the_password(
        pg_url: str) -> None:
    """A missing database (or one refusing us) is StoreUnavailable, which a build
    reports as it does an unreachable state (exit 3, the previous feeds kept); the
    message names the database, never the password."""
    from aggregator.store import StoreUnavailable
    from aggregator.store.postgres import PostgresStore

    base, _, query = pg_url.partition("?")
    missing = base.rsplit("/", 1)[0].replace("://postgres@", "://postgres:s3cret@") \
        + "/no_such_db" + (f"?{query}" if query else "")
    assert "s3cret" in missing
    with pytest.raises(StoreUnavailable) as caught:
        PostgresStore(missing)
    assert "no_such_db" in str(caught.value) and "s3cret" not in str(caught.value)

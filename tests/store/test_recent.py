"""The in-memory de-duplication window (store/recent.py) against a real SQLite file.

What it must never do: miss a copy of a committed row (a restart included), or call a new
event a copy because of an entry a rolled-back transaction left behind.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from test_store import T0, make_event, tenant_of

from alarmd import metrics
from alarmd.intake import Intake
from alarmd.store.db import Store, StoreError, iso
from alarmd.store.events import count_events
from alarmd.store.recent import RecentKeys


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "alarmd.sqlite")
    yield s
    await s.close()


async def test_the_dedup_index_is_gone(store: Store) -> None:
    names = await store.writer.submit(
        lambda c: [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='index'")]
    )
    assert "events_dedup" not in names
    assert "events_received" in names  # what the window is read back through at start


async def test_a_copy_after_a_restart_is_still_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "alarmd.sqlite"
    first = await Store.open(path)
    stored = await Intake(first, dedup_window=timedelta(hours=1), tenant_of=tenant_of).submit(
        [make_event(n) for n in range(3)]
    )
    await first.close()

    again = await Store.open(path)  # a new process: an empty map, read back from the file
    assert not again.recent_keys.loaded
    intake = Intake(again, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    receipt = await intake.submit([make_event(1, at=T0 + timedelta(minutes=59))])
    assert receipt.duplicate == (True,)
    assert receipt.event_ids == (stored.event_ids[1],)
    assert len(again.recent_keys) == 3
    late = await intake.submit([make_event(2, at=T0 + timedelta(minutes=61))])
    assert late.duplicate == (False,)  # outside the hour: a new event, as before
    await again.close()


async def test_a_rolled_back_entry_never_makes_a_new_event_a_copy(store: Store) -> None:
    """Event 1 enters the map in a transaction whose commit fails; its id is then taken by
    event 2. Event 1 sent again must be stored, not called a copy of event 2's row."""
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    zero = await intake.submit([make_event(0)])
    pages = await store.writer.submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store.writer.submit(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
    big = [make_event(1)] + [make_event(n) for n in range(100, 300)]
    with pytest.raises(StoreError):
        await intake.submit(big)
    assert len(store.recent_keys) > 1  # the failed batch's entries are still there
    await store.writer.submit(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))

    taken = await intake.submit([make_event(2)])  # gets the id event 1 had been given
    assert taken.event_ids == (zero.event_ids[0] + 1,)
    resent = await intake.submit([make_event(1)])
    assert resent.duplicate == (False,)
    assert resent.event_ids != taken.event_ids
    conn = sqlite3.connect(store.path)
    raws = dict(conn.execute("SELECT id, raw FROM events").fetchall())
    assert raws[taken.event_ids[0]] == make_event(2).raw
    assert raws[resent.event_ids[0]] == make_event(1).raw
    assert count_events(conn) == 3
    # and now it is a copy, of its own row
    copy = await intake.submit([make_event(1)])
    assert copy.duplicate == (True,) and copy.event_ids == resent.event_ids


async def test_two_intakes_on_one_store_share_the_window(store: Store) -> None:
    one = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    two = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    a, b = await asyncio.gather(one.submit([make_event(5)]), two.submit([make_event(5)]))
    assert sorted([a.duplicates, b.duplicates]) == [0, 1]
    assert a.event_ids == b.event_ids


def _mini_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, dedup_key, received_at)")
    return conn


def test_old_entries_are_forgotten_and_the_gauge_says_how_many_are_kept() -> None:
    conn = _mini_db()
    recent = RecentKeys()
    window = timedelta(minutes=10)
    for minute in range(30):  # one event a minute for half an hour
        at = iso(T0 + timedelta(minutes=minute))
        conn.execute("INSERT INTO events VALUES (?, ?, ?)", (minute + 1, f"k{minute}", at))
        recent.add(f"k{minute}", minute + 1, at)
        recent.prune(at, window)
    # kept: the window (10 minutes) and the slack (1 minute) before the newest, whole minutes
    assert 11 <= len(recent) <= 13
    assert metrics.STORE_DEDUP_KEYS._value.get() == len(recent)
    newest = iso(T0 + timedelta(minutes=29))
    assert recent.find(conn, "k29", newest, window, {}) == 30
    assert recent.find(conn, "k19", newest, window, {}) == 20  # just inside: 10 min ago
    assert recent.find(conn, "k18", newest, window, {}) is None  # kept, but too old
    assert recent.find(conn, "k3", newest, window, {}) is None  # forgotten
    recent.prune(newest, window)
    assert recent.find(conn, "k29", newest, window, {}) == 30


def test_a_key_stored_again_after_its_window_is_kept_for_its_new_row() -> None:
    """The old row's entry leaving the window must not take the new row's with it."""
    conn = _mini_db()
    recent = RecentKeys()
    window = timedelta(minutes=10)
    old, new = iso(T0), iso(T0 + timedelta(minutes=15))
    conn.execute("INSERT INTO events VALUES (1, 'k', ?)", (old,))
    recent.add("k", 1, old)
    conn.execute("INSERT INTO events VALUES (2, 'k', ?)", (new,))
    recent.add("k", 2, new)
    recent.prune(iso(T0 + timedelta(minutes=24)), window)  # the old minute is out
    assert recent.find(conn, "k", iso(T0 + timedelta(minutes=24)), window, {}) == 2


def test_a_hit_on_a_row_of_the_same_job_not_inserted_yet_is_checked_like_a_stored_one() -> None:
    conn = _mini_db()
    recent = RecentKeys()
    at = iso(T0)
    row = (at, *([None] * 14), "k", b"raw")
    recent.add("k", 7, at)
    hour = timedelta(hours=1)
    assert recent.find(conn, "k", iso(T0 + hour), hour, {7: row}) == 7
    assert recent.find(conn, "k", iso(T0 + hour + timedelta(seconds=1)), hour, {7: row}) is None
    assert recent.find(conn, "k", iso(T0), hour, {}) is None  # id 7 is not in the table

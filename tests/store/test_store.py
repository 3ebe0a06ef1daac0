"""The store against a real SQLite file: pragmas, migrations, group commit, de-dup, failure."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alarmd.intake import Intake
from alarmd.model import Condition, Event, EventKind, Flag
from alarmd.store.db import WAL_AUTOCHECKPOINT_PAGES, Store, StoreError, migrate
from alarmd.store.events import count_events, list_events

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_event(
    n: int, *, key: str | None = None, at: datetime = T0, flags: frozenset[Flag] = frozenset()
) -> Event:
    return Event(
        protocol="dc09",
        source="1234",
        kind=EventKind.ASSISTANCE,
        condition=Condition.ALARM,
        priority=EventKind.ASSISTANCE.default_priority,
        received_at=at,
        dedup_key=key or f"dc09:1234:{n:04d}:abc#0",
        raw=b"\nframe %d\r" % n,
        code="CID:1101",
        zone="1",
        flags=flags,
        attributes={"L": "stue"},
    )


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "alarmd.sqlite")
    yield s
    await s.close()


def spy_batch_sizes(store: Store, method: str = "_execute") -> list[int]:
    """Record the size of every batch the writer runs through ``method``."""
    sizes: list[int] = []
    original = getattr(store.writer, method)

    def spy(batch):  # type: ignore[no-untyped-def]
        sizes.append(len(batch))
        return original(batch)

    setattr(store.writer, method, spy)
    return sizes


def tenant_of(protocol: str, source: str) -> str | None:
    return {"1234": "eksempel-kommune"}.get(source)


async def test_pragmas_and_migrations(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.sqlite")
    await s.close()
    conn = sqlite3.connect(tmp_path / "a.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == [1, 2, 3, 4, 5, 6]
    assert migrate(conn) == []  # applying again does nothing
    # the writer's own connection runs synchronous=FULL (2); checked on a fresh one too
    conn2 = sqlite3.connect(tmp_path / "a.sqlite")
    conn2.execute("PRAGMA synchronous = FULL")
    assert conn2.execute("PRAGMA synchronous").fetchone()[0] == 2


async def test_writer_connection_is_wal_full(store: Store) -> None:
    mode, sync = await store.writer.submit(
        lambda c: (
            c.execute("PRAGMA journal_mode").fetchone()[0],
            c.execute("PRAGMA synchronous").fetchone()[0],
        )
    )
    assert (mode, sync) == ("wal", 2)
    pages = await store.writer.submit(
        lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    )
    assert pages == WAL_AUTOCHECKPOINT_PAGES


async def test_submit_returns_after_commit_and_keeps_raw(store: Store) -> None:
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    receipt = await intake.submit([make_event(1)])
    assert receipt.duplicates == 0
    # visible to an independent connection: it is committed, not just queued
    conn = sqlite3.connect(store.path)
    row = conn.execute(
        "SELECT raw, tenant, attributes FROM events WHERE id = ?", receipt.event_ids
    ).fetchone()
    assert row == (b"\nframe 1\r", "eksempel-kommune", '{"L": "stue"}')


async def test_retransmission_is_stored_once_and_counted(store: Store) -> None:
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    first = await intake.submit([make_event(1)])
    again = await intake.submit([make_event(1, at=T0 + timedelta(seconds=30))])
    assert again.duplicates == 1
    assert again.event_ids == first.event_ids
    events = await list_events(store.reader)
    assert len(events) == 1
    assert events[0].retransmissions == 1


async def test_copy_outside_window_is_a_new_event(store: Store) -> None:
    intake = Intake(store, dedup_window=timedelta(minutes=10), tenant_of=tenant_of)
    await intake.submit([make_event(1)])
    later = await intake.submit([make_event(1, at=T0 + timedelta(minutes=11))])
    assert later.duplicates == 0
    assert len(await list_events(store.reader)) == 2


async def test_concurrent_copies_in_one_batch_give_one_row(store: Store) -> None:
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    receipts = await asyncio.gather(*(intake.submit([make_event(7)]) for _ in range(5)))
    assert sum(r.duplicates for r in receipts) == 4
    assert len({r.event_ids for r in receipts}) == 1


async def test_group_commit_batches_concurrent_submits(store: Store) -> None:
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    batches = spy_batch_sizes(store)
    receipts = await asyncio.gather(*(intake.submit([make_event(n)]) for n in range(500)))
    assert len(batches) < 500 / 5, batches  # many events per commit under load
    conn = sqlite3.connect(store.path)
    assert count_events(conn) == 500
    # each submitter gets its own row back, in order, from the shared job
    ids = [r.event_ids[0] for r in receipts]
    assert len(set(ids)) == 500
    raws = dict(conn.execute("SELECT id, raw FROM events").fetchall())
    assert [raws[i] for i in ids] == [make_event(n).raw for n in range(500)]


async def test_lone_event_is_committed_without_waiting_for_company(store: Store) -> None:
    """No fixed timer: a single submit completes as soon as its own commit does."""
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    batches = spy_batch_sizes(store)
    await intake.submit([make_event(1)])
    assert batches == [1]


async def test_full_database_fails_the_submit_and_recovers(store: Store) -> None:
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    await intake.submit([make_event(0)])
    pages = await store.writer.submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store.writer.submit(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
    big = [make_event(n) for n in range(1, 200)]
    with pytest.raises(StoreError):
        await intake.submit(big)
    assert store.writer.failed
    conn = sqlite3.connect(store.path)
    assert count_events(conn) == 1  # nothing of the failed batch is there
    await store.writer.submit(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    receipt = await intake.submit(big)
    assert receipt.duplicates == 0
    assert not store.writer.failed
    assert count_events(conn) == 200


async def test_a_failing_job_fails_alone(store: Store) -> None:
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO events (id) VALUES (1)")  # violates NOT NULL

    retried = spy_batch_sizes(store, "_execute_one_by_one")

    results = await asyncio.gather(
        intake.submit([make_event(1)]),
        store.writer.submit(bad),
        intake.submit([make_event(2)]),
        return_exceptions=True,
    )
    # the optimistic batch was undone and run job by job: intake's two submissions are
    # one job (they joined while the writer had not started), the bad job the other
    assert retried == [2]
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    assert len(await list_events(store.reader)) == 2


async def test_one_batch_with_new_events_stored_copies_and_copies_of_each_other(
    store: Store,
) -> None:
    """A batch of mixed submissions: every receipt says what the per-event path would."""
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    first = await intake.submit([make_event(1)])
    batches = spy_batch_sizes(store)
    receipts = await asyncio.gather(
        intake.submit([make_event(2), make_event(1)]),  # new + copy of a stored row
        intake.submit([make_event(3)]),  # new
        intake.submit([make_event(2)]),  # copy of a row of this same batch
        intake.submit([make_event(3), make_event(4), make_event(3)]),  # copies inside one
        intake.submit([make_event(1, at=T0 + timedelta(hours=2))]),  # outside the window
    )
    assert batches == [1]  # one writer job for all five submissions
    a, b, c, d, e = receipts
    assert a.duplicate == (False, True) and a.event_ids[1] == first.event_ids[0]
    assert b.duplicate == (False,)
    assert c.duplicate == (True,) and c.event_ids == (a.event_ids[0],)
    assert d.duplicate == (True, False, True)
    assert d.event_ids == (b.event_ids[0], d.event_ids[1], b.event_ids[0])
    assert e.duplicate == (False,) and e.event_ids[0] != first.event_ids[0]
    conn = sqlite3.connect(store.path)
    assert count_events(conn) == 5  # 1, 2, 3, 4, and 1 again outside the window
    counted = dict(conn.execute("SELECT id, retransmissions FROM events").fetchall())
    assert counted[first.event_ids[0]] == 1
    assert counted[a.event_ids[0]] == 1
    assert counted[b.event_ids[0]] == 2


async def test_a_failing_case_hook_fails_its_submission_alone(store: Store) -> None:
    """The batch is undone and re-run submission by submission; the others are stored."""
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    hooked: list[int] = []

    def hook(conn: sqlite3.Connection, event: Event, event_id: int, tenant: str | None) -> None:
        if event.dedup_key.endswith("0002:abc#0"):
            raise RuntimeError("a bug in case logic")
        hooked.append(event_id)

    intake.set_case_hook(hook)
    results = await asyncio.gather(
        intake.submit([make_event(1)]),
        intake.submit([make_event(2)]),
        intake.submit([make_event(3)]),
        return_exceptions=True,
    )
    assert isinstance(results[1], RuntimeError)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    stored = [e.raw for e in await list_events(store.reader)]
    assert sorted(stored) == sorted([make_event(1).raw, make_event(3).raw])
    assert set(hooked) >= {results[0].event_ids[0], results[2].event_ids[0]}


async def test_many_events_in_one_batch_use_every_chunk_size(store: Store) -> None:
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    receipt = await intake.submit([make_event(n) for n in range(341)])  # 256+64+16+4+1
    assert receipt.duplicates == 0
    assert len(set(receipt.event_ids)) == 341
    again = await intake.submit([make_event(n) for n in range(341)])
    assert again.event_ids == receipt.event_ids and again.duplicates == 341


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "c.sqlite")
    intake = Intake(s, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    pending = [asyncio.ensure_future(intake.submit([make_event(n)])) for n in range(50)]
    await asyncio.sleep(0)
    await s.close()
    await asyncio.gather(*pending)
    assert count_events(sqlite3.connect(tmp_path / "c.sqlite")) == 50
    with pytest.raises(StoreError):
        await intake.submit([make_event(99)])


async def test_list_events_filters_by_tenant_and_source(store: Store) -> None:
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=tenant_of)
    await intake.submit([make_event(1)])
    other = Event(
        protocol="dc09",
        source="9999",
        kind=EventKind.FALL,
        condition=Condition.ALARM,
        priority=EventKind.FALL.default_priority,
        received_at=T0,
        dedup_key="x",
        raw=b"r",
        flags=frozenset({Flag.UNREGISTERED}),
    )
    await intake.submit([other])
    assert [e.source for e in await list_events(store.reader, tenants=["eksempel-kommune"])] == [
        "1234"
    ]
    assert [e.source for e in await list_events(store.reader, source="9999")] == ["9999"]
    everything = await list_events(store.reader)
    assert [e.flags for e in everything] == [("unregistered",), ()]

"""The events table: appending (with retransmission de-duplication) and reading.

``AppendBatch`` is one writer job for every submission intake gathered while the writer was
busy (a few multi-row inserts instead of one statement per event). It runs inside the group
transaction and judges copies with the store's in-memory window (``store/recent.py``), which
every inserted row enters before its commit: the check sees every earlier event, of the same
batch included, and two copies of one frame arriving on two connections at the same moment
still give one row.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiosqlite

from alarmd.model import Event, Receipt
from alarmd.store.db import iso, parse_iso
from alarmd.store.recent import KEY, RecentKeys

_COUNT_COPY = "UPDATE events SET retransmissions = retransmissions + 1 WHERE id = ?"


CaseHook = Callable[[sqlite3.Connection, Event, int, "str | None"], None]
# The case hook for every new event of one batch at once, in order: (event, event_id, tenant).
BatchCaseHook = Callable[[sqlite3.Connection, Sequence[tuple[Event, int, "str | None"]]], None]

Row = tuple[Any, ...]  # an events row's values in _COLUMN_NAMES order

_COLUMN_NAMES = (
    "received_at, protocol, source, tenant, kind, category, condition, priority, code, zone,"
    " partition, occurred_at, text, flags, attributes, dedup_key, raw"
)
# Statements of these many rows only, so a handful of texts stay in the statement cache
# (a batch of 100 runs as 64 + 16 + 16 + 4) and the variables stay far below SQLite's limit.
_CHUNKS = (256, 64, 16, 4, 1)


def event_row(event: Event, tenant: str | None, received: str) -> Row:
    """One event's column values in ``_COLUMN_NAMES`` order."""
    return (
        received,
        event.protocol,
        event.source,
        tenant,
        event.kind.value,
        event.category.value,
        event.condition.value,
        int(event.priority),
        event.code,
        event.zone,
        event.partition,
        iso(event.occurred_at) if event.occurred_at else None,
        event.text,
        ",".join(sorted(flag.value for flag in event.flags)) if event.flags else "",
        json.dumps(dict(event.attributes), ensure_ascii=False, sort_keys=True)
        if event.attributes
        else "{}",
        event.dedup_key,
        event.raw,
    )


@functools.cache
def _insert_many_sql(rows: int) -> str:
    """Insert ``rows`` events with the ids the job gave them."""
    one = "(" + ",".join("?" * 18) + ")"
    return f"INSERT INTO events (id, {_COLUMN_NAMES}) VALUES {','.join([one] * rows)}"  # noqa: S608


def store_rows(
    conn: sqlite3.Connection,
    recent: RecentKeys,
    window: timedelta,
    events: Sequence[Event],
    tenants: Sequence[str | None],
    rows: Sequence[Row],
    on_new: CaseHook | None = None,
    on_new_batch: BatchCaseHook | None = None,
) -> tuple[list[int], list[bool]]:
    """Store ``rows`` (of ``events``), each unless a copy is stored within its window.

    Returns each event's row id and whether it was a copy. A copy gets no row: its original's
    ``retransmissions`` is counted instead. Rows are judged in order against every row stored
    before and every earlier row of this call, each with its own window, so two copies of one
    frame in one call (it came in on two connections at once) give one row.

    Ids are given here (the writer is the only one inserting: max(id) + 1 on, as SQLite
    would), which lets a row be judged against the earlier rows of the same call before any
    is inserted, and all be inserted by a few multi-row statements.

    ``on_new`` runs for each new event in order after the inserts, or ``on_new_batch`` once
    with all of them (``Engine.on_events``), in the same transaction.
    """
    if not recent.loaded:
        recent.load(conn, max(row[0] for row in rows), window)
    next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
    pending: dict[int, Row] = {}  # ids given to rows not inserted yet
    ids: list[int] = []
    duplicate: list[bool] = []
    copies: list[tuple[int]] = []
    fresh: list[tuple[Event, int, str | None]] = []
    find, add = recent.find, recent.add
    for index, row in enumerate(rows):
        key = row[KEY]  # dedup_key
        original = find(conn, key, row[0], window, pending)
        if original is not None:
            ids.append(original)
            duplicate.append(True)
            copies.append((original,))
            continue
        event_id = next_id
        next_id += 1
        pending[event_id] = row
        add(key, event_id, row[0])
        ids.append(event_id)
        duplicate.append(False)
        fresh.append((events[index], event_id, tenants[index]))
    if pending:
        new = [(event_id, *row) for event_id, row in pending.items()]
        start = 0
        while start < len(new):
            size = next(n for n in _CHUNKS if n <= len(new) - start)
            params = [value for row in new[start : start + size] for value in row]
            conn.execute(_insert_many_sql(size), params)
            start += size
    if copies:
        conn.executemany(_COUNT_COPY, copies)
    if fresh:
        if on_new_batch is not None:
            on_new_batch(conn, fresh)
        elif on_new is not None:
            for event, event_id, tenant in fresh:
                on_new(conn, event, event_id, tenant)
    recent.prune(rows[-1][0], window)
    return ids, duplicate


class AppendBatch:
    """Submissions gathered while the writer was busy, stored by one writer job.

    Calling it (the writer does, inside the group transaction) stores every event of every
    submission at once (``store_rows``: de-duplicated, a few multi-row inserts, the case
    hook), and returns one ``Receipt`` per submission, or the exception that submission
    alone failed with.

    If anything fails on a submission's own account (not the database's), the batch is
    undone and run again one submission at a time, each under its own savepoint, so the
    failing submission fails alone, as separate jobs would. The job may be run twice (the
    writer's own fallback does that) and gives the same answer each time.
    """

    __slots__ = (
        "_events",
        "_iso",
        "_on_new",
        "_on_new_batch",
        "_recent",
        "_rows",
        "_sizes",
        "_tenants",
        "_window",
    )

    def __init__(
        self,
        recent: RecentKeys,
        dedup_window: timedelta,
        on_new: CaseHook | None = None,
        on_new_batch: BatchCaseHook | None = None,
    ) -> None:
        """``on_new_batch``, if given, replaces ``on_new`` on the batched path: called once
        with every new event, in order, after the batch's rows are stored (it must behave as
        ``on_new`` called for each, and fail no event but its own). The one-by-one fallback
        still calls ``on_new`` per event."""
        self._recent = recent
        self._window = dedup_window
        self._on_new = on_new
        self._on_new_batch = on_new_batch if on_new is not None else None
        self._events: list[Event] = []
        self._tenants: list[str | None] = []
        self._rows: list[Row] = []
        self._sizes: list[int] = []
        self._iso: dict[datetime, str] = {}

    def __len__(self) -> int:
        """How many submissions the batch holds."""
        return len(self._sizes)

    def add(self, events: Sequence[Event], tenants: Sequence[str | None]) -> None:
        """Add one submission (its events and their tenants); its result keeps this place."""
        stamps = self._iso
        rows = self._rows
        for event, tenant in zip(events, tenants, strict=True):
            at = event.received_at
            stamp = stamps.get(at)
            if stamp is None:
                stamp = stamps[at] = iso(at)
            rows.append(event_row(event, tenant, stamp))
        self._events.extend(events)
        self._tenants.extend(tenants)
        self._sizes.append(len(events))

    def __call__(self, conn: sqlite3.Connection) -> list[Receipt | Exception]:
        conn.execute("SAVEPOINT append_batch")
        try:
            ids, duplicate = store_rows(
                conn,
                self._recent,
                self._window,
                self._events,
                self._tenants,
                self._rows,
                self._on_new if self._on_new_batch is None else None,
                self._on_new_batch,
            )
        except sqlite3.OperationalError:
            raise  # disk full, I/O error: the whole transaction fails
        except Exception:
            conn.execute("ROLLBACK TO append_batch")
            conn.execute("RELEASE append_batch")
            return self._one_by_one(conn)
        conn.execute("RELEASE append_batch")
        results: list[Receipt | Exception] = []
        start = 0
        for size in self._sizes:
            stop = start + size
            results.append(Receipt(tuple(ids[start:stop]), tuple(duplicate[start:stop])))
            start = stop
        return results

    def _one_by_one(self, conn: sqlite3.Connection) -> list[Receipt | Exception]:
        results: list[Receipt | Exception] = []
        start = 0
        for size in self._sizes:
            stop = start + size
            conn.execute("SAVEPOINT append_one")
            try:
                ids, duplicate = store_rows(
                    conn,
                    self._recent,
                    self._window,
                    self._events[start:stop],
                    self._tenants[start:stop],
                    self._rows[start:stop],
                    self._on_new,
                )
            except sqlite3.OperationalError:
                raise
            except Exception as exc:  # this submission's own fault: undo it alone
                conn.execute("ROLLBACK TO append_one")
                conn.execute("RELEASE append_one")
                results.append(exc)
            else:
                conn.execute("RELEASE append_one")
                results.append(Receipt(tuple(ids), tuple(duplicate)))
            start = stop
        return results


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An events row as the API shows it."""

    id: int
    received_at: datetime
    protocol: str
    source: str
    tenant: str | None
    kind: str
    category: str
    condition: str
    priority: int
    code: str
    zone: str | None
    partition: str | None
    occurred_at: datetime | None
    text: str | None
    flags: tuple[str, ...]
    attributes: dict[str, str]
    retransmissions: int
    raw: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": iso(self.received_at),
            "protocol": self.protocol,
            "source": self.source,
            "tenant": self.tenant,
            "kind": self.kind,
            "category": self.category,
            "condition": self.condition,
            "priority": self.priority,
            "code": self.code,
            "zone": self.zone,
            "partition": self.partition,
            "occurred_at": iso(self.occurred_at) if self.occurred_at else None,
            "text": self.text,
            "flags": list(self.flags),
            "attributes": self.attributes,
            "retransmissions": self.retransmissions,
            "raw_hex": self.raw.hex(),
        }


_COLUMNS = (
    "id, received_at, protocol, source, tenant, kind, category, condition, priority, code,"
    " zone, partition, occurred_at, text, flags, attributes, retransmissions, raw"
)


def _row_to_event(row: Sequence[Any]) -> StoredEvent:
    return StoredEvent(
        id=row[0],
        received_at=parse_iso(row[1]),
        protocol=row[2],
        source=row[3],
        tenant=row[4],
        kind=row[5],
        category=row[6],
        condition=row[7],
        priority=row[8],
        code=row[9],
        zone=row[10],
        partition=row[11],
        occurred_at=parse_iso(row[12]) if row[12] else None,
        text=row[13],
        flags=tuple(f for f in row[14].split(",") if f),
        attributes=json.loads(row[15]),
        retransmissions=row[16],
        raw=bytes(row[17]),
    )


async def list_events(
    reader: aiosqlite.Connection,
    *,
    source: str | None = None,
    protocol: str | None = None,
    since: datetime | None = None,
    tenants: Sequence[str] | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[StoredEvent]:
    """Newest first, filtered. ``tenants=None`` means every tenant (and unregistered sources)."""
    where: list[str] = []
    args: list[Any] = []
    if source is not None:
        where.append("source = ?")
        args.append(source)
    if protocol is not None:
        where.append("protocol = ?")
        args.append(protocol)
    if since is not None:
        where.append("received_at >= ?")
        args.append(iso(since))
    if after_id is not None:
        where.append("id > ?")
        args.append(after_id)
    if tenants is not None:
        where.append(f"tenant IN ({','.join('?' * len(tenants))})")
        args.extend(tenants)
    sql = f"SELECT {_COLUMNS} FROM events"  # noqa: S608 - only fixed fragments are joined
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    async with reader.execute(sql, args) as cursor:
        rows = await cursor.fetchall()
    return [_row_to_event(tuple(row)) for row in rows]


def count_events(conn: sqlite3.Connection) -> int:
    """Total rows; for tests and tools that open the file directly."""
    return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])

"""The events table: appending (with retransmission de-duplication) and reading.

``append_job`` builds a writer job for one submission; ``AppendBatch`` is one writer job
for every submission intake gathered while the writer was busy (one multi-row insert per
chunk instead of one statement per event). Both run inside the group transaction, so the
de-duplication check sees every earlier event, in the same batch included, and two
copies of one frame arriving on two connections at the same moment still give one row.
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

# One statement per new event: insert unless a copy is stored within the window. Only a
# retransmission (rare) costs a second query, to find the row it repeats. Its parameters
# are a Row (17 values and the horizon) and then the dedup_key again.
_INSERT_UNLESS_COPY = (
    "INSERT INTO events (received_at, protocol, source, tenant, kind, category, condition,"
    " priority, code, zone, partition, occurred_at, text, flags, attributes, dedup_key, raw)"
    " SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17"
    " WHERE NOT EXISTS (SELECT 1 FROM events WHERE dedup_key = ?16 AND received_at >= ?18)"
)
_FIND_COPY = "SELECT min(id) FROM events WHERE dedup_key = ? AND received_at >= ?"
_COUNT_COPY = "UPDATE events SET retransmissions = retransmissions + 1 WHERE id = ?"


CaseHook = Callable[[sqlite3.Connection, Event, int, "str | None"], None]
# The case hook for every new event of one batch at once, in order: (event, event_id, tenant).
BatchCaseHook = Callable[[sqlite3.Connection, Sequence[tuple[Event, int, "str | None"]]], None]

Row = tuple[Any, ...]  # an events row's values in _COLUMN_NAMES order, then the horizon


def event_row(event: Event, tenant: str | None, received: str, horizon: str) -> Row:
    """The values ``_INSERT_UNLESS_COPY`` and ``_insert_many_sql`` take for one event."""
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
        horizon,
    )


def append_job(
    events: Sequence[Event],
    tenants: Sequence[str | None],
    dedup_window: timedelta,
    on_new: CaseHook | None = None,
) -> Callable[[sqlite3.Connection], Receipt]:
    """A writer job that stores ``events`` unless a copy is already stored within the window.

    ``on_new(conn, event, event_id, tenant)`` runs for each new (not retransmitted) event in
    the same transaction: the routing engine opens the event's case there, so an
    acknowledged alarm can never be without its case.
    """
    rows = [
        event_row(event, tenant, iso(event.received_at), iso(event.received_at - dedup_window))
        for event, tenant in zip(events, tenants, strict=True)
    ]

    def job(conn: sqlite3.Connection) -> Receipt:
        return _append_one_by_one(conn, events, tenants, rows, on_new)

    return job


def _append_one_by_one(
    conn: sqlite3.Connection,
    events: Sequence[Event],
    tenants: Sequence[str | None],
    rows: Sequence[Row],
    on_new: CaseHook | None,
) -> Receipt:
    """One statement per event: the general path, and the fallback of ``AppendBatch``."""
    ids: list[int] = []
    duplicate: list[bool] = []
    for index, row in enumerate(rows):
        cursor = conn.execute(_INSERT_UNLESS_COPY, row)
        if cursor.rowcount == 1:
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
            duplicate.append(False)
            if on_new is not None:
                on_new(conn, events[index], cursor.lastrowid, tenants[index])
            continue
        original = conn.execute(_FIND_COPY, (row[_KEY], row[_HORIZON])).fetchone()[0]
        conn.execute(_COUNT_COPY, (original,))
        ids.append(int(original))
        duplicate.append(True)
    return Receipt(tuple(ids), tuple(duplicate))


# --- many submissions in one job -----------------------------------------------------------

_COLUMN_NAMES = (
    "received_at, protocol, source, tenant, kind, category, condition, priority, code, zone,"
    " partition, occurred_at, text, flags, attributes, dedup_key, raw"
)
_KEY = 15  # dedup_key's place in a Row
_HORIZON = 17
# Statements of these many rows only, so a handful of texts stay in the statement cache
# (a batch of 100 runs as 64 + 16 + 16 + 4) and the variables stay far below SQLite's limit.
_CHUNKS = (256, 64, 16, 4, 1)


@functools.cache
def _insert_many_sql(rows: int) -> str:
    """Insert ``rows`` events, each unless a copy is stored within its window; RETURNING the
    new rows' dedup_key and id. SQLite reads the whole VALUES list before inserting (the
    SELECT reads the target table), so copies *within* the list are not seen here: the
    caller drops them first."""
    one = "(" + ",".join("?" * 18) + ")"
    return (
        f"WITH v({_COLUMN_NAMES}, horizon) AS (VALUES {','.join([one] * rows)})"  # noqa: S608
        f" INSERT INTO events ({_COLUMN_NAMES}) SELECT {_COLUMN_NAMES} FROM v"
        " WHERE NOT EXISTS (SELECT 1 FROM events AS e"
        " WHERE e.dedup_key = v.dedup_key AND e.received_at >= v.horizon)"
        " RETURNING dedup_key, id"
    )


class AppendBatch:
    """Submissions gathered while the writer was busy, stored by one writer job.

    Calling it (the writer does, inside the group transaction) stores every event of every
    submission with one multi-row ``INSERT … RETURNING`` per chunk instead of one statement
    per event, then runs the case hook for each new event in submission order, and returns
    one ``Receipt`` per submission, or the exception that submission alone failed with.

    De-duplication is the same as ``append_job``'s: a copy of a row stored within the window
    is not inserted; its original is found and its retransmissions counted. Copies inside
    the batch (one frame arriving on two connections at once) are found here, before the
    insert: the first goes into the multi-row insert, the later ones through the per-event
    statement after it, in order, so they count as its retransmissions.

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
        "_rows",
        "_sizes",
        "_tenants",
        "_window",
    )

    def __init__(
        self,
        dedup_window: timedelta,
        on_new: CaseHook | None = None,
        on_new_batch: BatchCaseHook | None = None,
    ) -> None:
        """``on_new_batch``, if given, replaces ``on_new`` on the batched path: called once
        with every new event, in order, after the batch's rows are stored (it must behave as
        ``on_new`` called for each, and fail no event but its own). The one-by-one fallback
        still calls ``on_new`` per event."""
        self._window = dedup_window
        self._on_new = on_new
        self._on_new_batch = on_new_batch if on_new is not None else None
        self._events: list[Event] = []
        self._tenants: list[str | None] = []
        self._rows: list[Row] = []
        self._sizes: list[int] = []
        self._iso: dict[datetime, tuple[str, str]] = {}

    def __len__(self) -> int:
        """How many submissions the batch holds."""
        return len(self._sizes)

    def add(self, events: Sequence[Event], tenants: Sequence[str | None]) -> None:
        """Add one submission (its events and their tenants); its result keeps this place."""
        stamps = self._iso
        window = self._window
        rows = self._rows
        for event, tenant in zip(events, tenants, strict=True):
            at = event.received_at
            stamp = stamps.get(at)
            if stamp is None:
                stamp = stamps[at] = (iso(at), iso(at - window))
            rows.append(event_row(event, tenant, stamp[0], stamp[1]))
        self._events.extend(events)
        self._tenants.extend(tenants)
        self._sizes.append(len(events))

    def __call__(self, conn: sqlite3.Connection) -> list[Receipt | Exception]:
        conn.execute("SAVEPOINT append_batch")
        try:
            ids, duplicate = self._store(conn)
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

    def _store(self, conn: sqlite3.Connection) -> tuple[list[int], list[bool]]:
        rows = self._rows
        first: dict[str, int] = {}  # dedup_key -> index of its first row in the batch
        unique: list[Row] = []
        for index, row in enumerate(rows):
            if row[_KEY] not in first:
                first[row[_KEY]] = index
                unique.append(row)
        new: dict[str, int] = {}  # dedup_key -> id of the row inserted now
        start = 0
        while start < len(unique):
            left = len(unique) - start
            size = next(n for n in _CHUNKS if n <= left)
            params = [value for row in unique[start : start + size] for value in row]
            new.update(conn.execute(_insert_many_sql(size), params).fetchall())
            start += size
        ids: list[int] = []
        duplicate: list[bool] = []
        events, tenants = self._events, self._tenants
        on_new_batch = self._on_new_batch
        on_new = self._on_new if on_new_batch is None else None
        fresh: list[tuple[Event, int, str | None]] = []
        for index, row in enumerate(rows):
            key = row[_KEY]
            if first[key] == index:
                event_id = new.get(key)
            else:
                # A later copy of a key this batch already holds (rare): the per-event
                # statement, which sees the rows inserted above with their own times, so
                # the window is judged exactly as for separate jobs.
                cursor = conn.execute(_INSERT_UNLESS_COPY, row)
                event_id = cursor.lastrowid if cursor.rowcount == 1 else None
            if event_id is not None:
                ids.append(event_id)
                duplicate.append(False)
                if on_new is not None:
                    on_new(conn, events[index], event_id, tenants[index])
                elif on_new_batch is not None:
                    fresh.append((events[index], event_id, tenants[index]))
                continue
            original = int(conn.execute(_FIND_COPY, (key, row[_HORIZON])).fetchone()[0])
            conn.execute(_COUNT_COPY, (original,))
            ids.append(original)
            duplicate.append(True)
        if fresh and on_new_batch is not None:
            # After the later copies' statements, not between them: the hook touches cases
            # and the events' case_id only, which de-duplication never reads.
            on_new_batch(conn, fresh)
        return ids, duplicate

    def _one_by_one(self, conn: sqlite3.Connection) -> list[Receipt | Exception]:
        results: list[Receipt | Exception] = []
        start = 0
        for size in self._sizes:
            stop = start + size
            conn.execute("SAVEPOINT append_one")
            try:
                receipt = _append_one_by_one(
                    conn,
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
                results.append(receipt)
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

"""The events table: appending (with retransmission de-duplication) and reading.

``append_job`` builds a writer job: it runs on the writer thread inside the group
transaction, so the de-duplication check and the insert see every earlier event, in
the same batch included, and two copies of one frame arriving on two connections at
the same moment still give one row.
"""

from __future__ import annotations

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
# retransmission (rare) costs a second query, to find the row it repeats.
_INSERT_UNLESS_COPY = (
    "INSERT INTO events (received_at, protocol, source, tenant, kind, category, condition,"
    " priority, code, zone, partition, occurred_at, text, flags, attributes, dedup_key, raw)"
    " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
    " WHERE NOT EXISTS (SELECT 1 FROM events WHERE dedup_key = ? AND received_at >= ?)"
)
_FIND_COPY = "SELECT min(id) FROM events WHERE dedup_key = ? AND received_at >= ?"
_COUNT_COPY = "UPDATE events SET retransmissions = retransmissions + 1 WHERE id = ?"


CaseHook = Callable[[sqlite3.Connection, Event, int, "str | None"], None]


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
    rows = []
    for event, tenant in zip(events, tenants, strict=True):
        rows.append(
            (
                iso(event.received_at),
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
        )
    horizons = [iso(event.received_at - dedup_window) for event in events]

    def job(conn: sqlite3.Connection) -> Receipt:
        ids: list[int] = []
        duplicate: list[bool] = []
        for index, (row, horizon) in enumerate(zip(rows, horizons, strict=True)):
            cursor = conn.execute(_INSERT_UNLESS_COPY, (*row, row[15], horizon))
            if cursor.rowcount == 1:
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
                duplicate.append(False)
                if on_new is not None:
                    on_new(conn, events[index], cursor.lastrowid, tenants[index])
                continue
            original = conn.execute(_FIND_COPY, (row[15], horizon)).fetchone()[0]
            conn.execute(_COUNT_COPY, (original,))
            ids.append(int(original))
            duplicate.append(True)
        return Receipt(tuple(ids), tuple(duplicate))

    return job


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

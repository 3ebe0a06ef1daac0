"""SIP registrar bindings, persisted: where each SCAIP device can be reached.

A binding is written through the store's single writer (``save_binding_job``,
``delete_binding_job``) before the REGISTER is answered, so a 200 OK means the binding
survives a restart. ``load_bindings`` reads them back at start; expired ones are skipped.
``purge_expired_job`` deletes the expired ones (the transport runs it on REGISTER and in its
periodic sweep, at most once a minute), so the table holds only bindings that still count.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import aiosqlite

from alarmd.store.db import iso, parse_iso

__all__ = [
    "Binding",
    "delete_binding_job",
    "load_bindings",
    "purge_expired_job",
    "save_binding_job",
]


@dataclass(frozen=True, slots=True)
class Binding:
    aor: str  # address of record, "sip:user@host"
    username: str  # the Digest user that registered it
    contact: str  # the Contact URI the device gave
    transport: str  # "udp", "tcp", "tls"
    host: str  # the REGISTER's source address: replies go there (rport semantics)
    port: int
    expires_at: datetime


def save_binding_job(binding: Binding, now: datetime) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO sip_bindings"
            " (aor, username, contact, transport, host, port, expires_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (aor) DO UPDATE SET username = excluded.username,"
            " contact = excluded.contact, transport = excluded.transport,"
            " host = excluded.host, port = excluded.port,"
            " expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            (
                binding.aor,
                binding.username,
                binding.contact,
                binding.transport,
                binding.host,
                binding.port,
                iso(binding.expires_at),
                iso(now),
            ),
        )

    return job


def delete_binding_job(aor: str) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM sip_bindings WHERE aor = ?", (aor,))

    return job


def purge_expired_job(now: datetime) -> Callable[[sqlite3.Connection], int]:
    """Delete every binding that expired at or before ``now``; the job returns how many.

    ``expires_at`` is our ISO text form (UTC, microseconds, 'Z'), which sorts as time."""

    def job(conn: sqlite3.Connection) -> int:
        cursor = conn.execute("DELETE FROM sip_bindings WHERE expires_at <= ?", (iso(now),))
        return int(cursor.rowcount)

    return job


async def load_bindings(reader: aiosqlite.Connection, now: datetime) -> list[Binding]:
    """Every binding that has not expired at ``now``."""
    out: list[Binding] = []
    async with reader.execute(
        "SELECT aor, username, contact, transport, host, port, expires_at FROM sip_bindings"
    ) as cursor:
        async for row in cursor:
            expires_at = parse_iso(row[6])
            if expires_at <= now:
                continue
            out.append(Binding(row[0], row[1], row[2], row[3], row[4], int(row[5]), expires_at))
    return out

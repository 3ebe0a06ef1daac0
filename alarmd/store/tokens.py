"""API tokens: created once, shown once, kept only as a SHA-256 hash.

A token is 32 random bytes in URL-safe base64 with an ``alarmd_`` prefix (so a leaked one
is easy to recognise in a scan). Hashing with plain SHA-256 is enough here because the
token has 256 bits of entropy: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import aiosqlite

from alarmd.store.db import iso

ROLES = ("admin", "operator", "supervisor", "tenant_admin", "home_care", "supplier", "auditor")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """Who a valid token belongs to and what it may see."""

    id: int
    name: str
    role: str
    tenants: tuple[str, ...] | None  # None means every tenant
    person: str | None = None  # the person a staff member's token acts as ("staff:7")

    def sees_tenant(self, tenant: str | None) -> bool:
        return self.tenants is None or (tenant is not None and tenant in self.tenants)


def new_token() -> str:
    return "alarmd_" + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_job(
    name: str,
    role: str,
    tenants: tuple[str, ...] | None,
    token: str,
    now: datetime,
    person: str | None = None,
) -> Callable[[sqlite3.Connection], int]:
    """A writer job that records a token's hash; returns the row id."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")

    def job(conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            "INSERT INTO api_tokens (name, role, tenants, token_hash, created_at, person)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                name,
                role,
                "*" if tenants is None else ",".join(tenants),
                token_hash(token),
                iso(now),
                person,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    return job


def count_job(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM api_tokens").fetchone()[0])


async def lookup(reader: aiosqlite.Connection, token: str) -> TokenInfo | None:
    """The token's owner, or None if it is unknown or revoked."""
    async with reader.execute(
        "SELECT id, name, role, tenants, person FROM api_tokens"
        " WHERE token_hash = ? AND revoked_at IS NULL",
        (token_hash(token),),
    ) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return None
    tenants = None if row[3] == "*" else tuple(t for t in row[3].split(",") if t)
    return TokenInfo(id=row[0], name=row[1], role=row[2], tenants=tenants, person=row[4])


def revoke_job(name: str, now: datetime) -> Callable[[sqlite3.Connection], bool]:
    """A writer job that revokes the token called ``name``; False if none is active."""

    def job(conn: sqlite3.Connection) -> bool:
        cursor = conn.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
            (iso(now), name),
        )
        return cursor.rowcount == 1

    return job


async def list_tokens(reader: aiosqlite.Connection) -> list[dict[str, object]]:
    """Every token ever issued, without its hash."""
    async with reader.execute(
        "SELECT name, role, tenants, person, created_at, revoked_at FROM api_tokens ORDER BY id"
    ) as cursor:
        rows = await cursor.fetchall()
    return [
        {
            "name": r[0],
            "role": r[1],
            "tenants": None if r[2] == "*" else [t for t in r[2].split(",") if t],
            "person": r[3],
            "created_at": r[4],
            "revoked_at": r[5],
        }
        for r in rows
    ]

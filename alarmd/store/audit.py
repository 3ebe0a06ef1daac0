"""The audit trail: every read of a service user's personal data leaves a row (who, what,
when, why). DESIGN.md invariant 7: personal data is read through functions that write one.

A record is a writer job like every other write, so it is durable before the data is
returned; if the store cannot write the record, the read fails rather than go unrecorded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime

from alarmd.store.db import iso

__all__ = ["record_job"]


def record_job(
    at: datetime, actor: str, role: str, action: str, subject: str, reason: str = ""
) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO audit (at, actor, role, action, subject, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (iso(at), actor, role, action, subject, reason[:200]),
        )

    return job

"""The cases table, its log, and how an escalation's state is kept as data.

A case row carries everything needed to resume it after a restart (DESIGN.md invariant 4):
the policy snapshot (``policy`` JSON), the plan snapshot (``plan`` JSON), the escalation
state (``escalation`` JSON) and the deadline the engine sleeps on (``next_step_at``). The
JSON forms are written and read only here.

Synchronous functions take the writer's ``sqlite3.Connection`` and run inside writer jobs;
the ``async`` ones at the end are the API's reads through the aiosqlite reader.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiosqlite

from alarmd.routing.escalation import (
    CaseEscalation,
    CentreStep,
    EscalationPolicy,
    Phase,
    Recipient,
    Step,
)
from alarmd.store.db import iso, parse_iso
from alarmd.store.directory import PlanSnapshot

__all__ = [
    "CaseRow",
    "append_log",
    "escalation_from_json",
    "escalation_to_json",
    "get_case",
    "list_cases",
    "load_case",
    "policy_from_json",
    "policy_to_json",
]


# --------------------------------------------------------------------------- JSON forms


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


def policy_to_json(policy: EscalationPolicy) -> dict[str, Any]:
    return {
        "steps": [
            {
                "recipients": [[r.kind, r.ref] for r in s.recipients],
                "channels": list(s.channels),
                "accept_within_s": _seconds(s.accept_within),
                "require_all": s.require_all,
            }
            for s in policy.steps
        ],
        "centre": {
            "accept_within_s": _seconds(policy.centre.accept_within),
            "re_alert_every_s": _seconds(policy.centre.re_alert_every),
            "channels": list(policy.centre.channels),
        },
        "accepted_deadline_s": _seconds(policy.accepted_deadline),
        "on_site_deadline_s": None
        if policy.on_site_deadline is None
        else _seconds(policy.on_site_deadline),
    }


def policy_from_json(data: Mapping[str, Any]) -> EscalationPolicy:
    centre = data["centre"]
    on_site = data.get("on_site_deadline_s")
    return EscalationPolicy(
        steps=tuple(
            Step(
                recipients=tuple(Recipient(kind, ref) for kind, ref in s["recipients"]),
                channels=tuple(s["channels"]),
                accept_within=timedelta(seconds=s["accept_within_s"]),
                require_all=bool(s.get("require_all", False)),
            )
            for s in data["steps"]
        ),
        centre=CentreStep(
            accept_within=timedelta(seconds=centre["accept_within_s"]),
            re_alert_every=timedelta(seconds=centre["re_alert_every_s"]),
            channels=tuple(centre["channels"]),
        ),
        accepted_deadline=timedelta(seconds=data["accepted_deadline_s"]),
        on_site_deadline=None if on_site is None else timedelta(seconds=on_site),
    )


def escalation_to_json(state: CaseEscalation) -> dict[str, Any]:
    """The state without its policy (stored beside it, in its own column)."""
    return {
        "phase": state.phase.value,
        "step_index": state.step_index,
        "next_step_at": None if state.next_step_at is None else iso(state.next_step_at),
        "accepted_by": state.accepted_by,
        "acks": sorted(state.acks),
        "notified": sorted(state.notified),
        "declined": sorted(state.declined),
        "centre_alerts": state.centre_alerts,
    }


def escalation_from_json(policy: EscalationPolicy, data: Mapping[str, Any]) -> CaseEscalation:
    due = data.get("next_step_at")
    return CaseEscalation(
        policy=policy,
        phase=Phase(data["phase"]),
        step_index=int(data["step_index"]),
        next_step_at=None if due is None else parse_iso(due),
        accepted_by=data.get("accepted_by"),
        acks=frozenset(data.get("acks", ())),
        notified=frozenset(data.get("notified", ())),
        declined=frozenset(data.get("declined", ())),
        centre_alerts=int(data.get("centre_alerts", 0)),
    )


# --------------------------------------------------------------------------- rows

_COLUMNS = (
    "id, tenant, user_id, open_key, protocol, source, kind, category, queue, priority, flags,"
    " state, mode, rule, policy, plan, escalation, next_step_at, accepted_by, opened_at,"
    " updated_at, closed_at, outcome, close_note, first_event_id, event_count, version"
)


@dataclass(frozen=True, slots=True)
class CaseRow:
    """One case as stored. ``escalation`` is ``None`` until the case has been routed."""

    id: int
    tenant: str | None
    user_id: int | None
    open_key: str
    protocol: str
    source: str
    kind: str
    category: str
    queue: str
    priority: int
    flags: tuple[str, ...]
    state: str
    mode: str | None
    rule: str | None
    policy: EscalationPolicy | None
    plan: PlanSnapshot | None
    escalation: CaseEscalation | None
    next_step_at: datetime | None
    accepted_by: str | None
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    outcome: str | None
    close_note: str | None
    first_event_id: int
    event_count: int
    version: int

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def to_json(self) -> dict[str, Any]:
        """The case as the API shows it (the plan's personal data is added by the caller)."""
        esc = self.escalation
        return {
            "id": self.id,
            "tenant": self.tenant,
            "user_id": self.user_id,
            "protocol": self.protocol,
            "source": self.source,
            "kind": self.kind,
            "category": self.category,
            "queue": self.queue,
            "priority": self.priority,
            "flags": list(self.flags),
            "state": self.state,
            "mode": self.mode,
            "rule": self.rule,
            "step": None if esc is None else esc.step_index + 1,
            "at_centre": esc is not None and esc.step_index >= len(esc.policy.steps),
            "next_step_at": None if self.next_step_at is None else iso(self.next_step_at),
            "accepted_by": self.accepted_by,
            "opened_at": iso(self.opened_at),
            "updated_at": iso(self.updated_at),
            "closed_at": None if self.closed_at is None else iso(self.closed_at),
            "outcome": self.outcome,
            "close_note": self.close_note,
            "first_event_id": self.first_event_id,
            "event_count": self.event_count,
            "version": self.version,
        }


def _row_to_case(row: Sequence[Any]) -> CaseRow:
    policy = policy_from_json(json.loads(row[14])) if row[14] else None
    escalation = (
        escalation_from_json(policy, json.loads(row[16]))
        if policy is not None and row[16]
        else None
    )
    return CaseRow(
        id=row[0],
        tenant=row[1],
        user_id=row[2],
        open_key=row[3],
        protocol=row[4],
        source=row[5],
        kind=row[6],
        category=row[7],
        queue=row[8],
        priority=row[9],
        flags=tuple(f for f in row[10].split(",") if f),
        state=row[11],
        mode=row[12],
        rule=row[13],
        policy=policy,
        plan=PlanSnapshot.from_json(json.loads(row[15])) if row[15] else None,
        escalation=escalation,
        next_step_at=parse_iso(row[17]) if row[17] else None,
        accepted_by=row[18],
        opened_at=parse_iso(row[19]),
        updated_at=parse_iso(row[20]),
        closed_at=parse_iso(row[21]) if row[21] else None,
        outcome=row[22],
        close_note=row[23],
        first_event_id=row[24],
        event_count=row[25],
        version=row[26],
    )


def load_case(conn: sqlite3.Connection, case_id: int) -> CaseRow | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM cases WHERE id = ?", (case_id,)).fetchone()  # noqa: S608
    return None if row is None else _row_to_case(row)


def append_log(
    conn: sqlite3.Connection,
    case_id: int,
    at: datetime,
    actor: str,
    type_: str,
    message: str,
    data: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO case_log (case_id, at, actor, type, message, data) VALUES (?, ?, ?, ?, ?, ?)",
        (
            case_id,
            iso(at),
            actor,
            type_,
            message,
            json.dumps(dict(data), ensure_ascii=False, sort_keys=True) if data else "{}",
        ),
    )


# --------------------------------------------------------------------------- API reads


async def list_cases(
    reader: aiosqlite.Connection,
    *,
    tenants: tuple[str, ...] | None,
    open_only: bool = True,
    queue: str | None = None,
    limit: int = 500,
) -> list[CaseRow]:
    """Cases the caller may see: open ones by priority then age, or the latest closed too.

    ``tenants`` ``None`` is the centre's view (every tenant, and unregistered sources);
    a tenant-scoped caller never sees a case of another tenant or of no tenant.
    """
    where: list[str] = []
    params: list[Any] = []
    if open_only:
        where.append("closed_at IS NULL")
    if tenants is not None:
        if not tenants:
            return []
        where.append(f"tenant IN ({','.join('?' * len(tenants))})")
        params.extend(tenants)
    if queue is not None:
        where.append("queue = ?")
        params.append(queue)
    sql = f"SELECT {_COLUMNS} FROM cases"  # noqa: S608
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += (
        " ORDER BY priority DESC, opened_at ASC" if open_only else " ORDER BY id DESC"
    ) + " LIMIT ?"
    params.append(limit)
    async with reader.execute(sql, params) as cursor:
        rows = await cursor.fetchall()
    return [_row_to_case(tuple(r)) for r in rows]


async def get_case(
    reader: aiosqlite.Connection, case_id: int
) -> tuple[CaseRow, list[dict[str, Any]]] | None:
    """One case and its log, oldest entry first."""
    async with reader.execute(f"SELECT {_COLUMNS} FROM cases WHERE id = ?", (case_id,)) as cur:  # noqa: S608
        row = await cur.fetchone()
    if row is None:
        return None
    async with reader.execute(
        "SELECT id, at, actor, type, message, data FROM case_log WHERE case_id = ? ORDER BY id",
        (case_id,),
    ) as cur:
        log_rows = await cur.fetchall()
    log = [
        {
            "id": r[0],
            "at": r[1],
            "actor": r[2],
            "type": r[3],
            "message": r[4],
            "data": json.loads(r[5]),
        }
        for r in log_rows
    ]
    async with reader.execute(
        "SELECT id, received_at, kind, condition, code, zone, flags FROM events"
        " WHERE case_id = ? ORDER BY id LIMIT 500",
        (case_id,),
    ) as cur:
        event_rows = await cur.fetchall()
    # the case's events (a second press of the pendant...) as log entries, in time order
    log.extend(
        {
            "id": None,
            "at": r[1],
            "actor": "device",
            "type": "event",
            "message": f"{r[2]} {r[3]} ({r[4]}{', zone ' + r[5] if r[5] else ''})",
            "data": {"event_id": r[0], "flags": [f for f in r[6].split(",") if f]},
        }
        for r in event_rows
    )
    log.sort(key=lambda entry: (entry["at"], entry["id"] is not None, entry["id"] or 0))
    return _row_to_case(tuple(row)), log

"""Directory lookups for routing: which user a device belongs to, their plan, who to notify.

These run inside writer jobs (synchronous, on the writer's ``sqlite3.Connection``), because
the engine routes a case in the same transaction that records the routing: the facts it
decided on and the notifications it queued commit together or not at all. Importing the
directory lives in ``directory_import.py``; the API's reads in ``api/directory.py``.

People are named by text ids that survive in case state and logs: ``staff:<id>`` and
``contact:<id>`` (see migration 0002).

Next of kin are resolved from the plan *snapshot* copied into the case when it opened
(editing a plan never changes a running escalation, invariant 4); who is on duty in a team
is read live, because that is who can go now.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from alarmd.routing.escalation import Recipient

__all__ = [
    "ContactSnapshot",
    "DeviceLink",
    "Person",
    "PlanSnapshot",
    "UserFacts",
    "find_device",
    "record_plan_version",
    "resolve_recipient",
    "user_facts",
]


def _channels(text: str | None) -> Mapping[str, str]:
    if not text:
        return MappingProxyType({})
    data = json.loads(text)
    return MappingProxyType({str(k): str(v) for k, v in data.items() if v not in (None, "")})


@dataclass(frozen=True, slots=True)
class DeviceLink:
    """A registered device: its tenant and, if it routes by a user's plan, that user."""

    device_id: int
    tenant: str
    user_id: int | None
    device_type: str
    status: str = "active"


def find_device(conn: sqlite3.Connection, protocol: str, identity: str) -> DeviceLink | None:
    """The device and the user whose plan its alarms follow. A device that is not on the wall
    (in stock, ordered, removed: see ``admin/lifecycle.py``) or whose user is inactive (need
    ended, stay in hospital) has no user here: its alarms still reach the centre, routed as
    from a source without a user, never dropped."""
    row = conn.execute(
        "SELECT d.id, d.tenant, CASE WHEN d.status IN ('installed', 'active', 'faulty')"
        " AND u.active = 1 THEN d.user_id END, d.device_type, d.status"
        " FROM devices d LEFT JOIN service_users u ON u.id = d.user_id"
        " WHERE d.protocol = ? AND d.identity = ?",
        (protocol, identity),
    ).fetchone()
    if row is None:
        return None
    return DeviceLink(
        device_id=row[0], tenant=row[1], user_id=row[2], device_type=row[3], status=row[4]
    )


@dataclass(frozen=True, slots=True)
class ContactSnapshot:
    id: int
    position: int
    name: str
    relation: str
    phone: str
    has_key: bool
    channels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def person(self) -> str:
        return f"contact:{self.id}"


@dataclass(frozen=True, slots=True)
class PlanSnapshot:
    """The response plan as it stood when the case opened (copied into the case)."""

    version: int
    instructions: str
    key_box: str
    home_care_team: str | None
    mode_override: str | None
    contacts: tuple[ContactSnapshot, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "instructions": self.instructions,
            "key_box": self.key_box,
            "home_care_team": self.home_care_team,
            "mode_override": self.mode_override,
            "contacts": [
                {
                    "id": c.id,
                    "position": c.position,
                    "name": c.name,
                    "relation": c.relation,
                    "phone": c.phone,
                    "has_key": c.has_key,
                    "channels": dict(c.channels),
                }
                for c in self.contacts
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanSnapshot:
        return cls(
            version=int(data["version"]),
            instructions=str(data["instructions"]),
            key_box=str(data["key_box"]),
            home_care_team=data.get("home_care_team"),
            mode_override=data.get("mode_override"),
            contacts=tuple(
                ContactSnapshot(
                    id=int(c["id"]),
                    position=int(c["position"]),
                    name=str(c["name"]),
                    relation=str(c["relation"]),
                    phone=str(c["phone"]),
                    has_key=bool(c["has_key"]),
                    channels=MappingProxyType(dict(c.get("channels", {}))),
                )
                for c in data.get("contacts", [])
            ),
        )


@dataclass(frozen=True, slots=True)
class UserFacts:
    """What routing and a notification need to know about a service user."""

    id: int
    tenant: str
    ref: str
    first_name: str
    last_name: str
    address: str
    postcode: str
    group: str | None
    location: str
    active: bool
    plan: PlanSnapshot | None


def user_facts(conn: sqlite3.Connection, user_id: int) -> UserFacts | None:
    row = conn.execute(
        "SELECT id, tenant, ref, first_name, last_name, address, postcode, user_group, location,"
        " active FROM service_users WHERE id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        return None
    plan_row = conn.execute(
        "SELECT version, instructions, key_box, home_care_team, mode_override"
        " FROM response_plans WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    contacts = tuple(
        ContactSnapshot(
            id=c[0],
            position=c[1],
            name=c[2],
            relation=c[3],
            phone=c[4],
            has_key=bool(c[5]),
            channels=_channels(c[6]),
        )
        for c in conn.execute(
            "SELECT id, position, name, relation, phone, has_key, channels FROM contacts"
            " WHERE user_id = ? ORDER BY position",
            (user_id,),
        )
    )
    plan = None
    if plan_row is not None or contacts:
        version, instructions, key_box, team, mode = plan_row or (0, "", "", None, None)
        plan = PlanSnapshot(
            version=version,
            instructions=instructions,
            key_box=key_box,
            home_care_team=team,
            mode_override=mode,
            contacts=contacts,
        )
    return UserFacts(
        id=row[0],
        tenant=row[1],
        ref=row[2],
        first_name=row[3],
        last_name=row[4],
        address=row[5],
        postcode=row[6],
        group=row[7],
        location=row[8],
        active=bool(row[9]),
        plan=plan,
    )


@dataclass(frozen=True, slots=True)
class Person:
    """Someone a step can reach, with their addresses per channel."""

    id: str
    name: str
    channels: Mapping[str, str]


def _team_members(
    conn: sqlite3.Connection, tenant: str, team: str, *, on_duty_only: bool
) -> list[Person]:
    sql = (
        "SELECT s.id, s.name, s.channels FROM teams t"
        " JOIN team_members m ON m.team_id = t.id JOIN staff s ON s.id = m.staff_id"
        " WHERE t.tenant = ? AND t.ref = ? AND s.active = 1"
    )
    if on_duty_only:
        sql += " AND m.on_duty = 1"
    sql += " ORDER BY m.position, s.id"
    return [
        Person(id=f"staff:{r[0]}", name=r[1], channels=_channels(r[2]))
        for r in conn.execute(sql, (tenant, team))
    ]


def resolve_recipient(
    conn: sqlite3.Connection,
    tenant: str | None,
    recipient: Recipient,
    plan: PlanSnapshot | None,
) -> tuple[list[Person], str | None]:
    """The people a symbolic recipient stands for now, and a note if there are none.

    ``team``: the members on duty; ``team_all``: every active member; a team ref ``plan``
    is the plan's home-care team. ``next_of_kin``: the plan's contacts, ``all`` or the one
    at position ``1``, ``2``... ``staff``: one staff member by ref. ``operators`` and
    ``supervisor`` are the centre's, reached through the console: not resolved here.
    """
    kind, ref = recipient.kind, recipient.ref
    if kind in ("operators", "supervisor"):
        return [], None
    if tenant is None:
        return [], f"{kind} {ref}: the source belongs to no municipality"
    if kind in ("team", "team_all"):
        team = ref
        if ref == "plan":
            if plan is None or not plan.home_care_team:
                return [], "the user's plan names no home-care team"
            team = plan.home_care_team
        people = _team_members(conn, tenant, team, on_duty_only=kind == "team")
        if not people:
            what = "nobody on duty in" if kind == "team" else "no active member in"
            return [], f"{what} team {team}"
        return people, None
    if kind == "next_of_kin":
        if plan is None or not plan.contacts:
            return [], "the user's plan has no next of kin"
        chosen = [c for c in plan.contacts if ref == "all" or str(c.position) == ref]
        if not chosen:
            return [], f"the user's plan has no next of kin number {ref}"
        return [Person(id=c.person, name=c.name, channels=c.channels) for c in chosen], None
    if kind == "staff":
        row = conn.execute(
            "SELECT id, name, channels FROM staff WHERE tenant = ? AND ref = ? AND active = 1",
            (tenant, ref),
        ).fetchone()
        if row is None:
            return [], f"no active staff member {ref}"
        return [Person(id=f"staff:{row[0]}", name=row[1], channels=_channels(row[2]))], None
    return [], f"unknown recipient kind {kind}"


def record_plan_version(
    conn: sqlite3.Connection, user_id: int, now: str, actor: str, changed: str
) -> int:
    """Keep the user's current plan (with its contacts) as a row of
    ``response_plan_versions``, so "who changed what, when" has an answer; call it in the
    transaction that changed the plan, after the change. ``now`` is an ``iso`` time.
    Returns the version recorded (0 when the user has no plan at all)."""
    facts = user_facts(conn, user_id)
    if facts is None or facts.plan is None:
        return 0
    conn.execute(
        "INSERT OR REPLACE INTO response_plan_versions"
        " (user_id, version, plan, changed, changed_at, changed_by) VALUES (?, ?, ?, ?, ?, ?)",
        (
            user_id,
            facts.plan.version,
            json.dumps(facts.plan.to_json(), ensure_ascii=False),
            changed,
            now,
            actor,
        ),
    )
    return facts.plan.version

"""Case management in the store: writer jobs for the service user's life cycle.

Every function here returns a *job* (a function of the writer's ``sqlite3.Connection``, see
``store/db.py``), so each change commits in one transaction together with its audit row
(DESIGN.md invariant 7: who changed or read whose personal data, when). The rules of what
may follow what are the pure functions of ``lifecycle.py``; this module loads rows, asks
them, and writes the answer.

Who may see what is passed in as a ``Scope``: the tenants a token covers (``None``: all) and,
for a supplier's token, the supplier it speaks for. Something outside the scope is
``NotFound`` exactly as something that does not exist, so that a token cannot probe another
municipality's users.

Times: ``now`` is a UTC ``datetime`` from the caller's clock; calendar dates (a decision's
validity, an order's visit) are the municipality's, in Europe/Oslo.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from alarmd.admin import lifecycle
from alarmd.admin.lifecycle import RuleError
from alarmd.store.cases import append_log
from alarmd.store.db import iso, parse_iso
from alarmd.store.directory import record_plan_version

__all__ = [
    "Actor",
    "Conflict",
    "Invalid",
    "NotFound",
    "RuleError",
    "Scope",
    "local_date",
]

OSLO = ZoneInfo("Europe/Oslo")
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]


class NotFound(LookupError):
    """Nothing the caller may see answers to this name."""


class Conflict(ValueError):
    """The request is valid but clashes with what is stored (a duplicate, a stale state)."""


class Invalid(ValueError):
    """The request itself is wrong; the message names the field."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a caller may see: tenants (``None``: every one) and, for a supplier, which."""

    tenants: tuple[str, ...] | None
    supplier: str | None = None

    def sees(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting, for ``updated_by`` columns and the audit trail."""

    name: str  # the API token's name
    role: str

    @property
    def label(self) -> str:
        return f"api:{self.name}"


def local_date(now: datetime) -> date:
    """The municipality's calendar date at ``now``."""
    return now.astimezone(OSLO).date()


def _audit(
    conn: sqlite3.Connection,
    now: datetime,
    actor: Actor,
    action: str,
    subject: str,
    reason: str = "",
) -> None:
    conn.execute(
        "INSERT INTO audit (at, actor, role, action, subject, reason) VALUES (?, ?, ?, ?, ?, ?)",
        (iso(now), actor.name, actor.role, action, subject, reason[:200]),
    )


def _subject(tenant: str, ref: str) -> str:
    return f"user:{tenant}/{ref}"


def _date(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{name}: a date as YYYY-MM-DD, not {value!r}") from None


# --- users ------------------------------------------------------------------------------------

USER_FIELDS = ("first_name", "last_name", "address", "postcode", "phone", "group", "location")
_COLUMN = {"group": "user_group"}


def _user_row(conn: sqlite3.Connection, scope: Scope, tenant: str, ref: str) -> sqlite3.Row:
    if not scope.sees(tenant):
        raise NotFound(f"no service user {tenant}/{ref}")
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute(
            "SELECT * FROM service_users WHERE tenant = ? AND ref = ?", (tenant, ref)
        ).fetchone()
    finally:
        conn.row_factory = None
    if row is None or row["erased_at"] is not None:
        raise NotFound(f"no service user {tenant}/{ref}")
    assert isinstance(row, sqlite3.Row)
    return row


def create_user(
    scope: Scope, tenant: str, ref: str, fields: Mapping[str, Any], actor: Actor, now: datetime
) -> Job[dict[str, Any]]:
    """A new service user (active, no decision yet: the console flags that)."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        if (
            not scope.sees(tenant)
            or conn.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant,)).fetchone() is None
        ):
            raise NotFound(f"no tenant {tenant}")
        if conn.execute(
            "SELECT 1 FROM service_users WHERE tenant = ? AND ref = ?", (tenant, ref)
        ).fetchone():
            raise Conflict(f"{tenant} already has a service user {ref}")
        columns = ["tenant", "ref", "updated_at"]
        values: list[Any] = [tenant, ref, iso(now)]
        for name in USER_FIELDS:
            if name in fields and fields[name] is not None:
                columns.append(_COLUMN.get(name, name))
                values.append(fields[name])
        cursor = conn.execute(
            f"INSERT INTO service_users ({', '.join(columns)})"
            f" VALUES ({', '.join('?' * len(values))})",
            values,
        )
        _audit(conn, now, actor, "create_user", _subject(tenant, ref))
        return {"id": cursor.lastrowid, "tenant": tenant, "ref": ref}

    return job


def update_user(
    scope: Scope, tenant: str, ref: str, fields: Mapping[str, Any], actor: Actor, now: datetime
) -> Job[dict[str, Any]]:
    """Change a user's personal facts (only the fields given)."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _user_row(conn, scope, tenant, ref)
        changed = [n for n in USER_FIELDS if n in fields and row[_COLUMN.get(n, n)] != fields[n]]
        if changed:
            sets = ", ".join(f"{_COLUMN.get(n, n)} = ?" for n in changed)
            conn.execute(
                f"UPDATE service_users SET {sets}, updated_at = ? WHERE id = ?",
                [*(fields[n] for n in changed), iso(now), row["id"]],
            )
            _audit(conn, now, actor, "update_user", _subject(tenant, ref), ", ".join(changed))
        return {"tenant": tenant, "ref": ref, "changed": changed}

    return job


def set_active(
    scope: Scope, tenant: str, ref: str, active: bool, actor: Actor, now: datetime
) -> Job[dict[str, Any]]:
    """Deactivate (or reactivate) a user: while inactive, alarms from the user's devices go
    to the centre as from a source without a user, instead of by the user's plan (a stay in
    hospital, a move to a care home). Ending the need is ``end_need``."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _user_row(conn, scope, tenant, ref)
        if active and row["ended_at"] is not None:
            raise RuleError("the need has ended for this user; register a new decision first")
        conn.execute(
            "UPDATE service_users SET active = ?, updated_at = ? WHERE id = ?",
            (int(active), iso(now), row["id"]),
        )
        _audit(
            conn,
            now,
            actor,
            "activate_user" if active else "deactivate_user",
            _subject(tenant, ref),
        )
        return {"tenant": tenant, "ref": ref, "active": active}

    return job


def _decisions(conn: sqlite3.Connection, user_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, service, sensor_type, status, reference, applied_at, decided_at, valid_from,"
        " valid_to, ended_at, note, updated_at, updated_by FROM decisions WHERE user_id = ?"
        " ORDER BY id",
        (user_id,),
    ).fetchall()
    keys = (
        "id",
        "service",
        "sensor_type",
        "status",
        "reference",
        "applied_at",
        "decided_at",
        "valid_from",
        "valid_to",
        "ended_at",
        "note",
        "updated_at",
        "updated_by",
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


def decision_valid(conn: sqlite3.Connection, user_id: int, today: date) -> bool:
    """Whether the user has a granted decision covering ``today``."""
    return lifecycle.has_valid_decision(
        (
            lifecycle.DecisionFacts(
                status=d["status"],
                valid_from=_date(d["valid_from"], "valid_from"),
                valid_to=_date(d["valid_to"], "valid_to"),
            )
            for d in _decisions(conn, user_id)
        ),
        today,
    )


_DEVICE_KEYS = (
    "id",
    "tenant",
    "protocol",
    "identity",
    "serial",
    "device_type",
    "device_group",
    "supplier",
    "status",
    "status_at",
    "supervision_s",
    "user_id",
)


def _device_dict(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_DEVICE_KEYS, row, strict=True))
    out["type"] = out.pop("device_type")
    out["group"] = out.pop("device_group")
    return out


_DEVICE_SELECT = f"SELECT {', '.join(_DEVICE_KEYS)} FROM devices"


def user_record(
    scope: Scope, tenant: str, ref: str, actor: Actor, now: datetime, reason: str
) -> Job[dict[str, Any]]:
    """The case-management view of one user: facts, decisions (and whether one is valid
    today), devices with their status, orders, faults and plan versions. A read of personal
    data: audited with its reason."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _user_row(conn, scope, tenant, ref)
        user_id = int(row["id"])
        devices = [
            _device_dict(r)
            for r in conn.execute(_DEVICE_SELECT + " WHERE user_id = ? ORDER BY id", (user_id,))
        ]
        orders = [o for o in _orders(conn, "o.user_id = ?", (user_id,))]
        faults = _faults(conn, "f.user_id = ?", (user_id,))
        versions = [
            {"version": v[0], "changed": v[1], "changed_at": v[2], "changed_by": v[3]}
            for v in conn.execute(
                "SELECT version, changed, changed_at, changed_by FROM response_plan_versions"
                " WHERE user_id = ? ORDER BY version",
                (user_id,),
            )
        ]
        _audit(conn, now, actor, "read_user", _subject(tenant, ref), reason)
        return {
            "id": user_id,
            "tenant": tenant,
            "ref": ref,
            "first_name": row["first_name"],
            "last_name": row["last_name"],
            "address": row["address"],
            "postcode": row["postcode"],
            "phone": row["phone"],
            "group": row["user_group"],
            "location": row["location"],
            "active": bool(row["active"]),
            "ended_at": row["ended_at"],
            "erase_after": row["erase_after"],
            "decision_valid": decision_valid(conn, user_id, local_date(now)),
            "decisions": _decisions(conn, user_id),
            "devices": devices,
            "orders": orders,
            "faults": faults,
            "plan_versions": versions,
        }

    return job


# --- response plans ---------------------------------------------------------------------------

PLAN_FIELDS = ("instructions", "key_box", "home_care_team", "mode_override")
_PLAN_DEFAULTS: dict[str, Any] = {
    "instructions": "",
    "key_box": "",
    "home_care_team": None,
    "mode_override": None,
}


def set_plan(
    scope: Scope,
    tenant: str,
    ref: str,
    plan: Mapping[str, Any],
    contacts: Sequence[Mapping[str, Any]] | None,
    actor: Actor,
    now: datetime,
) -> Job[dict[str, Any]]:
    """A new version of the user's response plan: the fields given change, ``contacts`` (if
    given) replaces the list, in calling order. A contact that stays (same name and phone)
    keeps its id, the ``contact:<id>`` that case logs name. Running cases keep the version
    they copied when they opened."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _user_row(conn, scope, tenant, ref)
        user_id = int(row["id"])
        team = plan.get("home_care_team")
        if (
            team
            and not conn.execute(
                "SELECT 1 FROM teams WHERE tenant = ? AND ref = ?", (tenant, team)
            ).fetchone()
        ):
            raise Invalid(f"home_care_team: {tenant} has no team {team!r}")
        current = conn.execute(
            f"SELECT version, {', '.join(PLAN_FIELDS)} FROM response_plans WHERE user_id = ?",
            (user_id,),
        ).fetchone()
        old = dict(zip(PLAN_FIELDS, current[1:], strict=True)) if current else _PLAN_DEFAULTS
        changed = [n for n in PLAN_FIELDS if n in plan and old[n] != plan[n]]
        if current is None:
            conn.execute(
                "INSERT INTO response_plans (user_id, version, updated_at, updated_by)"
                " VALUES (?, 0, ?, ?)",
                (user_id, iso(now), actor.label),
            )
        if changed:
            sets = ", ".join(f"{n} = ?" for n in changed)
            conn.execute(
                f"UPDATE response_plans SET {sets} WHERE user_id = ?",
                [*(plan[n] for n in changed), user_id],
            )
        if contacts is not None and _replace_contacts(conn, user_id, contacts):
            changed.append("contacts")
        if not changed and current is not None:
            return {"tenant": tenant, "ref": ref, "version": current[0], "changed": []}
        conn.execute(
            "UPDATE response_plans SET version = version + 1, updated_at = ?, updated_by = ?"
            " WHERE user_id = ?",
            (iso(now), actor.label, user_id),
        )
        what = ", ".join(changed) or "created"
        version = record_plan_version(conn, user_id, iso(now), actor.label, what)
        _audit(conn, now, actor, "change_plan", _subject(tenant, ref), what)
        return {"tenant": tenant, "ref": ref, "version": version, "changed": changed}

    return job


def _replace_contacts(
    conn: sqlite3.Connection, user_id: int, contacts: Sequence[Mapping[str, Any]]
) -> bool:
    old = conn.execute(
        "SELECT id, name, phone, relation, has_key, channels FROM contacts WHERE user_id = ?"
        " ORDER BY position",
        (user_id,),
    ).fetchall()
    wanted = [
        (
            str(c["name"]),
            str(c.get("phone", "")),
            str(c.get("relation", "")),
            int(bool(c.get("has_key", False))),
            json.dumps(dict(c.get("channels") or {}), sort_keys=True),
        )
        for c in contacts
    ]
    if [tuple(r[1:]) for r in old] == wanted:
        return False
    by_person = {(r[1], r[2]): r[0] for r in old}
    keep = {by_person[(w[0], w[1])] for w in wanted if (w[0], w[1]) in by_person}
    for r in old:
        if r[0] not in keep:
            conn.execute("DELETE FROM contacts WHERE id = ?", (r[0],))
    # positions are unique per user: move the kept ones out of the way first
    conn.execute("UPDATE contacts SET position = -id WHERE user_id = ?", (user_id,))
    for position, w in enumerate(wanted, start=1):
        contact_id = by_person.get((w[0], w[1]))
        if contact_id is not None:
            conn.execute(
                "UPDATE contacts SET position = ?, relation = ?, has_key = ?, channels = ?"
                " WHERE id = ?",
                (position, w[2], w[3], w[4], contact_id),
            )
        else:
            conn.execute(
                "INSERT INTO contacts (user_id, position, name, phone, relation, has_key, channels)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user_id, position, *w),
            )
    return True


def plan_version(
    scope: Scope, tenant: str, ref: str, version: int, actor: Actor, now: datetime, reason: str
) -> Job[dict[str, Any]]:
    """One stored version of the plan, as it was (key box included: audited)."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _user_row(conn, scope, tenant, ref)
        found = conn.execute(
            "SELECT plan, changed, changed_at, changed_by FROM response_plan_versions"
            " WHERE user_id = ? AND version = ?",
            (row["id"], version),
        ).fetchone()
        if found is None:
            raise NotFound(f"{tenant}/{ref} has no plan version {version}")
        _audit(conn, now, actor, "read_plan", _subject(tenant, ref), reason)
        return {
            "version": version,
            "plan": json.loads(found[0]),
            "changed": found[1],
            "changed_at": found[2],
            "changed_by": found[3],
        }

    return job


# --- decisions --------------------------------------------------------------------------------


def add_decision(
    scope: Scope, tenant: str, ref: str, data: Mapping[str, Any], actor: Actor, now: datetime
) -> Job[dict[str, Any]]:
    """Register an application (``status: applied``) or a decision already made
    (``granted``, with ``valid_from``)."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _user_row(conn, scope, tenant, ref)
        status = data.get("status", "applied")
        if status not in ("applied", "granted"):
            raise Invalid("status: a new decision is applied or granted")
        service = data["service"]
        if service == "sensor" and not data.get("sensor_type"):
            raise Invalid("sensor_type: say which sensor the decision grants")
        valid_from = _date(data.get("valid_from"), "valid_from")
        valid_to = _date(data.get("valid_to"), "valid_to")
        if status == "granted" and valid_from is None:
            raise Invalid("valid_from: a granted decision says from when it is valid")
        if valid_from and valid_to and valid_to < valid_from:
            raise Invalid("valid_to: before valid_from")
        today = local_date(now).isoformat()
        cursor = conn.execute(
            "INSERT INTO decisions (tenant, user_id, service, sensor_type, status, reference,"
            " applied_at, decided_at, valid_from, valid_to, note, updated_at, updated_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                tenant,
                row["id"],
                service,
                data.get("sensor_type"),
                status,
                data.get("reference", ""),
                data.get("applied_at") or today,
                today if status == "granted" else None,
                valid_from and valid_from.isoformat(),
                valid_to and valid_to.isoformat(),
                data.get("note", ""),
                iso(now),
                actor.label,
            ),
        )
        _audit(conn, now, actor, "add_decision", _subject(tenant, ref), f"{service} {status}")
        return {"id": cursor.lastrowid, "status": status}

    return job


def decision_action(
    scope: Scope,
    decision_id: int,
    action: str,
    data: Mapping[str, Any],
    actor: Actor,
    now: datetime,
) -> Job[dict[str, Any]]:
    """Grant (with ``valid_from``, optionally ``valid_to``), refuse or end a decision."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        found = conn.execute(
            "SELECT d.status, d.tenant, u.ref, d.valid_from, d.valid_to FROM decisions d"
            " JOIN service_users u ON u.id = d.user_id WHERE d.id = ?",
            (decision_id,),
        ).fetchone()
        if found is None or not scope.sees(found[1]):
            raise NotFound(f"no decision {decision_id}")
        status, tenant, ref = found[0], found[1], found[2]
        new = lifecycle.decision_step(status, action)
        today = local_date(now)
        sets: dict[str, Any] = {"status": new}
        if action == "grant":
            valid_from = _date(data.get("valid_from"), "valid_from")
            if valid_from is None:
                raise Invalid("valid_from: a granted decision says from when it is valid")
            valid_to = _date(data.get("valid_to"), "valid_to")
            if valid_to and valid_to < valid_from:
                raise Invalid("valid_to: before valid_from")
            sets.update(
                decided_at=today.isoformat(),
                valid_from=valid_from.isoformat(),
                valid_to=valid_to and valid_to.isoformat(),
            )
        elif action == "refuse":
            sets["decided_at"] = today.isoformat()
        else:  # end
            end = _date(data.get("valid_to"), "valid_to") or today
            sets.update(ended_at=iso(now), valid_to=end.isoformat())
        if "note" in data:
            sets["note"] = data["note"]
        conn.execute(
            f"UPDATE decisions SET {', '.join(f'{k} = ?' for k in sets)}, updated_at = ?,"
            " updated_by = ? WHERE id = ?",
            [*sets.values(), iso(now), actor.label, decision_id],
        )
        _audit(conn, now, actor, f"{action}_decision", _subject(tenant, ref), str(decision_id))
        return {"id": decision_id, "status": new}

    return job


# --- suppliers and devices --------------------------------------------------------------------


def upsert_supplier(
    supplier_id: str, name: str, email: str, phone: str, now: datetime
) -> Job[dict[str, Any]]:
    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        conn.execute(
            "INSERT INTO suppliers (id, name, email, phone, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email,"
            " phone = excluded.phone, updated_at = excluded.updated_at",
            (supplier_id, name, email, phone, iso(now)),
        )
        return {"id": supplier_id, "name": name}

    return job


def _supplier_exists(conn: sqlite3.Connection, supplier: str) -> None:
    if conn.execute("SELECT 1 FROM suppliers WHERE id = ?", (supplier,)).fetchone() is None:
        raise Invalid(f"supplier: no supplier {supplier!r} is registered")


def register_device(scope: Scope, data: Mapping[str, Any], now: datetime) -> Job[dict[str, Any]]:
    """A device enters the registry, in stock: not linked, not supervised, not routing."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        tenant = data["tenant"]
        if (
            not scope.sees(tenant)
            or conn.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant,)).fetchone() is None
        ):
            raise NotFound(f"no tenant {tenant}")
        if data.get("supplier"):
            _supplier_exists(conn, data["supplier"])
        taken = conn.execute(
            "SELECT tenant FROM devices WHERE protocol = ? AND identity = ?",
            (data["protocol"], data["identity"]),
        ).fetchone()
        if taken is not None:
            where = "this municipality" if taken[0] == tenant else "another municipality"
            raise Conflict(f"{data['protocol']} {data['identity']} is registered to {where}")
        cursor = conn.execute(
            "INSERT INTO devices (tenant, protocol, identity, serial, device_type, device_group,"
            " supplier, supervision_s, status, status_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'in_stock', ?, ?)",
            (
                tenant,
                data["protocol"],
                data["identity"],
                data.get("serial", ""),
                data.get("type", ""),
                data.get("group", 1),
                data.get("supplier"),
                data.get("supervision_s"),
                iso(now),
                iso(now),
            ),
        )
        return _device(conn, scope, int(cursor.lastrowid or 0))

    return job


def _device(conn: sqlite3.Connection, scope: Scope, device_id: int) -> dict[str, Any]:
    row = conn.execute(_DEVICE_SELECT + " WHERE id = ?", (device_id,)).fetchone()
    if row is None:
        raise NotFound(f"no device {device_id}")
    device = _device_dict(row)
    if not scope.sees(device["tenant"]) or (
        scope.supplier is not None and device["supplier"] != scope.supplier
    ):
        raise NotFound(f"no device {device_id}")
    return device


def _move_device(
    conn: sqlite3.Connection, device: dict[str, Any], action: str, now: datetime
) -> str:
    new = lifecycle.device_step(device["status"], action)
    conn.execute(
        "UPDATE devices SET status = ?, status_at = ?, updated_at = ? WHERE id = ?",
        (new, iso(now), iso(now), device["id"]),
    )
    device["status"] = new
    return new


def list_devices(scope: Scope, tenant: str | None, status: str | None) -> Job[list[dict[str, Any]]]:
    def job(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        where, args = _scope_sql(scope, "tenant", "supplier")
        if tenant:
            where.append("tenant = ?")
            args.append(tenant)
        if status:
            where.append("status = ?")
            args.append(status)
        sql = _DEVICE_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [_device_dict(r) for r in conn.execute(sql, args)]

    return job


def device_action(
    scope: Scope, device_id: int, action: str, actor: Actor, now: datetime
) -> Job[dict[str, Any]]:
    """The steps taken by hand: ``activate`` (after the test alarm at installation) and
    ``restock`` (a removed device back in stock). Installing, removing and repairing go
    through orders, so that each has a date and a responsible supplier."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        if action not in ("activate", "restock"):
            raise Invalid("action: activate or restock (the rest goes through orders)")
        device = _device(conn, scope, device_id)
        _move_device(conn, device, action, now)
        _audit(conn, now, actor, f"{action}_device", f"device:{device_id}")
        return device

    return job


def _scope_sql(
    scope: Scope, tenant_col: str, supplier_col: str | None
) -> tuple[list[str], list[Any]]:
    """SQL conditions for what ``scope`` may see. ``supplier_col`` is ``None`` for things a
    supplier has no say in (deviations, statistics): the tenants alone decide."""
    where: list[str] = []
    args: list[Any] = []
    if scope.tenants is not None:
        where.append(f"{tenant_col} IN ({', '.join('?' * len(scope.tenants))})")
        args.extend(scope.tenants)
    if scope.supplier is not None and supplier_col is not None:
        where.append(f"{supplier_col} = ?")
        args.append(scope.supplier)
    return where, args


def _period(
    where: list[str],
    args: list[Any],
    column: str,
    since: datetime | None,
    until: datetime | None,
) -> None:
    """Conditions for ``since <= column < until`` (either end open)."""
    if since is not None:
        where.append(f"{column} >= ?")
        args.append(iso(since))
    if until is not None:
        where.append(f"{column} < ?")
        args.append(iso(until))


# --- orders -----------------------------------------------------------------------------------

_ORDER_KEYS = (
    "id",
    "tenant",
    "supplier",
    "kind",
    "state",
    "user_id",
    "device_id",
    "fault_id",
    "note",
    "ordered_at",
    "ordered_by",
    "accepted_at",
    "scheduled_for",
    "done_at",
    "cancelled_at",
    "result",
    "updated_at",
    "version",
)


def _orders(conn: sqlite3.Connection, where: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    """Orders with what a supplier needs to do the job: the user's name, address and phone
    (for the visit) and the device."""
    rows = conn.execute(
        f"SELECT {', '.join('o.' + k for k in _ORDER_KEYS)}, u.ref, u.first_name, u.last_name,"
        " u.address, u.postcode, u.phone, d.protocol, d.identity, d.serial FROM orders o"
        " LEFT JOIN service_users u ON u.id = o.user_id"
        " LEFT JOIN devices d ON d.id = o.device_id"
        f" WHERE {where} ORDER BY o.id",
        args,
    ).fetchall()
    out = []
    for r in rows:
        order = dict(zip(_ORDER_KEYS, r[: len(_ORDER_KEYS)], strict=True))
        rest = r[len(_ORDER_KEYS) :]
        order["user"] = (
            None
            if order["user_id"] is None
            else {
                "ref": rest[0],
                "name": f"{rest[1]} {rest[2]}".strip(),
                "address": rest[3],
                "postcode": rest[4],
                "phone": rest[5],
            }
        )
        order["device"] = (
            None
            if order["device_id"] is None
            else {"protocol": rest[6], "identity": rest[7], "serial": rest[8]}
        )
        out.append(order)
    return out


def _order(conn: sqlite3.Connection, scope: Scope, order_id: int) -> dict[str, Any]:
    found = _orders(conn, "o.id = ?", (order_id,))
    if not found:
        raise NotFound(f"no order {order_id}")
    order = found[0]
    if not scope.sees(order["tenant"]) or (
        scope.supplier is not None and order["supplier"] != scope.supplier
    ):
        raise NotFound(f"no order {order_id}")
    return order


def list_orders(
    scope: Scope, state: str | None, actor: Actor, now: datetime
) -> Job[list[dict[str, Any]]]:
    """The orders the caller may see; a supplier sees only its own. The answer names users
    and addresses, so the read is audited (one row per list, naming the orders)."""

    def job(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        where, args = _scope_sql(scope, "o.tenant", "o.supplier")
        if state:
            where.append("o.state = ?")
            args.append(state)
        orders = _orders(conn, " AND ".join(where) or "1", args)
        if orders:
            ids = ",".join(str(o["id"]) for o in orders[:40])
            _audit(conn, now, actor, "read_orders", f"orders:{len(orders)}", ids)
        return orders

    return job


def create_order(
    scope: Scope, data: Mapping[str, Any], actor: Actor, now: datetime
) -> Job[dict[str, Any]]:
    """An order to a supplier. ``install`` names the user (and the device, if one is
    picked from stock already: it becomes ``ordered``); ``uninstall`` and ``repair`` name the
    device; ``configure`` and ``train`` the user. The supplier defaults to the device's."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        return _create_order(conn, scope, data, actor, now)

    return job


def _create_order(
    conn: sqlite3.Connection,
    scope: Scope,
    data: Mapping[str, Any],
    actor: Actor,
    now: datetime,
    fault_id: int | None = None,
) -> dict[str, Any]:
    kind = data["kind"]
    tenant = data["tenant"]
    if not scope.sees(tenant):
        raise NotFound(f"no tenant {tenant}")
    user_id: int | None = None
    subject = f"tenant:{tenant}"
    if data.get("user"):
        user = _user_row(conn, scope, tenant, data["user"])
        user_id = int(user["id"])
        subject = _subject(tenant, data["user"])
        if user["ended_at"] is not None and kind != "uninstall":
            raise RuleError(f"the need has ended for {tenant}/{data['user']}: only uninstall")
    device: dict[str, Any] | None = None
    if data.get("device") is not None:
        device = _device(conn, scope, int(data["device"]))
        if device["tenant"] != tenant:
            raise Invalid(f"device: {device['id']} belongs to another municipality")
        if user_id is None and device["user_id"] is not None:
            user_id = int(device["user_id"])
        elif device["user_id"] is not None and device["user_id"] != user_id:
            raise Invalid(f"device: {device['id']} belongs to another user")
    if kind in ("install", "configure", "train") and user_id is None:
        raise Invalid(f"user: an order to {kind} names the user")
    if kind in ("uninstall", "repair") and device is None:
        raise Invalid(f"device: an order to {kind} names the device")
    if (
        kind == "uninstall"
        and device is not None
        and device["status"] not in (lifecycle.LIVE_DEVICE_STATUSES)
    ):
        raise RuleError(f"device {device['id']} is {device['status']}: not on the wall")
    supplier = data.get("supplier") or (device["supplier"] if device else None)
    if not supplier:
        raise Invalid("supplier: name the supplier (the device has none registered)")
    _supplier_exists(conn, supplier)
    if kind == "install" and device is not None:
        _move_device(conn, device, "order", now)
        conn.execute(
            "UPDATE devices SET supplier = coalesce(supplier, ?) WHERE id = ?",
            (supplier, device["id"]),
        )
    cursor = conn.execute(
        "INSERT INTO orders (tenant, supplier, kind, user_id, device_id, fault_id, note,"
        " ordered_at, ordered_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            tenant,
            supplier,
            kind,
            user_id,
            device["id"] if device else None,
            fault_id,
            data.get("note", ""),
            iso(now),
            actor.label,
            iso(now),
        ),
    )
    order_id = int(cursor.lastrowid or 0)
    _audit(conn, now, actor, "create_order", subject, f"order:{order_id} {kind}")
    return _order(conn, Scope(None), order_id)


def order_action(
    scope: Scope,
    order_id: int,
    action: str,
    data: Mapping[str, Any],
    actor: Actor,
    now: datetime,
    retention: timedelta,
) -> Job[dict[str, Any]]:
    """Move an order on (accept, schedule with ``date``, done with ``result``, cancel), and
    apply what its completion means: an install done puts the device on the wall for its
    user, an uninstall takes it off, a repair ends the fault. A supplier may accept,
    schedule and finish its own orders; cancelling is the municipality's."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        order = _order(conn, scope, order_id)
        if "version" in data and data["version"] != order["version"]:
            raise Conflict(
                f"order {order_id} changed meanwhile (version {order['version']}); reload it"
            )
        if scope.supplier is not None and action not in lifecycle.SUPPLIER_ACTIONS:
            raise RuleError(f"a supplier may {', '.join(sorted(lifecycle.SUPPLIER_ACTIONS))}")
        new = lifecycle.order_step(order["state"], action)
        sets: dict[str, Any] = {"state": new}
        today = local_date(now)
        if action == "accept":
            sets["accepted_at"] = iso(now)
        elif action == "schedule":
            when = _date(data.get("date"), "date")
            if when is None:
                raise Invalid("date: the day the supplier will come, YYYY-MM-DD")
            if when < today:
                raise Invalid(f"date: {when} is in the past")
            sets["scheduled_for"] = when.isoformat()
            if order["accepted_at"] is None:
                sets["accepted_at"] = iso(now)
        elif action == "done":
            sets["done_at"] = iso(now)
            sets["result"] = data.get("result", "")
        else:
            sets["cancelled_at"] = iso(now)
        effect = lifecycle.order_effect(order["kind"], new)
        device_id = order["device_id"]
        if effect.link_user and device_id is None:
            if data.get("device") is None:
                raise Invalid("device: say which device was installed (its id)")
            device_id = int(data["device"])
            sets["device_id"] = device_id
        if effect.device_action is not None and device_id is not None:
            device = _device(conn, Scope(None), device_id)
            if device["tenant"] != order["tenant"]:
                raise Invalid(f"device: {device_id} belongs to another municipality")
            _move_device(conn, device, effect.device_action, now)
            if effect.link_user:
                if device["user_id"] not in (None, order["user_id"]):
                    raise Invalid(f"device: {device_id} belongs to another user")
                conn.execute(
                    "UPDATE devices SET user_id = ?, supplier = coalesce(supplier, ?) WHERE id = ?",
                    (order["user_id"], order["supplier"], device_id),
                )
            if effect.unlink_user:
                conn.execute("UPDATE devices SET user_id = NULL WHERE id = ?", (device_id,))
        if effect.repair_fault and order["fault_id"] is not None:
            conn.execute(
                "UPDATE faults SET status = 'repaired', resolved_at = ? WHERE id = ?"
                " AND status = 'open'",
                (iso(now), order["fault_id"]),
            )
        conn.execute(
            f"UPDATE orders SET {', '.join(f'{k} = ?' for k in sets)}, updated_at = ?,"
            " version = version + 1 WHERE id = ?",
            [*sets.values(), iso(now), order_id],
        )
        if effect.unlink_user and order["user_id"] is not None:
            _maybe_schedule_erasure(conn, int(order["user_id"]), now, retention)
        _audit(
            conn,
            now,
            actor,
            f"{action}_order",
            f"user:{order['tenant']}/{order['user']['ref']}"
            if order["user"]
            else f"order:{order_id}",
            f"order:{order_id} {order['kind']}",
        )
        return _order(conn, Scope(None), order_id)

    return job


# --- faults -----------------------------------------------------------------------------------

_FAULT_KEYS = (
    "id",
    "tenant",
    "device_id",
    "user_id",
    "case_id",
    "description",
    "status",
    "reported_at",
    "reported_by",
    "resolved_at",
)


def _faults(conn: sqlite3.Connection, where: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT {', '.join('f.' + k for k in _FAULT_KEYS)},"
        " (SELECT max(o.id) FROM orders o WHERE o.fault_id = f.id)"
        f" FROM faults f LEFT JOIN devices d ON d.id = f.device_id WHERE {where} ORDER BY f.id",
        args,
    ).fetchall()
    out = []
    for r in rows:
        fault = dict(zip(_FAULT_KEYS, r[:-1], strict=True))
        fault["order_id"] = r[-1]
        out.append(fault)
    return out


def report_fault(
    scope: Scope, data: Mapping[str, Any], actor: Actor, now: datetime
) -> Job[dict[str, Any]]:
    """A technical fault, reported by anyone: for a device (its id), or found in a technical
    case (the case's device). The device is marked faulty and a repair order goes to its
    supplier. A second report of a device that already has an open fault joins it rather
    than ordering a second repair."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        case_id = data.get("case")
        device_id = data.get("device")
        if case_id is not None:
            case = conn.execute(
                "SELECT tenant, protocol, source FROM cases WHERE id = ?", (case_id,)
            ).fetchone()
            if case is None or case[0] is None or not scope.sees(case[0]):
                raise NotFound(f"no case {case_id}")
            found = conn.execute(
                "SELECT id FROM devices WHERE protocol = ? AND identity = ?", (case[1], case[2])
            ).fetchone()
            if found is None:
                raise Invalid(
                    f"case: case {case_id} comes from {case[1]} {case[2]}, not in the registry"
                )
            if device_id is not None and int(device_id) != found[0]:
                raise Invalid(f"device: case {case_id} is about device {found[0]}")
            device_id = found[0]
        if device_id is None:
            raise Invalid("give the device (its id) or the technical case it was found in")
        device = _device(conn, scope, int(device_id))
        if device["status"] not in lifecycle.LIVE_DEVICE_STATUSES:
            raise RuleError(f"device {device['id']} is {device['status']}: not in service")
        existing = _faults(conn, "f.device_id = ? AND f.status = 'open'", (device["id"],))
        if existing:
            fault = existing[0]
            if case_id is not None and fault["case_id"] is None:
                conn.execute("UPDATE faults SET case_id = ? WHERE id = ?", (case_id, fault["id"]))
            return {**fault, "joined": True}
        _move_device(conn, device, "fault", now)
        cursor = conn.execute(
            "INSERT INTO faults (tenant, device_id, user_id, case_id, description, reported_at,"
            " reported_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                device["tenant"],
                device["id"],
                device["user_id"],
                case_id,
                data["description"],
                iso(now),
                actor.label,
            ),
        )
        fault_id = int(cursor.lastrowid or 0)
        order_id = None
        if device["supplier"]:
            order = _create_order(
                conn,
                Scope(None),
                {
                    "tenant": device["tenant"],
                    "kind": "repair",
                    "device": device["id"],
                    "note": data["description"],
                },
                actor,
                now,
                fault_id=fault_id,
            )
            order_id = order["id"]
        out = _faults(conn, "f.id = ?", (fault_id,))[0]
        out["joined"] = False
        if order_id is None:
            out["warning"] = "the device has no supplier registered: order the repair by hand"
        return out

    return job


def list_faults(scope: Scope, status: str | None) -> Job[list[dict[str, Any]]]:
    def job(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        where, args = _scope_sql(scope, "f.tenant", "d.supplier")
        if status:
            where.append("f.status = ?")
            args.append(status)
        return _faults(conn, " AND ".join(where) or "1", args)

    return job


# Technical kinds that mean the device itself needs the supplier (a power cut does not).
REPAIR_KINDS = ("link_lost", "device_fault", "radio_supervision", "battery_low", "tamper")
SYSTEM = Actor("alarmd", "system")


def auto_faults(now: datetime, older_than: timedelta) -> Job[list[int]]:
    """Faults found by supervision: a technical case of a device (silent, faulty, low
    battery) still open ``older_than`` after it opened becomes a fault with a repair order
    to the device's supplier, noted in the case log. A short outage that restores by itself
    closes its case first and orders nothing; an outage incident is about a power cut or a
    network, not a device, and is left to the people handling it. Returns the fault ids."""

    def job(conn: sqlite3.Connection) -> list[int]:
        rows = conn.execute(
            "SELECT c.id, c.kind, c.opened_at FROM cases c"
            " JOIN devices d ON d.protocol = c.protocol AND d.identity = c.source"
            " WHERE c.closed_at IS NULL AND c.queue = 'technical'"
            f" AND c.kind IN ({', '.join('?' * len(REPAIR_KINDS))})"
            " AND c.opened_at <= ? AND d.supplier IS NOT NULL"
            " AND d.status IN ('installed', 'active', 'faulty')"
            " AND NOT EXISTS (SELECT 1 FROM faults f WHERE f.device_id = d.id"
            "   AND f.status = 'open')",
            (*REPAIR_KINDS, iso(now - older_than)),
        ).fetchall()
        made = []
        for case_id, kind, opened_at in rows:
            fault = report_fault(
                Scope(None),
                {"case": case_id, "description": f"{kind} since {opened_at}, not restored"},
                SYSTEM,
                now,
            )(conn)
            append_log(
                conn,
                case_id,
                now,
                "alarmd",
                "fault",
                f"fault {fault['id']} registered; repair order {fault['order_id']} to the supplier",
                {"fault_id": fault["id"], "order_id": fault["order_id"]},
            )
            made.append(int(fault["id"]))
        return made

    return job


# --- deviations -------------------------------------------------------------------------------

_DEVIATION_KEYS = (
    "id",
    "tenant",
    "category",
    "description",
    "case_id",
    "fault_id",
    "user_id",
    "registered_at",
    "registered_by",
    "status",
    "closed_at",
)


def add_deviation(
    scope: Scope, data: Mapping[str, Any], actor: Actor, now: datetime
) -> Job[dict[str, Any]]:
    """A deviation (avvik), linked to a case or a fault when there is one; its tenant and
    user follow from what it is linked to."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        tenant = data.get("tenant")
        user_id = None
        if data.get("case") is not None:
            case = conn.execute(
                "SELECT tenant, user_id FROM cases WHERE id = ?", (data["case"],)
            ).fetchone()
            if case is None or case[0] is None or not scope.sees(case[0]):
                raise NotFound(f"no case {data['case']}")
            tenant, user_id = case
        if data.get("fault") is not None:
            fault = conn.execute(
                "SELECT tenant, user_id FROM faults WHERE id = ?", (data["fault"],)
            ).fetchone()
            if fault is None or not scope.sees(fault[0]):
                raise NotFound(f"no fault {data['fault']}")
            if tenant is not None and tenant != fault[0]:
                raise Invalid("fault: belongs to another municipality than the case")
            tenant, user_id = fault[0], user_id or fault[1]
        if tenant is None:
            raise Invalid("tenant: name the municipality (or link a case or a fault)")
        if not scope.sees(tenant):
            raise NotFound(f"no tenant {tenant}")
        cursor = conn.execute(
            "INSERT INTO deviations (tenant, category, description, case_id, fault_id, user_id,"
            " registered_at, registered_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                tenant,
                data["category"],
                data["description"],
                data.get("case"),
                data.get("fault"),
                user_id,
                iso(now),
                actor.label,
            ),
        )
        return _deviations(conn, "id = ?", (cursor.lastrowid,))[0]

    return job


def _deviations(conn: sqlite3.Connection, where: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        dict(zip(_DEVIATION_KEYS, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(_DEVIATION_KEYS)} FROM deviations WHERE {where} ORDER BY id", args
        )
    ]


def close_deviation(scope: Scope, deviation_id: int, now: datetime) -> Job[dict[str, Any]]:
    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        found = _deviations(conn, "id = ?", (deviation_id,))
        if not found or not scope.sees(found[0]["tenant"]):
            raise NotFound(f"no deviation {deviation_id}")
        if found[0]["status"] == "closed":
            raise RuleError(f"deviation {deviation_id} is closed already")
        conn.execute(
            "UPDATE deviations SET status = 'closed', closed_at = ? WHERE id = ?",
            (iso(now), deviation_id),
        )
        return _deviations(conn, "id = ?", (deviation_id,))[0]

    return job


def list_deviations(
    scope: Scope, since: datetime | None, until: datetime | None
) -> Job[list[dict[str, Any]]]:
    def job(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        where, args = _scope_sql(scope, "tenant", None)
        _period(where, args, "registered_at", since, until)
        return _deviations(conn, " AND ".join(where) or "1", args)

    return job


def deviations_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The export for a quality system: one row per deviation, ``;``-separated (what a
    Norwegian spreadsheet opens), UTF-8. No names: the case and fault ids lead back to the
    details for those allowed to see them."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(_DEVIATION_KEYS)
    for row in rows:
        writer.writerow(["" if row[k] is None else row[k] for k in _DEVIATION_KEYS])
    return out.getvalue()


# --- the need ceases, and retention -----------------------------------------------------------


def end_need(
    scope: Scope,
    tenant: str,
    ref: str,
    data: Mapping[str, Any],
    actor: Actor,
    now: datetime,
    retention: timedelta,
) -> Job[dict[str, Any]]:
    """The need has ceased (behov opphører): every decision ends, open orders other than
    de-installation are cancelled, a de-installation is ordered for each device on the
    wall, and routing by the user's plan stops at once (the user is inactive: an alarm from
    a device still on the wall reaches the centre as from a source without a user). The
    personal data is erased ``retention`` after the last device is off the wall."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        row = _user_row(conn, scope, tenant, ref)
        user_id = int(row["id"])
        if row["ended_at"] is not None:
            raise RuleError(f"the need ended already for {tenant}/{ref} ({row['ended_at']})")
        today = local_date(now).isoformat()
        ended = conn.execute(
            "UPDATE decisions SET status = 'ended', ended_at = ?,"
            " valid_to = CASE WHEN valid_to IS NULL OR valid_to > ? THEN ? ELSE valid_to END,"
            " updated_at = ?, updated_by = ? WHERE user_id = ? AND status IN ('applied', 'granted')"
            " RETURNING id",
            (iso(now), today, today, iso(now), actor.label, user_id),
        ).fetchall()
        cancelled = []
        for order in _orders(
            conn,
            "o.user_id = ? AND o.state NOT IN ('done', 'cancelled') AND o.kind != 'uninstall'",
            (user_id,),
        ):
            order_action(Scope(None), order["id"], "cancel", {}, actor, now, retention)(conn)
            cancelled.append(order["id"])
        uninstall = []
        devices = conn.execute(
            "SELECT id, supplier FROM devices WHERE user_id = ? AND status IN"
            " ('installed', 'active', 'faulty')",
            (user_id,),
        ).fetchall()
        missing = [d[0] for d in devices if not d[1] and not data.get("supplier")]
        if missing:
            raise Invalid(
                "supplier: device(s) "
                + ", ".join(map(str, missing))
                + " have no supplier registered; name the one to de-install them"
            )
        for device_id, supplier in devices:
            open_uninstall = conn.execute(
                "SELECT id FROM orders WHERE device_id = ? AND kind = 'uninstall'"
                " AND state NOT IN ('done', 'cancelled')",
                (device_id,),
            ).fetchone()
            if open_uninstall:
                uninstall.append(open_uninstall[0])
                continue
            order = _create_order(
                conn,
                Scope(None),
                {
                    "tenant": tenant,
                    "kind": "uninstall",
                    "device": device_id,
                    "supplier": supplier or data.get("supplier"),
                    "note": data.get("reason", "the need has ceased"),
                },
                actor,
                now,
            )
            uninstall.append(order["id"])
        conn.execute(
            "UPDATE service_users SET active = 0, ended_at = ?, updated_at = ? WHERE id = ?",
            (iso(now), iso(now), user_id),
        )
        erase_after = _maybe_schedule_erasure(conn, user_id, now, retention)
        _audit(conn, now, actor, "end_need", _subject(tenant, ref), data.get("reason", ""))
        return {
            "tenant": tenant,
            "ref": ref,
            "decisions_ended": [r[0] for r in ended],
            "orders_cancelled": cancelled,
            "uninstall_orders": uninstall,
            "erase_after": erase_after,
        }

    return job


def _maybe_schedule_erasure(
    conn: sqlite3.Connection, user_id: int, now: datetime, retention: timedelta
) -> str | None:
    """Once the need has ended and no device of the user is on the wall or on order, the
    retention period starts."""
    row = conn.execute(
        "SELECT ended_at, erase_after FROM service_users WHERE id = ?", (user_id,)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    if row[1] is not None:
        return str(row[1])
    busy = conn.execute(
        "SELECT 1 FROM devices WHERE user_id = ? AND status IN"
        " ('installed', 'active', 'faulty', 'ordered')",
        (user_id,),
    ).fetchone()
    if busy:
        return None
    erase_after = iso(now + retention)
    conn.execute("UPDATE service_users SET erase_after = ? WHERE id = ?", (erase_after, user_id))
    return erase_after


ERASED = "[erased]"


def erase_due(now: datetime) -> Job[list[int]]:
    """Erase the personal data of every user whose retention period is over: names,
    address, phone, group, contacts, plans and their versions, free text in decisions,
    orders, faults and deviations, and in the user's cases the plan snapshot, notes, log
    texts, the notifications' contents (and next of kin's numbers), and the events' texts,
    attributes (locations) and raw frames. What stays is
    anonymous: the user row as an anchor (``ref`` becomes ``erased-<id>``), case kinds,
    outcomes, queue and times, event kinds and times, decision services and dates, so that
    the statistics (``stats``) read the same before and after. The audit trail stays; it
    records the erasure itself."""

    def job(conn: sqlite3.Connection) -> list[int]:
        rows = conn.execute(
            "SELECT id, tenant, ref FROM service_users WHERE erase_after IS NOT NULL"
            " AND erase_after <= ? AND erased_at IS NULL",
            (iso(now),),
        ).fetchall()
        if not rows:
            return []
        # overwrite what is removed instead of leaving it in the pages' free space; the
        # main file is rewritten at the next checkpoint
        conn.execute("PRAGMA secure_delete = ON")
        try:
            _erase(conn, rows, now)
        finally:
            conn.execute("PRAGMA secure_delete = OFF")
        return [int(r[0]) for r in rows]

    return job


def _erase(conn: sqlite3.Connection, rows: Sequence[Any], now: datetime) -> None:
    for user_id, tenant, ref in rows:
        conn.execute(
            "UPDATE service_users SET ref = ?, first_name = '', last_name = '',"
            " address = '', postcode = '', phone = '', user_group = NULL,"
            " location = 'home', active = 0, erased_at = ?, updated_at = ? WHERE id = ?",
            (f"erased-{user_id}", iso(now), iso(now), user_id),
        )
        conn.execute("DELETE FROM contacts WHERE user_id = ?", (user_id,))
        conn.execute("DELETE FROM response_plans WHERE user_id = ?", (user_id,))
        conn.execute("DELETE FROM response_plan_versions WHERE user_id = ?", (user_id,))
        conn.execute("UPDATE devices SET user_id = NULL WHERE user_id = ?", (user_id,))
        conn.execute("UPDATE decisions SET reference = '', note = '' WHERE user_id = ?", (user_id,))
        conn.execute("UPDATE orders SET note = '', result = '' WHERE user_id = ?", (user_id,))
        conn.execute("UPDATE faults SET description = ? WHERE user_id = ?", (ERASED, user_id))
        conn.execute("UPDATE deviations SET description = ? WHERE user_id = ?", (ERASED, user_id))
        conn.execute(
            "UPDATE cases SET plan = NULL, close_note = CASE WHEN close_note IS NULL"
            " THEN NULL ELSE ? END WHERE user_id = ?",
            (ERASED, user_id),
        )
        conn.execute(
            "UPDATE case_log SET message = ?, data = '{}' WHERE case_id IN"
            " (SELECT id FROM cases WHERE user_id = ?)",
            (ERASED, user_id),
        )
        # notifications carried the user's name and address, and next of kin's numbers
        conn.execute(
            "UPDATE outbox SET payload = '{}', last_error = NULL,"
            " address = CASE WHEN person LIKE 'contact:%' THEN ? ELSE address END"
            " WHERE case_id IN (SELECT id FROM cases WHERE user_id = ?)",
            (ERASED, user_id),
        )
        conn.execute(
            "UPDATE events SET text = NULL, attributes = '{}', raw = x'' WHERE case_id IN"
            " (SELECT id FROM cases WHERE user_id = ?)",
            (user_id,),
        )
        conn.execute(
            "INSERT INTO audit (at, actor, role, action, subject, reason)"
            " VALUES (?, 'alarmd', 'system', 'erase_user', ?, 'retention period over')",
            (iso(now), _subject(tenant, ref)),
        )


def next_erasure(conn: sqlite3.Connection) -> datetime | None:
    """When the next user's retention period ends (for the daemon's sweep)."""
    row = conn.execute(
        "SELECT min(erase_after) FROM service_users WHERE erase_after IS NOT NULL"
        " AND erased_at IS NULL"
    ).fetchone()
    return parse_iso(row[0]) if row and row[0] else None


# --- statistics and audit ---------------------------------------------------------------------


def stats(scope: Scope, since: datetime | None, until: datetime | None) -> Job[dict[str, Any]]:
    """The key figures per municipality, from anonymous columns only (so erasing personal
    data never changes them): cases per kind, outcomes, the clarification rate (share of
    closed alarm cases resolved by phone at the centre), and the median minutes to accept
    and to close."""

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        where, args = _scope_sql(scope, "c.tenant", None)
        _period(where, args, "c.opened_at", since, until)
        rows = conn.execute(
            "SELECT coalesce(c.tenant, ''), c.kind, c.queue, c.outcome, c.opened_at, c.closed_at,"
            " (SELECT min(l.at) FROM case_log l WHERE l.case_id = c.id AND l.type = 'accepted')"
            f" FROM cases c WHERE {' AND '.join(where) or '1'}",
            args,
        ).fetchall()
        tenants: dict[str, dict[str, Any]] = {}
        waits: dict[str, tuple[list[float], list[float]]] = {}
        for tenant, kind, queue, outcome, opened, closed, accepted in rows:
            t = tenants.setdefault(
                tenant,
                {
                    "cases": 0,
                    "by_kind": {},
                    "outcomes": {},
                    "closed_alarm_cases": 0,
                    "clarified": 0,
                },
            )
            t["cases"] += 1
            t["by_kind"][kind] = t["by_kind"].get(kind, 0) + 1
            if outcome:
                t["outcomes"][outcome] = t["outcomes"].get(outcome, 0) + 1
            if closed and queue == "alarm":
                t["closed_alarm_cases"] += 1
                t["clarified"] += outcome == "resolved_by_phone"
            to_accept, to_close = waits.setdefault(tenant, ([], []))
            if accepted:
                to_accept.append((parse_iso(accepted) - parse_iso(opened)).total_seconds())
            if closed:
                to_close.append((parse_iso(closed) - parse_iso(opened)).total_seconds())
        for tenant, t in tenants.items():
            closed_alarms = t["closed_alarm_cases"]
            t["clarification_rate"] = (
                round(t["clarified"] / closed_alarms, 4) if closed_alarms else None
            )
            to_accept, to_close = waits[tenant]
            t["median_s_to_accept"] = _median(to_accept)
            t["median_s_to_close"] = _median(to_close)
        return {"tenants": tenants}

    return job


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    middle = len(values) // 2
    if len(values) % 2:
        return round(values[middle], 3)
    return round((values[middle - 1] + values[middle]) / 2, 3)


def audit_trail(
    scope: Scope, subject: str | None, actor_name: str | None, limit: int
) -> Job[list[dict[str, Any]]]:
    """Who read or changed what, and why, newest first: by subject (``user:<tenant>/<ref>``,
    ``case:<id>``) or by actor (a token's name). A tenant-scoped caller sees only rows about
    its own municipalities' users."""

    def job(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if subject:
            where.append("subject = ?")
            args.append(subject)
        if actor_name:
            where.append("actor = ?")
            args.append(actor_name)
        if scope.tenants is not None:
            where.append(
                "(" + " OR ".join("subject LIKE ? ESCAPE '\\'" for _ in scope.tenants) + ")"
            )
            args.extend(f"user:{t.replace('_', chr(92) + '_')}/%" for t in scope.tenants)
        args.append(limit)
        keys = ("id", "at", "actor", "role", "action", "subject", "reason")
        return [
            dict(zip(keys, r, strict=True))
            for r in conn.execute(
                f"SELECT {', '.join(keys)} FROM audit WHERE {' AND '.join(where) or '1'}"
                " ORDER BY id DESC LIMIT ?",
                args,
            )
        ]

    return job

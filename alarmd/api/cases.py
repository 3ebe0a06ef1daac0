"""Cases over the API: the queue, one case with its log, and what people do with a case.

Who acts is the token's owner: an operator, supervisor or admin acts as
``operator:<token name>`` and may take any case at any step; a home-care or supplier token
acts as the person it was created for (``staff:<id>``) and may take only a case it was
notified about (the escalation state machine checks that). A refusal (someone else holds
the case, the case is closed) is a 409 that says why: a conflict is explained, never silent.

An outage incident's case (many devices of one area silent or on battery at once) also
lists its ``affected`` users: who, where, which device, why, since when, and when their
batteries are expected to run out; each user's read is audited like the case's.

Every request is scoped to the token's tenants; a case of another tenant is "not found",
so a tenant-scoped token cannot even learn that it exists. Cases from unregistered sources
(no tenant) are the centre's: only tokens for every tenant see them.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from aiohttp import web

from alarmd.api.server import CONTEXT, TOKEN_KEY, ApiError
from alarmd.clock import SystemClock
from alarmd.model import Outcome
from alarmd.routing.engine import DISPATCH_TARGETS, CaseResult, Engine
from alarmd.store import audit
from alarmd.store import cases as case_store
from alarmd.store.tokens import TokenInfo

CENTRE_ROLES = frozenset({"admin", "operator", "supervisor"})
FIELD_ROLES = frozenset({"home_care", "supplier"})
READ_ROLES = CENTRE_ROLES | FIELD_ROLES | {"tenant_admin", "auditor"}
KEY_BOX_ROLES = CENTRE_ROLES | {"home_care"}


def _engine(request: web.Request) -> Engine:
    engine = request.app[CONTEXT].engine
    if engine is None:
        raise ApiError(503, "unavailable", "the routing engine is not running")
    return engine


def _reader_role(info: TokenInfo) -> None:
    if info.role not in READ_ROLES:
        raise ApiError(403, "forbidden", f"role {info.role} may not read cases")


def _actor(info: TokenInfo) -> tuple[str, bool]:
    """The person id a token acts as, and whether that is a centre operator."""
    if info.role in CENTRE_ROLES:
        return f"operator:{info.name}", True
    if info.role in FIELD_ROLES:
        if not info.person:
            raise ApiError(
                403,
                "forbidden",
                f"token {info.name} acts for nobody; create it for a staff member (person)",
            )
        return info.person, False
    raise ApiError(403, "forbidden", f"role {info.role} may not act on cases")


def _case_id(request: web.Request) -> int:
    text = request.match_info["case_id"]
    if not text.isdigit() or len(text) > 18:
        raise ApiError(400, "bad_request", f"case id must be a number, got {text!r}")
    return int(text)


async def _visible_case(request: web.Request) -> tuple[case_store.CaseRow, list[dict[str, Any]]]:
    info = request[TOKEN_KEY]
    found = await case_store.get_case(request.app[CONTEXT].store.reader, _case_id(request))
    if found is None or not info.sees_tenant(found[0].tenant):
        raise ApiError(404, "not_found", "no such case")
    return found


async def list_cases(request: web.Request) -> web.Response:
    info = request[TOKEN_KEY]
    _reader_role(info)
    query = request.rel_url.query
    unknown = sorted(set(query) - {"state", "queue", "limit"})
    if unknown:
        raise ApiError(400, "bad_request", f"unknown parameter(s): {', '.join(unknown)}")
    state = query.get("state", "open")
    if state not in ("open", "all"):
        raise ApiError(400, "bad_request", "state: 'open' or 'all'")
    queue = query.get("queue")
    if queue not in (None, "alarm", "technical"):
        raise ApiError(400, "bad_request", "queue: 'alarm' or 'technical'")
    try:
        limit = int(query.get("limit", "500"))
    except ValueError:
        raise ApiError(400, "bad_request", "limit: a whole number") from None
    if not 1 <= limit <= 5000:
        raise ApiError(400, "bad_request", "limit: between 1 and 5000")
    rows = await case_store.list_cases(
        request.app[CONTEXT].store.reader,
        tenants=info.tenants,
        open_only=state == "open",
        queue=queue,
        limit=limit,
    )
    return web.json_response({"cases": [row.to_json() for row in rows]})


async def get_case(request: web.Request) -> web.Response:
    info = request[TOKEN_KEY]
    _reader_role(info)
    case, log = await _visible_case(request)
    context = request.app[CONTEXT]
    clock = context.engine.clock if context.engine is not None else SystemClock()
    affected: list[dict[str, Any]] | None = None
    if case.protocol == INCIDENT_PROTOCOL:
        affected = await _affected_users(context.store.reader, case, log, info)
    now = clock.now()
    reads = [
        audit.record_job(
            now, info.name, info.role, "read_case", f"case:{case.id}", f"case:{case.id}"
        )
    ]
    for who in affected or []:  # each affected user's personal data read is its own row
        if who["ref"] is not None:
            reads.append(
                audit.record_job(
                    now,
                    info.name,
                    info.role,
                    "read_user",
                    f"user:{who['tenant']}/{who['ref']}",
                    f"affected by outage incident case:{case.id}",
                )
            )

    def record(conn: sqlite3.Connection) -> None:
        for job in reads:
            job(conn)

    await context.store.writer.submit(record)
    body = case.to_json()
    plan = None if case.plan is None else case.plan.to_json()
    if plan is not None and info.role not in KEY_BOX_ROLES:
        plan["key_box"] = None  # the key-box code goes only to those who may go in
    body["plan"] = plan  # the snapshot this case was routed with
    body["user"], body["devices"] = await _user_and_devices(context.store.reader, case.user_id)
    body["log"] = [_brief(entry) for entry in log]
    if affected is not None:
        body["affected"] = affected
    return web.json_response(body)


INCIDENT_PROTOCOL = "supervision"  # an outage incident's events (supervision_service.INCIDENT)
_AFFECTED, _BACK = "outage_affected", "outage_back"
_AFFECTED_SQL = (
    "SELECT d.protocol, d.identity, d.tenant, d.device_type, u.tenant, u.ref,"
    " u.first_name, u.last_name, u.address, u.postcode, u.phone"
    " FROM devices d LEFT JOIN service_users u ON u.id = d.user_id"
)


def _brief(entry: dict[str, Any]) -> dict[str, Any]:
    """An incident's membership rows carry every device; the log says only how many (the
    devices are in ``affected``)."""
    if entry.get("type") not in (_AFFECTED, _BACK):
        return entry
    data = dict(entry.get("data") or {})
    data["devices"] = len(data.get("devices") or [])
    return {**entry, "data": data}


def _members(log: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Who an outage incident affects now, replayed from its log: ``outage_affected`` rows
    add devices (one that opened the incident replaces the list: after a restart the new
    incident joins the open case), ``outage_back`` rows remove them."""
    members: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in sorted(
        (e for e in log if e.get("type") in (_AFFECTED, _BACK)), key=lambda e: e["id"]
    ):
        data = entry.get("data") or {}
        if entry["type"] == _BACK:
            for device in data.get("devices") or []:
                protocol, _, source = str(device).partition(":")
                members.pop((protocol, source), None)
            continue
        if data.get("opened"):
            members = {}
        for item in data.get("devices") or []:
            protocol, _, source = str(item["device"]).partition(":")
            known = members.get((protocol, source))
            if known is not None:  # a further reason (silent and on battery)
                item = {
                    **known,
                    "reasons": sorted(set(known["reasons"]) | set(item["reasons"])),
                }
            members[(protocol, source)] = item
    return members


async def _affected_users(
    reader: Any, case: case_store.CaseRow, log: list[dict[str, Any]], info: TokenInfo
) -> list[dict[str, Any]]:
    """The users an outage incident affects: who and where (the directory now), which
    device, why (``link_lost``: silent; ``mains_lost``: on battery) and since when, and
    when their battery back-up is expected to run out. Only users of the token's tenants;
    the most urgent (earliest battery run-out) first."""
    members = _members(log)
    keys = list(members)
    found: dict[tuple[str, str], tuple[Any, ...]] = {}
    for start in range(0, len(keys), 400):
        chunk = keys[start : start + 400]
        pairs = ",".join(["(?, ?)"] * len(chunk))  # placeholders only
        sql = _AFFECTED_SQL + f" WHERE (d.protocol, d.identity) IN (VALUES {pairs})"
        async with reader.execute(sql, [part for key in chunk for part in key]) as cursor:
            for row in await cursor.fetchall():
                found[(str(row[0]), str(row[1]))] = tuple(row)
    out: list[dict[str, Any]] = []
    for key, member in members.items():
        row = found.get(key)
        tenant = (row[4] or row[2]) if row is not None else case.tenant
        if not info.sees_tenant(tenant):
            continue
        user = row if row is not None and row[5] is not None else None
        out.append(
            {
                "tenant": tenant,
                "ref": None if user is None else user[5],
                "name": None if user is None else f"{user[6] or ''} {user[7] or ''}".strip(),
                "address": None if user is None else user[8],
                "postcode": None if user is None else user[9],
                "phone": None if user is None else user[10],
                "device": {
                    "protocol": key[0],
                    "identity": key[1],
                    "type": row[3] if row is not None else None,
                },
                "reasons": list(member.get("reasons") or []),
                "since": member.get("since"),
                "batteries_from": member.get("batteries_from"),
                "batteries_by": member.get("batteries_by"),
            }
        )
    out.sort(key=lambda a: (str(a["batteries_from"]), str(a["ref"] or ""), a["device"]["identity"]))
    return out


async def _user_and_devices(
    reader: Any, user_id: int | None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Who and where, as the directory says now (the read is audited with the case)."""
    if user_id is None:
        return None, []
    async with reader.execute(
        "SELECT tenant, ref, first_name, last_name, address, postcode, phone, location"
        " FROM service_users WHERE id = ?",
        (user_id,),
    ) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return None, []
    keys = ("tenant", "ref", "first_name", "last_name", "address", "postcode", "phone", "location")
    user = dict(zip(keys, row, strict=True))
    async with reader.execute(
        "SELECT protocol, identity, device_type, device_group FROM devices WHERE user_id = ?"
        " ORDER BY protocol, identity",
        (user_id,),
    ) as cursor:
        devices = [
            {"protocol": d[0], "identity": d[1], "type": d[2], "group": d[3]}
            for d in await cursor.fetchall()
        ]
    return user, devices


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str, *, required: bool, limit: int = 4000) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ApiError(400, "bad_request", f"{key}: a string")
    if required and not value.strip():
        raise ApiError(400, "bad_request", f"{key}: required")
    if len(value) > limit:
        raise ApiError(400, "bad_request", f"{key}: at most {limit} characters")
    return value


def _answer(result: CaseResult) -> web.Response:
    if result.case is None:
        raise ApiError(404, "not_found", "no such case")
    if result.rejected is not None:
        return web.json_response(
            {"error": "conflict", "message": result.rejected, "case": result.case.to_json()},
            status=409,
        )
    return web.json_response(result.case.to_json())


async def act(request: web.Request) -> web.Response:
    """POST /api/v1/cases/{id}/{accept|decline|on_site|close|note}."""
    info = request[TOKEN_KEY]
    who, is_operator = _actor(info)
    await _visible_case(request)
    engine = _engine(request)
    case_id = _case_id(request)
    action = request.match_info["action"]
    data = await _json_body(request)
    if action == "accept":
        return _answer(await engine.accept(case_id, who, is_operator=is_operator))
    if action == "decline":
        return _answer(await engine.decline(case_id, who))
    if action == "on_site":
        return _answer(await engine.on_site(case_id, who))
    if action == "note":
        return _answer(await engine.note(case_id, who, _text(data, "text", required=True)))
    if action == "dispatch":
        to = data.get("to")
        if to not in DISPATCH_TARGETS:
            raise ApiError(400, "bad_request", f"to: one of {', '.join(DISPATCH_TARGETS)}")
        note = _text(data, "note", required=False)
        return _answer(await engine.dispatch(case_id, who, str(to), note))
    if action == "close":
        outcome = data.get("outcome")
        known = [o.value for o in Outcome]
        if outcome not in known:
            raise ApiError(400, "bad_request", f"outcome: one of {', '.join(known)}")
        note = _text(data, "note", required=False)
        return _answer(await engine.close(case_id, who, str(outcome), note))
    raise ApiError(404, "not_found", f"no action {action!r}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/cases", list_cases)
    app.router.add_get(r"/api/v1/cases/{case_id}", get_case)
    app.router.add_post(
        r"/api/v1/cases/{case_id}/{action:accept|decline|on_site|close|note|dispatch}", act
    )

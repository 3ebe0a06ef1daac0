"""Case management over HTTP (issue 9): service users, plans, decisions, devices, orders,
faults, deviations, the end of the need, statistics and the audit trail.

Everything is under ``/api/v1/admin/`` and scoped to the caller's tenants. Bodies are JSON
objects validated strictly (an unknown key is a 400 that names it). The domain rules are in
``alarmd/admin/lifecycle.py`` and the writer jobs in ``alarmd/admin/records.py``; this module
only decides who may call what and translates errors:

==============================  ===================================================
role                            may
==============================  ===================================================
admin, tenant_admin             everything in its tenants (suppliers: admin only)
operator, supervisor            read a user's record (with a reason), orders and
                                faults; report faults; register deviations
home_care                       report faults; register deviations
supplier                        its own orders (accept, schedule, done) and devices;
                                report faults on its devices. A supplier token names
                                its supplier as ``person: supplier:<id>``
auditor                         the audit trail, deviations (and their export), stats
==============================  ===================================================

Errors: 400 ``bad_request`` (a field, named), 404 ``not_found`` (also for what the token
may not see), 409 ``conflict`` (a duplicate, a stale version) and 409 ``not_allowed`` (a
step the life cycle forbids, with what is allowed instead).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alarmd.admin import lifecycle, records
from alarmd.admin.records import Actor, Scope
from alarmd.api.server import CONTEXT, TOKEN_KEY, ApiError
from alarmd.clock import SystemClock
from alarmd.store import tokens
from alarmd.store.directory_import import normalise_identity, normalise_phone

__all__ = ["add_routes"]

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MANAGERS = frozenset({"admin", "tenant_admin"})
CENTRE = frozenset({"admin", "operator", "supervisor"})
READERS = MANAGERS | CENTRE
FAULT_REPORTERS = MANAGERS | CENTRE | {"home_care", "supplier"}
DEVIATION_WRITERS = MANAGERS | CENTRE | {"home_care"}
DEVIATION_READERS = MANAGERS | {"supervisor", "auditor"}
AUDIT_READERS = frozenset({"admin", "tenant_admin", "auditor"})
ORDER_READERS = MANAGERS | CENTRE | {"supplier"}

_REF = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _phone(value: str | None) -> str | None:
    if value in (None, ""):
        return value
    assert value is not None
    return normalise_phone(value)


class UserFields(_Body):
    first_name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    last_name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    address: Annotated[str, Field(max_length=200)] | None = None
    postcode: Annotated[str, Field(pattern=r"^([0-9]{4})?$")] | None = None
    phone: str | None = None
    group: Annotated[str, Field(max_length=64)] | None = None
    location: Literal["home", "away", "care_home"] | None = None

    _phone_ok = field_validator("phone")(_phone)


class UserCreate(UserFields):
    tenant: Annotated[str, Field(pattern=_SLUG)]
    ref: Annotated[str, Field(pattern=_REF)]
    first_name: Annotated[str, Field(min_length=1, max_length=100)]
    last_name: Annotated[str, Field(min_length=1, max_length=100)]


class Contact(_Body):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    phone: str = ""
    relation: Annotated[str, Field(max_length=64)] = ""
    has_key: bool = False
    channels: dict[Literal["sms", "mqtt", "webhook"], str] = Field(default_factory=dict)

    _phone_ok = field_validator("phone")(_phone)


class Plan(_Body):
    instructions: Annotated[str, Field(max_length=4000)] | None = None
    key_box: Annotated[str, Field(max_length=500)] | None = None
    home_care_team: str | None = None
    mode_override: Literal["response", "routing", "routing_with_backup"] | None = None
    contacts: Annotated[list[Contact], Field(max_length=20)] | None = None


class DecisionCreate(_Body):
    service: lifecycle.Service
    sensor_type: Annotated[str, Field(max_length=64)] | None = None
    status: Literal["applied", "granted"] = "applied"
    reference: Annotated[str, Field(max_length=64)] = ""
    applied_at: str | None = None
    valid_from: str | None = None
    valid_to: str | None = None
    note: Annotated[str, Field(max_length=2000)] = ""


class DecisionChange(_Body):
    valid_from: str | None = None
    valid_to: str | None = None
    note: Annotated[str, Field(max_length=2000)] | None = None


class DeviceCreate(_Body):
    tenant: Annotated[str, Field(pattern=_SLUG)]
    protocol: Literal["dc09", "scaip", "mqtt", "sms"]
    identity: Annotated[str, Field(min_length=1, max_length=64)]
    serial: Annotated[str, Field(max_length=64)] = ""
    type: Annotated[str, Field(max_length=64)] = ""
    group: Literal[1, 3] = 1
    supplier: Annotated[str, Field(pattern=_SLUG)] | None = None
    supervision_s: Annotated[int, Field(ge=10, le=30 * 86400)] | None = None


class Supplier(_Body):
    id: Annotated[str, Field(pattern=_SLUG)]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    email: Annotated[str, Field(max_length=200)] = ""
    phone: str = ""

    _phone_ok = field_validator("phone")(_phone)


class OrderCreate(_Body):
    tenant: Annotated[str, Field(pattern=_SLUG)]
    kind: lifecycle.OrderKind
    user: Annotated[str, Field(pattern=_REF)] | None = None
    device: int | None = None
    supplier: Annotated[str, Field(pattern=_SLUG)] | None = None
    note: Annotated[str, Field(max_length=2000)] = ""


class OrderChange(_Body):
    date: str | None = None  # schedule: the day of the visit
    result: Annotated[str, Field(max_length=2000)] = ""  # done: what was done
    device: int | None = None  # done (install): the device put on the wall
    version: int | None = None  # optimistic concurrency: the version the caller saw


class FaultReport(_Body):
    device: int | None = None
    case: int | None = None
    description: Annotated[str, Field(min_length=1, max_length=2000)]


class DeviationCreate(_Body):
    tenant: Annotated[str, Field(pattern=_SLUG)] | None = None
    category: lifecycle.DeviationCategory
    description: Annotated[str, Field(min_length=1, max_length=4000)]
    case: int | None = None
    fault: int | None = None


class EndNeed(_Body):
    reason: Annotated[str, Field(max_length=500)] = "the need has ceased"
    supplier: Annotated[str, Field(pattern=_SLUG)] | None = None


M = TypeVar("M", bound=_Body)


async def _body(request: web.Request, model: type[M]) -> M:
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ApiError(400, "bad_request", problems) from None


def _now(request: web.Request) -> datetime:
    engine = request.app[CONTEXT].engine
    return (engine.clock if engine is not None else SystemClock()).now()


def _retention(request: web.Request) -> timedelta:
    return request.app[CONTEXT].retention


_SUPPLIER_PERSON = re.compile(r"supplier:([a-z0-9][a-z0-9-]{0,62})")


def _caller(request: web.Request, roles: frozenset[str], what: str) -> tuple[Scope, Actor]:
    info: tokens.TokenInfo = request[TOKEN_KEY]
    if info.role not in roles:
        raise ApiError(403, "forbidden", f"role {info.role} may not {what}")
    supplier = None
    if info.role == "supplier":
        match = _SUPPLIER_PERSON.fullmatch(info.person or "")
        if match is None:
            raise ApiError(403, "forbidden", "this supplier token names no supplier")
        supplier = match.group(1)
    return Scope(info.tenants, supplier), Actor(info.name, info.role)


async def _run(request: web.Request, job: records.Job[T]) -> T:
    """Submit a job, turning the domain's errors into API errors."""
    try:
        return await request.app[CONTEXT].store.writer.submit(job)
    except records.NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except records.Invalid as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    except records.Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except lifecycle.RuleError as exc:
        raise ApiError(409, "not_allowed", str(exc)) from None


async def _changed(request: web.Request) -> None:
    """Devices went on or off the wall, or a user's routing changed: supervision reloads."""
    changed = request.app[CONTEXT].directory_changed
    if changed is not None:
        await changed()


def _int(request: web.Request, name: str) -> int:
    text = request.match_info[name]
    if not text.isdigit() or len(text) > 18:
        raise ApiError(404, "not_found", f"no {name} {text!r}")
    return int(text)


def _query(request: web.Request, allowed: set[str]) -> dict[str, str]:
    query = request.rel_url.query
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown parameter(s): {', '.join(unknown)}")
    return {key: query[key] for key in query}


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "bad_request", f"{name}: not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ApiError(400, "bad_request", f"{name}: give a UTC offset, e.g. {value}Z")
    return parsed


def _fields(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_unset=True)


# --- users and plans --------------------------------------------------------------------------


async def create_user(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS, "create service users")
    body = await _body(request, UserCreate)
    fields = _fields(body)
    fields.pop("tenant")
    fields.pop("ref")
    made = await _run(
        request,
        records.create_user(scope, body.tenant, body.ref, fields, actor, _now(request)),
    )
    return web.json_response(made, status=201)


async def update_user(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS, "change service users")
    body = await _body(request, UserFields)
    tenant, ref = request.match_info["tenant"], request.match_info["ref"]
    answer = await _run(
        request, records.update_user(scope, tenant, ref, _fields(body), actor, _now(request))
    )
    return web.json_response(answer)


async def get_user(request: web.Request) -> web.Response:
    scope, actor = _caller(request, READERS, "read service users")
    query = _query(request, {"reason"})
    reason = query.get("reason", "")
    if actor.role != "admin" and actor.role != "tenant_admin" and not reason:
        raise ApiError(400, "bad_request", "reason: say why you read this record (e.g. case:12)")
    tenant, ref = request.match_info["tenant"], request.match_info["ref"]
    record = await _run(
        request, records.user_record(scope, tenant, ref, actor, _now(request), reason[:200])
    )
    return web.json_response(record)


async def set_active(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS, "activate or deactivate service users")
    active = _verb(request) == "activate"
    tenant, ref = request.match_info["tenant"], request.match_info["ref"]
    answer = await _run(
        request, records.set_active(scope, tenant, ref, active, actor, _now(request))
    )
    await _changed(request)
    return web.json_response(answer)


async def put_plan(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS, "change response plans")
    body = await _body(request, Plan)
    fields = _fields(body)
    contacts = fields.pop("contacts", None)
    tenant, ref = request.match_info["tenant"], request.match_info["ref"]
    answer = await _run(
        request, records.set_plan(scope, tenant, ref, fields, contacts, actor, _now(request))
    )
    return web.json_response(answer)


async def get_plan_version(request: web.Request) -> web.Response:
    scope, actor = _caller(request, READERS | {"auditor"}, "read response plans")
    reason = _query(request, {"reason"}).get("reason", "")
    tenant, ref = request.match_info["tenant"], request.match_info["ref"]
    version = _int(request, "version")
    answer = await _run(
        request, records.plan_version(scope, tenant, ref, version, actor, _now(request), reason)
    )
    return web.json_response(answer)


async def end_need(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS, "end a user's service")
    body = await _body(request, EndNeed)
    tenant, ref = request.match_info["tenant"], request.match_info["ref"]
    answer = await _run(
        request,
        records.end_need(
            scope, tenant, ref, _fields(body), actor, _now(request), _retention(request)
        ),
    )
    await _changed(request)
    return web.json_response(answer)


# --- decisions --------------------------------------------------------------------------------


async def add_decision(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS, "register decisions")
    body = await _body(request, DecisionCreate)
    tenant, ref = request.match_info["tenant"], request.match_info["ref"]
    made = await _run(
        request, records.add_decision(scope, tenant, ref, _fields(body), actor, _now(request))
    )
    return web.json_response(made, status=201)


async def change_decision(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS, "change decisions")
    verb = _verb(request)
    body = await _body(request, DecisionChange)
    answer = await _run(
        request,
        records.decision_action(
            scope, _int(request, "id"), verb, _fields(body), actor, _now(request)
        ),
    )
    return web.json_response(answer)


# --- suppliers and devices --------------------------------------------------------------------


async def put_supplier(request: web.Request) -> web.Response:
    _caller(request, frozenset({"admin"}), "register suppliers")
    body = await _body(request, Supplier)
    answer = await _run(
        request, records.upsert_supplier(body.id, body.name, body.email, body.phone, _now(request))
    )
    return web.json_response(answer)


async def register_device(request: web.Request) -> web.Response:
    scope, _actor = _caller(request, MANAGERS, "register devices")
    body = await _body(request, DeviceCreate)
    data = _fields(body)
    try:
        data["identity"] = normalise_identity(body.protocol, body.identity)
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"identity: {exc}") from None
    made = await _run(request, records.register_device(scope, data, _now(request)))
    return web.json_response(made, status=201)


async def list_devices(request: web.Request) -> web.Response:
    scope, _actor = _caller(request, MANAGERS | {"supplier"}, "list devices")
    query = _query(request, {"tenant", "status"})
    status = query.get("status")
    if status is not None and status not in lifecycle.DEVICE_STATUSES:
        raise ApiError(400, "bad_request", f"status: one of {', '.join(lifecycle.DEVICE_STATUSES)}")
    devices = await _run(request, records.list_devices(scope, query.get("tenant"), status))
    return web.json_response({"devices": devices})


async def device_action(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS, "change devices")
    answer = await _run(
        request,
        records.device_action(scope, _int(request, "id"), _verb(request), actor, _now(request)),
    )
    await _changed(request)
    return web.json_response(answer)


# --- orders -----------------------------------------------------------------------------------


async def create_order(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS, "place orders")
    body = await _body(request, OrderCreate)
    made = await _run(request, records.create_order(scope, _fields(body), actor, _now(request)))
    return web.json_response(made, status=201)


async def list_orders(request: web.Request) -> web.Response:
    scope, actor = _caller(request, ORDER_READERS, "read orders")
    state = _query(request, {"state"}).get("state")
    if state is not None and state not in ("ordered", "accepted", "scheduled", "done", "cancelled"):
        raise ApiError(400, "bad_request", "state: ordered, accepted, scheduled, done or cancelled")
    orders = await _run(request, records.list_orders(scope, state, actor, _now(request)))
    return web.json_response({"orders": orders})


async def order_action(request: web.Request) -> web.Response:
    scope, actor = _caller(request, MANAGERS | {"supplier"}, "work orders")
    body = await _body(request, OrderChange)
    answer = await _run(
        request,
        records.order_action(
            scope,
            _int(request, "id"),
            _verb(request),
            _fields(body),
            actor,
            _now(request),
            _retention(request),
        ),
    )
    if answer["state"] in ("done", "cancelled"):
        await _changed(request)
    return web.json_response(answer)


# --- faults and deviations --------------------------------------------------------------------


async def report_fault(request: web.Request) -> web.Response:
    scope, actor = _caller(request, FAULT_REPORTERS, "report faults")
    body = await _body(request, FaultReport)
    fault = await _run(request, records.report_fault(scope, _fields(body), actor, _now(request)))
    return web.json_response(fault, status=200 if fault["joined"] else 201)


async def list_faults(request: web.Request) -> web.Response:
    scope, _actor = _caller(request, ORDER_READERS, "read faults")
    status = _query(request, {"status"}).get("status")
    faults = await _run(request, records.list_faults(scope, status))
    return web.json_response({"faults": faults})


async def add_deviation(request: web.Request) -> web.Response:
    scope, actor = _caller(request, DEVIATION_WRITERS, "register deviations")
    body = await _body(request, DeviationCreate)
    made = await _run(request, records.add_deviation(scope, _fields(body), actor, _now(request)))
    return web.json_response(made, status=201)


async def close_deviation(request: web.Request) -> web.Response:
    scope, _actor = _caller(request, MANAGERS | {"supervisor"}, "close deviations")
    answer = await _run(request, records.close_deviation(scope, _int(request, "id"), _now(request)))
    return web.json_response(answer)


async def list_deviations(request: web.Request) -> web.Response:
    """Deviations, as JSON or (``format=csv``) as the file a quality system imports."""
    scope, _actor = _caller(request, DEVIATION_READERS, "read deviations")
    query = _query(request, {"since", "until", "format"})
    fmt = query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "bad_request", "format: json or csv")
    rows = await _run(
        request,
        records.list_deviations(
            scope, _time(query.get("since"), "since"), _time(query.get("until"), "until")
        ),
    )
    if fmt == "csv":
        return web.Response(
            text=records.deviations_csv(rows),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": 'attachment; filename="deviations.csv"'},
        )
    return web.json_response({"deviations": rows})


# --- statistics, audit, retention -------------------------------------------------------------


async def get_stats(request: web.Request) -> web.Response:
    scope, _actor = _caller(request, MANAGERS | {"supervisor", "auditor"}, "read statistics")
    query = _query(request, {"since", "until"})
    answer = await _run(
        request,
        records.stats(
            scope, _time(query.get("since"), "since"), _time(query.get("until"), "until")
        ),
    )
    return web.json_response(answer)


async def get_audit(request: web.Request) -> web.Response:
    """``?user=<tenant>/<ref>`` (or ``subject=``), ``actor=``, ``limit=``: who looked at
    what, and why."""
    scope, _actor = _caller(request, AUDIT_READERS, "read the audit trail")
    query = _query(request, {"user", "subject", "actor", "limit"})
    subject = query.get("subject")
    if "user" in query:
        subject = f"user:{query['user']}"
    if subject is None and "actor" not in query:
        raise ApiError(400, "bad_request", "give user=<tenant>/<ref>, subject= or actor=")
    limit_text = query.get("limit", "500")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10000:
        raise ApiError(400, "bad_request", "limit: a whole number from 1 to 10000")
    rows = await _run(
        request, records.audit_trail(scope, subject, query.get("actor"), int(limit_text))
    )
    return web.json_response({"audit": rows})


async def run_retention(request: web.Request) -> web.Response:
    """Erase now what is due (the daemon also does it by itself when it falls due)."""
    _caller(request, frozenset({"admin"}), "run the retention sweep")
    erased = await _run(request, records.erase_due(_now(request)))
    return web.json_response({"erased_users": len(erased)})


_T, _R = "{tenant}", "{ref}"
_USER = f"/api/v1/admin/users/{_T}/{_R}"
_B = "/api/v1/admin"
# (method, path, handler, summary, body?); add_routes and the OpenAPI document both read this
# table, so neither can drift from the other.
ROUTES: list[tuple[str, str, Handler, str, bool]] = [
    ("post", f"{_B}/users", create_user, "create a service user", True),
    ("get", _USER, get_user, "a user's case-management record (?reason=, audited)", False),
    ("patch", _USER, update_user, "change a user's personal facts", True),
    ("post", f"{_USER}/activate", set_active, "route by the user's plan again", False),
    ("post", f"{_USER}/deactivate", set_active, "stop routing by the user's plan", False),
    ("put", f"{_USER}/plan", put_plan, "a new version of the response plan", True),
    ("get", f"{_USER}/plan/versions/{{version}}", get_plan_version, "one plan version", False),
    ("post", f"{_USER}/decisions", add_decision, "register an application or decision", True),
    ("post", f"{_USER}/end", end_need, "the need has ceased: end, de-install, erase later", True),
    *[
        ("post", f"{_B}/decisions/{{id}}/{verb}", change_decision, f"{verb} a decision", True)
        for verb in ("grant", "refuse", "end")
    ],
    ("put", f"{_B}/suppliers", put_supplier, "register or change a supplier", True),
    ("post", f"{_B}/devices", register_device, "register a device (in stock)", True),
    ("get", f"{_B}/devices", list_devices, "devices (?tenant=, ?status=)", False),
    *[
        ("post", f"{_B}/devices/{{id}}/{verb}", device_action, f"{verb} a device", False)
        for verb in ("activate", "restock")
    ],
    ("post", f"{_B}/orders", create_order, "order from a supplier", True),
    ("get", f"{_B}/orders", list_orders, "orders (?state=); a supplier sees its own", False),
    *[
        ("post", f"{_B}/orders/{{id}}/{verb}", order_action, f"{verb} an order", True)
        for verb in ("accept", "schedule", "done", "cancel")
    ],
    ("post", f"{_B}/faults", report_fault, "report a technical fault (orders a repair)", True),
    ("get", f"{_B}/faults", list_faults, "technical faults (?status=)", False),
    ("post", f"{_B}/deviations", add_deviation, "register a deviation", True),
    ("get", f"{_B}/deviations", list_deviations, "deviations (?since=&until=&format=csv)", False),
    ("post", f"{_B}/deviations/{{id}}/close", close_deviation, "close a deviation", False),
    ("get", f"{_B}/stats", get_stats, "key figures per municipality (?since=&until=)", False),
    ("get", f"{_B}/audit", get_audit, "who read or changed what (?user=T/REF, ?actor=)", False),
    ("post", f"{_B}/retention/run", run_retention, "erase personal data now due", False),
]


def _verb(request: web.Request) -> str:
    return request.path.rsplit("/", 1)[1]


def add_routes(app: web.Application) -> None:
    for method, path, handler, *_doc in ROUTES:
        app.router.add_route(method.upper(), path, handler)


def openapi_paths(
    op: Callable[..., dict[str, Any]], path_param: Callable[[str, str], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The OpenAPI entries of these routes, built from ``ROUTES`` with ``api/openapi.py``'s
    helpers (passed in, so that neither module imports the other's internals)."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, _handler, summary, body in ROUTES:
        params = [path_param(name, name) for name in re.findall(r"{(\w+)}", path)]
        paths.setdefault(path, {})[method] = op(summary, params=params or None, body=body)
    return paths

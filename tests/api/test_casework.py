"""Case management through the HTTP API, in process: a real store, the real intake and
engine on a fake clock, real HTTP on 127.0.0.1.

Role tests (a supplier sees only its own orders and devices; a tenant admin only its own
municipality), the rules as the API enforces them, plan versions, faults from technical
cases, routing of devices off the wall, deviations and their export, and erasure after the
retention period with the statistics unchanged. The whole life through the real daemon is
``tests/e2e/test_life_cycle.py``.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from alarmd.api.server import ApiContext, create_app
from alarmd.clock import FakeClock
from alarmd.model import EventKind
from alarmd.store import tokens
from alarmd.store.db import Store

from caseworld import NOW, T0, Router, World, seed_directory

TENANT = "eksempel-kommune"
OTHER = "annen-kommune"


def seed_more(conn: sqlite3.Connection) -> None:
    """A second municipality with a user, and two suppliers."""
    conn.execute("INSERT INTO tenants VALUES (?, 'Annen kommune', ?)", (OTHER, NOW))
    conn.execute(
        "INSERT INTO service_users (id, tenant, ref, first_name, last_name, updated_at)"
        " VALUES (50, ?, 'a-1', 'Berit', 'Annensen', ?)",
        (OTHER, NOW),
    )
    for supplier in ("trygg-teknikk", "annen-leverandor"):
        conn.execute(
            "INSERT INTO suppliers (id, name, updated_at) VALUES (?, ?, ?)",
            (supplier, supplier.title(), NOW),
        )
    # the seeded pendant (dc09 1234) is Trygg Teknikk's
    conn.execute("UPDATE devices SET supplier = 'trygg-teknikk', serial = 'TT-0001'")


class Api:
    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.token = token

    async def call(
        self, method: str, path: str, body: Any = None, expect: int | None = None
    ) -> Any:
        response = await self.client.request(
            method,
            "/api/v1/admin" + path,
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        text = await response.text()
        if expect is not None:
            assert response.status == expect, f"{method} {path}: {response.status} {text}"
        if response.content_type == "application/json":
            data = await response.json()
            if isinstance(data, dict):
                data["_status"] = response.status
            return data
        return text


class Env:
    def __init__(self, world: World, client: TestClient, apis: dict[str, Api]) -> None:
        self.world = world
        self.client = client
        self.apis = apis

    def __getitem__(self, name: str) -> Api:
        return self.apis[name]


TOKENS: dict[str, tuple[str, tuple[str, ...] | None, str | None]] = {
    "admin": ("admin", None, None),
    "tenant_admin": ("tenant_admin", (TENANT,), None),
    "other_admin": ("tenant_admin", (OTHER,), None),
    "supplier": ("supplier", None, "supplier:trygg-teknikk"),
    "other_supplier": ("supplier", None, "supplier:annen-leverandor"),
    "nameless_supplier": ("supplier", None, None),
    "operator": ("operator", None, None),
    "home_care": ("home_care", (TENANT,), "staff:1"),
    "auditor": ("auditor", None, None),
}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_directory)
    await store.writer.submit(seed_more)
    world = World(store, FakeClock(T0), Router())
    for name, (role, scope, person) in TOKENS.items():
        token = tokens.new_token()
        await store.writer.submit(tokens.create_job(name, role, scope, token, T0, person))
        TOKENS_ISSUED[name] = token
    context = ApiContext(
        store=store, health=lambda: {"ok": 1}, engine=world.engine, retention=timedelta(days=30)
    )
    client = TestClient(TestServer(create_app(context)))
    await client.start_server()
    yield Env(world, client, {name: Api(client, TOKENS_ISSUED[name]) for name in TOKENS})
    await client.close()
    await store.close()


TOKENS_ISSUED: dict[str, str] = {}


async def install(env: Env, ref: str = "u-1", identity: str = "4444") -> int:
    """A device from stock onto the wall of ``ref``; returns the device id."""
    admin = env["admin"]
    device = await admin.call(
        "POST",
        "/devices",
        {
            "tenant": TENANT,
            "protocol": "dc09",
            "identity": identity,
            "serial": f"TT-{identity}",
            "type": "safety_alarm",
            "supplier": "trygg-teknikk",
        },
        expect=201,
    )
    order = await admin.call(
        "POST",
        "/orders",
        {"tenant": TENANT, "kind": "install", "user": ref, "device": device["id"]},
        expect=201,
    )
    await env["supplier"].call("POST", f"/orders/{order['id']}/done", {}, expect=200)
    return int(device["id"])


# --- roles --------------------------------------------------------------------------------------


async def test_a_supplier_sees_only_its_own_orders_and_devices(env: Env) -> None:
    admin = env["admin"]
    mine = await admin.call(
        "POST",
        "/orders",
        {"tenant": TENANT, "kind": "train", "user": "u-1", "supplier": "trygg-teknikk"},
        expect=201,
    )
    theirs = await admin.call(
        "POST",
        "/orders",
        {"tenant": OTHER, "kind": "configure", "user": "a-1", "supplier": "annen-leverandor"},
        expect=201,
    )
    supplier, other = env["supplier"], env["other_supplier"]
    assert [o["id"] for o in (await supplier.call("GET", "/orders"))["orders"]] == [mine["id"]]
    assert [o["id"] for o in (await other.call("GET", "/orders"))["orders"]] == [theirs["id"]]
    # what a supplier needs for the visit: the address, the phone
    [order] = (await supplier.call("GET", "/orders"))["orders"]
    assert order["user"]["address"] == "Eksempelveien 1"
    devices = (await supplier.call("GET", "/devices"))["devices"]
    assert [d["identity"] for d in devices] == ["1234"]
    assert (await other.call("GET", "/devices"))["devices"] == []
    # another supplier's order is not there at all, and cannot be worked
    await other.call("POST", f"/orders/{mine['id']}/accept", {}, expect=404)
    await supplier.call(
        "POST", f"/orders/{mine['id']}/schedule", {"date": "2026-03-04"}, expect=200
    )
    # cancelling is the municipality's call, not the supplier's
    refused = await supplier.call("POST", f"/orders/{mine['id']}/cancel", {}, expect=409)
    assert "a supplier may accept, done, schedule" in refused["message"]
    # a supplier reads no service user records and places no orders
    await supplier.call("GET", f"/users/{TENANT}/u-1?reason=x", expect=403)
    await supplier.call(
        "POST", "/orders", {"tenant": TENANT, "kind": "train", "user": "u-1"}, expect=403
    )
    nameless = await env["nameless_supplier"].call("GET", "/orders", expect=403)
    assert "names no supplier" in nameless["message"]


async def test_a_tenant_admin_manages_only_its_own_municipality(env: Env) -> None:
    own, other = env["tenant_admin"], env["other_admin"]
    user = {"tenant": TENANT, "ref": "u-77", "first_name": "Ny", "last_name": "Brukersen"}
    await other.call("POST", "/users", user, expect=404)  # not even that the tenant exists
    await own.call("POST", "/users", user, expect=201)
    await own.call("POST", "/users", user, expect=409)
    record = await own.call("GET", f"/users/{TENANT}/u-77", expect=200)
    assert record["first_name"] == "Ny" and record["decision_valid"] is False
    await other.call("GET", f"/users/{TENANT}/u-77", expect=404)
    await other.call("PATCH", f"/users/{TENANT}/u-77", {"address": "x"}, expect=404)
    await other.call(
        "POST", f"/users/{TENANT}/u-77/decisions", {"service": "safety_alarm"}, expect=404
    )
    await own.call(
        "POST",
        "/orders",
        {"tenant": OTHER, "kind": "train", "user": "a-1", "supplier": "annen-leverandor"},
        expect=404,
    )
    await other.call(
        "POST",
        "/orders",
        {"tenant": OTHER, "kind": "train", "user": "a-1", "supplier": "annen-leverandor"},
        expect=201,
    )
    assert (await own.call("GET", "/orders"))["orders"] == []
    assert [o["tenant"] for o in (await other.call("GET", "/orders"))["orders"]] == [OTHER]
    assert (await other.call("GET", "/devices"))["devices"] == []
    # the audit trail of another municipality's user is not theirs to read
    assert (await other.call("GET", f"/audit?user={TENANT}/u-77"))["audit"] == []
    assert (await own.call("GET", f"/audit?user={TENANT}/u-77"))["audit"]
    # suppliers are the centre's register
    await own.call("PUT", "/suppliers", {"id": "ny-leverandor", "name": "Ny"}, expect=403)


async def test_centre_and_field_roles(env: Env) -> None:
    operator, home_care, auditor = env["operator"], env["home_care"], env["auditor"]
    # an operator reads a record only with a reason, which the audit keeps
    missing = await operator.call("GET", f"/users/{TENANT}/u-1", expect=400)
    assert "reason" in missing["message"]
    await operator.call("GET", f"/users/{TENANT}/u-1?reason=case:1", expect=200)
    await operator.call(
        "POST",
        "/users",
        {"tenant": TENANT, "ref": "x", "first_name": "a", "last_name": "b"},
        expect=403,
    )
    await home_care.call(
        "POST",
        "/deviations",
        {"tenant": TENANT, "category": "procedure", "description": "key box code wrong"},
        expect=201,
    )
    await home_care.call("GET", "/deviations", expect=403)
    trail = (await auditor.call("GET", f"/audit?user={TENANT}/u-1"))["audit"]
    assert [(a["actor"], a["action"], a["reason"]) for a in trail] == [
        ("operator", "read_user", "case:1")
    ]
    await auditor.call("POST", f"/users/{TENANT}/u-1/end", {}, expect=403)


# --- bad input ----------------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_error(env: Env) -> None:
    admin = env["admin"]
    unknown = await admin.call(
        "POST",
        "/users",
        {"tenant": TENANT, "ref": "u-9", "first_name": "A", "last_name": "B", "favourite": "x"},
        expect=400,
    )
    assert "favourite" in unknown["message"]
    phone = await admin.call("PATCH", f"/users/{TENANT}/u-1", {"phone": "call me"}, expect=400)
    assert "phone" in phone["message"] and "not a phone number" in phone["message"]
    postcode = await admin.call("PATCH", f"/users/{TENANT}/u-1", {"postcode": "12"}, expect=400)
    assert "postcode" in postcode["message"]
    date = await admin.call(
        "POST",
        f"/users/{TENANT}/u-1/decisions",
        {"service": "safety_alarm", "status": "granted", "valid_from": "1.12.2026"},
        expect=400,
    )
    assert "valid_from: a date as YYYY-MM-DD" in date["message"]
    sensor = await admin.call(
        "POST", f"/users/{TENANT}/u-1/decisions", {"service": "sensor"}, expect=400
    )
    assert "sensor_type" in sensor["message"]
    identity = await admin.call(
        "POST", "/devices", {"tenant": TENANT, "protocol": "dc09", "identity": "xyz"}, expect=400
    )
    assert "not a DC-09 account" in identity["message"]
    taken = await admin.call(
        "POST", "/devices", {"tenant": TENANT, "protocol": "dc09", "identity": "1234"}, expect=409
    )
    assert "registered to this municipality" in taken["message"]
    supplier = await admin.call(
        "POST",
        "/devices",
        {"tenant": TENANT, "protocol": "dc09", "identity": "9999", "supplier": "nobody"},
        expect=400,
    )
    assert "no supplier 'nobody'" in supplier["message"]
    team = await admin.call(
        "PUT", f"/users/{TENANT}/u-1/plan", {"home_care_team": "nord"}, expect=400
    )
    assert "has no team 'nord'" in team["message"]
    await admin.call("GET", "/orders/abc/accept", expect=405)
    await admin.call("POST", "/orders/999/accept", {}, expect=404)
    notjson = await env.client.post(
        "/api/v1/admin/orders", data=b"{", headers={"Authorization": f"Bearer {admin.token}"}
    )
    assert notjson.status == 400


# --- the rules through the API ------------------------------------------------------------------


async def test_orders_move_devices_and_refuse_what_the_rules_forbid(env: Env) -> None:
    admin, supplier = env["admin"], env["supplier"]
    device_id = await install(env)
    [device] = [d for d in (await admin.call("GET", "/devices"))["devices"] if d["id"] == device_id]
    assert device["status"] == "installed" and device["user_id"] == 1
    await admin.call("POST", f"/devices/{device_id}/activate", expect=200)
    again = await admin.call("POST", f"/devices/{device_id}/activate", expect=409)
    assert "a device that is active cannot activate" in again["message"]
    # an uninstall for a device in stock is refused
    stock = await admin.call(
        "POST",
        "/devices",
        {"tenant": TENANT, "protocol": "dc09", "identity": "5555", "supplier": "trygg-teknikk"},
        expect=201,
    )
    refused = await admin.call(
        "POST",
        "/orders",
        {"tenant": TENANT, "kind": "uninstall", "device": stock["id"]},
        expect=409,
    )
    assert "is in_stock: not on the wall" in refused["message"]
    # an install cancelled puts the device back in stock
    order = await admin.call(
        "POST",
        "/orders",
        {"tenant": TENANT, "kind": "install", "user": "u-1", "device": stock["id"]},
        expect=201,
    )
    await supplier.call("POST", f"/orders/{order['id']}/accept", {}, expect=200)
    stale = await supplier.call(
        "POST", f"/orders/{order['id']}/schedule", {"date": "2026-03-03", "version": 1}, expect=409
    )
    assert "changed meanwhile" in stale["message"]
    past = await supplier.call(
        "POST", f"/orders/{order['id']}/schedule", {"date": "2026-03-01"}, expect=400
    )
    assert "in the past" in past["message"]
    await admin.call("POST", f"/orders/{order['id']}/cancel", {}, expect=200)
    done = await supplier.call("POST", f"/orders/{order['id']}/done", {}, expect=409)
    assert "place a new order" in done["message"]
    states = {d["id"]: d["status"] for d in (await admin.call("GET", "/devices"))["devices"]}
    assert states[stock["id"]] == "in_stock"


async def test_a_device_off_the_wall_or_an_inactive_user_still_reaches_the_centre(
    env: Env,
) -> None:
    """A device in stock sends an alarm (it was taken home before the installation was
    registered): the alarm is not lost, it reaches the centre as from a source without a
    user; so does one from a deactivated user (a stay in hospital)."""
    world, admin = env.world, env["admin"]
    stock = await admin.call(
        "POST",
        "/devices",
        {"tenant": TENANT, "protocol": "dc09", "identity": "6666", "supplier": "trygg-teknikk"},
        expect=201,
    )
    assert stock["status"] == "in_stock"
    await world.send(EventKind.ASSISTANCE, source="6666")
    await world.tick()
    case = world.case(1)
    assert case["user_id"] is None and case["tenant"] == TENANT
    assert case["rule"] == "centre:unregistered"
    await admin.call("POST", f"/users/{TENANT}/u-1/deactivate", expect=200)
    await world.send(EventKind.ASSISTANCE, source="1234")
    await world.tick()
    assert world.case(2)["user_id"] is None
    await admin.call("POST", f"/users/{TENANT}/u-1/activate", expect=200)
    await world.send(EventKind.FALL, source="1234")
    await world.tick()
    assert world.case(3)["user_id"] == 1 and world.case(3)["rule"] == "day-routing"


async def test_plan_versions_and_the_case_keeps_the_version_it_used(env: Env) -> None:
    world, admin = env.world, env["admin"]
    v1 = await admin.call(
        "PUT",
        f"/users/{TENANT}/u-1/plan",
        {
            "instructions": "Ring først.",
            "contacts": [
                {
                    "name": "Per Testesen",
                    "phone": "+4700000002",
                    "relation": "son",
                    "channels": {"sms": "+4700000002"},
                }
            ],
        },
        expect=200,
    )
    # the seeded plan is version 1 (from before versions were kept)
    assert v1["version"] == 2 and v1["changed"] == ["instructions", "contacts"]
    same = await admin.call("PUT", f"/users/{TENANT}/u-1/plan", {"instructions": "Ring først."})
    assert same["changed"] == [] and same["version"] == 2
    await world.send(EventKind.FALL)
    await world.tick()
    v2 = await admin.call(
        "PUT",
        f"/users/{TENANT}/u-1/plan",
        {
            "instructions": "Gå rett inn.",
            "key_box": "1234",
            "contacts": [
                {"name": "Kari Testesen", "phone": "+4700000003"},
                {
                    "name": "Per Testesen",
                    "phone": "+4700000002",
                    "relation": "son",
                    "channels": {"sms": "+4700000002"},
                },
            ],
        },
        expect=200,
    )
    assert v2["version"] == 3
    # the running case keeps version 2; the stored versions say who changed what
    assert json.loads(world.case(1)["plan"])["version"] == 2
    old = await admin.call("GET", f"/users/{TENANT}/u-1/plan/versions/2?reason=review")
    assert old["plan"]["instructions"] == "Ring først." and old["changed_by"] == "api:admin"
    record = await admin.call("GET", f"/users/{TENANT}/u-1")
    assert [(v["version"], v["changed"]) for v in record["plan_versions"]] == [
        (2, "instructions, contacts"),
        (3, "instructions, key_box, contacts"),
    ]
    # Per kept his contact id (the case log names him by it); Kari is new
    ids = world.q("SELECT name, id, position FROM contacts ORDER BY position")
    assert ids == [("Kari Testesen", 2, 1), ("Per Testesen", 1, 2)]


async def test_decisions_and_the_valid_decision_flag(env: Env) -> None:
    admin = env["admin"]
    record = await admin.call("GET", f"/users/{TENANT}/u-1")
    assert record["decision_valid"] is False
    made = await admin.call(
        "POST",
        f"/users/{TENANT}/u-1/decisions",
        {"service": "safety_alarm", "reference": "2026/123"},
        expect=201,
    )
    assert made["status"] == "applied"
    await admin.call(
        "POST", f"/decisions/{made['id']}/grant", {"valid_from": "2026-03-03"}, expect=200
    )
    assert (await admin.call("GET", f"/users/{TENANT}/u-1"))["decision_valid"] is False
    env.world.clock.advance(86400)  # the 3rd of March
    assert (await admin.call("GET", f"/users/{TENANT}/u-1"))["decision_valid"] is True
    await admin.call("POST", f"/decisions/{made['id']}/end", {}, expect=200)
    record = await admin.call("GET", f"/users/{TENANT}/u-1")
    assert record["decision_valid"] is False
    assert record["decisions"][0]["status"] == "ended"
    assert record["decisions"][0]["valid_to"] == "2026-03-03"
    again = await admin.call(
        "POST", f"/decisions/{made['id']}/grant", {"valid_from": "2026-03-03"}, expect=409
    )
    assert "ended cannot grant" in again["message"]


async def test_a_fault_from_a_technical_case_becomes_a_repair_order(env: Env) -> None:
    world, operator, supplier = env.world, env["operator"], env["supplier"]
    await world.send(EventKind.LINK_LOST)
    await world.tick()
    assert world.case(1)["queue"] == "technical"
    fault = await operator.call(
        "POST", "/faults", {"case": 1, "description": "silent 2 days"}, expect=201
    )
    assert fault["status"] == "open" and fault["device_id"] == 1 and fault["order_id"]
    # reported again by home care for the same device: joins, no second repair order
    again = await env["home_care"].call(
        "POST", "/faults", {"device": 1, "description": "no light"}, expect=200
    )
    assert again["joined"] and again["id"] == fault["id"]
    [order] = (await supplier.call("GET", "/orders"))["orders"]
    assert order["kind"] == "repair" and order["fault_id"] == fault["id"]
    devices = (await supplier.call("GET", "/devices"))["devices"]
    assert devices[0]["status"] == "faulty"
    await supplier.call(
        "POST", f"/orders/{order['id']}/done", {"result": "new battery"}, expect=200
    )
    assert (await supplier.call("GET", "/devices"))["devices"][0]["status"] == "active"
    [repaired] = (await operator.call("GET", "/faults"))["faults"]
    assert repaired["status"] == "repaired" and repaired["resolved_at"]


async def test_deviations_export_for_the_quality_system(env: Env) -> None:
    world, operator, admin = env.world, env["operator"], env["admin"]
    await world.send(EventKind.FALL)
    await world.tick()
    made = await operator.call(
        "POST",
        "/deviations",
        {
            "category": "late_response",
            "description": "accepted after 9 minutes",
            "case": 1,
        },
        expect=201,
    )
    assert made["tenant"] == TENANT and made["user_id"] == 1
    await operator.call(
        "POST",
        "/deviations",
        {"category": "late_response", "description": "x", "case": 99},
        expect=404,
    )
    await admin.call(
        "POST",
        "/deviations",
        {"tenant": OTHER, "category": "other", "description": "elsewhere"},
        expect=201,
    )
    response = await env.client.get(
        "/api/v1/admin/deviations?format=csv",
        headers={"Authorization": f"Bearer {env['tenant_admin'].token}"},
    )
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text()), delimiter=";"))
    assert [(r["tenant"], r["category"], r["case_id"]) for r in rows] == [
        (TENANT, "late_response", "1")
    ]
    closed = await admin.call("POST", f"/deviations/{made['id']}/close", expect=200)
    assert closed["status"] == "closed"
    await admin.call("POST", f"/deviations/{made['id']}/close", expect=409)
    listed = (await env["auditor"].call("GET", "/deviations"))["deviations"]
    assert len(listed) == 2


# --- the need ceases; retention -----------------------------------------------------------------


def every_text(path: Path) -> str:
    """Every text value in every table, for a search for personal data."""
    conn = sqlite3.connect(path)
    try:
        out = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in conn.execute(f"SELECT * FROM {table}"):
                out.extend(
                    v.decode(errors="replace") if isinstance(v, bytes) else v
                    for v in row
                    if isinstance(v, str | bytes)
                )
        return "\n".join(out)
    finally:
        conn.close()


async def test_the_need_ceases_and_personal_data_goes_while_the_statistics_stay(
    env: Env,
) -> None:
    world, admin, supplier = env.world, env["admin"], env["supplier"]
    await admin.call("PUT", f"/users/{TENANT}/u-1/plan", {"key_box": "Nøkkelboks 4711"})
    decision = await admin.call(
        "POST",
        f"/users/{TENANT}/u-1/decisions",
        {
            "service": "safety_alarm",
            "status": "granted",
            "valid_from": "2026-03-01",
            "note": "Astrid trenger alarm",
        },
        expect=201,
    )
    await world.send(EventKind.FALL)
    await world.tick()
    await world.engine.accept(1, "operator:op1", is_operator=True)
    await world.tick(120)
    await world.engine.close(1, "operator:op1", "resolved_by_phone", "Astrid hadde falt")
    await admin.call(
        "POST",
        "/deviations",
        {"category": "procedure", "case": 1, "description": "Astrid ventet lenge"},
        expect=201,
    )
    before = await admin.call("GET", "/stats")
    assert before["tenants"][TENANT]["clarification_rate"] == 1.0
    ended = await admin.call("POST", f"/users/{TENANT}/u-1/end", {"reason": "moved"}, expect=200)
    assert ended["decisions_ended"] == [decision["id"]]
    assert ended["erase_after"] is None  # the pendant is still on the wall
    [uninstall] = ended["uninstall_orders"]
    again = await admin.call("POST", f"/users/{TENANT}/u-1/end", {}, expect=409)
    assert "ended already" in again["message"]
    await admin.call("POST", f"/users/{TENANT}/u-1/activate", expect=409)
    # routing by the plan stopped: the pendant still on the wall reaches the centre
    await world.send(EventKind.ASSISTANCE)
    await world.tick()
    assert world.case(2)["user_id"] is None
    await world.engine.accept(2, "operator:op1", is_operator=True)
    await world.engine.close(2, "operator:op1", "accidental", "")
    before = await admin.call("GET", "/stats")
    done = await supplier.call("POST", f"/orders/{uninstall}/done", {}, expect=200)
    assert done["state"] == "done"
    record = await admin.call("GET", f"/users/{TENANT}/u-1")
    assert record["devices"] == []
    assert record["erase_after"] == "2026-04-01T09:02:00.000000Z"  # 30 days after
    # not yet
    assert (await admin.call("POST", "/retention/run"))["erased_users"] == 0
    world.clock.advance(30 * 86400)
    assert (await admin.call("POST", "/retention/run"))["erased_users"] == 1
    await admin.call("GET", f"/users/{TENANT}/u-1", expect=404)
    text = every_text(world.store.path)
    for personal in (
        "Astrid",
        "Testesen",
        "Eksempelveien",
        "4711",
        "Per Testesen",
        "+4700000002",
        "hadde falt",
        "ventet lenge",
    ):
        assert personal not in text, personal
    after = await admin.call("GET", "/stats")
    assert after == before
    # not in the file's free space either, once the WAL is checkpointed into it
    conn = sqlite3.connect(world.store.path)
    try:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        conn.close()
    raw = world.store.path.read_bytes()
    for personal in ("Astrid", "Testesen", "Eksempelveien", "hadde falt", "ventet lenge"):
        assert personal.encode() not in raw, personal
    trail = (await env["auditor"].call("GET", f"/audit?user={TENANT}/u-1"))["audit"]
    assert trail[0]["action"] == "erase_user" and trail[0]["actor"] == "alarmd"


async def test_only_devices_on_the_wall_are_supervised(env: Env) -> None:
    """Installing a device starts its supervision; taking it down ends it. A device in
    stock is silent by nature and must not open link-lost cases."""
    from alarmd.supervision_service import SupervisionService

    world, admin, supplier = env.world, env["admin"], env["supplier"]
    service = SupervisionService(world.store, world.intake, world.clock)
    service.set_account_intervals({})
    stock = await admin.call(
        "POST",
        "/devices",
        {
            "tenant": TENANT,
            "protocol": "dc09",
            "identity": "7777",
            "supplier": "trygg-teknikk",
            "supervision_s": 3600,
        },
        expect=201,
    )
    await world.store.writer.submit(
        lambda conn: conn.execute("UPDATE devices SET supervision_s = 3600 WHERE identity = '1234'")
    )
    assert await service.load() == 1  # the seeded pendant; not the one in stock
    order = await admin.call(
        "POST",
        "/orders",
        {"tenant": TENANT, "kind": "install", "user": "u-1", "device": stock["id"]},
        expect=201,
    )
    await supplier.call("POST", f"/orders/{order['id']}/done", {}, expect=200)
    assert await service.load(resume=False) == 2
    down = await admin.call(
        "POST",
        "/orders",
        {"tenant": TENANT, "kind": "uninstall", "device": stock["id"]},
        expect=201,
    )
    await supplier.call("POST", f"/orders/{down['id']}/done", {}, expect=200)
    assert await service.load(resume=False) == 1
    assert len(service.core) == 1


async def test_a_device_silent_too_long_gets_a_repair_order_by_itself(env: Env) -> None:
    """A technical case of a device that has not come back within ``fault_after`` becomes
    a fault with a repair order to the supplier; one that restores in time orders
    nothing; a second pass orders nothing twice."""
    from alarmd.admin.sweep import AdminSweep
    from alarmd.model import Condition

    world, supplier = env.world, env["supplier"]
    sweep = AdminSweep(world.store, world.clock, timedelta(hours=24))
    await env["admin"].call(
        "POST",
        "/users",
        {"tenant": TENANT, "ref": "u-2", "first_name": "Ny", "last_name": "Brukersen"},
        expect=201,
    )
    other = await install(env, ref="u-2", identity="4545")  # another user, same supplier
    await env["admin"].call("POST", f"/devices/{other}/activate", expect=200)
    await world.send(EventKind.LINK_LOST, source="1234")
    await world.send(EventKind.LINK_LOST, source="4545")
    await world.tick()
    world.clock.advance(3600)
    await world.send(EventKind.LINK_LOST, source="4545", condition=Condition.RESTORE)
    await world.tick(22 * 3600)
    assert await sweep.run_due() == ([], [])  # 23 h: not yet
    await world.tick(3600)
    faults, _erased = await sweep.run_due()
    assert len(faults) == 1
    [order] = (await supplier.call("GET", "/orders?state=ordered"))["orders"]
    assert order["kind"] == "repair" and order["device"]["identity"] == "1234"
    assert world.types(1)[-1] == "fault"
    assert world.case(2)["closed_at"] is not None  # 4545 came back within the hour
    assert await sweep.run_due() == ([], [])

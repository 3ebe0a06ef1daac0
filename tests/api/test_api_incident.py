"""An outage incident over the API: its affected users in the case detail, in the token's
tenant scope, every user's read audited. A real aiohttp server on loopback, a real store,
the real intake, engine and supervision on a fake clock."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from alarmd.api.server import ApiContext, create_app
from alarmd.clock import FakeClock
from alarmd.model import Condition, EventKind
from alarmd.store import tokens
from alarmd.store.db import Store
from alarmd.supervision_service import SupervisionService

from caseworld import NOW, T0, Router, World, seed_directory

USERS = 10
SILENT = [f"P{n}" for n in range(6)]  # fall silent
ON_BATTERY = [f"P{n}" for n in range(6, USERS)]  # report mains lost, keep calling in


def seed(conn: sqlite3.Connection) -> None:
    seed_directory(conn)
    conn.execute("INSERT INTO tenants VALUES ('annen-kommune', 'Annen kommune', ?)", (NOW,))
    conn.executemany(
        "INSERT INTO service_users (id, tenant, ref, first_name, last_name, address, postcode,"
        " phone, updated_at) VALUES (?, 'eksempel-kommune', ?, ?, 'Hansen', ?, '0002', ?, ?)",
        (
            (100 + n, f"u-{100 + n}", f"Bruker{n}", f"Strømveien {n}", f"+47000001{n:02d}", NOW)
            for n in range(USERS)
        ),
    )
    conn.executemany(
        "INSERT INTO devices (tenant, user_id, protocol, identity, device_type, supervision_s,"
        " updated_at) VALUES ('eksempel-kommune', ?, 'dc09', ?, 'pendant', 300, ?)",
        ((100 + n, f"P{n}", NOW) for n in range(USERS)),
    )


class Env:
    def __init__(self, world: World, service: SupervisionService, client: TestClient) -> None:
        self.world = world
        self.service = service
        self.client = client
        self.issued: dict[str, str] = {}

    async def get(self, path: str, who: str) -> tuple[int, Any]:
        response = await self.client.get(
            path, headers={"Authorization": f"Bearer {self.issued[who]}"}
        )
        return response.status, await response.json()

    async def step(self, seconds: float) -> None:
        self.world.clock.advance(seconds)
        await self.service.run_due()
        await self.world.engine.run_due()

    def beat(self, *sources: str) -> None:
        for source in sources:
            self.service.seen("dc09", source)

    async def mains(self, *sources: str, restored: bool = False) -> None:
        for source in sources:
            await self.world.send(
                EventKind.MAINS_LOST,
                source=source,
                condition=Condition.RESTORE if restored else Condition.ALARM,
            )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed)
    world = World(store, FakeClock(T0), Router())
    service = SupervisionService(
        store,
        world.intake,
        world.clock,
        outage_threshold=5,
        outage_window=timedelta(minutes=5),
        startup_grace=timedelta(minutes=10),
        engine=world.engine,
    )
    world.intake.add_listener(service.events_committed)
    await service.load()
    await world.engine.load()
    app = create_app(ApiContext(store=store, health=lambda: {"status": "ok"}, engine=world.engine))
    client = TestClient(TestServer(app))
    await client.start_server()
    e = Env(world, service, client)
    for name, role, scope in [
        ("anne", "operator", None),
        ("kari", "home_care", ("eksempel-kommune",)),
        ("other", "operator", ("annen-kommune",)),
    ]:
        token = tokens.new_token()
        await store.writer.submit(tokens.create_job(name, role, scope, token, T0, None))
        e.issued[name] = token
    # T0+5: everyone calls in; then the power goes: four report mains lost (T0+9) and go on
    # calling in on battery, six fall silent (lost at T0+11)
    await e.step(5 * 60)
    e.beat("1234", *SILENT, *ON_BATTERY)
    await e.step(4 * 60)
    await e.mains(*ON_BATTERY)
    for _ in range(4):
        await e.step(60)
        e.beat("1234", *ON_BATTERY)
    yield e
    await client.close()
    await store.close()


def incident_id(env: Env) -> int:
    [(case_id,)] = env.world.q("SELECT id FROM cases WHERE protocol = 'supervision'")
    return int(case_id)


async def test_an_incident_lists_its_affected_users(env: Env) -> None:
    case_id = incident_id(env)
    status, body = await env.get(f"/api/v1/cases/{case_id}", "anne")
    assert status == 200
    affected = body["affected"]
    assert len(affected) == USERS
    by_device = {a["device"]["identity"]: a for a in affected}
    p7 = by_device["P7"]
    assert (p7["tenant"], p7["ref"], p7["name"], p7["address"]) == (
        "eksempel-kommune",
        "u-107",
        "Bruker7 Hansen",
        "Strømveien 7",
    )
    assert p7["device"] == {"protocol": "dc09", "identity": "P7", "type": "pendant"}
    assert p7["reasons"] == ["mains_lost"]
    assert p7["since"] == "2026-03-02T09:09:00.000000Z"  # when it reported mains lost
    assert p7["batteries_from"] == "2026-03-03T09:09:00.000000Z"  # 24 h on battery
    assert p7["batteries_by"] == "2026-03-05T09:09:00.000000Z"  # 72 h
    p0 = by_device["P0"]
    assert p0["reasons"] == ["link_lost"]
    assert p0["since"] == "2026-03-02T09:05:00.000000Z"  # silent since its last message
    assert affected[0]["device"]["identity"] == "P0"  # the earliest run-out first
    # the log says how many, not every device again
    rows = [e for e in body["log"] if e["type"] == "outage_affected"]
    assert sum(e["data"]["devices"] for e in rows) >= USERS
    # the case read and each affected user's read are audited
    audit = env.world.q("SELECT actor, action, subject, reason FROM audit ORDER BY id")
    assert audit[0] == ("anne", "read_case", f"case:{case_id}", f"case:{case_id}")
    users = [a for a in audit if a[1] == "read_user"]
    assert len(users) == USERS
    assert ("anne", "read_user", "user:eksempel-kommune/u-107") in [u[:3] for u in users]


async def test_affected_users_follow_who_is_back(env: Env) -> None:
    case_id = incident_id(env)
    env.beat("P0", "P1")  # two silent ones call in again
    await env.mains("P6", restored=True)  # one gets power back
    await env.step(1)
    _, body = await env.get(f"/api/v1/cases/{case_id}", "anne")
    assert sorted(a["device"]["identity"] for a in body["affected"]) == [
        "P2",
        "P3",
        "P4",
        "P5",
        "P7",
        "P8",
        "P9",
    ]


async def test_the_incident_and_its_users_only_in_the_tokens_tenants(env: Env) -> None:
    case_id = incident_id(env)
    status, body = await env.get(f"/api/v1/cases/{case_id}", "kari")
    assert status == 200 and len(body["affected"]) == USERS
    status, body = await env.get(f"/api/v1/cases/{case_id}", "other")
    assert status == 404
    assert "affected" not in body
    # another tenant's token read nobody's personal data
    assert env.world.q("SELECT count(*) FROM audit WHERE actor = 'other'") == [(0,)]


async def test_an_ordinary_case_has_no_affected_list(env: Env) -> None:
    event_id = await env.world.send(EventKind.FALL, source="1234")
    [(case_id,)] = env.world.q("SELECT id FROM cases WHERE first_event_id = ?", event_id)
    status, body = await env.get(f"/api/v1/cases/{case_id}", "anne")
    assert status == 200 and "affected" not in body

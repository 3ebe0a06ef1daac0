"""Cases over the API: a real aiohttp server on loopback, a real store, the real engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from alarmd.api.server import ApiContext, create_app
from alarmd.clock import FakeClock
from alarmd.store import tokens
from alarmd.store.db import Store

from caseworld import T0, Router, World, seed_directory


class Env:
    def __init__(self, world: World, client: TestClient, issued: dict[str, str]) -> None:
        self.world = world
        self.client = client
        self.issued = issued

    async def call(
        self, method: str, path: str, who: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        response = await self.client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {self.issued[who]}"}
        )
        return response.status, await response.json()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_directory)
    world = World(store, FakeClock(T0), Router())
    issued = {}
    for name, role, scope, person in [
        ("anne", "operator", None, None),
        ("bjorn", "operator", None, None),
        ("kari", "home_care", ("eksempel-kommune",), "staff:1"),
        ("other", "operator", ("annen-kommune",), None),
        ("nobody", "home_care", ("eksempel-kommune",), None),
        ("auditor", "auditor", None, None),
    ]:
        token = tokens.new_token()
        await store.writer.submit(tokens.create_job(name, role, scope, token, T0, person))
        issued[name] = token
    app = create_app(ApiContext(store=store, health=lambda: {"status": "ok"}, engine=world.engine))
    client = TestClient(TestServer(app))
    await client.start_server()
    await world.send()
    await world.tick()
    yield Env(world, client, issued)
    await client.close()
    await store.close()


async def test_queue_and_case_with_its_log(env: Env) -> None:
    status, body = await env.call("GET", "/api/v1/cases", "anne")
    assert status == 200
    [case] = body["cases"]
    assert (case["id"], case["state"], case["kind"], case["step"]) == (1, "notifying", "fall", 1)
    status, body = await env.call("GET", "/api/v1/cases/1", "anne")
    assert status == 200
    assert body["plan"]["home_care_team"] == "sentrum"
    assert (body["user"]["first_name"], body["user"]["address"]) == ("Astrid", "Eksempelveien 1")
    assert body["devices"] == [{"protocol": "dc09", "identity": "1234", "type": "", "group": 1}]
    # the read is audited: who, what, why
    assert env.world.q("SELECT actor, role, action, subject, reason FROM audit") == [
        ("anne", "operator", "read_case", "case:1", "case:1")
    ]
    # the first event, then what alarmd did with it
    assert [entry["type"] for entry in body["log"]][:3] == ["event", "opened", "routed"]


async def test_two_operators_accept_at_once_one_is_told_who_has_it(env: Env) -> None:
    (s1, b1), (s2, b2) = await asyncio.gather(
        env.call("POST", "/api/v1/cases/1/accept", "anne"),
        env.call("POST", "/api/v1/cases/1/accept", "bjorn"),
    )
    assert sorted([s1, s2]) == [200, 409]
    winner, loser = (b1, b2) if s1 == 200 else (b2, b1)
    assert loser["error"] == "conflict"
    assert loser["message"] == f"already accepted by {winner['accepted_by']}"


async def test_notified_carer_accepts_with_a_personal_token(env: Env) -> None:
    status, body = await env.call("POST", "/api/v1/cases/1/accept", "kari")
    assert (status, body["accepted_by"]) == (200, "staff:1")
    status, body = await env.call("POST", "/api/v1/cases/1/on_site", "kari")
    assert (status, body["state"]) == (200, "on_site")
    status, body = await env.call(
        "POST", "/api/v1/cases/1/close", "kari", {"outcome": "home_care_dispatched", "note": "ok"}
    )
    assert (status, body["state"], body["outcome"]) == (200, "closed", "home_care_dispatched")
    status, body = await env.call("POST", "/api/v1/cases/1/accept", "anne")
    assert (status, body["message"]) == (409, "case closed")


async def test_refusals_are_explained(env: Env) -> None:
    status, body = await env.call("POST", "/api/v1/cases/1/accept", "nobody")
    assert status == 403 and "acts for nobody" in body["message"]
    status, body = await env.call("POST", "/api/v1/cases/1/accept", "auditor")
    assert status == 403
    status, body = await env.call("POST", "/api/v1/cases/1/close", "anne", {"outcome": "oops"})
    assert status == 400 and "resolved_by_phone" in body["message"]
    status, body = await env.call("POST", "/api/v1/cases/1/note", "anne", {"text": "  "})
    assert status == 400
    status, body = await env.call("POST", "/api/v1/cases/1/note", "anne", {"text": "Ringte."})
    assert status == 200
    status, body = await env.call("GET", "/api/v1/cases?state=closed", "anne")
    assert status == 400


async def test_other_tenants_case_is_not_found(env: Env) -> None:
    status, body = await env.call("GET", "/api/v1/cases", "other")
    assert (status, body["cases"]) == (200, [])
    status, _ = await env.call("GET", "/api/v1/cases/1", "other")
    assert status == 404
    status, _ = await env.call("POST", "/api/v1/cases/1/accept", "other")
    assert status == 404
    status, _ = await env.call("GET", "/api/v1/cases/999", "anne")
    assert status == 404


async def test_dispatch_home_care_notifies_the_team_and_is_logged(env: Env) -> None:
    await env.call("POST", "/api/v1/cases/1/accept", "anne")
    status, body = await env.call(
        "POST", "/api/v1/cases/1/dispatch", "anne", {"to": "home_care", "note": "Har falt."}
    )
    assert status == 200 and body["accepted_by"] == "operator:anne"
    rows = env.world.q("SELECT person, address FROM outbox WHERE dedup_key LIKE '%dispatch%'")
    assert rows == [("staff:1", "+4700000101"), ("staff:2", "+4700000102")]
    _, case = await env.call("GET", "/api/v1/cases/1", "anne")
    assert case["log"][-1]["message"].startswith("dispatched home_care: Kari (sms), Ola (sms)")
    status, body = await env.call("POST", "/api/v1/cases/1/dispatch", "anne", {"to": "mars"})
    assert status == 400
    status, body = await env.call("POST", "/api/v1/cases/1/dispatch", "anne", {"to": "ambulance"})
    assert status == 200

"""Token administration and live updates over the API (real server on loopback)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from alarmd.api.server import ApiContext, create_app
from alarmd.api.stream import CaseHub
from alarmd.clock import FakeClock
from alarmd.store import tokens
from alarmd.store.db import Store

from caseworld import T0, Router, World, seed_directory


class Env:
    def __init__(self, world: World, client: TestClient, issued: dict[str, str]) -> None:
        self.world = world
        self.client = client
        self.issued = issued

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issued[who]}"}

    async def call(self, method: str, path: str, who: str, body: Any = None) -> tuple[int, Any]:
        response = await self.client.request(method, path, json=body, headers=self.auth(who))
        return response.status, await response.json()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_directory)
    world = World(store, FakeClock(T0), Router())
    hub = CaseHub()
    world.engine.on_case_change(hub.publish)
    issued = {}
    for name, role, scope in [
        ("admin", "admin", None),
        ("ta", "tenant_admin", ("eksempel-kommune",)),
        ("other-op", "operator", ("annen-kommune",)),
        ("op", "operator", None),
    ]:
        token = tokens.new_token()
        await store.writer.submit(tokens.create_job(name, role, scope, token, T0))
        issued[name] = token
    context = ApiContext(
        store=store, health=lambda: {"status": "ok"}, engine=world.engine, case_hub=hub
    )
    client = TestClient(TestServer(create_app(context)))
    await client.start_server()
    yield Env(world, client, issued)
    await client.close()
    await store.close()


async def test_token_created_once_works_then_revoked(env: Env) -> None:
    status, body = await env.call(
        "POST",
        "/api/v1/admin/tokens",
        "admin",
        {
            "name": "kari-phone",
            "role": "home_care",
            "tenants": ["eksempel-kommune"],
            "person": "staff:1",
        },
    )
    assert status == 201 and body["token"].startswith("alarmd_")
    env.issued["kari"] = body["token"]
    status, _ = await env.call("GET", "/api/v1/cases", "kari")
    assert status == 200
    status, listed = await env.call("GET", "/api/v1/admin/tokens", "admin")
    assert all("token" not in t and "token_hash" not in t for t in listed["tokens"])
    assert {"name": "kari-phone", "person": "staff:1"}.items() <= listed["tokens"][-1].items()
    status, again = await env.call(
        "POST", "/api/v1/admin/tokens", "admin", {"name": "kari-phone", "role": "home_care"}
    )
    assert status == 409 and "exists" in again["message"]
    status, _ = await env.call("DELETE", "/api/v1/admin/tokens/kari-phone", "admin")
    assert status == 200
    status, body = await env.call("GET", "/api/v1/cases", "kari")
    assert (status, body["message"]) == (401, "unknown or revoked token")


async def test_a_tenant_admin_issues_only_carer_tokens_for_its_own_tenant(env: Env) -> None:
    ok = {"name": "ola", "role": "home_care", "tenants": ["eksempel-kommune"]}
    assert (await env.call("POST", "/api/v1/admin/tokens", "ta", ok))[0] == 201
    wider = {**ok, "name": "x", "tenants": ["annen-kommune"]}
    assert (await env.call("POST", "/api/v1/admin/tokens", "ta", wider))[0] == 403
    operator = {**ok, "name": "y", "role": "operator"}
    assert (await env.call("POST", "/api/v1/admin/tokens", "ta", operator))[0] == 403
    assert (await env.call("DELETE", "/api/v1/admin/tokens/op", "ta"))[0] == 404
    assert (await env.call("DELETE", "/api/v1/admin/tokens/ola", "ta"))[0] == 200
    status, body = await env.call("POST", "/api/v1/admin/tokens", "op", ok)
    assert status == 403
    status, body = await env.call("POST", "/api/v1/admin/tokens", "admin", {"name": "bad name"})
    assert status == 400 and body["message"].startswith("name:")


async def read_event(response: Any) -> tuple[str, dict[str, Any]]:
    """The next server-sent event (comments skipped)."""
    kind, data = "", ""
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and kind:
            return kind, json.loads(data)


async def test_live_updates_show_each_case_change_to_those_who_may_see_it(env: Env) -> None:
    response = await env.client.get("/api/v1/stream", headers=env.auth("op"))
    other = await env.client.get("/api/v1/stream", headers=env.auth("other-op"))
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    await env.world.send()
    kind, case = await read_event(response)
    assert (kind, case["id"], case["state"]) == ("case", 1, "new")
    await env.world.tick()
    kind, case = await read_event(response)
    assert (kind, case["state"]) == ("case", "notifying")
    await env.world.engine.accept(1, "operator:op", is_operator=True)
    kind, case = await read_event(response)
    assert (case["state"], case["accepted_by"]) == ("accepted", "operator:op")
    # another tenant's operator saw nothing but the opening comment
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read_event(other), 0.2)
    response.close()
    other.close()


def test_a_slow_console_gets_a_resync_instead_of_unbounded_memory() -> None:
    hub = CaseHub()
    queue = hub.subscribe()
    hub.publish(range(5000))
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    assert len(items) <= 1000 and items[-1] == -1

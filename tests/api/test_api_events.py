"""The events API on a real aiohttp server (loopback) over a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from alarmd.api.server import CONTEXT, ApiContext, create_app
from alarmd.intake import Intake
from alarmd.model import Condition, Event, EventKind, Flag
from alarmd.store import tokens
from alarmd.store.db import Store

T0 = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)
TENANT = {"1234": "eksempel-kommune", "4321": "annen-kommune"}


def event(source: str, n: int, flags: frozenset[Flag] = frozenset()) -> Event:
    return Event(
        protocol="dc09",
        source=source,
        kind=EventKind.FALL,
        condition=Condition.ALARM,
        priority=EventKind.FALL.default_priority,
        received_at=T0 + timedelta(minutes=n),
        dedup_key=f"{source}:{n}",
        raw=b"\n...\r",
        code="CID:1100",
        zone=str(n),
        flags=flags,
    )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[TestClient, dict[str, str]]]:
    store = await Store.open(tmp_path / "a.sqlite")
    intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=lambda p, s: TENANT.get(s))
    await intake.submit(
        [event("1234", 1), event("4321", 2), event("9999", 3, frozenset({Flag.UNREGISTERED}))]
    )
    issued = {}
    for name, role, scope in [
        ("admin", "admin", None),
        ("op-eksempel", "operator", ("eksempel-kommune",)),
    ]:
        token = tokens.new_token()
        await store.writer.submit(tokens.create_job(name, role, scope, token, T0))
        issued[name] = token
    client = TestClient(
        TestServer(create_app(ApiContext(store=store, health=lambda: {"status": "ok"})))
    )
    await client.start_server()
    yield client, issued
    await client.close()
    await store.close()


async def test_admin_sees_everything_including_unregistered(
    env: tuple[TestClient, dict[str, str]],
) -> None:
    client, issued = env
    response = await client.get(
        "/api/v1/events", headers={"Authorization": f"Bearer {issued['admin']}"}
    )
    assert response.status == 200
    body = await response.json()
    assert [e["source"] for e in body["events"]] == ["9999", "4321", "1234"]  # newest first
    assert body["events"][0]["flags"] == ["unregistered"]
    assert body["events"][2]["raw_hex"] == b"\n...\r".hex()


async def test_tenant_scoped_token_sees_only_its_tenant(
    env: tuple[TestClient, dict[str, str]],
) -> None:
    client, issued = env
    response = await client.get(
        "/api/v1/events", headers={"Authorization": f"Bearer {issued['op-eksempel']}"}
    )
    body = await response.json()
    assert [e["source"] for e in body["events"]] == ["1234"]
    assert {e["tenant"] for e in body["events"]} == {"eksempel-kommune"}


async def test_filters(env: tuple[TestClient, dict[str, str]]) -> None:
    client, issued = env
    auth = {"Authorization": f"Bearer {issued['admin']}"}
    body = await (await client.get("/api/v1/events?account=4321", headers=auth)).json()
    assert [e["source"] for e in body["events"]] == ["4321"]
    since = (T0 + timedelta(minutes=2)).isoformat()
    body = await (await client.get("/api/v1/events", params={"since": since}, headers=auth)).json()
    assert [e["source"] for e in body["events"]] == ["9999", "4321"]
    body = await (await client.get("/api/v1/events?limit=1", headers=auth)).json()
    assert len(body["events"]) == 1


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("since=yesterday", "since"),
        ("since=2026-11-24T20:00:00", "UTC offset"),
        ("colour=blue", "unknown parameter"),
    ],
)
async def test_bad_parameters_get_a_clear_400(
    env: tuple[TestClient, dict[str, str]], query: str, fragment: str
) -> None:
    client, issued = env
    response = await client.get(
        f"/api/v1/events?{query}", headers={"Authorization": f"Bearer {issued['admin']}"}
    )
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "bad_request"
    assert fragment in body["message"]


async def test_auth_errors_and_unknown_paths_are_json(
    env: tuple[TestClient, dict[str, str]],
) -> None:
    client, _ = env
    response = await client.get("/api/v1/events", headers={"Authorization": "Basic abc"})
    assert response.status == 401
    assert (await response.json())["error"] == "unauthenticated"
    response = await client.get("/nowhere")
    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


async def test_revoked_token_is_refused(
    env: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    client, issued = env
    store = client.server.app[CONTEXT].store
    await store.writer.submit(
        lambda c: c.execute("UPDATE api_tokens SET revoked_at = 'x' WHERE name = 'op-eksempel'")
    )
    response = await client.get(
        "/api/v1/events", headers={"Authorization": f"Bearer {issued['op-eksempel']}"}
    )
    assert response.status == 401

"""Every role × every endpoint × its own and another tenant: allowed or denied as designed,
and no personal data of another tenant ever in an answer.

The world: one municipality (eksempel-kommune) with a user "Astrid" whose fall alarm is
case 1, notified to staff 1 (Kari). Each role gets two tokens: one for eksempel-kommune
("own") and one for annen-kommune ("other"); centre roles also get one for every tenant.
"""

from __future__ import annotations

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

ROLES = ("admin", "operator", "supervisor", "tenant_admin", "home_care", "supplier", "auditor")
OWN, OTHER = ("eksempel-kommune",), ("annen-kommune",)
DIRECTORY = b"""tenants:
  - id: eksempel-kommune
    name: Eksempel kommune
    users:
      - {ref: u-2, first_name: Ny, last_name: Bruker}
"""

# endpoint name -> (method, path, body)
ENDPOINTS: dict[str, tuple[str, str, Any]] = {
    "events": ("GET", "/api/v1/events", None),
    "cases": ("GET", "/api/v1/cases", None),
    "case": ("GET", "/api/v1/cases/1", None),
    "note": ("POST", "/api/v1/cases/1/note", {"text": "ringte"}),
    "users": ("GET", "/api/v1/users", None),
    "user": ("GET", "/api/v1/users/eksempel-kommune/u-1", None),
    "import": ("POST", "/api/v1/directory/import", DIRECTORY),
    "tokens": ("GET", "/api/v1/admin/tokens", None),
    "openapi": ("GET", "/api/v1/openapi.json", None),
}

CENTRE = {"admin", "operator", "supervisor"}
ALLOWED_OWN: dict[str, set[str]] = {
    "events": set(ROLES),
    "cases": set(ROLES),
    "case": set(ROLES),
    # acting needs a centre role, or a field role acting as a person (home_care has one)
    "note": CENTRE | {"home_care"},
    "users": set(ROLES) - {"supplier"},
    "user": set(ROLES) - {"supplier"},
    "import": {"admin", "tenant_admin"},
    "tokens": {"admin", "tenant_admin"},
    "openapi": set(ROLES),
}
# with a token for another tenant, what is "allowed" returns nothing of eksempel-kommune
ALLOWED_OTHER: dict[str, set[str]] = {
    "events": set(ROLES),
    "cases": set(ROLES),
    "case": set(),  # 404: not even whether it exists
    "note": set(),
    "users": set(ROLES) - {"supplier"},
    "user": set(),
    "import": set(),  # the file names eksempel-kommune: refused even to a scoped admin
    "tokens": {"admin", "tenant_admin"},  # a tenant admin sees only its own tenant's tokens
    "openapi": set(ROLES),
}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[TestClient, dict[tuple[str, str], str]]]:
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_directory)
    world = World(store, FakeClock(T0), Router())
    await world.send()
    await world.tick()  # case 1 notifies staff 1 and 2
    issued: dict[tuple[str, str], str] = {}
    for role in ROLES:
        for scope_name, scope in (("own", OWN), ("other", OTHER)):
            if role == "admin":
                scope = None if scope_name == "own" else OTHER
            token = tokens.new_token()
            person = "staff:1" if role in ("home_care", "supplier") else None
            if role == "supplier":
                person = None  # a supplier desk token acting for nobody
            name = f"{role}-{scope_name}"
            await store.writer.submit(tokens.create_job(name, role, scope, token, T0, person))
            issued[(role, scope_name)] = token
    client = TestClient(
        TestServer(
            create_app(ApiContext(store=store, health=lambda: {"ok": 1}, engine=world.engine))
        )
    )
    await client.start_server()
    yield client, issued
    await client.close()
    await store.close()


async def call(client: TestClient, token: str, endpoint: str) -> tuple[int, str]:
    method, path, body = ENDPOINTS[endpoint]
    headers = {"Authorization": f"Bearer {token}"}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/yaml"
        response = await client.request(method, path, data=body, headers=headers)
    else:
        response = await client.request(method, path, json=body, headers=headers)
    return response.status, await response.text()


async def test_authorisation_matrix(env: tuple[TestClient, dict[tuple[str, str], str]]) -> None:
    client, issued = env
    wrong: list[str] = []
    for endpoint in ENDPOINTS:
        for role in ROLES:
            for scope_name, allowed in (("own", ALLOWED_OWN), ("other", ALLOWED_OTHER)):
                status, text = await call(client, issued[(role, scope_name)], endpoint)
                expected = role in allowed[endpoint]
                if (200 <= status < 300) != expected:
                    wrong.append(f"{endpoint} as {role} ({scope_name}): {status} {text[:80]}")
                if scope_name == "other" and role != "admin" and "Astrid" in text:
                    wrong.append(f"{endpoint} as {role} (other) leaked the user's name")
                listing = endpoint in ("events", "cases") and status == 200
                if scope_name == "other" and listing and '"eksempel-kommune"' in text:
                    wrong.append(f"{endpoint} as {role} (other) shows eksempel-kommune data")
    assert wrong == []

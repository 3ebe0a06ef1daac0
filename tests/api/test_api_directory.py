"""The directory API on a real aiohttp server (loopback) over a real SQLite store: import,
users scoped by tenant, and staff signing on and off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from alarmd.api.directory import CLOCK
from alarmd.api.server import ApiContext, create_app
from alarmd.clock import FakeClock
from alarmd.store import tokens
from alarmd.store.db import Store, iso

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_YAML = REPO / "config" / "directory.example.yaml"
EXAMPLE_CSV = REPO / "config" / "directory.example.csv"
T0 = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)
YAML = {"Content-Type": "application/yaml"}

TOKENS = [
    ("admin", "admin", None),
    ("ta-eksempel", "tenant_admin", ("eksempel-kommune",)),
    ("op-demo", "operator", ("demo-bydel",)),
    ("sup-eksempel", "supervisor", ("eksempel-kommune",)),
    ("auditor", "auditor", None),
    ("supplier", "supplier", None),
    ("kari", "home_care", ("eksempel-kommune",)),
]


@dataclass
class Env:
    client: TestClient
    store: Store
    tokens: dict[str, str]

    def auth(self, name: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}", **extra}

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.store.reader.execute(sql, args) as cursor:
            return [tuple(r) for r in await cursor.fetchall()]

    async def import_example(self) -> None:
        response = await self.client.post(
            "/api/v1/directory/import",
            data=EXAMPLE_YAML.read_bytes(),
            headers=self.auth("admin", **YAML),
        )
        assert response.status == 200, await response.text()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await Store.open(tmp_path / "a.sqlite")
    issued = {}
    for name, role, scope in TOKENS:
        token = tokens.new_token()
        await store.writer.submit(tokens.create_job(name, role, scope, token, T0))
        issued[name] = token
    app = create_app(ApiContext(store=store, health=lambda: {"status": "ok"}))
    app[CLOCK] = FakeClock(T0)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield Env(client, store, issued)
    await client.close()
    await store.close()


# --- import --------------------------------------------------------------------------------


async def test_admin_imports_the_example_files(env: Env) -> None:
    response = await env.client.post(
        "/api/v1/directory/import?filename=directory.example.yaml",
        data=EXAMPLE_YAML.read_bytes(),
        headers=env.auth("admin", **YAML),
    )
    assert response.status == 200
    body = await response.json()
    assert body["source"] == "directory.example.yaml"
    assert body["format"] == "yaml"
    assert body["changed"] is True
    assert body["users"] == {"created": 5, "updated": 0, "unchanged": 0, "removed": 0}
    assert body["devices"]["created"] == 8
    assert await env.rows("SELECT DISTINCT updated_by, updated_at FROM response_plans") == [
        ("api:admin", iso(T0))
    ]
    response = await env.client.post(
        "/api/v1/directory/import",
        data=EXAMPLE_CSV.read_bytes(),
        headers=env.auth("admin", **{"Content-Type": "text/csv; charset=utf-8"}),
    )
    assert response.status == 200
    body = await response.json()
    assert (body["format"], body["source"]) == ("csv", "upload.csv")
    assert body["users"]["created"] == 3
    # The same file again changes nothing.
    response = await env.client.post(
        "/api/v1/directory/import",
        data=EXAMPLE_YAML.read_bytes(),
        headers=env.auth("admin", **{"Content-Type": "text/yaml"}),
    )
    body = await response.json()
    assert body["changed"] is False
    counts = [v for k, v in body.items() if k not in ("changed", "source", "format")]
    assert len(counts) == 8
    assert all(c["created"] == c["updated"] == c["removed"] == 0 for c in counts)


async def test_tenant_admin_may_import_only_its_own_tenants(env: Env) -> None:
    response = await env.client.post(
        "/api/v1/directory/import",
        data=EXAMPLE_YAML.read_bytes(),
        headers=env.auth("ta-eksempel", **YAML),
    )
    assert response.status == 403
    body = await response.json()
    assert body["error"] == "forbidden"
    assert "demo-bydel" in body["message"]
    assert "eksempel-kommune" not in body["message"]
    assert await env.rows("SELECT count(*) FROM tenants") == [(0,)]  # nothing was imported
    own = "tenants:\n  - {id: eksempel-kommune, name: Eksempel kommune}\n"
    response = await env.client.post(
        "/api/v1/directory/import", data=own, headers=env.auth("ta-eksempel", **YAML)
    )
    assert response.status == 200
    assert (await response.json())["tenants"]["created"] == 1


@pytest.mark.parametrize("name", ["op-demo", "sup-eksempel", "auditor", "supplier", "kari"])
async def test_other_roles_may_not_import(env: Env, name: str) -> None:
    response = await env.client.post(
        "/api/v1/directory/import", data=b"tenants: []\n", headers=env.auth(name, **YAML)
    )
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"


async def test_parse_errors_are_400_with_every_problem(env: Env) -> None:
    text = (
        "tenants:\n"
        "  - id: eksempel-kommune\n"
        "    name: Eksempel kommune\n"
        "    users:\n"
        "      - {ref: u-1, first_name: A, last_name: B, colour: red}\n"
        "      - {ref: u-1, first_name: C, last_name: D}\n"
    )
    response = await env.client.post(
        "/api/v1/directory/import?filename=mine.yaml", data=text, headers=env.auth("admin", **YAML)
    )
    assert response.status == 400
    body = await response.json()
    assert body == {
        "error": "invalid_directory",
        "message": "mine.yaml cannot be imported: 2 problems",
        "problems": [
            "mine.yaml:5:49: tenants[0].users[0].colour: unknown key; expected one of: ref,"
            " first_name, last_name, address, postcode, phone, group, location, active,"
            " devices, plan, contacts",
            "mine.yaml:6:15: tenants[0].users[1].ref: duplicate user ref 'u-1', first defined"
            " on line 5",
        ],
    }
    response = await env.client.post(
        "/api/v1/directory/import",
        data="tenant,ref\n",
        headers=env.auth("admin", **{"Content-Type": "text/csv"}),
    )
    body = await response.json()
    assert response.status == 400
    assert body["problems"] == [
        "upload.csv:1:1: required column 'first_name' is missing",
        "upload.csv:1:1: required column 'last_name' is missing",
    ]


async def test_conflict_with_the_stored_directory_is_409(env: Env) -> None:
    await env.import_example()
    text = (
        "tenants:\n"
        "  - id: demo-bydel\n"
        "    name: Demo bydel\n"
        "    users:\n"
        "      - ref: x\n"
        "        first_name: A\n"
        "        last_name: B\n"
        '        devices: [{protocol: dc09, identity: "1234"}]\n'
    )
    response = await env.client.post(
        "/api/v1/directory/import", data=text, headers=env.auth("admin", **YAML)
    )
    assert response.status == 409
    body = await response.json()
    assert body["error"] == "directory_conflict"
    assert body["problems"] == [
        "upload.yaml:8:46: tenants[0].users[0].devices[0].identity: device dc09 '1234' is"
        " registered to another tenant; a device never moves between municipalities by"
        " import: unregister it there first"
    ]


async def test_import_request_errors(env: Env) -> None:
    response = await env.client.post(
        "/api/v1/directory/import",
        data=b"{}",
        headers=env.auth("admin", **{"Content-Type": "application/json"}),
    )
    assert response.status == 415
    assert (await response.json())["error"] == "unsupported_media_type"
    response = await env.client.post(
        "/api/v1/directory/import?name=x", data=b"tenants: []\n", headers=env.auth("admin", **YAML)
    )
    assert response.status == 400
    assert "unknown parameter(s): name" in (await response.json())["message"]
    response = await env.client.post(
        "/api/v1/directory/import", data=b"\xff", headers=env.auth("admin", **YAML)
    )
    assert response.status == 400
    assert (await response.json())["problems"] == ["upload.yaml:1:1: the file is not valid UTF-8"]


# --- users ---------------------------------------------------------------------------------


async def test_user_list_is_scoped_to_the_tokens_tenants(env: Env) -> None:
    await env.import_example()
    response = await env.client.get("/api/v1/users", headers=env.auth("admin"))
    assert response.status == 200
    users = (await response.json())["users"]
    assert [(u["tenant"], u["ref"]) for u in users] == [
        ("demo-bydel", "2001"),
        ("demo-bydel", "2002"),
        ("eksempel-kommune", "u-1003"),
        ("eksempel-kommune", "u-1002"),
        ("eksempel-kommune", "u-1001"),
    ]  # by tenant, then last name: Demosen, Testmann; Eksempelsen, Prøvesen, Testesen
    assert set(users[0]) == {
        "tenant",
        "ref",
        "first_name",
        "last_name",
        "address",
        "postcode",
        "group",
        "location",
        "active",
    }  # no key box, no plan, no phone
    response = await env.client.get("/api/v1/users", headers=env.auth("op-demo"))
    users = (await response.json())["users"]
    assert {u["tenant"] for u in users} == {"demo-bydel"}
    assert len(users) == 2
    response = await env.client.get(
        "/api/v1/users?tenant=eksempel-kommune", headers=env.auth("op-demo")
    )
    assert response.status == 403
    response = await env.client.get(
        "/api/v1/users?tenant=eksempel-kommune&limit=2", headers=env.auth("auditor")
    )
    assert [u["ref"] for u in (await response.json())["users"]] == ["u-1003", "u-1002"]


@pytest.mark.parametrize(
    ("q", "refs"),
    [
        ("prøve", ["u-1002"]),  # case-insensitive, æøå included: "Prøvesen"
        ("PRØVESEN", ["u-1002"]),
        ("astrid testesen", ["u-1001"]),
        ("ABC123", ["u-1003"]),  # a device identity
        ("fall-0001", ["u-1001"]),
        ("+47 000 000 02", ["u-1002"]),  # the user's phone, written any way
        ("u-100", ["u-1003", "u-1002", "u-1001"]),
        ("50%", []),  # LIKE wildcards are literal
        ("nobody", []),
    ],
)
async def test_user_search(env: Env, q: str, refs: list[str]) -> None:
    await env.import_example()
    response = await env.client.get(
        "/api/v1/users", params={"q": q, "tenant": "eksempel-kommune"}, headers=env.auth("admin")
    )
    assert response.status == 200
    assert [u["ref"] for u in (await response.json())["users"]] == refs


async def test_one_user_with_plan_devices_and_contacts(env: Env) -> None:
    await env.import_example()
    response = await env.client.get(
        "/api/v1/users/eksempel-kommune/u-1001", headers=env.auth("ta-eksempel")
    )
    assert response.status == 200
    user = await response.json()
    assert (user["first_name"], user["last_name"], user["phone"]) == (
        "Astrid",
        "Testesen",
        "+4700000001",
    )
    assert [(d["protocol"], d["identity"], d["group"]) for d in user["devices"]] == [
        ("dc09", "1234", 1),
        ("mqtt", "fall-0001", 3),
    ]
    assert user["plan"]["key_box"] == "Nøkkelboks ved inngangsdøren, kode i kodeboka"
    assert user["plan"]["version"] == 1
    assert user["plan"]["home_care_team"] == "hjemmetjeneste-sentrum"
    assert [(c["position"], c["name"], c["has_key"]) for c in user["contacts"]] == [
        (1, "Per Testesen", True),
        (2, "Nina Naboesen", False),
    ]
    assert user["contacts"][0]["channels"] == {"sms": "+4700000030"}
    assert user["contacts"][0]["id"].startswith("contact:")


async def test_another_tenants_user_is_not_found_as_if_absent(env: Env) -> None:
    await env.import_example()
    hidden = await env.client.get(
        "/api/v1/users/eksempel-kommune/u-1001", headers=env.auth("op-demo")
    )
    absent = await env.client.get(
        "/api/v1/users/eksempel-kommune/u-9999", headers=env.auth("op-demo")
    )
    assert hidden.status == absent.status == 404
    assert (await hidden.json())["error"] == (await absent.json())["error"] == "not_found"
    response = await env.client.get("/api/v1/users/demo-bydel/2001", headers=env.auth("op-demo"))
    assert response.status == 200


async def test_user_reading_roles_and_parameters(env: Env) -> None:
    await env.import_example()
    for path in ("/api/v1/users", "/api/v1/users/eksempel-kommune/u-1001"):
        response = await env.client.get(path, headers=env.auth("supplier"))
        assert response.status == 403
        response = await env.client.get(path, headers=env.auth("kari"))
        assert response.status == 200
        response = await env.client.get(path + "?colour=blue", headers=env.auth("admin"))
        assert response.status == 400
        assert "unknown parameter(s): colour" in (await response.json())["message"]
    response = await env.client.get("/api/v1/users?limit=0", headers=env.auth("admin"))
    assert response.status == 400
    response = await env.client.get("/api/v1/users")
    assert response.status == 401


# --- duty ----------------------------------------------------------------------------------


async def duty_of(env: Env, ref: str) -> list[tuple[Any, ...]]:
    return await env.rows(
        "SELECT t.ref, m.on_duty FROM team_members m JOIN teams t ON t.id = m.team_id"
        " JOIN staff s ON s.id = m.staff_id WHERE s.ref = ?",
        ref,
    )


async def test_supervisor_signs_staff_off_and_on(env: Env) -> None:
    await env.import_example()
    url = "/api/v1/staff/eksempel-kommune/kari-n/duty"
    response = await env.client.post(
        url,
        json={"on_duty": False, "team": "hjemmetjeneste-sentrum"},
        headers=env.auth("sup-eksempel"),
    )
    assert response.status == 200
    body = await response.json()
    assert body["teams"] == [{"team": "hjemmetjeneste-sentrum", "on_duty": False}]
    assert body["person"].startswith("staff:")
    assert await duty_of(env, "kari-n") == [("hjemmetjeneste-sentrum", 0)]
    assert await duty_of(env, "ola-h") == [("hjemmetjeneste-sentrum", 1)]
    response = await env.client.post(url, json={"on_duty": True}, headers=env.auth("admin"))
    assert response.status == 200
    assert await duty_of(env, "kari-n") == [("hjemmetjeneste-sentrum", 1)]
    # A re-import of the directory keeps what staff signed.
    await env.client.post(url, json={"on_duty": False}, headers=env.auth("admin"))
    await env.import_example()
    assert await duty_of(env, "kari-n") == [("hjemmetjeneste-sentrum", 0)]


async def test_home_care_token_signs_only_its_own_person(env: Env) -> None:
    await env.import_example()
    (staff_id,) = (await env.rows("SELECT id FROM staff WHERE ref = 'kari-n'"))[0]
    await env.store.writer.submit(
        lambda c: c.execute(
            "UPDATE api_tokens SET person = ? WHERE name = 'kari'", (f"staff:{staff_id}",)
        )
    )
    response = await env.client.post(
        "/api/v1/staff/eksempel-kommune/kari-n/duty",
        json={"on_duty": False},
        headers=env.auth("kari"),
    )
    assert response.status == 200
    assert await duty_of(env, "kari-n") == [("hjemmetjeneste-sentrum", 0)]
    response = await env.client.post(
        "/api/v1/staff/eksempel-kommune/ola-h/duty",
        json={"on_duty": False},
        headers=env.auth("kari"),
    )
    assert response.status == 403
    assert await duty_of(env, "ola-h") == [("hjemmetjeneste-sentrum", 1)]


@pytest.mark.parametrize(
    ("token", "path", "body", "status", "error"),
    [
        ("op-demo", "eksempel-kommune/kari-n", {"on_duty": True}, 403, "forbidden"),
        ("auditor", "eksempel-kommune/kari-n", {"on_duty": True}, 403, "forbidden"),
        ("kari", "eksempel-kommune/kari-n", {"on_duty": True}, 403, "forbidden"),  # no person
        ("sup-eksempel", "demo-bydel/kari-n", {"on_duty": True}, 404, "not_found"),
        ("admin", "eksempel-kommune/nobody", {"on_duty": True}, 404, "not_found"),
        ("admin", "eksempel-kommune/kari-n", {"on_duty": "yes"}, 400, "bad_request"),
        ("admin", "eksempel-kommune/kari-n", {"on_duty": True, "x": 1}, 400, "bad_request"),
        ("admin", "eksempel-kommune/kari-n", [True], 400, "bad_request"),
        ("admin", "eksempel-kommune/kari-n", {"on_duty": True, "team": "natt"}, 404, "not_found"),
        ("admin", "eksempel-kommune/supplier-desk", {"on_duty": True}, 409, "not_a_member"),
    ],
)
async def test_duty_refusals(
    env: Env, token: str, path: str, body: Any, status: int, error: str
) -> None:
    await env.import_example()
    response = await env.client.post(
        f"/api/v1/staff/{path}/duty", json=body, headers=env.auth(token)
    )
    assert response.status == status
    assert (await response.json())["error"] == error
    assert await duty_of(env, "kari-n") == [("hjemmetjeneste-sentrum", 1)]


async def test_an_oversized_import_is_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("alarmd.api.directory.MAX_IMPORT_BYTES", 100)
    response = await env.client.post(
        "/api/v1/directory/import", data=b"#" * 101, headers=env.auth("admin", **YAML)
    )
    assert response.status == 413
    assert (await response.json())["error"] == "too_large"


async def test_reading_a_user_is_audited_with_who_and_why(env: Env) -> None:
    await env.import_example()
    response = await env.client.get(
        "/api/v1/users/eksempel-kommune/u-1001?why=case:12", headers=env.auth("ta-eksempel")
    )
    assert response.status == 200
    hidden = await env.client.get(
        "/api/v1/users/eksempel-kommune/u-1001", headers=env.auth("op-demo")
    )
    assert hidden.status == 404  # nothing was read, nothing is recorded
    assert await env.rows(
        "SELECT actor, action, subject, reason FROM audit WHERE action != 'import'"
    ) == [("ta-eksempel", "read_user", "user:eksempel-kommune/u-1001", "case:12")]

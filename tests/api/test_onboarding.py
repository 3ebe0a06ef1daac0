"""Onboarding a municipality (issue 9, item 7) through the real API on 127.0.0.1 over a real
SQLite file: the import's dry run (every bad row named, nothing changed), devices with
serial, supplier and status, plan versions kept, and the export that re-imports as a no-op,
with the ``alarmctl`` commands run against the same server."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from alarmd import cli
from alarmd.admin.onboarding_cli import add_export_arguments, export_command
from alarmd.api.directory import CLOCK
from alarmd.api.server import ApiContext, create_app
from alarmd.clock import FakeClock
from alarmd.store import tokens
from alarmd.store.db import Store

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_YAML = REPO / "config" / "directory.example.yaml"
T0 = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)
YAML = {"Content-Type": "application/yaml"}
CSV = {"Content-Type": "text/csv"}
TOKENS = [
    ("admin", "admin", None),
    ("ta-eksempel", "tenant_admin", ("eksempel-kommune",)),
    ("ta-demo", "tenant_admin", ("demo-bydel",)),
    ("op", "operator", None),
]


@dataclass
class Env:
    client: TestClient
    store: Store
    path: Path
    tokens: dict[str, str]

    def auth(self, name: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}", **extra}

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.store.reader.execute(sql, args) as cursor:
            return [tuple(r) for r in await cursor.fetchall()]

    async def post(
        self, body: str | bytes, headers: dict[str, str], query: str = "", token: str = "admin"
    ) -> tuple[int, dict[str, Any]]:
        response = await self.client.post(
            f"/api/v1/directory/import{query}", data=body, headers=self.auth(token, **headers)
        )
        return response.status, await response.json()

    async def export(self, tenant: str, fmt: str = "yaml", token: str = "admin") -> str:
        response = await self.client.get(
            f"/api/v1/directory/export?tenant={tenant}&format={fmt}", headers=self.auth(token)
        )
        assert response.status == 200, await response.text()
        return await response.text()

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, read from the file by a connection of its own."""
        conn = sqlite3.connect(self.path)
        try:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            return {n: conn.execute(f"SELECT * FROM {n} ORDER BY rowid").fetchall() for n in names}
        finally:
            conn.close()

    @property
    def base(self) -> str:
        return str(self.client.make_url("")).rstrip("/")


async def open_env(path: Path) -> tuple[Env, TestClient]:
    store = await Store.open(path)
    issued = {}
    for name, role, scope in TOKENS:
        token = tokens.new_token()
        await store.writer.submit(tokens.create_job(name, role, scope, token, T0))
        issued[name] = token
    app = create_app(ApiContext(store=store, health=lambda: {"status": "ok"}))
    app[CLOCK] = FakeClock(T0)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return Env(client, store, path, issued), client


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    opened, client = await open_env(tmp_path / "a.sqlite")
    yield opened
    await client.close()
    await opened.store.close()


@pytest.fixture
async def empty(tmp_path: Path) -> AsyncIterator[Env]:
    opened, client = await open_env(tmp_path / "b.sqlite")
    yield opened
    await client.close()
    await opened.store.close()


async def import_example(env: Env) -> None:
    status, body = await env.post(EXAMPLE_YAML.read_bytes(), YAML)
    assert status == 200, body


def without_dry_run_audit(
    before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]
) -> list[tuple[Any, ...]]:
    """Check that ``after`` is ``before`` plus audit rows only; return the new audit rows."""
    assert {k: v for k, v in after.items() if k != "audit"} == {
        k: v for k, v in before.items() if k != "audit"
    }
    assert after["audit"][: len(before["audit"])] == before["audit"]
    return after["audit"][len(before["audit"]) :]


# --- dry run ---------------------------------------------------------------------------------

BAD_CSV = """\
# a municipality's first export, with mistakes on rows 3-9
tenant;ref;first_name;last_name;postcode;device_protocol;device_identity;device_supplier;home_care_team
eksempel-kommune;u-2001;Anne;Ok;0101;dc09;2001;;hjemmetjeneste-sentrum
eksempel-kommune;u-2002;Berit;Postnummer;12345;dc09;2002;;
eksempel-kommune;u-2003;Carl;Protokoll;0103;dc10;2003;;
eksempel-kommune;u-2004;Dina;Dobbel;0104;dc09;2001;;
eksempel-kommune;u-2005;Even;Annen;0105;dc09;36214;;
eksempel-kommune;u-2006;Frode;Team;0106;dc09;2006;;hjemmetjeneste-nord
eksempel-kommune;u-2007;;Fornavn;0107;dc09;2007;;
eksempel-kommune;u-2008;Gro;Leverandør;0108;dc09;2008;ukjent-as;
eksempel-kommune;u-2009;Hege;Ok;0109;mqtt;hege-1;;
"""


async def test_csv_dry_run_names_every_bad_row_and_changes_nothing(env: Env) -> None:
    await import_example(env)
    before = env.dump()
    status, body = await env.post(BAD_CSV, CSV, "?dry_run=true&filename=ny.csv", "ta-eksempel")
    assert status == 200
    assert body["dry_run"] is True and body["ok"] is False
    assert body["message"] == "ny.csv would not be imported: 7 problems"
    assert body["problems"] == [
        "ny.csv:4:5: postcode: '12345' is not a postcode: 4 digits",
        "ny.csv:5:6: device_protocol: 'dc10' is not a protocol: one of dc09, scaip, mqtt, sms;"
        " did you mean 'dc09'?",
        "ny.csv:6:7: device_identity: duplicate device dc09 '2001', first defined on line 3",
        # conflicts with what is stored, found for the rows that parse, in the same list
        "ny.csv:7:7: device_identity: device dc09 '36214' is registered to another tenant;"
        " a device never moves between municipalities by import: unregister it there first",
        "ny.csv:8:9: home_care_team: no team 'hjemmetjeneste-nord' is stored for tenant"
        " eksempel-kommune; create it with a YAML import first",
        "ny.csv:9:3: first_name: required, but the cell is empty",
        "ny.csv:10:8: device_supplier: no supplier 'ukjent-as' is stored or given in the"
        " file's suppliers",
    ]
    # The database is unchanged but for the one row that says a dry run was made.
    added = without_dry_run_audit(before, env.dump())
    assert [row[2:] for row in added] == [
        ("ta-eksempel", "tenant_admin", "import_dry_run", "tenant:eksempel-kommune", "ny.csv")
    ]
    # The real import refuses the same file, also having changed nothing.
    status, body = await env.post(BAD_CSV, CSV, "?filename=ny.csv", "ta-eksempel")
    assert status == 400
    assert len(body["problems"]) == 4  # the parse problems; conflicts come once it parses


BAD_YAML = """\
suppliers:
  - {id: trygg-teknikk, name: Trygg Teknikk AS}
  - {id: trygg-teknikk, name: Trygg Teknikk AS}
tenants:
  - id: eksempel-kommune
    name: Eksempel kommune
    users:
      - ref: u-3001
        first_name: Ida
        last_name: Ok
        devices:
          - {protocol: dc09, identity: "3001", supplier: trygg-teknikk, serial: SN-1}
      - ref: u-3002
        first_name: Jon
        last_name: Postnummer
        postcode: "12"
      - ref: u-3003
        first_name: Kari
        last_name: Protokoll
        devices: [{protocol: sip, identity: "3003"}]
      - ref: u-3004
        first_name: Lars
        last_name: Dobbel
        devices: [{protocol: dc09, identity: "3001"}]
      - ref: u-3005
        first_name: Mona
        last_name: Annen
        devices: [{protocol: dc09, identity: "21401"}]
      - ref: u-3006
        first_name: Nils
        last_name: Team
        plan: {home_care_team: nord}
      - ref: u-3007
        last_name: Fornavn
      - ref: u-3008
        first_name: Ola
        last_name: Leverandør
        devices: [{protocol: dc09, identity: "3008", supplier: trygg-teknik}]
      - ref: u-3009
        first_name: Pia
        last_name: Status
        devices: [{protocol: dc09, identity: "3009", status: broken}]
"""


async def test_yaml_dry_run_names_every_bad_entry_and_changes_nothing(env: Env) -> None:
    await import_example(env)
    before = env.dump()
    status, body = await env.post(BAD_YAML, YAML, "?dry_run=true&filename=ny.yaml")
    assert status == 200
    assert body["ok"] is False
    problems = body["problems"]
    assert problems == [
        "ny.yaml:3:10: suppliers[1].id: duplicate supplier 'trygg-teknikk', first defined on"
        " line 2",
        "ny.yaml:16:19: tenants[0].users[1].postcode: '12' is not a postcode: 4 digits",
        "ny.yaml:20:30: tenants[0].users[2].devices[0].protocol: input should be 'dc09',"
        " 'scaip', 'mqtt' or 'sms'",
        "ny.yaml:24:46: tenants[0].users[3].devices[0].identity: duplicate device dc09 '3001',"
        " first defined on line 12",
        # conflicts with what is stored, found for the entries that validate
        "ny.yaml:28:46: tenants[0].users[4].devices[0].identity: device dc09 '21401' is"
        " registered to another tenant; a device never moves between municipalities by"
        " import: unregister it there first",
        "ny.yaml:32:32: tenants[0].users[5].plan.home_care_team: no team 'nord' is stored for"
        " tenant eksempel-kommune; create it with a YAML import first",
        "ny.yaml:33:9: tenants[0].users[6].first_name: required key is missing",
        "ny.yaml:38:64: tenants[0].users[7].devices[0].supplier: no supplier 'trygg-teknik' is"
        " stored or given in the file's suppliers; did you mean 'trygg-teknikk'?",
        "ny.yaml:42:62: tenants[0].users[8].devices[0].status: input should be 'in_stock',"
        " 'ordered', 'installed', 'active', 'faulty' or 'removed'",
    ]
    added = without_dry_run_audit(before, env.dump())
    assert [row[4:6] for row in added] == [("import_dry_run", "tenant:eksempel-kommune")]


async def test_dry_run_of_a_good_file_says_what_the_import_would_do(env: Env) -> None:
    before = env.dump()
    status, dry = await env.post(EXAMPLE_YAML.read_bytes(), YAML, "?dry_run=true")
    assert status == 200
    assert dry["ok"] is True and dry["problems"] == [] and dry["changed"] is True
    assert dry["users"] == {"created": 5, "updated": 0, "unchanged": 0, "removed": 0}
    added = without_dry_run_audit(before, env.dump())
    assert [row[5] for row in added] == ["tenant:eksempel-kommune,tenant:demo-bydel"]
    status, real = await env.post(EXAMPLE_YAML.read_bytes(), YAML)
    assert status == 200
    assert {k: v for k, v in dry.items() if k not in ("dry_run", "ok", "problems")} == real
    assert await env.rows(
        "SELECT action, subject FROM audit WHERE action = 'import' ORDER BY id"
    ) == [("import", "tenant:eksempel-kommune"), ("import", "tenant:demo-bydel")]
    # A dry run is scoped like the import, and only the import roles may make one.
    status, _ = await env.post(EXAMPLE_YAML.read_bytes(), YAML, "?dry_run=true", "ta-demo")
    assert status == 403
    status, _ = await env.post(EXAMPLE_YAML.read_bytes(), YAML, "?dry_run=true", "op")
    assert status == 403
    status, _ = await env.post(EXAMPLE_YAML.read_bytes(), YAML, "?dry_run=maybe")
    assert status == 400


async def test_dry_run_of_a_file_that_cannot_be_read(env: Env) -> None:
    before = env.dump()
    status, body = await env.post(b"tenants: [\n", YAML, "?dry_run=1&filename=x.yaml")
    assert status == 200
    assert body["ok"] is False
    assert len(body["problems"]) == 1 and body["problems"][0].startswith("x.yaml:2:1: YAML")
    assert [r[5] for r in without_dry_run_audit(before, env.dump())] == ["directory"]


# --- devices: serial, supplier, status ---------------------------------------------------------

DEVICES = """\
suppliers:
  - {id: trygg-teknikk, name: Trygg Teknikk AS, email: service@trygg.example, phone: "+4700000090"}
tenants:
  - id: eksempel-kommune
    name: Eksempel kommune
    users:
      - ref: u-1
        first_name: Astrid
        last_name: Testesen
        devices:
          - {protocol: dc09, identity: "4001", serial: SN-4001, supplier: trygg-teknikk}
          - {protocol: mqtt, identity: door-4001, status: in_stock}
"""


async def test_devices_carry_serial_supplier_and_status(env: Env) -> None:
    status, body = await env.post(DEVICES, YAML)
    assert status == 200, body
    assert body["suppliers"]["created"] == 1
    devices = "SELECT identity, serial, supplier, status, status_at FROM devices ORDER BY id"
    assert await env.rows(devices) == [
        ("4001", "SN-4001", "trygg-teknikk", "active", "2026-11-24T20:00:00.000000Z"),
        ("door-4001", "", None, "in_stock", "2026-11-24T20:00:00.000000Z"),
    ]
    # The life cycle moves a device on; an import that does not say a status keeps it.
    await env.store.writer.submit(
        lambda c: c.execute("UPDATE devices SET status = 'faulty' WHERE identity = '4001'")
    )
    status, body = await env.post(DEVICES, YAML)
    assert body["devices"] == {"created": 0, "updated": 0, "unchanged": 2, "removed": 0}
    assert (await env.rows(devices))[0][3] == "faulty"
    # CSV columns: an absent column keeps, an empty serial or supplier cell clears.
    text = (
        "tenant,ref,first_name,last_name,device_protocol,device_identity,device_serial,"
        "device_supplier,device_status\n"
        "eksempel-kommune,u-1,Astrid,Testesen,dc09,4001,SN-9,,removed\n"
        "eksempel-kommune,u-1,,,mqtt,door-4001,,trygg-teknikk,\n"
    )
    status, body = await env.post(text, CSV)
    assert status == 200, body
    assert [r[:4] for r in await env.rows(devices)] == [
        ("4001", "SN-9", None, "removed"),
        ("door-4001", "", "trygg-teknikk", "in_stock"),
    ]


async def test_only_an_admin_may_change_a_stored_supplier(env: Env) -> None:
    assert (await env.post(DEVICES, YAML))[0] == 200
    renamed = DEVICES.replace("Trygg Teknikk AS", "Trygg Teknikk ASA")
    status, body = await env.post(renamed, YAML, token="ta-eksempel")
    assert status == 409
    assert body["problems"] == [
        "upload.yaml:2:5: suppliers[0]: supplier 'trygg-teknikk' is stored with other"
        " details; a supplier serves several municipalities, so only an admin may change it"
    ]
    assert (await env.post(DEVICES, YAML, token="ta-eksempel"))[0] == 200  # same: fine
    status, body = await env.post(renamed, YAML)
    assert body["suppliers"]["updated"] == 1


# --- plan versions -----------------------------------------------------------------------------


async def test_import_keeps_every_plan_version(env: Env) -> None:
    await import_example(env)
    changed = (
        EXAMPLE_YAML.read_text(encoding="utf-8")
        .replace("Ring først. Hører dårlig", "Ring to ganger. Hører dårlig")
        .replace("relation: neighbour", "relation: friend")
    )
    status, body = await env.post(changed, YAML)
    assert status == 200 and body["plans"]["updated"] == 1
    versions = await env.rows(
        "SELECT v.version, v.changed, v.changed_by, json_extract(v.plan, '$.instructions')"
        " FROM response_plan_versions v JOIN service_users u ON u.id = v.user_id"
        " WHERE u.ref = 'u-1001' ORDER BY v.version"
    )
    assert versions == [
        (1, "created", "api:admin", "Ring først. Hører dårlig; la telefonen ringe lenge."),
        (
            2,
            "instructions, contacts",
            "api:admin",
            "Ring to ganger. Hører dårlig; la telefonen ringe lenge.",
        ),
    ]
    # the other users' plans were not changed: their first version is the only one
    assert await env.rows("SELECT count(*) FROM response_plan_versions") == [(6,)]


# --- export ------------------------------------------------------------------------------------


async def test_export_reimports_as_a_no_op_and_round_trips_byte_for_byte(
    env: Env, empty: Env
) -> None:
    await import_example(env)
    assert (await env.post(DEVICES.replace("u-1", "u-9"), YAML))[0] == 200
    yaml_text = await env.export("eksempel-kommune")
    csv_text = await env.export("eksempel-kommune", "csv")
    assert "trygg-teknikk" in yaml_text and "SN-4001" in yaml_text and "in_stock" in yaml_text
    for text, headers in ((yaml_text, YAML), (csv_text, CSV)):
        status, body = await env.post(text, headers)
        assert status == 200, body
        assert body["changed"] is False
        counts = [v for k, v in body.items() if isinstance(v, dict)]
        assert all(c["created"] == c["updated"] == c["removed"] == 0 for c in counts)
    # Into an empty centre: the same directory, and its export is the same file.
    status, body = await empty.post(yaml_text, YAML)
    assert status == 200, body
    assert await empty.export("eksempel-kommune") == yaml_text
    assert await empty.export("eksempel-kommune", "csv") == csv_text


async def test_export_is_audited_scoped_and_leaves_out_erased_users(env: Env) -> None:
    await import_example(env)
    response = await env.client.get(
        "/api/v1/directory/export?tenant=eksempel-kommune&format=csv&why=onboarding",
        headers=env.auth("ta-eksempel"),
    )
    assert response.status == 200
    assert response.content_type == "text/csv"
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="eksempel-kommune.csv"'
    )
    assert await env.rows(
        "SELECT actor, action, subject, reason FROM audit WHERE action = 'export'"
    ) == [("ta-eksempel", "export", "tenant:eksempel-kommune", "onboarding")]
    for query, token, status in (
        ("tenant=demo-bydel", "ta-eksempel", 403),
        ("tenant=eksempel-kommune", "op", 403),
        ("tenant=ingen", "admin", 404),
        ("tenant=eksempel-kommune&format=xml", "admin", 400),
        ("format=yaml", "admin", 400),
        ("tenant=eksempel-kommune&colour=red", "admin", 400),
    ):
        response = await env.client.get(
            f"/api/v1/directory/export?{query}", headers=env.auth(token)
        )
        assert response.status == status, query
    assert len(await env.rows("SELECT 1 FROM audit WHERE action = 'export'")) == 1
    await env.store.writer.submit(
        lambda c: c.execute(
            "UPDATE service_users SET erased_at = '2026-11-24T20:00:00Z', first_name = '',"
            " last_name = '' WHERE ref = 'u-1002'"
        )
    )
    text = await env.export("eksempel-kommune")
    assert "u-1002" not in text and "Prøvesen" not in text and "u-1001" in text


# --- alarmctl --------------------------------------------------------------------------------


def ctl_args(env: Env, tmp_path: Path, **extra: Any) -> argparse.Namespace:
    return argparse.Namespace(
        api=env.base, token=env.tokens["admin"], data_dir=tmp_path / "none", **extra
    )


async def test_alarmctl_admin_export_and_import_dry_run(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await import_example(env)
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    out = tmp_path / "eksempel.yaml"
    parsed = parser.parse_args(["--tenant", "eksempel-kommune", "-o", str(out)])
    args = ctl_args(env, tmp_path, **vars(parsed))
    assert await asyncio.to_thread(export_command, args) == 0
    assert out.read_text(encoding="utf-8") == await env.export("eksempel-kommune")
    assert out.stat().st_mode & 0o777 == 0o600
    parsed = parser.parse_args(["--tenant", "eksempel-kommune", "--format", "csv"])
    assert await asyncio.to_thread(export_command, ctl_args(env, tmp_path, **vars(parsed))) == 0
    assert capsys.readouterr().out.startswith("# alarmd directory export")
    parsed = parser.parse_args(["--tenant", "demo-bydel"])
    args = ctl_args(env, tmp_path, **vars(parsed))
    args.token = env.tokens["ta-eksempel"]
    assert await asyncio.to_thread(export_command, args) == 1
    assert "403 forbidden" in capsys.readouterr().err

    # alarmctl import --dry-run: the problems by row on stderr, exit 1, nothing changed
    bad = tmp_path / "ny.csv"
    bad.write_text(BAD_CSV, encoding="utf-8")
    before = env.dump()
    args = ctl_args(env, tmp_path, command="import", file=bad, dry_run=True)
    assert await asyncio.to_thread(cli._import, args) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4:5: postcode: '12345' is not a postcode: 4 digits" in err
    assert f"{bad}:10:8: device_supplier: no supplier 'ukjent-as'" in err
    assert "7 problems; nothing changed" in err
    without_dry_run_audit(before, env.dump())
    args = ctl_args(env, tmp_path, command="import", file=out, dry_run=True)
    assert await asyncio.to_thread(cli._import, args) == 0
    assert '"changed": false' in capsys.readouterr().out

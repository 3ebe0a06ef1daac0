"""alarmd.store.directory_import: the YAML and CSV parsers (every rule with its exact
file:line:col) and the import job on a real SQLite store (upsert, idempotence, plan
versions, contacts and team members replaced, devices never moved between tenants).

One fixture file per rule lives in tests/fixtures/directory/.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alarmd.config import ConfigError
from alarmd.store.db import Store, iso
from alarmd.store.directory_import import (
    DirectoryData,
    ImportConflict,
    ImportSummary,
    import_job,
    normalise_identity,
    normalise_phone,
    parse_directory,
    parse_directory_bytes,
    parse_directory_text,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_YAML = REPO / "config" / "directory.example.yaml"
EXAMPLE_CSV = REPO / "config" / "directory.example.csv"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "directory"
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TABLES = (
    "tenants",
    "service_users",
    "contacts",
    "devices",
    "response_plans",
    "staff",
    "teams",
    "team_members",
)

BASE = """\
tenants:
  - id: eksempel-kommune
    name: Eksempel kommune
    teams:
      - {ref: sentrum, name: Sentrum, members: [kari-n, ola-h]}
    staff:
      - {ref: kari-n, name: Kari Nordmann, channels: {sms: "+4700000050", mqtt: kari-n}}
      - {ref: ola-h, name: Ola Hansen, channels: {sms: "+4700000051"}}
      - {ref: per-s, name: Per Sørensen}
    users:
      - ref: u-1
        first_name: Astrid
        last_name: Testesen
        devices:
          - {protocol: dc09, identity: "1234"}
          - {protocol: mqtt, identity: fall-1, type: fall_detector, group: 3}
        plan: {instructions: Ring først., key_box: Boks ved døren, home_care_team: sentrum}
        contacts:
          - {name: Per Testesen, relation: son, phone: "+4700000030", has_key: true}
          - {name: Nina Naboesen, relation: neighbour, phone: "+4700000031"}
      - ref: u-2
        first_name: Bjarne
        last_name: Prøvesen
"""
PER = '          - {name: Per Testesen, relation: son, phone: "+4700000030", has_key: true}\n'
NINA = '          - {name: Nina Naboesen, relation: neighbour, phone: "+4700000031"}\n'
assert PER + NINA in BASE


def problems_of(name: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_directory(FIXTURES / name)
    return [str(p) for p in caught.value.problems]


def text_problems(text: str, fmt: Any = "yaml", name: str = "d.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_directory_text(text, name, fmt)
    return [str(p) for p in caught.value.problems]


def yaml(text: str) -> DirectoryData:
    return parse_directory_text(text, "d.yaml", "yaml")


def csv_(text: str) -> DirectoryData:
    return parse_directory_text(text, "d.csv", "csv")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "directory.sqlite")
    yield opened
    await opened.close()


async def run(
    store: Store, data: DirectoryData, actor: str = "tester", now: datetime = T0
) -> ImportSummary:
    return await store.writer.submit(import_job(data, now, actor))


async def rows(store: Store, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async with store.reader.execute(sql, args) as cursor:
        return [tuple(r) for r in await cursor.fetchall()]


async def table_counts(store: Store) -> dict[str, int]:
    return {t: (await rows(store, f"SELECT count(*) FROM {t}"))[0][0] for t in TABLES}


def created_updated(summary: ImportSummary) -> dict[str, tuple[int, int, int]]:
    return {
        name: (counts["created"], counts["updated"], counts["removed"])
        for name, counts in summary.to_json().items()
        if name != "changed"
    }


# --- the example files ---------------------------------------------------------------------


def test_example_yaml_parses() -> None:
    data = parse_directory(EXAMPLE_YAML)
    assert data.format == "yaml"
    assert data.tenant_ids == ("eksempel-kommune", "demo-bydel")
    eksempel, demo = data.tenants
    assert eksempel.teams is not None and eksempel.staff is not None
    (team,) = eksempel.teams
    assert (team.ref, team.members) == ("hjemmetjeneste-sentrum", ("kari-n", "ola-h"))
    desk = next(s for s in eksempel.staff if s.ref == "supplier-desk")
    assert (desk.role, dict(desk.channels)) == ("supplier", {"webhook": "supplier-desk"})
    linked = {d.identity for t in data.tenants for u in t.users for d in u.devices}
    assert {"1234", "5678", "ABC123", "36214", "21401"} <= linked
    assert "DEF456" not in linked  # unlinked on purpose, as its comment says
    astrid = eksempel.users[0]
    assert [c.name for c in astrid.contacts] == ["Per Testesen", "Nina Naboesen"]
    assert astrid.plan.home_care_team == "hjemmetjeneste-sentrum"
    assert demo.teams is None and demo.staff is None
    # Only +47000000xx: no Norwegian number starts with 0, so none can reach a real person.
    for path in (EXAMPLE_YAML, EXAMPLE_CSV):
        numbers = re.findall(r"\+[0-9]{6,}(?![0-9A-Za-z])", path.read_text(encoding="utf-8"))
        assert numbers
        assert all(re.fullmatch(r"\+47000000[0-9]{2}", p) for p in numbers), numbers


async def test_example_files_import_and_reimport_changes_nothing(store: Store) -> None:
    first = await run(store, parse_directory(EXAMPLE_YAML))
    assert created_updated(first) == {
        "tenants": (2, 0, 0),
        "teams": (1, 0, 0),
        "staff": (3, 0, 0),
        "users": (5, 0, 0),
        "devices": (8, 0, 0),
        "plans": (5, 0, 0),
        "contacts": (5, 0, 0),
        "suppliers": (1, 0, 0),
    }
    csv_summary = await run(store, parse_directory(EXAMPLE_CSV))
    assert created_updated(csv_summary)["users"] == (3, 0, 0)
    assert created_updated(csv_summary)["devices"] == (4, 0, 0)
    assert csv_summary.tenants.unchanged == 2
    before = await table_counts(store)
    for path in (EXAMPLE_YAML, EXAMPLE_CSV):
        again = await run(store, parse_directory(path), actor="someone-else")
        assert not again.changed
        assert all(c == (0, 0, 0) for c in created_updated(again).values())
    assert await table_counts(store) == before
    assert await rows(store, "SELECT DISTINCT version, updated_by FROM response_plans") == [
        (1, "tester")
    ]
    # The unit in the CSV with two rows got both its devices.
    assert await rows(
        store,
        "SELECT d.protocol, d.identity FROM devices d JOIN service_users u ON u.id = d.user_id"
        " WHERE u.ref = 'u-1102' ORDER BY d.identity",
    ) == [("sms", "+4700000061"), ("mqtt", "bed-1102")]


async def test_yaml_import_writes_the_directory(store: Store) -> None:
    await run(store, yaml(BASE), now=T0)
    assert await rows(store, "SELECT id, name, updated_at FROM tenants") == [
        ("eksempel-kommune", "Eksempel kommune", iso(T0))
    ]
    assert await rows(store, "SELECT ref, role, channels, active FROM staff ORDER BY ref") == [
        ("kari-n", "home_care", '{"mqtt":"kari-n","sms":"+4700000050"}', 1),
        ("ola-h", "home_care", '{"sms":"+4700000051"}', 1),
        ("per-s", "home_care", "{}", 1),
    ]
    assert await rows(
        store,
        "SELECT s.ref, m.position, m.on_duty FROM team_members m JOIN staff s ON s.id = m.staff_id"
        " ORDER BY m.position",
    ) == [("kari-n", 1, 1), ("ola-h", 2, 1)]
    assert await rows(
        store,
        "SELECT u.ref, d.tenant, d.protocol, d.identity, d.device_type, d.device_group"
        " FROM devices d JOIN service_users u ON u.id = d.user_id ORDER BY d.identity",
    ) == [
        ("u-1", "eksempel-kommune", "dc09", "1234", "", 1),
        ("u-1", "eksempel-kommune", "mqtt", "fall-1", "fall_detector", 3),
    ]
    assert await rows(
        store,
        "SELECT u.ref, p.version, p.instructions, p.key_box, p.home_care_team, p.mode_override,"
        " p.updated_by FROM response_plans p JOIN service_users u ON u.id = p.user_id"
        " ORDER BY u.ref",
    ) == [
        ("u-1", 1, "Ring først.", "Boks ved døren", "sentrum", None, "tester"),
        ("u-2", 1, "", "", None, None, "tester"),  # no plan in the file: an empty one
    ]
    assert await rows(
        store, "SELECT position, name, relation, phone, has_key FROM contacts ORDER BY position"
    ) == [
        (1, "Per Testesen", "son", "+4700000030", 1),
        (2, "Nina Naboesen", "neighbour", "+4700000031", 0),
    ]


# --- YAML rules, one fixture each ------------------------------------------------------------


def test_unknown_keys_with_hints() -> None:
    f = FIXTURES / "unknown_keys.yaml"
    assert problems_of("unknown_keys.yaml") == [
        f"{f}:6:9: tenants[0].users[0].first_name: required key is missing",
        f"{f}:7:9: tenants[0].users[0].first_nme: unknown key; did you mean 'first_name'?",
        f"{f}:10:48: tenants[0].users[0].devices[0].colour: unknown key; expected one of:"
        " protocol, identity, type, group, supervision_s, serial, supplier, status",
        f"{f}:12:45: tenants[0].users[0].contacts[0].channels.smss: unknown key;"
        " did you mean 'sms'?",
        f"{f}:13:5: tenants[0].teamz: unknown key; did you mean 'teams'?",
    ]


def test_team_member_must_be_staff_of_the_same_tenant() -> None:
    f = FIXTURES / "unknown_member.yaml"
    assert problems_of("unknown_member.yaml") == [
        f"{f}:6:57: tenants[0].teams[0].members[1]: 'kari-m' is not a staff ref of tenant"
        " eksempel-kommune; did you mean 'kari-n'?",
        f"{f}:12:49: tenants[1].teams[0].members[0]: 'kari-n' is not a staff ref of tenant"
        " demo-bydel",
    ]


def test_plan_team_must_be_a_team_of_the_same_tenant() -> None:
    f = FIXTURES / "unknown_team.yaml"
    assert problems_of("unknown_team.yaml") == [
        f"{f}:11:32: tenants[0].users[0].plan.home_care_team: 'hjemmetjeneste-sentrm' is not"
        " a team of tenant eksempel-kommune; did you mean 'hjemmetjeneste-sentrum'?"
    ]


def test_duplicates_across_the_file() -> None:
    f = FIXTURES / "duplicates.yaml"
    assert problems_of("duplicates.yaml") == [
        f"{f}:7:57: tenants[0].teams[0].members[1]: duplicate member 'kari-n' in this team,"
        " first defined on line 7",
        f"{f}:8:15: tenants[0].teams[1].ref: duplicate team ref 'sentrum', first defined on line 7",
        f"{f}:11:15: tenants[0].staff[1].ref: duplicate staff ref 'kari-n', first defined on"
        " line 10",
        f"{f}:18:14: tenants[0].users[1].ref: duplicate user ref 'u-1', first defined on line 13",
        f"{f}:28:40: tenants[1].users[0].devices[0].identity: duplicate device dc09 'ABC1',"
        " first defined on line 17",
        f"{f}:30:39: tenants[1].users[0].devices[2].identity: duplicate device sms"
        " '+4700000001', first defined on line 29",
        f"{f}:31:9: tenants[2].id: duplicate tenant 'eksempel-kommune', first defined on line 4",
    ]


def test_bad_values() -> None:
    f = FIXTURES / "bad_values.yaml"
    phone = "is not a phone number: write +<country code><number>, e.g. +4700000001, or 8"
    assert problems_of("bad_values.yaml") == [
        f"{f}:4:9: tenants[0].id: a tenant is a slug: lowercase letters a-z, digits and '-'",
        f"{f}:7:50: tenants[0].staff[0].role: input should be 'home_care', 'care_home' or"
        " 'supplier'",
        f"{f}:7:73: tenants[0].staff[0].channels.sms: '12345' {phone} Norwegian digits",
        f"{f}:11:20: tenants[0].users[0].last_name: must not be empty",
        f"{f}:12:19: tenants[0].users[0].postcode: a postcode must be a quoted string, e.g."
        ' "0001": unquoted, YAML reads it as a number',
        f"{f}:13:19: tenants[0].users[0].location: input should be 'home', 'away' or 'care_home'",
        f"{f}:15:40: tenants[0].users[0].devices[0].identity: '12G4' is not a DC-09 account:"
        " 3-16 hex digits (0-9, A-F)",
        f"{f}:16:41: tenants[0].users[0].devices[1].identity: '12a' is not a SCAIP cid:"
        " 1-32 digits",
        f"{f}:17:40: tenants[0].users[0].devices[2].identity: 'has space' is not an MQTT device"
        " id: 1-64 of A-Z a-z 0-9 . _ : -",
        f"{f}:18:39: tenants[0].users[0].devices[3].identity: 'tlf 123' {phone} Norwegian digits",
        f"{f}:19:24: tenants[0].users[0].devices[4].protocol: input should be 'dc09', 'scaip',"
        " 'mqtt' or 'sms'",
        f"{f}:20:40: tenants[0].users[0].devices[5].identity: identity must be a quoted string,"
        ' e.g. "1234": unquoted, YAML reads it as a number',
        f"{f}:21:55: tenants[0].users[0].devices[6].group: a device group is 1 (through the"
        " safety alarm) or 3 (standalone)",
        f"{f}:21:73: tenants[0].users[0].devices[6].supervision_s: input should be greater than 0",
        f"{f}:22:31: tenants[0].users[0].plan.mode_override: input should be 'response',"
        " 'routing' or 'routing_with_backup'",
        f"{f}:24:43: tenants[0].users[0].contacts[0].has_key: expected true or false",
    ]


def test_yaml_syntax_error() -> None:
    f = FIXTURES / "yaml_syntax.yaml"
    assert problems_of("yaml_syntax.yaml") == [
        f"{f}:4:1: YAML syntax error: expected ',' or ']', but got '<stream end>'"
    ]


def test_tenants_key_is_required() -> None:
    assert text_problems("users: []\n") == [
        "d.yaml:1:1: tenants: required key is missing",
        "d.yaml:1:1: users: unknown key; expected one of: suppliers, tenants",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+4700000001", "+4700000001"),
        ("+47 000 00 001", "+4700000001"),
        ("0047-000.000.01", "+4700000001"),
        ("00000001", "+4700000001"),  # 8 digits: Norwegian
        ("(+46) 8 000 000", "+468000000"),
    ],
)
def test_phone_normalisation(text: str, expected: str) -> None:
    assert normalise_phone(text) == expected


@pytest.mark.parametrize("text", ["", "123", "+47", "4700000001", "+0047000001", "tlf 1"])
def test_phone_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a phone number"):
        normalise_phone(text)


def test_identity_normalisation() -> None:
    assert normalise_identity("dc09", "abc123") == "ABC123"
    assert normalise_identity("scaip", "00471") == "00471"  # leading zeros are identity
    assert normalise_identity("mqtt", "Fall-1") == "Fall-1"  # MQTT ids are case-sensitive
    assert normalise_identity("sms", "0047 000 000 01") == "+4700000001"


def test_contacts_keep_list_order() -> None:
    data = yaml(BASE)
    assert [c.name for c in data.tenants[0].users[0].contacts] == [
        "Per Testesen",
        "Nina Naboesen",
    ]


# --- CSV rules -------------------------------------------------------------------------------


def test_csv_header_rules() -> None:
    f = FIXTURES / "csv_header.csv"
    assert problems_of("csv_header.csv") == [
        f"{f}:1:1: required column 'first_name' is missing",
        f"{f}:1:3: unknown column 'first_nme'; did you mean 'first_name'?",
        f"{f}:1:5: column 'device_protocol' needs 'device_identity' too",
        f"{f}:1:6: contact 1 needs a column 'contact1_name'",
        f"{f}:1:7: unknown column 'contact1_colour'; a contact's columns are contact1_name,"
        " contact1_phone, contact1_relation, contact1_has_key, contact1_sms",
    ]


def test_csv_cell_rules() -> None:
    f = FIXTURES / "csv_cells.csv"
    phone = "is not a phone number: write +<country code><number>, e.g. +4700000001, or 8"
    yes_no = "is not yes or no (ja/nei, true/false and 1/0 also do)"
    assert problems_of("csv_cells.csv") == [
        f"{f}:2:5: postcode: '001' is not a postcode: 4 digits",
        f"{f}:2:6: location: 'hytta' is not a location: one of home, away, care_home",
        f"{f}:2:7: active: 'kanskje' {yes_no}",
        f"{f}:2:9: device_identity: '12G4' is not a DC-09 account: 3-16 hex digits (0-9, A-F)",
        f"{f}:2:10: device_group: '2' is not a device group: 1 (through the safety alarm) or 3",
        f"{f}:2:11: device_supervision_s: '0' is not a whole number of seconds above 0",
        f"{f}:2:12: mode_override: 'backup' is not a mode: one of response, routing,"
        " routing_with_backup",
        f"{f}:2:14: contact1_phone: '123' {phone} Norwegian digits",
        f"{f}:2:15: contact1_has_key: 'kanskje' {yes_no}",
        f"{f}:3:1: tenant: 'Eksempel' is not a tenant: a slug of lowercase a-z, digits and '-'",
        f"{f}:3:2: ref: 'u 2' is not a reference: 1-64 of A-Z a-z 0-9 . _ -, starting with a"
        " letter or digit",
        f"{f}:3:3: first_name: required, but the cell is empty",
        f"{f}:3:8: device_protocol: 'sip' is not a protocol: one of dc09, scaip, mqtt, sms;"
        " did you mean 'scaip'?",
        f"{f}:3:13: contact1_name: a contact needs a name",
        f"{f}:4:10: device_group: a device cell on a row without a device",
        f"{f}:4:16: a value beyond the header's 15 columns",
    ]


def test_csv_duplicate_rules() -> None:
    f = FIXTURES / "csv_duplicates.csv"
    differs = (
        "differs from line 3: a further row for user 'u-1' only adds a device; leave this"
        " cell empty or equal to the first row's"
    )
    assert problems_of("csv_duplicates.csv") == [
        f"{f}:5:5: address: {differs}",
        f"{f}:5:8: contact1_name: {differs}",
        f"{f}:6:2: ref: duplicate user 'u-1' of tenant eksempel-kommune, first defined on"
        " line 3; a further row for a user must add a device",
        f"{f}:7:7: device_identity: duplicate device dc09 'ABC1', first defined on line 3",
        f"{f}:8:7: device_identity: duplicate device dc09 'ABC1', first defined on line 3",
    ]


CSV_ROWS = [
    ["tenant", "ref", "first_name", "last_name", "address", "device_protocol", "device_identity"],
    ["eksempel-kommune", "u-1", "Åse", "Ødegård", "Vei 1, 2. etg", "dc09", "abc1"],
]


@pytest.mark.parametrize("delimiter", [",", ";"])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_csv_delimiters_and_bom(delimiter: str, bom: bytes) -> None:
    lines = [delimiter.join(f'"{c}"' if "," in c else c for c in row) for row in CSV_ROWS]
    raw = bom + ("\r\n".join(lines) + "\r\n").encode("utf-8")
    data = parse_directory_bytes(raw, "export.csv", "csv")
    (user,) = data.tenants[0].users
    assert (user.first_name, user.last_name, user.address) == ("Åse", "Ødegård", "Vei 1, 2. etg")
    assert [(d.protocol, d.identity) for d in user.devices] == [("dc09", "ABC1")]


def test_csv_comments_blank_lines_and_multiline_cells_keep_line_numbers() -> None:
    text = (
        '# a comment, with a "quote\n'
        "\n"
        "tenant;ref;first_name;last_name;instructions;postcode\n"
        'eksempel-kommune;u-1;Astrid;Testesen;"Ring først.\nHører dårlig.";0001\n'
        "# another comment\n"
        "eksempel-kommune;u-2;Bjarne;Prøvesen;;12\n"
    )
    assert text_problems(text, "csv", "d.csv") == [
        "d.csv:7:6: postcode: '12' is not a postcode: 4 digits"
    ]
    data = csv_(text.replace(";12\n", ";0012\n"))
    assert data.tenants[0].users[0].plan.instructions == "Ring først.\nHører dårlig."


def test_csv_empty_file_and_bad_utf8() -> None:
    assert text_problems("# only a comment\n", "csv", "d.csv") == [
        "d.csv:1:1: the file is empty; expected a header row"
    ]
    with pytest.raises(ConfigError) as caught:
        parse_directory_bytes(b"tenant,ref\nx,\xff\n", "d.csv", "csv")
    assert [str(p) for p in caught.value.problems] == ["d.csv:2:3: the file is not valid UTF-8"]


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "directory.txt"
    path.write_text("tenants: []\n")
    with pytest.raises(ConfigError, match=re.escape("unknown file type; expected .yaml")):
        parse_directory(path)


# --- the import job ------------------------------------------------------------------------


async def test_plan_version_bumps_only_when_something_changed(store: Store) -> None:
    await run(store, yaml(BASE))
    plan = "SELECT version, instructions, updated_by, p.updated_at FROM response_plans p"
    plan += " JOIN service_users u ON u.id = p.user_id WHERE u.ref = 'u-1'"
    assert await rows(store, plan) == [(1, "Ring først.", "tester", iso(T0))]

    later = T0 + timedelta(hours=1)
    summary = await run(store, yaml(BASE.replace("Ring først.", "Ring to ganger.")), "b", later)
    assert created_updated(summary)["plans"] == (0, 1, 0)
    assert summary.plans.unchanged == 1  # u-2's plan
    assert created_updated(summary)["users"] == (0, 0, 0)
    assert await rows(store, plan) == [(2, "Ring to ganger.", "b", iso(later))]

    again = await run(store, yaml(BASE.replace("Ring først.", "Ring to ganger.")), "c", later)
    assert not again.changed
    assert await rows(store, plan) == [(2, "Ring to ganger.", "b", iso(later))]

    # The contacts are part of the plan: a new order is a new version.
    swapped = BASE.replace("Ring først.", "Ring to ganger.").replace(PER + NINA, NINA + PER)
    assert swapped != BASE
    ids = dict(await rows(store, "SELECT name, id FROM contacts"))
    summary = await run(store, yaml(swapped), "d", later)
    assert created_updated(summary)["plans"] == (0, 1, 0)
    assert created_updated(summary)["contacts"] == (0, 2, 0)
    assert (await rows(store, plan))[0][0] == 3
    # Each person kept their contact id (the contact:<id> in case logs): only the order moved.
    assert await rows(store, "SELECT position, name, id FROM contacts ORDER BY position") == [
        (1, "Nina Naboesen", ids["Nina Naboesen"]),
        (2, "Per Testesen", ids["Per Testesen"]),
    ]


async def test_contacts_are_replaced_by_the_files_list(store: Store) -> None:
    await run(store, yaml(BASE))
    changed = BASE.replace(
        NINA,
        '          - {name: Liv Testesen, relation: daughter, phone: "+4700000032",'
        ' channels: {sms: "+4700000032"}}\n',
    )
    summary = await run(store, yaml(changed))
    assert created_updated(summary)["contacts"] == (1, 0, 1)
    assert summary.contacts.unchanged == 1
    assert await rows(store, "SELECT position, name, channels FROM contacts ORDER BY position") == [
        (1, "Per Testesen", "{}"),
        (2, "Liv Testesen", '{"sms":"+4700000032"}'),
    ]
    none = BASE.replace(PER + NINA, "").replace("        contacts:\n", "")
    summary = await run(store, yaml(none))
    assert created_updated(summary)["contacts"] == (0, 0, 2)
    assert await rows(store, "SELECT count(*) FROM contacts") == [(0,)]


async def test_team_members_replaced_keeping_on_duty(store: Store) -> None:
    await run(store, yaml(BASE))
    await store.writer.submit(
        lambda c: c.execute(
            "UPDATE team_members SET on_duty = 0"
            " WHERE staff_id = (SELECT id FROM staff WHERE ref = 'kari-n')"
        )
    )
    summary = await run(store, yaml(BASE.replace("[kari-n, ola-h]", "[per-s, kari-n]")))
    assert created_updated(summary)["teams"] == (0, 1, 0)
    assert await rows(
        store,
        "SELECT s.ref, m.position, m.on_duty FROM team_members m JOIN staff s ON s.id = m.staff_id"
        " ORDER BY m.position",
    ) == [("per-s", 1, 1), ("kari-n", 2, 0)]  # kari-n is still off duty; ola-h is gone
    again = await run(store, yaml(BASE.replace("[kari-n, ola-h]", "[per-s, kari-n]")))
    assert not again.changed


async def test_device_of_another_tenant_is_refused_and_nothing_is_written(store: Store) -> None:
    await run(store, yaml(BASE))
    before = await table_counts(store)
    other = """\
tenants:
  - id: demo-bydel
    name: Demo bydel
    staff:
      - {ref: desk, name: Desk}
    users:
      - ref: d-1
        first_name: Dagny
        last_name: Demosen
        devices:
          - {protocol: mqtt, identity: new-device}
          - {protocol: dc09, identity: "1234"}
"""
    with pytest.raises(ImportConflict) as caught:
        await run(store, yaml(other))
    assert [str(p) for p in caught.value.problems] == [
        "d.yaml:12:40: tenants[0].users[0].devices[1].identity: device dc09 '1234' is"
        " registered to another tenant; a device never moves between municipalities by"
        " import: unregister it there first"
    ]
    assert await table_counts(store) == before
    assert await rows(store, "SELECT id FROM tenants") == [("eksempel-kommune",)]
    # The same conflict from CSV is reported at the cell.
    text = "tenant,ref,first_name,last_name,device_protocol,device_identity\n"
    text += "demo-bydel,d-1,Dagny,Demosen,dc09,1234\n"
    with pytest.raises(ImportConflict) as caught:
        await run(store, csv_(text))
    assert str(caught.value.problems[0]).startswith("d.csv:2:6: device_identity: device dc09")
    assert await table_counts(store) == before
    # The writer is still healthy: the next job commits.
    assert (await run(store, yaml(BASE))).changed is False


async def test_a_failing_job_is_atomic_outside_the_writer_too(tmp_path: Path) -> None:
    from alarmd.store.db import connect, migrate

    conn = connect(tmp_path / "raw.sqlite")
    migrate(conn)
    import_job(yaml(BASE), T0, "t")(conn)
    other = BASE.replace("eksempel-kommune", "demo-bydel")
    with pytest.raises(ImportConflict):
        import_job(yaml(other), T0, "t")(conn)
    assert not conn.in_transaction
    assert conn.execute("SELECT id FROM tenants").fetchall() == [("eksempel-kommune",)]
    conn.close()


async def test_devices_move_between_users_and_are_unlinked_when_dropped(store: Store) -> None:
    await run(store, yaml(BASE))
    moved = BASE.replace('          - {protocol: dc09, identity: "1234"}\n', "").replace(
        "        last_name: Prøvesen\n",
        '        last_name: Prøvesen\n        devices: [{protocol: dc09, identity: "1234"}]\n',
    )
    summary = await run(store, yaml(moved))
    assert created_updated(summary)["devices"] == (0, 1, 0)
    owner = "SELECT u.ref FROM devices d LEFT JOIN service_users u ON u.id = d.user_id"
    assert await rows(store, owner + " WHERE d.identity = '1234'") == [("u-2",)]
    dropped = moved.replace(
        "          - {protocol: mqtt, identity: fall-1, type: fall_detector, group: 3}\n", ""
    ).replace("        devices:\n        plan", "        plan")
    summary = await run(store, yaml(dropped))
    assert created_updated(summary)["devices"] == (0, 1, 0)
    # Still registered to the tenant, with no user.
    assert await rows(store, "SELECT tenant, user_id FROM devices WHERE identity = 'fall-1'") == [
        ("eksempel-kommune", None)
    ]


async def test_yaml_references_to_stored_teams_and_staff(store: Store) -> None:
    await run(store, yaml(BASE))
    later = """\
tenants:
  - id: eksempel-kommune
    name: Eksempel kommune
    teams:
      - {ref: natt, name: Nattpatruljen, members: [ola-h, nobody]}
    users:
      - ref: u-3
        first_name: Cecilie
        last_name: Eksempelsen
        plan: {home_care_team: sentrum}
"""
    # No staff in this file: members must be stored; teams are in the file, so the plan's
    # team must be one of the file's (checked at parse time).
    assert text_problems(later) == [
        "d.yaml:10:32: tenants[0].users[0].plan.home_care_team: 'sentrum' is not a team of"
        " tenant eksempel-kommune"
    ]
    later = later.replace(
        "    teams:\n      - {ref: natt, name: Nattpatruljen, members: [ola-h, nobody]}\n", ""
    )
    summary = await run(store, yaml(later))  # the stored team sentrum is found
    assert created_updated(summary)["users"] == (1, 0, 0)
    with pytest.raises(ImportConflict) as caught:
        await run(store, yaml(later.replace("team: sentrum", "team: natt")))
    assert [str(p) for p in caught.value.problems] == [
        "d.yaml:8:32: tenants[0].users[0].plan.home_care_team: no team 'natt' is stored for"
        " tenant eksempel-kommune; create it with a YAML import first"
    ]
    members = (
        "tenants:\n  - id: eksempel-kommune\n    name: Eksempel kommune\n    teams:\n"
        "      - {ref: natt, name: Nattpatruljen, members: [ola-h, nobody]}\n"
    )
    with pytest.raises(ImportConflict) as caught:
        await run(store, yaml(members))
    assert [str(p) for p in caught.value.problems] == [
        "d.yaml:5:59: tenants[0].teams[0].members[1]: no staff member 'nobody' is stored for"
        " tenant eksempel-kommune"
    ]
    summary = await run(store, yaml(members.replace(", nobody", "")))
    assert created_updated(summary)["teams"] == (1, 0, 0)


async def test_csv_absent_columns_keep_what_is_stored(store: Store) -> None:
    await run(store, yaml(BASE))
    text = "tenant;ref;first_name;last_name;address\n"
    text += "eksempel-kommune;u-1;Astrid;Testesen;Nyveien 3\n"
    summary = await run(store, csv_(text), actor="epj")
    assert created_updated(summary) == {
        "tenants": (0, 0, 0),
        "teams": (0, 0, 0),
        "staff": (0, 0, 0),
        "users": (0, 1, 0),
        "devices": (0, 0, 0),  # no device columns: the user's devices are left alone
        "plans": (0, 0, 0),  # no plan columns: the key box stays
        "contacts": (0, 0, 0),
        "suppliers": (0, 0, 0),
    }
    assert await rows(
        store,
        "SELECT u.address, p.key_box, p.version, (SELECT count(*) FROM devices d"
        " WHERE d.user_id = u.id), (SELECT count(*) FROM contacts c WHERE c.user_id = u.id)"
        " FROM service_users u JOIN response_plans p ON p.user_id = u.id WHERE u.ref = 'u-1'",
    ) == [("Nyveien 3", "Boks ved døren", 1, 2, 2)]
    # An empty cell in a present column clears.
    summary = await run(
        store,
        csv_("tenant,ref,first_name,last_name,key_box\neksempel-kommune,u-1,Astrid,Testesen,\n"),
    )
    assert created_updated(summary)["plans"] == (0, 1, 0)
    assert await rows(
        store,
        "SELECT key_box, version, updated_by FROM response_plans"
        " WHERE key_box = '' AND version = 2",
    ) == [("", 2, "tester")]


async def test_csv_creates_a_tenant_named_by_its_id_and_needs_stored_teams(store: Store) -> None:
    text = "tenant,ref,first_name,last_name,home_care_team\n"
    text += "ny-kommune,u-1,Astrid,Testesen,\n"
    summary = await run(store, csv_(text))
    assert created_updated(summary)["tenants"] == (1, 0, 0)
    assert await rows(store, "SELECT id, name FROM tenants") == [("ny-kommune", "ny-kommune")]
    before = await table_counts(store)
    with pytest.raises(ImportConflict) as caught:
        await run(store, csv_(text + "ny-kommune,u-2,Bjarne,Prøvesen,sentrum\n"))
    assert [str(p) for p in caught.value.problems] == [
        "d.csv:3:5: home_care_team: no team 'sentrum' is stored for tenant ny-kommune;"
        " create it with a YAML import first"
    ]
    assert await table_counts(store) == before
    # A YAML import names it properly later.
    await run(store, yaml("tenants:\n  - {id: ny-kommune, name: Ny kommune}\n"))
    assert await rows(store, "SELECT name FROM tenants") == [("Ny kommune",)]


async def test_summary_json(store: Store) -> None:
    summary = await run(store, yaml(BASE))
    body = summary.to_json()
    assert body["changed"] is True
    assert body["users"] == {"created": 2, "updated": 0, "unchanged": 0, "removed": 0}
    assert set(body) == {
        "changed",
        "tenants",
        "teams",
        "staff",
        "users",
        "devices",
        "plans",
        "contacts",
        "suppliers",
    }


def test_job_is_a_plain_function_of_a_connection() -> None:
    job = import_job(yaml(BASE), T0, "t")
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError):
        job(conn)  # no tables: the job only touches the connection it is given
    conn.close()

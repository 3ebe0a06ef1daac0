"""The whole life of a service user through the real daemon's API (issue 9):

need registered → decision → order → installed and active → an alarm routed by the user's
plan → a fault → repaired → a deviation registered → the need ceases → uninstalled → after
the retention period the personal data is gone and the statistics remain.

The daemon runs on a test clock (``ALARMD_TEST_CLOCK``) moved through the API, so the
thirty-day retention period passes in a moment and the daemon's own retention sweep (not a
test call) erases the data. The municipality's administrator works through the admin token,
the supplier through its own ``supplier`` token, the operator through ``alarmctl``; the
alarm comes from ``alarmctl simulate dc09`` over a real socket.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from test_escalation_restart import CENTRE, T0, TENANT, until

from conftest import ROOT, DaemonProcess

KOMMUNE = "eksempel-kommune"
USER = f"/api/v1/admin/users/{KOMMUNE}/u-9001"
PERSONAL = ("Lovise", "Livesdatter", "Prøvegata 9", "Kode 2468", "Jon Livesdatter", "+4700000077")


class Client:
    def __init__(self, d: DaemonProcess, token: str) -> None:
        self.d = d
        self.token = token

    def __call__(
        self, method: str, path: str, body: dict[str, Any] | None = None, expect: int = 200
    ) -> Any:
        request = urllib.request.Request(
            self.d.api + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        assert status == expect, f"{method} {path}: {status} {raw[:300]!r}"
        return json.loads(raw)


def test_a_service_users_whole_life(tmp_path: Path) -> None:
    (tmp_path / "tenants").mkdir()
    (tmp_path / "centre.yaml").write_text(CENTRE)
    (tmp_path / "tenants" / f"{KOMMUNE}.yaml").write_text(TENANT)
    d = DaemonProcess(
        tmp_path,
        routing=f"routing:\n  centre: {tmp_path / 'centre.yaml'}\n"
        f"  tenants: {tmp_path / 'tenants'}\n"
        "case_management: {retention_days: 30}\n",
    )
    d.start(env={"ALARMD_TEST_CLOCK": T0.isoformat()})
    try:
        walk(d)
        assert d.terminate() == 0
    except BaseException:
        print(d.log())
        raise
    # nothing personal is left anywhere in the database
    conn = sqlite3.connect(d.data_dir / "alarmd.sqlite")
    try:
        text = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in conn.execute(f"SELECT * FROM {table}"):
                text.extend(v for v in row if isinstance(v, str))
                text.extend(v.decode(errors="replace") for v in row if isinstance(v, bytes))
        everything = "\n".join(text)
    finally:
        conn.close()
    for value in PERSONAL:
        assert value not in everything, value


def walk(d: DaemonProcess) -> None:
    admin = Client(d, (d.data_dir / "admin-token").read_text().strip())
    imported = d.alarmctl("import", str(ROOT / "config" / "directory.example.yaml"))
    assert imported.returncode == 0, imported.stderr
    made = admin(
        "POST",
        "/api/v1/admin/tokens",
        {
            "name": "teknikk",
            "role": "supplier",
            "tenants": [KOMMUNE],
            "person": "supplier:eksempel-teknikk",
        },
        expect=201,
    )
    supplier = Client(d, made["token"])

    # the need is registered: the user, an application, then the decision
    admin(
        "POST",
        "/api/v1/admin/users",
        {
            "tenant": KOMMUNE,
            "ref": "u-9001",
            "first_name": "Lovise",
            "last_name": "Livesdatter",
            "address": "Prøvegata 9",
            "postcode": "0001",
        },
        expect=201,
    )
    assert admin("GET", USER)["decision_valid"] is False  # the console flags it
    decision = admin(
        "POST", f"{USER}/decisions", {"service": "safety_alarm", "reference": "2026/77"}, 201
    )
    admin("POST", f"/api/v1/admin/decisions/{decision['id']}/grant", {"valid_from": "2026-12-01"})
    assert admin("GET", USER)["decision_valid"] is True
    plan = admin(
        "PUT",
        f"{USER}/plan",
        {
            "instructions": "Ring Lovise først.",
            "key_box": "Kode 2468",
            "home_care_team": "hjemmetjeneste-sentrum",
            "contacts": [
                {
                    "name": "Jon Livesdatter",
                    "phone": "+4700000077",
                    "relation": "son",
                    "channels": {"sms": "+4700000077"},
                }
            ],
        },
    )
    assert plan["version"] == 1

    # the order: a pendant from stock, installed by the supplier, then activated
    device = admin(
        "POST",
        "/api/v1/admin/devices",
        {
            "tenant": KOMMUNE,
            "protocol": "dc09",
            "identity": "9757",
            "serial": "ET-9757",
            "type": "safety_alarm",
            "supplier": "eksempel-teknikk",
        },
        expect=201,
    )
    order = admin(
        "POST",
        "/api/v1/admin/orders",
        {"tenant": KOMMUNE, "kind": "install", "user": "u-9001", "device": device["id"]},
        expect=201,
    )
    [seen] = supplier("GET", "/api/v1/admin/orders")["orders"]
    assert seen["id"] == order["id"] and seen["user"]["address"] == "Prøvegata 9"
    supplier("POST", f"/api/v1/admin/orders/{order['id']}/accept", {})
    supplier("POST", f"/api/v1/admin/orders/{order['id']}/schedule", {"date": "2026-12-02"})
    admin("POST", "/api/v1/debug/clock", {"advance_s": 86400})
    supplier("POST", f"/api/v1/admin/orders/{order['id']}/done", {"result": "installed, tested"})
    admin("POST", f"/api/v1/admin/devices/{device['id']}/activate")
    [mine] = [x for x in admin("GET", USER)["devices"] if x["id"] == device["id"]]
    assert mine["status"] == "active"

    # an alarm, routed by the user's plan: the plan's home-care team is notified
    sent = d.alarmctl("simulate", "dc09", "--account", "9757", "--event", "100", "--zone", "1")
    assert sent.returncode == 0, sent.stderr
    case = until(
        "the alarm routed",
        lambda: [c for c in admin("GET", "/api/v1/cases")["cases"] if c["mode"]],
    )[0]
    detail = admin("GET", f"/api/v1/cases/{case['id']}")
    assert detail["mode"] == "routing_with_backup" and detail["rule"] == "all-alarms-routed"
    assert detail["user"]["ref"] == "u-9001"
    assert detail["plan"]["version"] == 1 and detail["plan"]["home_care_team"] == (
        "hjemmetjeneste-sentrum"
    )
    notified = {e["data"].get("person") for e in detail["log"] if e["type"] == "notify"}
    assert notified and all(p.startswith("staff:") for p in notified)
    accepted = d.alarmctl("accept", str(case["id"]))
    assert accepted.returncode == 0, accepted.stderr
    closed = d.alarmctl("close", str(case["id"]), "resolved_by_phone", "--note", "Hun hadde falt")
    assert closed.returncode == 0, closed.stderr

    # a fault: a repair order to the supplier; repaired
    fault = admin(
        "POST",
        "/api/v1/admin/faults",
        {"device": device["id"], "description": "the pendant's button sticks"},
        expect=201,
    )
    [repair] = supplier("GET", "/api/v1/admin/orders?state=ordered")["orders"]
    assert repair["kind"] == "repair" and repair["fault_id"] == fault["id"]
    supplier("POST", f"/api/v1/admin/orders/{repair['id']}/done", {"result": "new pendant"})
    [repaired] = admin("GET", "/api/v1/admin/faults")["faults"]
    assert repaired["status"] == "repaired"

    # a deviation, linked to the fault, and the export for the quality system
    added = d.alarmctl(
        "admin",
        "deviation",
        "add",
        "--category",
        "device_failure",
        "--fault",
        str(fault["id"]),
        "--description",
        "Lovise Livesdatter waited for the repair",
    )
    assert added.returncode == 0, added.stderr
    exported = d.alarmctl("admin", "deviation", "list", "--csv")
    assert exported.returncode == 0 and "device_failure" in exported.stdout

    # the need ceases: decision ended, de-installation ordered, routing stops
    ended = admin("POST", f"{USER}/end", {"reason": "moved to a care home"})
    assert ended["decisions_ended"] == [decision["id"]]
    [uninstall] = ended["uninstall_orders"]
    supplier("POST", f"/api/v1/admin/orders/{uninstall}/done", {"result": "collected"})
    record = admin("GET", USER)
    assert record["devices"] == [] and record["erase_after"] is not None
    stats = admin("GET", "/api/v1/admin/stats")["tenants"][KOMMUNE]
    assert stats["clarification_rate"] == 1.0 and stats["by_kind"]

    # the retention period passes; the daemon's own sweep erases the personal data
    admin("POST", "/api/v1/debug/clock", {"advance_s": 31 * 86400})
    until("the personal data erased", lambda: gone(admin))
    assert admin("GET", "/api/v1/admin/stats")["tenants"][KOMMUNE] == stats
    audit = d.alarmctl("admin", "audit", "--user", f"{KOMMUNE}/u-9001")
    assert audit.returncode == 0, audit.stderr
    actions = [row["action"] for row in json.loads(audit.stdout)["audit"]]
    assert actions[0] == "erase_user"
    for expected in ("create_user", "add_decision", "change_plan", "read_user", "end_need"):
        assert expected in actions


def gone(admin: Client) -> bool:
    try:
        admin("GET", USER, expect=404)
    except AssertionError:
        return False
    return True

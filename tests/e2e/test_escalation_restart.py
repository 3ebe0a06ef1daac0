"""The real daemon killed with SIGKILL in the middle of an escalation, then restarted.

The daemon runs on a test clock (``ALARMD_TEST_CLOCK``) that stands still until the test
moves it through the API, so no test waits for a deadline: time jumps, and the test then
polls for the daemon to have acted on the jump. After the restart the clock starts later,
as if alarmd had been down for twenty minutes: every deadline that fell due meanwhile must
fire, in order, and none twice.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import ROOT, DaemonProcess

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)  # a Tuesday, 09:00 in Oslo

CENTRE = """\
centre:
  name: Testsenteret
  operators: {accept_within: 2m, re_alert_every: 1m, channels: [console]}
"""
TENANT = """\
tenant: eksempel-kommune
name: Eksempel kommune
policies:
  home-care-first:
    steps:
      - notify: [{team: plan}]
        channels: [console]
        accept_within: 5m
      - notify: [{next_of_kin: "1"}]
        channels: [console]
        accept_within: 5m
    accepted_deadline: 30m
routes:
  - name: all-alarms-routed
    match: {category: alarm}
    mode: routing_with_backup
    policy: home-care-first
  - name: technical
    match: {category: technical}
    mode: response
"""


def api(d: DaemonProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = (d.data_dir / "admin-token").read_text().strip()
    request = urllib.request.Request(
        d.api + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def until(what: str, check: Callable[[], Any]) -> Any:
    """Poll for the daemon to have acted (it does so at once; this bounds a hang)."""
    deadline = time.monotonic() + 20
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        time.sleep(0.05)


def case_log(d: DaemonProcess) -> list[str]:
    return [entry["type"] for entry in api(d, "GET", "/api/v1/cases/1")["log"]]


def test_kill9_mid_escalation_every_deadline_fires_once(tmp_path: Path) -> None:
    (tmp_path / "tenants").mkdir()
    (tmp_path / "centre.yaml").write_text(CENTRE)
    (tmp_path / "tenants" / "eksempel-kommune.yaml").write_text(TENANT)
    d = DaemonProcess(
        tmp_path,
        routing=f"routing:\n  centre: {tmp_path / 'centre.yaml'}\n"
        f"  tenants: {tmp_path / 'tenants'}\n",
    )
    d.start(env={"ALARMD_TEST_CLOCK": T0.isoformat()})
    try:
        imported = d.alarmctl("import", str(ROOT / "config" / "directory.example.yaml"))
        assert imported.returncode == 0, imported.stderr
        sent = d.alarmctl("simulate", "dc09", "--account", "1234", "--event", "100", "--zone", "3")
        assert sent.returncode == 0, sent.stderr

        def step(n: int) -> Callable[[], bool]:
            def check() -> bool:
                cases = api(d, "GET", "/api/v1/cases")["cases"]
                return bool(cases) and cases[0]["step"] == n and cases[0]["state"] == "notifying"

            return check

        until("step 1 notified", step(1))
        api(d, "POST", "/api/v1/debug/clock", {"advance_s": 300})
        until("step 2 notified", step(2))
        d.kill9()  # mid-escalation: step 2's deadline is at T0 + 10 min
    except BaseException:
        print(d.log())
        raise

    d.start(env={"ALARMD_TEST_CLOCK": (T0 + timedelta(minutes=20)).isoformat()})
    try:
        case = until(
            "the centre after the restart",
            lambda: (
                (c := api(d, "GET", "/api/v1/cases/1"))["at_centre"]
                and c["state"] == "at_centre"
                and c
            ),
        )
        # step 2's deadline (T0+10) handed it to the centre, whose deadline (T0+12) passed
        # too: one re-alert, counted from the restart
        assert case["next_step_at"] == "2026-12-01T08:21:00.000000Z"
        types = case_log(d)
        assert types.count("routed") == 1
        assert types.count("escalated") == 2
        assert types.count("centre") == 2
        step1 = [e for e in api(d, "GET", "/api/v1/cases/1")["log"] if e["type"] == "notify"]
        notified = [e["data"]["person"] for e in step1]
        assert len(notified) == len(set(notified))  # nobody notified twice

        api(d, "POST", "/api/v1/debug/clock", {"advance_s": 60})
        until("one more re-alert", lambda: case_log(d).count("centre") == 3)
        accepted = api(d, "POST", "/api/v1/cases/1/accept")
        assert accepted["state"] == "accepted"
        assert d.terminate() == 0
    except BaseException:
        print(d.log())
        raise
    types = case_log_offline(d)
    assert types.count("centre") == 3 and types.count("escalated") == 2


def case_log_offline(d: DaemonProcess) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(d.data_dir / "alarmd.sqlite")
    try:
        return [r[0] for r in conn.execute("SELECT type FROM case_log WHERE case_id = 1")]
    finally:
        conn.close()


def test_sighup_reloads_routing_and_keeps_the_old_one_when_the_new_fails(tmp_path: Path) -> None:
    import signal

    (tmp_path / "tenants").mkdir()
    (tmp_path / "centre.yaml").write_text(CENTRE)
    tenant_file = tmp_path / "tenants" / "eksempel-kommune.yaml"
    tenant_file.write_text(TENANT)
    d = DaemonProcess(
        tmp_path,
        routing=f"routing:\n  centre: {tmp_path / 'centre.yaml'}\n"
        f"  tenants: {tmp_path / 'tenants'}\n",
    )
    d.start(env={"ALARMD_TEST_CLOCK": T0.isoformat()})

    def reload(marker: str) -> None:
        assert d.proc is not None
        before = d.log().count(marker)
        d.proc.send_signal(signal.SIGHUP)
        until(marker, lambda: d.log().count(marker) > before)

    def alarm(zone: str) -> dict[str, Any]:
        sent = d.alarmctl("simulate", "dc09", "--account", "1234", "--event", "100", "--zone", zone)
        assert sent.returncode == 0, sent.stderr
        return until(
            f"zone {zone} routed",
            lambda: [c for c in api(d, "GET", "/api/v1/cases")["cases"] if c["mode"]],
        )

    try:
        assert d.alarmctl("import", str(ROOT / "config" / "directory.example.yaml")).returncode == 0
        tenant_file.write_text(TENANT.replace("routes:", "routez:"))  # a typo
        reload("config_reload_failed_keeping_old")
        metrics = urllib.request.urlopen(d.api + "/metrics", timeout=10).read().decode()
        assert "alarmd_config_last_reload_successful 0.0" in metrics
        [first] = alarm("3")  # a fall: still routed by the old configuration
        assert first["mode"] == "routing_with_backup"

        response = "    mode: response\n"
        tenant_file.write_text(
            TENANT.replace("    mode: routing_with_backup\n    policy: home-care-first\n", response)
        )
        reload("config_reloaded")
        cases = alarm("1")  # another kind: a new case, routed by the new configuration
        until("two routed cases", lambda: len(api(d, "GET", "/api/v1/cases")["cases"]) == 2)
        modes = {c["kind"]: c["mode"] for c in api(d, "GET", "/api/v1/cases")["cases"]}
        assert modes["fall"] == "routing_with_backup"  # the running case kept its snapshot
        assert sorted(modes.values()) == ["response", "routing_with_backup"], cases
        assert d.terminate() == 0
    except BaseException:
        print(d.log())
        raise

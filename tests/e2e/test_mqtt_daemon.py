"""The daemon with MQTT switched on, against a real Mosquitto on an ephemeral port: a device
event published with ``alarmctl simulate mqtt`` opens a case for its user, the carer's app
is notified on its own topic, and the carer's acceptance comes back through the broker."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import ROOT, DaemonProcess
from mqtt_broker import running_broker


def api(d: DaemonProcess, path: str) -> Any:
    token = (d.data_dir / "admin-token").read_text().strip()
    request = urllib.request.Request(d.api + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def until(what: str, check: Any) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for: {what}")


def test_mqtt_event_to_case_to_carer_and_back(tmp_path: Path) -> None:
    with running_broker(tmp_path / "broker") as broker:
        d = DaemonProcess(
            tmp_path / "d",
            routing=(
                f"routing:\n  centre: {ROOT / 'config' / 'centre.example.yaml'}\n"
                f"  tenants: {ROOT / 'config' / 'tenants'}\n"
                f"mqtt:\n  enabled: true\n  broker: 127.0.0.1:{broker.port}\n"
            ),
        )
        # a weekday morning in Oslo: eksempel-kommune routes alarms to home care first
        d.start(env={"ALARMD_TEST_CLOCK": "2026-12-01T08:00:00+00:00"})
        try:
            imported = d.alarmctl("import", str(ROOT / "config" / "directory.example.yaml"))
            assert imported.returncode == 0, imported.stderr
            broker_arg = f"127.0.0.1:{broker.port}"
            sent = d.alarmctl(
                "simulate",
                "mqtt",
                "--broker",
                broker_arg,
                "--tenant",
                "eksempel-kommune",
                "--device",
                "fall-0001",
                "--kind",
                "fall",
            )
            assert sent.returncode == 0, sent.stderr

            def notified() -> Any:
                cases = api(d, "/api/v1/cases")["cases"]
                return cases and cases[0]["state"] == "notifying" and cases[0]

            case = until("the fall routed to home care", notified)
            assert (case["kind"], case["protocol"], case["mode"]) == (
                "fall",
                "mqtt",
                "routing_with_backup",
            )
            log = api(d, f"/api/v1/cases/{case['id']}")["log"]
            assert any(
                "notified Kari Nordmann" in e["message"] and "mqtt" in e["message"] for e in log
            )
            accepted = d.alarmctl(
                "simulate",
                "mqtt",
                "--broker",
                broker_arg,
                "--tenant",
                "eksempel-kommune",
                "--staff",
                "kari-n",
                "--case",
                str(case["id"]),
                "--action",
                "accept",
            )
            assert accepted.returncode == 0, accepted.stderr
            held = until(
                "Kari's acceptance",
                lambda: api(d, f"/api/v1/cases/{case['id']}")["accepted_by"],
            )
            assert held.startswith("staff:")
            assert d.terminate() == 0
        except BaseException:
            print(d.log())
            raise

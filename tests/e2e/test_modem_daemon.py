"""The daemon with a GSM modem: ``alarmctl simulate modem`` plays the modem on a
pseudo-terminal, with an SMS "FALL" already on its SIM from a GSM alarm unit; alarmd opens
the port, reads what arrived while it was away, and the alarm becomes a case."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import BIN, DaemonProcess


def api(d: DaemonProcess, path: str) -> Any:
    token = (d.data_dir / "admin-token").read_text().strip()
    request = urllib.request.Request(d.api + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_sms_alarm_from_a_gsm_unit_becomes_a_case(tmp_path: Path) -> None:
    sim = subprocess.Popen(
        [str(BIN / "alarmctl"), "simulate", "modem", "--sms", "+4700000011:FALL stue"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline()
        assert line.startswith("modem simulator on "), line
        port = line.split(" on ", 1)[1].strip()
        d = DaemonProcess(
            tmp_path,
            routing=(
                f"modem:\n  enabled: true\n  port: {port}\n"
                '  senders:\n    "+4700000011": {name: GSM-enhet 11, ring: assistance}\n'
            ),
        )
        d.start()
        try:
            deadline = time.monotonic() + 20
            cases: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not cases:
                cases = api(d, "/api/v1/cases")["cases"]
                time.sleep(0.05)
            assert cases, d.log()
            assert (cases[0]["protocol"], cases[0]["source"], cases[0]["kind"]) == (
                "sms",
                "+4700000011",
                "fall",
            )
            assert d.terminate() == 0
        except BaseException:
            print(d.log())
            raise
    finally:
        sim.terminate()
        sim.wait(10)

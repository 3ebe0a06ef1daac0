"""The daemon with SCAIP on: ``alarmctl simulate scaip`` registers with Digest and sends an
alarm; alarmd stores it, answers ``<mrs snu=0>`` after the commit, and a case opens."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import DaemonProcess, free_port


def api(d: DaemonProcess, path: str) -> Any:
    token = (d.data_dir / "admin-token").read_text().strip()
    request = urllib.request.Request(d.api + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_scaip_alarm_through_the_daemon(tmp_path: Path) -> None:
    secret = tmp_path / "unit-7001.pw"
    secret.write_text("test-password-not-real\n")
    port = free_port()
    d = DaemonProcess(
        tmp_path,
        routing=(
            f"scaip:\n  enabled: true\n  port: {port}\n  tls_port: 0\n"
            f"  accounts:\n    - {{user: unit-7001, password_file: {secret}, cids: ['7001']}}\n"
        ),
    )
    d.start()
    try:
        args = ["simulate", "scaip", "--port", str(port), "--cid", "7001", "--user", "unit-7001"]
        sent = d.alarmctl(*args, "--password", "test-password-not-real")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "<mrs snu=0>" in sent.stdout
        wrong = d.alarmctl(*args, "--password", "wrong")
        assert wrong.returncode == 1 and "403" in wrong.stdout + wrong.stderr
        deadline = time.monotonic() + 20
        cases: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not cases:
            cases = api(d, "/api/v1/cases")["cases"]
            time.sleep(0.05)
        assert [(c["protocol"], c["source"]) for c in cases] == [("scaip", "7001")]
        assert d.terminate() == 0
    except BaseException:
        print(d.log())
        raise

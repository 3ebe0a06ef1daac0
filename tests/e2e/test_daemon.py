"""The daemon as a newcomer meets it: start, token, health, metrics, an alarm in, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

from conftest import BIN, ROOT, DaemonProcess


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_first_start_creates_an_admin_token_readable_only_by_us(daemon: DaemonProcess) -> None:
    token_file = daemon.data_dir / "admin-token"
    mode = stat.S_IMODE(os.stat(token_file).st_mode)
    assert mode == 0o600
    token = token_file.read_text().strip()
    assert token.startswith("alarmd_")
    assert "admin-token" in daemon.log()  # it says where
    assert token not in daemon.log()  # and never prints the token itself


def test_health_and_metrics(daemon: DaemonProcess) -> None:
    status, body = http_get(daemon.api + "/health")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    status, body = http_get(daemon.api + "/metrics")
    assert status == 200
    assert b"alarmd_dc09_connections" in body
    assert b"alarmd_store_commit_seconds" in body


def test_api_refuses_missing_and_wrong_tokens(daemon: DaemonProcess) -> None:
    status, body = http_get(daemon.api + "/api/v1/events")
    assert status == 401 and json.loads(body)["error"] == "unauthenticated"
    status, body = http_get(daemon.api + "/api/v1/events", token="alarmd_wrong")
    assert status == 401
    token = (daemon.data_dir / "admin-token").read_text().strip()
    status, body = http_get(daemon.api + "/api/v1/events?limit=zero", token=token)
    assert status == 400 and "limit" in json.loads(body)["message"]


def test_simulated_alarm_is_stored_and_listed_then_sigterm_exits_zero(
    daemon: DaemonProcess,
) -> None:
    sim = daemon.alarmctl(
        "simulate",
        "dc09",
        "--port",
        str(daemon.dc09_port),
        "--account",
        "1234",
        "--event",
        "100",
        "--zone",
        "3",
        "--count",
        "3",
    )
    assert sim.returncode == 0, sim.stdout + sim.stderr
    listed = daemon.alarmctl("events", "--account", "1234", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == 3
    assert {row["kind"] for row in rows} == {"fall"}  # zone 3 of 1234 is a fall detector
    assert all(row["tenant"] == "eksempel-kommune" for row in rows)
    table = daemon.alarmctl("events")
    assert table.returncode == 0 and "fall" in table.stdout
    assert daemon.terminate() == 0
    assert '"alarmd_stopped"' in daemon.log() or "alarmd_stopped" in daemon.log()


def test_encrypted_simulated_alarm(daemon: DaemonProcess) -> None:
    sim = daemon.alarmctl(
        "simulate",
        "dc09",
        "--port",
        str(daemon.dc09_port),
        "--account",
        "5678",
        "--key",
        "0123456789ABCDEF",
        "--key-format",
        "ascii",
        "--event",
        "101",
        "--zone",
        "2",
        "--udp",
    )
    assert sim.returncode == 0, sim.stdout + sim.stderr
    rows = [
        json.loads(x)
        for x in daemon.alarmctl("events", "--account", "5678", "--json").stdout.splitlines()
    ]
    assert [row["kind"] for row in rows] == ["assistance"]


def test_check_config_names_file_line_col(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("api:\n  listen: 127.0.0.1:8780\n  colour: blue\n")
    result = subprocess.run(
        [str(BIN / "alarmd"), "check-config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert f"{bad}:3:3:" in result.stderr
    ok = subprocess.run(
        [str(BIN / "alarmd"), "check-config", str(ROOT / "config" / "alarmd.example.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr


def test_run_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dc09:\n  listen: 127.0.0.1:99999\n")
    result = subprocess.run(
        [str(BIN / "alarmd"), "run", "--config", str(bad), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{bad}:2:" in result.stderr


def test_tells_systemd_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        d = DaemonProcess(tmp_path)
        d.start(env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
        try:
            assert notify.recv(256) == b"READY=1"
            assert notify.recv(256) == b"WATCHDOG=1"  # pinged because /health is ok
            assert d.terminate() == 0
            messages = set()
            while b"STOPPING=1" not in messages:
                messages.add(notify.recv(256))
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()


def test_sighup_reloads_accounts_and_keeps_the_old_config_when_the_new_one_fails(
    tmp_path: Path,
) -> None:
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text('accounts:\n  - account: "1234"\n    tenant: eksempel-kommune\n')
    d = DaemonProcess(tmp_path, accounts=accounts)
    d.start()
    try:

        def send(account: str, zone: int) -> None:
            # each run starts at seq 1: a new zone makes it a new message, not a re-send
            sim = d.alarmctl(
                "simulate",
                "dc09",
                "--port",
                str(d.dc09_port),
                "--account",
                account,
                "--zone",
                str(zone),
            )
            assert sim.returncode == 0, sim.stdout + sim.stderr

        def last(account: str) -> dict[str, object]:
            out = d.alarmctl("events", "--account", account, "--json", "--limit", "1").stdout
            return json.loads(out.splitlines()[0])

        def reload_and_wait(marker: str) -> None:
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            for _ in range(500):
                if d.log().count(marker) >= 1:
                    return
                time.sleep(0.02)
            raise AssertionError(f"no {marker} in the log:\n{d.log()}")

        send("ABC1", 1)
        assert last("ABC1")["flags"] == ["unregistered"]

        accounts.write_text(
            'accounts:\n  - account: "1234"\n    tenant: eksempel-kommune\n'
            '  - account: "ABC1"\n    tenant: annen-kommune\n'
        )
        reload_and_wait("config_reloaded")
        send("ABC1", 2)
        newest = last("ABC1")
        assert newest["flags"] == [] and newest["tenant"] == "annen-kommune"

        accounts.write_text('accounts:\n  - account: "ABC1"\n    tenant: Not A Slug\n')
        reload_and_wait("config_reload_failed_keeping_old")
        status, body = http_get(d.api + "/metrics")
        assert status == 200
        assert b"alarmd_config_last_reload_successful 0.0" in body
        send("ABC1", 3)  # the old accounts are still in force
        assert last("ABC1")["tenant"] == "annen-kommune"
        assert d.terminate() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()


def test_a_port_in_use_is_a_clear_error_and_the_running_daemon_is_unaffected(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    second = DaemonProcess(tmp_path / "second", dc09_port=daemon.dc09_port)
    result = subprocess.run(
        [
            str(BIN / "alarmd"),
            "run",
            "--config",
            str(second.config),
            "--data-dir",
            str(second.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert f"cannot listen for DC-09 on 127.0.0.1:{daemon.dc09_port}" in result.stderr
    assert "Traceback" not in result.stderr
    sim = daemon.alarmctl("simulate", "dc09", "--port", str(daemon.dc09_port), "--account", "1234")
    assert sim.returncode == 0, sim.stdout + sim.stderr


def test_alarmctl_admin_token_create_list_revoke(daemon: DaemonProcess) -> None:
    created = daemon.alarmctl("admin", "token", "create", "night-operator", "--role", "operator")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("alarmd_") and "shown once" in created.stderr
    cases = daemon.alarmctl("--token", token, "cases")
    assert cases.returncode == 0, cases.stderr
    listed = daemon.alarmctl("admin", "token", "list")
    assert "night-operator" in listed.stdout and token not in listed.stdout
    assert daemon.alarmctl("admin", "token", "revoke", "night-operator").returncode == 0
    refused = daemon.alarmctl("--token", token, "cases")
    assert refused.returncode == 1 and "revoked" in refused.stderr


def test_alarmctl_works_a_case_from_the_command_line(daemon: DaemonProcess) -> None:
    sent = daemon.alarmctl(
        "simulate", "dc09", "--port", str(daemon.dc09_port), "--account", "1234", "--zone", "3"
    )
    assert sent.returncode == 0, sent.stderr
    for _ in range(200):  # routing runs right after the commit
        listed = daemon.alarmctl("cases")
        if "at_centre" in listed.stdout:
            break
        time.sleep(0.05)
    assert "fall" in listed.stdout and "at_centre" in listed.stdout, listed.stdout
    assert (
        daemon.alarmctl("accept", "1").stdout.strip() == "case 1: accepted, held by operator:admin"
    )
    assert daemon.alarmctl("note", "1", "Ringte brukeren; alt i orden.").returncode == 0
    closed = daemon.alarmctl("close", "1", "resolved_by_phone", "--note", "Avklart")
    assert closed.returncode == 0, closed.stderr
    shown = daemon.alarmctl("case", "1")
    assert "closed" in shown.stdout and "Ringte brukeren" in shown.stdout
    again = daemon.alarmctl("accept", "1")
    assert again.returncode == 1 and "case closed" in again.stderr

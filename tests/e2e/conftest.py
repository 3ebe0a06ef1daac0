"""Run the real ``alarmd`` as a child process, on loopback ports, with its own data dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE_ACCOUNTS = ROOT / "config" / "accounts.example.yaml"


class DaemonProcess:
    """One ``alarmd run`` child; restartable on the same data dir and ports."""

    def __init__(
        self,
        workdir: Path,
        dc09_port: int | None = None,
        accounts: Path = EXAMPLE_ACCOUNTS,
        routing: str = "",
        api_tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``routing``: the YAML of a ``routing:`` section (centre and tenants files)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.dc09_port = dc09_port or free_port()
        self.config = workdir / "alarmd.yaml"
        self.config.write_text(
            "log:\n  level: info\n"
            "api:\n  listen: 127.0.0.1:0\n"
            + (f"  tls_cert: {api_tls[0]}\n  tls_key: {api_tls[1]}\n" if api_tls else "")
            + f"dc09:\n  listen: 127.0.0.1:{self.dc09_port}\n"
            f"accounts_file: {accounts}\n" + routing
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "alarmd.log"
        self.run_info: dict[str, object] = {}

    def start(self, env: dict[str, str] | None = None) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(BIN / "alarmd"),
                "run",
                "--config",
                str(self.config),
                "--data-dir",
                str(self.data_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        log.close()
        run_file = self.data_dir / "run.json"
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alarmd exited with {self.proc.returncode}:\n{self.log()}")
            if run_file.exists():
                try:
                    info = json.loads(run_file.read_text())
                except json.JSONDecodeError:
                    info = {}
                if info.get("pid") == self.proc.pid:
                    self.run_info = info
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"alarmd did not start in 30 s:\n{self.log()}")
            time.sleep(0.02)

    @property
    def api(self) -> str:
        return str(self.run_info["api"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def alarmctl(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "alarmctl"), "--data-dir", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path)
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait(10)

"""A real Mosquitto for tests: started on an ephemeral port on 127.0.0.1, stopped and
restarted on demand (the same port, the same persistence file).

Tests never skip for want of a broker: if ``mosquitto`` is missing or does not start, the
test fails and says why (its log is in the message). Install it with ``apt-get install
mosquitto`` (the bootstrap does).

Usage::

    @pytest.fixture
    def broker(tmp_path: Path) -> Iterator[Broker]:
        with running_broker(tmp_path) as b:
            yield b
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alarmd.transports.mqtt import BrokerSettings, TlsSettings

START_TIMEOUT_S = 10.0


def mosquitto_binary() -> str:
    for candidate in (
        shutil.which("mosquitto"),
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("mosquitto is not installed (apt-get install mosquitto): the MQTT tests need it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """One Mosquitto process under a temporary directory."""

    directory: Path
    users: Mapping[str, str] = field(default_factory=dict)  # user -> password; empty: anonymous
    acl: str | None = None  # ACL file text (needs users)
    tls: TlsFiles | None = None  # TLS on the listener (clients must verify with tls.ca)
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def settings(self, username: str | None = None, password: str | None = None) -> BrokerSettings:
        """Client settings for this broker (fast reconnects for tests)."""
        return BrokerSettings(
            host=self.host,
            port=self.port,
            username=username,
            password=password,
            tls=TlsSettings(ca_file=str(self.tls.ca)) if self.tls is not None else None,
            reconnect_min=0.05,
            reconnect_max=0.5,
        )

    def _write_config(self) -> Path:
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "set_tcp_nodelay true",
            # started as root, Mosquitto would switch to the "mosquitto" user and could not
            # read its files here; as anyone else this line changes nothing
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 0",  # saved at a clean stop (the restart tests use SIGTERM)
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
            ]
        if self.users:
            passwd = self.directory / "passwd"
            passwd.write_text("")
            tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            for user, password in self.users.items():
                subprocess.run(
                    [tool, "-b", str(passwd), user, password], check=True, capture_output=True
                )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl = self.directory / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        """Start (or restart on the same port); fail the test if it does not accept."""
        binary = mosquitto_binary()
        first = self.port == 0
        for _attempt in range(5 if first else 1):
            if first:
                self.port = _free_port()
            conf = self._write_config()
            self.process = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_accepting():
                return
            problems = self._log_text()
            self._kill()
        pytest.fail(f"mosquitto did not start on {self.host}:{self.port}:\n{problems}")

    def _wait_accepting(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5),
            ):
                return True
            time.sleep(0.01)  # readiness poll of a starting process, not a deadline wait
        return False

    def _log_text(self) -> str:
        text = ""
        if self.process is not None and self.process.stderr is not None:
            with contextlib.suppress(Exception):
                text += self.process.stderr.read().decode(errors="replace")
        if self.log_path.exists():
            text += self.log_path.read_text(errors="replace")[-4000:]
        return text or "(no output)"

    def stop(self) -> None:
        """A clean stop (SIGTERM): Mosquitto writes its persistence file, sessions survive."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
        self._close_pipes()
        self.process = None

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """A throwaway CA and a server certificate for ``host`` (an IP SAN), valid for a day."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("alarmd test CA"))
        .issuer_name(name("alarmd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@contextlib.contextmanager
def running_broker(
    directory: Path,
    *,
    users: Mapping[str, str] | None = None,
    acl: str | None = None,
    tls: TlsFiles | None = None,
) -> Iterator[Broker]:
    directory.mkdir(parents=True, exist_ok=True)
    broker = Broker(directory, users=dict(users or {}), acl=acl, tls=tls)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()

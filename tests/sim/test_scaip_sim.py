"""The SCAIP device simulator against the real receiver: TLS, HOLD re-sends, and the
receiver's UDP retransmission of the <mrs> MESSAGE to a device that does not answer."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from alarmd import metrics
from alarmd.clock import FakeClock
from alarmd.intake import Intake
from alarmd.protocols import scaip
from alarmd.protocols.sip import SipRequest, build_response, parse_datagram
from alarmd.sim.scaip import ScaipDevice, mrq_body
from alarmd.store.db import Store
from alarmd.transports.sip import AckPolicy, ScaipAccount, SipReceiver, SipSettings

NOW = dt.datetime(2026, 11, 24, 21, 0, tzinfo=dt.UTC)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1, made for this test run only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alarmd test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "sip.crt", directory / "sip.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def _receiver(
    tmp_path: Path, **settings: object
) -> tuple[Store, SipReceiver, dict[tuple[str, str], str], list[int]]:
    store = await Store.open(tmp_path / "alarmd.sqlite")
    intake = Intake(store, dedup_window=dt.timedelta(hours=24), tenant_of=lambda p, s: "t")
    states: dict[tuple[str, str], str] = {}
    asked: list[int] = []

    def case_state(cid: str, ref: str) -> str | None:
        asked.append(1)
        return states.get((cid, ref))

    accounts = {
        "dev": ScaipAccount("pw"),
        "hold": ScaipAccount("pw", ack_policy=AckPolicy.HOLD_UNTIL_ACCEPTED),
    }
    receiver = SipReceiver(
        intake=intake,
        store=store,
        clock=FakeClock(NOW),
        accounts=accounts.get,
        settings=SipSettings(host="127.0.0.1", port=0, t1=0.02, **settings),  # type: ignore[arg-type]
        case_state=case_state,
    )
    await receiver.start()
    return store, receiver, states, asked


def _stored(store: Store) -> int:
    import sqlite3

    conn = sqlite3.connect(store.path)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


async def test_alarm_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    store, receiver, _, _ = await _receiver(
        tmp_path, tls_port=0, tls_cert=str(cert), tls_key=str(key)
    )
    try:
        assert receiver.tls_port
        context = ssl.create_default_context(cafile=str(cert))
        device = ScaipDevice(
            "127.0.0.1",
            receiver.tls_port,
            cid="4242",
            user="dev",
            password="pw",
            transport="tls",
            ssl_context=context,
        )
        async with device:
            await device.register()
            exchange = await device.alarm(dty=5, stc=9, ref="TLS1")
        assert exchange.mrs is not None and exchange.mrs.snu == 0
        assert _stored(store) == 1
    finally:
        await receiver.stop()
        await store.close()


async def test_hold_resend_until_accepted(tmp_path: Path) -> None:
    store, receiver, states, asked = await _receiver(tmp_path)
    try:
        device = ScaipDevice(
            "127.0.0.1", receiver.port, cid="9001", user="hold", password="pw", t1=0.05
        )
        original = receiver.case_state
        assert original is not None

        def accept_on_third(cid: str, ref: str) -> str | None:
            if len(asked) >= 2:
                states[(cid, ref)] = "accepted"
            return original(cid, ref)

        receiver.case_state = accept_on_third
        async with device:
            exchanges = await device.alarm_until_handled(ref="HOLD1", resend_after=0)
        assert [e.mrs.snu for e in exchanges if e.mrs] == [
            scaip.Snu.HOLD,
            scaip.Snu.HOLD,
            scaip.Snu.OK,
        ]
        assert _stored(store) == 1  # three sends, one event
    finally:
        await receiver.stop()
        await store.close()


async def test_mrs_retransmitted_over_udp_until_answered(tmp_path: Path) -> None:
    store, receiver, _, _ = await _receiver(tmp_path)
    try:
        device = ScaipDevice(
            "127.0.0.1", receiver.port, cid="7007", user="dev", password="pw", t1=0.05
        )
        async with device:
            await device.alarm(ref="U0")  # takes a nonce
            # now a raw socket plays the device and does not answer the <mrs> at first
            loop = asyncio.get_running_loop()
            got: asyncio.Queue[bytes] = asyncio.Queue()

            class Raw(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: object) -> None:
                    got.put_nowait(data)

            raw, _ = await loop.create_datagram_endpoint(
                Raw, remote_addr=("127.0.0.1", receiver.port)
            )
            device.local_port = raw.get_extra_info("sockname")[1]
            raw.sendto(
                device.build(
                    "MESSAGE",
                    "z9hG4bKraw1",
                    "raw1@x",
                    7,
                    headers=[("Content-Type", "application/scaip+xml")],
                    body=mrq_body("U1", "7007", 3),
                )
            )
            copies: list[SipRequest] = []
            while len(copies) < 3:  # the 200 OK, then the <mrs> MESSAGE and its copies
                item = parse_datagram(await asyncio.wait_for(got.get(), 5))
                if isinstance(item, SipRequest):
                    copies.append(item)
            assert len({c.top_via.branch for c in copies}) == 1  # one transaction
            assert scaip.parse_mrs(copies[0].body).snu == 0
            raw.sendto(build_response(copies[0], 200, to_tag="t"))
            for _ in range(20):  # the response ends the client transaction
                if not receiver._client_tx:
                    break
                await asyncio.sleep(0.01)
            assert not receiver._client_tx
            raw.close()
    finally:
        await receiver.stop()
        await store.close()


async def _alarmctl(*args: str) -> tuple[int, str]:
    """``alarmctl`` as the installer runs it: its own process, its own event loop."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "alarmctl"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


def _tls_messages_ok() -> float:
    value = metrics.REGISTRY.get_sample_value(
        "alarmd_sip_requests_total", {"transport": "tls", "method": "MESSAGE", "status": "200"}
    )
    return value or 0.0


async def test_alarmctl_simulate_scaip_over_tls(tmp_path: Path) -> None:
    """``alarmctl simulate scaip --tls`` against the real receiver's TLS port: with the
    receiver's self-signed certificate as ``--ca``, with ``--insecure``, and refused (the
    certificate does not verify, nothing stored) with neither."""
    cert, key = self_signed(tmp_path)
    store, receiver, _, _ = await _receiver(
        tmp_path, tls_port=0, tls_cert=str(cert), tls_key=str(key)
    )
    before = _tls_messages_ok()
    try:
        assert receiver.tls_port
        common = [
            "--data-dir",
            str(tmp_path),
            "simulate",
            "scaip",
            "--port",
            str(receiver.tls_port),
            "--cid",
            "4243",
            "--user",
            "dev",
            "--password",
            "pw",
            "--tls",
        ]
        code, out = await _alarmctl(*common, "--ca", str(cert))
        assert code == 0, out
        assert "200 OK; <mrs snu=0>" in out
        assert _stored(store) == 1
        code, out = await _alarmctl(*common, "--insecure", "--dty", "5", "--stc", "9")
        assert code == 0, out
        assert "<mrs snu=0>" in out
        assert _stored(store) == 2
        code, out = await _alarmctl(*common)  # the system's CAs do not know this certificate
        assert code == 1
        assert "CERTIFICATE_VERIFY_FAILED" in out
        assert _stored(store) == 2
        code, out = await _alarmctl(*common[:-1], "--ca", str(cert))  # --ca without --tls
        assert code == 2 and "--tls" in out
        # both alarms came over TLS connections (the 200s counted under transport "tls")
        assert _tls_messages_ok() - before == 2
    finally:
        await receiver.stop()
        await store.close()

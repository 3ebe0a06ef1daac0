"""The SIP/SCAIP receiver on real sockets (127.0.0.1, ephemeral ports) with a real SQLite store.

Peers: the project's device simulator and Debian's ``sipsak`` (a real third-party client).
The server's wall clock is a FakeClock; nothing here waits for a deadline by sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alarmd.clock import FakeClock
from alarmd.intake import Intake
from alarmd.protocols import scaip
from alarmd.protocols.sip import SipResponse, parse_datagram
from alarmd.sim.scaip import ScaipDevice, mrq_body, simulate
from alarmd.store.db import Store, StoreError
from alarmd.transports.sip import (
    AckPolicy,
    ScaipAccount,
    SipReceiver,
    SipSettings,
    heartbeat_interval,
)

NOW = datetime(2026, 11, 24, 21, 0, 0, tzinfo=UTC)
ACCOUNTS = {
    "123456": ScaipAccount("secret1", cids=frozenset({"123456"})),
    "group-a": ScaipAccount("groupsecret"),
    "hold": ScaipAccount("holdsecret", ack_policy=AckPolicy.HOLD_UNTIL_ACCEPTED),
    "in200": ScaipAccount("in200secret", mrs_in_200=True),
}


@dataclass
class Stack:
    store: Store
    intake: Intake
    receiver: SipReceiver
    clock: FakeClock
    case_states: dict[tuple[str, str], str]

    @property
    def port(self) -> int:
        return self.receiver.port

    def stored(self) -> list[tuple[str, str]]:
        """(kind, dedup_key) of every committed row, read by an independent connection."""
        conn = sqlite3.connect(self.store.path)
        try:
            return [
                tuple(r) for r in conn.execute("SELECT kind, dedup_key FROM events ORDER BY id")
            ]
        finally:
            conn.close()

    def device(self, cid: str = "123456", user: str | None = None, **kw: object) -> ScaipDevice:
        user = user or cid
        account = ACCOUNTS.get(user)
        password = str(kw.pop("password", account.password if account else "x"))
        return ScaipDevice(
            "127.0.0.1",
            self.port,
            cid=cid,
            user=user,
            password=password,
            t1=0.05,
            timeout=5.0,
            **kw,  # type: ignore[arg-type]
        )


async def make_stack(tmp_path: Path, clock: FakeClock | None = None) -> Stack:
    clock = clock or FakeClock(NOW)
    store = await Store.open(tmp_path / "alarmd.sqlite")
    intake = Intake(
        store,
        dedup_window=timedelta(hours=24),
        tenant_of=lambda protocol, source: "eksempel-kommune",
    )
    states: dict[tuple[str, str], str] = {}
    receiver = SipReceiver(
        intake=intake,
        store=store,
        clock=clock,
        accounts=ACCOUNTS.get,
        settings=SipSettings(host="127.0.0.1", port=0, heartbeat_minutes=60, t1=0.05),
        case_state=lambda cid, ref: states.get((cid, ref)),
    )
    await receiver.start()
    return Stack(store, intake, receiver, clock, states)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = await make_stack(tmp_path)
    yield s
    await s.receiver.stop()
    await s.store.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_alarm_stored_then_mrs_ok(stack: Stack, transport: str) -> None:
    async with stack.device(transport=transport) as dev:
        await dev.register()
        exchange = await dev.alarm(dty=5, stc=9, ref="A1")
    assert exchange.response.status == 200
    assert exchange.mrs is not None
    assert (exchange.mrs.ref, exchange.mrs.snu) == ("A1", 0)
    # the <mrs> is in our hands: the event is committed (seen by another connection)
    assert stack.stored() == [("fall", "scaip:123456:A1")]


async def test_resent_mrq_stored_once_answered_again(stack: Stack) -> None:
    async with stack.device() as dev:
        first = await dev.alarm(ref="R1")
        second = await dev.alarm(ref="R1")
    assert first.mrs is not None and second.mrs is not None
    assert first.mrs.snu == second.mrs.snu == 0
    assert len(stack.stored()) == 1


async def test_sip_retransmission_same_branch_answered_from_cache(stack: Stack) -> None:
    async with stack.device() as dev:
        await dev.alarm(ref="W1")  # gets a nonce
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Catch(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                got.put_nowait(data)

        udp, _ = await loop.create_datagram_endpoint(Catch, remote_addr=("127.0.0.1", stack.port))
        # the same datagram twice: one transaction, the second gets the cached response
        dev.local_port = udp.get_extra_info("sockname")[1]
        data = dev.build(
            "MESSAGE",
            "z9hG4bKsame",
            "call-1@x",
            99,
            headers=[("Content-Type", "application/scaip+xml")],
            body=mrq_body("W2", "123456", 3),
        )
        statuses = []
        for _ in range(2):  # answered, then the retransmission gets the cached response
            udp.sendto(data)
            while True:
                item = parse_datagram(await asyncio.wait_for(got.get(), 5))
                if isinstance(item, SipResponse):
                    statuses.append(item.status)
                    break
        udp.close()
    assert statuses == [200, 200]
    assert [k for _, k in stack.stored()] == ["scaip:123456:W1", "scaip:123456:W2"]


async def test_digest_challenge_then_ok_and_wrong_password(stack: Stack) -> None:
    async with stack.device(password="wrong") as dev:
        exchange = await dev.send_mrq(mrq_body("P1", "123456", 3), "P1")
    assert exchange.response.status == 403
    assert stack.stored() == []
    async with stack.device() as dev:
        # no credentials at all: 401 with a Digest challenge (the sim answers it)
        response = await dev.request("OPTIONS")
        assert response.status == 200
        assert dev._challenge is None  # OPTIONS needs no authentication
        exchange = await dev.alarm(ref="P2")
        assert dev._challenge is not None
    assert exchange.mrs is not None and exchange.mrs.snu == 0


async def test_stale_nonce_is_retried(stack: Stack) -> None:
    async with stack.device() as dev:
        await dev.alarm(ref="S1")
        stack.clock.advance(3600)  # the nonce expired: 401 stale=true, the device retries
        exchange = await dev.alarm(ref="S2")
    assert exchange.mrs is not None and exchange.mrs.snu == 0
    assert len(stack.stored()) == 2


async def test_replayed_nonce_count_refused(stack: Stack) -> None:
    async with stack.device() as dev:
        await dev.alarm(ref="N1")
        dev._nc -= 1
        exchange = await dev.send_mrq(mrq_body("N2", "123456", 3), "N2")
    assert exchange.response.status == 403
    assert len(stack.stored()) == 1


@pytest.mark.parametrize(
    ("body", "snu"),
    [
        (b"<mrq><ref>X1</ref><cid>123456</cid><dty>3", 2),  # not well-formed
        (b"<mrq><ref>X1</ref><dty>3</dty></mrq>", 7),  # cid missing
        (b"<mrq><cid>123456</cid><dty>3</dty></mrq>", 10),  # ref missing
        (b"<mrq><ref>X1</ref><cid>12ab</cid><dty>3</dty></mrq>", 3),  # wrong data
        (b'<!DOCTYPE m [<!ENTITY a "aaaa">]><mrq><ref>X1</ref></mrq>', 2),  # entities
        (b"<mrq><ref>X1</ref>" + b"<a>" * 50 + b"</a>" * 50 + b"</mrq>", 2),  # deep nesting
    ],
)
async def test_bad_xml_answered_with_snu(stack: Stack, body: bytes, snu: int) -> None:
    async with stack.device(transport="tcp") as dev:
        exchange = await dev.send_mrq(body, "X1" if snu != 10 else "")
        assert exchange.mrs is not None and exchange.mrs.snu == snu
        # the next message on the same connection still works
        ok = await dev.alarm(ref="X2")
        assert ok.mrs is not None and ok.mrs.snu == 0
    assert [k for _, k in stack.stored()] == ["scaip:123456:X2"]


async def test_too_long_mrq_gets_snu_1_and_connection_goes_on(stack: Stack) -> None:
    body = mrq_body("L1", "123456", 3, extra="<dte>" + "x" * 9000 + "</dte>")
    async with stack.device(transport="tcp") as dev:
        exchange = await dev.send_mrq(body, "L1")
        assert exchange.mrs is not None and exchange.mrs.snu == scaip.Snu.TOO_LONG
        ok = await dev.alarm(ref="L2")
        assert ok.mrs is not None and ok.mrs.snu == 0
    assert [k for _, k in stack.stored()] == ["scaip:123456:L2"]


async def test_device_account_cannot_claim_another_cid(stack: Stack) -> None:
    async with stack.device() as dev:
        exchange = await dev.send_mrq(mrq_body("C1", "999999", 3), "C1")
    assert exchange.mrs is not None and exchange.mrs.snu == scaip.Snu.WRONG_DATA
    assert stack.stored() == []


async def test_overload_answers_busy_and_stores_nothing(stack: Stack) -> None:
    stack.receiver.settings = dataclasses.replace(stack.receiver.settings, max_in_flight=0)
    async with stack.device() as dev:
        exchange = await dev.alarm(ref="BZ1")
    assert exchange.mrs is not None and exchange.mrs.snu == scaip.Snu.BUSY
    assert stack.stored() == []


async def test_garbage_datagrams_then_an_alarm_still_works(stack: Stack) -> None:
    import random

    rng = random.Random(5)
    loop = asyncio.get_running_loop()
    junk, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", stack.port)
    )
    valid = b"MESSAGE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKj\r\n\r\n"
    for _ in range(300):
        cut = rng.randrange(len(valid))
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        junk.sendto(valid[:cut] + noise + valid[cut + rng.randrange(5) :])
    junk.close()
    async with stack.device() as dev:
        exchange = await dev.alarm(ref="G1")
    assert exchange.mrs is not None and exchange.mrs.snu == 0


async def test_simulate_entry_point(stack: Stack) -> None:
    exchanges = await simulate(
        "127.0.0.1", stack.port, cid="123456", user="123456", password="secret1", dty=5
    )
    assert [e.mrs.snu for e in exchanges if e.mrs] == [0]


async def test_unknown_method_and_wrong_content_type(stack: Stack) -> None:
    async with stack.device() as dev:
        assert (await dev.request("SUBSCRIBE")).status == 405
        response = await dev.request(
            "MESSAGE", headers=[("Content-Type", "text/plain")], body=b"hello"
        )
        assert response.status == 415


async def test_bad_sip_gets_400_and_too_large_413(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    head = (
        "MESSAGE sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKbig\r\n"
        "From: <sip:1@x>;tag=1\r\nTo: <sip:1@x>\r\nCall-ID: big\r\nCSeq: 1 MESSAGE\r\n"
        "Content-Type: application/scaip+xml\r\n"
    )
    writer.write((head + "Content-Length: 1000000\r\n\r\n").encode())
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.startswith(b"SIP/2.0 413")
    # the 1 MB body is skipped, not buffered; the connection goes on with the next message
    for _ in range(16):
        writer.write(b"x" * 62500)
        await writer.drain()
    options = head.replace("MESSAGE sip:", "OPTIONS sip:").replace("1 MESSAGE", "2 OPTIONS")
    writer.write((options + "Content-Length: 0\r\n\r\n").encode())
    while not line.startswith(b"SIP/2.0 200"):
        line = await asyncio.wait_for(reader.readline(), 5)
    assert stack.receiver._connections
    writer.write(
        (head.replace("CSeq: 1 MESSAGE", "CSeq: x") + "Content-Length: 0\r\n\r\n").encode()
    )
    while not line.startswith(b"SIP/2.0 400"):
        line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()


async def test_tcp_merged_and_split_reads(stack: Stack) -> None:
    async with stack.device(transport="tcp") as dev:
        await dev.alarm(ref="T0")  # take a nonce
        datas = []
        for ref in ("T1", "T2"):
            datas.append(
                dev.build(
                    "MESSAGE",
                    f"z9hG4bK{ref}",
                    f"c{ref}",
                    50,
                    headers=[("Content-Type", "application/scaip+xml")],
                    body=mrq_body(ref, "123456", 3),
                )
            )
        queues = [dev.mrs_queue(r) for r in ("T1", "T2", "T3")]
        dev.send_raw(datas[0] + datas[1])  # two messages in one write
        # both answered before the split one goes out: the device's own 200s to the <mrs>
        # MESSAGEs must not land between its bytes
        mrs = [await asyncio.wait_for(q.get(), 5) for q in queues[:2]]
        third = dev.build(
            "MESSAGE",
            "z9hG4bKT3",
            "cT3",
            51,
            headers=[("Content-Type", "application/scaip+xml")],
            body=mrq_body("T3", "123456", 3),
        )
        for i in range(len(third)):  # one byte at a time
            dev.send_raw(third[i : i + 1])
            if i % 50 == 0:
                await asyncio.sleep(0)
        mrs.append(await asyncio.wait_for(queues[2].get(), 5))
    assert [m.snu for m in mrs] == [0, 0, 0]
    assert [k for _, k in stack.stored()][1:] == [f"scaip:123456:T{i}" for i in (1, 2, 3)]


async def test_mrs_in_200_body(stack: Stack) -> None:
    async with stack.device(cid="777", user="in200") as dev:
        exchange = await dev.alarm(ref="B1")
    assert exchange.response.body.startswith(b"<mrs>")
    assert exchange.mrs is not None and exchange.mrs.snu == 0
    assert dev.mrs_messages == 0


async def test_group_account_and_heartbeat_interval(stack: Stack) -> None:
    async with stack.device(cid="555", user="group-a") as dev:
        exchange = await dev.alarm(ref="H1", hbo=True)
        ping = await dev.send_mrq(
            b"<mrq><ref>H2</ref><mty>PI</mty><cid>555</cid><dty>2</dty></mrq>", "H2"
        )
    assert exchange.mrs is not None and exchange.mrs.hbi == heartbeat_interval(60, "555")
    assert ping.mrs is not None and ping.mrs.snu == 0
    assert [k for _, k in stack.stored()] == ["scaip:555:H1"]  # the heartbeat is not an event
    assert {heartbeat_interval(60, str(c)) for c in range(100)} != {60}  # spread


async def test_hold_until_accepted(stack: Stack) -> None:
    async with stack.device(cid="888", user="hold") as dev:
        first = await dev.alarm(ref="HO1")
        again = await dev.alarm(ref="HO1")
        stack.case_states[("888", "HO1")] = "accepted"
        handled = await dev.alarm_until_handled(ref="HO1", resend_after=0)
    assert first.mrs is not None and first.mrs.snu == scaip.Snu.HOLD
    assert again.mrs is not None and again.mrs.snu == scaip.Snu.HOLD
    assert [e.mrs.snu for e in handled if e.mrs] == [0]
    assert [k for _, k in stack.stored()] == ["scaip:888:HO1"]  # one event for all re-sends


async def test_store_failure_gives_no_mrs(stack: Stack) -> None:
    def failing(events: object) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_exception(StoreError("disk full"))
        return future

    stack.intake.submit_future = failing  # type: ignore[assignment, method-assign]
    async with stack.device() as dev:
        exchange = await dev.send_mrq(mrq_body("F1", "123456", 3), "F1", want_mrs=False)
    assert exchange.response.status == 500
    assert exchange.mrs is None
    assert dev.mrs_messages == 0


async def test_registrar_survives_restart(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    s = await make_stack(tmp_path, clock)
    dev = s.device()
    await dev.open()
    await dev.register()
    port = s.port
    await s.receiver.stop()
    await s.store.close()
    s2 = await make_stack(tmp_path, clock)
    try:
        assert "sip:123456@127.0.0.1" in s2.receiver.bindings
        binding = s2.receiver.bindings["sip:123456@127.0.0.1"]
        assert (binding.host, binding.port) == ("127.0.0.1", dev.local_port)
        # the device talks to the restarted receiver (another port) from the same socket;
        # its old nonce is stale, it retries, and the <mrs> reaches the registered contact
        dev.port = s2.port
        exchange = await dev.alarm(ref="RS1")
        await dev.close()
        assert port != s2.port
        assert exchange.mrs is not None and exchange.mrs.snu == 0
    finally:
        await s2.receiver.stop()
        await s2.store.close()


async def test_mrs_goes_to_the_registered_contact_after_restart(tmp_path: Path) -> None:
    """REGISTER from one socket, restart, MESSAGE from another: the <mrs> MESSAGE goes to
    the binding read back from the database, not to the MESSAGE's source."""
    clock = FakeClock(NOW)
    s = await make_stack(tmp_path, clock)
    dev = s.device()
    await dev.open()
    await dev.register()
    await s.receiver.stop()
    await s.store.close()
    s2 = await make_stack(tmp_path, clock)
    try:
        dev.port = s2.port
        await dev.request("OPTIONS")
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Other(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                answers.put_nowait(data)

        other, _ = await loop.create_datagram_endpoint(Other, remote_addr=("127.0.0.1", s2.port))
        queue = dev.mrs_queue("RC1")
        # the device's credentials (a fresh challenge from the restarted receiver)
        first = await dev.send_mrq(mrq_body("RC0", "123456", 3), "RC0")
        assert first.mrs is not None
        data = dev.build(
            "MESSAGE",
            "z9hG4bKother",
            "other@x",
            77,
            headers=[("Content-Type", "application/scaip+xml")],
            body=mrq_body("RC1", "123456", 3),
        )
        other.sendto(data)
        status = parse_datagram(await asyncio.wait_for(answers.get(), 5))
        assert isinstance(status, SipResponse) and status.status == 200
        mrs = await asyncio.wait_for(queue.get(), 5)  # arrives on the registered socket
        assert (mrs.ref, mrs.snu) == ("RC1", 0)
        other.close()
        await dev.close()
    finally:
        await s2.receiver.stop()
        await s2.store.close()


sipsak = pytest.mark.skipif(shutil.which("sipsak") is None, reason="sipsak not installed")


async def _sipsak(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "sipsak",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


@sipsak
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipsak_options_and_register(stack: Stack, transport: str) -> None:
    uri = f"sip:123456@127.0.0.1:{stack.port}"
    code, out = await _sipsak("-s", uri, "-vv", "--transport", transport)
    assert code == 0, out
    assert "200 OK" in out
    code, out = await _sipsak(
        "-U", "-s", uri, "-u", "123456", "-a", "secret1", "--transport", transport, "-x", "600"
    )
    assert code == 0, out
    assert "sip:123456@127.0.0.1" in stack.receiver.bindings, out
    code, out = await _sipsak("-U", "-s", uri, "-u", "123456", "-a", "wrong", "-x", "600")
    assert "403 Forbidden" in out


@sipsak
@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("user", ["123456", "in200"])
async def test_sipsak_scaip_message(
    stack: Stack, tmp_path: Path, transport: str, user: str
) -> None:
    """sipsak sends the MESSAGE (answering the Digest challenge itself); the event is
    stored and answered 200 only after the commit; with mrs_in_200 sipsak sees the <mrs>.

    The separate <mrs> MESSAGE cannot be shown to sipsak (0.9.8.1): with ``-f`` (the only
    way to send a SCAIP body) it ends at the first final response; its only mode that
    waits for a MESSAGE (``-M`` without ``-B``) sends its own hard-coded ``text/plain``
    MESSAGE and expects that one back before any final response, and on Debian it dies
    with SIGSEGV before sending anything (with or without ``-U``/``-B``). It has no
    listen-only option. The separate MESSAGE is shown with the simulator instead."""
    body = "<mrq><ref>SK1</ref><cid>123456</cid><dty>5</dty><stc>9</stc></mrq>"
    message = (
        f"MESSAGE sip:127.0.0.1:{stack.port} SIP/2.0\r\n"
        "From: <sip:123456@127.0.0.1>;tag=ab1\r\nTo: <sip:alarmd@127.0.0.1>\r\n"
        "Call-ID: sk1@127.0.0.1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        f"Content-Type: application/scaip+xml\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    path = tmp_path / "message.sip"
    path.write_bytes(message.encode())
    code, out = await _sipsak(
        "-f", str(path), "-s", f"sip:{user}@127.0.0.1:{stack.port}", "-u", user,
        "-a", ACCOUNTS[user].password, "-vv", "--transport", transport,
    )  # fmt: skip
    assert code == 0, out
    assert "200 OK" in out
    assert stack.stored() == [("fall", "scaip:123456:SK1")]
    if user == "in200":
        assert "<mrs><ref>SK1</ref><snu>0</snu></mrs>" in out

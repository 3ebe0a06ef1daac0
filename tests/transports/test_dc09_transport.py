"""The DC-09 receiver on real sockets (127.0.0.1, ephemeral ports) with a real SQLite store.

The server's wall clock is a FakeClock, so timestamp-window behaviour is decided by the
test, not by how fast the machine is.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from alarmd import metrics
from alarmd.clock import FakeClock
from alarmd.intake import Intake
from alarmd.model import EventKind, Flag
from alarmd.protocols.dc09 import (
    Dc09Account,
    KeyFormat,
    TimestampPolicy,
    decode_key,
    encode_message,
    parse_reply,
)
from alarmd.sim.dc09 import Dc09Transmitter
from alarmd.store.db import Store, StoreError
from alarmd.store.events import list_events
from alarmd.transports.dc09 import Dc09Receiver, Dc09Settings

NOW = datetime(2026, 11, 24, 21, 0, 0, tzinfo=UTC)
KEY128 = decode_key("0123456789ABCDEF", KeyFormat.ASCII)
KEY192 = decode_key("00112233445566778899AABBCCDDEEFF0011223344556677", KeyFormat.HEX)
KEY256 = decode_key(
    "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF", KeyFormat.HEX
)
ACCOUNTS = {
    "1234": Dc09Account("1234", zone_kinds={3: EventKind.FALL}),
    "5678": Dc09Account("5678", key=KEY128),
    "5192": Dc09Account("5192", key=KEY192),
    "5256": Dc09Account("5256", key=KEY256),
}
TENANTS = {acct: "eksempel-kommune" for acct in ACCOUNTS}


@dataclass
class Stack:
    store: Store
    intake: Intake
    receiver: Dc09Receiver
    clock: FakeClock

    @property
    def port(self) -> int:
        return self.receiver.port

    def stored(self) -> list[tuple[str, str, str, str]]:
        """(source, kind, zone, flags) of every committed row, read by an independent connection."""
        conn = sqlite3.connect(self.store.path)
        try:
            return [
                tuple(r)
                for r in conn.execute(
                    "SELECT source, kind, zone, flags FROM events"
                    " WHERE source != 'FILL' ORDER BY id"
                )
            ]
        finally:
            conn.close()


async def make_stack(tmp_path: Path, **settings: object) -> Stack:
    clock = FakeClock(NOW)
    store = await Store.open(tmp_path / "alarmd.sqlite")
    intake = Intake(
        store,
        dedup_window=timedelta(hours=24),
        tenant_of=lambda protocol, source: TENANTS.get(source),
    )
    receiver = Dc09Receiver(
        intake=intake,
        clock=clock,
        accounts=ACCOUNTS.get,
        policy=TimestampPolicy(),
        settings=Dc09Settings(host="127.0.0.1", port=0, **settings),  # type: ignore[arg-type]
    )
    await receiver.start()
    return Stack(store, intake, receiver, clock)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = await make_stack(tmp_path)
    yield s
    await s.receiver.stop()
    await s.store.close()


def cid(account: str, seq: int, code: int = 100, zone: int = 1, **kw: object) -> bytes:
    return encode_message(
        "ADM-CID",
        seq,
        account,
        f"#{account}|1{code:03d}01 {zone:03d}",
        receiver="1",
        line="1",
        **kw,  # type: ignore[arg-type]
    )


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r"), 5)


async def test_tcp_ack_after_commit(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(cid("1234", 1))
    reply = await read_reply(reader)
    # the moment the ACK is in our hands, the event is committed (seen by another connection)
    assert stack.stored() == [("1234", "assistance", "1", "")]
    assert parse_reply(reply).kind == "ACK"
    assert parse_reply(reply).seq == "0001"
    writer.close()


async def test_merged_frames_in_one_write_are_all_acked(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(cid("1234", 1, zone=1) + cid("1234", 2, zone=2) + cid("1234", 3, zone=3))
    replies = [parse_reply(await read_reply(reader)) for _ in range(3)]
    assert [r.seq for r in replies] == ["0001", "0002", "0003"]  # in order
    assert [row[1:3] for row in stack.stored()] == [
        ("assistance", "1"),
        ("assistance", "2"),
        ("fall", "3"),
    ]
    writer.close()


async def test_split_frame_across_reads(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    frame = cid("1234", 7)
    for i in range(len(frame)):
        writer.write(frame[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0)  # let the server read each byte on its own
    assert parse_reply(await read_reply(reader)).kind == "ACK"
    assert len(stack.stored()) == 1
    writer.close()


async def test_udp_frame_is_acked_to_its_source(stack: Stack) -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(
        Client, remote_addr=("127.0.0.1", stack.port)
    )
    transport.sendto(cid("1234", 11))
    reply = parse_reply(await asyncio.wait_for(got, 5))
    assert (reply.kind, reply.seq) == ("ACK", "0011")
    assert len(stack.stored()) == 1
    transport.close()


@pytest.mark.parametrize(("account", "key"), [("5678", KEY128), ("5192", KEY192), ("5256", KEY256)])
async def test_encrypted_each_key_size(stack: Stack, account: str, key: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(cid(account, 42, key=key, timestamp=NOW))
    reply = parse_reply(await read_reply(reader), key=key)
    assert reply.kind == "ACK" and reply.encrypted and reply.seq == "0042"
    assert [row[:3] for row in stack.stored()] == [(account, "assistance", "1")]
    writer.close()


async def test_clear_text_refused_for_keyed_account(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(cid("5678", 1))
    assert parse_reply(await read_reply(reader)).kind == "DUH"
    assert stack.stored() == []
    writer.close()


async def test_encrypted_from_unknown_account_gets_duh_a_metric_and_the_raw_hex(
    stack: Stack,
) -> None:
    rejected = metrics.DC09_REJECTED.labels("unknown_account_encrypted")
    before = rejected._value.get()
    frame = cid("ABCD", 1, key=KEY128, timestamp=NOW)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    with structlog.testing.capture_logs() as logs:
        writer.write(frame)
        assert parse_reply(await read_reply(reader)).kind == "DUH"
    assert stack.stored() == []
    assert rejected._value.get() == before + 1
    [line] = [entry for entry in logs if entry["event"] == "dc09_frame_rejected"]
    assert line["raw_hex"] == frame.hex()
    assert line["reason"] == "unknown_account_encrypted"
    writer.close()


async def test_unknown_account_in_clear_is_stored_flagged_and_acked(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(cid("9999", 1))
    assert parse_reply(await read_reply(reader)).kind == "ACK"
    assert stack.stored() == [("9999", "assistance", "1", Flag.UNREGISTERED.value)]
    events = await list_events(stack.store.reader)
    assert events[0].tenant is None
    writer.close()


async def test_nak_resync_with_the_simulator(stack: Stack) -> None:
    """The transmitter's clock is 2 minutes off; the NAK carries ours; the re-send is accepted."""
    tx = Dc09Transmitter(
        "127.0.0.1",
        stack.port,
        account="5678",
        key=KEY128,
        ack_timeout=5.0,
        clock_offset=(NOW - datetime.now(UTC)) + timedelta(minutes=2),
    )
    try:
        reply = await tx.send("ADM-CID", "#5678|1100 01 004")
    finally:
        await tx.close()
    assert reply.kind == "ACK"
    assert tx.stats.naks == 1
    assert [row[:3] for row in stack.stored()] == [("5678", "assistance", "4")]


async def test_retransmission_stored_once_acked_twice(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    frame = cid("1234", 5)
    writer.write(frame)
    first = parse_reply(await read_reply(reader))
    stack.clock.advance(20)  # the transmitter missed our ACK and re-sends later
    writer.write(frame)
    second = parse_reply(await read_reply(reader))
    assert (first.kind, second.kind) == ("ACK", "ACK")
    assert first.seq == second.seq == "0005"
    assert len(stack.stored()) == 1
    events = await list_events(stack.store.reader)
    assert events[0].retransmissions == 1
    writer.close()


async def test_frames_of_many_connections_share_a_commit_each_ack_to_its_own(
    stack: Stack,
) -> None:
    """20 transmitters send at once (intake stores them with shared writer jobs), and five
    more send the same frame at once (a transmitter on two paths): every connection gets
    the ACK for its own frame, the copies are stored once and counted."""
    conns = [await asyncio.open_connection("127.0.0.1", stack.port) for _ in range(25)]
    frames = [cid("1234", 100 + i, zone=i + 1) for i in range(20)] + [cid("1234", 7)] * 5
    for (_, writer), frame in zip(conns, frames, strict=True):
        writer.write(frame)
    replies = [parse_reply(await read_reply(reader)) for reader, _ in conns]
    assert [r.kind for r in replies] == ["ACK"] * 25
    assert [r.seq for r in replies] == [f"{100 + i:04d}" for i in range(20)] + ["0007"] * 5
    stored = stack.stored()
    assert len(stored) == 21
    assert sorted(int(zone) for _, _, zone, _ in stored) == sorted([*range(1, 21), 1])
    copies = [e for e in await list_events(stack.store.reader) if e.retransmissions]
    assert len(copies) == 1 and copies[0].retransmissions == 4
    for _, writer in conns:
        writer.close()


async def test_no_ack_when_the_store_cannot_commit_then_accepted_after_recovery(
    stack: Stack,
) -> None:
    writer_ = stack.store.writer
    pages = await writer_.submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await writer_.submit(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}"))
    filler = (
        "INSERT INTO events (received_at, protocol, source, kind, category, condition, priority,"
        " code, dedup_key, raw) VALUES ('x', 'test', 'FILL', 'test', 'info', 'alarm', 0, '',"
        " hex(randomblob(8)), zeroblob(?))"
    )

    async def fill_until_full(size: int) -> None:
        for _ in range(2000):
            try:
                await writer_.submit(lambda c: c.execute(filler, (size,)))
            except StoreError:
                return
        raise AssertionError("the database never became full")

    for size in (1500, 300, 50, 1):  # fill the database until not even a tiny row fits
        await fill_until_full(size)
    assert writer_.failed

    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    frame = encode_message("SIA-DCS", 9, "1234", "#1234|Nri1/MA001", receiver="1", line="1")
    failures_before = metrics.UNACKED_STORE_FAILURE.labels("dc09")._value.get()
    writer.write(frame)
    # wait until the transport has seen the commit fail (an event, not a deadline) ...
    for _ in range(500):
        if metrics.UNACKED_STORE_FAILURE.labels("dc09")._value.get() > failures_before:
            break
        await asyncio.sleep(0.01)
    assert metrics.UNACKED_STORE_FAILURE.labels("dc09")._value.get() == failures_before + 1
    for _ in range(5):
        await asyncio.sleep(0)
    # ... then nothing may have been written back to us, and nothing is stored
    assert reader._buffer == b""  # type: ignore[attr-defined]
    assert stack.stored() == []

    await writer_.submit(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    writer.write(frame)  # the transmitter re-sends after its timeout
    reply = parse_reply(await read_reply(reader))
    assert (reply.kind, reply.seq) == ("ACK", "0009")
    assert len(stack.stored()) == 1
    writer.close()


async def test_a_bad_peer_does_not_affect_another(stack: Stack) -> None:
    bad_r, bad_w = await asyncio.open_connection("127.0.0.1", stack.port)
    good_r, good_w = await asyncio.open_connection("127.0.0.1", stack.port)
    bad_w.write(b"\n" + b"Z" * 10_000)  # never a frame: exceeds the bound
    bad_w.write(b"\nGARBAGE\r")
    good_w.write(cid("1234", 1))
    assert parse_reply(await read_reply(good_r)).kind == "ACK"
    # a corrupted CRC on the bad connection gets a NAK, and the good one still works
    frame = bytearray(cid("1234", 2))
    frame[1:5] = b"0000"
    bad_w.write(bytes(frame))
    assert parse_reply(await read_reply(bad_r)).kind == "NAK"
    good_w.write(cid("1234", 3, zone=2))
    assert parse_reply(await read_reply(good_r)).kind == "ACK"
    assert len(stack.stored()) == 2
    bad_w.close()
    good_w.close()


async def test_idle_connections_are_closed_by_the_sweep(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, idle_timeout=60.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        for _ in range(100):
            if s.receiver.connection_count == 1:
                break
            await asyncio.sleep(0.01)
        assert s.receiver.sweep_idle() == 0
        s.clock.advance(61)
        assert s.receiver.sweep_idle() == 1
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
    finally:
        await s.receiver.stop()
        await s.store.close()


async def test_connection_limit(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, max_connections=2)
    try:
        conns = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(2)]
        for _ in range(100):
            if s.receiver.connection_count == 2:
                break
            await asyncio.sleep(0.01)
        r3, w3 = await asyncio.open_connection("127.0.0.1", s.port)
        assert await asyncio.wait_for(r3.read(), 5) == b""  # refused: closed at once
        r1, w1 = conns[0]
        w1.write(cid("1234", 1))
        assert parse_reply(await read_reply(r1)).kind == "ACK"  # the others are unaffected
        for _, w in conns:
            w.close()
        w3.close()
    finally:
        await s.receiver.stop()
        await s.store.close()


async def test_stop_finishes_in_flight_commits(tmp_path: Path) -> None:
    s = await make_stack(tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(b"".join(cid("1234", n, zone=n) for n in range(1, 21)))
    first = parse_reply(await read_reply(reader))
    assert first.kind == "ACK"
    await s.receiver.stop()
    rest = await reader.read()  # whatever was committed was answered before the close
    acks = 1 + rest.count(b'"ACK"')
    await s.store.close()
    conn = sqlite3.connect(s.store.path)
    stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert stored >= acks  # never an ACK without a stored event
    writer.close()


async def test_a_pipelining_peer_is_paused_not_buffered_and_every_frame_answered_in_order(
    stack: Stack,
) -> None:
    """200 frames in one write: more than the per-connection queue bound (64), so the
    connection is paused and resumed; every frame is answered, in order, after its commit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    frames = [cid("1234", n, zone=n % 1000) for n in range(1, 201)]
    writer.write(b"".join(frames))
    seqs = [parse_reply(await read_reply(reader)).seq for _ in frames]
    assert seqs == [f"{n:04d}" for n in range(1, 201)]
    assert len(stack.stored()) == 200
    writer.close()

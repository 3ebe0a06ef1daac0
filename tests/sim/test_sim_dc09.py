"""The DC-09 transmitter simulator against a tiny receiver built from the pure codec.

The receiver here is deliberately minimal (no store, no intake): it answers with
``handle_frame`` at once, can drop frames, and can run its clock ahead, so each test shows
one transmitter behaviour: ACK over TCP and UDP, NAK re-sync, re-send on timeout, DUH.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from alarmd.model import EventKind
from alarmd.protocols.dc09 import (
    Dc09Account,
    Dc09Framer,
    Dc09Message,
    Dc09Result,
    KeyFormat,
    StalePolicy,
    TimestampPolicy,
    decode_key,
    handle_frame,
)
from alarmd.sim.dc09 import (
    Dc09SendError,
    Dc09Transmitter,
    add_arguments,
    cid_data,
    run_from_args,
    run_simulation,
    sia_data,
)

KEY128 = decode_key("0123456789ABCDEF", KeyFormat.ASCII)
KEY256 = decode_key("00112233445566778899AABBCCDDEEFF" * 2, KeyFormat.HEX)
ACCOUNTS = {
    "1234": Dc09Account("1234"),
    "5678": Dc09Account("5678", key=KEY128),
    "5256": Dc09Account("5256", key=KEY256),
}


@dataclass
class Receiver:
    """A receiver on 127.0.0.1 (TCP and UDP) answering with the codec's decision."""

    clock_ahead: timedelta = timedelta(0)
    drop: int = 0  # how many frames to ignore before answering
    policy: TimestampPolicy = field(default_factory=TimestampPolicy)
    frames: list[bytes] = field(default_factory=list)
    results: list[Dc09Result] = field(default_factory=list)
    connections: int = 0
    tcp_port: int = 0
    udp_port: int = 0
    _server: asyncio.Server | None = None
    _udp: asyncio.DatagramTransport | None = None

    def answer(self, frame: bytes) -> bytes:
        self.frames.append(frame)
        if self.drop > 0:
            self.drop -= 1
            return b""
        result = handle_frame(
            frame,
            now=datetime.now(UTC) + self.clock_ahead,
            accounts=ACCOUNTS.get,
            policy=self.policy,
        )
        self.results.append(result)
        return result.reply

    @property
    def messages(self) -> list[Dc09Message]:
        return [r.message for r in self.results if r.message is not None]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.tcp_port = self._server.sockets[0].getsockname()[1]
        receiver = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                # not isinstance-checked: on 3.11 the selector transport does not subclass it
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
                reply = receiver.answer(data)
                if reply:
                    self.transport.sendto(reply, addr)

        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
        self.udp_port = self._udp.get_extra_info("sockname")[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        framer = Dc09Framer()
        try:
            while data := await reader.read(4096):
                for frame in framer.feed(data):
                    if isinstance(frame, bytes) and (reply := self.answer(frame)):
                        writer.write(reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


def seqs(receiver: Receiver) -> list[str]:
    """The seq of every frame the receiver got: the 4 digits after the token's closing quote."""
    closing = [f.index(b'"', 10) for f in receiver.frames]
    return [f[q + 1 : q + 5].decode() for f, q in zip(receiver.frames, closing, strict=True)]


def test_data_helpers() -> None:
    assert cid_data("1234", 100, 1) == "#1234|1100 01 001"
    assert cid_data("1234", 301, 0, qualifier=3, group=0) == "#1234|3301 00 000"
    assert sia_data("1234", "MA", 1, area=2) == "#1234|Nri2/MA001"
    assert sia_data("1234", "RP") == "#1234|NRP"


async def test_ack_flow_over_one_tcp_connection(rx: Receiver) -> None:
    async with Dc09Transmitter("127.0.0.1", rx.tcp_port, account="1234", receiver="1") as tx:
        replies = [await tx.send("ADM-CID", cid_data("1234", 100, zone)) for zone in (1, 2, 3)]
        null = await tx.send("NULL", "")
    assert [(r.kind, r.seq, r.account) for r in replies] == [
        ("ACK", "0001", "1234"),
        ("ACK", "0002", "1234"),
        ("ACK", "0003", "1234"),
    ]
    assert (null.kind, null.seq) == ("ACK", "0004")
    assert rx.connections == 1  # the connection is kept between messages
    assert [e.zone for r in rx.results for e in r.events] == ["1", "2", "3"]
    assert rx.results[-1].is_link_test
    assert (tx.stats.frames, tx.stats.retries, tx.stats.naks) == (4, 0, 0)


async def test_ack_flow_over_udp(rx: Receiver) -> None:
    async with Dc09Transmitter("127.0.0.1", rx.udp_port, account="1234", udp=True) as tx:
        first = await tx.send("SIA-DCS", sia_data("1234", "MA", 7, area=1))
        second = await tx.send("ADM-CID", cid_data("1234", 602, 0, group=0))
    assert (first.kind, first.seq, second.kind, second.seq) == ("ACK", "0001", "ACK", "0002")
    kinds = [e.kind for r in rx.results for e in r.events]
    assert kinds == [EventKind.ASSISTANCE, EventKind.TEST]
    assert rx.connections == 0


async def test_encrypted_flow(rx: Receiver) -> None:
    async with Dc09Transmitter("127.0.0.1", rx.tcp_port, account="5256", key=KEY256) as tx:
        reply = await tx.send("ADM-CID", cid_data("5256", 100, 4), xdata=[("M", "00AABBCCDDEE")])
    assert (reply.kind, reply.encrypted, reply.seq) == ("ACK", True, "0001")
    assert reply.timestamp is not None
    assert abs(reply.timestamp - datetime.now(UTC)) < timedelta(seconds=5)
    (message,) = rx.messages
    assert message.encrypted and message.data == "#5256|1100 01 004"
    assert message.xdata == (("M", "00AABBCCDDEE"),)
    assert b'"*ADM-CID"' in rx.frames[0] and b"#5256|" not in rx.frames[0]


@pytest.mark.parametrize("udp", [False, True])
async def test_nak_resync_resends_the_same_seq_with_the_receivers_time(
    rx: Receiver, udp: bool
) -> None:
    rx.clock_ahead = timedelta(minutes=2)  # the receiver's clock is 2 minutes ahead of ours
    port = rx.udp_port if udp else rx.tcp_port
    async with Dc09Transmitter("127.0.0.1", port, account="5678", key=KEY128, udp=udp) as tx:
        reply = await tx.send("ADM-CID", cid_data("5678", 100, 1))
        again = await tx.send("ADM-CID", cid_data("5678", 100, 2))
    assert [r.reply_kind.value for r in rx.results] == ["NAK", "ACK", "ACK"]
    assert rx.results[0].reason == "timestamp"
    assert (reply.kind, reply.seq) == ("ACK", "0001")
    assert seqs(rx) == ["0001", "0001", "0002"]  # the re-send kept its seq
    resent = rx.results[1].message
    assert resent is not None and resent.timestamp is not None
    assert abs(resent.timestamp - (datetime.now(UTC) + rx.clock_ahead)) < timedelta(seconds=5)
    assert tx.stats.naks == 1 and tx.stats.retries == 1
    assert timedelta(seconds=115) < tx.clock_offset < timedelta(seconds=125)
    assert again.kind == "ACK"  # the correction is kept for later messages
    assert rx.results[0].events == () and len(rx.results[1].events) == 1


async def test_nak_resync_for_clear_text_under_a_strict_policy(rx: Receiver) -> None:
    rx.clock_ahead = timedelta(minutes=-2)
    rx.policy = TimestampPolicy(stale_clear_text=StalePolicy.NAK)
    async with Dc09Transmitter("127.0.0.1", rx.tcp_port, account="1234") as tx:
        reply = await tx.send("ADM-CID", cid_data("1234", 100, 1))
    assert reply.kind == "ACK"
    assert [r.reply_kind.value for r in rx.results] == ["NAK", "ACK"]
    assert seqs(rx) == ["0001", "0001"]


@pytest.mark.parametrize("udp", [False, True])
async def test_resend_after_a_lost_frame(rx: Receiver, udp: bool) -> None:
    rx.drop = 1
    port = rx.udp_port if udp else rx.tcp_port
    async with Dc09Transmitter("127.0.0.1", port, account="1234", udp=udp, ack_timeout=0.2) as tx:
        reply = await tx.send("ADM-CID", cid_data("1234", 100, 1))
    assert (reply.kind, reply.seq) == ("ACK", "0001")
    assert seqs(rx) == ["0001", "0001"]
    same_message = [f[9:].split(b"_")[0] for f in rx.frames]  # timestamp aside
    assert same_message[0] == same_message[1]
    assert (tx.stats.timeouts, tx.stats.retries) == (1, 1)
    if not udp:
        assert rx.connections == 2  # reconnected after the timeout


async def test_duh_is_returned_not_retried(rx: Receiver) -> None:
    async with Dc09Transmitter("127.0.0.1", rx.tcp_port, account="9999", key=KEY128) as tx:
        reply = await tx.send("ADM-CID", cid_data("9999", 100, 1))
    assert (reply.kind, reply.seq) == ("DUH", "0001")
    assert len(rx.frames) == 1 and tx.stats.retries == 0


async def test_bounded_attempts_then_an_error(rx: Receiver) -> None:
    rx.drop = 100
    tx = Dc09Transmitter("127.0.0.1", rx.tcp_port, account="1234", ack_timeout=0.1, max_attempts=3)
    with pytest.raises(Dc09SendError, match="3 attempts"):
        await tx.send("ADM-CID", cid_data("1234", 100, 1))
    await tx.close()
    assert seqs(rx) == ["0001"] * 3


async def test_connection_refused_is_retried_then_reported() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    tx = Dc09Transmitter("127.0.0.1", port, account="1234", ack_timeout=0.5, max_attempts=2)
    with pytest.raises(Dc09SendError, match="connection problem"):
        await tx.send("ADM-CID", cid_data("1234", 100, 1))
    await tx.close()


async def test_reconnects_after_the_receiver_closed_the_connection(rx: Receiver) -> None:
    async with Dc09Transmitter("127.0.0.1", rx.tcp_port, account="1234", ack_timeout=1) as tx:
        assert (await tx.send("NULL", "")).kind == "ACK"
        assert tx._writer is not None
        tx._writer.transport.abort()  # the link breaks between two messages
        assert (await tx.send("ADM-CID", cid_data("1234", 100, 1))).kind == "ACK"
    assert tx.stats.connects == 2


def test_seq_wraps_from_9999_to_1() -> None:
    tx = Dc09Transmitter("127.0.0.1", 1, account="1234", first_seq=9998)
    assert [tx.take_seq() for _ in range(4)] == [9998, 9999, 1, 2]


async def test_run_simulation_summary(rx: Receiver) -> None:
    summary = await run_simulation(
        "127.0.0.1",
        rx.tcp_port,
        account="5678",
        event=100,
        zone=2,
        key="0123456789ABCDEF",
        key_format="ascii",
        udp=False,
        count=3,
    )
    assert (summary.sent, summary.acked, summary.failed, summary.naks) == (3, 3, 0, 0)
    assert len(summary.latencies) == 3
    assert "acked 3" in summary.describe() and "p50" in summary.describe()
    assert [e.zone for r in rx.results for e in r.events] == ["2", "2", "2"]


async def test_cli_arguments_drive_the_simulation(rx: Receiver) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [
        "--account",
        "5678",
        "--event",
        "602",
        "--zone",
        "0",
        "--key-format",
        "hex",
        "--udp",
        "--count",
        "2",
    ]
    args = parser.parse_args([*argv, "--key", KEY128.hex(), "--port", str(rx.udp_port)])
    summary = await run_from_args(args)
    assert (summary.sent, summary.acked) == (2, 2)
    assert [e.kind for r in rx.results for e in r.events] == [EventKind.TEST, EventKind.TEST]

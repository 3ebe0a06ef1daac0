"""A DC-09 transmitter (alarm unit) simulator: asyncio client for tests, benches and installers.

Theory of operation
-------------------
``Dc09Transmitter`` behaves like a real transmitter, so a receiver can be tested against
the retry behaviour it will meet in the field (PROTOCOLS.md 1.5-1.7):

* each ``send`` takes the next sequence number (1..9999, wrapping) and keeps it for all
  its attempts: a re-send is the *same* message, which is what lets the receiver
  de-duplicate it;
* it waits ``ack_timeout`` for a reply to that seq; replies to other seqs (late ACKs of an
  earlier attempt) are ignored;
* NAK: the transmitter sets its clock offset from the NAK's timestamp and re-sends at
  once with a fresh timestamp;
* no reply in time: re-send the same seq at once, reconnecting over TCP (the old
  connection may hold a stale half-frame or a late reply);
* connection refused or lost: the same, after a pause that doubles from ``retry_delay``
  up to ``max_retry_delay``, so a restarting receiver is not hammered;
* DUH: returned to the caller as it is; re-sending the same bytes would not help;
* after ``max_attempts`` attempts without an answer, ``Dc09SendError``.

TCP keeps one connection open across sends (as most IP alarm units do); UDP uses one
datagram endpoint. Encoding and reply parsing are the pure codec's (``protocols.dc09``);
this module only owns sockets, timeouts and the clock.

``run_simulation`` sends a batch and summarises it; ``add_arguments``/``main`` back the
``alarmctl simulate dc09`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from alarmd.clock import Clock, SystemClock
from alarmd.protocols.dc09 import (
    Dc09Error,
    Dc09Framer,
    Dc09Reply,
    KeyFormat,
    decode_key,
    encode_message,
    parse_reply,
)

DEFAULT_PORT = 12128


class Dc09SendError(Exception):
    """The message could not be delivered: no ACK/DUH after the allowed attempts."""


@dataclass(slots=True)
class TransmitterStats:
    """What happened on the wire; for assertions in tests and for the simulation summary."""

    messages: int = 0  # send() calls
    frames: int = 0  # frames written, re-sends included
    retries: int = 0  # frames beyond the first per message
    naks: int = 0
    timeouts: int = 0
    connects: int = 0  # TCP connections opened


def cid_data(account: str, event_code: int, zone: int, qualifier: int = 1, group: int = 1) -> str:
    """A Contact ID data block: ``cid_data("1234", 100, 1)`` -> ``"#1234|1100 01 001"``."""
    return f"#{account}|{qualifier}{event_code:03d} {group:02d} {zone:03d}"


def sia_data(account: str, code: str, zone: int | None = None, area: int | None = None) -> str:
    """A SIA-DCS data block: ``sia_data("1234", "MA", 1, area=1)`` -> ``"#1234|Nri1/MA001"``."""
    modifiers = f"ri{area}/" if area is not None else ""
    unit = f"{zone:03d}" if zone is not None else ""
    return f"#{account}|N{modifiers}{code}{unit}"


class _DatagramInbox(asyncio.DatagramProtocol):
    """Collects reply datagrams (and socket errors) for the waiting ``send``."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.inbox.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.inbox.put_nowait(exc)  # e.g. ICMP port unreachable: counts as a lost attempt

    def connection_lost(self, exc: Exception | None) -> None:
        self.inbox.put_nowait(exc or ConnectionResetError("UDP endpoint closed"))


class Dc09Transmitter:
    """One alarm unit talking to one receiver; see the module docstring for its behaviour."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        account: str,
        key: bytes | None = None,
        udp: bool = False,
        receiver: str | None = None,
        line: str = "0",
        ack_timeout: float = 5.0,
        max_attempts: int = 5,
        clock_offset: timedelta = timedelta(0),
        clock: Clock | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
        first_seq: int = 1,
        retry_delay: float = 0.25,
        max_retry_delay: float = 2.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.host = host
        self.port = port
        self.account = account
        self.key = key
        self.udp = udp
        self.receiver = receiver
        self.line = line
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        # after a refused or dropped connection, wait before trying again (doubling, capped):
        # a receiver that is restarting must not be hammered, nor the attempts burnt in a blink
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.clock_offset = clock_offset  # added to our clock; corrected by every NAK
        self.clock: Clock = clock or SystemClock()
        self.randbytes = randbytes
        self.stats = TransmitterStats()
        self._next_seq = (first_seq - 1) % 9999 + 1
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = Dc09Framer()
        self._backlog: deque[bytes] = deque()  # complete reply frames not yet consumed
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._udp_inbox: _DatagramInbox | None = None

    async def __aenter__(self) -> Dc09Transmitter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def take_seq(self) -> int:
        """The sequence number for the next message: 1..9999, then 1 again."""
        seq = self._next_seq
        self._next_seq = seq % 9999 + 1
        return seq

    async def send(self, token: str, data: str, xdata: Sequence[tuple[str, str]] = ()) -> Dc09Reply:
        """Deliver one message; returns the ACK (or DUH); raises ``Dc09SendError``."""
        self.stats.messages += 1
        seq = self.take_seq()
        last_problem = "no attempt made"
        delay = self.retry_delay
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.retries += 1
            frame = encode_message(
                token,
                seq,
                self.account,
                data,
                receiver=self.receiver,
                line=self.line,
                xdata=xdata,
                timestamp=self.clock.now() + self.clock_offset,
                key=self.key,
                randbytes=self.randbytes,
            )
            try:
                reply = await self._exchange(frame, f"{seq:04d}")
            except TimeoutError:
                self.stats.timeouts += 1
                last_problem = f"no reply within {self.ack_timeout} s"
                await self._drop_connection()
                continue
            except OSError as exc:  # refused, reset, unreachable
                last_problem = f"connection problem: {exc!r}"
                await self._drop_connection()
                if attempt + 1 < self.max_attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_retry_delay)
                continue
            if reply.kind == "NAK":
                self.stats.naks += 1
                last_problem = "NAK"
                if reply.timestamp is not None:
                    # Re-sync: from now on our timestamps read like the receiver's clock.
                    self.clock_offset = reply.timestamp - self.clock.now()
                continue
            return reply  # ACK, DUH or RSP
        raise Dc09SendError(
            f"seq {seq:04d} from {self.account}: {self.max_attempts} attempts, last: {last_problem}"
        )

    async def close(self) -> None:
        """Close the TCP connection / UDP endpoint; the next ``send`` reopens it."""
        await self._drop_connection()
        if self._udp_transport is not None:
            self._udp_transport.close()
            self._udp_transport = None
            self._udp_inbox = None

    # --- one attempt ----------------------------------------------------------------------

    def _accept(self, frame: bytes, seq: str) -> Dc09Reply | None:
        """The reply if it answers ``seq``; None for stale or unreadable replies."""
        try:
            reply = parse_reply(frame, self.key)
        except Dc09Error:
            return None  # corrupt reply: as good as lost
        if reply.kind == "NAK":
            return reply  # a NAK echoes nothing (seq 0000)
        if reply.seq != seq:
            return None  # a late answer to an earlier message
        if self.key is not None and reply.kind == "ACK" and not reply.encrypted:
            return None  # a receiver must answer an encrypted message with *ACK
        return reply

    async def _exchange(self, frame: bytes, seq: str) -> Dc09Reply:
        async with asyncio.timeout(self.ack_timeout):
            if self.udp:
                return await self._exchange_udp(frame, seq)
            return await self._exchange_tcp(frame, seq)

    async def _exchange_tcp(self, frame: bytes, seq: str) -> Dc09Reply:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self._framer = Dc09Framer()
            self._backlog.clear()
            self.stats.connects += 1
        reader, writer = self._reader, self._writer
        assert reader is not None
        self._backlog.clear()  # anything unread now is older than this attempt
        writer.write(frame)
        self.stats.frames += 1
        await writer.drain()
        while True:
            while self._backlog:
                reply = self._accept(self._backlog.popleft(), seq)
                if reply is not None:
                    return reply
            chunk = await reader.read(4096)
            if not chunk:
                raise ConnectionResetError("receiver closed the connection")
            for item in self._framer.feed(chunk):
                if isinstance(item, bytes):
                    self._backlog.append(item)

    async def _exchange_udp(self, frame: bytes, seq: str) -> Dc09Reply:
        if self._udp_transport is None:
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_datagram_endpoint(
                _DatagramInbox, remote_addr=(self.host, self.port)
            )
            self._udp_transport, self._udp_inbox = transport, protocol
        assert self._udp_inbox is not None
        inbox = self._udp_inbox.inbox
        while not inbox.empty():  # stale replies of earlier attempts
            inbox.get_nowait()
        self._udp_transport.sendto(frame)
        self.stats.frames += 1
        while True:
            item = await inbox.get()
            if isinstance(item, Exception):
                raise ConnectionError(f"UDP: {item!r}")
            reply = self._accept(item, seq)
            if reply is not None:
                return reply

    async def _drop_connection(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # already reset by the peer
                await writer.wait_closed()


# --- batch simulation (alarmctl simulate dc09) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """Outcome of ``run_simulation``: counts and per-message latency (first send to reply)."""

    sent: int
    acked: int
    duh: int
    failed: int
    naks: int
    retries: int
    latencies: tuple[float, ...] = field(default=())

    def describe(self) -> str:
        lines = [
            f"sent {self.sent}, acked {self.acked}, duh {self.duh}, failed {self.failed}, "
            f"naks {self.naks}, retries {self.retries}"
        ]
        if self.latencies:
            ordered = sorted(self.latencies)
            p50 = ordered[len(ordered) // 2]
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            lines.append(
                f"latency ms: min {ordered[0] * 1e3:.1f}, p50 {p50 * 1e3:.1f}, "
                f"p99 {p99 * 1e3:.1f}, max {ordered[-1] * 1e3:.1f}"
            )
        return "\n".join(lines)


async def run_simulation(
    host: str,
    port: int,
    *,
    account: str,
    event: int = 100,
    zone: int = 1,
    key: str | bytes | None = None,
    key_format: KeyFormat | str = KeyFormat.ASCII,
    udp: bool = False,
    count: int = 1,
    qualifier: int = 1,
    group: int = 1,
    interval: float = 0.0,
    receiver: str | None = None,
    line: str = "0",
    ack_timeout: float = 5.0,
    max_attempts: int = 5,
    clock_offset: timedelta = timedelta(0),
) -> SimulationSummary:
    """Send ``count`` Contact ID events (``event``/``zone``) and summarise the replies."""
    aes_key = decode_key(key, KeyFormat(key_format)) if isinstance(key, str) else key
    tx = Dc09Transmitter(
        host,
        port,
        account=account,
        key=aes_key,
        udp=udp,
        receiver=receiver,
        line=line,
        ack_timeout=ack_timeout,
        max_attempts=max_attempts,
        clock_offset=clock_offset,
    )
    acked = duh = failed = 0
    latencies: list[float] = []
    data = cid_data(account, event, zone, qualifier, group)
    try:
        for i in range(count):
            if i and interval > 0:
                await asyncio.sleep(interval)
            started = time.perf_counter()
            try:
                reply = await tx.send("ADM-CID", data)
            except Dc09SendError:
                failed += 1
                continue
            latencies.append(time.perf_counter() - started)
            if reply.kind == "ACK":
                acked += 1
            else:
                duh += 1
    finally:
        await tx.close()
    return SimulationSummary(
        sent=count,
        acked=acked,
        duh=duh,
        failed=failed,
        naks=tx.stats.naks,
        retries=tx.stats.retries,
        latencies=tuple(latencies),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``alarmctl simulate dc09``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--account", required=True, help="transmitter account (hex)")
    parser.add_argument("--event", type=int, default=100, help="Contact ID event code")
    parser.add_argument("--zone", type=int, default=1)
    parser.add_argument("--qualifier", type=int, default=1, choices=(1, 3, 6))
    parser.add_argument("--group", type=int, default=1, help="partition")
    parser.add_argument("--key", help="AES key (encrypts the messages)")
    parser.add_argument(
        "--key-format", choices=[f.value for f in KeyFormat], default=KeyFormat.ASCII.value
    )
    parser.add_argument("--udp", action="store_true", help="UDP instead of TCP")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between messages")
    parser.add_argument("--receiver", help="receiver number (R field)")
    parser.add_argument("--line", default="0", help="line prefix (L field)")
    parser.add_argument("--ack-timeout", type=float, default=5.0)
    parser.add_argument("--max-attempts", type=int, default=5)


async def run_from_args(args: argparse.Namespace) -> SimulationSummary:
    """``run_simulation`` with the options of ``add_arguments``."""
    return await run_simulation(
        args.host,
        args.port or DEFAULT_PORT,
        account=args.account,
        event=args.event,
        zone=args.zone,
        key=args.key,
        key_format=args.key_format,
        udp=args.udp,
        count=args.count,
        qualifier=args.qualifier,
        group=args.group,
        interval=args.interval,
        receiver=args.receiver,
        line=args.line,
        ack_timeout=args.ack_timeout,
        max_attempts=args.max_attempts,
    )


def main(args: argparse.Namespace) -> int:
    """Run the simulation, print the summary; exit status 0 only if every message was ACKed."""
    try:
        summary = asyncio.run(run_from_args(args))
    except ValueError as exc:  # a bad key, typically
        print(f"error: {exc}")
        return 2
    print(summary.describe())
    return 0 if summary.acked == summary.sent else 1

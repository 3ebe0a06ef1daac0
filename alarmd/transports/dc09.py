"""DC-09 receiver: TCP and UDP on one port. The only place DC-09 bytes meet a socket.

Theory of operation
-------------------
A TCP connection feeds every read into its ``Dc09Framer`` (frames merged in one read or
split across reads come out whole) and handles the frames strictly in order:

* a frame whose reply needs no commit (NAK, DUH, a NULL link test's ACK) is answered at
  once;
* a frame with events is submitted to intake, and its ACK is written only after
  ``submit`` returned, i.e. after the commit (DESIGN.md invariant 1). Frames that arrive
  meanwhile wait their turn, so replies never overtake each other;
* if the store fails, the frame gets no reply at all: the transmitter times out and
  re-sends, and de-duplication makes the re-send safe.

Memory per idle connection is kept small on purpose (10,000 idle alarm units is a normal
evening): a slotted protocol object and an empty framer, no task and no timer. A task
exists only while a commit is in flight; idle connections are closed by one sweep over
all connections, not by a timer each. A connection that sends frames faster than they
can be committed is paused (``pause_reading``) rather than buffered without bound.

UDP: every datagram is one frame; the reply goes from the same socket to the source
address, after the commit, as for TCP.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

import structlog

from alarmd import metrics
from alarmd.clock import Clock
from alarmd.intake import Intake
from alarmd.model import Receipt
from alarmd.protocols.dc09 import (
    MAX_FRAME_BYTES,
    AccountLookup,
    Dc09Error,
    Dc09Framer,
    Dc09Result,
    ReplyKind,
    TimestampPolicy,
    handle_frame,
)
from alarmd.store.db import StoreError
from alarmd.transports.listener import BurstListener

log = structlog.get_logger(__name__)

MAX_QUEUED_FRAMES = 64  # per connection, before we stop reading from it

# labelled metric children, looked up once: labels() on every frame costs microseconds
_ACK_LATENCY = metrics.ACK_LATENCY_SECONDS.labels("dc09")
_UNACKED = metrics.UNACKED_STORE_FAILURE.labels("dc09")
_FRAMES = {
    (transport, kind): metrics.DC09_FRAMES.labels(transport, kind.value)
    for transport in ("tcp", "udp")
    for kind in ReplyKind
}


@dataclass(frozen=True, slots=True)
class Dc09Settings:
    host: str = "127.0.0.1"
    port: int = 12128
    idle_timeout: float = 300.0
    max_connections: int = 20000
    max_frame_bytes: int = MAX_FRAME_BYTES


class Dc09Receiver:
    """Owns the listening sockets and every connection; knows intake, the accounts and the clock."""

    def __init__(
        self,
        *,
        intake: Intake,
        clock: Clock,
        accounts: AccountLookup,
        policy: TimestampPolicy,
        settings: Dc09Settings,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.intake = intake
        self.clock = clock
        self.accounts = accounts
        self.policy = policy
        self.settings = settings
        self.randbytes = randbytes
        self._listener: BurstListener | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._connections: set[_TcpConnection] = set()
        # the writer commits in FIFO order: when the latest commit is done, all earlier are
        self._latest_commit: asyncio.Future[Receipt] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._draining = False
        self.port = settings.port
        # supervision's ``seen``: any well-formed frame from an account, NULL link tests
        # included (they are answered at once and never stored), proves its line works
        self.heard: Callable[[str, str], object] | None = None

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind TCP and UDP to the same port (an ephemeral port if 0)."""
        loop = asyncio.get_running_loop()
        host = self.settings.host
        for _attempt in range(20):
            listener = BurstListener(
                host, self.settings.port, lambda: _TcpConnection(self), name="dc09"
            )
            self.port = listener.open()
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(host, self.port)
                )
            except OSError:
                listener.close()
                if self.settings.port != 0:
                    raise
                continue  # the ephemeral TCP port is taken for UDP: try another one
            self._listener = listener
            self._udp = transport
            break
        else:
            raise OSError("could not bind DC-09 TCP and UDP to one ephemeral port")
        self._listener.start()
        self._sweeper = loop.create_task(self._sweep_idle(), name="dc09-idle-sweep")
        log.info("dc09_listening", host=host, port=self.port, transports="tcp+udp")

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop accepting, let in-flight commits finish and their replies go out, then close."""
        self._draining = True
        if self._listener is not None:
            self._listener.close()
        for conn in list(self._connections):
            conn.pause()
        latest = self._latest_commit
        if latest is not None and not latest.done():
            _done, pending = await asyncio.wait({latest}, timeout=drain_seconds)
            if pending:
                log.warning("dc09_drain_timeout")
        await asyncio.sleep(0)  # let the commits' done-callbacks write their ACKs
        for conn in list(self._connections):
            conn.close()
        if self._udp is not None:
            self._udp.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # --- shared by TCP and UDP ------------------------------------------------------------

    def handle(self, frame: bytes, transport_name: str) -> Dc09Result:
        result = handle_frame(
            frame,
            now=self.clock.now(),
            accounts=self.accounts,
            policy=self.policy,
            randbytes=self.randbytes,
        )
        _FRAMES[(transport_name, result.reply_kind)].inc()
        if self.heard is not None and result.account and result.reply_kind is ReplyKind.ACK:
            self.heard("dc09", result.account)
        if result.reply_kind is not ReplyKind.ACK:
            metrics.DC09_REJECTED.labels(result.reason or "unknown").inc()
            log.warning(
                "dc09_frame_rejected",
                transport=transport_name,
                reply=result.reply_kind.value,
                reason=result.reason,
                account=result.account,
                raw_hex=frame.hex(),
            )
        return result

    def framing_error(self, error: Dc09Error, transport_name: str, peer: object) -> None:
        metrics.DC09_REJECTED.labels(error.reason).inc()
        log.warning(
            "dc09_framing_error",
            transport=transport_name,
            peer=str(peer),
            reason=error.reason,
            detail=error.detail[:200],
        )

    def commit(self, result: Dc09Result) -> asyncio.Future[Receipt]:
        """Submit ``result.events``; the future resolves once they are durable.

        A future and a done-callback rather than a task per frame: at thousands of frames a
        second the task machinery is a large share of the CPU.
        """
        future = self.intake.submit_future(result.events)
        self._latest_commit = future
        return future

    def committed(self, result: Dc09Result, future: asyncio.Future[Receipt]) -> bool:
        """True if the commit succeeded; logs and counts the frame left unacknowledged if not."""
        error = future.exception()
        if error is None:
            return True
        _UNACKED.inc()
        log.error(
            "dc09_not_acknowledged_store_failed",
            account=result.account,
            events=len(result.events),
            error=str(error),
        )
        if not isinstance(error, StoreError):
            log.error("dc09_unexpected_commit_error", error=repr(error))
        return False

    async def _sweep_idle(self) -> None:
        """Close idle TCP connections periodically; one pass for all, no timer per connection."""
        interval = max(0.05, min(self.settings.idle_timeout / 4, 10.0))
        while True:
            await asyncio.sleep(interval)
            self.sweep_idle()

    def sweep_idle(self) -> int:
        """Close TCP connections silent longer than the idle timeout; returns how many."""
        limit = self.clock.monotonic() - self.settings.idle_timeout
        idle = [c for c in self._connections if c.last_seen < limit and not c.busy]
        for conn in idle:
            log.info("dc09_idle_close", peer=str(conn.peer))
            conn.close()
        return len(idle)


class _TcpConnection(asyncio.Protocol):
    __slots__ = (
        "_framer",
        "_paused",
        "_queue",
        "_receiver",
        "_transport",
        "busy",
        "last_seen",
        "peer",
    )

    def __init__(self, receiver: Dc09Receiver) -> None:
        self._receiver = receiver
        self._transport: asyncio.Transport | None = None
        self._framer = Dc09Framer(receiver.settings.max_frame_bytes)
        # created on first use: an empty deque is ~600 bytes, and most connections are idle
        self._queue: deque[tuple[bytes, float]] | None = None
        self._paused = False
        self.busy = False
        self.last_seen = 0.0
        self.peer: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's classes: cast, do not isinstance
        self._transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        receiver = self._receiver
        self.last_seen = receiver.clock.monotonic()
        if receiver._draining or len(receiver._connections) >= receiver.settings.max_connections:
            metrics.DC09_CONNECTIONS_REFUSED.inc()
            log.warning("dc09_connection_refused", peer=str(self.peer))
            self._transport.abort()
            return
        receiver._connections.add(self)  # TCP_NODELAY: set by the listener at accept
        metrics.DC09_CONNECTIONS.set(len(receiver._connections))

    def connection_lost(self, exc: Exception | None) -> None:
        receiver = self._receiver
        receiver._connections.discard(self)
        metrics.DC09_CONNECTIONS.set(len(receiver._connections))
        self._transport = None
        self._queue = None

    def data_received(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self.last_seen = self._receiver.clock.monotonic()
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        for item in self._framer.feed(data):
            if isinstance(item, Dc09Error):
                self._receiver.framing_error(item, "tcp", self.peer)
            else:
                queue.append((item, now))
        if not self.busy:
            self._process()
        if len(queue) >= MAX_QUEUED_FRAMES and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()

    def _process(self) -> None:
        """Answer queued frames in order, until one must wait for a commit."""
        receiver = self._receiver
        queue = self._queue
        while queue and self._transport is not None:
            frame, started = queue.popleft()
            result = receiver.handle(frame, "tcp")
            if result.reply_kind is ReplyKind.ACK and result.events:
                self.busy = True
                receiver.commit(result).add_done_callback(
                    partial(self._commit_done, result, started)
                )
                return
            if result.reply:
                self._transport.write(result.reply)
        if self._paused and self._transport is not None and not receiver._draining:
            self._paused = False
            self._transport.resume_reading()

    def _commit_done(
        self, result: Dc09Result, started: float, future: asyncio.Future[Receipt]
    ) -> None:
        self.busy = False
        if self._receiver.committed(result, future) and self._transport is not None:
            self._transport.write(result.reply)
            _ACK_LATENCY.observe(asyncio.get_running_loop().time() - started)
        if self._transport is not None:
            self._process()

    def pause(self) -> None:
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: Dc09Receiver) -> None:
        self._receiver = receiver
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        receiver = self._receiver
        if receiver._draining:
            return  # not acknowledged: the transmitter re-sends to us or its backup receiver
        started = asyncio.get_running_loop().time()
        framer = Dc09Framer(receiver.settings.max_frame_bytes)
        for item in framer.feed(data):
            if isinstance(item, Dc09Error):
                receiver.framing_error(item, "udp", addr)
                continue
            result = receiver.handle(item, "udp")
            if result.reply_kind is ReplyKind.ACK and result.events:
                receiver.commit(result).add_done_callback(
                    partial(self._commit_done, result, addr, started)
                )
            elif result.reply and self._transport is not None:
                self._transport.sendto(result.reply, addr)
        if framer.pending:
            receiver.framing_error(Dc09Error("incomplete_datagram", data.hex()), "udp", addr)

    def _commit_done(
        self,
        result: Dc09Result,
        addr: tuple[str | object, int],
        started: float,
        future: asyncio.Future[Receipt],
    ) -> None:
        if self._receiver.committed(result, future) and self._transport is not None:
            self._transport.sendto(result.reply, addr)
            _ACK_LATENCY.observe(asyncio.get_running_loop().time() - started)

    def error_received(self, exc: Exception) -> None:
        log.warning("dc09_udp_error", error=str(exc))

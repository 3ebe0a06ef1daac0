"""A TCP listener that accepts connections in bursts, for every stream transport.

Why not ``loop.create_server``: since libuv 1.45 (libuv PR #3696) a libuv listener accepts
one connection per turn of the event loop. Under load a turn of alarmd's loop lasts as long
as a group commit (tens of milliseconds), so 1,000 alarm units reconnecting after a power
cut were accepted at about 50 a second, and the last ones' alarms waited 20 seconds in the
kernel's accept queue (bench/dc09_ingest.py at 1,000 connections: p99 6 s).

Here the listening socket is ours: when it is readable we accept up to ``burst``
connections at once and hand each to ``loop.connect_accepted_socket``, which builds the
usual transport and calls the protocol's ``connection_made``. When the process runs out of
file descriptors (EMFILE/ENFILE) accepting pauses for a moment instead of spinning on a
listening socket that stays readable.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class BurstListener:
    """Listens on host:port and accepts up to ``burst`` connections per readiness event."""

    def __init__(
        self,
        host: str,
        port: int,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        name: str,
        backlog: int = 4096,
        burst: int = 512,
        pause_on_exhaustion: float = 0.5,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._factory = protocol_factory
        self._name = name
        self._backlog = backlog
        self._burst = burst
        self._pause = pause_on_exhaustion
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[object]] = set()
        self._reading = False
        self.port = port

    def open(self) -> int:
        """Bind and listen (not yet accepting); returns the bound port."""
        family, _, _, _, address = socket.getaddrinfo(
            self._host, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(self._backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    def start(self) -> None:
        """Start accepting on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._resume()

    def close(self) -> None:
        """Stop accepting and close the listening socket; accepted connections stay open."""
        self._stop_reading()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _resume(self) -> None:
        if self._sock is not None and self._loop is not None and not self._reading:
            self._loop.add_reader(self._sock.fileno(), self._accept_burst)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading and self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._reading = False

    def _accept_burst(self) -> None:
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        for _ in range(self._burst):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    log.error(
                        "accept_paused_out_of_descriptors",
                        listener=self._name,
                        error=str(exc),
                        pause_s=self._pause,
                    )
                    self._stop_reading()
                    loop.call_later(self._pause, self._resume)
                    return
                log.warning("accept_failed", listener=self._name, error=str(exc))
                continue
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(loop.connect_accepted_socket(self._factory, conn))
            self._pending.add(task)
            task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("accept_setup_failed", listener=self._name, error=repr(task.exception()))

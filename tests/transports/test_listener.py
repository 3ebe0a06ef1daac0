"""BurstListener on uvloop (the daemon's loop): a queue of waiting connections is accepted
in a few turns of the loop, not one connection per turn as libuv's own listener does."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from alarmd.transports.listener import BurstListener

WAITING = 300


class Counting(asyncio.Protocol):
    made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.made += 1


async def accepted_after_turns(burst: int, turns: int) -> int:
    Counting.made = 0
    listener = BurstListener("127.0.0.1", 0, Counting, name="test", burst=burst)
    port = listener.open()
    # connect while the loop does not run: every connection waits in the accept queue
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(WAITING)]
    try:
        listener.start()
        for _ in range(turns):
            await asyncio.sleep(0)
        return Counting.made
    finally:
        listener.close()
        for client in clients:
            client.close()


def test_a_queue_of_connections_is_accepted_in_a_few_loop_turns() -> None:
    assert uvloop.run(accepted_after_turns(burst=512, turns=10)) == WAITING


def test_one_accept_per_turn_would_not_keep_up() -> None:
    """The same scenario with libuv's behaviour (one per turn) leaves most waiting: the test
    above can fail."""
    assert uvloop.run(accepted_after_turns(burst=1, turns=10)) < WAITING / 10


def test_tcp_nodelay_is_set_on_accepted_sockets() -> None:
    async def scenario() -> int:
        seen: list[int] = []

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        listener = BurstListener("127.0.0.1", 0, Probe, name="test")
        port = listener.open()
        listener.start()
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        listener.close()
        return seen[0]

    assert uvloop.run(scenario()) != 0


def test_port_in_use_is_a_clear_error() -> None:
    first = BurstListener("127.0.0.1", 0, asyncio.Protocol, name="a")
    port = first.open()
    try:
        with pytest.raises(OSError, match="in use"):
            BurstListener("127.0.0.1", port, asyncio.Protocol, name="b").open()
    finally:
        first.close()

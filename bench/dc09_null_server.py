"""Null receiver for bench/dc09_ingest.py: the load generator's ceiling.

A uvloop TCP server that answers every CR it reads with one precomputed ACK frame: no
framing beyond counting CRs, no parsing, no CRC, no storage, no metrics. Whatever rate
the load generator reaches against it is the most it can offer any receiver on this
machine; a receiver measured near that rate is measured against the client, not itself.

Prints "READY <port>" once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import uvloop

# A well-formed DC-09 ACK (the load generator only looks for '"ACK"' and the CR).
ACK = b'\n6D2F0014"ACK"0001R1L1#10000[]\r'


class _Null(asyncio.Protocol):
    __slots__ = ("transport",)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\r")
        if n and self.transport is not None:
            self.transport.write(ACK if n == 1 else ACK * n)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    server = await loop.create_server(_Null, sock=sock, backlog=4096)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())

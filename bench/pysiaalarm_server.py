"""Baseline receiver for bench/dc09_ingest.py: pysiaalarm's asyncio TCP server.

Runs in its own virtual environment (bench/.venv-pysiaalarm, made by dc09_ingest.py) with
PyPI's pysiaalarm. It ACKs before its callback runs and stores nothing: the cheapest a
DC-09 receiver can be, which is what makes it a fair lower bound on work per frame.
Prints "READY <port>" once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from pysiaalarm import SIAAccount
from pysiaalarm.aio import SIAClient
from pysiaalarm.utils import CommunicationsProtocol


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--accounts", required=True, help="comma-separated account ids")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    accounts = [SIAAccount(a, None, None) for a in args.accounts.split(",")]
    received = 0

    async def on_event(event: object) -> None:
        nonlocal received
        received += 1

    client = SIAClient(
        "127.0.0.1", args.port, accounts, on_event, protocol=CommunicationsProtocol.TCP
    )
    await client.async_start()
    print(f"READY {args.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

"""Crash safety: ``kill -9`` in the middle of a load; after a restart, every ACKed event is
stored exactly once (DESIGN.md invariants 1 and 2).

Eight transmitters (the project's simulator, which re-sends the same seq after a lost
ACK or a dropped connection, as real ones do) send 300 events each, every event with a
distinct zone so it can be traced. The daemon is killed with SIGKILL once 800 ACKs have
come back (an event in the test, not a timer), then started again on the same data dir
and port while the transmitters keep retrying.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from alarmd.sim.dc09 import Dc09Transmitter

from conftest import DaemonProcess

ACCOUNTS = ["1234", "9757", "0809", "36214", "21401", "C001", "C002", "C003"]
PER_ACCOUNT = 300
KILL_AFTER_ACKS = 800


@pytest.mark.slow
async def test_kill9_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.start()
    acked: dict[str, list[int]] = {a: [] for a in ACCOUNTS}
    resent = 0
    total_acked = 0
    killed = asyncio.Event()
    restarted = asyncio.Event()

    async def transmitter(account: str) -> None:
        nonlocal total_acked, resent
        tx = Dc09Transmitter(
            "127.0.0.1",
            daemon.dc09_port,
            account=account,
            receiver="1",
            line="1",
            ack_timeout=1.0,
            max_attempts=60,
            retry_delay=0.05,
            max_retry_delay=0.5,
        )
        try:
            for zone in range(PER_ACCOUNT):
                reply = await tx.send("ADM-CID", f"#{account}|1100 01 {zone:03d}")
                assert reply.kind == "ACK", reply
                acked[account].append(zone)
                total_acked += 1
        finally:
            resent += tx.stats.retries
            await tx.close()

    async def killer() -> None:
        while total_acked < KILL_AFTER_ACKS:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(daemon.kill9)
        killed.set()
        await asyncio.to_thread(daemon.start)
        restarted.set()

    await asyncio.wait_for(asyncio.gather(killer(), *(transmitter(a) for a in ACCOUNTS)), 240)
    assert killed.is_set() and restarted.is_set()
    assert daemon.terminate() == 0
    # the kill hit a live stream: transmitters had to re-send, and the daemon started twice
    assert resent >= 1
    assert daemon.log().count('"alarmd_started"') == 2

    conn = sqlite3.connect(daemon.data_dir / "alarmd.sqlite")
    rows = conn.execute("SELECT source, zone FROM events WHERE protocol = 'dc09'").fetchall()
    counts = Counter(rows)
    doubled = [key for key, n in counts.items() if n > 1]
    assert doubled == [], f"stored more than once: {doubled[:10]}"
    for account in ACCOUNTS:
        assert len(acked[account]) == PER_ACCOUNT
        missing = [z for z in acked[account] if (account, str(z)) not in counts]
        assert missing == [], f"{account}: ACKed but not stored: {missing[:10]}"
    assert sum(len(v) for v in acked.values()) == len(ACCOUNTS) * PER_ACCOUNT >= 2000
    assert len(rows) == len(ACCOUNTS) * PER_ACCOUNT

"""SCAIP HOLD through the real routing engine, on a fake clock, over real UDP sockets.

An account with ``hold_until_accepted``: the receiver answers every copy of the alarm
``snu=4`` until a human takes the case in the engine, then ``snu=0``. The device is the
project's simulator re-sending the same ``<mrq>`` after a seeded random 5-20 s; the pause
moves the FakeClock and lets the engine run what fell due (escalation to the next of kin,
then the centre) instead of sleeping. The case's state comes from the store
(``store_case_state``), exactly as the daemon reads it.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator

import pytest

from alarmd.protocols import scaip
from alarmd.sim.scaip import ScaipDevice
from alarmd.transports.sip import (
    AckPolicy,
    ScaipAccount,
    SipReceiver,
    SipSettings,
    store_case_state,
)

from caseworld import NOW, World, world

__all__ = ["world"]  # the fixture, imported for pytest

CID = "7001"
ACCOUNTS = {
    "hold-group": ScaipAccount(
        "hold-password", ack_policy=AckPolicy.HOLD_UNTIL_ACCEPTED, cids=frozenset({CID})
    ),
}


def _register_device(conn: sqlite3.Connection) -> None:
    """The SCAIP unit belongs to the world's service user (so the alarm is routed to her
    home-care team with the centre as backup, not straight to the centre)."""
    conn.execute(
        "INSERT INTO devices (tenant, user_id, protocol, identity, updated_at)"
        " VALUES ('eksempel-kommune', 1, 'scaip', ?, ?)",
        (CID, NOW),
    )


@pytest.fixture
async def receiver(world: World) -> AsyncIterator[SipReceiver]:
    await world.store.writer.submit(_register_device)
    rx = SipReceiver(
        intake=world.intake,
        store=world.store,
        clock=world.clock,
        accounts=ACCOUNTS.get,
        settings=SipSettings(host="127.0.0.1", port=0, t1=0.05),
        case_state=store_case_state(world.store),
    )
    await rx.start()
    yield rx
    await rx.stop()


async def test_hold_until_an_operator_accepts_through_the_engine(
    world: World, receiver: SipReceiver
) -> None:
    rng = random.Random(20260302)
    pauses: list[float] = []
    states_seen: list[str] = []
    accepted: list[str] = []

    async def pause(seconds: float) -> None:
        """The device waits: time moves on the fake clock, the engine runs what fell due,
        and once the case has reached the centre an operator takes it."""
        pauses.append(seconds)
        world.clock.advance(seconds)
        await world.engine.run_due()
        state = world.case()["state"]
        states_seen.append(state)
        if state == "at_centre" and not accepted:
            result = await world.engine.accept(1, "operator:anne", is_operator=True)
            assert result.rejected is None
            accepted.append(world.case()["state"])

    device = ScaipDevice(
        "127.0.0.1",
        receiver.port,
        cid=CID,
        user="hold-group",
        password="hold-password",
        t1=0.05,
        timeout=5.0,
    )
    async with device:
        await device.register()
        exchanges = await device.alarm_until_handled(
            dty=3, ref="HOLD7", resend_after=(5.0, 20.0), rng=rng, sleep=pause, max_sends=200
        )

    snus = [e.mrs.snu if e.mrs is not None else None for e in exchanges]
    assert all(e.response.status == 200 for e in exchanges)
    # every copy before the acceptance was HOLD; the first copy after it is OK, and it ends
    assert snus[:-1] == [scaip.Snu.HOLD] * (len(exchanges) - 1)
    assert snus[-1] == scaip.Snu.OK
    assert accepted == ["accepted"]
    # the device kept re-sending through the whole escalation (team, next of kin, centre)
    assert len(exchanges) >= 10
    assert all(5.0 <= p <= 20.0 for p in pauses) and len(set(pauses)) == len(pauses)
    assert states_seen[0] == "notifying" and states_seen[-1] == "at_centre"
    assert sum(pauses) >= 300  # the steps take 3 + 2 minutes before the centre has it
    # stored once, one case, accepted by the operator; the escalation is in its log
    events = world.q("SELECT protocol, source, dedup_key, case_id FROM events")
    assert events == [("scaip", CID, f"scaip:{CID}:HOLD7", 1)]
    assert world.q("SELECT id, state, accepted_by FROM cases") == [(1, "accepted", "operator:anne")]
    types = world.types()
    assert types.count("opened") == 1
    assert "escalated" in types and "centre" in types and "accepted" in types


async def test_hold_answers_hold_again_while_nobody_has_the_case(
    world: World, receiver: SipReceiver
) -> None:
    """Without an acceptance the device gets HOLD on every re-send, and it gives up after
    ``max_sends``; the alarm stays one event and one open case (it is never dropped)."""
    device = ScaipDevice(
        "127.0.0.1",
        receiver.port,
        cid=CID,
        user="hold-group",
        password="hold-password",
        t1=0.05,
        timeout=5.0,
    )

    async def pause(seconds: float) -> None:
        world.clock.advance(seconds)
        await world.engine.run_due()

    async with device:
        exchanges = await device.alarm_until_handled(
            ref="HOLD8", resend_after=(5.0, 20.0), rng=random.Random(8), sleep=pause, max_sends=6
        )
    assert [e.mrs.snu for e in exchanges if e.mrs is not None] == [scaip.Snu.HOLD] * 6
    assert world.q("SELECT count(*) FROM events") == [(1,)]
    assert world.q("SELECT count(*), min(state) FROM cases") == [(1, "notifying")]

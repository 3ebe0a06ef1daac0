"""The modem transport against the simulator on a pty, with a real store and intake."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from alarmd.clock import FakeClock
from alarmd.intake import Intake
from alarmd.model import Event, EventKind, Receipt
from alarmd.protocols.sms_alarms import SenderConfig, SmsAlarmTable
from alarmd.sim.modem import ModemSimulator
from alarmd.store.db import Store, StoreError
from alarmd.transports.modem import ModemState, ModemTransport, ModemUnavailable

CET = timezone(timedelta(hours=1))
T = datetime(2026, 3, 2, 10, 15, tzinfo=CET)
UNIT = "+4700000011"
TABLE = SmsAlarmTable.of(
    [(UNIT, SenderConfig(name="Astrid")), ("+4700000012", SenderConfig(ring_kind=EventKind.FALL))]
)


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait for I/O between the simulator and the transport (bounded, never a deadline)."""
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


class Env:
    def __init__(self, store: Store, sim: ModemSimulator, intake: Any) -> None:
        self.store = store
        self.sim = sim
        self.intake = intake
        self.clock = FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
        self.transport: ModemTransport | None = None

    def make(self, **kw: Any) -> ModemTransport:
        kw.setdefault("reopen_min_s", 0.02)
        kw.setdefault("reopen_max_s", 0.1)
        kw.setdefault("command_timeout_s", 2.0)
        self.transport = ModemTransport(self.sim.path, self.intake, self.clock, TABLE, **kw)
        self.transport.start()
        return self.transport

    def events(self) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.store.path)
        try:
            return conn.execute(
                "SELECT source, kind, condition, text, flags FROM events ORDER BY id"
            ).fetchall()
        finally:
            conn.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await Store.open(tmp_path / "x.sqlite")
    sim = ModemSimulator()
    await sim.start()
    intake = Intake(store, dedup_window=timedelta(hours=24), tenant_of=lambda p, s: None)
    e = Env(store, sim, intake)
    yield e
    if e.transport is not None:
        await e.transport.stop()
    await sim.stop()
    await store.close()


async def test_startup_and_state(env: Env) -> None:
    t = env.make()
    await eventually(lambda: t.state is ModemState.READY)
    assert env.sim.echo is False
    assert t.rssi == 20 and t.signal_dbm == -73 and t.registered
    assert [c for c in env.sim.commands if c != "AT"][:8] == [
        "ATE0",
        "AT+CMEE=1",
        "AT+CPIN?",
        "AT+CREG?",
        "AT+CSQ",
        "AT+CMGF=0",
        "AT+CNMI=2,1,0,0,0",
        "AT+CLIP=1",
    ]


async def test_sim_pin_is_entered(tmp_path: Path, env: Env) -> None:
    await env.sim.stop()
    env.sim = ModemSimulator(pin="1234")
    await env.sim.start()
    t = env.make(pin="1234")
    await eventually(lambda: t.state is ModemState.READY)
    assert 'AT+CPIN="1234"' in env.sim.commands


async def test_sim_locked_without_pin(env: Env) -> None:
    await env.sim.stop()
    env.sim = ModemSimulator(pin="1234")
    await env.sim.start()
    t = env.make()
    await eventually(lambda: env.sim.commands.count("AT+CPIN?") >= 2)  # retried with backoff
    assert t.state is not ModemState.READY


async def test_not_registered(env: Env) -> None:
    env.sim.creg_stat = 2
    t = env.make()
    await eventually(lambda: t.state is ModemState.NO_NETWORK)
    assert not t.registered


async def test_stored_sms_read_at_start_and_deleted_after_commit(env: Env) -> None:
    env.sim.inject_sms(UNIT, "FALL", timestamp=T, announce=False)
    env.sim.inject_sms("+4700000099", "hjelp", timestamp=T, announce=False)
    env.make()
    await eventually(lambda: len(env.sim.deleted) == 2)
    rows = env.events()
    assert [(r[0], r[1]) for r in rows] == [(UNIT, "fall"), ("+4700000099", "other_alarm")]
    assert "unregistered" in rows[1][4]
    assert env.sim.storage == {}


async def test_new_sms_announced_with_cmti(env: Env) -> None:
    t = env.make()
    await eventually(lambda: t.state is ModemState.READY and "AT+CMGL=4" in env.sim.commands)
    env.sim.inject_sms(UNIT, "Lavt batteri", timestamp=T)
    await eventually(lambda: env.sim.deleted == [1])
    assert [(r[0], r[1], r[3]) for r in env.events()] == [(UNIT, "battery_low", "Lavt batteri")]
    assert "AT+CMGR=1" in env.sim.commands


class FailingIntake:
    """Intake whose store fails until told otherwise."""

    def __init__(self, inner: Intake) -> None:
        self.inner = inner
        self.fail = True
        self.calls = 0

    async def submit(self, events: Sequence[Event]) -> Receipt:
        self.calls += 1
        if self.fail:
            raise StoreError("disk full")
        return await self.inner.submit(events)


async def test_nothing_deleted_before_commit(env: Env) -> None:
    failing = FailingIntake(env.intake)
    env.intake = failing
    env.sim.inject_sms(UNIT, "ALARM", timestamp=T, announce=False)
    t = env.make(poll_interval_s=0.05)
    await eventually(lambda: failing.calls >= 2)  # listed again at the next poll
    assert env.sim.deleted == [] and len(env.sim.storage) == 1
    failing.fail = False
    await eventually(lambda: env.sim.deleted == [1])
    assert [r[1] for r in env.events()] == ["assistance"]
    assert t.state is ModemState.READY


async def test_concatenated_sms_deleted_only_when_whole(env: Env) -> None:
    text = "ALARM " + "Astrid har falt på badet og trenger hjelp. " * 8
    t = env.make()
    await eventually(lambda: t.state is ModemState.READY and "AT+CMGL=4" in env.sim.commands)
    indexes = env.sim.inject_sms(UNIT, text, timestamp=T, reference=9, parts=[1])
    await eventually(lambda: "AT+CMGR=1" in env.sim.commands)
    await asyncio.sleep(0.05)  # give a wrong transport the chance to delete early
    assert env.sim.deleted == [] and env.events() == []
    more = env.sim.inject_sms(UNIT, text, timestamp=T, reference=9, parts=[2, 3])
    assert len(indexes + more) == 3
    await eventually(lambda: len(env.sim.deleted) == 3)
    rows = env.events()
    assert len(rows) == 1 and rows[0][3] == text and rows[0][1] == "assistance"


async def test_retransmitted_sms_is_one_event(env: Env) -> None:
    env.sim.inject_sms(UNIT, "ALARM", timestamp=T, announce=False)
    env.sim.inject_sms(UNIT, "ALARM", timestamp=T, announce=False)  # the SMSC delivered twice
    env.make()
    await eventually(lambda: len(env.sim.deleted) == 2)
    assert len(env.events()) == 1


async def test_urc_in_the_middle_of_the_listing(env: Env) -> None:
    for n in range(3):
        env.sim.inject_sms(UNIT, f"ALARM {n}", timestamp=T, announce=False)
    env.sim.urc_mid_response("RING", '+CLIP: "+4700000012",145,"",,"",0')
    env.make()
    await eventually(lambda: len(env.sim.deleted) == 3 and env.sim.hangups == 1)
    kinds = sorted(r[1] for r in env.events())
    assert kinds == ["assistance", "assistance", "assistance", "fall"]


async def test_ring_alarm(env: Env) -> None:
    t = env.make()
    await eventually(lambda: t.state is ModemState.READY)
    env.sim.ring(UNIT)
    env.sim.ring(UNIT)  # the second ring of the same call is not a second alarm
    await eventually(lambda: env.sim.hangups >= 1)
    await asyncio.sleep(0.05)
    rows = env.events()
    assert [(r[0], r[1]) for r in rows] == [(UNIT, "assistance")]
    env.sim.ring("+4700000098")
    await eventually(lambda: env.sim.hangups >= 2)
    await eventually(lambda: len(env.events()) == 2)
    assert "unregistered" in env.events()[1][4]


async def test_unplug_and_come_back(env: Env) -> None:
    t = env.make()
    await eventually(lambda: t.state is ModemState.READY)
    env.sim.unplug()
    await eventually(lambda: t.state is ModemState.DOWN)
    with pytest.raises(ModemUnavailable):
        await t.send_sms("+4700000101", "hei")
    env.sim.inject_sms(UNIT, "ALARM", timestamp=T, announce=False)  # arrived while away
    env.sim.plug()
    await eventually(lambda: env.sim.deleted == [1])
    assert t.state is ModemState.READY
    assert [r[1] for r in env.events()] == ["assistance"]


async def test_send_sms_single_and_concatenated(env: Env) -> None:
    t = env.make()
    await eventually(lambda: t.state is ModemState.READY)
    refs = await t.send_sms("+4700000101", "Alarm 1: fall hos Åse")
    assert refs == [1]
    long = "Æøå " * 60
    refs = await t.send_sms("+4700000101", long, reference=5)
    assert len(refs) == 2
    assert [s.text for s in env.sim.sent] == ["Alarm 1: fall hos Åse", long[:153], long[153:]]
    assert {s.concat[0] for s in env.sim.sent[1:] if s.concat} == {5}


async def test_technical_alarm_when_down(env: Env) -> None:
    t = env.make(down_alarm_after_s=120)
    await eventually(lambda: t.state is ModemState.READY)
    env.sim.unplug()
    await eventually(lambda: t.state is ModemState.DOWN)
    env.clock.advance(119)
    tries = env.sim.commands.count("AT")
    assert not any(r[0] == "modem" for r in env.events())
    env.clock.advance(1)  # the next re-open attempt sees two minutes down
    await eventually(lambda: any(r[0] == "modem" for r in env.events()))
    assert tries == env.sim.commands.count("AT")  # still unplugged
    env.sim.plug()
    await eventually(lambda: len([r for r in env.events() if r[0] == "modem"]) == 2)
    rows = [(r[1], r[2]) for r in env.events() if r[0] == "modem"]
    assert rows == [("link_lost", "alarm"), ("link_lost", "restore")]


async def test_sim_busy_at_start_is_waited_out(env: Env) -> None:
    env.sim.fail_next("AT+CPIN?", "+CME ERROR: 14")
    t = env.make()
    await eventually(lambda: t.state is ModemState.READY)
    assert env.sim.commands.count("AT+CPIN?") == 2


async def test_incomplete_concatenated_sms_is_shown_after_the_timeout(env: Env) -> None:
    text = "ALARM " + "Astrid har falt på badet og trenger hjelp. " * 4
    env.sim.inject_sms(UNIT, text, timestamp=T, reference=3, parts=[1], announce=False)
    t = env.make(poll_interval_s=0.02, partial_timeout_s=600)
    await eventually(lambda: t.state is ModemState.READY and "AT+CMGL=4" in env.sim.commands)
    polls = env.sim.commands.count("AT+CSQ")
    await eventually(lambda: env.sim.commands.count("AT+CSQ") > polls + 1)
    assert env.sim.deleted == [] and env.events() == []
    env.clock.advance(601)
    await eventually(lambda: env.sim.deleted == [1])
    (row,) = env.events()
    assert row[1] == "assistance" and row[3].endswith("[mangler del 2/2]")


async def test_reply_handler_takes_replies_and_failures_keep_the_sms(env: Env) -> None:
    seen: list[tuple[str, str]] = []
    broken = True

    async def handler(sender: str, text: str) -> bool:
        seen.append((sender, text))
        if broken:
            raise RuntimeError("store reader gone")
        return sender == "+4700000101"

    t = env.make(poll_interval_s=0.02)
    t.set_reply_handler(handler)
    await eventually(lambda: t.state is ModemState.READY and "AT+CMGL=4" in env.sim.commands)
    env.sim.inject_sms("+4700000101", "OK", timestamp=T)
    await eventually(lambda: len(seen) >= 2)  # offered again at the next listing
    assert env.sim.deleted == []
    broken = False
    await eventually(lambda: env.sim.deleted == [1])
    assert env.events() == []  # a reply is not an alarm

"""The SMS channel and SMS replies, against the modem simulator on a pty."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alarmd.clock import FakeClock
from alarmd.intake import Intake
from alarmd.model import EventKind
from alarmd.notify.outbox import DeliveryError, Dispatcher, OutboxItem
from alarmd.notify.sms import (
    ParsedReply,
    SmsChannel,
    SmsReplies,
    fit_gsm7,
    notification_text,
    parse_reply,
)
from alarmd.protocols import sms
from alarmd.protocols.sms_alarms import SenderConfig, SmsAlarmTable
from alarmd.sim.modem import ModemSimulator
from alarmd.store.db import Store
from alarmd.transports.modem import ModemState, ModemTransport

from caseworld import NOW, T0, Router, World, seed_directory

UNIT = "+4700000011"
KARI = "+4700000101"
PAYLOAD = {
    "case_id": 123,
    "tenant": "eksempel-kommune",
    "kind": "fall",
    "priority": 4,
    "step": 1,
    "accept_by": None,
    "first_name": "Astrid",
    "address": "Eksempelveien 1",
    "postcode": "0001",
}


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait for I/O between the simulator and the transport (bounded, never a deadline)."""
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


def item(payload: dict[str, Any] | None = None, address: str = KARI, id: int = 7) -> OutboxItem:
    return OutboxItem(
        id=id,
        case_id=123,
        channel="sms",
        person="staff:1",
        address=address,
        payload=PAYLOAD if payload is None else payload,
        dedup_key=f"k{id}",
        attempts=0,
        created_at=T0,
    )


# --------------------------------------------------------------------------- pure parts


def test_notification_text() -> None:
    text = notification_text(PAYLOAD)
    assert text == "Alarm 123: fall hos Astrid, Eksempelveien 1. Svar OK 123 for å ta den."
    assert sms.gsm7_encodable(text)
    assert len(sms.encode_submit(KARI, text, reference=1)) == 1


def test_notification_text_without_user() -> None:
    text = notification_text({"case_id": 5, "kind": "battery_low"})
    assert text == "Alarm 5: lavt batteri. Svar OK 5 for å ta den."


def test_fit_gsm7_keeps_norwegian_and_plains_the_rest() -> None:
    assert fit_gsm7("Ærlig Øystein på Åsen") == "Ærlig Øystein på Åsen"
    assert fit_gsm7("Čapek, Ōsaka") == "Capek, Osaka"
    assert fit_gsm7("José") == "José"  # é is in the GSM alphabet
    assert fit_gsm7("王") == "王"  # nothing plain: the SMS goes UCS-2


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("OK", ParsedReply(None)),
        ("ok", ParsedReply(None)),
        (" Ok 123 ", ParsedReply(123)),
        ("OK123", ParsedReply(123)),
        ("1", ParsedReply(None)),
        ("Ja 7.", ParsedReply(7)),
        ("ok!", ParsedReply(None)),
        ("kommer", None),
        ("OK 12 13", None),
        ("okei", None),
        ("", None),
    ],
)
def test_parse_reply(text: str, parsed: ParsedReply | None) -> None:
    assert parse_reply(text) == parsed


# --------------------------------------------------------------------------- the channel


class Modem:
    def __init__(self, sim: ModemSimulator, transport: ModemTransport, clock: FakeClock) -> None:
        self.sim = sim
        self.transport = transport
        self.clock = clock


@pytest.fixture
async def modem(tmp_path: Path) -> AsyncIterator[Modem]:
    store = await Store.open(tmp_path / "x.sqlite")
    sim = ModemSimulator()
    await sim.start()
    clock = FakeClock(T0)
    intake = Intake(store, dedup_window=timedelta(hours=24), tenant_of=lambda p, s: None)
    transport = ModemTransport(
        sim.path, intake, clock, SmsAlarmTable(), reopen_min_s=0.02, reopen_max_s=0.1
    )
    transport.start()
    await eventually(lambda: transport.state is ModemState.READY)
    yield Modem(sim, transport, clock)
    await transport.stop()
    await sim.stop()
    await store.close()


async def test_channel_sends_through_the_modem(modem: Modem) -> None:
    channel = SmsChannel(modem.transport, modem.clock)
    await channel.deliver(item())
    (sent,) = modem.sim.sent
    assert sent.number == KARI
    assert sent.text == notification_text(PAYLOAD)
    assert sent.encoding is sms.Encoding.GSM7


async def test_channel_long_text_is_concatenated(modem: Modem) -> None:
    channel = SmsChannel(modem.transport, modem.clock)
    long = {**PAYLOAD, "address": "Eksempelveien 1, inngang bak, tredje etasje. " * 5}
    await channel.deliver(item(long))
    assert len(modem.sim.sent) == 2
    assert "".join(s.text for s in modem.sim.sent) == notification_text(long)


async def test_channel_modem_down_is_retryable(modem: Modem) -> None:
    channel = SmsChannel(modem.transport, modem.clock)
    modem.sim.unplug()
    await eventually(lambda: modem.transport.state is ModemState.DOWN)
    with pytest.raises(DeliveryError) as err:
        await channel.deliver(item())
    assert err.value.retryable


async def test_channel_bad_number_is_permanent(modem: Modem) -> None:
    channel = SmsChannel(modem.transport, modem.clock)
    with pytest.raises(DeliveryError) as err:
        await channel.deliver(item(address="Kari"))
    assert not err.value.retryable


async def test_channel_cms_error_is_retryable(modem: Modem) -> None:
    channel = SmsChannel(modem.transport, modem.clock)
    modem.sim.fail_next("AT+CMGS", "+CMS ERROR: 331")  # no network service
    with pytest.raises(DeliveryError) as err:
        await channel.deliver(item())
    assert err.value.retryable
    await channel.deliver(item())
    assert len(modem.sim.sent) == 1


async def test_channel_rate_limit(modem: Modem) -> None:
    channel = SmsChannel(modem.transport, modem.clock, max_per_minute=2)
    await channel.deliver(item(id=1))
    modem.clock.advance(10)
    await channel.deliver(item(id=2))
    with pytest.raises(DeliveryError) as err:
        await channel.deliver(item(id=3))
    assert err.value.retryable and err.value.retry_after == pytest.approx(50)
    modem.clock.advance(50)
    await channel.deliver(item(id=3))
    assert len(modem.sim.sent) == 3


async def test_unplug_in_the_middle_of_sending(modem: Modem) -> None:
    channel = SmsChannel(modem.transport, modem.clock)
    modem.sim.unplug_on_send()
    with pytest.raises(DeliveryError) as err:
        await channel.deliver(item())
    assert err.value.retryable
    assert modem.sim.sent == []
    await eventually(lambda: modem.transport.state is ModemState.DOWN)
    modem.sim.plug()
    await eventually(lambda: modem.transport.state is ModemState.READY)
    await channel.deliver(item())  # the outbox's retry
    assert [s.number for s in modem.sim.sent] == [KARI]


# --------------------------------------------------------------------------- end to end


class Centre:
    def __init__(self, world: World, sim: ModemSimulator, transport: ModemTransport) -> None:
        self.world = world
        self.sim = sim
        self.transport = transport
        self.dispatcher = Dispatcher(
            world.store, world.clock, {"sms": SmsChannel(transport, world.clock)}
        )


@pytest.fixture
async def centre(tmp_path: Path) -> AsyncIterator[Centre]:
    store = await Store.open(tmp_path / "x.sqlite")

    def seed(conn: sqlite3.Connection) -> None:
        seed_directory(conn)
        conn.execute(
            "INSERT INTO devices (tenant, user_id, protocol, identity, updated_at)"
            " VALUES ('eksempel-kommune', 1, 'sms', ?, ?)",
            (UNIT, NOW),
        )

    await store.writer.submit(seed)
    world = World(store, FakeClock(T0), Router(), channels=frozenset({"sms"}))
    sim = ModemSimulator()
    await sim.start()
    table = SmsAlarmTable.of([(UNIT, SenderConfig(name="Astrid"))])
    transport = ModemTransport(
        sim.path, world.intake, world.clock, table, reopen_min_s=0.02, reopen_max_s=0.1
    )
    c = Centre(world, sim, transport)
    replies = SmsReplies(store, world.engine, world.clock, wake=c.dispatcher.wake)
    transport.set_reply_handler(replies.handle)
    transport.start()
    await eventually(lambda: transport.state is ModemState.READY)
    yield c
    await transport.stop()
    await sim.stop()
    await store.close()


def sms_rows(world: World) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = world.q(
        "SELECT case_id, person, address, status, payload FROM outbox WHERE channel = 'sms'"
        " ORDER BY id"
    )
    return rows


async def test_sms_alarm_to_carer_and_ok_reply_accepts(centre: Centre) -> None:
    world, sim = centre.world, centre.sim
    sim.inject_sms(UNIT, "FALL", timestamp=datetime(2026, 3, 2, 8, 59, tzinfo=UTC))
    await eventually(lambda: sim.deleted == [1])
    await world.tick()
    case = world.case(1)
    assert case["kind"] == "fall" and case["state"] == "notifying"

    await centre.dispatcher.run_due()
    to_kari = [s for s in sim.sent if s.number == KARI]
    assert [s.text for s in to_kari] == [
        "Alarm 1: fall hos Astrid, Eksempelveien 1. Svar OK 1 for å ta den."
    ]

    sim.inject_sms(KARI, "OK", timestamp=datetime(2026, 3, 2, 9, 1, tzinfo=UTC))
    await eventually(lambda: sim.deleted == [1, 1])
    case = world.case(1)
    assert case["state"] == "accepted"
    assert "accepted" in world.types(1)
    assert [e for e in world.q("SELECT source FROM events")] == [(UNIT,)]  # a reply, no alarm

    await centre.dispatcher.run_due()  # the confirmation goes out through the outbox
    assert sim.sent[-1].number == KARI
    assert sim.sent[-1].text == "Takk. Du har tatt alarm 1."

    await world.tick(300)  # past step 1's deadline: no escalation to the next of kin
    assert world.case(1)["state"] == "accepted"
    assert not any(r[2] == "+4700000002" for r in sms_rows(world))


async def test_reply_with_unknown_case_gets_help(centre: Centre) -> None:
    world, sim = centre.world, centre.sim
    await world.send(EventKind.FALL)
    await world.tick()
    await centre.dispatcher.run_due()
    sim.inject_sms(KARI, "OK 99")
    await eventually(lambda: len(sim.deleted) == 1)
    assert world.case(1)["state"] == "notifying"
    await centre.dispatcher.run_due()
    assert sim.sent[-1].text == "Fant ingen alarm 99 til deg. Svar OK 1 for å ta alarm 1."


async def test_reply_not_understood_gets_help(centre: Centre) -> None:
    world, sim = centre.world, centre.sim
    await world.send(EventKind.FALL)
    await world.tick()
    await centre.dispatcher.run_due()
    sim.inject_sms(KARI, "hva skjer?")
    await eventually(lambda: len(sim.deleted) == 1)
    assert world.case(1)["state"] == "notifying"
    await centre.dispatcher.run_due()
    assert sim.sent[-1].text == "Svar OK 1 for å ta alarm 1."
    answer = json.loads(sms_rows(world)[-1][4])
    assert answer["text"] == "Svar OK 1 for å ta alarm 1."


async def test_ok_from_a_number_never_notified_is_an_alarm(centre: Centre) -> None:
    world, sim = centre.world, centre.sim
    sim.inject_sms("+4700000055", "OK")
    await eventually(lambda: len(sim.deleted) == 1)
    rows = world.q("SELECT source, kind, flags FROM events")
    assert len(rows) == 1 and rows[0][0] == "+4700000055" and "unregistered" in rows[0][2]


async def test_second_acceptance_is_refused_politely(centre: Centre) -> None:
    world, sim = centre.world, centre.sim
    await world.send(EventKind.FALL)
    await world.tick()
    await centre.dispatcher.run_due()
    sim.inject_sms(KARI, "OK 1")
    await eventually(lambda: len(sim.deleted) == 1)
    assert world.case(1)["state"] == "accepted"
    sim.inject_sms("+4700000102", "1", timestamp=datetime(2026, 3, 2, 9, 2, tzinfo=UTC))
    await eventually(lambda: len(sim.deleted) == 2)
    await centre.dispatcher.run_due()
    texts = [(s.number, s.text) for s in sim.sent if "kan ikke" in s.text]
    assert texts == [("+4700000102", "Alarm 1 kan ikke tas (tatt eller avsluttet).")]


async def test_unplug_while_the_outbox_sends_loses_nothing_and_sends_once(
    centre: Centre,
) -> None:
    world, sim, transport = centre.world, centre.sim, centre.transport
    await world.send(EventKind.FALL)
    await world.tick()
    sim.unplug_on_send()
    await centre.dispatcher.run_due()  # the first SMS vanishes with the modem
    await eventually(lambda: transport.state is ModemState.DOWN)
    await centre.dispatcher.run_due()
    pending = [r for r in sms_rows(world) if r[3] == "pending"]
    assert len(pending) == 2 and sim.sent == []  # both wait in the outbox, none is lost
    sim.plug()
    await eventually(lambda: transport.state is ModemState.READY)
    world.clock.advance(30)  # past the outbox's backoff
    await centre.dispatcher.run_due()
    assert sorted(s.number for s in sim.sent) == [KARI, "+4700000102"]
    assert {r[3] for r in sms_rows(world)} == {"sent"}

"""The staff app over MQTT against a real Mosquitto with the example ACL: a routed alarm
reaches the staff topic, the carer accepts through MQTT and the escalation stops; only a
notified recipient may accept; one carer can neither read another's notifications nor act
in another's name."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from alarmd.clock import FakeClock
from alarmd.notify.mqtt import StaffMqtt, StaffMqttSettings, parse_action
from alarmd.notify.outbox import DeliveryError, Dispatcher, OutboxItem
from alarmd.routing.escalation import EscalationPolicy, Recipient, Step
from alarmd.sim.mqtt import publish_device_event, publish_staff_action
from alarmd.store.db import Store
from alarmd.transports.mqtt import MqttIngest, MqttIngestSettings, broker_client

from caseworld import CENTRE, T0, Router, World, seed_directory
from mqtt_broker import Broker, running_broker

WAIT = 20.0  # a safety net for a hung test, never a deadline a test waits for
TENANT = "eksempel-kommune"
ACL = (Path(__file__).parents[2] / "config" / "mosquitto" / "acl").read_text()
USERS = {
    "alarmd": "pw-alarmd",
    "kari": "pw-kari",
    "ola": "pw-ola",
    "per": "pw-per",
    "FALL-1": "pw-device",
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path / "broker", users=USERS, acl=ACL) as b:
        yield b


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await Store.open(tmp_path / "alarmd.sqlite")

    def seed(conn: Any) -> None:
        seed_directory(conn)
        conn.execute(
            "UPDATE staff SET channels = json_set(channels, '$.mqtt', ref) WHERE id IN (1, 2)"
        )
        conn.execute(  # on duty in the municipality, but not in the user's team
            "INSERT INTO staff (id, tenant, ref, name, channels, updated_at)"
            " VALUES (4, ?, 'per', 'Per', '{\"mqtt\": \"per\"}', ?)",
            (TENANT, "2026-03-02T09:00:00.000000Z"),
        )
        conn.execute(  # Astrid's fall sensor speaks MQTT (native schema)
            "INSERT INTO devices (tenant, user_id, protocol, identity, updated_at)"
            " VALUES (?, 1, 'mqtt', 'FALL-1', '2026-03-02T09:00:00.000000Z')",
            (TENANT,),
        )

    await store.writer.submit(seed)
    router = Router()
    router.policy = EscalationPolicy(
        steps=(Step((Recipient("team", "plan"),), ("mqtt",), timedelta(minutes=3)),),
        centre=CENTRE,
        accepted_deadline=timedelta(minutes=30),
    )
    yield World(store, FakeClock(T0), router, channels=frozenset({"mqtt"}))
    await store.close()


@pytest.fixture
async def staff(broker: Broker, world: World) -> AsyncIterator[StaffMqtt]:
    channel = StaffMqtt(
        engine=world.engine,
        store=world.store,
        settings=StaffMqttSettings(broker=broker.settings("alarmd", USERS["alarmd"])),
    )
    task = asyncio.create_task(channel.run())
    try:
        await asyncio.wait_for(channel.connected.wait(), WAIT)
        yield channel
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def app(broker: Broker, user: str) -> AsyncIterator[aiomqtt.Client]:
    """A staff app logged in as ``user``, subscribed to its notify topic."""
    async with broker_client(
        broker.settings(user, USERS[user]), f"app-{user}", persistent=False
    ) as client:
        granted = await client.subscribe(f"alarmd/v1/{TENANT}/staff/{user}/notify", qos=1)
        assert list(granted) == [1]
        yield client


async def next_message(client: aiomqtt.Client) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        message = await anext(aiter(client.messages))
    assert isinstance(message.payload, bytes)
    body: dict[str, Any] = json.loads(message.payload)
    return body


async def alarm_routed_and_delivered(world: World, staff: StaffMqtt) -> None:
    await world.send()
    await world.tick()
    assert await Dispatcher(world.store, world.clock, {"mqtt": staff}).run_due() == 2


async def test_alarm_reaches_the_staff_app_accepted_over_mqtt_escalation_stops(
    broker: Broker, world: World, staff: StaffMqtt
) -> None:
    async with app(broker, "kari") as kari, app(broker, "ola") as ola:
        await alarm_routed_and_delivered(world, staff)
        note = await next_message(kari)
        assert note == {
            "type": "notification",
            "delivery_id": note["delivery_id"],
            "case_id": 1,
            "tenant": TENANT,
            "kind": "fall",
            "priority": note["priority"],
            "step": 1,
            "accept_by": "2026-03-02T09:03:00.000000Z",
            "first_name": "Astrid",
            "address": "Eksempelveien 1",
            "postcode": "",
        }
        assert "Testesen" not in json.dumps(note)  # no surname: the minimum to go
        assert (await next_message(ola))["case_id"] == 1
        assert world.outbox() == [
            ("mqtt", "staff:1", "kari", "sent"),
            ("mqtt", "staff:2", "ola", "sent"),
        ]

        await publish_staff_action(
            broker.settings("kari", USERS["kari"]), TENANT, "kari", 1, "accept"
        )
        assert await next_message(kari) == {
            "type": "result",
            "case_id": 1,
            "action": "accept",
            "ok": True,
            "state": "accepted",
        }
        case = world.case()
        assert (case["state"], case["accepted_by"]) == ("accepted", "staff:1")

        # Ola comes second: the case is taken
        await publish_staff_action(broker.settings("ola", USERS["ola"]), TENANT, "ola", 1, "accept")
        late = await next_message(ola)
        assert late["ok"] is False and late["reason"]

    await world.tick(3 * 60)  # the step's deadline passes: nothing escalates
    assert world.case()["state"] == "accepted"
    assert "escalated" not in world.types()

    async with app(broker, "kari"):
        for action, outcome in (("on_site", None), ("close", "home_care_dispatched")):
            await publish_staff_action(
                broker.settings("kari", USERS["kari"]), TENANT, "kari", 1, action, outcome=outcome
            )
    case = await _until_state(world, "closed")
    assert case["outcome"] == "home_care_dispatched"


async def _until_state(world: World, state: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while (case := world.case())["state"] != state:
            await asyncio.sleep(0.01)
    return case


async def test_only_a_notified_recipient_can_accept(
    broker: Broker, world: World, staff: StaffMqtt
) -> None:
    async with app(broker, "per") as per:
        await alarm_routed_and_delivered(world, staff)
        await publish_staff_action(broker.settings("per", USERS["per"]), TENANT, "per", 1, "accept")
        answer = await next_message(per)
    assert answer["ok"] is False and answer["action"] == "accept"
    assert world.case()["state"] == "notifying"


async def test_an_invalid_acknowledgement_is_answered_and_the_consumer_continues(
    broker: Broker, world: World, staff: StaffMqtt
) -> None:
    settings = broker.settings("kari", USERS["kari"])
    async with app(broker, "kari") as kari:
        await alarm_routed_and_delivered(world, staff)
        assert (await next_message(kari))["type"] == "notification"
        async with broker_client(settings, None, persistent=False) as client:
            topic = f"alarmd/v1/{TENANT}/staff/kari/ack"
            await client.publish(topic, b"\xff not json", qos=1)
            await client.publish(topic, b'{"case_id": 1, "action": "close"}', qos=1)
        assert (await next_message(kari))["reason"] == "payload: not UTF-8 JSON"
        assert (await next_message(kari))["reason"] == "outcome: required to close"
        await publish_staff_action(settings, TENANT, "kari", 1, "accept")
        assert (await next_message(kari))["ok"] is True


async def test_the_acl_keeps_each_carer_to_their_own_topics(
    broker: Broker, world: World, staff: StaffMqtt
) -> None:
    kari = broker.settings("kari", USERS["kari"])
    async with broker_client(kari, None, persistent=False) as snoop:
        # Mosquitto 2.0 grants the subscription and filters what it delivers by the ACL
        await snoop.subscribe("alarmd/v1/+/staff/+/notify", qos=1)
        await alarm_routed_and_delivered(world, staff)  # to Kari and to Ola
        # Kari writes on Ola's ack topic: the broker drops it; then on her own
        await publish_staff_action(kari, TENANT, "ola", 1, "accept")
        await publish_staff_action(kari, TENANT, "kari", 1, "decline")
        seen: list[tuple[str, dict[str, Any]]] = []
        async with asyncio.timeout(WAIT):
            async for message in snoop.messages:
                assert isinstance(message.payload, bytes)
                seen.append((message.topic.value, json.loads(message.payload)))
                if seen[-1][1]["type"] == "result":
                    break
    assert [(topic, body["type"]) for topic, body in seen] == [
        (f"alarmd/v1/{TENANT}/staff/kari/notify", "notification"),
        (f"alarmd/v1/{TENANT}/staff/kari/notify", "result"),
    ]
    assert seen[-1][1]["action"] == "decline"
    assert world.case()["accepted_by"] is None
    assert world.types()[-1] == "declined"
    assert not [t for t, m in world.log() if "staff:2" in m and t not in ("notify", "delivered")]


async def test_device_to_carer_and_back_all_over_mqtt(
    broker: Broker, world: World, staff: StaffMqtt
) -> None:
    """A fall sensor publishes on the native topic; alarmd stores it, opens and routes the
    case, notifies the team on their staff topics; Kari accepts from her app; the step's
    deadline passes without escalation."""
    ingest = MqttIngest(
        intake=world.intake,
        clock=world.clock,
        settings=MqttIngestSettings(broker=broker.settings("alarmd", USERS["alarmd"])),
    )
    consumer = asyncio.create_task(ingest.run())
    try:
        await asyncio.wait_for(ingest.connected.wait(), WAIT)
        async with app(broker, "kari") as kari:
            device = broker.settings("FALL-1", USERS["FALL-1"])
            await publish_device_event(device, TENANT, "FALL-1", "fall", event_id="ev-1", time=T0)
            case = await _until_state(world, "new")
            assert (case["user_id"], case["kind"], case["protocol"]) == (1, "fall", "mqtt")
            await world.tick()  # the engine routes
            dispatcher = Dispatcher(world.store, world.clock, {"mqtt": staff})
            assert await dispatcher.run_due() == 2
            assert (await next_message(kari))["first_name"] == "Astrid"
            await publish_staff_action(
                broker.settings("kari", USERS["kari"]), TENANT, "kari", 1, "accept"
            )
            assert (await next_message(kari))["state"] == "accepted"
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    await world.tick(3 * 60)
    assert (world.case()["state"], world.case()["accepted_by"]) == ("accepted", "staff:1")
    assert "escalated" not in world.types()
    assert world.q("SELECT protocol, source, dedup_key FROM events") == [
        ("mqtt", "FALL-1", f"mqtt:{TENANT}:FALL-1:ev-1")
    ]


async def test_delivery_without_a_broker_connection_is_retried() -> None:
    channel = StaffMqtt(engine=None, store=None, settings=StaffMqttSettings())  # type: ignore[arg-type]
    item = OutboxItem(
        id=1,
        case_id=1,
        channel="mqtt",
        person="staff:1",
        address="kari",
        payload={"tenant": TENANT, "case_id": 1},
        dedup_key="case:1:step:0:staff:1:mqtt",
        attempts=0,
        created_at=T0,
    )
    with pytest.raises(DeliveryError) as raised:
        await channel.deliver(item)
    assert raised.value.retryable
    with pytest.raises(DeliveryError) as raised:
        await channel.deliver(dataclasses.replace(item, address="kari/#"))
    assert not raised.value.retryable and "one topic level" in raised.value.message


def test_parse_action_table() -> None:
    assert parse_action(b'{"case_id": 3, "action": "on_site"}') == parse_action(
        b'{"action": "on_site", "case_id": 3}'
    )
    for payload, fragment in (
        (b"[]", "not a JSON object"),
        (b'{"case_id": true, "action": "accept"}', "case_id"),
        (b'{"case_id": 1, "action": "take"}', "action"),
        (b'{"case_id": 1, "action": "accept", "outcome": "test"}', "only with close"),
        (b'{"case_id": 1, "action": "accept", "x": 1}', "x: unknown field"),
        (b"{" * 5000, "more than"),
    ):
        result = parse_action(payload)
        assert isinstance(result, str) and fragment in result, (payload, result)

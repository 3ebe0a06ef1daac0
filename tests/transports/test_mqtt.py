"""MQTT ingest against a real Mosquitto: native and mapped events stored, redeliveries
stored once, PUBACK only after the commit, the persistent session across an absence, the
dead-letter topic, and a broker restart in the middle of a stream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from alarmd import metrics
from alarmd.clock import FakeClock
from alarmd.intake import Intake
from alarmd.model import Event, Receipt
from alarmd.protocols.mqtt_events import native_topic, parse_mapping
from alarmd.sim.mqtt import native_event_payload, publish
from alarmd.store.db import Store, StoreError
from alarmd.transports.mqtt import (
    MQTT_RECONNECTS,
    MqttIngest,
    MqttIngestSettings,
    broker_client,
)

from mqtt_broker import Broker, make_tls, running_broker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WAIT = 20.0  # a safety net for a hung test, never a deadline a test waits for

DOOR = parse_mapping(
    {
        "name": "acme-door",
        "topic": "acme/{site}/door/#",
        "tenant": "eksempel-kommune",
        "device_id": "$.dev.id",
        "event": "$.evt",
        "values": {"OPEN": "exit", "TAMPER": {"kind": "tamper", "priority": 3}},
        "id": "$.seq",
    }
)


class RecordingIntake(Intake):
    """The real intake, plus a queue of what each submission committed, and a gate that can
    hold back a commit's result (the commit itself happens) to leave a message unacked."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, dedup_window=timedelta(hours=24), tenant_of=lambda p, s: None)
        self.committed: asyncio.Queue[tuple[tuple[Event, ...], Receipt]] = asyncio.Queue()
        self.hold = False
        self.fail_next = 0  # submissions refused as if the store could not commit

    def submit_future(self, events: Sequence[Event]) -> asyncio.Future[Receipt]:
        if self.fail_next:
            self.fail_next -= 1
            failed: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
            failed.set_exception(StoreError("disk full"))
            return failed
        inner = super().submit_future(events)
        outer: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()

        def done(fut: asyncio.Future[Receipt]) -> None:
            if fut.exception() is None:
                self.committed.put_nowait((tuple(events), fut.result()))
            if self.hold:
                return  # committed, but the transport never hears of it
            if fut.exception() is not None:
                outer.set_exception(fut.exception())  # type: ignore[arg-type]
            else:
                outer.set_result(fut.result())

        inner.add_done_callback(done)
        return outer

    async def next_commit(self) -> tuple[tuple[Event, ...], Receipt]:
        return await asyncio.wait_for(self.committed.get(), WAIT)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "alarmd.sqlite")
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def ingesting(broker: Broker, intake: Intake, **settings: Any) -> AsyncIterator[MqttIngest]:
    ingest = MqttIngest(
        intake=intake,
        clock=FakeClock(T0),
        settings=MqttIngestSettings(
            broker=broker.settings(), client_id="alarmd-test", mappings=(DOOR,), **settings
        ),
    )
    task = asyncio.create_task(ingest.run())
    try:
        await asyncio.wait_for(ingest.connected.wait(), WAIT)
        yield ingest
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def rows(store: Store, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def native(event_id: str, kind: str = "fall") -> bytes:
    return native_event_payload(kind, event_id=event_id, time=T0)


async def test_native_and_mapped_events_are_stored(broker: Broker, store: Store) -> None:
    intake = RecordingIntake(store)
    async with ingesting(broker, intake):
        await publish(broker.settings(), native_topic("eksempel-kommune", "P-1"), native("e1"))
        (event,), receipt = await intake.next_commit()
        assert event.source == "P-1" and event.kind.value == "fall"
        assert event.dedup_key == "mqtt:eksempel-kommune:P-1:e1"
        assert receipt.duplicate == (False,)

        door = b'{"dev":{"id":"D-17"},"evt":"TAMPER","seq":41}'
        await publish(broker.settings(), "acme/site-1/door/front", door)
        (event,), _ = await intake.next_commit()
        assert (event.source, event.kind.value, event.priority.value) == ("D-17", "tamper", 3)
        assert event.attributes["mqtt.mapping"] == "acme-door"
    assert rows(store, "SELECT protocol, source, kind FROM events ORDER BY id") == [
        ("mqtt", "P-1", "fall"),
        ("mqtt", "D-17", "tamper"),
    ]


async def test_a_republished_message_is_stored_once(broker: Broker, store: Store) -> None:
    intake = RecordingIntake(store)
    async with ingesting(broker, intake):
        topic = native_topic("eksempel-kommune", "P-1")
        for _ in range(2):
            await publish(broker.settings(), topic, native("same"))
        first, second = await intake.next_commit(), await intake.next_commit()
    assert first[1].duplicate == (False,) and second[1].duplicate == (True,)
    assert rows(store, "SELECT dedup_key, retransmissions FROM events") == [
        ("mqtt:eksempel-kommune:P-1:same", 1)
    ]


async def test_puback_only_after_commit_and_a_redelivery_is_stored_once(
    broker: Broker, store: Store
) -> None:
    """The first alarmd commits but never acknowledges (its commit result is held back) and
    goes away: the broker keeps the message in the session and sends it again to the next
    alarmd, which recognises it as a duplicate and acknowledges it."""
    intake = RecordingIntake(store)
    intake.hold = True
    async with ingesting(broker, intake):
        await publish(broker.settings(), native_topic("eksempel-kommune", "P-1"), native("r1"))
        _, receipt = await intake.next_commit()
        assert receipt.duplicate == (False,)
    intake.hold = False
    async with ingesting(broker, intake):
        (event,), receipt = await intake.next_commit()  # the broker's redelivery
        assert event.dedup_key.endswith(":r1") and receipt.duplicate == (True,)
        # acknowledged this time: a third session gets nothing more
        await publish(broker.settings(), native_topic("eksempel-kommune", "P-1"), native("r2"))
        (event,), _ = await intake.next_commit()
        assert event.dedup_key.endswith(":r2")
    async with ingesting(broker, intake):
        await publish(broker.settings(), native_topic("eksempel-kommune", "P-1"), native("r3"))
        (event,), _ = await intake.next_commit()
        assert event.dedup_key.endswith(":r3")  # not r1 or r2 again
    assert rows(store, "SELECT count(*) FROM events") == [(3,)]


async def test_messages_published_while_away_arrive_after_reconnect(
    broker: Broker, store: Store
) -> None:
    intake = RecordingIntake(store)
    async with ingesting(broker, intake):
        pass  # the session and its subscriptions now exist on the broker
    topic = native_topic("eksempel-kommune", "P-9")
    for n in range(5):
        await publish(broker.settings(), topic, native(f"away-{n}"))
    assert intake.committed.empty()
    async with ingesting(broker, intake):
        keys = [(await intake.next_commit())[0][0].dedup_key for _ in range(5)]
    assert keys == [f"mqtt:eksempel-kommune:P-9:away-{n}" for n in range(5)]


async def test_malformed_payloads_go_to_the_dead_letter_topic_and_the_consumer_continues(
    broker: Broker, store: Store
) -> None:
    intake = RecordingIntake(store)
    async with (
        ingesting(broker, intake, dead_letter_topic="alarmd/v1/deadletter"),
        broker_client(broker.settings(), None, persistent=False) as watcher,
    ):
        await watcher.subscribe("alarmd/v1/deadletter", qos=1)
        topic = native_topic("eksempel-kommune", "P-1")
        await publish(broker.settings(), topic, b"not json \xff")
        await publish(broker.settings(), topic, b'{"schema":"alarmd.event/1","id":"x"}')
        await publish(broker.settings(), "acme/site-1/door/x", b'{"evt":"OPEN"}')  # no device
        await publish(broker.settings(), topic, native("good"))
        (event,), _ = await intake.next_commit()
        assert event.dedup_key.endswith(":good")
        letters = []
        async with asyncio.timeout(WAIT):
            async for message in watcher.messages:
                assert isinstance(message.payload, bytes)
                letters.append(json.loads(message.payload))
                if len(letters) == 3:
                    break
    assert [(d["topic"], d["reason"], d["field"]) for d in letters] == [
        (topic, "encoding", None),
        (topic, "missing_field", "kind"),
        ("acme/site-1/door/x", "device_id", "$.dev.id"),
    ]
    assert letters[0]["payload_base64"] and letters[1]["payload_text"].startswith("{")
    assert rows(store, "SELECT count(*) FROM events") == [(1,)]


def test_a_dead_letter_topic_we_would_read_back_is_refused() -> None:
    with pytest.raises(ValueError, match="dead_letter_topic"):
        MqttIngestSettings(dead_letter_topic="alarmd/v1/x/device/y/event").check()


async def test_broker_restart_mid_stream_loses_nothing_and_doubles_nothing(
    broker: Broker, store: Store
) -> None:
    """A device publishes 60 events at QoS 1, re-sending an event until the broker has
    acknowledged it; the broker is restarted (a clean stop: sessions persist) once alarmd has
    committed 20. alarmd reconnects with backoff, what it had not acknowledged comes again
    and is de-duplicated, as is what the device re-sent: every event is stored exactly once."""
    intake = RecordingIntake(store)
    topic = native_topic("eksempel-kommune", "P-2")

    # the device gives up on a PUBACK after 1 s (aiomqtt would wait 10 s on a dead connection)
    device_broker = dataclasses.replace(broker.settings(), timeout=1.0)

    async def device() -> None:
        for n in range(60):
            while True:
                try:
                    await publish(device_broker, topic, native(f"s-{n}"))
                    break
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.02)  # the broker is restarting: try again

    async with ingesting(broker, intake) as ingest:
        sender = asyncio.create_task(device())
        seen = [(await intake.next_commit())[0][0].dedup_key for _ in range(20)]
        sessions = ingest.sessions
        broker.restart()
        await asyncio.wait_for(_reconnected(ingest, sessions), WAIT)
        while len(set(seen)) < 60:
            seen.append((await intake.next_commit())[0][0].dedup_key)
        await asyncio.wait_for(sender, WAIT)
    assert set(seen) == {f"mqtt:eksempel-kommune:P-2:s-{n}" for n in range(60)}
    assert rows(store, "SELECT count(*), count(DISTINCT dedup_key) FROM events") == [(60, 60)]


async def test_a_store_failure_leaves_the_message_unacknowledged_and_it_comes_again(
    broker: Broker, store: Store
) -> None:
    intake = RecordingIntake(store)
    intake.fail_next = 1
    unacked = metrics.UNACKED_STORE_FAILURE.labels("mqtt")
    before = unacked._value.get()
    async with ingesting(broker, intake) as ingest:
        sessions = ingest.sessions
        await publish(broker.settings(), native_topic("eksempel-kommune", "P-3"), native("f1"))
        (event,), receipt = await intake.next_commit()  # after the reconnect
        assert ingest.sessions > sessions
    assert event.dedup_key.endswith(":f1") and receipt.duplicate == (False,)
    assert unacked._value.get() == before + 1
    assert rows(store, "SELECT count(*) FROM events") == [(1,)]


async def test_client_sockets_have_tcp_nodelay(broker: Broker) -> None:
    async with broker_client(broker.settings(), None, persistent=False) as client:
        sock = client._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def _reconnected(ingest: MqttIngest, sessions: int) -> None:
    while ingest.sessions == sessions:
        await asyncio.sleep(0.01)


async def test_wrong_password_is_retried_not_fatal(tmp_path: Path, store: Store) -> None:
    with running_broker(tmp_path / "auth", users={"alarmd": "s3cret"}) as broker:
        intake = RecordingIntake(store)
        bad = MqttIngest(
            intake=intake,
            clock=FakeClock(T0),
            settings=MqttIngestSettings(broker=broker.settings("alarmd", "wrong")),
        )
        failures = MQTT_RECONNECTS.labels("ingest")
        before = failures._value.get()
        task = asyncio.create_task(bad.run())
        async with asyncio.timeout(WAIT):
            while failures._value.get() < before + 2:  # refused, and tried again
                await asyncio.sleep(0.01)
        assert not bad.connected.is_set() and not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        good = MqttIngest(
            intake=intake,
            clock=FakeClock(T0),
            settings=MqttIngestSettings(broker=broker.settings("alarmd", "s3cret")),
        )
        task = asyncio.create_task(good.run())
        try:
            await asyncio.wait_for(good.connected.wait(), WAIT)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_tls_with_a_password_stores_events(tmp_path: Path, store: Store) -> None:
    tls = make_tls(tmp_path / "tls")
    users = {"alarmd": "s3cret", "dev": "d3v"}
    with running_broker(tmp_path / "tls-broker", users=users, tls=tls) as broker:
        intake = RecordingIntake(store)
        ingest = MqttIngest(
            intake=intake,
            clock=FakeClock(T0),
            settings=MqttIngestSettings(broker=broker.settings("alarmd", "s3cret")),
        )
        task = asyncio.create_task(ingest.run())
        try:
            await asyncio.wait_for(ingest.connected.wait(), WAIT)
            topic = native_topic("eksempel-kommune", "P-7")
            await publish(broker.settings("dev", "d3v"), topic, native("tls-1"))
            (event,), _ = await intake.next_commit()
            assert event.dedup_key.endswith(":tls-1")
            plain = dataclasses.replace(broker.settings("dev", "d3v"), tls=None, timeout=0.5)
            with pytest.raises(aiomqtt.MqttError):  # the listener speaks only TLS
                await publish(plain, topic, native("plain-1"))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

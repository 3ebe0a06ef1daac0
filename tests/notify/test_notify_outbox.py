"""The outbox dispatcher over a real SQLite store, a fake clock and a real webhook receiver.

Time moves only by ``clock.advance``; deliveries happen only in ``run_due``: no test waits
for a deadline or looks at the wall clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from notify_support import SECRET, T0, Receiver, Reply, insert_case, serve_receiver

from alarmd import metrics
from alarmd.clock import FakeClock
from alarmd.notify.outbox import (
    DeliveryError,
    Dispatcher,
    NewOutboxRow,
    OutboxItem,
    enqueue_job,
    insert_outbox_rows,
)
from alarmd.notify.webhook import WebhookChannel, WebhookEndpoint, verify
from alarmd.store.db import Store, iso

KEY = "case:1:step:0:staff:7:webhook"


def new_row(
    case_id: int | None,
    *,
    key: str = KEY,
    channel: str = "webhook",
    address: str = "supplier-desk",
    payload: dict[str, Any] | None = None,
) -> NewOutboxRow:
    return NewOutboxRow(
        case_id=case_id,
        channel=channel,
        person="staff:7",
        address=address,
        payload=payload if payload is not None else {"kind": "fall", "priority": 1},
        dedup_key=key,
    )


async def enqueue(store: Store, *rows: NewOutboxRow, at: Any = T0) -> list[int]:
    return await store.writer.submit(enqueue_job(rows, at))


async def outbox(store: Store, outbox_id: int) -> dict[str, Any]:
    async with store.reader.execute(
        "SELECT status, attempts, next_attempt_at, sent_at, last_error FROM outbox WHERE id = ?",
        (outbox_id,),
    ) as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return dict(row)


async def case_log(store: Store, case_id: int) -> list[dict[str, Any]]:
    async with store.reader.execute(
        "SELECT actor, type, message, data FROM case_log WHERE case_id = ? ORDER BY id",
        (case_id,),
    ) as cursor:
        rows = await cursor.fetchall()
    return [{**dict(r), "data": json.loads(r["data"])} for r in rows]


def counted(result: str, channel: str = "webhook") -> float:
    value = metrics.REGISTRY.get_sample_value(
        "alarmd_notifications_total", {"channel": channel, "result": result}
    )
    return value or 0.0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serve_receiver() as r:
        yield r


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "x.sqlite")
    yield s
    await s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def case_id(store: Store) -> int:
    return await store.writer.submit(insert_case)


@pytest.fixture
async def webhook(receiver: Receiver, clock: FakeClock) -> AsyncIterator[WebhookChannel]:
    channel = WebhookChannel(
        {"supplier-desk": WebhookEndpoint("supplier-desk", receiver.url(), SECRET)}, clock
    )
    yield channel
    await channel.close()


@pytest.fixture
def dispatcher(store: Store, clock: FakeClock, webhook: WebhookChannel) -> Dispatcher:
    return Dispatcher(store, clock, {"webhook": webhook})


# --------------------------------------------------------------------------- delivery


async def test_delivered_once_signed_and_logged(
    store: Store, clock: FakeClock, dispatcher: Dispatcher, receiver: Receiver, case_id: int
) -> None:
    sent_before = counted("sent")
    [oid] = await enqueue(store, new_row(case_id, payload={"kind": "fall", "priority": 1}))

    assert await dispatcher.run_due() == 1
    assert await dispatcher.run_due() == 0  # nothing twice

    [request] = receiver.requests
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Alarmd-Delivery"] == KEY
    assert request.headers["X-Alarmd-Timestamp"] == str(int(T0.timestamp()))
    assert verify(
        SECRET,
        request.headers["X-Alarmd-Signature"],
        request.headers["X-Alarmd-Timestamp"],
        request.body,
        now=clock.now(),
    )
    assert json.loads(request.body) == {
        "delivery_id": KEY,
        "case_id": case_id,
        "person": "staff:7",
        "kind": "fall",
        "priority": 1,
    }
    assert await outbox(store, oid) == {
        "status": "sent",
        "attempts": 1,
        "next_attempt_at": iso(T0),
        "sent_at": iso(T0),
        "last_error": None,
    }
    [line] = await case_log(store, case_id)
    assert line == {
        "actor": "alarmd",
        "type": "delivered",
        "message": "webhook to staff:7 (supplier-desk) delivered",
        "data": {"outbox_id": oid, "channel": "webhook", "person": "staff:7", "attempts": 1},
    }
    assert counted("sent") == sent_before + 1
    assert metrics.REGISTRY.get_sample_value("alarmd_outbox_pending") == 0


async def test_without_a_case_no_log_line(
    store: Store, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    [oid] = await enqueue(store, new_row(None))
    assert await dispatcher.run_due() == 1
    assert json.loads(receiver.requests[0].body)["case_id"] is None
    assert (await outbox(store, oid))["status"] == "sent"


async def test_500_twice_then_200_backs_off_base_then_double(
    store: Store, clock: FakeClock, dispatcher: Dispatcher, receiver: Receiver, case_id: int
) -> None:
    receiver.script = [Reply(500, "database down"), Reply(502, "bad gateway")]
    [oid] = await enqueue(store, new_row(case_id))

    await dispatcher.run_due()
    first = await outbox(store, oid)
    assert first["status"] == "pending" and first["attempts"] == 1
    assert first["next_attempt_at"] == iso(T0 + timedelta(seconds=5))  # base
    assert first["last_error"] == "HTTP 500: database down"

    clock.advance(4.999)
    assert await dispatcher.run_due() == 0  # not yet due
    clock.advance(0.001)
    await dispatcher.run_due()
    second = await outbox(store, oid)
    assert second["attempts"] == 2
    assert second["next_attempt_at"] == iso(T0 + timedelta(seconds=5 + 10))  # 2 x base

    clock.advance(9.9)
    assert await dispatcher.run_due() == 0
    clock.advance(0.1)
    assert await dispatcher.run_due() == 1
    done = await outbox(store, oid)
    assert done["status"] == "sent" and done["attempts"] == 3 and done["last_error"] is None
    assert done["sent_at"] == iso(T0 + timedelta(seconds=15))
    assert [r.answered for r in receiver.requests] == [500, 502, 200]
    assert {r.headers["X-Alarmd-Delivery"] for r in receiver.requests} == {KEY}
    # retries are not case-log lines; the delivery is, with its attempt
    [line] = await case_log(store, case_id)
    assert line["message"] == "webhook to staff:7 (supplier-desk) delivered on attempt 3"


async def test_429_retry_after_is_honoured(
    store: Store, clock: FakeClock, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.script = [Reply(429, "slow down", headers={"Retry-After": "60"})]
    [oid] = await enqueue(store, new_row(None))
    await dispatcher.run_due()
    assert (await outbox(store, oid))["next_attempt_at"] == iso(T0 + timedelta(seconds=60))
    clock.advance(59)
    assert await dispatcher.run_due() == 0
    clock.advance(1)
    assert await dispatcher.run_due() == 1
    assert (await outbox(store, oid))["status"] == "sent"
    assert len(receiver.requests) == 2


async def test_retry_after_longer_than_the_longest_backoff_is_capped(
    store: Store, clock: FakeClock, webhook: WebhookChannel, receiver: Receiver
) -> None:
    dispatcher = Dispatcher(store, clock, {"webhook": webhook}, backoff_max_s=120)
    receiver.script = [Reply(503, headers={"Retry-After": "86400"})]
    [oid] = await enqueue(store, new_row(None))
    await dispatcher.run_due()
    assert (await outbox(store, oid))["next_attempt_at"] == iso(T0 + timedelta(seconds=120))


async def test_400_fails_at_once_with_a_case_log_line(
    store: Store, clock: FakeClock, dispatcher: Dispatcher, receiver: Receiver, case_id: int
) -> None:
    failed_before = counted("failed")
    receiver.script = [Reply(400, "unknown field 'kind' " + "x" * 1000)]
    [oid] = await enqueue(store, new_row(case_id))
    assert await dispatcher.run_due() == 1
    row = await outbox(store, oid)
    assert row["status"] == "failed" and row["attempts"] == 1
    assert row["last_error"].startswith("HTTP 400: unknown field 'kind' xxx")
    assert len(row["last_error"]) == len("HTTP 400: ") + 200
    [line] = await case_log(store, case_id)
    assert line["type"] == "delivery_failed"
    assert line["message"].startswith(
        "webhook to staff:7 (supplier-desk) gave up (permanent error): "
        "staff:7 was not reached this way (HTTP 400: "
    )
    assert line["data"]["outbox_id"] == oid and line["data"]["error"] == row["last_error"]
    assert counted("failed") == failed_before + 1
    clock.advance(3600)
    assert await dispatcher.run_due() == 0
    assert len(receiver.requests) == 1


async def test_gives_up_after_max_attempts(
    store: Store, clock: FakeClock, webhook: WebhookChannel, receiver: Receiver, case_id: int
) -> None:
    dispatcher = Dispatcher(store, clock, {"webhook": webhook}, max_attempts=3)
    receiver.script = [Reply(500, "down")] * 10
    [oid] = await enqueue(store, new_row(case_id))
    await dispatcher.run_due()  # attempt 1 at T0, retry at +5
    clock.advance(5)
    await dispatcher.run_due()  # attempt 2, retry at +10
    assert (await outbox(store, oid))["status"] == "pending"
    clock.advance(10)
    await dispatcher.run_due()  # attempt 3: the last
    row = await outbox(store, oid)
    assert row["status"] == "failed" and row["attempts"] == 3
    assert row["last_error"] == "HTTP 500: down"
    [line] = await case_log(store, case_id)
    assert line["type"] == "delivery_failed"
    assert line["message"] == (
        "webhook to staff:7 (supplier-desk) gave up after 3 attempts: "
        "staff:7 was not reached this way (HTTP 500: down)"
    )
    clock.advance(3600)
    assert await dispatcher.run_due() == 0
    assert len(receiver.requests) == 3


async def test_channel_this_daemon_lacks_fails_at_once(
    store: Store, dispatcher: Dispatcher, receiver: Receiver, case_id: int
) -> None:
    before = counted("failed", channel="sms")
    [oid] = await enqueue(
        store, new_row(case_id, key="k-sms", channel="sms", address="+4799999999")
    )
    assert await dispatcher.run_due() == 1
    row = await outbox(store, oid)
    assert row["status"] == "failed" and row["attempts"] == 0
    assert row["last_error"] == "no channel 'sms' in this daemon"
    [line] = await case_log(store, case_id)
    assert line["type"] == "delivery_failed"
    assert "staff:7 was not reached" in line["message"]
    assert "no channel 'sms' in this daemon" in line["message"]
    assert receiver.requests == []
    assert counted("failed", channel="sms") == before + 1


async def test_cancelled_before_its_retry_is_never_sent(
    store: Store, clock: FakeClock, dispatcher: Dispatcher, receiver: Receiver, case_id: int
) -> None:
    receiver.script = [Reply(500)]
    [oid] = await enqueue(store, new_row(case_id))
    await dispatcher.run_due()
    # the engine: the case was accepted, pending notifications are cancelled
    await store.writer.submit(
        lambda c: c.execute("UPDATE outbox SET status = 'cancelled' WHERE id = ?", (oid,))
    )
    clock.advance(3600)
    assert await dispatcher.run_due() == 0
    assert len(receiver.requests) == 1
    assert (await outbox(store, oid))["status"] == "cancelled"
    assert await case_log(store, case_id) == []


async def test_same_dedup_key_is_queued_once(store: Store, case_id: int) -> None:
    first = await enqueue(store, new_row(case_id))
    again = await enqueue(store, new_row(case_id, payload={"other": True}))
    both = await store.writer.submit(
        lambda c: insert_outbox_rows(
            c, [new_row(case_id, key="k2"), new_row(case_id, key="k2")], T0
        )
    )
    assert len(first) == 1 and again == [] and len(both) == 1
    async with store.reader.execute("SELECT dedup_key, payload FROM outbox ORDER BY id") as cur:
        rows = [tuple(r) for r in await cur.fetchall()]
    assert rows == [(KEY, '{"kind": "fall", "priority": 1}'), ("k2", rows[1][1])]


async def test_unknown_case_id_is_an_error_not_ignored(store: Store) -> None:
    with pytest.raises(Exception, match="FOREIGN KEY"):
        await enqueue(store, new_row(999))


# --------------------------------------------------------------------------- restart


async def test_restart_delivers_the_pending_retry_once(tmp_path: Path, receiver: Receiver) -> None:
    path = tmp_path / "x.sqlite"
    clock = FakeClock(T0)
    endpoints = {"supplier-desk": WebhookEndpoint("supplier-desk", receiver.url(), SECRET)}

    store = await Store.open(path)
    channel = WebhookChannel(endpoints, clock)
    first = Dispatcher(store, clock, {"webhook": channel})
    [oid] = await enqueue(store, new_row(None))
    receiver.script = [Reply(500), Reply(hang=True)]
    await first.run_due()  # attempt 1: 500, retry at +5
    clock.advance(5)
    receiver.arrived.clear()
    attempt = asyncio.create_task(first.run_due())  # attempt 2: the receiver does not answer
    await receiver.arrived.wait()
    await first.stop(grace_s=0)  # interrupted mid-delivery
    assert await attempt == 0
    row = await outbox(store, oid)
    assert row["status"] == "pending" and row["attempts"] == 1  # the interrupted one not counted
    await channel.close()
    await store.close()

    store = await Store.open(path)  # the daemon starts again
    channel = WebhookChannel(endpoints, clock)
    second = Dispatcher(store, clock, {"webhook": channel})
    assert await second.run_due() == 1
    assert await second.run_due() == 0
    row = await outbox(store, oid)
    assert row["status"] == "sent" and row["attempts"] == 2
    await second.stop()
    await channel.close()
    await store.close()

    assert [r.answered for r in receiver.requests] == [500, None, 200]
    assert [r.headers["X-Alarmd-Delivery"] for r in receiver.delivered()] == [KEY]


# --------------------------------------------------------------------------- channels


class GatedChannel:
    """A fake channel whose deliveries wait for ``gate``; counts how many run at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.running = 0
        self.most = 0
        self.delivered: list[str] = []
        self.first_arrived = asyncio.Event()
        self.done = asyncio.Event()

    async def deliver(self, item: OutboxItem) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        self.first_arrived.set()
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        self.delivered.append(item.dedup_key)
        self.done.set()


class FlakyChannel:
    """Raises what it is given, once per item, then delivers."""

    name = "flaky"

    def __init__(self, error: BaseException) -> None:
        self.error: BaseException | None = error

    async def deliver(self, item: OutboxItem) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


async def test_a_saturated_channel_does_not_hold_up_another(store: Store, clock: FakeClock) -> None:
    slow, fast = GatedChannel("slow"), GatedChannel("fast")
    fast.gate.set()
    dispatcher = Dispatcher(store, clock, {"slow": slow, "fast": fast}, concurrency=2)
    await enqueue(
        store,
        *(new_row(None, key=f"s{i}", channel="slow") for i in range(5)),
        new_row(None, key="f0", channel="fast"),
    )
    pass_ = asyncio.create_task(dispatcher.run_due())
    await slow.first_arrived.wait()
    # the fast one goes through while the slow ones hang
    await asyncio.wait_for(fast.done.wait(), timeout=10)
    assert slow.running == 2
    slow.gate.set()
    assert await pass_ == 6
    assert slow.most == 2
    assert sorted(slow.delivered) == [f"s{i}" for i in range(5)]


async def test_unexpected_exception_is_retried(store: Store, clock: FakeClock) -> None:
    channel = FlakyChannel(RuntimeError("bug in the channel"))
    dispatcher = Dispatcher(store, clock, {"flaky": channel})
    [oid] = await enqueue(store, new_row(None, channel="flaky"))
    await dispatcher.run_due()
    row = await outbox(store, oid)
    assert row["status"] == "pending" and row["last_error"] == "RuntimeError: bug in the channel"
    clock.advance(5)
    await dispatcher.run_due()
    assert (await outbox(store, oid))["status"] == "sent"


async def test_retryable_delivery_error_with_retry_after(store: Store, clock: FakeClock) -> None:
    channel = FlakyChannel(DeliveryError("busy", retryable=True, retry_after=42))
    dispatcher = Dispatcher(store, clock, {"flaky": channel})
    [oid] = await enqueue(store, new_row(None, channel="flaky"))
    await dispatcher.run_due()
    assert (await outbox(store, oid))["next_attempt_at"] == iso(T0 + timedelta(seconds=42))


async def test_backoff_doubles_up_to_the_maximum(store: Store, clock: FakeClock) -> None:
    dispatcher = Dispatcher(store, clock, {}, backoff_base_s=5, backoff_max_s=300)
    assert [dispatcher.backoff(n) for n in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert dispatcher.backoff(10_000) == 300


async def test_a_payload_that_is_not_an_object_fails(
    store: Store, clock: FakeClock, case_id: int
) -> None:
    dispatcher = Dispatcher(store, clock, {"flaky": FlakyChannel(RuntimeError())})
    [oid] = await enqueue(store, new_row(case_id, channel="flaky"))
    await store.writer.submit(
        lambda c: c.execute("UPDATE outbox SET payload = '[1, 2]' WHERE id = ?", (oid,))
    )
    await dispatcher.run_due()
    row = await outbox(store, oid)
    assert row["status"] == "failed" and row["last_error"] == "payload is not a JSON object"


# --------------------------------------------------------------------------- the loop


async def test_the_loop_delivers_after_a_wake(
    store: Store, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    dispatcher.start()
    try:
        receiver.arrived.clear()
        [oid] = await enqueue(store, new_row(None))
        dispatcher.wake()
        await asyncio.wait_for(receiver.arrived.wait(), timeout=10)
        while (await outbox(store, oid))["status"] != "sent":
            await asyncio.sleep(0.001)  # the outcome's commit, not a deadline
    finally:
        await dispatcher.stop()
    assert len(receiver.requests) == 1

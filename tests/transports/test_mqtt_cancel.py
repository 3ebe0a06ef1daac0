"""Both MQTT reconnect loops stop when cancelled, even when the cancel comes out as an error.

aiomqtt can turn a cancel that lands while it disconnects into ``MqttError`` ("Disconnected
during message iteration"). A loop that catches it and reconnects swallows the cancel: the
daemon's shutdown, or a test's teardown, then waits forever (seen as a 180 s teardown
timeout in CI). The session here does exactly what aiomqtt does at that moment.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest

from alarmd.clock import FakeClock
from alarmd.notify.mqtt import StaffMqtt, StaffMqttSettings
from alarmd.transports.mqtt import MqttIngest, MqttIngestSettings


async def _session_that_turns_the_cancel_into_an_mqtt_error(backoff: object) -> None:
    try:
        await asyncio.Event().wait()  # connected, consuming
    except asyncio.CancelledError:
        raise aiomqtt.MqttError("Disconnected during message iteration") from None


@pytest.mark.parametrize("which", ["ingest", "staff"])
async def test_a_cancel_that_comes_out_as_an_mqtt_error_still_stops_the_loop(which: str) -> None:
    nothing: Any = None  # never reached: the session is replaced
    consumer: Any
    if which == "ingest":
        clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
        consumer = MqttIngest(intake=nothing, clock=clock, settings=MqttIngestSettings())
    else:
        consumer = StaffMqtt(engine=nothing, store=nothing, settings=StaffMqttSettings())
    consumer._session = _session_that_turns_the_cancel_into_an_mqtt_error
    task = asyncio.create_task(consumer.run())
    for _ in range(3):
        await asyncio.sleep(0)  # into the session
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)  # only a failure waits this long
    assert done, "the reconnect loop swallowed the cancel"
    assert task.cancelled()

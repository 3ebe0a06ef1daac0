"""MQTT simulators: a device publishing native ``alarmd.event/1`` events, and a staff app
sending an acknowledgement (accept, decline, on site, close). Used by tests, benchmarks and
``alarmctl simulate mqtt``.

Payload builders are pure; the ``publish_*`` functions open one short connection, publish
at QoS 1 and return once the broker has acknowledged (PUBACK), so a caller that returns has
handed the message over for good.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from alarmd.protocols.mqtt_events import SCHEMA_ID, native_topic
from alarmd.transports.mqtt import BrokerSettings, broker_client

__all__ = [
    "ack_topic",
    "native_event_payload",
    "publish",
    "publish_device_event",
    "publish_staff_action",
    "staff_action_payload",
]

ACTIONS = ("accept", "decline", "on_site", "close")


def ack_topic(tenant: str, mqtt_id: str) -> str:
    """Where a staff app publishes its acknowledgements."""
    return f"alarmd/v1/{tenant}/staff/{mqtt_id}/ack"


def native_event_payload(
    kind: str,
    *,
    event_id: str | None = None,
    condition: str | None = None,
    time: datetime | None = None,
    priority: int | str | None = None,
    zone: str | None = None,
    text: str | None = None,
    location: Mapping[str, object] | None = None,
    attributes: Mapping[str, str] | None = None,
) -> bytes:
    """A native event body; ``event_id`` defaults to a fresh UUID (the de-dup id)."""
    body: dict[str, object] = {
        "schema": SCHEMA_ID,
        "id": event_id or uuid.uuid4().hex,
        "kind": kind,
    }
    if condition is not None:
        body["condition"] = condition
    if time is not None:
        body["time"] = time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    optional = {
        "priority": priority,
        "zone": zone,
        "text": text,
        "location": dict(location) if location is not None else None,
        "attributes": dict(attributes) if attributes is not None else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return json.dumps(body, separators=(",", ":")).encode()


def staff_action_payload(
    case_id: int, action: str, *, outcome: str | None = None, note: str | None = None
) -> bytes:
    if action not in ACTIONS:
        raise ValueError(f"action: {action!r} is not one of {', '.join(ACTIONS)}")
    body: dict[str, object] = {"case_id": case_id, "action": action}
    if outcome is not None:
        body["outcome"] = outcome
    if note is not None:
        body["note"] = note
    return json.dumps(body, separators=(",", ":")).encode()


async def publish(
    broker: BrokerSettings, topic: str, payload: bytes, *, client_id: str | None = None
) -> None:
    """Publish one message at QoS 1; returns after the broker's PUBACK."""
    async with broker_client(broker, client_id, persistent=False) as client:
        await client.publish(topic, payload, qos=1)


async def publish_device_event(
    broker: BrokerSettings,
    tenant: str,
    device_id: str,
    kind: str,
    *,
    event_id: str | None = None,
    condition: str | None = None,
    time: datetime | None = None,
    text: str | None = None,
) -> bytes:
    """Publish one native event as ``device_id``; returns the payload sent."""
    payload = native_event_payload(
        kind, event_id=event_id, condition=condition, time=time, text=text
    )
    await publish(broker, native_topic(tenant, device_id), payload)
    return payload


async def publish_staff_action(
    broker: BrokerSettings,
    tenant: str,
    mqtt_id: str,
    case_id: int,
    action: str,
    *,
    outcome: str | None = None,
    note: str | None = None,
) -> None:
    """Publish a staff app's acknowledgement (the broker's ACL may require the staff login)."""
    payload = staff_action_payload(case_id, action, outcome=outcome, note=note)
    await publish(broker, ack_topic(tenant, mqtt_id), payload)

"""The staff app over MQTT: notifications out, acknowledgements (accept, decline, on site,
close) back, on one broker connection.

Topics (``<mqtt id>`` is the staff member's ``channels.mqtt``, also their broker login, so
the broker's pattern ACL ``%u`` confines each app to its own two topics; see
``config/mosquitto/``)::

    alarmd/v1/<tenant>/staff/<mqtt id>/notify   alarmd -> app, QoS 1
    alarmd/v1/<tenant>/staff/<mqtt id>/ack      app -> alarmd, QoS 1

Notification (``type`` "notification"): the outbox payload, the minimum a carer needs to
go (case number, kind, priority, first name, address, postcode, accept-by), plus the
delivery id the app de-duplicates on (delivery is at least once)::

    {"type": "notification", "delivery_id": "case:42:step:0:staff:7:mqtt", "case_id": 42,
     "tenant": "oslo", "kind": "fall", "priority": 3, "step": 0, "accept_by": "...",
     "first_name": "Astrid", "address": "Eksempelveien 1", "postcode": "0150"}

Acknowledgement from the app::

    {"case_id": 42, "action": "accept" | "decline" | "on_site" | "close",
     "outcome": "home_care_dispatched", "note": "..."}      # outcome: close only

and the answer, on the app's notify topic::

    {"type": "result", "case_id": 42, "action": "accept", "ok": true, "state": "accepted"}
    {"type": "result", "case_id": 42, "action": "accept", "ok": false,
     "reason": "not a notified recipient"}

Who acts is the staff member whose ``channels.mqtt`` is the topic's id in the topic's
tenant (``staff:<id>``); the engine decides whether they may (only a notified recipient
accepts). An app we cannot attribute gets no answer (there is no one to answer to) and is
logged and counted.

``deliver`` returns once the broker has the notification (its PUBACK): the broker keeps it
for the app's persistent session until the app fetches it. If alarmd is not connected,
delivery fails as retryable and the outbox tries again.

Acknowledgements are received on a persistent session with manual PUBACK, sent after the
engine has committed the action and the answer is published; a store failure leaves the
message unacknowledged and ends the connection, so the broker delivers it again.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiomqtt
import structlog
from prometheus_client import Counter

from alarmd import metrics
from alarmd.notify.outbox import DeliveryError, OutboxItem
from alarmd.routing.engine import CaseResult
from alarmd.store.db import Store
from alarmd.transports.mqtt import (
    MQTT_CONNECTED,
    MQTT_RECONNECTS,
    Backoff,
    BrokerSettings,
    ack,
    broker_client,
    reraise_if_cancelled,
)

__all__ = ["ACTIONS", "CaseActions", "StaffMqtt", "StaffMqttSettings", "parse_action"]

log = structlog.get_logger(__name__)

ACTIONS: Final = ("accept", "decline", "on_site", "close")
MAX_ACK_BYTES: Final = 4096
MAX_NOTE_CHARS: Final = 1000
_LEVEL_RE: Final = re.compile(r"[A-Za-z0-9._:@-]{1,64}")  # no / + # : one topic level

STAFF_ACTIONS = Counter(
    "alarmd_mqtt_staff_actions_total",
    "Acknowledgements from staff apps over MQTT, by action and result"
    " (done, rejected, invalid, unknown_staff).",
    ["action", "result"],
    registry=metrics.REGISTRY,
)


class CaseActions(Protocol):
    """What the staff channel needs of the routing engine."""

    async def accept(self, case_id: int, who: str, *, is_operator: bool) -> CaseResult: ...
    async def decline(self, case_id: int, who: str) -> CaseResult: ...
    async def on_site(self, case_id: int, who: str) -> CaseResult: ...
    async def close(self, case_id: int, who: str, outcome: str, note: str = "") -> CaseResult: ...


@dataclass(frozen=True, slots=True)
class StaffMqttSettings:
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    client_id: str = "alarmd-staff"
    prefix: str = "alarmd/v1"


@dataclass(frozen=True, slots=True)
class StaffAction:
    case_id: int
    action: str
    outcome: str | None = None
    note: str = ""


def notify_topic(tenant: str, mqtt_id: str, prefix: str = "alarmd/v1") -> str:
    return f"{prefix}/{tenant}/staff/{mqtt_id}/notify"


def parse_ack_topic(topic: str, prefix: str = "alarmd/v1") -> tuple[str, str] | None:
    """``(tenant, mqtt id)`` from ``<prefix>/<tenant>/staff/<mqtt id>/ack``, else None."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head) :].split("/")
    if len(levels) != 4 or levels[1] != "staff" or levels[3] != "ack":
        return None
    tenant, mqtt_id = levels[0], levels[2]
    if _LEVEL_RE.fullmatch(tenant) is None or _LEVEL_RE.fullmatch(mqtt_id) is None:
        return None
    return tenant, mqtt_id


def parse_action(payload: bytes) -> StaffAction | str:
    """The app's acknowledgement, or why it is not one (a short text for the answer)."""
    if len(payload) > MAX_ACK_BYTES:
        return f"payload: more than {MAX_ACK_BYTES} bytes"
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "payload: not UTF-8 JSON"
    if not isinstance(doc, dict):
        return "payload: not a JSON object"
    unknown = sorted(set(doc) - {"case_id", "action", "outcome", "note"})
    if unknown:
        return f"{unknown[0]}: unknown field"
    case_id = doc.get("case_id")
    if not isinstance(case_id, int) or isinstance(case_id, bool) or case_id < 1:
        return "case_id: must be a positive integer"
    action = doc.get("action")
    if action not in ACTIONS:
        return f"action: must be one of {', '.join(ACTIONS)}"
    outcome = doc.get("outcome")
    if action == "close":
        if not isinstance(outcome, str) or not outcome:
            return "outcome: required to close"
    elif outcome is not None:
        return "outcome: only with close"
    note = doc.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        return f"note: must be a string of at most {MAX_NOTE_CHARS} characters"
    return StaffAction(case_id, str(action), outcome, note)


class _StoreFailed(Exception):
    """The engine could not commit an action: end the session, the broker re-sends it."""


class StaffMqtt:
    """The ``mqtt`` notification channel and the consumer of staff acknowledgements."""

    name = "mqtt"

    def __init__(self, *, engine: CaseActions, store: Store, settings: StaffMqttSettings) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        self.connected = asyncio.Event()
        self.sessions = 0
        self._client: aiomqtt.Client | None = None
        self._lost: asyncio.Future[None] | None = None  # done when this session ends
        self._tls: ssl.SSLContext | None = (
            settings.broker.tls.context() if settings.broker.tls is not None else None
        )
        self._gauge = MQTT_CONNECTED.labels("staff")

    # --- the channel --------------------------------------------------------------------

    async def deliver(self, item: OutboxItem) -> None:
        tenant = item.payload.get("tenant")
        if not isinstance(tenant, str) or _LEVEL_RE.fullmatch(tenant) is None:
            raise DeliveryError(
                f"no usable tenant in the notification: {tenant!r}", retryable=False
            )
        if _LEVEL_RE.fullmatch(item.address) is None:
            raise DeliveryError(
                f"mqtt id {item.address!r} is not one topic level [A-Za-z0-9._:@-]",
                retryable=False,
            )
        client, lost = self._client, self._lost
        if client is None or lost is None or not self.connected.is_set():
            raise DeliveryError("not connected to the MQTT broker", retryable=True)
        body: dict[str, Any] = {"type": "notification", "delivery_id": item.dedup_key}
        body.update({k: v for k, v in item.payload.items() if k not in body})
        body.setdefault("case_id", item.case_id)
        topic = notify_topic(tenant, item.address, self.settings.prefix)
        # aiomqtt waits out its whole timeout for a PUBACK on a dead connection: stop at
        # the loss instead, and let the outbox try again on the next connection
        publish = asyncio.ensure_future(client.publish(topic, _json(body), qos=1))
        waiters: set[asyncio.Future[Any]] = {publish, lost}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not publish.done():
            publish.cancel()
            raise DeliveryError(f"publish to {topic}: connection lost", retryable=True)
        try:
            publish.result()
        except aiomqtt.MqttError as exc:
            raise DeliveryError(f"publish to {topic}: {exc}", retryable=True) from None

    # --- the acknowledgements -----------------------------------------------------------

    async def run(self) -> None:
        """Connect, take acknowledgements, reconnect with backoff; returns only by cancel."""
        broker = self.settings.broker
        backoff = Backoff(broker.reconnect_min, broker.reconnect_max)
        while True:
            try:
                await self._session(backoff)
            except (aiomqtt.MqttError, _StoreFailed, OSError) as exc:
                reraise_if_cancelled(exc)
                MQTT_RECONNECTS.labels("staff").inc()
                log.warning("mqtt_staff_disconnected", error=str(exc))
            except Exception as exc:  # a bug must not stop the consumer for good: reconnect
                reraise_if_cancelled(exc)
                MQTT_RECONNECTS.labels("staff").inc()
                log.exception("mqtt_staff_failed")
            finally:
                self._client = None
                if self._lost is not None and not self._lost.done():
                    self._lost.set_result(None)
                self.connected.clear()
                self._gauge.set(0)
            await asyncio.sleep(backoff.next_delay())

    async def _session(self, backoff: Backoff) -> None:
        client = broker_client(
            self.settings.broker,
            self.settings.client_id,
            persistent=True,
            manual_ack=True,
            tls_context=self._tls,
        )
        async with client:
            await client.subscribe(f"{self.settings.prefix}/+/staff/+/ack", qos=1)
            backoff.reset()
            self._lost = asyncio.get_running_loop().create_future()
            self._client = client
            self.sessions += 1
            self.connected.set()
            self._gauge.set(1)
            async for message in client.messages:
                await self._handle(client, message)
                ack(client, message)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        where = parse_ack_topic(topic, self.settings.prefix)
        if where is None:
            STAFF_ACTIONS.labels("-", "invalid").inc()
            log.warning("mqtt_staff_ack_topic_refused", topic=topic)
            return
        tenant, mqtt_id = where
        staff_id = await self._staff_id(tenant, mqtt_id)
        if staff_id is None:
            STAFF_ACTIONS.labels("-", "unknown_staff").inc()
            log.warning("mqtt_staff_unknown", topic=topic, tenant=tenant, mqtt_id=mqtt_id)
            return
        payload = message.payload if isinstance(message.payload, bytes) else b""
        parsed = parse_action(payload)
        reply_topic = notify_topic(tenant, mqtt_id, self.settings.prefix)
        if isinstance(parsed, str):
            STAFF_ACTIONS.labels("-", "invalid").inc()
            log.warning("mqtt_staff_ack_invalid", topic=topic, reason=parsed)
            await client.publish(
                reply_topic, _json({"type": "result", "ok": False, "reason": parsed}), qos=1
            )
            return
        who = f"staff:{staff_id}"
        try:
            result = await self._act(parsed, who)
        except ValueError as exc:  # an unknown outcome
            result = CaseResult(case=None, rejected=str(exc))
        except Exception as exc:
            log.exception("mqtt_staff_action_failed", topic=topic, case_id=parsed.case_id)
            raise _StoreFailed(repr(exc)) from exc
        answer: dict[str, Any] = {
            "type": "result",
            "case_id": parsed.case_id,
            "action": parsed.action,
            "ok": result.rejected is None,
        }
        if result.rejected is not None:
            answer["reason"] = result.rejected
        if result.case is not None:
            answer["state"] = result.case.state
        STAFF_ACTIONS.labels(parsed.action, "done" if result.rejected is None else "rejected").inc()
        log.info(
            "mqtt_staff_action",
            case_id=parsed.case_id,
            action=parsed.action,
            who=who,
            rejected=result.rejected,
        )
        await client.publish(reply_topic, _json(answer), qos=1)

    async def _act(self, action: StaffAction, who: str) -> CaseResult:
        if action.action == "accept":
            return await self.engine.accept(action.case_id, who, is_operator=False)
        if action.action == "decline":
            return await self.engine.decline(action.case_id, who)
        if action.action == "on_site":
            return await self.engine.on_site(action.case_id, who)
        assert action.outcome is not None
        return await self.engine.close(action.case_id, who, action.outcome, action.note)

    async def _staff_id(self, tenant: str, mqtt_id: str) -> int | None:
        async with self.store.reader.execute(
            "SELECT id FROM staff WHERE tenant = ? AND json_extract(channels, '$.mqtt') = ?",
            (tenant, mqtt_id),
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else int(row[0])


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

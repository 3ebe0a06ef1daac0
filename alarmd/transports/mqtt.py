"""MQTT device-event ingest: the only place device MQTT messages meet the broker connection.

Theory of operation
-------------------
One aiomqtt client with a **fixed client id and a persistent session** (MQTT 3.1.1,
``clean_session=False``) subscribes at QoS 1 to the native topic filter
(``alarmd/v1/+/device/+/event``) and to every configured vendor mapping's filter. Whatever
is published while alarmd is away is kept by the broker for that session and delivered when
it returns (PROTOCOLS.md 3).

**PUBACK after commit** (DESIGN.md invariant 1): paho's ``manual_ack`` is switched on, so
the library never acknowledges by itself; each message is parsed by the pure
``alarmd.protocols.mqtt_events`` and submitted to intake, and its PUBACK is written only
when the commit's future is done. Messages are pipelined (the writer's group commit sees
many at once) but acknowledged strictly in the order they arrived, as MQTT 3.1.1 4.6
requires: a done future waits for the ones before it.

If the store cannot commit, nothing more is acknowledged on that connection and the client
disconnects: the broker keeps the unacknowledged messages in the session and sends them
again after the reconnect, where intake's de-duplication (``Event.dedup_key``) makes the
second copy harmless. A redelivery of a message that *was* committed (the connection died
between commit and PUBACK) is recognised the same way and acknowledged.

A **malformed payload** (or a topic no mapping takes) is counted by reason, logged with its
topic, and published with the reason to the dead-letter topic
(``mqtt_events.dead_letter_payload``); it is acknowledged once that copy is accepted by the
broker, so it is never lost and never blocks the session. Nothing on the wire stops the
consumer; only a broken connection or store does, and the run loop reconnects with
exponential backoff (with jitter, capped).

Broker options shared with the staff channel and the simulator (``BrokerSettings``,
``broker_client``) live here too: username/password, TLS, TCP_NODELAY on the socket (a
QoS 1 publish and its PUBACK are small segments: without it Nagle holds each for up to
40 ms behind the previous unacknowledged one).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import aiomqtt
import structlog
from prometheus_client import Counter, Gauge

from alarmd import metrics
from alarmd.clock import Clock
from alarmd.intake import Intake
from alarmd.protocols.mqtt_events import (
    MAX_PAYLOAD_BYTES,
    MqttError,
    MqttResult,
    VendorMapping,
    dead_letter_payload,
    match_topic,
    parse_mapped,
    parse_native,
    parse_native_topic,
)

__all__ = [
    "NATIVE_FILTER",
    "BrokerSettings",
    "MqttIngest",
    "MqttIngestSettings",
    "TlsSettings",
    "broker_client",
    "classify",
]

log = structlog.get_logger(__name__)

NATIVE_FILTER = "alarmd/v1/+/device/+/event"

# --- metrics (defined here, on the shared registry; labels are small fixed sets) ----------
MQTT_MESSAGES = Counter(
    "alarmd_mqtt_messages_total",
    "MQTT device messages handled, by result (stored, duplicate, dead_letter).",
    ["result"],
    registry=metrics.REGISTRY,
)
MQTT_MALFORMED = Counter(
    "alarmd_mqtt_malformed_total",
    "MQTT device messages refused and copied to the dead-letter topic, by reason.",
    ["reason"],
    registry=metrics.REGISTRY,
)
MQTT_CONNECTED = Gauge(
    "alarmd_mqtt_connected",
    "1 while the MQTT client (ingest, staff) is connected and subscribed.",
    ["client"],
    registry=metrics.REGISTRY,
)
MQTT_RECONNECTS = Counter(
    "alarmd_mqtt_connection_failures_total",
    "MQTT connections that failed or were lost (each is followed by a reconnect).",
    ["client"],
    registry=metrics.REGISTRY,
)
_ACK_LATENCY = metrics.ACK_LATENCY_SECONDS.labels("mqtt")
_UNACKED = metrics.UNACKED_STORE_FAILURE.labels("mqtt")
_STORED = MQTT_MESSAGES.labels("stored")
_DUPLICATE = MQTT_MESSAGES.labels("duplicate")
_DEAD = MQTT_MESSAGES.labels("dead_letter")

_NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


# --- broker connection ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS to the broker: a CA to verify it, optionally a client certificate."""

    ca_file: str | None = None  # None: the system's CAs
    cert_file: str | None = None
    key_file: str | None = None
    verify_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.check_hostname = self.verify_hostname
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None
    keepalive: int = 30
    timeout: float = 10.0  # for subscribe/publish round trips
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0


def broker_client(
    settings: BrokerSettings,
    client_id: str | None,
    *,
    persistent: bool,
    manual_ack: bool = False,
    tls_context: ssl.SSLContext | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client for ``settings``: TCP_NODELAY, optional auth and TLS.

    ``persistent``: a session the broker keeps across connections (needs a fixed
    ``client_id``). ``manual_ack``: the caller acknowledges each QoS 1 message with
    ``ack(client, message)``; the library never does.
    """
    if tls_context is None and settings.tls is not None:
        tls_context = settings.tls.context()
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        identifier=client_id,
        username=settings.username,
        password=settings.password,
        clean_session=not persistent,
        keepalive=settings.keepalive,
        timeout=settings.timeout,
        tls_context=tls_context,
        socket_options=_NODELAY,
    )
    if manual_ack:
        # aiomqtt 2.x does not expose paho's manual_ack; the paho client is its _client
        client._client.manual_ack_set(True)
    return client


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> bool:
    """Send the PUBACK for ``message`` (manual-ack clients); False if the client is gone."""
    if message.qos == 0:
        return True
    rc = client._client.ack(message.mid, message.qos)
    return bool(rc == 0)


class Backoff:
    """Exponential reconnect delay with full jitter, reset after a good connection."""

    def __init__(self, low: float, high: float) -> None:
        self._low, self._high = low, high
        self._next = low

    def reset(self) -> None:
        self._next = self._low

    def next_delay(self) -> float:
        delay = random.uniform(self._low, self._next)
        self._next = min(self._high, self._next * 2)
        return delay


def reraise_if_cancelled(exc: BaseException) -> None:
    """Raise ``CancelledError`` if the running task is being cancelled.

    A cancel that lands while aiomqtt disconnects can come out of ``async with client`` as an
    ``MqttError`` ("Disconnected during message iteration"): a reconnect loop that catches it
    would swallow the cancel and reconnect forever, and shutdown (or a test's teardown) would
    hang. Both reconnect loops call this first in their ``except``.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


# --- ingest --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MqttIngestSettings:
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    client_id: str = "alarmd-ingest"
    native_filter: str = NATIVE_FILTER
    mappings: tuple[VendorMapping, ...] = ()
    dead_letter_topic: str = "alarmd/v1/deadletter"
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_in_flight: int = 200  # messages submitted but not yet acknowledged

    def filters(self) -> list[str]:
        seen: dict[str, None] = {self.native_filter: None}
        for mapping in self.mappings:
            seen.setdefault(mapping.subscription)
        return list(seen)

    def check(self) -> None:
        """Refuse a dead-letter topic that we would read back (a loop)."""
        for pattern in [self.native_filter, *(m.topic for m in self.mappings)]:
            if match_topic(pattern, self.dead_letter_topic) is not None:
                raise ValueError(
                    f"dead_letter_topic: {self.dead_letter_topic} matches the subscription"
                    f" {pattern}; dead letters would be read back"
                )


def classify(
    topic: str,
    payload: bytes,
    mappings: Sequence[VendorMapping],
    *,
    now: datetime,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> MqttResult:
    """Native topic layout first, then the first mapping whose pattern matches the topic."""
    if parse_native_topic(topic) is not None:
        return parse_native(topic, payload, now=now, max_bytes=max_bytes)
    for mapping in mappings:
        if match_topic(mapping.topic, topic) is not None:
            return parse_mapped(mapping, topic, payload, now=now, max_bytes=max_bytes)
    return MqttResult(error=MqttError("topic", None, f"topic: no mapping takes {topic}"))


class _ConnectionLost(Exception):
    """The session must end (store failure, dead-letter publish failure): reconnect."""


@dataclass(slots=True)
class _Pending:
    message: aiomqtt.Message
    done: asyncio.Future[Any]
    started: float


class MqttIngest:
    """Consumes device events from the broker into intake; ``run()`` until cancelled."""

    def __init__(self, *, intake: Intake, clock: Clock, settings: MqttIngestSettings) -> None:
        settings.check()
        self.intake = intake
        self.clock = clock
        self.settings = settings
        self.connected = asyncio.Event()  # set while subscribed (tests and health)
        self.sessions = 0  # connections that reached "subscribed"
        self._tls = settings.broker.tls.context() if settings.broker.tls is not None else None
        self._gauge = MQTT_CONNECTED.labels("ingest")

    async def run(self) -> None:
        """Connect, consume, and on any loss reconnect with backoff; returns only by cancel."""
        backoff = Backoff(self.settings.broker.reconnect_min, self.settings.broker.reconnect_max)
        while True:
            try:
                await self._session(backoff)
            except (aiomqtt.MqttError, _ConnectionLost, OSError) as exc:
                reraise_if_cancelled(exc)
                MQTT_RECONNECTS.labels("ingest").inc()
                log.warning(
                    "mqtt_ingest_disconnected",
                    error=str(exc),
                    host=self.settings.broker.host,
                    port=self.settings.broker.port,
                )
            except Exception as exc:  # a bug must not stop the consumer for good: reconnect
                reraise_if_cancelled(exc)
                MQTT_RECONNECTS.labels("ingest").inc()
                log.exception("mqtt_ingest_failed")
            finally:
                self.connected.clear()
                self._gauge.set(0)
            await asyncio.sleep(backoff.next_delay())

    async def _session(self, backoff: Backoff) -> None:
        settings = self.settings
        client = broker_client(
            settings.broker,
            settings.client_id,
            persistent=True,
            manual_ack=True,
            tls_context=self._tls,
        )
        pending: deque[_Pending] = deque()
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with client:
            await client.subscribe([(f, 1) for f in settings.filters()])
            backoff.reset()
            self.sessions += 1
            self.connected.set()
            self._gauge.set(1)
            log.info("mqtt_ingest_subscribed", filters=settings.filters())
            consumer = asyncio.ensure_future(self._consume(client, pending, lost))
            try:
                # ends when the connection drops (consumer raises) or an ack must not be sent
                waiters: set[asyncio.Future[Any]] = {consumer, lost}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if lost.done():
                    lost.result()
                consumer.result()
            finally:
                # nothing further is acknowledged on this connection: what was not yet
                # acknowledged comes again on the next session and is de-duplicated
                if not lost.done():
                    lost.set_exception(_ConnectionLost("session ended"))
                lost.exception()  # retrieved: no "never retrieved" warning
                if not consumer.done():
                    consumer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await consumer
                for item in pending:
                    if isinstance(item.done, asyncio.Task):  # a dead-letter publish, not a commit
                        item.done.cancel()
                pending.clear()

    async def _consume(
        self, client: aiomqtt.Client, pending: deque[_Pending], lost: asyncio.Future[None]
    ) -> None:
        """Hand every message to intake (or the dead-letter topic) as it comes; ``_flush``
        acknowledges. Waits while ``max_in_flight`` messages are unacknowledged."""
        limit = self.settings.max_in_flight
        flush = partial(self._flush, client, pending, lost)
        async for message in client.messages:
            item = _Pending(message, self._handle(client, message), time.perf_counter())
            pending.append(item)
            item.done.add_done_callback(flush)
            while len(pending) >= limit and not lost.done():
                head: set[asyncio.Future[Any]] = {pending[0].done, lost}
                await asyncio.wait(head, return_when=asyncio.FIRST_COMPLETED)

    def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> asyncio.Future[Any]:
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):  # aiomqtt gives bytes from the wire
            payload = str(payload).encode()
        result = classify(
            topic,
            bytes(payload),
            self.settings.mappings,
            now=self.clock.now(),
            max_bytes=self.settings.max_payload_bytes,
        )
        if result.error is None:
            try:
                return self.intake.submit_future(result.events)
            except Exception as exc:  # e.g. the store is closed: not acknowledged
                failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                return failed
        error = result.error
        MQTT_MALFORMED.labels(error.reason).inc()
        log.warning(
            "mqtt_message_refused",
            topic=topic,
            reason=error.reason,
            field=error.field,
            message=error.message,
            payload_hex=bytes(payload[:256]).hex(),
        )
        body = dead_letter_payload(topic, bytes(payload), error)
        return asyncio.ensure_future(client.publish(self.settings.dead_letter_topic, body, qos=1))

    def _flush(
        self,
        client: aiomqtt.Client,
        pending: deque[_Pending],
        lost: asyncio.Future[None],
        _done: asyncio.Future[Any],
    ) -> None:
        """Acknowledge, in arrival order, every message whose work is done."""
        while pending and pending[0].done.done() and not lost.done():
            item = pending.popleft()
            fut = item.done
            if fut.cancelled() or fut.exception() is not None:
                exc = None if fut.cancelled() else fut.exception()
                stage = "dead_letter" if isinstance(fut, asyncio.Task) else "commit"
                if stage == "commit":
                    _UNACKED.inc()
                log.error(
                    "mqtt_message_not_acknowledged",
                    topic=item.message.topic.value,
                    failed=stage,
                    error=repr(exc),
                )
                lost.set_exception(_ConnectionLost(f"{stage} failed: {exc!r}"))
                return
            result = fut.result()
            if result is None:  # the dead-letter publish returned
                _DEAD.inc()
            else:
                duplicate = getattr(result, "duplicate", ())
                (_DUPLICATE if duplicate and all(duplicate) else _STORED).inc()
            ack(client, item.message)
            _ACK_LATENCY.observe(time.perf_counter() - item.started)

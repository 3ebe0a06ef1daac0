"""The webhook channel: one signed HTTP POST per notification, for suppliers' and partners' systems.

The request
-----------
::

    POST <endpoint url>
    Content-Type: application/json
    X-Alarmd-Delivery: <delivery id>     the outbox dedup_key: the same on every retry
    X-Alarmd-Timestamp: <unix seconds>   when this attempt was signed (each retry anew)
    X-Alarmd-Signature: sha256=<hex>     HMAC-SHA256(secret, b"<timestamp>." + body)

    {"delivery_id": "case:42:step:0:staff:7:webhook", "case_id": 42, "person": "staff:7",
     ...the notification's payload (kind, priority, summary: whatever the engine put in)}

The body is a UTF-8 JSON object: the three envelope fields first (``case_id`` is ``null``
for a notification that belongs to no case), then the payload's own keys; a payload key
named like an envelope field is left out, so the envelope cannot be overridden.

Answers
-------
* 2xx: delivered.
* 408, 429, 5xx, a timeout (``timeout_s`` for the whole exchange), a connection error:
  tried again with backoff; on 429 and 503 a ``Retry-After`` (seconds or an HTTP date) is
  honoured.
* 3xx: a permanent error naming the ``Location``; redirects are never followed. The body is
  signed for the configured endpoint and carries personal data: following a redirect would
  replay a valid, signed alarm to a host nobody configured (or downgrade it to plain
  http), just because the endpoint (or whoever controls it for a moment) said so.
* Any other 4xx: a permanent error, with the status and at most 200 characters of the
  answer's body; it is not retried, and the case log says that person was not reached.

Verifying a delivery (the receiver's side)
------------------------------------------
As with Stripe's and GitHub's webhooks:

1. take the raw body bytes exactly as received, before any JSON parsing;
2. reject the request if ``X-Alarmd-Timestamp`` is more than five minutes from your clock
   (a captured request cannot be replayed later: the timestamp is inside the signature);
3. compute HMAC-SHA256 with the shared secret over ``timestamp + "." + body`` and compare
   its hex digest with the ``X-Alarmd-Signature`` value after ``sha256=``, in constant time;
4. de-duplicate on ``delivery_id``: delivery is at least once, so the same notification can
   arrive again (after a timeout or a restart); answer a repeat with 2xx too.

::

    import hashlib, hmac, time

    def verify(secret: bytes, headers, body: bytes, tolerance_s: int = 300) -> bool:
        timestamp = headers["X-Alarmd-Timestamp"]
        signature = headers["X-Alarmd-Signature"]
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
            return False
        mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest("sha256=" + mac.hexdigest(), signature)

``sign`` and ``verify`` below are the same, for alarmd's own tests and Python receivers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from alarmd.clock import Clock
from alarmd.notify.outbox import DeliveryError, OutboxItem

__all__ = ["WebhookChannel", "WebhookEndpoint", "sign", "verify", "webhook_body"]

_BODY_CHARS = 200  # of an error answer's body, in the error text
_ENVELOPE = ("delivery_id", "case_id", "person")


@dataclass(frozen=True)
class WebhookEndpoint:
    """A receiver: its name (the outbox row's ``address``), URL and shared secret."""

    name: str
    url: str
    secret: bytes = field(repr=False)
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        # the URL itself is not repeated in the message: it may carry a token
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook endpoint {self.name!r}: the url must be http(s)://host/...")
        if not self.secret:
            raise ValueError(f"webhook endpoint {self.name!r}: the secret must not be empty")
        if self.timeout_s <= 0:
            raise ValueError(f"webhook endpoint {self.name!r}: timeout_s must be positive")


def webhook_body(item: OutboxItem) -> bytes:
    """The JSON body POSTed for ``item`` (see the module docstring)."""
    body: dict[str, Any] = {
        "delivery_id": item.dedup_key,
        "case_id": item.case_id,
        "person": item.person,
    }
    body.update((key, value) for key, value in item.payload.items() if key not in _ENVELOPE)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(secret: bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Alarmd-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``timestamp.body``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: bytes,
    header: str,
    timestamp: int | str,
    body: bytes,
    now: float | datetime,
    tolerance_s: float = 300,
) -> bool:
    """True if ``header`` signs ``body`` at ``timestamp`` and the timestamp is fresh.

    ``timestamp`` is the ``X-Alarmd-Timestamp`` value as received, ``now`` the receiver's
    time (unix seconds or an aware datetime). Compared in constant time.
    """
    text = str(timestamp).strip()
    if not (text.isascii() and text.isdigit()):
        return False
    now_s = now.timestamp() if isinstance(now, datetime) else float(now)
    if abs(now_s - int(text)) > tolerance_s:
        return False
    expected = sign(secret, text, body).encode("ascii")
    return hmac.compare_digest(expected, header.strip().encode("utf-8", "replace"))


class WebhookChannel:
    """Delivers outbox items to named webhook endpoints over one HTTP client session."""

    name = "webhook"

    def __init__(self, endpoints: Mapping[str, WebhookEndpoint], clock: Clock) -> None:
        self._endpoints = dict(endpoints)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    def set_endpoints(self, endpoints: Mapping[str, WebhookEndpoint]) -> None:
        """Swap the endpoints (configuration reload); deliveries under way keep theirs."""
        self._endpoints = dict(endpoints)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # created on first use, inside the running loop
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": "alarmd-webhook"},
                # a receiver's cookies must not ride along on the next delivery
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def deliver(self, item: OutboxItem) -> None:
        """POST ``item`` to the endpoint named by ``item.address``; raise ``DeliveryError``."""
        endpoint = self._endpoints.get(item.address)
        if endpoint is None:
            raise DeliveryError(f"no webhook endpoint named {item.address!r}", retryable=False)
        body = webhook_body(item)
        now = self._clock.now()
        timestamp = str(int(now.timestamp()))
        headers = {
            "Content-Type": "application/json",
            "X-Alarmd-Delivery": item.dedup_key,
            "X-Alarmd-Timestamp": timestamp,
            "X-Alarmd-Signature": sign(endpoint.secret, timestamp, body),
        }
        try:
            async with self._client().post(
                endpoint.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout_s),
            ) as response:
                if 200 <= response.status < 300:
                    return
                failure = await _failure(response, now)
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            raise DeliveryError(
                f"no answer within {endpoint.timeout_s:g} s", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from None
        raise failure


async def _failure(response: aiohttp.ClientResponse, now: datetime) -> DeliveryError:
    """The ``DeliveryError`` for a non-2xx answer."""
    status = response.status
    if 300 <= status < 400:
        location = response.headers.get("Location", "")[:_BODY_CHARS]
        return DeliveryError(
            f"HTTP {status}: redirect to {location!r} not followed", retryable=False
        )
    raw = await response.content.read(4 * _BODY_CHARS)  # at most 4 bytes a character
    text = " ".join(raw.decode("utf-8", "replace").split())[:_BODY_CHARS]
    message = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    retryable = status in (408, 429) or 500 <= status <= 599
    retry_after = (
        _retry_after(response.headers.get("Retry-After"), now) if status in (429, 503) else None
    )
    return DeliveryError(message, retryable=retryable, retry_after=retry_after)


def _retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` in seconds from ``now``: delta-seconds or an HTTP date; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)

"""The webhook channel against a real HTTP receiver on loopback; signing and verification."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from notify_support import SECRET, T0, Receiver, Reply, serve_receiver

from alarmd.clock import FakeClock
from alarmd.notify.outbox import DeliveryError, OutboxItem
from alarmd.notify.webhook import WebhookChannel, WebhookEndpoint, sign, verify, webhook_body

NOW = T0.timestamp()


def item(address: str = "desk", payload: dict[str, Any] | None = None) -> OutboxItem:
    return OutboxItem(
        id=1,
        case_id=42,
        channel="webhook",
        person="staff:7",
        address=address,
        payload=payload if payload is not None else {"kind": "fall", "text": "Fall på badet"},
        dedup_key="case:42:step:0:staff:7:webhook",
        attempts=0,
        created_at=T0,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serve_receiver() as r:
        yield r


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def channel(receiver: Receiver, clock: FakeClock) -> AsyncIterator[WebhookChannel]:
    ch = WebhookChannel(
        {
            "desk": WebhookEndpoint("desk", receiver.url(), SECRET),
            "impatient": WebhookEndpoint("impatient", receiver.url("/slow"), SECRET, 0.2),
        },
        clock,
    )
    yield ch
    await ch.close()


async def failure(channel: WebhookChannel, it: OutboxItem | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await channel.deliver(it or item())
    return caught.value


# --------------------------------------------------------------------------- signing


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"delivery_id":"k"}'
    expected = hmac.new(SECRET, b"1768478400." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1768478400, body) == "sha256=" + expected
    assert sign(SECRET, "1768478400", body) == "sha256=" + expected


def test_verify_accepts_a_fresh_signature() -> None:
    body = b'{"a":1}'
    header = sign(SECRET, int(NOW), body)
    assert verify(SECRET, header, str(int(NOW)), body, now=NOW)
    assert verify(SECRET, header, int(NOW), body, now=T0)  # an aware datetime works too
    assert verify(SECRET, header, int(NOW), body, now=NOW + 300)  # at the tolerance


def test_verify_rejects_tampered_stale_or_foreign() -> None:
    body = b'{"case_id":42,"kind":"fall"}'
    ts = int(NOW)
    header = sign(SECRET, ts, body)
    assert not verify(SECRET, header, ts, b'{"case_id":43,"kind":"fall"}', now=NOW)  # tampered
    assert not verify(SECRET, header, ts, body, now=NOW + 301)  # too old: a replay
    assert not verify(SECRET, header, ts, body, now=NOW - 301)  # from the future
    assert not verify(SECRET, header, ts + 1, body, now=NOW)  # timestamp changed
    assert not verify(b"another secret", header, ts, body, now=NOW)
    # an old request re-sent with a fresh timestamp header does not verify
    assert not verify(SECRET, header, ts + 3600, body, now=NOW + 3600)


@pytest.mark.parametrize(
    ("header", "timestamp"),
    [
        ("", "1768478400"),
        ("sha1=abc", "1768478400"),
        ("sha256=" + "0" * 64, "1768478400"),
        ("sha256=ÿ", "1768478400"),  # not ASCII: rejected, not an exception
        (None, "-5"),
        (None, "1768478400.0"),
        (None, "１７６８４７８４００"),  # full-width digits
    ],
)
def test_verify_rejects_malformed_input(header: str | None, timestamp: str) -> None:
    body = b"{}"
    signature = sign(SECRET, timestamp, body) if header is None else header
    assert not verify(SECRET, signature, timestamp, body, now=NOW)


def test_endpoint_repr_hides_the_secret() -> None:
    endpoint = WebhookEndpoint("desk", "https://supplier.example/hook", b"topsecret")
    assert "topsecret" not in repr(endpoint) and "topsecret" not in str(endpoint)
    assert "desk" in repr(endpoint)


@pytest.mark.parametrize(
    ("url", "secret", "timeout"),
    [
        ("ftp://supplier.example/", b"s", 10.0),
        ("https:///nohost", b"s", 10.0),
        ("https://supplier.example/", b"", 10.0),
        ("https://supplier.example/", b"s", 0.0),
    ],
)
def test_endpoint_is_validated(url: str, secret: bytes, timeout: float) -> None:
    with pytest.raises(ValueError, match="webhook endpoint 'desk'"):
        WebhookEndpoint("desk", url, secret, timeout)


def test_body_envelope_cannot_be_overridden_by_the_payload() -> None:
    body = json.loads(webhook_body(item(payload={"person": "someone else", "kind": "fall"})))
    assert body == {
        "delivery_id": "case:42:step:0:staff:7:webhook",
        "case_id": 42,
        "person": "staff:7",
        "kind": "fall",
    }


# --------------------------------------------------------------------------- delivering


async def test_post_is_signed_with_the_clocks_time(
    channel: WebhookChannel, receiver: Receiver, clock: FakeClock
) -> None:
    clock.advance(90)
    await channel.deliver(item())
    [request] = receiver.requests
    ts = request.headers["X-Alarmd-Timestamp"]
    assert ts == str(int(NOW) + 90)  # the clock's time, not the wall clock's
    assert request.headers["X-Alarmd-Delivery"] == "case:42:step:0:staff:7:webhook"
    assert request.headers["Content-Type"] == "application/json"
    assert verify(SECRET, request.headers["X-Alarmd-Signature"], ts, request.body, now=clock.now())
    assert json.loads(request.body.decode("utf-8"))["text"] == "Fall på badet"


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_2xx_is_delivered(channel: WebhookChannel, receiver: Receiver, status: int) -> None:
    receiver.script = [Reply(status)]
    await channel.deliver(item())


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
async def test_408_and_5xx_are_retryable(
    channel: WebhookChannel, receiver: Receiver, status: int
) -> None:
    receiver.script = [Reply(status, "try later")]
    error = await failure(channel)
    assert error.retryable and error.retry_after is None
    assert error.message == f"HTTP {status}: try later"


async def test_429_retry_after_seconds(channel: WebhookChannel, receiver: Receiver) -> None:
    receiver.script = [Reply(429, headers={"Retry-After": "60"})]
    error = await failure(channel)
    assert error.retryable and error.retry_after == 60


async def test_503_retry_after_http_date(
    channel: WebhookChannel, receiver: Receiver, clock: FakeClock
) -> None:
    when = format_datetime(clock.now() + timedelta(seconds=120), usegmt=True)
    receiver.script = [Reply(503, headers={"Retry-After": when})]
    error = await failure(channel)
    assert error.retryable and error.retry_after == 120


async def test_unparsable_retry_after_is_ignored(
    channel: WebhookChannel, receiver: Receiver
) -> None:
    receiver.script = [Reply(429, headers={"Retry-After": "soon"})]
    error = await failure(channel)
    assert error.retryable and error.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
async def test_other_4xx_are_permanent_with_a_bounded_body(
    channel: WebhookChannel, receiver: Receiver, status: int
) -> None:
    receiver.script = [Reply(status, "nope\n" + "y" * 5000)]
    error = await failure(channel)
    assert not error.retryable
    assert error.message == f"HTTP {status}: nope " + "y" * 195


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_not_followed(
    channel: WebhookChannel, receiver: Receiver, status: int
) -> None:
    elsewhere = receiver.url("/elsewhere")
    receiver.script = [Reply(status, headers={"Location": elsewhere})]
    error = await failure(channel)
    assert not error.retryable
    assert error.message == f"HTTP {status}: redirect to {elsewhere!r} not followed"
    assert [r.path for r in receiver.requests] == ["/hook"]  # nothing went to /elsewhere


async def test_timeout_is_retryable(channel: WebhookChannel, receiver: Receiver) -> None:
    receiver.script = [Reply(hang=True)]
    error = await failure(channel, item(address="impatient"))
    assert error.retryable
    assert error.message == "no answer within 0.2 s"


async def test_connection_refused_is_retryable(clock: FakeClock) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ch = WebhookChannel(
        {"desk": WebhookEndpoint("desk", f"http://127.0.0.1:{port}/", SECRET)}, clock
    )
    try:
        error = await failure(ch)
    finally:
        await ch.close()
    assert error.retryable
    assert error.message.startswith("ClientConnectorError")


async def test_unknown_endpoint_is_permanent(channel: WebhookChannel, receiver: Receiver) -> None:
    error = await failure(channel, item(address="gone"))
    assert not error.retryable
    assert error.message == "no webhook endpoint named 'gone'"
    assert receiver.requests == []


async def test_cookies_do_not_ride_along(channel: WebhookChannel, receiver: Receiver) -> None:
    receiver.script = [Reply(200, headers={"Set-Cookie": "session=abc; Path=/"})]
    await channel.deliver(item())
    await channel.deliver(item())
    assert "Cookie" not in receiver.requests[1].headers


async def test_endpoints_can_be_swapped(
    channel: WebhookChannel, receiver: Receiver, clock: FakeClock
) -> None:
    channel.set_endpoints({"new": WebhookEndpoint("new", receiver.url("/new"), b"other")})
    assert not (await failure(channel)).retryable  # "desk" is gone
    await channel.deliver(item(address="new"))
    [request] = receiver.requests
    assert request.path == "/new"
    ts = request.headers["X-Alarmd-Timestamp"]
    assert verify(b"other", request.headers["X-Alarmd-Signature"], ts, request.body, now=NOW)


def test_times_are_utc() -> None:
    assert T0.tzinfo is UTC and datetime.fromtimestamp(NOW, UTC) == T0

"""The HTTP+JSON control API (aiohttp), with /health and /metrics on the same port.

Every /api/ request carries a bearer token; only its SHA-256 hash is stored, and the token
itself never reaches a log line. Errors are JSON objects ``{"error": code, "message": text}``
so that a script and a person both understand them.

/metrics is rendered on the event loop from alarmd's own registry (no extra thread server).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from alarmd import metrics
from alarmd.store import tokens
from alarmd.store.db import Store
from alarmd.store.events import list_events

if TYPE_CHECKING:
    from alarmd.api.stream import CaseHub
    from alarmd.routing.engine import Engine

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HealthCheck = Callable[[], dict[str, Any]]

TOKEN_KEY: web.RequestKey[tokens.TokenInfo] = web.RequestKey("token", tokens.TokenInfo)


@dataclass
class ApiContext:
    store: Store
    health: HealthCheck
    engine: Engine | None = None
    # tests only: the daemon runs on a fake clock (ALARMD_TEST_CLOCK) moved through the API
    advance_clock: Callable[[float], None] | None = None
    # called after a directory import that changed something
    directory_changed: Callable[[], Awaitable[None]] | None = None
    case_hub: CaseHub | None = None  # live updates (api/stream.py)
    # case management: how long personal data is kept after the last device is off the wall
    retention: timedelta = timedelta(days=90)


CONTEXT: web.AppKey[ApiContext] = web.AppKey("context", ApiContext)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


class FailedLogins:
    """Repeated bad tokens from one address are refused for a while (429) before any lookup,
    so a token cannot be guessed at the speed of the API. Bounded: at most ``max_peers``
    addresses are remembered, the oldest forgotten first."""

    def __init__(self, limit: int = 20, window_s: float = 60.0, max_peers: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_peers = max_peers
        self._failures: dict[str, list[float]] = {}

    def _recent(self, peer: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(peer, ()) if now - t < self.window_s]
        if times:
            self._failures[peer] = times
        else:
            self._failures.pop(peer, None)
        return times

    def blocked(self, peer: str, now: float) -> bool:
        return len(self._recent(peer, now)) >= self.limit

    def failed(self, peer: str, now: float) -> None:
        times = self._recent(peer, now)
        times.append(now)
        self._failures[peer] = times
        if len(self._failures) > self.max_peers:
            del self._failures[next(iter(self._failures))]


FAILED_LOGINS: web.AppKey[FailedLogins] = web.AppKey("failed_logins", FailedLogins)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate /api/ requests and turn every failure into a JSON error.

    The token itself is never logged, not even a bad one: only that it failed, and from
    where."""
    try:
        if request.path.startswith("/api/"):
            failures = request.app[FAILED_LOGINS]
            peer = request.remote or "?"
            now = time.monotonic()
            if failures.blocked(peer, now):
                raise ApiError(
                    429, "too_many_attempts", "too many bad tokens from this address; wait a minute"
                )
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                failures.failed(peer, now)
                raise ApiError(401, "unauthenticated", "send 'Authorization: Bearer <token>'")
            info = await tokens.lookup(request.app[CONTEXT].store.reader, token.strip())
            if info is None:
                failures.failed(peer, now)
                log.warning("api_bad_token", peer=peer, path=request.path)
                raise ApiError(401, "unauthenticated", "unknown or revoked token")
            request[TOKEN_KEY] = info
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("api_internal_error", path=request.path)
        return _error(500, "internal", "internal error; see the daemon's log")


async def health(request: web.Request) -> web.Response:
    report = request.app[CONTEXT].health()
    status = 200 if report.get("status") == "ok" else 503
    return web.json_response(report, status=status)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(metrics.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _parse_time(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "bad_request", f"{name}: not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ApiError(400, "bad_request", f"{name}: give a UTC offset, e.g. {value}Z")
    return parsed


def _parse_int(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name}: not a whole number: {value!r}") from None
    if not low <= number <= high:
        raise ApiError(400, "bad_request", f"{name}: must be between {low} and {high}")
    return number


async def get_events(request: web.Request) -> web.Response:
    """Stored events, newest first, scoped to the caller's tenants."""
    info = request[TOKEN_KEY]
    query = request.rel_url.query
    allowed = {"account", "source", "protocol", "since", "after_id", "limit"}
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown parameter(s): {', '.join(unknown)}")
    source = query.get("source") or query.get("account")
    events = await list_events(
        request.app[CONTEXT].store.reader,
        source=source.upper() if source and query.get("protocol", "dc09") == "dc09" else source,
        protocol=query.get("protocol"),
        since=_parse_time(query["since"], "since") if "since" in query else None,
        after_id=_parse_int(query["after_id"], "after_id", 0, 2**62)
        if "after_id" in query
        else None,
        limit=_parse_int(query.get("limit", "100"), "limit", 1, 10000),
        tenants=info.tenants,
    )
    return web.json_response({"events": [event.to_json() for event in events]})


def create_app(context: ApiContext) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=1024 * 1024)
    app[CONTEXT] = context
    app[FAILED_LOGINS] = FailedLogins()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/api/v1/events", get_events)
    # imported here: the route modules use this module's CONTEXT, TOKEN_KEY and ApiError
    from alarmd.api import admin as admin_api
    from alarmd.api import cases as cases_api
    from alarmd.api import casework as casework_api
    from alarmd.api import directory as directory_api
    from alarmd.api import openapi as openapi_api
    from alarmd.api import stream as stream_api

    openapi_api.add_routes(app)
    admin_api.add_routes(app)
    stream_api.add_routes(app)
    cases_api.add_routes(app)
    directory_api.add_routes(app)
    casework_api.add_routes(app)
    if context.advance_clock is not None:
        app.router.add_post("/api/v1/debug/clock", advance_clock)
    return app


async def advance_clock(request: web.Request) -> web.Response:
    """Tests only (the daemon was started with ALARMD_TEST_CLOCK): move its time forward."""
    if request[TOKEN_KEY].role != "admin":
        raise ApiError(403, "forbidden", "only an admin token may move the clock")
    try:
        data = await request.json()
        seconds = float(data["advance_s"])
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "bad_request", 'send {"advance_s": seconds}') from None
    if not 0 <= seconds <= 366 * 86400:
        raise ApiError(400, "bad_request", "advance_s: between 0 and a year")
    advance = request.app[CONTEXT].advance_clock
    assert advance is not None
    advance(seconds)
    return web.json_response({"advanced_s": seconds})


class ApiServer:
    """Runs the aiohttp application on one host:port inside alarmd's event loop."""

    def __init__(
        self,
        context: ApiContext,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._runner = web.AppRunner(create_app(context), access_log=None, handle_signals=False)
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._host, self._port, reuse_address=True, ssl_context=self._ssl
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the bound port, when 0 was asked
        log.info("api_listening", host=self._host, port=self.port, tls=self._ssl is not None)

    async def stop(self) -> None:
        await self._runner.cleanup()


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for the API: TLS 1.2 at least, the certificate chain and its key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context

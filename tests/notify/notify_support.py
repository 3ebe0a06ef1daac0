"""Helpers shared by the notify tests: a real webhook receiver, a minimal case.

The receiver is an aiohttp server on 127.0.0.1 (ephemeral port) that records every request
and answers from a script the test sets (``receiver.script``), then 200 once it runs out.

Not a ``conftest.py``: the tests have no packages, so a second module named ``conftest``
would shadow the one ``tests/e2e`` imports from. The fixtures live in the test modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.test_utils import TestServer

from alarmd.store.db import iso

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
SECRET = b"s3cret-shared-with-the-supplier"


@dataclass
class Reply:
    """One scripted answer: a status (with headers and body), or ``hang`` until released."""

    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None = None  # the status sent back; None if the client went away first


class Receiver:
    """A webhook receiver on loopback that does what the test tells it."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[Received] = []
        self.arrived = asyncio.Event()  # set on every request
        self.release = asyncio.Event()  # lets ``hang`` replies finish
        self.server: TestServer | None = None

    def url(self, path: str = "/hook") -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def delivered(self) -> list[Received]:
        """Requests answered 2xx (what the receiver acted on)."""
        return [r for r in self.requests if r.answered is not None and 200 <= r.answered < 300]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.path, dict(request.headers), await request.read())
        self.requests.append(received)
        self.arrived.set()
        reply = self.script.pop(0) if self.script else Reply()
        if reply.hang:
            await self.release.wait()
        received.answered = reply.status
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)


@contextlib.asynccontextmanager
async def serve_receiver() -> AsyncIterator[Receiver]:
    """A ``Receiver`` listening on loopback for the duration of the block."""
    r = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", r.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    r.server = server
    try:
        yield r
    finally:
        r.release.set()
        await server.close()


def insert_case(conn: sqlite3.Connection) -> int:
    """A minimal event and case, for rows and log lines that reference a case."""
    at = iso(T0)
    cursor = conn.execute(
        "INSERT INTO events (received_at, protocol, source, kind, category, condition,"
        " priority, code, dedup_key, raw) VALUES (?, 'dc09', '1234', 'assistance', 'alarm',"
        " 'alarm', 1, 'CID:1101', 'dc09:1234:0001', x'00')",
        (at,),
    )
    event_id = cursor.lastrowid
    cursor = conn.execute(
        "INSERT INTO cases (open_key, protocol, source, kind, category, priority, state,"
        " opened_at, updated_at, first_event_id) VALUES ('src:dc09:1234|assistance', 'dc09',"
        " '1234', 'assistance', 'alarm', 1, 'notifying', ?, ?, ?)",
        (at, at, event_id),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid

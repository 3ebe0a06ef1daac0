"""From an alarm to a signed HTTP request: engine, outbox, dispatcher and webhook channel
together, with a real receiver on loopback, a real store and a fake clock."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from alarmd.clock import FakeClock
from alarmd.model import EventKind
from alarmd.notify.outbox import Dispatcher
from alarmd.notify.webhook import WebhookChannel, WebhookEndpoint, verify
from alarmd.store.db import Store

from caseworld import T0, Router, World, seed_directory

SECRET = b"test-secret-not-a-real-one"


async def test_technical_case_reaches_the_supplier_webhook_signed(tmp_path: Path) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_directory)
    clock = FakeClock(T0)
    world = World(store, clock, Router(), channels=frozenset({"webhook"}))
    endpoint = WebhookEndpoint("supplier-desk", str(server.make_url("/hook")), SECRET)
    channel = WebhookChannel({"supplier-desk": endpoint}, clock)
    dispatcher = Dispatcher(store, clock, {"webhook": channel})
    try:
        await world.send(EventKind.MAINS_LOST)
        await world.tick()  # routed: the supplier desk, by webhook
        assert world.outbox() == [("webhook", "staff:3", "supplier-desk", "pending")]
        assert await dispatcher.run_due() == 1
        [(headers, body)] = received
        assert verify(
            SECRET, headers["X-Alarmd-Signature"], headers["X-Alarmd-Timestamp"], body, clock.now()
        )
        assert b'"case_id": 1' in body or b'"case_id":1' in body
        assert b"mains_lost" in body
        assert world.outbox()[0][3] == "sent"
        assert "delivered" in world.types()
    finally:
        await channel.close()
        await store.close()
        await server.close()

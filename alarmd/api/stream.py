"""Live updates: ``GET /api/v1/stream`` sends every case change as a server-sent event, so
consoles never poll.

The engine tells the ``CaseHub`` which cases a commit changed; every subscriber has a
bounded queue of case ids. A console that reads too slowly is not allowed to hold memory
for ever: its queue overflows into one ``resync`` event, after which it should fetch the
queue again (``GET /api/v1/cases``). Each event is the case as ``GET /api/v1/cases/{id}``
shows it, without the log, and only if the subscriber's token may see that case. A comment
line every 15 s keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable

from aiohttp import web

from alarmd.api.server import CONTEXT, TOKEN_KEY, ApiError
from alarmd.store import cases as case_store

RESYNC = -1
QUEUE_SIZE = 1000
KEEPALIVE_S = 15.0


class CaseHub:
    """Fans case ids out to the live streams."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[int]] = set()

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, case_ids: Iterable[int]) -> None:
        ids = list(dict.fromkeys(case_ids))  # once each, in order
        for queue in self._queues:
            for case_id in ids:
                if queue.full():
                    queue.get_nowait()  # make room for the marker: the client re-fetches
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(RESYNC)
                    break
                queue.put_nowait(case_id)

    def subscribe(self) -> asyncio.Queue[int]:
        queue: asyncio.Queue[int] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[int]) -> None:
        self._queues.discard(queue)


async def stream(request: web.Request) -> web.StreamResponse:
    info = request[TOKEN_KEY]
    context = request.app[CONTEXT]
    hub = context.case_hub
    if hub is None:
        raise ApiError(503, "unavailable", "live updates are not running")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    queue = hub.subscribe()
    try:
        await response.write(b": alarmd live updates\n\n")
        while True:
            try:
                case_id = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if case_id == RESYNC:
                await response.write(b"event: resync\ndata: {}\n\n")
                continue
            found = await case_store.get_case(context.store.reader, case_id)
            if found is None or not info.sees_tenant(found[0].tenant):
                continue
            body = json.dumps(found[0].to_json(), ensure_ascii=False)
            await response.write(f"event: case\nid: {case_id}\ndata: {body}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.unsubscribe(queue)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/stream", stream)

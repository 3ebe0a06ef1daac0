"""One loop for everything that acts at stored deadlines (the routing engine, supervision).

The owner supplies ``run_due`` (do what is due at the clock's ``now``) and ``next_due`` (when
something may next be due, or ``None``); the loop runs one, then sleeps until the other or a
``wake()``, whichever comes first. A failing ``run_due`` is logged and retried at the next
wake-up: one bad case or a store hiccup must never stop every deadline. Tests with a fake
clock never start the loop; they call the owner's ``run_due`` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog

from alarmd.clock import Clock

log = structlog.get_logger(__name__)


class DeadlineLoop:
    """A task that calls ``run_due`` whenever something is due or it is woken."""

    def __init__(
        self,
        name: str,
        clock: Clock,
        run_due: Callable[[], Awaitable[object]],
        next_due: Callable[[], datetime | None],
        *,
        min_sleep_s: float = 0.0,
    ) -> None:
        self._name = name
        self._clock = clock
        self._run_due = run_due
        self._next_due = next_due
        self._min_sleep = min_sleep_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._run_due()
            except Exception:
                log.exception("deadline_loop_failed", loop=self._name)
            due = self._next_due()
            timeout = None
            if due is not None:
                timeout = max(self._min_sleep, (due - self._clock.now()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

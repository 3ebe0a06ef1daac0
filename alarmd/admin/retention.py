"""The retention sweep: erases a former user's personal data when its retention period is
over (``records.erase_due``), by itself, in the daemon.

One ``DeadlineLoop`` sleeps until the earliest ``erase_after`` in the store, and at most an
hour, so that a period that starts while it sleeps (a de-installation finished through the
API) is picked up within the hour; nothing needs to wake it, though a moved test clock
does. Erasing is a writer job like every other change, with its audit row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from alarmd.admin import records
from alarmd.clock import Clock
from alarmd.deadlines import DeadlineLoop
from alarmd.store.db import Store, parse_iso

log = structlog.get_logger(__name__)

__all__ = ["RetentionSweep"]

RECHECK = timedelta(hours=1)


class RetentionSweep:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._loop = DeadlineLoop("retention", clock, self.run_due, self.next_due)

    def next_due(self) -> datetime:
        rows = self._store.writer.read_now(
            "SELECT min(erase_after) FROM service_users"
            " WHERE erase_after IS NOT NULL AND erased_at IS NULL"
        )
        soonest = self._clock.now() + RECHECK
        if rows and isinstance(rows[0][0], str):
            return min(soonest, parse_iso(rows[0][0]))
        return soonest

    async def run_due(self) -> list[int]:
        erased = await self._store.writer.submit(records.erase_due(self._clock.now()))
        if erased:
            log.info("personal_data_erased", users=len(erased))
        return erased

    def start(self) -> None:
        self._loop.start()

    def wake(self) -> None:
        self._loop.wake()

    async def stop(self) -> None:
        await self._loop.stop()

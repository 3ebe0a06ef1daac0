"""Case management's own clockwork in the daemon: erase a former user's personal data when
its retention period is over (``records.erase_due``), and turn a device's technical case
that has stayed open too long into a fault with a repair order (``records.auto_faults``).

One ``DeadlineLoop`` sleeps until the earliest ``erase_after`` in the store, and at most
``RECHECK``, so that a period that starts while it sleeps (a de-installation finished
through the API) and a technical case growing old are both picked up within that time;
nothing needs to wake it, though a moved test clock does. Each pass is one writer job per
duty, with its audit rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from alarmd.admin import records
from alarmd.clock import Clock
from alarmd.deadlines import DeadlineLoop
from alarmd.store.db import Store, parse_iso

log = structlog.get_logger(__name__)

__all__ = ["AdminSweep"]

RECHECK = timedelta(minutes=15)


class AdminSweep:
    def __init__(self, store: Store, clock: Clock, fault_after: timedelta | None) -> None:
        """``fault_after``: how long a device's technical case may stay open before a repair
        is ordered by itself (``None``: never; people report faults)."""
        self._store = store
        self._clock = clock
        self._fault_after = fault_after
        self._loop = DeadlineLoop("case-management", clock, self.run_due, self.next_due)

    def next_due(self) -> datetime:
        rows = self._store.writer.read_now(
            "SELECT min(erase_after) FROM service_users"
            " WHERE erase_after IS NOT NULL AND erased_at IS NULL"
        )
        soonest = self._clock.now() + RECHECK
        if rows and isinstance(rows[0][0], str):
            return min(soonest, parse_iso(rows[0][0]))
        return soonest

    async def run_due(self) -> tuple[list[int], list[int]]:
        now = self._clock.now()
        faults: list[int] = []
        if self._fault_after is not None:
            faults = await self._store.writer.submit(records.auto_faults(now, self._fault_after))
            if faults:
                log.info("faults_ordered_by_supervision", faults=len(faults))
        erased = await self._store.writer.submit(records.erase_due(now))
        if erased:
            log.info("personal_data_erased", users=len(erased))
        return faults, erased

    def start(self) -> None:
        self._loop.start()

    def wake(self) -> None:
        self._loop.wake()

    async def stop(self) -> None:
        await self._loop.stop()

"""Intake: the one door events come through, from every protocol.

``submit(events)`` returns a ``Receipt`` only once the events are committed: that
return is the transport's permission to acknowledge (DESIGN.md invariant 1). A
retransmission (same ``dedup_key`` within the window) is recognised inside the same
transaction, counted on the stored row, and acknowledged like the first copy without a
second row (invariant 2). If the store cannot commit, ``submit`` raises ``StoreError``
and the transport must not acknowledge.

Listeners (the routing engine, supervision: later issues) are told about committed,
non-duplicate events after the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

import structlog

from alarmd import metrics
from alarmd.model import Event, Flag, Receipt
from alarmd.store.db import Store
from alarmd.store.events import append_job

log = structlog.get_logger(__name__)

TenantOf = Callable[[str, str], str | None]  # (protocol, source) -> tenant, None if unknown
Listener = Callable[[Sequence[Event], Receipt], None]


class Intake:
    """Stores events durably (de-duplicated) and tells listeners about new ones."""

    def __init__(
        self,
        store: Store,
        *,
        dedup_window: timedelta,
        tenant_of: TenantOf,
    ) -> None:
        self._store = store
        self._window = dedup_window
        self._tenant_of = tenant_of
        self._listeners: list[Listener] = []

    def set_tenant_lookup(self, tenant_of: TenantOf) -> None:
        """Swap the directory lookup (configuration reload)."""
        self._tenant_of = tenant_of

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def submit(self, events: Sequence[Event]) -> Receipt:
        """Commit ``events``; return once they are durable. Raises ``StoreError`` if not."""
        if not events:
            return Receipt(event_ids=(), duplicates=0)
        tenants = [self._tenant_of(event.protocol, event.source) for event in events]
        appended = await self._store.writer.submit(append_job(events, tenants, self._window))
        duplicates = sum(appended.duplicate)
        receipt = Receipt(event_ids=appended.ids, duplicates=duplicates)
        fresh: list[Event] = []
        for event, is_copy, event_id in zip(events, appended.duplicate, appended.ids, strict=True):
            if is_copy:
                metrics.EVENTS_DUPLICATE.labels(event.protocol).inc()
                continue
            fresh.append(event)
            metrics.EVENTS_STORED.labels(event.protocol, event.category.value).inc()
            if Flag.UNREGISTERED in event.flags:
                metrics.EVENTS_UNREGISTERED.labels(event.protocol).inc()
                log.warning(
                    "event_from_unregistered_source",
                    protocol=event.protocol,
                    source=event.source,
                    kind=event.kind.value,
                    event_id=event_id,
                )
        if fresh:
            for listener in self._listeners:
                listener(fresh, receipt)
        return receipt

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

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial

import structlog
from prometheus_client import Counter

from alarmd import metrics
from alarmd.model import Event, Flag, Receipt
from alarmd.store.db import Store
from alarmd.store.events import CaseHook, append_job

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
        self._case_hook: CaseHook | None = None

    def set_tenant_lookup(self, tenant_of: TenantOf) -> None:
        """Swap the directory lookup (configuration reload)."""
        self._tenant_of = tenant_of

    def set_case_hook(self, hook: CaseHook) -> None:
        """The routing engine's ``on_event``: runs in each new event's own transaction."""
        self._case_hook = hook

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def submit(self, events: Sequence[Event]) -> Receipt:
        """Commit ``events``; return once they are durable. Raises ``StoreError`` if not."""
        return await self.submit_future(events)

    def submit_future(self, events: Sequence[Event]) -> asyncio.Future[Receipt]:
        """``submit`` as a future, for transports that answer from a done-callback.

        It is the writer's own future: intake's bookkeeping (metrics, listeners) is its first
        done-callback, so it runs before any callback the caller adds. It carries
        ``StoreError`` if the commit failed. One future per submission, because at thousands
        of frames a second every extra future shows.
        """
        if not events:
            empty: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
            empty.set_result(Receipt(event_ids=(), duplicate=()))
            return empty
        tenant_of = self._tenant_of
        tenants = [tenant_of(event.protocol, event.source) for event in events]
        committed = self._store.writer.enqueue(
            append_job(events, tenants, self._window, self._case_hook)
        )
        committed.add_done_callback(partial(self._after_commit, events))
        return committed

    def _after_commit(self, events: Sequence[Event], committed: asyncio.Future[Receipt]) -> None:
        if committed.cancelled() or committed.exception() is not None:
            return
        receipt = committed.result()
        fresh: list[Event] = []
        for event, is_copy, event_id in zip(
            events, receipt.duplicate, receipt.event_ids, strict=True
        ):
            if is_copy:
                _counter(metrics.EVENTS_DUPLICATE, event.protocol).inc()
                continue
            fresh.append(event)
            _counter(metrics.EVENTS_STORED, event.protocol, event.category.value).inc()
            if Flag.UNREGISTERED in event.flags:
                _counter(metrics.EVENTS_UNREGISTERED, event.protocol).inc()
                log.warning(
                    "event_from_unregistered_source",
                    protocol=event.protocol,
                    source=event.source,
                    kind=event.kind.value,
                    event_id=event_id,
                )
        if fresh:
            for listener in self._listeners:
                try:
                    listener(fresh, receipt)
                except Exception:  # a listener's bug must not cost the device its ACK
                    log.exception("intake_listener_failed", listener=repr(listener))


_children: dict[tuple[object, ...], Counter] = {}


def _counter(family: Counter, *labels: str) -> Counter:
    """A labelled child, cached: ``labels()`` costs microseconds on every event otherwise."""
    key = (id(family), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = family.labels(*labels)
    return child

"""Intake: the one door events come through, from every protocol.

``submit(events)`` returns a ``Receipt`` only once the events are committed: that
return is the transport's permission to acknowledge (DESIGN.md invariant 1). A
retransmission (same ``dedup_key`` within the window) is recognised inside the same
transaction (by the store's in-memory window, ``store/recent.py``), counted on the stored
row, and acknowledged like the first copy without a second row (invariant 2). If the
store cannot commit, ``submit`` raises ``StoreError`` and the transport must not
acknowledge.

Listeners (the routing engine, supervision: later issues) are told about committed,
non-duplicate events after the commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial

import structlog
from prometheus_client import Counter

from alarmd import metrics
from alarmd.model import Event, Flag, Receipt
from alarmd.store.db import Store, StoreError
from alarmd.store.events import AppendBatch, BatchCaseHook, CaseHook

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
        self._batch_hook: BatchCaseHook | None = None
        # the batch that the writer has not started yet: new submissions join it
        self._open: _Batch | None = None

    def set_tenant_lookup(self, tenant_of: TenantOf) -> None:
        """Swap the directory lookup (configuration reload)."""
        self._tenant_of = tenant_of

    def set_case_hook(self, hook: CaseHook, batch_hook: BatchCaseHook | None = None) -> None:
        """The routing engine's ``on_event``: runs in each new event's own transaction.

        ``batch_hook`` does the same for every new event of one writer batch at once
        (``Engine.on_events``); without it the events of a batch go one by one.
        """
        self._case_hook = hook
        self._batch_hook = batch_hook

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def submit(self, events: Sequence[Event]) -> Receipt:
        """Commit ``events``; return once they are durable. Raises ``StoreError`` if not."""
        return await self.submit_future(events)

    def submit_future(self, events: Sequence[Event]) -> asyncio.Future[Receipt]:
        """``submit`` as a future, for transports that answer from a done-callback.

        Every submission made while the writer is busy joins one batch, stored by one
        writer job (``AppendBatch``: a multi-row insert instead of a statement per event).
        The first submission queues that job at once, so a lone event is still committed
        without waiting for company. The future carries ``StoreError`` if the commit failed;
        intake's bookkeeping (metrics, listeners) has run before it is resolved.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Receipt] = loop.create_future()
        if not events:
            future.set_result(Receipt(event_ids=(), duplicate=()))
            return future
        tenant_of = self._tenant_of
        tenants = [tenant_of(event.protocol, event.source) for event in events]
        batch = self._open
        if batch is None or len(batch.job) >= _MAX_SUBMISSIONS:
            batch = self._open = _Batch(
                AppendBatch(
                    self._store.recent_keys, self._window, self._case_hook, self._batch_hook
                )
            )
            committed = self._store.writer.enqueue(partial(self._run, batch))
            committed.add_done_callback(partial(self._committed, batch))
        batch.job.add(events, tenants)
        batch.waiting.append((events, future))
        return future

    def _run(self, batch: _Batch, conn: sqlite3.Connection) -> list[Receipt | Exception]:
        """The writer job: from now on, new submissions form the next batch."""
        if self._open is batch:
            self._open = None
        return batch.job(conn)

    def _committed(
        self, batch: _Batch, committed: asyncio.Future[list[Receipt | Exception]]
    ) -> None:
        if self._open is batch:  # the writer failed the batch without running it
            self._open = None
        if committed.cancelled():
            error: BaseException | None = StoreError("the commit was cancelled")
        else:
            error = committed.exception()
        outcomes: Sequence[Receipt | BaseException]
        outcomes = [error] * len(batch.waiting) if error is not None else committed.result()
        for (events, future), outcome in zip(batch.waiting, outcomes, strict=True):
            if future.done():  # the submitter cancelled it
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
                continue
            self._after_commit(events, outcome)
            future.set_result(outcome)

    def _after_commit(self, events: Sequence[Event], receipt: Receipt) -> None:
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


_MAX_SUBMISSIONS = 1000  # per batch; beyond, the next submissions start another one


class _Batch:
    """An ``AppendBatch`` and the submitters waiting for its commit."""

    __slots__ = ("job", "waiting")

    def __init__(self, job: AppendBatch) -> None:
        self.job = job
        self.waiting: list[tuple[Sequence[Event], asyncio.Future[Receipt]]] = []


_children: dict[tuple[object, ...], Counter] = {}


def _counter(family: Counter, *labels: str) -> Counter:
    """A labelled child, cached: ``labels()`` costs microseconds on every event otherwise."""
    key = (id(family), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = family.labels(*labels)
    return child

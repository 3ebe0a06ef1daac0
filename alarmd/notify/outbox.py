"""The outbox's draining side: claim due rows, deliver them through channels, record outcomes.

Theory of operation
-------------------
Storage is the queue (as in Gammu SMSD): a notification exists once its ``outbox`` row is
committed, and the engine writes that row in the same transaction as the case change that
causes it (``insert_outbox_rows``), so a crash can neither lose nor invent one. The
``Dispatcher`` drains the table in Alertmanager's stages:

* **claim**: rows ``status = 'pending' AND next_attempt_at <= now``, earliest deadline first,
  not already in flight in this process, and per channel no more than it has free slots
  (``concurrency`` deliveries per channel, so a dead webhook endpoint whose requests time out
  never holds up the next channel's notifications). The claim query is where ``status`` is
  re-checked: a row the engine cancelled (the case was accepted or closed) while it waited
  for its retry is never sent.
* **deliver**: a channel raises ``DeliveryError`` saying whether the failure is worth
  retrying and how long the receiver asked us to wait; any other exception counts as
  retryable and is logged with its traceback (a bug must not silence a notification).
* **record**: one small writer job per outcome (the writer commits them in groups): ``sent``;
  a retry at ``now + min(backoff_max, backoff_base * 2**attempts)`` (or the receiver's
  ``Retry-After`` if that is longer, up to ``backoff_max``: no receiver may park an alarm
  notification for longer than our own longest wait); or ``failed``, at once for a
  permanent error or a channel this daemon does not have, after ``max_attempts`` otherwise.
  A case's notification that is delivered or given up is a ``case_log`` line, so the
  operator sees who was reached and, above all, who was not. Nothing is dropped silently and
  nothing is retried forever.

Delivery is at least once. An attempt interrupted by a stop (or a crash) leaves its row
``pending`` with its attempt count unchanged, and it is sent again after the restart; the
receiver de-duplicates on the delivery id (``dedup_key``), which every attempt carries.

The loop sleeps until the earliest ``next_attempt_at`` of a pending row or a ``wake()`` (the
engine calls it after committing new rows; a finished delivery calls it too), whichever
comes first, and never longer than ``idle_poll_s``: a lost wake-up costs a minute, not a
notification. Tests drive ``run_due`` with a ``FakeClock`` and never run the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal, Protocol

import structlog

from alarmd import metrics
from alarmd.clock import Clock
from alarmd.store.db import Job, Store, StoreError, iso, parse_iso

__all__ = [
    "Channel",
    "DeliveryError",
    "Dispatcher",
    "NewOutboxRow",
    "OutboxItem",
    "enqueue_job",
    "insert_outbox_rows",
]

log = structlog.get_logger(__name__)

_ERROR_CHARS = 500  # last_error and case-log text: enough to diagnose, bounded


# --------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class OutboxItem:
    """One notification to deliver, as a channel sees it."""

    id: int
    case_id: int | None
    channel: str
    person: str  # a person id: "staff:7", "contact:12", "operator:kari"
    address: str  # what the channel needs: a webhook endpoint name, a phone number, a staff id
    payload: dict[str, Any]
    dedup_key: str  # the delivery id: the same on every attempt; receivers de-duplicate on it
    attempts: int  # attempts made before this one
    created_at: datetime


class DeliveryError(Exception):
    """A channel could not deliver; ``retryable`` says whether trying again may help.

    ``retry_after`` is how long the receiver asked us to wait (seconds, e.g. an HTTP
    ``Retry-After``); the dispatcher waits at least that long, up to its longest backoff.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class Channel(Protocol):
    """A way to reach a person: webhook, SMS, the staff app over MQTT."""

    name: str

    async def deliver(self, item: OutboxItem) -> None:
        """Deliver ``item`` or raise ``DeliveryError``; return only once the receiver has it."""
        ...


# --------------------------------------------------------------------------- the writing side


@dataclass(frozen=True)
class NewOutboxRow:
    """A notification for the engine to queue (see ``insert_outbox_rows``)."""

    case_id: int | None
    channel: str
    person: str
    address: str
    payload: Mapping[str, Any]
    dedup_key: str  # unique per notification: queuing the same key again does nothing


_INSERT = (
    "INSERT INTO outbox (case_id, channel, person, address, payload, dedup_key, status,"
    " attempts, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)"
    " ON CONFLICT (dedup_key) DO NOTHING"
)


def insert_outbox_rows(
    conn: sqlite3.Connection, rows: Sequence[NewOutboxRow], now: datetime
) -> list[int]:
    """Queue ``rows``, due at once; returns the ids of the rows actually inserted.

    Synchronous, for use inside another writer job (the case change that causes the
    notifications), so both commit together. A row whose ``dedup_key`` is already in the
    outbox, in whatever status, is skipped: the same notification is never queued twice.
    Only that conflict is ignored; any other constraint (an unknown case id) raises.
    """
    at = iso(now)
    inserted: list[int] = []
    for row in rows:
        cursor = conn.execute(
            _INSERT,
            (
                row.case_id,
                row.channel,
                row.person,
                row.address,
                json.dumps(dict(row.payload), ensure_ascii=False, sort_keys=True),
                row.dedup_key,
                at,
                at,
            ),
        )
        if cursor.rowcount == 1 and cursor.lastrowid is not None:
            inserted.append(cursor.lastrowid)
    return inserted


def enqueue_job(rows: Sequence[NewOutboxRow], now: datetime) -> Job[list[int]]:
    """A writer job that queues ``rows`` on its own: ``await store.writer.submit(...)``."""
    rows = tuple(rows)
    return lambda conn: insert_outbox_rows(conn, rows, now)


# --------------------------------------------------------------------------- the dispatcher

_COLUMNS = "id, case_id, channel, person, address, payload, dedup_key, attempts, created_at"

_DUE_FOR_CHANNEL = (
    f"SELECT {_COLUMNS} FROM outbox"  # noqa: S608 (constant column list)
    " WHERE status = 'pending' AND next_attempt_at <= ? AND channel = ?"
    " AND id NOT IN (SELECT value FROM json_each(?))"
    " ORDER BY next_attempt_at, id LIMIT ?"
)
_DUE_WITHOUT_CHANNEL = (
    f"SELECT {_COLUMNS} FROM outbox"  # noqa: S608 (constant column list)
    " WHERE status = 'pending' AND next_attempt_at <= ?"
    " AND channel NOT IN (SELECT value FROM json_each(?))"
    " AND id NOT IN (SELECT value FROM json_each(?))"
    " ORDER BY next_attempt_at, id LIMIT ?"
)
# Rows due now that are not in flight were skipped for want of a slot (a finished delivery
# wakes the loop) or committed after the claim (the engine wakes the loop): only later
# deadlines need a timer.
_NEXT_DEADLINE = (
    "SELECT next_attempt_at FROM outbox"
    " WHERE status = 'pending' AND next_attempt_at > ?"
    " AND id NOT IN (SELECT value FROM json_each(?))"
    " ORDER BY next_attempt_at LIMIT 1"
)
_PENDING = "SELECT count(*) FROM outbox WHERE status = 'pending'"

# Every update is guarded by the attempt count the delivery started from, so an outcome
# never lands on a row that moved on meanwhile. A notification delivered after the engine
# cancelled it is still recorded as sent: the person was reached, and the log says so.
_MARK_SENT = (
    "UPDATE outbox SET status = 'sent', sent_at = ?, attempts = ?, last_error = NULL"
    " WHERE id = ? AND attempts = ? AND status IN ('pending', 'cancelled')"
)
_MARK_RETRY = (
    "UPDATE outbox SET attempts = ?, last_error = ?, next_attempt_at = ?"
    " WHERE id = ? AND attempts = ? AND status = 'pending'"
)
_MARK_FAILED = (
    "UPDATE outbox SET status = 'failed', attempts = ?, last_error = ?"
    " WHERE id = ? AND attempts = ? AND status = 'pending'"
)
_CASE_LOG = (
    "INSERT INTO case_log (case_id, at, actor, type, message, data)"
    " VALUES (?, ?, 'alarmd', ?, ?, ?)"
)

Result = Literal["sent", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: Result
    at: datetime
    attempts: int  # the row's attempt count after this outcome
    error: str | None = None
    next_attempt_at: datetime | None = None  # for a retry
    why: str = ""  # for a failure: how it came to give up, in the case log's words


class Dispatcher:
    """Drains the outbox: delivers due notifications through ``channels``, with retry."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        channels: Mapping[str, Channel],
        *,
        max_attempts: int = 12,
        backoff_base_s: float = 5.0,
        backoff_max_s: float = 300.0,
        concurrency: int = 16,
        page_size: int = 100,
        idle_poll_s: float = 60.0,
        stop_grace_s: float = 5.0,
        error_pause_s: float = 1.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < backoff_base_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_max_s")
        if concurrency < 1 or page_size < 1:
            raise ValueError("concurrency and page_size must be at least 1")
        self._store = store
        self._clock = clock
        self._channels = dict(channels)
        self._channel_names = json.dumps(sorted(self._channels))
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._concurrency = concurrency
        self._page_size = page_size
        self._idle_poll = idle_poll_s
        self._stop_grace = stop_grace_s
        self._error_pause = error_pause_s
        self._in_flight: set[int] = set()  # outbox ids claimed and not yet recorded
        self._busy: dict[str, int] = {}  # deliveries in flight per channel
        self._tasks: set[asyncio.Task[bool]] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._store_failed = False

    # ----------------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Start the loop on the running event loop."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name="notify-dispatcher"
            )

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop the loop; let deliveries in flight finish within the grace, then cancel them.

        A cancelled delivery's row stays ``pending`` (attempts unchanged) and is sent again
        after the restart.
        """
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        tasks = set(self._tasks)
        if not tasks:
            return
        grace = self._stop_grace if grace_s is None else grace_s
        _, unfinished = await asyncio.wait(tasks, timeout=max(grace, 0.0))
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
            log.warning("notify_deliveries_interrupted", count=len(unfinished))

    def wake(self) -> None:
        """New rows are committed (or a slot freed): look for due rows now."""
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after a failed attempt, given the attempts made before it."""
        return min(self._backoff_max, math.ldexp(self._backoff_base, min(attempts, 60)))

    # ----------------------------------------------------------------------- passes

    async def run_due(self) -> int:
        """Deliver everything due at ``clock.now()``; return how many outcomes were recorded.

        Waits for every delivery it started. For tests (with a ``FakeClock``) and manual
        draining; the loop claims the same way without waiting for the deliveries.
        """
        now = self._clock.now()
        mine: list[asyncio.Task[bool]] = []
        while True:
            started, more = await self._claim(now)
            mine.extend(started)
            if not more:
                break
            if not started:  # every slot of some channel is busy: wait for one to free
                busy = [task for task in self._tasks if not task.done()]
                if busy:
                    await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
                # else the slots freed while the claim was reading: claim again
        results = await asyncio.gather(*mine, return_exceptions=True)
        await self._refresh_pending()
        return sum(1 for result in results if result is True)

    async def _run(self) -> None:
        while True:
            if self._store_failed:  # outcomes could not be written: do not spin on them
                self._store_failed = False
                await asyncio.sleep(self._error_pause)
            self._wake.clear()
            now = self._clock.now()
            try:
                await self._claim(now)
                await self._refresh_pending()
                delay = await self._delay_until_next(now)
            except Exception:  # a read failed (disk, store closing): look again shortly
                log.exception("notify_pass_failed")
                await asyncio.sleep(self._error_pause)
                continue
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    async def _claim(self, now: datetime) -> tuple[list[asyncio.Task[bool]], bool]:
        """Start a delivery for each due row there is a slot for.

        Returns the tasks started and whether due rows were left (no free slot, or more
        rows for channels this daemon lacks than one page).
        """
        due = iso(now)
        started: list[asyncio.Task[bool]] = []
        more = False
        for name, channel in self._channels.items():
            free = self._concurrency - self._busy.get(name, 0)
            rows = await self._fetch(
                _DUE_FOR_CHANNEL, (due, name, self._in_flight_json(), max(free, 0) + 1)
            )
            rows = [row for row in rows if row[0] not in self._in_flight]
            if len(rows) > free:
                more = True
                rows = rows[: max(free, 0)]
            started.extend(self._start(row, channel) for row in rows)
        rows = await self._fetch(
            _DUE_WITHOUT_CHANNEL,
            (due, self._channel_names, self._in_flight_json(), self._page_size),
        )
        if len(rows) == self._page_size:
            more = True
        started.extend(self._start(row, None) for row in rows if row[0] not in self._in_flight)
        return started, more

    async def _delay_until_next(self, now: datetime) -> float:
        rows = await self._fetch(_NEXT_DEADLINE, (iso(now), self._in_flight_json()))
        if not rows:
            return self._idle_poll
        delay = (parse_iso(rows[0][0]) - self._clock.now()).total_seconds()
        return min(max(delay, 0.0), self._idle_poll)

    async def _refresh_pending(self) -> None:
        rows = await self._fetch(_PENDING, ())
        metrics.OUTBOX_PENDING.set(rows[0][0])

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[Any]:
        async with self._store.reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    def _in_flight_json(self) -> str:
        return json.dumps(sorted(self._in_flight))

    # ----------------------------------------------------------------------- one delivery

    def _start(self, row: Any, channel: Channel | None) -> asyncio.Task[bool]:
        item, problem = _item_from_row(row)
        self._in_flight.add(item.id)
        if channel is not None:
            self._busy[item.channel] = self._busy.get(item.channel, 0) + 1
        task = asyncio.get_running_loop().create_task(
            self._attempt(item, channel, problem), name=f"notify-{item.id}"
        )
        self._tasks.add(task)
        # bookkeeping in a callback, not a ``finally``: a task cancelled before its first
        # step never runs its body
        task.add_done_callback(partial(self._finished, item, channel is not None))
        return task

    def _finished(self, item: OutboxItem, held_slot: bool, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        self._in_flight.discard(item.id)
        if held_slot:
            self._busy[item.channel] -= 1
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(
                "notify_task_crashed",
                outbox_id=item.id,
                channel=item.channel,
                exc_info=exc,
            )
        self.wake()

    async def _attempt(
        self, item: OutboxItem, channel: Channel | None, problem: str | None
    ) -> bool:
        if channel is None:
            problem = f"no channel {item.channel!r} in this daemon"
        if problem is not None:
            outcome = _Outcome(
                "failed",
                self._clock.now(),
                item.attempts,
                problem,
                why="gave up (not sent)",
            )
        else:
            assert channel is not None
            outcome = await self._deliver(channel, item)
        try:
            recorded = await self._store.writer.submit(_record_job(item, outcome))
        except StoreError as exc:
            # delivered or not, the row stays as it was and is tried again (at least once)
            self._store_failed = True
            log.error(
                "notification_outcome_not_recorded",
                outbox_id=item.id,
                channel=item.channel,
                person=item.person,
                result=outcome.result,
                error=str(exc),
            )
            return False
        if not recorded:
            log.info(
                "notification_outcome_superseded",
                outbox_id=item.id,
                channel=item.channel,
                person=item.person,
                result=outcome.result,
            )
            return False
        _report(item, outcome)
        return True

    async def _deliver(self, channel: Channel, item: OutboxItem) -> _Outcome:
        started = self._clock.monotonic()
        retry_after: float | None = None
        try:
            await channel.deliver(item)
        except DeliveryError as exc:
            error: str | None = exc.message
            retryable = exc.retryable
            retry_after = exc.retry_after
        except Exception as exc:  # a bug or an unforeseen failure: retry, loudly
            log.exception(
                "notification_channel_error",
                outbox_id=item.id,
                channel=item.channel,
                person=item.person,
            )
            error = f"{type(exc).__name__}: {exc}"
            retryable = True
        else:
            error = None
            retryable = False
        metrics.NOTIFICATION_DELIVERY_SECONDS.labels(channel=item.channel).observe(
            max(self._clock.monotonic() - started, 0.0)
        )
        now = self._clock.now()
        attempts = item.attempts + 1
        if error is None:
            return _Outcome("sent", now, attempts)
        error = error[:_ERROR_CHARS]
        if not retryable:
            return _Outcome("failed", now, attempts, error, why="gave up (permanent error)")
        if attempts >= self._max_attempts:
            return _Outcome(
                "failed", now, attempts, error, why=f"gave up after {attempts} attempts"
            )
        delay = self.backoff(item.attempts)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._backoff_max))
        return _Outcome("retry", now, attempts, error, now + timedelta(seconds=delay))


def _item_from_row(row: Any) -> tuple[OutboxItem, str | None]:
    """The row as an item, and what makes it undeliverable (a payload that is not an object)."""
    problem = None
    try:
        payload = json.loads(row[5])
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        problem = "payload is not a JSON object"
        payload = {}
    item = OutboxItem(
        id=row[0],
        case_id=row[1],
        channel=row[2],
        person=row[3],
        address=row[4],
        payload=payload,
        dedup_key=row[6],
        attempts=row[7],
        created_at=parse_iso(row[8]),
    )
    return item, problem


def _record_job(item: OutboxItem, outcome: _Outcome) -> Callable[[sqlite3.Connection], bool]:
    """The writer job for one outcome; returns False if the row had moved on meanwhile."""

    def job(conn: sqlite3.Connection) -> bool:
        at = iso(outcome.at)
        if outcome.result == "sent":
            cursor = conn.execute(_MARK_SENT, (at, outcome.attempts, item.id, item.attempts))
        elif outcome.result == "retry":
            assert outcome.next_attempt_at is not None
            cursor = conn.execute(
                _MARK_RETRY,
                (
                    outcome.attempts,
                    outcome.error,
                    iso(outcome.next_attempt_at),
                    item.id,
                    item.attempts,
                ),
            )
        else:
            cursor = conn.execute(
                _MARK_FAILED, (outcome.attempts, outcome.error, item.id, item.attempts)
            )
        if cursor.rowcount != 1:
            return False
        if item.case_id is not None and outcome.result != "retry":
            kind, message = _case_log_line(item, outcome)
            data: dict[str, Any] = {
                "outbox_id": item.id,
                "channel": item.channel,
                "person": item.person,
                "attempts": outcome.attempts,
            }
            if outcome.error is not None:
                data["error"] = outcome.error
            conn.execute(
                _CASE_LOG,
                (
                    item.case_id,
                    at,
                    kind,
                    message,
                    json.dumps(data, ensure_ascii=False, sort_keys=True),
                ),
            )
        return True

    return job


def _case_log_line(item: OutboxItem, outcome: _Outcome) -> tuple[str, str]:
    """The case log's type and message: who was (or was not) reached, by what."""
    what = f"{item.channel} to {item.person} ({item.address})"
    if outcome.result == "sent":
        again = f" on attempt {outcome.attempts}" if outcome.attempts > 1 else ""
        return "delivered", f"{what} delivered{again}"
    return (
        "delivery_failed",
        f"{what} {outcome.why}: {item.person} was not reached this way ({outcome.error})",
    )


def _report(item: OutboxItem, outcome: _Outcome) -> None:
    """Metrics and a log line for a recorded outcome (never the payload or the address)."""
    metrics.NOTIFICATIONS.labels(channel=item.channel, result=outcome.result).inc()
    fields: dict[str, Any] = {
        "outbox_id": item.id,
        "case_id": item.case_id,
        "channel": item.channel,
        "person": item.person,
        "attempts": outcome.attempts,
    }
    if outcome.result == "sent":
        log.info("notification_delivered", **fields)
    elif outcome.result == "retry":
        assert outcome.next_attempt_at is not None
        log.warning(
            "notification_retry",
            error=outcome.error,
            next_attempt_at=iso(outcome.next_attempt_at),
            **fields,
        )
    else:
        log.error("notification_failed", error=outcome.error, why=outcome.why, **fields)

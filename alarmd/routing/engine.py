"""The routing engine: opens cases from events, routes them, and fires their deadlines.

Theory of operation
-------------------
Three doors lead into a case, and all three are writer jobs, so every change to a case, its
log and the notifications it causes commit together (or not at all):

* ``on_event`` runs *inside* intake's append job, in the transaction that stores the event:
  an alarm opens a case (or is attached to the open case of the same user and kind), so an
  acknowledged alarm always has its case, even if alarmd dies a microsecond after the ACK.
  The new case is ``new`` and due at once.
* ``run_due`` handles every case whose ``next_step_at`` has come: a new case is routed
  (``router(facts, now)``, the pure rules; the decision and the plan are copied into the
  case: DESIGN.md invariant 4) and opened; an open one is ticked through
  ``escalation.step`` until its next deadline is in the future.
* ``accept``/``decline``/``on_site``/``close``/``note`` come from people (API, app, SMS).

``escalation.step`` decides; this module carries its actions out: ``Notify`` becomes outbox
rows (one per person and channel, with a de-dup key so a notification is never queued twice)
and the people reached are reported back (``NotifiedPeople``), everything goes to the case
log, and acceptance or closing cancels notifications still waiting.

Deadlines: a heap of hints
    One heap of ``(when, case_id)`` for all cases: no task and no timer per case. An entry
    is a *hint* that the case may be due then; the stored ``next_step_at`` is the truth, and
    a case popped early is loaded, found not due, and pushed again at its real deadline. So
    an entry pushed by a transaction that then rolled back costs one read and never fires
    anything, and the only rule to keep is that every committed deadline has an entry at or
    before it: every job pushes the deadlines it wrote, and a job that fails to commit puts
    back the entries it took. After a restart ``load`` pushes every stored deadline; those
    already past fire at once, each exactly once, because firing and recording that it fired
    are one transaction.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from alarmd import metrics
from alarmd.clock import Clock
from alarmd.deadlines import DeadlineLoop
from alarmd.model import Category, Event, EventKind, Flag, Outcome, Priority, Receipt
from alarmd.routing.decision import MODES, Decision, Location, Mode, RouteFacts
from alarmd.routing.escalation import (
    CENTRE,
    Accept,
    Accepted,
    Acknowledged,
    Action,
    AlertCentre,
    CaseEscalation,
    CentreStep,
    Close,
    Closed,
    Decline,
    Declined,
    Escalated,
    EscalationPolicy,
    Input,
    MarkOnSite,
    NotifiedPeople,
    Notify,
    OnSite,
    Open,
    Phase,
    Recipient,
    Rejected,
    Tick,
    new_case,
    step,
)
from alarmd.store import cases as case_store
from alarmd.store.db import Store, StoreError, iso, parse_iso
from alarmd.store.directory import (
    DeviceLink,
    UserFacts,
    find_device,
    resolve_recipient,
    user_facts,
)

log = structlog.get_logger(__name__)

Router = Callable[[RouteFacts, datetime], Decision]

SYSTEM = "alarmd"
_MAX_TICKS = 64  # escalation needs at most len(steps) + 2 per catch-up; a guard, not a limit
_RETRY_AFTER_FAILED_COMMIT = timedelta(seconds=1)
_CHUNK = 500

DISPATCH_TARGETS = ("home_care", "next_of_kin", "ambulance")

# Events that open or join a case; informational ones only touch open cases.
_INFO_TOUCHING = {EventKind.CARER_PRESENT, EventKind.CANCEL, EventKind.CHECK_OUT}

# A report of these kinds may be part of a mass outage: its case waits for supervision's
# verdict (``Engine.set_outage_hold``). Alarms are never here.
OUTAGE_HELD_KINDS = frozenset({EventKind.MAINS_LOST})
SUPERVISION_CODE = "SUPERVISION"  # the code of events supervision makes itself

FALLBACK_CENTRE = CentreStep(
    accept_within=timedelta(minutes=2), re_alert_every=timedelta(minutes=1)
)


def centre_only(centre: CentreStep, rule: str, why: str) -> Decision:
    """The response service: what every alarm gets when nothing better is known."""
    return Decision(
        mode="response",
        policy=EscalationPolicy(steps=(), centre=centre, accepted_deadline=timedelta(hours=1)),
        rule=rule,
        explanation=(why,),
    )


@dataclass(frozen=True, slots=True)
class CaseResult:
    """What an action from a person did: the case after it, and a refusal if any."""

    case: case_store.CaseRow | None
    rejected: str | None = None


@dataclass(slots=True)
class _JobOutcome:
    """What a job did, applied after its commit."""

    deadlines: list[tuple[int, datetime]] = field(default_factory=list)
    outbox_rows: int = 0
    changed: list[int] = field(default_factory=list)
    rejected: str | None = None
    case_id: int | None = None


@dataclass(slots=True)
class _CaseBatch:
    """What ``on_events`` keeps for one batch: devices looked up, case ids to write, and
    the cases opened (counted once the batch's savepoint is released)."""

    devices: dict[tuple[str, str], DeviceLink | None] = field(default_factory=dict)
    case_ids: list[tuple[int, int]] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)


def case_key(base: str, kind: EventKind, protocol: str, source: str) -> str:
    """The key under which an event finds its open case (``cases.open_key``).

    A user's alarms join one case per kind, whichever of the user's devices sends them (a
    second press is the same situation). A technical condition belongs to one device: two
    devices of one user go silent and come back on their own, so a restore from one must
    never close the case of the other. ``base`` is ``user:<id>`` or ``src:<protocol>:<source>``
    (the latter names the device already)."""
    if kind.category is Category.TECHNICAL and base.startswith("user:"):
        return f"{base}|{kind.value}|{protocol}:{source}"
    return f"{base}|{kind.value}"


def _touch(conn: sqlite3.Connection, case_id: int, now: datetime, out: _JobOutcome) -> None:
    """A case changed without a step of its own (a note, a dispatch): bump its version so
    consoles reload it, and tell the listeners."""
    conn.execute(
        "UPDATE cases SET updated_at = ?, version = version + 1 WHERE id = ?",
        (iso(now), case_id),
    )
    out.changed.append(case_id)


class Engine:
    """Opens, routes and escalates cases; the only writer of cases, case log and outbox."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        router: Router,
        *,
        fallback_centre: CentreStep = FALLBACK_CENTRE,
        channels: frozenset[str] | None = None,
    ) -> None:
        """``channels``: the notification channels this daemon can deliver (``console``
        always); a step's other channels are logged as unavailable and reach nobody, so a
        step nobody can be reached in escalates at once instead of waiting out its deadline.
        ``None`` takes every channel as available (tests of the engine alone)."""
        self._channels = None if channels is None else channels | {"console"}
        self._store = store
        self._clock = clock
        self._router = router
        self._fallback_centre = fallback_centre
        self._heap: list[tuple[datetime, int]] = []
        self._hint: dict[int, datetime] = {}  # the earliest heap entry per case
        self._loop = DeadlineLoop(
            "routing-engine",
            clock,
            self.run_due,
            lambda: self._heap[0][0] if self._heap else None,
        )
        self._outbox_listeners: list[Callable[[], None]] = []
        self._case_listeners: list[Callable[[Iterable[int]], None]] = []
        self._pending: _JobOutcome = _JobOutcome()  # on_event's effects, until intake commits
        self._outage_hold: timedelta | None = None
        self._batch: _CaseBatch | None = None  # set while on_events runs

    # --- wiring ---------------------------------------------------------------------------

    def set_router(self, router: Router, fallback_centre: CentreStep | None = None) -> None:
        """Swap the rules (configuration reload). Running cases keep their snapshots."""
        self._router = router
        if fallback_centre is not None:
            self._fallback_centre = fallback_centre

    def set_outage_hold(self, window: timedelta | None) -> None:
        """Hold a new mains-lost case of a registered device for ``window`` before routing
        it, so that supervision can fold it into an outage incident if its neighbours lose
        power too (``fold_outage``); alone, it is routed when the hold ends, like a technical
        notice held to office hours. Events alarmd makes itself (code ``SUPERVISION``) and
        every alarm are never held. ``None`` (no supervision) holds nothing."""
        self._outage_hold = window

    def on_outbox(self, listener: Callable[[], None]) -> None:
        """Called after a commit that queued notifications (the dispatcher's ``wake``)."""
        self._outbox_listeners.append(listener)

    def on_case_change(self, listener: Callable[[Iterable[int]], None]) -> None:
        """Called with the ids of cases changed by a commit (live updates)."""
        self._case_listeners.append(listener)

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def scheduled(self) -> int:
        """Cases with a deadline hint in the heap."""
        return len(self._hint)

    # --- life cycle -----------------------------------------------------------------------

    async def load(self) -> int:
        """Push every stored deadline: after a restart, the past ones fire at once."""
        async with self._store.reader.execute(
            "SELECT id, next_step_at FROM cases WHERE next_step_at IS NOT NULL"
        ) as cursor:
            rows = list(await cursor.fetchall())
        for case_id, due in rows:
            self._push(int(case_id), parse_iso(due))
        log.info("engine_loaded", cases=len(rows))
        return len(rows)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def wake(self) -> None:
        self._loop.wake()

    # --- the heap of hints ------------------------------------------------------------------

    def _push(self, case_id: int, when: datetime) -> None:
        known = self._hint.get(case_id)
        if known is not None and known <= when:
            return
        self._hint[case_id] = when
        heapq.heappush(self._heap, (when, case_id))

    def _pop_due(self, now: datetime) -> list[tuple[int, datetime]]:
        due: list[tuple[int, datetime]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, case_id = heapq.heappop(heap)
            if self._hint.get(case_id) == when:
                del self._hint[case_id]
                due.append((case_id, when))
        return due

    def _after_commit(self, outcome: _JobOutcome) -> None:
        for case_id, when in outcome.deadlines:
            self._push(case_id, when)
        if outcome.deadlines:
            self._loop.wake()
        if outcome.outbox_rows:
            for listener in self._outbox_listeners:
                listener()
        if outcome.changed:
            for case_listener in self._case_listeners:
                case_listener(outcome.changed)

    # --- door 1: events, inside intake's transaction ----------------------------------------

    def events_committed(self, events: Sequence[Event], receipt: Receipt) -> None:
        """Intake's listener: the events' transaction committed, so their cases are real."""
        pending, self._pending = self._pending, _JobOutcome()
        self._after_commit(pending)

    def on_event(
        self, conn: sqlite3.Connection, event: Event, event_id: int, tenant: str | None
    ) -> None:
        """Open or update the case an event belongs to; runs in the event's transaction.

        If that fails (a bug, a directory row that breaks an assumption), the event is still
        stored and acknowledged, and a bare case keyed on the source is opened instead, which
        routing then sends to the centre: an alarm is never left without its case, and a
        case-logic bug never costs a device its ACK (the device would retry for ever).
        """
        conn.execute("SAVEPOINT case_hook")
        try:
            self._on_event(conn, event, event_id, tenant)
        except sqlite3.OperationalError:
            raise  # disk or lock trouble: the whole transaction fails, nothing is ACKed
        except Exception:
            conn.execute("ROLLBACK TO case_hook")
            log.exception("case_open_failed", event_id=event_id, source=event.source)
            if event.kind.category is not Category.INFO:
                self._open_bare(conn, event, event_id, tenant)
        conn.execute("RELEASE case_hook")

    def on_events(
        self, conn: sqlite3.Connection, items: Sequence[tuple[Event, int, str | None]]
    ) -> None:
        """``on_event`` for every new event of one intake batch, in order, at less cost.

        One savepoint for the whole batch instead of one per event, each device looked up
        once per batch, and the events' ``case_id`` written by one statement at the end. If
        anything in the batch fails (other than the database itself), the batch's case work
        is undone and every event goes through ``on_event`` on its own, so a failing event
        fails alone and gets its bare case exactly as it would have without the batch.
        """
        if len(items) <= 1:
            for event, event_id, tenant in items:
                self.on_event(conn, event, event_id, tenant)
            return
        out = self._pending
        marks = (len(out.deadlines), len(out.changed), out.outbox_rows)
        batch = _CaseBatch()
        conn.execute("SAVEPOINT case_hooks")
        self._batch = batch
        try:
            for event, event_id, tenant in self._join_open(conn, items):
                self._on_event(conn, event, event_id, tenant)
            if batch.case_ids:
                conn.executemany("UPDATE events SET case_id = ? WHERE id = ?", batch.case_ids)
        except sqlite3.OperationalError:
            raise  # disk or lock trouble: the whole transaction fails, nothing is ACKed
        except Exception:
            conn.execute("ROLLBACK TO case_hooks")
            conn.execute("RELEASE case_hooks")
            self._batch = None
            del out.deadlines[marks[0] :]
            del out.changed[marks[1] :]
            out.outbox_rows = marks[2]
            for event, event_id, tenant in items:
                self.on_event(conn, event, event_id, tenant)
            return
        finally:
            self._batch = None
        conn.execute("RELEASE case_hooks")
        for category in batch.opened:
            metrics.CASES_OPENED.labels(category).inc()

    def _join_open(
        self, conn: sqlite3.Connection, items: Sequence[tuple[Event, int, str | None]]
    ) -> Sequence[tuple[Event, int, str | None]]:
        """In a batch of alarms only (no restore, no informational event: nothing in it can
        close a case), join every alarm whose case is open already, all at once: one look-up
        of the open cases and one update per case, with the same end state as one
        ``UPDATE … RETURNING`` per event. Returns the events left for ``_on_event``, in order
        (those that open a case, and the later ones that join it)."""
        keys: list[str] = []
        for event, _, _ in items:
            if event.condition.value == "restore" or event.kind.category is Category.INFO:
                return items
            device = self._find_device(conn, event.protocol, event.source)
            user_id = device.user_id if device is not None else None
            base = (
                f"user:{user_id}" if user_id is not None else f"src:{event.protocol}:{event.source}"
            )
            keys.append(case_key(base, event.kind, event.protocol, event.source))
        open_ids = dict(
            conn.execute(
                "SELECT open_key, id FROM cases WHERE closed_at IS NULL"
                " AND open_key IN (SELECT value FROM json_each(?))",
                (json.dumps(list(set(keys))),),
            ).fetchall()
        )
        if not open_ids:
            return items
        joined: dict[int, list[Any]] = {}  # case id -> [events, top priority, last time]
        rest: list[tuple[Event, int, str | None]] = []
        changed = self._pending.changed
        for item, key in zip(items, keys, strict=True):
            case_id = open_ids.get(key)
            if case_id is None:
                rest.append(item)
                continue
            event, event_id, _ = item
            counts = joined.get(case_id)
            if counts is None:
                joined[case_id] = [1, int(event.priority), event.received_at]
            else:
                counts[0] += 1
                counts[1] = max(counts[1], int(event.priority))
                counts[2] = event.received_at
            self._set_case(conn, event_id, case_id)
            changed.append(case_id)
        conn.executemany(
            "UPDATE cases SET event_count = event_count + ?, priority = max(priority, ?),"
            " updated_at = ?, version = version + ? WHERE id = ?",
            [(n, top, iso(last), n, case_id) for case_id, (n, top, last) in joined.items()],
        )
        return rest

    def _find_device(
        self, conn: sqlite3.Connection, protocol: str, source: str
    ) -> DeviceLink | None:
        batch = self._batch
        if batch is None:
            return find_device(conn, protocol, source)
        key = (protocol, source)
        if key in batch.devices:
            return batch.devices[key]
        device = batch.devices[key] = find_device(conn, protocol, source)
        return device

    def _set_case(self, conn: sqlite3.Connection, event_id: int, case_id: int) -> None:
        """The event row names its case; in a batch, written once at its end."""
        batch = self._batch
        if batch is None:
            conn.execute("UPDATE events SET case_id = ? WHERE id = ?", (case_id, event_id))
        else:
            batch.case_ids.append((case_id, event_id))

    def _open_bare(
        self, conn: sqlite3.Connection, event: Event, event_id: int, tenant: str | None
    ) -> None:
        now = event.received_at
        cursor = conn.execute(
            "INSERT INTO cases (tenant, open_key, protocol, source, kind, category, priority,"
            " flags, state, next_step_at, opened_at, updated_at, first_event_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'unregistered', 'new', ?, ?, ?, ?)",
            (
                tenant,
                f"bare:{event_id}",
                event.protocol,
                event.source,
                event.kind.value,
                event.kind.category.value,
                int(event.priority),
                iso(now),
                iso(now),
                iso(now),
                event_id,
            ),
        )
        case_id = int(cursor.lastrowid or 0)
        conn.execute("UPDATE events SET case_id = ? WHERE id = ?", (case_id, event_id))
        case_store.append_log(
            conn, case_id, now, SYSTEM, "opened", f"case opened (fallback): {_describe(event)}"
        )
        self._pending.deadlines.append((case_id, now))

    def _on_event(
        self, conn: sqlite3.Connection, event: Event, event_id: int, tenant: str | None
    ) -> None:
        category = event.kind.category
        if category is Category.INFO and event.kind not in _INFO_TOUCHING:
            return
        device = self._find_device(conn, event.protocol, event.source)
        user_id = device.user_id if device is not None else None
        if device is not None:
            tenant = device.tenant
        base = f"user:{user_id}" if user_id is not None else f"src:{event.protocol}:{event.source}"
        now = event.received_at
        out = self._pending
        if category is Category.INFO:
            self._info_event(conn, event, event_id, base, now, out)
            return
        key = case_key(base, event.kind, event.protocol, event.source)
        if event.condition.value == "restore":
            row = conn.execute(
                "SELECT id FROM cases WHERE open_key = ? AND closed_at IS NULL", (key,)
            ).fetchone()
            if row is None and key != (legacy := f"{base}|{event.kind.value}"):
                # a technical case opened before cases were keyed per device (upgrade)
                row = conn.execute(
                    "SELECT id FROM cases WHERE open_key = ? AND closed_at IS NULL"
                    " AND protocol = ? AND source = ?",
                    (legacy, event.protocol, event.source),
                ).fetchone()
            if row is None:
                return
            case_id = int(row[0])
            self._set_case(conn, event_id, case_id)
            case_store.append_log(
                conn,
                case_id,
                now,
                SYSTEM,
                "restored",
                f"{_describe(event)}: restored",
                {"event_id": event_id},
            )
            if category is Category.TECHNICAL:
                self._close_restored(conn, case_id, now, out)
            out.changed.append(case_id)
            return
        # Another press of the same pendant joins the open case: one statement finds and
        # counts it. The event row carries the case id, so the case's events are listed from
        # the events table, not repeated in the case log (this runs for every event).
        row = conn.execute(
            "UPDATE cases SET event_count = event_count + 1, priority = max(priority, ?),"
            " updated_at = ?, version = version + 1"
            " WHERE open_key = ? AND closed_at IS NULL RETURNING id",
            (int(event.priority), iso(now), key),
        ).fetchone()
        if row is not None:
            case_id = int(row[0])
            self._set_case(conn, event_id, case_id)
            out.changed.append(case_id)
            return
        flags = set(event.flags)
        if user_id is None and event.protocol != "supervision":  # an outage has no one user
            flags.add(Flag.UNREGISTERED)
        due = now
        if (
            self._outage_hold is not None
            and event.kind in OUTAGE_HELD_KINDS
            and device is not None
            and event.code != SUPERVISION_CODE
        ):
            due = now + self._outage_hold
        cursor = conn.execute(
            "INSERT INTO cases (tenant, user_id, open_key, protocol, source, kind, category,"
            " queue, priority, flags, state, next_step_at, opened_at, updated_at,"
            " first_event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'new', ?, ?, ?, ?)",
            (
                tenant,
                user_id,
                key,
                event.protocol,
                event.source,
                event.kind.value,
                category.value,
                "technical" if category is Category.TECHNICAL else "alarm",
                int(event.priority),
                ",".join(sorted(f.value for f in flags)),
                iso(due),
                iso(now),
                iso(now),
                event_id,
            ),
        )
        case_id = int(cursor.lastrowid or 0)
        self._set_case(conn, event_id, case_id)
        case_store.append_log(
            conn,
            case_id,
            now,
            SYSTEM,
            "opened",
            f"case opened: {_describe(event)}"
            + ("" if user_id is not None else " (no service user registered for this device)"),
            {"event_id": event_id},
        )
        if due > now:
            case_store.append_log(
                conn,
                case_id,
                now,
                SYSTEM,
                "held",
                f"held until {iso(due)}: folded into an outage incident if its area loses"
                " power too, routed on its own otherwise",
            )
        if self._batch is None:
            metrics.CASES_OPENED.labels(category.value).inc()
        else:
            self._batch.opened.append(category.value)
        out.deadlines.append((case_id, due))
        out.changed.append(case_id)

    def _info_event(
        self,
        conn: sqlite3.Connection,
        event: Event,
        event_id: int,
        base: str,
        now: datetime,
        out: _JobOutcome,
    ) -> None:
        rows = conn.execute(
            "SELECT id FROM cases WHERE open_key >= ? AND open_key < ? AND closed_at IS NULL"
            " AND category = 'alarm' ORDER BY id",
            (base + "|", base + "}"),
        ).fetchall()
        who = f"device:{event.protocol}:{event.source}"
        for (case_id,) in rows:
            self._set_case(conn, event_id, case_id)
            if event.kind is EventKind.CARER_PRESENT:
                case = case_store.load_case(conn, case_id)
                if case is not None:
                    self._apply(conn, case, OnSite(who, now), now, out, actor=who)
            else:
                case_store.append_log(
                    conn,
                    case_id,
                    now,
                    who,
                    event.kind.value,
                    _describe(event),
                    {"event_id": event_id},
                )
                out.changed.append(case_id)

    def _close_restored(
        self, conn: sqlite3.Connection, case_id: int, now: datetime, out: _JobOutcome
    ) -> None:
        """A technical condition that ended by itself closes its case unless someone holds it."""
        case = case_store.load_case(conn, case_id)
        if case is None or case.accepted_by is not None:
            return
        close = Close(SYSTEM, Outcome.TECHNICAL.value, now)
        if case.escalation is None:
            self._store_unrouted_close(conn, case, now, "restored before it was routed")
        else:
            self._apply(conn, case, close, now, out, actor=SYSTEM)

    def _store_unrouted_close(
        self, conn: sqlite3.Connection, case: case_store.CaseRow, now: datetime, why: str
    ) -> None:
        conn.execute(
            "UPDATE cases SET state = 'closed', next_step_at = NULL, closed_at = ?, outcome = ?,"
            " close_note = ?, updated_at = ?, version = version + 1 WHERE id = ?",
            (iso(now), Outcome.TECHNICAL.value, why, iso(now), case.id),
        )
        case_store.append_log(conn, case.id, now, SYSTEM, "closed", f"closed: {why}")

    # --- outages: supervision folds technical cases into an incident -------------------------

    async def fold_outage(
        self,
        incident: tuple[str, str],
        entries: Sequence[tuple[str, str, dict[str, Any]]],
        fold: Sequence[tuple[str, str]],
        *,
        kind: EventKind = EventKind.LINK_LOST,
        fold_kind: EventKind = EventKind.MAINS_LOST,
    ) -> int | None:
        """Record an outage's members on its incident case, and fold technical cases into it.

        ``incident`` is the (protocol, source) of the incident's events, whose latest case
        (of ``kind``) gets ``entries`` as log rows (type, message, data). For each device in
        ``fold``, its open ``fold_kind`` case is closed as folded into the incident, unless
        someone has accepted it (then it is theirs). Returns the incident case's id, ``None``
        if there is no such case. Alarms never come here."""
        protocol, source = incident

        def job(conn: sqlite3.Connection) -> _JobOutcome:
            out = _JobOutcome()
            row = conn.execute(
                "SELECT id FROM cases WHERE open_key = ? ORDER BY id DESC LIMIT 1",
                (f"src:{protocol}:{source}|{kind.value}",),
            ).fetchone()
            if row is None:
                return out
            incident_id = out.case_id = int(row[0])
            now = self._clock.now()
            for type_, message, data in entries:
                case_store.append_log(conn, incident_id, now, SYSTEM, type_, message, data)
            for device_protocol, identity in fold:
                device = find_device(conn, device_protocol, identity)
                base = (
                    f"user:{device.user_id}"
                    if device is not None and device.user_id is not None
                    else f"src:{device_protocol}:{identity}"
                )
                found = conn.execute(
                    "SELECT id FROM cases WHERE open_key = ? AND closed_at IS NULL",
                    (case_key(base, fold_kind, device_protocol, identity),),
                ).fetchone()
                case = None if found is None else case_store.load_case(conn, int(found[0]))
                if case is None or case.accepted_by is not None or case.id == incident_id:
                    continue
                why = f"folded into outage incident case {incident_id}"
                if case.escalation is None:
                    self._store_unrouted_close(conn, case, now, why)
                else:
                    conn.execute("UPDATE cases SET close_note = ? WHERE id = ?", (why, case.id))
                    self._apply(
                        conn,
                        case,
                        Close(SYSTEM, Outcome.TECHNICAL.value, now),
                        now,
                        out,
                        actor=SYSTEM,
                    )
                case_store.append_log(
                    conn, case.id, now, SYSTEM, "folded", why, {"incident": incident_id}
                )
                metrics.OUTAGE_CASES_FOLDED.labels(fold_kind.value).inc()
                out.changed.append(case.id)
            out.changed.append(incident_id)
            return out

        outcome = await self._store.writer.submit(job)
        self._after_commit(outcome)
        return outcome.case_id

    async def extend_outage_hold(self, case_ids: Sequence[int], until: datetime) -> None:
        """Held cases whose hold ran out while alarmd was down wait until ``until`` (a fresh
        outage window from the restart), so that supervision can still fold them if their
        neighbours' reports, delayed by the downtime, follow. Only open cases not routed
        yet and held to before ``until`` are touched."""

        def job(conn: sqlite3.Connection) -> _JobOutcome:
            out = _JobOutcome()
            now = self._clock.now()
            for case_id in case_ids:
                row = conn.execute(
                    "UPDATE cases SET next_step_at = ?, updated_at = ?, version = version + 1"
                    " WHERE id = ? AND closed_at IS NULL AND escalation IS NULL"
                    " AND next_step_at < ? RETURNING id",
                    (iso(until), iso(now), case_id, iso(until)),
                ).fetchone()
                if row is None:
                    continue
                case_store.append_log(
                    conn,
                    case_id,
                    now,
                    SYSTEM,
                    "held",
                    f"held until {iso(until)}: alarmd was down when its hold ended",
                )
                out.deadlines.append((case_id, until))
                out.changed.append(case_id)
            return out

        self._after_commit(await self._store.writer.submit(job))

    # --- door 2: deadlines --------------------------------------------------------------------

    async def run_due(self) -> int:
        """Route new cases and fire every deadline due at ``clock.now()``; returns how many
        cases were looked at. Tests with a fake clock call this directly."""
        now = self._clock.now()
        due = self._pop_due(now)
        if not due:
            return 0
        for when_case in due:
            metrics.ESCALATION_LATENESS.observe(max(0.0, (now - when_case[1]).total_seconds()))
        for start in range(0, len(due), _CHUNK):
            chunk = due[start : start + _CHUNK]
            ids = [case_id for case_id, _ in chunk]
            try:
                outcome = await self._store.writer.submit(self._tick_job(ids, now))
            except StoreError as exc:
                log.error("engine_commit_failed", cases=len(ids), error=str(exc))
                retry = now + _RETRY_AFTER_FAILED_COMMIT
                for case_id in ids:
                    self._push(case_id, retry)
                continue
            self._after_commit(outcome)
        return len(due)

    def _tick_job(
        self, ids: list[int], now: datetime
    ) -> Callable[[sqlite3.Connection], _JobOutcome]:
        def job(conn: sqlite3.Connection) -> _JobOutcome:
            out = _JobOutcome()
            for case_id in ids:
                case = case_store.load_case(conn, case_id)
                if case is None or not case.is_open:
                    continue
                if case.next_step_at is not None and case.next_step_at > now:
                    out.deadlines.append((case_id, case.next_step_at))  # an early hint
                    continue
                if case.escalation is None:
                    self._route(conn, case, now, out)
                elif case.escalation.phase is Phase.NEW:
                    self._apply(conn, case, Open(now), now, out, actor=SYSTEM)
                else:
                    self._apply(conn, case, Tick(now), now, out, actor=SYSTEM)
            return out

        return job

    def _facts(self, case: case_store.CaseRow, user: UserFacts | None) -> RouteFacts:
        return RouteFacts(
            tenant=case.tenant if user is not None else None,
            kind=EventKind(case.kind),
            priority=_priority(case.priority),
            user_group=user.group if user else None,
            plan_mode=_mode(user.plan.mode_override) if user and user.plan else None,
            location=_location(user.location) if user else "home",
            registered=user is not None,
            protocol=case.protocol,
        )

    def _route(
        self, conn: sqlite3.Connection, case: case_store.CaseRow, now: datetime, out: _JobOutcome
    ) -> None:
        user = user_facts(conn, case.user_id) if case.user_id is not None else None
        facts = self._facts(case, user)
        try:
            decision = self._router(facts, now)
        except Exception as exc:  # a rules bug must never cost an alarm its human
            log.exception("routing_failed", case_id=case.id)
            decision = centre_only(
                self._fallback_centre,
                "centre:routing-error",
                f"routing failed ({exc.__class__.__name__}): straight to the centre",
            )
        plan = user.plan if user is not None else None
        conn.execute(
            "UPDATE cases SET mode = ?, rule = ?, queue = ?, policy = ?, plan = ?,"
            " updated_at = ?, version = version + 1 WHERE id = ?",
            (
                decision.mode,
                decision.rule,
                decision.queue if case.category != Category.ALARM.value else "alarm",
                json.dumps(case_store.policy_to_json(decision.policy)),
                None if plan is None else json.dumps(plan.to_json(), ensure_ascii=False),
                iso(now),
                case.id,
            ),
        )
        case_store.append_log(
            conn,
            case.id,
            now,
            SYSTEM,
            "routed",
            f"mode {decision.mode}, route {decision.rule}",
            {"explanation": list(decision.explanation)},
        )
        metrics.CASES_ROUTED.labels(decision.mode).inc()
        state = new_case(decision.policy)
        routed = dataclasses.replace(
            case, policy=decision.policy, plan=plan, mode=decision.mode, rule=decision.rule
        )
        if decision.hold_until is not None and decision.hold_until > now:
            self._save(conn, routed, state, decision.hold_until, now)
            case_store.append_log(
                conn,
                case.id,
                now,
                SYSTEM,
                "held",
                f"held until {iso(decision.hold_until)} (outside the route's hours)",
            )
            out.deadlines.append((case.id, decision.hold_until))
            out.changed.append(case.id)
            return
        self._apply(
            conn, routed, Open(now), now, out, actor=SYSTEM, state=state, user={"user": user}
        )

    # --- door 3: people -----------------------------------------------------------------------

    async def accept(self, case_id: int, who: str, *, is_operator: bool) -> CaseResult:
        return await self._act(case_id, who, lambda now: Accept(who, now, is_operator))

    async def decline(self, case_id: int, who: str) -> CaseResult:
        return await self._act(case_id, who, lambda now: Decline(who, now))

    async def on_site(self, case_id: int, who: str) -> CaseResult:
        return await self._act(case_id, who, lambda now: OnSite(who, now))

    async def close(self, case_id: int, who: str, outcome: str, note: str = "") -> CaseResult:
        """Close with an ``Outcome``; raises ``ValueError`` for an unknown outcome."""
        Outcome(outcome)
        return await self._act(case_id, who, lambda now: Close(who, outcome, now), note=note)

    async def dispatch(self, case_id: int, who: str, to: str, note: str = "") -> CaseResult:
        """An operator sends someone: ``home_care`` (the plan's team, everyone on duty) or
        ``next_of_kin`` (the plan's contacts) are notified on every channel this daemon runs
        that they have an address for; ``ambulance`` is only recorded (the operator calls
        113). The case stays with whoever holds it; the log says who was sent."""
        if to not in DISPATCH_TARGETS:
            raise ValueError(f"dispatch to one of {', '.join(DISPATCH_TARGETS)}, not {to!r}")

        def job(conn: sqlite3.Connection) -> _JobOutcome:
            out = _JobOutcome(case_id=case_id)
            case = case_store.load_case(conn, case_id)
            if case is None:
                out.rejected = "no such case"
                return out
            if not case.is_open:
                out.rejected = "case closed"
                return out
            now = self._clock.now()
            count = conn.execute(
                "SELECT count(*) FROM case_log WHERE case_id = ? AND type = 'dispatched'",
                (case_id,),
            ).fetchone()[0]
            reached: list[str] = []
            if to != "ambulance":
                recipient = (
                    Recipient("team", "plan")
                    if to == "home_care"
                    else Recipient("next_of_kin", "all")
                )
                people, problem = resolve_recipient(conn, case.tenant, recipient, case.plan)
                if problem:
                    out.rejected = problem
                    return out
                user = user_facts(conn, case.user_id) if case.user_id is not None else None
                for person in people:
                    for channel, address in person.channels.items():
                        if self._channels is not None and channel not in self._channels:
                            continue
                        payload = _payload(case, user, 0, None, channel)
                        payload["dispatched_by"] = who
                        out.outbox_rows += conn.execute(
                            "INSERT OR IGNORE INTO outbox (case_id, channel, person, address,"
                            " payload, dedup_key, next_attempt_at, created_at)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                case_id,
                                channel,
                                person.id,
                                address,
                                json.dumps(payload, ensure_ascii=False),
                                f"case:{case_id}:dispatch:{count + 1}:{person.id}:{channel}",
                                iso(now),
                                iso(now),
                            ),
                        ).rowcount
                        reached.append(f"{person.name} ({channel})")
                if not reached:
                    out.rejected = f"nobody to reach for {to} on the channels this daemon runs"
                    return out
            message = f"dispatched {to}" + (f": {', '.join(reached)}" if reached else "")
            case_store.append_log(
                conn,
                case_id,
                now,
                who,
                "dispatched",
                message + (f". {note}" if note else ""),
                {"to": to, "reached": reached},
            )
            _touch(conn, case_id, now, out)
            return out

        return await self._finish(job)

    async def note(self, case_id: int, who: str, text: str) -> CaseResult:
        def job(conn: sqlite3.Connection) -> _JobOutcome:
            out = _JobOutcome(case_id=case_id)
            case = case_store.load_case(conn, case_id)
            if case is None:
                out.rejected = "no such case"
                return out
            now = self._clock.now()
            case_store.append_log(conn, case_id, now, who, "note", text)
            _touch(conn, case_id, now, out)
            return out

        return await self._finish(job)

    async def _act(
        self, case_id: int, who: str, make: Callable[[datetime], Input], note: str = ""
    ) -> CaseResult:
        def job(conn: sqlite3.Connection) -> _JobOutcome:
            out = _JobOutcome(case_id=case_id)
            case = case_store.load_case(conn, case_id)
            if case is None:
                out.rejected = "no such case"
                return out
            now = self._clock.now()
            event = make(now)
            if case.escalation is None:
                # not routed yet (the engine has it this instant): route first, then act
                self._route(conn, case, now, out)
                case = case_store.load_case(conn, case_id)
                assert case is not None
            state = case.escalation
            assert state is not None
            if state.phase is Phase.NEW and isinstance(event, Accept | OnSite):
                # a held technical notice someone takes anyway: open it, then take it
                self._apply(conn, case, Open(now), now, out, actor=SYSTEM)
                case = case_store.load_case(conn, case_id)
                assert case is not None
            if note and isinstance(event, Close):
                conn.execute("UPDATE cases SET close_note = ? WHERE id = ?", (note, case_id))
            self._apply(conn, case, event, now, out, actor=who)
            return out

        return await self._finish(job)

    async def _finish(self, job: Callable[[sqlite3.Connection], _JobOutcome]) -> CaseResult:
        out = await self._store.writer.submit(job)
        self._after_commit(out)
        case = None
        if out.case_id is not None:
            case = await self._store.writer.submit(
                lambda conn: case_store.load_case(conn, out.case_id or 0)
            )
        return CaseResult(case=case, rejected=out.rejected)

    # --- carrying out what escalation decided -------------------------------------------------

    def _apply(
        self,
        conn: sqlite3.Connection,
        case: case_store.CaseRow,
        first: Input,
        now: datetime,
        out: _JobOutcome,
        *,
        actor: str,
        state: CaseEscalation | None = None,
        user: dict[str, UserFacts | None] | None = None,
    ) -> None:
        """Feed ``first`` (and, for a Tick, every further due Tick) through ``step``, carry
        out the actions, and store the new state: all in the caller's transaction."""
        current = state if state is not None else case.escalation
        assert current is not None
        inputs: deque[Input] = deque([first])
        ticks = 0
        user_cache: dict[str, UserFacts | None] = {} if user is None else user
        while inputs:
            current, actions = step(current, inputs.popleft())
            for action in actions:
                inputs.extend(
                    self._carry_out(conn, case, current, action, now, out, actor, user_cache)
                )
            if not inputs and isinstance(first, Tick):
                due = current.next_step_at
                if due is not None and due <= now and ticks < _MAX_TICKS:
                    ticks += 1
                    inputs.append(Tick(now))
        self._save(conn, case, current, current.next_step_at, now)
        if current.next_step_at is not None:
            out.deadlines.append((case.id, current.next_step_at))
        out.changed.append(case.id)

    def _save(
        self,
        conn: sqlite3.Connection,
        case: case_store.CaseRow,
        state: CaseEscalation,
        next_step_at: datetime | None,
        now: datetime,
    ) -> None:
        conn.execute(
            "UPDATE cases SET state = ?, escalation = ?, next_step_at = ?, accepted_by = ?,"
            " updated_at = ?, version = version + 1 WHERE id = ?",
            (
                state.phase.value,
                json.dumps(case_store.escalation_to_json(state)),
                None if next_step_at is None else iso(next_step_at),
                state.accepted_by,
                iso(now),
                case.id,
            ),
        )

    def _carry_out(
        self,
        conn: sqlite3.Connection,
        case: case_store.CaseRow,
        state: CaseEscalation,
        action: Action,
        now: datetime,
        out: _JobOutcome,
        actor: str,
        user_cache: dict[str, UserFacts | None],
    ) -> list[Input]:
        cid = case.id
        if isinstance(action, Notify):
            return self._notify(conn, case, state, action, now, out, user_cache)
        if isinstance(action, AlertCentre):
            if action.repeat == 0:
                message = "to the centre: the operators' pool has the alarm"
            else:
                message = (
                    f"re-alert {action.repeat}: no operator has accepted; all operators and"
                    " the supervisor alerted again"
                )
            case_store.append_log(
                conn, cid, now, SYSTEM, "centre", message, {"repeat": action.repeat}
            )
            metrics.CENTRE_ALERTS.labels("first" if action.repeat == 0 else "repeat").inc()
        elif isinstance(action, Accepted):
            case_store.append_log(
                conn,
                cid,
                now,
                action.who,
                "accepted",
                f"accepted by {action.who}",
                {"acks": sorted(action.acks)},
            )
            self._cancel_outbox(conn, cid, "accepted")
        elif isinstance(action, Acknowledged):
            case_store.append_log(
                conn,
                cid,
                now,
                action.who,
                "acknowledged",
                f"acknowledged by {action.who}; waiting for"
                f" {', '.join(sorted(action.waiting_for))}",
            )
        elif isinstance(action, Declined):
            case_store.append_log(
                conn, cid, now, action.who, "declined", f"declined by {action.who}"
            )
        elif isinstance(action, Rejected):
            out.rejected = action.reason
            case_store.append_log(
                conn, cid, now, action.who, "rejected", f"{action.who} refused: {action.reason}"
            )
        elif isinstance(action, MarkOnSite):
            case_store.append_log(conn, cid, now, action.who, "on_site", f"on site: {action.who}")
        elif isinstance(action, Closed):
            conn.execute(
                "UPDATE cases SET closed_at = ?, outcome = ? WHERE id = ?",
                (iso(now), action.outcome, cid),
            )
            case_store.append_log(
                conn, cid, now, action.who, "closed", f"closed by {action.who}: {action.outcome}"
            )
            self._cancel_outbox(conn, cid, "closed")
            metrics.CASES_CLOSED.labels(action.outcome).inc()
        elif isinstance(action, Escalated):
            case_store.append_log(conn, cid, now, SYSTEM, "escalated", action.reason)
        return []

    def _notify(
        self,
        conn: sqlite3.Connection,
        case: case_store.CaseRow,
        state: CaseEscalation,
        action: Notify,
        now: datetime,
        out: _JobOutcome,
        user_cache: dict[str, UserFacts | None],
    ) -> list[Input]:
        cid = case.id
        if action.step_index == CENTRE:
            return []  # the console shows the case to the pool; AlertCentre logged it
        if "user" not in user_cache:
            user_cache["user"] = (
                user_facts(conn, case.user_id) if case.user_id is not None else None
            )
        user = user_cache["user"]
        reached: set[str] = set()
        step_no = int(action.step_index) + 1
        deadline = state.next_step_at
        for recipient in action.recipients:
            people, problem = resolve_recipient(conn, case.tenant, recipient, case.plan)
            if problem:
                case_store.append_log(
                    conn, cid, now, SYSTEM, "notify_none", f"step {step_no}: {problem}"
                )
            for person in people:
                used: list[str] = []
                for spec in action.channels:
                    if spec == "console":
                        used.append(spec)
                        continue
                    # "webhook:NAME" names the endpoint in the policy; otherwise the
                    # person's own address for the channel
                    channel, _, endpoint = spec.partition(":")
                    if self._channels is not None and channel not in self._channels:
                        continue
                    address = endpoint or person.channels.get(channel)
                    if not address:
                        continue
                    payload = _payload(case, user, step_no, deadline, channel)
                    inserted = conn.execute(
                        "INSERT OR IGNORE INTO outbox (case_id, channel, person, address, payload,"
                        " dedup_key, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            cid,
                            channel,
                            person.id,
                            address,
                            json.dumps(payload, ensure_ascii=False),
                            f"case:{cid}:step:{step_no}:{person.id}:{channel}",
                            iso(now),
                            iso(now),
                        ),
                    ).rowcount
                    out.outbox_rows += inserted
                    used.append(channel)
                if used:
                    reached.add(person.id)
                    case_store.append_log(
                        conn,
                        cid,
                        now,
                        SYSTEM,
                        "notify",
                        f"step {step_no}: notified {person.name} ({person.id})"
                        f" by {', '.join(used)}",
                        {"person": person.id, "channels": used, "step": step_no},
                    )
                else:
                    case_store.append_log(
                        conn,
                        cid,
                        now,
                        SYSTEM,
                        "notify_none",
                        f"step {step_no}: {person.name} ({person.id}) cannot be reached by"
                        f" {', '.join(action.channels)} (no address, or a channel this daemon"
                        f" does not run: {', '.join(sorted(self._channels or ()))})",
                    )
        return [NotifiedPeople(action.step_index, frozenset(reached))]

    @staticmethod
    def _cancel_outbox(conn: sqlite3.Connection, case_id: int, why: str) -> None:
        conn.execute(
            "UPDATE outbox SET status = 'cancelled', last_error = ? WHERE case_id = ?"
            " AND status = 'pending'",
            (f"case {why}", case_id),
        )


# --------------------------------------------------------------------------- helpers


def _priority(value: int) -> Priority:
    try:
        return Priority(value)
    except ValueError:
        return Priority.HIGH


def _describe(event: Event) -> str:
    where = f" zone {event.zone}" if event.zone else ""
    return f"{event.kind.value} {event.condition.value} from {event.protocol} {event.source}{where}"


def _payload(
    case: case_store.CaseRow,
    user: UserFacts | None,
    step_no: int,
    deadline: datetime | None,
    channel: str,
) -> dict[str, Any]:
    """The least a carer needs to go: no surname, no key-box code, no health data.

    The key box is never sent: the plan has no "key information may be sent" consent yet,
    and a code in an SMS outlives the alarm (left for the MQTT/SMS issues to decide).
    """
    return {
        "case_id": case.id,
        "tenant": case.tenant,
        "kind": case.kind,
        "priority": case.priority,
        "step": step_no,
        "accept_by": None if deadline is None else iso(deadline),
        "first_name": user.first_name if user else None,
        "address": user.address if user else None,
        "postcode": user.postcode if user else None,
    }


def _location(value: str) -> Location:
    if value == "away":
        return "away"
    if value == "care_home":
        return "care_home"
    return "home"


def _mode(value: str | None) -> Mode | None:
    for mode in MODES:
        if value == mode:
            return mode
    return None

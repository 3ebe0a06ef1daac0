"""The shell around ``supervision``: feeds it what devices send, acts on what it answers.

The pure core (``alarmd/supervision.py``) decides who is overdue and what is an outage;
this module does the I/O around it:

* at start it loads every supervised device from the directory (``devices.supervision_s``)
  with its last message from the events table, and resumes with a grace period, so that
  alarmd's own downtime is not blamed on devices (issue 6, start-up after downtime);
* ``seen(protocol, source)`` is called for every committed event (an intake listener) and
  for every DC-09 frame, NULL link tests included (``Dc09Receiver.heard``); the events
  supervision makes itself (code ``SUPERVISION``) are not signs of life;
* a device's own mains-lost report (and its mains-restored report) counts toward its area's
  outage like a link loss: the engine holds the report's technical case for the outage
  window (``Engine.set_outage_hold``), and if the area's outage becomes an incident the
  case is folded into it (``Engine.fold_outage``) instead of paging anyone;
* ``run_due()`` turns the core's answers into events through intake, so that they are
  stored and open cases like any other event: ``link_lost`` for a device on its own (a
  technical case, routed by the tenant's rules), ``link_lost`` + restore when it returns
  (which closes that case unless someone holds it), and one ``link_lost`` event for a whole
  outage, from the source ``incident:<tenant>:<area>`` (one case, carrying the affected
  devices and when their batteries run out). Who is affected, why and since when is
  written to the incident case's log (``outage_affected``, ``outage_back``), which is what
  the API shows as the incident's affected users. Real alarms never pass through here.

Tests call ``run_due()`` with a fake clock; the daemon runs ``start()``'s loop, which sleeps
until the core's next deadline or a wake-up.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import structlog

from alarmd import metrics
from alarmd.admin.lifecycle import LIVE_DEVICE_STATUSES
from alarmd.clock import Clock
from alarmd.deadlines import DeadlineLoop
from alarmd.intake import Intake
from alarmd.model import Condition, Event, EventKind
from alarmd.routing.engine import SUPERVISION_CODE, Engine
from alarmd.store.db import Store, iso, parse_iso
from alarmd.supervision import (
    LINK,
    MAINS,
    Affected,
    DeviceKey,
    Folded,
    IncidentClosed,
    IncidentOpened,
    Individual,
    LinkRestored,
    OutageAction,
    OutageTracker,
    Recovered,
    Supervisor,
)

log = structlog.get_logger(__name__)

INCIDENT = "supervision"  # the protocol of outage events


def grace_for(interval: timedelta) -> timedelta:
    """How late a heartbeat may be before the line counts as lost: a tenth of the interval,
    at least a minute (one lost UDP heartbeat must not open a case)."""
    return max(timedelta(minutes=1), interval / 10)


def _incident_event(
    tenant: str,
    area: str,
    condition: Condition,
    now: datetime,
    dedup: str,
    text: str,
    attributes: dict[str, str] | None = None,
) -> Event:
    """An outage incident's own event (opened or over), from the area as its source."""
    return Event(
        protocol=INCIDENT,
        source=f"incident:{tenant}:{area}",
        kind=EventKind.LINK_LOST,
        condition=condition,
        priority=EventKind.LINK_LOST.default_priority,
        received_at=now,
        dedup_key=f"incident:{tenant}:{area}:{dedup}",
        raw=b"",
        code="OUTAGE",
        text=text,
        attributes=attributes or {},
    )


class SupervisionService:
    """Supervision of every registered device with an expected interval."""

    def __init__(
        self,
        store: Store,
        intake: Intake,
        clock: Clock,
        *,
        outage_threshold: int = 10,
        outage_window: timedelta = timedelta(minutes=5),
        startup_grace: timedelta = timedelta(minutes=10),
        protocol_defaults: dict[str, timedelta] | None = None,
        engine: Engine | None = None,
    ) -> None:
        """``engine``: the routing engine whose mains-lost cases are held and folded into
        outage incidents (without it only link losses are grouped)."""
        self._store = store
        self._engine = engine
        if engine is not None:
            engine.set_outage_hold(outage_window)
        self._intake = intake
        self._clock = clock
        self._startup_grace = startup_grace
        # a heartbeat interval per protocol, for directory devices that name none
        self.protocol_defaults = dict(protocol_defaults or {})
        self.core = Supervisor()
        self.outages = OutageTracker(outage_threshold, outage_window)
        self._groups: dict[DeviceKey, tuple[str, str]] = {}  # device -> (tenant, area)
        # every directory device's area, supervised or not (mains-lost reports)
        self._areas: dict[DeviceKey, tuple[str, str]] = {}
        self._restored: list[LinkRestored] = []
        self._mains: list[tuple[DeviceKey, Condition, datetime]] = []
        self._resumed: list[OutageAction] = []  # what rebuilding the outages at start said
        self._loop = DeadlineLoop(
            "supervision", clock, self.run_due, self._next_due, min_sleep_s=0.05
        )
        # intervals from the accounts file: (protocol, source) -> (tenant, interval)
        self._account_intervals: dict[DeviceKey, tuple[str, timedelta]] = {}

    def set_account_intervals(self, intervals: dict[DeviceKey, tuple[str, timedelta]]) -> None:
        """Heartbeat intervals set per account in the accounts file; a device's own interval
        in the directory wins. Takes effect at the next ``load``."""
        self._account_intervals = dict(intervals)

    async def load(self, *, resume: bool = True) -> int:
        """Supervise every device the directory says should send heartbeats.

        At start (``resume``) nobody is reported before the start-up grace is over. Called
        again after a directory import (``resume=False``): new devices are supervised from
        now, changed intervals apply, and what each device was last heard is kept."""
        reader = self._store.reader
        async with reader.execute(
            "SELECT d.protocol, d.identity, d.supervision_s, d.tenant,"
            " coalesce(u.postcode, ''),"
            " (SELECT max(received_at) FROM events e"
            "   WHERE e.protocol = d.protocol AND e.source = d.identity),"
            " d.status"
            " FROM devices d LEFT JOIN service_users u ON u.id = d.user_id"
        ) as cursor:
            found: list[tuple[Any, ...]] = [tuple(r) for r in await cursor.fetchall()]
        known = {(str(r[0]), str(r[1])) for r in found}
        for (protocol, source), (tenant, _interval) in self._account_intervals.items():
            if (protocol, source) not in known:  # an account with no directory entry
                async with reader.execute(
                    "SELECT max(received_at) FROM events WHERE protocol = ? AND source = ?",
                    (protocol, source),
                ) as cursor:
                    last_row = await cursor.fetchone()
                found.append(
                    (protocol, source, None, tenant, "", last_row[0] if last_row else None, "")
                )
        rows = []
        for row in found:
            if row[6] and row[6] not in LIVE_DEVICE_STATUSES:
                continue  # in stock, on order or taken down: not on the wall, not supervised
            seconds = row[2]
            if not seconds:  # the device's own interval wins, then its account's, then
                fallback = self._account_intervals.get((str(row[0]), str(row[1])))
                default = self.protocol_defaults.get(str(row[0]))  # its protocol's
                if fallback is not None:
                    seconds = int(fallback[1].total_seconds())
                elif default is not None:
                    seconds = int(default.total_seconds())
                else:
                    continue  # nobody said how often this device calls in
            rows.append((*row[:2], seconds, *row[3:6]))
        self._areas = {
            (str(r[0]), str(r[1])): (str(r[3]), str(r[4]) or "-")
            for r in found
            if (str(r[0]), str(r[1])) in known
        }
        now = self._clock.now()
        for protocol, identity, seconds, tenant, postcode, last in rows:
            key = (str(protocol), str(identity))
            interval = timedelta(seconds=int(seconds))
            last_seen = parse_iso(last) if last else None
            self.core.supervise(key, interval, grace_for(interval), now, last_seen)
            self._groups[key] = (str(tenant), str(postcode) or "-")
        wanted = {(str(r[0]), str(r[1])) for r in rows}
        for key in list(self._groups):
            if key not in wanted:  # removed, or no longer supervised
                self.core.forget(key)
                del self._groups[key]
        if resume:
            self.core.resume(now, self._startup_grace)
            if self._engine is not None:
                await self._restore_outages(now)
        metrics.SUPERVISED_DEVICES.set(len(self.core))
        log.info("supervision_loaded", devices=len(rows), resume=resume)
        return len(rows)

    async def _restore_outages(self, now: datetime) -> None:
        """At start: rebuild the outage grouping from the store, so that a power cut going
        on across alarmd's restart is still one incident (issue 6, no flood).

        * each open incident case (``incident:<tenant>:<area>``) and its members, replayed
          from its ``outage_affected``/``outage_back`` log rows;
        * each directory device whose latest mains report says "lost", and since when;
        * the mains-lost cases still held for the outage window (``held``, not yet routed):
          fed to the core again as the reports they were, oldest first, so that they count
          toward their area's threshold with the reports that come after the restart.

        A member that was silent stays lost until heard from, unless it was heard after it
        was logged lost. What the replay answers (an incident that should have opened, held
        cases to fold into an open incident) is acted on in the first ``run_due``."""
        reader = self._store.reader
        async with reader.execute(
            "SELECT id, source, opened_at FROM cases"
            " WHERE protocol = ? AND kind = ? AND closed_at IS NULL ORDER BY id",
            (INCIDENT, EventKind.LINK_LOST.value),
        ) as cursor:
            incident_rows = [tuple(r) for r in await cursor.fetchall()]
        async with reader.execute(
            "SELECT c.protocol, c.source, c.opened_at, c.id FROM cases c"
            " WHERE c.kind = ? AND c.closed_at IS NULL AND c.escalation IS NULL"
            " AND EXISTS (SELECT 1 FROM case_log l WHERE l.case_id = c.id AND l.type = 'held')"
            " ORDER BY c.opened_at, c.id",
            (EventKind.MAINS_LOST.value,),
        ) as cursor:
            held_rows = [tuple(r) for r in await cursor.fetchall()]
        # mains reports old enough that every battery has run out no longer matter, unless
        # an open incident or a held case goes back further
        horizon = iso(now - self.outages.battery_backup[1])
        horizon = min([horizon, *(str(r[2]) for r in incident_rows + held_rows)])
        on_battery: dict[DeviceKey, datetime | None] = {}  # device -> mains lost since
        async with reader.execute(
            "SELECT protocol, source, condition, coalesce(occurred_at, received_at) FROM events"
            " WHERE received_at >= ? AND kind = ? AND code != ? AND protocol != ?"
            " ORDER BY received_at, id",
            (horizon, EventKind.MAINS_LOST.value, SUPERVISION_CODE, INCIDENT),
        ) as cursor:
            async for protocol, source, condition, at in cursor:
                key = (str(protocol), str(source))
                if condition == Condition.RESTORE.value:
                    on_battery[key] = None
                elif on_battery.get(key) is None:
                    on_battery[key] = parse_iso(at)
        # a hold that ran out while alarmd was down: a fresh window from now (the neighbours'
        # reports were delayed by the downtime too), like the start-up grace of link losses
        held: dict[DeviceKey, tuple[datetime, datetime]] = {}  # -> (waits from, reported)
        extend: list[int] = []
        for protocol, source, opened_at, case_id in held_rows:
            reported = at = parse_iso(opened_at)
            if at + self.outages.window <= now:
                at = now
                extend.append(int(case_id))
            held.setdefault((str(protocol), str(source)), (at, reported))
        if extend and self._engine is not None:
            await self._engine.extend_outage_hold(extend, now + self.outages.window)
        affected: list[tuple[DeviceKey, tuple[str, str], str, datetime]] = [
            (key, self._areas[key], MAINS, since)
            for key, since in on_battery.items()
            if since is not None and key in self._areas and key not in held
        ]
        incidents: dict[tuple[str, str], tuple[datetime, list[DeviceKey]]] = {}
        for case_id, source, opened_at in incident_rows:
            group = _area(tuple(str(source).removeprefix("incident:").split(":", 1)))
            members = await self._members(int(case_id))
            incidents[group] = (parse_iso(opened_at), list(members))
            for key, (reasons, since, logged_at) in members.items():
                if reasons is None or LINK not in reasons or key not in self._groups:
                    continue  # back, or not silent, or no longer supervised
                async with reader.execute(
                    "SELECT 1 FROM events WHERE protocol = ? AND source = ? AND received_at > ?"
                    " AND code != ? LIMIT 1",
                    (key[0], key[1], iso(logged_at), SUPERVISION_CODE),
                ) as cursor:
                    if await cursor.fetchone() is not None:
                        continue  # heard from after it was logged silent
                self.core.restore_lost(key, logged_at)
                affected.append((key, group, LINK, since))
        self.outages.restore(
            affected, [(g, *started_members) for g, started_members in incidents.items()]
        )
        resumed: list[OutageAction] = []
        for key, (at, reported) in sorted(held.items(), key=lambda item: item[1]):
            area = self._areas.get(key)
            if area is not None:
                since = on_battery.get(key) or reported
                resumed += self.outages.lost(key, area, at, MAINS, since)
        self._resumed = resumed
        log.info(
            "supervision_outages_restored",
            incidents=len(incidents),
            on_battery=sum(since is not None for since in on_battery.values()),
            held=len(held),
        )

    async def _members(
        self, case_id: int
    ) -> dict[DeviceKey, tuple[list[str] | None, datetime, datetime]]:
        """An incident case's members from its log: device -> (reasons, ``None`` if back;
        since when affected; when that was logged)."""
        members: dict[DeviceKey, tuple[list[str] | None, datetime, datetime]] = {}
        async with self._store.reader.execute(
            "SELECT type, at, data FROM case_log WHERE case_id = ? AND type IN (?, ?) ORDER BY id",
            (case_id, AFFECTED, BACK),
        ) as cursor:
            async for type_, at, data in cursor:
                body = json.loads(data)
                logged_at = parse_iso(at)
                if type_ == BACK:
                    for device in body.get("devices", []):
                        key = _device_key(str(device))
                        if key in members:
                            members[key] = (None, members[key][1], logged_at)
                    continue
                if body.get("opened"):
                    members = {}  # a new incident's whole membership
                for d in body.get("devices", []):
                    since = parse_iso(d["since"])
                    members[_device_key(str(d["device"]))] = (list(d["reasons"]), since, logged_at)
        return members

    async def reload(self) -> None:
        """The directory changed (an import): pick up new and changed devices."""
        await self.load(resume=False)
        self._loop.wake()

    # --- input -----------------------------------------------------------------------------

    def seen(self, protocol: str, source: str) -> None:
        """Any message from a device. Cheap; a device coming back is handled in ``run_due``."""
        restored = self.core.seen((protocol, source), self._clock.now())
        if restored is not None:
            self._restored.append(restored)
            self._loop.wake()

    def events_committed(self, events: object, receipt: object) -> None:
        """Intake's listener: every stored event is a sign of life from its device."""
        assert isinstance(events, list | tuple)
        for event in events:
            if event.protocol == INCIDENT or event.code == SUPERVISION_CODE:
                continue  # what supervision said itself is no sign of life
            self.seen(event.protocol, event.source)
            if event.kind is EventKind.MAINS_LOST and self._engine is not None:
                since = event.occurred_at or event.received_at
                self._mains.append(((event.protocol, event.source), event.condition, since))
                self._loop.wake()

    # --- the loop --------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        if self._engine is not None:
            self._engine.set_outage_hold(None)

    def wake(self) -> None:
        self._loop.wake()

    def _next_due(self) -> datetime | None:
        times = [t for t in (self.core.next_deadline(), self.outages.next_tick()) if t]
        return min(times) if times else None

    async def run_due(self) -> int:
        """Report what is due now; returns how many events were submitted."""
        now = self._clock.now()
        work = _Work()
        resumed, self._resumed = self._resumed, []
        self._outage_events(resumed, now, work)
        restored, self._restored = self._restored, []
        for back in restored:
            work.events.append(self._link_event(back.key, Condition.RESTORE, now, back.lost_at))
            self._outage_events(self.outages.back(back.key, now), now, work)
        mains, self._mains = self._mains, []
        for key, condition, since in mains:
            area = self._areas.get(key)
            if area is None:
                continue  # not in the directory: its case was not held either
            if condition is Condition.RESTORE:
                actions = self.outages.back(key, now, MAINS)
            else:
                actions = self.outages.lost(key, area, now, MAINS, since)
            self._outage_events(actions, now, work)
        while (deadline := self.core.next_deadline()) is not None and deadline <= now:
            for lost in self.core.due(now):
                metrics.DETECTION_SECONDS.observe((now - lost.last_seen).total_seconds())
                group = self._groups.get(lost.key, ("", "-"))
                actions = self.outages.lost(lost.key, group, now, LINK, lost.last_seen)
                self._outage_events(actions, now, work)
        self._outage_events(self.outages.tick(now), now, work)
        self._own_cases_after_close(work, now)
        if work.events:
            await self._intake.submit(work.events)
        if self._engine is not None:
            for source, entries, fold in work.incidents():
                await self._engine.fold_outage((INCIDENT, source), entries, fold)
        metrics.DEVICES_OVERDUE.set(self.core.lost)
        metrics.OUTAGE_INCIDENTS_OPEN.set(self.outages.incidents)
        return len(work.events)

    def _link_event(
        self, key: DeviceKey, condition: Condition, now: datetime, lost_at: datetime
    ) -> Event:
        protocol, source = key
        text = (
            "no message within the supervision interval"
            if condition is Condition.ALARM
            else f"heard from again after {now - lost_at}"
        )
        return Event(
            protocol=protocol,
            source=source,
            kind=EventKind.LINK_LOST,
            condition=condition,
            priority=EventKind.LINK_LOST.default_priority,
            received_at=now,
            dedup_key=f"supervision:{protocol}:{source}:{iso(lost_at)}:{condition.value}",
            raw=b"",
            code=SUPERVISION_CODE,
            text=text,
        )

    def _still_on_battery(self, key: DeviceKey, now: datetime) -> Event:
        """A member still without mains when its incident closed: its own technical case
        (its report's case was folded into the incident)."""
        protocol, source = key
        return Event(
            protocol=protocol,
            source=source,
            kind=EventKind.MAINS_LOST,
            condition=Condition.ALARM,
            priority=EventKind.MAINS_LOST.default_priority,
            received_at=now,
            dedup_key=f"supervision:{protocol}:{source}:{iso(now)}:mains_after_outage",
            raw=b"",
            code=SUPERVISION_CODE,
            text="still on battery (mains lost) after the outage incident closed",
        )

    def _outage_events(self, actions: list[OutageAction], now: datetime, work: _Work) -> None:
        for action in actions:
            if isinstance(action, Individual):
                if LINK in action.reasons and self.core.is_lost(action.key):
                    work.events.append(
                        self._link_event(action.key, Condition.ALARM, now, action.lost_at)
                    )
                # a mains-lost report alone: the engine routes its held case by itself
            elif isinstance(action, Folded):
                tenant, area = _area(action.group)
                if action.affected is not None:
                    work.affected(tenant, area, action.affected)
                if action.reason == MAINS:
                    work.fold(tenant, area, action.key)
            elif isinstance(action, Recovered):
                work.back(*_area(action.group), action.key)
            elif isinstance(action, IncidentOpened):
                tenant, area = _area(action.group)
                log.warning(
                    "outage_incident_opened", tenant=tenant, area=area, devices=len(action.devices)
                )
                work.events.append(
                    _incident_event(
                        tenant,
                        area,
                        Condition.ALARM,
                        now,
                        iso(action.started_at),
                        f"{len(action.devices)} devices in area {area} silent or on"
                        " battery at once",
                        {
                            "devices": " ".join(f"{p}:{s}" for p, s in action.devices),
                            "batteries_from": iso(action.batteries_from),
                            "batteries_by": iso(action.batteries_by),
                        },
                    )
                )
                work.opened(tenant, area, action.affected)
                for affected in action.affected:
                    if MAINS in affected.reasons:
                        work.fold(tenant, area, affected.key)
            elif isinstance(action, IncidentClosed):
                tenant, area = _area(action.group)
                log.info(
                    "outage_incident_closed",
                    tenant=tenant,
                    area=area,
                    still_silent=len(action.still_affected),
                )
                work.events.append(
                    _incident_event(
                        tenant,
                        area,
                        Condition.RESTORE,
                        now,
                        f"{iso(now)}:restore",
                        f"outage over; {len(action.still_affected)} devices still"
                        " silent or on battery",
                    )
                )
                # each gets its own case at the end of the pass, if still affected then
                # (the incident may close half-way through a burst of returns)
                work.after_close += [a.key for a in action.still_affected]

    def _own_cases_after_close(self, work: _Work, now: datetime) -> None:
        for key in dict.fromkeys(work.after_close):
            still = self.outages.affected(key)
            if still is None:
                continue  # back in the same pass: no case for a device that is back
            if LINK in still.reasons and self.core.is_lost(key):
                work.events.append(self._link_event(key, Condition.ALARM, now, now))
            elif MAINS in still.reasons:
                work.events.append(self._still_on_battery(key, now))


class _Work:
    """What one pass of ``run_due`` submits: events, and per incident the log rows that
    say who is affected or back, and the devices whose mains-lost cases are folded in."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.after_close: list[DeviceKey] = []  # members of incidents closed in this pass
        # incident source -> ([(log type, data)], devices to fold), in the order they happened
        self._incidents: dict[str, tuple[list[tuple[str, dict[str, Any]]], list[DeviceKey]]]
        self._incidents = {}

    def _of(
        self, tenant: str, area: str
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[DeviceKey]]:
        return self._incidents.setdefault(f"incident:{tenant}:{area}", ([], []))

    def _entry(self, tenant: str, area: str, type_: str, opened: bool = False) -> dict[str, Any]:
        entries, _ = self._of(tenant, area)
        if not opened and entries and entries[-1][0] == type_:
            return entries[-1][1]  # one log row per pass, not one per device
        data: dict[str, Any] = {"devices": []}
        if type_ == AFFECTED:
            data["opened"] = opened
        entries.append((type_, data))
        return data

    def opened(self, tenant: str, area: str, who: tuple[Affected, ...]) -> None:
        """An incident opened: its whole membership (a restart's new incident for the same
        area, joining the open case, replaces what the case knew)."""
        data = self._entry(tenant, area, AFFECTED, opened=True)
        data["devices"] += [_member(a) for a in who]

    def affected(self, tenant: str, area: str, who: Affected) -> None:
        self._entry(tenant, area, AFFECTED)["devices"].append(_member(who))

    def back(self, tenant: str, area: str, key: DeviceKey) -> None:
        self._entry(tenant, area, BACK)["devices"].append(f"{key[0]}:{key[1]}")

    def fold(self, tenant: str, area: str, key: DeviceKey) -> None:
        self._of(tenant, area)[1].append(key)

    def incidents(
        self,
    ) -> list[tuple[str, list[tuple[str, str, dict[str, Any]]], list[DeviceKey]]]:
        """(incident source, log entries with their messages, devices to fold)."""
        out = []
        for source, (entries, fold) in self._incidents.items():
            rows = []
            for type_, data in entries:
                devices = data["devices"]
                if type_ == BACK:
                    message = f"{len(devices)} device(s) back"
                else:
                    mains = sum(MAINS in d["reasons"] for d in devices)
                    message = (
                        f"{len(devices)} device(s) {'in the outage' if data['opened'] else 'more'}"
                        f": {len(devices) - mains} silent, {mains} mains lost (on battery)"
                    )
                rows.append((type_, message, data))
            out.append((source, rows, fold))
        return out


def _member(who: Affected) -> dict[str, Any]:
    protocol, source = who.key
    return {
        "device": f"{protocol}:{source}",
        "reasons": list(who.reasons),
        "since": iso(who.since),
        "batteries_from": iso(who.batteries_from),
        "batteries_by": iso(who.batteries_by),
    }


AFFECTED = "outage_affected"  # case-log types on an incident: who is affected, who is back
BACK = "outage_back"


def _device_key(name: str) -> DeviceKey:
    """``dc09:1234`` (as the incident's log names a device) -> ``("dc09", "1234")``."""
    protocol, _, source = name.partition(":")
    return protocol, source


def _area(group: object) -> tuple[str, str]:
    """Our outage groups are ``(tenant, area)``; the core takes any hashable."""
    assert isinstance(group, tuple) and len(group) == 2
    return str(group[0]), str(group[1])

"""Line supervision: noticing that a device has gone silent, and a power cut as one incident.

Theory of operation
-------------------
Two pure pieces, both functions of what they are told and ``now`` (no clock, no I/O, no
asyncio); the daemon's shell feeds them messages and ticks and turns what they answer into
``link_lost``/``link_restored`` events through intake and into incident cases.

``Supervisor``: who is overdue
    Each supervised device has a limit (its expected interval plus a grace). Every message
    from it is ``seen(key, now)``: an O(1) update of its last-seen time, nothing more, because
    100,000 devices sending heartbeats must not cost a heap operation each. One heap holds a
    *hint* per device, ``(last_seen + limit, key)``; ``due(now)`` pops the hints that have
    come, and a device that was seen meanwhile is simply pushed again at its real deadline.
    So the heap grows by at most one entry per device, and the work is one pop and one push
    per device per interval, not per message.

    A device reported lost stays lost until its next message: ``seen`` then answers
    ``LinkRestored`` with how long it was silent. ``resume(now, grace)`` after alarmd's own
    downtime: silence while alarmd was down is not the devices' fault, so nothing is reported
    overdue before ``now + grace``, giving every device a full grace to call in.

``OutageTracker``: many at once is one incident
    Link losses and mains-lost reports are grouped by area (tenant and postcode, or a grid
    area from the directory); a device counts once however many reasons it has. A loss is
    first *pending* for ``window``: if ``threshold`` devices of the same group are affected
    within the window, one ``IncidentOpened`` covers them all and later losses or mains-lost
    reports in that group are ``Folded`` into it; a loss still alone when its window has
    passed becomes ``Individual`` (one technical case). A device that comes back (heard
    from, mains restored) while pending never produces a case at all (a flap); a member that
    comes back is ``Recovered``. The incident closes when at most ``1 - close_ratio`` of its
    devices are still affected, and those get ``Individual`` cases. Only link and power
    events pass through here: a real alarm from a device in an affected area never does, so
    it can never be folded or delayed.

    After a restart the shell rebuilds this state from the store (``restore``, with
    ``Supervisor.restore_lost`` for members that were silent), so that a power cut that
    outlives alarmd's own downtime is still one incident and its members still count.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeAlias

__all__ = [
    "BATTERY_BACKUP",
    "LINK",
    "MAINS",
    "Affected",
    "Cleared",
    "DeviceKey",
    "Folded",
    "IncidentClosed",
    "IncidentOpened",
    "Individual",
    "LinkLost",
    "LinkRestored",
    "OutageAction",
    "OutageTracker",
    "Recovered",
    "Supervisor",
]

DeviceKey: TypeAlias = tuple[str, str]  # (protocol, source): "dc09", "1234"
GroupKey: TypeAlias = Hashable
BATTERY_BACKUP = (timedelta(hours=24), timedelta(hours=72))


@dataclass(frozen=True, slots=True)
class LinkLost:
    """``key`` has sent nothing since ``last_seen``; its limit ran out at ``deadline``."""

    key: DeviceKey
    last_seen: datetime
    deadline: datetime


@dataclass(frozen=True, slots=True)
class LinkRestored:
    key: DeviceKey
    lost_at: datetime
    silent_for: timedelta


@dataclass(slots=True)
class _Device:
    limit: timedelta
    last_seen: datetime
    lost_at: datetime | None = None


class Supervisor:
    """Expected heartbeats for many devices, on one heap of hints."""

    def __init__(self) -> None:
        self._devices: dict[DeviceKey, _Device] = {}
        self._heap: list[tuple[datetime, DeviceKey]] = []
        self._not_before: datetime | None = None

    def __len__(self) -> int:
        return len(self._devices)

    @property
    def lost(self) -> int:
        """Devices reported lost and not heard from since."""
        return sum(1 for d in self._devices.values() if d.lost_at is not None)

    def is_lost(self, key: DeviceKey) -> bool:
        """Reported lost and not heard from since."""
        device = self._devices.get(key)
        return device is not None and device.lost_at is not None

    def supervise(
        self,
        key: DeviceKey,
        interval: timedelta,
        grace: timedelta,
        now: datetime,
        last_seen: datetime | None = None,
    ) -> None:
        """Start (or re-configure) supervising ``key``: it must be heard within
        ``interval + grace`` of ``last_seen`` (``now`` if never heard)."""
        if interval <= timedelta(0) or grace < timedelta(0):
            raise ValueError(f"{key}: interval must be positive and grace not negative")
        limit = interval + grace
        device = self._devices.get(key)
        if device is None:
            device = self._devices[key] = _Device(limit, last_seen or now)
        else:
            device.limit = limit
            if last_seen is not None and last_seen > device.last_seen:
                device.last_seen = last_seen
        heapq.heappush(self._heap, (device.last_seen + limit, key))

    def forget(self, key: DeviceKey) -> None:
        """Stop supervising (a device removed); its heap hint is dropped when popped."""
        self._devices.pop(key, None)

    def seen(self, key: DeviceKey, now: datetime) -> LinkRestored | None:
        """Any message from ``key``. Cheap: no heap work. ``LinkRestored`` if it was lost."""
        device = self._devices.get(key)
        if device is None:
            return None
        previous = device.last_seen
        if now > previous:
            device.last_seen = now
        if device.lost_at is None:
            return None
        lost_at = device.lost_at
        device.lost_at = None
        heapq.heappush(self._heap, (device.last_seen + device.limit, key))
        return LinkRestored(key, lost_at, now - previous)

    def restore_lost(self, key: DeviceKey, lost_at: datetime) -> None:
        """After a restart: ``key`` was reported lost before alarmd stopped (a member of an
        open outage incident) and has not been heard from since; it stays lost until its
        next message, which ``seen`` answers with ``LinkRestored``."""
        device = self._devices.get(key)
        if device is not None:
            device.lost_at = lost_at

    def resume(self, now: datetime, grace: timedelta) -> None:
        """After alarmd's own downtime: report nobody overdue before ``now + grace``."""
        self._not_before = now + grace

    def next_deadline(self) -> datetime | None:
        """When ``due`` may next have something to say (for the shell's sleep)."""
        if not self._heap:
            return None
        first = self._heap[0][0]
        if self._not_before is not None and first < self._not_before:
            return self._not_before
        return first

    def due(self, now: datetime, max_pops: int = 2000) -> list[LinkLost]:
        """Devices whose limit has run out by ``now``, each reported once until seen again.

        At most ``max_pops`` hints are looked at per call, so one call never holds the event
        loop long (right after start every device's first hint falls due together: 100,000
        at once took 0.23 s in one call); the shell calls again while ``next_deadline()``
        is not in the future."""
        if self._not_before is not None:
            if now < self._not_before:
                return []
            # the grace after downtime is over: anyone still silent is judged from now on
            # against the later of their deadline and the end of the grace
            self._not_before = None
        lost: list[LinkLost] = []
        heap = self._heap
        pops = 0
        while heap and heap[0][0] <= now and pops < max_pops:
            pops += 1
            deadline, key = heapq.heappop(heap)
            device = self._devices.get(key)
            if device is None or device.lost_at is not None:
                continue  # forgotten, or already reported
            real = device.last_seen + device.limit
            if real > now:
                if real != deadline:
                    heapq.heappush(heap, (real, key))  # heard from meanwhile
                continue
            device.lost_at = now  # a second hint for the same silence finds it lost
            lost.append(LinkLost(key, device.last_seen, real))
        return lost


# --------------------------------------------------------------------------- outages

LINK = "link_lost"  # a reason a device is affected: silent past its limit
MAINS = "mains_lost"  # ... or it reported that its mains power is gone (on battery)


@dataclass(frozen=True, slots=True)
class Affected:
    """A device affected by an outage: why (``link_lost``, ``mains_lost``, or both), since
    when (the earliest of its reasons), and when its battery back-up may run out."""

    key: DeviceKey
    reasons: tuple[str, ...]
    since: datetime
    batteries_from: datetime
    batteries_by: datetime


@dataclass(frozen=True, slots=True)
class Individual:
    """One device lost on its own: open its own technical case (``reasons``: why it is
    affected; a ``mains_lost`` report already has its held case, which routes by itself)."""

    key: DeviceKey
    lost_at: datetime
    reasons: tuple[str, ...] = (LINK,)


@dataclass(frozen=True, slots=True)
class IncidentOpened:
    """Many devices of ``group`` lost at once: one incident for all of them."""

    group: GroupKey
    devices: tuple[DeviceKey, ...]
    started_at: datetime
    batteries_from: datetime  # the earliest a user's battery back-up may run out
    batteries_by: datetime  # the latest
    affected: tuple[Affected, ...] = ()


@dataclass(frozen=True, slots=True)
class Folded:
    """A further loss (or mains-lost report) in a group with an open incident: part of it,
    no case of its own."""

    key: DeviceKey
    group: GroupKey
    reason: str = LINK
    affected: Affected | None = None


@dataclass(frozen=True, slots=True)
class Recovered:
    """A member of an open incident is no longer affected (heard from, mains back)."""

    key: DeviceKey
    group: GroupKey


@dataclass(frozen=True, slots=True)
class IncidentClosed:
    """Enough devices are back; ``still_affected`` get their own technical cases."""

    group: GroupKey
    still_affected: tuple[Affected, ...]

    @property
    def still_silent(self) -> tuple[DeviceKey, ...]:
        return tuple(a.key for a in self.still_affected)


@dataclass(frozen=True, slots=True)
class Cleared:
    """A device came back before anyone was told: nothing to report."""

    key: DeviceKey


OutageAction: TypeAlias = (
    Individual | IncidentOpened | Folded | Recovered | IncidentClosed | Cleared
)


@dataclass(slots=True)
class _Group:
    pending: dict[DeviceKey, datetime] = field(default_factory=dict)  # lost, not yet reported
    incident: dict[DeviceKey, bool] | None = None  # member -> still affected
    started_at: datetime | None = None


class OutageTracker:
    """Folds simultaneous losses in one area into one incident (see the module notes).

    A device is *affected* while it has at least one reason: ``link_lost`` (from
    ``Supervisor.due``) or ``mains_lost`` (the device's own report). It counts once toward
    its group however many reasons it has, and is back only when its last reason ends
    (``back(key, now, reason)``: heard from again, or a mains-restored report)."""

    def __init__(
        self,
        threshold: int,
        window: timedelta,
        close_ratio: float = 0.8,
        battery_backup: tuple[timedelta, timedelta] = BATTERY_BACKUP,
    ) -> None:
        if threshold < 2 or window <= timedelta(0) or not 0 < close_ratio <= 1:
            raise ValueError("threshold >= 2, a positive window, 0 < close_ratio <= 1")
        self.threshold = threshold
        self.window = window
        self.close_ratio = close_ratio
        self.battery_backup = battery_backup
        self._groups: dict[GroupKey, _Group] = {}
        self._group_of: dict[DeviceKey, GroupKey] = {}
        self._why: dict[DeviceKey, dict[str, datetime]] = {}  # affected -> reason -> since

    @property
    def incidents(self) -> int:
        return sum(1 for g in self._groups.values() if g.incident is not None)

    def affected(self, key: DeviceKey) -> Affected | None:
        """Why and since when ``key`` is affected, ``None`` if it is not."""
        why = self._why.get(key)
        if not why:
            return None
        since = min(why.values())
        low, high = self.battery_backup
        return Affected(key, tuple(sorted(why)), since, since + low, since + high)

    def lost(
        self,
        key: DeviceKey,
        group: GroupKey,
        now: datetime,
        reason: str = LINK,
        since: datetime | None = None,
    ) -> list[OutageAction]:
        """``key`` is affected for ``reason`` (``since``: when that began, ``now`` if not
        known, e.g. a silent device's last message)."""
        why = self._why.setdefault(key, {})
        fresh = reason not in why
        if fresh:
            why[reason] = since or now
        g = self._groups.setdefault(group, _Group())
        self._group_of[key] = group
        if g.incident is not None:
            # every report from a member is folded again (a repeated mains-lost report
            # after the first was folded opens a held case that must be folded too)
            g.incident[key] = True
            return [Folded(key, group, reason, self.affected(key))]
        if key in g.pending or not fresh:
            return []  # counted already, or it has its own case for this reason
        g.pending[key] = now
        recent = [k for k, at in g.pending.items() if now - at < self.window]
        if len(recent) < self.threshold:
            return []
        started = min(g.pending[k] for k in recent)
        g.incident = dict.fromkeys(g.pending, True)
        g.started_at = started
        devices = tuple(g.pending)
        g.pending.clear()
        low, high = self.battery_backup
        affected = tuple(a for k in devices if (a := self.affected(k)) is not None)
        return [IncidentOpened(group, devices, started, started + low, started + high, affected)]

    def restore(
        self,
        affected: Iterable[tuple[DeviceKey, GroupKey, str, datetime]],
        incidents: Iterable[tuple[GroupKey, datetime, Iterable[DeviceKey]]],
    ) -> None:
        """Rebuild what was known before a restart (replaces everything known so far).

        ``affected``: (device, its group, reason, since when) for every reason a device is
        still affected for whose loss was already dealt with (its own case, or a member of
        an incident). ``incidents``: each open incident's group, start and members, those
        already back included; a member is still affected if ``affected`` names it.
        Losses that were still waiting for the window are not here: feed them to ``lost``
        afterwards, oldest first, with ``now`` the time each began to wait, then ``tick``."""
        self._groups.clear()
        self._group_of.clear()
        self._why.clear()
        for key, group, reason, since in affected:
            why = self._why.setdefault(key, {})
            why[reason] = min(since, why.get(reason, since))
            self._group_of[key] = group
        for group, started_at, members in incidents:
            g = self._groups.setdefault(group, _Group())
            g.started_at = started_at
            g.incident = {}
            for key in members:
                still = key in self._why
                g.incident[key] = still
                if still:
                    self._group_of[key] = group

    def tick(self, now: datetime) -> list[OutageAction]:
        """Losses still alone after the window become individual technical cases."""
        out: list[OutageAction] = []
        for g in self._groups.values():
            ripe = [k for k, at in g.pending.items() if now - at >= self.window]
            for key in ripe:
                reasons = tuple(sorted(self._why.get(key, {LINK: now})))
                out.append(Individual(key, g.pending.pop(key), reasons))
        return out

    def back(self, key: DeviceKey, now: datetime, reason: str = LINK) -> list[OutageAction]:
        """``key``'s ``reason`` is over (heard from again; mains restored)."""
        why = self._why.get(key)
        if why is None or reason not in why:
            return []
        del why[reason]
        if why:
            return []  # still affected for another reason (silent, or still on battery)
        del self._why[key]
        group = self._group_of.pop(key, None)
        if group is None:
            return []
        g = self._groups[group]
        if key in g.pending:
            del g.pending[key]
            return [Cleared(key)]
        if g.incident is None or key not in g.incident:
            return []  # it had its own case; the shell closes that
        g.incident[key] = False
        silent = [k for k, s in g.incident.items() if s]
        back = len(g.incident) - len(silent)
        if back + 1e-9 < self.close_ratio * len(g.incident):  # 1e-9: 0.8 * 1000 in floats
            return [Recovered(key, group)]
        g.incident = None
        g.started_at = None
        still = tuple(a for k in silent if (a := self.affected(k)) is not None)
        return [Recovered(key, group), IncidentClosed(group, still)]

    def next_tick(self) -> datetime | None:
        """When ``tick`` may next turn a pending loss into an individual case."""
        times = [at for g in self._groups.values() for at in g.pending.values()]
        return min(times) + self.window if times else None

"""Rules: which service mode and escalation policy apply to one alarm, and why. Pure.

Theory of operation
-------------------
``decide(config, facts, now)`` is a function of its arguments: no clock, no I/O, nothing
fetched (invariant 5). The engine calls it once per new case and snapshots the result.

1. No tenant (an unregistered source), or a tenant without a routing file: the response
   service, the centre at once. Invariant 3: such an alarm is shown to operators, never
   dropped, whatever any tenant says.
2. Informational events (test, cancel, carer present, check-out) match no route: they open
   no case of their own, and if one is asked for they go to the centre, never ringing.
3. Otherwise the tenant's routes are tried in order and the first whose ``match`` holds
   wins (as in Alertmanager). A route with ``windows`` holds while any of them is active at
   ``now``, and never while one of its ``not_windows`` is.
4. The plan's mode override, for alarms only (see ``alarmd.routing.config``'s notes).
5. Technical events: ``queue="technical"`` (the console lists them apart and never rings for
   them, so a night-shift operator is not woken) unless the route says ``wake_operators:
   true``, which puts them in the ``alarm`` queue. A route's ``hold_outside: <window>`` sets
   ``hold_until`` to the next instant the window is active (``None`` if it is active now):
   the engine holds the first notification until then. Only technical events are ever held.
6. No route matched: the response service, as the safety net (invariant 3).

Every ``Decision`` carries a policy whose last stop is the centre's operators
(``escalation`` guarantees it: after the last step comes ``AlertCentre``, which repeats until
someone accepts), so whatever a configuration says, an alarm ends with a human.

Cost (it runs per alarm): windows are parsed and policies built at load time. Which windows
are active is looked up in a table per local date (built once per tenant and day, see
``_Day``), a held notice's next opening is memoised per segment of that table, routes are
compared on frozensets, and the explanation is a handful of short strings. Measured: about
15 µs per call for a tenant of ten routes and six windows once the day's table exists,
about 30 µs when every call falls on a new day.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from alarmd.model import Category, Priority
from alarmd.routing.config import Match, Route, RoutingConfig, TenantConfig
from alarmd.routing.decision import Decision, Mode, Queue, RouteFacts
from alarmd.routing.escalation import EscalationPolicy, Recipient, span
from alarmd.routing.schedules import (
    OSLO,
    AnnualDate,
    next_change,
    public_holidays,
    window_intervals,
)

__all__ = [
    "INFORMATIONAL",
    "NO_TENANT_ROUTING",
    "SAFETY_NET",
    "UNREGISTERED",
    "active_windows",
    "decide",
    "first_recipients",
    "mismatch",
    "recipient_label",
]

# Decision.rule when no route of the tenant decided.
UNREGISTERED = "unregistered-source"
NO_TENANT_ROUTING = "no-tenant-routing"
INFORMATIONAL = "informational"
SAFETY_NET = "safety-net"

# A window that does not open within NEXT_CHANGE_HORIZON (a long closure) is looked for
# this far ahead before the notice is delivered at once rather than held for ever.
_HOLD_SEARCH = timedelta(days=400)


def decide(config: RoutingConfig, facts: RouteFacts, now: datetime) -> Decision:
    """Where the alarm described by ``facts`` goes at ``now`` (aware), and why.

    Never drops an alarm and never raises for any ``facts``: every answer ends at the centre.
    Raises ``ValueError`` only for a naive ``now`` (a programming error).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"decide needs an aware datetime, got naive {now!r}")
    # Through UTC, as schedules does: an Oslo datetime naming a skipped reading is normalised.
    local = now.astimezone(UTC).astimezone(OSLO)
    technical = facts.kind.category is Category.TECHNICAL
    queue: Queue = "alarm" if facts.kind.category is Category.ALARM else "technical"

    tenant = config.tenants.get(facts.tenant) if facts.tenant is not None else None
    if facts.tenant is None or not facts.registered:
        context = _context(facts, local, _is_holiday(local.date(), None), ())
        why = "unregistered source: shown to the centre's operators, flagged (invariant 3)"
        return _response(config, UNREGISTERED, queue, (context, why))
    if tenant is None:
        context = _context(facts, local, _is_holiday(local.date(), None), ())
        why = f"tenant {facts.tenant} has no routing configuration: the centre takes it"
        return _response(config, NO_TENANT_ROUTING, queue, (context, why))

    day = _day(tenant, local.date())
    segment = bisect_right(day.starts, local.replace(tzinfo=None, fold=0)) - 1
    active, active_set = day.active[segment], day.active_sets[segment]
    context = _context(facts, local, day.holiday, active)
    if facts.kind.category is Category.INFO:
        why = "informational event: no route applies; shown to the centre's operators, no ring"
        return _response(config, INFORMATIONAL, "technical", (context, why))

    route = next((r for r in tenant.routes if _matches(r.match, facts, active_set)), None)
    if route is None:
        why = "no route matched; the centre takes it (safety net, invariant 3)"
        return _response(config, SAFETY_NET, queue, (context, why))

    lines = [context, f"route {route.name!r} matched ({route.match.describe()})"]
    mode, policy, policy_name = route.mode, route.policy, route.policy_name
    if facts.plan_mode is not None and facts.plan_mode != mode and not technical:
        mode, policy, policy_name, note = _plan_override(config, tenant, route, facts.plan_mode)
        lines.append(note)
    lines += _describe(mode, policy, policy_name)

    hold_until = None
    if technical:
        if route.wake_operators:
            queue = "alarm"
            lines.append(
                "technical event, wake_operators: true: in the alarm queue, operators alerted"
            )
        else:
            queue = "technical"
            lines.append("technical event: technical queue, operators are not woken")
        if route.hold_outside is not None:
            hold_until, note = _held(tenant, day, segment, route.hold_outside, now)
            lines.append(note)
    return Decision(
        mode=mode,
        policy=policy,
        rule=route.name,
        queue=queue,
        hold_until=hold_until,
        explanation=tuple(lines),
    )


def first_recipients(decision: Decision) -> tuple[str, ...]:
    """The first step's recipients as ``kind:ref`` (``team:plan``, ``next_of_kin:1``), or
    ``("operators",)`` when the centre is first (the response service)."""
    steps = decision.policy.steps
    if not steps:
        return ("operators",)
    return tuple(recipient_label(r) for r in steps[0].recipients)


def recipient_label(recipient: Recipient) -> str:
    """``team:plan``, ``next_of_kin:1``; the operators' pool is ``operators``."""
    if recipient.kind == "operators":
        return "operators"
    return f"{recipient.kind}:{recipient.ref}"


def mismatch(route: Route, facts: RouteFacts, active: frozenset[str]) -> str | None:
    """Why ``route`` does not match (for ``routes explain``); ``None`` if it does."""
    m = route.match
    kind = facts.kind
    if kind.category is Category.INFO:
        return "informational events match no route"
    if m.kinds is not None and kind not in m.kinds:
        return f"kind {kind.value} is not one of {', '.join(sorted(m.kinds))}"
    if m.category is not None and kind.category is not m.category:
        return f"{kind.value} is {kind.category.value}, the route wants {m.category.value}"
    if m.min_priority is not None and facts.priority < m.min_priority:
        return f"priority {facts.priority.name.lower()} is below {m.min_priority.name.lower()}"
    if m.groups is not None and facts.user_group not in m.groups:
        return f"group {facts.user_group or '(none)'} is not one of {', '.join(sorted(m.groups))}"
    if m.locations is not None and facts.location not in m.locations:
        return f"location {facts.location} is not one of {', '.join(sorted(m.locations))}"
    if m.windows and not any(w in active for w in m.windows):
        return f"none of its windows is active ({', '.join(m.windows)})"
    blocking = [w for w in m.not_windows if w in active]
    if blocking:
        return f"window {', '.join(blocking)} is active (not_windows)"
    if m.plan_mode is not None and facts.plan_mode != m.plan_mode:
        return f"plan mode is {facts.plan_mode or '(none)'}, the route wants {m.plan_mode}"
    return None


# --- helpers -------------------------------------------------------------------------------


def _matches(m: Match, facts: RouteFacts, active: frozenset[str]) -> bool:
    """The hot path of ``mismatch``: the same tests, no strings."""
    kind = facts.kind
    if kind.category is Category.INFO:
        return False
    if m.kinds is not None and kind not in m.kinds:
        return False
    if m.category is not None and kind.category is not m.category:
        return False
    if m.min_priority is not None and facts.priority < m.min_priority:
        return False
    if m.groups is not None and facts.user_group not in m.groups:
        return False
    if m.locations is not None and facts.location not in m.locations:
        return False
    if m.windows and active.isdisjoint(m.windows):
        return False
    if m.not_windows and not active.isdisjoint(m.not_windows):
        return False
    return m.plan_mode is None or facts.plan_mode == m.plan_mode


def _response(config: RoutingConfig, rule: str, queue: Queue, lines: tuple[str, ...]) -> Decision:
    policy = config.centre.response_policy
    return Decision(
        mode="response",
        policy=policy,
        rule=rule,
        queue=queue,
        explanation=(*lines, *_describe("response", policy, None)),
    )


def _plan_override(
    config: RoutingConfig, tenant: TenantConfig, route: Route, plan_mode: Mode
) -> tuple[Mode, EscalationPolicy, str | None, str]:
    """The plan's mode wins over the route's, for alarms (``decide`` never asks for others)."""
    prefix = f"plan override: {route.mode} -> {plan_mode} (the user's response plan)"
    if plan_mode == "response":
        return "response", config.centre.response_policy, None, prefix
    if route.mode != "response":
        return plan_mode, route.policy, route.policy_name, prefix
    if tenant.plan_policy is not None:
        policy = tenant.policies[tenant.plan_policy]
        return (
            plan_mode,
            policy,
            tenant.plan_policy,
            f"{prefix}, plan_policy {tenant.plan_policy!r}",
        )
    note = (
        f"the plan asks for {plan_mode}, but the tenant has no plan_policy:"
        " the response service is kept"
    )
    return route.mode, route.policy, route.policy_name, note


def _held(
    tenant: TenantConfig, day: _Day, segment: int, name: str, now: datetime
) -> tuple[datetime | None, str]:
    """``_hold`` memoised: within one segment of the day at one UTC offset the window is
    closed (or open) throughout, so the next opening is the same for every instant in it.
    (The offset is part of the key because in the repeated hour of October one wall-clock
    segment is two stretches of real time, each with its own next opening.)"""
    if name in day.active_sets[segment]:
        return None, f"window {name!r} is active: delivered now"
    key = (name, segment, now.astimezone(OSLO).utcoffset())
    found = day.holds.get(key)
    if found is None:
        found = day.holds[key] = _hold(tenant, name, now)
    return found


def _hold(tenant: TenantConfig, name: str, now: datetime) -> tuple[datetime | None, str]:
    """The next instant window ``name`` (closed at ``now``) opens, and the explanation."""
    window = tenant.windows[name]
    opens = next_change(window, now)
    if opens is None:  # closed for more than NEXT_CHANGE_HORIZON: look further
        found = window_intervals(window, now, now + _HOLD_SEARCH)
        opens = found[0][0] if found else None
    if opens is None:
        return None, f"window {name!r} never opens: delivered now, not held"
    return opens, f"held until {_local(opens)} (window {name!r} opens)"


def _context(facts: RouteFacts, local: datetime, holiday: bool, active: tuple[str, ...]) -> str:
    who = f"tenant {facts.tenant}" if facts.tenant is not None else "no tenant"
    text = f"{who}, {facts.kind.value} ({_PRIORITY_NAMES[facts.priority]})"
    text += f", location {facts.location}"
    if facts.user_group is not None:
        text += f", group {facts.user_group}"
    if facts.plan_mode is not None:
        text += f", plan mode {facts.plan_mode}"
    # strftime is slow; this runs for every alarm.
    when = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
        f" {local.hour:02d}:{local.minute:02d} Europe/Oslo"
    )
    windows = ", ".join(active) or "none"
    return f"{text}, {when} (holiday: {'yes' if holiday else 'no'}; active windows: {windows})"


_PRIORITY_NAMES = {p: p.name.lower() for p in Priority}


# --- which windows are active: a table per local date ----------------------------------------
# Window.contains costs some 15 µs a window; decide would pay it for every window of the
# tenant on every alarm. Instead each local date gets a table, built once from
# Window.wall_intervals (the same occurrences contains judges, so the same answers): the
# day cut at every window boundary, with the windows active in each segment. A lookup is
# a bisect. Tables are kept per TenantConfig (``day_memo``), at most _DAYS_KEPT of them.

_DAYS_KEPT = 64
_MIDNIGHT = time(0, 0)


@dataclass(frozen=True, slots=True)
class _Day:
    starts: tuple[datetime, ...]  # naive wall-clock segment starts; the first is midnight
    active: tuple[tuple[str, ...], ...]  # the windows active in each segment, in file order
    active_sets: tuple[frozenset[str], ...]
    holiday: bool
    # (window, segment, UTC offset) -> _hold's answer, filled as technical notices come
    holds: dict[tuple[str, int, timedelta | None], tuple[datetime | None, str]] = field(
        default_factory=dict, compare=False
    )


def _day(tenant: TenantConfig, day: date) -> _Day:
    memo = tenant.day_memo
    found = memo.get(day)
    if found is None:
        if len(memo) >= _DAYS_KEPT:
            memo.clear()
        found = memo[day] = _build_day(tenant, day)
    assert isinstance(found, _Day)
    return found


def _build_day(tenant: TenantConfig, day: date) -> _Day:
    midnight = datetime.combine(day, _MIDNIGHT)
    end = midnight + timedelta(days=1)
    # occurrences that started the day before may still run into this day
    spans = {
        name: window.wall_intervals(day - timedelta(days=1), day)
        for name, window in tenant.windows.items()
    }
    cuts = {midnight}
    for intervals in spans.values():
        for begin, finish in intervals:
            cuts.update(t for t in (begin, finish) if midnight < t < end)
    starts = tuple(sorted(cuts))
    active = tuple(
        tuple(name for name, iv in spans.items() if any(b <= s < e for b, e in iv)) for s in starts
    )
    return _Day(starts, active, tuple(frozenset(a) for a in active), _is_holiday(day, tenant))


def active_windows(tenant: TenantConfig, now: datetime) -> tuple[str, ...]:
    """The tenant's windows active at ``now`` (aware), in file order: what
    ``Schedule.active`` answers, from the per-day tables ``decide`` uses."""
    local = now.astimezone(UTC).astimezone(OSLO)
    day = _day(tenant, local.date())
    return day.active[bisect_right(day.starts, local.replace(tzinfo=None, fold=0)) - 1]


def _is_holiday(day: date, tenant: TenantConfig | None) -> bool:
    if day in public_holidays(day.year):
        return True
    if tenant is None:
        return False
    annual = AnnualDate(day.month, day.day)
    return any(
        day in w.extra_holidays or annual in w.extra_holidays for w in tenant.windows.values()
    )


def _local(instant: datetime) -> str:
    return f"{instant.astimezone(OSLO):%Y-%m-%d %H:%M} Europe/Oslo"


def _describe(mode: Mode, policy: EscalationPolicy, name: str | None) -> list[str]:
    centre = policy.centre
    pool = f"operators' pool, accept within {span(centre.accept_within)}"
    if not policy.steps:
        if mode == "response":
            return [f"mode response: {pool}"]
        return [f"mode {mode}, policy {name!r} has no steps: {pool}"]
    lines = [f"mode {mode}, policy {name!r}:"]
    for index, s in enumerate(policy.steps, 1):
        who = ", ".join(recipient_label(r) for r in s.recipients)
        every = " (all must accept)" if s.require_all else ""
        lines.append(
            f"  step {index}: {who} via {', '.join(s.channels)},"
            f" accept within {span(s.accept_within)}{every}"
        )
    role = "backup" if mode == "routing_with_backup" else "safety net"
    lines.append(f"  then the centre ({role}): {pool}")
    return lines

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

Cost: windows are parsed and policies built at load time; here each window of the tenant is
evaluated once (for matching and for the explanation), routes are compared on frozensets,
and the explanation is a handful of short strings. See ``bench`` note in the report of this
module's commit: about 20-40 µs for a tenant with ten routes.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from alarmd.model import Category
from alarmd.routing.config import Match, Route, RoutingConfig, TenantConfig
from alarmd.routing.decision import Decision, Mode, Queue, RouteFacts
from alarmd.routing.escalation import EscalationPolicy, Recipient
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
    local = now.astimezone(OSLO)
    technical = facts.kind.category is Category.TECHNICAL
    queue: Queue = "alarm" if facts.kind.category is Category.ALARM else "technical"

    tenant = config.tenants.get(facts.tenant) if facts.tenant is not None else None
    if facts.tenant is None or not facts.registered:
        context = _context(facts, local, None, ())
        why = "unregistered source: shown to the centre's operators, flagged (invariant 3)"
        return _response(config, UNREGISTERED, queue, (context, why))
    if tenant is None:
        context = _context(facts, local, None, ())
        why = f"tenant {facts.tenant} has no routing configuration: the centre takes it"
        return _response(config, NO_TENANT_ROUTING, queue, (context, why))

    active = tuple(name for name, window in tenant.windows.items() if window.contains(now))
    context = _context(facts, local, tenant, active)
    if facts.kind.category is Category.INFO:
        why = "informational event: no route applies; shown to the centre's operators, no ring"
        return _response(config, INFORMATIONAL, "technical", (context, why))

    active_set = frozenset(active)
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
            lines.append(
                "technical event, wake_operators: true: in the alarm queue, operators alerted"
            )
        else:
            queue = "technical"
            lines.append("technical event: technical queue, operators are not woken")
        if route.hold_outside is not None:
            hold_until, note = _hold(tenant, route.hold_outside, now)
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


def _hold(tenant: TenantConfig, name: str, now: datetime) -> tuple[datetime | None, str]:
    window = tenant.windows[name]
    if window.contains(now):
        return None, f"window {name!r} is active: delivered now"
    opens = next_change(window, now)
    if opens is None:  # closed for more than NEXT_CHANGE_HORIZON: look further
        found = window_intervals(window, now, now + _HOLD_SEARCH)
        opens = found[0][0] if found else None
    if opens is None:
        return None, f"window {name!r} never opens: delivered now, not held"
    return opens, f"held until {_local(opens)} (window {name!r} opens)"


def _context(
    facts: RouteFacts, local: datetime, tenant: TenantConfig | None, active: tuple[str, ...]
) -> str:
    who = f"tenant {facts.tenant}" if facts.tenant is not None else "no tenant"
    parts = [who, f"{facts.kind.value} ({facts.priority.name.lower()})"]
    parts.append(f"location {facts.location}")
    if facts.user_group is not None:
        parts.append(f"group {facts.user_group}")
    if facts.plan_mode is not None:
        parts.append(f"plan mode {facts.plan_mode}")
    holiday = "yes" if _is_holiday(local.date(), tenant) else "no"
    windows = ", ".join(active) or "none"
    when = f"{local:%Y-%m-%d %H:%M} Europe/Oslo (holiday: {holiday}; active windows: {windows})"
    return ", ".join(parts) + f", {when}"


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


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _describe(mode: Mode, policy: EscalationPolicy, name: str | None) -> list[str]:
    centre = policy.centre
    pool = f"operators' pool, accept within {_span(centre.accept_within)}"
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
            f" accept within {_span(s.accept_within)}{every}"
        )
    role = "backup" if mode == "routing_with_backup" else "safety net"
    lines.append(f"  then the centre ({role}): {pool}")
    return lines

"""Rules: where an alarm goes, over the two example tenants and small made-up ones.

Times are Europe/Oslo wall-clock readings unless they say UTC. The properties hold the
per-day window tables and the memoised holds of ``rules`` to ``schedules`` itself
(``Window.contains``, ``next_change``), daylight-saving days included.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmd.config import load_config
from alarmd.model import EventKind, Priority
from alarmd.routing.config import RoutingConfig, default_routing, load_routing, tenant_from_data
from alarmd.routing.decision import Decision, Location, Mode, RouteFacts
from alarmd.routing.escalation import Recipient
from alarmd.routing.rules import (
    INFORMATIONAL,
    NO_TENANT_ROUTING,
    SAFETY_NET,
    UNREGISTERED,
    active_windows,
    decide,
    first_recipients,
    mismatch,
)
from alarmd.routing.schedules import OSLO, Schedule, next_change, window_intervals

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "alarmd.example.yaml"
CONFIG = load_routing(load_config(EXAMPLE), EXAMPLE)
KOMMUNE, BYDEL = "eksempel-kommune", "demo-bydel"


def oslo(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=OSLO)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ask(
    at: str,
    kind: EventKind = EventKind.FALL,
    tenant: str | None = KOMMUNE,
    *,
    location: Location = "home",
    plan_mode: Mode | None = None,
    group: str | None = None,
    registered: bool = True,
    config: RoutingConfig = CONFIG,
) -> Decision:
    facts = RouteFacts(
        tenant=tenant,
        kind=kind,
        priority=kind.default_priority,
        user_group=group,
        plan_mode=plan_mode,
        location=location,
        registered=registered,
    )
    return decide(config, facts, oslo(at))


def with_tenant(data: dict[str, Any]) -> RoutingConfig:
    tenant = tenant_from_data(data, webhooks=())
    return RoutingConfig(
        centre=default_routing().centre, tenants={tenant.slug: tenant}, webhooks={}
    )


# --- the example tenants -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "kind", "location", "mode", "rule", "first"),
    [
        # weekday daytime: the plan's home-care team, then next of kin, then the centre
        (
            "2026-11-24T14:00",
            EventKind.FALL,
            "home",
            "routing_with_backup",
            "day-routing",
            ("team:plan",),
        ),
        (
            "2026-11-24T08:00",
            EventKind.ASSISTANCE,
            "care_home",
            "routing_with_backup",
            "day-routing",
            ("team:plan",),
        ),
        (
            "2026-11-24T21:59",
            EventKind.FALL,
            "home",
            "routing_with_backup",
            "day-routing",
            ("team:plan",),
        ),
        # night
        ("2026-11-24T22:00", EventKind.FALL, "home", "response", "night-response", ("operators",)),
        ("2026-11-25T07:59", EventKind.FALL, "home", "response", "night-response", ("operators",)),
        # public holidays: 17 May (a Monday in 2027), Ascension Day 2026 (a Thursday)
        (
            "2027-05-17T10:00",
            EventKind.FALL,
            "home",
            "response",
            "rest-day-response",
            ("operators",),
        ),
        (
            "2026-05-14T10:00",
            EventKind.FALL,
            "home",
            "response",
            "rest-day-response",
            ("operators",),
        ),
        # 24 and 31 December are holidays in this municipality; 23 December is not
        (
            "2026-12-24T12:00",
            EventKind.FALL,
            "home",
            "response",
            "rest-day-response",
            ("operators",),
        ),
        (
            "2026-12-31T09:00",
            EventKind.FALL,
            "home",
            "response",
            "rest-day-response",
            ("operators",),
        ),
        (
            "2026-12-23T12:00",
            EventKind.FALL,
            "home",
            "routing_with_backup",
            "day-routing",
            ("team:plan",),
        ),
        ("2026-12-24T22:00", EventKind.FALL, "home", "response", "night-response", ("operators",)),
        # weekend daytime
        (
            "2026-11-28T12:00",
            EventKind.FALL,
            "home",
            "response",
            "rest-day-response",
            ("operators",),
        ),
        # away from home, and fire, go to the centre at any hour
        ("2026-11-24T14:00", EventKind.FALL, "away", "response", "away-to-centre", ("operators",)),
        (
            "2026-11-24T14:00",
            EventKind.FIRE,
            "home",
            "response",
            "fire-and-gas-to-centre",
            ("operators",),
        ),
        # the daylight-saving days, in the daytime (a Sunday: rest day) and at night
        (
            "2026-03-29T12:00",
            EventKind.FALL,
            "home",
            "response",
            "rest-day-response",
            ("operators",),
        ),
        (
            "2026-03-30T09:00",
            EventKind.FALL,
            "home",
            "routing_with_backup",
            "day-routing",
            ("team:plan",),
        ),
        ("2026-10-25T02:30", EventKind.FALL, "home", "response", "night-response", ("operators",)),
    ],
)
def test_eksempel_kommune(
    at: str, kind: EventKind, location: Location, mode: Mode, rule: str, first: tuple[str, ...]
) -> None:
    decision = ask(at, kind, location=location)
    assert (decision.mode, decision.rule, first_recipients(decision)) == (mode, rule, first)
    assert decision.queue == "alarm" and decision.hold_until is None


def test_routing_with_backup_policy_ends_at_the_centre() -> None:
    decision = ask("2026-11-24T14:00")
    steps = decision.policy.steps
    assert [s.recipients for s in steps] == [
        (Recipient("team", "plan"),),
        (Recipient("next_of_kin", "1"),),
    ]
    assert [s.accept_within for s in steps] == [timedelta(minutes=5)] * 2
    assert decision.policy.centre == CONFIG.centre.operators


def test_response_is_the_centre_at_once() -> None:
    decision = ask("2026-11-24T22:00")
    assert decision.policy.steps == ()
    assert decision.policy is CONFIG.centre.response_policy
    assert decision.policy.accepted_deadline == timedelta(hours=1)


@pytest.mark.parametrize("at", ["2026-11-24T03:00", "2026-11-24T14:00", "2026-12-24T10:00"])
def test_demo_bydel_is_response_service(at: str) -> None:
    for kind in (EventKind.FALL, EventKind.ASSISTANCE, EventKind.FIRE):
        decision = ask(at, kind, BYDEL)
        assert (decision.mode, decision.rule) == ("response", "every-alarm-to-centre")
        assert first_recipients(decision) == ("operators",)


# --- technical events ----------------------------------------------------------------------


def test_technical_in_office_hours_goes_to_the_supplier_now() -> None:
    decision = ask("2026-11-24T10:00", EventKind.BATTERY_LOW)
    assert (decision.mode, decision.rule, decision.queue) == (
        "routing",
        "technical-to-supplier",
        "technical",
    )
    assert decision.hold_until is None
    assert first_recipients(decision) == ("team:leverandor-service",)
    assert decision.policy.steps[0].channels == ("webhook:supplier-desk",)


@pytest.mark.parametrize(
    ("at", "held_until_utc"),
    [
        # an ordinary night: office hours open 08:00 CET = 07:00 UTC
        ("2026-11-24T03:00", "2026-11-24T07:00"),
        ("2026-11-24T15:30", "2026-11-25T07:00"),
        # Saturday night before spring forward: Monday 08:00 CEST = 06:00 UTC
        ("2026-03-28T23:00", "2026-03-30T06:00"),
        # Saturday night before fall back: Monday 08:00 CET = 07:00 UTC
        ("2026-10-24T23:00", "2026-10-26T07:00"),
        # in the repeated hour itself
        ("2026-10-25T02:30", "2026-10-26T07:00"),
        # Christmas: 24 Dec (Thu) is an extra holiday, 25-26 public; Mon 28 Dec opens
        ("2026-12-23T16:00", "2026-12-28T07:00"),
    ],
)
def test_technical_outside_office_hours_is_held(at: str, held_until_utc: str) -> None:
    decision = ask(at, EventKind.MAINS_LOST)
    assert decision.hold_until == utc(held_until_utc)
    assert decision.queue == "technical"
    assert decision.mode == "routing"  # held, never dropped, then routed as usual


def test_demo_bydel_technical_goes_to_the_technical_queue() -> None:
    decision = ask("2026-11-24T03:00", EventKind.LINK_LOST, BYDEL)
    assert (decision.mode, decision.queue) == ("response", "technical")
    assert decision.hold_until == utc("2026-11-24T07:00")
    assert ask("2026-11-24T10:00", EventKind.LINK_LOST, BYDEL).hold_until is None


def test_wake_operators_puts_technical_events_with_alarms() -> None:
    config = with_tenant(
        {
            "tenant": "t",
            "name": "T",
            "routes": [
                {
                    "name": "mains",
                    "match": {"kinds": ["mains_lost"]},
                    "mode": "response",
                    "wake_operators": True,
                },
                {"name": "other", "match": {"category": "technical"}, "mode": "response"},
            ],
        }
    )
    woken = ask("2026-11-24T03:00", EventKind.MAINS_LOST, "t", config=config)
    assert woken.queue == "alarm"
    quiet = ask("2026-11-24T03:00", EventKind.BATTERY_LOW, "t", config=config)
    assert quiet.queue == "technical"


def test_hold_in_the_repeated_hour_depends_on_which_pass() -> None:
    """A window opening at 02:30 on the fall-back day opens twice; each pass of the repeated
    hour is held until its own 02:30 (the memo must not mix them up)."""
    config = with_tenant(
        {
            "tenant": "t",
            "name": "T",
            "windows": {"late": {"from": "02:30", "to": "03:00"}},
            "routes": [
                {
                    "name": "tech",
                    "match": {"category": "technical"},
                    "mode": "response",
                    "hold_outside": "late",
                }
            ],
        }
    )
    facts = RouteFacts(tenant="t", kind=EventKind.TAMPER, priority=Priority.NORMAL)
    first_pass = datetime(2026, 10, 25, 2, 10, tzinfo=OSLO, fold=0)  # 00:10 UTC
    second_pass = datetime(2026, 10, 25, 2, 10, tzinfo=OSLO, fold=1)  # 01:10 UTC
    assert decide(config, facts, first_pass).hold_until == utc("2026-10-25T00:30")
    assert decide(config, facts, second_pass).hold_until == utc("2026-10-25T01:30")
    assert decide(config, facts, first_pass).hold_until == utc("2026-10-25T00:30")


def test_a_window_closed_for_long_still_holds_until_it_opens() -> None:
    config = with_tenant(
        {
            "tenant": "t",
            "name": "T",
            "windows": {
                "office": {
                    "from": "08:00",
                    "to": "16:00",
                    "except": [{"from": "2026-07-01", "to": "2026-07-31"}],
                }
            },
            "routes": [
                {
                    "name": "tech",
                    "match": {"category": "technical"},
                    "mode": "response",
                    "hold_outside": "office",
                }
            ],
        }
    )
    decision = ask("2026-07-02T10:00", EventKind.TAMPER, "t", config=config)
    assert decision.hold_until == utc("2026-08-01T06:00")


# --- the plan override ---------------------------------------------------------------------


def test_plan_response_wins_over_routing() -> None:
    decision = ask("2026-11-24T14:00", plan_mode="response")
    assert decision.mode == "response" and decision.policy.steps == ()
    assert decision.rule == "day-routing"  # the route matched; the plan moved it
    assert "plan override: routing_with_backup -> response" in decision.explanation[2]


def test_plan_routing_on_a_response_route_uses_the_plan_policy() -> None:
    decision = ask("2026-11-24T23:00", plan_mode="routing")
    assert decision.mode == "routing"
    assert first_recipients(decision) == ("team:plan",)
    assert decision.policy == CONFIG.tenants[KOMMUNE].policies["home-care-first"]


def test_plan_routing_without_a_plan_policy_keeps_response() -> None:
    decision = ask("2026-11-24T23:00", EventKind.FALL, BYDEL, plan_mode="routing")
    assert decision.mode == "response"
    assert any("no plan_policy" in line for line in decision.explanation)


def test_plan_override_never_moves_technical_or_unregistered() -> None:
    technical = ask("2026-11-24T10:00", EventKind.BATTERY_LOW, plan_mode="response")
    assert technical.mode == "routing" and technical.rule == "technical-to-supplier"
    unregistered = ask("2026-11-24T14:00", registered=False, plan_mode="routing")
    assert unregistered.mode == "response" and unregistered.rule == UNREGISTERED


def test_route_matching_on_plan_mode_and_group() -> None:
    config = with_tenant(
        {
            "tenant": "t",
            "name": "T",
            "policies": {
                "p": {
                    "steps": [
                        {
                            "notify": [{"team_all": "demens"}],
                            "channels": ["mqtt"],
                            "accept_within": "3m",
                        }
                    ],
                    "accepted_deadline": "30m",
                }
            },
            "routes": [
                {
                    "name": "dementia",
                    "match": {"groups": ["demens"], "kinds": ["exit"]},
                    "mode": "routing",
                    "policy": "p",
                },
                {"name": "rest", "match": {"min_priority": "critical"}, "mode": "response"},
            ],
        }
    )
    exit_alarm = ask("2026-11-24T14:00", EventKind.EXIT, "t", group="demens", config=config)
    assert first_recipients(exit_alarm) == ("team_all:demens",)
    other = ask("2026-11-24T14:00", EventKind.EXIT, "t", group="other", config=config)
    assert other.rule == SAFETY_NET  # priority high < critical: nothing matched
    assert ask("2026-11-24T14:00", EventKind.FALL, "t", config=config).rule == "rest"


# --- no route: the centre ------------------------------------------------------------------


def test_unregistered_source_goes_to_the_centre() -> None:
    for tenant in (None, KOMMUNE):  # no tenant known, or a device flagged unregistered
        decision = ask("2026-11-24T14:00", tenant=tenant, registered=False)
        assert (decision.mode, decision.rule) == ("response", UNREGISTERED)
        assert decision.policy.steps == ()
        assert "unregistered source" in decision.explanation[1]


def test_tenant_without_routing_goes_to_the_centre() -> None:
    decision = ask("2026-11-24T14:00", tenant="ukjent-kommune")
    assert (decision.mode, decision.rule) == ("response", NO_TENANT_ROUTING)
    assert decision.explanation[1] == (
        "tenant ukjent-kommune has no routing configuration: the centre takes it"
    )


def test_no_route_matched_is_the_safety_net() -> None:
    config = with_tenant(
        {
            "tenant": "t",
            "name": "T",
            "windows": {"never-on-sunday": {"days": ["mon"], "from": "10:00", "to": "11:00"}},
            "routes": [
                {"name": "monday", "match": {"windows": ["never-on-sunday"]}, "mode": "response"}
            ],
        }
    )
    decision = ask("2026-11-29T10:30", tenant="t", config=config)
    assert (decision.mode, decision.rule, decision.queue) == ("response", SAFETY_NET, "alarm")
    assert decision.explanation[1] == (
        "no route matched; the centre takes it (safety net, invariant 3)"
    )
    technical = ask("2026-11-29T10:30", EventKind.TAMPER, "t", config=config)
    assert (technical.rule, technical.queue) == (SAFETY_NET, "technical")


def test_informational_events_never_ring() -> None:
    decision = ask("2026-11-24T14:00", EventKind.TEST)
    assert (decision.mode, decision.rule, decision.queue) == (
        "response",
        INFORMATIONAL,
        "technical",
    )


def test_default_routing_sends_everything_to_the_centre() -> None:
    config = default_routing()
    for kind in EventKind:
        decision = ask("2026-11-24T14:00", kind, config=config)
        assert decision.mode == "response" and decision.policy.steps == ()


def test_naive_now_is_a_programming_error() -> None:
    facts = RouteFacts(tenant=KOMMUNE, kind=EventKind.FALL, priority=Priority.CRITICAL)
    with pytest.raises(ValueError, match="aware"):
        decide(CONFIG, facts, datetime(2026, 11, 24, 14, 0))


# --- explanations --------------------------------------------------------------------------


def test_explanation_of_a_night_alarm_on_christmas_eve() -> None:
    assert ask("2026-12-24T22:00").explanation == (
        "tenant eksempel-kommune, fall (critical), location home, 2026-12-24 22:00"
        " Europe/Oslo (holiday: yes; active windows: night)",
        "route 'night-response' matched (category: alarm; windows: night)",
        "mode response: operators' pool, accept within 2 min",
    )


def test_explanation_of_routing_with_backup() -> None:
    assert ask("2026-11-24T14:00", group="demens").explanation == (
        "tenant eksempel-kommune, fall (critical), location home, group demens, 2026-11-24"
        " 14:00 Europe/Oslo (holiday: no; active windows: weekday-day, office-hours)",
        "route 'day-routing' matched (category: alarm; windows: weekday-day)",
        "mode routing_with_backup, policy 'home-care-first':",
        "  step 1: team:plan via mqtt, sms, accept within 5 min",
        "  step 2: next_of_kin:1 via sms, accept within 5 min",
        "  then the centre (backup): operators' pool, accept within 2 min",
    )


def test_explanation_of_a_held_notice() -> None:
    lines = ask("2026-03-28T23:00", EventKind.MAINS_LOST).explanation
    assert lines[-2:] == (
        "technical event: technical queue, operators are not woken",
        "held until 2026-03-30 08:00 Europe/Oslo (window 'office-hours' opens)",
    )


def test_mismatch_says_why() -> None:
    tenant = CONFIG.tenants[KOMMUNE]
    routes = {r.name: r for r in tenant.routes}
    facts = RouteFacts(tenant=KOMMUNE, kind=EventKind.FALL, priority=Priority.CRITICAL)
    night = frozenset({"night"})
    assert mismatch(routes["technical-to-supplier"], facts, night) == (
        "fall is alarm, the route wants technical"
    )
    assert mismatch(routes["fire-and-gas-to-centre"], facts, night) == (
        "kind fall is not one of fire, gas"
    )
    assert mismatch(routes["away-to-centre"], facts, night) == ("location home is not one of away")
    assert mismatch(routes["day-routing"], facts, night) == (
        "none of its windows is active (weekday-day)"
    )
    assert mismatch(routes["night-response"], facts, night) is None


# --- the day tables agree with schedules ---------------------------------------------------

# Every instant of 2026, with the two daylight-saving days drawn often.
YEAR = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31, 23, 59)).map(
    lambda d: d.replace(tzinfo=UTC)
)
DST_DAYS = st.sampled_from([datetime(2026, 3, 29, tzinfo=UTC), datetime(2026, 10, 25, tzinfo=UTC)])
DST = st.builds(
    lambda day, seconds: day + timedelta(seconds=seconds - 3 * 3600),
    DST_DAYS,
    st.integers(min_value=0, max_value=30 * 3600),
)
INSTANTS = st.one_of(YEAR, DST)
# Boundaries inside the hour the clocks skip or repeat, across midnight, holidays, a closure.
EDGY_DATA: dict[str, Any] = {
    "inside-the-gap": {"from": "02:30", "to": "05:00"},
    "across": {"days": ["sat", "sun"], "from": "01:00", "to": "02:30"},
    "evening": {"from": "20:00", "to": "02:00", "holidays": "exclude"},
}
EDGY = with_tenant(
    {
        "tenant": "edgy",
        "name": "Edgy",
        "windows": {
            **EDGY_DATA,
            "closed-july": {
                "from": "00:00",
                "to": "24:00",
                "except": [{"from": "2026-07-01", "to": "2026-07-31"}],
            },
        },
        "routes": [],
    }
)


@settings(max_examples=300, deadline=None)
@given(INSTANTS)
def test_active_windows_agree_with_schedules(at: datetime) -> None:
    for config in (CONFIG, EDGY):
        for tenant in config.tenants.values():
            assert active_windows(tenant, at) == Schedule(tenant.windows).active(at)
            # an Oslo-zoned instant is judged alike
            assert active_windows(tenant, at.astimezone(OSLO)) == active_windows(tenant, at)


@settings(max_examples=200, deadline=None)
@given(INSTANTS)
def test_held_until_is_the_next_opening(at: datetime) -> None:
    for name in ("inside-the-gap", "across", "evening"):
        config = with_tenant(
            {
                "tenant": "t",
                "name": "T",
                "windows": {name: EDGY_DATA[name]},
                "routes": [
                    {
                        "name": "r",
                        "match": {"category": "technical"},
                        "mode": "response",
                        "hold_outside": name,
                    }
                ],
            }
        )
        facts = RouteFacts(tenant="t", kind=EventKind.TAMPER, priority=Priority.NORMAL)
        window = config.tenants["t"].windows[name]
        held = decide(config, facts, at).hold_until
        if window.contains(at):
            assert held is None
        else:
            expected = next_change(window, at)
            if expected is None:
                expected = window_intervals(window, at, at + timedelta(days=400))[0][0]
            assert held == expected
            assert held is not None and held > at and window.contains(held)

"""Invariant 3, as a property: whatever the configuration, every alarm reaches a human.

For any valid tenant configuration (generated as the plain data a tenant file holds and
loaded through the same checks as a file: random windows, policies of 0-3 steps, routes with
random matches in random order, possibly none matching), any event (kind, priority, location,
group, plan override, registered or not, of a known tenant or not) and any instant of a year
(the daylight-saving days drawn on purpose), ``decide`` returns a decision, and its policy,
driven through ``escalation.step`` with a Tick at each deadline and nobody accepting, alerts
the centre's operators after exactly one Tick per step (and keeps alerting them). Nothing
is dropped, nothing raises, and no alarm is ever held.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from alarmd.model import Category, EventKind, Priority
from alarmd.routing.config import (
    CentreConfig,
    RoutingConfig,
    WebhookConfig,
    tenant_from_data,
)
from alarmd.routing.decision import MODES, RouteFacts
from alarmd.routing.escalation import (
    CENTRE,
    AlertCentre,
    CentreStep,
    Notify,
    Open,
    Phase,
    Tick,
    new_case,
    step,
)
from alarmd.routing.rules import decide

CENTRE_CONFIG = CentreConfig(
    name="Testsenteret",
    operators=CentreStep(accept_within=timedelta(minutes=2), re_alert_every=timedelta(minutes=1)),
)
WEBHOOKS = {"desk": WebhookConfig("desk", "https://desk.example.invalid/", None, 10.0)}
ROUTE_KINDS = [k.value for k in EventKind if k.category is not Category.INFO]
TECHNICAL_KINDS = [k.value for k in EventKind if k.category is Category.TECHNICAL]
GROUPS = ["g1", "g2"]
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

# Times of day, with boundaries inside the hour the clocks skip or repeat on purpose.
times = st.one_of(
    st.sampled_from(["00:00", "02:00", "02:30", "03:00", "07:00", "08:00", "16:00", "22:00"]),
    st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30])),
)
durations = st.sampled_from(["30s", "1m", "5m", "15m", "1h", "2h30m"])


@st.composite
def windows(draw: st.DrawFn) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": draw(times), "to": draw(st.one_of(times, st.just("24:00")))}
    if draw(st.booleans()):
        rule["days"] = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
    rule["holidays"] = draw(st.sampled_from(["include", "exclude", "only"]))
    if draw(st.booleans()):
        rule["extra_holidays"] = draw(
            st.lists(st.sampled_from(["12-24", "12-31", "2026-06-01"]), unique=True)
        )
    if draw(st.booleans()):
        rule["except"] = [{"from": "2026-07-01", "to": "2026-07-21"}]
    return rule


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    recipient = st.sampled_from(
        [
            {"team": "plan"},
            {"team": "natt-sone-1"},
            {"team_all": "natt-sone-1"},
            {"next_of_kin": "1"},
            {"next_of_kin": "all"},
            {"staff": "4711"},
        ]
    )
    steps = []
    for _ in range(draw(st.integers(0, 3))):
        steps.append(
            {
                "notify": draw(
                    st.lists(recipient, min_size=1, max_size=3, unique_by=lambda r: str(r))
                ),
                "channels": draw(
                    st.lists(
                        st.sampled_from(["console", "sms", "mqtt", "webhook"]),
                        min_size=1,
                        max_size=3,
                        unique=True,
                    )
                ),
                "accept_within": draw(durations),
                "require_all": draw(st.booleans()),
            }
        )
    policy: dict[str, Any] = {"steps": steps, "accepted_deadline": draw(durations)}
    if draw(st.booleans()):
        policy["on_site_deadline"] = draw(durations)
    return policy


def sometimes(draw: st.DrawFn) -> bool:
    """True about one time in four: a match key that is always set rarely lets a route match."""
    return draw(st.integers(0, 3)) == 0


@st.composite
def routes(draw: st.DrawFn, window_names: list[str], policy_names: list[str]) -> dict[str, Any]:
    match: dict[str, Any] = {}
    category = draw(st.sampled_from([None, None, "alarm", "technical"]))
    if category is not None:
        match["category"] = category
    if sometimes(draw):
        pool = [k for k in ROUTE_KINDS if category is None or EventKind(k).category == category]
        match["kinds"] = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
    if sometimes(draw):
        match["min_priority"] = draw(st.sampled_from([p.name.lower() for p in Priority]))
    if sometimes(draw):
        match["groups"] = draw(st.lists(st.sampled_from(GROUPS), min_size=1, unique=True))
    if sometimes(draw):
        locations = st.sampled_from(["home", "away", "care_home"])
        match["locations"] = draw(st.lists(locations, min_size=1, unique=True))
    if window_names and draw(st.booleans()):
        match["windows"] = draw(st.lists(st.sampled_from(window_names), min_size=1, unique=True))
    if window_names and sometimes(draw):
        match["not_windows"] = draw(
            st.lists(st.sampled_from(window_names), min_size=1, unique=True)
        )
    if sometimes(draw):
        match["plan_mode"] = draw(st.sampled_from(MODES))
    mode = draw(st.sampled_from(MODES)) if policy_names else "response"
    route: dict[str, Any] = {"match": match, "mode": mode}
    if mode != "response":
        route["policy"] = draw(st.sampled_from(policy_names))
    technical_only = category == "technical" or (
        "kinds" in match and all(k in TECHNICAL_KINDS for k in match["kinds"])
    )
    if technical_only and window_names and draw(st.booleans()):
        route["hold_outside"] = draw(st.sampled_from(window_names))
    if technical_only and draw(st.booleans()):
        route["wake_operators"] = draw(st.booleans())
    return route


@st.composite
def configs(draw: st.DrawFn) -> RoutingConfig:
    window_data = {f"w{i}": draw(windows()) for i in range(draw(st.integers(0, 4)))}
    policy_data = {f"p{i}": draw(policies()) for i in range(draw(st.integers(0, 3)))}
    route_data = draw(
        st.lists(routes(list(window_data), list(policy_data)), min_size=0, max_size=6)
    )
    for index, route in enumerate(route_data):  # in random order: names follow the order
        route["name"] = f"r{index}"
    data: dict[str, Any] = {
        "tenant": "t",
        "name": "T",
        "windows": window_data,
        "policies": policy_data,
        "routes": route_data,
    }
    if policy_data and draw(st.booleans()):
        data["plan_policy"] = draw(st.sampled_from(sorted(policy_data)))
    tenant = tenant_from_data(data, centre=CENTRE_CONFIG, webhooks=WEBHOOKS)
    return RoutingConfig(centre=CENTRE_CONFIG, tenants={"t": tenant}, webhooks=WEBHOOKS)


facts = st.builds(
    RouteFacts,
    tenant=st.sampled_from(["t"] * 8 + [None, "another-tenant"]),
    kind=st.sampled_from(list(EventKind)),
    priority=st.sampled_from(list(Priority)),
    user_group=st.sampled_from([None, *GROUPS]),
    plan_mode=st.sampled_from([None, *MODES]),
    location=st.sampled_from(["home", "away", "care_home"]),
    registered=st.sampled_from([True] * 9 + [False]),
)

# Any instant of 2026; a third of them within a day either side of a clock change.
year = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31, 23, 59, 59)
).map(lambda d: d.replace(tzinfo=UTC))
dst = st.builds(
    lambda day, seconds: day + timedelta(seconds=seconds),
    st.sampled_from([datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 10, 24, tzinfo=UTC)]),
    st.integers(0, 3 * 24 * 3600),
)
instants = st.one_of(year, year, dst)


@settings(max_examples=200, deadline=None)
@given(configs(), facts, instants)
def test_every_alarm_reaches_a_human(
    config: RoutingConfig, facts: RouteFacts, now: datetime
) -> None:
    decision = decide(config, facts, now)
    assert decide(config, facts, now) == decision  # a function of its inputs
    # --hypothesis-show-statistics shows that routes match and steps are walked
    event(f"mode {decision.mode}, {len(decision.policy.steps)} step(s)")
    event("a route matched" if decision.rule.startswith("r") else f"no route: {decision.rule}")

    policy = decision.policy
    assert policy.centre == config.centre.operators  # the centre is the tenant-proof sink
    if facts.kind.category is not Category.TECHNICAL:
        assert decision.hold_until is None  # only technical notices are ever held
    else:
        assert decision.hold_until is None or decision.hold_until > now
    if facts.tenant != "t" or not facts.registered:
        assert decision.mode == "response" and policy.steps == ()

    # Nobody accepts: Tick at every deadline until the operators' pool is alerted.
    start = decision.hold_until or now
    state, actions = step(new_case(policy), Open(start))
    ticks = 0
    while not any(isinstance(a, AlertCentre) for a in actions):
        assert ticks <= len(policy.steps), "escalation did not reach the centre"
        assert state.next_step_at is not None and state.next_step_at > start
        state, actions = step(state, Tick(state.next_step_at))
        ticks += 1
    assert state.phase is Phase.AT_CENTRE
    assert any(isinstance(a, Notify) and a.step_index == CENTRE for a in actions)
    assert ticks == len(policy.steps)
    # and the centre keeps being alerted until someone accepts
    assert state.next_step_at is not None
    state, actions = step(state, Tick(state.next_step_at))
    assert AlertCentre(1) in actions

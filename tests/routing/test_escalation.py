"""Escalation state machine: every rule of issue 3 on fake times, plus two properties.

Time is a plain aware datetime the tests advance; nothing sleeps. The properties hold the
machine to invariant 3 (an alarm nobody accepts always reaches the centre by the sum of
its step deadlines, and the centre keeps being alerted) and to the exclusive holder rule
(never two holders, never an exception) for arbitrary input sequences.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmd.routing import escalation
from alarmd.routing.escalation import (
    CENTRE,
    CENTRE_REALERT_RECIPIENTS,
    CENTRE_RECIPIENTS,
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
    Step,
    Tick,
    new_case,
    step,
)

T0 = datetime(2026, 11, 24, 22, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOME_CARE = Recipient("team", "home-care-north")
KIN = Recipient("next_of_kin", "plan")
CENTRE_STEP = CentreStep(accept_within=2 * MIN, re_alert_every=3 * MIN)


def policy(
    *steps: Step, accepted: timedelta = 30 * MIN, on_site: timedelta | None = None
) -> EscalationPolicy:
    return EscalationPolicy(steps, CENTRE_STEP, accepted, on_site)


def team_step(minutes: int = 5, require_all: bool = False) -> Step:
    return Step((HOME_CARE,), ("app", "sms"), minutes * MIN, require_all)


ROUTING_WITH_BACKUP = policy(team_step(5), Step((KIN,), ("sms",), 10 * MIN))


def run(state: CaseEscalation, *inputs: Input) -> tuple[CaseEscalation, list[Action]]:
    actions: list[Action] = []
    for event in inputs:
        state, out = step(state, event)
        actions.extend(out)
    return state, actions


def opened(
    p: EscalationPolicy, people: frozenset[str] = frozenset({"kari", "ola"})
) -> CaseEscalation:
    state, _ = run(new_case(p), Open(T0), NotifiedPeople(0, people))
    return state


def catch_up(state: CaseEscalation, now: datetime) -> tuple[CaseEscalation, list[Action]]:
    """The engine's loop: tick while the stored deadline is due."""
    actions: list[Action] = []
    ticks = 0
    while state.next_step_at is not None and state.next_step_at <= now:
        state, out = step(state, Tick(now))
        assert out, "a due Tick must transition"
        actions.extend(out)
        ticks += 1
        assert ticks <= len(state.policy.steps) + 2
    return state, actions


# --------------------------------------------------------------------------- routing


def test_routing_with_backup_reaches_the_centre_exactly_at_the_sum_of_deadlines() -> None:
    state, actions = step(new_case(ROUTING_WITH_BACKUP), Open(T0))
    assert state.phase is Phase.NOTIFYING and state.step_index == 0
    assert actions == (Notify(0, (HOME_CARE,), ("app", "sms")),)
    assert state.next_step_at == T0 + 5 * MIN

    assert step(state, Tick(T0 + 5 * MIN - timedelta(microseconds=1))) == (state, ())
    state, actions = step(state, Tick(T0 + 5 * MIN))
    assert actions == (
        Escalated("nobody accepted step 1 within 5 min"),
        Notify(1, (KIN,), ("sms",)),
    )
    assert state.next_step_at == T0 + 15 * MIN

    assert step(state, Tick(T0 + 14 * MIN))[1] == ()
    state, actions = step(state, Tick(T0 + 15 * MIN))
    assert actions == (
        Escalated("nobody accepted step 2 within 10 min"),
        AlertCentre(0),
        Notify(CENTRE, CENTRE_RECIPIENTS, ("console",)),
    )
    assert state.phase is Phase.AT_CENTRE and state.centre_alerts == 1
    assert state.step_index == 2 and state.current_step is None


def test_response_service_goes_to_the_centre_at_once() -> None:
    state, actions = step(new_case(policy()), Open(T0))
    assert state.phase is Phase.AT_CENTRE
    assert actions == (AlertCentre(0), Notify(CENTRE, CENTRE_RECIPIENTS, ("console",)))
    assert state.next_step_at == T0 + 2 * MIN


def test_centre_re_alerts_every_interval_until_an_operator_accepts() -> None:
    state, _ = step(new_case(policy()), Open(T0))
    now = T0 + 2 * MIN
    for repeat in range(1, 6):
        assert step(state, Tick(now - timedelta(seconds=1)))[1] == ()
        state, actions = step(state, Tick(now))
        assert actions == (
            AlertCentre(repeat),
            Notify(CENTRE, CENTRE_REALERT_RECIPIENTS, ("console",)),
        )
        assert state.centre_alerts == repeat + 1
        now += 3 * MIN
        assert state.next_step_at == now
    state, actions = step(state, Accept("op-7", now, is_operator=True))
    assert state.phase is Phase.ACCEPTED and state.accepted_by == "op-7"
    assert actions == (Accepted("op-7", frozenset({"op-7"})),)


def test_late_centre_re_alert_counts_from_the_tick_not_a_burst() -> None:
    state, _ = step(new_case(policy()), Open(T0))
    later = T0 + timedelta(hours=1)
    state, actions = step(state, Tick(later))
    assert actions[0] == AlertCentre(1)
    assert state.next_step_at == later + 3 * MIN
    assert step(state, Tick(later)) == (state, ())


# --------------------------------------------------------------------------- accepting


def test_accepted_but_nobody_arrives_escalates_again() -> None:
    state = opened(ROUTING_WITH_BACKUP)
    state, actions = step(state, Accept("kari", T0 + 2 * MIN))
    assert actions == (Accepted("kari", frozenset({"kari"})),)
    assert state.phase is Phase.ACCEPTED and state.next_step_at == T0 + 32 * MIN
    # the step's own deadline no longer applies
    assert step(state, Tick(T0 + 5 * MIN)) == (state, ())
    state, actions = step(state, Tick(T0 + 32 * MIN))
    assert actions == (
        Escalated("accepted by kari but nobody on site or closed within 30 min"),
        Notify(1, (KIN,), ("sms",)),
    )
    assert state.phase is Phase.NOTIFYING and state.accepted_by is None
    assert state.notified == frozenset() and state.next_step_at == T0 + 42 * MIN


def test_accepted_at_the_last_step_then_overdue_goes_to_the_centre() -> None:
    state = opened(policy(team_step(5)))
    state, _ = run(state, Accept("kari", T0), Tick(T0 + 30 * MIN))
    assert state.phase is Phase.AT_CENTRE and state.centre_alerts == 1


def test_on_site_signal() -> None:
    state = opened(policy(team_step(5), on_site=timedelta(hours=1)))
    state, _ = step(state, Accept("kari", T0 + MIN))
    state, actions = step(state, OnSite("kari", T0 + 20 * MIN))
    assert actions == (MarkOnSite("kari"),)
    assert state.phase is Phase.ON_SITE and state.next_step_at == T0 + 80 * MIN
    assert step(state, Tick(T0 + 32 * MIN)) == (state, ())
    state, actions = step(state, Tick(T0 + 80 * MIN))
    assert actions[0] == Escalated("on site but not closed within 1 h")
    assert state.phase is Phase.AT_CENTRE


def test_on_site_without_deadline_waits_for_close() -> None:
    state = opened(policy(team_step(5)))
    state, _ = step(state, OnSite("tag-0088", T0 + MIN))
    assert state.phase is Phase.ON_SITE and state.next_step_at is None
    assert state.accepted_by == "tag-0088"  # presence takes an untaken case
    assert step(state, Tick(T0 + timedelta(days=3))) == (state, ())


def test_multi_ack_needs_everyone_notified() -> None:
    state = opened(policy(team_step(5, require_all=True)), frozenset({"a", "b", "c"}))
    state, actions = step(state, Accept("a", T0 + MIN))
    assert actions == (Acknowledged("a", frozenset({"b", "c"})),)
    assert state.phase is Phase.NOTIFYING
    state, actions = step(state, Accept("b", T0 + 2 * MIN))
    assert actions == (Acknowledged("b", frozenset({"c"})),)
    state, actions = step(state, Accept("c", T0 + 3 * MIN))
    assert actions == (Accepted("c", frozenset({"a", "b", "c"})),)
    assert state.phase is Phase.ACCEPTED and state.accepted_by == "c"


def test_multi_ack_deadline_still_applies() -> None:
    state = opened(policy(team_step(5, require_all=True)), frozenset({"a", "b"}))
    state, _ = run(state, Accept("a", T0 + MIN), Tick(T0 + 5 * MIN))
    assert state.phase is Phase.AT_CENTRE and state.acks == frozenset()


def test_an_operator_takes_a_multi_ack_step_alone() -> None:
    state = opened(policy(team_step(5, require_all=True)), frozenset({"a", "b"}))
    state, actions = step(state, Accept("op-1", T0, is_operator=True))
    assert state.phase is Phase.ACCEPTED and actions == (Accepted("op-1", frozenset({"op-1"})),)


def test_decline_by_all_escalates_at_once() -> None:
    state = opened(ROUTING_WITH_BACKUP)
    state, actions = step(state, Decline("kari", T0 + MIN))
    assert actions == (Declined("kari"),) and state.phase is Phase.NOTIFYING
    state, actions = step(state, Decline("ola", T0 + 2 * MIN))
    assert actions == (
        Declined("ola"),
        Escalated("step 1 declined by kari, ola"),
        Notify(1, (KIN,), ("sms",)),
    )
    assert state.step_index == 1 and state.next_step_at == T0 + 12 * MIN


def test_one_decline_ends_a_multi_ack_step() -> None:
    state = opened(policy(team_step(5, require_all=True)), frozenset({"a", "b"}))
    state, _ = step(state, Decline("a", T0 + MIN))
    assert state.phase is Phase.AT_CENTRE


def test_a_step_nobody_could_be_notified_for_escalates_at_once() -> None:
    state, _ = step(new_case(ROUTING_WITH_BACKUP), Open(T0))
    state, actions = step(state, NotifiedPeople(0, frozenset()))
    assert actions[0] == Escalated("nobody could be notified for step 1")
    assert state.step_index == 1 and state.next_step_at == T0 + 10 * MIN


def test_declines_at_the_centre_are_only_recorded() -> None:
    state, _ = run(new_case(policy()), Open(T0), NotifiedPeople(CENTRE, frozenset({"op-1"})))
    state, actions = step(state, Decline("op-1", T0 + MIN))
    assert (
        actions
        == (
            Declined(
                "op-1",
            ),
        )
        and state.phase is Phase.AT_CENTRE
    )
    assert state.next_step_at == T0 + 2 * MIN


def test_holder_gives_the_case_back() -> None:
    state = opened(ROUTING_WITH_BACKUP)
    state, _ = step(state, Accept("kari", T0 + MIN))
    state, actions = step(state, Decline("kari", T0 + 3 * MIN))
    assert actions[:2] == (Declined("kari"), Escalated("kari gave the case back"))
    assert state.step_index == 1 and state.accepted_by is None


def test_only_a_notified_person_may_accept() -> None:
    state = opened(ROUTING_WITH_BACKUP, frozenset({"kari"}))
    after, actions = step(state, Accept("mallory", T0 + MIN))
    assert after == state
    assert actions == (Rejected("mallory", "not notified for step 1"),)
    assert step(state, Decline("mallory", T0))[1] == (
        Rejected("mallory", "not notified for step 1"),
    )
    # a stale report for another step grants nothing
    after, _ = step(state, NotifiedPeople(1, frozenset({"mallory"})))
    assert after == state


def test_an_operator_may_always_take_a_case() -> None:
    state = opened(ROUTING_WITH_BACKUP, frozenset({"kari"}))
    state, actions = step(state, Accept("op-3", T0 + MIN, is_operator=True))
    assert actions == (Accepted("op-3", frozenset({"op-3"})),)
    assert state.step_index == 0  # an overdue arrival escalates from step 1 onwards


def test_notified_reports_add_up() -> None:
    state = opened(ROUTING_WITH_BACKUP, frozenset({"kari"}))
    state, _ = step(state, NotifiedPeople(0, frozenset({"ola"})))
    assert state.notified == frozenset({"kari", "ola"})


def test_accept_before_the_engine_reported_anyone_is_refused() -> None:
    state, _ = step(new_case(ROUTING_WITH_BACKUP), Open(T0))
    assert step(state, Accept("kari", T0))[1] == (Rejected("kari", "not notified for step 1"),)


def test_two_operators_accept_first_wins_second_is_told() -> None:
    state, _ = step(new_case(policy()), Open(T0))
    state, first = step(state, Accept("op-1", T0 + MIN, is_operator=True))
    state, second = step(state, Accept("op-2", T0 + MIN, is_operator=True))
    assert first == (Accepted("op-1", frozenset({"op-1"})),)
    assert second == (Rejected("op-2", "already accepted by op-1"),)
    assert state.accepted_by == "op-1"
    # the holder's retry is idempotent
    assert step(state, Accept("op-1", T0 + 2 * MIN, is_operator=True)) == (state, ())


@pytest.mark.parametrize(
    "inputs",
    [
        (),
        (Open(T0),),
        (Open(T0), NotifiedPeople(0, frozenset({"kari"})), Accept("kari", T0)),
        (Open(T0), NotifiedPeople(0, frozenset({"kari"})), OnSite("kari", T0)),
        (Open(T0), Tick(T0 + 5 * MIN), Tick(T0 + 15 * MIN)),
    ],
    ids=["new", "notifying", "accepted", "on_site", "at_centre"],
)
def test_close_from_every_phase(inputs: tuple[Input, ...]) -> None:
    state, _ = run(new_case(ROUTING_WITH_BACKUP), *inputs)
    phase = state.phase
    state, actions = step(state, Close("op-1", "resolved_by_phone", T0 + 20 * MIN))
    assert actions == (Closed("resolved_by_phone", "op-1"),), phase
    assert state.phase is Phase.CLOSED and state.next_step_at is None


def test_a_closed_case_ignores_ticks_and_refuses_peers() -> None:
    state = opened(ROUTING_WITH_BACKUP)
    state, _ = step(state, Close("op-1", "accidental", T0 + MIN))
    for later in (T0 + 5 * MIN, T0 + timedelta(days=30)):
        assert step(state, Tick(later)) == (state, ())
    for event in (
        Accept("kari", T0, is_operator=True),
        Decline("kari", T0),
        OnSite("kari", T0),
        Close("op-2", "test", T0),
    ):
        assert step(state, event) == (state, (Rejected(event.who, "case closed"),))


# --------------------------------------------------------------------------- restarts


def test_restart_after_long_downtime_one_transition_per_tick_each_deadline_once() -> None:
    three = policy(team_step(5), Step((KIN,), ("sms",), 10 * MIN), team_step(7))
    state = opened(three)
    restart = T0 + timedelta(hours=1)  # the engine was down for an hour
    seen: list[tuple[Action, ...]] = []
    deadlines: list[datetime] = []
    while state.next_step_at is not None and state.next_step_at <= restart:
        deadlines.append(state.next_step_at)
        state, actions = step(state, Tick(restart))
        seen.append(actions)
    # each due deadline fired once, in order, at its stored instant
    assert deadlines == [T0 + 5 * MIN, T0 + 15 * MIN, T0 + 22 * MIN, T0 + 24 * MIN]
    assert [a[1] for a in seen[:2]] == [
        Notify(1, (KIN,), ("sms",)),
        Notify(2, (HOME_CARE,), ("app", "sms")),
    ]
    assert seen[2][1] == AlertCentre(0)
    assert seen[3][0] == AlertCentre(1)  # the centre's deadline was missed too: once
    assert len(seen) == 4
    assert state.phase is Phase.AT_CENTRE and state.next_step_at == restart + 3 * MIN
    assert step(state, Tick(restart)) == (state, ())


def test_naive_datetime_is_a_programming_error() -> None:
    state, _ = step(new_case(ROUTING_WITH_BACKUP), Open(T0))
    with pytest.raises(ValueError, match="naive"):
        step(state, Tick(datetime(2026, 11, 24, 22, 5)))


def test_opening_twice_is_a_programming_error() -> None:
    state, _ = step(new_case(ROUTING_WITH_BACKUP), Open(T0))
    with pytest.raises(ValueError, match="already"):
        step(state, Open(T0))


def test_accepted_at_the_centre_then_overdue_re_alerts_the_centre() -> None:
    state, _ = step(new_case(policy()), Open(T0))
    state, _ = step(state, Accept("op-1", T0 + MIN, is_operator=True))
    state, actions = step(state, Tick(T0 + 31 * MIN))
    assert actions == (
        Escalated("accepted by op-1 but nobody on site or closed within 30 min"),
        AlertCentre(1),
        Notify(CENTRE, CENTRE_REALERT_RECIPIENTS, ("console",)),
    )
    assert state.phase is Phase.AT_CENTRE and state.accepted_by is None


def test_every_phase_answers_every_input() -> None:
    table = escalation._TRANSITIONS
    assert set(table) == {(phase, kind) for phase in Phase for kind in get_args(Input)}


def test_a_step_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="recipient"):
        Step((), ("sms",), MIN)


def test_policy_deadlines_must_be_positive() -> None:
    with pytest.raises(ValueError, match="accept_within"):
        team_step(0)
    with pytest.raises(ValueError, match="re_alert_every"):
        CentreStep(MIN, timedelta(0))


# --------------------------------------------------------------------------- properties

PEOPLE = ("kari", "ola", "op-1", "op-2", "tag")
minutes = st.integers(min_value=1, max_value=120).map(lambda m: m * MIN)
steps_st = st.builds(
    Step,
    recipients=st.just((HOME_CARE,)),
    channels=st.just(("app",)),
    accept_within=minutes,
    require_all=st.booleans(),
)
policies = st.builds(
    EscalationPolicy,
    steps=st.lists(steps_st, max_size=4).map(tuple),
    centre=st.builds(CentreStep, accept_within=minutes, re_alert_every=minutes),
    accepted_deadline=minutes,
    on_site_deadline=st.none() | minutes,
)
person = st.sampled_from(PEOPLE)
offset = st.integers(min_value=0, max_value=300).map(lambda m: m * MIN)


quiet_input = st.one_of(
    st.tuples(st.just("tick"), offset),
    st.tuples(st.just("decline"), offset, person),
    st.tuples(
        st.just("notified"),
        st.integers(min_value=0, max_value=4) | st.just(CENTRE),
        st.frozensets(person, max_size=3),
    ),
)
any_input = st.one_of(
    quiet_input,
    st.tuples(st.just("accept"), offset, person, st.booleans()),
    st.tuples(st.just("on_site"), offset, person),
    st.tuples(st.just("close"), offset, person),
)


def _build(raw: tuple[object, ...]) -> Input:
    kind = raw[0]
    if kind == "notified":
        index, people = raw[1], raw[2]
        assert isinstance(people, frozenset)
        assert isinstance(index, int) or index == CENTRE
        return NotifiedPeople(index, people)
    at = raw[1]
    assert isinstance(at, timedelta)
    now = T0 + at
    who = str(raw[2]) if len(raw) > 2 else ""
    if kind == "tick":
        return Tick(now)
    if kind == "decline":
        return Decline(who, now)
    if kind == "accept":
        return Accept(who, now, is_operator=bool(raw[3]))
    if kind == "on_site":
        return OnSite(who, now)
    return Close(who, "test", now)


@settings(max_examples=300, deadline=None)
@given(policies, st.lists(quiet_input, max_size=25), st.integers(min_value=0, max_value=600))
def test_property_an_unaccepted_alarm_always_reaches_the_centre(
    p: EscalationPolicy, raw: list[tuple[object, ...]], extra: int
) -> None:
    state, _ = step(new_case(p), Open(T0))
    notified_steps: list[int | str] = []
    for item in raw:
        state, actions = step(state, _build(item))
        notified_steps += [a.step_index for a in actions if isinstance(a, Notify)]
    total = sum((s.accept_within for s in p.steps), timedelta())
    until = T0 + total + extra * MIN
    state, caught_up = catch_up(state, until)
    notified_steps += [a.step_index for a in caught_up if isinstance(a, Notify)]
    assert state.phase is Phase.AT_CENTRE
    assert state.centre_alerts >= 1
    assert state.next_step_at is not None and state.next_step_at > until
    # no step was notified twice (the centre is, on every re-alert)
    numbered = [i for i in notified_steps if i != CENTRE]
    assert len(numbered) == len(set(numbered))


@settings(max_examples=300, deadline=None)
@given(policies, st.lists(any_input, max_size=30))
def test_property_never_two_holders_never_raises(
    p: EscalationPolicy, raw: list[tuple[object, ...]]
) -> None:
    state, _ = step(new_case(p), Open(T0))
    for item in raw:
        before = state
        state, actions = step(state, _build(item))
        for action in actions:
            if isinstance(action, Accepted):
                # a new holder only where there was none
                assert before.accepted_by is None
                assert state.accepted_by == action.who
        if state.phase in (Phase.ACCEPTED, Phase.ON_SITE):
            assert state.accepted_by is not None
        elif state.phase in (Phase.NOTIFYING, Phase.AT_CENTRE):
            assert state.accepted_by is None
        if state.phase is not Phase.CLOSED and state.phase is not Phase.ON_SITE:
            assert state.next_step_at is not None  # every open case has a deadline
        if before.accepted_by is not None and state.accepted_by not in (None, before.accepted_by):
            pytest.fail(f"holder changed from {before.accepted_by} to {state.accepted_by}")
    # wherever it stands, a restart far in the future catches up in a few Ticks
    catch_up(state, T0 + timedelta(days=2))

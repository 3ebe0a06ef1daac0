"""Escalation: who must take an alarm, by when, and what happens when nobody does. Pure.

Theory of operation
-------------------
When a case opens, the engine copies the ``EscalationPolicy`` that applies into a
``CaseEscalation`` (the snapshot of DESIGN.md invariant 4, as Grafana OnCall copies its
chain onto an alert group) and from then on drives it only through ``step``::

    state, actions = step(state, Open(now))
    state, actions = step(state, Tick(now))      # whenever now >= state.next_step_at
    state, actions = step(state, Accept("kari", now, is_operator=False))

``step`` is a deterministic function of the state and the input; ``now`` travels inside
the input. Nothing here reads a clock, does I/O or knows asyncio. The engine stores the
new state (``next_step_at`` is the stored deadline it sleeps on), logs every action in the
case log and turns ``Notify`` into outbox rows. History is not kept in the state: the
case log is the history.

Phases (``Phase``) and what moves between them (``_TRANSITIONS`` is the whole table)::

    NEW --Open--> NOTIFYING(0) --deadline/all declined--> NOTIFYING(1) ... --> AT_CENTRE
                  (no steps: straight to AT_CENTRE, the response service)
    NOTIFYING / AT_CENTRE --Accept--> ACCEPTED --OnSite--> ON_SITE --Close--> CLOSED
    ACCEPTED --deadline (nobody arrived or closed)--> next step, or AT_CENTRE
    ON_SITE --deadline (on site but not closed)--> AT_CENTRE
    AT_CENTRE --deadline--> AT_CENTRE (re-alert), for ever until someone accepts
    any open phase --Close--> CLOSED

``step_index`` is the step being notified, or the step at which the case was accepted;
``len(policy.steps)`` stands for the centre. The centre is the final sink: there is no
transition out of AT_CENTRE except acceptance, arrival or closure, and its deadline only
ever re-alerts, so an alarm nobody takes keeps the operators and the supervisor being
alerted (invariant 3: every alarm ends with a human).

Who may accept
    Only someone the engine reported as notified for the current step or the centre
    (``NotifiedPeople``): the engine resolves symbolic recipients (a team, next of kin)
    to person ids, which this module never does. An operator may always take a case
    (``is_operator``), at any step. The case has at most one holder (``accepted_by``);
    a second Accept gets ``Rejected`` naming the holder. For a ``require_all`` step each
    acknowledgement is recorded and the step is accepted only when every notified person
    has acknowledged; the holder is the one whose acknowledgement completed it.

Declines
    A decline is recorded. As soon as the step can no longer be accepted by its
    recipients (everyone notified declined; for a ``require_all`` step, anyone declined)
    it escalates at once rather than wait out a deadline nobody can meet. The same holds
    for a step for which the engine could notify nobody (``NotifiedPeople`` with no one).
    At the centre declines are only recorded: there is nowhere further to go, the
    re-alerts continue. A holder who declines gives the case back and it escalates at once.

Deadlines, late ticks and restarts
    A ``Tick`` before ``next_step_at`` does nothing. A Tick at or after it performs
    exactly one transition and returns the new ``next_step_at``; the engine ticks again
    while ``next_step_at <= now``. Step deadlines are counted from the deadline that fired,
    not from the Tick's ``now``: after an hour's downtime the loop walks through the
    remaining steps in a few Ticks and the case reaches the centre when it would have
    without the downtime, each deadline firing once, in order, instead of every step
    starting its full wait again from the restart. Centre re-alerts are counted from the
    Tick: a re-alert is a nag to people, and thirty of them in one second say nothing
    that one does not, so a late engine sends one and waits ``re_alert_every`` again.
    The catch-up after any downtime therefore takes at most ``len(steps) + 2`` Ticks.

Errors
    Anything a peer can cause (an accept from someone not notified, a second holder, an
    accept after closing) returns ``Rejected`` and never raises. Programming errors raise
    ``ValueError``: a naive ``now``, opening a case twice, a policy with a non-positive
    deadline.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal, TypeAlias

__all__ = [
    "CENTRE",
    "CENTRE_REALERT_RECIPIENTS",
    "CENTRE_RECIPIENTS",
    "Accept",
    "Accepted",
    "Acknowledged",
    "Action",
    "AlertCentre",
    "CaseEscalation",
    "CentreStep",
    "Close",
    "Closed",
    "Decline",
    "Declined",
    "Escalated",
    "EscalationPolicy",
    "Input",
    "MarkOnSite",
    "NotifiedPeople",
    "Notify",
    "OnSite",
    "Open",
    "Phase",
    "Recipient",
    "RecipientKind",
    "Rejected",
    "Result",
    "Step",
    "StepRef",
    "Tick",
    "new_case",
    "span",
    "step",
]

CENTRE: Literal["centre"] = "centre"
StepRef: TypeAlias = int | Literal["centre"]
RecipientKind: TypeAlias = Literal[
    "staff", "team", "team_all", "next_of_kin", "operators", "supervisor"
]


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who a step names, symbolically: ``team`` is "whoever is on duty in the team",
    ``team_all`` every member, ``next_of_kin`` the plan's contacts in order. The engine
    resolves them to people when it notifies, so the snapshot never goes stale."""

    kind: RecipientKind
    ref: str


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a policy: notify ``recipients`` on ``channels``; someone must accept
    within ``accept_within`` (everyone notified, if ``require_all``)."""

    recipients: tuple[Recipient, ...]
    channels: tuple[str, ...]
    accept_within: timedelta
    require_all: bool = False

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("a step needs at least one recipient")
        _positive("accept_within", self.accept_within)


@dataclass(frozen=True, slots=True)
class CentreStep:
    """The response centre's operators' pool: the final sink, set in the centre file.

    ``accept_within`` is how long the operators have after the first alert;
    ``re_alert_every`` how often all operators and the supervisor are alerted again after
    that. No tenant can override it, and no transition leaves it except acceptance.
    """

    accept_within: timedelta
    re_alert_every: timedelta
    channels: tuple[str, ...] = ("console",)

    def __post_init__(self) -> None:
        _positive("accept_within", self.accept_within)
        _positive("re_alert_every", self.re_alert_every)


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """The snapshot copied into a case when it opens (DESIGN.md invariant 4).

    No ``steps`` means the response service: the centre gets the alarm at once.
    ``accepted_deadline`` is how long a holder has to arrive (``OnSite``) or close;
    ``on_site_deadline``, if set, how long to close once on site before the centre is
    alerted to follow up.
    """

    steps: tuple[Step, ...]
    centre: CentreStep
    accepted_deadline: timedelta
    on_site_deadline: timedelta | None = None

    def __post_init__(self) -> None:
        _positive("accepted_deadline", self.accepted_deadline)
        if self.on_site_deadline is not None:
            _positive("on_site_deadline", self.on_site_deadline)


def _positive(name: str, value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{name} must be positive, got {value}")


# --------------------------------------------------------------------------- state


class Phase(enum.StrEnum):
    """Where a case's escalation stands (DESIGN.md section 6)."""

    NEW = "new"  # snapshot taken, not opened yet
    NOTIFYING = "notifying"  # step ``step_index`` notified, waiting for an accept
    AT_CENTRE = "at_centre"  # the operators' pool has it
    ACCEPTED = "accepted"  # ``accepted_by`` holds it: must arrive or close
    ON_SITE = "on_site"  # someone is with the user
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class CaseEscalation:
    """The stored escalation state of one case; every field is data the store keeps.

    ``notified``, ``acks`` and ``declined`` belong to the current step (or the centre)
    and are cleared whenever the case escalates. ``centre_alerts`` counts the alerts the
    centre has had (the first hand-over included).
    """

    policy: EscalationPolicy
    phase: Phase = Phase.NEW
    step_index: int = 0
    next_step_at: datetime | None = None
    accepted_by: str | None = None
    acks: frozenset[str] = frozenset()
    notified: frozenset[str] = frozenset()
    declined: frozenset[str] = frozenset()
    centre_alerts: int = 0

    @property
    def at_centre_index(self) -> int:
        """The ``step_index`` that stands for the centre."""
        return len(self.policy.steps)

    @property
    def current_step(self) -> Step | None:
        """The policy step being notified or that accepted; ``None`` for the centre."""
        steps = self.policy.steps
        return steps[self.step_index] if self.step_index < len(steps) else None


def new_case(policy: EscalationPolicy) -> CaseEscalation:
    """A case's escalation before ``Open``: the policy snapshot and nothing else."""
    return CaseEscalation(policy=policy)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Open:
    """The case opened: start notifying."""

    now: datetime


@dataclass(frozen=True, slots=True)
class Tick:
    """The engine's clock: a deadline may be due. Does nothing before ``next_step_at``."""

    now: datetime


@dataclass(frozen=True, slots=True)
class Accept:
    """Someone takes responsibility (app, SMS reply, console)."""

    who: str
    now: datetime
    is_operator: bool = False


@dataclass(frozen=True, slots=True)
class Decline:
    """A notified person says they cannot take it (or a holder gives it back)."""

    who: str
    now: datetime


@dataclass(frozen=True, slots=True)
class OnSite:
    """Someone is with the user: SCAIP status 0088 "carer present", or the app."""

    who: str
    now: datetime


@dataclass(frozen=True, slots=True)
class Close:
    """The case is closed with an outcome (``resolved_by_phone``, ``ambulance``...).
    Whether ``who`` may close is the API's decision (roles), not this module's."""

    who: str
    outcome: str
    now: datetime


@dataclass(frozen=True, slots=True)
class NotifiedPeople:
    """The engine reports whom it actually notified for a step (or the centre), so that
    acceptance can be checked. Reports add up; a report for another step is stale and
    ignored."""

    step_index: StepRef
    people: frozenset[str]


Input: TypeAlias = Open | Tick | Accept | Decline | OnSite | Close | NotifiedPeople


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Notify:
    """Notify a step's recipients (resolved to people by the engine) on its channels.
    ``step_index`` is ``"centre"`` for the operators' pool."""

    step_index: StepRef
    recipients: tuple[Recipient, ...]
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AlertCentre:
    """``repeat`` 0 hands the case to the centre; 1, 2... re-alert all operators and the
    supervisor because nobody accepted in time."""

    repeat: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """``who`` now holds the case; ``acks`` is everyone who acknowledged (multi-ack)."""

    who: str
    acks: frozenset[str]


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """A multi-ack step recorded ``who``; ``waiting_for`` have not acknowledged yet."""

    who: str
    waiting_for: frozenset[str]


@dataclass(frozen=True, slots=True)
class Declined:
    """``who`` declined; recorded for the case log."""

    who: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A peer's input was refused; ``who`` must be told ``reason``."""

    who: str
    reason: str


@dataclass(frozen=True, slots=True)
class MarkOnSite:
    who: str


@dataclass(frozen=True, slots=True)
class Closed:
    outcome: str
    who: str


@dataclass(frozen=True, slots=True)
class Escalated:
    """The case moved on without being taken; ``reason`` goes to the case log."""

    reason: str


Action: TypeAlias = (
    Notify
    | AlertCentre
    | Accepted
    | Acknowledged
    | Declined
    | Rejected
    | MarkOnSite
    | Closed
    | Escalated
)
Result: TypeAlias = tuple[CaseEscalation, tuple[Action, ...]]

CENTRE_RECIPIENTS = (Recipient("operators", "pool"),)
CENTRE_REALERT_RECIPIENTS = (Recipient("operators", "pool"), Recipient("supervisor", "centre"))


# --------------------------------------------------------------------------- helpers


def span(value: timedelta) -> str:
    """A deadline as an operator reads it in the case log: "5 min", "90 s", "2 h"."""
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{value.total_seconds():g} s"


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"escalation needs an aware datetime, got naive {now!r}")
    return now


def _enter(
    state: CaseEscalation,
    phase: Phase,
    step_index: int,
    next_step_at: datetime,
    *,
    keep_records: bool = False,
    centre_alerts: int | None = None,
) -> CaseEscalation:
    """The state on entering a step or the centre. The holder and the per-step records
    (notified, acks, declines) are cleared, since they belong to the step left behind,
    unless ``keep_records`` (a centre re-alert stays in the same "step")."""
    return dataclasses.replace(
        state,
        phase=phase,
        step_index=step_index,
        next_step_at=next_step_at,
        accepted_by=None,
        acks=state.acks if keep_records else frozenset(),
        notified=state.notified if keep_records else frozenset(),
        declined=state.declined if keep_records else frozenset(),
        centre_alerts=state.centre_alerts if centre_alerts is None else centre_alerts,
    )


def _notify_step(state: CaseEscalation, index: int, start: datetime) -> Result:
    """Enter step ``index`` (or the centre past the last step); deadlines count from
    ``start``."""
    steps = state.policy.steps
    if index >= len(steps):
        return _alert_centre(state, start)
    s = steps[index]
    new = _enter(state, Phase.NOTIFYING, index, start + s.accept_within)
    return new, (Notify(index, s.recipients, s.channels),)


def _alert_centre(state: CaseEscalation, start: datetime) -> Result:
    """Hand the case to the centre (or alert it again); the deadline counts from
    ``start``. A holder, if any, is dropped: the centre takes over."""
    centre = state.policy.centre
    repeat = state.centre_alerts
    wait = centre.accept_within if repeat == 0 else centre.re_alert_every
    new = _enter(
        state,
        Phase.AT_CENTRE,
        state.at_centre_index,
        start + wait,
        keep_records=state.phase is Phase.AT_CENTRE,
        centre_alerts=repeat + 1,
    )
    recipients = CENTRE_RECIPIENTS if repeat == 0 else CENTRE_REALERT_RECIPIENTS
    return new, (AlertCentre(repeat), Notify(CENTRE, recipients, centre.channels))


def _escalate(state: CaseEscalation, reason: str, start: datetime) -> Result:
    """Move past the current step: the next one, or the centre after the last."""
    new, actions = _notify_step(state, state.step_index + 1, start)
    return new, (Escalated(reason), *actions)


def _escalation_start(state: CaseEscalation, now: datetime) -> datetime:
    """When an early escalation (a decline) counts from: ``now``, or the stored deadline if
    that was already due and its Tick has not come yet, so an early escalation can never
    make the next deadline later than the Tick would have."""
    due = state.next_step_at
    return now if due is None or now < due else due


def _step_name(state: CaseEscalation) -> str:
    return "the centre" if state.current_step is None else f"step {state.step_index + 1}"


def _unchanged(state: CaseEscalation, *actions: Action) -> Result:
    return state, actions


# --------------------------------------------------------------------------- handlers
# Each handler is (state, input) -> (state, actions); the table below says which runs.
# Tick handlers run only once ``next_step_at`` is due (checked in ``step``).


def _open(state: CaseEscalation, event: Input) -> Result:
    assert isinstance(event, Open)
    return _notify_step(state, 0, event.now)


def _open_twice(state: CaseEscalation, event: Input) -> Result:
    raise ValueError(f"Open on a case already {state.phase.value}: resume it, do not reopen")


def _ignore(state: CaseEscalation, event: Input) -> Result:
    return state, ()


def _not_open(state: CaseEscalation, event: Input) -> Result:
    return _unchanged(state, Rejected(_who(event), "case not open yet"))


def _is_closed(state: CaseEscalation, event: Input) -> Result:
    return _unchanged(state, Rejected(_who(event), "case closed"))


def _who(event: Input) -> str:
    assert isinstance(event, Accept | Decline | OnSite | Close)
    return event.who


def _step_overdue(state: CaseEscalation, event: Input) -> Result:
    assert state.next_step_at is not None and state.current_step is not None
    reason = (
        f"nobody accepted step {state.step_index + 1} "
        f"within {span(state.current_step.accept_within)}"
    )
    return _escalate(state, reason, state.next_step_at)


def _centre_overdue(state: CaseEscalation, event: Input) -> Result:
    assert isinstance(event, Tick)
    return _alert_centre(state, event.now)


def _accepted_overdue(state: CaseEscalation, event: Input) -> Result:
    assert state.next_step_at is not None
    reason = (
        f"accepted by {state.accepted_by} but nobody on site or closed "
        f"within {span(state.policy.accepted_deadline)}"
    )
    return _escalate(state, reason, state.next_step_at)


def _on_site_overdue(state: CaseEscalation, event: Input) -> Result:
    assert state.next_step_at is not None and state.policy.on_site_deadline is not None
    reason = f"on site but not closed within {span(state.policy.on_site_deadline)}"
    new, actions = _alert_centre(state, state.next_step_at)
    return new, (Escalated(reason), *actions)


def _accept(state: CaseEscalation, event: Input) -> Result:
    """Accept while notifying or at the centre: a notified person, or any operator."""
    assert isinstance(event, Accept)
    who = event.who
    if not event.is_operator and who not in state.notified:
        return _unchanged(state, Rejected(who, f"not notified for {_step_name(state)}"))
    s = state.current_step
    acks = state.acks | {who}
    if s is not None and s.require_all and not event.is_operator:
        waiting = state.notified - acks
        if waiting:
            new = dataclasses.replace(state, acks=acks, declined=state.declined - {who})
            return new, (Acknowledged(who, waiting),)
    new = dataclasses.replace(
        state,
        phase=Phase.ACCEPTED,
        accepted_by=who,
        acks=acks,
        declined=state.declined - {who},
        next_step_at=event.now + state.policy.accepted_deadline,
    )
    return new, (Accepted(who, acks),)


def _accept_held(state: CaseEscalation, event: Input) -> Result:
    """Accept while someone holds the case: idempotent for the holder (an app that
    retries), refused for anyone else, naming the holder."""
    assert isinstance(event, Accept)
    if event.who == state.accepted_by:
        return state, ()
    return _unchanged(state, Rejected(event.who, f"already accepted by {state.accepted_by}"))


def _decline(state: CaseEscalation, event: Input) -> Result:
    """A notified person declines; escalate at once if the step can no longer be taken."""
    assert isinstance(event, Decline)
    who = event.who
    if who not in state.notified:
        return _unchanged(state, Rejected(who, f"not notified for {_step_name(state)}"))
    new = dataclasses.replace(state, declined=state.declined | {who}, acks=state.acks - {who})
    s = new.current_step
    if s is None:  # the centre: recorded, the re-alerts go on
        return new, (Declined(who),)
    if s.require_all or new.notified <= new.declined:
        reason = f"step {new.step_index + 1} declined by {', '.join(sorted(new.declined))}"
        escalated, actions = _escalate(new, reason, _escalation_start(new, event.now))
        return escalated, (Declined(who), *actions)
    return new, (Declined(who),)


def _decline_held(state: CaseEscalation, event: Input) -> Result:
    """The holder gives an accepted case back: escalate at once. Others are refused."""
    assert isinstance(event, Decline)
    if event.who != state.accepted_by:
        return _unchanged(state, Rejected(event.who, f"already accepted by {state.accepted_by}"))
    reason = f"{event.who} gave the case back"
    start = _escalation_start(state, event.now)
    if state.current_step is None:
        new, actions = _alert_centre(state, start)
        return new, (Declined(event.who), Escalated(reason), *actions)
    new, actions = _escalate(state, reason, start)
    return new, (Declined(event.who), *actions)


def _decline_on_site(state: CaseEscalation, event: Input) -> Result:
    return _unchanged(state, Rejected(_who(event), "someone is already on site"))


def _on_site(state: CaseEscalation, event: Input) -> Result:
    """Someone arrived. Presence is a fact, not a claim: it is recorded whoever reports
    it, and if nobody held the case the person on site now does."""
    assert isinstance(event, OnSite)
    deadline = state.policy.on_site_deadline
    new = dataclasses.replace(
        state,
        phase=Phase.ON_SITE,
        accepted_by=state.accepted_by or event.who,
        next_step_at=None if deadline is None else event.now + deadline,
    )
    return new, (MarkOnSite(event.who),)


def _on_site_again(state: CaseEscalation, event: Input) -> Result:
    """Another presence signal: logged, the deadline is not extended."""
    return _unchanged(state, MarkOnSite(_who(event)))


def _close(state: CaseEscalation, event: Input) -> Result:
    assert isinstance(event, Close)
    new = dataclasses.replace(state, phase=Phase.CLOSED, next_step_at=None)
    return new, (Closed(event.outcome, event.who),)


def _notified(state: CaseEscalation, event: Input) -> Result:
    """Record whom the engine reached for the current step; nobody at all means the
    step cannot be accepted, so it escalates at once (not at the centre: nowhere to go)."""
    assert isinstance(event, NotifiedPeople)
    current: StepRef = CENTRE if state.current_step is None else state.step_index
    if event.step_index != current:
        return state, ()  # a late report for a step already left behind
    new = dataclasses.replace(state, notified=state.notified | event.people)
    if new.notified or new.current_step is None:
        return new, ()
    assert new.next_step_at is not None
    # the step started accept_within before its deadline: escalate from that moment
    started = new.next_step_at - new.current_step.accept_within
    return _escalate(new, f"nobody could be notified for step {new.step_index + 1}", started)


Handler: TypeAlias = Callable[[CaseEscalation, Input], Result]

_TRANSITIONS: Mapping[tuple[Phase, type], Handler] = MappingProxyType(
    {
        # NEW: waiting for Open
        (Phase.NEW, Open): _open,
        (Phase.NEW, Tick): _ignore,
        (Phase.NEW, Accept): _not_open,
        (Phase.NEW, Decline): _not_open,
        (Phase.NEW, OnSite): _not_open,
        (Phase.NEW, Close): _close,
        (Phase.NEW, NotifiedPeople): _ignore,
        # NOTIFYING step i
        (Phase.NOTIFYING, Open): _open_twice,
        (Phase.NOTIFYING, Tick): _step_overdue,
        (Phase.NOTIFYING, Accept): _accept,
        (Phase.NOTIFYING, Decline): _decline,
        (Phase.NOTIFYING, OnSite): _on_site,
        (Phase.NOTIFYING, Close): _close,
        (Phase.NOTIFYING, NotifiedPeople): _notified,
        # AT_CENTRE: the final sink
        (Phase.AT_CENTRE, Open): _open_twice,
        (Phase.AT_CENTRE, Tick): _centre_overdue,
        (Phase.AT_CENTRE, Accept): _accept,
        (Phase.AT_CENTRE, Decline): _decline,
        (Phase.AT_CENTRE, OnSite): _on_site,
        (Phase.AT_CENTRE, Close): _close,
        (Phase.AT_CENTRE, NotifiedPeople): _notified,
        # ACCEPTED: must arrive or close
        (Phase.ACCEPTED, Open): _open_twice,
        (Phase.ACCEPTED, Tick): _accepted_overdue,
        (Phase.ACCEPTED, Accept): _accept_held,
        (Phase.ACCEPTED, Decline): _decline_held,
        (Phase.ACCEPTED, OnSite): _on_site,
        (Phase.ACCEPTED, Close): _close,
        (Phase.ACCEPTED, NotifiedPeople): _ignore,
        # ON_SITE: must close
        (Phase.ON_SITE, Open): _open_twice,
        (Phase.ON_SITE, Tick): _on_site_overdue,
        (Phase.ON_SITE, Accept): _accept_held,
        (Phase.ON_SITE, Decline): _decline_on_site,
        (Phase.ON_SITE, OnSite): _on_site_again,
        (Phase.ON_SITE, Close): _close,
        (Phase.ON_SITE, NotifiedPeople): _ignore,
        # CLOSED: ticks ignored, peers told
        (Phase.CLOSED, Open): _open_twice,
        (Phase.CLOSED, Tick): _ignore,
        (Phase.CLOSED, Accept): _is_closed,
        (Phase.CLOSED, Decline): _is_closed,
        (Phase.CLOSED, OnSite): _is_closed,
        (Phase.CLOSED, Close): _is_closed,
        (Phase.CLOSED, NotifiedPeople): _ignore,
    }
)


def step(state: CaseEscalation, event: Input) -> Result:
    """Apply one input: the new state and the actions for the engine to log and carry out.

    A ``Tick`` before ``next_step_at`` (or with no deadline) returns the state unchanged
    and no actions; a due Tick performs exactly one transition (see the module's notes on
    late ticks). Raises ``ValueError`` only for programming errors.
    """
    if not isinstance(event, NotifiedPeople):
        _aware(event.now)
    if isinstance(event, Tick) and (state.next_step_at is None or event.now < state.next_step_at):
        return state, ()
    return _TRANSITIONS[state.phase, type(event)](state, event)

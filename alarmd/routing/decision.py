"""What routing is asked and what it answers: the contract between rules and the engine.

``rules.decide(config, facts, now) -> Decision`` is pure; the engine gathers ``RouteFacts``
from the event and the directory, asks, and copies the ``Decision`` into the case (its
policy is the snapshot of DESIGN.md invariant 4, its explanation the first lines of the
case log). Only plain frozen data lives here, so the engine, the rules, the route tools and
the tests can all share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeAlias

from alarmd.model import Category, EventKind, Priority
from alarmd.routing.escalation import EscalationPolicy

__all__ = ["MODES", "Decision", "Location", "Mode", "Queue", "RouteFacts"]

Mode: TypeAlias = Literal["response", "routing", "routing_with_backup"]
Location: TypeAlias = Literal["home", "away", "care_home"]
Queue: TypeAlias = Literal["alarm", "technical"]
MODES: tuple[Mode, ...] = ("response", "routing", "routing_with_backup")


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """Everything a route may match on, for one alarm.

    ``tenant`` is ``None`` for a source nobody registered: such an alarm goes to the
    centre whatever any tenant says (invariant 3). ``plan_mode`` is the user's response
    plan override, if any.
    """

    tenant: str | None
    kind: EventKind
    priority: Priority
    user_group: str | None = None
    plan_mode: Mode | None = None
    location: Location = "home"
    registered: bool = True
    protocol: str = ""

    @property
    def category(self) -> Category:
        return self.kind.category


@dataclass(frozen=True, slots=True)
class Decision:
    """Where an alarm goes: the mode, the policy to snapshot, and why.

    ``policy.steps`` is empty for the response service (the centre at once). ``queue`` is
    ``technical`` for technical events: the console shows them apart and never rings for
    them. ``hold_until`` (technical notices only) delays the first notification until a
    window opens, e.g. the supplier's office hours; it never discards anything.
    ``explanation`` is human-readable lines, stored in the case log and printed by
    ``alarmctl routes explain``.
    """

    mode: Mode
    policy: EscalationPolicy
    rule: str
    queue: Queue = "alarm"
    hold_until: datetime | None = None
    explanation: tuple[str, ...] = ()

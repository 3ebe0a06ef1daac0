"""The routing engine against a real SQLite store, driven by a fake clock.

Events enter through the real intake; the engine opens, routes and escalates cases; the
tests look at what was committed (cases, case log, outbox), never at timers. No test sleeps:
time moves with ``clock.advance`` and deadlines fire with ``engine.run_due()``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alarmd.clock import FakeClock
from alarmd.intake import Intake
from alarmd.model import Condition, Event, EventKind, Flag
from alarmd.routing.decision import Decision, RouteFacts
from alarmd.routing.engine import Engine
from alarmd.routing.escalation import CentreStep, EscalationPolicy, Recipient, Step
from alarmd.store.db import Store

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday morning
CENTRE = CentreStep(accept_within=timedelta(minutes=2), re_alert_every=timedelta(minutes=1))
NOW = "2026-03-02T09:00:00.000000Z"


def routing_policy(**kw: Any) -> EscalationPolicy:
    return EscalationPolicy(
        steps=(
            Step(
                recipients=(Recipient("team", "plan"),),
                channels=("sms", "webhook"),
                accept_within=timedelta(minutes=3),
                require_all=kw.get("require_all", False),
            ),
            Step(
                recipients=(Recipient("next_of_kin", "1"),),
                channels=("sms",),
                accept_within=timedelta(minutes=2),
            ),
        ),
        centre=CENTRE,
        accepted_deadline=timedelta(minutes=30),
        on_site_deadline=kw.get("on_site_deadline"),
    )


class Router:
    """A stand-in for the rules: routing with backup for alarms, the centre otherwise."""

    def __init__(self) -> None:
        self.policy = routing_policy()
        self.hold_until: datetime | None = None
        self.calls: list[RouteFacts] = []
        self.fail = False

    def __call__(self, facts: RouteFacts, now: datetime) -> Decision:
        self.calls.append(facts)
        if self.fail:
            raise RuntimeError("a bug in the rules")
        if not facts.registered:
            return Decision(
                "response",
                EscalationPolicy((), CENTRE, timedelta(hours=1)),
                "centre:unregistered",
            )
        if facts.category.value == "technical":
            return Decision(
                "routing",
                EscalationPolicy(
                    (
                        Step(
                            (Recipient("staff", "supplier-desk"),), ("webhook",), timedelta(hours=4)
                        ),
                    ),
                    CENTRE,
                    timedelta(hours=8),
                ),
                "technical",
                queue="technical",
                hold_until=self.hold_until,
            )
        return Decision("routing_with_backup", self.policy, "day-routing", explanation=("why",))


def seed_directory(conn: sqlite3.Connection) -> None:
    """One municipality: a user with a pendant (DC-09 1234), a team of two, a next of kin."""
    conn.execute("INSERT INTO tenants VALUES ('eksempel-kommune', 'Eksempel kommune', ?)", (NOW,))
    conn.execute(
        "INSERT INTO service_users (id, tenant, ref, first_name, last_name, address, updated_at)"
        " VALUES (1, 'eksempel-kommune', 'u-1', 'Astrid', 'Testesen', 'Eksempelveien 1', ?)",
        (NOW,),
    )
    conn.execute(
        "INSERT INTO devices (tenant, user_id, protocol, identity, updated_at)"
        " VALUES ('eksempel-kommune', 1, 'dc09', '1234', ?)",
        (NOW,),
    )
    conn.execute(
        "INSERT INTO response_plans (user_id, home_care_team, updated_at) VALUES (1, 'sentrum', ?)",
        (NOW,),
    )
    conn.execute(
        "INSERT INTO contacts (id, user_id, position, name, phone, channels)"
        " VALUES (1, 1, 1, 'Per Testesen', '+4700000002', '{\"sms\": \"+4700000002\"}')"
    )
    conn.execute(
        "INSERT INTO teams (id, tenant, ref, name, updated_at)"
        " VALUES (1, 'eksempel-kommune', 'sentrum', 'Hjemmetjenesten sentrum', ?)",
        (NOW,),
    )
    for staff_id, name, sms in ((1, "Kari", "+4700000101"), (2, "Ola", "+4700000102")):
        conn.execute(
            "INSERT INTO staff (id, tenant, ref, name, channels, updated_at)"
            " VALUES (?, 'eksempel-kommune', ?, ?, ?, ?)",
            (staff_id, name.lower(), name, json.dumps({"sms": sms}), NOW),
        )
        conn.execute("INSERT INTO team_members (team_id, staff_id) VALUES (1, ?)", (staff_id,))
    conn.execute(
        "INSERT INTO staff (id, tenant, ref, name, role, channels, updated_at)"
        " VALUES (3, 'eksempel-kommune', 'supplier-desk', 'Servicedesk', 'supplier',"
        ' \'{"webhook": "supplier-desk"}\', ?)',
        (NOW,),
    )


class World:
    def __init__(self, store: Store, clock: FakeClock, router: Router) -> None:
        self.store = store
        self.clock = clock
        self.router = router
        self.engine = Engine(store, clock, router)
        self.intake = Intake(
            store, dedup_window=timedelta(hours=24), tenant_of=lambda p, s: "eksempel-kommune"
        )
        self.intake.set_case_hook(self.engine.on_event)
        self.intake.add_listener(self.engine.events_committed)
        self.seq = 0

    async def send(
        self,
        kind: EventKind = EventKind.FALL,
        *,
        source: str = "1234",
        condition: Condition = Condition.ALARM,
        key: str | None = None,
    ) -> int:
        self.seq += 1
        event = Event(
            protocol="dc09",
            source=source,
            kind=kind,
            condition=condition,
            priority=kind.default_priority,
            received_at=self.clock.now(),
            dedup_key=key or f"dc09:{source}:{self.seq}",
            raw=b"frame",
        )
        receipt = await self.intake.submit([event])
        return receipt.event_ids[0]

    async def tick(self, seconds: float = 0) -> None:
        self.clock.advance(seconds)
        await self.engine.run_due()

    def q(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.store.path)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def log(self, case_id: int = 1) -> list[tuple[str, str]]:
        return [
            (t, m)
            for t, m in self.q(
                "SELECT type, message FROM case_log WHERE case_id = ? ORDER BY id", case_id
            )
        ]

    def types(self, case_id: int = 1) -> list[str]:
        return [t for t, _ in self.log(case_id)]

    def case(self, case_id: int = 1) -> dict[str, Any]:
        conn = sqlite3.connect(self.store.path)
        conn.row_factory = sqlite3.Row
        try:
            return dict(conn.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone())
        finally:
            conn.close()

    def outbox(self) -> list[tuple[Any, ...]]:
        return self.q("SELECT channel, person, address, status FROM outbox ORDER BY id")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_directory)
    yield World(store, FakeClock(T0), Router())
    await store.close()


async def test_alarm_opens_a_case_in_the_events_transaction(world: World) -> None:
    event_id = await world.send()
    # committed with the event, before the engine has routed anything
    case = world.case()
    assert (case["state"], case["user_id"], case["first_event_id"]) == ("new", 1, event_id)
    assert world.q("SELECT case_id FROM events WHERE id = ?", event_id) == [(1,)]
    assert case["next_step_at"] == NOW


async def test_routing_with_backup_nobody_accepts_reaches_the_centre_on_time(world: World) -> None:
    await world.send()
    await world.tick()
    case = world.case()
    assert (case["state"], case["mode"], case["rule"]) == (
        "notifying",
        "routing_with_backup",
        "day-routing",
    )
    assert case["next_step_at"] == "2026-03-02T09:03:00.000000Z"
    # both team members on duty get an SMS; nobody has a webhook address
    assert world.outbox() == [
        ("sms", "staff:1", "+4700000101", "pending"),
        ("sms", "staff:2", "+4700000102", "pending"),
    ]
    await world.tick(179)  # one second before the deadline: nothing moves
    assert world.case()["state"] == "notifying"
    assert world.types().count("escalated") == 0
    await world.tick(1)  # 09:03: step 2, next of kin
    assert world.case()["next_step_at"] == "2026-03-02T09:05:00.000000Z"
    assert world.outbox()[-1] == ("sms", "contact:1", "+4700000002", "pending")
    await world.tick(120)  # 09:05: the centre
    case = world.case()
    assert case["state"] == "at_centre"
    assert case["next_step_at"] == "2026-03-02T09:07:00.000000Z"
    await world.tick(120)  # 09:07: nobody at the centre accepted: re-alert every minute
    assert world.case()["next_step_at"] == "2026-03-02T09:08:00.000000Z"
    assert world.types() == [
        "opened",
        "routed",
        "notify",
        "notify",
        "escalated",
        "notify",
        "escalated",
        "centre",
        "centre",
    ]
    assert "re-alert 1" in world.log()[-1][1]


async def test_accepted_but_nobody_arrives_escalates_again(world: World) -> None:
    await world.send()
    await world.tick()
    result = await world.engine.accept(1, "staff:1", is_operator=False)
    assert result.rejected is None
    assert result.case is not None and result.case.state == "accepted"
    # the other member's pending SMS is cancelled: the case is taken
    assert [row[3] for row in world.outbox()] == ["cancelled", "cancelled"]
    await world.tick(30 * 60)  # the accepted deadline passes with nobody on site
    case = world.case()
    assert (case["state"], case["accepted_by"]) == ("notifying", None)
    assert "accepted by staff:1 but nobody on site" in world.log()[-2][1]
    assert world.outbox()[-1][1] == "contact:1"


async def test_multi_ack_needs_everyone(world: World) -> None:
    world.router.policy = routing_policy(require_all=True)
    await world.send()
    await world.tick()
    first = await world.engine.accept(1, "staff:1", is_operator=False)
    assert first.case is not None and first.case.state == "notifying"
    assert "waiting for staff:2" in world.log()[-1][1]
    second = await world.engine.accept(1, "staff:2", is_operator=False)
    assert second.case is not None and second.case.state == "accepted"


async def test_carer_present_signal_marks_the_case_on_site(world: World) -> None:
    world.router.policy = routing_policy(on_site_deadline=timedelta(hours=1))
    await world.send()
    await world.tick()
    await world.engine.accept(1, "staff:2", is_operator=False)
    await world.send(EventKind.CARER_PRESENT, condition=Condition.STATUS)
    case = world.case()
    assert (case["state"], case["accepted_by"]) == ("on_site", "staff:2")
    assert world.log()[-1] == ("on_site", "on site: device:dc09:1234")
    await world.engine.close(1, "staff:2", "home_care_dispatched", note="Hjalp henne opp.")
    case = world.case()
    assert (case["state"], case["outcome"], case["close_note"]) == (
        "closed",
        "home_care_dispatched",
        "Hjalp henne opp.",
    )


async def test_second_press_joins_the_open_case_and_retransmission_is_silent(world: World) -> None:
    await world.send(key="k1")
    await world.send(key="k1")  # a retransmission: no second row, no log line
    await world.send(key="k2")  # a second press of the same pendant
    assert world.q("SELECT count(*) FROM cases") == [(1,)]
    assert world.case()["event_count"] == 2
    assert world.types() == ["opened", "event"]
    await world.send(EventKind.ASSISTANCE)  # another kind: its own case
    assert world.q("SELECT count(*) FROM cases") == [(2,)]


async def test_two_operators_accept_at_once_exactly_one_wins(world: World) -> None:
    await world.send()
    await world.tick()
    a, b = await asyncio.gather(
        world.engine.accept(1, "operator:anne", is_operator=True),
        world.engine.accept(1, "operator:bjorn", is_operator=True),
    )
    assert [a.rejected, b.rejected].count(None) == 1
    loser = b if a.rejected is None else a
    winner = "operator:anne" if a.rejected is None else "operator:bjorn"
    assert loser.rejected == f"already accepted by {winner}"
    assert world.case()["accepted_by"] == winner
    assert world.types().count("accepted") == 1


async def test_unregistered_source_goes_straight_to_the_centre(world: World) -> None:
    await world.send(source="9999")
    await world.tick()
    case = world.case()
    assert (case["state"], case["mode"], case["user_id"]) == ("at_centre", "response", None)
    assert Flag.UNREGISTERED.value in case["flags"]
    assert world.router.calls[-1].registered is False


async def test_a_rules_bug_still_reaches_the_centre(world: World) -> None:
    world.router.fail = True
    await world.send()
    await world.tick()
    case = world.case()
    assert (case["state"], case["rule"]) == ("at_centre", "centre:routing-error")


async def test_technical_notice_is_held_then_released(world: World) -> None:
    world.router.hold_until = T0 + timedelta(hours=2)
    await world.send(EventKind.MAINS_LOST)
    await world.tick()
    case = world.case()
    assert (case["state"], case["queue"], case["next_step_at"]) == (
        "new",
        "technical",
        "2026-03-02T11:00:00.000000Z",
    )
    assert world.outbox() == []
    await world.tick(2 * 3600)
    assert world.case()["state"] == "notifying"
    assert world.outbox() == [("webhook", "staff:3", "supplier-desk", "pending")]


async def test_restore_closes_an_untaken_technical_case(world: World) -> None:
    await world.send(EventKind.MAINS_LOST)
    await world.tick()
    await world.send(EventKind.MAINS_LOST, condition=Condition.RESTORE)
    case = world.case()
    assert (case["state"], case["outcome"]) == ("closed", "technical")
    assert world.outbox()[0][3] == "cancelled"


async def test_person_not_notified_cannot_accept(world: World) -> None:
    await world.send()
    await world.tick()
    result = await world.engine.accept(1, "contact:1", is_operator=False)
    assert result.rejected == "not notified for step 1"
    assert world.case()["state"] == "notifying"


async def test_close_needs_a_known_outcome(world: World) -> None:
    await world.send()
    await world.tick()
    with pytest.raises(ValueError, match="nonsense"):
        await world.engine.close(1, "operator:anne", "nonsense")


async def test_restart_resumes_every_deadline_once(tmp_path: Path) -> None:
    """A new engine on the same database (as after a crash) fires what fell due meanwhile,
    each deadline once, in order."""
    clock = FakeClock(T0)
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_directory)
    first = World(store, clock, Router())
    await first.send()
    await first.tick()  # step 1 notified, deadline 09:03
    await store.close()  # the engine and its heap are gone

    clock.advance(10 * 60)  # down for ten minutes
    store = await Store.open(tmp_path / "alarmd.sqlite")
    second = World(store, clock, Router())
    assert await second.engine.load() == 1
    await second.engine.run_due()
    case = second.case()
    # step 2 at 09:03, the centre at 09:05, its deadline 09:07 passed too: one re-alert
    assert case["state"] == "at_centre"
    assert second.types().count("escalated") == 2
    assert second.types().count("centre") == 2
    await second.engine.run_due()  # nothing fires twice
    assert second.types().count("centre") == 2
    await store.close()

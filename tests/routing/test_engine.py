"""The routing engine against a real SQLite store, driven by a fake clock.

Events enter through the real intake; the engine opens, routes and escalates cases; the
tests look at what was committed (cases, case log, outbox), never at timers. No test sleeps:
time moves with ``clock.advance`` and deadlines fire with ``engine.run_due()``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from alarmd.clock import FakeClock
from alarmd.model import Condition, EventKind, Flag
from alarmd.routing.escalation import CentreStep, EscalationPolicy, Recipient, Step
from alarmd.store.db import Store

from caseworld import NOW, T0, Router, World, routing_policy, seed_directory, world

__all__ = ["world"]  # the fixture, imported for pytest


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
    assert world.types() == ["opened"]  # the case's events are listed from the events table
    assert world.q("SELECT count(*) FROM events WHERE case_id = 1") == [(2,)]
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


async def test_a_step_nobody_can_be_reached_in_escalates_at_once(tmp_path: Path) -> None:
    """This daemon runs no SMS channel: the team (SMS only) cannot be reached, so the case
    goes on to the next step at once rather than wait five minutes for nobody."""
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_directory)
    world = World(store, FakeClock(T0), Router(), channels=frozenset({"webhook"}))
    world.router.policy = EscalationPolicy(
        steps=(
            Step((Recipient("team", "plan"),), ("sms",), timedelta(minutes=5)),
            Step((Recipient("staff", "supplier-desk"),), ("webhook",), timedelta(minutes=5)),
        ),
        centre=CentreStep(timedelta(minutes=2), timedelta(minutes=1)),
        accepted_deadline=timedelta(minutes=30),
    )
    await world.send()
    await world.tick()
    case = world.case()
    assert case["next_step_at"] == "2026-03-02T09:05:00.000000Z"
    assert world.outbox() == [("webhook", "staff:3", "supplier-desk", "pending")]
    assert "cannot be reached by sms" in world.log()[2][1]
    assert "nobody could be notified for step 1" in next(
        m for t, m in world.log() if t == "escalated"
    )
    await store.close()


async def test_outage_hold_delays_only_a_mains_lost_case_never_an_alarm(world: World) -> None:
    """With supervision running, a mains-lost report's case waits for the outage window (it
    may be folded into an incident); a fall from the same user is routed at once."""
    world.engine.set_outage_hold(timedelta(minutes=5))
    await world.send(EventKind.MAINS_LOST)
    await world.send(EventKind.FALL)
    await world.tick()
    rows = world.q("SELECT kind, state, next_step_at FROM cases ORDER BY id")
    assert rows == [
        ("mains_lost", "new", "2026-03-02T09:05:00.000000Z"),
        ("fall", "notifying", "2026-03-02T09:03:00.000000Z"),
    ]
    assert "held" in world.types(1)
    # nothing to fold into: no incident case exists
    assert (
        await world.engine.fold_outage(("supervision", "incident:x:1"), [], [("dc09", "1234")])
        is None
    )
    await world.tick(5 * 60)
    assert world.q("SELECT state, queue FROM cases WHERE id = 1") == [("notifying", "technical")]


async def test_a_technical_case_is_per_device_so_one_restore_closes_only_its_own(
    world: World,
) -> None:
    """Astrid has a safety alarm and a GPS unit; both go silent, only the GPS comes back:
    the safety alarm's link-lost case stays open. (Alarms still join per user and kind.)"""

    def second_device(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO devices (tenant, user_id, protocol, identity, updated_at)"
            " VALUES ('eksempel-kommune', 1, 'dc09', '4321', ?)",
            (NOW,),
        )

    await world.store.writer.submit(second_device)
    await world.send(EventKind.LINK_LOST, source="1234")
    await world.send(EventKind.LINK_LOST, source="4321")
    await world.tick()
    assert [r[0] for r in world.q("SELECT source FROM cases ORDER BY id")] == ["1234", "4321"]
    await world.send(EventKind.LINK_LOST, source="4321", condition=Condition.RESTORE)
    await world.tick()
    assert world.case(1)["closed_at"] is None
    assert world.case(2)["closed_at"] is not None
    # two presses from the two devices are still one alarm situation
    await world.send(EventKind.ASSISTANCE, source="1234")
    await world.send(EventKind.ASSISTANCE, source="4321")
    assert world.q("SELECT count(*), sum(event_count) FROM cases WHERE kind = 'assistance'") == [
        (1, 2)
    ]


async def _send_together(world: World, sources: list[str]) -> list[int]:
    """Submit one event per source at once: intake stores them in one writer batch."""
    from alarmd.model import Event

    events = []
    for source in sources:
        world.seq += 1
        events.append(
            Event(
                protocol="dc09",
                source=source,
                kind=EventKind.FALL,
                condition=Condition.ALARM,
                priority=EventKind.FALL.default_priority,
                received_at=world.clock.now(),
                dedup_key=f"dc09:{source}:{world.seq}",
                raw=b"frame",
            )
        )
    receipts = await asyncio.gather(*(world.intake.submit([e]) for e in events))
    return [r.event_ids[0] for r in receipts]


async def test_a_batch_of_presses_joins_one_case_and_every_event_names_it(world: World) -> None:
    ids = await _send_together(world, ["1234", "1234", "9999", "1234"])
    assert world.q("SELECT count(*) FROM cases") == [(2,)]
    assert world.case()["event_count"] == 3
    assert world.case()["user_id"] == 1
    assert world.case(2)["user_id"] is None and "unregistered" in world.case(2)["flags"]
    assert world.q("SELECT id, case_id FROM events ORDER BY id") == [
        (ids[0], 1),
        (ids[1], 1),
        (ids[2], 2),
        (ids[3], 1),
    ]
    await world.tick()
    assert world.case()["state"] == "notifying"
    assert world.case(2)["state"] == "at_centre"


async def test_a_case_bug_in_a_batch_fails_that_event_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's case work is undone and re-run event by event: the failing event gets its
    bare case, the others their ordinary ones, and every event is stored and acknowledged."""
    from alarmd.routing import engine as engine_module

    real = engine_module.case_key

    def broken(base: str, kind: EventKind, protocol: str, source: str) -> str:
        if source == "666":
            raise RuntimeError("a bug in case logic")
        return real(base, kind, protocol, source)

    monkeypatch.setattr(engine_module, "case_key", broken)
    ids = await _send_together(world, ["1234", "666", "1234"])
    rows = world.q(
        "SELECT e.id, c.open_key, c.event_count FROM events e JOIN cases c ON c.id = e.case_id"
        " ORDER BY e.id"
    )
    assert rows == [
        (ids[0], "user:1|fall", 2),
        (ids[1], f"bare:{ids[1]}", 1),
        (ids[2], "user:1|fall", 2),
    ]
    assert world.q("SELECT count(*) FROM cases") == [(2,)]
    await world.tick()
    states = dict(world.q("SELECT open_key, state FROM cases"))
    assert states == {"user:1|fall": "notifying", f"bare:{ids[1]}": "at_centre"}


async def test_a_batch_joining_open_cases_ends_as_one_event_at_a_time_would(
    tmp_path: Path,
) -> None:
    """The same events, once one by one and once in one batch, leave the same cases."""
    worlds = []
    for name in ("one", "batch"):
        store = await Store.open(tmp_path / f"{name}.sqlite")
        await store.writer.submit(seed_directory)
        w = World(store, FakeClock(T0), Router())
        await w.send(source="1234")
        await w.send(source="9999")
        w.clock.advance(5)
        worlds.append(w)
    one, batch = worlds
    sources = ["1234", "9999", "777", "1234", "777", "9999", "1234"]
    for source in sources:
        await one.send(source=source)
    await _send_together(batch, sources)
    cases = "SELECT * FROM cases ORDER BY id"
    assert one.q(cases) == batch.q(cases)
    events = "SELECT id, case_id FROM events ORDER BY id"
    assert one.q(events) == batch.q(events)
    assert batch.q("SELECT id, event_count, version FROM cases ORDER BY id") == [
        (1, 4, 4),
        (2, 3, 3),
        (3, 2, 2),
    ]
    for w in worlds:
        await w.store.close()


async def test_a_restore_still_closes_a_technical_case_opened_before_per_device_keys(
    world: World,
) -> None:
    """After an upgrade, an open link-lost case keyed the old way (per user and kind) is
    still closed by its device's restore; another device's restore leaves it alone."""
    await world.send(EventKind.LINK_LOST, source="1234")
    await world.tick()
    await world.store.writer.submit(
        lambda conn: conn.execute("UPDATE cases SET open_key = 'user:1|link_lost' WHERE id = 1")
    )
    await world.store.writer.submit(
        lambda conn: conn.execute(
            "INSERT INTO devices (tenant, user_id, protocol, identity, updated_at)"
            " VALUES ('eksempel-kommune', 1, 'dc09', '4321', ?)",
            (NOW,),
        )
    )
    await world.send(EventKind.LINK_LOST, source="4321", condition=Condition.RESTORE)
    await world.tick()
    assert world.case(1)["closed_at"] is None
    await world.send(EventKind.LINK_LOST, source="1234", condition=Condition.RESTORE)
    await world.tick()
    assert world.case(1)["closed_at"] is not None

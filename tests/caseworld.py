"""A small world for case tests: a real store, one municipality, a fake clock, a stand-in
for the rules, and the real intake and engine. Shared by the engine and the cases API tests."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alarmd.clock import FakeClock
from alarmd.intake import Intake
from alarmd.model import Condition, Event, EventKind
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
    def __init__(
        self,
        store: Store,
        clock: FakeClock,
        router: Router,
        channels: frozenset[str] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.router = router
        self.engine = Engine(store, clock, router, channels=channels)
        self.intake = Intake(
            store, dedup_window=timedelta(hours=24), tenant_of=lambda p, s: "eksempel-kommune"
        )
        self.intake.set_case_hook(self.engine.on_event, self.engine.on_events)
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

"""Supervision through the real intake, engine and store, on a fake clock (issue 6)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from alarmd.clock import FakeClock
from alarmd.model import EventKind
from alarmd.store.db import Store
from alarmd.supervision_service import SupervisionService

from caseworld import NOW, T0, Router, World, seed_directory

AREA_DEVICES = 1000


def seed_area(conn: sqlite3.Connection) -> None:
    """The pendant of the case world supervised every 5 minutes, and 1,000 more devices in
    one postcode, each with its own user, all supervised every 5 minutes."""
    seed_directory(conn)
    conn.execute("UPDATE service_users SET postcode = '0001' WHERE id = 1")
    conn.execute("UPDATE devices SET supervision_s = 300")
    conn.executemany(
        "INSERT INTO service_users (id, tenant, ref, first_name, last_name, postcode, updated_at)"
        " VALUES (?, 'eksempel-kommune', ?, 'Test', 'Person', '0002', ?)",
        ((1000 + n, f"u-{1000 + n}", NOW) for n in range(AREA_DEVICES)),
    )
    conn.executemany(
        "INSERT INTO devices (tenant, user_id, protocol, identity, supervision_s, updated_at)"
        " VALUES ('eksempel-kommune', ?, 'dc09', ?, 300, ?)",
        ((1000 + n, f"A{n}", NOW) for n in range(AREA_DEVICES)),
    )


class Supervised:
    def __init__(self, store: Store, clock: FakeClock) -> None:
        self.world = World(store, clock, Router())
        self.service = SupervisionService(
            store,
            self.world.intake,
            clock,
            outage_threshold=20,
            outage_window=timedelta(minutes=5),
            startup_grace=timedelta(minutes=10),
        )
        self.world.intake.add_listener(self.service.events_committed)

    async def start(self) -> None:
        await self.service.load()
        await self.world.engine.load()

    async def step(self, seconds: float) -> None:
        """Time passes; supervision and the engine each act once on what is due."""
        self.world.clock.advance(seconds)
        await self.service.run_due()
        await self.world.engine.run_due()

    def beat(self, *sources: str) -> None:
        for source in sources:
            self.service.seen("dc09", source)

    def cases(self) -> list[tuple[str, str, str, str | None]]:
        return [
            (source, kind, state, outcome)
            for source, kind, state, outcome in self.world.q(
                "SELECT source, kind, state, outcome FROM cases ORDER BY id"
            )
        ]


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervised]:
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_area)
    s = Supervised(store, FakeClock(T0))
    await s.start()
    yield s
    await store.close()


EVERYONE = [f"A{n}" for n in range(AREA_DEVICES)]


async def test_one_device_overdue_opens_one_technical_case_and_restored_closes_it(
    sup: Supervised,
) -> None:
    await sup.step(5 * 60)  # inside the start-up grace (10 min) everyone calls in
    sup.beat("1234", *EVERYONE)
    for _ in range(3):  # everyone but 1234 keeps calling in every 4 minutes
        await sup.step(4 * 60)
        sup.beat(*EVERYONE)
    # 1234's limit (5 min + 1 min grace) ran out at T0+11: reported lost at T0+13, then
    # pending for the outage window (5 min) in case its neighbours follow
    assert sup.cases() == []
    await sup.step(4 * 60)
    sup.beat(*EVERYONE)
    assert sup.cases() == [("1234", "link_lost", "notifying", None)]
    assert sup.world.q("SELECT queue FROM cases") == [("technical",)]
    sup.beat("1234", *EVERYONE)  # the line is back
    await sup.step(1)
    assert sup.cases() == [("1234", "link_lost", "closed", "technical")]
    assert sup.service.core.lost == 0


async def test_a_thousand_silent_in_one_area_is_one_incident(sup: Supervised) -> None:
    await sup.step(5 * 60)
    sup.beat("1234", *EVERYONE)
    # a power cut in postcode 0002: nobody there calls in again; 1234 (postcode 0001) does
    for _ in range(6):
        await sup.step(60)
        sup.beat("1234")
    for _ in range(10):
        await sup.step(60)
        sup.beat("1234")
    cases = sup.cases()
    assert cases == [("incident:eksempel-kommune:0002", "link_lost", "at_centre", None)]
    devices = sup.world.q("SELECT attributes FROM events WHERE protocol = 'supervision'")
    assert len(devices) == 1 and '"batteries_by"' in devices[0][0]
    assert sup.service.outages.incidents == 1

    # an affected user presses the pendant: routed at once, never folded
    event_id = await sup.world.send(EventKind.ASSISTANCE, source="A7")
    await sup.world.engine.run_due()
    case = sup.world.q("SELECT kind, state, mode FROM cases WHERE first_event_id = ?", event_id)
    # routed at once like any alarm (this user has no plan or team, so its steps reach
    # nobody and the centre has it now): never held back by the outage
    assert case == [("assistance", "at_centre", "routing_with_backup")]

    # power back: 95 % call in; the incident closes and the still-silent get their own cases
    sup.beat(*EVERYONE[:950])
    await sup.step(1)
    rows = sup.cases()
    assert ("incident:eksempel-kommune:0002", "link_lost", "closed", "technical") in rows
    own = [r for r in rows if r[1] == "link_lost" and not r[0].startswith("incident")]
    assert len(own) == 50
    assert {state for _, _, state, _ in own} == {"notifying"}  # open, the supplier notified


async def test_restart_in_the_middle_of_an_outage_is_no_flood(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_area)
    first = Supervised(store, clock)
    await first.start()
    await first.step(5 * 60)
    first.beat("1234", *EVERYONE)
    for _ in range(16):
        await first.step(60)
        first.beat("1234")
    assert len(first.cases()) == 1  # the incident
    await store.close()

    clock.advance(30 * 60)  # alarmd down for half an hour, the outage goes on
    store = await Store.open(tmp_path / "alarmd.sqlite")
    second = Supervised(store, clock)
    await second.start()
    await second.step(0)
    assert len(second.cases()) == 1  # nothing new during the start-up grace
    second.beat("1234", *EVERYONE[:10])  # a few are back
    for _ in range(20):
        await second.step(60)
        second.beat("1234", *EVERYONE[:10])
    # still one outage: the silent devices joined the open incident case, no flood of cases
    assert second.world.q("SELECT count(*) FROM cases") == [(1,)]
    await store.close()


async def test_devices_imported_later_are_supervised_after_reload(sup: Supervised) -> None:
    assert len(sup.service.core) == AREA_DEVICES + 1

    def add(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO devices (tenant, protocol, identity, supervision_s, updated_at)"
            " VALUES ('eksempel-kommune', 'dc09', 'NEW1', 120, ?)",
            (NOW,),
        )
        conn.execute("UPDATE devices SET supervision_s = NULL WHERE identity = 'A0'")

    await sup.world.store.writer.submit(add)
    await sup.service.reload()
    assert len(sup.service.core) == AREA_DEVICES + 1  # NEW1 in, A0 out
    assert ("dc09", "NEW1") in sup.service._groups
    assert ("dc09", "A0") not in sup.service._groups


async def test_an_accounts_interval_supervises_a_device_the_directory_leaves_open(
    sup: Supervised,
) -> None:
    sup.service.set_account_intervals(
        {
            ("dc09", "1234"): ("eksempel-kommune", timedelta(hours=25)),  # directory wins
            ("dc09", "ONLYACCT"): ("eksempel-kommune", timedelta(minutes=10)),
        }
    )
    await sup.service.reload()
    assert ("dc09", "ONLYACCT") in sup.service._groups
    await sup.step(5 * 60)
    sup.beat("1234", *EVERYONE)
    for _ in range(5):
        await sup.step(4 * 60)
        sup.beat("1234", *EVERYONE)
    # ONLYACCT: 10 min + 1 min grace from load (T0) ran out at T0+11, pending 5 min
    assert [c[0] for c in sup.cases()] == ["ONLYACCT"]


async def test_a_protocol_default_supervises_devices_nobody_gave_an_interval(
    sup: Supervised,
) -> None:
    def add(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO devices (tenant, protocol, identity, updated_at)"
            " VALUES ('eksempel-kommune', 'scaip', '7001', ?)",
            (NOW,),
        )

    await sup.world.store.writer.submit(add)
    await sup.service.reload()
    assert ("scaip", "7001") not in sup.service._groups  # no interval anywhere: not watched
    sup.service.protocol_defaults = {"scaip": timedelta(minutes=30)}
    await sup.service.reload()
    assert ("scaip", "7001") in sup.service._groups

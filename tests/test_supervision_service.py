"""Supervision through the real intake, engine and store, on a fake clock (issue 6)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from alarmd.clock import FakeClock
from alarmd.model import Condition, EventKind
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
            engine=self.world.engine,
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
    # the incident still knows its silent members: the 10 that called in are back
    [(incident_id,)] = second.world.q("SELECT id FROM cases")
    members = affected_in_log(second, incident_id)
    assert len(members) == AREA_DEVICES - 10 and "dc09:A0" not in members
    back = second.world.q(
        "SELECT data FROM case_log WHERE case_id = ? AND type = 'outage_back'", incident_id
    )
    assert sorted(d for (data,) in back for d in json.loads(data)["devices"]) == sorted(
        f"dc09:{s}" for s in EVERYONE[:10]
    )
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


async def test_a_link_lost_case_is_not_closed_by_its_own_event(sup: Supervised) -> None:
    """Supervision's own link_lost event is no sign of life from the device: the case stays
    open until the device itself is heard from (it used to close a pass later)."""
    await sup.step(5 * 60)
    sup.beat("1234", *EVERYONE)
    for _ in range(4):
        await sup.step(4 * 60)
        sup.beat(*EVERYONE)
    assert sup.cases() == [("1234", "link_lost", "notifying", None)]
    for _ in range(3):
        await sup.step(60)
        sup.beat(*EVERYONE)
    assert sup.cases() == [("1234", "link_lost", "notifying", None)]
    assert sup.service.core.is_lost(("dc09", "1234"))


MAINS_USERS = EVERYONE[:400]  # report mains lost and keep calling in on battery
SILENT_USERS = EVERYONE[400:]  # simply go silent


async def mains_lost(sup: Supervised, *sources: str, restored: bool = False) -> None:
    for source in sources:
        await sup.world.send(
            EventKind.MAINS_LOST,
            source=source,
            condition=Condition.RESTORE if restored else Condition.ALARM,
        )


def affected_in_log(sup: Supervised, case_id: int) -> dict[str, list[str]]:
    """Replays the incident's outage_affected/outage_back log rows: device -> reasons."""
    members: dict[str, list[str]] = {}
    for type_, data in sup.world.q(
        "SELECT type, data FROM case_log WHERE case_id = ? AND type LIKE 'outage_%' ORDER BY id",
        case_id,
    ):
        body = json.loads(data)
        if type_ == "outage_back":
            for device in body["devices"]:
                members.pop(device, None)
            continue
        if body["opened"]:
            members = {}
        for d in body["devices"]:
            members[d["device"]] = sorted(set(members.get(d["device"], [])) | set(d["reasons"]))
    return members


async def test_600_silent_and_400_mains_lost_is_one_incident_and_no_one_is_paged(
    sup: Supervised,
) -> None:
    await sup.step(5 * 60)
    sup.beat("1234", *EVERYONE)  # T0+5: everyone calls in
    # a power cut in postcode 0002: 400 report mains lost over two minutes and go on
    # calling in on battery; the other 600 fall silent (their limit ends at T0+11)
    await sup.step(4 * 60)
    await mains_lost(sup, *MAINS_USERS[:200])
    sup.beat("1234", *MAINS_USERS)
    await sup.step(60)
    await mains_lost(sup, *MAINS_USERS[200:])
    sup.beat("1234", *MAINS_USERS)
    for _ in range(10):  # past the silent ones' detection and every hold (window 5 min)
        await sup.step(60)
        sup.beat("1234", *MAINS_USERS)

    open_cases = sup.world.q("SELECT id, source, kind FROM cases WHERE closed_at IS NULL")
    [(incident_id, source, kind)] = open_cases
    assert (source, kind) == ("incident:eksempel-kommune:0002", "link_lost")
    # the 400 mains-lost reports each opened a technical case, held, then folded into the
    # incident: closed, never routed, nobody notified
    folded = sup.world.q(
        "SELECT count(*), min(outcome), max(outcome), min(close_note), max(mode) FROM cases"
        " WHERE kind = 'mains_lost'"
    )
    note = f"folded into outage incident case {incident_id}"
    assert folded == [(400, "technical", "technical", note, None)]
    assert sup.world.q("SELECT count(*) FROM cases WHERE kind = 'link_lost'") == [(1,)]
    assert sup.world.q("SELECT count(*) FROM outbox") == [(0,)]  # no one paged
    members = affected_in_log(sup, incident_id)
    assert len(members) == 1000
    assert members["dc09:A7"] == ["mains_lost"]
    assert members["dc09:A700"] == ["link_lost"]

    # an affected user on battery presses the pendant: routed at once, never folded or held
    event_id = await sup.world.send(EventKind.ASSISTANCE, source="A7")
    await sup.world.engine.run_due()
    case = sup.world.q("SELECT kind, state, mode FROM cases WHERE first_event_id = ?", event_id)
    assert case == [("assistance", "at_centre", "routing_with_backup")]

    # power back: mains restored for the 400, 550 of the silent call in again (95 %): the
    # incident closes, and the 50 still silent get their own technical cases
    await mains_lost(sup, *MAINS_USERS, restored=True)
    sup.beat(*MAINS_USERS, *SILENT_USERS[:550])
    await sup.step(1)
    assert sup.world.q("SELECT state, outcome FROM cases WHERE id = ?", incident_id) == [
        ("closed", "technical")
    ]
    own = sup.world.q(
        "SELECT count(*) FROM cases WHERE kind = 'link_lost' AND closed_at IS NULL"
        " AND source NOT LIKE 'incident:%'"
    )
    assert own == [(50,)]
    assert sup.service.outages.incidents == 0


async def test_mains_lost_reports_are_what_makes_the_threshold(sup: Supervised) -> None:
    """Threshold 20: 12 silent devices alone would each get their own case; with 10
    neighbours reporting mains lost in the same window it is one incident."""
    await sup.step(5 * 60)
    sup.beat("1234", *EVERYONE)
    alive = ["1234", *EVERYONE[12:]]
    await sup.step(5 * 60)
    sup.beat(*alive)
    await mains_lost(sup, *EVERYONE[12:22])  # T0+10; A0..A11 are lost at T0+11
    for _ in range(10):
        await sup.step(60)
        sup.beat(*alive)
    open_cases = sup.world.q("SELECT source, kind FROM cases WHERE closed_at IS NULL")
    assert open_cases == [("incident:eksempel-kommune:0002", "link_lost")]
    assert sup.world.q("SELECT count(*) FROM outbox") == [(0,)]


async def test_a_lone_mains_lost_report_is_held_for_the_window_then_routed(
    sup: Supervised,
) -> None:
    await sup.step(5 * 60)
    sup.beat("1234", *EVERYONE)
    event_id = await sup.world.send(EventKind.MAINS_LOST, source="A1")
    await sup.step(0)
    rows = sup.world.q("SELECT state, next_step_at FROM cases WHERE first_event_id = ?", event_id)
    assert rows == [("new", "2026-03-02T09:10:00.000000Z")]  # held for the outage window
    await sup.step(4 * 60)
    sup.beat("1234", *EVERYONE)
    assert sup.world.q("SELECT state FROM cases") == [("new",)]
    await sup.step(60)  # the window is over and no neighbour followed: its own case
    assert sup.world.q("SELECT kind, state, queue FROM cases") == [
        ("mains_lost", "notifying", "technical")
    ]
    # a mains-lost report of another device, restored within the window: never routed
    other = await sup.world.send(EventKind.MAINS_LOST, source="A2")
    await sup.step(60)
    await mains_lost(sup, "A2", restored=True)
    await sup.step(5 * 60)
    assert sup.world.q("SELECT state, mode FROM cases WHERE first_event_id = ?", other) == [
        ("closed", None)
    ]


async def test_a_member_still_on_battery_when_the_incident_closes_gets_its_own_case(
    sup: Supervised,
) -> None:
    await sup.step(5 * 60)
    sup.beat("1234", *EVERYONE)
    await mains_lost(sup, *EVERYONE[:100])
    await sup.step(60)
    assert sup.service.outages.incidents == 1
    await mains_lost(sup, "A5")  # reported again after its first case was folded
    await sup.step(60)
    assert sup.world.q("SELECT count(*) FROM cases WHERE closed_at IS NULL") == [(1,)]
    await mains_lost(sup, *EVERYONE[:90], restored=True)
    await sup.step(1)
    open_cases = sup.world.q(
        "SELECT source, kind, state FROM cases WHERE closed_at IS NULL ORDER BY source"
    )
    assert len(open_cases) == 10
    assert {(kind, state) for _, kind, state in open_cases} == {("mains_lost", "notifying")}


async def restart(first: Supervised, tmp_path: Path, down_s: float) -> Supervised:
    """alarmd stops, is down for ``down_s``, and starts again over the same store: a new
    SupervisionService and Engine, nothing carried over but the SQLite file."""
    clock = first.world.clock
    await first.world.store.close()
    clock.advance(down_s)
    store = await Store.open(tmp_path / "alarmd.sqlite")
    second = Supervised(store, clock)
    await second.start()
    return second


async def started(tmp_path: Path) -> Supervised:
    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed_area)
    first = Supervised(store, FakeClock(T0))
    await first.start()
    await first.step(5 * 60)
    first.beat("1234", *EVERYONE)  # T0+5: everyone calls in
    return first


def routed(s: Supervised) -> list[tuple[str, int]]:
    """mains-lost cases that were routed to someone (each with its number of routings)."""
    return s.world.q(
        "SELECT c.source, count(*) FROM cases c JOIN case_log l ON l.case_id = c.id"
        " WHERE c.kind = 'mains_lost' AND l.type = 'routed' GROUP BY c.id ORDER BY c.id"
    )


async def test_restart_during_a_power_cut_keeps_the_incident_and_its_members(
    tmp_path: Path,
) -> None:
    """400 report mains lost, the incident opens, alarmd restarts: the members on battery
    still count, later reports fold into the same incident, restores bring it to a close."""
    first = await started(tmp_path)
    await mains_lost(first, *MAINS_USERS)
    await first.step(60)
    first.beat("1234", *EVERYONE)
    [(incident_id,)] = first.world.q("SELECT id FROM cases WHERE protocol = 'supervision'")
    assert first.service.outages.incidents == 1
    assert len(affected_in_log(first, incident_id)) == 400

    second = await restart(first, tmp_path, 3 * 60)
    assert second.service.outages.incidents == 1  # known again before anything arrives
    assert second.service.outages.affected(("dc09", "A7")) is not None
    # after the restart: 50 more report mains lost, and A5 (a member) reports it again
    await mains_lost(second, *EVERYONE[400:450], "A5")
    second.beat("1234", *EVERYONE)
    for _ in range(8):  # past every hold (window 5 min) and the start-up grace (10 min)
        await second.step(60)
        second.beat("1234", *EVERYONE)
    open_cases = second.world.q("SELECT id FROM cases WHERE closed_at IS NULL")
    assert open_cases == [(incident_id,)]  # still one incident, every held case folded
    assert routed(second) == []
    assert second.world.q("SELECT count(*) FROM outbox") == [(0,)]
    assert len(affected_in_log(second, incident_id)) == 450

    # mains back for 360 of the first 400: 80 % of 450, the incident closes; the other 90
    # are still on battery and each get their own case
    await mains_lost(second, *MAINS_USERS[:360], restored=True)
    await second.step(1)
    assert second.world.q("SELECT state, outcome FROM cases WHERE id = ?", incident_id) == [
        ("closed", "technical")
    ]
    assert second.service.outages.incidents == 0
    own = second.world.q(
        "SELECT source, kind, state FROM cases WHERE closed_at IS NULL ORDER BY id"
    )
    still = {*MAINS_USERS[360:], *EVERYONE[400:450]}
    assert {source for source, _, _ in own} == still and len(own) == len(still)
    assert {(kind, state) for _, kind, state in own} == {("mains_lost", "notifying")}
    await second.world.store.close()


async def test_restart_within_the_window_counts_the_reports_from_before_it(
    tmp_path: Path,
) -> None:
    """Threshold 20: 12 report mains lost, alarmd restarts within the window, 8 more report:
    one incident of 20, every held case folded, none routed on its own."""
    first = await started(tmp_path)
    await mains_lost(first, *EVERYONE[:12])
    await first.step(60)
    assert first.world.q("SELECT count(*), max(state) FROM cases") == [(12, "new")]  # held

    second = await restart(first, tmp_path, 60)
    await mains_lost(second, *EVERYONE[12:20])
    for _ in range(10):  # well past the window of every report
        await second.step(60)
        second.beat("1234", *EVERYONE)
    open_cases = second.world.q("SELECT source, kind FROM cases WHERE closed_at IS NULL")
    assert open_cases == [("incident:eksempel-kommune:0002", "link_lost")]
    [(incident_id,)] = second.world.q("SELECT id FROM cases WHERE protocol = 'supervision'")
    note = f"folded into outage incident case {incident_id}"
    assert second.world.q(
        "SELECT count(*), min(close_note), max(close_note) FROM cases WHERE kind = 'mains_lost'"
    ) == [(20, note, note)]
    assert routed(second) == []
    assert second.world.q("SELECT count(*) FROM outbox") == [(0,)]
    assert len(affected_in_log(second, incident_id)) == 20
    await second.world.store.close()


async def test_a_lone_held_report_across_a_restart_is_routed_once_when_its_window_ends(
    tmp_path: Path,
) -> None:
    first = await started(tmp_path)
    await mains_lost(first, "A1")  # T0+5: held until T0+10
    await first.step(60)
    second = await restart(first, tmp_path, 60)  # back at T0+7
    await second.step(0)
    assert second.world.q("SELECT kind, state FROM cases") == [("mains_lost", "new")]
    await second.step(2 * 60)  # T0+9: still held
    assert routed(second) == []
    await second.step(60)  # T0+10: the window is over and nobody followed
    assert routed(second) == [("A1", 1)]
    for _ in range(10):
        await second.step(60)
        second.beat("1234", *EVERYONE)
    assert routed(second) == [("A1", 1)]  # once
    assert second.world.q("SELECT kind, state, queue FROM cases") == [
        ("mains_lost", "notifying", "technical")
    ]
    await second.world.store.close()


async def test_holds_that_ran_out_while_alarmd_was_down_get_a_fresh_window(
    tmp_path: Path,
) -> None:
    """alarmd down for 30 minutes (longer than the window) while 12 reports were held: their
    neighbours' reports come after the restart, and together they are one incident; a lone
    report held the same way is routed once, a window after the restart."""
    first = await started(tmp_path)
    await mains_lost(first, *EVERYONE[:12])
    await mains_lost(first, "1234")  # postcode 0001: alone
    await first.step(60)
    second = await restart(first, tmp_path, 30 * 60)
    await second.step(0)
    assert routed(second) == []  # not routed the moment alarmd is back
    await mains_lost(second, *EVERYONE[12:20])
    for _ in range(4):
        await second.step(60)
        second.beat("1234", *EVERYONE)
    assert routed(second) == []
    await second.step(60)  # a window after the restart: 1234's report was alone
    for _ in range(5):
        await second.step(60)
        second.beat("1234", *EVERYONE)
    assert routed(second) == [("1234", 1)]
    open_cases = second.world.q("SELECT source, kind FROM cases WHERE closed_at IS NULL")
    assert sorted(open_cases) == [
        ("1234", "mains_lost"),
        ("incident:eksempel-kommune:0002", "link_lost"),
    ]
    assert second.world.q(
        "SELECT count(*) FROM cases WHERE kind = 'mains_lost' AND close_note LIKE 'folded%'"
    ) == [(20,)]
    await second.world.store.close()

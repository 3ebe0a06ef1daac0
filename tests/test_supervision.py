"""Supervision's pure core on a fake timeline: overdue devices, restores, outages, downtime."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmd.supervision import (
    MAINS,
    Cleared,
    Folded,
    IncidentClosed,
    IncidentOpened,
    Individual,
    LinkLost,
    LinkRestored,
    OutageTracker,
    Recovered,
    Supervisor,
)

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def test_one_device_overdue_once_then_restored() -> None:
    s = Supervisor()
    s.supervise(("dc09", "1234"), HOUR, 5 * MIN, T0)
    assert s.due(T0 + HOUR + 4 * MIN) == []
    assert s.next_deadline() == T0 + 65 * MIN
    assert s.due(T0 + 65 * MIN) == [LinkLost(("dc09", "1234"), T0, T0 + 65 * MIN)]
    assert s.due(T0 + 3 * HOUR) == []  # reported once, not every tick
    assert s.lost == 1
    restored = s.seen(("dc09", "1234"), T0 + 3 * HOUR)
    assert restored == LinkRestored(("dc09", "1234"), T0 + 65 * MIN, 3 * HOUR)
    assert s.lost == 0
    assert s.due(T0 + 4 * HOUR) == []
    assert s.due(T0 + 4 * HOUR + 5 * MIN)[0].last_seen == T0 + 3 * HOUR


def test_heartbeats_keep_a_device_alive_without_heap_work() -> None:
    s = Supervisor()
    s.supervise(("dc09", "A"), HOUR, MIN, T0)
    for n in range(1, 100):
        assert s.seen(("dc09", "A"), T0 + n * 30 * MIN) is None
    assert len(s._heap) == 1  # messages never touch the heap
    assert s.due(T0 + 50 * HOUR) == []
    assert len(s._heap) == 1  # the old hint moved to the real deadline


def test_unsupervised_and_forgotten_devices_are_ignored() -> None:
    s = Supervisor()
    assert s.seen(("dc09", "X"), T0) is None
    s.supervise(("dc09", "Y"), HOUR, MIN, T0)
    s.forget(("dc09", "Y"))
    assert s.due(T0 + 10 * HOUR) == []
    with pytest.raises(ValueError, match="interval"):
        s.supervise(("dc09", "Z"), timedelta(0), MIN, T0)


def test_downtime_of_alarmd_is_not_blamed_on_devices() -> None:
    s = Supervisor()
    for n in range(100):
        s.supervise(("dc09", f"D{n}"), HOUR, 5 * MIN, T0)
    restart = T0 + 3 * HOUR  # alarmd was down; every deadline passed meanwhile
    s.resume(restart, 10 * MIN)
    assert s.due(restart) == []
    assert s.next_deadline() == restart + 10 * MIN
    for n in range(95):  # most devices call in during the grace
        s.seen(("dc09", f"D{n}"), restart + 2 * MIN)
    lost = s.due(restart + 10 * MIN)
    assert sorted(x.key[1] for x in lost) == [f"D{n}" for n in range(95, 100)]


@settings(max_examples=100, deadline=None)
@given(
    beats=st.lists(st.tuples(st.integers(0, 19), st.integers(0, 600)), min_size=0, max_size=200),
    checks=st.lists(st.integers(0, 700), min_size=1, max_size=30),
)
def test_reported_exactly_when_silence_exceeds_the_limit(
    beats: list[tuple[int, int]], checks: list[int]
) -> None:
    """Against a brute-force model: a device is reported lost at the first check at or after
    last_seen + limit, exactly once per silence."""
    s = Supervisor()
    limit = timedelta(minutes=60)
    for n in range(20):
        s.supervise(("x", str(n)), timedelta(minutes=55), timedelta(minutes=5), T0)
    events = sorted([(m, "beat", d) for d, m in beats] + [(m, "check", -1) for m in checks])
    last = dict.fromkeys(range(20), T0)
    lost: set[int] = set()
    for minute, what, device in events:
        now = T0 + timedelta(minutes=minute)
        if what == "beat":
            restored = s.seen(("x", str(device)), now)
            assert (restored is not None) == (device in lost)
            lost.discard(device)
            last[device] = max(last[device], now)
        else:
            expected = {d for d in range(20) if d not in lost and last[d] + limit <= now}
            got = {int(x.key[1]) for x in s.due(now)}
            assert got == expected
            lost |= got


def test_one_area_silent_is_one_incident_not_a_thousand_cases() -> None:
    t = OutageTracker(threshold=20, window=5 * MIN)
    rng = random.Random(1)
    actions = []
    for n in range(1000):
        at = T0 + timedelta(seconds=rng.uniform(0, 120))
        actions += t.lost(("dc09", f"D{n}"), ("eksempel-kommune", "0001"), at)
    opened = [a for a in actions if isinstance(a, IncidentOpened)]
    assert len(opened) == 1
    assert len(opened[0].devices) == 20
    assert sum(isinstance(a, Folded) for a in actions) == 980
    assert t.tick(T0 + HOUR) == []  # nobody gets a case of their own
    assert opened[0].batteries_from == opened[0].started_at + timedelta(hours=24)
    # once 80 % are back the incident closes; the 200 still silent get their own cases
    for n in range(799):
        key = ("dc09", f"D{n}")
        assert t.back(key, T0 + 2 * HOUR) == [Recovered(key, ("eksempel-kommune", "0001"))]
    [_, closed] = t.back(("dc09", "D799"), T0 + 2 * HOUR)
    assert isinstance(closed, IncidentClosed)
    assert sorted(closed.still_silent) == sorted(("dc09", f"D{n}") for n in range(800, 1000))
    assert t.incidents == 0
    assert t.back(("dc09", "D900"), T0 + 3 * HOUR) == []  # its own case; the shell closes it


def test_a_lone_loss_waits_its_window_then_gets_its_own_case() -> None:
    t = OutageTracker(threshold=3, window=5 * MIN)
    assert t.lost(("dc09", "A"), "area-1", T0) == []
    assert t.lost(("dc09", "B"), "area-2", T0 + MIN) == []  # another area: not counted
    assert t.next_tick() == T0 + 5 * MIN
    assert t.tick(T0 + 4 * MIN) == []
    assert t.tick(T0 + 5 * MIN) == [Individual(("dc09", "A"), T0)]
    assert t.back(("dc09", "B"), T0 + 2 * MIN + 5 * MIN - MIN) == [Cleared(("dc09", "B"))]
    assert t.tick(T0 + HOUR) == []  # a flap never became a case


def test_losses_spread_wider_than_the_window_are_individual() -> None:
    t = OutageTracker(threshold=3, window=5 * MIN)
    out = []
    for n in range(3):
        at = T0 + n * 6 * MIN
        out += t.tick(at)
        out += t.lost(("dc09", f"D{n}"), "area", at)
    out += t.tick(T0 + HOUR)
    assert [type(a) for a in out] == [Individual, Individual, Individual]


def test_a_burst_of_due_hints_is_taken_in_bounded_calls() -> None:
    s = Supervisor()
    for n in range(5000):
        s.supervise(("dc09", f"D{n}"), HOUR, MIN, T0)
    now = T0 + 2 * HOUR
    found = []
    calls = 0
    while (deadline := s.next_deadline()) is not None and deadline <= now:
        found += s.due(now, max_pops=1000)
        calls += 1
    assert len(found) == 5000
    assert calls == 5


AREA = ("eksempel-kommune", "0001")


def test_mains_lost_reports_count_with_silent_devices_toward_one_incident() -> None:
    """600 silent and 400 on battery in one area within the window: one incident, the
    mains-lost devices in it with their reason, none of them a case of its own."""
    t = OutageTracker(threshold=20, window=5 * MIN)
    rng = random.Random(2)
    actions = []
    for n in range(1000):
        at = T0 + timedelta(seconds=rng.uniform(0, 120))
        if n % 5 < 2:  # 400 devices report mains lost (and keep calling in on battery)
            actions += t.lost(("dc09", f"D{n}"), AREA, at, MAINS, since=at - MIN)
        else:
            actions += t.lost(("dc09", f"D{n}"), AREA, at)
    [opened] = [a for a in actions if isinstance(a, IncidentOpened)]
    folded = [a for a in actions if isinstance(a, Folded)]
    assert len(opened.devices) + len(folded) == 1000
    assert (
        sum(a.reason == MAINS for a in folded) + sum(a.reasons == (MAINS,) for a in opened.affected)
        == 400
    )
    assert t.tick(T0 + HOUR) == []  # nobody gets a case of their own
    mains = next(a for a in folded if a.reason == MAINS)
    assert mains.affected is not None
    assert mains.affected.batteries_by == mains.affected.since + 72 * HOUR


def test_mains_lost_alone_would_not_reach_the_threshold_without_counting() -> None:
    """Threshold 3: two silent and one mains-lost report make the incident; without the
    report the two would each get their own case."""
    t = OutageTracker(threshold=3, window=5 * MIN)
    assert t.lost(("dc09", "A"), AREA, T0) == []
    assert t.lost(("dc09", "B"), AREA, T0 + MIN) == []
    [opened] = t.lost(("scaip", "C"), AREA, T0 + 2 * MIN, MAINS)
    assert isinstance(opened, IncidentOpened)
    assert {a.key: a.reasons for a in opened.affected}[("scaip", "C")] == (MAINS,)
    # a repeated report from a member is folded again (its new held case too)
    [again] = t.lost(("scaip", "C"), AREA, T0 + 3 * MIN, MAINS)
    assert again == Folded(("scaip", "C"), AREA, MAINS, t.affected(("scaip", "C")))


def test_mains_restored_counts_back_and_a_device_is_back_only_when_every_reason_ended() -> None:
    t = OutageTracker(threshold=2, window=5 * MIN, close_ratio=0.5)
    t.lost(("dc09", "A"), AREA, T0, MAINS)
    t.lost(("dc09", "A"), AREA, T0 + MIN)  # on battery, then silent too: still one device
    [opened] = t.lost(("dc09", "B"), AREA, T0 + MIN, MAINS)
    assert isinstance(opened, IncidentOpened) and len(opened.devices) == 2
    assert t.back(("dc09", "A"), T0 + HOUR) == []  # heard from, but still on battery
    still_b = t.affected(("dc09", "B"))
    assert still_b is not None and still_b.reasons == (MAINS,)
    assert t.back(("dc09", "A"), T0 + HOUR, MAINS) == [
        Recovered(("dc09", "A"), AREA),
        IncidentClosed(AREA, (still_b,)),
    ]
    assert t.incidents == 0


def test_a_mains_lost_report_alone_is_pending_then_individual_and_a_restore_clears_it() -> None:
    t = OutageTracker(threshold=3, window=5 * MIN)
    assert t.lost(("dc09", "A"), AREA, T0, MAINS) == []
    assert t.tick(T0 + 5 * MIN) == [Individual(("dc09", "A"), T0, (MAINS,))]
    assert t.lost(("dc09", "A"), AREA, T0 + 6 * MIN, MAINS) == []  # a repeat: its own case
    assert t.tick(T0 + HOUR) == []
    assert t.lost(("dc09", "B"), AREA, T0 + HOUR, MAINS) == []
    assert t.back(("dc09", "B"), T0 + HOUR + MIN, MAINS) == [Cleared(("dc09", "B"))]


def test_restore_rebuilds_an_incident_its_members_and_what_was_waiting() -> None:
    """After a restart: an incident of 10 (8 on battery, 1 silent, 1 already back), a device
    on battery with its own case, and 2 reports still waiting for their window."""
    area = ("k", "0002")
    t = OutageTracker(threshold=3, window=5 * MIN)
    members = [("dc09", f"M{n}") for n in range(10)]
    affected = [(k, area, MAINS, T0) for k in members[:8]]
    affected += [(members[8], area, "link_lost", T0 - MIN), (("dc09", "OWN"), area, MAINS, T0)]
    t.restore(affected, [(area, T0, members)])
    assert t.incidents == 1
    assert t.affected(members[8]) is not None and t.affected(members[9]) is None
    # a waiting report is folded into the open incident at once
    assert t.lost(("dc09", "W1"), area, T0 + MIN, MAINS) == [
        Folded(("dc09", "W1"), area, MAINS, t.affected(("dc09", "W1")))
    ]
    assert t.back(("dc09", "OWN"), T0 + 2 * MIN, MAINS) == []  # its own case, not a member
    # 11 members, 1 back: 8 more back (9 of 11 >= 80 %) close it; the silent one and W1
    # (on battery) are still affected
    for k in members[:7]:
        assert t.back(k, T0 + 3 * MIN, MAINS) == [Recovered(k, area)]
    [_, closed] = t.back(members[7], T0 + 3 * MIN, MAINS)
    assert isinstance(closed, IncidentClosed)
    assert set(closed.still_silent) == {members[8], ("dc09", "W1")}


def test_restore_lets_waiting_reports_reach_the_threshold_and_lone_ones_ripen() -> None:
    area = ("k", "0002")
    t = OutageTracker(threshold=3, window=5 * MIN)
    t.restore([], [])
    assert t.lost(("dc09", "A"), area, T0, MAINS) == []
    assert t.lost(("dc09", "B"), ("k", "0003"), T0 + MIN, MAINS) == []
    [opened] = t.lost(("dc09", "C"), area, T0 + 2 * MIN, MAINS) + t.lost(
        ("dc09", "D"), area, T0 + 3 * MIN, MAINS
    )
    assert isinstance(opened, IncidentOpened) and opened.started_at == T0
    assert t.tick(T0 + 6 * MIN) == [Individual(("dc09", "B"), T0 + MIN, (MAINS,))]


def test_a_member_restored_as_lost_is_restored_when_heard_from() -> None:
    s = Supervisor()
    s.supervise(("dc09", "1"), 5 * MIN, MIN, T0, last_seen=T0 - HOUR)
    s.resume(T0, 10 * MIN)
    s.restore_lost(("dc09", "1"), T0 - 50 * MIN)
    s.restore_lost(("dc09", "unknown"), T0)  # not supervised: ignored
    assert s.lost == 1 and s.is_lost(("dc09", "1"))
    assert s.due(T0 + HOUR) == []  # already reported: not again
    assert s.seen(("dc09", "1"), T0 + HOUR) == LinkRestored(("dc09", "1"), T0 - 50 * MIN, 2 * HOUR)
    assert s.lost == 0

"""Escalation at scale: 100,000 open cases with deadlines on one engine.

Prints, for the real engine on a real SQLite file (WAL, synchronous=FULL):

1. opening: events/s through intake when every event opens a case in its own transaction;
2. routing: cases/s routed and notified (rules, plan snapshot, outbox rows, case log);
3. lateness: how late deadlines fire, p50/p99/max, while 100,000 cases wait and their
   deadlines fall due spread over a window (the engine's own loop, the system clock);
4. idle: CPU used by the daemon's engine while 100,000 deadlines are pending and none due;
5. route evaluation: microseconds per ``rules.decide`` on the example configuration.

Run:  .venv/bin/python bench/escalation.py [--cases 100000] [--window 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alarmd.clock import SystemClock
from alarmd.intake import Intake
from alarmd.model import Condition, Event, EventKind
from alarmd.routing.decision import Decision, RouteFacts
from alarmd.routing.engine import Engine
from alarmd.routing.escalation import CentreStep, EscalationPolicy, Recipient, Step
from alarmd.store.db import Store, iso

KINDS = (
    EventKind.FALL,
    EventKind.ASSISTANCE,
    EventKind.INACTIVITY,
    EventKind.EXIT,
    EventKind.BED_EXIT,
)
# the centre waits 30 min, so once the first step has fired the engine is idle
CENTRE = CentreStep(accept_within=timedelta(minutes=30), re_alert_every=timedelta(minutes=1))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class SpreadRouter:
    """Routing with backup whose first deadline falls somewhere in [start, start + window]."""

    def __init__(self, start: datetime, window: float) -> None:
        self.start = start
        self.window = window
        self.rng = random.Random(7)

    def __call__(self, facts: RouteFacts, now: datetime) -> Decision:
        due = self.start + timedelta(seconds=self.rng.uniform(0, self.window))
        wait = max(due - now, timedelta(milliseconds=1))
        policy = EscalationPolicy(
            steps=(Step((Recipient("team", "plan"),), ("sms",), wait),),
            centre=CENTRE,
            accepted_deadline=timedelta(hours=1),
        )
        return Decision("routing_with_backup", policy, "bench")


class TimedEngine(Engine):
    """Records, for every deadline it fires, how long after the deadline its commit landed."""

    lateness: list[float]
    _last_due: list[tuple[int, datetime]]

    def _pop_due(self, now: datetime) -> list[tuple[int, datetime]]:
        due = super()._pop_due(now)
        self._last_due = due
        return due

    async def run_due(self) -> int:
        self._last_due = []
        count = await super().run_due()
        done = datetime.now(UTC)
        self.lateness.extend((done - when).total_seconds() for _, when in self._last_due)
        return count


def seed(users: int) -> Callable[[sqlite3.Connection], None]:
    now = iso(datetime.now(UTC))

    def job(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO tenants VALUES ('bench', 'Bench kommune', ?)", (now,))
        c.execute(
            "INSERT INTO teams (id, tenant, ref, name, updated_at)"
            " VALUES (1, 'bench', 't', 'T', ?)",
            (now,),
        )
        for sid in (1, 2):
            c.execute(
                "INSERT INTO staff (id, tenant, ref, name, channels, updated_at)"
                " VALUES (?, 'bench', ?, ?, '{\"sms\": \"+4700000100\"}', ?)",
                (sid, f"s{sid}", f"Staff {sid}", now),
            )
            c.execute("INSERT INTO team_members (team_id, staff_id) VALUES (1, ?)", (sid,))
        c.executemany(
            "INSERT INTO service_users (id, tenant, ref, first_name, last_name, updated_at)"
            " VALUES (?, 'bench', ?, 'Test', 'Person', ?)",
            ((i, f"u{i}", now) for i in range(1, users + 1)),
        )
        c.executemany(
            "INSERT INTO devices (tenant, user_id, protocol, identity, updated_at)"
            " VALUES ('bench', ?, 'dc09', ?, ?)",
            ((i, f"A{i}", now) for i in range(1, users + 1)),
        )
        c.executemany(
            "INSERT INTO response_plans (user_id, home_care_team, updated_at) VALUES (?, 't', ?)",
            ((i, now) for i in range(1, users + 1)),
        )

    return job


async def main(cases: int, window: float) -> None:
    users = (cases + len(KINDS) - 1) // len(KINDS)
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "bench.sqlite")
        await store.writer.submit(seed(users))
        clock = SystemClock()
        start_at = datetime.now(UTC) + timedelta(days=1)  # placeholder until routing
        router = SpreadRouter(start_at, window)
        engine = TimedEngine(store, clock, router)
        engine.lateness = []
        intake = Intake(store, dedup_window=timedelta(hours=1), tenant_of=lambda p, s: "bench")
        intake.set_case_hook(engine.on_event, engine.on_events)
        intake.add_listener(engine.events_committed)

        rss0 = rss_mib()
        t = time.perf_counter()
        batch: list[asyncio.Future[object]] = []
        n = 0
        for i in range(1, users + 1):
            for kind in KINDS:
                if n == cases:
                    break
                n += 1
                event = Event(
                    protocol="dc09",
                    source=f"A{i}",
                    kind=kind,
                    condition=Condition.ALARM,
                    priority=kind.default_priority,
                    received_at=clock.now(),
                    dedup_key=f"bench:{n}",
                    raw=b"x",
                )
                batch.append(intake.submit_future([event]))  # type: ignore[arg-type]
            if len(batch) >= 2000:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
        opened = time.perf_counter() - t
        print(f"opening: {cases} events, each opening a case: {cases / opened:,.0f} events/s")

        # routing: every case is due now. Calibrate on the first cases (their deadlines are a
        # day away: they stay pending, as idle load), then spread the rest's first deadlines
        # over [routing done + 5 s, + window] so that lateness is measured on a quiet engine.
        calibrate = min(2000, cases // 10)
        due = engine._pop_due(datetime.now(UTC))
        t = time.perf_counter()
        outcome = await store.writer.submit(
            engine._tick_job([c for c, _ in due[:calibrate]], clock.now())
        )
        engine._after_commit(outcome)
        rate = calibrate / (time.perf_counter() - t)
        router.start = datetime.now(UTC) + timedelta(seconds=(cases - calibrate) / rate * 1.3 + 5)
        for case_id, when in due[calibrate:]:
            engine._push(case_id, when)
        await engine.run_due()
        routed = time.perf_counter() - t
        print(f"routing: {cases} cases routed and notified: {cases / routed:,.0f} cases/s")
        print(f"  heap entries: {engine.scheduled:,}; RSS growth so far {rss_mib() - rss0:.0f} MiB")
        if datetime.now(UTC) > router.start:
            print("  (routing ran past the first deadlines: raise the lead)", file=sys.stderr)
        while datetime.now(UTC) < router.start - timedelta(seconds=1):
            await asyncio.sleep(0.2)

        engine.lateness = []
        engine.start()
        cpu0 = time.process_time()
        wall_end = router.start + timedelta(seconds=window + 2)
        while datetime.now(UTC) < wall_end:
            await asyncio.sleep(0.5)
        cpu = time.process_time() - cpu0
        late = engine.lateness
        print(
            f"lateness: {len(late):,} deadlines fired over {window:.0f} s:"
            f" p50 {statistics.median(late) * 1000:.1f} ms, p99 {pct(late, 0.99) * 1000:.1f} ms,"
            f" max {max(late) * 1000:.1f} ms; CPU {cpu:.2f} s"
        )

        # idle: every case now waits at the centre (30 min): nothing due for a while
        cpu0 = time.process_time()
        await asyncio.sleep(10)
        idle = time.process_time() - cpu0
        print(
            f"idle: {engine.scheduled:,} deadlines pending: CPU {idle / 10 * 100:.2f} % of a core"
        )
        await engine.stop()
        await store.close()

    route_eval()


def route_eval() -> None:
    try:
        from alarmd.config import load_config
        from alarmd.routing.config import load_routing
        from alarmd.routing.rules import decide
    except ImportError as exc:
        print(f"route evaluation: skipped ({exc})")
        return
    root = Path(__file__).resolve().parents[1]
    main_path = root / "config" / "alarmd.example.yaml"
    config = load_routing(load_config(main_path), main_path)
    rng = random.Random(3)
    moments = [
        datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(365 * 24 * 60))
        for _ in range(2000)
    ]
    for tenant in sorted(config.tenants):
        facts = [
            RouteFacts(tenant=tenant, kind=kind, priority=kind.default_priority)
            for kind in EventKind
        ]
        rounds = 10
        t = time.perf_counter()
        for _ in range(rounds):
            for moment in moments:
                for f in facts:
                    decide(config, f, moment)
        per = (time.perf_counter() - t) / (rounds * len(moments) * len(facts))
        print(f"route evaluation: {per * 1e6:.1f} µs per decide() (tenant {tenant}, every kind)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.cases, args.window))

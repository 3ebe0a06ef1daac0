"""Route tools: the tests tenant files carry, the coverage check, and ``alarmctl routes``.

What lives here
---------------
* ``run_route_tests(config)``: every ``tests:`` entry of every tenant, decided by
  ``rules.decide`` and compared with its ``expect``. ``alarmd.routing.config`` runs them at
  load time, so a daemon refuses a configuration whose tests fail.
* ``coverage(config, tenant, start, end)``: for each alarm kind and location, the intervals
  where no route of the tenant matches (only the safety net would take the alarm).
* ``routes_test``, ``routes_explain``, ``routes_check``: what ``alarmctl routes test|explain|
  check`` do. Each returns ``(exit code, text to print)`` and never raises for bad input:
  0 all well, 1 a test failed or a gap was found, 2 the input or configuration is unusable
  (one clear line, or the configuration's ``file:line:col`` problems).

Coverage is computed, not sampled
---------------------------------
A route covers an alarm kind at a location when its ``match`` admits the kind (with its
default priority) and the location, for any user (routes restricted to ``groups`` or a
``plan_mode`` do not count: a user outside them would fall through). In time, a route covers
the union of its ``windows`` (all the time if it has none) minus the union of its
``not_windows``; these are exact UTC intervals from ``schedules.window_intervals``, so the
daylight-saving days are judged as the wall clock in Oslo reads them, to the microsecond.
``routes_check`` looks at three weeks of the current year: an ordinary week (the first full
week of February, which has no public holiday) and the two weeks whose Sunday changes the
clocks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from alarmd.config import (
    ConfigProblem,
    _MainFile,
    _parse,
    _validate,
    default_config_path,
)
from alarmd.model import Category, EventKind
from alarmd.routing.config import (
    LOCATIONS,
    Route,
    RouteTest,
    RoutingConfig,
    TenantConfig,
    parse_instant,
    read_routing,
)
from alarmd.routing.decision import MODES, Decision, Location, Mode, RouteFacts
from alarmd.routing.rules import active_windows, decide, first_recipients, mismatch
from alarmd.routing.schedules import OSLO, Interval, window_intervals

__all__ = [
    "Gap",
    "TestResult",
    "check_ranges",
    "coverage",
    "routes_check",
    "routes_explain",
    "routes_test",
    "run_route_tests",
]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
ALARM_KINDS = tuple(k for k in EventKind if k.category is Category.ALARM)


# --- route tests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TestResult:
    """One route test's outcome; ``failures`` says what differed (empty when it passed)."""

    __test__ = False  # not a pytest class

    tenant: str
    test: RouteTest
    decision: Decision
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def _facts(tenant: str, test: RouteTest) -> RouteFacts:
    return RouteFacts(
        tenant=tenant,
        kind=test.kind,
        priority=test.priority,
        user_group=test.group,
        plan_mode=test.plan_mode,
        location=test.location,
    )


def _judge(test: RouteTest, decision: Decision) -> tuple[str, ...]:
    expect = test.expect
    failures = []
    if decision.mode != expect.mode:
        failures.append(
            f"expected mode {expect.mode}, got {decision.mode} (rule {decision.rule!r})"
        )
    if expect.first_recipients is not None:
        got = first_recipients(decision)
        if got != expect.first_recipients:
            failures.append(
                f"expected first recipients [{', '.join(expect.first_recipients)}],"
                f" got [{', '.join(got)}]"
            )
    if expect.rule is not None and decision.rule != expect.rule:
        failures.append(f"expected rule {expect.rule!r}, got {decision.rule!r}")
    if expect.queue is not None and decision.queue != expect.queue:
        failures.append(f"expected queue {expect.queue}, got {decision.queue}")
    return tuple(failures)


def run_route_tests(
    config: RoutingConfig, tenants: Sequence[str] | None = None
) -> list[TestResult]:
    """Run the ``tests:`` of ``tenants`` (all by default), in tenant then file order."""
    results = []
    for slug in sorted(config.tenants) if tenants is None else tenants:
        for test in config.tenants[slug].tests:
            decision = decide(config, _facts(slug, test), test.at)
            results.append(TestResult(slug, test, decision, _judge(test, decision)))
    return results


# --- coverage ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gap:
    """An interval (UTC, end excluded) where an alarm kind at a location has no route."""

    tenant: str
    kind: EventKind
    location: Location
    start: datetime
    end: datetime


def _union(intervals: Sequence[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for begin, end in sorted(intervals):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def _complement(intervals: Sequence[Interval], start: datetime, end: datetime) -> list[Interval]:
    """The parts of ``[start, end)`` outside the sorted, merged ``intervals``."""
    gaps: list[Interval] = []
    cursor = start
    for begin, finish in intervals:
        if begin > cursor:
            gaps.append((cursor, min(begin, end)))
        cursor = max(cursor, finish)
    if cursor < end:
        gaps.append((cursor, end))
    return [(b, e) for b, e in gaps if b < e]


def _intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Both sorted and merged."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        begin, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if begin < end:
            out.append((begin, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _admits(route: Route, kind: EventKind, location: Location) -> bool:
    """Whether ``route`` takes ``kind`` at ``location`` for any user (time aside)."""
    m = route.match
    return (
        (m.kinds is None or kind in m.kinds)
        and (m.category is None or kind.category is m.category)
        and (m.min_priority is None or kind.default_priority >= m.min_priority)
        and (m.locations is None or location in m.locations)
        and m.groups is None
        and m.plan_mode is None
    )


def coverage(config: RoutingConfig, tenant: str, start: datetime, end: datetime) -> list[Gap]:
    """Every interval of ``[start, end)`` where an alarm kind at a location has no route
    of ``tenant`` (``KeyError`` for a tenant without routing), by kind, location, time."""
    t = config.tenants[tenant]
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    whole = [(start, end)]
    cache: dict[str, list[Interval]] = {}

    def active(name: str) -> list[Interval]:
        if name not in cache:
            cache[name] = window_intervals(t.windows[name], start, end)
        return cache[name]

    def in_time(route: Route) -> list[Interval]:
        m = route.match
        base = _union([i for w in m.windows for i in active(w)]) if m.windows else whole
        if not m.not_windows:
            return base
        blocked = _union([i for w in m.not_windows for i in active(w)])
        return _intersect(base, _complement(blocked, start, end))

    timed = [(route, in_time(route)) for route in t.routes]
    gaps = []
    for kind in ALARM_KINDS:
        for location in LOCATIONS:
            covered = _union(
                [i for route, spans in timed if _admits(route, kind, location) for i in spans]
            )
            for begin, finish in _complement(covered, start, end):
                gaps.append(Gap(tenant, kind, location, begin, finish))
    return gaps


def check_ranges(year: int) -> list[tuple[datetime, datetime]]:
    """The weeks ``routes_check`` covers (Monday 00:00 to Monday 00:00, Europe/Oslo): the
    first full week of February and the weeks of the two daylight-saving changes."""

    def week(monday: date) -> tuple[datetime, datetime]:
        begin = datetime(monday.year, monday.month, monday.day, tzinfo=OSLO)
        after = monday + timedelta(days=7)
        return begin, datetime(after.year, after.month, after.day, tzinfo=OSLO)

    def last_sunday(month: int) -> date:
        last = date(year, month + 1, 1) - timedelta(days=1)
        return last - timedelta(days=(last.weekday() - 6) % 7)

    february = date(year, 2, 1)
    first_monday = february + timedelta(days=(7 - february.weekday()) % 7)
    return [
        week(first_monday),
        week(last_sunday(3) - timedelta(days=6)),
        week(last_sunday(10) - timedelta(days=6)),
    ]


# --- alarmctl routes ... -------------------------------------------------------------------


class _Unusable(Exception):
    """The configuration or the input cannot be used; the text says why (exit 2)."""


def _load(config_path: Path | None, tenant_files: Sequence[Path] = ()) -> RoutingConfig:
    path = config_path or default_config_path()
    if path is None:
        raise _Unusable("no configuration given and no embedded example found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _Unusable(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    problems: list[ConfigProblem] = []
    doc = _parse(str(path), raw, problems)
    main = _validate(_MainFile, doc, problems) if doc is not None else None
    if main is None:
        raise _Unusable("\n".join(str(p) for p in problems))
    for file in tenant_files:
        if not file.is_file():
            raise _Unusable(f"{file}: no such tenant file")
    loaded = read_routing(
        main.routing, path.parent, doc, run_tests=False, tenant_files=tenant_files
    )
    if loaded.problems or loaded.config is None:
        raise _Unusable("\n".join(str(p) for p in loaded.problems))
    return loaded.config


def routes_test(config_path: Path | None, tenant_files: list[Path]) -> tuple[int, str]:
    """``alarmctl routes test [FILE...]``: run the route tests of the given tenant files
    (read with the configuration's centre file, in place of the tenant of the same name),
    or of every tenant of the configuration (the embedded example if ``config_path`` is
    None). Exit 0 if all pass, 1 if any fails, 2 if the configuration cannot be loaded."""
    try:
        config = _load(config_path, tenant_files)
    except _Unusable as exc:
        return EXIT_BAD_INPUT, str(exc)
    wanted = {f.stem for f in tenant_files}
    tenants = sorted(wanted) if tenant_files else sorted(config.tenants)
    results = run_route_tests(config, tenants)
    lines = []
    for r in results:
        if r.passed:
            lines.append(f"{r.test.where}: ok: {r.tenant}: {r.test.name}")
        else:
            lines.append(f"{r.test.where}: FAILED: {r.tenant}: {r.test.name}")
            lines += [f"    {failure}" for failure in r.failures]
    failed = sum(not r.passed for r in results)
    lines.append(
        f"{len(results)} route test(s) in {len(tenants)} tenant(s):"
        f" {len(results) - failed} passed, {failed} failed"
    )
    return (EXIT_FAILED if failed else EXIT_OK), "\n".join(lines)


def _choice(value: str | None, allowed: Sequence[str], what: str) -> str | None:
    if value is not None and value not in allowed:
        raise _Unusable(f"unknown {what} {value!r}; one of: {', '.join(allowed)}")
    return value


def routes_explain(
    config_path: Path | None,
    tenant: str,
    kind: str,
    at: str,
    location: str = "home",
    group: str | None = None,
    plan_mode: str | None = None,
) -> tuple[int, str]:
    """``alarmctl routes explain --tenant T --kind K --at TIME [--location L] [--group G]
    [--plan-mode M]``: why such an alarm would go where it goes, one reason a line (the
    routes tried before the one that matched say why they did not). ``at`` is
    ``2026-12-24T22:00`` in Europe/Oslo, or with an offset. Exit 0, or 2 for bad input
    (an unknown tenant, kind, location or mode; a time that does not exist)."""
    try:
        event_kind = _choice(kind, [k.value for k in EventKind], "kind")
        where = _choice(location, LOCATIONS, "location")
        mode = _choice(plan_mode, MODES, "plan mode")
        try:
            instant = parse_instant(at)
        except ValueError as exc:
            raise _Unusable(f"--at: {exc}") from None
        config = _load(config_path)
        if tenant not in config.tenants:
            known = ", ".join(sorted(config.tenants)) or "none"
            raise _Unusable(f"unknown tenant {tenant!r}; tenants with routing: {known}")
    except _Unusable as exc:
        return EXIT_BAD_INPUT, str(exc)
    assert event_kind is not None and where is not None
    the_kind = EventKind(event_kind)
    facts = RouteFacts(
        tenant=tenant,
        kind=the_kind,
        priority=the_kind.default_priority,
        user_group=group,
        plan_mode=_mode(mode),
        location=_location(where),
    )
    decision = decide(config, facts, instant)
    t = config.tenants[tenant]
    lines = list(decision.explanation)
    skipped = _skipped(t, facts, instant, decision.rule)
    lines[1:1] = skipped
    summary = (
        f"=> mode {decision.mode}, rule {decision.rule}, queue {decision.queue},"
        f" first recipients: {', '.join(first_recipients(decision))}"
    )
    if decision.hold_until is not None:
        summary += f", held until {decision.hold_until:%Y-%m-%dT%H:%MZ}"
    lines += _disabled_webhooks(config, decision)
    lines.append(summary)
    return EXIT_OK, "\n".join(lines)


def _disabled_webhooks(config: RoutingConfig, decision: Decision) -> list[str]:
    names = {
        channel.removeprefix("webhook:")
        for s in decision.policy.steps
        for channel in s.channels
        if channel.startswith("webhook:")
    }
    return [
        f"note: webhook {name!r} is disabled ({hook.disabled_reason}): deliveries to it fail,"
        " so its step escalates"
        for name in sorted(names)
        if (hook := config.webhooks.get(name)) is not None and not hook.enabled
    ]


def _mode(value: str | None) -> Mode | None:
    for mode in MODES:
        if mode == value:
            return mode
    return None


def _location(value: str) -> Location:
    for location in LOCATIONS:
        if location == value:
            return location
    return "home"


def _skipped(t: TenantConfig, facts: RouteFacts, at: datetime, rule: str) -> list[str]:
    active = frozenset(active_windows(t, at))
    lines = []
    for route in t.routes:
        if route.name == rule:
            break
        reason = mismatch(route, facts, active)
        if reason is not None:
            lines.append(f"route {route.name!r} skipped: {reason}")
    return lines


def _local(instant: datetime) -> str:
    return f"{instant.astimezone(OSLO):%a %Y-%m-%d %H:%M}"


def _length(span: timedelta) -> str:
    """Real time, so that the nights of the clock changes show as 9 h and 11 h."""
    minutes = int(span.total_seconds()) // 60
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _describe_gaps(gaps: Sequence[Gap]) -> list[str]:
    """Gaps grouped: kinds and locations that share the same intervals are one line."""
    by_intervals: dict[tuple[Interval, ...], dict[Location, list[EventKind]]] = defaultdict(
        lambda: defaultdict(list)
    )
    per_pair: dict[tuple[EventKind, Location], list[Interval]] = defaultdict(list)
    for gap in gaps:
        per_pair[gap.kind, gap.location].append((gap.start, gap.end))
    for (kind, location), spans in per_pair.items():
        by_intervals[tuple(spans)][location].append(kind)
    lines = []
    for intervals, locations in by_intervals.items():
        groups: dict[tuple[EventKind, ...], list[Location]] = defaultdict(list)
        for location, found in locations.items():
            groups[tuple(found)].append(location)
        for kinds, where in groups.items():
            what = (
                "every alarm kind"
                if set(kinds) == set(ALARM_KINDS)
                else ", ".join(k.value for k in kinds)
            )
            lines.append(f"  {what} at {', '.join(where)}: no route")
            lines += [
                f"    {_local(b)} - {_local(e)} Europe/Oslo ({_length(e - b)})"
                for b, e in intervals
            ]
    return lines


def routes_check(config_path: Path | None, year: int | None = None) -> tuple[int, str]:
    """``alarmctl routes check``: for every tenant, the times (in an ordinary week and the
    two daylight-saving weeks of ``year``, the current one by default) when some alarm kind
    has no route and only the centre's safety net would take it. Exit 0 with no gap, 1 with
    any, 2 if the configuration cannot be loaded."""
    try:
        config = _load(config_path)
    except _Unusable as exc:
        return EXIT_BAD_INPUT, str(exc)
    ranges = check_ranges(year or datetime.now(OSLO).year)
    weeks = ", ".join(f"{b:%Y-%m-%d}" for b, _e in ranges)
    lines = [f"checked the weeks starting {weeks} (Europe/Oslo)"]
    any_gap = False
    for slug in sorted(config.tenants):
        gaps = [g for start, end in ranges for g in coverage(config, slug, start, end)]
        if not gaps:
            lines.append(f"{slug}: every alarm kind has a route at every moment")
            continue
        any_gap = True
        lines.append(f"{slug}: GAPS (the centre's safety net takes these alarms):")
        lines += _describe_gaps(gaps)
    if not config.tenants:
        lines.append("no tenant has routing: every alarm goes to the centre")
    return (EXIT_FAILED if any_gap else EXIT_OK), "\n".join(lines)

"""Schedules: named time windows in Europe/Oslo, with Norwegian public holidays. Pure.

Theory of operation
-------------------
A municipality says *when* a route applies with named windows ("day", "evening", "night",
"holiday"). A ``Window`` is a set of ``WeeklyRule`` s (weekdays, a local start and end time,
and how public holidays count) plus the dates it is suspended (``exclusions``) and the dates
its municipality treats like public holidays (``extra_holidays``, typically 24 and 31
December). A ``Schedule`` maps names to windows. Everything here is a function of its
arguments: no clock is read and nothing is fetched; the instant to judge (``at``, ``after``)
is always passed in and must be timezone-aware.

Occurrences and the day they belong to
    A rule ``22:00-07:00`` on ``fri`` is one *occurrence* that starts Friday 22:00 and ends
    Saturday 07:00. An end at or before the start crosses midnight (``00:00-00:00`` is a
    whole day; ``24:00`` is accepted as an end and means the next midnight). Weekday,
    holiday and exclusion tests all look at the day an occurrence *starts*: the night from
    31 December to 1 January is "the 31 December night", so ``holidays: exclude`` with
    31 December as an extra holiday drops that whole night and nothing of the night that
    starts on 30 December.

Daylight-saving time: the wall-clock rule
    Membership is decided by what the clock on the wall in Oslo shows at ``at``: the
    instant is converted to Europe/Oslo and its local date and time (``fold`` ignored) are
    compared with the rules. Consequences, which are what a person reading the YAML
    expects:

    * Spring forward (last Sunday of March, 02:00 -> 03:00): readings 02:00-02:59 never
      happen, so ``01:00-04:00`` lasts 2 real hours that day and a night ``22:00-07:00``
      that starts on the Saturday lasts 8. A boundary inside the missing hour takes effect
      at the jump (``02:30-05:00`` starts at 03:00 local).
    * Fall back (last Sunday of October, 03:00 -> 02:00): readings 02:00-02:59 happen
      twice and both are judged alike, so ``01:00-04:00`` lasts 4 real hours and the night
      10. A boundary *inside* the repeated hour is crossed twice (``01:00-02:30`` is in,
      out at the first 02:30, in again at the second 02:00, out at the second 02:30);
      configurations should keep boundaries out of 02:00-03:00 and the route checker may
      warn about it later.

    A set of windows that covers every wall-clock reading therefore covers every instant,
    which is what the "no minute of the week without a route" check relies on.

Intervals, not minute scans
    ``next_change`` and ``uncovered`` turn windows into exact UTC intervals: the range is
    cut where Oslo's UTC offset changes (found by a daily probe and a bisection, so no
    hard-coded EU rule), each piece has a constant offset, and the windows' local
    occurrence intervals are intersected with it and shifted back to UTC. A year of three
    windows is a few thousand intervals, not half a million minutes.

Public holidays
    From the ``holidays`` package (``country_holidays("NO")``). The 1995 act on holidays
    lists every Sunday as a "helligdag", and for years the package's ``Norway`` followed it:
    ``include_sundays=True`` was the default when Norway was added (2017), so every Sunday
    came back as a holiday (upstream issues #324, #472). Checked here: 0.50 (our floor) and
    0.109 default to ``include_sundays=False`` and return the 12 named days (1 January,
    Maundy Thursday, Good Friday, Easter Sunday and Monday, 1 May, Ascension, 17 May, Whit
    Sunday and Monday, 25 and 26 December). That is what alarmd means by a holiday: a named
    public holiday, never an ordinary Sunday (a window that wants Sundays says ``sun``).
    ``country_holidays`` in 0.50 does not forward ``include_sundays``, so the default is
    relied upon and checked: if an ordinary February Sunday shows up as a holiday,
    ``public_holidays`` raises rather than treat every Sunday as a holiday.

Plain data in, ``ScheduleDataError`` out
    ``parse_window`` reads the plain values the YAML loader will hand over (see its
    docstring for the format) and reports the first problem with the path of the offending
    field (``rules[1].from``), in the same shape as the config loader's locations, so the
    loader can add ``file:line:col`` later.
"""

from __future__ import annotations

import difflib
import enum
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from zoneinfo import ZoneInfo

import holidays as holidays_package

__all__ = [
    "ALL_DAYS",
    "NEXT_CHANGE_HORIZON",
    "OSLO",
    "AnnualDate",
    "DateRange",
    "HolidayMode",
    "Interval",
    "Schedule",
    "ScheduleDataError",
    "Weekday",
    "WeeklyRule",
    "Window",
    "next_change",
    "parse_window",
    "public_holidays",
    "uncovered",
    "window_intervals",
]

OSLO = ZoneInfo("Europe/Oslo")
NEXT_CHANGE_HORIZON = timedelta(days=8)

_DAY = timedelta(days=1)
_MICROSECOND = timedelta(microseconds=1)

Interval = tuple[datetime, datetime]


class Weekday(enum.IntEnum):
    """Days of the week, numbered as ``date.weekday()`` numbers them."""

    MON = 0
    TUE = 1
    WED = 2
    THU = 3
    FRI = 4
    SAT = 5
    SUN = 6


ALL_DAYS: frozenset[Weekday] = frozenset(Weekday)


class HolidayMode(enum.StrEnum):
    """How a rule treats a public holiday (or an extra holiday) on the day it starts."""

    INCLUDE = "include"  # holidays are ordinary days: only the weekday counts
    EXCLUDE = "exclude"  # the rule does not apply on holidays
    ONLY = "only"  # the rule applies only on holidays


@dataclass(frozen=True, slots=True)
class AnnualDate:
    """A day that recurs every year (``12-24``), for extra holidays such as Christmas Eve."""

    month: int
    day: int

    def __post_init__(self) -> None:
        date(2000, self.month, self.day)  # 2000 is a leap year: 02-29 is allowed

    def __str__(self) -> str:
        return f"{self.month:02d}-{self.day:02d}"


@dataclass(frozen=True, slots=True)
class DateRange:
    """Local dates ``first`` to ``last``, both included (a summer closure, a single day)."""

    first: date
    last: date

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"date range ends ({self.last}) before it starts ({self.first})")

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.first <= day <= self.last


@dataclass(frozen=True, slots=True)
class WeeklyRule:
    """One recurring occurrence per matching day: ``days`` at ``start`` until ``end``.

    ``end`` at or before ``start`` means the next day (``22:00-07:00``; ``00:00-00:00`` is 24
    hours). The occurrence belongs to the day it starts on, for weekdays and holidays alike.
    """

    days: frozenset[Weekday]
    start: time
    end: time
    holidays: HolidayMode = HolidayMode.INCLUDE

    def __post_init__(self) -> None:
        if not self.days:
            raise ValueError("a weekly rule needs at least one weekday")
        for name, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is not None or value.second or value.microsecond:
                raise ValueError(f"{name} must be a local time in whole minutes, got {value}")

    @property
    def length(self) -> timedelta:
        """Wall-clock length of one occurrence (real length differs on DST change days)."""
        start = timedelta(hours=self.start.hour, minutes=self.start.minute)
        end = timedelta(hours=self.end.hour, minutes=self.end.minute)
        return end - start if end > start else end - start + _DAY

    def applies_on(self, day: date, is_holiday: bool) -> bool:
        """Whether an occurrence starts on local date ``day``."""
        if Weekday(day.weekday()) not in self.days:
            return False
        if self.holidays is HolidayMode.EXCLUDE:
            return not is_holiday
        if self.holidays is HolidayMode.ONLY:
            return is_holiday
        return True


def _no_extra_holidays() -> frozenset[date | AnnualDate]:
    return frozenset()


@dataclass(frozen=True, slots=True)
class Window:
    """A named window's content: its rules, suspended dates and extra holidays.

    ``exclusions`` suspend every rule for occurrences that *start* on those dates.
    ``extra_holidays`` are treated exactly like public holidays by the rules' ``holidays``
    mode; they are data because municipalities differ (24 and 31 December are common).
    """

    rules: tuple[WeeklyRule, ...]
    exclusions: tuple[DateRange, ...] = ()
    extra_holidays: frozenset[date | AnnualDate] = field(default_factory=_no_extra_holidays)

    def is_holiday(self, day: date) -> bool:
        """A Norwegian public holiday, or one of this window's extra holidays."""
        return (
            day in public_holidays(day.year)
            or day in self.extra_holidays
            or AnnualDate(day.month, day.day) in self.extra_holidays
        )

    def _excluded(self, day: date) -> bool:
        return any(day in excluded for excluded in self.exclusions)

    def contains(self, at: datetime) -> bool:
        """Whether the window applies at instant ``at`` (the wall-clock rule, see module)."""
        wall = _wall(at)
        today = wall.date()
        for start_day in (today, today - _DAY):
            if self._excluded(start_day):
                continue
            holiday: bool | None = None  # computed once per day, only if a rule asks
            for rule in self.rules:
                if Weekday(start_day.weekday()) not in rule.days:
                    continue
                if rule.holidays is not HolidayMode.INCLUDE and holiday is None:
                    holiday = self.is_holiday(start_day)
                if not rule.applies_on(start_day, bool(holiday)):
                    continue
                begin = datetime.combine(start_day, rule.start)
                if begin <= wall < begin + rule.length:
                    return True
        return False

    def wall_intervals(self, first_day: date, last_day: date) -> list[Interval]:
        """Naive local intervals of the occurrences starting on ``first_day``..``last_day``,
        sorted and merged (an occurrence may run past ``last_day``)."""
        found: list[Interval] = []
        day = first_day
        while day <= last_day:
            if not self._excluded(day):
                holiday = self.is_holiday(day)
                for rule in self.rules:
                    if rule.applies_on(day, holiday):
                        begin = datetime.combine(day, rule.start)
                        found.append((begin, begin + rule.length))
            day += _DAY
        return _merge(found)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A municipality's named windows, in the order they were written."""

    windows: Mapping[str, Window]

    def __post_init__(self) -> None:
        for name in self.windows:
            if not name:
                raise ValueError("a window needs a name")
        object.__setattr__(self, "windows", MappingProxyType(dict(self.windows)))

    def active(self, at: datetime) -> tuple[str, ...]:
        """Names of the windows that apply at ``at``, in schedule order."""
        return tuple(name for name, window in self.windows.items() if window.contains(at))


# --- public holidays ---------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def public_holidays(year: int) -> frozenset[date]:
    """Norway's public holidays in ``year`` (not ordinary Sundays; see the module notes)."""
    found = frozenset(holidays_package.country_holidays("NO", years=year))
    february_first = date(year, 2, 1)
    ordinary_sunday = february_first + timedelta(days=(6 - february_first.weekday()) % 7)
    if ordinary_sunday in found:
        # An old release that counts every Sunday: refuse rather than treat all as holidays.
        raise RuntimeError(
            "the holidays package counts every Sunday as a Norwegian holiday; "
            "alarmd needs holidays>=0.50 (include_sundays=False)"
        )
    return found


# --- instants and intervals --------------------------------------------------------------


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")


def _wall(at: datetime) -> datetime:
    """The reading of a clock in Oslo at ``at``, naive, ``fold`` dropped."""
    _require_aware(at, "at")
    # Through UTC: astimezone() returns an Oslo datetime unchanged, so an imaginary reading
    # (02:30 on the spring-forward day) would be judged as written, not as the instant it is.
    return at.astimezone(UTC).astimezone(OSLO).replace(tzinfo=None, fold=0)


def _offset(at: datetime) -> timedelta:
    offset = at.astimezone(OSLO).utcoffset()
    assert offset is not None  # ZoneInfo always knows
    return offset


def _merge(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for begin, end in sorted(intervals):
        if merged and begin <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((begin, end))
    return merged


def _offset_pieces(start: datetime, end: datetime) -> list[tuple[datetime, datetime, timedelta]]:
    """Cut UTC ``[start, end)`` where Oslo's UTC offset changes: (begin, end, offset) pieces.

    A daily probe finds a day with a change and a bisection finds its microsecond. Oslo
    never changes twice within a day, so a daily probe misses nothing.
    """
    pieces: list[tuple[datetime, datetime, timedelta]] = []
    begin, offset = start, _offset(start)
    probe = start
    while probe < end:
        step = min(probe + _DAY, end)
        if _offset(step) == offset:
            probe = step
            continue
        low, high = probe, step  # offset(low) == offset != offset(high)
        while high - low > _MICROSECOND:
            middle = low + (high - low) // 2
            if _offset(middle) == offset:
                low = middle
            else:
                high = middle
        pieces.append((begin, high, offset))
        begin, offset, probe = high, _offset(high), high
    if begin < end:
        pieces.append((begin, end, offset))
    return pieces


def window_intervals(window: Window, start: datetime, end: datetime) -> list[Interval]:
    """The UTC intervals within ``[start, end)`` where ``window`` applies, sorted, merged.

    Exact to the microsecond: each constant-offset piece of the range is mapped to wall
    time, intersected with the window's local occurrences and mapped back.
    """
    _require_aware(start, "start")
    _require_aware(end, "end")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        return []
    found: list[Interval] = []
    for piece_begin, piece_end, offset in _offset_pieces(start, end):
        wall_begin = (piece_begin + offset).replace(tzinfo=None)
        wall_end = (piece_end + offset).replace(tzinfo=None)
        # Occurrences last at most a day, so one that overlaps starts at most a day earlier.
        for begin, finish in window.wall_intervals(
            wall_begin.date() - _DAY, (wall_end - _MICROSECOND).date()
        ):
            low, high = max(begin, wall_begin), min(finish, wall_end)
            if low < high:
                found.append(
                    ((low - offset).replace(tzinfo=UTC), (high - offset).replace(tzinfo=UTC))
                )
    return _merge(found)


def next_change(window: Window, after: datetime) -> datetime | None:
    """The first instant strictly after ``after`` at which ``window.contains`` flips, in UTC.

    ``contains`` is true from an interval's start (included) to its end (excluded), so the
    answer is the first instant with the new value. ``None`` when nothing flips within
    ``NEXT_CHANGE_HORIZON`` (8 days; a window that never ends, or never starts): the caller
    re-evaluates then, or on the next configuration change.
    """
    _require_aware(after, "after")
    after = after.astimezone(UTC)
    horizon = after + NEXT_CHANGE_HORIZON
    # Look one minute past the horizon so that a flip exactly at it is not lost to clipping.
    intervals = window_intervals(window, after, horizon + timedelta(minutes=1))
    if not intervals:
        return None
    first_begin, first_end = intervals[0]
    flip = first_end if first_begin == after else first_begin
    return flip if flip <= horizon else None


def uncovered(windows: Sequence[Window], start: datetime, end: datetime) -> list[Interval]:
    """The UTC intervals within ``[start, end)`` where none of ``windows`` applies.

    For the route checker: a kind of alarm whose windows leave a gap has no route then.
    """
    _require_aware(start, "start")
    _require_aware(end, "end")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    covered = _merge(
        interval for window in windows for interval in window_intervals(window, start, end)
    )
    gaps: list[Interval] = []
    cursor = start
    for begin, finish in covered:
        if begin > cursor:
            gaps.append((cursor, begin))
        cursor = max(cursor, finish)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


# --- plain data ---------------------------------------------------------------------------


class ScheduleDataError(ValueError):
    """A window's plain data is wrong; ``path`` leads to the offending field."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{_format_path(path)}: {message}" if path else message)


def _format_path(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


_TIME = re.compile(r"(\d{2}):(\d{2})")
_ANNUAL = re.compile(r"(\d{2})-(\d{2})")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DAY_NAMES = {day.name.lower(): day for day in Weekday}
_RULE_KEYS = ("days", "from", "to", "holidays")
_WINDOW_KEYS = ("rules", "except", "extra_holidays")
_RANGE_KEYS = ("from", "to")


def _check_keys(
    data: Mapping[str, object], allowed: Sequence[str], path: tuple[str | int, ...]
) -> None:
    for key in data:
        if not isinstance(key, str) or key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            expected = ", ".join(allowed)
            raise ScheduleDataError(
                (*path, str(key)), f"unknown key{hint}; expected one of {expected}"
            )


def _mapping(value: object, path: tuple[str | int, ...]) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ScheduleDataError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value: object, path: tuple[str | int, ...]) -> list[object]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ScheduleDataError(path, f"expected a list, got {type(value).__name__}")
    return list(value)


def _parse_time(value: object, path: tuple[str | int, ...], *, end: bool) -> time:
    # YAML 1.1 would read 08:00 unquoted as the integer 480; ruamel's 1.2 gives a string.
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ScheduleDataError(path, f"expected a time 'HH:MM' as a string, got {value!r}")
    hours, minutes = int(match[1]), int(match[2])
    if end and (hours, minutes) == (24, 0):
        return time(0, 0)  # the next midnight: an end at or before the start crosses it
    if hours > 23 or minutes > 59:
        limit = "00:00-24:00" if end else "00:00-23:59"
        raise ScheduleDataError(path, f"{value!r} is not a time of day ({limit})")
    return time(hours, minutes)


def _parse_date(value: object, path: tuple[str | int, ...]) -> date:
    # YAML reads an unquoted 2026-07-01 as a date already; a quoted one is a string.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ScheduleDataError(path, f"expected a date 'YYYY-MM-DD', got {value!r}")


def _parse_days(value: object, path: tuple[str | int, ...]) -> frozenset[Weekday]:
    days: set[Weekday] = set()
    items = _list(value, path)
    if not items:
        raise ScheduleDataError(path, "needs at least one day (leave it out for every day)")
    for index, item in enumerate(items):
        day = _DAY_NAMES.get(item) if isinstance(item, str) else None
        if day is None:
            names = ", ".join(_DAY_NAMES)
            raise ScheduleDataError((*path, index), f"{item!r} is not a day; use {names}")
        if day in days:
            raise ScheduleDataError((*path, index), f"{item!r} is listed twice")
        days.add(day)
    return frozenset(days)


def _parse_rule(data: Mapping[str, object], path: tuple[str | int, ...]) -> WeeklyRule:
    for key in ("from", "to"):
        if key not in data:
            raise ScheduleDataError((*path, key), "is required")
    days = _parse_days(data["days"], (*path, "days")) if "days" in data else ALL_DAYS
    start = _parse_time(data["from"], (*path, "from"), end=False)
    end = _parse_time(data["to"], (*path, "to"), end=True)
    raw = data.get("holidays", HolidayMode.INCLUDE.value)
    modes = {mode.value: mode for mode in HolidayMode}
    mode = modes.get(raw) if isinstance(raw, str) else None
    if mode is None:
        expected = ", ".join(modes)
        raise ScheduleDataError((*path, "holidays"), f"expected one of {expected}, got {raw!r}")
    return WeeklyRule(days=days, start=start, end=end, holidays=mode)


def _parse_exclusion(value: object, path: tuple[str | int, ...]) -> DateRange:
    if not isinstance(value, Mapping):
        day = _parse_date(value, path)  # a single date is a one-day range
        return DateRange(day, day)
    _check_keys(value, _RANGE_KEYS, path)
    if "from" not in value:
        raise ScheduleDataError((*path, "from"), "is required")
    first = _parse_date(value["from"], (*path, "from"))
    last = _parse_date(value["to"], (*path, "to")) if "to" in value else first
    if last < first:
        raise ScheduleDataError((*path, "to"), f"{last} is before 'from' ({first})")
    return DateRange(first, last)


def _parse_extra_holiday(value: object, path: tuple[str | int, ...]) -> date | AnnualDate:
    if isinstance(value, str) and (match := _ANNUAL.fullmatch(value)):
        try:
            return AnnualDate(int(match[1]), int(match[2]))
        except ValueError:
            raise ScheduleDataError(path, f"{value!r} is not a day of the year") from None
    try:
        return _parse_date(value, path)
    except ScheduleDataError:
        raise ScheduleDataError(
            path, f"expected 'MM-DD' (every year) or 'YYYY-MM-DD', got {value!r}"
        ) from None


def parse_window(data: Mapping[str, object]) -> Window:
    """Build a ``Window`` from plain data (what the YAML loader reads); strict.

    One rule, written inline::

        {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "15:30",
         "holidays": "exclude",
         "except": [{"from": "2026-07-01", "to": "2026-07-31"}, "2026-05-18"],
         "extra_holidays": ["12-24", "12-31"]}

    or several, under ``rules`` (each with ``days``, ``from``, ``to``, ``holidays``), with
    ``except`` and ``extra_holidays`` beside it. ``days`` (``mon``..``sun``) defaults to
    every day; ``holidays`` (``include``, ``exclude``, ``only``) to ``include``; ``to`` may
    be ``24:00``. ``except`` items are ``{from, to}`` date ranges (both included; ``to``
    defaults to ``from``) or single dates. ``extra_holidays`` are ``MM-DD`` (every year) or
    ``YYYY-MM-DD``. Dates may be strings or ``date`` values. Unknown keys are errors.

    Raises ``ScheduleDataError`` (a ``ValueError``) naming the field, e.g. ``rules[1].to``.
    """
    data = _mapping(data, ())
    if "rules" in data:
        _check_keys(data, _WINDOW_KEYS, ())
        items = _list(data["rules"], ("rules",))
        if not items:
            raise ScheduleDataError(("rules",), "needs at least one rule")
        rules = []
        for index, item in enumerate(items):
            path: tuple[str | int, ...] = ("rules", index)
            rule_data = _mapping(item, path)
            _check_keys(rule_data, _RULE_KEYS, path)
            rules.append(_parse_rule(rule_data, path))
    else:
        _check_keys(data, _RULE_KEYS + _WINDOW_KEYS[1:], ())
        rules = [_parse_rule(data, ())]
    exclusions = tuple(
        _parse_exclusion(item, ("except", index))
        for index, item in enumerate(_list(data.get("except", []), ("except",)))
    )
    extra = frozenset(
        _parse_extra_holiday(item, ("extra_holidays", index))
        for index, item in enumerate(_list(data.get("extra_holidays", []), ("extra_holidays",)))
    )
    return Window(rules=tuple(rules), exclusions=exclusions, extra_holidays=extra)

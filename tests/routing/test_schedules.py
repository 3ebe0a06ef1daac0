"""Schedules: windows by weekday, time, Norwegian holidays and DST in Europe/Oslo.

Examples pin the rules a municipality relies on (a night belongs to the day it starts, the
holiday calendar, both daylight-saving change days); Hypothesis holds ``contains`` to an
independent brute-force reading of the wall clock, and ``next_change`` and ``uncovered`` to
``contains``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta

import holidays
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarmd.routing.schedules import (
    OSLO,
    AnnualDate,
    DateRange,
    HolidayMode,
    Schedule,
    ScheduleDataError,
    Weekday,
    WeeklyRule,
    Window,
    next_change,
    parse_window,
    public_holidays,
    uncovered,
    window_intervals,
)

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
SPRING_FORWARD = date(2026, 3, 29)  # last Sunday of March: 02:00 -> 03:00
FALL_BACK = date(2026, 10, 25)  # last Sunday of October: 03:00 -> 02:00
YEAR_START = datetime(2026, 1, 1, tzinfo=OSLO)
YEAR_END = datetime(2027, 1, 1, tzinfo=OSLO)


def oslo(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=OSLO, fold=fold)


def window(**data: object) -> Window:
    return parse_window({key.rstrip("_"): value for key, value in data.items()})


def total(intervals: list[tuple[datetime, datetime]]) -> timedelta:
    return sum((end - begin for begin, end in intervals), timedelta())


def occurrence(w: Window, at: datetime) -> tuple[datetime, datetime]:
    """The UTC interval of ``w`` that holds ``at`` (looking a day either side)."""
    found = window_intervals(w, at - timedelta(days=1), at + timedelta(days=1))
    (held,) = [(b, e) for b, e in found if b <= at < e]
    return held


# --- weekdays and times -------------------------------------------------------------------

DAY = window(days=WEEKDAYS, from_="08:00", to="15:30")


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (oslo(2026, 3, 10, 7, 59), False),  # a Tuesday
        (oslo(2026, 3, 10, 8, 0), True),
        (oslo(2026, 3, 10, 15, 29), True),
        (oslo(2026, 3, 10, 15, 30), False),  # the end is excluded
        (oslo(2026, 3, 14, 10, 0), False),  # Saturday
        (datetime(2026, 3, 10, 7, 0, tzinfo=UTC), True),  # 08:00 in Oslo (CET)
        (datetime(2026, 6, 10, 6, 0, tzinfo=UTC), True),  # 08:00 in Oslo (CEST)
        (datetime(2026, 6, 10, 5, 59, tzinfo=UTC), False),
    ],
)
def test_day_window_on_a_weekday(at: datetime, expected: bool) -> None:
    assert DAY.contains(at) is expected


def test_night_belongs_to_the_day_it_starts() -> None:
    friday_night = window(days=["fri"], from_="22:00", to="07:00")
    assert friday_night.contains(oslo(2026, 3, 13, 22, 0))  # Friday
    assert friday_night.contains(oslo(2026, 3, 14, 6, 59))  # Saturday morning: Friday's night
    assert not friday_night.contains(oslo(2026, 3, 14, 7, 0))
    assert not friday_night.contains(oslo(2026, 3, 14, 23, 0))  # Saturday's night
    assert not friday_night.contains(oslo(2026, 3, 13, 3, 0))  # Friday morning: Thursday's
    assert not friday_night.contains(oslo(2026, 3, 13, 21, 59))


def test_weekend_and_whole_days() -> None:
    weekend = window(days=["sat", "sun"], from_="00:00", to="24:00")
    assert weekend.contains(oslo(2026, 3, 14, 0, 0))
    assert weekend.contains(oslo(2026, 3, 15, 23, 59))
    assert not weekend.contains(oslo(2026, 3, 16, 0, 0))
    assert not weekend.contains(oslo(2026, 3, 13, 23, 59))
    # 00:00-00:00 is the same whole day, and a missing "days" means every day.
    assert window(from_="00:00", to="00:00").contains(oslo(2026, 3, 11, 12, 0))


def test_schedule_names_active_windows_in_order() -> None:
    schedule = Schedule(
        {
            "night": window(from_="22:00", to="08:00"),
            "day": window(days=WEEKDAYS, from_="08:00", to="22:00"),
            "weekend": window(days=["sat", "sun"], from_="08:00", to="22:00"),
            "late": window(from_="21:00", to="23:00"),
        }
    )
    assert schedule.active(oslo(2026, 3, 10, 12)) == ("day",)
    assert schedule.active(oslo(2026, 3, 10, 22, 30)) == ("night", "late")
    assert schedule.active(oslo(2026, 3, 14, 21, 30)) == ("weekend", "late")
    assert schedule.active(oslo(2026, 3, 15, 7)) == ("night",)


# --- holidays -----------------------------------------------------------------------------

HOLIDAYS_2026 = {
    date(2026, 1, 1): "New Year's Day",
    date(2026, 4, 2): "Maundy Thursday",
    date(2026, 4, 3): "Good Friday",
    date(2026, 4, 5): "Easter Sunday",
    date(2026, 4, 6): "Easter Monday",
    date(2026, 5, 1): "Labour Day",
    date(2026, 5, 14): "Ascension Day",
    date(2026, 5, 17): "Constitution Day",
    date(2026, 5, 24): "Whit Sunday",
    date(2026, 5, 25): "Whit Monday",
    date(2026, 12, 25): "Christmas Day",
    date(2026, 12, 26): "Boxing Day",
}


def test_public_holidays_are_exactly_the_red_days() -> None:
    assert public_holidays(2026) == frozenset(HOLIDAYS_2026)
    # 2027: Easter Sunday is the spring-forward day, Maundy Thursday is 25 March.
    assert {date(2027, 3, 25), date(2027, 3, 26), date(2027, 3, 28), date(2027, 3, 29)} <= (
        public_holidays(2027)
    )


def test_ordinary_sundays_are_not_holidays() -> None:
    """The holidays package once counted every Norwegian Sunday as a holiday (module notes)."""
    day = date(2026, 1, 4)
    while day.year == 2026:
        assert (day in public_holidays(2026)) is (day in HOLIDAYS_2026)
        day += timedelta(days=7)
    # The package itself, asked the way the module asks it, agrees.
    assert date(2026, 2, 1) not in holidays.country_holidays("NO", years=2026)


@pytest.mark.parametrize(("day", "name"), sorted(HOLIDAYS_2026.items()))
def test_holidays_exclude_and_only(day: date, name: str) -> None:
    at = datetime.combine(day, time(10, 0), OSLO)
    every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    working = window(days=every_day, from_="08:00", to="15:30", holidays="exclude")
    holiday = window(from_="00:00", to="24:00", holidays="only")
    ordinary = window(days=every_day, from_="08:00", to="15:30")
    assert not working.contains(at), name
    assert holiday.contains(at), name
    assert ordinary.contains(at), name  # include: the weekday alone decides


@pytest.mark.parametrize("day", [date(2026, 4, 4), date(2026, 4, 12), date(2026, 3, 10)])
def test_ordinary_days_are_not_holidays(day: date) -> None:
    at = datetime.combine(day, time(10, 0), OSLO)  # Holy Saturday, a Sunday, a Tuesday
    assert not window(from_="00:00", to="24:00", holidays="only").contains(at)
    assert window(from_="08:00", to="15:30", holidays="exclude").contains(at)


def test_extra_holidays_are_data() -> None:
    with_eves = window(
        days=WEEKDAYS, from_="08:00", to="15:30", holidays="exclude",
        extra_holidays=["12-24", "12-31", "2026-11-20"],
    )  # fmt: skip
    without = window(days=WEEKDAYS, from_="08:00", to="15:30", holidays="exclude")
    for day in (date(2026, 12, 24), date(2026, 12, 31), date(2027, 12, 24), date(2026, 11, 20)):
        at = datetime.combine(day, time(10, 0), OSLO)
        assert not with_eves.contains(at), day
        assert without.contains(at), day
    assert with_eves.contains(oslo(2026, 12, 23, 10))
    assert with_eves.contains(oslo(2027, 11, 19, 10))  # a one-off date does not recur
    assert with_eves.extra_holidays == {AnnualDate(12, 24), AnnualDate(12, 31), date(2026, 11, 20)}


def test_holiday_night_is_judged_on_its_start_day() -> None:
    night = window(from_="22:00", to="07:00", holidays="exclude", extra_holidays=["12-31"])
    assert night.contains(oslo(2026, 12, 30, 23))
    assert night.contains(oslo(2026, 12, 31, 3))  # the night of the 30th
    assert not night.contains(oslo(2026, 12, 31, 23))  # New Year's Eve night is a holiday
    assert not night.contains(oslo(2027, 1, 1, 3))
    assert not night.contains(oslo(2027, 1, 1, 23))  # New Year's Day night as well
    assert not night.contains(oslo(2027, 1, 2, 3))  # still the 1st's night
    assert night.contains(oslo(2027, 1, 2, 23))


def test_exclusions_suspend_occurrences_starting_in_the_range() -> None:
    summer = window(
        from_="22:00", to="07:00",
        except_=[{"from": "2026-07-01", "to": "2026-07-31"}, date(2026, 9, 1)],
    )  # fmt: skip
    assert summer.contains(oslo(2026, 7, 1, 3))  # the night of 30 June
    assert not summer.contains(oslo(2026, 7, 1, 23))
    assert not summer.contains(oslo(2026, 8, 1, 3))  # the night of 31 July
    assert summer.contains(oslo(2026, 8, 1, 23))
    assert not summer.contains(oslo(2026, 9, 1, 23))
    assert summer.exclusions == (
        DateRange(date(2026, 7, 1), date(2026, 7, 31)),
        DateRange(date(2026, 9, 1), date(2026, 9, 1)),
    )


# --- daylight-saving change days ----------------------------------------------------------

SMALL_HOURS = window(from_="01:00", to="04:00")
NIGHT = window(from_="22:00", to="07:00")


def test_spring_forward_shortens_windows() -> None:
    assert total([occurrence(SMALL_HOURS, oslo(2026, 3, 29, 1))]) == timedelta(hours=2)
    assert total([occurrence(NIGHT, oslo(2026, 3, 28, 22))]) == timedelta(hours=8)
    assert occurrence(SMALL_HOURS, oslo(2026, 3, 29, 1)) == (
        datetime(2026, 3, 29, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 2, 0, tzinfo=UTC),
    )
    # A start inside the missing hour takes effect at the jump, 03:00 CEST.
    late = window(from_="02:30", to="05:00")
    assert occurrence(late, oslo(2026, 3, 29, 3)) == (
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 3, 0, tzinfo=UTC),
    )
    # In UTC: Python subtracts from an Oslo datetime on the wall clock (-> 02:59:59.999999).
    assert not late.contains(oslo(2026, 3, 29, 3).astimezone(UTC) - timedelta(microseconds=1))
    assert next_change(late, oslo(2026, 3, 29, 0, 30)) == datetime(2026, 3, 29, 1, tzinfo=UTC)


def test_fall_back_lengthens_windows() -> None:
    assert total([occurrence(SMALL_HOURS, oslo(2026, 10, 25, 1))]) == timedelta(hours=4)
    assert total([occurrence(NIGHT, oslo(2026, 10, 24, 22))]) == timedelta(hours=10)
    first, second = oslo(2026, 10, 25, 2, 30, fold=0), oslo(2026, 10, 25, 2, 30, fold=1)
    assert second - first == timedelta(0)  # same wall time; as instants they are an hour apart
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    for at in (first, second, first.astimezone(UTC), second.astimezone(UTC)):
        assert SMALL_HOURS.contains(at)
        assert NIGHT.contains(at)
        assert not window(from_="03:00", to="04:00").contains(at)


def test_an_imaginary_reading_is_judged_as_its_instant() -> None:
    """02:30 on the spring-forward day never shows on a clock; Python maps it to 01:30 UTC,
    when the clock shows 03:30, so that is the reading judged."""
    imaginary = oslo(2026, 3, 29, 2, 30)
    assert imaginary.astimezone(UTC) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert not window(from_="01:00", to="03:00").contains(imaginary)
    assert window(from_="03:00", to="04:00").contains(imaginary)


def test_a_boundary_in_the_repeated_hour_is_crossed_twice() -> None:
    """The documented price of the wall-clock rule."""
    short = window(from_="01:00", to="02:30")
    assert short.contains(oslo(2026, 10, 25, 2, 15, fold=0))
    assert not short.contains(oslo(2026, 10, 25, 2, 45, fold=0))
    assert short.contains(oslo(2026, 10, 25, 2, 15, fold=1))
    assert not short.contains(oslo(2026, 10, 25, 2, 45, fold=1))
    start = datetime.combine(FALL_BACK, time(), OSLO)
    assert window_intervals(short, start, start + timedelta(hours=12)) == [
        (datetime(2026, 10, 24, 23, 0, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        (datetime(2026, 10, 25, 1, 0, tzinfo=UTC), datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
    ]


def test_uncovered_handles_both_change_days() -> None:
    day, evening = window(from_="07:00", to="15:00"), window(from_="15:00", to="22:00")
    gaps = uncovered([day, evening], YEAR_START, YEAR_END)
    # 00:00-07:00 on 1 January, a night between each pair of days, 22:00-24:00 on 31 December.
    assert len(gaps) == 366
    assert gaps[0][1] - gaps[0][0] == timedelta(hours=7)
    assert gaps[-1][1] - gaps[-1][0] == timedelta(hours=2)
    nights = {gap[1] - gap[0]: gap for gap in gaps[1:-1]}
    assert set(nights) == {timedelta(hours=9), timedelta(hours=8), timedelta(hours=10)}
    assert nights[timedelta(hours=8)][0] == oslo(2026, 3, 28, 22)
    assert nights[timedelta(hours=10)][0] == oslo(2026, 10, 24, 22)
    assert uncovered([], YEAR_START, YEAR_END) == [
        (YEAR_START.astimezone(UTC), YEAR_END.astimezone(UTC))
    ]


# --- next_change ----------------------------------------------------------------------------


def test_next_change() -> None:
    assert next_change(DAY, oslo(2026, 3, 10, 7)) == datetime(2026, 3, 10, 7, tzinfo=UTC)
    assert next_change(DAY, oslo(2026, 3, 10, 8)) == datetime(2026, 3, 10, 14, 30, tzinfo=UTC)
    assert next_change(DAY, oslo(2026, 3, 13, 16)) == datetime(2026, 3, 16, 7, tzinfo=UTC)
    assert next_change(DAY, oslo(2026, 6, 12, 16)) == datetime(2026, 6, 15, 6, tzinfo=UTC)
    # Easter: Thursday to Monday are holidays, so after Wednesday comes Tuesday.
    working = window(days=WEEKDAYS, from_="08:00", to="15:30", holidays="exclude")
    assert next_change(working, oslo(2026, 4, 1, 16)) == datetime(2026, 4, 7, 6, tzinfo=UTC)
    assert next_change(SMALL_HOURS, oslo(2026, 3, 28, 12)) == datetime(2026, 3, 29, tzinfo=UTC)
    assert next_change(SMALL_HOURS, oslo(2026, 3, 29, 1)) == datetime(2026, 3, 29, 2, tzinfo=UTC)
    assert next_change(SMALL_HOURS, oslo(2026, 10, 25, 1)) == datetime(2026, 10, 25, 3, tzinfo=UTC)
    flip = next_change(DAY, oslo(2026, 3, 10, 9))
    assert flip is not None and flip.tzinfo is UTC


def test_next_change_is_none_without_a_flip_in_eight_days() -> None:
    assert next_change(window(from_="00:00", to="00:00"), oslo(2026, 3, 10)) is None
    summer_holiday = window(from_="00:00", to="24:00", holidays="only")
    assert next_change(summer_holiday, oslo(2026, 6, 1)) is None  # nothing until Christmas
    # A flip exactly 8 days ahead is still found.
    weekly = window(days=["tue"], from_="08:00", to="09:00")
    assert next_change(weekly, oslo(2026, 3, 3, 9)) == oslo(2026, 3, 10, 8).astimezone(UTC)


# --- plain data -----------------------------------------------------------------------------


def test_parse_window_full_example() -> None:
    parsed = parse_window(
        {
            "days": WEEKDAYS,
            "from": "08:00",
            "to": "15:30",
            "holidays": "exclude",
            "except": [{"from": "2026-07-01", "to": "2026-07-31"}],
        }
    )
    assert parsed == Window(
        rules=(
            WeeklyRule(
                days=frozenset(Weekday(i) for i in range(5)),
                start=time(8, 0),
                end=time(15, 30),
                holidays=HolidayMode.EXCLUDE,
            ),
        ),
        exclusions=(DateRange(date(2026, 7, 1), date(2026, 7, 31)),),
    )
    several = parse_window(
        {
            "rules": [
                {"days": ["sat", "sun"], "from": "08:00", "to": "22:00"},
                {"from": "08:00", "to": "22:00", "holidays": "only"},
            ],
            "extra_holidays": ["12-24", date(2026, 12, 31)],
        }
    )
    assert len(several.rules) == 2
    assert several.contains(oslo(2026, 12, 24, 12))  # a Thursday, an extra holiday
    assert not several.contains(oslo(2026, 12, 23, 12))


R = {"from": "08:00", "to": "15:30"}  # a valid rule, for the cases that break something else
PARSE_ERRORS: list[tuple[dict[str, object], str]] = [
    ({**R, "holiday": "exclude"}, "holiday: unknown key (did you mean 'holidays'?)"),
    ({"from": "08:00"}, "to: is required"),
    ({"from": "25:00", "to": "08:00"}, "from: '25:00' is not a time of day"),
    ({"from": "24:00", "to": "08:00"}, "from: '24:00' is not a time of day"),
    ({**R, "from": "8:00"}, "from: expected a time 'HH:MM' as a string, got '8:00'"),
    ({**R, "from": 480}, "from: expected a time 'HH:MM' as a string, got 480"),
    ({**R, "days": ["monday"]}, "days[0]: 'monday' is not a day"),
    ({**R, "days": ["mon", "mon"]}, "days[1]: 'mon' is listed twice"),
    ({**R, "days": "mon"}, "days: expected a list, got str"),
    ({**R, "days": []}, "days: needs at least one day"),
    ({**R, "holidays": "yes"}, "holidays: expected one of include, exclude, only"),
    (
        {**R, "except": [{"from": "2026-07-31", "to": "2026-07-01"}]},
        "except[0].to: 2026-07-01 is before 'from'",
    ),
    ({**R, "except": [{"to": "2026-07-01"}]}, "except[0].from: is required"),
    (
        {**R, "except": [{"from": "2026-02-30"}]},
        "except[0].from: expected a date 'YYYY-MM-DD', got '2026-02-30'",
    ),
    ({**R, "except": [{"from": "2026-07-01", "till": "x"}]}, "except[0].till: unknown key"),
    ({**R, "extra_holidays": ["13-24"]}, "extra_holidays[0]: '13-24' is not a day of the year"),
    (
        {**R, "extra_holidays": ["24.12"]},
        "extra_holidays[0]: expected 'MM-DD' (every year) or 'YYYY-MM-DD'",
    ),
    ({"rules": []}, "rules: needs at least one rule"),
    ({"rules": [R], "days": ["mon"]}, "days: unknown key"),
    ({"rules": [{**R, "form": "x"}]}, "rules[0].form: unknown key (did you mean 'from'?)"),
    ({"rules": ["08:00-09:00"]}, "rules[0]: expected a mapping, got str"),
]


@pytest.mark.parametrize(("data", "message"), PARSE_ERRORS)
def test_parse_window_errors_name_the_field(data: Mapping[str, object], message: str) -> None:
    with pytest.raises(ScheduleDataError) as caught:
        parse_window(data)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(message), str(caught.value)


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        DAY.contains(datetime(2026, 3, 10, 8))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_change(DAY, datetime(2026, 3, 10, 8))


# --- properties -----------------------------------------------------------------------------

MINUTE = timedelta(minutes=1)
DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# Instants anywhere in 2026-2027, and often within a day of a change (or of Easter 2027).
CHANGES = [datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC),
           datetime(2027, 3, 28, 1, tzinfo=UTC), datetime(2027, 10, 31, 1, tzinfo=UTC)]  # fmt: skip
anywhere = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)
near_change = st.builds(
    lambda at, minutes, micro: at + timedelta(minutes=minutes, microseconds=micro),
    st.sampled_from(CHANGES),
    st.integers(-26 * 60, 26 * 60),
    st.sampled_from([0, 0, 1, 999_999]),
)
instants = st.one_of(anywhere, near_change)
clock = st.integers(0, 24 * 4 - 1).map(
    lambda q: f"{q // 4:02d}:{q % 4 * 15:02d}"
) | st.sampled_from(["01:59", "02:00", "02:30", "03:00", "24:00", "00:00"])
rule_data = st.fixed_dictionaries(
    {"from": clock.filter(lambda c: c != "24:00"), "to": clock},
    optional={
        "days": st.lists(st.sampled_from(DAY_NAMES), min_size=1, max_size=7, unique=True),
        "holidays": st.sampled_from(["include", "exclude", "only"]),
    },
)
some_dates = st.dates(min_value=date(2025, 12, 20), max_value=date(2027, 12, 31))
window_data = st.fixed_dictionaries(
    {"rules": st.lists(rule_data, min_size=1, max_size=3)},
    optional={
        "except": st.lists(
            st.tuples(some_dates, st.integers(0, 40)).map(
                lambda r: {"from": r[0], "to": r[0] + timedelta(days=r[1])}
            ),
            max_size=2,
        ),
        "extra_holidays": st.lists(
            st.sampled_from(["12-24", "12-31", "03-27", "10-24"]) | some_dates, max_size=3
        ),
    },
)
windows = window_data.map(parse_window)
NO_HOLIDAYS = holidays.country_holidays("NO", years=range(2025, 2029))


def brute_force_contains(data: Mapping[str, object], at: datetime) -> bool:
    """Read the Oslo wall clock at ``at`` and test every rule on today and yesterday, in
    minutes since the start day's midnight; written apart from the module on purpose."""
    wall = at.astimezone(OSLO)
    minute_now = wall.hour * 60 + wall.minute + (wall.second * 10**6 + wall.microsecond) / 6e7
    extra: list[object] = list(data.get("extra_holidays", []))  # type: ignore[call-overload]
    ranges: list[dict[str, date]] = list(data.get("except", []))  # type: ignore[call-overload]
    for back in (0, 1):
        start_day = wall.date() - timedelta(days=back)
        if any(r["from"] <= start_day <= r["to"] for r in ranges):
            continue
        holiday = (
            start_day in NO_HOLIDAYS
            or start_day in extra
            or f"{start_day.month:02d}-{start_day.day:02d}" in extra
        )
        for rule in data["rules"]:  # type: ignore[attr-defined]
            if DAY_NAMES[start_day.weekday()] not in rule.get("days", DAY_NAMES):
                continue
            mode = rule.get("holidays", "include")
            if (mode == "exclude" and holiday) or (mode == "only" and not holiday):
                continue
            h1, m1 = map(int, rule["from"].split(":"))
            h2, m2 = map(int, rule["to"].split(":"))
            begin, end = h1 * 60 + m1, h2 * 60 + m2
            if end <= begin:
                end += 24 * 60
            if begin <= minute_now + back * 24 * 60 < end:
                return True
    return False


@settings(max_examples=250, deadline=None)
@given(window_data, instants)
def test_contains_agrees_with_the_wall_clock(data: dict[str, object], at: datetime) -> None:
    assert parse_window(data).contains(at) is brute_force_contains(data, at)


@settings(max_examples=100, deadline=None)
@given(windows, st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31),
                             timezones=st.just(OSLO)))  # fmt: skip
def test_an_oslo_datetime_is_judged_as_the_instant_it_is(w: Window, at: datetime) -> None:
    """Includes imaginary readings (02:30 on the spring-forward day) and both folds."""
    assert w.contains(at) is w.contains(at.astimezone(UTC))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows, instants, st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_next_change_is_the_first_flip(w: Window, after: datetime, fractions: list[float]) -> None:
    before = w.contains(after)
    flip = next_change(w, after)
    if flip is None:
        end = after + timedelta(days=8)
    else:
        assert flip.tzinfo is UTC
        assert after < flip <= after + timedelta(days=8)
        assert w.contains(flip) is not before
        assert w.contains(flip - timedelta(microseconds=1)) is before
        end = flip
    span = end - after
    for fraction in [0.5, *fractions]:
        probe = after + span * fraction
        if probe < end:
            assert w.contains(probe) is before, probe


def _cyclic_windows(cuts: list[int], split: int | None) -> list[Window]:
    """Windows from each cut to the next (the last wraps past midnight): the whole week.
    With ``split``, that window becomes a holiday part and a non-holiday part."""
    times = [f"{c // 60:02d}:{c % 60:02d}" for c in cuts]
    result = []
    for index, begin in enumerate(times):
        end = times[(index + 1) % len(times)]
        if index == split:
            result.append(window(from_=begin, to=end, holidays="exclude", extra_holidays=["12-24"]))
            result.append(window(from_=begin, to=end, holidays="only", extra_holidays=["12-24"]))
        else:
            result.append(window(from_=begin, to=end))
    return result


@settings(max_examples=12, deadline=None)
@given(
    st.lists(st.integers(0, 24 * 60 - 1), min_size=2, max_size=4, unique=True).map(sorted),
    st.integers(0, 4) | st.none(),
    st.data(),
)
def test_a_covering_set_leaves_no_gap_and_each_window_is_its_own_gap(
    cuts: list[int], split: int | None, draw: st.DataObject
) -> None:
    parts = _cyclic_windows(cuts, split)
    assert uncovered(parts, YEAR_START, YEAR_END) == []
    removed = draw.draw(st.integers(0, len(parts) - 1))
    rest = parts[:removed] + parts[removed + 1 :]
    assert uncovered(rest, YEAR_START, YEAR_END) == window_intervals(
        parts[removed], YEAR_START, YEAR_END
    )


def test_day_evening_night_cover_a_year() -> None:
    parts = [window(from_="07:00", to="15:00"), window(from_="15:00", to="22:00"),
             window(from_="22:00", to="07:00")]  # fmt: skip
    assert uncovered(parts, YEAR_START, YEAR_END) == []
    evening = window_intervals(parts[1], YEAR_START, YEAR_END)
    assert uncovered([parts[0], parts[2]], YEAR_START, YEAR_END) == evening
    assert len(evening) == 365 and total(evening) == timedelta(hours=7 * 365)

"""Route tools: the tests in tenant files, ``routes explain``, and the coverage check.

The fixtures in tests/fixtures/routing/ are whole small configurations: ``broken`` (a tenant
with a failing route test) and ``gappy`` (a tenant that forgot Saturday nights).
"""

from __future__ import annotations

import shutil
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alarmd.config import ConfigError, load_config
from alarmd.model import Category, EventKind
from alarmd.routing.config import RoutingConfig, default_routing, load_routing, tenant_from_data
from alarmd.routing.schedules import OSLO
from alarmd.routing.tools import (
    Gap,
    check_ranges,
    coverage,
    routes_check,
    routes_explain,
    routes_test,
    run_route_tests,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "alarmd.example.yaml"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "routing"
BROKEN = FIXTURES / "broken"
GAPPY = FIXTURES / "gappy"
ALARM_KINDS = [k for k in EventKind if k.category is Category.ALARM]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- routes test ---------------------------------------------------------------------------


def test_example_route_tests_pass() -> None:
    config = load_routing(load_config(EXAMPLE), EXAMPLE)
    results = run_route_tests(config)
    assert len(results) == 15
    assert all(r.passed for r in results), [r.failures for r in results if not r.passed]
    code, text = routes_test(EXAMPLE, [])
    assert code == 0
    lines = text.splitlines()
    kommune = REPO / "config" / "tenants" / "eksempel-kommune.yaml"
    assert (
        f"{kommune}:134:5: ok: eksempel-kommune: a fall on a weekday afternoon goes to the"
        " plan's home-care team" in lines
    )
    assert lines[-1] == "15 route test(s) in 2 tenant(s): 15 passed, 0 failed"


def test_embedded_default_is_the_example() -> None:
    assert routes_test(None, []) == routes_test(EXAMPLE, [])


def test_a_failing_route_test_names_the_test_and_its_place() -> None:
    code, text = routes_test(BROKEN / "alarmd.yaml", [])
    broken = BROKEN / "tenants" / "broken.yaml"
    assert code == 1
    assert text.splitlines() == [
        f"{broken}:21:5: ok: broken: a fall in the daytime goes to home care",
        f"{broken}:25:5: FAILED: broken: a fall at night goes to home care",
        "    expected mode routing_with_backup, got response (rule 'otherwise')",
        "    expected rule 'day', got 'otherwise'",
        "2 route test(s) in 1 tenant(s): 1 passed, 1 failed",
    ]
    # the daemon would refuse it
    with pytest.raises(ConfigError, match="route test 'a fall at night goes to home care' failed"):
        load_config(BROKEN / "alarmd.yaml")


def test_files_given_are_tested_with_the_configurations_centre() -> None:
    """``alarmctl routes test FILE``: a municipality's edited file, checked in CI."""
    code, text = routes_test(EXAMPLE, [BROKEN / "tenants" / "broken.yaml"])
    assert code == 1
    assert "FAILED: broken: a fall at night goes to home care" in text
    assert "eksempel-kommune" not in text  # only the tenants of the files given
    code, text = routes_test(EXAMPLE, [REPO / "config" / "tenants" / "demo-bydel.yaml"])
    assert (code, text.splitlines()[-1]) == (
        0,
        "3 route test(s) in 1 tenant(s): 3 passed, 0 failed",
    )


def test_an_edited_file_replaces_the_tenant_of_the_same_name(tmp_path: Path) -> None:
    edited = tmp_path / "demo-bydel.yaml"
    text = (REPO / "config" / "tenants" / "demo-bydel.yaml").read_text()
    edited.write_text(
        text.replace("mode: response, first_recipients: [operators]", "mode: routing")
    )
    code, out = routes_test(EXAMPLE, [edited])
    assert code == 1
    assert f"{edited}:30:5: FAILED: demo-bydel: a fall at night goes to the centre" in out


def test_routes_test_bad_input() -> None:
    missing = FIXTURES / "no-such-tenant.yaml"
    assert routes_test(EXAMPLE, [missing]) == (2, f"{missing}: no such tenant file")
    code, text = routes_test(FIXTURES / "no-such-config.yaml", [])
    assert code == 2
    assert text == (
        f"{FIXTURES}/no-such-config.yaml: cannot read the configuration file:"
        " No such file or directory"
    )


def test_routes_test_reports_config_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant: bad\nname: B\nroutes:\n  - {name: r, mode: routing}\n")
    code, text = routes_test(EXAMPLE, [bad])
    assert code == 2
    assert (
        text == f"{bad}:4:21: routes[0].mode: mode routing needs a policy: this file defines none"
    )


# --- routes explain ------------------------------------------------------------------------


def test_explain_christmas_eve_night() -> None:
    code, text = routes_explain(
        EXAMPLE, "eksempel-kommune", "fall", "2026-12-24T22:00", "home", None, None
    )
    assert code == 0
    assert text.splitlines() == [
        "tenant eksempel-kommune, fall (critical), location home, 2026-12-24 22:00"
        " Europe/Oslo (holiday: yes; active windows: night)",
        "route 'technical-to-supplier' skipped: fall is alarm, the route wants technical",
        "route 'fire-and-gas-to-centre' skipped: kind fall is not one of fire, gas",
        "route 'away-to-centre' skipped: location home is not one of away",
        "route 'day-routing' skipped: none of its windows is active (weekday-day)",
        "route 'night-response' matched (category: alarm; windows: night)",
        "mode response: operators' pool, accept within 2 min",
        "=> mode response, rule night-response, queue alarm, first recipients: operators",
    ]


def test_explain_a_held_technical_notice_across_the_clock_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ALARMD_SUPPLIER_WEBHOOK_SECRET", raising=False)
    code, text = routes_explain(
        EXAMPLE, "eksempel-kommune", "battery_low", "2026-03-28T23:00", "home", None, None
    )
    assert code == 0
    assert "held until 2026-03-30 08:00 Europe/Oslo (window 'office-hours' opens)" in text
    assert (
        "note: webhook 'supplier-desk' is disabled (environment variable"
        " ALARMD_SUPPLIER_WEBHOOK_SECRET is not set (optional: disabled)): deliveries to it"
        " fail, so its step escalates"
    ) in text.splitlines()
    assert text.endswith(
        "=> mode routing, rule technical-to-supplier, queue technical, first recipients:"
        " team:leverandor-service, held until 2026-03-30T06:00Z"
    )


def test_explain_with_location_group_and_plan_mode() -> None:
    code, text = routes_explain(
        EXAMPLE, "eksempel-kommune", "fall", "2026-11-24T10:00+01:00", "away", "demens", None
    )
    assert code == 0 and "route 'away-to-centre' matched" in text
    code, text = routes_explain(
        EXAMPLE, "eksempel-kommune", "fall", "2026-11-24T23:00", "home", None, "routing"
    )
    assert code == 0
    assert "plan override: response -> routing (the user's response plan)" in text
    assert text.endswith("first recipients: team:plan")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("eksempel-kommune", "falll", "2026-12-24T22:00", "home", None, None),
            "unknown kind 'falll'; one of: assistance, fall,",
        ),
        (
            ("ukjent", "fall", "2026-12-24T22:00", "home", None, None),
            "unknown tenant 'ukjent'; tenants with routing: demo-bydel, eksempel-kommune",
        ),
        (
            ("eksempel-kommune", "fall", "christmas", "home", None, None),
            "--at: 'christmas' is not a time; write e.g. 2026-12-24T22:00 (Europe/Oslo) or"
            " 2026-12-24T21:00Z",
        ),
        (
            ("eksempel-kommune", "fall", "2026-03-29T02:30", "home", None, None),
            "--at: 2026-03-29T02:30 does not exist in Europe/Oslo (the clocks jump forward an"
            " hour then)",
        ),
        (
            ("eksempel-kommune", "fall", "2026-12-24T22:00", "cabin", None, None),
            "unknown location 'cabin'; one of: home, away, care_home",
        ),
        (
            ("eksempel-kommune", "fall", "2026-12-24T22:00", "home", None, "routed"),
            "unknown plan mode 'routed'; one of: response, routing, routing_with_backup",
        ),
    ],
)
def test_explain_bad_input(args: tuple[str, str, str, str, None, str | None], message: str) -> None:
    code, text = routes_explain(EXAMPLE, *args)
    assert code == 2
    assert text.startswith(message)
    assert "\n" not in text


# --- routes check --------------------------------------------------------------------------


def test_check_ranges() -> None:
    assert check_ranges(2026) == [
        (datetime(2026, 2, 2, tzinfo=OSLO), datetime(2026, 2, 9, tzinfo=OSLO)),
        (datetime(2026, 3, 23, tzinfo=OSLO), datetime(2026, 3, 30, tzinfo=OSLO)),
        (datetime(2026, 10, 19, tzinfo=OSLO), datetime(2026, 10, 26, tzinfo=OSLO)),
    ]
    spring, autumn = check_ranges(2027)[1:]
    assert spring[0].date().isoformat() == "2027-03-22"  # the week of Sunday 28 March
    assert autumn[0].date().isoformat() == "2027-10-25"  # the week of Sunday 31 October


@pytest.mark.parametrize("year", [2026, 2027])
def test_examples_have_no_gaps(year: int) -> None:
    code, text = routes_check(EXAMPLE, year)
    assert code == 0
    assert "demo-bydel: every alarm kind has a route at every moment" in text
    assert "eksempel-kommune: every alarm kind has a route at every moment" in text


def test_saturday_nights_without_a_route_are_reported() -> None:
    code, text = routes_check(GAPPY / "alarmd.yaml", 2026)
    assert code == 1
    assert text.splitlines() == [
        "checked the weeks starting 2026-02-02, 2026-03-23, 2026-10-19 (Europe/Oslo)",
        "gappy: GAPS (the centre's safety net takes these alarms):",
        "  every alarm kind at home, away, care_home: no route",
        "    Sat 2026-02-07 22:00 - Sun 2026-02-08 08:00 Europe/Oslo (10 h)",
        "    Sat 2026-03-28 22:00 - Sun 2026-03-29 08:00 Europe/Oslo (9 h)",
        "    Sat 2026-10-24 22:00 - Sun 2026-10-25 08:00 Europe/Oslo (11 h)",
    ]


def test_coverage_is_exact_across_the_clock_changes() -> None:
    config = load_routing(load_config(GAPPY / "alarmd.yaml"), GAPPY / "alarmd.yaml")
    spring = coverage(config, "gappy", *check_ranges(2026)[1])
    assert len(spring) == len(ALARM_KINDS) * 3
    assert {(g.start, g.end) for g in spring} == {
        (utc("2026-03-28T21:00"), utc("2026-03-29T06:00"))
    }
    assert (
        Gap("gappy", EventKind.FALL, "away", utc("2026-03-28T21:00"), utc("2026-03-29T06:00"))
        in spring
    )
    autumn = coverage(config, "gappy", *check_ranges(2026)[2])
    assert {(g.start, g.end) for g in autumn} == {
        (utc("2026-10-24T20:00"), utc("2026-10-25T07:00"))
    }


def with_tenant(data: dict[str, object]) -> RoutingConfig:
    tenant = tenant_from_data({"tenant": "t", "name": "T", **data})
    return RoutingConfig(centre=default_routing().centre, tenants={"t": tenant}, webhooks={})


def test_coverage_by_kind_location_and_restrictions() -> None:
    config = with_tenant(
        {
            "windows": {"day": {"from": "08:00", "to": "20:00"}},
            "routes": [
                # fall is covered at every hour, at home only
                {
                    "name": "falls",
                    "match": {"kinds": ["fall"], "locations": ["home"]},
                    "mode": "response",
                },
                # a route for one group or one plan mode covers nobody else
                {"name": "dementia", "match": {"groups": ["demens"]}, "mode": "response"},
                {"name": "plans", "match": {"plan_mode": "response"}, "mode": "response"},
                # critical alarms around the clock; the rest only by day
                {"name": "critical", "match": {"min_priority": "critical"}, "mode": "response"},
                {
                    "name": "days",
                    "match": {"windows": ["day"]},
                    "mode": "response",
                },
            ],
        }
    )
    start, end = datetime(2026, 2, 2, tzinfo=OSLO), datetime(2026, 2, 3, tzinfo=OSLO)
    gaps = coverage(config, "t", start, end)
    uncovered = {(g.kind, g.location) for g in gaps}
    critical = {k for k in ALARM_KINDS if k.default_priority.name == "CRITICAL"}
    assert uncovered == {
        (k, loc) for k in ALARM_KINDS if k not in critical for loc in ("home", "away", "care_home")
    }
    assert {(g.start, g.end) for g in gaps} == {
        (utc("2026-02-01T23:00"), utc("2026-02-02T07:00")),
        (utc("2026-02-02T19:00"), utc("2026-02-02T23:00")),
    }


def test_not_windows_cut_a_routes_time() -> None:
    config = with_tenant(
        {
            "windows": {"lunch": {"from": "11:00", "to": "12:00"}},
            "routes": [
                {"name": "not-at-lunch", "match": {"not_windows": ["lunch"]}, "mode": "response"}
            ],
        }
    )
    start = datetime(2026, 2, 2, tzinfo=OSLO)
    gaps = coverage(config, "t", start, start + timedelta(days=1))
    assert {(g.start, g.end) for g in gaps} == {(utc("2026-02-02T10:00"), utc("2026-02-02T11:00"))}


def test_check_with_no_tenants(tmp_path: Path) -> None:
    main = tmp_path / "alarmd.yaml"
    main.write_text("")
    assert routes_check(main, 2026) == (
        0,
        "checked the weeks starting 2026-02-02, 2026-03-23, 2026-10-19 (Europe/Oslo)\n"
        "no tenant has routing: every alarm goes to the centre",
    )


def test_tools_report_an_unusable_config(tmp_path: Path) -> None:
    shutil.copytree(BROKEN, tmp_path / "c")
    (tmp_path / "c" / "centre.yaml").write_text(
        textwrap.dedent(
            "centre:\n  name: C\n  operators: {accept_within: soon, re_alert_every: 1m}\n"
        )
    )
    code, text = routes_check(tmp_path / "c" / "alarmd.yaml", 2026)
    assert code == 2
    assert text == (
        f"{tmp_path}/c/centre.yaml:3:30: centre.operators.accept_within: 'soon' is not a"
        " duration; write e.g. 90s, 2m or 1h30m"
    )

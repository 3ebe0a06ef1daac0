"""Routing configuration: the examples load, and every rule reports file:line:col.

Each case writes a main file, a centre file and one tenant file into ``tmp_path`` and states
the exact lines ``alarmd check-config`` prints, so a change of wording or position is a
deliberate change of this file. The YAML is inline, so the line and column are visible next
to the expectation.
"""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from alarmd.config import AlarmdConfig, ConfigError, RoutingFiles, check_config, load_config
from alarmd.model import Category, EventKind, Priority
from alarmd.routing.config import (
    CentreConfig,
    Match,
    RoutingConfig,
    default_routing,
    load_routing,
    read_routing,
    tenant_from_data,
)
from alarmd.routing.escalation import CentreStep, Recipient

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "alarmd.example.yaml"

CENTRE = """\
centre:
  name: Testsenteret
  operators: {accept_within: 2m, re_alert_every: 1m}
webhooks:
  desk:
    url: https://desk.example.invalid/hook
    secret_env: ALARMD_TEST_DESK_SECRET
"""
HEAD = "tenant: t\nname: T\n"  # lines 1-2 of most tenant files below


@pytest.fixture(autouse=True)
def _desk_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALARMD_TEST_DESK_SECRET", "not-a-real-secret")
    monkeypatch.delenv("ALARMD_SUPPLIER_WEBHOOK_SECRET", raising=False)


def write(tmp_path: Path, tenant: str | None = None, centre: str = CENTRE, slug: str = "t") -> Path:
    """A main file naming centre.yaml and tenants/; returns the main file."""
    main = tmp_path / "alarmd.yaml"
    main.write_text("routing:\n  centre: centre.yaml\n  tenants: tenants\n")
    (tmp_path / "centre.yaml").write_text(textwrap.dedent(centre))
    (tmp_path / "tenants").mkdir(exist_ok=True)
    if tenant is not None:
        (tmp_path / "tenants" / f"{slug}.yaml").write_text(textwrap.dedent(tenant))
    return main


def problems(tmp_path: Path, tenant: str | None = None, **kwargs: str) -> list[str]:
    """check-config's lines, with the tmp_path prefix cut off for readability."""
    main = write(tmp_path, tenant, **kwargs)
    return [str(p).removeprefix(f"{tmp_path}/") for p in check_config(main)]


# --- the examples --------------------------------------------------------------------------


def test_example_routing_loads() -> None:
    config = load_routing(load_config(EXAMPLE), EXAMPLE)
    assert sorted(config.tenants) == ["demo-bydel", "eksempel-kommune"]
    assert config.centre.name == "Eksempel responssenter"
    assert config.centre.operators == CentreStep(
        accept_within=timedelta(minutes=2), re_alert_every=timedelta(minutes=1)
    )
    assert config.centre.accepted_deadline == timedelta(hours=1)
    assert len(config.config_hash) == 64
    kommune = config.tenants["eksempel-kommune"]
    assert kommune.file == str(REPO / "config" / "tenants" / "eksempel-kommune.yaml")
    assert [r.name for r in kommune.routes] == [
        "technical-to-supplier",
        "fire-and-gas-to-centre",
        "away-to-centre",
        "day-routing",
        "night-response",
        "rest-day-response",
    ]
    day = kommune.routes[3]
    assert day.match == Match(category=Category.ALARM, windows=("weekday-day",))
    assert day.mode == "routing_with_backup"
    assert day.policy.centre == config.centre.operators  # every policy ends at the centre
    first, second = day.policy.steps
    assert first.recipients == (Recipient("team", "plan"),)
    assert first.channels == ("mqtt", "sms")
    assert second.recipients == (Recipient("next_of_kin", "1"),)
    supplier = kommune.policies["supplier"].steps[0]
    assert supplier.channels == ("webhook:supplier-desk",)  # the endpoint travels with it
    assert len(kommune.tests) >= 10


def test_example_webhook_is_disabled_without_its_secret() -> None:
    hook = load_routing(load_config(EXAMPLE), EXAMPLE).webhooks["supplier-desk"]
    assert not hook.enabled
    assert hook.secret is None
    assert hook.disabled_reason == (
        "environment variable ALARMD_SUPPLIER_WEBHOOK_SECRET is not set (optional: disabled)"
    )
    assert hook.url == "https://supplier.example.invalid/alarmd"
    assert hook.timeout_s == 10


def test_example_webhook_with_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALARMD_SUPPLIER_WEBHOOK_SECRET", "example-only-secret")
    config = load_routing(load_config(EXAMPLE), EXAMPLE)
    hook = config.webhooks["supplier-desk"]
    assert hook.enabled and hook.disabled_reason is None
    assert hook.secret is not None and hook.secret.get_secret_value() == "example-only-secret"
    assert "example-only-secret" not in repr(config)


def test_no_routing_section_is_the_default_centre(tmp_path: Path) -> None:
    main = tmp_path / "alarmd.yaml"
    main.write_text("# nothing\n")
    config = load_routing(load_config(main), main)
    assert config == default_routing()
    assert config.tenants == {} and config.webhooks == {}
    assert config.centre.operators == CentreStep(
        accept_within=timedelta(minutes=2),
        re_alert_every=timedelta(minutes=1),
        channels=("console",),
    )
    assert load_routing(AlarmdConfig(), None) == default_routing()


def test_routing_with_only_tenants_uses_the_default_centre(tmp_path: Path) -> None:
    main = tmp_path / "alarmd.yaml"
    main.write_text("routing:\n  tenants: tenants\n")
    (tmp_path / "tenants").mkdir()
    (tmp_path / "tenants" / "t.yaml").write_text(
        HEAD + "routes:\n  - {name: all, mode: response}\n"
    )
    config = load_routing(load_config(main), main)
    assert config.centre == default_routing().centre
    assert list(config.tenants) == ["t"]


def test_paths_are_relative_to_the_main_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(REPO / "config", tmp_path / "etc")
    monkeypatch.chdir(tmp_path)
    main = Path("etc") / "alarmd.example.yaml"  # relative, as `alarmd run --config` gets it
    assert check_config(main) == []
    assert sorted(load_routing(load_config(main), main).tenants) == [
        "demo-bydel",
        "eksempel-kommune",
    ]


def test_config_is_frozen_and_read_only() -> None:
    config = load_routing(load_config(EXAMPLE), EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.centre = config.centre  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.tenants["x"] = config.tenants["demo-bydel"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.tenants["demo-bydel"].policies["x"] = None  # type: ignore[index]


def test_values_are_read(tmp_path: Path) -> None:
    main = write(
        tmp_path,
        HEAD
        + """\
windows:
  night: {from: "22:00", to: "08:00"}
policies:
  p:
    steps:
      - notify: [{team_all: natt-sone-1}, {next_of_kin: 2}, {staff: "4711"}]
        channels: [mqtt, webhook]
        accept_within: 1h30m
        require_all: true
    accepted_deadline: 90s
    on_site_deadline: 2h
plan_policy: p
routes:
  - name: r
    match:
      kinds: [fall, fire]
      min_priority: high
      groups: [demens]
      locations: [home, care_home]
      windows: [night]
      not_windows: [night]
      plan_mode: routing
    mode: routing
    policy: p
""",
    )
    config = load_routing(load_config(main), main)
    tenant = config.tenants["t"]
    (route,) = tenant.routes
    assert route.match == Match(
        kinds=frozenset({EventKind.FALL, EventKind.FIRE}),
        min_priority=Priority.HIGH,
        groups=frozenset({"demens"}),
        locations=frozenset({"home", "care_home"}),
        windows=("night",),
        not_windows=("night",),
        plan_mode="routing",
    )
    assert route.line == 16
    (step,) = route.policy.steps
    assert step.recipients == (
        Recipient("team_all", "natt-sone-1"),
        Recipient("next_of_kin", "2"),
        Recipient("staff", "4711"),
    )
    assert step.channels == ("mqtt", "webhook:desk")  # the only webhook, so not named
    assert step.accept_within == timedelta(hours=1, minutes=30)
    assert step.require_all
    assert route.policy.accepted_deadline == timedelta(seconds=90)
    assert route.policy.on_site_deadline == timedelta(hours=2)
    assert tenant.plan_policy == "p"


# --- one rule, one case --------------------------------------------------------------------


def test_unknown_keys_get_a_hint(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        HEAD
        + """\
policies:
  home:
    steps:
      - notify: [{team: plan}]
        channels: [sms]
        accept_within: 5m
        requre_all: true
    accepted_deadline: 1h
routes:
  - name: r
    match: {kind: [fall]}
    mode: response
""",
    ) == [
        "tenants/t.yaml:9:9: policies.home.steps[0].requre_all: unknown key;"
        " did you mean 'require_all'?",
        "tenants/t.yaml:13:13: routes[0].match.kind: unknown key; did you mean 'kinds'?",
    ]


def test_unknown_key_in_the_centre_file(tmp_path: Path) -> None:
    centre = (
        "centre:\n  name: C\n  operators: {accept_within: 2m, re_alert_every: 1m, chanels: [sms]}\n"
    )
    assert problems(tmp_path, centre=centre) == [
        "centre.yaml:3:54: centre.operators.chanels: unknown key; did you mean 'channels'?"
    ]


def test_dangling_references_name_the_offender(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        HEAD
        + """\
windows:
  night: {from: "22:00", to: "08:00"}
policies:
  home:
    steps:
      - notify: [{team: plan}]
        channels: [webhook]
        webhook: dsk
        accept_within: 5m
    accepted_deadline: 1h
plan_policy: homes
routes:
  - name: r
    match: {windows: [nigth], not_windows: [day]}
    mode: routing
    policy: hom
  - name: tech
    match: {category: technical}
    mode: response
    hold_outside: office
""",
    ) == [
        "tenants/t.yaml:10:18: policies.home.steps[0].webhook: no webhook 'dsk' in the centre"
        " file; did you mean 'desk'?",
        "tenants/t.yaml:13:14: plan_policy: no policy 'homes' in this file; did you mean 'home'?",
        "tenants/t.yaml:16:23: routes[0].match.windows[0]: no window 'nigth' in this file;"
        " did you mean 'night'?",
        "tenants/t.yaml:16:45: routes[0].match.not_windows[0]: no window 'day' in this file;"
        " defined: night",
        "tenants/t.yaml:18:13: routes[0].policy: no policy 'hom' in this file;"
        " did you mean 'home'?",
        "tenants/t.yaml:22:19: routes[1].hold_outside: no window 'office' in this file;"
        " defined: night",
    ]


def test_bad_durations(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        HEAD
        + """\
policies:
  home:
    steps:
      - notify: [{team: plan}]
        channels: [sms]
        accept_within: 5 min
      - notify: [{team: plan}]
        channels: [sms]
        accept_within: 300
    accepted_deadline: 0s
""",
    ) == [
        "tenants/t.yaml:8:24: policies.home.steps[0].accept_within: '5 min' is not a duration;"
        " write e.g. 90s, 2m or 1h30m",
        "tenants/t.yaml:11:24: policies.home.steps[1].accept_within: expected a duration with"
        " a unit (a bare number has none); write e.g. 90s, 2m or 1h30m",
        "tenants/t.yaml:12:24: policies.home.accepted_deadline: a duration must be longer"
        " than zero",
    ]


def test_tenant_must_match_its_file_name(tmp_path: Path) -> None:
    assert problems(tmp_path, "tenant: other\nname: T\n") == [
        "tenants/t.yaml:1:9: tenant: tenant 'other' does not match the file name 't.yaml':"
        " a tenant's file is named <tenant>.yaml"
    ]


def test_channels_modes_and_route_rules(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        HEAD
        + """\
policies:
  p:
    steps:
      - notify: [{team: plan}]
        channels: [email, sms]
        accept_within: 5m
      - notify: [{team: plan}]
        channels: [sms]
        webhook: desk
        accept_within: 5m
    accepted_deadline: 1h
routes:
  - name: a
    mode: response
    policy: p
  - name: b
    mode: routing_with_backup
  - name: c
    match: {category: alarm}
    mode: response
    wake_operators: true
  - name: d
    match: {category: alarm, kinds: [fall, battery_low]}
    mode: response
  - name: a
    mode: respons
""",
    ) == [
        "tenants/t.yaml:7:20: policies.p.steps[0].channels[0]: 'email' is not a channel;"
        " one of: console, mqtt, sms, webhook",
        "tenants/t.yaml:11:9: policies.p.steps[1].webhook: webhook is set but channels does"
        " not include webhook",
        "tenants/t.yaml:17:5: routes[0].policy: a response route takes no policy: the"
        " centre's operators take the alarm",
        "tenants/t.yaml:19:11: routes[1].mode: mode routing_with_backup needs a policy: one of p",
        "tenants/t.yaml:23:5: routes[2].wake_operators: wake_operators applies to technical"
        " events only: add category: technical (or only technical kinds) to match; an alarm"
        " is never held",
        "tenants/t.yaml:25:44: routes[3].match.kinds[1]: 'battery_low' is a technical kind,"
        " but this route matches category alarm: it could never match",
        "tenants/t.yaml:27:11: routes[4].name: duplicate route name 'a', first on line 15",
        "tenants/t.yaml:28:11: routes[4].mode: input should be 'response', 'routing' or"
        " 'routing_with_backup'",
    ]


def test_an_alarm_route_cannot_hold(tmp_path: Path) -> None:
    tenant = (
        HEAD
        + """\
windows:
  office: {from: "08:00", to: "16:00"}
routes:
  - name: alarms
    mode: response
    hold_outside: office
"""
    )
    assert problems(tmp_path, tenant) == [
        "tenants/t.yaml:8:5: routes[0].hold_outside: hold_outside applies to technical events"
        " only: add category: technical (or only technical kinds) to match; an alarm is never"
        " held"
    ]


def test_informational_kinds_match_no_route(tmp_path: Path) -> None:
    tenant = HEAD + "routes:\n  - name: r\n    match: {kinds: [test]}\n    mode: response\n"
    (line,) = problems(tmp_path, tenant)
    assert line.startswith(
        "tenants/t.yaml:5:21: routes[0].match.kinds[0]: 'test' is an informational kind,"
        " which no route applies to; one of: assistance, fall,"
    )


def test_webhook_channel_needs_a_webhook(tmp_path: Path) -> None:
    tenant = (
        HEAD
        + """\
policies:
  p:
    steps:
      - notify: [{team: plan}]
        channels: [sms, webhook]
        accept_within: 5m
    accepted_deadline: 1h
"""
    )
    no_hooks = "centre:\n  name: C\n  operators: {accept_within: 2m, re_alert_every: 1m}\n"
    assert problems(tmp_path, tenant, centre=no_hooks) == [
        "tenants/t.yaml:7:25: policies.p.steps[0].channels[1]: the webhook channel needs a"
        " webhook: the centre file configures none"
    ]
    two_hooks = (
        CENTRE
        + "  other:\n    url: http://127.0.0.1:9/x\n    secret_env: ALARMD_TEST_DESK_SECRET\n"
    )
    assert problems(tmp_path, tenant, centre=two_hooks) == [
        "tenants/t.yaml:7:25: policies.p.steps[0].channels[1]: name the endpoint with"
        " webhook: (the centre has desk, other)"
    ]


def test_window_problems_are_placed_by_their_path(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        HEAD
        + """\
windows:
  night: {from: "22:00", to: "25:00"}
  day: {form: "08:00", to: "16:00"}
  weekend:
    rules:
      - {days: [sat, sunday], from: "00:00", to: "24:00"}
""",
    ) == [
        "tenants/t.yaml:4:30: windows.night.to: '25:00' is not a time of day (00:00-24:00)",
        "tenants/t.yaml:5:9: windows.day.form: unknown key (did you mean 'from'?); expected"
        " one of days, from, to, holidays, except, extra_holidays",
        "tenants/t.yaml:8:22: windows.weekend.rules[0].days[1]: 'sunday' is not a day; use"
        " mon, tue, wed, thu, fri, sat, sun",
    ]


def test_recipients(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        HEAD
        + """\
policies:
  p:
    steps:
      - notify: [{team: plan, staff: kari}, {next_of_kin: x}, {}]
        channels: [sms, sms]
        accept_within: 5m
      - notify: []
        channels: [sms]
        accept_within: 5m
    accepted_deadline: 1h
""",
    ) == [
        "tenants/t.yaml:6:18: policies.p.steps[0].notify[0]: a recipient names exactly one"
        " of: team, team_all, next_of_kin, staff (e.g. {team: plan})",
        "tenants/t.yaml:6:59: policies.p.steps[0].notify[1].next_of_kin: next_of_kin is a"
        ' contact number from the plan ("1", "2"...) or all',
        "tenants/t.yaml:6:63: policies.p.steps[0].notify[2]: a recipient names exactly one"
        " of: team, team_all, next_of_kin, staff (e.g. {team: plan})",
        "tenants/t.yaml:7:19: policies.p.steps[0].channels: 'sms' is listed twice",
        "tenants/t.yaml:9:17: policies.p.steps[1].notify: needs at least one recipient",
    ]


def test_bad_test_entries(tmp_path: Path) -> None:
    tenant = (
        HEAD
        + """\
routes:
  - {name: everything, mode: response}
tests:
  - name: a time the clock skips
    event: {kind: fall}
    at: "2026-03-29T02:30"
    expect: {mode: response}
  - name: not a time
    event: {kind: fall}
    at: tomorrow
    expect: {mode: response}
"""
    )
    assert problems(tmp_path, tenant) == [
        "tenants/t.yaml:8:9: tests[0].at: 2026-03-29T02:30 does not exist in Europe/Oslo"
        " (the clocks jump forward an hour then)",
        "tenants/t.yaml:12:9: tests[1].at: 'tomorrow' is not a time; write e.g."
        " 2026-12-24T22:00 (Europe/Oslo) or 2026-12-24T21:00Z",
    ]


def test_failing_route_tests_refuse_the_config(tmp_path: Path) -> None:
    tenant = (
        HEAD
        + """\
routes:
  - name: everything
    mode: response
tests:
  - name: daytime goes to home care
    event: {kind: fall}
    at: "2026-11-24T10:00"
    expect: {mode: routing, first_recipients: ["team:plan"], rule: day}
  - name: battery rings
    event: {kind: battery_low}
    at: "2026-11-24T10:00"
    expect: {mode: response, queue: alarm}
  - name: passes
    event: {kind: battery_low, priority: high}
    at: "2026-11-24T09:00Z"
    expect: {mode: response, queue: technical, rule: everything, first_recipients: [operators]}
"""
    )
    expected = [
        "tenants/t.yaml:7:5: tests[0]: route test 'daytime goes to home care' failed:"
        " expected mode routing, got response (rule 'everything'); expected first recipients"
        " [team:plan], got [operators]; expected rule 'day', got 'everything'",
        "tenants/t.yaml:11:5: tests[1]: route test 'battery rings' failed: expected queue"
        " alarm, got technical",
    ]
    assert problems(tmp_path, tenant) == expected
    main = tmp_path / "alarmd.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(main)  # the daemon's start and reload
    assert [str(p).removeprefix(f"{tmp_path}/") for p in caught.value.problems] == expected
    section = RoutingFiles(centre=Path("centre.yaml"), tenants=Path("tenants"))
    with pytest.raises(ConfigError):
        load_routing(AlarmdConfig(routing=section), main)
    # the route tools read it without running the tests, to run and report them
    loaded = read_routing(section, tmp_path, run_tests=False)
    assert loaded.problems == [] and loaded.config is not None


def test_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALARMD_TEST_EMPTY", "")
    monkeypatch.delenv("ALARMD_TEST_UNSET", raising=False)
    (tmp_path / "empty-secret").write_text("\n")
    centre = """\
centre:
  name: C
  operators: {accept_within: 2m, re_alert_every: 1m}
webhooks:
  unset:
    url: https://x.example.invalid/
    secret_env: ALARMD_TEST_UNSET
  empty:
    url: https://x.example.invalid/
    secret_env: ALARMD_TEST_EMPTY
  nofile:
    url: https://x.example.invalid/
    secret_file: no-such-secret
  emptyfile:
    url: https://x.example.invalid/
    secret_file: empty-secret
  optional:
    url: https://x.example.invalid/
    secret_env: ALARMD_TEST_UNSET
    optional: true
"""
    assert problems(tmp_path, centre=centre) == [
        "centre.yaml:7:17: webhooks.unset.secret_env: environment variable ALARMD_TEST_UNSET"
        " is not set",
        "centre.yaml:10:17: webhooks.empty.secret_env: environment variable ALARMD_TEST_EMPTY"
        " is empty",
        f"centre.yaml:13:18: webhooks.nofile.secret_file: cannot read the secret file"
        f" {tmp_path}/no-such-secret: No such file or directory",
        f"centre.yaml:16:18: webhooks.emptyfile.secret_file: the secret file"
        f" {tmp_path}/empty-secret is empty",
    ]


def test_secret_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "desk-secret").write_text("from-a-file\n")
    centre = CENTRE.replace("secret_env: ALARMD_TEST_DESK_SECRET", "secret_file: desk-secret")
    main = write(tmp_path, centre=centre)
    hook = load_routing(load_config(main), main).webhooks["desk"]
    assert hook.secret is not None and hook.secret.get_secret_value() == "from-a-file"


def test_secrets_are_never_inline_and_never_shown(tmp_path: Path) -> None:
    centre = """\
centre:
  name: C
  operators: {accept_within: 2m, re_alert_every: 1m}
webhooks:
  desk:
    url: http://desk.example.invalid/hook
    secret: hunter2-not-shown
    secret_env: ALARMD_TEST_DESK_SECRET
"""
    found = problems(tmp_path, centre=centre)
    assert found == [
        "centre.yaml:6:10: webhooks.desk.url: use https (plain http only to localhost)",
        "centre.yaml:7:13: webhooks.desk.secret: a secret is never written in the file: use"
        " secret_file: PATH or secret_env: NAME",
    ]
    assert not any("hunter2" in line for line in found)


def test_centre_rules(tmp_path: Path) -> None:
    centre = """\
centre:
  name: C
  operators: {accept_within: 2m, re_alert_every: 1m, channels: [sms]}
  accepted_deadline: 90
webhooks:
  Bad:
    url: https://x.example.invalid/
    secret_env: ALARMD_TEST_DESK_SECRET
  both:
    url: https://x.example.invalid/
    secret_env: ALARMD_TEST_DESK_SECRET
    secret_file: /nonexistent
"""
    assert problems(tmp_path, centre=centre) == [
        "centre.yaml:3:14: centre.operators: the operators' channels must include console:"
        " operators take alarms",
        "centre.yaml:4:22: centre.accepted_deadline: expected a duration with a unit (a bare"
        " number has none); write e.g. 90s, 2m or 1h30m",
        "centre.yaml:6:3: webhooks.Bad: 'Bad': a webhook name is lowercase letters, digits,"
        " '-' and '_'",
        "centre.yaml:10:5: webhooks.both: a webhook needs exactly one of secret_file and"
        " secret_env",
    ]


def test_missing_files_are_reported_in_the_main_file(tmp_path: Path) -> None:
    main = tmp_path / "alarmd.yaml"
    main.write_text("log:\n  level: info\nrouting:\n  centre: nope.yaml\n  tenants: nowhere\n")
    assert [str(p) for p in check_config(main)] == [
        f"{main}:4:11: routing.centre: file not found: {tmp_path}/nope.yaml",
        f"{main}:5:12: routing.tenants: tenants directory not found: {tmp_path}/nowhere",
    ]


def test_tenant_files_end_in_yaml(tmp_path: Path) -> None:
    main = write(tmp_path, HEAD + "routes: []\n")
    (tmp_path / "tenants" / "other.yml").write_text("tenant: other\n")
    (tmp_path / "tenants" / ".#t.yaml").write_text("an editor's lock file, not YAML: [\n")
    assert [str(p) for p in check_config(main)] == [
        f"{tmp_path}/tenants/other.yml:1:1: tenant files end in .yaml; other.yml would be"
        " ignored: rename it"
    ]


def test_routing_section_is_strict(tmp_path: Path) -> None:
    main = tmp_path / "alarmd.yaml"
    main.write_text("routing:\n  centre_file: c.yaml\n")
    assert [str(p) for p in check_config(main)] == [
        f"{main}:2:3: routing.centre_file: unknown key; did you mean 'centre'?"
    ]


def test_every_problem_of_every_file_at_once(tmp_path: Path) -> None:
    """One run reports the main file's, the centre file's and a tenant's problems."""
    main = write(
        tmp_path,
        HEAD + "routes:\n  - {name: r, mode: routing, policy: nope}\n",
        centre="centre:\n  name: C\n  operators: {accept_within: 2, re_alert_every: 1m}\n",
    )
    main.write_text("log:\n  level: loud\n" + main.read_text())
    assert [str(p).removeprefix(f"{tmp_path}/") for p in check_config(main)] == [
        "alarmd.yaml:2:10: log.level: input should be 'debug', 'info', 'warning' or 'error'",
        "centre.yaml:3:30: centre.operators.accept_within: expected a duration with a unit"
        " (a bare number has none); write e.g. 90s, 2m or 1h30m",
        "tenants/t.yaml:4:38: routes[0].policy: no policy 'nope': this file defines none",
    ]


def test_test_priority_defaults_to_the_kinds() -> None:
    tenant = tenant_from_data(
        {
            "tenant": "x",
            "name": "X",
            "routes": [{"name": "all", "mode": "response"}],
            "tests": [
                {
                    "name": n,
                    "event": event,
                    "at": "2026-11-24T10:00",
                    "expect": {"mode": "response"},
                }
                for n, event in (
                    ("default", {"kind": "fall"}),
                    ("none", {"kind": "fall", "priority": "none"}),
                    ("low", {"kind": "fall", "priority": "low"}),
                )
            ],
        }
    )
    assert [t.priority for t in tenant.tests] == [Priority.CRITICAL, Priority.NONE, Priority.LOW]


def test_tenant_from_data() -> None:
    tenant = tenant_from_data(
        {"tenant": "x", "name": "X", "routes": [{"name": "all", "mode": "response"}]}
    )
    assert tenant.slug == "x" and tenant.routes[0].policy.steps == ()
    with pytest.raises(ConfigError) as caught:
        tenant_from_data({"tenant": "x", "name": "X", "routes": [{"name": "r", "mode": "routing"}]})
    assert str(caught.value) == (
        "<data>:1:1: routes[0].mode: mode routing needs a policy: this file defines none"
    )


def test_centre_policy_is_the_response_service() -> None:
    centre = CentreConfig(name="C", operators=default_routing().centre.operators)
    assert centre.response_policy.steps == ()
    assert centre.response_policy.centre is centre.operators
    assert centre.response_policy.accepted_deadline == timedelta(hours=1)
    assert isinstance(default_routing(), RoutingConfig)

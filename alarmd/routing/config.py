"""Routing configuration: the centre file and one file per tenant, read strictly.

What lives here
---------------
* The public, frozen result: ``RoutingConfig`` (``CentreConfig``, ``WebhookConfig``,
  ``TenantConfig`` with its ``Route`` s, ``Match`` es and ``RouteTest`` s).
* ``load_routing(main, main_path)`` and ``default_routing()``; ``read_routing`` (what
  ``alarmd.config`` calls so that ``check-config`` reports routing problems with the rest);
  ``tenant_from_data`` (a tenant from plain data: tests and tools).
* The file schemas, as private pydantic models, and the checks that span a file (references
  from routes to windows and policies, from steps to the centre's webhooks).

Theory of operation
-------------------
Two kinds of file (DESIGN.md section 5). The *centre file* holds what no tenant can override:
the operators' pool, which is the last step of every policy (invariant 3), and the named
webhook endpoints. A *tenant file* ``tenants/<slug>.yaml`` holds one municipality's named
windows, escalation policies, an ordered list of routes (the first that matches wins, as in
Alertmanager) and tests of those routes. The formats are in ``config/centre.example.yaml`` and
``config/tenants/eksempel-kommune.yaml``, which say what every key means.

Problems are ``alarmd.config.ConfigProblem`` s, found with the same machinery as the main
file's: a file is parsed with positions (``_parse``), its shape checked by pydantic
(``_validate``, which turns unknown keys into "did you mean" hints), and then the checks
pydantic cannot make run on the *raw* data, so a file with a wrong type and a dangling
reference reports both in one run. Each problem names its offender at its own
``file:line:col``: a route's ``policy: nigth`` is reported at that value, not at the route.
Windows are handed to ``schedules.parse_window``; its ``ScheduleDataError.path`` is the tail
of the location.

When every file is valid, the route tests of every tenant are run (``tools.run_route_tests``)
and a failing test is a problem at the test's position: a daemon refuses a configuration
whose tests fail, as it refuses one with a syntax error.

Load-time work is done once, here, so that ``rules.decide`` (run per alarm) only looks
things up: windows are parsed, each route's policy (with the centre as its last step) is
built, match lists become frozensets.

Decisions recorded here
-----------------------
* Channels are ``console``, ``mqtt``, ``sms`` and ``webhook``. A step that uses ``webhook``
  names its endpoint with ``webhook: <name>`` (optional when the centre file has exactly one);
  in the built ``Step`` the channel is written ``webhook:<name>``, so the notifier knows where
  to POST without reading configuration again.
* A webhook's secret comes from ``secret_file`` or ``secret_env`` and is read at load time
  (never written inline, never shown). ``optional: true`` means: if the secret is missing,
  the endpoint is *disabled* (``WebhookConfig.secret`` is ``None``; every delivery fails
  permanently and is logged by the notifier, so the step escalates and the centre gets the
  notice) instead of the configuration failing. The example uses it so that it runs as is
  without a secret, and says loudly that it is disabled; a production endpoint leaves it out.
* A plan's ``mode_override`` (``RouteFacts.plan_mode``) wins over the route's mode for alarms.
  A plan asking for ``response`` always gets it. A plan asking for routing on a route whose
  mode is ``response`` uses the tenant's ``plan_policy``; a tenant without one keeps the
  response service (the safer direction). It never moves a technical event, an unregistered
  source, or the safety net (no route matched).
* ``routing`` and ``routing_with_backup`` differ in what the municipality promises, not in
  the policy: every policy ends at the centre (invariant 3), so for ``routing`` the centre
  is the safety net, for ``routing_with_backup`` the agreed backup.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainValidator,
    SecretStr,
    StrictBool,
    StrictFloat,
    model_validator,
)

from alarmd.config import (
    AlarmdConfig,
    ConfigError,
    ConfigProblem,
    RoutingFiles,
    TenantSlug,
    _Document,
    _hash,
    _invalid,
    _parse,
    _Section,
    _sorted,
    _Span,
    _validate,
)
from alarmd.model import Category, EventKind, Priority
from alarmd.routing.decision import Location, Mode, Queue
from alarmd.routing.escalation import CentreStep, EscalationPolicy, Recipient, Step
from alarmd.routing.schedules import OSLO, ScheduleDataError, Window, parse_window

__all__ = [
    "CHANNELS",
    "DEFAULT_ACCEPTED_DEADLINE",
    "DEFAULT_OPERATORS",
    "LOCATIONS",
    "CentreConfig",
    "Expectation",
    "LoadedRouting",
    "Match",
    "Route",
    "RouteTest",
    "RoutingConfig",
    "TenantConfig",
    "WebhookConfig",
    "default_routing",
    "load_routing",
    "parse_instant",
    "read_routing",
    "tenant_from_data",
]

CHANNELS = ("console", "mqtt", "sms", "webhook")
LOCATIONS: tuple[Location, ...] = get_args(Location)
# The centre without a centre file: accept within 2 min, everyone alerted again every minute.
DEFAULT_OPERATORS = CentreStep(
    accept_within=timedelta(minutes=2), re_alert_every=timedelta(minutes=1), channels=("console",)
)
# How long whoever accepted a response-service alarm has to be on site or close it.
DEFAULT_ACCEPTED_DEADLINE = timedelta(hours=1)


# --- the result ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """A named HTTP endpoint for the ``webhook`` channel (POST, signed with HMAC-SHA256).

    ``secret`` is ``None`` only for an ``optional`` endpoint whose secret was missing at load:
    the endpoint is disabled (``disabled_reason`` says why) and every delivery to it fails
    permanently, so its steps escalate as if nobody was reached.
    """

    name: str
    url: str
    secret: SecretStr | None
    timeout_s: float
    disabled_reason: str | None = None

    @property
    def enabled(self) -> bool:
        return self.secret is not None


@dataclass(frozen=True, slots=True)
class CentreConfig:
    """The response centre: the operators' pool every policy ends with, which no tenant can
    override. ``accepted_deadline`` is the response service's: how long the one who accepted
    has to be on site or close before the centre is alerted again."""

    name: str
    operators: CentreStep
    accepted_deadline: timedelta = DEFAULT_ACCEPTED_DEADLINE
    response_policy: EscalationPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once: the response service's policy is the same for every alarm.
        policy = EscalationPolicy(
            steps=(), centre=self.operators, accepted_deadline=self.accepted_deadline
        )
        object.__setattr__(self, "response_policy", policy)


@dataclass(frozen=True, slots=True)
class Match:
    """What a route matches; ``None`` (or empty ``windows``) means "any". A route with
    ``windows`` applies while any of them is active, and never while one of ``not_windows``
    is."""

    kinds: frozenset[EventKind] | None = None
    category: Category | None = None
    min_priority: Priority | None = None
    groups: frozenset[str] | None = None
    locations: frozenset[Location] | None = None
    windows: tuple[str, ...] = ()
    not_windows: tuple[str, ...] = ()
    plan_mode: Mode | None = None

    @property
    def technical_only(self) -> bool:
        """The route can match technical events only (so it may hold or wake)."""
        if self.category is Category.TECHNICAL:
            return True
        return bool(self.kinds) and all(k.category is Category.TECHNICAL for k in self.kinds or ())

    def describe(self) -> str:
        """``kinds: fall, fire; windows: night`` for explanations; ``anything`` if empty."""
        parts = []
        if self.kinds is not None:
            parts.append("kinds: " + ", ".join(sorted(self.kinds)))
        if self.category is not None:
            parts.append(f"category: {self.category.value}")
        if self.min_priority is not None:
            parts.append(f"priority >= {self.min_priority.name.lower()}")
        if self.groups is not None:
            parts.append("groups: " + ", ".join(sorted(self.groups)))
        if self.locations is not None:
            parts.append("locations: " + ", ".join(sorted(self.locations)))
        if self.windows:
            parts.append("windows: " + ", ".join(self.windows))
        if self.not_windows:
            parts.append("not in windows: " + ", ".join(self.not_windows))
        if self.plan_mode is not None:
            parts.append(f"plan mode: {self.plan_mode}")
        return "; ".join(parts) or "anything"


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of a tenant's ordered ``routes``. ``policy`` is ready to snapshot: the
    named policy with the centre as its last step, or the centre's response policy."""

    name: str
    match: Match
    mode: Mode
    policy: EscalationPolicy
    policy_name: str | None = None
    hold_outside: str | None = None
    wake_operators: bool = False
    line: int = 0


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a route test expects; ``None`` fields are not checked."""

    mode: Mode
    first_recipients: tuple[str, ...] | None = None
    rule: str | None = None
    queue: Queue | None = None


@dataclass(frozen=True, slots=True)
class RouteTest:
    """A test carried in a tenant file: an event at an instant, and what must happen."""

    name: str
    kind: EventKind
    priority: Priority
    at: datetime
    expect: Expectation
    location: Location = "home"
    group: str | None = None
    plan_mode: Mode | None = None
    file: str = ""
    line: int = 0
    col: int = 0
    index: int = 0

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """One municipality's routing. ``plan_policy`` is used when a plan asks for routing on a
    route whose mode is response (see the module notes)."""

    slug: str
    name: str
    windows: Mapping[str, Window]
    policies: Mapping[str, EscalationPolicy]
    routes: tuple[Route, ...]
    tests: tuple[RouteTest, ...]
    file: str
    plan_policy: str | None = None
    # rules.decide's memo: per local date, which windows are active when (a pure function
    # of ``windows``, kept with them so that a reload starts afresh). Never compared.
    day_memo: dict[date, Any] = field(default_factory=dict, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """All routing in force. ``config_hash`` covers the centre and tenant files' bytes."""

    centre: CentreConfig
    tenants: Mapping[str, TenantConfig]
    webhooks: Mapping[str, WebhookConfig]
    config_hash: str = ""


def default_routing() -> RoutingConfig:
    """No tenants and the default centre: every alarm goes to the operators."""
    return RoutingConfig(
        centre=CentreConfig(name="alarmd", operators=DEFAULT_OPERATORS),
        tenants=types.MappingProxyType({}),
        webhooks=types.MappingProxyType({}),
    )


# --- value types ---------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_DURATION_HINT = "write e.g. 90s, 2m or 1h30m"


def _duration(value: Any) -> timedelta:
    """``90s``, ``2m``, ``1h30m``: strict, a bare number has no unit and is refused."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise _invalid(
            f"expected a duration with a unit (a bare number has none); {_DURATION_HINT}"
        )
    match = _DURATION_RE.fullmatch(value)
    if not value or match is None:
        raise _invalid(f"{value!r} is not a duration; {_DURATION_HINT}")
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    total = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if total <= timedelta(0):
        raise _invalid("a duration must be longer than zero")
    return total


def _channel(value: Any) -> str:
    if not isinstance(value, str) or value not in CHANNELS:
        raise _invalid(f"{value!r} is not a channel; one of: {', '.join(CHANNELS)}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("expected a name (a string)")
    if not value.strip():
        raise _invalid("a name must not be empty")
    return value


def _next_of_kin(value: Any) -> str:
    """``"1"``, ``2`` (the plan's contacts by order) or ``all``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)
    if isinstance(value, str) and (value == "all" or re.fullmatch(r"[1-9][0-9]?", value)):
        return value
    raise _invalid('next_of_kin is a contact number from the plan ("1", "2"...) or all')


_PRIORITIES = {p.name.lower(): p for p in Priority}


def _priority(value: Any) -> Priority:
    if isinstance(value, str) and value in _PRIORITIES:
        return _PRIORITIES[value]
    raise _invalid(f"{value!r} is not a priority; one of: {', '.join(_PRIORITIES)}")


def _kind_names(*categories: Category) -> str:
    return ", ".join(k.value for k in EventKind if k.category in categories)


def _route_kind(value: Any) -> EventKind:
    """Routes apply to alarm and technical kinds; informational events open no case."""
    allowed = _kind_names(Category.ALARM, Category.TECHNICAL)
    try:
        kind = EventKind(value)
    except ValueError:
        raise _invalid(f"{value!r} is not an event kind; one of: {allowed}") from None
    if kind.category is Category.INFO:
        raise _invalid(
            f"{kind.value!r} is an informational kind, which no route applies to; one of: {allowed}"
        )
    return kind


def _event_kind(value: Any) -> EventKind:
    try:
        return EventKind(value)
    except ValueError:
        allowed = ", ".join(k.value for k in EventKind)
        raise _invalid(f"{value!r} is not an event kind; one of: {allowed}") from None


def parse_instant(value: str | datetime) -> datetime:
    """``2026-12-24T22:00`` (Europe/Oslo) or with an offset (``+01:00``, ``Z``) -> aware.

    A reading the clock skips (02:30 on the spring-forward day) is refused; a reading it
    shows twice (02:30 on the fall-back day) means the first, unless an offset says which.
    Raises ``ValueError`` with a message fit for a user.
    """
    if isinstance(value, datetime):
        instant = value
    elif isinstance(value, str):
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a time; write e.g. 2026-12-24T22:00 (Europe/Oslo)"
                " or 2026-12-24T21:00Z"
            ) from None
    else:
        raise ValueError("expected a time such as 2026-12-24T22:00 (a string)")
    # A plain datetime (ruamel's TimeStamp is a subclass with its own repr).
    plain = datetime(
        instant.year,
        instant.month,
        instant.day,
        instant.hour,
        instant.minute,
        instant.second,
        instant.microsecond,
        tzinfo=instant.tzinfo,
    )
    if plain.tzinfo is not None:
        return plain
    local = plain.replace(tzinfo=OSLO)
    if local.astimezone(UTC).astimezone(OSLO).replace(tzinfo=None) != plain:
        raise ValueError(
            f"{plain.isoformat(timespec='minutes')} does not exist in Europe/Oslo"
            " (the clocks jump forward an hour then)"
        )
    return local


def _instant(value: Any) -> datetime:
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise _invalid(str(exc)) from None


def _non_empty_unique(what: str) -> AfterValidator:
    def check(items: tuple[Any, ...]) -> tuple[Any, ...]:
        if not items:
            raise _invalid(f"needs at least one {what}")
        seen = set()
        for item in items:
            if item in seen:
                raise _invalid(f"{item!r} is listed twice")
            seen.add(item)
        return items

    return AfterValidator(check)


def _none_is_empty(empty: Any) -> BeforeValidator:
    return BeforeValidator(lambda value: empty if value is None else value)


Duration: TypeAlias = Annotated[timedelta, PlainValidator(_duration)]
Channel: TypeAlias = Annotated[str, PlainValidator(_channel)]
Name: TypeAlias = Annotated[str, PlainValidator(_name)]
PriorityName: TypeAlias = Annotated[Priority, PlainValidator(_priority)]
RouteKind: TypeAlias = Annotated[EventKind, PlainValidator(_route_kind)]
AnyKind: TypeAlias = Annotated[EventKind, PlainValidator(_event_kind)]
Instant: TypeAlias = Annotated[datetime, PlainValidator(_instant)]


# --- the centre file -----------------------------------------------------------------------


class _Operators(_Section):
    accept_within: Duration
    re_alert_every: Duration
    channels: Annotated[tuple[Channel, ...], _non_empty_unique("channel")] = ("console",)

    @model_validator(mode="after")
    def _console_is_the_centre(self) -> _Operators:
        if "console" not in self.channels:
            raise _invalid("the operators' channels must include console: operators take alarms")
        if "webhook" in self.channels:
            raise _invalid("operators are not reached by webhook; use console, mqtt or sms")
        return self


class _Centre(_Section):
    name: Name
    operators: _Operators
    accepted_deadline: Duration = DEFAULT_ACCEPTED_DEADLINE


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("expected a URL (a string)")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise _invalid(f"{value!r} is not an http(s) URL")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        # Notifications carry personal data: only a loopback endpoint may skip TLS.
        raise _invalid("use https (plain http only to localhost)")
    return value


def _no_inline_secret(value: Any) -> None:
    raise _invalid(
        "a secret is never written in the file: use secret_file: PATH or secret_env: NAME"
    )


class _Webhook(_Section):
    url: Annotated[str, PlainValidator(_url)]
    secret_file: Path | None = None
    secret_env: Annotated[str | None, AfterValidator(lambda v: v or None)] = None
    optional: StrictBool = False
    timeout_s: Annotated[StrictFloat, Field(gt=0, le=300)] = 10.0
    # Declared only to refuse it where it is written (pydantic never echoes the value).
    secret: Annotated[None, PlainValidator(_no_inline_secret)] = None

    @model_validator(mode="after")
    def _one_secret_source(self) -> _Webhook:
        if (self.secret_file is None) == (self.secret_env is None):
            raise _invalid("a webhook needs exactly one of secret_file and secret_env")
        return self


def _webhook_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value):
        raise _invalid(f"{value!r}: a webhook name is lowercase letters, digits, '-' and '_'")
    return value


class _CentreFile(_Section):
    centre: _Centre
    webhooks: Annotated[
        Mapping[Annotated[str, PlainValidator(_webhook_name)], _Webhook], _none_is_empty({})
    ] = Field(default_factory=dict)


# --- the tenant file -----------------------------------------------------------------------

_RECIPIENT_KEYS = ("team", "team_all", "next_of_kin", "staff")


class _Recipient(_Section):
    team: Name | None = None  # "plan": the home-care team in the user's plan
    team_all: Name | None = None
    next_of_kin: Annotated[str | None, PlainValidator(_next_of_kin)] = None
    staff: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> _Recipient:
        if sum(getattr(self, key) is not None for key in _RECIPIENT_KEYS) != 1:
            raise _invalid(
                "a recipient names exactly one of: team, team_all, next_of_kin, staff"
                " (e.g. {team: plan})"
            )
        return self

    def to_recipient(self) -> Recipient:
        if self.team is not None:
            return Recipient("team", self.team)
        if self.team_all is not None:
            return Recipient("team_all", self.team_all)
        if self.next_of_kin is not None:
            return Recipient("next_of_kin", self.next_of_kin)
        assert self.staff is not None
        return Recipient("staff", self.staff)


class _Step(_Section):
    notify: Annotated[tuple[_Recipient, ...], _non_empty_unique("recipient")]
    channels: Annotated[tuple[Channel, ...], _non_empty_unique("channel")]
    accept_within: Duration
    require_all: StrictBool = False
    webhook: Name | None = None  # the endpoint, when channels has webhook


class _Policy(_Section):
    steps: Annotated[tuple[_Step, ...], _none_is_empty(())]
    accepted_deadline: Duration
    on_site_deadline: Duration | None = None


class _Match(_Section):
    kinds: Annotated[tuple[RouteKind, ...], _non_empty_unique("kind")] | None = None
    category: Literal["alarm", "technical"] | None = None
    min_priority: PriorityName | None = None
    groups: Annotated[tuple[Name, ...], _non_empty_unique("group")] | None = None
    locations: Annotated[tuple[Location, ...], _non_empty_unique("location")] | None = None
    windows: Annotated[tuple[Name, ...], _non_empty_unique("window")] | None = None
    not_windows: Annotated[tuple[Name, ...], _non_empty_unique("window")] | None = None
    plan_mode: Mode | None = None

    def to_match(self) -> Match:
        return Match(
            kinds=None if self.kinds is None else frozenset(self.kinds),
            category=None if self.category is None else Category(self.category),
            min_priority=self.min_priority,
            groups=None if self.groups is None else frozenset(self.groups),
            locations=None if self.locations is None else frozenset(self.locations),
            windows=self.windows or (),
            not_windows=self.not_windows or (),
            plan_mode=self.plan_mode,
        )


class _Route(_Section):
    name: Name
    match: Annotated[_Match, _none_is_empty({})] = Field(default_factory=_Match)
    mode: Mode
    policy: Name | None = None
    hold_outside: Name | None = None
    wake_operators: StrictBool = False


class _TestEvent(_Section):
    kind: AnyKind
    priority: PriorityName | None = None  # the kind's default priority if left out


class _Expect(_Section):
    mode: Mode
    first_recipients: Annotated[tuple[Name, ...], _non_empty_unique("recipient")] | None = None
    rule: Name | None = None
    queue: Queue | None = None


class _Test(_Section):
    name: Name
    event: _TestEvent
    at: Instant
    location: Location = "home"
    group: Name | None = None
    plan_mode: Mode | None = None
    expect: _Expect


class _TenantFile(_Section):
    tenant: TenantSlug
    name: Name
    windows: Annotated[Mapping[str, Any], _none_is_empty({})] = Field(default_factory=dict)
    policies: Annotated[Mapping[str, _Policy], _none_is_empty({})] = Field(default_factory=dict)
    routes: Annotated[tuple[_Route, ...], _none_is_empty(())] = ()
    plan_policy: Name | None = None
    tests: Annotated[tuple[_Test, ...], _none_is_empty(())] = ()


# --- checks on the raw data ----------------------------------------------------------------
# These run whatever pydantic found, on plain data, so each guards its own types.


def _names(value: Any) -> list[str]:
    return [key for key in value if isinstance(key, str)] if isinstance(value, dict) else []


def _no_such(what: str, name: str, known: Sequence[str], where: str) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"no {what} {name!r} in {where}; did you mean {close[0]!r}?"
    if known:
        return f"no {what} {name!r} in {where}; defined: {', '.join(known)}"
    return f"no {what} {name!r}: {where} defines none"


def _items(value: Any) -> list[tuple[int, Any]]:
    return list(enumerate(value)) if isinstance(value, list) else []


def _window_problems(doc: _Document) -> tuple[dict[str, Window], list[ConfigProblem]]:
    windows: dict[str, Window] = {}
    problems: list[ConfigProblem] = []
    raw = doc.data.get("windows") if isinstance(doc.data, dict) else None
    if not isinstance(raw, dict):
        return windows, problems  # a wrong type is pydantic's to report
    for name, data in raw.items():
        try:
            windows[name] = parse_window(data)
        except ScheduleDataError as exc:
            about_key = exc.message.startswith("unknown key") or exc.message == "is required"
            loc = ("windows", name, *exc.path)
            problems.append(doc.problem(loc, exc.message, at_key=about_key))
        except ValueError as exc:  # a value the data classes refuse
            problems.append(doc.problem(("windows", name), str(exc)))
    return windows, problems


def _step_problems(
    doc: _Document, policy: str, index: int, step: dict[str, Any], webhooks: Collection[str]
) -> list[ConfigProblem]:
    loc = ("policies", policy, "steps", index)
    channels = step.get("channels")
    uses = isinstance(channels, list) and "webhook" in channels
    named = step.get("webhook")
    if isinstance(named, str):
        if not uses:
            message = "webhook is set but channels does not include webhook"
            return [doc.problem((*loc, "webhook"), message, at_key=True)]
        if named not in webhooks:
            message = _no_such("webhook", named, sorted(webhooks), "the centre file")
            return [doc.problem((*loc, "webhook"), message)]
        return []
    if not uses or named is not None:
        return []
    assert isinstance(channels, list)
    at = (*loc, "channels", channels.index("webhook"))
    if not webhooks:
        message = "the webhook channel needs a webhook: the centre file configures none"
        return [doc.problem(at, message)]
    if len(webhooks) > 1:
        message = f"name the endpoint with webhook: (the centre has {', '.join(sorted(webhooks))})"
        return [doc.problem(at, message)]
    return []


def _is_technical_only(match: Any) -> bool:
    if not isinstance(match, dict):
        return False
    if match.get("category") == "technical":
        return True
    kinds = match.get("kinds")
    if not isinstance(kinds, list) or not kinds:
        return False
    technical = {k.value for k in EventKind if k.category is Category.TECHNICAL}
    return all(kind in technical for kind in kinds)


def _route_problems(
    doc: _Document, index: int, route: dict[str, Any], windows: list[str], policies: list[str]
) -> list[ConfigProblem]:
    loc = ("routes", index)
    problems = []
    mode = route.get("mode")
    policy = route.get("policy")
    if mode == "response" and "policy" in route:
        message = "a response route takes no policy: the centre's operators take the alarm"
        problems.append(doc.problem((*loc, "policy"), message, at_key=True))
    elif mode in ("routing", "routing_with_backup") and "policy" not in route:
        message = f"mode {mode} needs a policy: " + (
            f"one of {', '.join(policies)}" if policies else "this file defines none"
        )
        problems.append(doc.problem((*loc, "mode"), message))
    elif isinstance(policy, str) and policy not in policies:
        problems.append(
            doc.problem((*loc, "policy"), _no_such("policy", policy, policies, "this file"))
        )
    match = route.get("match")
    if isinstance(match, dict):
        for key in ("windows", "not_windows"):
            for j, name in _items(match.get(key)):
                if isinstance(name, str) and name not in windows:
                    message = _no_such("window", name, windows, "this file")
                    problems.append(doc.problem((*loc, "match", key, j), message))
        category = match.get("category")
        if category in ("alarm", "technical"):
            for j, kind in _items(match.get("kinds")):
                try:
                    actual = EventKind(kind).category.value
                except ValueError:
                    continue
                if actual != category and actual != "info":  # info: reported by the schema
                    message = (
                        f"{kind!r} is a {actual} kind, but this route matches"
                        f" category {category}: it could never match"
                    )
                    problems.append(doc.problem((*loc, "match", "kinds", j), message))
    hold = route.get("hold_outside")
    if isinstance(hold, str) and hold not in windows:
        problems.append(
            doc.problem((*loc, "hold_outside"), _no_such("window", hold, windows, "this file"))
        )
    for key in ("hold_outside", "wake_operators"):
        if key in route and not _is_technical_only(match):
            message = (
                f"{key} applies to technical events only: add category: technical (or only"
                " technical kinds) to match; an alarm is never held"
            )
            problems.append(doc.problem((*loc, key), message, at_key=True))
    return problems


def _tenant_problems(
    doc: _Document, path_stem: str | None, webhooks: Collection[str] | None
) -> list[ConfigProblem]:
    """Cross-references and file-wide rules; ``webhooks`` None when the centre is unusable
    (then webhook references are not judged: the centre file's problems say why)."""
    data = doc.data
    if not isinstance(data, dict):
        return []
    problems = []
    slug = data.get("tenant")
    if path_stem is not None and isinstance(slug, str) and slug != path_stem:
        message = (
            f"tenant {slug!r} does not match the file name {path_stem + '.yaml'!r}:"
            " a tenant's file is named <tenant>.yaml"
        )
        problems.append(doc.problem(("tenant",), message))
    windows = _names(data.get("windows"))
    policies = _names(data.get("policies"))
    raw_policies = data.get("policies")
    if webhooks is not None and isinstance(raw_policies, dict):
        for name, policy in raw_policies.items():
            steps = policy.get("steps") if isinstance(policy, dict) else None
            for index, step in _items(steps):
                if isinstance(step, dict):
                    problems += _step_problems(doc, name, index, step, webhooks)
    first_line: dict[str, int] = {}
    for index, route in _items(data.get("routes")):
        if not isinstance(route, dict):
            continue
        name = route.get("name")
        if isinstance(name, str):
            line, _col = doc.position(("routes", index, "name"))
            if name in first_line:
                message = f"duplicate route name {name!r}, first on line {first_line[name]}"
                problems.append(doc.problem(("routes", index, "name"), message))
            else:
                first_line[name] = line
        problems += _route_problems(doc, index, route, windows, policies)
    plan_policy = data.get("plan_policy")
    if isinstance(plan_policy, str) and plan_policy not in policies:
        message = _no_such("policy", plan_policy, policies, "this file")
        problems.append(doc.problem(("plan_policy",), message))
    return problems


# --- building ------------------------------------------------------------------------------


def _channels(step: _Step, webhooks: Collection[str]) -> tuple[str, ...]:
    endpoint = step.webhook or (next(iter(webhooks)) if len(webhooks) == 1 else "")
    return tuple(f"webhook:{endpoint}" if c == "webhook" else c for c in step.channels)


def _policy(spec: _Policy, centre: CentreConfig, webhooks: Collection[str]) -> EscalationPolicy:
    steps = tuple(
        Step(
            recipients=tuple(r.to_recipient() for r in s.notify),
            channels=_channels(s, webhooks),
            accept_within=s.accept_within,
            require_all=s.require_all,
        )
        for s in spec.steps
    )
    return EscalationPolicy(
        steps=steps,
        centre=centre.operators,
        accepted_deadline=spec.accepted_deadline,
        on_site_deadline=spec.on_site_deadline,
    )


def _build_tenant(
    spec: _TenantFile,
    windows: Mapping[str, Window],
    doc: _Document,
    centre: CentreConfig,
    webhooks: Collection[str],
) -> TenantConfig:
    policies = {name: _policy(p, centre, webhooks) for name, p in spec.policies.items()}
    routes = []
    for index, r in enumerate(spec.routes):
        policy = centre.response_policy if r.policy is None else policies[r.policy]
        line, _col = doc.position(("routes", index))
        routes.append(
            Route(
                name=r.name,
                match=r.match.to_match(),
                mode=r.mode,
                policy=policy,
                policy_name=r.policy,
                hold_outside=r.hold_outside,
                wake_operators=r.wake_operators,
                line=line,
            )
        )
    tests = []
    for index, t in enumerate(spec.tests):
        line, col = doc.position(("tests", index))
        expect = Expectation(
            mode=t.expect.mode,
            first_recipients=t.expect.first_recipients,
            rule=t.expect.rule,
            queue=t.expect.queue,
        )
        priority = t.event.priority  # Priority.NONE is 0: compare with None, not truth
        tests.append(
            RouteTest(
                name=t.name,
                kind=t.event.kind,
                priority=t.event.kind.default_priority if priority is None else priority,
                at=t.at,
                expect=expect,
                location=t.location,
                group=t.group,
                plan_mode=t.plan_mode,
                file=doc.file,
                line=line,
                col=col,
                index=index,
            )
        )
    return TenantConfig(
        slug=spec.tenant,
        name=spec.name,
        windows=types.MappingProxyType(dict(windows)),
        policies=types.MappingProxyType(policies),
        routes=tuple(routes),
        tests=tuple(tests),
        file=doc.file,
        plan_policy=spec.plan_policy,
    )


def _tenant_from_doc(
    doc: _Document,
    path_stem: str | None,
    centre: CentreConfig | None,
    webhooks: Collection[str] | None,
    problems: list[ConfigProblem],
) -> TenantConfig | None:
    """Every problem of one tenant file appended; the tenant if there were none (and the
    centre is usable: its operators end every policy)."""
    found: list[ConfigProblem] = []
    spec = _validate(_TenantFile, doc, found)
    windows, window_problems = _window_problems(doc)
    found += window_problems
    found += _tenant_problems(doc, path_stem, webhooks)
    problems += found
    if found or spec is None or centre is None or webhooks is None:
        return None
    return _build_tenant(spec, windows, doc, centre, webhooks)


def tenant_from_data(
    data: Mapping[str, Any],
    *,
    centre: CentreConfig | None = None,
    webhooks: Collection[str] = (),
    file: str = "<data>",
) -> TenantConfig:
    """A tenant from plain data (what a tenant file holds), checked as a file is; raises
    ``ConfigError`` (positions are 1:1: plain data has none). Its tests are not run here."""
    doc = _Document(file, dict(data), {(): _Span((0, 0), (0, 0))})
    problems: list[ConfigProblem] = []
    centre = centre or default_routing().centre
    tenant = _tenant_from_doc(doc, None, centre, webhooks, problems)
    if tenant is None:
        raise ConfigError(problems)
    return tenant


def _read_secret(
    doc: _Document, name: str, spec: _Webhook, base_dir: Path
) -> tuple[SecretStr | None, str | None]:
    """(secret, None), or (None, why it is missing). Never quotes the secret."""
    if spec.secret_env is not None:
        value = os.environ.get(spec.secret_env, "")
        if value:
            return SecretStr(value), None
        state = "empty" if spec.secret_env in os.environ else "not set"
        return None, f"environment variable {spec.secret_env} is {state}"
    assert spec.secret_file is not None
    path = spec.secret_file if spec.secret_file.is_absolute() else base_dir / spec.secret_file
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, f"cannot read the secret file {path}: {reason}"
    if not text:
        return None, f"the secret file {path} is empty"
    return SecretStr(text), None


def _centre_from_doc(
    doc: _Document, base_dir: Path, problems: list[ConfigProblem]
) -> tuple[CentreConfig | None, dict[str, WebhookConfig], list[str] | None]:
    """The centre, its webhooks, and the webhook names tenants may use (None when the
    webhooks section is unreadable)."""
    raw_hooks = doc.data.get("webhooks") if isinstance(doc.data, dict) else None
    names = _names(raw_hooks) if isinstance(raw_hooks, dict | None) else None
    found: list[ConfigProblem] = []
    spec = _validate(_CentreFile, doc, found)
    webhooks: dict[str, WebhookConfig] = {}
    if spec is not None:
        for name, hook in spec.webhooks.items():
            secret, missing = _read_secret(doc, name, hook, base_dir)
            if missing is not None and not hook.optional:
                key = "secret_env" if hook.secret_env is not None else "secret_file"
                found.append(doc.problem(("webhooks", name, key), missing))
            webhooks[name] = WebhookConfig(
                name=name,
                url=hook.url,
                secret=secret,
                timeout_s=hook.timeout_s,
                disabled_reason=None if missing is None else f"{missing} (optional: disabled)",
            )
    problems += found
    if spec is None or found:
        return None, {}, names
    operators = CentreStep(
        accept_within=spec.centre.operators.accept_within,
        re_alert_every=spec.centre.operators.re_alert_every,
        channels=spec.centre.operators.channels,
    )
    centre = CentreConfig(
        name=spec.centre.name, operators=operators, accepted_deadline=spec.centre.accepted_deadline
    )
    return centre, webhooks, names


# --- loading -------------------------------------------------------------------------------


@dataclass
class LoadedRouting:
    """What ``read_routing`` found: the configuration (None if there are problems), the
    files read and their bytes (for the main configuration's hash), and the problems."""

    config: RoutingConfig | None
    files: list[Path]
    contents: list[bytes]
    problems: list[ConfigProblem]


def _main_problem(main_doc: _Document | None, loc: tuple[str, ...], message: str) -> ConfigProblem:
    if main_doc is None:
        return ConfigProblem("<main configuration>", 1, 1, f"{'.'.join(loc)}: {message}")
    return main_doc.problem(loc, message)


def _read(
    path: Path, main_doc: _Document | None, loc: tuple[str, ...], problems: list[ConfigProblem]
) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        problems.append(_main_problem(main_doc, loc, f"file not found: {path}"))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        problems.append(_main_problem(main_doc, loc, f"cannot read {path}: {reason}"))
    return None


def _tenant_paths(
    section: RoutingFiles,
    base_dir: Path,
    main_doc: _Document | None,
    problems: list[ConfigProblem],
) -> list[Path]:
    if section.tenants is None:
        return []
    directory = base_dir / section.tenants
    if not directory.is_dir():
        message = f"tenants directory not found: {directory}"
        problems.append(_main_problem(main_doc, ("routing", "tenants"), message))
        return []
    for other in sorted(directory.glob("*.yml")):
        message = f"tenant files end in .yaml; {other.name} would be ignored: rename it"
        problems.append(ConfigProblem(str(other), 1, 1, message))
    # hidden files are editors' (".#x.yaml" locks, swap files), never tenants
    return sorted(p for p in directory.glob("*.yaml") if not p.name.startswith("."))


def read_routing(
    section: RoutingFiles,
    base_dir: Path,
    main_doc: _Document | None = None,
    *,
    run_tests: bool = True,
    tenant_files: Sequence[Path] | None = None,
) -> LoadedRouting:
    """Read the centre file and the tenant files ``section`` names (relative to
    ``base_dir``, the main file's directory); every problem of every file is collected.

    ``main_doc`` (the parsed main file) places problems with the paths themselves.
    ``tenant_files``, if given, are read as well, replacing the tenant of the same name
    (``alarmctl routes test FILE``). With ``run_tests``, failing route tests are problems.
    """
    problems: list[ConfigProblem] = []
    files: list[Path] = []
    contents: list[bytes] = []

    centre: CentreConfig | None = default_routing().centre
    webhooks: dict[str, WebhookConfig] = {}
    webhook_names: list[str] | None = []
    if section.centre is not None:
        centre_path = base_dir / section.centre
        raw = _read(centre_path, main_doc, ("routing", "centre"), problems)
        centre, webhook_names = None, None
        if raw is not None:
            files.append(centre_path)
            contents.append(raw)
            doc = _parse(str(centre_path), raw, problems)
            if doc is not None:
                centre, webhooks, webhook_names = _centre_from_doc(
                    doc, centre_path.parent, problems
                )

    paths = _tenant_paths(section, base_dir, main_doc, problems)
    extra = list(tenant_files or ())
    if extra:
        stems = {p.stem for p in extra}
        paths = [p for p in paths if p.stem not in stems] + extra
    tenants: dict[str, TenantConfig] = {}
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            problems.append(ConfigProblem(str(path), 1, 1, f"cannot read {path}: {reason}"))
            continue
        files.append(path)
        contents.append(raw)
        doc = _parse(str(path), raw, problems)
        if doc is None:
            continue
        tenant = _tenant_from_doc(doc, path.stem, centre, webhook_names, problems)
        if tenant is not None:
            tenants[tenant.slug] = tenant

    config: RoutingConfig | None = None
    if centre is not None:
        config = RoutingConfig(
            centre=centre,
            tenants=types.MappingProxyType(tenants),
            webhooks=types.MappingProxyType(webhooks),
            config_hash=_hash(contents) if contents else "",  # as default_routing()
        )
        if run_tests:
            from alarmd.routing.tools import run_route_tests  # tools imports this module

            for result in run_route_tests(config):
                if not result.passed:
                    t = result.test
                    message = f"tests[{t.index}]: route test {t.name!r} failed: " + "; ".join(
                        result.failures
                    )
                    problems.append(ConfigProblem(t.file, t.line, t.col, message))
    order = [str(p) for p in files]
    return LoadedRouting(
        config=None if problems else config,
        files=files,
        contents=contents,
        problems=_sorted(problems, order),
    )


def load_routing(main: AlarmdConfig, main_path: Path | None) -> RoutingConfig:
    """The routing configuration ``main.routing`` names, relative to ``main_path``'s
    directory (the working directory if None); raise ``ConfigError`` with every problem,
    failing route tests included. No routing section: ``default_routing()``."""
    base_dir = main_path.parent if main_path is not None else Path.cwd()
    main_doc = None
    if main_path is not None:
        try:
            main_doc = _parse(str(main_path), main_path.read_bytes(), [])
        except OSError:
            main_doc = None  # positions only; the paths are in main already
    loaded = read_routing(main.routing, base_dir, main_doc)
    if loaded.problems:
        raise ConfigError(loaded.problems)
    assert loaded.config is not None
    return loaded.config

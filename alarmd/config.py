"""alarmd's configuration: the typed schema, and a loader whose every error names file:line:col.

What lives here
---------------
* The schema, as frozen pydantic models that forbid unknown keys: ``AlarmdConfig`` (the main
  file: ``data_dir``, ``log``, ``api``, ``store``, ``dc09``, ``accounts_file``, ``routing``)
  and ``AccountConfig`` (one entry of the accounts file). Every setting has a default, so an
  empty main file is a valid configuration.
* ``load_config(path)``, ``load_accounts(path)`` and ``check_config(path)``. Both ``load_config``
  and ``check_config`` also load the routing files the ``routing`` section names (the centre
  file and every tenant file, whose route tests must pass: ``alarmd.routing.config``), so a
  daemon never starts or reloads with routing that is broken; those files count in
  ``source_files`` and ``config_hash`` too.
* ``ConfigProblem`` / ``ConfigError``: what goes wrong, located in the file.

Theory of operation
-------------------
A configuration is edited by hand, by people who are not programmers, and a daemon that guards
alarms must refuse a broken one *before* it runs. So a problem is never a traceback: it is a line
``file:line:col: where.in.the.tree: what is wrong``, in the format editors and CI jump to, and
every problem of a file is reported at once, so a fix-and-retry loop takes one round, not ten.

YAML is read with ruamel.yaml's round-trip loader, which remembers where each key, value and
sequence item stands. The tree is copied into plain Python values while a table from *location*
(the tuple of keys and indices leading to a node, the same shape as pydantic's error ``loc``)
to its line and column is filled in. Pydantic then validates the plain values and reports all its
errors; each error's ``loc`` is looked up in the table. Checks that span several entries
(duplicate accounts) and several files (a missing accounts file) are done here, with the same
table.

Secrets: an account's AES key is a ``SecretStr``; neither ``repr`` nor any problem message ever
shows it, and no ``ConfigError`` carries pydantic's ``ValidationError`` (whose text would).
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    WrapSerializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError

from alarmd.model import Category, EventKind
from alarmd.protocols.dc09 import (
    MAX_FRAME_BYTES,
    Dc09Account,
    KeyFormat,
    StalePolicy,
    TimestampPolicy,
    decode_key,
)

__all__ = [
    "AccountConfig",
    "AlarmdConfig",
    "ApiConfig",
    "ConfigError",
    "ConfigProblem",
    "Dc09Config",
    "Listen",
    "LogConfig",
    "ModemConfig",
    "MqttConfig",
    "RoutingFiles",
    "ScaipConfig",
    "StoreConfig",
    "SupervisionConfig",
    "TimestampConfig",
    "check_config",
    "default_config_path",
    "load_accounts",
    "load_config",
]


# --- problems ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration file, where it is (1-based line and column)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists everything found, in file order."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _invalid(message: str) -> PydanticCustomError:
    # A custom error keeps our wording as is (a ValueError would be prefixed "Value error, ");
    # the message goes through the context so braces in it are never taken as a template.
    return PydanticCustomError("alarmd_config", "{reason}", {"reason": message})


# --- value types ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listen:
    """A socket address to bind. Written ``host:port`` in YAML, IPv6 as ``[::1]:port``.

    Port 0 is allowed: the OS picks a free port, which is how tests run receivers side by side.
    """

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_IPV6_QUOTES = "an IPv6 address in brackets must be quoted (unquoted, YAML reads a list)"
_LISTEN_HINT = "expected host:port, e.g. 127.0.0.1:8780, 0.0.0.0:12128 or [::1]:8780"


def _parse_listen(value: Any) -> Listen:
    """Split ``host:port``; brackets around an IPv6 host make the split unambiguous."""
    if isinstance(value, Listen):
        return value
    if isinstance(value, list):  # `listen: [::1]` unquoted is a YAML list
        raise _invalid(f'{_IPV6_QUOTES}, e.g. listen: "[::1]:8780"')
    if not isinstance(value, str):
        raise _invalid(f"{_LISTEN_HINT} (a string)")
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise _invalid(_LISTEN_HINT)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _invalid(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise _invalid(f"{_LISTEN_HINT}; the port is missing")
        if ":" in host:
            raise _invalid("an IPv6 address needs brackets: [::1]:8780")
        if not _HOSTNAME_RE.fullmatch(host):
            raise _invalid(f"{host!r} is not a host name or IPv4 address")
    if not re.fullmatch(r"[0-9]+", port_text):
        raise _invalid(f"port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise _invalid(f"port {port} is out of range 0-65535")
    return Listen(host, port)


ListenAddress: TypeAlias = Annotated[Listen, PlainValidator(_parse_listen), PlainSerializer(str)]

# Counts and durations are strict: "300" (a quoted number) or `true` is a mistake in a config.
PositiveInt: TypeAlias = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt: TypeAlias = Annotated[StrictInt, Field(ge=0)]


def _quoted_string(what: str, example: str) -> BeforeValidator:
    """A before-validator that refuses YAML numbers where a string of digits is meant.

    Unquoted, YAML reads ``0809`` as the number 809 and ``1E10`` as a float: the account or key
    the user typed would silently become another one. So these fields must be quoted.
    """

    def check(value: Any) -> Any:
        if isinstance(value, bool | int | float):
            raise _invalid(
                f"{what} must be a quoted string, e.g. {example}:"
                " unquoted, YAML reads it as a number"
            )
        return value

    return BeforeValidator(check)


_ACCOUNT_RE = re.compile(r"[0-9A-Fa-f]{3,16}")
_SLUG_RE = re.compile(r"[a-z0-9-]+")


def _account_number(value: str) -> str:
    if not _ACCOUNT_RE.fullmatch(value):
        raise _invalid("an account is 3-16 hex digits (0-9, A-F)")
    # Transmitters send the account in either case; the directory is keyed by one form.
    return value.upper()


def _tenant_slug(value: str) -> str:
    if not _SLUG_RE.fullmatch(value):
        raise _invalid("a tenant is a slug: lowercase letters a-z, digits and '-'")
    return value


def _alarm_kind(value: Any) -> EventKind:
    """A zone may only be mapped to an *alarm* kind: it is what a person pressed or a sensor saw."""
    alarm_kinds = ", ".join(k.value for k in EventKind if k.category is Category.ALARM)
    try:
        kind = EventKind(value)
    except ValueError:
        raise _invalid(f"{value!r} is not an alarm kind; one of: {alarm_kinds}") from None
    if kind.category is not Category.ALARM:
        raise _invalid(
            f"{kind.value!r} is a {kind.category.value} kind, not an alarm kind;"
            f" one of: {alarm_kinds}"
        )
    return kind


AccountNumber: TypeAlias = Annotated[
    str, _quoted_string("account", '"0809"'), AfterValidator(_account_number)
]
TenantSlug: TypeAlias = Annotated[str, AfterValidator(_tenant_slug)]
ZoneNumber: TypeAlias = Annotated[
    int, Field(ge=0, le=9999)
]  # CID zones are 3 digits, SIA units 1-4
AlarmKind: TypeAlias = Annotated[EventKind, BeforeValidator(_alarm_kind)]


# --- AES keys ------------------------------------------------------------------------------

_AES_KEY_BYTES = (16, 24, 32)
_HEX_RE = re.compile(r"[0-9A-Fa-f]*")


def _key_problem(text: str, fmt: KeyFormat) -> str | None:
    """Why ``text`` is not an AES key in ``fmt``, or None. Never quotes the key."""
    if fmt is KeyFormat.ASCII:
        if not (text.isascii() and text.isprintable()):
            return "an ascii key must consist of printable ASCII characters"
        if len(text) not in _AES_KEY_BYTES:
            return (
                f"an ascii key must be 16, 24 or 32 characters (AES-128/192/256), not {len(text)}"
            )
        return None
    if not _HEX_RE.fullmatch(text):
        return "a hex key must consist of hex digits 0-9, A-F only (no spaces)"
    if len(text) // 2 not in _AES_KEY_BYTES or len(text) % 2:
        return f"a hex key must be 32, 48 or 64 hex digits (AES-128/192/256), not {len(text)}"
    return None


# --- the schema ----------------------------------------------------------------------------


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, and a loaded config never changes.

    A key whose children are all commented out is null in YAML; it means "all defaults".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        return {} if data is None else data


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"  # json for journald, console for a terminal


class _Listening(_Section):
    """A section with a ``listen`` address; ``host`` and ``port`` read it."""

    listen: ListenAddress

    @property
    def host(self) -> str:
        return self.listen.host

    @property
    def port(self) -> int:
        return self.listen.port


class ApiConfig(_Listening):
    listen: ListenAddress = Listen("127.0.0.1", 8780)
    # HTTPS: both files, PEM; relative paths are relative to the main file's directory.
    # Without them the API speaks plain HTTP, which is meant for 127.0.0.1 only.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls_both_or_neither(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise _invalid("give both tls_cert and tls_key, or neither")
        return self


class StoreConfig(_Section):
    path: Path = Path("alarmd.sqlite")  # relative to data_dir
    dedup_window_s: PositiveInt = 86400  # how long a retransmission is recognised


class TimestampConfig(_Section):
    """The DC-09 timestamp window (PROTOCOLS.md 1.5), in whole seconds as DC-09 timestamps are."""

    ahead_s: NonNegativeInt = 20
    behind_s: NonNegativeInt = 40
    stale_clear_text: StalePolicy = StalePolicy.ACCEPT_AND_FLAG

    def to_policy(self) -> TimestampPolicy:
        return TimestampPolicy(
            ahead=timedelta(seconds=self.ahead_s),
            behind=timedelta(seconds=self.behind_s),
            stale_clear_text=self.stale_clear_text,
        )


class Dc09Config(_Listening):
    enabled: StrictBool = True
    listen: ListenAddress = Listen("127.0.0.1", 12128)  # TCP and UDP on the same port
    idle_timeout_s: Annotated[StrictFloat, Field(gt=0)] = 300.0
    max_connections: PositiveInt = 20000
    # Bounded buffers (DESIGN.md invariant 6); 64 is below any real frame's header and
    # 65536 covers the largest length a 0LLL field can state.
    max_frame_bytes: Annotated[StrictInt, Field(ge=64, le=65536)] = MAX_FRAME_BYTES
    timestamp: TimestampConfig = Field(default_factory=TimestampConfig)


def _read_only(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    # frozen=True stops attribute assignment, not mutation of a dict inside; a config is shared
    # by every task and swapped whole on reload, so its mappings are read-only views.
    return types.MappingProxyType(dict(mapping))


def _dump_mapping(value: Mapping[Any, Any], handler: SerializerFunctionWrapHandler) -> Any:
    return handler(dict(value))  # the serializer expects a dict, not the read-only view


class AccountConfig(_Section):
    """One DC-09 transmitter account. ``key_format`` is declared before ``key`` on purpose:
    the key's validator reads the already validated format."""

    account: AccountNumber  # uppercase
    tenant: TenantSlug
    description: str = ""
    key_format: KeyFormat | None = None
    key: Annotated[SecretStr | None, _quoted_string("key", '"0123456789ABCDEF"')] = None
    supervision_interval_s: PositiveInt | None = None  # expected heartbeat interval
    zones: Annotated[
        Mapping[ZoneNumber, AlarmKind], AfterValidator(_read_only), WrapSerializer(_dump_mapping)
    ] = Field(default_factory=lambda: types.MappingProxyType({}))

    @field_validator("key")
    @classmethod
    def _key_fits_its_format(cls, key: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if key is None:
            return None
        if "key_format" not in info.data:
            return key  # key_format itself is invalid and reported; no format to check against
        fmt = info.data["key_format"]
        if fmt is None:
            raise _invalid(
                "key_format is required when key is set: ascii or hex"
                " (a 32-character key could be either)"
            )
        problem = _key_problem(key.get_secret_value(), fmt)
        if problem is not None:
            raise _invalid(problem)
        return key

    @model_validator(mode="after")
    def _format_without_key(self) -> AccountConfig:
        # Probably a key lost in editing: the account would then be accepted in clear text.
        if self.key_format is not None and self.key is None:
            raise _invalid("key_format is set but key is missing")
        return self

    def to_dc09(self) -> Dc09Account:
        """What the DC-09 codec needs: the key as bytes, zones as a read-only map."""
        key = None
        if self.key is not None and self.key_format is not None:
            key = decode_key(self.key.get_secret_value(), self.key_format)
        return Dc09Account(
            account=self.account, key=key, zone_kinds=types.MappingProxyType(dict(self.zones))
        )


def _not_empty_path(value: Any) -> Any:
    if value == "":
        raise _invalid("an empty path; leave the key out instead")
    return value


class RoutingFiles(_Section):
    """Where the routing configuration lives (``alarmd.routing.config`` loads it).

    Both paths are relative to the main file's directory and stay as written here. Without a
    ``centre`` file the centre has its defaults (accept within 2 min, re-alert every minute, on
    the console); without ``tenants`` no tenant has routes, so every alarm goes to the centre's
    operators (the response service). An absent ``routing`` section is exactly that.
    """

    centre: Annotated[Path | None, BeforeValidator(_not_empty_path)] = None  # the centre file
    tenants: Annotated[Path | None, BeforeValidator(_not_empty_path)] = None  # <slug>.yaml files


class MqttTlsConfig(_Section):
    """TLS to the broker: a CA to verify it (the system's if absent), optionally a client
    certificate and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: StrictBool = True


def _mapping_ok(value: Any) -> Any:
    from alarmd.protocols.mqtt_events import parse_mapping

    if not isinstance(value, dict):
        raise _invalid("a mapping needs keys name, topic, tenant, device_id...")
    try:
        parse_mapping(value)
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    return value


class MqttConfig(_Section):
    """MQTT (PROTOCOLS.md section 3): device events in, staff notifications out."""

    enabled: StrictBool = False
    broker: ListenAddress = Listen("127.0.0.1", 1883)
    username: str | None = None
    password_file: Path | None = None  # the password, on the file's first line
    tls: MqttTlsConfig | None = None
    ingest_client_id: str = "alarmd-ingest"  # fixed: the broker keeps its session
    staff_client_id: str = "alarmd-staff"
    dead_letter_topic: str = "alarmd/v1/deadletter"
    staff_channel: StrictBool = True  # notify staff apps and take their acknowledgements
    mappings: list[Annotated[dict[str, Any], BeforeValidator(_mapping_ok)]] = []


class SmsPatternConfig(_Section):
    """A text pattern of a GSM unit: a regular expression (case-insensitive) and its kind."""

    match: str
    kind: EventKind  # any kind: "Lavt batteri" is battery_low
    condition: Literal["alarm", "restore", "status"] = "alarm"

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise _invalid(f"not a regular expression: {exc}") from None
        return value


class SmsSenderConfig(_Section):
    """One GSM alarm unit, by its phone number."""

    name: str = ""
    ring: AlarmKind = EventKind.ASSISTANCE  # what a call from it means
    use_default_patterns: StrictBool = True  # ALARM, FALL, Lavt batteri...
    patterns: list[SmsPatternConfig] = []


class ModemConfig(_Section):
    """A serial GSM modem (PROTOCOLS.md section 4): SMS and ring alarms in, SMS out."""

    enabled: StrictBool = False
    port: str = "/dev/ttyUSB0"  # prefer /dev/serial/by-id/... (stable across reboots)
    name: str = "modem"
    baudrate: StrictInt = 115200
    pin_file: Path | None = None  # the SIM PIN, on the file's first line
    sms_per_minute: StrictInt = 30
    senders: dict[str, SmsSenderConfig] = {}


class ScaipAccountConfig(_Section):
    """A SCAIP Digest account: one device (``cids``) or a group of devices (no ``cids``)."""

    user: str
    password_file: Path  # the password on its first line; never the password itself here
    cids: list[str] | None = None
    ack_policy: Literal["on_commit", "hold_until_accepted"] = "on_commit"
    mrs_in_200: StrictBool = False  # some devices expect the <mrs> in the 200 OK body


class ScaipConfig(_Section):
    """SCAIP over SIP (PROTOCOLS.md section 2): UDP and TCP on ``port``, TLS on ``tls_port``."""

    enabled: StrictBool = False
    host: str = "127.0.0.1"
    port: StrictInt = 5060
    tls_port: StrictInt = 5061
    tls_cert: Path | None = None
    tls_key: Path | None = None
    realm: str = "alarmd"
    heartbeat_minutes: StrictInt | None = None
    accounts: list[ScaipAccountConfig] = []

    @model_validator(mode="after")
    def _tls_both_or_neither(self) -> ScaipConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise _invalid("give both tls_cert and tls_key, or neither")
        return self


class SupervisionConfig(_Section):
    """Line supervision (issue 6): intervals, outage grouping, the grace after downtime."""

    # for devices whose directory entry and account name no interval: protocol -> seconds
    protocol_defaults_s: dict[Literal["dc09", "scaip", "mqtt", "sms"], PositiveInt] = {}
    outage_threshold: PositiveInt = 10  # this many silent in one area within the window...
    outage_window_s: PositiveInt = 300  # ...is one incident, not that many cases
    startup_grace_s: PositiveInt = 600  # after alarmd's own downtime


class CaseManagementConfig(_Section):
    """Case management (issue 9): how long a former user's personal data is kept."""

    # days after the need ended and the last device came off the wall; then the personal
    # data is erased and only anonymous statistics remain
    retention_days: PositiveInt = 90
    # a device's technical case (silent, faulty, low battery) still open this many hours
    # after it opened becomes a fault with a repair order to its supplier; 0: never
    fault_after_h: NonNegativeInt = 24


class _MainFile(_Section):
    """What the main file may contain."""

    data_dir: Path = Path("var")  # relative to the working directory; --data-dir overrides
    log: LogConfig = Field(default_factory=LogConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    dc09: Dc09Config = Field(default_factory=Dc09Config)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    modem: ModemConfig = Field(default_factory=ModemConfig)
    scaip: ScaipConfig = Field(default_factory=ScaipConfig)
    supervision: SupervisionConfig = Field(default_factory=SupervisionConfig)
    case_management: CaseManagementConfig = Field(default_factory=CaseManagementConfig)
    # relative to the main file's directory; after loading, the joined path
    accounts_file: Annotated[Path | None, BeforeValidator(_not_empty_path)] = None
    # absent: no tenant routes, the centre with its defaults (see RoutingFiles)
    routing: RoutingFiles = Field(default_factory=RoutingFiles)


class _AccountsFile(_Section):
    """What the accounts file may contain."""

    accounts: Annotated[
        tuple[AccountConfig, ...], BeforeValidator(lambda v: () if v is None else v)
    ] = ()


class AlarmdConfig(_MainFile):
    """The whole configuration in force: the main file's settings plus what was loaded with it.

    ``accounts`` is keyed by the uppercase account. ``source_files`` (resolved) and
    ``config_hash`` say exactly which bytes this configuration came from: the hash goes into
    a metric, so a fleet shows which nodes run which configuration.
    """

    accounts: Annotated[
        Mapping[str, AccountConfig], AfterValidator(_read_only), WrapSerializer(_dump_mapping)
    ] = Field(default_factory=lambda: types.MappingProxyType({}))
    source_files: tuple[Path, ...] = ()
    config_hash: str = ""  # empty when not built from files

    @model_validator(mode="after")
    def _accounts_keyed_by_account(self) -> AlarmdConfig:
        for key, account in self.accounts.items():
            if key != account.account:
                raise _invalid(f"accounts key {key!r} differs from its account {account.account!r}")
        return self


# --- YAML with positions -------------------------------------------------------------------

_Loc: TypeAlias = tuple[Any, ...]  # keys and indices from the root, like pydantic's error loc


@dataclass(frozen=True, slots=True)
class _Span:
    """Where a node stands (0-based): its key (for a sequence item, the item) and its value."""

    key: tuple[int, int]
    value: tuple[int, int]


class _RecursiveAlias(Exception):
    def __init__(self, loc: _Loc) -> None:
        super().__init__(loc)
        self.loc = loc


@dataclass(frozen=True, slots=True)
class _Document:
    """A parsed YAML file: plain Python data and the position of every node in it."""

    file: str
    data: Any
    spans: Mapping[_Loc, _Span]

    def position(self, loc: _Loc, *, at_key: bool = False) -> tuple[int, int]:
        """1-based line and column of ``loc``, or of its deepest ancestor present in the file
        (a missing key is reported where it should have been)."""
        found: _Loc = ()
        for i in range(1, len(loc) + 1):
            if loc[:i] not in self.spans:
                break
            found = loc[:i]
        span = self.spans[found]
        line, col = span.key if at_key else span.value
        return line + 1, col + 1

    def value(self, loc: _Loc) -> Any:
        """The plain value at ``loc``, or None if there is none."""
        node = self.data
        for part in loc:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return None
        return node

    def problem(self, loc: _Loc, message: str, *, at_key: bool = False) -> ConfigProblem:
        line, col = self.position(loc, at_key=at_key)
        where = _render_loc(loc)
        return ConfigProblem(self.file, line, col, f"{where}: {message}" if where else message)


def _render_loc(loc: _Loc) -> str:
    """``('accounts', 2, 'zones', 3)`` -> ``accounts[2].zones[3]``: how a user finds it again."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _plain_scalar(value: Any) -> Any:
    """ruamel's round-trip scalars (ScalarInt, ScalarFloat, ScalarBoolean, quoted strings) as
    the built-in types pydantic's strict checks expect."""
    if isinstance(value, bool):
        return bool(value)
    if type(value).__name__ == "ScalarBoolean":  # an int subclass ruamel uses for anchored booleans
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _plain(node: Any, loc: _Loc, spans: dict[_Loc, _Span], active: set[int]) -> Any:
    if isinstance(node, CommentedMap | CommentedSeq):
        if id(node) in active:
            raise _RecursiveAlias(loc)
        active.add(id(node))
        try:
            if isinstance(node, CommentedMap):
                return _plain_map(node, loc, spans, active)
            return _plain_seq(node, loc, spans, active)
        finally:
            active.discard(id(node))
    return _plain_scalar(node)


def _plain_map(node: CommentedMap, loc: _Loc, spans: dict[_Loc, _Span], active: set[int]) -> Any:
    own = (node.lc.line, node.lc.col)
    out: dict[Any, Any] = {}
    for key, value in node.items():
        where = node.lc.data.get(key)  # keys merged in with "<<" have no position of their own
        plain_key = _plain_scalar(key)
        sub = (*loc, plain_key)
        spans[sub] = _Span((where[0], where[1]), (where[2], where[3])) if where else _Span(own, own)
        out[plain_key] = _plain(value, sub, spans, active)
    return out


def _plain_seq(node: CommentedSeq, loc: _Loc, spans: dict[_Loc, _Span], active: set[int]) -> Any:
    own = (node.lc.line, node.lc.col)
    out: list[Any] = []
    for index, value in enumerate(node):
        where = node.lc.data.get(index)
        pos = (where[0], where[1]) if where else own
        sub = (*loc, index)
        spans[sub] = _Span(pos, pos)
        out.append(_plain(value, sub, spans, active))
    return out


_LISTEN_LIST_RE = re.compile(r"\s*(-\s+)?listen:\s*\[")
_DUPLICATE_KEY_RE = re.compile(r'found duplicate key "(.*?)" with value "')


def _parse(file: str, raw: bytes, problems: list[ConfigProblem]) -> _Document | None:
    """Parse one file; on a syntax error append the one problem YAML can report and return None."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        problems.append(ConfigProblem(file, line, col, "the file is not valid UTF-8"))
        return None
    try:
        tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        if isinstance(exc, DuplicateKeyError):
            # ruamel's own message quotes both values, and a value may be an AES key.
            match = _DUPLICATE_KEY_RE.match(exc.problem or "")
            name = f" {match.group(1)!r}" if match else ""
            message = f"duplicate key{name}: a key may appear only once in a mapping"
        else:
            message = f"YAML syntax error: {exc.problem or exc.context or 'unreadable'}"
            lines = text.splitlines()
            if (
                mark is not None
                and mark.line < len(lines)
                and _LISTEN_LIST_RE.match(lines[mark.line])
            ):
                message += f'; {_IPV6_QUOTES}: listen: "[::1]:8780"'
        problems.append(ConfigProblem(file, line, col, message))
        return None
    except Exception as exc:  # ruamel raises a few unmarked errors (e.g. bad document markers)
        problems.append(ConfigProblem(file, 1, 1, f"YAML syntax error: {exc}"))
        return None
    root = (tree.lc.line, tree.lc.col) if isinstance(tree, CommentedMap | CommentedSeq) else (0, 0)
    spans: dict[_Loc, _Span] = {(): _Span(root, root)}
    try:
        data = _plain(tree, (), spans, set())
    except _RecursiveAlias as exc:
        doc = _Document(file, None, spans)
        problems.append(doc.problem(exc.loc, "a YAML alias that contains itself"))
        return None
    return _Document(file, data, spans)


# --- pydantic errors to problems -----------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X`` and ``Annotated[X, ...]`` -> ``X``: to walk the schema along an
    error's loc."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _keys_at(model: type[BaseModel], loc: _Loc) -> list[str] | None:
    """The keys a mapping at ``loc`` may have, if the schema there is a model."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if part not in tp.model_fields:
                return None
            tp = tp.model_fields[part].annotation
        elif typing.get_origin(tp) in (tuple, list) and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (dict, Mapping) and len(typing.get_args(tp)) == 2:
            tp = typing.get_args(tp)[1]  # a mapping of names to sections (routing policies)
        else:
            return None
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return None


def _unknown_key(model: type[BaseModel], loc: _Loc) -> str:
    if model is _MainFile and loc == ("accounts",):
        return "unknown key: accounts belong in the file named by accounts_file"
    allowed = _keys_at(model, loc[:-1])
    if not allowed:
        return "unknown key"
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key; expected one of: " + ", ".join(allowed)


_NUMBER_RE = re.compile(r"\s*[-+]?[0-9_]+(\.[0-9]*)?\s*")

# Pydantic's wording speaks of Python types; these say what to write in YAML instead.
_PLAIN_MESSAGES = {
    "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "dict_type": "expected a mapping (key: value lines)",
    "mapping_type": "expected a mapping (key: value lines)",
    "tuple_type": "expected a list (lines starting with '- ')",
    "list_type": "expected a list (lines starting with '- ')",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "path_type": "expected a path",
}


def _problems_from(
    error: ValidationError, model: type[BaseModel], doc: _Document
) -> list[ConfigProblem]:
    problems = []
    for err in error.errors(include_url=False, include_input=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        at_key = "[key]" in loc
        if kind == "extra_forbidden":
            message, at_key = _unknown_key(model, loc), True
        elif kind == "missing":
            message, at_key = "required key is missing", True
        elif kind in _PLAIN_MESSAGES:
            message = _PLAIN_MESSAGES[kind]
            if kind in ("int_type", "float_type") and _NUMBER_RE.fullmatch(str(doc.value(loc))):
                message += "; remove the quotes"
        else:
            message = err["msg"]
            if message[:1].isupper() and not message[1:2].isupper():
                message = message[0].lower() + message[1:]  # pydantic's "Input should..."
        problems.append(doc.problem(loc, message, at_key=at_key))
    return problems


_M = typing.TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], doc: _Document, problems: list[ConfigProblem]) -> _M | None:
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        # Converted here, not chained: the ValidationError's own text would show input values.
        found = _problems_from(exc, model, doc)
    problems.extend(found)
    return None


# --- loading -------------------------------------------------------------------------------


def _duplicate_accounts(doc: _Document) -> list[ConfigProblem]:
    """Two entries for one account (compared case-insensitively): the second is reported and
    names the line of the first. Works on the raw data, so it runs even if entries are invalid."""
    items = doc.data.get("accounts") if isinstance(doc.data, dict) else None
    if not isinstance(items, list):
        return []
    first_line: dict[str, int] = {}
    problems = []
    for index, item in enumerate(items):
        account = item.get("account") if isinstance(item, dict) else None
        if not isinstance(account, str) or not _ACCOUNT_RE.fullmatch(account):
            continue  # reported by validation, if wrong
        loc = ("accounts", index, "account")
        line, _col = doc.position(loc)
        if account.upper() in first_line:
            message = (
                f"duplicate account {account.upper()!r}, first defined on line"
                f" {first_line[account.upper()]}"
            )
            problems.append(doc.problem(loc, message))
        else:
            first_line[account.upper()] = line
    return problems


def _accounts_from(
    file: str, raw: bytes, problems: list[ConfigProblem]
) -> dict[str, AccountConfig]:
    doc = _parse(file, raw, problems)
    if doc is None:
        return {}
    parsed = _validate(_AccountsFile, doc, problems)
    problems.extend(_duplicate_accounts(doc))
    if parsed is None:
        return {}
    return {entry.account: entry for entry in parsed.accounts}


def _sorted(problems: Sequence[ConfigProblem], files: Sequence[str]) -> list[ConfigProblem]:
    order = {name: index for index, name in enumerate(files)}
    return sorted(problems, key=lambda p: (order.get(p.file, len(order)), p.line, p.col))


def _hash(contents: Sequence[bytes]) -> str:
    # A hash of the files' hashes, in order: moving text from one file to the other changes it.
    digest = hashlib.sha256()
    for data in contents:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def _load(path: Path) -> tuple[AlarmdConfig | None, list[ConfigProblem]]:
    problems: list[ConfigProblem] = []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return None, [
            ConfigProblem(str(path), 1, 1, f"cannot read the configuration file: {reason}")
        ]
    doc = _parse(str(path), raw, problems)
    if doc is None:
        return None, problems
    main = _validate(_MainFile, doc, problems)

    # The accounts file is checked even when the main file has problems, so that one run of
    # check-config reports everything; an invalid accounts_file value has its own problem.
    files, contents = [path], [raw]
    accounts: dict[str, AccountConfig] = {}
    accounts_path: Path | None = None
    value = doc.data.get("accounts_file") if isinstance(doc.data, dict) else None
    if isinstance(value, str) and value:
        accounts_path = path.parent / value
        try:
            accounts_raw = accounts_path.read_bytes()
        except FileNotFoundError:
            problems.append(
                doc.problem(("accounts_file",), f"accounts file not found: {accounts_path}")
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            problems.append(
                doc.problem(("accounts_file",), f"cannot read {accounts_path}: {reason}")
            )
        else:
            files.append(accounts_path)
            contents.append(accounts_raw)
            accounts = _accounts_from(str(accounts_path), accounts_raw, problems)

    # The routing files are checked even when the rest has problems, like the accounts file.
    routing = main.routing if main is not None else _routing_section(doc)
    if routing is not None:
        from alarmd.routing.config import read_routing  # imports this module

        loaded = read_routing(routing, path.parent, doc)
        files += loaded.files
        contents += loaded.contents
        problems += loaded.problems

    if problems or main is None:
        return None, _sorted(problems, [str(f) for f in files])
    settings = {name: getattr(main, name) for name in _MainFile.model_fields}
    config = AlarmdConfig.model_validate(
        {
            **settings,
            "accounts_file": accounts_path,
            "accounts": accounts,
            "source_files": tuple(f.resolve() for f in files),
            "config_hash": _hash(contents),
        }
    )
    return config, []


def _routing_section(doc: _Document) -> RoutingFiles | None:
    """The ``routing`` section of a main file that has problems elsewhere, if it is valid."""
    value = doc.data.get("routing") if isinstance(doc.data, dict) else None
    try:
        return RoutingFiles.model_validate(value)
    except ValidationError:
        return None  # reported by the main file's validation


def load_config(path: str | Path) -> AlarmdConfig:
    """Load the main file and the accounts and routing files it names; raise ``ConfigError``
    listing every problem found in any of them (a failing route test is one)."""
    config, problems = _load(Path(path))
    if problems:
        raise ConfigError(problems)
    assert config is not None
    return config


def check_config(path: str | Path) -> list[ConfigProblem]:
    """Every problem of the configuration at ``path``, in file order; empty if it loads."""
    return _load(Path(path))[1]


def load_accounts(path: str | Path) -> Mapping[str, AccountConfig]:
    """Load an accounts file on its own (tools, tests); keyed by uppercase account."""
    path = Path(path)
    problems: list[ConfigProblem] = []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigProblem(str(path), 1, 1, f"cannot read {path}: {reason}")]
        ) from None
    accounts = _accounts_from(str(path), raw, problems)
    if problems:
        raise ConfigError(_sorted(problems, [str(path)]))
    return types.MappingProxyType(accounts)


def default_config_path() -> Path | None:
    """The repository's example configuration, which ``alarmd run`` uses without ``--config``.

    Found next to the package (a source checkout or an editable install); None when alarmd was
    installed without the repository, where the example files do not exist.
    """
    path = Path(__file__).parent.parent / "config" / "alarmd.example.yaml"
    return path if path.is_file() else None

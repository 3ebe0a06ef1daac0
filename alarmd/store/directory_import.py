"""Importing the directory: tenants, service users, devices, response plans, next of kin,
staff and teams, from a YAML file (the whole picture) or a CSV export (users only).

What lives here
---------------
* The import data model (``DirectoryData`` and its parts): plain frozen data that remembers
  where in its file each entry stands, so that a problem found later (against the database)
  is still reported as ``file:line:col: message``.
* The parsers: ``parse_directory(path)``, ``parse_directory_bytes(data, filename, fmt)`` and
  ``parse_directory_text(text, filename, fmt)``. Each raises ``alarmd.config.ConfigError``
  listing every problem of the file at once, in file order.
* ``import_job(data, now, actor)``: a writer job (``store.writer.submit``) that upserts the
  data by natural keys in one transaction and returns an ``ImportSummary``. It raises
  ``ImportConflict`` (a ``ConfigError``) when a valid file does not fit what is stored; the
  writer then rolls that job back alone, and nothing of the file is written.
* The dry run: ``check_directory_bytes`` parses without raising (every problem of the file,
  and the data of its valid entries), and ``dry_run_job(data, problems, now, actor)`` runs
  the import in a savepoint that is always rolled back. Its ``DryRun`` holds the summary
  the import would give, or every problem: the file's own and, for the entries that are
  valid, their conflicts with what is stored, together in file order. So one run names
  every bad row (YAML: every bad user, supplier or device entry).
* ``export_job(tenant, fmt)``: one tenant as a file of either format that the import
  accepts and that re-imports as a no-op; exported into an empty database and exported
  again, a YAML export gives the same bytes.

Nothing here reads the clock: ``now`` comes in. The lookups that routing makes (device to
user, plan snapshot, recipients) live in ``directory.py``.

YAML format
-----------
One file may hold several tenants; ``config/directory.example.yaml`` is a commented example::

    suppliers:                           # optional, tenant-independent (see "Suppliers")
      - {id: trygg-teknikk, name: Trygg Teknikk AS, email: service@trygg.example,
         phone: "+4700000090"}
    tenants:
      - id: eksempel-kommune             # slug [a-z0-9-]
        name: Eksempel kommune
        teams:                           # optional; see "references" below
          - {ref: hjemmetjeneste-sentrum, name: Hjemmetjenesten sentrum, members: [kari-n]}
        staff:                           # optional
          - ref: kari-n
            name: Kari Nordmann
            role: home_care              # home_care | care_home | supplier
            channels: {sms: "+4700000101", mqtt: kari-n}   # sms, mqtt, webhook
            active: true                 # optional, default true
        users:
          - ref: u-1001                  # the municipality's own reference
            first_name: Astrid
            last_name: Testesen
            address: Eksempelveien 1     # optional
            postcode: "0001"             # optional, 4 digits, quoted
            phone: "+4700000001"         # optional, quoted
            group: dementia              # optional routing group
            location: home               # home | away | care_home (default home)
            active: true                 # optional, default true
            devices:
              - {protocol: dc09, identity: "1234", type: safety_alarm, group: 1,
                 supervision_s: 3600,
                 serial: SN-0001,           # optional: the supplier's serial number
                 supplier: trygg-teknikk,   # optional: stored, or in this file's suppliers
                 status: active}            # in_stock | ordered | installed | active |
                                            # faulty | removed
            plan:                        # optional; absent means an empty plan
              instructions: Ring først.
              key_box: Nøkkelboks ved inngangsdøren
              home_care_team: hjemmetjeneste-sentrum
              mode_override: null        # response | routing | routing_with_backup
            contacts:                    # called in this order (position 1, 2...)
              - {name: Per Testesen, relation: son, phone: "+4700000002",
                 has_key: true, channels: {sms: "+4700000002"}}

A user entry is the whole truth about that user: a key left out takes its default, except
a device's ``serial``, ``supplier`` and ``status``, which case management moves on as the
device lives (``DEVICE_KEEPABLE``): left out, a stored device keeps its own, and a new one
has no serial, no supplier and status ``active``; given (``supplier: null`` included), the
file's value is stored. ``status`` set by a file bypasses the life cycle's rules: an
onboarding tool, not the way a device is installed.
Identities, phone numbers and postcodes must be quoted (unquoted, YAML reads ``0809`` as the
number 809). Device identities: ``dc09`` an account of 3-16 hex digits (stored upper-case),
``scaip`` a cid of 1-32 digits, ``mqtt`` a device id of 1-64 of ``A-Z a-z 0-9 . _ : -``,
``sms`` a phone number. Phone numbers are stored as ``+<digits>``: spaces, dashes and dots
are dropped, ``00`` becomes ``+``, and 8 digits without a prefix are Norwegian (``+47``).

CSV format
----------
What a municipality exports from its care record system; ``config/directory.example.csv``
is an example. UTF-8 with or without a BOM; the delimiter is ``;`` or ``,`` (whichever the
header row has more of); lines starting with ``#`` are comments; the first other row names
the columns (in any order, case-insensitive)::

    tenant            required: the tenant's slug; a tenant not yet stored is created
                      with its id as its name (rename it with a YAML import)
    ref               required: the municipality's reference for the user
    first_name        required
    last_name         required
    address, postcode, phone
    group             routing group (empty: none)
    location          home | away | care_home (empty: home)
    active            yes/no (empty: yes)
    device_protocol   dc09 | scaip | mqtt | sms (empty on a row: no device on that row)
    device_identity   as in YAML
    device_type       e.g. safety_alarm, fall_detector (empty: none)
    device_group      1 | 3 (empty: 1)
    device_supervision_s  expected heartbeat interval in seconds (empty: none)
    device_serial     the supplier's serial number (empty: none)
    device_supplier   a supplier id that must already be stored (empty: none)
    device_status     in_stock | ordered | installed | active | faulty | removed (empty:
                      a stored device keeps its status, a new one is active)
    home_care_team    a team ref that must already be stored for the tenant (see below)
    instructions, key_box
    mode_override     response | routing | routing_with_backup (empty: none)
    contactN_name, contactN_phone, contactN_relation, contactN_has_key, contactN_sms
                      next of kin N = 1, 2, ...; has_key yes/no; sms: the number that
                      gets alarm SMS (empty: none). Contacts whose cells are all empty are
                      skipped; the others are called in the order of N.

Booleans are ``yes/no``, ``ja/nei``, ``true/false`` or ``1/0``. One row per user; a user
with several devices takes one row per device: the further rows repeat ``tenant`` and
``ref``, give the device, and leave the other cells empty (or equal to the first row's).
A *column* that is absent is not managed by the file: an existing user keeps what is
stored (an export without ``key_box`` never wipes key boxes). An *empty cell* in a
present column clears the value. Problems are ``file:line:col`` with ``col`` the 1-based
column of the offending cell.

Suppliers
---------
Suppliers are shared by the municipalities (one company serves several), so they are not
under a tenant: a YAML file may give them in a top-level ``suppliers`` list (``id`` a slug,
``name``, ``email``, ``phone``), upserted by id. A device's ``supplier`` must be stored or
in that list; otherwise it is a problem at the device's ``supplier`` (a CSV never creates
suppliers). Only a global admin may change a stored supplier: for a tenant admin's
import (``may_change_suppliers=False``) a listed supplier that is stored with other details
is a conflict, while one stored the same, or a new one, is fine.

References
----------
A team member must be a staff ref of the same tenant, and a plan's ``home_care_team`` a
team of the same tenant. When the file gives that tenant's ``staff`` (or ``teams``), the
reference is checked against the file at parse time; when it does not (a YAML tenant
without that key, and always for CSV, which never creates teams: a misspelt team must not
become a new, empty one), it must already be stored, checked when importing. Both kinds of
failure name the file position of the reference.

Import semantics
----------------
An upsert by natural keys: tenant id; (tenant, ref) for users, staff and teams; (protocol,
identity) for devices. Nothing is deleted: users, staff, teams and devices the file does
not mention stay as they are. For the entries it names, the file is the truth:

* a user's contacts are replaced by the file's list (matched by name and phone, so a
  contact that stays keeps its id, the ``contact:<id>`` in case logs);
* a user's devices are the file's: a device listed for another user of the same tenant
  moves to this one, and a device stored for this user but absent from the whole file is
  unlinked (kept, registered to the tenant, with no user);
* a team's members are the file's list, in order; a member who stays keeps ``on_duty``;
* a device already registered to another tenant is a conflict: nothing is imported
  (a device never moves between municipalities silently).

A plan's ``version`` is bumped, and ``updated_by`` set, only when the plan or the user's
contacts changed (the contacts are part of the plan snapshot a case copies); every version,
the first included, is kept in ``response_plan_versions`` with what changed
("instructions, contacts", or "created") and who (``directory.record_plan_version``).
Re-importing the same file changes nothing, and its summary counts 0 created and 0 updated.

Export
------
``export_job`` writes what is stored for one tenant, in the formats above, so that the
import takes it back unchanged. YAML is the whole picture: the suppliers its devices name,
staff, teams (members in order; ``on_duty`` is the staff's own and not exported), and the
users with their devices (serial, supplier, status), plans (key box included: the export
is sensitive, and the API audits it) and contacts. Every key is written, strings quoted,
in stored order, so the bytes depend only on what is stored. CSV is the users-only format:
one row per user and device; of a contact's channels only ``sms`` has a column, so a
contact's ``mqtt`` or ``webhook`` channel is lost on a CSV round trip (use YAML). Never
exported: erased users (``erased_at`` set), and devices with no user (the formats have no
place for them yet).
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeAlias, TypeVar, get_args

from pydantic import (
    AfterValidator,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from alarmd.config import (
    ConfigError,
    ConfigProblem,
    TenantSlug,
    _Document,
    _invalid,
    _parse,
    _quoted_string,
    _render_loc,
    _Section,
    _validate,
)
from alarmd.routing.decision import Location, Mode
from alarmd.store.db import iso
from alarmd.store.directory import record_plan_version

__all__ = [
    "CHANNELS",
    "DEVICE_KEEPABLE",
    "DEVICE_PROTOCOLS",
    "DEVICE_STATUSES",
    "KEEPABLE",
    "STAFF_ROLES",
    "ContactData",
    "Counts",
    "DeviceData",
    "DeviceProtocol",
    "DeviceStatus",
    "DirectoryData",
    "DryRun",
    "Format",
    "ImportConflict",
    "ImportSummary",
    "PlanData",
    "StaffData",
    "SupplierData",
    "TeamData",
    "TenantData",
    "UserData",
    "Where",
    "check_directory_bytes",
    "dry_run_job",
    "export_job",
    "import_job",
    "normalise_identity",
    "normalise_phone",
    "parse_directory",
    "parse_directory_bytes",
    "parse_directory_text",
]

DeviceProtocol: TypeAlias = Literal["dc09", "scaip", "mqtt", "sms"]
DEVICE_PROTOCOLS: tuple[DeviceProtocol, ...] = get_args(DeviceProtocol)
DeviceStatus: TypeAlias = Literal["in_stock", "ordered", "installed", "active", "faulty", "removed"]
DEVICE_STATUSES: tuple[DeviceStatus, ...] = get_args(DeviceStatus)
# The device fields a source may leave unmanaged (``DeviceData.keep``): a stored device keeps
# what it has, a new one gets the default (no serial, no supplier, status ``active``).
DEVICE_KEEPABLE = frozenset({"serial", "supplier", "status"})
StaffRole: TypeAlias = Literal["home_care", "care_home", "supplier"]
STAFF_ROLES: tuple[StaffRole, ...] = get_args(StaffRole)
CHANNELS = ("sms", "mqtt", "webhook")  # a person's channels; the console is the operators'
_LOCATIONS: tuple[Location, ...] = get_args(Location)
_MODES: tuple[Mode, ...] = get_args(Mode)
Format: TypeAlias = Literal["yaml", "csv"]


# --- the data model --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Where:
    """Where an entry stands in its file (1-based), and how to name it there."""

    file: str
    line: int
    col: int
    label: str = ""

    def problem(self, message: str) -> ConfigProblem:
        text = f"{self.label}: {message}" if self.label else message
        return ConfigProblem(self.file, self.line, self.col, text)


def _channels(items: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(sorted((items or {}).items())))


@dataclass(frozen=True, slots=True)
class DeviceData:
    protocol: DeviceProtocol
    identity: str  # normalised: DC-09 upper-case, phone numbers +digits
    device_type: str = ""
    group: int = 1  # 1: through the safety alarm (hub); 3: standalone
    supervision_s: int | None = None
    serial: str = ""
    supplier: str | None = None  # a supplier id: stored, or in the file's ``suppliers``
    status: DeviceStatus = "active"
    keep: frozenset[str] = frozenset()  # fields (of DEVICE_KEEPABLE) the source does not manage
    where: Where | None = field(default=None, compare=False)
    supplier_where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SupplierData:
    """A supplier (tenant-independent): the company that installs and maintains devices."""

    id: str
    name: str
    email: str = ""
    phone: str = ""
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ContactData:
    name: str
    relation: str = ""
    phone: str = ""
    has_key: bool = False
    channels: Mapping[str, str] = field(default_factory=_channels)


@dataclass(frozen=True, slots=True)
class PlanData:
    instructions: str = ""
    key_box: str = ""
    home_care_team: str | None = None  # a team ref of the user's tenant
    mode_override: Mode | None = None
    team_where: Where | None = field(default=None, compare=False)


# The user fields a source may leave unmanaged (``UserData.keep``): CSV columns that are absent.
KEEPABLE = frozenset(
    {
        "address",
        "postcode",
        "phone",
        "group",
        "location",
        "active",
        "devices",
        "contacts",
        "instructions",
        "key_box",
        "home_care_team",
        "mode_override",
    }
)


@dataclass(frozen=True, slots=True)
class UserData:
    tenant: str
    ref: str
    first_name: str
    last_name: str
    address: str = ""
    postcode: str = ""
    phone: str = ""
    group: str | None = None
    location: Location = "home"
    active: bool = True
    devices: tuple[DeviceData, ...] = ()
    plan: PlanData = PlanData()
    contacts: tuple[ContactData, ...] = ()  # in calling order: position 1, 2, ...
    keep: frozenset[str] = frozenset()  # fields (of KEEPABLE) the source does not manage
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class StaffData:
    ref: str
    name: str
    role: StaffRole = "home_care"
    channels: Mapping[str, str] = field(default_factory=_channels)
    active: bool = True
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TeamData:
    ref: str
    name: str
    members: tuple[str, ...] = ()  # staff refs, in order
    member_where: tuple[Where, ...] = field(default=(), compare=False)
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TenantData:
    id: str
    name: str | None = None  # None: not named here (CSV); created with name = id, else kept
    teams: tuple[TeamData, ...] | None = None  # None: not given; stored teams are references
    staff: tuple[StaffData, ...] | None = None  # None: not given; stored staff are references
    users: tuple[UserData, ...] = ()
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DirectoryData:
    """A parsed directory file."""

    source: str
    format: Format
    tenants: tuple[TenantData, ...]
    suppliers: tuple[SupplierData, ...] = ()  # YAML only

    @property
    def tenant_ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.tenants)


@dataclass(slots=True)
class Counts:
    """How many entries of one kind an import created, updated, left unchanged or removed.

    ``removed``: only contacts dropped from a user's list (nothing else is deleted). A device
    unlinked from its user, or a team whose members changed, counts as ``updated``."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
        }


@dataclass(slots=True)
class ImportSummary:
    tenants: Counts = field(default_factory=Counts)
    teams: Counts = field(default_factory=Counts)
    staff: Counts = field(default_factory=Counts)
    users: Counts = field(default_factory=Counts)
    devices: Counts = field(default_factory=Counts)
    plans: Counts = field(default_factory=Counts)
    contacts: Counts = field(default_factory=Counts)
    suppliers: Counts = field(default_factory=Counts)

    def _all(self) -> dict[str, Counts]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def changed(self) -> bool:
        return any(c.created or c.updated or c.removed for c in self._all().values())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"changed": self.changed}
        out.update({name: counts.to_json() for name, counts in self._all().items()})
        return out


class ImportConflict(ConfigError):
    """A valid file that does not fit what is stored (a device of another tenant, a team,
    staff member or supplier that does not exist); nothing of the file was written."""


@dataclass(frozen=True, slots=True)
class DryRun:
    """What an import would do (``summary``), or every problem that stops it (``problems``:
    the file's own and its conflicts with what is stored, in file order)."""

    summary: ImportSummary | None
    problems: tuple[ConfigProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


# --- value checks (shared by both formats) -----------------------------------------------------

_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TENANT_RE = re.compile(r"[a-z0-9-]{1,63}")
_POSTCODE_RE = re.compile(r"[0-9]{4}")
_PHONE_RE = re.compile(r"\+[1-9][0-9]{6,14}")
_PHONE_NOISE_RE = re.compile(r"[\s().\-/]")
_ACCOUNT_RE = re.compile(r"[0-9A-Fa-f]{3,16}")
_CID_RE = re.compile(r"[0-9]{1,32}")
_MQTT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_MQTT_STAFF_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def normalise_phone(text: str) -> str:
    """``+<digits>``: separators dropped, ``00`` -> ``+``, 8 bare digits are Norwegian."""
    compact = _PHONE_NOISE_RE.sub("", text)
    if re.fullmatch(r"[0-9]{8}", compact):
        compact = "+47" + compact
    elif compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _PHONE_RE.fullmatch(compact):
        raise ValueError(
            f"{text!r} is not a phone number: write +<country code><number>, e.g."
            " +4700000001, or 8 Norwegian digits"
        )
    return compact


def normalise_identity(protocol: str, text: str) -> str:
    """The form a device identity is stored and looked up in (``find_device``)."""
    if protocol == "dc09":
        if not _ACCOUNT_RE.fullmatch(text):
            raise ValueError(f"{text!r} is not a DC-09 account: 3-16 hex digits (0-9, A-F)")
        return text.upper()  # transmitters send either case; the directory keys one form
    if protocol == "scaip":
        if not _CID_RE.fullmatch(text):
            raise ValueError(f"{text!r} is not a SCAIP cid: 1-32 digits")
        return text
    if protocol == "mqtt":
        if not _MQTT_ID_RE.fullmatch(text):
            raise ValueError(f"{text!r} is not an MQTT device id: 1-64 of A-Z a-z 0-9 . _ : -")
        return text
    if protocol == "sms":
        return normalise_phone(text)
    raise ValueError(f"unknown protocol {protocol!r}; one of: {', '.join(DEVICE_PROTOCOLS)}")


def _ref(text: str) -> str:
    if not _REF_RE.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a reference: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter"
            " or digit"
        )
    return text


def _slug(text: str) -> str:
    if not _SLUG_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a name: lowercase a-z, digits, '_' and '-'")
    return text


def _optional_slug(text: str) -> str:
    return _slug(text) if text else ""


def _tenant(text: str) -> str:
    if not _TENANT_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a tenant: a slug of lowercase a-z, digits and '-'")
    return text


def _postcode(text: str) -> str:
    if text and not _POSTCODE_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a postcode: 4 digits")
    return text


def _optional_phone(text: str) -> str:
    return normalise_phone(text) if text else ""


def _text(text: str) -> str:
    return text.strip()


def _required_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _mqtt_staff(text: str) -> str:
    if not _MQTT_STAFF_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not an MQTT id: 1-64 of A-Z a-z 0-9 . _ -")
    return text


def _one_of(text: str, choices: Sequence[str], what: str) -> str:
    if text not in choices:
        close = difflib.get_close_matches(text, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{text!r} is not a {what}: one of {', '.join(choices)}{hint}")
    return text


# --- YAML ----------------------------------------------------------------------------------------

_SectionT = TypeVar("_SectionT", bound=_Section)


def _check(fn: Callable[[str], str]) -> AfterValidator:
    """A pydantic after-validator from a value check (its ValueError text kept as is)."""

    def run(value: str) -> str:
        try:
            return fn(value)
        except ValueError as exc:
            raise _invalid(str(exc)) from None

    return AfterValidator(run)


Ref: TypeAlias = Annotated[str, _quoted_string("a reference", '"1001"'), _check(_ref)]
Slug: TypeAlias = Annotated[str, _check(_slug)]
Text: TypeAlias = Annotated[str, _check(_text)]
Name: TypeAlias = Annotated[str, _check(_required_text)]
Phone: TypeAlias = Annotated[
    str, _quoted_string("a phone number", '"+4700000001"'), _check(normalise_phone)
]
OptionalPhone: TypeAlias = Annotated[
    str, _quoted_string("a phone number", '"+4700000001"'), _check(_optional_phone)
]
Postcode: TypeAlias = Annotated[str, _quoted_string("a postcode", '"0001"'), _check(_postcode)]


def _device_group(value: int) -> int:
    if value not in (1, 3):
        raise _invalid("a device group is 1 (through the safety alarm) or 3 (standalone)")
    return value


class _ChannelsIn(_Section):
    sms: Phone | None = None
    mqtt: Annotated[str, _check(_mqtt_staff)] | None = None
    webhook: Slug | None = None  # a webhook named in the configuration

    def plain(self) -> Mapping[str, str]:
        return _channels({k: v for k, v in self.model_dump().items() if v is not None})


class _DeviceIn(_Section):
    protocol: DeviceProtocol  # before identity: the identity's check reads it
    identity: Annotated[str, _quoted_string("identity", '"1234"')]
    type: Annotated[str, _check(_optional_slug)] = ""
    group: Annotated[StrictInt, AfterValidator(_device_group)] = 1
    supervision_s: Annotated[StrictInt, Field(gt=0)] | None = None
    # Left out: a stored device keeps its own (see DEVICE_KEEPABLE); given: the file's.
    serial: Text = ""
    supplier: Slug | None = None
    status: DeviceStatus = "active"

    def keep(self) -> frozenset[str]:
        return DEVICE_KEEPABLE - self.model_fields_set

    @field_validator("identity")
    @classmethod
    def _identity_fits_protocol(cls, identity: str, info: ValidationInfo) -> str:
        protocol = info.data.get("protocol")
        if protocol is None:
            return identity  # the protocol itself is wrong, and reported
        try:
            return normalise_identity(protocol, identity)
        except ValueError as exc:
            raise _invalid(str(exc)) from None


class _ContactIn(_Section):
    name: Name
    relation: Text = ""
    phone: OptionalPhone = ""
    has_key: StrictBool = False
    channels: _ChannelsIn = Field(default_factory=_ChannelsIn)


class _PlanIn(_Section):
    instructions: Text = ""
    key_box: Text = ""
    home_care_team: Ref | None = None
    mode_override: Mode | None = None


class _UserIn(_Section):
    ref: Ref
    first_name: Name
    last_name: Name
    address: Text = ""
    postcode: Postcode = ""
    phone: OptionalPhone = ""
    group: Slug | None = None
    location: Location = "home"
    active: StrictBool = True
    devices: tuple[_DeviceIn, ...] = ()
    plan: _PlanIn = Field(default_factory=_PlanIn)
    contacts: tuple[_ContactIn, ...] = ()


class _StaffIn(_Section):
    ref: Ref
    name: Name
    role: StaffRole = "home_care"
    channels: _ChannelsIn = Field(default_factory=_ChannelsIn)
    active: StrictBool = True


class _TeamIn(_Section):
    ref: Ref
    name: Name
    members: tuple[Ref, ...] = ()


class _TenantIn(_Section):
    id: TenantSlug
    name: Name
    teams: tuple[_TeamIn, ...] | None = None
    staff: tuple[_StaffIn, ...] | None = None
    users: tuple[_UserIn, ...] = ()


class _SupplierIn(_Section):
    id: Slug
    name: Name
    email: Text = ""
    phone: OptionalPhone = ""


class _DirectoryFile(_Section):
    suppliers: tuple[_SupplierIn, ...] = ()
    tenants: tuple[_TenantIn, ...]


def _entries(value: Any) -> list[tuple[int, dict[Any, Any]]]:
    """The mapping items of a raw list, with their indices (anything else is for pydantic)."""
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


class _FirstSeen:
    """Duplicate detection that names the line of the first occurrence."""

    def __init__(self, doc: _Document, problems: list[ConfigProblem]) -> None:
        self._doc = doc
        self._problems = problems
        self._first: dict[Any, int] = {}

    def add(self, key: Any, loc: tuple[Any, ...], what: str) -> None:
        line = self._doc.position(loc)[0]
        if key in self._first:
            self._problems.append(
                self._doc.problem(
                    loc, f"duplicate {what}, first defined on line {self._first[key]}"
                )
            )
        else:
            self._first[key] = line


def _hint(value: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _yaml_cross_checks(doc: _Document) -> list[ConfigProblem]:
    """Duplicates and references, on the raw data: they are reported even when other entries
    are invalid, so that one run shows everything."""
    problems: list[ConfigProblem] = []
    data = doc.data
    tenants = _entries(data.get("tenants") if isinstance(data, dict) else None)
    tenant_ids = _FirstSeen(doc, problems)
    devices = _FirstSeen(doc, problems)
    supplier_ids = _FirstSeen(doc, problems)
    for si, supplier in _entries(data.get("suppliers") if isinstance(data, dict) else None):
        sid = supplier.get("id")
        if isinstance(sid, str):
            supplier_ids.add(sid, ("suppliers", si, "id"), f"supplier {sid!r}")
    for ti, tenant in tenants:
        tid = tenant.get("id")
        here: tuple[Any, ...] = ("tenants", ti)
        if isinstance(tid, str):
            tenant_ids.add(tid, (*here, "id"), f"tenant {tid!r}")
        name = tid if isinstance(tid, str) else f"tenants[{ti}]"
        refs: dict[str, set[str]] = {}
        for kind, what in (("staff", "staff ref"), ("teams", "team ref"), ("users", "user ref")):
            seen = _FirstSeen(doc, problems)
            refs[kind] = set()
            for i, item in _entries(tenant.get(kind)):
                ref = item.get("ref")
                if isinstance(ref, str):
                    seen.add(ref, (*here, kind, i, "ref"), f"{what} {ref!r}")
                    refs[kind].add(ref)
        for i, team in _entries(tenant.get("teams")):
            members = team.get("members")
            if not isinstance(members, list):
                continue
            in_team = _FirstSeen(doc, problems)
            for m, member in enumerate(members):
                if not isinstance(member, str):
                    continue
                loc = (*here, "teams", i, "members", m)
                in_team.add(member, loc, f"member {member!r} in this team")
                if tenant.get("staff") is not None and member not in refs["staff"]:
                    problems.append(
                        doc.problem(
                            loc,
                            f"{member!r} is not a staff ref of tenant {name}"
                            + _hint(member, refs["staff"]),
                        )
                    )
        for u, user in _entries(tenant.get("users")):
            plan = user.get("plan")
            team_ref = plan.get("home_care_team") if isinstance(plan, dict) else None
            given = tenant.get("teams") is not None
            if isinstance(team_ref, str) and given and team_ref not in refs["teams"]:
                problems.append(
                    doc.problem(
                        (*here, "users", u, "plan", "home_care_team"),
                        f"{team_ref!r} is not a team of tenant {name}"
                        + _hint(team_ref, refs["teams"]),
                    )
                )
            for d, device in _entries(user.get("devices")):
                protocol, identity = device.get("protocol"), device.get("identity")
                if not isinstance(protocol, str) or not isinstance(identity, str):
                    continue
                try:
                    key = (protocol, normalise_identity(protocol, identity))
                except ValueError:
                    continue  # reported by validation
                loc = (*here, "users", u, "devices", d, "identity")
                devices.add(key, loc, f"device {protocol} {key[1]!r}")
    return problems


def _where(doc: _Document, loc: tuple[Any, ...]) -> Where:
    line, col = doc.position(loc)
    return Where(doc.file, line, col, _render_loc(loc))


def _from_yaml(
    doc: _Document,
    parsed_tenants: Sequence[tuple[int, _TenantIn, Sequence[int]]],
    parsed_suppliers: Sequence[tuple[int, _SupplierIn]],
) -> DirectoryData:
    """The data model of validated entries; each tenant comes with the file index of each
    of its users (all of them, or only the valid ones for a dry run's partial data)."""
    tenants = []
    for ti, t, user_index in parsed_tenants:
        here: tuple[Any, ...] = ("tenants", ti)
        teams = None
        if t.teams is not None:
            teams = tuple(
                TeamData(
                    ref=team.ref,
                    name=team.name,
                    members=team.members,
                    member_where=tuple(
                        _where(doc, (*here, "teams", i, "members", m))
                        for m in range(len(team.members))
                    ),
                    where=_where(doc, (*here, "teams", i)),
                )
                for i, team in enumerate(t.teams)
            )
        staff = None
        if t.staff is not None:
            staff = tuple(
                StaffData(
                    ref=s.ref,
                    name=s.name,
                    role=s.role,
                    channels=s.channels.plain(),
                    active=s.active,
                    where=_where(doc, (*here, "staff", i)),
                )
                for i, s in enumerate(t.staff)
            )
        users = []
        for ui, u in zip(user_index, t.users, strict=True):
            at = (*here, "users", ui)
            users.append(
                UserData(
                    tenant=t.id,
                    ref=u.ref,
                    first_name=u.first_name,
                    last_name=u.last_name,
                    address=u.address,
                    postcode=u.postcode,
                    phone=u.phone,
                    group=u.group,
                    location=u.location,
                    active=u.active,
                    devices=tuple(
                        DeviceData(
                            protocol=d.protocol,
                            identity=d.identity,
                            device_type=d.type,
                            group=d.group,
                            supervision_s=d.supervision_s,
                            serial=d.serial,
                            supplier=d.supplier,
                            status=d.status,
                            keep=d.keep(),
                            where=_where(doc, (*at, "devices", di, "identity")),
                            supplier_where=_where(doc, (*at, "devices", di, "supplier")),
                        )
                        for di, d in enumerate(u.devices)
                    ),
                    plan=PlanData(
                        instructions=u.plan.instructions,
                        key_box=u.plan.key_box,
                        home_care_team=u.plan.home_care_team,
                        mode_override=u.plan.mode_override,
                        team_where=_where(doc, (*at, "plan", "home_care_team")),
                    ),
                    contacts=tuple(
                        ContactData(
                            name=c.name,
                            relation=c.relation,
                            phone=c.phone,
                            has_key=c.has_key,
                            channels=c.channels.plain(),
                        )
                        for c in u.contacts
                    ),
                    where=_where(doc, at),
                )
            )
        tenants.append(
            TenantData(
                id=t.id,
                name=t.name,
                teams=teams,
                staff=staff,
                users=tuple(users),
                where=_where(doc, here),
            )
        )
    suppliers = tuple(
        SupplierData(
            id=s.id, name=s.name, email=s.email, phone=s.phone, where=_where(doc, ("suppliers", i))
        )
        for i, s in parsed_suppliers
    )
    return DirectoryData(
        source=doc.file, format="yaml", tenants=tuple(tenants), suppliers=suppliers
    )


def _valid(model: type[_SectionT], raw: Any) -> _SectionT | None:
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def _partial_yaml(doc: _Document) -> DirectoryData:
    """The valid entries of a file that has problems: each supplier and user that validates
    on its own, in the tenants whose other parts (name, staff, teams) validate. A dry run
    checks these against the database, so that one run reports the file's problems and its
    conflicts together."""
    data = doc.data if isinstance(doc.data, dict) else {}
    suppliers = [
        (i, s) for i, raw in _entries(data.get("suppliers")) if (s := _valid(_SupplierIn, raw))
    ]
    tenants: list[tuple[int, _TenantIn, Sequence[int]]] = []
    for ti, raw in _entries(data.get("tenants")):
        users = [(ui, u) for ui, user in _entries(raw.get("users")) if (u := _valid(_UserIn, user))]
        tenant = _valid(_TenantIn, {k: v for k, v in raw.items() if k != "users"})
        if tenant is not None:
            tenant = tenant.model_copy(update={"users": tuple(u for _, u in users)})
            tenants.append((ti, tenant, [ui for ui, _ in users]))
    return _from_yaml(doc, tenants, suppliers)


def _parse_yaml(raw: bytes, filename: str) -> tuple[DirectoryData, list[ConfigProblem]]:
    """The file's data and its problems; with problems, the data is its valid part."""
    problems: list[ConfigProblem] = []
    doc = _parse(filename, raw, problems)
    if doc is None:
        return DirectoryData(source=filename, format="yaml", tenants=()), problems
    parsed = _validate(_DirectoryFile, doc, problems)
    problems.extend(_yaml_cross_checks(doc))
    if problems or parsed is None:
        return _partial_yaml(doc), sorted(problems, key=lambda p: (p.line, p.col))
    tenants = [(ti, t, range(len(t.users))) for ti, t in enumerate(parsed.tenants)]
    return _from_yaml(doc, tenants, list(enumerate(parsed.suppliers))), []


# --- CSV -----------------------------------------------------------------------------------------

_USER_COLUMNS = (
    "tenant",
    "ref",
    "first_name",
    "last_name",
    "address",
    "postcode",
    "phone",
    "group",
    "location",
    "active",
)
_PLAN_COLUMNS = ("home_care_team", "instructions", "key_box", "mode_override")
_DEVICE_COLUMNS = (
    "device_protocol",
    "device_identity",
    "device_type",
    "device_group",
    "device_supervision_s",
    "device_serial",
    "device_supplier",
    "device_status",
)
# The CSV column of each DEVICE_KEEPABLE field.
_DEVICE_KEEP_COLUMNS = {
    "serial": "device_serial",
    "supplier": "device_supplier",
    "status": "device_status",
}
_CONTACT_FIELDS = ("name", "phone", "relation", "has_key", "sms")
_CONTACT_RE = re.compile(r"contact([1-9][0-9]?)_([a-z_]+)")
_REQUIRED_COLUMNS = ("tenant", "ref", "first_name", "last_name")
_COLUMNS = (*_USER_COLUMNS, *_PLAN_COLUMNS, *_DEVICE_COLUMNS)
_TRUE = frozenset({"yes", "ja", "true", "1", "y", "j"})
_FALSE = frozenset({"no", "nei", "false", "0", "n"})
# Cells that describe the user (a user's further rows must leave them empty or agree), and
# the columns whose absence leaves a KEEPABLE field unmanaged (devices and contacts: below).
_USER_CELLS = (*_USER_COLUMNS[2:], *_PLAN_COLUMNS)
_MANAGED_BY_COLUMN = ("address", "postcode", "phone", "group", "location", "active", *_PLAN_COLUMNS)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not yes or no (ja/nei, true/false and 1/0 also do)")


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) == 0:
        raise ValueError(f"{text!r} is not a whole number of seconds above 0")
    return int(text)


def _delimiter(header_line: str) -> str:
    return ";" if header_line.count(";") > header_line.count(",") else ","


@dataclass(slots=True)
class _CsvRow:
    """One record: its first line and its cells by column name (stripped)."""

    line: int
    cells: dict[str, str]


class _CsvParser:
    def __init__(self, text: str, filename: str) -> None:
        self.file = filename
        self.text = text
        self.problems: list[ConfigProblem] = []
        self.columns: dict[str, int] = {}  # name -> 1-based column
        self.contact_numbers: list[int] = []
        self.header_line = 1

    # Where a cell is, and a problem there.
    def at(self, line: int, column: str) -> Where:
        return Where(self.file, line, self.columns.get(column, 1), column)

    def report(self, line: int, column: str, message: str) -> None:
        self.problems.append(self.at(line, column).problem(message))

    def value(self, row: _CsvRow, column: str, check: Callable[[str], Any]) -> Any:
        """The checked value of a non-empty cell, or None (reported) if it is wrong."""
        try:
            return check(row.cells[column])
        except ValueError as exc:
            self.report(row.line, column, str(exc))
            return None

    def parse(self) -> tuple[DirectoryData, list[ConfigProblem]]:
        """The file's users and its problems; with problems, the users of the valid rows."""
        rows = self._records()
        users: dict[tuple[str, str], tuple[int, dict[str, Any], list[DeviceData]]] = {}
        devices_seen: dict[tuple[str, str], int] = {}
        for row in rows:
            self._row(row, users, devices_seen)
        problems = sorted(self.problems, key=lambda p: (p.line, p.col))
        keep = frozenset(c for c in _MANAGED_BY_COLUMN if c not in self.columns)
        if "device_protocol" not in self.columns:
            keep |= {"devices"}
        if not self.contact_numbers:
            keep |= {"contacts"}
        tenants: dict[str, list[UserData]] = {}
        for (tenant, _ref), (_line, values, devices) in users.items():
            tenants.setdefault(tenant, []).append(
                UserData(devices=tuple(devices), keep=keep, **values)
            )
        data = DirectoryData(
            source=self.file,
            format="csv",
            tenants=tuple(TenantData(id=t, users=tuple(u)) for t, u in tenants.items()),
        )
        return data, problems

    def _records(self) -> list[_CsvRow]:
        # Comment lines are blanked, not removed, so that line numbers stay the file's.
        lines = ["" if line.startswith("#") else line for line in self.text.split("\n")]
        content = next((line for line in lines if line.strip()), "")
        reader = csv.reader(
            io.StringIO("\n".join(lines), newline=""), delimiter=_delimiter(content)
        )
        records: list[_CsvRow] = []
        header: list[str] | None = None
        last = 0
        try:
            for cells in reader:
                start, last = last + 1, reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                if header is None:
                    header, self.header_line = cells, start
                    if not self._header(cells):
                        break  # without its key columns, no row can be read
                    continue
                records.append(self._record(start, cells, len(header)))
        except csv.Error as exc:
            self.problems.append(
                ConfigProblem(self.file, reader.line_num or 1, 1, f"CSV syntax error: {exc}")
            )
        if header is None:
            self.problems.append(
                ConfigProblem(self.file, 1, 1, "the file is empty; expected a header row")
            )
        return records

    def _header(self, cells: list[str]) -> bool:
        """Read the column names; False if rows cannot be read (a key column is missing)."""
        names = [c.strip().lower() for c in cells]
        while names and not names[-1]:  # a trailing delimiter (spreadsheets write them)
            names.pop()
        known = [*_COLUMNS, *(f"contact1_{f}" for f in _CONTACT_FIELDS)]
        for col, name in enumerate(names, start=1):
            problem = None
            contact = _CONTACT_RE.fullmatch(name)
            if not name:
                problem = "a column without a name"
            elif name in self.columns:
                problem = f"duplicate column {name!r}, first in column {self.columns[name]}"
            elif contact is not None and contact.group(2) not in _CONTACT_FIELDS:
                fields_ = ", ".join(f"contact{contact.group(1)}_{f}" for f in _CONTACT_FIELDS)
                problem = f"unknown column {name!r}; a contact's columns are {fields_}"
            elif contact is None and name not in _COLUMNS:
                hint = _hint(name, known) or "; see the top of alarmd/store/directory_import.py"
                problem = f"unknown column {name!r}{hint}"
            if problem is not None:
                self.problems.append(ConfigProblem(self.file, self.header_line, col, problem))
                continue
            self.columns[name] = col
            if contact is not None and int(contact.group(1)) not in self.contact_numbers:
                self.contact_numbers.append(int(contact.group(1)))
        self.contact_numbers.sort()
        for name in _REQUIRED_COLUMNS:
            if name not in self.columns:
                self.problems.append(
                    ConfigProblem(
                        self.file, self.header_line, 1, f"required column {name!r} is missing"
                    )
                )
        pair = ("device_protocol", "device_identity")
        if (pair[0] in self.columns) != (pair[1] in self.columns):
            given, missing = pair if pair[0] in self.columns else pair[::-1]
            self.problems.append(
                ConfigProblem(
                    self.file,
                    self.header_line,
                    self.columns[given],
                    f"column {given!r} needs {missing!r} too",
                )
            )
        fatal = any(name not in self.columns for name in _REQUIRED_COLUMNS) or (
            (pair[0] in self.columns) != (pair[1] in self.columns)
        )
        for number in self.contact_numbers:
            name = f"contact{number}_name"
            if name not in self.columns:
                first = min(
                    col for n, col in self.columns.items() if n.startswith(f"contact{number}_")
                )
                self.problems.append(
                    ConfigProblem(
                        self.file,
                        self.header_line,
                        first,
                        f"contact {number} needs a column {name!r}",
                    )
                )
        return not fatal

    def _record(self, line: int, cells: list[str], width: int) -> _CsvRow:
        for col in range(width + 1, len(cells) + 1):
            if cells[col - 1].strip():
                self.problems.append(
                    ConfigProblem(
                        self.file, line, col, f"a value beyond the header's {width} columns"
                    )
                )
                break
        values = {
            name: (cells[col - 1].strip() if col <= len(cells) else "")
            for name, col in self.columns.items()
        }
        return _CsvRow(line, values)

    def _row(
        self,
        row: _CsvRow,
        users: dict[tuple[str, str], tuple[int, dict[str, Any], list[DeviceData]]],
        devices_seen: dict[tuple[str, str], int],
    ) -> None:
        cells = row.cells
        key = (cells["tenant"], cells["ref"])
        further = key in users  # a further row of a user: it adds a device
        required = ("tenant", "ref") if further else _REQUIRED_COLUMNS
        before = len(self.problems)
        for name in required:
            if not cells[name]:
                self.report(row.line, name, "required, but the cell is empty")
        values = self._user_values(row)
        device = self._device(row)
        if values is None or len(self.problems) > before:
            return
        if device is not None:
            dkey = (device.protocol, device.identity)
            if dkey in devices_seen:
                self.report(
                    row.line,
                    "device_identity",
                    f"duplicate device {device.protocol} {device.identity!r},"
                    f" first defined on line {devices_seen[dkey]}",
                )
            else:
                devices_seen[dkey] = row.line
        if not further:
            users[key] = (row.line, values, [device] if device is not None else [])
            return
        first_line, first, devices = users[key]
        if device is None:
            self.report(
                row.line,
                "ref",
                f"duplicate user {key[1]!r} of tenant {key[0]}, first defined on line {first_line};"
                " a further row for a user must add a device",
            )
            return
        differs = (
            f"differs from line {first_line}: a further row for user {key[1]!r} only adds a"
            " device; leave this cell empty or equal to the first row's"
        )
        for column in _USER_CELLS:
            if column not in self.columns or not cells[column]:
                continue
            if self._cell_value(first, column) != self._cell_value(values, column):
                self.report(row.line, column, differs)
        if values["contacts"] and values["contacts"] != first["contacts"]:
            self.report(row.line, f"contact{self.contact_numbers[0]}_name", differs)
        devices.append(device)

    @staticmethod
    def _cell_value(values: dict[str, Any], column: str) -> Any:
        if column in _PLAN_COLUMNS:
            return getattr(values["plan"], column)
        return values[column]

    def _user_values(self, row: _CsvRow) -> dict[str, Any] | None:
        cells = row.cells
        before = len(self.problems)
        line = row.line

        def get(column: str, check: Callable[[str], Any], default: Any) -> Any:
            if column not in self.columns or not cells[column]:
                return default
            return self.value(row, column, check)

        values: dict[str, Any] = {
            "tenant": get("tenant", _tenant, None),  # required: an empty cell is reported
            "ref": get("ref", _ref, None),
            "first_name": cells["first_name"],
            "last_name": cells["last_name"],
            "address": get("address", _text, ""),
            "postcode": get("postcode", _postcode, ""),
            "phone": get("phone", normalise_phone, ""),
            "group": get("group", _slug, None),
            "location": get("location", lambda v: _one_of(v, _LOCATIONS, "location"), "home"),
            "active": get("active", _bool, True),
            "where": self.at(line, "ref"),
        }
        values["plan"] = PlanData(
            instructions=get("instructions", _text, ""),
            key_box=get("key_box", _text, ""),
            home_care_team=get("home_care_team", _ref, None),
            mode_override=get("mode_override", lambda v: _one_of(v, _MODES, "mode"), None),
            team_where=self.at(line, "home_care_team"),
        )
        values["contacts"] = self._contacts(row)
        if len(self.problems) > before:
            return None
        return values

    def _contacts(self, row: _CsvRow) -> tuple[ContactData, ...]:
        contacts = []
        for number in self.contact_numbers:
            cell: dict[str, str] = {
                f: row.cells.get(f"contact{number}_{f}", "") for f in _CONTACT_FIELDS
            }
            if not any(cell.values()):
                continue
            if not cell["name"]:
                self.report(row.line, f"contact{number}_name", "a contact needs a name")
                continue
            phone = (
                self.value(row, f"contact{number}_phone", _optional_phone) if cell["phone"] else ""
            )
            sms = self.value(row, f"contact{number}_sms", normalise_phone) if cell["sms"] else None
            has_key = (
                self.value(row, f"contact{number}_has_key", _bool) if cell["has_key"] else False
            )
            contacts.append(
                ContactData(
                    name=cell["name"],
                    relation=cell["relation"],
                    phone=phone or "",
                    has_key=bool(has_key),
                    channels=_channels({"sms": sms} if sms else None),
                )
            )
        return tuple(contacts)

    def _device(self, row: _CsvRow) -> DeviceData | None:
        if "device_protocol" not in self.columns:
            return None
        cells = row.cells
        protocol_text, identity_text = cells["device_protocol"], cells["device_identity"]
        others = [c for c in _DEVICE_COLUMNS[2:] if cells.get(c)]
        if not protocol_text and not identity_text:
            if others:
                self.report(row.line, others[0], "a device cell on a row without a device")
            return None
        if not protocol_text or not identity_text:
            empty = "device_protocol" if not protocol_text else "device_identity"
            self.report(row.line, empty, "a device needs both device_protocol and device_identity")
            return None
        protocol = self.value(
            row, "device_protocol", lambda v: _one_of(v.lower(), DEVICE_PROTOCOLS, "protocol")
        )
        if protocol is None:
            return None
        identity = self.value(row, "device_identity", lambda v: normalise_identity(protocol, v))
        device_type = self.value(row, "device_type", _slug) if cells.get("device_type") else ""
        group = 1
        if cells.get("device_group"):
            group = self.value(row, "device_group", _csv_device_group)
        supervision = None
        if cells.get("device_supervision_s"):
            supervision = self.value(row, "device_supervision_s", _positive_int)
        serial = cells.get("device_serial", "")
        supplier = None
        if cells.get("device_supplier"):
            supplier = self.value(row, "device_supplier", _slug)
        status: Any = "active"
        if cells.get("device_status"):
            status = self.value(
                row, "device_status", lambda v: _one_of(v.lower(), DEVICE_STATUSES, "status")
            )
        if (
            identity is None
            or device_type is None
            or group is None
            or (cells.get("device_supplier") and supplier is None)
            or status is None
        ):
            return None
        # An absent column leaves the field alone; so does an empty status cell (a device
        # always has a status), while an empty serial or supplier cell clears it.
        keep = frozenset(
            name
            for name, column in _DEVICE_KEEP_COLUMNS.items()
            if column not in self.columns or (name == "status" and not cells[column])
        )
        return DeviceData(
            protocol=protocol,
            identity=identity,
            device_type=device_type,
            group=group,
            supervision_s=supervision,
            serial=serial,
            supplier=supplier,
            status=status,
            keep=keep,
            where=self.at(row.line, "device_identity"),
            supplier_where=self.at(row.line, "device_supplier"),
        )


def _csv_device_group(text: str) -> int:
    if text not in ("1", "3"):
        raise ValueError(f"{text!r} is not a device group: 1 (through the safety alarm) or 3")
    return int(text)


# --- parsing entry points ------------------------------------------------------------------------


def _decode(raw: bytes, filename: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [ConfigProblem(filename, line, col, "the file is not valid UTF-8")]
        ) from None


def _check_text(text: str, filename: str, fmt: Format) -> tuple[DirectoryData, list[ConfigProblem]]:
    if fmt == "yaml":
        return _parse_yaml(text.encode("utf-8"), filename)
    if fmt == "csv":
        return _CsvParser(text.removeprefix("\ufeff"), filename).parse()
    raise ValueError(f"unknown directory format {fmt!r}")


def parse_directory_text(text: str, filename: str, fmt: Format) -> DirectoryData:
    """Parse a directory file's text; raise ``ConfigError`` listing every problem."""
    data, problems = _check_text(text, filename, fmt)
    if problems:
        raise ConfigError(problems)
    return data


def parse_directory_bytes(data: bytes, filename: str, fmt: Format) -> DirectoryData:
    """Parse a directory file's bytes (UTF-8, with or without a BOM)."""
    return parse_directory_text(_decode(data, filename), filename, fmt)


def check_directory_bytes(
    data: bytes, filename: str, fmt: Format
) -> tuple[DirectoryData, list[ConfigProblem]]:
    """Parse for a dry run: every problem of the file, and the data of its valid entries
    (every entry when there is no problem), so that ``dry_run_job`` can check those
    against the database too. Never raises for the file's content."""
    try:
        text = _decode(data, filename)
    except ConfigError as exc:
        return DirectoryData(source=filename, format=fmt, tenants=()), list(exc.problems)
    return _check_text(text, filename, fmt)


_SUFFIXES: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".csv": "csv"}


def parse_directory(path: Path) -> DirectoryData:
    """Parse a directory file; the format follows the extension (.yaml, .yml, .csv)."""
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            [ConfigProblem(str(path), 1, 1, "unknown file type; expected .yaml, .yml or .csv")]
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigProblem(str(path), 1, 1, f"cannot read: {reason}")]) from None
    return parse_directory_bytes(raw, str(path), fmt)


# --- the import job ------------------------------------------------------------------------------


def _json(channels: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(channels.items())), ensure_ascii=False, separators=(",", ":"))


def _stored_channels(text: str | None) -> dict[str, str]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _problem_at(where: Where | None, source: str, message: str) -> ConfigProblem:
    if where is None:
        return ConfigProblem(source, 1, 1, message)
    return where.problem(message)


# service_users columns and the UserData field each holds
_USER_FIELDS = {
    "first_name": "first_name",
    "last_name": "last_name",
    "address": "address",
    "postcode": "postcode",
    "phone": "phone",
    "user_group": "group",
    "location": "location",
    "active": "active",
}
_USER_DEFAULTS: dict[str, Any] = {
    "address": "",
    "postcode": "",
    "phone": "",
    "user_group": None,
    "location": "home",
    "active": 1,
}
_PLAN_FIELDS = ("instructions", "key_box", "home_care_team", "mode_override")
_PLAN_DEFAULTS: dict[str, Any] = {
    "instructions": "",
    "key_box": "",
    "home_care_team": None,
    "mode_override": None,
}


_DEVICES_BY_IDENTITY = (
    "SELECT protocol, identity, id, tenant, user_id, device_type, device_group, supervision_s,"
    " serial, supplier, status FROM devices WHERE protocol = ? AND identity IN "
)
# The devices columns an import writes, after user_id (see _Importer._devices).
_DEVICE_FIELDS = ("device_type", "device_group", "supervision_s", "serial", "supplier", "status")
_DEVICE_DEFAULTS: dict[str, Any] = {"serial": "", "supplier": None, "status": "active"}


class _Importer:
    def __init__(
        self,
        conn: sqlite3.Connection,
        data: DirectoryData,
        now: str,
        actor: str,
        *,
        may_change_suppliers: bool = True,
    ):
        self.conn = conn
        self.data = data
        self.now = now
        self.actor = actor
        self.may_change_suppliers = may_change_suppliers
        self.summary = ImportSummary()
        self.file_devices = {
            (d.protocol, d.identity) for t in data.tenants for u in t.users for d in u.devices
        }
        # What is stored, read in a few queries rather than a few per user: an import of a
        # whole municipality runs on the writer, and the writer runs on the event loop.
        # devices: (protocol, identity) -> (id, tenant, user_id, *_DEVICE_FIELDS)
        self.devices: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.users: dict[str, tuple[Any, ...]] = {}  # ref -> (id, *_USER_FIELDS)
        self.plans: dict[int, tuple[Any, ...]] = {}  # user_id -> _PLAN_FIELDS
        self.contacts: dict[int, list[tuple[Any, ...]]] = {}  # user_id -> rows by position
        self.linked: dict[int, list[tuple[Any, ...]]] = {}  # user_id -> (id, protocol, identity)

    def check(self) -> list[ConfigProblem]:
        """Every conflict of the file with what is stored; nothing is written."""
        self._load_devices()
        return sorted(self._conflicts(), key=lambda p: (p.file, p.line, p.col))

    def run(self) -> ImportSummary:
        conflicts = self.check()
        if conflicts:
            raise ImportConflict(conflicts)
        for supplier in self.data.suppliers:
            self._supplier(supplier)
        for tenant in self.data.tenants:
            self._tenant(tenant)
            if tenant.staff is not None:
                for staff in tenant.staff:
                    self._staff(tenant.id, staff)
            if tenant.teams is not None:
                for team in tenant.teams:
                    self._team(tenant.id, team)
            if tenant.users:
                self._load_users(tenant.id)
            for user in tenant.users:
                self._user(user)
        return self.summary

    def _load_devices(self) -> None:
        wanted = sorted(self.file_devices)
        for protocol in {p for p, _ in wanted}:
            identities = [i for p, i in wanted if p == protocol]
            for start in range(0, len(identities), 500):
                chunk = identities[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                for row in self.conn.execute(
                    f"{_DEVICES_BY_IDENTITY}({marks})", (protocol, *chunk)
                ):
                    self.devices[(row[0], row[1])] = tuple(row[2:])

    def _load_users(self, tenant: str) -> None:
        columns = ", ".join(f"u.{c}" for c in _USER_FIELDS)
        self.users = {
            row[1]: (row[0], *row[2:])
            for row in self.conn.execute(
                f"SELECT u.id, u.ref, {columns} FROM service_users u WHERE u.tenant = ?",  # noqa: S608
                (tenant,),
            )
        }
        self.plans = {
            row[0]: tuple(row[1:])
            for row in self.conn.execute(
                "SELECT p.user_id, p.instructions, p.key_box, p.home_care_team, p.mode_override"
                " FROM response_plans p JOIN service_users u ON u.id = p.user_id"
                " WHERE u.tenant = ?",
                (tenant,),
            )
        }
        self.contacts = {}
        for row in self.conn.execute(
            "SELECT c.user_id, c.id, c.position, c.name, c.relation, c.phone, c.has_key,"
            " c.channels FROM contacts c JOIN service_users u ON u.id = c.user_id"
            " WHERE u.tenant = ? ORDER BY c.user_id, c.position",
            (tenant,),
        ):
            self.contacts.setdefault(row[0], []).append(tuple(row[1:]))
        self.linked = {}
        for row in self.conn.execute(
            "SELECT d.user_id, d.id, d.protocol, d.identity FROM devices d"
            " JOIN service_users u ON u.id = d.user_id WHERE u.tenant = ?",
            (tenant,),
        ):
            self.linked.setdefault(row[0], []).append(tuple(row[1:]))

    def _one(self, sql: str, args: Sequence[Any]) -> Any:
        return self.conn.execute(sql, args).fetchone()

    def _conflicts(self) -> list[ConfigProblem]:
        """What the file refers to but the database refuses, all of it, before any write."""
        problems = []
        source = self.data.source
        stored_suppliers = {
            row[0]: tuple(row[1:])
            for row in self.conn.execute("SELECT id, name, email, phone FROM suppliers")
        }
        for supplier in self.data.suppliers:
            stored = stored_suppliers.get(supplier.id)
            wanted = (supplier.name, supplier.email, supplier.phone)
            if stored is not None and stored != wanted and not self.may_change_suppliers:
                problems.append(
                    _problem_at(
                        supplier.where,
                        source,
                        f"supplier {supplier.id!r} is stored with other details; a supplier"
                        " serves several municipalities, so only an admin may change it",
                    )
                )
        known_suppliers = stored_suppliers.keys() | {s.id for s in self.data.suppliers}
        for tenant in self.data.tenants:
            for user in tenant.users:
                if "devices" not in user.keep:
                    for device in user.devices:
                        if (
                            device.supplier is not None
                            and "supplier" not in device.keep
                            and device.supplier not in known_suppliers
                        ):
                            problems.append(
                                _problem_at(
                                    device.supplier_where,
                                    source,
                                    f"no supplier {device.supplier!r} is stored or given in"
                                    " the file's suppliers"
                                    + _hint(device.supplier, known_suppliers),
                                )
                            )
                        row = self.devices.get((device.protocol, device.identity))
                        if row is not None and row[1] != tenant.id:
                            # The other tenant is not named: a tenant admin must not learn it.
                            problems.append(
                                _problem_at(
                                    device.where,
                                    source,
                                    f"device {device.protocol} {device.identity!r} is"
                                    " registered to another tenant; a device never moves"
                                    " between municipalities by import: unregister it there"
                                    " first",
                                )
                            )
                team = user.plan.home_care_team
                if (
                    team is not None
                    and "home_care_team" not in user.keep
                    and tenant.teams is None
                    and self._one(
                        "SELECT 1 FROM teams WHERE tenant = ? AND ref = ?", (tenant.id, team)
                    )
                    is None
                ):
                    problems.append(
                        _problem_at(
                            user.plan.team_where,
                            source,
                            f"no team {team!r} is stored for tenant {tenant.id}; create it"
                            " with a YAML import first",
                        )
                    )
            if tenant.staff is None:
                for team_data in tenant.teams or ():
                    for member, where in zip(
                        team_data.members, self._member_wheres(team_data), strict=True
                    ):
                        if (
                            self._one(
                                "SELECT 1 FROM staff WHERE tenant = ? AND ref = ?",
                                (tenant.id, member),
                            )
                            is None
                        ):
                            problems.append(
                                _problem_at(
                                    where,
                                    source,
                                    f"no staff member {member!r} is stored for tenant {tenant.id}",
                                )
                            )
        return problems

    @staticmethod
    def _member_wheres(team: TeamData) -> tuple[Where | None, ...]:
        if len(team.member_where) == len(team.members):
            return team.member_where
        return (team.where,) * len(team.members)

    def _supplier(self, supplier: SupplierData) -> None:
        row = self._one("SELECT name, email, phone FROM suppliers WHERE id = ?", (supplier.id,))
        counts = self.summary.suppliers
        values = (supplier.name, supplier.email, supplier.phone)
        if row is None:
            self.conn.execute(
                "INSERT INTO suppliers (id, name, email, phone, updated_at) VALUES (?, ?, ?, ?, ?)",
                (supplier.id, *values, self.now),
            )
            counts.created += 1
        elif tuple(row) != values:
            self.conn.execute(
                "UPDATE suppliers SET name = ?, email = ?, phone = ?, updated_at = ? WHERE id = ?",
                (*values, self.now, supplier.id),
            )
            counts.updated += 1
        else:
            counts.unchanged += 1

    def _tenant(self, tenant: TenantData) -> None:
        row = self._one("SELECT name FROM tenants WHERE id = ?", (tenant.id,))
        counts = self.summary.tenants
        if row is None:
            self.conn.execute(
                "INSERT INTO tenants (id, name, updated_at) VALUES (?, ?, ?)",
                (tenant.id, tenant.name or tenant.id, self.now),
            )
            counts.created += 1
        elif tenant.name is not None and tenant.name != row[0]:
            self.conn.execute(
                "UPDATE tenants SET name = ?, updated_at = ? WHERE id = ?",
                (tenant.name, self.now, tenant.id),
            )
            counts.updated += 1
        else:
            counts.unchanged += 1

    def _staff(self, tenant: str, staff: StaffData) -> None:
        row = self._one(
            "SELECT id, name, role, channels, active FROM staff WHERE tenant = ? AND ref = ?",
            (tenant, staff.ref),
        )
        counts = self.summary.staff
        values = (staff.name, staff.role, _json(staff.channels), int(staff.active))
        if row is None:
            self.conn.execute(
                "INSERT INTO staff (tenant, ref, name, role, channels, active, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tenant, staff.ref, *values, self.now),
            )
            counts.created += 1
        elif (row[1], row[2], _stored_channels(row[3]), row[4]) != (
            staff.name,
            staff.role,
            dict(staff.channels),
            int(staff.active),
        ):
            self.conn.execute(
                "UPDATE staff SET name = ?, role = ?, channels = ?, active = ?, updated_at = ?"
                " WHERE id = ?",
                (*values, self.now, row[0]),
            )
            counts.updated += 1
        else:
            counts.unchanged += 1

    def _team(self, tenant: str, team: TeamData) -> None:
        row = self._one(
            "SELECT id, name FROM teams WHERE tenant = ? AND ref = ?", (tenant, team.ref)
        )
        counts = self.summary.teams
        if row is None:
            cursor = self.conn.execute(
                "INSERT INTO teams (tenant, ref, name, updated_at) VALUES (?, ?, ?, ?)",
                (tenant, team.ref, team.name, self.now),
            )
            assert cursor.lastrowid is not None
            team_id, changed, created = cursor.lastrowid, False, True
        else:
            team_id, changed, created = row[0], row[1] != team.name, False
        wanted: list[int] = []
        for member in team.members:
            staff = self._one("SELECT id FROM staff WHERE tenant = ? AND ref = ?", (tenant, member))
            assert staff is not None  # checked: by the parser or by _conflicts
            wanted.append(staff[0])
        stored = {
            r[0]: r[1]
            for r in self.conn.execute(
                "SELECT staff_id, position FROM team_members WHERE team_id = ?", (team_id,)
            )
        }
        for staff_id in stored.keys() - set(wanted):
            self.conn.execute(
                "DELETE FROM team_members WHERE team_id = ? AND staff_id = ?", (team_id, staff_id)
            )
            changed = True
        for position, staff_id in enumerate(wanted, start=1):
            if staff_id not in stored:
                self.conn.execute(
                    "INSERT INTO team_members (team_id, staff_id, position) VALUES (?, ?, ?)",
                    (team_id, staff_id, position),
                )
                changed = True
            elif stored[staff_id] != position:  # on_duty is the member's own: left as it is
                self.conn.execute(
                    "UPDATE team_members SET position = ? WHERE team_id = ? AND staff_id = ?",
                    (position, team_id, staff_id),
                )
                changed = True
        if created:
            counts.created += 1
        elif changed:
            self.conn.execute(
                "UPDATE teams SET name = ?, updated_at = ? WHERE id = ?",
                (team.name, self.now, team_id),
            )
            counts.updated += 1
        else:
            counts.unchanged += 1

    def _user(self, user: UserData) -> None:
        columns = ", ".join(_USER_FIELDS)
        row = self.users.get(user.ref)
        wanted = {column: getattr(user, name) for column, name in _USER_FIELDS.items()}
        wanted["active"] = int(user.active)
        stored = dict(zip(_USER_FIELDS, row[1:], strict=True)) if row is not None else None
        for column, name in _USER_FIELDS.items():
            if name in user.keep:
                wanted[column] = stored[column] if stored is not None else _USER_DEFAULTS[column]
        counts = self.summary.users
        if row is None:
            cursor = self.conn.execute(
                f"INSERT INTO service_users (tenant, ref, {columns}, updated_at)"  # noqa: S608
                f" VALUES (?, ?, {', '.join('?' for _ in _USER_FIELDS)}, ?)",
                (user.tenant, user.ref, *wanted.values(), self.now),
            )
            assert cursor.lastrowid is not None
            user_id = cursor.lastrowid
            counts.created += 1
        else:
            user_id = row[0]
            if wanted != stored:
                assignments = ", ".join(f"{c} = ?" for c in _USER_FIELDS)
                self.conn.execute(
                    f"UPDATE service_users SET {assignments}, updated_at = ?"  # noqa: S608
                    " WHERE id = ?",
                    (*wanted.values(), self.now, user_id),
                )
                counts.updated += 1
            else:
                counts.unchanged += 1
        if "devices" not in user.keep:
            self._devices(user, user_id)
        contacts_changed = False if "contacts" in user.keep else self._contacts(user, user_id)
        self._plan(user, user_id, contacts_changed)

    def _devices(self, user: UserData, user_id: int) -> None:
        counts = self.summary.devices
        for device in user.devices:
            row = self.devices.get((device.protocol, device.identity))
            stored = dict(zip(_DEVICE_FIELDS, row[3:], strict=True)) if row is not None else None
            wanted: dict[str, Any] = {
                "device_type": device.device_type,
                "device_group": device.group,
                "supervision_s": device.supervision_s,
                "serial": device.serial,
                "supplier": device.supplier,
                "status": device.status,
            }
            for name in device.keep:
                wanted[name] = stored[name] if stored is not None else _DEVICE_DEFAULTS[name]
            if row is None or stored is None:
                self.conn.execute(
                    "INSERT INTO devices (tenant, user_id, device_type, device_group,"
                    " supervision_s, serial, supplier, status, status_at, protocol, identity,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        user.tenant,
                        user_id,
                        *wanted.values(),
                        self.now,
                        device.protocol,
                        device.identity,
                        self.now,
                    ),
                )
                counts.created += 1
            elif (row[2], stored) != (user_id, wanted):
                status_at = self.now if stored["status"] != wanted["status"] else None
                self.conn.execute(
                    "UPDATE devices SET user_id = ?, device_type = ?, device_group = ?,"
                    " supervision_s = ?, serial = ?, supplier = ?, status = ?,"
                    " status_at = coalesce(?, status_at), updated_at = ? WHERE id = ?",
                    (user_id, *wanted.values(), status_at, self.now, row[0]),
                )
                counts.updated += 1
            else:
                counts.unchanged += 1
        # Stored for this user but nowhere in the file: no longer this user's. The device
        # stays registered to the tenant (its alarms still reach the centre, flagged).
        for device_id, protocol, identity in self.linked.get(user_id, ()):
            if (protocol, identity) not in self.file_devices:
                self.conn.execute(
                    "UPDATE devices SET user_id = NULL, updated_at = ? WHERE id = ?",
                    (self.now, device_id),
                )
                counts.updated += 1

    def _contacts(self, user: UserData, user_id: int) -> bool:
        """Replace the user's contacts with the file's; True if anything changed."""
        counts = self.summary.contacts
        stored = self.contacts.get(user_id, [])  # (id, position, name, ...) by position

        # (position, name, relation, phone, has_key, channels): what "unchanged" compares
        old = [(r[1], r[2], r[3], r[4], bool(r[5]), _stored_channels(r[6])) for r in stored]
        new = [
            (p, c.name, c.relation, c.phone, c.has_key, dict(c.channels))
            for p, c in enumerate(user.contacts, start=1)
        ]
        if old == new:
            counts.unchanged += len(new)
            return False
        # Match by (name, phone), so that a contact who stays keeps the id case logs name.
        pool: dict[tuple[str, str], list[tuple[int, tuple[Any, ...]]]] = {}
        for r, shaped in zip(stored, old, strict=True):
            pool.setdefault((shaped[1], shaped[3]), []).append((r[0], shaped))
        # Positions are unique per user: move the stored ones out of the way first.
        self.conn.execute("UPDATE contacts SET position = -position WHERE user_id = ?", (user_id,))
        for wanted, contact in zip(new, user.contacts, strict=True):
            candidates = pool.get((contact.name, contact.phone))
            if candidates:
                contact_id, before = candidates.pop(0)
                self.conn.execute(
                    "UPDATE contacts SET position = ?, relation = ?, has_key = ?, channels = ?"
                    " WHERE id = ?",
                    (
                        wanted[0],
                        contact.relation,
                        int(contact.has_key),
                        _json(contact.channels),
                        contact_id,
                    ),
                )
                if before == wanted:
                    counts.unchanged += 1
                else:
                    counts.updated += 1
            else:
                self.conn.execute(
                    "INSERT INTO contacts (user_id, position, name, relation, phone, has_key,"
                    " channels) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        user_id,
                        wanted[0],
                        contact.name,
                        contact.relation,
                        contact.phone,
                        int(contact.has_key),
                        _json(contact.channels),
                    ),
                )
                counts.created += 1
        for leftovers in pool.values():
            for contact_id, _ in leftovers:
                self.conn.execute("DELETE FROM contacts WHERE id = ?", (contact_id,))
                counts.removed += 1
        return True

    def _plan(self, user: UserData, user_id: int, contacts_changed: bool) -> None:
        counts = self.summary.plans
        row = self.plans.get(user_id)
        stored = dict(zip(_PLAN_FIELDS, row, strict=True)) if row is not None else None
        wanted = {name: getattr(user.plan, name) for name in _PLAN_FIELDS}
        for name in _PLAN_FIELDS:
            if name in user.keep:
                wanted[name] = stored[name] if stored is not None else _PLAN_DEFAULTS[name]
        if stored is None:
            self.conn.execute(
                "INSERT INTO response_plans (user_id, version, instructions, key_box,"
                " home_care_team, mode_override, updated_at, updated_by)"
                " VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
                (user_id, *wanted.values(), self.now, self.actor),
            )
            counts.created += 1
            record_plan_version(self.conn, user_id, self.now, self.actor, "created")
        elif wanted != stored or contacts_changed:
            self.conn.execute(
                "UPDATE response_plans SET version = version + 1, instructions = ?,"
                " key_box = ?, home_care_team = ?, mode_override = ?, updated_at = ?,"
                " updated_by = ? WHERE user_id = ?",
                (*wanted.values(), self.now, self.actor, user_id),
            )
            counts.updated += 1
            changed = [name for name in _PLAN_FIELDS if wanted[name] != stored[name]]
            if contacts_changed:
                changed.append("contacts")
            record_plan_version(self.conn, user_id, self.now, self.actor, ", ".join(changed))
        else:
            counts.unchanged += 1


def import_job(
    data: DirectoryData, now: datetime, actor: str, *, may_change_suppliers: bool = True
) -> Callable[[sqlite3.Connection], ImportSummary]:
    """A writer job that imports ``data`` in one transaction and returns what it did.

    ``actor`` is recorded as the plans' ``updated_by`` and in their kept versions
    (``response_plan_versions``). The job is atomic on its own (a savepoint), so it may also
    run on a connection outside the writer; it raises ``ImportConflict`` listing every
    conflict with the stored directory, having written nothing. Without
    ``may_change_suppliers`` (a tenant admin's import), a supplier of the file that is
    stored with other details is a conflict: suppliers are shared by the municipalities.
    """
    stamp = iso(now)

    def job(conn: sqlite3.Connection) -> ImportSummary:
        conn.execute("SAVEPOINT directory_import")
        try:
            importer = _Importer(
                conn, data, stamp, actor, may_change_suppliers=may_change_suppliers
            )
            summary = importer.run()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK TO directory_import")
                conn.execute("RELEASE directory_import")
            raise
        conn.execute("RELEASE directory_import")
        return summary

    return job


def dry_run_job(
    data: DirectoryData,
    problems: Sequence[ConfigProblem],
    now: datetime,
    actor: str,
    *,
    may_change_suppliers: bool = True,
) -> Callable[[sqlite3.Connection], DryRun]:
    """A writer job that runs the import of ``data`` and always rolls it back: it changes
    nothing, and says what the import would do or why it cannot.

    ``data`` and ``problems`` come from ``check_directory_bytes``: with parse problems,
    ``data`` is the file's valid part, which is still checked against the database, so
    that the answer lists the file's problems and its conflicts together, in file order.
    """
    stamp = iso(now)

    def job(conn: sqlite3.Connection) -> DryRun:
        conn.execute("SAVEPOINT directory_dry_run")
        try:
            importer = _Importer(
                conn, data, stamp, actor, may_change_suppliers=may_change_suppliers
            )
            found = [*problems, *importer.check()]
            summary = None
            if not found:
                summary = _Importer(
                    conn, data, stamp, actor, may_change_suppliers=may_change_suppliers
                ).run()
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK TO directory_dry_run")
                conn.execute("RELEASE directory_dry_run")
        unique = sorted(set(found), key=lambda p: (p.file, p.line, p.col, p.message))
        return DryRun(summary=summary, problems=tuple(unique))

    return job


# --- export --------------------------------------------------------------------------------------


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's)."""
    return json.dumps(value, ensure_ascii=False)


def _q_or_null(value: str | None) -> str:
    return "null" if value is None else _q(value)


def _flow(items: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {_q(v)}" for k, v in sorted(items.items())) + "}"


@dataclass(frozen=True, slots=True)
class _Export:
    """One tenant as stored: what an export writes (never an erased user)."""

    tenant: tuple[str, str]  # id, name
    suppliers: list[tuple[str, str, str, str]]  # id, name, email, phone
    staff: list[tuple[Any, ...]]  # ref, name, role, channels, active
    teams: list[tuple[str, str, list[str]]]  # ref, name, member refs in order
    users: list[tuple[Any, ...]]  # id, ref, first_name, ... (_USER_FIELDS)
    devices: dict[int, list[tuple[Any, ...]]]  # user id -> protocol, identity, *_DEVICE_FIELDS
    plans: dict[int, tuple[Any, ...]]  # user id -> _PLAN_FIELDS
    contacts: dict[int, list[tuple[Any, ...]]]  # user id -> name, relation, phone, has_key, ch


def _read_export(conn: sqlite3.Connection, tenant: str) -> _Export | None:
    row = conn.execute("SELECT id, name FROM tenants WHERE id = ?", (tenant,)).fetchone()
    if row is None:
        return None
    users = [
        tuple(r)
        for r in conn.execute(
            f"SELECT id, ref, {', '.join(_USER_FIELDS)} FROM service_users"  # noqa: S608
            " WHERE tenant = ? AND erased_at IS NULL ORDER BY id",
            (tenant,),
        )
    ]
    live = {u[0] for u in users}
    devices: dict[int, list[tuple[Any, ...]]] = {}
    for r in conn.execute(
        f"SELECT user_id, protocol, identity, {', '.join(_DEVICE_FIELDS)} FROM devices"  # noqa: S608
        " WHERE tenant = ? AND user_id IS NOT NULL ORDER BY id",
        (tenant,),
    ):
        if r[0] in live:
            devices.setdefault(r[0], []).append(tuple(r[1:]))
    plans = {
        r[0]: tuple(r[1:])
        for r in conn.execute(
            f"SELECT p.user_id, {', '.join(f'p.{c}' for c in _PLAN_FIELDS)}"  # noqa: S608
            " FROM response_plans p JOIN service_users u ON u.id = p.user_id"
            " WHERE u.tenant = ?",
            (tenant,),
        )
        if r[0] in live
    }
    contacts: dict[int, list[tuple[Any, ...]]] = {}
    for r in conn.execute(
        "SELECT c.user_id, c.name, c.relation, c.phone, c.has_key, c.channels FROM contacts c"
        " JOIN service_users u ON u.id = c.user_id WHERE u.tenant = ?"
        " ORDER BY c.user_id, c.position",
        (tenant,),
    ):
        if r[0] in live:
            contacts.setdefault(r[0], []).append(tuple(r[1:]))
    used = sorted({d[6] for ds in devices.values() for d in ds if d[6] is not None})  # supplier
    suppliers = [
        (r[0], r[1], r[2], r[3])
        for r in conn.execute(
            f"SELECT id, name, email, phone FROM suppliers WHERE id IN"  # noqa: S608
            f" ({', '.join('?' for _ in used)}) ORDER BY id",
            used,
        )
    ]
    staff = [
        tuple(r)
        for r in conn.execute(
            "SELECT ref, name, role, channels, active FROM staff WHERE tenant = ? ORDER BY id",
            (tenant,),
        )
    ]
    teams = []
    for team_id, ref, name in conn.execute(
        "SELECT id, ref, name FROM teams WHERE tenant = ? ORDER BY id", (tenant,)
    ).fetchall():
        members = [
            m[0]
            for m in conn.execute(
                "SELECT s.ref FROM team_members m JOIN staff s ON s.id = m.staff_id"
                " WHERE m.team_id = ? ORDER BY m.position, s.ref",
                (team_id,),
            )
        ]
        teams.append((ref, name, members))
    return _Export((row[0], row[1]), suppliers, staff, teams, users, devices, plans, contacts)


def _export_yaml(data: _Export) -> str:
    tenant, name = data.tenant
    out = [
        f"# alarmd directory export: tenant {tenant}. It holds personal data and key box",
        "# codes: keep it as safely as the centre keeps them. Importing it again changes",
        "# nothing; the format is described at the top of alarmd/store/directory_import.py.",
    ]
    if data.suppliers:
        out.append("suppliers:")
        for sid, sname, email, phone in data.suppliers:
            out.append(f"  - id: {_q(sid)}")
            out.append(f"    name: {_q(sname)}")
            out.append(f"    email: {_q(email)}")
            out.append(f"    phone: {_q(phone)}")
    out += ["tenants:", f"  - id: {_q(tenant)}", f"    name: {_q(name)}"]
    out.append("    staff:" if data.staff else "    staff: []")
    for ref, sname, role, channels, active in data.staff:
        out.append(f"      - ref: {_q(ref)}")
        out.append(f"        name: {_q(sname)}")
        out.append(f"        role: {_q(role)}")
        out.append(f"        channels: {_flow(_stored_channels(channels))}")
        out.append(f"        active: {'true' if active else 'false'}")
    out.append("    teams:" if data.teams else "    teams: []")
    for ref, tname, members in data.teams:
        out.append(f"      - ref: {_q(ref)}")
        out.append(f"        name: {_q(tname)}")
        out.append(f"        members: [{', '.join(_q(m) for m in members)}]")
    out.append("    users:" if data.users else "    users: []")
    for user in data.users:
        user_id, ref = user[0], user[1]
        values = dict(zip(_USER_FIELDS, user[2:], strict=True))
        out.append(f"      - ref: {_q(ref)}")
        for column, key in _USER_FIELDS.items():
            value = values[column]
            if key == "active":
                out.append(f"        active: {'true' if value else 'false'}")
            else:
                out.append(f"        {key}: {_q_or_null(value)}")
        devices = data.devices.get(user_id, [])
        out.append("        devices:" if devices else "        devices: []")
        for protocol, identity, dtype, group, supervision, serial, supplier, status in devices:
            out.append(f"          - protocol: {_q(protocol)}")
            out.append(f"            identity: {_q(identity)}")
            out.append(f"            type: {_q(dtype)}")
            out.append(f"            group: {int(group)}")
            out.append(
                f"            supervision_s: {'null' if supervision is None else int(supervision)}"
            )
            out.append(f"            serial: {_q(serial)}")
            out.append(f"            supplier: {_q_or_null(supplier)}")
            out.append(f"            status: {_q(status)}")
        plan = data.plans.get(user_id)
        if plan is not None:
            out.append("        plan:")
            for key, value in zip(_PLAN_FIELDS, plan, strict=True):
                out.append(f"          {key}: {_q_or_null(value)}")
        contacts = data.contacts.get(user_id, [])
        out.append("        contacts:" if contacts else "        contacts: []")
        for cname, relation, phone, has_key, channels in contacts:
            out.append(f"          - name: {_q(cname)}")
            out.append(f"            relation: {_q(relation)}")
            out.append(f"            phone: {_q(phone)}")
            out.append(f"            has_key: {'true' if has_key else 'false'}")
            out.append(f"            channels: {_flow(_stored_channels(channels))}")
    return "\n".join(out) + "\n"


_EXPORT_CSV_COLUMNS = (*_USER_COLUMNS, *_DEVICE_COLUMNS, *_PLAN_COLUMNS)


def _yes_no(value: Any) -> str:
    return "yes" if value else "no"


def _export_csv(data: _Export) -> str:
    tenant = data.tenant[0]
    most = max((len(c) for c in data.contacts.values()), default=0)
    numbers = range(1, max(most, 1) + 1)
    header = [*_EXPORT_CSV_COLUMNS]
    for n in numbers:
        header += [f"contact{n}_{f}" for f in _CONTACT_FIELDS]
    buffer = io.StringIO()
    buffer.write(
        f"# alarmd directory export: the users of tenant {tenant} (personal data and key box\n"
        "# codes). Users only: staff, teams and suppliers are in the YAML export, and of a\n"
        "# contact's channels only sms has a column.\n"
    )
    writer = csv.writer(buffer, delimiter=";", lineterminator="\n")
    writer.writerow(header)
    for user in data.users:
        user_id = user[0]
        values = dict(zip(_USER_FIELDS, user[2:], strict=True))
        cells: dict[str, str] = {
            "tenant": tenant,
            "ref": user[1],
            "first_name": values["first_name"],
            "last_name": values["last_name"],
            "address": values["address"],
            "postcode": values["postcode"],
            "phone": values["phone"],
            "group": values["user_group"] or "",
            "location": values["location"],
            "active": _yes_no(values["active"]),
        }
        plan = data.plans.get(user_id)
        if plan is not None:
            for key, value in zip(_PLAN_FIELDS, plan, strict=True):
                cells[key] = value or ""
        contacts = data.contacts.get(user_id, [])
        for n, (cname, relation, phone, has_key, channels) in enumerate(contacts, start=1):
            cells[f"contact{n}_name"] = cname
            cells[f"contact{n}_phone"] = phone
            cells[f"contact{n}_relation"] = relation
            cells[f"contact{n}_has_key"] = _yes_no(has_key)
            cells[f"contact{n}_sms"] = _stored_channels(channels).get("sms", "")
        devices: list[tuple[Any, ...] | None] = [*data.devices.get(user_id, [])] or [None]
        for i, device in enumerate(devices):
            row = cells if i == 0 else {"tenant": tenant, "ref": user[1]}
            if device is not None:
                protocol, identity, dtype, group, supervision, serial, supplier, status = device
                row = {
                    **row,
                    "device_protocol": protocol,
                    "device_identity": identity,
                    "device_type": dtype,
                    "device_group": str(group),
                    "device_supervision_s": "" if supervision is None else str(supervision),
                    "device_serial": serial,
                    "device_supplier": supplier or "",
                    "device_status": status,
                }
            writer.writerow([row.get(column, "") for column in header])
    return buffer.getvalue()


def export_job(tenant: str, fmt: Format) -> Callable[[sqlite3.Connection], str | None]:
    """A job (it only reads) that writes one tenant as a directory file the import accepts
    and that re-imports as a no-op; None if no such tenant is stored.

    YAML is the whole picture: the suppliers its devices name, staff, teams, and the users
    with their devices (serial, supplier, status), plans (key box included) and contacts.
    CSV has the users only (see the CSV format above; of a contact's channels only ``sms``
    has a column). Erased users are never written, nor are devices without a user.
    """

    def job(conn: sqlite3.Connection) -> str | None:
        data = _read_export(conn, tenant)
        if data is None:
            return None
        return _export_yaml(data) if fmt == "yaml" else _export_csv(data)

    return job

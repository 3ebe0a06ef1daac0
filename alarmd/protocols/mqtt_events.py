"""MQTT device events: topic + payload in, ``Event`` or a dead-letter reason out. Pure.

Theory of operation
-------------------
There is no standard MQTT alarm payload (PROTOCOLS.md 3), so two doors lead in:

* the **native schema** ``alarmd.event/1`` on ``alarmd/v1/<tenant>/device/<device_id>/event``,
  documented as a JSON Schema in ``schemas/alarmd-event-v1.schema.json``, read by
  ``parse_native``; it is strict (unknown keys are errors) because the schema is versioned:
  a device that wants new fields sends a new ``schema``;
* **vendor mappings** (``VendorMapping``, built from plain configuration data by
  ``parse_mapping``): a topic pattern plus JSON paths to the device id, the event type, the
  time, the location and the message id, and a table vendor value -> kind. A new sensor is
  a configuration entry, not code. ``parse_mapped`` is lenient where the vendor is sloppy
  and strict only where it must be: without a device id nothing can be attributed (error),
  but an unknown event value, a missing event field, or an unreadable time still yield an
  alarm (``OTHER_ALARM`` flagged ``UNKNOWN_CODE``, or the time dropped and the event flagged
  ``STALE_TIMESTAMP``): an alarm is never dropped because a vendor changed a string.

Both return an ``MqttResult``: events, or an ``MqttError`` whose ``reason`` is a short
metric label (one of ``REASONS``) and whose ``message`` names the field, for the log line
and for ``dead_letter_payload``, which the transport publishes to its dead-letter topic.
Nothing raises on bad input: the MQTT consumer must never stop on a payload.

The payload is hostile until validated: its size is checked before decoding, its nesting
depth by a regex scan before ``json.loads`` (so 10,000 nested brackets never reach the
recursive decoder), UTF-8 is strict, duplicate keys and NaN/Infinity are refused (two
readers of the same payload must not disagree about it).

De-duplication: QoS 1 delivers at least once, so every event carries
``dedup_key = "mqtt:<tenant>:<device_id>:<id>"``; intake stores a redelivery once.
Nothing here reads a clock (``now`` is passed in), touches a socket or imports asyncio.
"""

from __future__ import annotations

import base64
import difflib
import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

from alarmd.model import Condition, Event, EventKind, Flag, Priority

PROTOCOL: Final = "mqtt"
SCHEMA_ID: Final = "alarmd.event/1"
DEAD_LETTER_SCHEMA: Final = "alarmd.deadletter/1"
MAX_PAYLOAD_BYTES: Final = 16384
# The native payload is 3 levels deep (event > location/attributes > value); vendor payloads
# nest more. 32 is far beyond any real sensor and far below the decoder's recursion limit.
MAX_DEPTH: Final = 32
MAX_ID_CHARS: Final = 64
MAX_TEXT_CHARS: Final = 200
MAX_ZONE_CHARS: Final = 64
MAX_ATTRIBUTES: Final = 32
MAX_ATTRIBUTE_VALUE_CHARS: Final = 256
MAX_CODE_CHARS: Final = 64
# Device clocks: a persistent session delivers what was published during an outage, so old
# times are normal for hours; a time from the future or days old means a wrong clock.
MAX_FUTURE: Final = timedelta(minutes=5)
MAX_PAST: Final = timedelta(hours=48)

# Every ``MqttError.reason``: a closed set, so the metric's label cardinality is bounded.
REASONS: Final = (
    "topic",  # not a topic this parser takes (layout, tenant or device id)
    "too_large",
    "encoding",  # not UTF-8
    "too_deep",
    "json",  # not JSON, or NaN/Infinity
    "duplicate_key",
    "not_object",
    "schema_version",
    "missing_field",
    "unknown_field",
    "invalid_field",
    "device_id",  # mapped: no usable device id in the payload or topic
)

_TENANT_RE: Final = re.compile(r"[a-z0-9-]{1,63}")
_DEVICE_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Printable ASCII without space or colon: the id ends the de-dup key after the device id,
# which may itself hold colons, so a colon here would let two devices' keys collide
# (device "a:b" + id "c" and device "a" + id "b:c").
_MSG_ID_RE: Final = re.compile(r"[!-9;-~]{1,64}")
_VENDOR_ID_RE: Final = re.compile(r"[!-~]{1,64}")
_LOCATION_CODE_RE: Final = re.compile(r"[a-z0-9_]{1,32}")
_ATTRIBUTE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# RFC 3339 date-time; the offset is required ("Z" or +hh:mm), a bare local time is ambiguous.
_RFC3339_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)
# Strings first, so brackets inside strings are skipped; anything else is not a token here.
# Possessive and with an optional closing quote, so an unterminated string is consumed once
# to the end: with backtracking, '"\\"\\"...' costs O(n²) (seconds for 16 KiB).
_JSON_SCAN_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*+"?|[\[\]{}]', re.DOTALL)


@dataclass(frozen=True, slots=True)
class MqttError:
    """Why a message was refused: ``reason`` for the metric, ``message`` for people."""

    reason: str  # one of REASONS
    field: str | None  # the payload field at fault ("location.lat"), None for the whole
    message: str  # names the field; goes to the log and the dead-letter topic


@dataclass(frozen=True, slots=True)
class MqttResult:
    """What one MQTT message yielded: events, or an error (never both)."""

    events: tuple[Event, ...] = ()
    error: MqttError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Invalid(Exception):
    """Internal: carries an ``MqttError`` out of nested validation; never leaves the module."""

    def __init__(self, reason: str, fld: str | None, message: str) -> None:
        super().__init__(message)
        self.error = MqttError(reason, fld, message)


def _fail(result_error: _Invalid) -> MqttResult:
    return MqttResult(events=(), error=result_error.error)


def _show(value: object) -> str:
    """A payload value quoted for a message, bounded: messages must not carry whole payloads."""
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else value
    if len(text) > 40:
        text = text[:37] + "..."
    return json.dumps(text, ensure_ascii=True) if isinstance(value, str) else text


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- safe JSON -----------------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise _Invalid("json", None, f"payload: {name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise _Invalid("duplicate_key", key, f"{key}: the key appears twice in one object")
        obj[key] = value
    return obj


def _decode_json(payload: bytes, max_bytes: int) -> object:
    """Decode ``payload`` as JSON under the size, depth, UTF-8 and duplicate-key rules."""
    if len(payload) > max_bytes:
        raise _Invalid(
            "too_large", None, f"payload: {len(payload)} bytes, more than the {max_bytes} allowed"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid("encoding", None, f"payload: not UTF-8 (byte {exc.start})") from None
    depth = 0
    for match in _JSON_SCAN_RE.finditer(text):
        bracket = match.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _Invalid("too_deep", None, f"payload: nested deeper than {MAX_DEPTH} levels")
        elif bracket in "]}":
            depth -= 1
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _Invalid:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit
        raise _Invalid("json", None, f"payload: not JSON ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


# --- shared field readers ---------------------------------------------------------------------


def _parse_rfc3339(value: str) -> datetime | None:
    """An aware UTC datetime from an RFC 3339 string, or None if it is not one."""
    match = _RFC3339_RE.fullmatch(value)
    if match is None:
        return None
    date, clock, fraction, offset = match.groups()
    micro = (fraction or "").ljust(6, "0")[:6]
    offset = "+00:00" if offset in "Zz" else offset
    try:
        parsed = datetime.fromisoformat(f"{date}T{clock}.{micro}{offset}")
    except ValueError:
        return None
    return parsed.astimezone(UTC)


def _time_flags(occurred_at: datetime | None, now: datetime) -> frozenset[Flag]:
    if occurred_at is None:
        return frozenset()
    if occurred_at - now > MAX_FUTURE or now - occurred_at > MAX_PAST:
        return frozenset({Flag.STALE_TIMESTAMP})
    return frozenset()


def _number_text(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


def _scalar_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number_text(value)
    return value


def _did_you_mean(value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value.lower(), choices, n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


_KINDS: Final = [k.value for k in EventKind]
_CONDITIONS: Final = [c.value for c in Condition]
_PRIORITY_NAMES: Final = {p.name.lower(): p for p in Priority}


def _kind(value: object, fld: str) -> EventKind:
    if not isinstance(value, str):
        raise _Invalid("invalid_field", fld, f"{fld}: must be a string, not {_type_name(value)}")
    if value not in _KINDS:
        raise _Invalid(
            "invalid_field",
            fld,
            f"{fld}: {_show(value)} is not an event kind{_did_you_mean(value, _KINDS)}",
        )
    return EventKind(value)


def _condition(value: object, fld: str) -> Condition:
    if not isinstance(value, str) or value not in _CONDITIONS:
        hint = _did_you_mean(value, _CONDITIONS) if isinstance(value, str) else ""
        raise _Invalid(
            "invalid_field",
            fld,
            f"{fld}: {_show(value)} is not one of alarm, restore, status{hint}",
        )
    return Condition(value)


def _priority(value: object, fld: str) -> Priority:
    # 2.0 is the integer 2 in JSON (and in JSON Schema's "integer")
    if isinstance(value, int | float) and not isinstance(value, bool) and value in range(5):
        return Priority(int(value))
    if isinstance(value, str) and value.lower() in _PRIORITY_NAMES:
        return _PRIORITY_NAMES[value.lower()]
    raise _Invalid(
        "invalid_field",
        fld,
        f"{fld}: {_show(value)} is not a priority (0-4 or none, low, normal, high, critical)",
    )


def _bounded_string(value: object, fld: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise _Invalid("invalid_field", fld, f"{fld}: must be a string, not {_type_name(value)}")
    if not 1 <= len(value) <= max_chars:
        raise _Invalid("invalid_field", fld, f"{fld}: must be 1-{max_chars} characters")
    return value


def _finite(value: object, fld: str, low: float, high: float) -> float:
    number = _number(value, r"(?!)")  # a JSON number only, never a string
    if number is None or not math.isfinite(number) or not low <= number <= high:
        raise _Invalid("invalid_field", fld, f"{fld}: {_show(value)} is not a number {low}-{high}")
    return number


# --- the native schema ------------------------------------------------------------------------

_NATIVE_KEYS: Final = frozenset(
    {"schema", "id", "kind", "condition", "time", "priority", "zone", "text", "location",
     "attributes"}
)  # fmt: skip
_LOCATION_KEYS: Final = ("code", "lat", "lon", "accuracy_m", "text")
# Event attribute names alarmd fills itself; a device's own attributes may not shadow them.
_RESERVED_ATTRIBUTES: Final = frozenset({"tenant", "geo", "mqtt.mapping"})


def parse_native_topic(topic: str) -> tuple[str, str] | None:
    """``(tenant, device_id)`` from ``alarmd/v1/<tenant>/device/<device_id>/event``, else None."""
    levels = topic.split("/")
    if (
        len(levels) != 6
        or levels[0] != "alarmd"
        or levels[1] != "v1"
        or levels[3] != "device"
        or levels[5] != "event"
        or _TENANT_RE.fullmatch(levels[2]) is None
        or _DEVICE_RE.fullmatch(levels[4]) is None
    ):
        return None
    return levels[2], levels[4]


def native_topic(tenant: str, device_id: str) -> str:
    """The topic a device publishes its native events on (for simulators and tests)."""
    return f"alarmd/v1/{tenant}/device/{device_id}/event"


def _location(value: object, fld: str = "location") -> dict[str, str]:
    """Validate a native ``location`` object into flat event attributes."""
    if not isinstance(value, dict):
        raise _Invalid("invalid_field", fld, f"{fld}: must be an object, not {_type_name(value)}")
    for key in value:
        if key not in _LOCATION_KEYS:
            raise _Invalid(
                "unknown_field",
                f"{fld}.{key}",
                f"{fld}.{key}: unknown field (known: {', '.join(_LOCATION_KEYS)})",
            )
    out: dict[str, str] = {}
    if "code" in value:
        code = value["code"]
        if not isinstance(code, str) or _LOCATION_CODE_RE.fullmatch(code) is None:
            raise _Invalid(
                "invalid_field",
                f"{fld}.code",
                f"{fld}.code: {_show(code)} must match [a-z0-9_]{{1,32}}, e.g. home, away",
            )
        out["location.code"] = code
    if ("lat" in value) != ("lon" in value):
        missing = "lon" if "lat" in value else "lat"
        raise _Invalid(
            "missing_field", f"{fld}.{missing}", f"{fld}.{missing}: lat and lon go together"
        )
    if "lat" in value:
        lat = _finite(value["lat"], f"{fld}.lat", -90, 90)
        lon = _finite(value["lon"], f"{fld}.lon", -180, 180)
        out["geo"] = f"{lat!r},{lon!r}"
    if "accuracy_m" in value:
        accuracy = _finite(value["accuracy_m"], f"{fld}.accuracy_m", 0, 1e7)
        out["location.accuracy_m"] = repr(accuracy)
    if "text" in value:
        out["location.text"] = _bounded_string(value["text"], f"{fld}.text", MAX_TEXT_CHARS)
    return out


def _attributes(value: object) -> dict[str, str]:
    fld = "attributes"
    if not isinstance(value, dict):
        raise _Invalid("invalid_field", fld, f"{fld}: must be an object, not {_type_name(value)}")
    if len(value) > MAX_ATTRIBUTES:
        raise _Invalid("invalid_field", fld, f"{fld}: more than {MAX_ATTRIBUTES} entries")
    out: dict[str, str] = {}
    for key, item in value.items():
        sub = f"{fld}.{key}"
        if (
            _ATTRIBUTE_KEY_RE.fullmatch(key) is None
            or key in _RESERVED_ATTRIBUTES
            or key.startswith("location.")
        ):
            raise _Invalid(
                "invalid_field",
                sub[:80],
                f"{fld}: key {_show(key)} must match [A-Za-z0-9_.-]{{1,64}} and not be "
                "tenant, geo, mqtt.mapping or location.*",
            )
        if isinstance(item, str):
            if len(item) > MAX_ATTRIBUTE_VALUE_CHARS:
                raise _Invalid(
                    "invalid_field", sub, f"{sub}: longer than {MAX_ATTRIBUTE_VALUE_CHARS} chars"
                )
            out[key] = item
        elif isinstance(item, bool | int) or (isinstance(item, float) and math.isfinite(item)):
            out[key] = _scalar_text(item)
            if len(out[key]) > MAX_ATTRIBUTE_VALUE_CHARS:
                raise _Invalid("invalid_field", sub, f"{sub}: number too long")
        else:
            raise _Invalid(
                "invalid_field",
                sub,
                f"{sub}: must be a string, number or boolean, not {_type_name(item)}",
            )
    return out


def parse_native(
    topic: str, payload: bytes, *, now: datetime, max_bytes: int = MAX_PAYLOAD_BYTES
) -> MqttResult:
    """One native ``alarmd.event/1`` message -> one ``Event``, or an error. Never raises."""
    try:
        return _parse_native(topic, payload, now, max_bytes)
    except _Invalid as invalid:
        return _fail(invalid)
    except Exception as exc:  # pragma: no cover - a bug here must not stop the consumer
        return MqttResult(error=MqttError("invalid_field", None, f"internal: {_first_line(exc)}"))


def _parse_native(topic: str, payload: bytes, now: datetime, max_bytes: int) -> MqttResult:
    where = parse_native_topic(topic)
    if where is None:
        raise _Invalid(
            "topic",
            None,
            "topic: expected alarmd/v1/<tenant [a-z0-9-]>/device/<device_id "
            "[A-Za-z0-9._:-]{1,64}>/event",
        )
    tenant, device_id = where
    doc = _decode_json(payload, max_bytes)
    if not isinstance(doc, dict):
        raise _Invalid("not_object", None, f"payload: must be a JSON object, not {_type_name(doc)}")
    for key in doc:
        if key not in _NATIVE_KEYS:
            hint = _did_you_mean(key, sorted(_NATIVE_KEYS))
            raise _Invalid("unknown_field", key[:80], f"{_show(key)}: unknown field{hint}")
    for key in ("schema", "id", "kind"):
        if key not in doc:
            raise _Invalid("missing_field", key, f"{key}: required")
    if doc["schema"] != SCHEMA_ID:
        raise _Invalid(
            "schema_version",
            "schema",
            f'schema: {_show(doc["schema"])} is not "{SCHEMA_ID}", the version this alarmd reads',
        )
    msg_id = doc["id"]
    if not isinstance(msg_id, str) or _MSG_ID_RE.fullmatch(msg_id) is None:
        raise _Invalid(
            "invalid_field",
            "id",
            "id: must be 1-64 printable ASCII characters without spaces or colons",
        )
    kind = _kind(doc["kind"], "kind")
    condition = _condition(doc["condition"], "condition") if "condition" in doc else Condition.ALARM
    occurred_at: datetime | None = None
    if "time" in doc:
        raw_time = doc["time"]
        occurred_at = _parse_rfc3339(raw_time) if isinstance(raw_time, str) else None
        if occurred_at is None:
            raise _Invalid(
                "invalid_field",
                "time",
                f"time: {_show(raw_time)} is not an RFC 3339 time with offset, "
                'e.g. "2026-01-01T12:00:00+01:00"',
            )
    priority = _priority(doc["priority"], "priority") if "priority" in doc else None
    zone = _bounded_string(doc["zone"], "zone", MAX_ZONE_CHARS) if "zone" in doc else None
    text = _bounded_string(doc["text"], "text", MAX_TEXT_CHARS) if "text" in doc else None
    attributes: dict[str, str] = {"tenant": tenant}
    if "location" in doc:
        attributes.update(_location(doc["location"]))
    if "attributes" in doc:
        attributes.update(_attributes(doc["attributes"]))
    event = Event(
        protocol=PROTOCOL,
        source=device_id,
        kind=kind,
        condition=condition,
        priority=priority if priority is not None else kind.default_priority,
        received_at=now,
        dedup_key=f"mqtt:{tenant}:{device_id}:{msg_id}",
        raw=payload,
        code=kind.value,
        zone=zone,
        occurred_at=occurred_at,
        text=text,
        flags=_time_flags(occurred_at, now),
        attributes=MappingProxyType(attributes),
    )
    return MqttResult(events=(event,))


# --- dead letters -----------------------------------------------------------------------------


def dead_letter_payload(topic: str, payload: bytes, error: MqttError) -> bytes:
    """The JSON body the transport publishes to its dead-letter topic for a refused message.

    The original payload travels as text when it is UTF-8 (readable in any MQTT client)
    and as base64 otherwise, so nothing is lost and the body is always valid JSON.
    """
    body: dict[str, object] = {
        "schema": DEAD_LETTER_SCHEMA,
        "topic": topic,
        "reason": error.reason,
        "field": error.field,
        "message": error.message,
    }
    try:
        body["payload_text"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        body["payload_base64"] = base64.b64encode(payload).decode("ascii")
    # ensure_ascii: a topic with lone surrogates still encodes
    return json.dumps(body, ensure_ascii=True, sort_keys=True).encode("ascii")


# --- topic patterns ---------------------------------------------------------------------------

_CAPTURE_RE: Final = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def _pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid topic pattern, or None when it is."""
    if not pattern:
        return "empty"
    levels = pattern.split("/")
    names: set[str] = set()
    for i, level in enumerate(levels):
        if level == "#":
            if i != len(levels) - 1:
                return "# must be the last level"
        elif level == "+":
            continue
        elif (capture := _CAPTURE_RE.fullmatch(level)) is not None:
            if capture.group(1) in names:
                return f"capture {{{capture.group(1)}}} appears twice"
            names.add(capture.group(1))
        elif any(c in level for c in "+#{}"):
            return f"level {level!r}: a wildcard or capture must fill its whole level"
    return None


def match_topic(pattern: str, topic: str) -> dict[str, str] | None:
    """The captures if ``topic`` matches ``pattern``, else None (also for invalid input).

    ``pattern`` is an MQTT topic filter (MQTT 3.1.1 4.7 / 5.0 4.7) in which a level may also
    be a named capture ``{name}``, which matches exactly like ``+`` and records the level:
    ``acme/{device}/events/#``. ``+`` matches one level (possibly empty); ``#`` matches the
    rest, including none (``a/#`` matches ``a``); a topic starting with ``$`` is not matched
    by a wildcard or capture in the first level (``#`` does not see ``$SYS/...``).
    """
    if _pattern_problem(pattern) is not None or not topic or any(c in topic for c in "+#\0"):
        return None
    p_levels = pattern.split("/")
    t_levels = topic.split("/")
    captures: dict[str, str] = {}
    for i, p in enumerate(p_levels):
        wildcard = p in ("+", "#") or p.startswith("{")
        if i == 0 and wildcard and topic.startswith("$"):
            return None
        if p == "#":
            return captures
        if i >= len(t_levels):
            return None
        if p == "+":
            continue
        if p.startswith("{"):
            captures[p[1:-1]] = t_levels[i]
        elif p != t_levels[i]:
            return None
    return captures if len(p_levels) == len(t_levels) else None


def subscription_filter(pattern: str) -> str:
    """The MQTT filter to subscribe with for ``pattern``: captures become ``+``."""
    return _CAPTURE_RE.sub("+", pattern)


# --- JSON paths -------------------------------------------------------------------------------

_PATH_STEP_RE: Final = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d{1,4})\]|\[\"([^\"\\]{1,64})\"\]")

JsonPath = tuple[str | int, ...]


def parse_json_path(path: str) -> JsonPath:
    """``$.dev.id``, ``$.events[0].type``, ``$["odd key"]`` -> steps. ValueError if not one.

    A deliberately small subset of JSONPath: member and index steps only, no filters or
    wildcards, because a mapping must pick exactly one value.
    """
    if not path.startswith("$"):
        raise ValueError(f"{path!r} must start with $")
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        match = _PATH_STEP_RE.match(path, pos)
        if match is None:
            raise ValueError(f"{path!r}: cannot read from position {pos}")
        member, index, quoted = match.groups()
        steps.append(int(index) if index is not None else (member or quoted))
        pos = match.end()
    return tuple(steps)


class _Missing:
    pass


_MISSING: Final = _Missing()


def _lookup(doc: object, path: JsonPath) -> object:
    """The value at ``path``, or ``_MISSING``; JSON null counts as missing."""
    node = doc
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return _MISSING
            node = node[step]
        elif not isinstance(node, dict) or step not in node:
            return _MISSING
        else:
            node = node[step]
    return _MISSING if node is None else node


# --- vendor mappings --------------------------------------------------------------------------


class TimeFormat(enum.StrEnum):
    RFC3339 = "rfc3339"
    EPOCH_S = "epoch_s"
    EPOCH_MS = "epoch_ms"


@dataclass(frozen=True, slots=True)
class ValueMapping:
    """What one vendor event value means in the taxonomy."""

    kind: EventKind
    condition: Condition = Condition.ALARM
    priority: Priority | None = None  # None: the kind's default


@dataclass(frozen=True, slots=True)
class VendorMapping:
    """One vendor's topic and payload layout, built from configuration by ``parse_mapping``."""

    name: str
    topic: str  # pattern: MQTT filter with {name} captures
    tenant: str  # a tenant slug, or "{capture}" to take it from the topic
    device_id: str | JsonPath  # a capture name (str) or a JSON path (tuple)
    event: JsonPath | None  # None: every message on the topic is the same event
    values: Mapping[str, ValueMapping]
    default: ValueMapping | None = None  # for unmapped values; None: OTHER_ALARM, flagged
    time: JsonPath | None = None
    time_format: TimeFormat = TimeFormat.RFC3339
    id: JsonPath | None = None  # None: a hash of the payload (see _message_id)
    location: Mapping[str, JsonPath] = field(default_factory=lambda: MappingProxyType({}))
    zone: JsonPath | None = None
    text: JsonPath | None = None

    @property
    def subscription(self) -> str:
        return subscription_filter(self.topic)


_MAPPING_KEYS: Final = frozenset(
    {"name", "topic", "tenant", "device_id", "event", "values", "default_kind", "time",
     "time_format", "id", "location", "zone", "text"}
)  # fmt: skip


def _config_str(data: Mapping[str, object], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ValueError(f"{key}: required")
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: must be a non-empty string")
    return value


def _config_path(data: Mapping[str, object], key: str) -> JsonPath | None:
    value = _config_str(data, key)
    if value is None:
        return None
    try:
        return parse_json_path(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _config_value(value: object, fld: str) -> ValueMapping:
    """``"exit"`` or ``{"kind": "exit", "condition": "restore", "priority": 3}``."""
    try:
        if isinstance(value, str):
            return ValueMapping(_kind(value, fld))
        if isinstance(value, Mapping):
            unknown = set(value) - {"kind", "condition", "priority"}
            if unknown:
                raise ValueError(f"{fld}.{sorted(map(str, unknown))[0]}: unknown key")
            if "kind" not in value:
                raise ValueError(f"{fld}.kind: required")
            return ValueMapping(
                _kind(value["kind"], f"{fld}.kind"),
                _condition(value["condition"], f"{fld}.condition")
                if "condition" in value
                else Condition.ALARM,
                _priority(value["priority"], f"{fld}.priority") if "priority" in value else None,
            )
    except _Invalid as invalid:
        raise ValueError(invalid.error.message) from None
    raise ValueError(f"{fld}: must be a kind or an object with kind, condition, priority")


def parse_mapping(data: Mapping[str, object]) -> VendorMapping:
    """A ``VendorMapping`` from plain configuration data; ValueError naming the field.

    Keys: ``name``, ``topic`` (required; ``acme/{device}/events/#``), ``tenant`` (required:
    a slug or ``{capture}``), ``device_id`` (required: ``{capture}`` or ``$.json.path``),
    ``event`` (path to the vendor's event value), ``values`` (vendor value -> kind, or
    -> ``{kind, condition, priority}``), ``default_kind`` (same forms, for values not in
    ``values``), ``time`` + ``time_format`` (rfc3339, epoch_s, epoch_ms), ``id`` (path to
    the message id; absent: a hash of the payload), ``location`` (``{code, lat, lon,
    accuracy_m, text}`` -> paths), ``zone``, ``text``. Unknown keys are errors.
    """
    unknown = sorted(str(k) for k in data if k not in _MAPPING_KEYS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key")
    name = _config_str(data, "name", required=True)
    topic = _config_str(data, "topic", required=True)
    assert name is not None and topic is not None
    problem = _pattern_problem(topic)
    if problem is not None:
        raise ValueError(f"topic: {problem}")
    captures = set(_CAPTURE_RE.findall(topic))

    def source(key: str) -> str | JsonPath:
        value = _config_str(data, key, required=True)
        assert value is not None
        capture = _CAPTURE_RE.fullmatch(value)
        if capture is not None:
            if capture.group(1) not in captures:
                raise ValueError(f"{key}: {value} is not a capture in the topic")
            return capture.group(1)
        if value.startswith("$"):
            path = _config_path(data, key)
            assert path is not None
            return path
        raise ValueError(f"{key}: must be {{capture}} or a $.json.path")

    tenant_spec = _config_str(data, "tenant", required=True)
    assert tenant_spec is not None
    if (capture := _CAPTURE_RE.fullmatch(tenant_spec)) is not None:
        if capture.group(1) not in captures:
            raise ValueError(f"tenant: {tenant_spec} is not a capture in the topic")
    elif _TENANT_RE.fullmatch(tenant_spec) is None:
        raise ValueError("tenant: must be a slug [a-z0-9-] or a {capture}")
    device_id = source("device_id")
    raw_values = data.get("values", {})
    if not isinstance(raw_values, Mapping):
        raise ValueError("values: must be an object of vendor value -> kind")
    values = {str(k): _config_value(v, f"values.{k}") for k, v in raw_values.items()}
    default = (
        _config_value(data["default_kind"], "default_kind")
        if data.get("default_kind") is not None
        else None
    )
    event = _config_path(data, "event")
    if event is None and default is None:
        raise ValueError("event: required unless default_kind says what every message means")
    time_format_text = _config_str(data, "time_format") or TimeFormat.RFC3339.value
    if time_format_text not in {f.value for f in TimeFormat}:
        raise ValueError("time_format: must be rfc3339, epoch_s or epoch_ms")
    raw_location = data.get("location", {})
    if not isinstance(raw_location, Mapping):
        raise ValueError("location: must be an object of field -> $.json.path")
    location: dict[str, JsonPath] = {}
    for key in raw_location:
        if key not in _LOCATION_KEYS:
            raise ValueError(f"location.{key}: unknown key (known: {', '.join(_LOCATION_KEYS)})")
        location[key] = _config_path(raw_location, key) or ()
    if ("lat" in location) != ("lon" in location):
        raise ValueError("location: lat and lon go together")
    return VendorMapping(
        name=name,
        topic=topic,
        tenant=tenant_spec,
        device_id=device_id,
        event=event,
        values=MappingProxyType(values),
        default=default,
        time=_config_path(data, "time"),
        time_format=TimeFormat(time_format_text),
        id=_config_path(data, "id"),
        location=MappingProxyType(location),
        zone=_config_path(data, "zone"),
        text=_config_path(data, "text"),
    )


def _message_id(mapping: VendorMapping, doc: object, payload: bytes) -> str:
    """The de-dup id: the vendor's message id, else a digest of the whole payload.

    The digest makes an MQTT redelivery (same bytes) a duplicate, which is what QoS 1
    needs. Its cost: a sensor that sends byte-identical payloads for two real events
    (no id, no time) has the second taken as a duplicate, so such a mapping should name
    ``id`` or ``time`` (the time is part of the payload, hence of the digest).
    """
    if mapping.id is not None:
        value = _lookup(doc, mapping.id)
        if isinstance(value, str | int) and not isinstance(value, bool):
            text = str(value)
            if _VENDOR_ID_RE.fullmatch(text) is not None:  # escaped: see _MSG_ID_RE
                return text.replace("%", "%25").replace(":", "%3A")
    return "hash-" + hashlib.blake2b(payload, digest_size=12).hexdigest()


def _mapped_time(value: object, time_format: TimeFormat) -> datetime | None:
    if time_format is TimeFormat.RFC3339:
        return _parse_rfc3339(value) if isinstance(value, str) else None
    number = _number(value, r"\d{1,16}(\.\d{1,6})?")
    if number is None:
        return None
    seconds = number / 1000 if time_format is TimeFormat.EPOCH_MS else number
    # 2000-01-01 .. 2100-01-01: outside is a unit mix-up (ms as s) or an unset clock
    if not math.isfinite(seconds) or not 946684800 <= seconds < 4102444800:
        return None
    return datetime.fromtimestamp(seconds, UTC)


def _mapped_scalar(value: object) -> str | None:
    if isinstance(value, str | int | float | bool) and not (
        isinstance(value, float) and not math.isfinite(value)
    ):
        return _scalar_text(value)
    return None


def parse_mapped(
    mapping: VendorMapping,
    topic: str,
    payload: bytes,
    *,
    now: datetime,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> MqttResult:
    """One vendor message -> one ``Event`` through ``mapping``, or an error. Never raises."""
    try:
        return _parse_mapped(mapping, topic, payload, now, max_bytes)
    except _Invalid as invalid:
        return _fail(invalid)
    except Exception as exc:  # pragma: no cover - a bug here must not stop the consumer
        return MqttResult(error=MqttError("invalid_field", None, f"internal: {_first_line(exc)}"))


def _parse_mapped(
    mapping: VendorMapping, topic: str, payload: bytes, now: datetime, max_bytes: int
) -> MqttResult:
    captures = match_topic(mapping.topic, topic)
    if captures is None:
        raise _Invalid("topic", None, f"topic: does not match {mapping.topic}")
    doc = _decode_json(payload, max_bytes)
    tenant = mapping.tenant
    if (capture := _CAPTURE_RE.fullmatch(tenant)) is not None:
        tenant = captures[capture.group(1)]
        if _TENANT_RE.fullmatch(tenant) is None:
            raise _Invalid("topic", None, f"topic: tenant {_show(tenant)} is not a slug [a-z0-9-]")
    if isinstance(mapping.device_id, str):
        device_value: object = captures[mapping.device_id]
        device_field = f"topic {{{mapping.device_id}}}"
    else:
        device_value = _lookup(doc, mapping.device_id)
        device_field = "$" + "".join(
            f"[{s}]" if isinstance(s, int) else f".{s}" for s in mapping.device_id
        )
    device_id = (
        str(device_value)
        if isinstance(device_value, str | int) and not isinstance(device_value, bool)
        else ""
    )
    if _DEVICE_RE.fullmatch(device_id) is None:
        shown = "missing" if device_value is _MISSING else _show(device_value)
        raise _Invalid(
            "device_id",
            device_field,
            f"{device_field}: device id {shown} is not [A-Za-z0-9._:-]{{1,64}}",
        )

    flags: set[Flag] = set()
    attributes: dict[str, str] = {"tenant": tenant, "mqtt.mapping": mapping.name}
    code = ""
    if mapping.event is not None:
        code = _mapped_scalar(_lookup(doc, mapping.event)) or ""
        code = code[:MAX_CODE_CHARS]
    meaning = mapping.values.get(code) if mapping.event is not None else None
    if meaning is None:
        meaning = mapping.default
        if meaning is None:  # never drop an alarm: unknown means "someone must look"
            meaning = ValueMapping(EventKind.OTHER_ALARM)
            flags.add(Flag.UNKNOWN_CODE)

    occurred_at: datetime | None = None
    if mapping.time is not None:
        raw_time = _lookup(doc, mapping.time)
        if raw_time is not _MISSING:
            occurred_at = _mapped_time(raw_time, mapping.time_format)
            if occurred_at is None:  # keep the alarm, show that its time was unreadable
                flags.add(Flag.STALE_TIMESTAMP)
                attributes["time.raw"] = (_mapped_scalar(raw_time) or "?")[:64]
    flags |= _time_flags(occurred_at, now)

    loc = {key: _lookup(doc, path) for key, path in mapping.location.items()}
    for key, converter in (("code", _LOCATION_CODE_RE), ("text", None)):
        value = _mapped_scalar(loc.get(key, _MISSING))
        if value is not None and (converter is None or converter.fullmatch(value)):
            attributes[f"location.{key}"] = value[:MAX_TEXT_CHARS]
    lat, lon = _coordinate(loc.get("lat"), 90), _coordinate(loc.get("lon"), 180)
    if lat is not None and lon is not None:
        attributes["geo"] = f"{lat!r},{lon!r}"
    accuracy = _coordinate(loc.get("accuracy_m"), 1e7)
    if accuracy is not None and accuracy >= 0:
        attributes["location.accuracy_m"] = repr(accuracy)

    zone = _mapped_scalar(_lookup(doc, mapping.zone)) if mapping.zone is not None else None
    text = _mapped_scalar(_lookup(doc, mapping.text)) if mapping.text is not None else None
    msg_id = _message_id(mapping, doc, payload)
    event = Event(
        protocol=PROTOCOL,
        source=device_id,
        kind=meaning.kind,
        condition=meaning.condition,
        priority=meaning.priority
        if meaning.priority is not None
        else meaning.kind.default_priority,
        received_at=now,
        dedup_key=f"mqtt:{tenant}:{device_id}:{msg_id}",
        raw=payload,
        code=code,
        zone=zone[:MAX_ZONE_CHARS] if zone else None,
        occurred_at=occurred_at,
        text=text[:MAX_TEXT_CHARS] if text else None,
        flags=frozenset(flags),
        attributes=MappingProxyType(attributes),
    )
    return MqttResult(events=(event,))


def _coordinate(value: object, bound: float) -> float | None:
    """A finite number within ±bound (vendors send numbers or numeric strings), else None."""
    number = _number(value, r"-?\d{1,9}(\.\d{1,12})?")
    if number is None:
        return None
    return number if math.isfinite(number) and -bound <= number <= bound else None


def _number(value: object, string_form: str) -> float | None:
    """A JSON number, or a string of the form ``string_form`` (vendors quote numbers)."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and re.fullmatch(string_form, value):
            return float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return None

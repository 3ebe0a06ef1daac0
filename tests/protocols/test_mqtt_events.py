"""The pure MQTT event core: native schema, vendor mappings, topic patterns, hostile JSON.

The JSON Schema file and the hand-written codec must agree: each of the schema's examples
validates under jsonschema (a test-only dependency) and parses with ``parse_native``, and
every refused native payload below is also refused by the schema where the schema can
express the rule. Hostile payloads (10,000-deep nesting, 1 MB, duplicate keys, invalid
UTF-8) must come back as error results; Hypothesis checks that nothing ever raises and that
generated valid payloads come back field for field.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmd.model import Condition, Event, EventKind, Flag, Priority
from alarmd.protocols.mqtt_events import (
    MAX_DEPTH,
    REASONS,
    MqttError,
    MqttResult,
    VendorMapping,
    dead_letter_payload,
    match_topic,
    native_topic,
    parse_json_path,
    parse_mapped,
    parse_mapping,
    parse_native,
    subscription_filter,
)

NOW = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
TOPIC = "alarmd/v1/oslo/device/pendant-42/event"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "alarmd-event-v1.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def native(**fields: object) -> bytes:
    doc: dict[str, object] = {"schema": "alarmd.event/1", "id": "m-1", "kind": "fall"}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def only_event(result: MqttResult) -> Event:
    assert result.error is None, result.error
    assert len(result.events) == 1
    return result.events[0]


def error_of(result: MqttResult) -> MqttError:
    assert result.events == ()
    assert result.error is not None
    assert result.error.reason in REASONS
    return result.error


# --- the schema file and the codec agree --------------------------------------------------------


def test_schema_file_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["properties"]["kind"]["enum"] == [k.value for k in EventKind]
    assert len(SCHEMA["examples"]) >= 2


@pytest.mark.parametrize("example", SCHEMA["examples"], ids=lambda e: e["kind"])
def test_schema_examples_validate_by_schema_and_codec(example: dict[str, object]) -> None:
    VALIDATOR.validate(example)
    event = only_event(parse_native(TOPIC, json.dumps(example).encode(), now=NOW))
    assert event.kind == EventKind(str(example["kind"]))


# --- native examples ----------------------------------------------------------------------------


def test_fall_alarm_with_location_and_attributes() -> None:
    payload = native(
        id="6f1c2a9e",
        time="2026-01-01T09:58:00+01:00",
        zone="pendant-1",
        text="Fall detected",
        location={"code": "home", "lat": 59.9139, "lon": 10.7522, "accuracy_m": 12.5},
        attributes={"battery_pct": 81, "firmware": "2.4.1", "worn": True},
    )
    event = only_event(parse_native(TOPIC, payload, now=NOW))
    assert event.protocol == "mqtt"
    assert event.source == "pendant-42"
    assert event.kind is EventKind.FALL
    assert event.condition is Condition.ALARM
    assert event.priority is Priority.CRITICAL
    assert event.dedup_key == "mqtt:oslo:pendant-42:6f1c2a9e"
    assert event.raw == payload
    assert event.received_at == NOW
    assert event.occurred_at == datetime(2026, 1, 1, 8, 58, tzinfo=UTC)
    assert event.zone == "pendant-1" and event.text == "Fall detected"
    assert event.flags == frozenset()
    assert dict(event.attributes) == {
        "tenant": "oslo",
        "location.code": "home",
        "geo": "59.9139,10.7522",
        "location.accuracy_m": "12.5",
        "battery_pct": "81",
        "firmware": "2.4.1",
        "worn": "true",
    }


def test_battery_low_restore_with_priority_name() -> None:
    payload = native(kind="battery_low", condition="restore", priority="high")
    event = only_event(parse_native(TOPIC, payload, now=NOW))
    assert (event.kind, event.condition, event.priority) == (
        EventKind.BATTERY_LOW,
        Condition.RESTORE,
        Priority.HIGH,
    )
    assert event.occurred_at is None


def test_heartbeat_is_a_test_event_with_no_priority() -> None:
    event = only_event(parse_native(TOPIC, native(kind="test", condition="status"), now=NOW))
    assert event.kind is EventKind.TEST and event.priority is Priority.NONE


@pytest.mark.parametrize(
    ("time", "stale"),
    [
        ("2026-01-01T09:04:00Z", False),  # 4 min ahead: clock drift
        ("2026-01-01T09:06:00Z", True),  # 6 min ahead
        ("2025-12-30T10:00:00Z", False),  # 47 h: queued while alarmd was down
        ("2025-12-29T08:00:00Z", True),
    ],
)
def test_device_time_outside_window_is_kept_and_flagged(time: str, stale: bool) -> None:
    event = only_event(parse_native(TOPIC, native(time=time), now=NOW))
    assert event.occurred_at is not None
    assert (Flag.STALE_TIMESTAMP in event.flags) is stale


# --- every validation error names its field -----------------------------------------------------

INVALID_NATIVE: list[tuple[bytes, str, str | None, str]] = [
    (native(kind="faal"), "invalid_field", "kind", 'did you mean "fall"?'),
    (native(kind=3), "invalid_field", "kind", "must be a string"),
    (native(schema="alarmd.event/2"), "schema_version", "schema", "alarmd.event/1"),
    (native(id=""), "invalid_field", "id", "1-64"),
    (native(id="a b"), "invalid_field", "id", "without spaces"),
    (native(id="urn:1"), "invalid_field", "id", "colons"),
    (native(id="x" * 65), "invalid_field", "id", "1-64"),
    (native(condition="restored"), "invalid_field", "condition", 'did you mean "restore"?'),
    (native(time="2026-01-01T10:00:00"), "invalid_field", "time", "offset"),
    (native(time="2026-13-01T10:00:00Z"), "invalid_field", "time", "RFC 3339"),
    (native(time=1767225600), "invalid_field", "time", "RFC 3339"),
    (native(priority=5), "invalid_field", "priority", "0-4"),
    (native(priority=True), "invalid_field", "priority", "0-4"),
    (native(priority="urgent"), "invalid_field", "priority", "0-4"),
    (native(zone=""), "invalid_field", "zone", "1-64"),
    (native(text="x" * 201), "invalid_field", "text", "1-200"),
    (native(location="home"), "invalid_field", "location", "object"),
    (native(location={"code": "Home!"}), "invalid_field", "location.code", "[a-z0-9_]"),
    (native(location={"lat": 91, "lon": 0}), "invalid_field", "location.lat", "-90"),
    (native(location={"lat": 0, "lon": "10"}), "invalid_field", "location.lon", "number"),
    (native(location={"lat": 59.9}), "missing_field", "location.lon", "together"),
    (native(location={"accuracy_m": -1}), "invalid_field", "location.accuracy_m", "number"),
    (native(location={"floor": 2}), "unknown_field", "location.floor", "unknown field"),
    (native(attributes=[1]), "invalid_field", "attributes", "object"),
    (native(attributes={"a": {"b": 1}}), "invalid_field", "attributes.a", "string, number"),
    (native(attributes={"a": None}), "invalid_field", "attributes.a", "string, number"),
    (native(attributes={"geo": "1,2"}), "invalid_field", "attributes.geo", "geo"),
    (native(attributes={"bad key": 1}), "invalid_field", "attributes.bad key", "must match"),
    (native(attributes={f"k{i}": i for i in range(33)}), "invalid_field", "attributes", "32"),
    (native(attributes={"a": "x" * 257}), "invalid_field", "attributes.a", "256"),
    (native(kindd="fall"), "unknown_field", "kindd", 'did you mean "kind"?'),
    (b'{"schema": "alarmd.event/1", "kind": "fall"}', "missing_field", "id", "id: required"),
    (b'{"schema": "alarmd.event/1", "id": "1"}', "missing_field", "kind", "kind: required"),
    (b'{"id": "1", "kind": "fall"}', "missing_field", "schema", "schema: required"),
]


# A regex cannot see that month 13 does not exist, and jsonschema checks "format" only with
# optional extra packages: the codec is stricter than the schema here.
SCHEMA_BLIND = {native(time="2026-13-01T10:00:00Z")}


@pytest.mark.parametrize(("payload", "reason", "fld", "fragment"), INVALID_NATIVE)
def test_invalid_native_payload_names_its_field(
    payload: bytes, reason: str, fld: str | None, fragment: str
) -> None:
    error = error_of(parse_native(TOPIC, payload, now=NOW))
    assert (error.reason, error.field) == (reason, fld)
    assert fld is None or error.message.startswith((fld, "attributes", f'"{fld}"'))
    assert fragment in error.message
    # the schema refuses it too: the file and the code describe the same format
    if payload not in SCHEMA_BLIND:
        assert not VALIDATOR.is_valid(json.loads(payload))


def test_kind_message_reads_well() -> None:
    error = error_of(parse_native(TOPIC, native(kind="faal"), now=NOW))
    assert error.message == 'kind: "faal" is not an event kind; did you mean "fall"?'


# --- topics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "alarmd/v1/Oslo/device/d1/event",  # tenant is lower case
        "alarmd/v1/os_lo/device/d1/event",
        "alarmd/v1//device/d1/event",
        "alarmd/v1/oslo/device//event",
        "alarmd/v1/oslo/device/d 1/event",
        "alarmd/v1/oslo/device/d1/d2/event",
        "alarmd/v1/oslo/device/" + "d" * 65 + "/event",
        "alarmd/v2/oslo/device/d1/event",
        "alarmd/v1/oslo/staff/d1/event",
        "alarmd/v1/oslo/device/d1/event/",
        "/alarmd/v1/oslo/device/d1/event",
        "alarmd/v1/oslo/device/d1/ack",
        "",
    ],
)
def test_bad_native_topic_is_a_topic_error(topic: str) -> None:
    assert error_of(parse_native(topic, native(), now=NOW)).reason == "topic"


def test_device_id_charset_and_native_topic() -> None:
    topic = native_topic("bergen-2", "AA:BB:CC.01_x-9")
    event = only_event(parse_native(topic, native(), now=NOW))
    assert event.source == "AA:BB:CC.01_x-9"
    assert event.dedup_key == "mqtt:bergen-2:AA:BB:CC.01_x-9:m-1"


# --- hostile JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "too_deep"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "too_deep"),
        (b'{"schema": "' + b"x" * 1_000_000 + b'"}', "too_large"),
        (b'{"id": "1", "id": "2", "schema": "alarmd.event/1", "kind": "fall"}', "duplicate_key"),
        (b"[]", "not_object"),
        (b'"fall"', "not_object"),
        (b"null", "not_object"),
        (b"42", "not_object"),
        (b"", "json"),
        (b"{", "json"),
        (b"\xff\xfe{}", "encoding"),
        (b'{"schema": "\xc3\x28"}', "encoding"),
        (b'{"schema": "alarmd.event/1", "id": "1", "kind": "fall", "priority": NaN}', "json"),
        (b'{"x": Infinity}', "json"),
        (b'{"x": 1' + b"0" * 5000 + b"}", "json"),  # past Python's int digit limit
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_hostile_json_is_an_error_not_an_exception(payload: bytes, reason: str) -> None:
    # with the size bound lifted, so each check is seen on its own
    if reason != "too_large":
        assert error_of(parse_native(TOPIC, payload, now=NOW, max_bytes=10**7)).reason == reason
    assert not parse_native(TOPIC, payload, now=NOW).ok


def test_ten_thousand_levels_within_the_size_bound_are_too_deep() -> None:
    assert error_of(parse_native(TOPIC, b"[" * 10_000, now=NOW)).reason == "too_deep"


@pytest.mark.parametrize(
    "payload",
    [b'"' + b'\\"' * 8000, b'["' + b'\\"' * 8000, b'{"a": "' + b"\\" * 16000, b'"[' * 8000],
)
def test_unterminated_strings_are_json_errors(payload: bytes) -> None:
    """A backtracking depth scan once took ~2 s on these 16 KiB (a cheap way to stall the
    consumer); how long they take now is measured by bench/mqtt_hostile_json.py, not here."""
    assert error_of(parse_native(TOPIC, payload, now=NOW)).reason in ("json", "too_deep")


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    event = only_event(parse_native(TOPIC, native(text="[" * 150 + "{"), now=NOW))
    assert event.text == "[" * 150 + "{"


def test_depth_limit_is_exact() -> None:
    deep_ok = b'{"a":' * (MAX_DEPTH - 1) + b"{}" + b"}" * (MAX_DEPTH - 1)
    too_deep = b'{"a":' * MAX_DEPTH + b"{}" + b"}" * MAX_DEPTH
    assert error_of(parse_native(TOPIC, deep_ok, now=NOW)).reason == "unknown_field"
    assert error_of(parse_native(TOPIC, too_deep, now=NOW)).reason == "too_deep"


def test_max_bytes_is_configurable() -> None:
    payload = native()
    assert parse_native(TOPIC, payload, now=NOW, max_bytes=len(payload)).ok
    error = error_of(parse_native(TOPIC, payload, now=NOW, max_bytes=len(payload) - 1))
    assert error.reason == "too_large"


# --- dead letters -------------------------------------------------------------------------------


def test_dead_letter_carries_text_payload_reason_and_message() -> None:
    payload = native(kind="faal")
    error = error_of(parse_native(TOPIC, payload, now=NOW))
    body = json.loads(dead_letter_payload(TOPIC, payload, error))
    assert body == {
        "schema": "alarmd.deadletter/1",
        "topic": TOPIC,
        "reason": "invalid_field",
        "field": "kind",
        "message": error.message,
        "payload_text": payload.decode(),
    }


def test_dead_letter_carries_binary_payload_as_base64() -> None:
    payload = b"\x00\xff\xfe garbage"
    error = error_of(parse_native(TOPIC, payload, now=NOW))
    body = json.loads(dead_letter_payload("weird/\udcff/topic", payload, error))
    assert base64.b64decode(body["payload_base64"]) == payload
    assert "payload_text" not in body and body["reason"] == "encoding"


# --- topic patterns -----------------------------------------------------------------------------

MATCH_TABLE: list[tuple[str, str, dict[str, str] | None]] = [
    ("sport/tennis/player1", "sport/tennis/player1", {}),
    ("sport/tennis/player1", "sport/tennis/player2", None),
    ("sport/#", "sport", {}),  # '#' matches the parent level too
    ("sport/#", "sport/", {}),
    ("sport/#", "sport/tennis/player1/ranking", {}),
    ("sport/tennis/#", "sport/tennis", {}),
    ("sport/tennis/#", "sport/tennisx", None),
    ("#", "sport/tennis", {}),
    ("#", "/", {}),
    ("sport/+", "sport/tennis", {}),
    ("sport/+", "sport", None),
    ("sport/+", "sport/", {}),  # '+' matches an empty level
    ("sport/+", "sport/tennis/player1", None),
    ("+/+", "/finance", {}),
    ("/+", "/finance", {}),
    ("+", "/finance", None),
    ("+/tennis/#", "sport/tennis/player1", {}),
    ("#", "$SYS/broker/load", None),  # wildcards do not see $ topics at the first level
    ("+/monitor/Clients", "$SYS/monitor/Clients", None),
    ("$SYS/#", "$SYS/monitor/Clients", {}),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", {}),
    ("{device}/x", "$dev/x", None),
    ("acme/{device}/events/#", "acme/D-17/events", {"device": "D-17"}),
    ("acme/{device}/events/#", "acme/D-17/events/door/1", {"device": "D-17"}),
    ("{tenant}/bed/{device}", "oslo/bed/B1", {"tenant": "oslo", "device": "B1"}),
    ("acme/{device}/events", "acme/D-17/other", None),
    ("Sport/+", "sport/x", None),  # case-sensitive
    # invalid patterns and topic names never match (and never raise)
    ("sport/#/ranking", "sport/tennis/ranking", None),
    ("sport+", "sport+", None),
    ("sport/te#", "sport/te#", None),
    ("a/{x}/{x}", "a/b/c", None),
    ("", "", None),
    ("sport/+", "sport/+", None),  # '+' is not allowed in a topic name
    ("#", "", None),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCH_TABLE)
def test_match_topic(pattern: str, topic: str, expected: dict[str, str] | None) -> None:
    assert match_topic(pattern, topic) == expected


def test_subscription_filter_turns_captures_into_plus() -> None:
    assert subscription_filter("{tenant}/acme/{device}/#") == "+/acme/+/#"


def test_json_path_subset() -> None:
    assert parse_json_path("$.dev.id") == ("dev", "id")
    assert parse_json_path("$.events[0].type") == ("events", 0, "type")
    assert parse_json_path('$["odd key"]') == ("odd key",)
    assert parse_json_path("$") == ()
    for bad in ("dev.id", "$.a..b", "$.a[*]", "$[?(@.x)]"):
        with pytest.raises(ValueError, match=r"must start|cannot read"):
            parse_json_path(bad)


# --- vendor mappings ----------------------------------------------------------------------------

DOOR_CONFIG: dict[str, object] = {
    "name": "acme-door",
    "topic": "acme/{site}/door/#",
    "tenant": "oslo",
    "device_id": "$.dev.id",
    "event": "$.evt",
    "values": {
        "OPEN": "exit",
        "CLOSED": {"kind": "exit", "condition": "restore"},
        "TAMPER": {"kind": "tamper", "priority": 3},
        "BATT": "battery_low",
    },
    "time": "$.ts",
    "time_format": "epoch_s",
    "location": {"text": "$.room"},
}
BED_CONFIG: dict[str, object] = {
    "name": "sleepwell-bed",
    "topic": "sleepwell/{tenant}/{device}/state",
    "tenant": "{tenant}",
    "device_id": "{device}",
    "event": "$.state",
    "values": {"out_of_bed": "bed_exit", "in_bed": {"kind": "bed_exit", "condition": "restore"}},
    "time": "$.t",
    "time_format": "epoch_ms",
    "id": "$.seq",
    "location": {"code": "$.place", "lat": "$.pos.lat", "lon": "$.pos.lon"},
}


@pytest.fixture
def door() -> VendorMapping:
    return parse_mapping(DOOR_CONFIG)


@pytest.fixture
def bed() -> VendorMapping:
    return parse_mapping(BED_CONFIG)


def test_door_sensor_open_is_an_exit_alarm(door: VendorMapping) -> None:
    payload = b'{"dev":{"id":"D-17"},"evt":"OPEN","ts":1767258000,"room":"front door"}'
    event = only_event(parse_mapped(door, "acme/site-1/door/1", payload, now=NOW))
    assert event.kind is EventKind.EXIT and event.condition is Condition.ALARM
    assert event.priority is Priority.HIGH
    assert event.source == "D-17" and event.code == "OPEN"
    assert event.occurred_at == datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    assert event.flags == frozenset()
    assert event.dedup_key.startswith("mqtt:oslo:D-17:hash-")
    assert event.attributes["location.text"] == "front door"
    assert event.attributes["mqtt.mapping"] == "acme-door"
    assert door.subscription == "acme/+/door/#"


def test_door_sensor_closed_is_a_restore_and_tamper_has_its_priority(
    door: VendorMapping,
) -> None:
    closed = parse_mapped(door, "acme/s/door", b'{"dev":{"id":"D-17"},"evt":"CLOSED"}', now=NOW)
    assert only_event(closed).condition is Condition.RESTORE
    tamper = parse_mapped(door, "acme/s/door", b'{"dev":{"id":"D-17"},"evt":"TAMPER"}', now=NOW)
    assert only_event(tamper).priority is Priority.HIGH


def test_payload_hash_makes_a_redelivery_a_duplicate(door: VendorMapping) -> None:
    a = b'{"dev":{"id":"D-17"},"evt":"OPEN","ts":1767225600}'
    b = b'{"dev":{"id":"D-17"},"evt":"OPEN","ts":1767225601}'
    key = [only_event(parse_mapped(door, "acme/s/door", p, now=NOW)).dedup_key for p in (a, a, b)]
    assert key[0] == key[1] != key[2]


def test_bed_sensor_ms_epoch_and_topic_captures(bed: VendorMapping) -> None:
    payload = (
        b'{"state":"out_of_bed","t":1767258000123,"seq":991,'
        b'"place":"care_home","pos":{"lat":"63.43","lon":10.39}}'
    )
    event = only_event(parse_mapped(bed, "sleepwell/trondheim/B-9/state", payload, now=NOW))
    assert event.kind is EventKind.BED_EXIT and event.priority is Priority.NORMAL
    assert event.source == "B-9"
    assert event.dedup_key == "mqtt:trondheim:B-9:991"
    assert event.occurred_at == datetime(2026, 1, 1, 9, 0, 0, 123000, tzinfo=UTC)
    assert event.attributes["tenant"] == "trondheim"
    assert event.attributes["location.code"] == "care_home"
    assert event.attributes["geo"] == "63.43,10.39"


def test_vendor_ids_with_colons_cannot_collide_across_devices(bed: VendorMapping) -> None:
    a = parse_mapped(bed, "sleepwell/t/a:b/state", b'{"seq":"c"}', now=NOW)
    b = parse_mapped(bed, "sleepwell/t/a/state", b'{"seq":"b:c"}', now=NOW)
    assert only_event(a).dedup_key == "mqtt:t:a:b:c"
    assert only_event(b).dedup_key == "mqtt:t:a:b%3Ac"


def test_unmapped_value_is_other_alarm_flagged_never_dropped(bed: VendorMapping) -> None:
    for payload in (b'{"state":"sitting_up","seq":1}', b'{"seq":2}', b'{"state":{"x":1}}'):
        event = only_event(parse_mapped(bed, "sleepwell/t/B-9/state", payload, now=NOW))
        assert event.kind is EventKind.OTHER_ALARM
        assert Flag.UNKNOWN_CODE in event.flags


def test_default_kind_applies_to_unmapped_values() -> None:
    mapping = parse_mapping({**DOOR_CONFIG, "default_kind": "assistance"})
    event = only_event(
        parse_mapped(mapping, "acme/s/door", b'{"dev":{"id":"D1"},"evt":"HELP"}', now=NOW)
    )
    assert event.kind is EventKind.ASSISTANCE and Flag.UNKNOWN_CODE not in event.flags


def test_unreadable_vendor_time_keeps_the_alarm_and_flags_it(door: VendorMapping) -> None:
    for ts in (b'"yesterday"', b"1767225600000", b"true"):  # ms given as s: year 57970
        payload = b'{"dev":{"id":"D-17"},"evt":"OPEN","ts":' + ts + b"}"
        event = only_event(parse_mapped(door, "acme/s/door", payload, now=NOW))
        assert event.kind is EventKind.EXIT and event.occurred_at is None
        assert Flag.STALE_TIMESTAMP in event.flags


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"evt":"OPEN"}', "device_id"),
        (b'{"dev":{"id":"D 17"},"evt":"OPEN"}', "device_id"),
        (b'{"dev":{"id":true},"evt":"OPEN"}', "device_id"),
        (b'{"dev":{"id":"D-17"},"evt":"OPEN","evt":"CLOSED"}', "duplicate_key"),
        (b"[" * 10_000, "too_deep"),
        (b"\xff", "encoding"),
        (b"OPEN", "json"),
    ],
)
def test_mapped_errors(door: VendorMapping, payload: bytes, reason: str) -> None:
    error = error_of(parse_mapped(door, "acme/s/door", payload, now=NOW))
    assert error.reason == reason
    if reason == "device_id":
        assert error.field == "$.dev.id" and "$.dev.id" in error.message


def test_mapped_topic_must_match(door: VendorMapping, bed: VendorMapping) -> None:
    assert error_of(parse_mapped(door, "acme/s/window", b"{}", now=NOW)).reason == "topic"
    bad_tenant = parse_mapped(bed, "sleepwell/Oslo/B1/state", b'{"state":"in_bed"}', now=NOW)
    assert error_of(bad_tenant).reason == "topic"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"topic": "acme/#/door"}, "topic: # must be the last level"),
        ({"topic": None}, "topic: required"),
        ({"device_id": "{dev}"}, "device_id: {dev} is not a capture"),
        ({"device_id": "dev.id"}, "device_id: must be {capture}"),
        ({"event": "$.evt[x]"}, "event: "),
        ({"values": {"OPEN": "exitt"}}, 'values.OPEN: "exitt" is not an event kind'),
        ({"values": {"OPEN": {"kind": "exit", "cond": "x"}}}, "values.OPEN.cond: unknown key"),
        ({"values": {"OPEN": {"kind": "exit", "condition": "x"}}}, "values.OPEN.condition"),
        ({"values": ["OPEN"]}, "values: must be an object"),
        ({"time_format": "epoch_us"}, "time_format: must be"),
        ({"tenant": "Oslo"}, "tenant: must be a slug"),
        ({"location": {"lat": "$.lat"}}, "location: lat and lon go together"),
        ({"location": {"floor": "$.f"}}, "location.floor: unknown key"),
        ({"evnt": "$.evt"}, "evnt: unknown key"),
        ({"event": None}, "event: required unless default_kind"),
        ({"default_kind": 7}, "default_kind: must be"),
    ],
)
def test_parse_mapping_errors_name_the_field(change: dict[str, object], fragment: str) -> None:
    data = {**DOOR_CONFIG, **change}
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_mapping({k: v for k, v in data.items() if v is not None})


def test_mapping_without_event_path_uses_default_kind() -> None:
    mapping = parse_mapping(
        {
            "name": "panic-button",
            "topic": "btn/{device}/pressed",
            "tenant": "oslo",
            "device_id": "{device}",
            "default_kind": "assistance",
        }
    )
    event = only_event(parse_mapped(mapping, "btn/B7/pressed", b"{}", now=NOW))
    assert event.kind is EventKind.ASSISTANCE and event.source == "B7"


# --- properties ---------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
native_keys = st.sampled_from(
    ["schema", "id", "kind", "condition", "time", "priority", "zone", "text", "location",
     "attributes", "dev", "evt", "ts"]
)  # fmt: skip
near_miss_payloads = st.dictionaries(native_keys, json_values, max_size=8).map(
    lambda d: json.dumps(d).encode()
)
topics = st.text(max_size=60) | st.sampled_from(
    [TOPIC, "acme/s/door", "sleepwell/t/B-9/state", "$SYS/x", "alarmd/v1/oslo/device/x/event"]
)
payloads = st.binary(max_size=200) | near_miss_payloads


@settings(max_examples=150, deadline=None)
@given(topic=topics, payload=payloads)
def test_any_input_gives_a_result_never_an_exception(topic: str, payload: bytes) -> None:
    door, bed = parse_mapping(DOOR_CONFIG), parse_mapping(BED_CONFIG)
    for result in (
        parse_native(topic, payload, now=NOW),
        parse_mapped(door, topic, payload, now=NOW),
        parse_mapped(bed, topic, payload, now=NOW),
    ):
        assert isinstance(result, MqttResult)
        assert (result.error is None) == (len(result.events) == 1)
        if result.error is not None:
            assert result.error.reason in REASONS
            json.loads(dead_letter_payload(topic, payload, result.error))


@settings(max_examples=200, deadline=None)
@given(
    pattern=st.text(alphabet="ab/+#{}$x", max_size=12),
    topic=st.text(alphabet="ab/$x+#", max_size=12),
)
def test_match_topic_never_raises(pattern: str, topic: str) -> None:
    assert match_topic(pattern, topic) in (None,) or isinstance(match_topic(pattern, topic), dict)


printable_id = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"),
    min_size=1,
    max_size=64,
)
short_text = st.text(min_size=1, max_size=200)
offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30))]
)


@st.composite
def valid_native(draw: st.DrawFn) -> dict[str, object]:
    doc: dict[str, object] = {
        "schema": "alarmd.event/1",
        "id": draw(printable_id),
        "kind": draw(st.sampled_from([k.value for k in EventKind])),
    }
    if draw(st.booleans()):
        doc["condition"] = draw(st.sampled_from([c.value for c in Condition]))
    if draw(st.booleans()):
        when = draw(
            st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1))
        ).replace(tzinfo=draw(offsets))
        doc["time"] = when.isoformat()
    if draw(st.booleans()):
        doc["priority"] = draw(st.integers(0, 4) | st.sampled_from(["low", "CRITICAL", "none"]))
    if draw(st.booleans()):
        doc["zone"] = draw(st.text(min_size=1, max_size=64))
    if draw(st.booleans()):
        doc["text"] = draw(short_text)
    if draw(st.booleans()):
        loc: dict[str, object] = {}
        if draw(st.booleans()):
            loc["code"] = draw(st.from_regex(r"\A[a-z0-9_]{1,32}\Z"))
        if draw(st.booleans()):
            loc["lat"] = draw(st.floats(-90, 90))
            loc["lon"] = draw(st.floats(-180, 180))
        doc["location"] = loc
    if draw(st.booleans()):
        doc["attributes"] = draw(
            st.dictionaries(
                st.from_regex(r"\Aa[A-Za-z0-9_.-]{0,20}\Z"),
                st.text(max_size=256) | st.integers(-(10**12), 10**12) | st.booleans(),
                max_size=8,
            )
        )
    return doc


@settings(max_examples=100, deadline=None)
@given(doc=valid_native(), tenant=st.from_regex(r"\A[a-z0-9-]{1,20}\Z"))
def test_valid_native_payload_comes_back_field_for_field(
    doc: Mapping[str, object], tenant: str
) -> None:
    assert VALIDATOR.is_valid(doc)
    payload = json.dumps(doc).encode()
    event = only_event(parse_native(native_topic(tenant, "dev-1"), payload, now=NOW))
    kind = EventKind(str(doc["kind"]))
    assert event.kind is kind
    assert event.condition == Condition(str(doc.get("condition", "alarm")))
    assert event.dedup_key == f"mqtt:{tenant}:dev-1:{doc['id']}"
    assert event.raw == payload and event.source == "dev-1" and event.protocol == "mqtt"
    if "priority" in doc:
        p = doc["priority"]
        assert event.priority == (Priority(p) if isinstance(p, int) else Priority[str(p).upper()])
    else:
        assert event.priority == kind.default_priority
    if "time" in doc:
        assert event.occurred_at == datetime.fromisoformat(str(doc["time"]))
    else:
        assert event.occurred_at is None
    assert event.zone == doc.get("zone") and event.text == doc.get("text")
    loc = doc.get("location", {})
    assert isinstance(loc, dict)
    assert event.attributes.get("location.code") == loc.get("code")
    if "lat" in loc:
        lat, lon = (float(x) for x in event.attributes["geo"].split(","))
        assert (lat, lon) == (loc["lat"], loc["lon"])
    attrs = doc.get("attributes", {})
    assert isinstance(attrs, dict)
    for key, value in attrs.items():
        expected = value if isinstance(value, str) else json.dumps(value)
        assert event.attributes[key] == expected
    assert event.attributes["tenant"] == tenant

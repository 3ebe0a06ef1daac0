"""SMS alarm texts and rings -> the taxonomy."""

from __future__ import annotations

import pytest

from alarmd.model import Condition, EventKind, Flag, Priority
from alarmd.protocols.sms_alarms import (
    SenderConfig,
    SmsAlarmTable,
    TextPattern,
    normalise_number,
)

TABLE = SmsAlarmTable.of(
    [
        ("+4700000011", SenderConfig(name="Astrid's unit")),
        (
            "004700000012",
            SenderConfig(
                patterns=(TextPattern("^Z1", EventKind.FALL), TextPattern("^Z2", EventKind.EXIT)),
                use_defaults=False,
                ring_kind=EventKind.FALL,
            ),
        ),
    ]
)


@pytest.mark.parametrize(
    ("text", "kind", "condition"),
    [
        ("ALARM", EventKind.ASSISTANCE, Condition.ALARM),
        ("alarm fra enhet 3", EventKind.ASSISTANCE, Condition.ALARM),
        ("FALL detektert", EventKind.FALL, Condition.ALARM),
        ("Lavt batteri", EventKind.BATTERY_LOW, Condition.ALARM),
        ("LAVT BATTERI 10%", EventKind.BATTERY_LOW, Condition.ALARM),
        ("Strømbrudd", EventKind.MAINS_LOST, Condition.ALARM),
        ("Strøm tilbake", EventKind.MAINS_LOST, Condition.RESTORE),
        ("Røykvarsler", EventKind.FIRE, Condition.ALARM),
        ("Test", EventKind.TEST, Condition.ALARM),
    ],
)
def test_default_patterns(text: str, kind: EventKind, condition: Condition) -> None:
    c = TABLE.classify_sms("+4700000011", text)
    assert (c.kind, c.condition, c.flags) == (kind, condition, frozenset())
    assert c.priority == kind.default_priority


def test_own_patterns_first_and_without_defaults() -> None:
    assert TABLE.classify_sms("+4700000012", "z1 aktivert").kind is EventKind.FALL
    assert TABLE.classify_sms("+4700000012", "Z2").kind is EventKind.EXIT
    c = TABLE.classify_sms("+4700000012", "ALARM")  # no defaults for this unit
    assert c.kind is EventKind.OTHER_ALARM and c.flags == {Flag.UNKNOWN_CODE}


def test_unknown_text_from_known_sender() -> None:
    c = TABLE.classify_sms("+4700000011", "xyzzy")
    assert c.kind is EventKind.OTHER_ALARM
    assert c.flags == {Flag.UNKNOWN_CODE}
    assert c.priority is Priority.HIGH


def test_unknown_sender_is_kept_and_flagged() -> None:
    c = TABLE.classify_sms("+4700000099", "FALL")
    assert c.kind is EventKind.OTHER_ALARM
    assert c.flags == {Flag.UNREGISTERED}


def test_ring() -> None:
    assert TABLE.classify_ring("+4700000011").kind is EventKind.ASSISTANCE
    assert TABLE.classify_ring("00000012").kind is EventKind.FALL  # 8 digits: +47
    unknown = TABLE.classify_ring("+4700000099")
    assert unknown.kind is EventKind.OTHER_ALARM and unknown.flags == {Flag.UNREGISTERED}


def test_priority_override() -> None:
    table = SmsAlarmTable.of(
        [("+4700000013", SenderConfig((TextPattern("x", EventKind.WATER, priority=Priority.LOW),)))]
    )
    assert table.classify_sms("+4700000013", "X").priority is Priority.LOW


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("+4700000011", "+4700000011"),
        ("004700000011", "+4700000011"),
        ("00 00 00 11", "+4700000011"),
    ],
)
def test_normalise(raw: str, norm: str) -> None:
    assert normalise_number(raw) == norm


def test_bad_pattern_fails_early() -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011
        TextPattern("(", EventKind.FALL)

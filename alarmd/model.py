"""The cross-layer types of alarmd: what a device said, normalised.

Every protocol codec turns its bytes into ``Event`` values from this module, and
nothing downstream of intake (store, routing, console) ever looks at protocol
bytes again except to show them. The taxonomy is PROTOCOLS.md section 5: a small
vocabulary of kinds, each in one category (alarm, technical, informational) with a
default priority. Restore events carry the kind of the condition they restore
(``MAINS_LOST`` + ``RESTORE`` means "mains back").

Only plain data lives here: frozen dataclasses and enums, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType


class Category(enum.StrEnum):
    """Why an event matters: a person may need help, a device needs repair, or neither."""

    ALARM = "alarm"
    TECHNICAL = "technical"
    INFO = "info"


class Priority(enum.IntEnum):
    """Higher is more urgent. Operators' queues sort on this first."""

    NONE = 0
    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


class EventKind(enum.StrEnum):
    """The one vocabulary every protocol maps into (PROTOCOLS.md section 5)."""

    # alarms: a person may need help
    ASSISTANCE = "assistance"
    FALL = "fall"
    INACTIVITY = "inactivity"
    FIRE = "fire"
    GAS = "gas"
    WATER = "water"
    EXIT = "exit"  # door / wandering
    BED_EXIT = "bed_exit"  # bed or chair exit
    EPILEPSY = "epilepsy"
    MEDICATION = "medication"
    PANIC = "panic"
    INTRUDER = "intruder"
    OTHER_ALARM = "other_alarm"
    # technical: a device or line needs attention
    BATTERY_LOW = "battery_low"
    MAINS_LOST = "mains_lost"
    LINK_LOST = "link_lost"
    TAMPER = "tamper"
    DEVICE_FAULT = "device_fault"
    RADIO_SUPERVISION = "radio_supervision"
    # informational
    TEST = "test"  # test transmissions and heartbeats
    CANCEL = "cancel"
    CARER_PRESENT = "carer_present"
    CHECK_OUT = "check_out"

    @property
    def category(self) -> Category:
        return _CATEGORY[self]

    @property
    def default_priority(self) -> Priority:
        return _DEFAULT_PRIORITY[self]


_ALARM_KINDS = {
    EventKind.ASSISTANCE: Priority.HIGH,
    EventKind.FALL: Priority.CRITICAL,
    EventKind.INACTIVITY: Priority.HIGH,
    EventKind.FIRE: Priority.CRITICAL,
    EventKind.GAS: Priority.CRITICAL,
    EventKind.WATER: Priority.NORMAL,
    EventKind.EXIT: Priority.HIGH,
    EventKind.BED_EXIT: Priority.NORMAL,
    EventKind.EPILEPSY: Priority.CRITICAL,
    EventKind.MEDICATION: Priority.NORMAL,
    EventKind.PANIC: Priority.CRITICAL,
    EventKind.INTRUDER: Priority.HIGH,
    EventKind.OTHER_ALARM: Priority.HIGH,
}
_TECHNICAL_KINDS = {
    EventKind.BATTERY_LOW: Priority.LOW,
    EventKind.MAINS_LOST: Priority.LOW,
    EventKind.LINK_LOST: Priority.NORMAL,
    EventKind.TAMPER: Priority.NORMAL,
    EventKind.DEVICE_FAULT: Priority.NORMAL,
    EventKind.RADIO_SUPERVISION: Priority.NORMAL,
}
_INFO_KINDS = {
    EventKind.TEST: Priority.NONE,
    EventKind.CANCEL: Priority.NONE,
    EventKind.CARER_PRESENT: Priority.NONE,
    EventKind.CHECK_OUT: Priority.NONE,
}
_CATEGORY: dict[EventKind, Category] = {
    **{k: Category.ALARM for k in _ALARM_KINDS},
    **{k: Category.TECHNICAL for k in _TECHNICAL_KINDS},
    **{k: Category.INFO for k in _INFO_KINDS},
}
_DEFAULT_PRIORITY: dict[EventKind, Priority] = {**_ALARM_KINDS, **_TECHNICAL_KINDS, **_INFO_KINDS}


class Condition(enum.StrEnum):
    """Contact ID's qualifier in words: a new condition, its end, or 'still present'."""

    ALARM = "alarm"  # new event (CID qualifier 1, SIA "N...A")
    RESTORE = "restore"  # condition ended (CID qualifier 3)
    STATUS = "status"  # condition still present, reported again (CID qualifier 6)


class Flag(enum.StrEnum):
    """Facts about how an event arrived that an operator must see."""

    UNREGISTERED = "unregistered"  # no account/device known for the sender
    STALE_TIMESTAMP = "stale_timestamp"  # device time outside the accepted window
    UNKNOWN_CODE = "unknown_code"  # the protocol code is not in our tables


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Event:
    """One thing a device reported, normalised; stored append-only with its raw frame.

    ``source`` + ``dedup_key`` identify a transmission: a retransmission yields the same
    key, which is how intake recognises it (DESIGN.md invariant 2).
    """

    protocol: str  # "dc09", "scaip", "mqtt", "sms"
    source: str  # the device identity within the protocol: DC-09 account, SCAIP cid...
    kind: EventKind
    condition: Condition
    priority: Priority
    received_at: datetime  # our clock, UTC
    dedup_key: str
    raw: bytes
    code: str = ""  # the protocol's own code, e.g. "CID:1100" or "SIA:MA"
    zone: str | None = None  # zone / user / device component number
    partition: str | None = None
    occurred_at: datetime | None = None  # the device's clock, UTC, if it sent one
    text: str | None = None
    flags: frozenset[Flag] = frozenset()
    attributes: Mapping[str, str] = field(default_factory=_empty)  # xdata, location...

    @property
    def category(self) -> Category:
        return self.kind.category


@dataclass(frozen=True, slots=True)
class Receipt:
    """What intake returns once events are durable: the transport may now acknowledge."""

    # one per submitted event: the stored row (for a retransmission, the first copy's row)
    event_ids: tuple[int, ...]
    duplicate: tuple[bool, ...]  # one per submitted event: was it a retransmission?

    @property
    def duplicates(self) -> int:
        """How many of the submitted events were retransmissions."""
        return sum(self.duplicate)


class Outcome(enum.StrEnum):
    """How a case ended. Only ``resolved_by_phone`` counts as clarified at the centre
    (avklart): the clarification rate is its share of closed alarm cases."""

    RESOLVED_BY_PHONE = "resolved_by_phone"
    HOME_CARE_DISPATCHED = "home_care_dispatched"
    AMBULANCE = "ambulance"
    NEXT_OF_KIN = "next_of_kin"
    ACCIDENTAL = "accidental"
    TECHNICAL = "technical"
    TEST = "test"

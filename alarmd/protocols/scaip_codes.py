"""SCAIP code tables (device types, status codes, location codes, priority) as data.

Theory of operation
-------------------
A SCAIP ``<mrq>`` says *what sent it* (``dty``, device type), *what happened* (``stc``,
status code; absent means "alarm") and *where* (``lco``, location code). The numbers and
their names are facts from the standard, as listed in PROTOCOLS.md 2.5; which alarmd kind
each one becomes (PROTOCOLS.md section 5) is our choice, made here and nowhere else. The
SCAIP codec (``scaip.py``) looks codes up here; the rule that combines them is:

1. ``stc`` absent, ``0009`` (alarm, automatic) or ``0010`` (alarm, manual): the device
   type's alarm kind, condition ALARM. A fall detector's alarm is a FALL.
2. ``stc`` in ``STATUS_CODES`` with a kind: that kind **overrides** the device's
   (a fall detector reporting battery low is BATTERY_LOW, not FALL).
3. ``stc`` in ``STATUS_CODES`` with ``kind=None``: the device type's kind with the row's
   condition (``0094`` restoral on a smoke detector is FIRE + RESTORE).
4. Anything not in these tables (including the vendor-specific range 0900-0999, whose
   meaning differs per vendor) is an ``OTHER_ALARM`` flagged ``UNKNOWN_CODE`` by the codec:
   an unknown code may be an emergency, so it is shown to a human, never dropped. The same
   flag goes on every event whose ``dty`` or ``stc`` is unknown, even when the other code
   decided the kind, so the operator knows the device is not fully understood.

Codes are compared as numbers (``2`` == ``0002``): the tables are keyed by ``int``.
Per-device exceptions (a vendor code that means inactivity) belong in configuration,
applied by the codec, never in edits of these tables.

Choices where the standard's name does not fit one kind exactly are noted per row. The
general leaning: an alarm from a device whose purpose is unclear is ``OTHER_ALARM`` (an
alarm priority, seen by an operator) rather than a technical or informational kind, which
would rank it lower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from alarmd.model import Condition, EventKind, Priority


@dataclass(frozen=True, slots=True)
class DeviceType:
    """One ``dty`` value: what the device is, and what an alarm from it means."""

    code: int
    name: str
    kind: EventKind  # the kind of an alarm (stc absent, 0009, 0010) from this device


@dataclass(frozen=True, slots=True)
class StatusCode:
    """One ``stc`` value: what happened, and how it changes the device's kind."""

    code: int
    name: str
    kind: EventKind | None  # None: keep the device type's kind
    condition: Condition
    # True for codes the standard defines but our taxonomy has no kind for yet; the codec
    # flags the event UNKNOWN_CODE so an operator looks at it (see the rows).
    unmapped: bool = False


_K = EventKind
_NEW = Condition.ALARM
_END = Condition.RESTORE
_STATUS = Condition.STATUS

# PROTOCOLS.md 2.5, device types.
DEVICE_TYPES: tuple[DeviceType, ...] = (
    # 0000/0001: the device does not say what it is; the code is known, the meaning is not.
    DeviceType(0, "unknown", _K.OTHER_ALARM),
    DeviceType(1, "undefined", _K.OTHER_ALARM),
    # The unit's own button is the classic social-alarm assistance call.
    DeviceType(2, "local unit and controller", _K.ASSISTANCE),
    DeviceType(3, "personal trigger (pendant)", _K.ASSISTANCE),
    DeviceType(4, "fixed trigger", _K.ASSISTANCE),
    DeviceType(5, "fall detector", _K.FALL),
    DeviceType(6, "personal attack pendant", _K.PANIC),
    DeviceType(7, "panic button", _K.PANIC),
    # A duty switch toggles a warden on or off duty; an "alarm" from it has no kind of its
    # own, and OTHER_ALARM keeps it in front of an operator.
    DeviceType(8, "duty switch (remote)", _K.OTHER_ALARM),
    DeviceType(9, "duty switch (local)", _K.OTHER_ALARM),
    # The activity detector's alarm is the absence of activity.
    DeviceType(10, "activity detector", _K.INACTIVITY),
    DeviceType(11, "pill dispenser", _K.MEDICATION),
    DeviceType(12, "bed monitor", _K.BED_EXIT),
    DeviceType(13, "mat", _K.BED_EXIT),  # pressure mats sit by the bed or chair
    DeviceType(14, "door", _K.EXIT),
    DeviceType(15, "wandering", _K.EXIT),
    # Enuresis sensors detect moisture: a water event, at water's (normal) priority.
    DeviceType(16, "enuresis", _K.WATER),
    DeviceType(17, "epilepsy", _K.EPILEPSY),
    # Occupancy monitors alarm on presence or absence held too long (a bathroom visit that
    # does not end): activity monitoring, as the activity detector.
    DeviceType(18, "occupancy", _K.INACTIVITY),
    # A vital-signs alarm; Contact ID's "medical" is ASSISTANCE too (contact_id.py, 100).
    DeviceType(19, "heart-rate monitor", _K.ASSISTANCE),
    # Environmental and heating monitors measure temperature and the like; the status
    # code (0100 high / 0101 low temperature) gives the kind when they send one.
    DeviceType(20, "environmental", _K.OTHER_ALARM),
    DeviceType(21, "natural gas", _K.GAS),
    DeviceType(22, "lighting circuit", _K.OTHER_ALARM),
    DeviceType(23, "smoke", _K.FIRE),
    DeviceType(24, "heating monitor", _K.OTHER_ALARM),
    DeviceType(25, "heat", _K.FIRE),
    DeviceType(26, "carbon monoxide", _K.GAS),
    # Pressed when a suspicious visitor is at the door: a duress call.
    DeviceType(27, "bogus-caller switch", _K.PANIC),
    DeviceType(28, "intruder", _K.INTRUDER),
    DeviceType(29, "boundary", _K.EXIT),
    DeviceType(30, "man-down", _K.FALL),
    # Devices that only watch the installation: their alarm is technical.
    DeviceType(31, "system monitor", _K.DEVICE_FAULT),
    DeviceType(32, "communication-link monitor", _K.LINK_LOST),
    DeviceType(33, "flood", _K.WATER),
    DeviceType(34, "bath", _K.WATER),  # bath overflow
    # Latch-key devices differ per vendor (key safe, arrival monitor): no safe kind.
    DeviceType(35, "latch key", _K.OTHER_ALARM),
    DeviceType(36, "perimeter", _K.EXIT),
    DeviceType(37, "sprinkler", _K.FIRE),
    DeviceType(38, "tamper", _K.TAMPER),
    DeviceType(39, "printer", _K.DEVICE_FAULT),
    DeviceType(40, "router", _K.DEVICE_FAULT),
    DeviceType(41, "DC power supply", _K.DEVICE_FAULT),  # not mains (AC): a device fault
    # A lock or access controller alarm may be a person locked in or out, or a forced door:
    # kept as an alarm for an operator to judge.
    DeviceType(42, "electric lock", _K.OTHER_ALARM),
    DeviceType(43, "access controller", _K.OTHER_ALARM),
    DeviceType(44, "chair monitor", _K.BED_EXIT),
    DeviceType(45, "controller", _K.ASSISTANCE),  # the alarm unit itself, as 0002
    DeviceType(46, "elevator alarm", _K.ASSISTANCE),  # a person trapped presses a button
    DeviceType(47, "fire alarm system", _K.FIRE),
    DeviceType(48, "local unit", _K.ASSISTANCE),  # as 0002
    DeviceType(49, "monitoring device", _K.OTHER_ALARM),
    DeviceType(50, "radio unit", _K.OTHER_ALARM),
    # GPS trackers for people alarm through their SOS button.
    DeviceType(51, "tracking device", _K.ASSISTANCE),
)

# Status codes 0009 and 0010: "this is an alarm" (as is an absent stc).
ALARM_STATUS_CODES: frozenset[int] = frozenset({9, 10})

# PROTOCOLS.md 2.5, status codes.
STATUS_CODES: tuple[StatusCode, ...] = (
    StatusCode(2, "abort", _K.CANCEL, _NEW),
    # Resident presence and privacy are information with no kind in the taxonomy yet
    # (model.py has no informational "status" kind): shown as OTHER_ALARM, flagged, so
    # that they are seen rather than lost. Revisit when the model grows such a kind.
    StatusCode(3, "away", _K.OTHER_ALARM, _NEW, unmapped=True),
    StatusCode(9, "alarm (automatic)", None, _NEW),
    StatusCode(10, "alarm (manual)", None, _NEW),
    StatusCode(14, "battery failure", _K.BATTERY_LOW, _NEW),
    StatusCode(15, "battery full", _K.BATTERY_LOW, _END),
    StatusCode(16, "battery low", _K.BATTERY_LOW, _NEW),
    StatusCode(19, "cancel", _K.CANCEL, _NEW),
    StatusCode(23, "link failure (IP)", _K.LINK_LOST, _NEW),
    StatusCode(24, "link failure (mobile)", _K.LINK_LOST, _NEW),
    StatusCode(25, "link failure (POTS)", _K.LINK_LOST, _NEW),
    StatusCode(26, "link failure (primary)", _K.LINK_LOST, _NEW),
    StatusCode(27, "link failure (redundant)", _K.LINK_LOST, _NEW),
    StatusCode(42, "failure", _K.DEVICE_FAULT, _NEW),
    # "Loss" does not say of what (signal, power, device): a fault for a technician.
    StatusCode(63, "loss", _K.DEVICE_FAULT, _NEW),
    StatusCode(67, "malfunction", _K.DEVICE_FAULT, _NEW),
    # The device is back to normal: whatever its kind was, it has ended.
    StatusCode(70, "normal", None, _END),
    # A device dropping off or coming back is its link, as in the 0023/0112 pairs.
    StatusCode(73, "offline", _K.LINK_LOST, _NEW),
    StatusCode(75, "online", _K.LINK_LOST, _END),
    # "Open" is the event a door or window sensor is installed to report.
    StatusCode(76, "open", None, _NEW),
    StatusCode(77, "open too long", None, _NEW),
    StatusCode(81, "pill not taken", _K.MEDICATION, _NEW),
    # A reminder means the dose is still due: the condition is still present.
    StatusCode(82, "pill reminder", _K.MEDICATION, _STATUS),
    StatusCode(83, "pill taken", _K.MEDICATION, _END),
    StatusCode(85, "mains failure", _K.MAINS_LOST, _NEW),
    StatusCode(86, "mains restored", _K.MAINS_LOST, _END),
    StatusCode(88, "carer present on site", _K.CARER_PRESENT, _NEW),
    StatusCode(89, "privacy switch", _K.OTHER_ALARM, _NEW, unmapped=True),  # as 0003
    # A reset at the unit (automatic or by a person) ends the device's alarm condition.
    StatusCode(92, "reset (automatic)", None, _END),
    StatusCode(93, "reset (manual)", None, _END),
    StatusCode(94, "restoral", None, _END),
    # As Contact ID 158/159 (contact_id.py): high temperature is a fire risk; low
    # temperature has no kind of its own but a person may be at risk.
    StatusCode(100, "temperature high", _K.FIRE, _NEW),
    StatusCode(101, "temperature low", _K.OTHER_ALARM, _NEW),
    StatusCode(102, "test transmission (primary)", _K.TEST, _NEW),
    StatusCode(103, "test transmission (redundant)", _K.TEST, _NEW),
    StatusCode(105, "trouble", _K.DEVICE_FAULT, _NEW),
    StatusCode(110, "assistance", _K.ASSISTANCE, _NEW),
    StatusCode(111, "check-out (intervention completed)", _K.CHECK_OUT, _NEW),
    StatusCode(112, "link re-established (IP)", _K.LINK_LOST, _END),
    StatusCode(113, "link re-established (mobile)", _K.LINK_LOST, _END),
    StatusCode(114, "link re-established (POTS)", _K.LINK_LOST, _END),
    StatusCode(115, "link re-established (primary)", _K.LINK_LOST, _END),
    StatusCode(116, "link re-established (redundant)", _K.LINK_LOST, _END),
    # A bed monitor seeing the person back in bed ends the bed-exit condition.
    StatusCode(117, "lying in bed", _K.BED_EXIT, _END),
    # Movement ends an inactivity condition.
    StatusCode(119, "movement", _K.INACTIVITY, _END),
    StatusCode(121, "present at home", _K.OTHER_ALARM, _NEW, unmapped=True),  # as 0003
    StatusCode(123, "radio test missing", _K.RADIO_SUPERVISION, _NEW),
    StatusCode(124, "radio test re-established", _K.RADIO_SUPERVISION, _END),
    StatusCode(125, "tamper", _K.TAMPER, _NEW),
)

# PROTOCOLS.md 2.5, location codes: number -> name, for the operator.
LOCATION_CODES: Mapping[int, str] = MappingProxyType(
    {
        0: "unknown",
        2: "home",
        3: "away",
        4: "indoors",
        5: "outdoors",
        11: "bathroom",
        12: "bedroom",
        21: "kitchen",
        30: "temporary address",
        31: "summer house",
        33: "mobile",
        34: "geo position attached",
        35: "GPS position attached",
        39: "front door",
        42: "hallway",
        43: "living room",
        44: "apartment",
        47: "communal area",
        49: "room",
        51: "ward",
        52: "wing",
    }
)

# The range the standard leaves to vendors, for dty and stc alike: meaning per vendor.
VENDOR_SPECIFIC = range(900, 1000)

# SCAIP ``pri`` (0-9, 9 highest, absent = 0) -> alarmd priority. 0 means "no opinion":
# the kind's default applies. The codec never lowers an alarm below its kind's default
# (a device cannot make a fall less urgent than a fall), but may raise any event.
PRIORITY_BY_PRI: tuple[Priority | None, ...] = (
    None,  # 0: the kind's default
    Priority.LOW,  # 1
    Priority.LOW,  # 2
    Priority.LOW,  # 3
    Priority.NORMAL,  # 4
    Priority.NORMAL,  # 5
    Priority.NORMAL,  # 6
    Priority.HIGH,  # 7
    Priority.HIGH,  # 8
    Priority.CRITICAL,  # 9
)

_DEVICES: Mapping[int, DeviceType] = MappingProxyType({row.code: row for row in DEVICE_TYPES})
_STATUSES: Mapping[int, StatusCode] = MappingProxyType({row.code: row for row in STATUS_CODES})


def device_type(code: int) -> DeviceType | None:
    """The table row for a ``dty`` number, or None (unknown or vendor specific)."""
    return _DEVICES.get(code)


def status_code(code: int) -> StatusCode | None:
    """The table row for a ``stc`` number, or None (unknown or vendor specific)."""
    return _STATUSES.get(code)


def location_name(code: int) -> str | None:
    """The name of an ``lco`` number, or None if we do not know it."""
    return LOCATION_CODES.get(code)

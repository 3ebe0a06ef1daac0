"""SIA DC-03 two-letter event codes mapped to alarmd's taxonomy: data, not logic.

Theory of operation
-------------------
In a SIA-DCS block (``Nri1/MA001``) each event carries a two-letter code. Unlike Contact
ID, the code itself says whether the condition is new or restored (``MA`` medical alarm,
``MH`` medical restore), so each row gives both the kind and the condition.

Rows come from PROTOCOLS.md 1.8 (the SIA column) plus the standard restore counterparts of
those alarms (``FH``, ``GH``, ``WH``...), so a restore never shows up as an unknown alarm.
A code missing here becomes an ``OTHER_ALARM`` flagged ``UNKNOWN_CODE`` in the codec:
never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from alarmd.model import Condition, EventKind


@dataclass(frozen=True, slots=True)
class SiaCode:
    """One SIA event code: which condition, and whether it starts or ends."""

    code: str
    kind: EventKind
    condition: Condition
    meaning: str


_K = EventKind
_NEW = Condition.ALARM
_END = Condition.RESTORE

SIA_CODES: tuple[SiaCode, ...] = (
    SiaCode("MA", _K.ASSISTANCE, _NEW, "medical alarm"),
    SiaCode("MH", _K.ASSISTANCE, _END, "medical alarm restore"),
    SiaCode("QA", _K.ASSISTANCE, _NEW, "emergency alarm (pendant)"),
    SiaCode("QH", _K.ASSISTANCE, _END, "emergency alarm restore"),
    SiaCode("NA", _K.INACTIVITY, _NEW, "no activity"),
    SiaCode("FA", _K.FIRE, _NEW, "fire alarm"),
    SiaCode("FH", _K.FIRE, _END, "fire alarm restore"),
    SiaCode("KA", _K.FIRE, _NEW, "heat alarm"),
    SiaCode("KH", _K.FIRE, _END, "heat alarm restore"),
    SiaCode("WA", _K.WATER, _NEW, "water alarm"),
    SiaCode("WH", _K.WATER, _END, "water alarm restore"),
    SiaCode("GA", _K.GAS, _NEW, "gas alarm (also CO)"),
    SiaCode("GH", _K.GAS, _END, "gas alarm restore"),
    SiaCode("ZA", _K.OTHER_ALARM, _NEW, "freeze (low temperature) alarm"),
    SiaCode("ZH", _K.OTHER_ALARM, _END, "freeze alarm restore"),
    SiaCode("PA", _K.PANIC, _NEW, "panic alarm"),
    SiaCode("PH", _K.PANIC, _END, "panic alarm restore"),
    SiaCode("HA", _K.PANIC, _NEW, "hold-up / duress alarm"),
    SiaCode("HH", _K.PANIC, _END, "hold-up / duress restore"),
    SiaCode("BA", _K.INTRUDER, _NEW, "burglary alarm"),
    SiaCode("BH", _K.INTRUDER, _END, "burglary restore"),
    SiaCode("TA", _K.TAMPER, _NEW, "tamper"),
    SiaCode("TR", _K.TAMPER, _END, "tamper restore"),
    # YC is what 1.8 gives for supervision loss, jamming and communication trouble alike;
    # the link is the common denominator.
    SiaCode("YC", _K.LINK_LOST, _NEW, "communication failure"),
    SiaCode("YK", _K.LINK_LOST, _END, "communication restored"),
    SiaCode("AT", _K.MAINS_LOST, _NEW, "mains (AC) power lost"),
    SiaCode("AR", _K.MAINS_LOST, _END, "mains (AC) power restored"),
    SiaCode("YT", _K.BATTERY_LOW, _NEW, "system battery trouble"),
    SiaCode("YR", _K.BATTERY_LOW, _END, "system battery restored"),
    SiaCode("YM", _K.BATTERY_LOW, _NEW, "system battery missing"),
    SiaCode("XT", _K.BATTERY_LOW, _NEW, "transmitter (pendant) battery trouble"),
    SiaCode("XR", _K.BATTERY_LOW, _END, "transmitter (pendant) battery restored"),
    SiaCode("OC", _K.CANCEL, _NEW, "cancel"),
    SiaCode("RX", _K.TEST, _NEW, "manual test"),
    SiaCode("RP", _K.TEST, _NEW, "automatic (periodic) test"),
)

_BY_CODE: Mapping[str, SiaCode] = MappingProxyType({row.code: row for row in SIA_CODES})


def lookup(code: str) -> SiaCode | None:
    """The table row for a two-letter SIA code, or None if we do not know it."""
    return _BY_CODE.get(code)

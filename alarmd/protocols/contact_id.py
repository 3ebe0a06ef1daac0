"""Contact ID event codes mapped to alarmd's taxonomy: data, not logic.

Theory of operation
-------------------
A Contact ID report (``QEEE GG ZZZ``) carries a qualifier ``Q`` and a three-digit event
code ``EEE``. The qualifier says *what happened to the condition* (new, restored, still
present); the code says *which condition*. This module holds both as tables, taken from
PROTOCOLS.md 1.8 (the codes that matter for social alarms) and section 5 (the taxonomy).

The DC-09 codec looks codes up here and nowhere else. A code that is not in the table is
not an error: the codec turns it into an ``OTHER_ALARM`` flagged ``UNKNOWN_CODE``, because
an unknown code may be an emergency. Per-account exceptions (a zone that is a fall
detector) are configuration, applied by the codec, never edits of this table.

Choices where the standard's meaning does not fit one kind exactly are noted per row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from alarmd.model import Condition, EventKind


@dataclass(frozen=True, slots=True)
class CidCode:
    """One Contact ID event code: its kind and the matching SIA codes, for reference."""

    code: int
    kind: EventKind
    meaning: str
    sia_new: str | None = None
    sia_restore: str | None = None


_K = EventKind

# (code, kind, meaning, SIA new, SIA restore): PROTOCOLS.md 1.8.
CID_CODES: tuple[CidCode, ...] = (
    CidCode(100, _K.ASSISTANCE, "medical", "MA", "MH"),
    CidCode(101, _K.ASSISTANCE, "personal emergency (pendant)", "QA", "QH"),
    # "fail to report in" is the social-alarm activity check: some vendors say inactivity.
    CidCode(102, _K.INACTIVITY, "fail to report in / inactivity", "NA"),
    CidCode(110, _K.FIRE, "fire", "FA", "FH"),
    CidCode(111, _K.FIRE, "smoke", "FA", "FH"),
    CidCode(112, _K.FIRE, "combustion", "FA", "FH"),
    # SIA maps 113 to WA (water alarm), so it is a water event here, like 154.
    CidCode(113, _K.WATER, "water flow", "WA"),
    CidCode(114, _K.FIRE, "heat", "KA"),
    CidCode(115, _K.FIRE, "pull station", "FA", "FH"),
    CidCode(116, _K.FIRE, "duct", "FA", "FH"),
    CidCode(117, _K.FIRE, "flame", "FA", "FH"),
    CidCode(118, _K.FIRE, "near alarm", "FA", "FH"),
    # Some vendors send 120 for a fall: that is a per-account zone override, not this table.
    CidCode(120, _K.PANIC, "panic", "PA"),
    CidCode(121, _K.PANIC, "duress", "HA"),
    CidCode(122, _K.PANIC, "silent panic", "PA"),
    CidCode(123, _K.PANIC, "audible panic", "PA"),
    CidCode(137, _K.TAMPER, "tamper", "TA", "TR"),
    CidCode(144, _K.TAMPER, "sensor tamper", "TA", "TR"),
    CidCode(147, _K.RADIO_SUPERVISION, "sensor supervision failure", "YC"),
    CidCode(151, _K.GAS, "gas detected", "GA"),
    CidCode(154, _K.WATER, "water leak", "WA"),
    # High temperature is a fire risk (SIA KA, heat alarm).
    CidCode(158, _K.FIRE, "high temperature", "KA"),
    # Low temperature (SIA ZA, freeze) has no kind of its own; a person may be at risk.
    CidCode(159, _K.OTHER_ALARM, "low temperature", "ZA"),
    CidCode(162, _K.GAS, "carbon monoxide", "GA"),
    CidCode(301, _K.MAINS_LOST, "mains (AC) power lost", "AT", "AR"),
    CidCode(302, _K.BATTERY_LOW, "low system battery", "YT", "YR"),
    CidCode(309, _K.BATTERY_LOW, "battery test failure", "YT", "YR"),
    CidCode(311, _K.BATTERY_LOW, "battery missing", "YM"),
    CidCode(344, _K.RADIO_SUPERVISION, "RF jamming", "YC"),
    CidCode(350, _K.LINK_LOST, "communication trouble", "YC", "YK"),
    CidCode(354, _K.LINK_LOST, "failure to communicate", "YC", "YK"),
    CidCode(381, _K.RADIO_SUPERVISION, "loss of RF supervision (pendant out of range)", "YC"),
    CidCode(383, _K.TAMPER, "RF sensor tamper", "TA", "TR"),
    CidCode(384, _K.BATTERY_LOW, "RF transmitter (pendant) low battery", "XT", "XR"),
    CidCode(406, _K.CANCEL, "user cancel", "OC"),
    CidCode(601, _K.TEST, "manual test", "RX"),
    CidCode(602, _K.TEST, "periodic test", "RP"),
)

# Contact ID qualifier digit -> condition (PROTOCOLS.md 1.3).
QUALIFIERS: Mapping[str, Condition] = MappingProxyType(
    {
        "1": Condition.ALARM,  # new event / opening
        "3": Condition.RESTORE,  # restore / closing
        "6": Condition.STATUS,  # previously reported condition still present
    }
)

_BY_CODE: Mapping[int, CidCode] = MappingProxyType({row.code: row for row in CID_CODES})


def lookup(code: int) -> CidCode | None:
    """The table row for a Contact ID event code, or None if we do not know it."""
    return _BY_CODE.get(code)

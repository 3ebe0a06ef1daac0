"""The Contact ID and SIA code tables against PROTOCOLS.md 1.8, and through the codec.

The expected mapping is written out here again, row by row from the document, so a slip in
the table module shows up as a difference rather than being copied into the test.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alarmd.model import Category, Condition, EventKind
from alarmd.protocols import contact_id, sia_codes
from alarmd.protocols.dc09 import ReplyKind, encode_message, handle_frame

K = EventKind
# PROTOCOLS.md 1.8, one entry per CID code.
DOCUMENTED_CID: dict[int, EventKind] = {
    100: K.ASSISTANCE,  # medical
    101: K.ASSISTANCE,  # personal emergency (pendant)
    102: K.INACTIVITY,  # fail to report in; some vendors: inactivity
    110: K.FIRE,
    111: K.FIRE,
    112: K.FIRE,
    113: K.WATER,  # water flow (SIA WA)
    114: K.FIRE,  # heat (SIA KA)
    115: K.FIRE,
    116: K.FIRE,
    117: K.FIRE,
    118: K.FIRE,
    120: K.PANIC,
    121: K.PANIC,
    122: K.PANIC,
    123: K.PANIC,
    137: K.TAMPER,
    144: K.TAMPER,
    383: K.TAMPER,
    147: K.RADIO_SUPERVISION,
    381: K.RADIO_SUPERVISION,
    151: K.GAS,
    162: K.GAS,
    154: K.WATER,
    158: K.FIRE,  # high temperature (SIA KA)
    159: K.OTHER_ALARM,  # low temperature (SIA ZA): no kind of its own
    301: K.MAINS_LOST,
    302: K.BATTERY_LOW,
    309: K.BATTERY_LOW,
    311: K.BATTERY_LOW,
    344: K.RADIO_SUPERVISION,  # RF jamming
    350: K.LINK_LOST,
    354: K.LINK_LOST,
    384: K.BATTERY_LOW,  # RF transmitter (pendant) low battery
    406: K.CANCEL,
    601: K.TEST,
    602: K.TEST,
}
# PROTOCOLS.md 1.8, SIA column: (kind, condition).
DOCUMENTED_SIA: dict[str, tuple[EventKind, Condition]] = {
    "MA": (K.ASSISTANCE, Condition.ALARM),
    "MH": (K.ASSISTANCE, Condition.RESTORE),
    "QA": (K.ASSISTANCE, Condition.ALARM),
    "QH": (K.ASSISTANCE, Condition.RESTORE),
    "NA": (K.INACTIVITY, Condition.ALARM),
    "FA": (K.FIRE, Condition.ALARM),
    "FH": (K.FIRE, Condition.RESTORE),
    "WA": (K.WATER, Condition.ALARM),
    "KA": (K.FIRE, Condition.ALARM),
    "PA": (K.PANIC, Condition.ALARM),
    "HA": (K.PANIC, Condition.ALARM),
    "TA": (K.TAMPER, Condition.ALARM),
    "TR": (K.TAMPER, Condition.RESTORE),
    "YC": (K.LINK_LOST, Condition.ALARM),
    "YK": (K.LINK_LOST, Condition.RESTORE),
    "GA": (K.GAS, Condition.ALARM),
    "ZA": (K.OTHER_ALARM, Condition.ALARM),
    "AT": (K.MAINS_LOST, Condition.ALARM),
    "AR": (K.MAINS_LOST, Condition.RESTORE),
    "YT": (K.BATTERY_LOW, Condition.ALARM),
    "YR": (K.BATTERY_LOW, Condition.RESTORE),
    "YM": (K.BATTERY_LOW, Condition.ALARM),
    "XT": (K.BATTERY_LOW, Condition.ALARM),
    "XR": (K.BATTERY_LOW, Condition.RESTORE),
    "OC": (K.CANCEL, Condition.ALARM),
    "RX": (K.TEST, Condition.ALARM),
    "RP": (K.TEST, Condition.ALARM),
}
NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _events(token: str, data: str) -> list[tuple[EventKind, Condition, str]]:
    frame = encode_message(token, 1, "1111", data, receiver="1", line="1")
    result = handle_frame(frame, now=NOW, accounts=lambda _a: None)
    assert result.reply_kind is ReplyKind.ACK, result.reason
    return [(e.kind, e.condition, e.code) for e in result.events]


@pytest.mark.parametrize(("code", "kind"), sorted(DOCUMENTED_CID.items()))
def test_every_documented_cid_code_maps_to_its_kind(code: int, kind: EventKind) -> None:
    row = contact_id.lookup(code)
    assert row is not None and row.kind is kind
    assert _events("ADM-CID", f"#1111|1{code:03d} 01 001") == [
        (kind, Condition.ALARM, f"CID:1{code:03d}")
    ]


@pytest.mark.parametrize("code", sorted(DOCUMENTED_CID))
def test_restore_and_status_qualifiers_keep_the_kind(code: int) -> None:
    kind = DOCUMENTED_CID[code]
    assert _events("ADM-CID", f"#1111|3{code:03d} 01 001") == [
        (kind, Condition.RESTORE, f"CID:3{code:03d}")
    ]
    assert _events("ADM-CID", f"#1111|6{code:03d} 01 001") == [
        (kind, Condition.STATUS, f"CID:6{code:03d}")
    ]


def test_qualifiers() -> None:
    assert dict(contact_id.QUALIFIERS) == {
        "1": Condition.ALARM,
        "3": Condition.RESTORE,
        "6": Condition.STATUS,
    }


def test_cid_table_has_exactly_the_documented_codes() -> None:
    assert {row.code for row in contact_id.CID_CODES} == set(DOCUMENTED_CID)
    assert len(contact_id.CID_CODES) == len(DOCUMENTED_CID)  # no duplicates


@pytest.mark.parametrize(("code", "expected"), sorted(DOCUMENTED_SIA.items()))
def test_every_documented_sia_code(code: str, expected: tuple[EventKind, Condition]) -> None:
    row = sia_codes.lookup(code)
    assert row is not None and (row.kind, row.condition) == expected
    assert _events("SIA-DCS", f"#1111|N{code}001") == [(*expected, f"SIA:{code}")]


def test_sia_table_is_well_formed() -> None:
    codes = [row.code for row in sia_codes.SIA_CODES]
    assert len(codes) == len(set(codes))
    assert all(len(c) == 2 and c.isalpha() and c.isupper() for c in codes)
    assert set(DOCUMENTED_SIA) <= set(codes)
    for row in sia_codes.SIA_CODES:  # a restore restores something that can start
        if row.condition is Condition.RESTORE:
            assert any(
                other.kind is row.kind and other.condition is Condition.ALARM
                for other in sia_codes.SIA_CODES
            ), row


def test_cid_rows_agree_with_their_sia_codes() -> None:
    """The SIA codes named in a CID row exist and say the same; YC is shared (see the table)."""
    for row in contact_id.CID_CODES:
        for sia, condition in (
            (row.sia_new, Condition.ALARM),
            (row.sia_restore, Condition.RESTORE),
        ):
            if sia is None:
                continue
            sia_row = sia_codes.lookup(sia)
            assert sia_row is not None, (row.code, sia)
            assert sia_row.condition is condition, (row.code, sia)
            if sia != "YC" and sia != "YK":
                assert sia_row.kind is row.kind, (row.code, sia)
            else:  # supervision loss, jamming and link trouble all say YC
                assert sia_row.kind.category is row.kind.category is Category.TECHNICAL


def test_unknown_codes_are_not_in_the_tables() -> None:
    assert contact_id.lookup(999) is None
    assert sia_codes.lookup("QQ") is None


def test_no_standard_fall_code() -> None:
    """PROTOCOLS.md 1.8: a fall comes only from per-account configuration."""
    assert all(row.kind is not K.FALL for row in contact_id.CID_CODES)
    assert all(row.kind is not K.FALL for row in sia_codes.SIA_CODES)

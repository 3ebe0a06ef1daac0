"""SMS PDU codec: public vectors, an independent oracle (python-gsmmodem-new), properties."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarmd.protocols import sms
from alarmd.protocols.sms import (
    AddressType,
    Deliver,
    Encoding,
    Reassembler,
    SmsError,
    SmsUsageError,
    decode_deliver,
    decode_submit,
    encode_submit,
    gsm7_encodable,
)

gsmpdu = pytest.importorskip("gsmmodem.pdu")

NORWEGIAN = "Fall hos Ola Nordmann, Storgata 1. Æ Ø Å æ ø å"
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def deliver_hex(
    user_data: bytes,
    udl: int,
    *,
    dcs: int = 0x00,
    udhi: bool = False,
    sender: bytes = bytes.fromhex("0A917421436587"),
    scts: str = "62105021430080",  # 2026-01-05 12:34:00 +02:00
) -> str:
    """An SMS-DELIVER around the given user data (SMSC none, sender +4712345678 by default)."""
    first = 0x04 | (0x40 if udhi else 0)
    header = bytes((0x00, first)) + sender + bytes((0x00, dcs)) + bytes.fromhex(scts)
    return (header + bytes((udl,)) + user_data).hex()


def submit_as_deliver(submit_hex: str) -> str:
    """The same user data as a DELIVER: UD, UDL, DCS and UDHI are identical in both types.

    Reads only what our encoder and the oracle write: SMSC "00", no validity period.
    """
    raw = bytes.fromhex(submit_hex)
    assert raw[0] == 0x00
    first = raw[1]
    assert first & 0x18 == 0
    da_len = raw[3]
    pos = 5 + (da_len + 1) // 2
    dcs, udl = raw[pos + 1], raw[pos + 2]
    return deliver_hex(raw[pos + 3 :], udl, dcs=dcs, udhi=bool(first & 0x40))


# --- public vectors -------------------------------------------------------------------------------


def test_dreamfabric_deliver() -> None:
    # The classic SMS-DELIVER from the dreamfabric PDU tutorial ("How are you?").
    d = decode_deliver(
        "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"
    )
    assert d.smsc == "+31624000000"
    assert d.sender == "+31641600986" and d.sender_type is AddressType.INTERNATIONAL
    assert d.encoding is Encoding.GSM7 and d.pid == 0 and d.dcs == 0
    assert d.text == "How are you?"
    # TZ octet 0x08: sign bit set, zero quarters.
    assert d.timestamp == datetime(2002, 8, 26, 19, 37, 41, tzinfo=UTC)
    assert d.concat is None and not d.more_messages and not d.reply_path


@pytest.mark.parametrize(
    ("pdu", "sender", "when", "text"),
    [
        # python-gsmmodem's test vectors (SMS-DELIVER), dates with +02:00 and +08:00 zones.
        (
            "06917228195339040B917228214365F700003130805120618005D4F29C2E03",
            "+27821234567",
            datetime(2013, 3, 8, 15, 2, 16, tzinfo=timezone(timedelta(hours=2))),
            "Test2",
        ),
        (
            "07915892000000F0040B915892214365F700007040213252242331493A283D0795C3F33C88FE06C9"
            "CB6132885EC6D341EDF27C1E3E97E7207B3A0C0A5241E377BB1D7693E72E",
            "+85291234567",
            datetime(2007, 4, 12, 23, 25, 42, tzinfo=timezone(timedelta(hours=8))),
            "It is easy to read text messages via AT commands.",
        ),
        (
            "06917228195339040B917228214365F70000313062315352800A800D8A5E98D337A910",
            "+27821234567",
            None,
            "@{tést}!",
        ),
    ],
)
def test_public_deliver_vectors(pdu: str, sender: str, when: datetime | None, text: str) -> None:
    d = decode_deliver(pdu)
    assert (d.sender, d.text) == (sender, text)
    if when is not None:
        assert d.timestamp == when and d.timestamp.utcoffset() == when.utcoffset()


def test_public_concatenated_deliver_with_national_sender() -> None:
    d = decode_deliver(
        "0591721891F1400781721881F800003160526104848059050003C30101916536FB1DCABEEB2074D85E06"
        "4941B19CAB060319A5C522289C96D3D3ED32286C0FA7D96131BBEC024941B19CAB0603DDD36C36A88C87"
        "A7E565D0DB0D82C55EB0DB4B068BCD5C20"
    )
    assert d.smsc == "+2781191" and d.sender == "2781188"
    assert d.sender_type is AddressType.UNKNOWN
    assert d.concat == (0xC3, 1, 1)
    assert (
        d.text
        == "Hello!You have R 19.50 FREE airtime available. R 19.50 will expire on 01/07/2013. "
    )


def test_public_submit_vectors() -> None:
    s = decode_submit("07914346466554F601000B914316565811F9000806304253F68449")
    assert (s.number, s.text, s.encoding) == ("+34616585119", "あ叶葉", Encoding.UCS2)
    s = decode_submit("07911326040000F0310D0B911326880736F40000A90FF7FBDD454E87CDE1B0DB357EB701")
    assert (s.text, s.validity, s.message_reference) == ("www.diafaan.com", timedelta(days=3), 13)


def test_ucs2_deliver_and_alphanumeric_sender() -> None:
    # Sender "Alarm" as an alphanumeric address: 5 septets = 35 bits -> 9 semi-octets used.
    name = sms.pack_septets(sms.gsm7_septets_flat("Alarm"))
    sender = bytes((-(-5 * 7 // 4), 0xD0)) + name
    text = "Hjelp! 🚑 Åse"
    ucs2 = text.encode("utf-16-be")
    pdu = deliver_hex(ucs2, len(ucs2), dcs=0x08, sender=sender)
    d = decode_deliver(pdu)
    assert d.sender == "Alarm" and d.sender_type is AddressType.ALPHANUMERIC
    assert d.encoding is Encoding.UCS2 and d.text == text
    assert d.timestamp == datetime(2026, 1, 5, 12, 34, tzinfo=timezone(timedelta(hours=2)))
    oracle = gsmpdu.decodeSmsPdu(pdu)
    assert oracle["number"] == "Alarm"
    assert oracle["time"] == d.timestamp


@pytest.mark.parametrize(
    ("scts", "offset"),
    [
        ("70402132522423", timedelta(hours=8)),  # 32 quarters
        ("7040213252242B", timedelta(hours=-8)),  # sign: bit 3 of the raw octet
    ],
)
def test_scts_zone_sign(scts: str, offset: timedelta) -> None:
    pdu = deliver_hex(b"", 0, scts=scts)
    d = decode_deliver(pdu)
    assert d.timestamp == datetime(2007, 4, 12, 23, 25, 42, tzinfo=timezone(offset))
    assert d.timestamp.utcoffset() == offset
    assert gsmpdu.decodeSmsPdu(pdu)["time"].utcoffset() == offset


def test_scts_with_non_digits_is_an_error() -> None:
    with pytest.raises(SmsError) as err:
        decode_deliver(deliver_hex(b"", 0, scts="7A402132522423"))
    assert err.value.reason == "bad_timestamp"


def test_16bit_concat_reference_and_dcs_groups() -> None:
    udh = bytes.fromhex("06080401020302")  # UDHL 6, IE 08: ref 0x0102, total 3, seq 2
    payload = "hei".encode("utf-16-be")
    d = decode_deliver(deliver_hex(udh + payload, len(udh) + len(payload), dcs=0x18, udhi=True))
    assert d.concat == (0x0102, 3, 2) and d.text == "hei"  # dcs 0x18: UCS-2, class 0 ignored
    d = decode_deliver(deliver_hex(b"\x41\x42", 2, dcs=0xF4))
    assert d.encoding is Encoding.DATA8 and d.text == "AB"


def test_bad_concat_ie_is_ignored() -> None:
    udh = bytes.fromhex("050003070002")  # total 0: the IE is ignored (23.040 9.2.3.24.1)
    d = decode_deliver(deliver_hex(udh + b"x", 7, dcs=0x04, udhi=True))
    assert d.concat is None and d.text == "x"


# --- alphabet and encoding rules ------------------------------------------------------------------


def test_alphabet_tables() -> None:
    assert sms.GSM7_BASIC[0x1C] == "Æ" and sms.GSM7_BASIC[0x0B] == "Ø"
    assert sms.GSM7_BASIC[0x0E] == "Å" and sms.GSM7_BASIC[0x1D] == "æ"
    assert sms.GSM7_BASIC[0x0C] == "ø" and sms.GSM7_BASIC[0x0F] == "å"
    assert set(sms.GSM7_EXTENSION.values()) == set("^{}\\[~]|€\f")
    assert gsm7_encodable(NORWEGIAN) and not gsm7_encodable("\x1b")
    assert not gsm7_encodable("😀") and gsm7_encodable("ä") and not gsm7_encodable("ê")


def test_unknown_escape_shows_default_character() -> None:
    assert sms.gsm7_decode([0x1B, 0x41, 0x1B]) == "A "


def test_norwegian_fits_one_gsm7_part() -> None:
    (pdu,) = encode_submit("+4712345678", NORWEGIAN, reference=1)
    s = decode_submit(pdu.pdu_hex)
    assert s.encoding is Encoding.GSM7 and s.text == NORWEGIAN and s.concat is None
    assert pdu.pdu_hex.startswith("00") and pdu.tpdu_length == len(pdu.pdu_hex) // 2 - 1
    assert s.number == "+4712345678" and s.number_type is AddressType.INTERNATIONAL
    assert pdu.pdu_hex[8:10] == "91"


def test_160_and_161_septets() -> None:
    assert len(encode_submit("12345678", "a" * 160, reference=0)) == 1
    assert len(encode_submit("12345678", "a" * 161, reference=0)) == 2
    assert len(encode_submit("12345678", "€" * 80, reference=0)) == 1
    assert len(encode_submit("12345678", "a" + "€" * 80, reference=0)) == 2


def test_national_number_and_options() -> None:
    (pdu,) = encode_submit(
        "12345678", "x", reference=3, request_status_report=True, validity=timedelta(days=2)
    )
    s = decode_submit(pdu.pdu_hex)
    assert s.number == "12345678" and s.number_type is AddressType.UNKNOWN
    assert pdu.pdu_hex[8:10] == "81"
    assert s.status_report_request and s.validity == timedelta(days=2)
    (pdu,) = encode_submit("12345678", "x", reference=3, validity=timedelta(minutes=7))
    assert decode_submit(pdu.pdu_hex).validity == timedelta(minutes=10)  # never shorter


def test_long_norwegian_two_parts_reassembles() -> None:
    text = ((NORWEGIAN + " ") * 7)[:300]
    assert len(text) == 300
    pdus = encode_submit("+4712345678", text, reference=42)
    assert len(pdus) == 2
    subs = [decode_submit(p.pdu_hex) for p in pdus]
    assert [s.concat for s in subs] == [(42, 2, 1), (42, 2, 2)]
    assert all(s.udh == bytes.fromhex("00032A02") + bytes((i,)) for i, s in enumerate(subs, 1))
    assert all(s.encoding is Encoding.GSM7 for s in subs)
    assert len(subs[0].payload) == 153
    r = Reassembler()
    delivers = [decode_deliver(submit_as_deliver(p.pdu_hex)) for p in pdus]
    assert r.add(delivers[1], NOW) is None
    assert r.add(delivers[0], NOW) == text and len(r) == 0


def test_extension_chars_never_split() -> None:
    text = "€[]" * 60  # 360 septets; 153 would fall inside an escape pair
    pdus = encode_submit("+4712345678", text, reference=9)
    payloads = [decode_submit(p.pdu_hex).payload for p in pdus]
    assert all(len(p) <= 153 for p in payloads)
    assert all(p[-1] != 0x1B for p in payloads)
    assert len(payloads[0]) == 152  # 76 pairs; the 77th would need septets 153 and 154
    assert "".join(decode_submit(p.pdu_hex).text for p in pdus) == text


def test_emoji_goes_ucs2_and_pairs_stay_whole() -> None:
    (one,) = encode_submit("+4712345678", "Hjelp 😀", reference=1)
    assert decode_submit(one.pdu_hex).encoding is Encoding.UCS2
    text = "x" + "😀" * 40  # 81 UTF-16 units: two parts, 67 units would cut a pair
    pdus = encode_submit("+4712345678", text, reference=1)
    payloads = [decode_submit(p.pdu_hex).payload for p in pdus]
    assert [len(p) // 2 for p in payloads] == [67, 14]
    assert "".join(decode_submit(p.pdu_hex).text for p in pdus) == text


def test_usage_errors() -> None:
    for number in ("", "+", "12a4", "+" + "1" * 21):
        with pytest.raises(SmsUsageError):
            encode_submit(number, "x", reference=0)
    with pytest.raises(SmsUsageError):
        encode_submit("123", "x", reference=256)
    with pytest.raises(SmsUsageError):
        encode_submit("123", "x\ud800", reference=0)


# --- reassembly -----------------------------------------------------------------------------------


def _parts(text: str, ref: int) -> list[Deliver]:
    return [
        decode_deliver(submit_as_deliver(p.pdu_hex))
        for p in encode_submit("+47", text, reference=ref)
    ]


def test_reassembler_expire_gives_partial_text_with_marker() -> None:
    parts = _parts("A" * 400, ref=5)
    assert len(parts) == 3
    r = Reassembler()
    assert r.add(parts[0], NOW) is None and r.add(parts[0], NOW) is None  # duplicate kept once
    assert r.add(parts[2], NOW) is None
    assert r.expire(NOW + timedelta(minutes=1), timedelta(minutes=5)) == []
    ((sender, partial),) = r.expire(NOW + timedelta(minutes=6), timedelta(minutes=5))
    assert sender == "+4712345678"
    assert partial == "A" * 153 + "[mangler del 2/3]" + "A" * (400 - 306)
    assert len(r) == 0


def test_reassembler_is_bounded_and_hands_out_evicted() -> None:
    r = Reassembler(max_messages=2)
    for ref in range(3):
        assert r.add(_parts("B" * 200, ref)[0], NOW) is None
    assert len(r) == 2
    evicted = r.expire(NOW, timedelta(hours=1))
    assert evicted == [("+4712345678", "B" * 153 + "[mangler del 2/2]")]


def test_single_sms_passes_straight_through() -> None:
    (d,) = _parts("OK", ref=0)
    assert Reassembler().add(d, NOW) == "OK"


# --- the oracle: python-gsmmodem-new --------------------------------------------------------------

ORACLE_TEXTS = [
    "OK",
    NORWEGIAN,
    "Pris: 10€ [rom 3] {kode} ~ | ^ \\",
    "Ærlig talt " * 40,  # 7-bit multipart
    "Привет, мир",  # UCS-2 (BMP: the oracle cannot encode astral characters)
    "Обход " * 30,  # UCS-2 multipart
]


def _oracle_text(s: str) -> str:
    """The oracle decodes UCS-2 unit by unit; join surrogate halves back into characters."""
    return s.encode("utf-16-be", "surrogatepass").decode("utf-16-be")


@pytest.mark.parametrize("text", [*ORACLE_TEXTS, "Hjelp 😀 " * 20])
def test_oracle_decodes_our_submit(text: str) -> None:
    pdus = encode_submit("+4712345678", text, reference=17)
    decoded = [gsmpdu.decodeSmsPdu(p.pdu_hex) for p in pdus]
    assert all(d["type"] == "SMS-SUBMIT" and d["number"] == "+4712345678" for d in decoded)
    assert [d["tpdu_length"] for d in decoded] == [p.tpdu_length for p in pdus]
    assert _oracle_text("".join(d["text"] for d in decoded)) == text
    if len(pdus) > 1:
        assert [(u.reference, u.parts, u.number) for d in decoded for u in d["udh"]] == [
            (17, len(pdus), i) for i in range(1, len(pdus) + 1)
        ]


@pytest.mark.parametrize("text", ORACLE_TEXTS)
def test_we_decode_oracle_submit_and_deliver(text: str) -> None:
    pdus = gsmpdu.encodeSmsSubmitPdu("+4712345678", text, reference=17, requestStatusReport=False)
    ours = encode_submit("+4712345678", text, reference=17)
    assert len(ours) == len(pdus)
    subs = [decode_submit(str(p)) for p in pdus]
    assert "".join(s.text for s in subs) == text
    assert all(s.number == "+4712345678" for s in subs)
    # Same user data in a DELIVER: our decoder and the oracle's agree on it.
    delivers = [submit_as_deliver(str(p)) for p in pdus]
    r = Reassembler()
    results = [r.add(decode_deliver(h), NOW) for h in delivers]
    assert results[-1] == text
    oracle = [gsmpdu.decodeSmsPdu(h) for h in delivers]
    assert _oracle_text("".join(o["text"] for o in oracle)) == text
    assert all(o["number"] == "+4712345678" for o in oracle)
    # Byte for byte equal but for TP-MR (the oracle writes the reference there, we write 0).
    for p, q in zip(pdus, ours, strict=True):
        assert str(p)[:4] + "00" + str(p)[6:] == q.pdu_hex


# --- properties -----------------------------------------------------------------------------------

_gsm_chars = st.sampled_from(
    sorted(set(sms.GSM7_BASIC.values()) | set(sms.GSM7_EXTENSION.values()))
)
_norwegian = st.sampled_from("ÆØÅæøå")
_astral = st.characters(min_codepoint=0x10000, codec="utf-8")
_texts = st.one_of(
    st.text(_gsm_chars, max_size=500),
    st.text(st.one_of(_gsm_chars, _norwegian), min_size=140, max_size=400),
    st.text(st.one_of(_gsm_chars, _norwegian, st.characters(codec="utf-8")), max_size=300),
    st.text(st.one_of(_norwegian, _astral), min_size=30, max_size=120),
)


def _units(text: str) -> int:
    if gsm7_encodable(text):
        return len(sms.gsm7_septets_flat(text))
    return len(text.encode("utf-16-be")) // 2


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_texts, ref=st.integers(0, 255))
def test_round_trip_and_part_counts(text: str, ref: int) -> None:
    pdus = encode_submit("+4799999999", text, reference=ref)
    units = _units(text)
    gsm7 = gsm7_encodable(text)
    single, per_part = (160, 153) if gsm7 else (70, 67)
    if units <= single:
        assert len(pdus) == 1
    else:
        # Parts are full but for one septet (an escape) or unit (a pair) kept whole.
        assert -(-units // per_part) <= len(pdus) <= -(-units // (per_part - 1))
    r = Reassembler()
    out = [r.add(decode_deliver(submit_as_deliver(p.pdu_hex)), NOW) for p in pdus]
    assert out[-1] == text and all(o is None for o in out[:-1])
    for p in pdus:
        s = decode_submit(p.pdu_hex)
        assert len(s.payload) // (1 if gsm7 else 2) <= (single if len(pdus) == 1 else per_part)
        assert s.encoding is (Encoding.GSM7 if gsm7 else Encoding.UCS2)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=220))
def test_any_bytes_decode_or_sms_error(data: bytes) -> None:
    for pdu in (data, data.hex()):
        with contextlib.suppress(SmsError):
            decode_deliver(pdu)
        with contextlib.suppress(SmsError):
            decode_submit(pdu)


@settings(max_examples=200, deadline=None)
@given(s=st.text(max_size=80))
def test_any_string_decode_or_sms_error(s: str) -> None:
    with contextlib.suppress(SmsError):
        decode_deliver(s)


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(min_size=0, max_size=160), head=st.sampled_from(["0004", "0044", "0024"]))
def test_plausible_delivers_decode_or_sms_error(head: str, tail: bytes) -> None:
    # A valid header up to the UDL so the fuzzing reaches the user data and UDH code.
    pdu = head + "0A917421436587" + "0000" + "62105021430080" + tail.hex()
    with contextlib.suppress(SmsError):
        decode_deliver(pdu)
    for dcs in ("04", "08"):
        with contextlib.suppress(SmsError):
            decode_deliver(pdu[:20] + dcs + pdu[22:])

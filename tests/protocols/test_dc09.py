"""The pure DC-09 codec: vectors from PROTOCOLS.md 1.2/1.4, framing, field quirks, policy.

One table of (frame bytes, expected reply, expected events) drives decoding (every frame fed
to the framer whole and one byte at a time) and encoding (``encode_message`` must give the
same bytes back). Hypothesis checks the round trip and that no input makes the codec raise.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarmd.model import Condition, EventKind, Flag, Priority
from alarmd.protocols.dc09 import (
    MAX_FRAME_BYTES,
    Dc09Account,
    Dc09Error,
    Dc09Framer,
    Dc09Result,
    KeyFormat,
    ReplyKind,
    StalePolicy,
    TimestampPolicy,
    crc16_arc,
    decode_key,
    encode_message,
    encode_nak,
    format_timestamp,
    handle_frame,
    parse_frame,
    parse_reply,
)

KEY128 = b"0123456789ABCDEF"  # the PROTOCOLS.md 1.4 vector's key, ASCII
KEY192 = bytes(range(100, 124))
KEY256 = bytes(range(200, 232))
NOW = datetime(2025, 1, 15, 12, 0, 5, tzinfo=UTC)  # 5 s after the AES vector's timestamp

ACCOUNTS: dict[str, Dc09Account] = {
    "1234": Dc09Account("1234", zone_kinds={3: EventKind.FALL}),
    "1111": Dc09Account("1111"),
    "5678": Dc09Account("5678", key=KEY128),
    "5192": Dc09Account("5192", key=KEY192),
    "5256": Dc09Account("5256", key=KEY256),
    "4444": Dc09Account("4444"),  # known, no key
}
lookup = ACCOUNTS.get
# Property tests: 300 examples in CI; DC09_FUZZ_EXAMPLES=20000 for a deeper run.
FUZZ_EXAMPLES = int(os.environ.get("DC09_FUZZ_EXAMPLES", "300"))


def wrap(body: bytes) -> bytes:
    """LF CRC LEN body CR, written independently of the codec's encoder."""
    return b"\n%04X%04X" % (crc16_arc(body), len(body)) + body + b"\r"


def aes_hex(key: bytes, plaintext: bytes) -> str:
    assert len(plaintext) % 16 == 0
    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return (enc.update(plaintext) + enc.finalize()).hex().upper()


def aes_plain(key: bytes, hex_text: str) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()
    return dec.update(bytes.fromhex(hex_text)) + dec.finalize()


def fixed_pad(n: int) -> bytes:
    return b"ABCDEFGHIJKLMNOP"[:n]


def key_of(account: str | None) -> bytes | None:
    known = ACCOUNTS.get(account or "")
    return known.key if known is not None else None


def handle(frame: bytes, now: datetime = NOW, **kw: Any) -> Dc09Result:
    return handle_frame(frame, now=now, accounts=lookup, **kw)


def summary(result: Dc09Result) -> list[tuple[object, ...]]:
    """(kind, condition, code, zone, partition, sorted flags) per event."""
    return [
        (
            e.kind.value,
            e.condition.value,
            e.code,
            e.zone,
            e.partition,
            tuple(sorted(f.value for f in e.flags)),
        )
        for e in result.events
    ]


def feed_whole(data: bytes, framer: Dc09Framer | None = None) -> list[object]:
    return comparable((framer or Dc09Framer()).feed(data))


def feed_bytewise(data: bytes, framer: Dc09Framer | None = None) -> list[object]:
    framer = framer or Dc09Framer()
    out: list[bytes | Dc09Error] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    return comparable(out)


def comparable(items: list[bytes | Dc09Error]) -> list[object]:
    return [(i.reason, i.detail) if isinstance(i, Dc09Error) else i for i in items]


# --- CRC ------------------------------------------------------------------------------------

CRC_VECTORS = [
    (b"123456789", 0xBB3D, 0x0009),
    (b'"NULL"0000R0L0#0000[]', 0xBC0A, 0x0015),
    (b'"SIA-DCS"0001R1L1#1234[#1234|NFA01]', 0x1CDF, 0x0023),
    (b'"ADM-CID"0002R1L1#1234[#1234|1100 01 001]', 0xEB59, 0x0029),
    (b'"ACK"0001R1L1#1234[]', 0xD277, 0x0014),
    (b'"SIA-DCS"0001RF3L77#1234[#1234|NRR|Atest]', 0xF4D2, 0x0029),
    (b'"NAK"0000R0L0A0[]_16:20:01,09-24-2025', 0xE441, 0x0025),
]


@pytest.mark.parametrize(("data", "crc", "length"), CRC_VECTORS)
def test_crc_vectors(data: bytes, crc: int, length: int) -> None:
    assert crc16_arc(data) == crc
    assert len(data) == length


# The table CRC against the bitwise definition: test_dc09_fast.py
# (test_crc_two_bytes_a_step_is_the_bitwise_crc).


# --- the table of whole frames -------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A frame as bytes, what the receiver must make of it, and how to encode it."""

    frame: bytes
    reply: ReplyKind
    events: list[tuple[object, ...]]
    now: datetime = NOW
    reason: str | None = None
    encode: dict[str, Any] | None = field(default=None)  # encode_message kwargs giving `frame`


def _ts(text: str) -> datetime:
    return datetime.strptime(text, "%H:%M:%S,%m-%d-%Y").replace(tzinfo=UTC)


U = ("unregistered",)
ROWS: dict[str, Row] = {
    # PROTOCOLS.md 1.2: the CRC vectors as complete frames (CRC and length written as given)
    "null": Row(
        b'\nBC0A0015"NULL"0000R0L0#0000[]\r',
        ReplyKind.ACK,
        [],
        encode={
            "token": "NULL",
            "seq": 0,
            "account": "0000",
            "data": "",
            "receiver": "0",
            "line": "0",
        },
    ),
    "sia-fire": Row(
        b'\n1CDF0023"SIA-DCS"0001R1L1#1234[#1234|NFA01]\r',
        ReplyKind.ACK,
        [("fire", "alarm", "SIA:FA", "1", None, ())],
        encode={"token": "SIA-DCS", "seq": 1, "account": "1234", "data": "#1234|NFA01"},
    ),
    "cid-medical": Row(
        b'\nEB590029"ADM-CID"0002R1L1#1234[#1234|1100 01 001]\r',
        ReplyKind.ACK,
        [("assistance", "alarm", "CID:1100", "1", "1", ())],
        encode={"token": "ADM-CID", "seq": 2, "account": "1234", "data": "#1234|1100 01 001"},
    ),
    "sia-text": Row(
        b'\nF4D20029"SIA-DCS"0001RF3L77#1234[#1234|NRR|Atest]\r',
        ReplyKind.ACK,
        [("other_alarm", "alarm", "SIA:RR", None, None, ("unknown_code",))],
        encode={
            "token": "SIA-DCS",
            "seq": "0001",
            "account": "1234",
            "data": "#1234|NRR|Atest",
            "receiver": "F3",
            "line": "77",
        },
    ),
    # replies arriving at a receiver: understood, not processed
    "ack-as-message": Row(
        b'\nD2770014"ACK"0001R1L1#1234[]\r', ReplyKind.DUH, [], reason="unsupported_token"
    ),
    "nak-as-message": Row(
        b'\nE4410025"NAK"0000R0L0A0[]_16:20:01,09-24-2025\r',
        ReplyKind.DUH,
        [],
        reason="unsupported_token",
    ),
    # PROTOCOLS.md 1.2: frames as real panels sent them (L000, L0, no R, no "#" in data)
    "field-null": Row(
        b'\nB0970029"NULL"0000L000#0809[]_21:00:01,02-20-2024\r',
        ReplyKind.ACK,
        [],
        now=_ts("21:00:02,02-20-2024"),
        encode={
            "token": "NULL",
            "seq": 0,
            "account": "0809",
            "data": "",
            "receiver": None,
            "line": "000",
            "timestamp": _ts("21:00:01,02-20-2024"),
        },
    ),
    "field-cid-test": Row(
        b'\nF68B003B"ADM-CID"0028L0#9757[#9757|1602 00 000]_20:59:45,02-20-2024\r',
        ReplyKind.ACK,
        [("test", "alarm", "CID:1602", "0", "0", U)],
        now=_ts("20:59:46,02-20-2024"),
        encode={
            "token": "ADM-CID",
            "seq": 28,
            "account": "9757",
            "data": "#9757|1602 00 000",
            "receiver": None,
            "line": "0",
            "timestamp": _ts("20:59:45,02-20-2024"),
        },
    ),
    "field-sia-no-hash": Row(
        b'\nB4330036"SIA-DCS"0442L000#36214[36214|NRP]_00:00:00,02-21-2024\r',
        ReplyKind.ACK,
        [("test", "alarm", "SIA:RP", None, None, U)],
        now=_ts("00:00:00,02-21-2024"),
        encode={
            "token": "SIA-DCS",
            "seq": 442,
            "account": "36214",
            "data": "36214|NRP",
            "receiver": None,
            "line": "000",
            "timestamp": _ts("00:00:00,02-21-2024"),
        },
    ),
    "field-cid-r15": Row(
        b'\n99820040"ADM-CID"1937R15L1#21401[#21401|1602 00 000]_20:59:59,02-20-2024\r',
        ReplyKind.ACK,
        [("test", "alarm", "CID:1602", "0", "0", U)],
        now=_ts("21:00:30,02-20-2024"),
        encode={
            "token": "ADM-CID",
            "seq": 1937,
            "account": "21401",
            "data": "#21401|1602 00 000",
            "receiver": "15",
            "timestamp": _ts("20:59:59,02-20-2024"),
        },
    ),
    # PROTOCOLS.md 1.4: the AES-128 vector (pad "ABCDEFGHI")
    "aes128-vector": Row(
        b'\n03350078"*ADM-CID"0042R1L1#5678[26E872B9FFD723A3FE1A30962EFF9F7CD71AF1CDF9590C77709C3'
        b"8074C9CBE21E8DEED35EA8DC83B147497E6A9331A93\r",
        ReplyKind.ACK,
        [("assistance", "alarm", "CID:1100", "5", "1", ())],
        encode={
            "token": "ADM-CID",
            "seq": 42,
            "account": "5678",
            "data": "#5678|1100 01 005",
            "timestamp": datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC),
            "key": KEY128,
            "randbytes": fixed_pad,
        },
    ),
}
ROW_IDS = list(ROWS)
ENCODABLE = [name for name, row in ROWS.items() if row.encode is not None]
ENCODE_DEFAULTS = {"receiver": "1", "line": "1"}


@pytest.mark.parametrize("name", ROW_IDS)
def test_table_decode_whole_and_bytewise(name: str) -> None:
    row = ROWS[name]
    assert feed_whole(row.frame) == [row.frame]
    assert feed_bytewise(row.frame) == [row.frame]
    for frame in (row.frame, *(f for f in Dc09Framer().feed(row.frame) if isinstance(f, bytes))):
        result = handle(frame, now=row.now)
        assert result.reply_kind is row.reply, result.reason
        assert result.reason == row.reason
        assert summary(result) == row.events


@pytest.mark.parametrize("name", ENCODABLE)
def test_table_encode_gives_the_same_bytes(name: str) -> None:
    row = ROWS[name]
    assert row.encode is not None
    assert encode_message(**{**ENCODE_DEFAULTS, **row.encode}) == row.frame


def test_table_as_one_stream_whole_and_bytewise() -> None:
    stream = b"".join(row.frame for row in ROWS.values())
    expected = [row.frame for row in ROWS.values()]
    assert feed_whole(stream) == expected
    assert feed_bytewise(stream) == expected


@pytest.mark.parametrize("name", ROW_IDS)
def test_table_replies_echo_the_header(name: str) -> None:
    row = ROWS[name]
    result = handle(row.frame, now=row.now)
    reply = parse_reply(result.reply, key=key_of(result.account))
    assert reply.kind == row.reply.value
    message = parse_frame(row.frame, lookup) if row.reason is None else None
    if message is not None:
        assert (reply.seq, reply.account, reply.receiver, reply.line) == (
            message.seq,
            message.account,
            message.receiver,
            message.line,
        )
        assert reply.encrypted is message.encrypted


def test_aes128_vector_decrypts_to_the_documented_plaintext() -> None:
    frame = ROWS["aes128-vector"].frame
    hex_text = frame[frame.index(b"[") + 1 : -1].decode()
    assert aes_plain(KEY128, hex_text) == b"ABCDEFGHI|#5678|1100 01 005]_12:00:00,01-15-2025"
    message = parse_frame(frame, lookup)
    assert message.encrypted and message.token == "ADM-CID"
    assert message.data == "#5678|1100 01 005"
    assert message.timestamp == datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
    assert (message.seq, message.receiver, message.line, message.account) == (
        "0042",
        "1",
        "1",
        "5678",
    )


def test_ack_and_nak_bytes_are_the_documented_ones() -> None:
    result = handle(ROWS["sia-fire"].frame)
    assert result.reply == b'\nD2770014"ACK"0001R1L1#1234[]\r'
    bad = bytearray(ROWS["sia-fire"].frame)
    bad[1:5] = b"0000"
    nak = handle(bytes(bad), now=datetime(2025, 9, 24, 16, 20, 1, 999, tzinfo=UTC))
    assert (nak.reply_kind, nak.reason) == (ReplyKind.NAK, "crc")
    assert nak.reply == b'\nE4410025"NAK"0000R0L0A0[]_16:20:01,09-24-2025\r'
    assert encode_nak(datetime(2025, 9, 24, 16, 20, 1)) == nak.reply


def test_event_fields() -> None:
    frame = encode_message(
        "ADM-CID", 7, "1111", "#1111|1100 02 012", receiver="1", line="1", timestamp=NOW
    )
    (event,) = handle(frame).events
    assert event.protocol == "dc09" and event.source == "1111"
    assert (event.kind, event.condition, event.priority) == (
        EventKind.ASSISTANCE,
        Condition.ALARM,
        Priority.HIGH,
    )
    assert (event.code, event.zone, event.partition) == ("CID:1100", "12", "2")
    assert event.received_at == NOW and event.occurred_at == NOW
    assert event.raw == frame
    assert event.flags == frozenset() and dict(event.attributes) == {}
    assert re.fullmatch(r"dc09:1111:0007:[0-9a-f]{16}#0", event.dedup_key)


# --- framer ---------------------------------------------------------------------------------

A = ROWS["cid-medical"].frame
B = ROWS["sia-fire"].frame
E = ROWS["aes128-vector"].frame


def test_framer_merged_frames_in_one_read() -> None:
    assert feed_whole(A + B + E) == [A, B, E]


@pytest.mark.parametrize("cut", range(1, len(A + B)))
def test_framer_split_anywhere(cut: int) -> None:
    framer = Dc09Framer()
    data = A + B
    out = framer.feed(data[:cut]) + framer.feed(data[cut:])
    assert out == [A, B]
    assert framer.pending == 0


def test_framer_trailing_nuls_and_crlf_are_silent() -> None:
    data = A + b"\x00\x00\x00" + B + b"\n" + E + b"\r\n\x00" + A + b"\n"
    for feed in (feed_whole, feed_bytewise):
        framer = Dc09Framer()
        assert feed(data, framer) == [A, B, E, A]
        assert framer.pending == 0  # a dangling LF is a separator, not a partial frame


def test_framer_pending_counts_a_partial_frame() -> None:
    framer = Dc09Framer()
    assert framer.feed(A[:20]) == []
    assert framer.pending == 20
    assert framer.feed(A[20:]) == [A]
    assert framer.pending == 0


def test_framer_reports_garbage_once_and_recovers() -> None:
    data = b"GET / HTTP/1.1\r\n" + A + b"junk" + B
    whole = feed_whole(data)
    assert whole == feed_bytewise(data)
    assert whole == [
        ("garbage", "12 bytes: " + b"GET/HTTP/1.1".hex()),  # one run; blanks, CR, LF not counted
        A,
        ("garbage", "4 bytes: " + b"junk".hex()),
        B,
    ]


def test_framer_too_long_then_recovery() -> None:
    data = b'\n00000000"' + b"A" * 3000 + b"\r" + b"tail" + A
    expected = [("frame_too_long", f"more than {MAX_FRAME_BYTES} bytes without a CR"), A]
    assert feed_whole(data) == feed_bytewise(data) == expected


def test_framer_too_long_is_bounded_memory() -> None:
    framer = Dc09Framer(max_frame_bytes=64)
    errors = framer.feed(b'\n00000000"')
    for _ in range(100):
        errors += framer.feed(b"A" * 50)
        assert framer.pending <= 64
    assert comparable(errors) == [("frame_too_long", "more than 64 bytes without a CR")]
    assert framer.feed(b"AAA\r" + A) == [A]  # the rest of it is dropped up to the next LF


def test_framer_bound_is_inclusive() -> None:
    assert Dc09Framer(max_frame_bytes=len(A)).feed(A) == [A]
    out = comparable(Dc09Framer(max_frame_bytes=len(A) - 1).feed(A + B))
    assert out == [("frame_too_long", f"more than {len(A) - 1} bytes without a CR"), B]


def test_max_frame_bytes_default() -> None:
    out = comparable(Dc09Framer().feed(b'\n00000000"' + b"x" * MAX_FRAME_BYTES))
    assert out == [("frame_too_long", f"more than {MAX_FRAME_BYTES} bytes without a CR")]


def test_framer_truncated_frame_is_reported_and_the_next_one_taken() -> None:
    data = A[:30] + B
    for feed in (feed_whole, feed_bytewise):
        out = feed(data)
        assert out[0][0] == "truncated"  # type: ignore[index]
        assert out[1:] == [B]


def test_framer_wrong_length_field_still_yields_the_frame_for_a_nak() -> None:
    bad = A[:5] + b"0099" + A[9:]  # length field lies
    assert feed_whole(bad + B) == [bad, B]
    result = handle(bad)
    assert (result.reply_kind, result.reason) == (ReplyKind.NAK, "length")


def _binary_crc_frame_with(byte: int) -> bytes:
    """A binary-CRC frame whose CRC contains ``byte`` (0x0A or 0x0D), found by trying seqs."""
    for seq in range(1, 10000):
        frame = encode_message(
            "ADM-CID", seq, "1234", "#1234|1100 01 001", receiver="1", line="1", binary_crc=True
        )
        if byte in frame[1:3]:
            return frame
    raise AssertionError("no such seq")


@pytest.mark.parametrize("byte", [0x0A, 0x0D])
def test_framer_binary_crc_containing_lf_or_cr(byte: int) -> None:
    frame = _binary_crc_frame_with(byte)
    assert byte in frame[1:3]
    data = A + frame + b"\n" + frame + B  # also after a stray LF
    assert feed_whole(data) == [A, frame, frame, B]
    assert feed_bytewise(data) == [A, frame, frame, B]
    result = handle(frame)
    assert result.reply_kind is ReplyKind.ACK
    assert summary(result) == [("assistance", "alarm", "CID:1100", "1", "1", ())]


def test_binary_crc_either_byte_order() -> None:
    frame = encode_message("ADM-CID", 3, "1234", "#1234|1100 01 001", binary_crc=True)
    swapped = frame[:1] + frame[2:3] + frame[1:2] + frame[3:]
    assert handle(swapped).reply_kind is ReplyKind.ACK


# --- field quirks ----------------------------------------------------------------------------


def test_lowercase_hex_everywhere() -> None:
    field_row = ROWS["field-cid-test"]
    lowered = field_row.frame[:9].lower() + field_row.frame[9:]
    assert lowered != field_row.frame
    result = handle(lowered, now=field_row.now)
    assert result.reply_kind is ReplyKind.ACK and summary(result) == field_row.events

    body = ROWS["aes128-vector"].frame[9:-1]
    i = body.index(b"[")
    result = handle(wrap(body[:i] + body[i:].lower()))
    assert result.reply_kind is ReplyKind.ACK
    assert summary(result) == ROWS["aes128-vector"].events

    clear = wrap(b'"ADM-CID"0002Rf1L1#abcd[#abcd|1100 01 001]')
    result = handle(clear[:5].lower() + clear[5:])
    assert result.reply_kind is ReplyKind.ACK and result.account == "ABCD"
    assert result.reply.endswith(b'"ACK"0002Rf1L1#abcd[]\r')  # echoed as received


def test_cid_without_hash_and_without_blanks() -> None:
    for data in ("10064|1602 00 000", "#1234|110001 001", "1100 01 001"):
        frame = encode_message("ADM-CID", 1, "10064", data, line="0")
        result = handle(frame)
        assert result.reply_kind is ReplyKind.ACK, data
        assert len(result.events) == 1


def test_sia_time_modifier_without_separator() -> None:
    frame = encode_message("SIA-DCS", 1, "1111", "#1111|Nti13:23:12MA1", receiver="1", line="1")
    (event,) = handle(frame).events
    assert (event.kind, event.code, event.zone) == (EventKind.ASSISTANCE, "SIA:MA", "1")
    assert event.attributes["ti"] == "13:23:12"


def test_null_with_dummy_payload_is_a_link_test() -> None:
    frame = encode_message("NULL", 0, "1111", "#0000|0000 00 000")
    result = handle(frame)
    assert result.reply_kind is ReplyKind.ACK and result.is_link_test and result.events == ()


def _pad16(rest: bytes, char: bytes) -> bytes:
    return char * (16 - len(rest) % 16) + rest


@pytest.mark.parametrize(
    "plaintext",
    [
        _pad16(b"#5678|1100 01 005]_12:00:00,01-15-2025", b"Q"),  # pad without "|"
        _pad16(b"|#5678|1100 01 005]_12:00:00,01-15-2025", b"0"),  # zero pad with "|"
        _pad16(b"#5678|1100 01 005]_12:00:00,01-15-2025", b"0"),  # zero pad without "|"
        _pad16(b"5678|1100 01 005]_12:00:00,01-15-2025", b"0"),  # ... and no "#" either
        _pad16(b"|1100 01 005]_12:00:00,01-15-2025", b"0"),  # no account in the data
        b"x#y" + _pad16(b"|#5678|1100 01 005]_12:00:00,01-15-2025", b"Z")[3:],  # "#" in pad
    ],
)
def test_lenient_pad_strip(plaintext: bytes) -> None:
    body = b'"*ADM-CID"0042R1L1#5678[' + aes_hex(KEY128, plaintext).encode()
    result = handle(wrap(body))
    assert result.reply_kind is ReplyKind.ACK, result.reason
    assert summary(result) == [("assistance", "alarm", "CID:1100", "5", "1", ())]


def test_encrypted_null_without_separator() -> None:
    ciphertext = aes_hex(KEY128, _pad16(b"]_12:00:00,01-15-2025", b"0"))
    result = handle(wrap(b'"*NULL"0000R1L1#5678[' + ciphertext.encode()))
    assert result.reply_kind is ReplyKind.ACK and result.is_link_test


def test_sia_several_events_in_one_block_with_area_and_text() -> None:
    frame = encode_message(
        "SIA-DCS", 9, "1111", "#1111|Nri2/MA001/FA002|AKjøkken", receiver="1", line="1"
    )
    result = handle(frame)
    assert summary(result) == [
        ("assistance", "alarm", "SIA:MA", "1", "2", ()),
        ("fire", "alarm", "SIA:FA", "2", "2", ()),
    ]
    assert [e.text for e in result.events] == ["Kjøkken", "Kjøkken"]
    assert [e.dedup_key[-2:] for e in result.events] == ["#0", "#1"]
    assert len({e.dedup_key for e in result.events}) == 2


def test_sia_text_may_contain_a_bar() -> None:
    frame = encode_message("SIA-DCS", 9, "1111", "#1111|NMA001|AStue|2. etg")
    (event,) = handle(frame).events
    assert event.text == "Stue|2. etg"


def test_non_ascii_digits_are_not_numbers() -> None:
    result = handle(wrap('"SIA-DCS"٠٠٠١R1L1#1111[#1111|NMA001]'.encode()))
    assert (result.reply_kind, result.reason) == (ReplyKind.NAK, "format")
    result = handle(encode_message("SIA-DCS", 1, "1111", "#1111|NMA٣"))
    assert (result.reply_kind, result.reason) == (ReplyKind.DUH, "unsupported_data")


def test_sia_modifiers_persist_and_change() -> None:
    frame = encode_message("SIA-DCS", 9, "1111", "#1111|Nri1MA001/id5/ri3/TA004/pi12MH001")
    events = handle(frame).events
    assert [(e.code, e.partition, dict(e.attributes)) for e in events] == [
        ("SIA:MA", "1", {}),
        ("SIA:TA", "3", {"id": "5"}),
        ("SIA:MH", "3", {"id": "5", "pi": "12"}),
    ]
    assert events[2].condition is Condition.RESTORE


def test_xdata_become_attributes() -> None:
    body = (
        b'"SIA-DCS"0005R1L1#1111[#1111|Nri1/PA501][X006E07.7777777][Y49N06.6666666]'
        b"_20:45:46,04-22-2021"
    )
    result = handle(wrap(body), now=datetime(2021, 4, 22, 20, 45, 50, tzinfo=UTC))
    (event,) = result.events
    assert (event.kind, event.zone, event.partition) == (EventKind.PANIC, "501", "1")
    assert dict(event.attributes) == {"X": "006E07.7777777", "Y": "49N06.6666666"}
    assert result.message is not None
    assert result.message.xdata == (("X", "006E07.7777777"), ("Y", "49N06.6666666"))


def test_trailing_nul_and_crlf_in_a_datagram() -> None:
    for suffix in (b"\x00\x00", b"\n", b"\n\x00"):
        assert handle(A + suffix).reply_kind is ReplyKind.ACK


def test_unknown_codes_are_alarms_never_dropped() -> None:
    for token, data, code in [
        ("ADM-CID", "#1111|1999 01 007", "CID:1999"),
        ("ADM-CID", "#1111|9100 01 007", "CID:9100"),  # unknown qualifier
        ("SIA-DCS", "#1111|NQQ007", "SIA:QQ"),
    ]:
        (event,) = handle(encode_message(token, 1, "1111", data)).events
        assert (event.code, event.condition) == (code, Condition.ALARM)
        assert Flag.UNKNOWN_CODE in event.flags
        assert event.category == "alarm"
    (known_kind,) = handle(encode_message("ADM-CID", 1, "1111", "#1111|9100 01 007")).events
    assert known_kind.kind is EventKind.ASSISTANCE  # the code is known, the qualifier is not


def test_restore_and_status_qualifiers() -> None:
    got = []
    for q in "136":
        (event,) = handle(encode_message("ADM-CID", 1, "1111", f"#1111|{q}301 00 000")).events
        got.append((event.kind, event.condition))
    assert got == [
        (EventKind.MAINS_LOST, Condition.ALARM),
        (EventKind.MAINS_LOST, Condition.RESTORE),
        (EventKind.MAINS_LOST, Condition.STATUS),
    ]


# --- refusals -------------------------------------------------------------------------------


def _reply(result: Dc09Result, key: bytes | None = None) -> Any:
    return parse_reply(result.reply, key=key)


def test_garbage_gets_no_reply() -> None:
    for junk in (b"", b"hello", b"\n", b"\r\n\x00", b"\nXYZ\r"):
        result = handle(junk)
        assert (result.reply_kind, result.reply, result.reason) == (ReplyKind.NONE, b"", "garbage")


def test_bad_header_format_gets_a_nak() -> None:
    result = handle(wrap(b'"ADM-CID"12R1L1#1234[#1234|1100 01 001]'))  # 2-digit seq
    assert (result.reply_kind, result.reason) == (ReplyKind.NAK, "format")
    result = handle(wrap(b'"ADM-CID"0012R1L1[#1234|1100 01 001]'))  # no account
    assert (result.reply_kind, result.reason) == (ReplyKind.NAK, "format")
    result = handle(wrap(b'"ADM-CID"0012R1L1#1234[#1234|1100 01 001]junk'))
    assert (result.reply_kind, result.reason) == (ReplyKind.NAK, "format")


def test_unsupported_data_gets_a_duh_echoing_the_header() -> None:
    result = handle(encode_message("ADM-CID", 77, "1111", "#1111|hello", receiver="2", line="3"))
    assert (result.reply_kind, result.reason, result.account) == (
        ReplyKind.DUH,
        "unsupported_data",
        "1111",
    )
    reply = _reply(result)
    assert (reply.kind, reply.seq, reply.receiver, reply.line, reply.account) == (
        "DUH",
        "0077",
        "2",
        "3",
        "1111",
    )


@pytest.mark.parametrize(("account", "key"), [("5678", KEY128), ("5192", KEY192), ("5256", KEY256)])
def test_encryption_128_192_256(account: str, key: bytes) -> None:
    frame = encode_message(
        "SIA-DCS",
        12,
        account,
        f"#{account}|Nri1/MA003",
        receiver="1",
        line="1",
        xdata=[("M", "0011223344AA")],
        timestamp=NOW - timedelta(seconds=3),
        key=key,
    )
    assert frame.startswith(b"\n") and b'"*SIA-DCS"0012R1L1#' + account.encode() + b"[" in frame
    result = handle(frame)
    assert result.reply_kind is ReplyKind.ACK
    assert summary(result) == [("assistance", "alarm", "SIA:MA", "3", "1", ())]
    assert result.events[0].attributes["M"] == "0011223344AA"
    assert b'"*ACK"0012R1L1#' in result.reply
    reply = _reply(result, key)
    assert (reply.kind, reply.encrypted, reply.seq, reply.account) == ("ACK", True, "0012", account)
    assert reply.timestamp == NOW.replace(microsecond=0)
    hex_text = result.reply[result.reply.index(b"[") + 1 : -1].decode()
    plain = aes_plain(key, hex_text)
    assert len(plain) % 16 == 0
    pad, rest = plain.split(b"|", 1)
    assert 1 <= len(pad) <= 16 and not set(pad) & set(b"|[]")
    assert rest == b"]_" + format_timestamp(NOW).encode()


def test_star_ack_pad_is_random_and_never_a_delimiter() -> None:
    frame = encode_message("NULL", 0, "5678", "", timestamp=NOW, key=KEY128)
    replies = {handle(frame, randbytes=lambda n: bytes([0x7C, 0x5B, 0x5D] * n)[:n]).reply}
    replies |= {handle(frame).reply for _ in range(5)}
    assert len(replies) == 6  # os.urandom by default
    plain = aes_plain(KEY128, sorted(replies)[0][sorted(replies)[0].index(b"[") + 1 : -1].decode())
    assert plain.count(b"|") == 1


def test_decode_key_formats() -> None:
    assert decode_key("0123456789ABCDEF", KeyFormat.ASCII) == KEY128
    assert decode_key("30313233343536373839414243444546", KeyFormat.HEX) == KEY128
    assert len(decode_key("30313233343536373839414243444546", KeyFormat.ASCII)) == 32
    assert decode_key("3031 3233 3435 3637 3839 4142 4344 4546", KeyFormat.HEX) == KEY128
    assert len(decode_key("ab" * 24, KeyFormat.HEX)) == 24
    assert len(decode_key("x" * 24, KeyFormat.ASCII)) == 24
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        decode_key("short", KeyFormat.ASCII)
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        decode_key("00" * 20, KeyFormat.HEX)
    with pytest.raises(ValueError, match="hex digits"):
        decode_key("zz" * 16, KeyFormat.HEX)
    with pytest.raises(ValueError, match="ASCII"):
        decode_key("æ" * 16, KeyFormat.ASCII)


def test_clear_text_from_a_keyed_account_is_refused() -> None:
    result = handle(encode_message("ADM-CID", 5, "5678", "#5678|1100 01 001", receiver="1"))
    assert (result.reply_kind, result.reason, result.events) == (
        ReplyKind.DUH,
        "clear_text_for_keyed_account",
        (),
    )
    reply = _reply(result)
    assert (reply.kind, reply.encrypted, reply.seq, reply.account) == ("DUH", False, "0005", "5678")


def test_encrypted_from_unknown_account_or_without_key() -> None:
    frame = encode_message("ADM-CID", 5, "9999", "#9999|1100 01 001", timestamp=NOW, key=KEY128)
    result = handle(frame)
    assert (result.reply_kind, result.reason) == (ReplyKind.DUH, "unknown_account_encrypted")
    frame = encode_message("ADM-CID", 5, "4444", "#4444|1100 01 001", timestamp=NOW, key=KEY128)
    assert handle(frame).reason == "no_key"


def test_wrong_key_is_a_duh() -> None:
    frame = encode_message("ADM-CID", 5, "5678", "#5678|1100 01 001", timestamp=NOW, key=KEY256)
    result = handle(frame)
    assert (result.reply_kind, result.reason) == (ReplyKind.DUH, "decrypt")


def test_unknown_account_in_clear_is_accepted_and_flagged() -> None:
    result = handle(encode_message("ADM-CID", 5, "ABCDEF", "#ABCDEF|1100 01 001", receiver="1"))
    assert result.reply_kind is ReplyKind.ACK
    assert summary(result) == [("assistance", "alarm", "CID:1100", "1", "1", U)]


# --- timestamp window ------------------------------------------------------------------------


def _encrypted_at(offset_s: float) -> bytes:
    return encode_message(
        "ADM-CID",
        8,
        "5678",
        "#5678|1100 01 001",
        timestamp=NOW + timedelta(seconds=offset_s),
        key=KEY128,
    )


def test_encrypted_21s_ahead_is_naked_with_our_time() -> None:
    result = handle(_encrypted_at(21))
    assert (result.reply_kind, result.reason, result.events) == (ReplyKind.NAK, "timestamp", ())
    reply = _reply(result)
    assert (reply.kind, reply.encrypted, reply.seq) == ("NAK", False, "0000")
    assert reply.timestamp == NOW.replace(microsecond=0)


@pytest.mark.parametrize(
    ("offset", "kind"), [(20, "ACK"), (-39, "ACK"), (-40, "ACK"), (-41, "NAK")]
)
def test_encrypted_window_edges(offset: int, kind: str) -> None:
    assert handle(_encrypted_at(offset)).reply_kind.value == kind


def test_encrypted_without_timestamp_is_naked() -> None:
    frame = encode_message("ADM-CID", 8, "5678", "#5678|1100 01 001", key=KEY128)
    result = handle(frame)
    assert (result.reply_kind, result.reason) == (ReplyKind.NAK, "timestamp_missing")


def test_clear_stale_accepted_and_flagged_by_default_or_naked_by_policy() -> None:
    frame = encode_message(
        "ADM-CID", 8, "1111", "#1111|1100 01 001", timestamp=NOW - timedelta(minutes=5)
    )
    result = handle(frame)
    assert result.reply_kind is ReplyKind.ACK
    assert Flag.STALE_TIMESTAMP in result.events[0].flags
    strict = TimestampPolicy(stale_clear_text=StalePolicy.NAK)
    result = handle(frame, policy=strict)
    assert (result.reply_kind, result.reason, result.events) == (ReplyKind.NAK, "timestamp", ())
    wide = TimestampPolicy(behind=timedelta(minutes=10), stale_clear_text=StalePolicy.NAK)
    assert handle(frame, policy=wide).events[0].flags == frozenset()
    no_time = encode_message("ADM-CID", 8, "1111", "#1111|1100 01 001")
    assert handle(no_time, policy=strict).reply_kind is ReplyKind.ACK  # optional in clear


def test_naive_now_is_taken_as_utc() -> None:
    result = handle(_encrypted_at(0), now=NOW.replace(tzinfo=None))
    assert result.reply_kind is ReplyKind.ACK


# --- retransmission and de-duplication ----------------------------------------------------------


def test_retransmission_has_the_same_dedup_key() -> None:
    def key_of(seq: int, data: str, offset: float, **kw: Any) -> str:
        frame = encode_message(
            "ADM-CID", seq, "5678", data, timestamp=NOW + timedelta(seconds=offset), key=KEY128
        )
        (event,) = handle(frame, **kw).events
        return event.dedup_key

    first = key_of(3, "#5678|1100 01 001", -30)
    assert key_of(3, "#5678|1100 01 001", 0) == first  # new timestamp and pad: same message
    assert key_of(4, "#5678|1100 01 001", 0) != first  # another seq
    assert key_of(3, "#5678|1100 01 002", 0) != first  # another content


def test_xdata_is_part_of_the_message_identity() -> None:
    keys = {
        handle(encode_message("SIA-DCS", 3, "1111", "#1111|NMA1", xdata=x)).events[0].dedup_key
        for x in ((), (("X", "1"),), (("X", "2"),))
    }
    assert len(keys) == 3


# --- per-account zone override ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind", "flags"),
    [
        ("#1234|1100 01 003", EventKind.FALL, ()),  # zone 3 is a fall detector
        ("#1234|3100 01 003", EventKind.FALL, ()),  # ... and its restore
        ("#1234|1120 01 003", EventKind.FALL, ()),  # vendors that send panic for a fall
        ("#1234|1999 01 003", EventKind.FALL, ("unknown_code",)),
        ("#1234|1384 01 003", EventKind.BATTERY_LOW, ()),  # technical stays technical
        ("#1234|1100 01 004", EventKind.ASSISTANCE, ()),  # another zone
    ],
)
def test_zone_override(data: str, kind: EventKind, flags: tuple[str, ...]) -> None:
    (event,) = handle(encode_message("ADM-CID", 1, "1234", data)).events
    assert event.kind is kind
    assert event.priority == kind.default_priority
    assert tuple(sorted(f.value for f in event.flags)) == flags


def test_zone_override_for_sia() -> None:
    events = handle(encode_message("SIA-DCS", 1, "1234", "#1234|NMA003/XT003")).events
    assert [e.kind for e in events] == [EventKind.FALL, EventKind.BATTERY_LOW]


def test_zone_override_only_for_that_account() -> None:
    (event,) = handle(encode_message("ADM-CID", 1, "1111", "#1111|1100 01 003")).events
    assert event.kind is EventKind.ASSISTANCE


# --- properties ----------------------------------------------------------------------------------

HEX = "0123456789ABCDEF"
TEXT = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,-:æøåÆØÅ"), max_size=20
)
XVALUE = st.text(alphabet=st.sampled_from("0123456789ABCDEFNSEW.:-_ abc"), max_size=16)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    account = draw(st.text(alphabet=HEX, min_size=3, max_size=16))
    token = draw(st.sampled_from(["SIA-DCS", "ADM-CID", "NULL"]))
    if token == "ADM-CID":
        q = draw(st.sampled_from("136"))
        code, group, zone = (
            draw(st.integers(0, 999)),
            draw(st.integers(0, 99)),
            draw(st.integers(0, 999)),
        )
        data = f"#{account}|{q}{code:03d} {group:02d} {zone:03d}"
    elif token == "SIA-DCS":
        pieces = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["", "ri1", "ri12", "id3", "pi7", "ti10:11"]),
                    st.text(alphabet="ABFGMNPQRTWXYZ", min_size=2, max_size=2),
                    st.text(alphabet="0123456789", max_size=4),
                ),
                min_size=1,
                max_size=4,
            )
        )
        block = "/".join(f"{m}{c}{u}" if not m else f"{m}/{c}{u}" for m, c, u in pieces)
        text = draw(st.none() | TEXT)
        data = f"#{account}|N{block}" + (f"|A{text}" if text is not None else "")
    else:
        data = ""
    key = draw(
        st.none()
        | st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    )
    timestamp = draw(
        st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
            lambda d: d.replace(microsecond=0, tzinfo=UTC)
        )
    )
    if key is None and draw(st.booleans()):
        timestamp = None
    return {
        "token": token,
        "seq": draw(st.integers(0, 9999)),
        "account": account,
        "data": data,
        "receiver": draw(st.none() | st.text(alphabet=HEX, min_size=1, max_size=6)),
        "line": draw(st.text(alphabet=HEX, min_size=1, max_size=6)),
        "xdata": draw(
            st.lists(st.tuples(st.sampled_from("ACHIJLMNOPRSTVXYZ"), XVALUE), max_size=3)
        ),
        "timestamp": timestamp,
        "key": key,
        "randbytes": (lambda pad: lambda n: pad[:n])(draw(st.binary(min_size=16, max_size=16))),
        "binary_crc": draw(st.booleans()),
    }


@given(messages(), st.integers(1, 50))
@settings(max_examples=FUZZ_EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(m: dict[str, Any], chunk: int) -> None:
    frame = encode_message(**m)
    account = Dc09Account(m["account"], key=m["key"])
    accounts = {m["account"]: account}.get
    now = m["timestamp"] or NOW
    framer = Dc09Framer()
    out: list[bytes | Dc09Error] = []
    for i in range(0, len(frame), chunk):
        out += framer.feed(frame[i : i + chunk])
    assert out == [frame]
    result = handle_frame(frame, now=now, accounts=accounts)
    assert result.reply_kind is ReplyKind.ACK, result.reason
    msg = result.message
    assert msg is not None
    assert (msg.token, msg.seq, msg.account, msg.receiver, msg.line) == (
        m["token"],
        f"{m['seq']:04d}",
        m["account"],
        m["receiver"],
        m["line"],
    )
    assert (msg.encrypted, msg.data, msg.xdata, msg.timestamp) == (
        m["key"] is not None,
        m["data"],
        tuple(x for x in m["xdata"]),
        m["timestamp"],
    )
    assert (len(result.events) > 0) is (m["token"] != "NULL")
    for event in result.events:
        assert event.occurred_at == m["timestamp"] and event.source == m["account"]
        for letter, value in dict(m["xdata"]).items():
            assert event.attributes[letter] == value
    reply = parse_reply(result.reply, key=m["key"])
    assert (reply.kind, reply.seq, reply.encrypted) == ("ACK", msg.seq, m["key"] is not None)


def _check_result(result: Dc09Result) -> None:
    assert isinstance(result, Dc09Result)
    assert result.reason != "internal_error"
    if result.reply_kind is ReplyKind.NONE:
        assert result.reply == b""
    else:
        assert result.reply.startswith(b"\n") and result.reply.endswith(b"\r")
        assert parse_reply(result.reply, key_of(result.account)).kind == result.reply_kind.value
    if result.events:
        assert result.reply_kind is ReplyKind.ACK


def _exercise(data: bytes) -> None:
    framer_items = Dc09Framer().feed(data)
    for item in framer_items:
        assert isinstance(item, bytes | Dc09Error)
        if isinstance(item, bytes):
            _check_result(handle(item))
    _check_result(handle(data))  # as a datagram


@given(st.binary(max_size=400))
@settings(max_examples=FUZZ_EXAMPLES)
def test_any_bytes_give_frames_errors_or_replies_never_an_exception(data: bytes) -> None:
    _exercise(data)
    assert feed_whole(data) == feed_bytewise(data)


SEEDS = [row.frame for row in ROWS.values()] + [_binary_crc_frame_with(0x0A)]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "set" and frame:
            frame[i] = draw(st.sampled_from(b'\n\r\x00"[]|#_*0AZaz9 :,-/'))
        elif op == "insert":
            frame.insert(i, draw(st.integers(0, 255)))
        elif op == "delete" and frame:
            del frame[i]
        else:
            del frame[i:]
    return bytes(frame)


@given(mutated_frames(), st.lists(st.integers(1, 30), max_size=8))
@settings(max_examples=FUZZ_EXAMPLES * 2)
def test_mutated_frames_never_raise_and_split_independently(data: bytes, chunks: list[int]) -> None:
    _exercise(data)
    framer = Dc09Framer()
    out: list[bytes | Dc09Error] = []
    pos = 0
    for size in chunks:
        out += framer.feed(data[pos : pos + size])
        pos += size
    out += framer.feed(data[pos:])
    assert comparable(out) == feed_whole(data)


def test_handle_frame_contains_an_accounts_failure() -> None:
    def broken(_account: str) -> Dc09Account | None:
        raise RuntimeError("database gone")

    result = handle_frame(A, now=NOW, accounts=broken)
    assert (result.reply_kind, result.reason, result.account) == (
        ReplyKind.NONE,
        "internal_error",
        "1234",
    )


@given(
    st.lists(st.sampled_from(SEEDS) | st.binary(max_size=60), max_size=6).map(b"".join),
    st.lists(st.integers(1, 40), max_size=10),
    st.integers(16, 80),
)
@settings(max_examples=FUZZ_EXAMPLES)
def test_framer_output_does_not_depend_on_read_sizes(
    data: bytes, chunks: list[int], bound: int
) -> None:
    """With a small bound, too-long, discard and garbage paths are all split-independent."""
    framer = Dc09Framer(max_frame_bytes=bound)
    out: list[bytes | Dc09Error] = []
    pos = 0
    for size in chunks:
        out += framer.feed(data[pos : pos + size])
        assert framer.pending <= bound
        pos += size
    out += framer.feed(data[pos:])
    assert comparable(out) == feed_whole(data, Dc09Framer(max_frame_bytes=bound))
    assert comparable(out) == feed_bytewise(data, Dc09Framer(max_frame_bytes=bound))

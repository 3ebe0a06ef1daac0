"""The codec's fast path for common clear frames gives what the general path gives.

``handle_frame`` takes a shortcut for a clear frame with a hex CRC, an account, an ASCII
data block and an optional timestamp; ``_handle_any`` is the general path. Hypothesis
builds frames around that shape (and just outside it) and holds the two to the same
``Dc09Result``. The frozen values the codec builds without their ``__init__`` must equal
the ones built with it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarmd.model import Condition, Event, EventKind, Flag, Priority
from alarmd.protocols import dc09
from alarmd.protocols.dc09 import (
    Dc09Account,
    Dc09Message,
    Dc09Result,
    ReplyKind,
    StalePolicy,
    TimestampPolicy,
    crc16_arc,
    encode_message,
    handle_frame,
)

NOW = datetime(2025, 1, 15, 12, 0, 5, tzinfo=UTC)
ACCOUNTS: dict[str, Dc09Account] = {
    "1234": Dc09Account("1234", zone_kinds={3: EventKind.FALL, 1: EventKind.EXIT}),
    "10000": Dc09Account("10000"),
    "5678": Dc09Account("5678", key=b"0123456789ABCDEF"),
    "ABCD": Dc09Account("ABCD"),
}
FUZZ_EXAMPLES = int(os.environ.get("DC09_FUZZ_EXAMPLES", "300"))
HEX = "0123456789ABCDEFabcdef"


def _pad(n: int) -> bytes:
    return b"Q" * n


def _crc_bitwise(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@given(st.binary(max_size=300))
@settings(max_examples=FUZZ_EXAMPLES)
def test_crc_two_bytes_a_step_is_the_bitwise_crc(data: bytes) -> None:
    assert crc16_arc(data) == _crc_bitwise(data)
    assert crc16_arc(bytearray(data)) == _crc_bitwise(data)
    assert crc16_arc(memoryview(data)[1:]) == _crc_bitwise(data[1:])


def _hex(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(HEX), min_size=min_size, max_size=max_size)


_cid = st.builds(
    lambda acct, q, code, group, zone, blank: f"{acct}{q}{code}{blank}{group}{blank}{zone}",
    st.sampled_from(["", "#1234|", "1234|", "#10000|", " "]),
    st.sampled_from("013456Bb"),
    st.one_of(st.sampled_from(["100", "101", "110", "602", "999"]), _hex(3, 3)),
    _hex(2, 2),
    st.one_of(st.sampled_from(["001", "003", "000", "00B"]), _hex(3, 3)),
    st.sampled_from([" ", ""]),
)
_sia = st.builds(
    lambda acct, block, text: f"{acct}{block}{text}",
    st.sampled_from(["", "#1234|", "1234|", "#ABCD|"]),
    st.sampled_from(
        [
            "Nri1/MA001",
            "NMA1",
            "Nri1/MA001/FA002",
            "NA01",
            "Nri2BA3/ri1XX4",
            "Nti13:23:12MA1",
            "Nid12/pi3/YT",
            "N",
            "",
            "Nri1/ma1",
        ]
    ),
    st.sampled_from(["", "|Ahello", "|Aa|b", "|B"]),
)
_junk = st.text(
    st.sampled_from([*"0123456789ABC #|/[]_-:,\t\x00\r\n", "é", "\x85", "\udc80"]),
    max_size=24,
)
_timestamp = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "_12:00:00,01-15-2025",
            "_11:59:00,01-15-2025",  # stale (65 s behind)
            "_12:01:00,01-15-2025",  # ahead
            "_25:00:00,01-15-2025",  # no such hour
            "_12:00:00,02-30-2025",  # no such day
            "_12:00:00,01-15-25",  # short
            "_12:00:00,01-15-2025X",
            "[Vvideo]_12:00:00,01-15-2025",
            "[Vvideo]",
        ]
    ),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    # Mostly well-formed headers (the fast path's shape), sometimes just outside it.
    wild = draw(st.integers(0, 3)) == 0
    tokens = ["ADM-CID", "SIA-DCS", "NULL"]
    token = draw(st.sampled_from([*tokens, "adm-cid", "*ADM-CID", "X"] if wild else tokens))
    seqs = ["0001", "9999", "0420"]
    seq = draw(st.sampled_from([*seqs, "001", "12345"] if wild else seqs))
    hex_field = _hex(0, 7) if wild else _hex(1, 6)
    receiver = draw(st.one_of(st.none(), hex_field))
    line = draw(hex_field)
    known = st.sampled_from(["1234", "10000", "5678", "ABCD", "abcd", "9999"])
    account = draw(st.one_of(known, st.none(), _hex(0, 17)) if wild else known)
    data = draw(st.one_of(_cid, _cid, _sia, _sia, _junk, st.just("")))
    tail = draw(_timestamp) or ""
    body = f'"{token}"{seq}'
    if receiver is not None:
        body += f"R{receiver}"
    body += f"L{line}"
    if account is not None:
        body += f"#{account}"
    body += f"[{data}]{tail}"
    raw = body.encode("utf-8", "surrogatepass")
    crc = crc16_arc(raw)
    length = len(raw)
    flaw = draw(
        st.sampled_from(["", "", "", "", "", "", "crc", "length", "binary", "crlf", "lead", "nul"])
    )
    if flaw == "crc":
        crc ^= 1 << draw(st.integers(0, 15))
    elif flaw == "length":
        length += draw(st.sampled_from([-1, 1]))
    head = crc.to_bytes(2, "big") if flaw == "binary" else b"%04X" % crc
    if draw(st.booleans()):
        head = head.lower()
    frame = b"\n" + head + b"%04X" % length + raw + b"\r"
    if flaw == "crlf":
        frame += b"\n"
    elif flaw == "lead":
        frame = b"\r\n" + frame
    elif flaw == "nul":
        frame += b"\x00\x00"
    return frame


_POLICIES = [
    TimestampPolicy(),
    TimestampPolicy(stale_clear_text=StalePolicy.NAK),
    TimestampPolicy(ahead=timedelta(0), behind=timedelta(0)),
]


@given(frames(), st.sampled_from(_POLICIES))
@settings(max_examples=FUZZ_EXAMPLES * 4, suppress_health_check=[HealthCheck.too_slow])
def test_fast_path_gives_what_the_general_path_gives(frame: bytes, policy: TimestampPolicy) -> None:
    calls: list[str] = []

    def lookup(account: str) -> Dc09Account | None:
        calls.append(account)
        return ACCOUNTS.get(account)

    fast = handle_frame(frame, now=NOW, accounts=lookup, policy=policy, randbytes=_pad)
    fast_calls = list(calls)
    calls.clear()
    general = dc09._handle_any(frame, NOW, lookup, policy, _pad)
    assert fast == general
    assert fast_calls == calls  # the account is looked up as often, with the same id


def test_the_common_frames_take_the_fast_path() -> None:
    ts = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
    for frame in (
        encode_message("ADM-CID", 1, "10000", "#10000|1100 01 001", receiver="1", line="1"),
        encode_message("SIA-DCS", 2, "10000", "#10000|Nri1/MA001", line="1", timestamp=ts),
        encode_message("NULL", 3, "10000", ""),
    ):
        m = dc09._CLEAR_FRAME_RE.fullmatch(frame.decode("latin-1"))
        assert m is not None, frame
        result = handle_frame(frame, now=NOW, accounts=ACCOUNTS.get)
        assert result.reply_kind is ReplyKind.ACK
        assert result == dc09._handle_any(frame, NOW, ACCOUNTS.get, TimestampPolicy(), _pad)


def test_values_built_without_init_equal_the_ordinary_ones() -> None:
    assert dc09._EVENT_SETTERS is not None
    assert dc09._MESSAGE_SETTERS is not None
    assert dc09._RESULT_SETTERS is not None
    fields = (
        "1234",
        EventKind.FALL,
        Condition.RESTORE,
        Priority.CRITICAL,
        NOW,
        "dc09:1234:0001:00#0",
        b"\nraw\r",
        "CID:3100",
        "3",
        "1",
        NOW - timedelta(seconds=5),
        "text",
        frozenset({Flag.UNKNOWN_CODE}),
        {"V": "x"},
    )
    event = dc09._new_event(*fields)
    assert type(event) is Event
    assert event == Event("dc09", *fields)
    assert repr(event) == repr(Event("dc09", *fields))
    message_fields = ("ADM-CID", False, "0001", None, "1", "1234", "d", (("V", "x"),), None)
    message = dc09._new_message(*message_fields)
    assert type(message) is Dc09Message
    assert message == Dc09Message(*message_fields)
    assert hash(message) == hash(Dc09Message(*message_fields))
    result = dc09._new_result(ReplyKind.ACK, b"r", (event,), message, "1234", None)
    assert type(result) is Dc09Result
    assert result == Dc09Result(ReplyKind.ACK, b"r", (event,), message, "1234", None)


def test_event_memos_are_bounded_and_do_not_change_results() -> None:
    dc09._CID_MEMO.clear()
    dc09._SIA_MEMO.clear()
    frame = encode_message("SIA-DCS", 7, "1234", "#1234|Nri1/MA003", line="1")
    first = handle_frame(frame, now=NOW, accounts=ACCOUNTS.get)
    second = handle_frame(frame, now=NOW, accounts=ACCOUNTS.get)
    assert first == second
    assert first.events[0].kind is EventKind.FALL  # the zone override is not memoised
    nobody: dict[str, Dc09Account] = {}
    other = handle_frame(frame, now=NOW, accounts=nobody.get)
    assert other.events[0].kind is EventKind.ASSISTANCE
    for zone in range(dc09._MEMO_MAX + 10):
        dc09._cid_events(f"1100 01 {zone % 4096:03X}")
        dc09._sia_events(f"NMA{zone}")
    assert len(dc09._CID_MEMO) <= dc09._MEMO_MAX
    assert len(dc09._SIA_MEMO) <= dc09._MEMO_MAX


_pieces = st.one_of(
    st.builds(
        lambda seq, data: encode_message("ADM-CID", seq, "1234", data, line="1"),
        st.integers(0, 9999),
        st.sampled_from(["#1234|1100 01 001", "#1234|1602 00 000", ""]),
    ),
    st.builds(lambda n: encode_message("NULL", n, "1234", "", binary_crc=True), st.integers(0, 99)),
    st.sampled_from([b"\r\n", b"\x00", b"junk", b"\n", b"\r", b"\n0000", b"\n12340010"]),
    st.binary(max_size=20),
)


@given(
    st.lists(st.lists(_pieces, max_size=3), max_size=6),
    st.sampled_from([dc09.MAX_FRAME_BYTES, 40, 16]),
)
@settings(max_examples=FUZZ_EXAMPLES)
def test_framer_whole_frame_shortcut_gives_what_the_loop_gives(
    reads: list[list[bytes]], max_frame_bytes: int
) -> None:
    fast = dc09.Dc09Framer(max_frame_bytes)
    general = dc09.Dc09Framer(max_frame_bytes)
    for read in reads:
        chunk = b"".join(read)
        got = fast.feed(chunk)
        want = general._feed(chunk)
        assert [(type(x), str(x)) for x in got] == [(type(x), str(x)) for x in want]
        assert [x for x in got if isinstance(x, bytes)] == [x for x in want if isinstance(x, bytes)]
        assert fast.pending == general.pending

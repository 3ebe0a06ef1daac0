"""The pure SIP codec: a table of real-looking frames, framing, Via, building, Digest.

Every frame in ``FRAMES`` is parsed as a datagram, fed to the stream parser whole and one
byte at a time, and merged with another in one read; all must give the same message.
Hypothesis checks build -> parse round trips and that no input makes the codec raise
anything but ``SipError``. Digest is checked against the RFC 2617 3.5 vector and through
every outcome (OK, MISSING, WRONG, STALE, REPLAY).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmd.protocols.sip import (
    KEEPALIVE_PING,
    REASON_PHRASES,
    DigestAuthenticator,
    DigestOutcome,
    DigestResult,
    Headers,
    KeepAlive,
    NonceCounts,
    SipError,
    SipRequest,
    SipResponse,
    SipStreamParser,
    SipUsageError,
    Via,
    build_request,
    build_response,
    digest_authorization,
    digest_response,
    encode_message,
    new_branch,
    new_call_id,
    new_tag,
    parse_auth_header,
    parse_datagram,
    parse_via,
    response_via,
    split_header_list,
)

FUZZ_EXAMPLES = int(os.environ.get("SIP_FUZZ_EXAMPLES", "120"))
NOW = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
SCAIP_MRQ = b"<mrq><ref>1234</ref><cid>123456</cid><dty>0001</dty><stc>001</stc></mrq>"

Item = SipRequest | SipResponse | KeepAlive | SipError


def crlf(text: str, body: bytes = b"") -> bytes:
    """Write frames with LF in the source; the wire has CRLF."""
    return text.replace("\n", "\r\n").encode() + body


@dataclass(frozen=True)
class Row:
    frame: bytes
    start: tuple[object, ...]  # (method, uri) or (status, reason)
    headers: dict[str, str]  # a few fields to check, looked up by full name
    body: bytes


FRAMES: dict[str, Row] = {
    "register": Row(
        crlf(
            "REGISTER sip:alarm.example.no SIP/2.0\n"
            "Via: SIP/2.0/TCP 10.20.30.40:5060;branch=z9hG4bK-reg-1\n"
            "Max-Forwards: 70\n"
            "From: <sip:123456@alarm.example.no>;tag=a73kszlfl\n"
            "To: <sip:123456@alarm.example.no>\n"
            "Call-ID: 1j9FpLxk3uxtm8tn@10.20.30.40\n"
            "CSeq: 1 REGISTER\n"
            "Contact: <sip:123456@10.20.30.40:5060;transport=tcp>\n"
            "Expires: 3600\n"
            "Content-Length: 0\n"
            "\n"
        ),
        ("REGISTER", "sip:alarm.example.no"),
        {"Contact": "<sip:123456@10.20.30.40:5060;transport=tcp>", "Expires": "3600"},
        b"",
    ),
    "message_scaip": Row(
        crlf(
            "MESSAGE sip:scaip@alarm.example.no SIP/2.0\n"
            "Via: SIP/2.0/TCP 10.20.30.40:5060;branch=z9hG4bKnashds8\n"
            "Max-Forwards: 70\n"
            "From: <sip:123456@alarm.example.no>;tag=49583\n"
            "To: <sip:scaip@alarm.example.no>\n"
            "Call-ID: asd88asd77a@10.20.30.40\n"
            "CSeq: 2 MESSAGE\n"
            "Content-Type: application/scaip+xml\n"
            f"Content-Length: {len(SCAIP_MRQ)}\n"
            "\n",
            SCAIP_MRQ,
        ),
        ("MESSAGE", "sip:scaip@alarm.example.no"),
        {"Content-Type": "application/scaip+xml", "CSeq": "2 MESSAGE"},
        SCAIP_MRQ,
    ),
    "options": Row(
        crlf(
            "OPTIONS sip:alarm.example.no SIP/2.0\n"
            "Via: SIP/2.0/TCP [2001:db8::9]:5060;branch=z9hG4bKhjhs8ass877\n"
            "Max-Forwards: 70\n"
            "To: <sip:alarm.example.no>\n"
            "From: <sip:monitor@example.no>;tag=1928301774\n"
            "Call-ID: a84b4c76e66710\n"
            "CSeq: 63104 OPTIONS\n"
            "Accept: application/sdp\n"
            "Content-Length: 0\n"
            "\n"
        ),
        ("OPTIONS", "sip:alarm.example.no"),
        {
            "Accept": "application/sdp",
            "Via": "SIP/2.0/TCP [2001:db8::9]:5060;branch=z9hG4bKhjhs8ass877",
        },
        b"",
    ),
    "ok_200": Row(
        crlf(
            "SIP/2.0 200 OK\n"
            "Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK74bf9;received=192.0.2.1\n"
            "From: <sip:scaip@alarm.example.no>;tag=9fxced76sl\n"
            "To: <sip:123456@10.20.30.40>;tag=8321234356\n"
            "Call-ID: 3848276298220188511@alarm.example.no\n"
            "CSeq: 1 MESSAGE\n"
            "Content-Length: 0\n"
            "\n"
        ),
        (200, "OK"),
        {"To": "<sip:123456@10.20.30.40>;tag=8321234356"},
        b"",
    ),
    "compact": Row(
        crlf(
            "MESSAGE sip:scaip@alarm.example.no SIP/2.0\n"
            "v: SIP/2.0/TCP 10.20.30.40:5060;branch=z9hG4bK-c1\n"
            "f: <sip:123456@alarm.example.no>;tag=x1\n"
            "t: <sip:scaip@alarm.example.no>\n"
            "i: compact-1@10.20.30.40\n"
            "CSeq: 7 MESSAGE\n"
            "m: <sip:123456@10.20.30.40>\n"
            "k: timer\n"
            "s: alarm\n"
            "e: identity\n"
            "c: application/scaip+xml\n"
            f"l: {len(SCAIP_MRQ)}\n"
            "\n",
            SCAIP_MRQ,
        ),
        ("MESSAGE", "sip:scaip@alarm.example.no"),
        {
            "Call-ID": "compact-1@10.20.30.40",
            "Contact": "<sip:123456@10.20.30.40>",
            "Supported": "timer",
            "Subject": "alarm",
            "Content-Encoding": "identity",
            "Content-Type": "application/scaip+xml",
            "Content-Length": str(len(SCAIP_MRQ)),
        },
        SCAIP_MRQ,
    ),
    "folded": Row(
        crlf(
            "MESSAGE sip:scaip@alarm.example.no SIP/2.0\n"
            "Via: SIP/2.0/TCP 10.20.30.40:5060\n"
            " ;branch=z9hG4bK-fold\n"
            'From: "Kari Nordmann"\n'
            "\t<sip:123456@alarm.example.no>;tag=f1\n"
            "To: <sip:scaip@alarm.example.no>\n"
            "Call-ID: folded-1@10.20.30.40\n"
            "CSeq: 8 MESSAGE\n"
            "Subject: first line\n"
            "   second line\n"
            "Content-Type: application/scaip+xml\n"
            f"Content-Length: {len(SCAIP_MRQ)}\n"
            "\n",
            SCAIP_MRQ,
        ),
        ("MESSAGE", "sip:scaip@alarm.example.no"),
        {
            "Via": "SIP/2.0/TCP 10.20.30.40:5060 ;branch=z9hG4bK-fold",
            "From": '"Kari Nordmann" <sip:123456@alarm.example.no>;tag=f1',
            "Subject": "first line second line",
        },
        SCAIP_MRQ,
    ),
    # as sipsak 0.9.8 writes a MESSAGE (-M -B): rport and alias flags on the Via, a bare
    # From/To URI, Content-Length before Max-Forwards
    "sipsak_message": Row(
        crlf(
            "MESSAGE sip:scaip@127.0.0.1 SIP/2.0\n"
            "Via: SIP/2.0/UDP 127.0.1.1:38919;branch=z9hG4bK.4e3a1b2c;rport;alias\n"
            "From: sip:sipsak@127.0.1.1:38919;tag=5e2b8a1f\n"
            "To: sip:scaip@127.0.0.1\n"
            "Call-ID: 1579322654@127.0.1.1\n"
            "CSeq: 1 MESSAGE\n"
            "Content-Type: application/scaip+xml\n"
            f"Content-Length: {len(SCAIP_MRQ)}\n"
            "Max-Forwards: 70\n"
            "User-Agent: sipsak 0.9.8.1\n"
            "\n",
            SCAIP_MRQ,
        ),
        ("MESSAGE", "sip:scaip@127.0.0.1"),
        {"User-Agent": "sipsak 0.9.8.1", "To": "sip:scaip@127.0.0.1"},
        SCAIP_MRQ,
    ),
}


def check_row(message: object, row: Row) -> None:
    if isinstance(message, SipRequest):
        assert (message.method, message.uri, message.version) == (*row.start, "SIP/2.0")
    else:
        assert isinstance(message, SipResponse)
        assert (message.status, message.reason, message.version) == (*row.start, "SIP/2.0")
    for name, value in row.headers.items():
        assert message.headers.get(name) == value, name
    assert message.body == row.body


def feed_in_chunks(
    data: bytes, sizes: list[int], parser: SipStreamParser | None = None
) -> list[Item]:
    parser = parser or SipStreamParser()
    out: list[Item] = []
    pos = 0
    for size in sizes:
        out += parser.feed(data[pos : pos + size])
        pos += size
    out += parser.feed(data[pos:])
    return out


def feed_bytewise(data: bytes, parser: SipStreamParser | None = None) -> list[Item]:
    parser = parser or SipStreamParser()
    out: list[Item] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    return out


def comparable(items: list[Item]) -> list[object]:
    return [
        ("error", i.reason, i.status, i.fatal, i.request is not None)
        if isinstance(i, SipError)
        else i
        for i in items
    ]


# --- the frame table -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FRAMES)
def test_frame_as_a_datagram(name: str) -> None:
    row = FRAMES[name]
    check_row(parse_datagram(row.frame), row)


@pytest.mark.parametrize("name", FRAMES)
def test_frame_on_a_stream_whole_and_byte_at_a_time(name: str) -> None:
    row = FRAMES[name]
    whole = SipStreamParser().feed(row.frame)
    assert len(whole) == 1
    check_row(whole[0], row)
    assert feed_bytewise(row.frame) == whole
    assert whole[0] == parse_datagram(row.frame)


@pytest.mark.parametrize("name", FRAMES)
def test_two_frames_merged_in_one_read_and_split_anywhere(name: str) -> None:
    row = FRAMES[name]
    other = FRAMES["message_scaip"]
    data = row.frame + KEEPALIVE_PING + other.frame
    items = SipStreamParser().feed(data)
    assert len(items) == 3
    check_row(items[0], row)
    assert items[1] == KeepAlive()
    check_row(items[2], other)
    for cut in range(1, len(data)):
        assert feed_in_chunks(data, [cut]) == items


def test_frames_round_trip_through_encode_message() -> None:
    for row in FRAMES.values():
        message = parse_datagram(row.frame)
        assert not isinstance(message, KeepAlive)
        assert parse_datagram(encode_message(message)) == message


# --- headers -------------------------------------------------------------------------------------


def test_headers_are_case_insensitive_ordered_and_expand_compact_names() -> None:
    h = Headers([("v", "a"), ("VIA", "b"), ("call-id", "x"), ("l", "0")])
    assert list(h) == [("Via", "a"), ("VIA", "b"), ("call-id", "x"), ("Content-Length", "0")]
    assert h.get_all("via") == h.get_all("v") == ("a", "b")
    assert h.get("I") == h.get("Call-ID") == "x"
    assert "content-length" in h and "Contact" not in h and 3 not in h
    assert h.get("Contact") is None and h.get("Contact", "d") == "d"
    assert h == Headers([("Via", "a"), ("via", "b"), ("Call-ID", "x"), ("Content-Length", "0")])
    assert h != Headers([("Via", "b"), ("Via", "a"), ("Call-ID", "x"), ("l", "0")])
    assert hash(h) == hash(Headers(list(h)))
    assert h.without("v").get_all("Via") == () and len(h.with_added("X-A", "1")) == 5
    with pytest.raises(AttributeError):
        h._items = ()


def test_split_header_list_respects_quotes_and_angle_brackets() -> None:
    assert split_header_list('"a, b" <sip:x@y;p=1,2>, <sip:z>, ') == [
        '"a, b" <sip:x@y;p=1,2>',
        "<sip:z>",
    ]
    assert split_header_list('SIP/2.0/UDP h;x="a\\",b", SIP/2.0/TCP g') == [
        'SIP/2.0/UDP h;x="a\\",b"',
        "SIP/2.0/TCP g",
    ]


# --- datagrams -----------------------------------------------------------------------------------

MINIMAL = (
    "OPTIONS sip:alarm@127.0.0.1 SIP/2.0\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\n"
    "From: <sip:d@127.0.0.1>;tag=1\n"
    "To: <sip:alarm@127.0.0.1>\n"
    "Call-ID: c1\n"
    "CSeq: 1 OPTIONS\n"
)


def test_datagram_without_content_length_takes_the_rest_as_body() -> None:
    message = parse_datagram(crlf(MINIMAL + "\n", b"abc\r\n"))
    assert isinstance(message, SipRequest) and message.body == b"abc\r\n"


def test_datagram_with_shorter_content_length_drops_the_extra_bytes() -> None:
    message = parse_datagram(crlf(MINIMAL + "Content-Length: 2\n\n", b"abcdef"))
    assert isinstance(message, SipRequest) and message.body == b"ab"


def test_datagram_with_longer_content_length_is_an_error_that_can_be_answered() -> None:
    with pytest.raises(SipError) as e:
        parse_datagram(crlf(MINIMAL + "Content-Length: 20\n\n", b"abc"))
    assert (e.value.reason, e.value.status) == ("truncated_body", 400)
    assert e.value.request is not None and e.value.request.method == "OPTIONS"
    reply = parse_datagram(build_response(e.value.request, e.value.status or 500))
    assert isinstance(reply, SipResponse) and reply.status == 400


def test_lenient_datagrams() -> None:
    """Bare LF line ends, CRLFs before the start line, no blank line: still parsed."""
    lf = (MINIMAL + "\nbody").encode()
    assert parse_datagram(lf).body == b"body"  # type: ignore[union-attr]
    assert isinstance(parse_datagram(b"\r\n" + crlf(MINIMAL + "\n")), SipRequest)
    assert isinstance(parse_datagram(crlf(MINIMAL)), SipRequest)
    assert parse_datagram(b"\r\n\r\n") == KeepAlive()


def test_unknown_methods_parse_so_the_transport_can_answer_405() -> None:
    text = MINIMAL.replace("OPTIONS", "SUBSCRIBE")
    message = parse_datagram(crlf(text + "\n"))
    assert isinstance(message, SipRequest) and message.method == "SUBSCRIBE"
    assert message.cseq == (1, "SUBSCRIBE")


def test_non_utf8_header_bytes_survive_into_the_response_unchanged() -> None:
    frame = crlf(MINIMAL + "\n").replace(b"<sip:d@", '"Bj\xf8rn" <sip:d@'.encode("latin-1"))
    message = parse_datagram(frame)
    assert isinstance(message, SipRequest)
    assert b'From: "Bj\xf8rn" <sip:d@' in build_response(message, 200)


@pytest.mark.parametrize(
    ("frame", "reason", "status", "answerable"),
    [
        (b"", "empty", None, False),
        (b"hello", "bad_start_line", 400, False),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_start_line", 400, False),
        (
            crlf(MINIMAL.replace("SIP/2.0\n", "SIP/3.0\n", 1) + "\n"),
            "unsupported_version",
            505,
            True,
        ),
        (crlf(MINIMAL.replace("Call-ID: c1\n", "") + "\n"), "missing_header", 400, True),
        (crlf(MINIMAL.replace("CSeq: 1 OPTIONS", "CSeq: 1 MESSAGE") + "\n"), "bad_cseq", 400, True),
        (crlf(MINIMAL.replace("CSeq: 1 OPTIONS", "CSeq: x OPTIONS") + "\n"), "bad_cseq", 400, True),
        (
            crlf(MINIMAL.replace("Via: SIP/2.0/UDP", "Via: SIP/1.0/UDP") + "\n"),
            "bad_via",
            400,
            True,
        ),
        (crlf(MINIMAL + "Content-Length: -1\n\n"), "bad_content_length", 400, True),
        (crlf(MINIMAL + "Content-Length: 1\nl: 2\n\nab"), "bad_content_length", 400, True),
        (crlf(MINIMAL + "no colon here\n\n"), "bad_header", 400, False),
        (crlf(" folded: first\n" + MINIMAL), "bad_header", 400, False),
        (crlf(MINIMAL + "X: a\x00b\n\n"), "bad_header", 400, False),
        (crlf(MINIMAL + "X: a\rb\n\n"), "bad_header", 400, False),
        (b"SIP/2.0 200 OK\r\nCSeq: 1 MESSAGE\r\n\r\n", "missing_header", None, False),
        (b"SIP/2.0 200 OK\r\nCall-ID: a\r\n\r\n", "bad_cseq", None, False),
        (b"SIP/2.0 999 What\r\n\r\n", "bad_start_line", 400, False),
        (b"x" * 70000, "too_large", 413, False),
    ],
)
def test_datagram_errors(frame: bytes, reason: str, status: int | None, answerable: bool) -> None:
    with pytest.raises(SipError) as e:
        parse_datagram(frame)
    assert (e.value.reason, e.value.status) == (reason, status)
    assert (e.value.request is not None) is answerable


# --- streams -------------------------------------------------------------------------------------


def test_stream_crlf_handling_between_messages() -> None:
    frame = FRAMES["register"].frame
    data = b"\r\n" + frame + b"\r\n\r\n\r\n\r\n\r\n" + frame + b"\n" + frame
    items = SipStreamParser().feed(data)
    assert [type(i).__name__ for i in items] == [
        "SipRequest",
        "KeepAlive",
        "KeepAlive",
        "SipRequest",
        "SipRequest",
    ]
    assert feed_bytewise(data) == items
    parser = SipStreamParser()
    assert parser.feed(b"\r\n\r") == [] and parser.feed(b"\n") == [KeepAlive()]


def test_stream_requires_content_length_and_closes_without_it() -> None:
    parser = SipStreamParser()
    items = parser.feed(crlf(MINIMAL + "\n") + FRAMES["register"].frame)
    assert comparable(items) == [("error", "missing_content_length", 400, True, True)]
    assert parser.closed and parser.feed(FRAMES["register"].frame) == []


def test_stream_too_large_body_is_skipped_and_the_next_message_works() -> None:
    parser = SipStreamParser(max_message_bytes=1024)
    big = crlf(MINIMAL + "Content-Length: 1000000\n\n")
    items = parser.feed(big + b"<" * 5000)
    assert comparable(items) == [("error", "too_large", 413, False, True)]
    assert not parser.closed and parser.pending == 0
    rest = b"<" * (1000000 - 5000)
    for i in range(0, len(rest), 65536):
        assert parser.feed(rest[i : i + 65536]) == []
    frame = FRAMES["message_scaip"].frame
    items = parser.feed(frame)
    check_row(items[0], FRAMES["message_scaip"])


def test_stream_head_without_end_is_fatal_once_over_the_bound() -> None:
    parser = SipStreamParser(max_message_bytes=1024)
    assert parser.feed(crlf(MINIMAL)) == []
    items = parser.feed(b"X-Pad: " + b"a" * 2000)
    assert comparable(items) == [("error", "too_large", 413, True, False)]
    assert parser.closed and parser.pending == 0


def test_stream_bad_start_line_with_content_length_resyncs() -> None:
    bad = crlf(MINIMAL.replace("SIP/2.0\n", "SIP/2.0 extra\n", 1) + "Content-Length: 3\n\n", b"abc")
    items = SipStreamParser().feed(bad + FRAMES["register"].frame)
    assert comparable(items[:1]) == [("error", "bad_start_line", 400, False, False)]
    check_row(items[1], FRAMES["register"])


def test_stream_missing_header_is_reported_and_the_stream_goes_on() -> None:
    bad = crlf(MINIMAL.replace("To: <sip:alarm@127.0.0.1>\n", "") + "Content-Length: 0\n\n")
    items = SipStreamParser().feed(bad + FRAMES["register"].frame)
    assert comparable(items[:1]) == [("error", "missing_header", 400, False, True)]
    check_row(items[1], FRAMES["register"])


def test_stream_garbage_is_fatal() -> None:
    parser = SipStreamParser()
    items = parser.feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")  # a TLS hello
    assert len(items) == 1 and isinstance(items[0], SipError) and items[0].fatal


# --- Via -----------------------------------------------------------------------------------------


def test_parse_via() -> None:
    via = parse_via('SIP / 2.0 / udp 10.0.0.5:40000 ;branch=z9hG4bK776;rport;x="a;b"')
    assert via == Via(
        "UDP", "10.0.0.5", 40000, (("branch", "z9hG4bK776"), ("rport", None), ("x", '"a;b"'))
    )
    assert via.branch == "z9hG4bK776" and via.wants_rport and via.received is None
    assert parse_via("SIP/2.0/TLS [2001:db8::1];branch=z9hG4bKx").host == "[2001:db8::1]"
    assert parse_via("SIP/2.0/TCP alarm.example.no").port is None
    for bad in ("SIP/2.0/UDP", "SIP/2.0 UDP h", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP h;"):
        with pytest.raises(SipError):
            parse_via(bad)


def test_top_via_from_a_comma_list() -> None:
    frame = crlf(
        MINIMAL.replace(
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1",
            "v: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKtop, SIP/2.0/UDP 10.0.0.8;branch=z9hG4bK2\n"
            "Via: SIP/2.0/TCP 10.0.0.7;branch=z9hG4bK3",
        )
        + "\n"
    )
    request = parse_datagram(frame)
    assert isinstance(request, SipRequest)
    assert request.top_via.branch == "z9hG4bKtop"
    reply = parse_datagram(
        build_response(request, 200, top_via="SIP/2.0/UDP new;branch=z9hG4bKtop")
    )
    assert reply.headers.get_all("Via") == (  # type: ignore[union-attr]
        "SIP/2.0/UDP new;branch=z9hG4bKtop",
        "SIP/2.0/UDP 10.0.0.8;branch=z9hG4bK2",
        "SIP/2.0/TCP 10.0.0.7;branch=z9hG4bK3",
    )


@pytest.mark.parametrize(
    ("via", "source", "expected"),
    [
        # RFC 3581: rport filled in, received added even when the address matches
        (
            "SIP/2.0/UDP 127.0.1.1:38919;branch=z9hG4bK.4e;rport;alias",
            ("127.0.1.1", 38919),
            "SIP/2.0/UDP 127.0.1.1:38919;branch=z9hG4bK.4e;rport=38919;alias;received=127.0.1.1",
        ),
        # behind a NAT: both differ
        (
            "SIP/2.0/UDP 10.1.2.3:5060;rport;branch=z9hG4bKa",
            ("198.51.100.7", 61000),
            "SIP/2.0/UDP 10.1.2.3:5060;rport=61000;branch=z9hG4bKa;received=198.51.100.7",
        ),
        # no rport, same host: unchanged (RFC 3261 18.2.1)
        (
            "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bKa",
            ("10.1.2.3", 5060),
            "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bKa",
        ),
        # no rport, a host name: received added, port untouched
        (
            "SIP/2.0/TCP dev.example.no;branch=z9hG4bKa;received=1.1.1.1",
            ("10.9.9.9", 40001),
            "SIP/2.0/TCP dev.example.no;branch=z9hG4bKa;received=10.9.9.9",
        ),
        # IPv6: received is an address without brackets
        (
            "SIP/2.0/UDP [2001:db8::5]:5060;branch=z9hG4bKa;rport",
            ("2001:db8::5", 5060),
            "SIP/2.0/UDP [2001:db8::5]:5060;branch=z9hG4bKa;rport=5060;received=2001:db8::5",
        ),
    ],
)
def test_response_via(via: str, source: tuple[str, int], expected: str) -> None:
    assert response_via(parse_via(via), *source) == expected
    assert parse_via(expected).branch == parse_via(via).branch


# --- building ------------------------------------------------------------------------------------


def test_build_response_copies_the_dialog_headers_and_adds_a_tag() -> None:
    request = parse_datagram(FRAMES["sipsak_message"].frame)
    assert isinstance(request, SipRequest)
    via = response_via(request.top_via, "127.0.1.1", 38919)
    data = build_response(
        request,
        200,
        to_tag="8321234356",
        top_via=via,
        headers=[("Content-Type", "application/scaip+xml")],
        body=b"<mrs><ref>1234</ref><snu>0</snu></mrs>",
    )
    assert data.startswith(b"SIP/2.0 200 OK\r\nVia: " + via.encode() + b"\r\n")
    reply = parse_datagram(data)
    assert isinstance(reply, SipResponse)
    for name in ("From", "Call-ID", "CSeq"):
        assert reply.headers.get(name) == request.headers.get(name)
    assert reply.headers.get("To") == "sip:scaip@127.0.0.1;tag=8321234356"
    assert reply.headers.get("Content-Length") == "38" and reply.body.startswith(b"<mrs>")
    assert reply.cseq == (1, "MESSAGE")
    # a To that already has a tag (a request inside a dialog) keeps it
    in_dialog = parse_datagram(
        FRAMES["ok_200"].frame.replace(b"SIP/2.0 200 OK", b"MESSAGE sip:x SIP/2.0")
    )
    assert isinstance(in_dialog, SipRequest)
    again = parse_datagram(build_response(in_dialog, 200, to_tag="zzz"))
    assert isinstance(again, SipResponse)
    assert again.headers.get("To") == "<sip:123456@10.20.30.40>;tag=8321234356"


@pytest.mark.parametrize("status", [100, 200, 400, 401, 403, 404, 405, 413, 415, 481, 500])
def test_every_status_the_receiver_sends_has_its_reason(status: int) -> None:
    request = parse_datagram(FRAMES["register"].frame)
    assert isinstance(request, SipRequest)
    reply = parse_datagram(build_response(request, status))
    assert isinstance(reply, SipResponse)
    assert (reply.status, reply.reason) == (status, REASON_PHRASES[status])


def test_reason_phrases_of_note() -> None:
    assert REASON_PHRASES[481] == "Call/Transaction Does Not Exist"
    assert REASON_PHRASES[413] == "Request Entity Too Large"
    assert REASON_PHRASES[500] == "Server Internal Error"


def test_building_refuses_our_own_mistakes() -> None:
    request = parse_datagram(FRAMES["register"].frame)
    assert isinstance(request, SipRequest)
    with pytest.raises(SipUsageError):
        build_response(request, 499)  # no reason known
    assert b"SIP/2.0 499 Odd\r\n" in build_response(request, 499, reason="Odd")
    with pytest.raises(SipUsageError):
        build_response(request, 99, reason="x")
    with pytest.raises(SipUsageError):
        build_response(request, 200, headers=[("X-A", "a\r\nInjected: yes")])
    with pytest.raises(SipUsageError):
        build_response(request, 200, reason="OK\r\nX: y")
    with pytest.raises(SipUsageError):
        build_request("MESSAGE", "sip:a b", headers=[])
    with pytest.raises(SipUsageError):
        build_request("MES SAGE", "sip:a", headers=[])
    with pytest.raises(SipUsageError):
        build_request("MESSAGE", "sip:a", headers=[("Bad Name", "x")])


def test_build_request_computes_content_length() -> None:
    data = build_request(
        "MESSAGE",
        "sip:123456@10.20.30.40:5060",
        headers=[
            ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch={new_branch(lambda n: bytes(n))}"),
            ("Max-Forwards", "70"),
            ("From", "<sip:scaip@alarm.example.no>;tag=" + new_tag(lambda n: bytes([1] * n))),
            ("To", "<sip:123456@alarm.example.no>"),
            ("Call-ID", new_call_id("alarm.example.no", lambda n: b"\xff" * n)),
            ("CSeq", "1 MESSAGE"),
            ("Content-Type", "application/scaip+xml"),
            ("Content-Length", "999"),  # replaced
        ],
        body=b"<mrs><ref>1234</ref><snu>0</snu></mrs>",
    )
    request = parse_datagram(data)
    assert isinstance(request, SipRequest)
    assert request.top_via.branch == "z9hG4bK0000000000000000"
    assert request.headers.get("From") == "<sip:scaip@alarm.example.no>;tag=010101010101"
    assert request.call_id == "ff" * 12 + "@alarm.example.no"
    assert request.headers.get_all("Content-Length") == ("38",)


# --- Hypothesis: round trips and "never another exception" ---------------------------------------

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
header_names = st.text(TOKEN_CHARS, min_size=2, max_size=20).filter(
    lambda n: (
        n.lower()
        not in {"via", "from", "to", "call-id", "cseq", "content-length", "i", "l", "v", "f", "t"}
    )
)
header_values = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00"), max_size=60
).map(lambda v: v.strip(" \t"))
bodies = st.binary(max_size=300)
methods = st.sampled_from(["REGISTER", "MESSAGE", "OPTIONS", "INFO", "X-CUSTOM"])


def dialog_headers(method: str, cseq: int) -> list[tuple[str, str]]:
    return [
        ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport"),
        ("From", "<sip:a@b>;tag=1"),
        ("To", "<sip:c@d>"),
        ("Call-ID", "id@host"),
        ("CSeq", f"{cseq} {method}"),
    ]


@given(
    methods,
    st.integers(0, 2**31 - 1),
    st.lists(st.tuples(header_names, header_values), max_size=6),
    bodies,
    st.integers(1, 50),
)
@settings(max_examples=FUZZ_EXAMPLES)
def test_request_round_trip(
    method: str, cseq: int, extra: list[tuple[str, str]], body: bytes, chunk: int
) -> None:
    headers = dialog_headers(method, cseq) + extra
    data = build_request(method, "sip:alarm@127.0.0.1:5060", headers=headers, body=body)
    parsed = parse_datagram(data)
    expected = SipRequest(
        method,
        "sip:alarm@127.0.0.1:5060",
        "SIP/2.0",
        Headers([*headers, ("Content-Length", str(len(body)))]),
        body,
    )
    assert parsed == expected
    assert feed_in_chunks(data, [chunk] * (len(data) // chunk)) == [expected]
    assert isinstance(parsed, SipRequest) and parsed.cseq == (cseq, method)


@given(
    st.sampled_from(sorted(REASON_PHRASES)),
    st.lists(st.tuples(header_names, header_values), max_size=6),
    bodies,
    st.none() | st.text(TOKEN_CHARS, min_size=1, max_size=10),
)
@settings(max_examples=FUZZ_EXAMPLES)
def test_response_round_trip(
    status: int, extra: list[tuple[str, str]], body: bytes, to_tag: str | None
) -> None:
    request = SipRequest(
        "MESSAGE", "sip:x@y", "SIP/2.0", Headers(dialog_headers("MESSAGE", 5)), b""
    )
    data = build_response(request, status, headers=extra, body=body, to_tag=to_tag)
    parsed = parse_datagram(data)
    assert isinstance(parsed, SipResponse)
    assert (parsed.status, parsed.reason, parsed.body) == (status, REASON_PHRASES[status], body)
    to = "<sip:c@d>" + (f";tag={to_tag}" if to_tag else "")
    assert list(parsed.headers) == [
        *dialog_headers("MESSAGE", 5)[:2],
        ("To", to),
        *dialog_headers("MESSAGE", 5)[3:],
        *extra,
        ("Content-Length", str(len(body))),
    ]
    assert SipStreamParser().feed(data) == [parsed]


def check_item(item: object) -> None:
    assert isinstance(item, SipRequest | SipResponse | KeepAlive | SipError)
    if isinstance(item, SipError):
        assert item.status in (None, 400, 413, 505)
        if item.request is not None:  # whatever we could parse, we can answer
            assert build_response(item.request, 400).startswith(b"SIP/2.0 400 Bad Request\r\n")
    if isinstance(item, SipRequest):
        item.top_via  # noqa: B018 - parsing guarantees these do not raise
        item.cseq  # noqa: B018
        assert isinstance(parse_datagram(build_response(item, 200, to_tag="t")), SipResponse)


def exercise(data: bytes, sizes: list[int]) -> None:
    try:
        check_item(parse_datagram(data))
    except SipError as e:
        check_item(e)
    whole = SipStreamParser().feed(data)
    for item in whole:
        check_item(item)
    assert comparable(feed_in_chunks(data, sizes)) == comparable(whole)


@given(st.binary(max_size=400), st.lists(st.integers(1, 40), max_size=8))
@settings(max_examples=FUZZ_EXAMPLES)
def test_any_bytes_give_messages_or_sip_errors(data: bytes, sizes: list[int]) -> None:
    exercise(data, sizes)


SEEDS = [row.frame for row in FRAMES.values()]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """Real frames with a few bytes changed, so the fuzz reaches past the start line."""
    parts = draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3))
    frame = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "set" and frame:
            frame[i] = draw(st.sampled_from(b'\r\n\t :;,"<>=/\\0129aZ\x00\xff'))
        elif op == "insert":
            frame[i:i] = draw(st.sampled_from([b"\r\n", b"\r\n ", b"\r\n\r\n", b"l: 9\r\n", b"x"]))
        elif op == "delete" and frame:
            del frame[i : i + draw(st.integers(1, 10))]
        else:
            del frame[i:]
    return bytes(frame)


@given(mutated_frames(), st.lists(st.integers(1, 60), max_size=8), st.integers(64, 2048))
@settings(max_examples=FUZZ_EXAMPLES * 2)
def test_mutated_frames_never_raise_and_split_independently(
    data: bytes, sizes: list[int], bound: int
) -> None:
    exercise(data, sizes)
    whole = SipStreamParser(max_message_bytes=bound).feed(data)
    chunked = feed_in_chunks(data, sizes, SipStreamParser(max_message_bytes=bound))
    assert comparable(chunked) == comparable(whole)


# --- Digest --------------------------------------------------------------------------------------

SECRET = b"0123456789abcdef0123456789abcdef"
TTL = timedelta(minutes=5)
PASSWORDS = {"123456": "hemmelig", "group-oslo": "Circle Of Life"}


def counter_bytes() -> Callable[[int], bytes]:
    """Distinct, reproducible salts."""
    state = [0]

    def randbytes(n: int) -> bytes:
        state[0] += 1
        return state[0].to_bytes(n, "big")

    return randbytes


def authenticator(secret: bytes = SECRET) -> DigestAuthenticator:
    return DigestAuthenticator("alarm.example.no", secret, TTL, randbytes=counter_bytes())


def answer(challenge: str, *, password: str = "hemmelig", nc: int = 1, user: str = "123456") -> str:
    return digest_authorization(
        "MESSAGE", "sip:scaip@alarm.example.no", user, password, challenge, cnonce="0a4f113b", nc=nc
    )


def verify(
    auth: DigestAuthenticator, header: str | None, counts: NonceCounts, now: datetime = NOW
) -> DigestResult:
    return auth.verify("MESSAGE", header, now, PASSWORDS.get, counts)


def test_rfc2617_section_3_5_vector() -> None:
    assert (
        digest_response(
            method="GET",
            uri="/dir/index.html",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            nc="00000001",
            cnonce="0a4f113b",
            qop="auth",
        )
        == "6629fae49393a05397450978507c4ef1"
    )
    challenge = (
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    header = digest_authorization(
        "GET", "/dir/index.html", "Mufasa", "Circle Of Life", challenge, cnonce="0a4f113b", nc=1
    )
    scheme, params = parse_auth_header(header)
    assert scheme == "digest"
    assert params == {
        "username": "Mufasa",
        "realm": "testrealm@host.com",
        "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "uri": "/dir/index.html",
        "response": "6629fae49393a05397450978507c4ef1",
        "algorithm": "MD5",
        "cnonce": "0a4f113b",
        "qop": "auth",
        "nc": "00000001",
        "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
    }
    # our server: the right password over a nonce that is not ours is STALE, not OK
    auth = DigestAuthenticator("testrealm@host.com", SECRET, TTL)
    result = auth.verify("GET", header, NOW, {"Mufasa": "Circle Of Life"}.get, NonceCounts())
    assert (result.outcome, result.status, result.reason) == (
        DigestOutcome.STALE,
        401,
        "unknown_nonce",
    )


def test_rfc2069_challenge_without_qop() -> None:
    header = digest_authorization(
        "REGISTER", "sip:a", "u", "p", 'Digest realm="r", nonce="n"', cnonce="c", nc=1
    )
    params = parse_auth_header(header)[1]
    assert "qop" not in params and "nc" not in params
    assert params["response"] == digest_response(
        method="REGISTER", uri="sip:a", username="u", realm="r", password="p", nonce="n"
    )
    for bad in (
        'Basic realm="r"',
        'Digest realm="r"',
        'Digest realm="r", nonce="n", algorithm=SHA-256',
    ):
        with pytest.raises(SipError):
            digest_authorization("REGISTER", "sip:a", "u", "p", bad, cnonce="c", nc=1)


def test_challenge_shape() -> None:
    auth = authenticator()
    scheme, params = parse_auth_header(auth.challenge(NOW))
    assert scheme == "digest" and params["realm"] == "alarm.example.no"
    assert params["qop"] == "auth" and params["algorithm"] == "MD5" and "stale" not in params
    assert parse_auth_header(auth.challenge(NOW, stale=True))[1]["stale"] == "true"
    assert auth.nonce_issued_at(params["nonce"]) == NOW
    assert auth.challenge(NOW) != auth.challenge(NOW)  # salted: unique per challenge
    assert "secret" not in repr(auth) and SECRET.decode() not in repr(auth)


def test_digest_full_round_trip_and_nonce_count() -> None:
    auth, counts = authenticator(), NonceCounts()
    first = verify(auth, None, counts)
    assert (first.outcome, first.status) == (DigestOutcome.MISSING, 401)
    assert first.www_authenticate is not None
    ok = verify(auth, answer(first.www_authenticate), counts, NOW + timedelta(seconds=1))
    assert ok.ok and ok.username == "123456" and ok.status is None
    # the same nonce again with a higher nc: fine; with the same nc: replay
    assert verify(auth, answer(first.www_authenticate, nc=2), counts).ok
    replay = verify(auth, answer(first.www_authenticate, nc=2), counts)
    assert (replay.outcome, replay.status, replay.reason) == (
        DigestOutcome.REPLAY,
        403,
        "replayed_nc",
    )
    assert (
        verify(auth, answer(first.www_authenticate, nc=1), counts).outcome is DigestOutcome.REPLAY
    )
    assert verify(auth, answer(first.www_authenticate, nc=7), counts).ok


def test_group_credentials_share_a_password_not_a_nonce() -> None:
    auth, counts = authenticator(), NonceCounts()
    a, b = auth.challenge(NOW), auth.challenge(NOW)
    assert verify(auth, answer(a, user="group-oslo", password="Circle Of Life"), counts).ok
    assert verify(auth, answer(b, user="group-oslo", password="Circle Of Life"), counts).ok


def test_wrong_password_and_unknown_user_are_403() -> None:
    auth, counts = authenticator(), NonceCounts()
    challenge = auth.challenge(NOW)
    wrong = verify(auth, answer(challenge, password="gjett"), counts)
    assert (wrong.outcome, wrong.status, wrong.reason, wrong.www_authenticate) == (
        DigestOutcome.WRONG,
        403,
        "wrong_response",
        None,
    )
    unknown = verify(auth, answer(challenge, user="999"), counts)
    assert (unknown.outcome, unknown.status, unknown.reason) == (
        DigestOutcome.WRONG,
        403,
        "unknown_user",
    )
    assert len(counts) == 0  # nothing recorded for a failed attempt
    good = answer(challenge)
    response = parse_auth_header(good)[1]["response"]
    for odd in ("é" * 32, "\udcf8", "\ud800", response.upper()[:-1]):
        result = verify(auth, good.replace(response, odd), counts)
        assert (result.outcome, result.reason) == (DigestOutcome.WRONG, "wrong_response")
    assert verify(auth, answer(challenge), counts).ok  # the nonce is still good


def test_expired_nonce_is_stale_with_a_fresh_challenge() -> None:
    auth, counts = authenticator(), NonceCounts()
    challenge = auth.challenge(NOW)
    later = NOW + TTL + timedelta(seconds=1)
    result = verify(auth, answer(challenge), counts, later)
    assert (result.outcome, result.status, result.reason) == (
        DigestOutcome.STALE,
        401,
        "expired_nonce",
    )
    assert result.www_authenticate is not None
    params = parse_auth_header(result.www_authenticate)[1]
    assert params["stale"] == "true" and auth.nonce_issued_at(params["nonce"]) == later
    assert verify(auth, answer(result.www_authenticate), counts, later).ok
    # an expired nonce with a wrong password is simply wrong
    assert (
        verify(auth, answer(challenge, password="x"), counts, later).outcome is DigestOutcome.WRONG
    )


def test_nonce_from_a_previous_secret_is_stale_so_devices_recover_after_a_restart() -> None:
    old = authenticator(b"an-older-secret-before-restart!!")
    result = verify(authenticator(), answer(old.challenge(NOW)), NonceCounts())
    assert (result.outcome, result.reason) == (DigestOutcome.STALE, "unknown_nonce")


def test_tampered_nonce_is_wrong() -> None:
    auth = authenticator()
    challenge = auth.challenge(NOW)
    nonce = parse_auth_header(challenge)[1]["nonce"]
    header = answer(challenge)
    tampered_nonce = ("B" if nonce[0] != "B" else "C") + nonce[1:]
    assert auth.nonce_issued_at(tampered_nonce) is None
    result = verify(auth, header.replace(nonce, tampered_nonce), NonceCounts())
    assert (result.outcome, result.status) == (DigestOutcome.WRONG, 403)


def test_basic_is_never_accepted() -> None:
    auth = authenticator()
    lookups: list[str] = []

    def lookup(user: str) -> str | None:
        lookups.append(user)
        return "hemmelig"

    result = auth.verify("MESSAGE", "Basic MTIzNDU2OmhlbW1lbGln", NOW, lookup, NonceCounts())
    assert (result.outcome, result.status, result.reason) == (
        DigestOutcome.MISSING,
        401,
        "basic_refused",
    )
    assert result.www_authenticate is not None and result.www_authenticate.startswith("Digest ")
    assert "basic" not in result.www_authenticate.lower()
    assert lookups == []  # Basic credentials are not even looked at


CREDS = 'Digest username="123456", nonce="n", uri="sip:x", response="0"'
REALM = ', realm="alarm.example.no"'
QOP = ', qop=auth, nc=00000001, cnonce="c"'


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "no_credentials"),
        ("Digest", "malformed"),
        ('Digest username="a" realm="b"', "malformed"),
        ('Digest username="a", username="a"', "malformed"),
        ("Bearer abc.def", "unsupported_scheme"),
        (CREDS + REALM, "qop_required"),
        (CREDS + REALM + ", qop=auth", "malformed"),
        (CREDS + REALM + QOP.replace("00000001", "00000000"), "malformed"),
        (CREDS + REALM + QOP.replace("auth", "auth-int"), "unsupported_qop"),
        (CREDS + ', realm="other"' + QOP, "wrong_realm"),
        (CREDS + REALM + ", algorithm=SHA-256", "unsupported_algorithm"),
    ],
)
def test_unusable_credentials_get_a_fresh_challenge(header: str, reason: str) -> None:
    result = verify(authenticator(), header, NonceCounts())
    assert (result.outcome, result.status, result.reason) == (DigestOutcome.MISSING, 401, reason)
    assert result.www_authenticate is not None


def test_request_uri_must_match_when_given() -> None:
    auth = authenticator()
    header = answer(auth.challenge(NOW))
    result = auth.verify(
        "MESSAGE", header, NOW, PASSWORDS.get, NonceCounts(), request_uri="sip:other"
    )
    assert (result.outcome, result.status, result.reason) == (
        DigestOutcome.WRONG,
        400,
        "uri_mismatch",
    )
    ok = auth.verify(
        "MESSAGE",
        header,
        NOW,
        PASSWORDS.get,
        NonceCounts(),
        request_uri="sip:scaip@alarm.example.no",
    )
    assert ok.ok
    # the method is part of the hash: an answer for MESSAGE does not pass as REGISTER
    assert (
        auth.verify("REGISTER", header, NOW, PASSWORDS.get, NonceCounts()).outcome
        is DigestOutcome.WRONG
    )


def test_nonce_counts_are_bounded_and_never_forget_into_a_replay() -> None:
    auth, counts = authenticator(), NonceCounts(max_nonces=2)
    challenges = [auth.challenge(NOW + timedelta(seconds=i)) for i in range(4)]
    at = NOW + timedelta(seconds=10)
    for c in challenges[:3]:
        assert verify(auth, answer(c), counts, at).ok
    assert len(counts) == 2  # the first was evicted to make room
    # the evicted nonce cannot be told from new: a fresh nonce is asked for, not a replay let in
    forgotten = verify(auth, answer(challenges[0], nc=1), counts, at)
    assert (forgotten.outcome, forgotten.reason) == (DigestOutcome.STALE, "forgotten_nonce")
    # expired entries go first, by now
    late = NOW + TTL + timedelta(seconds=3)
    fresh = auth.challenge(late)
    assert verify(auth, answer(fresh), counts, late).ok
    assert verify(auth, answer(fresh), counts, late).outcome is DigestOutcome.REPLAY


def test_usage_errors() -> None:
    with pytest.raises(SipUsageError):
        DigestAuthenticator("r", b"short", TTL)
    with pytest.raises(SipUsageError):
        DigestAuthenticator("r", SECRET, timedelta(0))
    with pytest.raises(SipUsageError):
        NonceCounts(0)
    with pytest.raises(SipUsageError):
        verify(authenticator(), None, NonceCounts(), datetime(2025, 1, 1))  # naive


@given(st.text(max_size=300))
@settings(max_examples=FUZZ_EXAMPLES)
def test_any_authorization_value_gives_a_result(header: str) -> None:
    result = verify(authenticator(), header, NonceCounts())
    assert isinstance(result, DigestResult) and not result.ok


@given(st.text(max_size=60), st.text(max_size=30), st.integers(1, 2**32 - 1))
@settings(max_examples=FUZZ_EXAMPLES // 2)
def test_digest_round_trip_for_any_password(password: str, cnonce: str, nc: int) -> None:
    auth = authenticator()
    header = digest_authorization(
        "MESSAGE", "sip:x", "dev", password, auth.challenge(NOW), cnonce=cnonce or "c", nc=nc
    )
    result = auth.verify("MESSAGE", header, NOW, {"dev": password}.get, NonceCounts())
    assert result.ok, result


auth_text = st.text(max_size=20) | st.sampled_from(["", "123456", "hemmelig", "\udcf8", "é"])


@given(
    st.fixed_dictionaries(
        {
            "username": auth_text,
            "realm": st.sampled_from(["alarm.example.no", "x"]) | auth_text,
            "nonce": auth_text,
            "uri": auth_text,
            "response": auth_text | st.text("0123456789abcdef", min_size=32, max_size=32),
            "qop": st.sampled_from(["auth", "auth-int", "x"]),
            "nc": st.sampled_from(["00000001", "ffffffff", "0000000g", ""]) | auth_text,
            "cnonce": auth_text,
        },
        optional={"algorithm": st.sampled_from(["MD5", "md5", "MD5-sess"]), "opaque": auth_text},
    )
)
@settings(max_examples=FUZZ_EXAMPLES)
def test_any_well_formed_digest_header_gives_a_result(params: dict[str, str]) -> None:
    """Past the syntax checks: odd user names, responses and nonces reach the hashing."""
    quoted = ", ".join(
        f'{k}="{v.replace(chr(92), "").replace(chr(34), "")}"' for k, v in params.items()
    )
    result = verify(authenticator(), "Digest " + quoted, NonceCounts())
    assert isinstance(result, DigestResult) and not result.ok

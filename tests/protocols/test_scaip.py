"""The pure SCAIP codec: PROTOCOLS.md 2.2 examples, code tables, every snu, hostile XML.

One table of (body, expected) drives ``handle_mrq``: an expected event summary for what is
taken, an expected (snu, echoed ref) for what is refused. Hostile documents (entity bombs,
XXE, DTDs, 10,000-deep nesting, 1 MB) must come back as error results with the right
``snu``. Hypothesis builds valid requests with its own small XML writer and checks that
they parse to the same fields, round-trips ``<mrs>``, and feeds arbitrary bytes to
``handle_mrq``, which must always return a result.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmd.model import Category, Condition, EventKind, Flag, Priority
from alarmd.protocols import scaip_codes
from alarmd.protocols.scaip import (
    MAX_MRQ_BYTES,
    MessageType,
    Mrs,
    ScaipError,
    ScaipResult,
    Snu,
    classify,
    encode_mrs,
    event_priority,
    handle_mrq,
    parse_mrq,
    parse_mrs,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PEER = "sip:unit@192.0.2.7:5060"


def handle(body: bytes) -> ScaipResult:
    return handle_mrq(body, source=PEER, now=NOW)


def mrq(*children: str, root: str = "mrq") -> bytes:
    """A compact document from already-written children: ``mrq("<ref>1</ref>", ...)``."""
    return f"<{root}>{''.join(children)}</{root}>".encode()


def tag(name: str, text: str) -> str:
    return f"<{name}>{escape(text)}</{name}>"


BASE = ("<ref>R1</ref>", "<cid>4711</cid>")


def alarm(dty: str, stc: str | None = None, *more: str) -> bytes:
    """A request from controller 4711, ref R1, with the given codes and extra tags."""
    children = [*BASE, tag("dty", dty)]
    if stc is not None:
        children.append(tag("stc", stc))
    return mrq(*children, *more)


def summary(result: ScaipResult) -> tuple[object, ...]:
    """(kind, condition, priority, code, flags) of the one event, or (snu, ref) if refused."""
    if not result.ok:
        assert not result.events and result.mrq is None
        return ("snu", result.snu, result.ref)
    if not result.events:
        return ("no event",)
    (event,) = result.events
    return (
        event.kind.value,
        event.condition.value,
        event.priority.name,
        event.code,
        tuple(sorted(f.value for f in event.flags)),
    )


_U = (Flag.UNKNOWN_CODE.value,)

# (id, body, expected summary)
CASES: list[tuple[str, bytes, tuple[object, ...]]] = [
    # PROTOCOLS.md 2.2 minimal alarm: dty 0001 "undefined" and stc 001, which is not in the
    # 2.5 list: an alarm that is shown, flagged, never dropped.
    (
        "minimal alarm",
        b"<mrq><ref>1234</ref><cid>123456</cid><dty>0001</dty><stc>001</stc></mrq>",
        ("other_alarm", "alarm", "HIGH", "SCAIP:dty=0001/stc=0001", _U),
    ),
    (
        "heartbeat",
        b"<mrq><ref>1244</ref><mty>PI</mty><cid>678</cid><dty>2</dty></mrq>",
        ("no event",),
    ),
    ("pendant, no stc", alarm("3"), ("assistance", "alarm", "HIGH", "SCAIP:dty=0003", ())),
    (
        "pendant, manual alarm",
        alarm("0003", "0010"),
        ("assistance", "alarm", "HIGH", "SCAIP:dty=0003/stc=0010", ()),
    ),
    (
        "fall detector, automatic",
        alarm("5", "9"),
        ("fall", "alarm", "CRITICAL", "SCAIP:dty=0005/stc=0009", ()),
    ),
    ("man-down", alarm("030"), ("fall", "alarm", "CRITICAL", "SCAIP:dty=0030", ())),
    ("smoke", alarm("0023"), ("fire", "alarm", "CRITICAL", "SCAIP:dty=0023", ())),
    ("CO", alarm("26"), ("gas", "alarm", "CRITICAL", "SCAIP:dty=0026", ())),
    ("bed monitor", alarm("12"), ("bed_exit", "alarm", "NORMAL", "SCAIP:dty=0012", ())),
    ("door open", alarm("14", "76"), ("exit", "alarm", "HIGH", "SCAIP:dty=0014/stc=0076", ())),
    (
        "carer present",
        alarm("2", "0088"),
        ("carer_present", "alarm", "NONE", "SCAIP:dty=0002/stc=0088", ()),
    ),
    (
        "check-out",
        alarm("2", "111"),
        ("check_out", "alarm", "NONE", "SCAIP:dty=0002/stc=0111", ()),
    ),
    (
        "battery low overrides the fall detector",
        alarm("5", "16"),
        ("battery_low", "alarm", "LOW", "SCAIP:dty=0005/stc=0016", ()),
    ),
    (
        "battery full",
        alarm("3", "15"),
        ("battery_low", "restore", "LOW", "SCAIP:dty=0003/stc=0015", ()),
    ),
    (
        "link failure (mobile)",
        alarm("2", "24"),
        ("link_lost", "alarm", "NORMAL", "SCAIP:dty=0002/stc=0024", ()),
    ),
    (
        "link re-established (mobile)",
        alarm("2", "0113"),
        ("link_lost", "restore", "NORMAL", "SCAIP:dty=0002/stc=0113", ()),
    ),
    (
        "mains failure",
        alarm("2", "85"),
        ("mains_lost", "alarm", "LOW", "SCAIP:dty=0002/stc=0085", ()),
    ),
    (
        "radio test re-established",
        alarm("3", "124"),
        ("radio_supervision", "restore", "NORMAL", "SCAIP:dty=0003/stc=0124", ()),
    ),
    (
        "restoral keeps the device kind",
        alarm("23", "94"),
        ("fire", "restore", "CRITICAL", "SCAIP:dty=0023/stc=0094", ()),
    ),
    ("test", alarm("2", "102"), ("test", "alarm", "NONE", "SCAIP:dty=0002/stc=0102", ())),
    ("cancel", alarm("3", "19"), ("cancel", "alarm", "NONE", "SCAIP:dty=0003/stc=0019", ())),
    (
        "unknown dty",
        alarm("0777"),
        ("other_alarm", "alarm", "HIGH", "SCAIP:dty=0777", _U),
    ),
    (
        "unknown dty, known stc: kind from stc, still flagged",
        alarm("777", "16"),
        ("battery_low", "alarm", "LOW", "SCAIP:dty=0777/stc=0016", _U),
    ),
    (
        "unknown stc on a known device",
        alarm("5", "4321"),
        ("other_alarm", "alarm", "HIGH", "SCAIP:dty=0005/stc=4321", _U),
    ),
    (
        "vendor-specific dty and stc",
        alarm("0901", "0950"),
        ("other_alarm", "alarm", "HIGH", "SCAIP:dty=0901/stc=0950", _U),
    ),
    (
        "pri raises an alarm",
        alarm("12", None, "<pri>9</pri>"),
        ("bed_exit", "alarm", "CRITICAL", "SCAIP:dty=0012", ()),
    ),
    (
        "pri never lowers an alarm",
        alarm("5", None, "<pri>1</pri>"),
        ("fall", "alarm", "CRITICAL", "SCAIP:dty=0005", ()),
    ),
    (
        "pri moves a technical event",
        alarm("2", "16", "<pri>7</pri>"),
        ("battery_low", "alarm", "HIGH", "SCAIP:dty=0002/stc=0016", ()),
    ),
    (
        "children in any order, whitespace, declaration, namespace",
        b'\r\n<?xml version="1.0" encoding="UTF-8"?>\n<mrq xmlns="urn:example:scaip">\n'
        b"  <stc> 9 </stc>\n  <dty>5</dty>\n  <cid>4711</cid>\n  <ref>R1</ref>\n</mrq>\r\n",
        ("fall", "alarm", "CRITICAL", "SCAIP:dty=0005/stc=0009", ()),
    ),
    (
        "ISO-8859-1 document",
        '<?xml version="1.0" encoding="ISO-8859-1"?><mrq><ref>R1</ref><cid>1</cid>'
        "<dty>3</dty><dte>Stue på Ærø</dte></mrq>".encode("latin-1"),
        ("assistance", "alarm", "HIGH", "SCAIP:dty=0003", ()),
    ),
    # --- refused ---------------------------------------------------------------------
    ("empty body", b"", ("snu", Snu.INVALID_FORMAT, None)),
    ("not XML", b"hello", ("snu", Snu.INVALID_FORMAT, None)),
    ("truncated", b"<mrq><ref>R9</ref><cid>1</cid>", ("snu", Snu.INVALID_FORMAT, "R9")),
    ("wrong root", mrq(*BASE, "<dty>3</dty>", root="mrs"), ("snu", Snu.INVALID_FORMAT, "R1")),
    (
        "tag twice",
        mrq(*BASE, "<dty>3</dty><dty>4</dty>"),
        ("snu", Snu.INVALID_FORMAT, "R1"),
    ),
    (
        "child inside a value",
        mrq(*BASE, "<dty>3<x/></dty>"),
        ("snu", Snu.INVALID_FORMAT, "R1"),
    ),
    ("ref missing", mrq("<cid>1</cid><dty>3</dty>"), ("snu", Snu.REF_MISSING, None)),
    ("ref empty", mrq("<ref/><cid>1</cid><dty>3</dty>"), ("snu", Snu.REF_MISSING, None)),
    (
        "ref too long",
        mrq("<ref>ABCDEFGHIJKLMNOPQ</ref><cid>1</cid><dty>3</dty>"),
        ("snu", Snu.WRONG_DATA, None),
    ),
    (
        "ref not alphanumeric",
        mrq("<ref>R-1</ref><cid>1</cid><dty>3</dty>"),
        ("snu", Snu.WRONG_DATA, None),
    ),
    ("cid missing", mrq("<ref>R1</ref><dty>3</dty>"), ("snu", Snu.MANDATORY_MISSING, "R1")),
    ("dty missing", mrq(*BASE), ("snu", Snu.MANDATORY_MISSING, "R1")),
    ("letters in cid", mrq("<ref>R1</ref><cid>12a</cid><dty>3</dty>"), ("snu", 3, "R1")),
    (
        "cid over 32 digits",
        mrq("<ref>R1</ref>", tag("cid", "1" * 33), "<dty>3</dty>"),
        ("snu", 3, "R1"),
    ),
    ("dty five digits", alarm("00003"), ("snu", Snu.WRONG_DATA, "R1")),
    ("stc not a number", alarm("3", "x"), ("snu", Snu.WRONG_DATA, "R1")),
    ("pri=12", alarm("3", None, "<pri>12</pri>"), ("snu", Snu.WRONG_DATA, "R1")),
    ("mty unknown", alarm("3", None, "<mty>XX</mty>"), ("snu", Snu.WRONG_DATA, "R1")),
    ("dte over 32 chars", alarm("3", None, tag("dte", "x" * 33)), ("snu", 3, "R1")),
    ("lva 3 chars", alarm("3", None, "<lva>abc</lva>"), ("snu", Snu.WRONG_DATA, "R1")),
    ("did not ASCII", alarm("3", None, "<did>ø</did>"), ("snu", Snu.WRONG_DATA, "R1")),
    ("geo out of range", alarm("3", None, "<lge><geo>91,10</geo></lge>"), ("snu", 3, "R1")),
    ("geo not numbers", alarm("3", None, "<lge><geo>north</geo></lge>"), ("snu", 3, "R1")),
    (
        "tim without offset",
        alarm("3", None, "<lge><tim>2025-03-01T11:00:00</tim></lge>"),
        ("snu", 3, "R1"),
    ),
    (
        "bad UTF-8",
        b"<mrq><ref>R1</ref><cid>1</cid><dty>3</dty><dte>\xff</dte></mrq>",
        ("snu", 2, "R1"),
    ),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table(body: bytes, expected: tuple[object, ...]) -> None:
    result = handle(body)
    assert summary(result) == expected
    if result.ok:
        assert result.reply_on_error == b""
    else:
        reply = parse_mrs(result.reply_on_error)
        assert reply.snu == result.snu
        assert reply.ref == result.ref
        assert reply.ste == result.reason


def test_codes_compare_as_numbers() -> None:
    padded = handle(alarm("0002", "0016", "<lco>002</lco>", "<dco>002</dco>"))
    plain = handle(alarm("2", "16", "<lco>2</lco>", "<dco>2</dco>"))
    assert padded.events[0].code == plain.events[0].code == "SCAIP:dty=0002/stc=0016"
    assert padded.events[0].zone == plain.events[0].zone == "002"
    assert padded.events[0].attributes == plain.events[0].attributes
    assert padded.mrq is not None and plain.mrq is not None
    assert (padded.mrq.dty, padded.mrq.stc) == (plain.mrq.dty, plain.mrq.stc) == (2, 16)


def test_event_fields_and_location() -> None:
    body = alarm(
        "0005",
        "0009",
        "<did>FD-17</did><dco>017</dco><dte>Fall sensor</dte><stt>Fall detected</stt>",
        "<crd>gsm:+4790000000</crd><crd>sip:unit@example.org</crd>",
        "<lco>011</lco><lva>2</lva><lte>Bad 2. etg</lte>",
        "<lge><geo>59.9139, 10.7522</geo><tim>2025-03-01T12:59:30+01:00</tim>",
        "<gga>$GPGGA,115930,5954.834,N,01045.132,E,1,08,0.9,10.0,M,,,,*47</gga></lge>",
        "<zzz>1</zzz><lge2/>",
    )
    result = handle_mrq(body, source=PEER, now=NOW, raw=b"SIP MESSAGE...")
    assert result.ok and result.mty is MessageType.MESSAGE and not result.is_heartbeat
    assert result.dedup_key == "scaip:4711:R1"
    (event,) = result.events
    assert event.protocol == "scaip" and event.source == "4711"
    assert event.kind is EventKind.FALL and event.category is Category.ALARM
    assert event.received_at == NOW
    assert event.occurred_at == datetime(2025, 3, 1, 11, 59, 30, tzinfo=UTC)
    assert event.zone == "017"
    assert event.text == "Fall sensor; Fall detected"
    assert event.raw == b"SIP MESSAGE..."
    assert event.dedup_key == "scaip:4711:R1"
    attrs = dict(event.attributes)
    assert attrs["lco"] == "011" and attrs["lco_name"] == "bathroom"
    assert attrs["lva"] == "2" and attrs["lte"] == "Bad 2. etg"
    assert attrs["geo"] == "59.9139,10.7522"
    assert attrs["tim"] == "2025-03-01T12:59:30+01:00"
    assert attrs["gga"].startswith("$GPGGA,115930")
    assert attrs["did"] == "FD-17"
    assert attrs["crd"] == "gsm:+4790000000 sip:unit@example.org"
    assert attrs["dty_name"] == "fall detector" and attrs["stc_name"] == "alarm (automatic)"
    assert attrs["peer"] == PEER and attrs["mty"] == "ME"
    assert attrs["unknown_tags"] == "zzz lge2"
    assert result.mrq is not None and result.mrq.unknown == ("zzz", "lge2")
    assert result.mrq.geo == (59.9139, 10.7522)


def test_unknown_tags_inside_lge_and_unknown_subtrees_are_ignored() -> None:
    body = alarm("3", None, "<lge><alt>12</alt><geo>1,2</geo></lge><ext><a><b>x</b></a></ext>")
    parsed = parse_mrq(body)
    assert parsed.unknown == ("lge/alt", "ext")
    assert parsed.geo == (1.0, 2.0)


@pytest.mark.parametrize(
    ("mty", "key"),
    [
        (None, "scaip:4711:R1"),
        ("ME", "scaip:4711:R1"),
        ("IN", "scaip:4711:R1:IN:"),
        ("RE", "scaip:4711:R1:RE:"),
        ("re", "scaip:4711:R1:RE:"),
    ],
)
def test_message_types_and_dedup_keys(mty: str | None, key: str) -> None:
    body = alarm("5", None, tag("mty", mty) if mty else "")
    result = handle(body)
    (event,) = result.events
    assert result.dedup_key == event.dedup_key
    assert result.dedup_key is not None
    if key.endswith(":"):  # IN and RE: type, then a digest of the content
        assert result.dedup_key.startswith(key)
        assert len(result.dedup_key) == len(key) + 16
        key = result.dedup_key
    assert event.kind is EventKind.FALL  # an update or reset keeps the alarm's kind
    assert event.attributes["mty"] == (mty or "ME").upper()
    # a re-send is byte-identical, so it gets the same key
    assert handle(body).dedup_key == key


def test_heartbeat_has_no_event_but_keeps_hbo() -> None:
    result = handle(alarm("2", None, "<mty>PI</mty><hbo>001</hbo>"))
    assert result.ok and result.is_heartbeat and result.events == ()
    assert result.mrq is not None and result.mrq.hbo == 1
    assert result.dedup_key is not None
    assert result.dedup_key.startswith("scaip:4711:R1:PI:")


def test_two_different_updates_under_one_ref_are_not_taken_for_re_sends() -> None:
    first = alarm("5", None, "<mty>IN</mty><dte>kitchen</dte>")
    second = alarm("5", None, "<mty>IN</mty><dte>hallway</dte>")
    assert handle(first).dedup_key != handle(second).dedup_key
    assert handle(first).dedup_key == handle(first).dedup_key  # a re-send is a duplicate


# --- hostile XML ----------------------------------------------------------------------------

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]><mrq><ref>BOMB1</ref><cid>1</cid><dty>3</dty><dte>&lol9;</dte></mrq>"
)
XXE = (
    b'<?xml version="1.0"?><!DOCTYPE mrq [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<mrq><ref>XXE1</ref><cid>1</cid><dty>3</dty><dte>&xxe;</dte></mrq>"
)
EXTERNAL_DTD = (
    b'<!DOCTYPE mrq SYSTEM "http://127.0.0.1:9/mrq.dtd">'
    b"<mrq><ref>DTD1</ref><cid>1</cid><dty>3</dty></mrq>"
)
PARAMETER_ENTITY = (
    b'<!DOCTYPE mrq [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>'
    b"<mrq><ref>PE1</ref><cid>1</cid><dty>3</dty></mrq>"
)
UNDECLARED_ENTITY = b"<mrq><ref>ENT1</ref><cid>&xxe;</cid><dty>3</dty></mrq>"


def deep(depth: int) -> bytes:
    return b"<mrq><ref>DEEP1</ref>" + b"<a>" * depth + b"</a>" * depth + b"</mrq>"


@pytest.mark.parametrize(
    ("body", "max_bytes", "snu", "ref"),
    [
        (BILLION_LAUGHS, MAX_MRQ_BYTES, Snu.INVALID_FORMAT, "BOMB1"),
        (XXE, MAX_MRQ_BYTES, Snu.INVALID_FORMAT, "XXE1"),
        (EXTERNAL_DTD, MAX_MRQ_BYTES, Snu.INVALID_FORMAT, "DTD1"),
        (PARAMETER_ENTITY, MAX_MRQ_BYTES, Snu.INVALID_FORMAT, "PE1"),
        (UNDECLARED_ENTITY, MAX_MRQ_BYTES, Snu.INVALID_FORMAT, "ENT1"),
        # 70 kB deep: over the size limit before any parsing...
        (deep(10_000), MAX_MRQ_BYTES, Snu.TOO_LONG, "DEEP1"),
        # ...and with the limit lifted, refused at depth 5 without building anything.
        (deep(10_000), 10**6, Snu.INVALID_FORMAT, "DEEP1"),
        (deep(4), MAX_MRQ_BYTES, Snu.INVALID_FORMAT, "DEEP1"),
        # 1 MB of padding inside a valid request
        (alarm("3", None, tag("dte", "x" * 1_000_000)), MAX_MRQ_BYTES, Snu.TOO_LONG, "R1"),
        (b"\0" * 1_000_000, MAX_MRQ_BYTES, Snu.TOO_LONG, None),
    ],
    ids=[
        "billion-laughs",
        "xxe",
        "external-dtd",
        "parameter-entity",
        "undeclared-entity",
        "deep-10000",
        "deep-10000-unbounded-size",
        "deep-6",
        "1MB-text",
        "1MB-nul",
    ],
)
def test_hostile_xml_is_refused(body: bytes, max_bytes: int, snu: Snu, ref: str | None) -> None:
    result = handle_mrq(body, source=PEER, now=NOW, max_bytes=max_bytes)
    assert (result.snu, result.ref, result.events) == (snu, ref, ())
    assert parse_mrs(result.reply_on_error).snu == snu


def test_depth_four_is_allowed() -> None:
    # mrq > lge > (unknown) > (its child): the deepest legal shape
    assert parse_mrq(alarm("3", None, "<lge><x><y>1</y></x></lge>")).unknown == ("lge/x",)


def test_parse_mrq_raises_scaip_error_with_ref() -> None:
    with pytest.raises(ScaipError) as info:
        parse_mrq(alarm("3", None, "<pri>12</pri>"))
    assert (info.value.snu, info.value.reason, info.value.ref) == (3, "bad_pri", "R1")


def test_a_good_request_after_a_hostile_one_still_works() -> None:
    assert handle(BILLION_LAUGHS).snu == Snu.INVALID_FORMAT
    assert summary(handle(alarm("5"))) == ("fall", "alarm", "CRITICAL", "SCAIP:dty=0005", ())


# --- tables ---------------------------------------------------------------------------------


def test_tables_have_no_duplicate_codes() -> None:
    for rows in (scaip_codes.DEVICE_TYPES, scaip_codes.STATUS_CODES):
        codes = [row.code for row in rows]
        assert len(codes) == len(set(codes))


def test_every_device_type_in_protocols_md_is_mapped() -> None:
    for code in range(52):  # 0000-0051, PROTOCOLS.md 2.5
        assert scaip_codes.device_type(code) is not None, code
    assert scaip_codes.device_type(900) is None  # vendor specific: flagged, not guessed


@pytest.mark.parametrize(
    ("dty", "kind"),
    [
        (5, EventKind.FALL),
        (3, EventKind.ASSISTANCE),
        (4, EventKind.ASSISTANCE),
        (6, EventKind.PANIC),
        (7, EventKind.PANIC),
        (10, EventKind.INACTIVITY),
        (11, EventKind.MEDICATION),
        (12, EventKind.BED_EXIT),
        (13, EventKind.BED_EXIT),
        (44, EventKind.BED_EXIT),
        (14, EventKind.EXIT),
        (15, EventKind.EXIT),
        (29, EventKind.EXIT),
        (36, EventKind.EXIT),
        (17, EventKind.EPILEPSY),
        (23, EventKind.FIRE),
        (25, EventKind.FIRE),
        (47, EventKind.FIRE),
        (21, EventKind.GAS),
        (26, EventKind.GAS),
        (33, EventKind.WATER),
        (16, EventKind.WATER),
        (28, EventKind.INTRUDER),
        (30, EventKind.FALL),
    ],
)
def test_device_alarm_kinds(dty: int, kind: EventKind) -> None:
    for stc in (None, 9, 10):
        assert classify(dty, stc) == (kind, Condition.ALARM, False)


@pytest.mark.parametrize(
    ("stc", "kind", "condition"),
    [
        (14, EventKind.BATTERY_LOW, Condition.ALARM),
        (16, EventKind.BATTERY_LOW, Condition.ALARM),
        (15, EventKind.BATTERY_LOW, Condition.RESTORE),
        *[(c, EventKind.LINK_LOST, Condition.ALARM) for c in range(23, 28)],
        *[(c, EventKind.LINK_LOST, Condition.RESTORE) for c in range(112, 117)],
        (85, EventKind.MAINS_LOST, Condition.ALARM),
        (86, EventKind.MAINS_LOST, Condition.RESTORE),
        (125, EventKind.TAMPER, Condition.ALARM),
        (42, EventKind.DEVICE_FAULT, Condition.ALARM),
        (67, EventKind.DEVICE_FAULT, Condition.ALARM),
        (105, EventKind.DEVICE_FAULT, Condition.ALARM),
        (123, EventKind.RADIO_SUPERVISION, Condition.ALARM),
        (124, EventKind.RADIO_SUPERVISION, Condition.RESTORE),
        (102, EventKind.TEST, Condition.ALARM),
        (103, EventKind.TEST, Condition.ALARM),
        (19, EventKind.CANCEL, Condition.ALARM),
        (2, EventKind.CANCEL, Condition.ALARM),
        (88, EventKind.CARER_PRESENT, Condition.ALARM),
        (111, EventKind.CHECK_OUT, Condition.ALARM),
    ],
)
def test_status_codes_override_the_device(stc: int, kind: EventKind, condition: Condition) -> None:
    assert classify(5, stc) == (kind, condition, False)


def test_status_codes_without_a_kind_are_flagged() -> None:
    for stc in (3, 89, 121):
        assert classify(3, stc) == (EventKind.OTHER_ALARM, Condition.ALARM, True)


@pytest.mark.parametrize(
    ("kind", "pri", "expected"),
    [
        (EventKind.FALL, 0, Priority.CRITICAL),
        (EventKind.FALL, 3, Priority.CRITICAL),
        (EventKind.WATER, 1, Priority.NORMAL),
        (EventKind.WATER, 8, Priority.HIGH),
        (EventKind.WATER, 9, Priority.CRITICAL),
        (EventKind.BATTERY_LOW, 0, Priority.LOW),
        (EventKind.LINK_LOST, 2, Priority.LOW),
        (EventKind.LINK_LOST, 5, Priority.NORMAL),
        (EventKind.TEST, 9, Priority.CRITICAL),
    ],
)
def test_priority_mapping(kind: EventKind, pri: int, expected: Priority) -> None:
    assert event_priority(kind, pri) is expected


# --- <mrs> ------------------------------------------------------------------------------


def test_encode_mrs_is_compact_and_escaped() -> None:
    assert encode_mrs("1234", Snu.OK) == b"<mrs><ref>1234</ref><snu>0</snu></mrs>"
    assert encode_mrs(None, Snu.REF_MISSING) == b"<mrs><ref></ref><snu>10</snu></mrs>"
    full = encode_mrs("R1", 0, ste="a<b & c>", mre=1, cre=5, tnu="+47 <1>", hbi=60)
    assert full == (
        b"<mrs><ref>R1</ref><snu>0</snu><ste>a&lt;b &amp; c&gt;</ste><mre>1</mre>"
        b"<cre>05</cre><tnu>+47 &lt;1&gt;</tnu><hbi>60</hbi></mrs>"
    )
    assert parse_mrs(full) == Mrs("R1", 0, "a<b & c>", 1, 5, "+47 <1>", 60)
    # characters XML cannot carry never make our reply malformed
    assert parse_mrs(encode_mrs("R1", 4, ste="bell\x07")).ste == "bell\ufffd"


@pytest.mark.parametrize(
    "kw", [{"snu": 100}, {"snu": -1}, {"mre": 4}, {"cre": 0}, {"cre": 63}, {"hbi": 1441}]
)
def test_encode_mrs_refuses_values_outside_the_tables(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the field
        encode_mrs("R1", kw.get("snu", 0), mre=kw.get("mre"), cre=kw.get("cre"), hbi=kw.get("hbi"))


@pytest.mark.parametrize(
    ("body", "snu"),
    [
        (b"<mrs><ref>1</ref></mrs>", Snu.MANDATORY_MISSING),
        (b"<mrs><ref>1</ref><snu>x</snu></mrs>", Snu.WRONG_DATA),
        (b"<mrs><ref>1</ref><snu>0</snu><snu>4</snu></mrs>", Snu.INVALID_FORMAT),
        (b"<mrq><ref>1</ref><snu>0</snu></mrq>", Snu.INVALID_FORMAT),
    ],
)
def test_parse_mrs_errors(body: bytes, snu: Snu) -> None:
    with pytest.raises(ScaipError) as info:
        parse_mrs(body)
    assert info.value.snu == snu


# --- properties -----------------------------------------------------------------------------

# XML 1.0 characters, without CR (normalised to LF by any parser) and surrogates.
# (Cn holds U+FFFE and U+FFFF, which XML cannot carry.)
_xml_char = st.characters(blacklist_categories=("Cs", "Cc", "Cn")) | st.sampled_from("\t\n")
_SPACE = " \t\n"


def _texts(max_size: int) -> st.SearchStrategy[str]:
    """Non-empty text without surrounding whitespace (the parser strips it)."""
    return (
        st.text(_xml_char, min_size=1, max_size=max_size)
        .map(lambda s: s.strip(_SPACE))
        .filter(bool)
    )


def _digits(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from("0123456789"), min_size=lo, max_size=hi)


_alnum = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ascii = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


def _degrees(limit: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda whole, frac, neg: f"{'-' if neg else ''}{whole}{'.' + frac if frac else ''}",
        st.integers(0, limit - 1),
        _digits(0, 8),
        st.booleans(),
    )


_tims = st.builds(
    lambda dt, minutes: dt.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(-14 * 60, 14 * 60),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, object], bytes]:
    """Valid field values, and a document written from them in a random order."""
    ref = draw(st.text(_alnum, min_size=1, max_size=16))
    cid = draw(_digits(1, 32))
    dty = draw(_digits(1, 4))
    optional: dict[str, st.SearchStrategy[str]] = {
        "mty": st.sampled_from(["ME", "RE", "IN", "PI"]),
        "ver": st.sampled_from(["01.00", "2.1", "10"]),
        "stc": _digits(1, 4),
        "pri": _digits(1, 1),
        "did": st.text(_ascii, min_size=1, max_size=16),
        "dco": _digits(1, 3),
        "dte": _texts(32),
        "stt": _texts(32),
        "lco": _digits(1, 3),
        "lva": _texts(2),
        "lte": _texts(32),
        "hbo": _digits(1, 3),
        "cha": _texts(10),
        "ite": _texts(40),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(optional)), unique=True))
    values = {name: draw(optional[name]) for name in chosen}
    crd = draw(st.lists(_texts(40), max_size=3))
    lat, lon = draw(_degrees(90)), draw(_degrees(180))
    tim = draw(st.none() | _tims)
    with_geo = draw(st.booleans())
    # (name, text) pairs, shuffled; crd keeps the order it ends up in
    pairs = [("ref", ref), ("cid", cid), ("dty", dty), *values.items()]
    pairs += [("crd", c) for c in crd]
    lge = ([tag("geo", f"{lat},{lon}")] if with_geo else []) + (
        [tag("tim", tim.isoformat())] if tim else []
    )
    if lge:
        pairs.append(("lge", ""))
    pairs = draw(st.permutations(pairs))
    children = ["<lge>" + "".join(lge) + "</lge>" if k == "lge" else tag(k, v) for k, v in pairs]
    expected: dict[str, object] = {
        "ref": ref,
        "cid": cid,
        "dty": int(dty),
        "crd": tuple(v for k, v in pairs if k == "crd"),
        "geo": (float(lat), float(lon)) if with_geo else None,
        "tim": tim,
        "mty": MessageType(values.get("mty", "ME")),
        "ver": values.get("ver", "01.00"),
        "pri": int(values.get("pri", "0")),
    }
    for name in ("stc", "dco", "lco", "hbo"):
        expected[name] = int(values[name]) if name in values else None
    for name in ("did", "dte", "stt", "lva", "lte", "cha", "ite"):
        expected[name] = values.get(name)
    return expected, mrq(*children)


@settings(max_examples=100, deadline=None)
@given(requests())
def test_property_valid_requests_parse_to_their_fields(
    case: tuple[dict[str, object], bytes],
) -> None:
    expected, body = case
    parsed = parse_mrq(body)
    assert {name: getattr(parsed, name) for name in expected} == expected
    assert parsed.unknown == ()
    result = handle(body)
    assert result.ok and result.mrq == parsed
    assert len(result.events) == (0 if parsed.mty is MessageType.HEARTBEAT else 1)


_mrs_texts = st.none() | _texts(40)


@settings(max_examples=150, deadline=None)
@given(
    ref=st.none() | st.text(_alnum, min_size=1, max_size=16),
    snu=st.integers(0, 99),
    ste=_mrs_texts,
    mre=st.none() | st.integers(0, 3),
    cre=st.none() | st.integers(1, 62),
    tnu=_mrs_texts,
    hbi=st.none() | st.integers(1, 1440),
)
def test_property_mrs_round_trip(
    ref: str | None,
    snu: int,
    ste: str | None,
    mre: int | None,
    cre: int | None,
    tnu: str | None,
    hbi: int | None,
) -> None:
    body = encode_mrs(ref, snu, ste=ste, mre=mre, cre=cre, tnu=tnu, hbi=hbi)
    assert parse_mrs(body) == Mrs(ref, snu, ste, mre, cre, tnu, hbi)


_FRAGMENTS = [
    b"<mrq>", b"</mrq>", b"<ref>", b"</ref>", b"R1", b"<cid>", b"</cid>", b"4711",
    b"<dty>", b"</dty>", b"5", b"0088", b"<stc>", b"</stc>", b"<lge>", b"</lge>",
    b"<geo>", b"</geo>", b"59.9,10.7", b"<tim>", b"</tim>", b"2025-01-01T00:00:00Z",
    b"<mty>", b"</mty>", b"PI", b"IN", b"<pri>", b"</pri>", b"&amp;", b"&x;", b"<!DOCTYPE a>",
    b"<![CDATA[x]]>", b"<!-- c -->", b"\xff", b" ", b"<a>", b"</a>", b"<x:y>",
]  # fmt: skip


@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=300) | st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map(b"".join))
def test_property_any_bytes_give_a_result(body: bytes) -> None:
    result = handle(body)
    assert isinstance(result, ScaipResult)
    if result.ok:
        assert result.mrq is not None and len(result.events) <= 1
        for event in result.events:
            assert event.source == result.mrq.cid
            assert not math.isnan(float(event.priority))
    else:
        assert result.snu in {1, 2, 3, 7, 10} and result.reply_on_error
        assert parse_mrs(result.reply_on_error).snu == result.snu

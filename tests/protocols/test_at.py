"""AT dialogue: tables of modem dialogues (fed whole and byte by byte), parsers, fuzzing."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmd.protocols.at import (
    NEED_DATA,
    STARTUP,
    AtDialogue,
    AtParseError,
    AtUsageError,
    Command,
    CommandDone,
    ErrorCode,
    ErrorKind,
    Event,
    ModemProtocolError,
    PromptForData,
    State,
    Unsolicited,
    UrcKind,
    is_registered,
    parse_clip,
    parse_cmgl,
    parse_cmgr,
    parse_cmgs,
    parse_cmti,
    parse_cpin,
    parse_creg,
    parse_csq,
    rssi_dbm,
    split_fields,
)
from alarmd.protocols.sms import decode_deliver

# The dreamfabric SMS-DELIVER ("How are you?"), also used by test_sms.
PDU = "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"
SUBMIT = "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"

AT = Command("AT")
CSQ = Command("AT+CSQ")
CMGL = Command("AT+CMGL=4")
CREG_Q = Command("AT+CREG?")
CPIN_Q = Command("AT+CPIN?")
CMGS = Command("AT+CMGS=23")


# --- the dialogue runner -------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    command: Command


@dataclass(frozen=True)
class Data:
    data: str


@dataclass(frozen=True)
class Cancel:
    pass


Step = Send | Data | Cancel | bytes


def drain(d: AtDialogue) -> list[Event]:
    out: list[Event] = []
    while (event := d.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        out.append(event)
    return out


def run(
    steps: Sequence[Step], *, bytewise: bool, max_line: int = 4096
) -> tuple[list[Event], bytes]:
    """Play the steps; returns the events and every byte written to the modem."""
    d = AtDialogue(max_line)
    events: list[Event] = []
    written = b""
    for step in steps:
        if isinstance(step, Send):
            written += d.send(step.command)
        elif isinstance(step, Data):
            written += d.send_data(step.data)
        elif isinstance(step, Cancel):
            written += d.send_cancel()
        elif bytewise:
            for i in range(len(step)):
                d.receive_data(step[i : i + 1])
                events += drain(d)
        else:
            d.receive_data(step)
            events += drain(d)
    return events, written


def done(command: Command, *lines: str, error: ErrorCode | None = None) -> CommandDone:
    return CommandDone(command, error is None, lines, error)


def urc(kind: UrcKind, line: str, *fields: str, data: str | None = None) -> Unsolicited:
    return Unsolicited(kind, fields, line, data)


CLIP_LINE = '+CLIP: "+4791234567",145,"",0,"",0'

DIALOGUES: dict[str, tuple[list[Step], list[Event]]] = {
    "ok": ([Send(AT), b"\r\nOK\r\n"], [done(AT)]),
    "error": ([Send(AT), b"\r\nERROR\r\n"], [done(AT, error=ErrorCode(ErrorKind.ERROR))]),
    "cme_numeric": (
        [Send(CPIN_Q), b"\r\n+CME ERROR: 10\r\n"],
        [done(CPIN_Q, error=ErrorCode(ErrorKind.CME, code=10))],
    ),
    "cme_verbose": (
        [Send(CPIN_Q), b"\r\n+CME ERROR: SIM not inserted\r\n"],
        [done(CPIN_Q, error=ErrorCode(ErrorKind.CME, text="SIM not inserted"))],
    ),
    "cms": (
        [Send(Command("AT+CMGR=7")), b"\r\n+CMS ERROR: 321\r\n"],
        [done(Command("AT+CMGR=7"), error=ErrorCode(ErrorKind.CMS, code=321))],
    ),
    "bare_lf_and_cr": (
        [Send(CSQ), b"\n+CSQ: 18,99\n\rOK\r"],
        [done(CSQ, "+CSQ: 18,99")],
    ),
    "echo_on_then_off": (
        [
            Send(Command("ATE0")),
            b"ATE0\r\r\nOK\r\n",
            Send(CSQ),
            b"\r\n+CSQ: 18,99\r\n\r\nOK\r\n",
        ],
        [done(Command("ATE0")), done(CSQ, "+CSQ: 18,99")],
    ),
    "echo_on_csq": (
        [Send(CSQ), b"AT+CSQ\r\r\n+CSQ: 31,0\r\n\r\nOK\r\n"],
        [done(CSQ, "+CSQ: 31,0")],
    ),
    "ring_clip_inside_csq": (
        [
            Send(CSQ),
            b"\r\n+CSQ: 18,99\r\n\r\nRING\r\n\r\n" + CLIP_LINE.encode() + b"\r\n\r\nOK\r\n",
        ],
        [
            urc(UrcKind.RING, "RING"),
            urc(UrcKind.CLIP, CLIP_LINE, "+4791234567", "145", "", "0", "", "0"),
            done(CSQ, "+CSQ: 18,99"),
        ],
    ),
    "cmti_between_cmgl_entries": (
        [
            Send(CMGL),
            f'\r\n+CMGL: 1,1,,38\r\n{PDU}\r\n+CMTI: "SM",3\r\n+CMGL: 2,0,,38\r\n{PDU}\r\n'
            "\r\nOK\r\n".encode(),
        ],
        [
            urc(UrcKind.CMTI, '+CMTI: "SM",3', "SM", "3"),
            done(CMGL, "+CMGL: 1,1,,38", PDU, "+CMGL: 2,0,,38", PDU),
        ],
    ),
    "cmgr_text_body_reading_ring": (  # the data line is taken whatever it looks like
        [Send(Command("AT+CMGR=1")), b'+CMGR: "REC UNREAD","+4799",,"26/01/05"\r\nRING\r\nOK\r\n'],
        [done(Command("AT+CMGR=1"), '+CMGR: "REC UNREAD","+4799",,"26/01/05"', "RING")],
    ),
    "creg_unsolicited_idle": (
        [b"\r\n+CREG: 1\r\n"],
        [urc(UrcKind.CREG, "+CREG: 1", "1")],
    ),
    "creg_unsolicited_vs_solicited": (
        [Send(CREG_Q), b'\r\n+CREG: 5\r\n+CREG: 1,"00C3","1A2B"\r\n+CREG: 0,1\r\n\r\nOK\r\n'],
        [
            urc(UrcKind.CREG, "+CREG: 5", "5"),
            urc(UrcKind.CREG, '+CREG: 1,"00C3","1A2B"', "1", "00C3", "1A2B"),
            done(CREG_Q, "+CREG: 0,1"),
        ],
    ),
    "creg_unsolicited_inside_csq": (
        [Send(CSQ), b"+CREG: 0,1\r\n+CSQ: 5,3\r\nOK\r\n"],  # CREG not asked: a URC
        [urc(UrcKind.CREG, "+CREG: 0,1", "0", "1"), done(CSQ, "+CSQ: 5,3")],
    ),
    "clip_answer_vs_urc": (
        [Send(Command("AT+CLIP?")), b"+CLIP: " + b'"+4799",145\r\n+CLIP: 1,1\r\nOK\r\n'],
        [
            urc(UrcKind.CLIP, '+CLIP: "+4799",145', "+4799", "145"),
            done(Command("AT+CLIP?"), "+CLIP: 1,1"),
        ],
    ),
    "cpin_asked_and_not": (
        [b"+CPIN: READY\r\n", Send(CPIN_Q), b"+CPIN: SIM PIN\r\nOK\r\n"],
        [urc(UrcKind.CPIN, "+CPIN: READY", "READY"), done(CPIN_Q, "+CPIN: SIM PIN")],
    ),
    "boot_urcs": (
        [b'\r\n^SYSSTART\r\nRDY\r\n+CFUN: 1\r\nCall Ready\r\n+CUSD: 0,"Saldo 10",15\r\n'],
        [
            urc(UrcKind.SYSSTART, "^SYSSTART"),
            urc(UrcKind.RDY, "RDY"),
            urc(UrcKind.CFUN, "+CFUN: 1", "1"),
            urc(UrcKind.CALL_READY, "Call Ready"),
            urc(UrcKind.CUSD, '+CUSD: 0,"Saldo 10",15', "0", "Saldo 10", "15"),
        ],
    ),
    "cds_with_pdu_inside_command": (
        [Send(AT), f"\r\n+CDS: 25\r\n{PDU}\r\n\r\nOK\r\n".encode()],
        [urc(UrcKind.CDS, "+CDS: 25", "25", data=PDU), done(AT)],
    ),
    "cmgs_prompt_flow": (
        [Send(CMGS), b"\r\n> ", Data(SUBMIT), b"\r\n+CMGS: 12\r\n\r\nOK\r\n"],
        [PromptForData(CMGS), done(CMGS, "+CMGS: 12")],
    ),
    "cmgs_prompt_flow_with_echo": (
        [
            Send(CMGS),
            b"AT+CMGS=23\r\r\n> ",
            Data(SUBMIT),
            SUBMIT.encode() + b"\x1a\r\n+CMGS: 12\r\n\r\nOK\r\n",
        ],
        [PromptForData(CMGS), done(CMGS, "+CMGS: 12")],
    ),
    "cmgs_ring_before_prompt": (
        [Send(CMGS), b"\r\nRING\r\n\r\n> ", Data(SUBMIT), b"\r\n+CMGS: 7\r\n\r\nOK\r\n"],
        [urc(UrcKind.RING, "RING"), PromptForData(CMGS), done(CMGS, "+CMGS: 7")],
    ),
    "cmgs_cms_error_after_pdu": (
        [Send(CMGS), b"\r\n> ", Data(SUBMIT), b"\r\n+CMS ERROR: 500\r\n"],
        [PromptForData(CMGS), done(CMGS, error=ErrorCode(ErrorKind.CMS, code=500))],
    ),
    "cmgs_refused_before_prompt": (
        [Send(CMGS), b"\r\n+CMS ERROR: 304\r\n"],
        [done(CMGS, error=ErrorCode(ErrorKind.CMS, code=304))],
    ),
    "cmgs_cancel": (
        [Send(CMGS), b"\r\n> ", Cancel(), b"\r\nOK\r\n"],
        [PromptForData(CMGS), done(CMGS)],
    ),
    "prompt_only_while_waiting_for_it": (
        [Send(CSQ), b"> junk\r\nOK\r\n"],
        [done(CSQ, "> junk")],
    ),
    "over_long_line": (
        [b"X" * 5000 + b"\r\nRING\r\n"],
        [
            ModemProtocolError("line_too_long", "more than 4096 bytes without CR/LF"),
            urc(UrcKind.RING, "RING"),
        ],
    ),
    "over_long_line_inside_command": (
        [Send(CSQ), b"+CSQ: " + b"9" * 9000 + b"\r\n+CSQ: 1,2\r\nOK\r\n"],
        [
            ModemProtocolError("line_too_long", "more than 4096 bytes without CR/LF"),
            done(CSQ, "+CSQ: 1,2"),
        ],
    ),
    "stray_ok_and_call_end": (
        [b"\r\nOK\r\nNO CARRIER\r\n"],
        [ModemProtocolError("stray_result", "OK"), urc(UrcKind.NO_CARRIER, "NO CARRIER")],
    ),
    "dial_no_answer": (
        [Send(Command("ATD+4799;")), b"\r\nNO ANSWER\r\n"],
        [done(Command("ATD+4799;"), error=ErrorCode(ErrorKind.NO_ANSWER))],
    ),
    "unknown_line_idle": (
        [b"+XYZ: 1\r\nhello\r\n"],
        [urc(UrcKind.OTHER, "+XYZ: 1", "1"), urc(UrcKind.OTHER, "hello")],
    ),
    "plain_answer_of_command_without_prefix": (
        [Send(Command("AT+CGSN")), b"\r\n356938035643809\r\n\r\nOK\r\n"],
        [done(Command("AT+CGSN"), "356938035643809")],
    ),
    "garbage": (
        [Send(AT), b"\xff\xfe\x00\x80\r\n\x1b\x1a\r\nOK\r\n"],
        [done(AT, "\xff\xfe\x00\x80", "\x1b")],
    ),
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", list(DIALOGUES))
def test_dialogue(name: str, bytewise: bool) -> None:
    steps, expected = DIALOGUES[name]
    events, _ = run(steps, bytewise=bytewise)
    assert events == expected


def test_written_bytes() -> None:
    _, written = run(DIALOGUES["cmgs_prompt_flow"][0], bytewise=False)
    assert written == b"AT+CMGS=23\r" + SUBMIT.encode() + b"\x1a"
    _, written = run(DIALOGUES["cmgs_cancel"][0], bytewise=False)
    assert written == b"AT+CMGS=23\r\x1b"


def test_one_command_in_flight() -> None:
    d = AtDialogue()
    d.send(CSQ)
    assert d.in_flight == CSQ and d.state is State.RESPONSE
    with pytest.raises(AtUsageError, match="one at a time"):
        d.send(AT)
    d.receive_data(b"OK\r\n")
    assert drain(d) == [done(CSQ)]
    assert d.in_flight is None and d.state is State.IDLE
    d.send(AT)  # free again


def test_data_needs_a_prompt() -> None:
    d = AtDialogue()
    with pytest.raises(AtUsageError):
        d.send_data(SUBMIT)
    d.send(CMGS)
    assert d.state is State.PROMPT
    with pytest.raises(AtUsageError):
        d.send_cancel()
    d.receive_data(b"> ")
    assert drain(d) == [PromptForData(CMGS)]
    with pytest.raises(AtUsageError):
        d.send_data("00\x1a")  # a Ctrl-Z inside the data would end it early


@pytest.mark.parametrize("text", ["", "+CSQ", "AT\r", "AT+CMGS=1\x1a", "ATÆ"])
def test_bad_commands(text: str) -> None:
    with pytest.raises(AtUsageError):
        Command(text)


def test_abandon() -> None:
    d = AtDialogue()
    d.send(CSQ)
    assert d.abandon() == CSQ
    assert d.in_flight is None
    d.receive_data(b"+CSQ: 1,1\r\nOK\r\n")  # the late answer is reported, not misfiled
    assert drain(d) == [
        urc(UrcKind.OTHER, "+CSQ: 1,1", "1", "1"),
        ModemProtocolError("stray_result", "OK"),
    ]


def test_startup_sequence() -> None:
    texts = [c.text for c in STARTUP]
    assert texts == [
        "AT", "ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CREG?", "AT+CSQ", "AT+CMGF=0",
        "AT+CNMI=2,1,0,0,0", "AT+CLIP=1",
    ]  # fmt: skip
    assert all(c.purpose for c in STARTUP)
    assert [c.response_prefix for c in STARTUP if c.response_prefix] == [
        "+CPIN:", "+CREG:", "+CSQ:"
    ]  # fmt: skip


def test_response_prefixes() -> None:
    assert Command("at+cmgl=4").response_prefix == "+CMGL:"
    assert Command("AT+CMGR=3").response_prefix == "+CMGR:"
    assert Command("AT+CMGS=20").response_prefix == "+CMGS:"
    assert Command("AT+CMGS=20").expects_prompt
    assert Command("AT+CPIN=1234").response_prefix is None  # entering the PIN answers OK only
    assert not CSQ.expects_prompt


# --- parsers -----------------------------------------------------------------------------------


def test_parsers() -> None:
    assert parse_csq(["+CSQ: 18,99"]) == (18, 99)
    assert [rssi_dbm(r) for r in (0, 1, 18, 31, 99)] == [-113, -111, -77, -51, None]
    assert parse_creg("+CREG: 0,1") == (0, 1)
    assert parse_creg('+CREG: 2,5,"00C3","1A2B"') == (2, 5)
    assert parse_creg("+CREG: 5") == (None, 5)
    assert parse_creg('+CREG: 1,"00C3","1A2B"') == (None, 1)
    assert is_registered(1) and is_registered(5) and not is_registered(2)
    assert parse_cpin(["+CPIN: READY"]) == "READY"
    assert parse_cpin(["+CPIN: SIM PIN"]) == "SIM PIN"
    assert parse_clip(split_fields('"+4791234567",145,"",0')) == "+4791234567"
    assert parse_cmti(split_fields('"SM",3')) == ("SM", 3)
    assert parse_cmgr(["+CMGR: 0,,38", PDU]) == (0, PDU)
    assert parse_cmgs(["+CMGS: 12"]) == 12


def test_cmgl_pdus_decode() -> None:
    steps, _ = DIALOGUES["cmti_between_cmgl_entries"]
    events, _ = run(steps, bytewise=False)
    last = events[-1]
    assert isinstance(last, CommandDone)
    entries = parse_cmgl(last.lines)
    assert [(i, s) for i, s, _ in entries] == [(1, 1), (2, 0)]
    assert all(decode_deliver(pdu).text == "How are you?" for _, _, pdu in entries)


def test_split_fields() -> None:
    assert split_fields(' "a,b" , 1,,"" ') == ("a,b", "1", "", "")
    assert split_fields("") == ()
    assert split_fields("1") == ("1",)


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (parse_csq, ["+CSQ: x,1"]),
        (parse_csq, ["OK"]),
        (parse_csq, ["+CSQ: 1"]),
        (parse_creg, "+CSQ: 1,1"),
        (parse_creg, "+CREG:"),
        (parse_cpin, ["+CPIN: "]),
        (parse_clip, ()),
        (parse_cmti, ("SM",)),
        (parse_cmgl, ["+CMGL: 1,1,,38"]),
        (parse_cmgl, [PDU]),
        (parse_cmgr, ["+CMGR: 0,,38"]),
        (parse_cmgs, ["+CMGS: "]),
    ],
)
def test_parsers_reject(call: object, arg: object) -> None:
    with pytest.raises(AtParseError):
        call(arg)  # type: ignore[operator]


# --- fuzzing -------------------------------------------------------------------------------------

TOKENS = [
    b"\r", b"\n", b"\r\n", b"OK", b"ERROR", b"+CME ERROR: ", b"+CMS ERROR: 500", b"RING",
    b"+CLIP: ", b'"+47", 145', b"+CMTI: \"SM\",3", b"+CDS: 25", b"+CMT: ,23", b"+CREG: ",
    b"0,1", b"1", b"+CSQ: 18,99", b"+CMGL: 1,1,,38", b"+CMGR: 0,,38", b"> ", b">", b" ",
    b"+CPIN: READY", b"AT+CSQ", b"\x1a", b"\x1b", b"\xff", b"\x00", PDU.encode(), b"+CMGS: 1",
    b"NO CARRIER",
]  # fmt: skip
modem_bytes = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=6), max_size=40).map(b"".join)
commands = st.sampled_from([None, AT, CSQ, CMGL, CREG_Q, CPIN_Q, CMGS, Command("AT+CGSN")])


def play(command: Command | None, chunks: Sequence[bytes], max_line: int) -> list[Event]:
    d = AtDialogue(max_line)
    if command is not None:
        d.send(command)
    events: list[Event] = []
    for chunk in chunks:
        d.receive_data(chunk)
        events += drain(d)
    return events


@settings(max_examples=300, deadline=None)
@given(command=commands, data=modem_bytes, cuts=st.lists(st.integers(0, 400)), small=st.booleans())
def test_any_bytes_any_split(
    command: Command | None, data: bytes, cuts: list[int], small: bool
) -> None:
    max_line = 24 if small else 4096  # small: the overflow path gets exercised too
    bounds = sorted({c for c in cuts if c < len(data)} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    whole = play(command, [data], max_line)
    assert all(
        isinstance(e, CommandDone | Unsolicited | PromptForData | ModemProtocolError) for e in whole
    )
    assert play(command, chunks, max_line) == whole
    assert play(command, [data[i : i + 1] for i in range(len(data))], max_line) == whole


actions = st.lists(
    st.one_of(
        modem_bytes,
        st.tuples(st.just("send"), commands),
        st.sampled_from(["data", "cancel", "abandon"]),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(script=actions)
def test_api_misuse_raises_only_usage_errors(script: list[object]) -> None:
    """Whatever the caller and the modem do, only AtUsageError escapes, and the state holds."""
    d = AtDialogue(32)
    for action in script:
        try:
            if isinstance(action, bytes):
                d.receive_data(action)
                for event in drain(d):
                    if isinstance(event, CommandDone):
                        assert d.in_flight is None or d.in_flight is not event.command
                    if isinstance(event, PromptForData):
                        assert event.command.expects_prompt
            elif action == "data":
                assert d.send_data(SUBMIT).endswith(b"\x1a")
            elif action == "cancel":
                assert d.send_cancel() == b"\x1b"
            elif action == "abandon":
                d.abandon()
            else:
                assert isinstance(action, tuple)
                command = action[1]
                if command is not None:
                    assert d.send(command) == command.text.encode() + b"\r"
        except AtUsageError:
            pass
        assert (d.in_flight is None) == (d.state is State.IDLE)

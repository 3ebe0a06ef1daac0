"""AT command dialogue with a GSM modem (3GPP TS 27.007 / 27.005), as a state machine. Pure.

Theory of operation
-------------------
The modem transport (issue 8) owns the serial port, the clock and the timeouts. It writes
what ``AtDialogue.send`` returns, feeds every read into ``receive_data`` and drains
``next_event`` until ``NEED_DATA``. Nothing here reads a clock, touches a port or imports
asyncio; the transport starts its own timer when it writes a command, reads
``in_flight`` to know which command it is waiting for, and calls ``abandon`` when it gives
up on one (a modem that stopped answering is re-opened, not waited for).

The modem speaks in lines (CR LF; a bare CR or LF is tolerated, so each of them ends a
line and blank lines are dropped). Each line is one of:

* the echo of the command we sent (until ``ATE0`` takes effect): dropped;
* a final result (``OK``, ``ERROR``, ``+CME ERROR: n``, ``+CMS ERROR: n``, ``NO CARRIER``,
  ``BUSY``, ``NO ANSWER``, ``NO DIALTONE``): ends the command in flight, ``CommandDone``;
* an unsolicited result code (``URC_PREFIXES``): ``Unsolicited``, at any moment, also in
  the middle of a command's response, and never mixed into that command's lines;
* an information line of the command in flight: collected into ``CommandDone.lines``.

Lines whose prefix is both a URC and a command's answer (``+CREG:``, ``+CPIN:``,
``+CLIP:``) go to the command only while that command is in flight, and for ``+CREG:``
/``+CLIP:`` only in the solicited form (the field layouts differ). A header line that
announces a data line (``+CMGL:``/``+CMGR:`` for a command, ``+CMT:``/``+CDS:`` for a URC)
takes the next line whatever it looks like (it may be a text-mode SMS body reading
``RING``), unless that line is a final result.

``AT+CMGS`` is the one dialogue that is not line based: the modem prompts ``"> "`` with
no line end, we emit ``PromptForData``, and the caller answers with ``send_data`` (the
PDU and Ctrl-Z) or ``send_cancel`` (ESC). The prompt is recognised only at the start of a
line while such a command waits for it, so it cannot be confused with other output.

Errors: what the modem sends never raises. A line longer than ``MAX_LINE_BYTES`` or a
final result with no command in flight becomes a ``ModemProtocolError`` *event*, and the
dialogue carries on (a modem's garbage after a brown-out must not stop alarm intake).
Misuse of the API (a second command while one is in flight, data without a prompt, a
command with a control character) raises ``AtUsageError``. The answer parsers
(``parse_csq`` ...) raise ``AtParseError`` for answers they cannot read.

Bytes are decoded as Latin-1: lossless, so a transport can log exactly what came.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_LINE_BYTES = 4096  # a +CMGL data line is at most ~350 characters; anything longer is junk

CTRL_Z = b"\x1a"  # ends the PDU after the prompt (TS 27.005 3.5.1)
ESC = b"\x1b"  # cancels the message after the prompt


# --- errors -------------------------------------------------------------------------------------


class AtUsageError(ValueError):
    """We misused the API: a second command in flight, data without a prompt, a bad command."""


class AtParseError(ValueError):
    """An answer handed to one of the ``parse_*`` helpers is not in the expected form."""


# --- commands -----------------------------------------------------------------------------------

# Command text (upper case, longest match first) -> the prefix of its information lines.
# A line with this prefix while the command is in flight belongs to the command, even if
# the same prefix is also an unsolicited result code.
RESPONSE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("AT+CSQ", "+CSQ:"),
    ("AT+CMGL", "+CMGL:"),
    ("AT+CMGR=", "+CMGR:"),
    ("AT+CPIN?", "+CPIN:"),
    ("AT+CREG?", "+CREG:"),
    ("AT+CGREG?", "+CGREG:"),
    ("AT+CMGS=", "+CMGS:"),
    ("AT+CMGW", "+CMGW:"),
    ("AT+CLIP?", "+CLIP:"),
    ("AT+CNMI?", "+CNMI:"),
    ("AT+CMGF?", "+CMGF:"),
    ("AT+COPS?", "+COPS:"),
    ("AT+CPMS", "+CPMS:"),
    ("AT+CUSD=", "+CUSD:"),
)

# Commands after which the modem prompts "> " for the message body.
PROMPT_COMMANDS: tuple[str, ...] = ("AT+CMGS=", "AT+CMGW=")

# Information lines followed by exactly one data line (the PDU, or the text in text mode).
_COMMAND_HEADERS_WITH_DATA = frozenset({"+CMGL:", "+CMGR:"})


@dataclass(frozen=True, slots=True)
class Command:
    """One AT command line, without its CR; ``purpose`` is documentation only."""

    text: str
    purpose: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.text[:2].upper() != "AT":
            raise AtUsageError(f"an AT command starts with AT: {self.text!r}")
        if not all(" " <= c <= "~" for c in self.text):
            raise AtUsageError(f"an AT command is printable ASCII: {self.text!r}")

    @property
    def response_prefix(self) -> str | None:
        """The prefix of this command's information lines, from ``RESPONSE_PREFIXES``."""
        upper = self.text.upper()
        for head, prefix in RESPONSE_PREFIXES:
            if upper.startswith(head):
                return prefix
        return None

    @property
    def expects_prompt(self) -> bool:
        upper = self.text.upper()
        return any(upper.startswith(head) for head in PROMPT_COMMANDS)


# The start-up sequence, in order (PROTOCOLS.md section 4). The transport repeats ``AT``
# until it gets OK (a modem that just booted may miss the first bytes).
STARTUP: tuple[Command, ...] = (
    Command("AT", "is anybody there; also lets the modem detect the baud rate"),
    Command("ATE0", "echo off, so responses hold only answers (the echo is dropped anyway)"),
    Command("AT+CMEE=1", "numeric +CME ERROR codes instead of a bare ERROR"),
    Command("AT+CPIN?", "SIM state: READY, or SIM PIN/PUK to handle (a technical alarm)"),
    Command("AT+CREG?", "network registration: 1 home or 5 roaming is registered"),
    Command("AT+CSQ", "signal quality, exported as a metric"),
    Command("AT+CMGF=0", "PDU mode: alarmd.protocols.sms reads and writes the PDUs"),
    Command("AT+CNMI=2,1,0,0,0", "announce each new SMS as +CMTI (stored, read, then deleted)"),
    Command("AT+CLIP=1", "caller id (+CLIP after RING) for ring alarms"),
)


# --- events -------------------------------------------------------------------------------------


class ErrorKind(enum.StrEnum):
    ERROR = "ERROR"
    CME = "+CME ERROR"  # mobile equipment error (TS 27.007 9.2)
    CMS = "+CMS ERROR"  # message service error (TS 27.005 3.2.5)
    NO_CARRIER = "NO CARRIER"
    BUSY = "BUSY"
    NO_ANSWER = "NO ANSWER"
    NO_DIALTONE = "NO DIALTONE"


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """Why a command failed: the kind, and the number or text after ``+CME/+CMS ERROR:``."""

    kind: ErrorKind
    code: int | None = None  # numeric form (AT+CMEE=1)
    text: str | None = None  # verbose form (AT+CMEE=2), or a number we could not read


@dataclass(frozen=True, slots=True)
class CommandDone:
    """The command in flight got its final result; ``lines`` are its information lines."""

    command: Command
    ok: bool
    lines: tuple[str, ...]
    error: ErrorCode | None


class UrcKind(enum.StrEnum):
    RING = "RING"
    CRING = "+CRING"
    CLIP = "+CLIP"
    CMTI = "+CMTI"
    CMT = "+CMT"
    CDS = "+CDS"
    CDSI = "+CDSI"
    CREG = "+CREG"
    CGREG = "+CGREG"
    CUSD = "+CUSD"
    CPIN = "+CPIN"
    CFUN = "+CFUN"
    SYSSTART = "^SYSSTART"
    RDY = "RDY"
    CALL_READY = "Call Ready"
    SMS_READY = "SMS Ready"
    POWER_DOWN = "NORMAL POWER DOWN"
    NO_CARRIER = "NO CARRIER"  # a call ended with no command in flight
    BUSY = "BUSY"
    NO_ANSWER = "NO ANSWER"
    OTHER = "OTHER"  # a line nobody asked for and we do not know: kept for the log


@dataclass(frozen=True, slots=True)
class Unsolicited:
    """An unsolicited result code. ``fields`` are the comma-separated values after the
    colon, unquoted; ``data`` is the line that follows ``+CMT:``/``+CDS:`` (the PDU)."""

    kind: UrcKind
    fields: tuple[str, ...]
    line: str
    data: str | None = None


@dataclass(frozen=True, slots=True)
class PromptForData:
    """The modem prompted ``"> "``: call ``send_data`` (or ``send_cancel``) now."""

    command: Command


@dataclass(frozen=True, slots=True)
class ModemProtocolError:
    """The modem sent something we cannot place; ``reason`` is a metric-safe label."""

    reason: str
    detail: str = ""


Event = CommandDone | Unsolicited | PromptForData | ModemProtocolError


class NeedData(enum.Enum):
    """``next_event`` has nothing more until more bytes arrive (h11's ``NEED_DATA``)."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


class State(enum.Enum):
    IDLE = "idle"  # no command in flight
    RESPONSE = "response"  # waiting for the final result
    PROMPT = "prompt"  # AT+CMGS sent, waiting for "> "
    DATA = "data"  # prompted: the caller must send_data or send_cancel
    SENT = "sent"  # data (or ESC) sent, waiting for +CMGS and the final result


# --- line classification tables -----------------------------------------------------------------

# Unsolicited result codes: a line equal to one of these, or starting with one followed by
# ":", is a URC (unless the command in flight claims the prefix, see the module docstring).
_URC_EXACT: dict[str, UrcKind] = {
    "RING": UrcKind.RING,
    "^SYSSTART": UrcKind.SYSSTART,
    "RDY": UrcKind.RDY,
    "CALL READY": UrcKind.CALL_READY,
    "SMS READY": UrcKind.SMS_READY,
    "NORMAL POWER DOWN": UrcKind.POWER_DOWN,
}
URC_PREFIXES: dict[str, UrcKind] = {
    "+CRING:": UrcKind.CRING,
    "+CLIP:": UrcKind.CLIP,
    "+CMTI:": UrcKind.CMTI,
    "+CMT:": UrcKind.CMT,
    "+CDS:": UrcKind.CDS,
    "+CDSI:": UrcKind.CDSI,
    "+CREG:": UrcKind.CREG,
    "+CGREG:": UrcKind.CGREG,
    "+CUSD:": UrcKind.CUSD,
    "+CPIN:": UrcKind.CPIN,
    "+CFUN:": UrcKind.CFUN,
}
_URC_WITH_DATA = frozenset({UrcKind.CMT, UrcKind.CDS})

_FINAL_PLAIN: dict[str, ErrorKind | None] = {
    "OK": None,
    "ERROR": ErrorKind.ERROR,
    "NO CARRIER": ErrorKind.NO_CARRIER,
    "BUSY": ErrorKind.BUSY,
    "NO ANSWER": ErrorKind.NO_ANSWER,
    "NO DIALTONE": ErrorKind.NO_DIALTONE,
}
# final results that, with no command in flight, report the end of a call
_CALL_ENDS: dict[str, UrcKind] = {
    "NO CARRIER": UrcKind.NO_CARRIER,
    "BUSY": UrcKind.BUSY,
    "NO ANSWER": UrcKind.NO_ANSWER,
}

_LINE_END = re.compile(rb"[\r\n]")


def split_fields(text: str) -> tuple[str, ...]:
    """Comma-separated values, quotes removed; a comma inside quotes does not split."""
    if not text.strip():
        return ()
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    out.append("".join(current).strip())
    return tuple(out)


def _prefix_of(line: str) -> str | None:
    """``"+CSQ:"`` for ``"+CSQ: 18,99"``; None for a line without a ``+X:``/``^X:`` head."""
    if line[:1] not in ("+", "^"):
        return None
    colon = line.find(":")
    return line[: colon + 1].upper() if colon > 0 else None


def _final_result(line: str) -> tuple[bool, ErrorCode | None]:
    """(is a final result, its error: None for OK)."""
    upper = line.upper()
    if upper in _FINAL_PLAIN:
        kind = _FINAL_PLAIN[upper]
        return True, None if kind is None else ErrorCode(kind)
    for kind in (ErrorKind.CME, ErrorKind.CMS):
        if upper.startswith(kind.value + ":"):
            rest = line[len(kind.value) + 1 :].strip()
            if rest.isdigit() and len(rest) <= 6:
                return True, ErrorCode(kind, code=int(rest))
            return True, ErrorCode(kind, text=rest)
    return False, None


def _solicited_form(prefix: str, rest: str) -> bool:
    """True if a ``+CREG:``/``+CLIP:`` line has the layout of the answer, not of the URC.

    ``+CREG: <n>,<stat>[,<lac>,<ci>...]`` answers ``AT+CREG?``; the URC is
    ``+CREG: <stat>[,<lac>,<ci>...]`` (its second field, if any, is the quoted LAC).
    ``+CLIP: <n>,<m>`` answers ``AT+CLIP?``; the URC starts with the quoted number.
    """
    raw = [part.strip() for part in rest.split(",")]
    if prefix in ("+CREG:", "+CGREG:"):
        return len(raw) >= 2 and not raw[1].startswith('"')
    if prefix == "+CLIP:":
        return not rest.strip().startswith('"')
    return True


# --- the dialogue -------------------------------------------------------------------------------


class AtDialogue:
    """One modem's AT dialogue: commands out, events in. One command in flight at a time."""

    __slots__ = (
        "_buf",
        "_data_echo",
        "_discarding",
        "_events",
        "_in_flight",
        "_lines",
        "_max_line",
        "_pending_command_data",
        "_pending_urc",
        "_state",
    )

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._max_line = max_line_bytes
        self._events: deque[Event] = deque()
        self._state = State.IDLE
        self._in_flight: Command | None = None
        self._lines: list[str] = []
        self._discarding = False  # inside an over-long line: drop up to its end
        self._pending_command_data = False  # the next line is a +CMGL/+CMGR data line
        self._pending_urc: Unsolicited | None = None  # a +CMT/+CDS waiting for its data line
        self._data_echo: str | None = None  # the data we sent, to drop its echo

    # -- what the transport needs to know

    @property
    def state(self) -> State:
        return self._state

    @property
    def in_flight(self) -> Command | None:
        """The command waiting for its final result (the transport times it)."""
        return self._in_flight

    # -- sending

    def send(self, command: Command) -> bytes:
        """The bytes to write for ``command``; it is in flight until its ``CommandDone``."""
        if self._in_flight is not None:
            raise AtUsageError(
                f"{command.text!r} while {self._in_flight.text!r} is in flight: one at a time"
            )
        self._in_flight = command
        self._lines = []
        self._pending_command_data = False
        self._data_echo = None
        self._state = State.PROMPT if command.expects_prompt else State.RESPONSE
        return command.text.encode("ascii") + b"\r"

    def send_data(self, data: str) -> bytes:
        """The message body (PDU hex) and Ctrl-Z, to write after ``PromptForData``."""
        if self._state is not State.DATA:
            raise AtUsageError(f"send_data without a prompt (state {self._state.value})")
        if not all(" " <= c <= "~" for c in data):
            raise AtUsageError("message data is printable ASCII (PDU hex, or GSM text)")
        self._state = State.SENT
        self._data_echo = data
        return data.encode("ascii") + CTRL_Z

    def send_cancel(self) -> bytes:
        """ESC, to write after ``PromptForData`` instead of the data: the modem drops the
        message and (on most modems) answers OK; the transport's timeout covers the rest."""
        if self._state is not State.DATA:
            raise AtUsageError(f"send_cancel without a prompt (state {self._state.value})")
        self._state = State.SENT
        return ESC

    def abandon(self) -> Command | None:
        """Forget the command in flight (its timeout expired); returns it.

        A late final result for it then shows up as a ``ModemProtocolError``
        ("stray_result"), which is why a transport usually re-opens the modem instead.
        """
        command = self._in_flight
        self._finish()
        return command

    # -- receiving

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the port, in any split; ``next_event`` parses them lazily."""
        self._buf += data

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA``. Never raises for what the modem sent."""
        while not self._events:
            if not self._step():
                return NEED_DATA
        return self._events.popleft()

    def _finish(self) -> None:
        self._in_flight = None
        self._lines = []
        self._state = State.IDLE
        self._pending_command_data = False
        self._data_echo = None

    def _step(self) -> bool:
        """Consume at most one line (or the prompt) from the buffer; False if none is whole."""
        buf = self._buf
        if not buf:
            return False
        if self._discarding:
            m = _LINE_END.search(buf)
            if m is None:
                buf.clear()
                return False
            del buf[: m.end()]
            self._discarding = False
            return True
        if self._state is State.PROMPT and buf[:1] == b">":
            del buf[:1]  # the space after it is stripped with the next line
            self._state = State.DATA
            assert self._in_flight is not None
            self._events.append(PromptForData(self._in_flight))
            return True
        m = _LINE_END.search(buf, 0, self._max_line + 1)
        if m is None:
            if len(buf) > self._max_line:
                self._overflow()
                del buf[: self._max_line + 1]  # and the rest of the line, as it comes
                self._discarding = True
                return True
            return False
        raw = bytes(buf[: m.start()])
        del buf[: m.end()]
        self._line(raw.decode("latin-1"))
        return True

    def _overflow(self) -> None:
        if self._pending_urc is not None:
            self._events.append(self._pending_urc)
            self._pending_urc = None
        self._pending_command_data = False
        self._events.append(
            ModemProtocolError("line_too_long", f"more than {self._max_line} bytes without CR/LF")
        )

    def _line(self, raw: str) -> None:
        line = raw.strip(" \t\x00\x1a")
        if not line:
            return
        command = self._in_flight
        if command is not None and (
            line == command.text or (self._data_echo is not None and line == self._data_echo)
        ):
            return  # echo (ATE1); ATE0 stops it
        is_final, error = _final_result(line)
        if self._pending_urc is not None:
            urc, self._pending_urc = self._pending_urc, None
            if not is_final:
                self._events.append(Unsolicited(urc.kind, urc.fields, urc.line, line))
                return
            self._events.append(urc)  # no data line came: report what we have
        if is_final:
            self._final(line, error)
            return
        if self._pending_command_data:
            self._pending_command_data = False
            self._lines.append(line)
            return
        prefix = _prefix_of(line)
        if command is not None:
            expected = command.response_prefix
            if prefix is not None and prefix == expected:
                if prefix not in URC_PREFIXES or _solicited_form(prefix, line[len(prefix) :]):
                    self._lines.append(line)
                    self._pending_command_data = prefix in _COMMAND_HEADERS_WITH_DATA
                    return
            elif not self._is_urc(line, prefix) and (prefix is None or expected is None):
                # a command without a known prefix (ATI, AT+CGSN) answers in plain lines
                self._lines.append(line)
                return
        self._unsolicited(line, prefix)

    @staticmethod
    def _is_urc(line: str, prefix: str | None) -> bool:
        return line.upper() in _URC_EXACT or (prefix is not None and prefix in URC_PREFIXES)

    def _unsolicited(self, line: str, prefix: str | None) -> None:
        upper = line.upper()
        if upper in _URC_EXACT:
            self._events.append(Unsolicited(_URC_EXACT[upper], (), line))
            return
        if prefix is not None:
            kind = URC_PREFIXES.get(prefix, UrcKind.OTHER)
            urc = Unsolicited(kind, split_fields(line[len(prefix) :]), line)
            if kind in _URC_WITH_DATA:
                self._pending_urc = urc
            else:
                self._events.append(urc)
            return
        self._events.append(Unsolicited(UrcKind.OTHER, (), line))

    def _final(self, line: str, result: ErrorCode | None) -> None:
        command = self._in_flight
        if command is None:
            upper = line.upper()
            if upper in _CALL_ENDS:
                self._events.append(Unsolicited(_CALL_ENDS[upper], (), line))
            else:
                self._events.append(ModemProtocolError("stray_result", line))
            return
        lines = tuple(self._lines)
        self._finish()
        self._events.append(CommandDone(command, result is None, lines, result))


# --- answer parsers -----------------------------------------------------------------------------


def _info_line(lines: Sequence[str], prefix: str) -> str:
    for line in lines:
        if line.upper().startswith(prefix):
            return line[len(prefix) :]
    raise AtParseError(f"no {prefix} line in {list(lines)!r}")


def _int(value: str, what: str) -> int:
    value = value.strip()
    if not value.isdigit() or len(value) > 9:
        raise AtParseError(f"{what} is not a number: {value!r}")
    return int(value)


def parse_csq(lines: Sequence[str]) -> tuple[int, int]:
    """``+CSQ: <rssi>,<ber>`` -> (rssi 0..31 or 99, ber 0..7 or 99); see ``rssi_dbm``."""
    fields = split_fields(_info_line(lines, "+CSQ:"))
    if len(fields) != 2:
        raise AtParseError(f"+CSQ wants two fields: {fields!r}")
    return _int(fields[0], "rssi"), _int(fields[1], "ber")


def rssi_dbm(rssi: int) -> int | None:
    """TS 27.007 8.5: 0 is -113 dBm or less, 31 is -51 dBm or more, 99 (or junk) unknown."""
    if 0 <= rssi <= 31:
        return -113 + 2 * rssi
    return None


REGISTERED_STATS = frozenset({1, 5})  # 1 home network, 5 roaming


def parse_creg(line: str) -> tuple[int | None, int]:
    """``+CREG: <n>,<stat>[,...]`` (the answer) -> (n, stat); the URC ``+CREG: <stat>[,...]``
    -> (None, stat). ``stat in REGISTERED_STATS`` means registered."""
    text = line.strip()
    if not text.upper().startswith(("+CREG:", "+CGREG:")):
        raise AtParseError(f"not a +CREG line: {line!r}")
    prefix = text[: text.find(":") + 1].upper()
    rest = text[len(prefix) :]
    fields = split_fields(rest)
    if not fields:
        raise AtParseError(f"empty +CREG: {line!r}")
    if len(fields) >= 2 and _solicited_form(prefix, rest):
        return _int(fields[0], "n"), _int(fields[1], "stat")
    return None, _int(fields[0], "stat")


def is_registered(stat: int) -> bool:
    return stat in REGISTERED_STATS


def parse_cpin(lines: Sequence[str]) -> str:
    """``+CPIN: READY`` -> ``"READY"`` (or ``"SIM PIN"``, ``"SIM PUK"``, ...)."""
    value = _info_line(lines, "+CPIN:").strip().strip('"')
    if not value:
        raise AtParseError("empty +CPIN")
    return value


def parse_clip(fields: Sequence[str]) -> str:
    """The caller's number from a ``+CLIP`` URC's fields (empty if withheld)."""
    if not fields:
        raise AtParseError("+CLIP without fields")
    return fields[0]


def parse_cmti(fields: Sequence[str]) -> tuple[str, int]:
    """``+CMTI: "SM",3`` fields -> (storage, index): read it with ``AT+CMGR=<index>``."""
    if len(fields) < 2:
        raise AtParseError(f"+CMTI wants storage and index: {fields!r}")
    return fields[0], _int(fields[1], "index")


def parse_cmgl(lines: Sequence[str]) -> list[tuple[int, int, str]]:
    """``+CMGL: <index>,<stat>,[<alpha>],<length>`` + PDU line pairs -> (index, stat, pdu).

    PDU mode stat: 0 received unread, 1 received read, 2 stored unsent, 3 stored sent.
    """
    out: list[tuple[int, int, str]] = []
    it = iter(lines)
    for line in it:
        if not line.upper().startswith("+CMGL:"):
            raise AtParseError(f"expected a +CMGL header: {line!r}")
        fields = split_fields(line[6:])
        if len(fields) < 2:
            raise AtParseError(f"short +CMGL header: {line!r}")
        pdu = next(it, None)
        if pdu is None:
            raise AtParseError(f"+CMGL header without its PDU line: {line!r}")
        out.append((_int(fields[0], "index"), _int(fields[1], "stat"), pdu))
    return out


def parse_cmgr(lines: Sequence[str]) -> tuple[int, str]:
    """``+CMGR: <stat>,[<alpha>],<length>`` + PDU line -> (stat, pdu)."""
    if len(lines) != 2 or not lines[0].upper().startswith("+CMGR:"):
        raise AtParseError(f"expected a +CMGR header and a PDU line: {list(lines)!r}")
    fields = split_fields(lines[0][6:])
    if not fields:
        raise AtParseError(f"empty +CMGR header: {lines[0]!r}")
    return _int(fields[0], "stat"), lines[1]


def parse_cmgs(lines: Sequence[str]) -> int:
    """``+CMGS: <mr>`` -> the message reference (matches a later status report)."""
    fields = split_fields(_info_line(lines, "+CMGS:"))
    if not fields:
        raise AtParseError("empty +CMGS")
    return _int(fields[0], "mr")

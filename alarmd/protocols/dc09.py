"""SIA DC-09 codec: frames in, events and the reply to send out. Pure.

Theory of operation
-------------------
A transport owns the socket. For a stream it feeds every read into a ``Dc09Framer``
and gets complete frames back (LF ... CR, checked against the length field, so frames
merged in one read or split across reads come out whole). For a datagram the whole
datagram is one frame. Each frame goes to ``handle_frame(frame, now=..., ...)``, which
returns a ``Dc09Result``: the events the frame carries and the reply bytes.

The reply is *not* sent by this module, and the caller must respect ``reply_kind``:
an ACK for a frame with events may be sent only after intake committed the events
(DESIGN.md invariant 1). NAK and DUH carry no events and go out at once.

Nothing here reads a clock, touches a socket or imports asyncio; randomness for the
encrypted reply's pad comes through the ``randbytes`` argument.

Layers, bottom up (PROTOCOLS.md section 1):

* ``crc16_arc`` and the envelope (``LF CRC 0LLL "token"seq Rr Ll #acct [``): checked
  before anything else; a frame that fails here gets a NAK, since we cannot trust any
  field of it.
* the block: clear (``data]`` + xdata + timestamp) or encrypted (hex AES-CBC of
  ``pad|data]xdata_timestamp``); account policy (no clear text for keyed accounts).
* events: Contact ID or SIA DC-03 data mapped through the tables in ``contact_id`` and
  ``sia_codes``; unknown codes become flagged alarms, never dropped.
* replies: ``ACK``/``*ACK`` echo the header; ``NAK`` carries our time; ``DUH`` says
  "understood, not processed".

The same functions encode frames (``encode_message``) and read replies (``parse_reply``),
for the transmitter simulator and for round-trip tests.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from alarmd.model import Condition, Event, EventKind, Flag, Priority
from alarmd.protocols import contact_id, sia_codes

MAX_FRAME_BYTES = 2048


class ReplyKind(enum.StrEnum):
    ACK = "ACK"  # send after the commit of ``events`` (at once if there are none)
    NAK = "NAK"  # send at once; carries our time so the transmitter can re-sync
    DUH = "DUH"  # send at once; understood but not processed
    NONE = "NONE"  # send nothing


class KeyFormat(enum.StrEnum):
    ASCII = "ascii"
    HEX = "hex"


class StalePolicy(enum.StrEnum):
    """What to do with a clear-text frame whose timestamp is outside the window."""

    ACCEPT_AND_FLAG = "accept_and_flag"  # default: a possible emergency is never discarded
    NAK = "nak"


def _no_zones() -> Mapping[int, EventKind]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Dc09Account:
    """What the codec needs to know of one transmitter account."""

    account: str  # uppercase hex, as the transmitter sends it
    # AES key, 16/24/32 bytes, already decoded from its format; never shown in a repr
    key: bytes | None = field(default=None, repr=False)
    zone_kinds: Mapping[int, EventKind] = field(default_factory=_no_zones)  # zone -> alarm kind


@dataclass(frozen=True, slots=True)
class TimestampPolicy:
    """The DC-09 timestamp window (PROTOCOLS.md 1.5), configurable."""

    ahead: timedelta = timedelta(seconds=20)
    behind: timedelta = timedelta(seconds=40)
    stale_clear_text: StalePolicy = StalePolicy.ACCEPT_AND_FLAG


AccountLookup = Callable[[str], Dc09Account | None]


@dataclass(frozen=True, slots=True)
class Dc09Message:
    """One parsed (and, if it was encrypted, decrypted) transmitter message."""

    token: str  # "SIA-DCS", "ADM-CID", "NULL" (without the "*")
    encrypted: bool
    seq: str  # the 4 digits as received; echoed in the reply
    receiver: str | None  # hex after "R", None if absent
    line: str  # hex after "L"
    account: str  # hex after "#", uppercase
    data: str  # content of the data block without brackets, decrypted, pad stripped
    xdata: tuple[tuple[str, str], ...]  # (letter, value) per [Xvalue] block
    timestamp: datetime | None  # UTC


@dataclass(frozen=True, slots=True)
class Dc09Result:
    """What ``handle_frame`` decided about one frame."""

    reply_kind: ReplyKind
    reply: bytes  # the complete reply frame (LF ... CR), empty for NONE
    events: tuple[Event, ...] = ()
    message: Dc09Message | None = None
    account: str | None = None  # known as soon as the clear header parsed
    reason: str | None = None  # why a NAK/DUH/NONE: for the log line and the metric label

    @property
    def is_link_test(self) -> bool:
        return self.message is not None and self.message.token == _NULL


class Dc09Error(Exception):
    """The peer sent something we cannot take; ``reason`` is a short metric-safe label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Dc09Reply:
    """A receiver's reply as a transmitter reads it (``parse_reply``)."""

    kind: str  # "ACK", "NAK", "DUH" or "RSP" (without the "*")
    encrypted: bool
    seq: str
    account: str | None  # None for a NAK, which carries no account
    timestamp: datetime | None  # the receiver's clock, UTC (a NAK always has it)
    receiver: str | None = None
    line: str = ""
    data: str = ""  # an RSP's data; empty for the others


# --- building the frozen results without their __init__ -----------------------------------

# A frozen dataclass's __init__ sets each field through object.__setattr__, which costs
# about as much as the rest of decoding a frame. These build the same objects by calling
# the slot descriptors directly. They are used only while the classes have exactly these
# fields and no __post_init__ (checked here, once); otherwise the ordinary __init__ runs.
_SlotSetter = Callable[[object, object], None]


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[_SlotSetter, ...] | None:
    if tuple(f.name for f in dataclasses.fields(cls)) != names:
        return None
    if hasattr(cls, "__post_init__") or not hasattr(cls, "__slots__"):
        return None
    setters = []
    for name in names:
        descriptor = cls.__dict__.get(name)
        if descriptor is None or type(descriptor).__name__ != "member_descriptor":
            return None
        setters.append(descriptor.__set__)
    return tuple(setters)


_EVENT_SETTERS = _slot_setters(
    Event,
    (
        "protocol", "source", "kind", "condition", "priority", "received_at", "dedup_key",
        "raw", "code", "zone", "partition", "occurred_at", "text", "flags", "attributes",
    ),
)  # fmt: skip
_MESSAGE_SETTERS = _slot_setters(
    Dc09Message,
    ("token", "encrypted", "seq", "receiver", "line", "account", "data", "xdata", "timestamp"),
)
_RESULT_SETTERS = _slot_setters(
    Dc09Result, ("reply_kind", "reply", "events", "message", "account", "reason")
)
_object_new = object.__new__


def _new_event(
    source: str,
    kind: EventKind,
    condition: Condition,
    priority: Priority,
    received_at: datetime,
    dedup_key: str,
    raw: bytes,
    code: str,
    zone: str | None,
    partition: str | None,
    occurred_at: datetime | None,
    text: str | None,
    flags: frozenset[Flag],
    attributes: Mapping[str, str],
) -> Event:
    """``Event(protocol="dc09", ...)`` with every field given, in declaration order."""
    setters = _EVENT_SETTERS
    if setters is None:  # pragma: no cover - only if model.Event changed shape
        return Event(
            protocol="dc09",
            source=source,
            kind=kind,
            condition=condition,
            priority=priority,
            received_at=received_at,
            dedup_key=dedup_key,
            raw=raw,
            code=code,
            zone=zone,
            partition=partition,
            occurred_at=occurred_at,
            text=text,
            flags=flags,
            attributes=attributes,
        )
    event: Event = _object_new(Event)
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14 = setters
    s0(event, "dc09")
    s1(event, source)
    s2(event, kind)
    s3(event, condition)
    s4(event, priority)
    s5(event, received_at)
    s6(event, dedup_key)
    s7(event, raw)
    s8(event, code)
    s9(event, zone)
    s10(event, partition)
    s11(event, occurred_at)
    s12(event, text)
    s13(event, flags)
    s14(event, attributes)
    return event


def _new_message(
    token: str,
    encrypted: bool,
    seq: str,
    receiver: str | None,
    line: str,
    account: str,
    data: str,
    xdata: tuple[tuple[str, str], ...],
    timestamp: datetime | None,
) -> Dc09Message:
    """``Dc09Message(...)`` with every field given, in declaration order."""
    setters = _MESSAGE_SETTERS
    if setters is None:  # pragma: no cover - only if Dc09Message changed shape
        return Dc09Message(token, encrypted, seq, receiver, line, account, data, xdata, timestamp)
    message: Dc09Message = _object_new(Dc09Message)
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = setters
    s0(message, token)
    s1(message, encrypted)
    s2(message, seq)
    s3(message, receiver)
    s4(message, line)
    s5(message, account)
    s6(message, data)
    s7(message, xdata)
    s8(message, timestamp)
    return message


def _new_result(
    reply_kind: ReplyKind,
    reply: bytes,
    events: tuple[Event, ...],
    message: Dc09Message | None,
    account: str | None,
    reason: str | None,
) -> Dc09Result:
    """``Dc09Result(...)`` with every field given, in declaration order."""
    setters = _RESULT_SETTERS
    if setters is None:  # pragma: no cover - only if Dc09Result changed shape
        return Dc09Result(reply_kind, reply, events, message, account, reason)
    result: Dc09Result = _object_new(Dc09Result)
    s0, s1, s2, s3, s4, s5 = setters
    s0(result, reply_kind)
    s1(result, reply)
    s2(result, events)
    s3(result, message)
    s4(result, account)
    s5(result, reason)
    return result


# --- reasons and what they are answered with ----------------------------------------------

# The envelope failed: we cannot trust any field, so the reply echoes nothing. A NAK makes
# the transmitter re-send at once, faster than waiting for its ACK timeout (PROTOCOLS.md
# 1.6 leaves CRC failure open; we choose NAK), and it carries our time.
_NAK_REASONS = frozenset({"crc", "length", "format", "timestamp", "timestamp_missing"})
# Understood but refused: the transmitter should not expect a different answer by
# re-sending the same bytes.
_DUH_REASONS = frozenset(
    {
        "unknown_account_encrypted",
        "no_key",
        "decrypt",
        "clear_text_for_keyed_account",
        "unsupported_token",
        "unsupported_data",
    }
)
# "garbage" (no DC-09 header at all) is answered with nothing: a NAK to whatever sent
# random bytes would make us a reflector, and a real transmitter always sends a header.

_NULL = "NULL"
_ADM_CID = "ADM-CID"
_MESSAGE_TOKENS = frozenset({"SIA-DCS", _ADM_CID, _NULL})
_REPLY_TOKENS = frozenset({"ACK", "NAK", "DUH", "RSP"})

# --- CRC-16/ARC ---------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def _crc_table16(t: tuple[int, ...]) -> list[int]:
    """The CRC after two bytes, by the little-endian 16-bit word they make.

    CRC-16 is 16 bits wide, so two bytes XORed into the register replace it entirely:
    ``crc = table16[crc ^ word]``. 65,536 entries (about 2.3 MB as a list of ints, built
    in ~10 ms) halve the interpreted loop, which runs over every frame and every reply.
    """
    table = [0] * 65536
    for first in range(256):
        c1 = t[first]
        low, high = c1 & 0xFF, c1 >> 8
        for second in range(256):
            table[first | (second << 8)] = high ^ t[low ^ second]
    return table


_CRC_TABLE16 = _crc_table16(_CRC_TABLE)
_Unpacker = Callable[[bytes | bytearray | memoryview, int], tuple[int, ...]]
_WORDS: dict[int, _Unpacker] = {}  # n -> reads n little-endian 16-bit words at an offset
_WORDS_CACHED = MAX_FRAME_BYTES  # up to twice the largest frame


def _words(n: int) -> _Unpacker:
    unpack: _Unpacker = struct.Struct(f"<{n}H").unpack_from
    if n <= _WORDS_CACHED:
        _WORDS[n] = unpack
    return unpack


def crc16_arc(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/ARC (reflected 0x8005, init 0, no final xor), the DC-09 frame CRC.

    Table-driven, two bytes a step: it runs once per frame on the receive path. Note that
    several public DC-09 parsers use CRC-16/CCITT by mistake; ``crc16_arc(b"123456789") ==
    0xBB3D``.
    """
    if isinstance(data, memoryview) and (data.format != "B" or not data.c_contiguous):
        crc = 0  # pragma: no cover - exotic views: byte by byte, as they iterate
        table = _CRC_TABLE  # pragma: no cover
        for byte in data:  # pragma: no cover
            crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
        return crc  # pragma: no cover
    return _crc_at(0, data, 0, len(data))


def _crc_at(crc: int, buf: bytes | bytearray | memoryview, start: int, stop: int) -> int:
    """The CRC register after ``buf[start:stop]``, from ``crc`` (what came before)."""
    n = stop - start
    half = n >> 1
    table16 = _CRC_TABLE16
    for word in (_WORDS.get(half) or _words(half))(buf, start):
        crc = table16[crc ^ word]
    if n & 1:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ buf[stop - 1]) & 0xFF]
    return crc


# --- timestamps and keys ------------------------------------------------------------------

_TIMESTAMP_RE = re.compile(r"(\d\d):(\d\d):(\d\d),(\d\d)-(\d\d)-(\d{4})", re.ASCII)
_TIMESTAMP_LEN = 19  # HH:MM:SS,MM-DD-YYYY


def _utc(dt: datetime) -> datetime:
    """Aware UTC; a naive value is taken to be UTC already (as DC-09 times are)."""
    if dt.tzinfo is UTC:
        return dt
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def format_timestamp(dt: datetime) -> str:
    """``HH:MM:SS,MM-DD-YYYY`` in UTC (without the leading ``_``), seconds truncated."""
    t = _utc(dt)
    return f"{t.hour:02d}:{t.minute:02d}:{t.second:02d},{t.month:02d}-{t.day:02d}-{t.year:04d}"


def _parse_timestamp(text: str) -> datetime:
    m = _TIMESTAMP_RE.fullmatch(text)
    if m is None:
        raise Dc09Error("format", f"bad timestamp {text!r}")
    hh, mi, ss, mo, dd, yy = (int(g) for g in m.groups())
    try:
        return datetime(yy, mo, dd, hh, mi, ss, tzinfo=UTC)
    except ValueError as exc:
        raise Dc09Error("format", f"bad timestamp {text!r}") from exc


_KEY_SIZES = (16, 24, 32)


def decode_key(text: str, fmt: KeyFormat) -> bytes:
    """An AES key from its configured text form; ValueError if it is not 128/192/256 bits.

    The format must be explicit: a 32-character key is 16 bytes as hex or 32 as ASCII
    (PROTOCOLS.md 1.4), and guessing would silently make every frame undecryptable.
    """
    if fmt is KeyFormat.ASCII:
        try:
            key = text.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ValueError("DC-09 key in ascii format must be plain ASCII characters") from exc
    elif fmt is KeyFormat.HEX:
        compact = "".join(text.split())
        try:
            key = bytes.fromhex(compact)
        except ValueError as exc:
            raise ValueError("DC-09 key in hex format must be hex digits (0-9, A-F)") from exc
    else:  # pragma: no cover - StrEnum exhausts the cases
        raise ValueError(f"unknown key format {fmt!r}")
    if len(key) not in _KEY_SIZES:
        raise ValueError(
            f"DC-09 key must be 16, 24 or 32 bytes (AES-128/192/256); "
            f"got {len(key)} bytes from {fmt.value} text of {len(text)} characters"
        )
    return key


# --- AES-CBC, zero IV, no padding ---------------------------------------------------------

_ZERO_IV = bytes(16)
_PAD_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Pad bytes are alphanumeric: never "|", "[" or "]", and harmless to devices that decode
# the plaintext as text. An alphanumeric random byte is kept as it is, any other byte is
# folded into the alphabet, so a test can choose the pad exactly.
_PAD_MAP = bytes(b if b in _PAD_ALPHABET else _PAD_ALPHABET[b % 62] for b in range(256))


def _aes(key: bytes) -> Cipher[modes.CBC]:
    if len(key) not in _KEY_SIZES:
        raise Dc09Error("decrypt", f"configured key has {len(key)} bytes, not 16/24/32")
    return Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV))


def _encrypt(key: bytes, plaintext: bytes) -> bytes:
    enc = _aes(key).encryptor()
    return enc.update(plaintext) + enc.finalize()


def _decrypt(key: bytes, ciphertext: bytes) -> bytes:
    dec = _aes(key).decryptor()
    return dec.update(ciphertext) + dec.finalize()


def _pad(randbytes: Callable[[int], bytes], plaintext_len: int) -> bytes:
    """1-16 pad bytes making the plaintext a multiple of 16 (16 if it already is)."""
    n = 16 - plaintext_len % 16
    raw = randbytes(n)
    if len(raw) != n:
        raise ValueError(f"randbytes({n}) returned {len(raw)} bytes")
    return raw.translate(_PAD_MAP)


# --- frame boundaries (shared by the framer and the parser) -------------------------------

_LF = 0x0A
_CR = 0x0D
_TRIVIAL = b"\x00\r\n \t"  # between frames: NUL padding, CRLF; never reported as garbage
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_ZERO = frozenset(b"0")
_QUOTE = frozenset(b'"')
# What follows the LF, by offset 1, 2, ...: 4 hex CRC + "0LLL" + '"' ...
_HEX_CRC_HEADER: tuple[frozenset[int] | None, ...] = (
    _HEX, _HEX, _HEX, _HEX, _ZERO, _HEX, _HEX, _HEX, _QUOTE,
)  # fmt: skip
# ... or 2 raw CRC bytes (any value, even LF or CR) + "0LLL" + '"'.
_BIN_CRC_HEADER: tuple[frozenset[int] | None, ...] = (None, None, _ZERO, _HEX, _HEX, _HEX, _QUOTE)


_COMMON_HEADER_RE = re.compile(rb'\n[0-9A-Fa-f]{4}0[0-9A-Fa-f]{3}"')  # the usual hex-CRC case


def _match(buf: bytes | bytearray, lf: int, pattern: tuple[frozenset[int] | None, ...]) -> int:
    """1 if ``pattern`` follows the LF at ``lf``, -1 if it cannot, 0 if more bytes are needed."""
    n = len(buf)
    i = lf
    for allowed in pattern:
        i += 1
        if i >= n:
            return 0
        if allowed is not None and buf[i] not in allowed:
            return -1
    return 1


def _header_at(buf: bytes | bytearray, lf: int) -> int:
    """Offset of the opening quote if a DC-09 header starts at the LF at ``lf``.

    0: not decided yet (more bytes needed); -1: not a header. The two layouts exclude each
    other (a full match of one puts a quote where the other needs a hex digit), so the
    answer never depends on how the bytes were split into reads.
    """
    if _COMMON_HEADER_RE.match(buf, lf) is not None:  # the usual case, in one C call
        return lf + 9
    hex_crc = _match(buf, lf, _HEX_CRC_HEADER)  # not 1: the regex above is this pattern
    bin_crc = _match(buf, lf, _BIN_CRC_HEADER)
    if bin_crc == 1:
        return lf + 7
    if hex_crc < 0 and bin_crc < 0:
        return -1
    return 0


# --- envelope -----------------------------------------------------------------------------

_HEADER_RE = re.compile(
    r'"(\*?)([A-Za-z0-9-]{1,16})"(\d{4})'
    r"(?:R([0-9A-Fa-f]{1,6}))?"
    r"L([0-9A-Fa-f]{1,6})"
    r"(?:#([0-9A-Fa-f]{3,16}))?"
    r"\[",
    re.ASCII,
)


class _Envelope(NamedTuple):
    """The clear part of a frame, CRC and length checked (a tuple: built per frame)."""

    encrypted: bool
    token: str
    seq: str
    receiver: str | None
    line: str
    account_raw: str | None  # as received, echoed in replies
    account: str | None  # uppercase, for lookups and events
    rest: str  # everything after the opening "[" of the data block


def _decode_text(raw: bytes) -> str:
    """UTF-8 if it is, else Latin-1 (never fails; older panels send 8-bit text)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_FRAME_END = b"\x00\r\n"  # CR, CRLF, trailing NULs


def _find_header(frame: bytes) -> tuple[int, int]:
    """(LF offset, quote offset) of the header, after any leading separator bytes."""
    for i, byte in enumerate(frame):
        if byte == _LF:
            quote = _header_at(frame, i)
            if quote > 0:
                return i, quote
        if byte not in _TRIVIAL:
            break
    raise Dc09Error("garbage", "no DC-09 header: " + frame[:32].hex())


def _open_envelope(frame: bytes) -> _Envelope:
    """Find the header, check length and CRC, read the clear header fields."""
    if _COMMON_HEADER_RE.match(frame):
        lf, quote = 0, 9
    else:
        lf, quote = _find_header(frame)
    end = len(frame.rstrip(_FRAME_END))  # stops at the quote at the latest
    body = frame[quote:end]
    declared = int(frame[quote - 4 : quote], 16)
    if declared != len(body):
        raise Dc09Error("length", f"length field {declared}, body has {len(body)} bytes")
    crc = crc16_arc(body)
    if quote - lf == 9:
        crc_ok = crc == int(frame[lf + 1 : lf + 5], 16)
    else:
        # 2 raw bytes; the byte order is not written down anywhere, so take either.
        hi, lo = frame[lf + 1], frame[lf + 2]
        crc_ok = crc in ((hi << 8) | lo, (lo << 8) | hi)
    if not crc_ok:
        raise Dc09Error("crc", f"computed {crc:04X}, frame says {frame[lf + 1 : quote - 4]!r}")
    text = _decode_text(body)
    m = _HEADER_RE.match(text)
    if m is None:
        raise Dc09Error("format", "bad header: " + text[:40])
    star, token, seq, receiver, line, account = m.groups()
    upper = account.upper() if account is not None else None
    return _Envelope(bool(star), token, seq, receiver, line, account, upper, text[m.end() :])


# --- blocks -------------------------------------------------------------------------------

_Block = tuple[str, tuple[tuple[str, str], ...], datetime | None]  # data, xdata, timestamp


def _parse_tail(text: str, pos: int) -> tuple[tuple[tuple[str, str], ...], datetime | None, int]:
    """xdata blocks ``[Xvalue]`` then an optional ``_timestamp``, from ``pos``."""
    xdata: list[tuple[str, str]] = []
    n = len(text)
    while pos < n and text[pos] == "[":
        close = text.find("]", pos + 1)
        if close < 0:
            raise Dc09Error("format", "xdata block not closed")
        block = text[pos + 1 : close]
        if block:
            xdata.append((block[0], block[1:]))
        pos = close + 1
    timestamp = None
    if pos < n and text[pos] == "_":
        timestamp = _parse_timestamp(text[pos + 1 : pos + 1 + _TIMESTAMP_LEN])
        pos += 1 + _TIMESTAMP_LEN
    return tuple(xdata), timestamp, pos


def _clear_block(rest: str) -> _Block:
    close = rest.find("]")
    if close < 0:
        raise Dc09Error("format", "data block not closed")
    data = rest[:close]
    if "[" in data:
        raise Dc09Error("format", "'[' inside the data block")
    xdata, timestamp, pos = _parse_tail(rest, close + 1)
    if pos != len(rest):
        raise Dc09Error("format", "unexpected bytes after the data: " + rest[pos : pos + 40])
    return data, xdata, timestamp


def _strip_pad(region: bytes, account: str) -> bytes:
    """The data from ``<pad>|<data>``, leniently (PROTOCOLS.md 1.4, field quirks).

    The pad never contains ``|``, so the first ``|`` ends it - unless the device left the
    separator out, in which case that ``|`` is the one inside ``#acct|...``: recognised
    when what precedes it ends in ``#<account>`` (or is zeros then the account).
    """
    bar = region.find(b"|")
    if bar < 0:  # no separator and no "acct|" either: the data starts at "#", or is empty
        start = region.find(b"#")
        return region[start:] if start >= 0 else b""
    after = region[bar + 1 :]
    acct = account.encode("ascii")
    if after[:1] in (b"#", b"") or after.upper().startswith(acct + b"|"):
        return after  # the usual "<pad>|#acct|..." (or an empty NULL)
    head = region[:bar].upper()
    if len(head) > len(acct) + 1 and head.endswith(b"#" + acct):
        return region[bar - len(acct) - 1 :]
    if len(head) > len(acct) and head.endswith(acct) and not head[: -len(acct)].strip(b"0"):
        return region[bar - len(acct) :]
    return after


_JUNK_AFTER_PLAINTEXT = b"\x00 \t\r\n"


def _encrypted_block(rest: str, key: bytes, account: str) -> _Block:
    """Decrypt ``rest`` (hex after ``[``) and split it into data, xdata, timestamp.

    A wrong key gives random bytes: they fail the structure checks below (a ``]``, text
    that is printable UTF-8, a well-formed tail), which is how "decrypt" is detected.
    """
    hex_text = rest[:-1] if rest.endswith("]") else rest  # tolerate a closing bracket
    if not hex_text or len(hex_text) % 32:
        raise Dc09Error("decrypt", f"ciphertext of {len(hex_text)} hex digits")
    try:
        ciphertext = bytes.fromhex(hex_text)
    except ValueError as exc:
        raise Dc09Error("decrypt", "ciphertext is not hex") from exc
    plain = _decrypt(key, ciphertext)
    close = plain.find(b"]")
    if close < 0:
        raise Dc09Error("decrypt", "no ']' in the plaintext (wrong key?)")
    try:
        data = _strip_pad(plain[:close], account).decode("utf-8")
        tail = plain[close + 1 :].rstrip(_JUNK_AFTER_PLAINTEXT).decode("ascii")
    except UnicodeDecodeError as exc:
        raise Dc09Error("decrypt", "plaintext is not text (wrong key?)") from exc
    if not data.isprintable() or not tail.isprintable():
        raise Dc09Error("decrypt", "plaintext is not printable (wrong key?)")
    try:
        xdata, timestamp, pos = _parse_tail(tail, 0)
    except Dc09Error as exc:
        raise Dc09Error("decrypt", f"plaintext tail: {exc.detail}") from exc
    if pos != len(tail):
        raise Dc09Error("decrypt", "unexpected plaintext after the timestamp")
    return data, xdata, timestamp


def _read_message(
    env: _Envelope, accounts: AccountLookup
) -> tuple[Dc09Message, Dc09Account | None]:
    """The message in ``env`` under the account policy; raises ``Dc09Error``."""
    if env.token not in _MESSAGE_TOKENS:
        raise Dc09Error("unsupported_token", env.token)
    if env.account is None:
        raise Dc09Error("format", "no #account in the header")
    account = accounts(env.account)
    if env.encrypted:
        if account is None:
            raise Dc09Error("unknown_account_encrypted", env.account)
        if account.key is None:
            raise Dc09Error("no_key", f"encrypted frame, no key configured for {env.account}")
        data, xdata, timestamp = _encrypted_block(env.rest, account.key, env.account)
        if timestamp is None:
            raise Dc09Error("timestamp_missing", "an encrypted frame must carry a timestamp")
    else:
        if account is not None and account.key is not None:
            # A receiver that accepts this is a downgrade hole (PROTOCOLS.md 1.4).
            raise Dc09Error("clear_text_for_keyed_account", env.account)
        data, xdata, timestamp = _clear_block(env.rest)
    message = _new_message(
        env.token,
        env.encrypted,
        env.seq,
        env.receiver,
        env.line,
        env.account,
        data,
        xdata,
        timestamp,
    )
    return message, account


def parse_frame(frame: bytes, accounts: AccountLookup) -> Dc09Message:
    """One frame (LF ... CR, trailing NUL/CRLF tolerated) as a message; raises ``Dc09Error``.

    Checks length and CRC, the account policy (encrypted needs a known key; a keyed
    account may not send clear text) and decrypts. It does not judge the timestamp
    against a clock: that is ``handle_frame``'s, which has ``now``.
    """
    return _read_message(_open_envelope(frame), accounts)[0]


# --- events -------------------------------------------------------------------------------

_CID_RE = re.compile(  # [#acct|]QEEE GG ZZZ; "#" and the blanks are optional in the field
    r"\s*(?:#?[0-9A-Fa-f]{3,16}\|)?"
    r"([0-9A-Fa-f])([0-9A-Fa-f]{3}) ?([0-9A-Fa-f]{2}) ?([0-9A-Fa-f]{3})\s*",
    re.ASCII,
)
_SIA_ACCOUNT_RE = re.compile(r"#?[0-9A-Fa-f]{3,16}", re.ASCII)
_SIA_MODIFIER_RE = re.compile(r"([a-z]{2})(\d{1,2}:\d{2}(?::\d{2})?|\d*)", re.ASCII)
_SIA_CODE_RE = re.compile(r"([A-Z]{2})(\d*)", re.ASCII)


class _Found(NamedTuple):
    """One event as the data block says it, before account and flags are applied."""

    code: str
    kind: EventKind
    condition: Condition
    known: bool
    zone: str | None = None
    partition: str | None = None
    text: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()


# What a data block means does not depend on who sent it or when, so the parse of the
# part after the account is remembered: most traffic repeats a few blocks (periodic tests,
# the same pendant). Bounded: emptied when full, so hostile variety costs only the parse.
_MEMO_MAX = 4096
_CID_MEMO: dict[str, tuple[_Found, ...]] = {}
_SIA_MEMO: dict[str, tuple[_Found, ...]] = {}  # block -> events, for blocks without text


def _number(text: str) -> str:
    """``"001"`` -> ``"1"``; a non-decimal value (CID allows B-F) is kept as written."""
    return str(int(text)) if text.isdigit() else text.upper()


def _cid_events(data: str) -> tuple[_Found, ...]:
    m = _CID_RE.fullmatch(data)
    if m is None:
        raise Dc09Error("unsupported_data", "not a Contact ID block: " + data[:40])
    memo_key = data[m.start(1) : m.end(4)]  # "QEEE GG ZZZ": the groups, and only them
    found = _CID_MEMO.get(memo_key)
    if found is not None:
        return found
    qualifier, code, group, zone = m.groups()
    row = contact_id.lookup(int(code)) if code.isdigit() else None
    condition = contact_id.QUALIFIERS.get(qualifier)
    known = row is not None and condition is not None
    found = (
        _Found(
            code=f"CID:{qualifier}{code.upper()}",
            kind=row.kind if row is not None else EventKind.OTHER_ALARM,
            # An unknown qualifier is reported as new: the safe reading of a maybe-alarm.
            condition=condition if condition is not None else Condition.ALARM,
            known=known,
            zone=_number(zone),
            partition=_number(group),
        ),
    )
    if len(_CID_MEMO) >= _MEMO_MAX:
        _CID_MEMO.clear()
    _CID_MEMO[memo_key] = found
    return found


def _sia_pieces(block: str) -> list[tuple[str, str, dict[str, str]]] | None:
    """``ri1/MA001/FA002`` -> [(code, unit, modifiers)...]; None if it does not parse.

    Modifiers (``ri``, ``id``, ``ti``, ``pi``...) hold for the events after them, with or
    without a ``/`` in between (``ti13:23:12MA1`` is a field quirk).
    """
    found: list[tuple[str, str, dict[str, str]]] = []
    modifiers: dict[str, str] = {}
    for piece in block.split("/"):
        pos, n = 0, len(piece)
        while pos < n:
            m = _SIA_MODIFIER_RE.match(piece, pos)
            if m is not None:
                modifiers[m.group(1)] = m.group(2)
                pos = m.end()
                continue
            m = _SIA_CODE_RE.match(piece, pos)
            if m is None:
                return None
            found.append((m.group(1), m.group(2), dict(modifiers)))
            pos = m.end()
    return found


def _sia_events(data: str) -> tuple[_Found, ...]:
    parts = data.split("|")
    # "#acct|" or "acct|" (field: no "#") first, unless that hex is an event before "|A<text>"
    if (
        len(parts) > 1
        and _SIA_ACCOUNT_RE.fullmatch(parts[0])
        and (parts[0].startswith("#") or not parts[1].startswith("A"))
    ):
        parts = parts[1:]
    block = parts[0].strip()
    # "|A<text>": everything after it is text, a "|" in it included
    text = None
    for i in range(1, len(parts)):
        if parts[i].startswith("A"):
            text = "|".join(parts[i:])[1:]
            break
    found = _SIA_MEMO.get(block) if text is None else None
    if found is not None:
        return found
    pieces = _sia_pieces(block[1:]) if block.startswith("N") else None
    if not pieces:  # no "N", or "N" was the first letter of a code ("NA01" = no activity)
        pieces = _sia_pieces(block)
    if not pieces:
        raise Dc09Error("unsupported_data", "no SIA event in: " + data[:40])
    events = []
    for code, unit, modifiers in pieces:
        row = sia_codes.lookup(code)
        area = modifiers.pop("ri", "")
        events.append(
            _Found(
                code=f"SIA:{code}",
                kind=row.kind if row is not None else EventKind.OTHER_ALARM,
                condition=row.condition if row is not None else Condition.ALARM,
                known=row is not None,
                zone=_number(unit) if unit else None,
                partition=_number(area) if area else None,
                text=text,
                attributes=tuple(modifiers.items()),
            )
        )
    found = tuple(events)
    if text is None:
        if len(_SIA_MEMO) >= _MEMO_MAX:
            _SIA_MEMO.clear()
        _SIA_MEMO[block] = found
    return found


_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})
# (unregistered, stale timestamp, unknown code) -> flags; shared, built once.
_FLAGS: Mapping[tuple[bool, bool, bool], frozenset[Flag]] = {
    (u, s, c): frozenset(
        flag
        for flag, on in ((Flag.UNREGISTERED, u), (Flag.STALE_TIMESTAMP, s), (Flag.UNKNOWN_CODE, c))
        if on
    )
    for u in (False, True)
    for s in (False, True)
    for c in (False, True)
}
# (unregistered, stale) -> (flags of a known code, flags of an unknown one)
_FLAG_PAIRS: Mapping[tuple[bool, bool], tuple[frozenset[Flag], frozenset[Flag]]] = {
    (u, s): (_FLAGS[u, s, False], _FLAGS[u, s, True]) for u in (False, True) for s in (False, True)
}
# The taxonomy's properties as plain dicts: a property call per event is measurable here.
_PRIORITY: Mapping[EventKind, Priority] = {kind: kind.default_priority for kind in EventKind}
_ALARM_KINDS = frozenset(kind for kind in EventKind if kind.category == "alarm")
_blake2b = hashlib.blake2b


def _events(
    message: Dc09Message,
    account: Dc09Account | None,
    frame: bytes,
    now: datetime,
    stale: bool,
) -> tuple[Event, ...]:
    token = message.token
    if token == _NULL:
        return ()  # a link test: any payload is ignored (PROTOCOLS.md 1.3)
    data = message.data
    found = _cid_events(data) if token == _ADM_CID else _sia_events(data)
    xdata = message.xdata
    # The key names the transmission, not the attempt: a re-send after a NAK or a lost ACK
    # has a new timestamp and pad but the same seq and content (DESIGN.md invariant 2).
    xdata_text = "".join(f"[{letter}{value}]" for letter, value in xdata) if xdata else ""
    keyed = f"{token}\x1f{data}\x1f{xdata_text}"
    try:
        keyed_bytes = keyed.encode()  # the same bytes, when there is no lone surrogate
    except UnicodeEncodeError:
        keyed_bytes = keyed.encode("utf-8", "surrogatepass")
    digest = _blake2b(keyed_bytes, digest_size=8).hexdigest()
    source = message.account
    key_prefix = f"dc09:{source}:{message.seq}:{digest}#"
    if account is None:
        zone_kinds = None
        flags_known, flags_unknown = _FLAG_PAIRS[True, stale]
    else:
        zone_kinds = account.zone_kinds
        flags_known, flags_unknown = _FLAG_PAIRS[False, stale]
    occurred_at = message.timestamp
    events = []
    for i, f in enumerate(found):
        code, kind, condition, known, zone, partition, text, f_attributes = f
        priority = _PRIORITY[kind]
        if zone_kinds and zone is not None and zone.isdigit() and kind in _ALARM_KINDS:
            kind = zone_kinds.get(int(zone), kind)
            priority = kind.default_priority
        if xdata or f_attributes:
            attributes: Mapping[str, str] = MappingProxyType(dict(xdata + f_attributes))
        else:
            attributes = _NO_ATTRIBUTES
        events.append(
            _new_event(
                source,
                kind,
                condition,
                priority,
                now,
                f"{key_prefix}{i}",
                frame,
                code,
                zone,
                partition,
                occurred_at,
                text,
                flags_known if known else flags_unknown,
                attributes,
            )
        )
    return tuple(events)


# --- encoding -----------------------------------------------------------------------------


def _wrap(body: bytes, binary_crc: bool = False) -> bytes:
    """LF + CRC + length + body + CR."""
    crc = crc16_arc(body)
    if binary_crc:
        return b"\n" + crc.to_bytes(2, "big") + b"%04X" % len(body) + body + b"\r"
    return b"\n%04X%04X%b\r" % (crc, len(body), body)


def _body(
    token: str,
    seq: str,
    account: str | None,
    data: str,
    *,
    receiver: str | None,
    line: str,
    xdata: Sequence[tuple[str, str]],
    timestamp: datetime | None,
    key: bytes | None,
    randbytes: Callable[[int], bytes],
) -> bytes:
    head = f'"{"*" if key is not None else ""}{token}"{seq}'
    if receiver is not None:
        head += f"R{receiver}"
    head += f"L{line}"
    if account is not None:
        head += f"#{account}"
    head += "["
    tail = "".join(f"[{letter}{value}]" for letter, value in xdata)
    if timestamp is not None:
        tail += "_" + format_timestamp(timestamp)
    if key is None:
        return f"{head}{data}]{tail}".encode()
    plain = f"|{data}]{tail}".encode()
    ciphertext = _encrypt(key, _pad(randbytes, len(plain)) + plain)
    return head.encode() + ciphertext.hex().upper().encode()


def encode_message(
    token: str,
    seq: int | str,
    account: str,
    data: str,
    *,
    receiver: str | None = None,
    line: str = "0",
    xdata: Sequence[tuple[str, str]] = (),
    timestamp: datetime | None = None,
    key: bytes | None = None,
    randbytes: Callable[[int], bytes] = os.urandom,
    binary_crc: bool = False,
) -> bytes:
    """A complete frame as a transmitter sends it (or, with a reply token, as we reply).

    With ``key`` the token gets its ``*`` and everything after ``[`` is encrypted with a
    random pad. A valid encrypted message needs a ``timestamp``; leaving it out is allowed
    so tests can build the invalid frame. ``binary_crc`` writes the CRC as 2 raw bytes
    (big-endian), as some panels do.
    """
    if isinstance(seq, int):
        if not 0 <= seq <= 9999:
            raise ValueError(f"DC-09 seq must be 0..9999, not {seq}")
        seq = f"{seq:04d}"
    elif not (len(seq) == 4 and seq.isdigit()):
        raise ValueError(f"DC-09 seq must be 4 decimal digits, not {seq!r}")
    body = _body(
        token,
        seq,
        account,
        data,
        receiver=receiver,
        line=line,
        xdata=xdata,
        timestamp=timestamp,
        key=key,
        randbytes=randbytes,
    )
    return _wrap(body, binary_crc)


def encode_nak(now: datetime) -> bytes:
    """Our NAK: never encrypted, echoes nothing, carries our clock for the re-sync."""
    return _wrap(f'"NAK"0000R0L0A0[]_{format_timestamp(now)}'.encode())


def parse_reply(frame: bytes, key: bytes | None = None) -> Dc09Reply:
    """A receiver's reply frame, for a transmitter; raises ``Dc09Error``.

    ``key`` is needed to read an encrypted reply (``*ACK``) and its timestamp.
    """
    env = _open_envelope(frame)
    if env.token not in _REPLY_TOKENS:
        raise Dc09Error("unsupported_token", env.token)
    if env.encrypted:
        if key is None:
            raise Dc09Error("decrypt", f"encrypted {env.token} but no key")
        data, _xdata, timestamp = _encrypted_block(env.rest, key, env.account or "")
    else:
        data, _xdata, timestamp = _clear_block(env.rest)
    return Dc09Reply(
        kind=env.token,
        encrypted=env.encrypted,
        seq=env.seq,
        account=env.account,
        timestamp=timestamp,
        receiver=env.receiver,
        line=env.line,
        data=data,
    )


# --- the receiver's decision --------------------------------------------------------------


def _echo(
    token: str,
    env: _Envelope,
    *,
    key: bytes | None = None,
    now: datetime | None = None,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """ACK/DUH echoing seq, receiver, line and account as received; ``*ACK`` if keyed."""
    body = _body(
        token,
        env.seq,
        env.account_raw,
        "",
        receiver=env.receiver,
        line=env.line,
        xdata=(),
        timestamp=now if key is not None else None,
        key=key,
        randbytes=randbytes,
    )
    return _wrap(body)


def _refuse(
    error: Dc09Error, env: _Envelope | None, now: datetime, message: Dc09Message | None = None
) -> Dc09Result:
    account = env.account if env is not None else None
    if error.reason in _DUH_REASONS and env is not None:
        # DUH in clear: we may hold no key for this account, and it carries no secret.
        return Dc09Result(
            ReplyKind.DUH, _echo("DUH", env), message=message, account=account, reason=error.reason
        )
    if error.reason in _NAK_REASONS:
        return Dc09Result(
            ReplyKind.NAK, encode_nak(now), message=message, account=account, reason=error.reason
        )
    return Dc09Result(ReplyKind.NONE, b"", account=account, reason=error.reason)


def handle_frame(
    frame: bytes,
    *,
    now: datetime,
    accounts: AccountLookup,
    policy: TimestampPolicy = TimestampPolicy(),  # frozen: safe as a default
    randbytes: Callable[[int], bytes] = os.urandom,
) -> Dc09Result:
    """Decide what one frame means and what to answer. Never raises.

    * no DC-09 header at all -> NONE (``garbage``);
    * length, CRC or header format wrong -> NAK with our time (we cannot trust the seq
      or account to echo them; the transmitter re-sends at once);
    * encrypted from an unknown account, or undecryptable -> DUH;
    * clear text from an account that has a key -> DUH (no downgrade);
    * encrypted with a timestamp missing or outside the window -> NAK, so the transmitter
      re-syncs its clock from ours;
    * clear text outside the window -> accepted and flagged ``STALE_TIMESTAMP`` (default),
      or NAK under ``StalePolicy.NAK``;
    * unknown token or data we cannot read -> DUH;
    * otherwise ACK (``*ACK`` for an encrypted message) with the events; a NULL link test
      has none. An unknown account in clear text is accepted, its events flagged
      ``UNREGISTERED``: an alarm is never dropped.
    """
    now = _utc(now)
    if type(frame) is bytes:
        text = frame.decode("latin-1")  # one char per byte: offsets are the same
        m = _CLEAR_FRAME_RE.fullmatch(text)
        if m is not None and int(m[2], 16) == len(frame) - 10:
            # The CRC in two steps, to have the register after the header for the ACK.
            token = m[3]
            start, end = m.span(4)
            after_header = _crc_at(_TOKEN_CRC[token], frame, start, end)
            if _crc_at(after_header, frame, end, len(frame) - 1) == int(m[1], 16):
                # The ACK body is '"ACK' + the same header + ']'. CRC-16 is linear, so its
                # register after the header differs from the frame's by a constant that
                # depends only on the two prefixes and the header's length.
                ack = after_header ^ _ACK_SHIFT[token][end - start]
                ack = (ack >> 8) ^ _CRC_TABLE[(ack ^ 0x5D) & 0xFF]  # "]"
                return _handle_clear(m, text, frame, ack, now, accounts, policy)
    return _handle_any(frame, now, accounts, policy, randbytes)


# The common frame, whole: LF, hex CRC, length, a clear message with an account, a data
# block of ASCII text, an optional timestamp, CR. Everything else (encrypted, xdata, a
# binary CRC, 8-bit text, separators around the frame, any error) takes the general path,
# which gives the same result for these frames (a property test holds them to it).
_CLEAR_FRAME_RE = re.compile(
    r"\n([0-9A-Fa-f]{4})0([0-9A-Fa-f]{3})"
    r'"(SIA-DCS|ADM-CID|NULL)'
    r'("(\d{4})(?:R([0-9A-Fa-f]{1,6}))?L([0-9A-Fa-f]{1,6})#([0-9A-Fa-f]{3,16})\[)'
    r"([^\[\]\x80-\xff]*)\]"
    r"(?:_(\d\d):(\d\d):(\d\d),(\d\d)-(\d\d)-(\d{4}))?"
    r"\r",
    re.ASCII,
)
_MAX_HEADER = 1 + 4 + 7 + 7 + 17 + 1  # '"seq' Rrrrrrr Lllllll #acct(16) '[', as above
_ACK_PREFIX = b'"ACK'
_TOKEN_CRC = {token: crc16_arc(b'"' + token.encode()) for token in (_ADM_CID, "SIA-DCS", _NULL)}
# [token][n]: the register after n zero bytes from the difference of the two prefixes.
_ACK_SHIFT = {
    token: tuple(
        _crc_at(crc ^ crc16_arc(_ACK_PREFIX), bytes(n), 0, n) for n in range(_MAX_HEADER + 1)
    )
    for token, crc in _TOKEN_CRC.items()
}


def _handle_clear(
    m: re.Match[str],
    text: str,
    frame: bytes,
    ack_crc: int,
    now: datetime,
    accounts: AccountLookup,
    policy: TimestampPolicy,
) -> Dc09Result:
    """``_handle_any`` for a frame ``_CLEAR_FRAME_RE`` matched, length and CRC checked."""
    token, seq, receiver, line, account_raw, data, hh = m.group(3, 5, 6, 7, 8, 9, 10)
    account_id = account_raw.upper()
    message: Dc09Message | None = None
    try:
        account = accounts(account_id)
        if account is not None and account.key is not None:
            # A receiver that accepts this is a downgrade hole (PROTOCOLS.md 1.4).
            raise Dc09Error("clear_text_for_keyed_account", account_id)
        timestamp = None
        stale = False
        if hh is not None:
            timestamp = _parse_timestamp(text[m.start(10) : m.end(15)])
        message = _new_message(token, False, seq, receiver, line, account_id, data, (), timestamp)
        if timestamp is not None:
            skew = timestamp - now
            if skew > policy.ahead or -skew > policy.behind:
                if policy.stale_clear_text is StalePolicy.NAK:
                    raise Dc09Error("timestamp", f"device time {skew.total_seconds():+.0f} s off")
                stale = True
        events = _events(message, account, frame, now, stale)
        # The ACK echoes the header as received: '"ACK' + '"seq[Rr]Ll#acct[' + ']'.
        start, end = m.span(4)
        reply = b'\n%04X%04X"ACK%b]\r' % (ack_crc, end - start + 5, frame[start:end])
        return _new_result(ReplyKind.ACK, reply, events, message, account_id, None)
    except Dc09Error as error:
        rest = text[m.end(4) : -1]
        env = _Envelope(False, token, seq, receiver, line, account_raw, account_id, rest)
        return _refuse(error, env, now, message)
    except Exception:  # a bug must not take the connection down; the device re-sends
        return Dc09Result(
            ReplyKind.NONE, b"", message=message, account=account_id, reason="internal_error"
        )


def _handle_any(
    frame: bytes,
    now: datetime,
    accounts: AccountLookup,
    policy: TimestampPolicy,
    randbytes: Callable[[int], bytes],
) -> Dc09Result:
    """``handle_frame`` for any frame (``now`` already UTC)."""
    env: _Envelope | None = None
    message: Dc09Message | None = None
    try:
        env = _open_envelope(frame)
        message, account = _read_message(env, accounts)
        stale = False
        if message.timestamp is not None:
            skew = message.timestamp - now
            if skew > policy.ahead or -skew > policy.behind:
                if message.encrypted or policy.stale_clear_text is StalePolicy.NAK:
                    raise Dc09Error("timestamp", f"device time {skew.total_seconds():+.0f} s off")
                stale = True
        events = _events(message, account, frame, now, stale)
        key = account.key if message.encrypted and account is not None else None
        reply = _echo("ACK", env, key=key, now=now, randbytes=randbytes)
        return _new_result(ReplyKind.ACK, reply, events, message, message.account, None)
    except Dc09Error as error:
        return _refuse(error, env, now, message)
    except Exception:  # a bug must not take the connection down; the device re-sends
        account_id = env.account if env is not None else None
        return Dc09Result(
            ReplyKind.NONE, b"", message=message, account=account_id, reason="internal_error"
        )


# --- framing a byte stream ----------------------------------------------------------------


class Dc09Framer:
    """Cuts a TCP byte stream into frames (LF ... CR); bounded, resynchronising.

    A frame starts at an LF followed by a header (4 hex CRC or 2 raw CRC bytes, then
    ``0LLL`` and ``"``): the header is recognised by where ``0LLL`` and the quote fall,
    because raw CRC bytes may be 0x0A or 0x0D. It ends at the first CR after the quote:
    the rest of a frame is ASCII (hex when encrypted), so no CR can occur inside it. The
    length field is then checked by ``handle_frame``; a frame whose length field is wrong
    still comes out (and gets a NAK) instead of stalling the stream waiting for bytes that
    will never come. An LF after the quote means the frame was cut short and a new one
    begins: the stub is reported as ``truncated`` and framing resumes at that LF.

    Between frames, NUL, CR, LF and blanks are skipped silently; anything else is
    reported once per run as ``garbage`` when the next LF arrives. More than
    ``max_frame_bytes`` without a CR gives ``frame_too_long``; the bytes are dropped up to
    the next LF. The output never depends on how the input was split into reads.
    """

    __slots__ = ("_buf", "_discarding", "_garbage", "_garbage_sample", "_max", "_scan_from")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes
        self._discarding = False  # dropping the tail of an over-long frame, up to an LF
        self._garbage = 0  # non-trivial bytes skipped since the last LF
        self._garbage_sample = bytearray()
        self._scan_from = 0  # where to resume looking for the CR in the buffered frame

    @property
    def pending(self) -> int:
        """Bytes buffered towards a frame not yet complete (0 if only separators remain)."""
        buf = self._buf
        if not buf or not buf.translate(None, _TRIVIAL):
            return 0
        return len(buf)

    def feed(self, data: bytes) -> list[bytes | Dc09Error]:
        """Add bytes from the stream; return the frames and errors they complete, in order."""
        # The usual read: exactly one whole frame (hex CRC, one CR, at its end), nothing
        # pending. The general loop below would return it as it is and keep nothing.
        n = len(data)
        if (
            not self._buf
            and n <= self._max
            and type(data) is bytes
            and not self._garbage
            and not self._discarding
            and not self._scan_from
            and _COMMON_HEADER_RE.match(data) is not None
            and data.find(b"\r", 10) == n - 1
            and data.find(b"\n", 10, n) < 0
        ):
            return [data]
        return self._feed(data)

    def _feed(self, data: bytes) -> list[bytes | Dc09Error]:
        buf = self._buf
        buf += data
        out: list[bytes | Dc09Error] = []
        while buf:
            if buf[0] != _LF:
                lf = buf.find(b"\n")
                stop = lf if lf >= 0 else len(buf)
                if not self._discarding:
                    self._note_garbage(buf, stop)
                if lf < 0:
                    buf.clear()
                    self._scan_from = 0
                    break
                del buf[:lf]
                self._scan_from = 0
            self._discarding = False  # an LF ends the tail of an over-long frame
            if self._garbage:
                out.append(Dc09Error("garbage", self._garbage_detail()))
            quote = _header_at(buf, 0)
            if quote == 0:
                break  # header not complete yet
            if quote < 0:
                del buf[:1]  # a stray LF (CRLF, or garbage): look for the next one
                continue
            start = max(quote + 1, self._scan_from)
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start, cr if cr >= 0 else len(buf))
            end = lf if lf >= 0 else cr
            if end < 0:
                if len(buf) > self._max:
                    out.append(self._too_long())
                    buf.clear()
                    self._scan_from = 0
                    self._discarding = True
                else:
                    self._scan_from = len(buf)
                break
            self._scan_from = 0
            if end + 1 > self._max:
                out.append(self._too_long())
                if end == lf:
                    del buf[:end]
                else:
                    del buf[: end + 1]
                    self._discarding = True
                continue
            if end == lf:
                out.append(Dc09Error("truncated", bytes(buf[: min(end, 64)]).hex()))
                del buf[:end]
                continue
            out.append(bytes(buf[: end + 1]))
            del buf[: end + 1]
        return out

    def _too_long(self) -> Dc09Error:
        # The same words however the bytes were split into reads.
        return Dc09Error("frame_too_long", f"more than {self._max} bytes without a CR")

    def _note_garbage(self, buf: bytearray, stop: int) -> None:
        junk = bytes(buf[:stop]).translate(None, _TRIVIAL)
        if junk:
            self._garbage += len(junk)
            room = 32 - len(self._garbage_sample)
            if room > 0:
                self._garbage_sample += junk[:room]

    def _garbage_detail(self) -> str:
        detail = f"{self._garbage} bytes: {self._garbage_sample.hex()}"
        self._garbage = 0
        self._garbage_sample.clear()
        return detail

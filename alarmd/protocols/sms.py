"""SMS PDU codec (3GPP TS 23.040 / 23.038, PDU mode of TS 27.005): hex in, messages out. Pure.

Theory of operation
-------------------
A GSM modem in PDU mode (``AT+CMGF=0``) hands over each stored SMS as a hex string
(``AT+CMGR``/``AT+CMGL``) and takes outgoing ones the same way (``AT+CMGS=<length>``).
This module turns those strings into frozen dataclasses and back; the AT dialogue, the
serial port and the outbox live elsewhere (issue 8), so nothing here reads a clock,
touches a port or imports asyncio. A received SMS's time is the SMSC timestamp (SCTS)
in the PDU; the reassembler gets ``now`` from its caller.

Layers, bottom up:

* the GSM 03.38 default alphabet and its extension table (``ESC`` + code), taken as data
  from the ``gsm0338`` package, with our own septet packing because a user data header
  (UDH) shifts the septets by fill bits, which no text codec knows about;
* addresses (semi-octet digits, or an alphanumeric sender packed as septets), the SCTS
  timestamp (semi-octets plus a signed quarter-hour zone) and the data coding scheme;
* ``decode_deliver`` for SMS-DELIVER (what an alarm unit or a carer's phone sends us) and
  ``encode_submit``/``decode_submit`` for SMS-SUBMIT (what we send, and its round trip);
* ``Reassembler``: concatenated parts, keyed by sender and reference, bounded, with
  ``expire`` returning partial texts so that an incomplete alarm is still shown.

Errors: a PDU we cannot read raises ``SmsError(reason)`` and nothing else, whatever the
input (the fuzz tests hold us to that). Misuse of the encoder (a number with letters, a
reference out of range) raises ``SmsUsageError``, a ``ValueError``. Where the standard
tells a receiver to be lenient (an unknown escape, a zero concatenation total, a reserved
coding group) we are lenient: an SMS may be an emergency, and showing a slightly odd text
beats dropping it.
"""

from __future__ import annotations

import enum
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

from gsm0338 import charset as _gsm0338_charset

# --- limits (TS 23.040 9.2.3.16 and 9.2.3.24) -----------------------------------------------------

MAX_SEPTETS = 160  # one SMS, GSM 7-bit: 140 octets * 8 / 7
MAX_SEPTETS_CONCAT = 153  # one part after a 6-octet UDH (7 septets with its fill bit)
MAX_UCS2_UNITS = 70  # one SMS, UCS-2: 140 octets / 2
MAX_UCS2_UNITS_CONCAT = 67  # (140 - 6) / 2
MAX_USER_DATA_OCTETS = 140
MAX_PARTS = 255  # the concatenation IE counts parts in one octet
MAX_PDU_OCTETS = 200  # a DELIVER is at most 12 (SMSC) + 164 octets; anything longer is junk
MAX_ADDRESS_DIGITS = 20

# --- GSM 03.38 default alphabet -------------------------------------------------------------------

ESC = 0x1B


def _names_to_table(names: Mapping[int, str]) -> dict[int, str]:
    return {code: unicodedata.lookup(name) for code, name in names.items()}


# The gsm0338 package holds the tables as Unicode character names; we only take the data.
# Its codec is not used: it treats ESC as an encodable character and fails on an unknown
# escape, where TS 23.038 says to show the default-table character instead.
_BASIC: dict[int, str] = _names_to_table(_gsm0338_charset.BASIC_CHARACTER_SET)
_BASIC[ESC] = " "  # 23.038: an ESC a receiver cannot interpret is shown as a space
GSM7_BASIC: Mapping[int, str] = MappingProxyType(_BASIC)
"""Default table: code (0-127) -> character. Holds Æ Ø Å æ ø å, so Norwegian is 7-bit."""

GSM7_EXTENSION: Mapping[int, str] = MappingProxyType(
    _names_to_table(_gsm0338_charset.BASIC_CHARACTER_SET_EXTENSION)
)
"""Extension table: code after ESC -> character (``^ { } \\ [ ~ ] | €`` and form feed)."""

_ENCODE: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        **{ch: (code,) for code, ch in _BASIC.items() if code != ESC},
        **{ch: (ESC, code) for code, ch in GSM7_EXTENSION.items()},
    }
)


def gsm7_encodable(text: str) -> bool:
    """True if every character of ``text`` is in the default or the extension table."""
    return all(ch in _ENCODE for ch in text)


def gsm7_septets(text: str) -> list[tuple[int, ...]]:
    """Septets per character (two for an extension character); ``KeyError`` if one is missing.

    Kept per character so that a splitter can never cut an escape sequence in two.
    """
    return [_ENCODE[ch] for ch in text]


def gsm7_septets_flat(text: str) -> list[int]:
    """All septets of ``text`` in order; its length is what counts against 160 / 153."""
    return [s for ch in text for s in _ENCODE[ch]]


def gsm7_decode(septets: Sequence[int]) -> str:
    """Septet values -> text, following 23.038 for escapes we do not know.

    An ESC before a code missing from the extension table shows that code's default
    character; a trailing ESC (possible in a part cut by a careless sender) shows a space.
    """
    out: list[str] = []
    i = 0
    n = len(septets)
    while i < n:
        s = septets[i] & 0x7F
        if s == ESC and i + 1 < n:
            nxt = septets[i + 1] & 0x7F
            out.append(GSM7_EXTENSION.get(nxt, _BASIC[nxt]))
            i += 2
        else:
            out.append(_BASIC[s])
            i += 1
    return "".join(out)


def pack_septets(septets: Sequence[int], fill_bits: int = 0) -> bytes:
    """Pack 7-bit values LSB first into octets, after ``fill_bits`` zero bits.

    The fill bits are what a UDH needs so the text starts on a septet boundary
    (TS 23.040 9.2.3.24): 1 bit after the usual 6-octet concatenation header.
    """
    bits = fill_bits + 7 * len(septets)
    acc = 0
    for i, s in enumerate(septets):
        acc |= (s & 0x7F) << (fill_bits + 7 * i)
    return acc.to_bytes((bits + 7) // 8, "little")


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """``count`` 7-bit values from ``data``, skipping ``fill_bits`` leading bits.

    Raises SmsError if ``data`` is too short for them.
    """
    if count < 0 or fill_bits + 7 * count > 8 * len(data):
        raise SmsError("user_data_truncated", f"{count} septets do not fit {len(data)} octets")
    acc = int.from_bytes(data, "little") >> fill_bits
    return [(acc >> (7 * i)) & 0x7F for i in range(count)]


# --- errors and types -----------------------------------------------------------------------------


class SmsError(Exception):
    """A PDU we cannot read; ``reason`` is a short metric-safe label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SmsUsageError(ValueError):
    """We misused the encoder (a malformed number, a reference out of range, a lone surrogate)."""


class AddressType(enum.StrEnum):
    INTERNATIONAL = "international"  # TON 1: digits after a '+'
    NATIONAL = "national"  # TON 2
    ALPHANUMERIC = "alphanumeric"  # TON 5: a sender name packed as GSM 7-bit
    UNKNOWN = "unknown"  # TON 0 and the rest: digits as the network gave them


class Encoding(enum.StrEnum):
    GSM7 = "gsm7"
    DATA8 = "8bit"
    UCS2 = "ucs2"


Concat = tuple[int, int, int]
"""(reference, total, sequence) from a concatenation IE, sequence counting from 1."""


@dataclass(frozen=True, slots=True)
class Deliver:
    """One received SMS-DELIVER.

    ``text`` is this part's text; ``payload`` the user data after the UDH as the
    reassembler needs it (septet values for GSM 7-bit, raw octets otherwise), so that a
    surrogate pair or escape split by the sender across parts still joins correctly.
    ``more_messages`` is TP-MMS read the right way round (the bit set means *no* more).
    For 8-bit data ``text`` is the octets as Latin-1: lossless and printable for an operator.
    """

    smsc: str | None
    sender: str
    sender_type: AddressType
    timestamp: datetime
    text: str
    encoding: Encoding
    concat: Concat | None
    pid: int = 0
    dcs: int = 0
    more_messages: bool = False
    status_report_indication: bool = False
    reply_path: bool = False
    udh: bytes = b""
    payload: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Submit:
    """One SMS-SUBMIT as decoded by ``decode_submit`` (round trips and tests)."""

    number: str
    number_type: AddressType
    message_reference: int
    text: str
    encoding: Encoding
    concat: Concat | None
    status_report_request: bool
    validity: timedelta | None
    udh: bytes = b""
    payload: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class SubmitPdu:
    """What ``AT+CMGS`` needs: the hex PDU and the TPDU length (octets after the SMSC part)."""

    pdu_hex: str
    tpdu_length: int


# --- reading --------------------------------------------------------------------------------------


class _Reader:
    """Octets with bounds checks that raise SmsError, never IndexError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def octet(self, what: str) -> int:
        if self._pos >= len(self._data):
            raise SmsError("truncated", f"no octet for {what}")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise SmsError("truncated", f"{n} octets for {what}")
        value = self._data[self._pos : self._pos + n]
        self._pos += n
        return value

    def rest(self) -> bytes:
        value = self._data[self._pos :]
        self._pos = len(self._data)
        return value


_BCD_DIGITS = "0123456789*#abc"


def _semi_octets(data: bytes, digits: int) -> str:
    """Swapped-nibble digits; an F filler ends the number, other non-digits map per 23.040."""
    out: list[str] = []
    for octet in data:
        for nibble in (octet & 0x0F, octet >> 4):
            if len(out) == digits or nibble == 0x0F:
                return "".join(out)
            out.append(_BCD_DIGITS[nibble])
    return "".join(out)


def _address_type(toa: int) -> AddressType:
    ton = (toa >> 4) & 0x07
    return {
        1: AddressType.INTERNATIONAL,
        2: AddressType.NATIONAL,
        5: AddressType.ALPHANUMERIC,
    }.get(ton, AddressType.UNKNOWN)


def _read_address(r: _Reader, what: str) -> tuple[str, AddressType]:
    """TP-OA / TP-DA: length in useful semi-octets, type of address, then the value."""
    length = r.octet(what)
    if length > MAX_ADDRESS_DIGITS:
        raise SmsError("address_too_long", f"{what}: {length} semi-octets")
    toa = r.octet(what)
    raw = r.take((length + 1) // 2, what)
    kind = _address_type(toa)
    if kind is AddressType.ALPHANUMERIC:
        return gsm7_decode(unpack_septets(raw, length * 4 // 7)), kind
    digits = _semi_octets(raw, length)
    return ("+" + digits if kind is AddressType.INTERNATIONAL else digits), kind


def _read_smsc(r: _Reader) -> str | None:
    """The SMSC part: its length counts octets including the type; 0 means none."""
    length = r.octet("smsc")
    if length == 0:
        return None
    if length > 12:
        raise SmsError("smsc_too_long", str(length))
    toa = r.octet("smsc")
    digits = _semi_octets(r.take(length - 1, "smsc"), 2 * (length - 1))
    return "+" + digits if _address_type(toa) is AddressType.INTERNATIONAL else digits


def _bcd(octet: int, what: str) -> int:
    lo, hi = octet & 0x0F, octet >> 4
    if lo > 9 or hi > 9:
        raise SmsError("bad_timestamp", f"{what} {octet:02X}")
    return lo * 10 + hi


def _read_scts(r: _Reader) -> datetime:
    """TP-SCTS: YY MM DD hh mm ss in swapped semi-octets, then a signed quarter-hour zone.

    The zone's sign is bit 3 of the raw octet (the top bit of the tens digit). Years are
    20YY: the field has two digits and no SMS predates 2000 in our service.
    """
    raw = r.take(7, "scts")
    year, month, day, hour, minute, second = (
        _bcd(o, w)
        for o, w in zip(raw[:6], ("year", "month", "day", "hour", "minute", "second"), strict=True)
    )
    tz = raw[6]
    quarters = (tz & 0x07) * 10 + (tz >> 4)
    if tz >> 4 > 9:
        raise SmsError("bad_timestamp", f"zone {tz:02X}")
    offset = timedelta(minutes=15 * quarters)
    if tz & 0x08:
        offset = -offset
    try:
        return datetime(2000 + year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError as exc:
        raise SmsError("bad_timestamp", str(exc)) from None


def _encoding_of(dcs: int) -> Encoding:
    """TS 23.038 section 4; message class and waiting indications do not matter to us."""
    group = dcs >> 4
    if group <= 0x07:  # general data coding (0x) and automatic deletion (4x-7x)
        if dcs & 0x20:
            raise SmsError("compressed", f"dcs {dcs:02X}")
        alphabet = (dcs >> 2) & 0x03
        return {1: Encoding.DATA8, 2: Encoding.UCS2}.get(alphabet, Encoding.GSM7)
    if group == 0x0E:  # message waiting, store, UCS-2
        return Encoding.UCS2
    if group == 0x0F:  # data coding / message class
        return Encoding.DATA8 if dcs & 0x04 else Encoding.GSM7
    return Encoding.GSM7  # message waiting groups and reserved groups: 23.038 says GSM 7-bit


def _parse_udh(udh: bytes) -> Concat | None:
    """Information elements of a UDH; only concatenation matters here.

    An IE running past the header is an error; a concatenation IE with a zero total or
    an out-of-range sequence is ignored, as 23.040 9.2.3.24.1 tells a receiver to.
    """
    concat: Concat | None = None
    i = 0
    while i < len(udh):
        if i + 2 > len(udh):
            raise SmsError("bad_udh", "IE header past the UDH")
        iei, ie_len = udh[i], udh[i + 1]
        data = udh[i + 2 : i + 2 + ie_len]
        if len(data) != ie_len:
            raise SmsError("bad_udh", f"IE {iei:02X} past the UDH")
        if iei == 0x00 and ie_len == 3:
            ref, total, seq = data[0], data[1], data[2]
        elif iei == 0x08 and ie_len == 4:
            ref, total, seq = (data[0] << 8) | data[1], data[2], data[3]
        else:
            i += 2 + ie_len
            continue
        concat = (ref, total, seq) if total >= 1 and 1 <= seq <= total else None
        i += 2 + ie_len
    return concat


def _payload_text(encoding: Encoding, payload: bytes) -> str:
    if encoding is Encoding.GSM7:
        return gsm7_decode(payload)
    if encoding is Encoding.UCS2:
        # 'replace': a lone surrogate (a pair split across parts) or an odd octet shows as
        # U+FFFD in this part's text; the reassembler decodes the joined payload instead.
        return payload.decode("utf-16-be", "replace")
    return payload.decode("latin-1")


@dataclass(frozen=True, slots=True)
class _UserData:
    udh: bytes
    concat: Concat | None
    payload: bytes
    text: str


def _read_user_data(r: _Reader, encoding: Encoding, has_udh: bool) -> _UserData:
    """TP-UDL and TP-UD. Octets after the announced length are ignored (some modems pad)."""
    udl = r.octet("udl")
    if encoding is Encoding.GSM7:
        if udl > MAX_SEPTETS:
            raise SmsError("user_data_too_long", f"{udl} septets")
        ud = r.take(math.ceil(udl * 7 / 8), "user data")
    else:
        if udl > MAX_USER_DATA_OCTETS:
            raise SmsError("user_data_too_long", f"{udl} octets")
        ud = r.take(udl, "user data")
    udh = b""
    concat: Concat | None = None
    header_octets = 0
    if has_udh:
        if not ud:
            raise SmsError("bad_udh", "UDHI set but no user data")
        header_octets = 1 + ud[0]
        if header_octets > len(ud):
            raise SmsError("bad_udh", f"UDHL {ud[0]} past the user data")
        udh = ud[1:header_octets]
        concat = _parse_udh(udh)
    if encoding is Encoding.GSM7:
        header_septets = math.ceil(header_octets * 8 / 7)
        if header_septets > udl:
            raise SmsError("bad_udh", "UDH longer than UDL")
        # The text starts at the first septet boundary after the header: fill bits skipped.
        payload = bytes(unpack_septets(ud, udl, 0)[header_septets:])
    else:
        payload = ud[header_octets:]
    return _UserData(udh, concat, payload, _payload_text(encoding, payload))


def _to_octets(pdu: str | bytes) -> bytes:
    if isinstance(pdu, str):
        try:
            data = bytes.fromhex(pdu.strip())
        except ValueError:
            raise SmsError("not_hex") from None
    else:
        data = bytes(pdu)
    if len(data) > MAX_PDU_OCTETS:
        raise SmsError("pdu_too_long", f"{len(data)} octets")
    return data


def decode_deliver(pdu: str | bytes) -> Deliver:
    """An SMS-DELIVER as the modem gives it: a hex string (``+CMGR``), or its raw octets.

    The PDU starts with the SMSC part, as ``AT+CMGR`` returns it in PDU mode.
    """
    r = _Reader(_to_octets(pdu))
    smsc = _read_smsc(r)
    first = r.octet("first octet")
    if first & 0x03 != 0x00:
        raise SmsError("not_deliver", f"MTI {first & 0x03}")
    sender, sender_type = _read_address(r, "originating address")
    pid = r.octet("pid")
    dcs = r.octet("dcs")
    encoding = _encoding_of(dcs)
    timestamp = _read_scts(r)
    ud = _read_user_data(r, encoding, bool(first & 0x40))
    return Deliver(
        smsc=smsc,
        sender=sender,
        sender_type=sender_type,
        timestamp=timestamp,
        text=ud.text,
        encoding=encoding,
        concat=ud.concat,
        pid=pid,
        dcs=dcs,
        more_messages=not first & 0x04,
        status_report_indication=bool(first & 0x20),
        reply_path=bool(first & 0x80),
        udh=ud.udh,
        payload=ud.payload,
    )


def _relative_validity(vp: int) -> timedelta:
    """TP-VP relative format, 23.040 9.2.3.12.1."""
    if vp <= 143:
        return timedelta(minutes=5 * (vp + 1))
    if vp <= 167:
        return timedelta(hours=12, minutes=30 * (vp - 143))
    if vp <= 196:
        return timedelta(days=vp - 166)
    return timedelta(weeks=vp - 192)


def decode_submit(pdu: str | bytes) -> Submit:
    """An SMS-SUBMIT, as ``encode_submit`` makes it (for round trips and checks of the outbox).

    Reads the SMSC part, relative or absent validity; an absolute or enhanced validity
    period is skipped (7 octets) since we never send one.
    """
    r = _Reader(_to_octets(pdu))
    _read_smsc(r)
    first = r.octet("first octet")
    if first & 0x03 != 0x01:
        raise SmsError("not_submit", f"MTI {first & 0x03}")
    mr = r.octet("message reference")
    number, number_type = _read_address(r, "destination address")
    r.octet("pid")
    encoding = _encoding_of(r.octet("dcs"))
    vpf = (first >> 3) & 0x03
    validity: timedelta | None = None
    if vpf == 0x02:
        validity = _relative_validity(r.octet("validity"))
    elif vpf in (0x01, 0x03):
        r.take(7, "validity")
    ud = _read_user_data(r, encoding, bool(first & 0x40))
    return Submit(
        number=number,
        number_type=number_type,
        message_reference=mr,
        text=ud.text,
        encoding=encoding,
        concat=ud.concat,
        status_report_request=bool(first & 0x20),
        validity=validity,
        udh=ud.udh,
        payload=ud.payload,
    )


# --- writing --------------------------------------------------------------------------------------


def _encode_address(number: str) -> bytes:
    """TP-DA: '+47...' as international (0x91), plain digits as unknown/ISDN (0x81).

    0x81 rather than national (0xA1) because it lets the network read the number as
    dialled, which also covers short codes; we decode both.
    """
    compact = number.replace(" ", "")
    international = compact.startswith("+")
    digits = compact[1:] if international else compact
    if not digits.isascii() or not digits.isdigit() or not 1 <= len(digits) <= MAX_ADDRESS_DIGITS:
        raise SmsUsageError(f"not a phone number: {number!r}")
    padded = digits + "F" * (len(digits) % 2)
    swapped = bytes.fromhex("".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2)))
    return bytes((len(digits), 0x91 if international else 0x81)) + swapped


def _encode_validity(validity: timedelta) -> int:
    """The smallest relative TP-VP at least as long as asked (never expire early), capped."""
    if validity <= timedelta(0):
        raise SmsUsageError("validity must be positive")
    for vp in range(256):
        if _relative_validity(vp) >= validity:
            return vp
    return 255


def _split_gsm7(chars: list[tuple[int, ...]], limit: int) -> list[list[int]]:
    """Greedy parts of at most ``limit`` septets; a character's septets stay together."""
    parts: list[list[int]] = [[]]
    for septets in chars:
        if len(parts[-1]) + len(septets) > limit:
            parts.append([])
        parts[-1].extend(septets)
    return parts


def _split_ucs2(text: str, limit: int) -> list[bytes]:
    """Greedy parts of at most ``limit`` UTF-16 units; a surrogate pair stays together."""
    parts: list[bytearray] = [bytearray()]
    for ch in text:
        units = ch.encode("utf-16-be")
        if len(parts[-1]) + len(units) > 2 * limit:
            parts.append(bytearray())
        parts[-1] += units
    return [bytes(p) for p in parts]


def encode_submit(
    number: str,
    text: str,
    *,
    reference: int,
    request_status_report: bool = False,
    validity: timedelta | None = None,
) -> list[SubmitPdu]:
    """SMS-SUBMIT PDUs for ``text``: one, or concatenated parts sharing ``reference``.

    GSM 7-bit when every character is in the alphabet (an extension character takes two
    septets), else UCS-2. One SMS holds 160 septets or 70 UTF-16 units; longer texts go
    in parts of 153 / 67 behind an 8-bit-reference concatenation UDH. ``reference``
    (0-255) is the concatenation reference; TP-MR is 0 since the modem assigns the real
    one and reports it in ``+CMGS: <mr>``. The SMSC part is "00": the SIM's default SMSC.
    """
    if not 0 <= reference <= 255:
        raise SmsUsageError(f"reference out of range: {reference}")
    address = _encode_address(number)
    try:
        text.encode("utf-16-be")
    except UnicodeEncodeError:
        raise SmsUsageError("text holds a lone surrogate") from None

    chunks: list[bytes]
    if gsm7_encodable(text):
        encoding, dcs = Encoding.GSM7, 0x00
        chars = gsm7_septets(text)
        if sum(len(c) for c in chars) <= MAX_SEPTETS:
            chunks = [bytes(s for c in chars for s in c)]
        else:
            chunks = [bytes(p) for p in _split_gsm7(chars, MAX_SEPTETS_CONCAT)]
    else:
        encoding, dcs = Encoding.UCS2, 0x08
        ucs2 = text.encode("utf-16-be")
        chunks = (
            [ucs2] if len(ucs2) <= 2 * MAX_UCS2_UNITS else _split_ucs2(text, MAX_UCS2_UNITS_CONCAT)
        )
    if len(chunks) > MAX_PARTS:
        raise SmsUsageError(f"text needs {len(chunks)} parts, more than {MAX_PARTS}")

    first = 0x01  # SMS-SUBMIT
    vp = b""
    if validity is not None:
        first |= 0x10  # TP-VPF relative
        vp = bytes((_encode_validity(validity),))
    if request_status_report:
        first |= 0x20
    multipart = len(chunks) > 1
    if multipart:
        first |= 0x40  # TP-UDHI

    pdus: list[SubmitPdu] = []
    for seq, chunk in enumerate(chunks, start=1):
        udh = bytes((0x05, 0x00, 0x03, reference, len(chunks), seq)) if multipart else b""
        if encoding is Encoding.GSM7:
            header_septets = math.ceil(len(udh) * 8 / 7)
            fill = header_septets * 7 - len(udh) * 8
            ud = udh + pack_septets(chunk, fill)
            udl = header_septets + len(chunk)
        else:
            ud = udh + chunk
            udl = len(ud)
        tpdu = bytes((first, 0x00)) + address + bytes((0x00, dcs)) + vp + bytes((udl,)) + ud
        pdus.append(SubmitPdu(pdu_hex="00" + tpdu.hex().upper(), tpdu_length=len(tpdu)))
    return pdus


# --- reassembly -----------------------------------------------------------------------------------

MISSING_PART_MARKER = "[mangler del {seq}/{total}]"
"""Shown to an operator in place of a part that never arrived."""


@dataclass(slots=True)
class _Partial:
    first_seen: datetime
    parts: dict[int, Deliver]


def _join(parts: Sequence[Deliver]) -> str:
    """Join consecutive parts on their payload, so split pairs and escapes heal."""
    if not parts:
        return ""
    encodings = {p.encoding for p in parts}
    if len(encodings) > 1:  # a sender that switched coding mid-message: join the texts
        return "".join(p.text for p in parts)
    return _payload_text(parts[0].encoding, b"".join(p.payload for p in parts))


def _partial_text(total: int, parts: Mapping[int, Deliver]) -> str:
    """Known parts in order, a marker for each missing one."""
    out: list[str] = []
    run: list[Deliver] = []
    for seq in range(1, total + 1):
        if seq in parts:
            run.append(parts[seq])
            continue
        out.append(_join(run))
        run = []
        out.append(MISSING_PART_MARKER.format(seq=seq, total=total))
    out.append(_join(run))
    return "".join(out)


class Reassembler:
    """Concatenated SMS parts, joined per (sender, reference, total). Pure: ``now`` comes in.

    Bounded: beyond ``max_messages`` incomplete messages the oldest is evicted, and its
    partial text is handed out by the next ``expire`` call rather than lost, since it may
    be an alarm. A part seen twice (a modem re-listing its storage after a restart) keeps
    the first copy.
    """

    def __init__(self, max_messages: int = 64) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self._max = max_messages
        self._partials: dict[tuple[str, int, int], _Partial] = {}
        self._evicted: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self._partials)

    def add(self, deliver: Deliver, now: datetime) -> str | None:
        """The full text once the last part is in (at once for a single SMS), else None."""
        if deliver.concat is None:
            return deliver.text
        ref, total, seq = deliver.concat
        if total == 1:
            return deliver.text
        key = (deliver.sender, ref, total)
        partial = self._partials.get(key)
        if partial is None:
            partial = self._partials[key] = _Partial(first_seen=now, parts={})
        partial.parts.setdefault(seq, deliver)
        if len(partial.parts) == total:
            del self._partials[key]
            return _join([partial.parts[s] for s in range(1, total + 1)])
        while len(self._partials) > self._max:
            oldest = next(iter(self._partials))  # dicts keep insertion order
            old = self._partials.pop(oldest)
            self._evicted.append((oldest[0], _partial_text(oldest[2], old.parts)))
        return None

    def expire(self, now: datetime, older_than: timedelta) -> list[tuple[str, str]]:
        """Drop partials first seen more than ``older_than`` before ``now``.

        Returns (sender, partial text with markers) for each, evicted ones included, so
        the caller can show an incomplete alarm to an operator.
        """
        out, self._evicted = self._evicted, []
        for key in [k for k, p in self._partials.items() if now - p.first_seen > older_than]:
            partial = self._partials.pop(key)
            out.append((key[0], _partial_text(key[2], partial.parts)))
        return out

"""SIP codec for the SCAIP receiver: messages, framing, Via, Digest. Pure.

Theory of operation
-------------------
SCAIP documents travel in SIP MESSAGE requests (PROTOCOLS.md section 2). This module is
the SIP half of that: bytes in, ``SipRequest``/``SipResponse`` out, and the bytes of the
requests and responses the centre sends. It knows nothing of SCAIP, sockets, timers,
transactions or the registrar; those live in ``transports/sip.py``.

* **Datagrams** (UDP): one message per datagram, ``parse_datagram(data)``. Content-Length
  is optional; without it the body is the rest of the datagram. If present it may not
  exceed the rest (400), and extra bytes after it are dropped (RFC 3261 18.3).
* **Streams** (TCP, TLS): ``SipStreamParser.feed(read)`` returns the complete messages,
  keep-alives and errors each read finishes, in order; the output never depends on how
  the stream was cut into reads. Content-Length is mandatory. CRLFs between messages are
  skipped; a double CRLF is an RFC 5626 ping and comes out as ``KeepAlive``: answer it
  with ``KEEPALIVE_PONG`` (one CRLF).
* **Bounds**: a message (head and body) may be at most ``max_message_bytes``. A head that
  is still incomplete past that bound, or a head without a usable Content-Length, leaves
  no way to find the next message: the error item has ``fatal=True``, the parser stops
  (later reads give nothing) and the transport answers if it can and closes the
  connection. A head that announces a body over the bound gives a ``too_large`` error
  (413) at once; the body is then skipped without being buffered and the connection
  goes on with the next message.
* **Errors**: the peer's mistakes are ``SipError(reason, status)``: raised by
  ``parse_datagram``, returned as items by the stream parser. ``status`` is the response
  that fits (400, 413, 505) and ``request`` is set when the head parsed far enough to
  build that response with ``build_response``; without ``request`` nothing can be
  answered. No other exception escapes for any input. Our own mistakes (building a
  header with a CR in it, an unknown status without a reason) are ``SipUsageError``.
* **Via**: ``parse_via`` reads one Via value; ``response_via`` adds ``received`` and fills
  ``rport`` (RFC 3581) so that the response goes back to the packet's source, and
  ``build_response(..., top_via=...)`` puts it in place of the top Via.
* **Digest** (RFC 2617 / RFC 3261 22, MD5, ``qop=auth``): ``DigestAuthenticator`` issues
  nonces that carry their own issue time and an HMAC under the server secret, so they
  can be checked and expired without a table. Replay protection does need memory: the
  highest nonce-count seen per nonce, kept in a bounded ``NonceCounts`` the caller owns
  and passes in. ``digest_authorization`` is the client half, for the simulator.

Header text is decoded as UTF-8 with ``surrogateescape``: bytes that are not UTF-8 (an old
device's Latin-1 display name) survive parsing and come out unchanged when a header is
copied into a response, instead of failing the whole message.

Nothing here reads a clock, touches a socket or imports asyncio; ``now`` is an argument
and randomness (nonce salt, tags, branches) comes through ``randbytes``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

MAX_MESSAGE_BYTES: Final = 65536
SIP_VERSION: Final = "SIP/2.0"
KEEPALIVE_PING: Final = b"\r\n\r\n"  # RFC 5626 4.4.1, client to server
KEEPALIVE_PONG: Final = b"\r\n"  # the answer to a ping
BRANCH_MAGIC: Final = "z9hG4bK"  # RFC 3261 8.1.1.7: an RFC 3261 branch starts with it

# RFC 3261 7.3.3 and the compact forms registered since (RFC 3265, 3515, 3841, 3892, 4028).
COMPACT_FORMS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "a": "Accept-Contact",
        "b": "Referred-By",
        "c": "Content-Type",
        "d": "Request-Disposition",
        "e": "Content-Encoding",
        "f": "From",
        "i": "Call-ID",
        "j": "Reject-Contact",
        "k": "Supported",
        "l": "Content-Length",
        "m": "Contact",
        "o": "Event",
        "r": "Refer-To",
        "s": "Subject",
        "t": "To",
        "u": "Allow-Events",
        "v": "Via",
        "x": "Session-Expires",
    }
)

# RFC 3261 21 (and 3428's 415 use). The default reason phrase per status code.
REASON_PHRASES: Final[Mapping[int, str]] = MappingProxyType(
    {
        100: "Trying",
        180: "Ringing",
        181: "Call Is Being Forwarded",
        182: "Queued",
        183: "Session Progress",
        200: "OK",
        202: "Accepted",
        300: "Multiple Choices",
        301: "Moved Permanently",
        302: "Moved Temporarily",
        305: "Use Proxy",
        380: "Alternative Service",
        400: "Bad Request",
        401: "Unauthorized",
        402: "Payment Required",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        406: "Not Acceptable",
        407: "Proxy Authentication Required",
        408: "Request Timeout",
        410: "Gone",
        413: "Request Entity Too Large",
        414: "Request-URI Too Long",
        415: "Unsupported Media Type",
        416: "Unsupported URI Scheme",
        420: "Bad Extension",
        421: "Extension Required",
        423: "Interval Too Brief",
        480: "Temporarily Unavailable",
        481: "Call/Transaction Does Not Exist",
        482: "Loop Detected",
        483: "Too Many Hops",
        484: "Address Incomplete",
        485: "Ambiguous",
        486: "Busy Here",
        487: "Request Terminated",
        488: "Not Acceptable Here",
        491: "Request Pending",
        493: "Undecipherable",
        500: "Server Internal Error",
        501: "Not Implemented",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Server Time-out",
        505: "Version Not Supported",
        513: "Message Too Large",
        600: "Busy Everywhere",
        603: "Decline",
        604: "Does Not Exist Anywhere",
        606: "Not Acceptable",
    }
)

_TOKEN = r"[A-Za-z0-9!%'*+\-.^_`~]+"  # noqa: S105 - RFC 3261's "token" rule, not a secret
_TOKEN_RE = re.compile(_TOKEN)
_REQUEST_LINE_RE = re.compile(
    rf"({_TOKEN}) +([A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20\x7f]+) +(SIP/\d+\.\d+)",
    re.IGNORECASE,
)
_STATUS_LINE_RE = re.compile(r"(SIP/\d+\.\d+) +([1-6]\d\d)(?: (.*))?", re.IGNORECASE)
_HEADER_LINE_RE = re.compile(rf"({_TOKEN})[ \t]*:[ \t]*(.*)")
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_LINE_SPLIT_RE = re.compile(r"\r?\n")
_CSEQ_RE = re.compile(rf"(\d{{1,10}})[ \t]+({_TOKEN})")
_CONTENT_LENGTH_RE = re.compile(r"\d{1,10}")
_BAD_VALUE_CHARS = re.compile(r"[\x00\r\n]")
_TEXT_CODEC = "utf-8"
_TEXT_ERRORS = "surrogateescape"


# --- errors -----------------------------------------------------------------------------------


class SipError(Exception):
    """The peer sent something we cannot take.

    ``reason`` is a short, metric-safe label; ``status`` the SIP response that fits (None
    when no response makes sense, e.g. for a broken *response*); ``request`` the request
    as far as it parsed (body empty), set only when a response to it can be built;
    ``fatal`` means the stream cannot be resynchronised and the connection must close.
    """

    def __init__(
        self,
        reason: str,
        status: int | None = 400,
        detail: str = "",
        *,
        fatal: bool = False,
        request: SipRequest | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.status = status
        self.detail = detail
        self.fatal = fatal
        self.request = request

    def __repr__(self) -> str:
        return f"SipError({self.reason!r}, {self.status!r}, {self.detail!r}, fatal={self.fatal})"


class SipUsageError(ValueError):
    """We misused the API (a header value with a CR, an unknown status without a reason)."""


# --- headers ------------------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    """The full header name: a compact form expanded, any other name as written."""
    if len(name) == 1:
        return COMPACT_FORMS.get(name.lower(), name)
    return name


class Headers:
    """An ordered, case-insensitive, immutable multi-map of SIP header fields.

    Names are kept as written except that compact forms are expanded (``v`` becomes
    ``Via``), so a lookup by either form finds the field. Order matters in SIP (Via is a
    stack), so this keeps every field in the order it came, repeated names included.
    Values are kept as one string per header line; ``split_header_list`` splits a
    comma-separated value where a header allows it.
    """

    __slots__ = ("_index", "_items")

    _items: tuple[tuple[str, str], ...]
    _index: Mapping[str, tuple[str, ...]]

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        pairs = tuple((canonical_name(n), v) for n, v in items)
        index: dict[str, list[str]] = {}
        for name, value in pairs:
            index.setdefault(name.lower(), []).append(value)
        object.__setattr__(self, "_items", pairs)
        object.__setattr__(self, "_index", {k: tuple(v) for k, v in index.items()})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Headers is immutable")

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (either form), or ``default``."""
        values = self._index.get(canonical_name(name).lower())
        return values[0] if values else default

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every value of ``name``, in message order."""
        return self._index.get(canonical_name(name).lower(), ())

    def with_added(self, name: str, value: str) -> Headers:
        return Headers((*self._items, (name, value)))

    def without(self, name: str) -> Headers:
        key = canonical_name(name).lower()
        return Headers((n, v) for n, v in self._items if n.lower() != key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_name(name).lower() in self._index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def _key(self) -> tuple[tuple[str, str], ...]:
        return tuple((n.lower(), v) for n, v in self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 7.3.1), not inside quotes or <>."""
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


# --- messages -----------------------------------------------------------------------------------


class _Dialog:
    """What requests and responses both read from their headers."""

    __slots__ = ()
    headers: Headers

    @property
    def call_id(self) -> str | None:
        return self.headers.get("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method); never raises for a parsed message (parsing checked it)."""
        return parse_cseq(self.headers.get("CSeq"))


@dataclass(frozen=True, slots=True)
class SipRequest(_Dialog):
    method: str  # case-sensitive token: "REGISTER", "MESSAGE", "OPTIONS", or any other
    uri: str
    version: str
    headers: Headers
    body: bytes

    @property
    def top_via(self) -> Via:
        """The first Via; never raises for a parsed request (parsing checked it)."""
        return top_via(self.headers)


@dataclass(frozen=True, slots=True)
class SipResponse(_Dialog):
    version: str
    status: int
    reason: str
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """An RFC 5626 double-CRLF ping; the transport answers ``KEEPALIVE_PONG``."""


SipMessage = SipRequest | SipResponse


def parse_cseq(value: str | None) -> tuple[int, str]:
    """``"314159 MESSAGE"`` -> ``(314159, "MESSAGE")``; SipError 400 if malformed."""
    m = _CSEQ_RE.fullmatch(value.strip()) if value is not None else None
    if m is None:
        raise SipError("bad_cseq", 400, repr(value))
    number = int(m.group(1))
    if number >= 2**31:  # RFC 3261 8.1.1.5
        raise SipError("bad_cseq", 400, repr(value))
    return number, m.group(2)


# --- parsing --------------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    return data.decode(_TEXT_CODEC, _TEXT_ERRORS)


def _encode(text: str) -> bytes:
    return text.encode(_TEXT_CODEC, _TEXT_ERRORS)


def _split_head(head: bytes) -> tuple[str, Headers]:
    """Start line and unfolded headers of a head (without its blank line)."""
    lines = _LINE_SPLIT_RE.split(_decode(head))
    start = lines[0]
    fields: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise SipError("bad_header", 400, "continuation before any header")
            # RFC 3261 7.3.1: a fold is LWS, equivalent to one SP
            folded = fields[-1][1] + " " + line.strip(" \t")
            fields[-1][1] = folded.strip(" \t")
            continue
        m = _HEADER_LINE_RE.fullmatch(line)
        if m is None:
            raise SipError("bad_header", 400, repr(line[:80]))
        fields.append([m.group(1), m.group(2).rstrip(" \t")])
    for _name, value in fields:
        if "\x00" in value or "\r" in value:
            raise SipError("bad_header", 400, "control character in a header value")
    return start, Headers((n, v) for n, v in fields)


def _content_length(headers: Headers) -> int | None:
    values = {v.strip() for v in headers.get_all("Content-Length")}
    if not values:
        return None
    if len(values) > 1:
        raise SipError("bad_content_length", 400, "conflicting Content-Length headers")
    (value,) = values
    if _CONTENT_LENGTH_RE.fullmatch(value) is None:
        raise SipError("bad_content_length", 400, repr(value))
    return int(value)


def _request_line(start: str, headers: Headers) -> SipRequest | None:
    """The request as far as its start line goes (body empty), or None if it is not one."""
    m = _REQUEST_LINE_RE.fullmatch(start)
    if m is None or m.group(3).upper() != SIP_VERSION:
        return None
    return SipRequest(m.group(1), m.group(2), SIP_VERSION, headers, b"")


def _make_message(start: str, headers: Headers, body: bytes) -> SipMessage:
    """Check the start line and the headers every request/response needs."""
    m = _REQUEST_LINE_RE.fullmatch(start)
    if m is not None:
        method, uri, version = m.group(1), m.group(2), m.group(3).upper()
        request = SipRequest(method, uri, version, headers, body)
        if version != SIP_VERSION:
            raise SipError("unsupported_version", 505, version, request=request)
        stub = SipRequest(method, uri, version, headers, b"")
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            if not (headers.get(name) or "").strip():
                raise SipError("missing_header", 400, name, request=stub)
        try:
            top_via(headers)
            cseq_method = parse_cseq(headers.get("CSeq"))[1]
        except SipError as e:
            raise SipError(e.reason, 400, e.detail, request=stub) from None
        if cseq_method != method:
            raise SipError("bad_cseq", 400, "CSeq method differs", request=stub)
        return request
    m = _STATUS_LINE_RE.fullmatch(start)
    if m is not None:
        version = m.group(1).upper()
        if version != SIP_VERSION:
            raise SipError("unsupported_version", None, version)
        # A response is never answered, so its errors carry no status.
        if not (headers.get("Call-ID") or "").strip():
            raise SipError("missing_header", None, "Call-ID")
        try:
            parse_cseq(headers.get("CSeq"))  # a response we cannot match is useless
        except SipError as e:
            raise SipError(e.reason, None, e.detail) from None
        try:
            status = int(m.group(2))
        except ValueError:  # pragma: no cover - the regex allows digits only
            raise SipError("bad_status_line", None, repr(start[:80])) from None
        return SipResponse(version, status, m.group(3) or "", headers, body)
    raise SipError("bad_start_line", 400, repr(start[:80]))


def _skip_crlfs(data: bytes) -> int:
    i = 0
    while i < len(data) and data[i] in b"\r\n":
        i += 1
    return i


def parse_datagram(
    data: bytes, *, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> SipMessage | KeepAlive:
    """One UDP datagram as a message; a datagram of CRs and LFs only is a ``KeepAlive``.

    Raises ``SipError`` (and nothing else) for anything that is not a usable message.
    """
    if len(data) > max_message_bytes:
        raise SipError("too_large", 413, f"{len(data)} bytes")
    skip = _skip_crlfs(data)  # RFC 3261 7.5: CRLFs before the start line are ignored
    if skip == len(data):
        if data:
            return KeepAlive()
        raise SipError("empty", None)
    m = _HEAD_END_RE.search(data, skip)
    # Lenient: a datagram whose head lacks the closing blank line is all head.
    if m is not None:
        head, rest = data[skip : m.start()], data[m.end() :]
    else:
        head, rest = data[skip:].rstrip(b"\r\n"), b""
    start, headers = _split_head(head)
    try:
        length = _content_length(headers)
    except SipError as e:
        e.request = _request_line(start, headers)
        raise
    if length is not None:
        if length > len(rest):
            raise SipError(
                "truncated_body",
                400,
                f"Content-Length {length}, {len(rest)} bytes",
                request=_request_line(start, headers),
            )
        rest = rest[:length]  # RFC 3261 18.3: bytes past Content-Length are discarded
    return _make_message(start, headers, rest)


class SipStreamParser:
    """Cuts a TCP/TLS byte stream into SIP messages by Content-Length; bounded.

    ``feed`` returns, in order, the messages, keep-alives and errors the bytes complete.
    After a fatal error (see the module docstring) the parser is ``closed`` and ignores
    further input: the transport should answer the error if it can and close the socket.
    """

    __slots__ = ("_buf", "_closed", "_max", "_pending_head", "_scan_from", "_skip")

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes
        self._scan_from = 0  # where to resume looking for the blank line ending the head
        self._skip = 0  # body bytes of a too-large message still to drop
        # a parsed head waiting for its body: (head length, start line, headers, body length)
        self._pending_head: tuple[int, str, Headers, int] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after a fatal error: the stream cannot be resynchronised."""
        return self._closed

    @property
    def pending(self) -> int:
        """Bytes buffered towards a message not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[SipMessage | KeepAlive | SipError]:
        if self._closed:
            return []
        out: list[SipMessage | KeepAlive | SipError] = []
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buf += data
        try:
            while self._step(out):
                pass
        except SipError as e:  # a fatal framing error
            e.fatal = True
            out.append(e)
            self._closed = True
            self._buf.clear()
            self._pending_head = None
        return out

    def _step(self, out: list[SipMessage | KeepAlive | SipError]) -> bool:
        """Take at most one item off the buffer; False when more bytes are needed."""
        buf = self._buf
        if self._skip:
            return False
        if self._pending_head is None:
            if not buf:
                return False
            if buf[0] in b"\r\n":
                return self._step_separator(out)
            m = _HEAD_END_RE.search(buf, self._scan_from)
            if m is None:
                if len(buf) > self._max:
                    raise SipError("too_large", 413, f"no end of head in {len(buf)} bytes")
                self._scan_from = max(0, len(buf) - 3)
                return False
            self._scan_from = 0
            if m.end() > self._max:
                raise SipError("too_large", 413, f"head of {m.end()} bytes")
            start, headers = _split_head(bytes(buf[: m.start()]))
            try:
                length = _content_length(headers)
            except SipError as e:
                e.request = _request_line(start, headers)
                raise
            if length is None:
                raise SipError("missing_content_length", 400, request=_request_line(start, headers))
            if m.end() + length > self._max:
                # Framing is known: answer 413 now, drop the body unbuffered, go on.
                request = _request_line(start, headers)
                out.append(SipError("too_large", 413, f"body of {length}", request=request))
                available = len(buf) - m.end()
                dropped = min(length, available)
                del buf[: m.end() + dropped]
                self._skip = length - dropped
                return True
            self._pending_head = (m.end(), start, headers, length)
        head_len, start, headers, length = self._pending_head
        if len(buf) < head_len + length:
            return False
        body = bytes(buf[head_len : head_len + length])
        del buf[: head_len + length]
        self._pending_head = None
        try:
            out.append(_make_message(start, headers, body))
        except SipError as e:  # framing was fine: report it and go on
            out.append(e)
        return True

    def _step_separator(self, out: list[SipMessage | KeepAlive | SipError]) -> bool:
        buf = self._buf
        if buf.startswith(KEEPALIVE_PING):
            del buf[:4]
            out.append(KeepAlive())
            return True
        if KEEPALIVE_PING.startswith(buf):
            return False  # perhaps the start of a ping: wait
        # A lone CRLF (a pong, or padding before a start line) or a stray CR/LF: skip.
        del buf[: 2 if buf.startswith(b"\r\n") else 1]
        return True


# --- Via ---------------------------------------------------------------------------------------

_VIA_RE = re.compile(
    rf"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(?:[ \t]*:[ \t]*(\d{1,5}))?[ \t]*((?:;.*)?)",
    re.IGNORECASE,
)
_PARAM_RE = re.compile(rf';[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^;"\s]+))?[ \t]*')


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=z9hG4bK...;rport``."""

    transport: str  # upper case: UDP, TCP, TLS, ...
    host: str  # as written; an IPv6 reference keeps its brackets
    port: int | None
    params: tuple[tuple[str, str | None], ...]  # in order; None for a flag like ``rport``

    def param(self, name: str) -> str | None:
        key = name.lower()
        for n, v in self.params:
            if n.lower() == key:
                return v if v is not None else ""
        return None

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def wants_rport(self) -> bool:
        """The sender asked for RFC 3581 symmetric response routing."""
        return self.param("rport") is not None

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        params = "".join(f";{n}" if v is None else f";{n}={v}" for n, v in self.params)
        return f"SIP/2.0/{self.transport} {self.host}{port}{params}"


def parse_via(value: str) -> Via:
    """Parse one Via value (not a comma list); SipError 400 if malformed."""
    m = _VIA_RE.fullmatch(value.strip())
    if m is None:
        raise SipError("bad_via", 400, repr(value[:80]))
    port = int(m.group(3)) if m.group(3) is not None else None
    if port is not None and not 0 < port < 65536:
        raise SipError("bad_via", 400, f"port {port}")
    params: list[tuple[str, str | None]] = []
    rest = m.group(4)
    pos = 0
    while pos < len(rest):
        pm = _PARAM_RE.match(rest, pos)
        if pm is None:
            raise SipError("bad_via", 400, repr(rest[pos : pos + 40]))
        params.append((pm.group(1), pm.group(2)))
        pos = pm.end()
    return Via(m.group(1).upper(), m.group(2), port, tuple(params))


def via_values(headers: Headers) -> list[str]:
    """Every Via value, top first, with comma lists split."""
    return [v for line in headers.get_all("Via") for v in split_header_list(line)]


def top_via(headers: Headers) -> Via:
    values = via_values(headers)
    if not values:
        raise SipError("missing_header", 400, "Via")
    return parse_via(values[0])


def response_via(via: Via, source_host: str, source_port: int) -> str:
    """The top Via for the response, so that it reaches the packet's source.

    RFC 3261 18.2.1: add ``received`` when the sent-by host is not the source address.
    RFC 3581: if the request had a bare ``rport``, fill in the source port and add
    ``received`` even when the address matches. Existing values are replaced.
    """
    bare_host = via.host[1:-1] if via.host.startswith("[") else via.host
    source = source_host[1:-1] if source_host.startswith("[") else source_host
    add_received = via.wants_rport or bare_host.lower() != source.lower()
    params: list[tuple[str, str | None]] = []
    for name, value in via.params:
        key = name.lower()
        if key == "received":
            continue
        if key == "rport":
            params.append((name, str(source_port)))
            continue
        params.append((name, value))
    if add_received:
        params.append(("received", source))
    return str(Via(via.transport, via.host, via.port, tuple(params)))


# --- building ----------------------------------------------------------------------------------


def _check_header(name: str, value: str) -> None:
    if _TOKEN_RE.fullmatch(name) is None:
        raise SipUsageError(f"not a header name: {name!r}")
    if _BAD_VALUE_CHARS.search(value):
        raise SipUsageError(f"CR, LF or NUL in the value of {name}")


def _encode_message(start: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """Start line, headers and a correct Content-Length (in place of a given one)."""
    lines = [start]
    length_at = 0
    for name, value in headers:
        _check_header(name, value)
        if canonical_name(name).lower() == "content-length":
            if not length_at:  # the first one keeps its place and name; others go
                length_at = len(lines)
                lines.append(f"{name}: {len(body)}")
            continue
        lines.append(f"{name}: {value}")
    if not length_at:
        lines.append(f"Content-Length: {len(body)}")
    return _encode("\r\n".join(lines) + "\r\n\r\n") + body


def build_request(
    method: str, uri: str, *, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> bytes:
    """A request's bytes. The caller gives Via, From, To, Call-ID, CSeq, Max-Forwards
    (and Content-Type for a body); Content-Length is always computed here."""
    if _TOKEN_RE.fullmatch(method) is None:
        raise SipUsageError(f"not a method: {method!r}")
    if _REQUEST_LINE_RE.fullmatch(f"{method} {uri} {SIP_VERSION}") is None:
        raise SipUsageError(f"not a request URI: {uri!r}")
    return _encode_message(f"{method} {uri} {SIP_VERSION}", headers, body)


def _has_tag(value: str) -> bool:
    params = value[value.rfind(">") + 1 :] if "<" in value else value
    return re.search(r";[ \t]*tag[ \t]*=", params, re.IGNORECASE) is not None


def build_response(
    request: SipRequest,
    status: int,
    *,
    reason: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    to_tag: str | None = None,
    top_via: str | None = None,
) -> bytes:
    """A response to ``request`` (RFC 3261 8.2.6): Vias, From, To, Call-ID, CSeq copied.

    ``top_via`` replaces the first Via (give it ``response_via(...)``). ``to_tag`` is
    added to To unless To already has a tag (a request inside a dialog); a 100 must not
    carry one (8.2.6.1), which is the caller's choice. ``headers`` come after the copied
    ones; Content-Length is computed.
    """
    if not 100 <= status <= 699:
        raise SipUsageError(f"not a status code: {status}")
    if reason is None:
        reason = REASON_PHRASES.get(status)
        if reason is None:
            raise SipUsageError(f"no reason phrase known for {status}; give one")
    if _BAD_VALUE_CHARS.search(reason):
        raise SipUsageError("CR, LF or NUL in the reason phrase")
    out: list[tuple[str, str]] = []
    vias = via_values(request.headers)
    if top_via is not None and vias:
        vias[0] = top_via
    out += [("Via", v) for v in vias]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "To" and to_tag is not None and not _has_tag(value):
            value = f"{value};tag={to_tag}"
        out.append((name, value))
    out += headers
    return _encode_message(f"{SIP_VERSION} {status} {reason}", out, body)


def encode_message(message: SipMessage) -> bytes:
    """The bytes of a message as it stands (Content-Length recomputed)."""
    if isinstance(message, SipRequest):
        return build_request(
            message.method, message.uri, headers=message.headers, body=message.body
        )
    start = f"{message.version} {message.status} {message.reason}"
    return _encode_message(start, message.headers, message.body)


def new_branch(randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """A Via branch for a new client transaction (magic cookie + 64 random bits)."""
    return BRANCH_MAGIC + randbytes(8).hex()


def new_tag(randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """A From/To tag (RFC 3261 19.3: at least 32 random bits)."""
    return randbytes(6).hex()


def new_call_id(host: str, randbytes: Callable[[int], bytes] = os.urandom) -> str:
    return f"{randbytes(12).hex()}@{host}"


# --- Digest authentication -------------------------------------------------------------------

_NONCE_STRUCT = struct.Struct(">q8s")  # issue time in microseconds since the epoch, salt
_NONCE_MAC_BYTES = 32
_NONCE_BYTES = _NONCE_STRUCT.size + _NONCE_MAC_BYTES
_NONCE_DOMAIN = b"alarmd sip digest nonce v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_AUTH_PARAM_RE = re.compile(rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|{_TOKEN})[ \t]*')
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")


def _hash_bytes(text: str) -> bytes:
    """Text as the peer sent it (escaped bytes restored); any other str still encodes."""
    try:
        return _encode(text)
    except UnicodeEncodeError:  # a lone surrogate that did not come from our decoding
        return text.encode(_TEXT_CODEC, "surrogatepass")


def _md5_hex(text: str) -> str:
    return hashlib.md5(_hash_bytes(text), usedforsecurity=False).hexdigest()


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a="b", c=d`` -> ``("digest", {"a": "b", "c": "d"})``; names lower-cased.

    SipError 400 if it is not a scheme and a comma list of name=value pairs (duplicates
    included). A scheme without parameters (``Basic xyz``) gives an empty dict.
    """
    text = value.strip()
    m = re.match(rf"({_TOKEN})(?:[ \t]+|$)", text)
    if m is None:
        raise SipError("bad_auth_header", 400, repr(text[:40]))
    scheme = m.group(1).lower()
    rest = text[m.end() :]
    params: dict[str, str] = {}
    if scheme != "digest":
        return scheme, params
    pos = 0
    while pos < len(rest):
        pm = _AUTH_PARAM_RE.match(rest, pos)
        if pm is None:
            raise SipError("bad_auth_header", 400, repr(rest[pos : pos + 40]))
        name = pm.group(1).lower()
        if name in params:
            raise SipError("bad_auth_header", 400, f"{name} twice")
        params[name] = _unquote(pm.group(2))
        pos = pm.end()
        if pos < len(rest):
            if rest[pos] != ",":
                raise SipError("bad_auth_header", 400, repr(rest[pos : pos + 40]))
            pos += 1
    return scheme, params


def digest_response(
    *,
    method: str,
    uri: str,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    nc: str | None = None,
    cnonce: str | None = None,
    qop: str | None = None,
) -> str:
    """The ``response`` value (RFC 2617 3.2.2.1, MD5); without qop the RFC 2069 form."""
    ha1 = _md5_hex(f"{username}:{realm}:{password}")
    ha2 = _md5_hex(f"{method}:{uri}")
    if qop is None:
        return _md5_hex(f"{ha1}:{nonce}:{ha2}")
    return _md5_hex(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def digest_authorization(
    method: str,
    uri: str,
    username: str,
    password: str,
    challenge_header: str,
    *,
    cnonce: str,
    nc: int,
) -> str:
    """The client's ``Authorization`` value answering a ``WWW-Authenticate`` challenge.

    Uses ``qop=auth`` when the challenge offers it (RFC 2069 form otherwise). SipError
    (status None) if the challenge is not a usable Digest MD5 challenge.
    """
    scheme, params = parse_auth_header(challenge_header)
    if scheme != "digest" or "realm" not in params or "nonce" not in params:
        raise SipError("bad_challenge", None, repr(challenge_header[:80]))
    if params.get("algorithm", "MD5").upper() != "MD5":
        raise SipError("bad_challenge", None, f"algorithm {params['algorithm']}")
    realm, nonce = params["realm"], params["nonce"]
    offered = [q.strip().lower() for q in params.get("qop", "").split(",")]
    qop = "auth" if "auth" in offered else None
    nc_text = f"{nc:08x}"
    response = digest_response(
        method=method,
        uri=uri,
        username=username,
        realm=realm,
        password=password,
        nonce=nonce,
        nc=nc_text,
        cnonce=cnonce,
        qop=qop,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        "algorithm=MD5",
    ]
    if qop is not None:
        parts += [f"cnonce={_quote(cnonce)}", f"qop={qop}", f"nc={nc_text}"]
    if "opaque" in params:
        parts.append(f"opaque={_quote(params['opaque'])}")
    return "Digest " + ", ".join(parts)


class DigestOutcome(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"  # no usable Digest credentials: 401 with a fresh challenge
    WRONG = "wrong"  # bad user, password or response: 403 (400 for a URI mismatch)
    STALE = "stale"  # right password, nonce expired or not ours: 401 with stale=true
    REPLAY = "replay"  # nonce-count not above the last one seen: 403


@dataclass(frozen=True, slots=True)
class DigestResult:
    outcome: DigestOutcome
    status: int | None  # the response to send instead of processing; None for OK
    reason: str  # short, metric-safe: why
    username: str | None = None  # as claimed in the header (for OK: authenticated)
    www_authenticate: str | None = None  # the challenge to put in a 401

    @property
    def ok(self) -> bool:
        return self.outcome is DigestOutcome.OK


class NonceCheck(enum.Enum):
    FRESH = "fresh"  # nc above the last seen (or first use): accepted and recorded
    REPLAY = "replay"
    FORGOTTEN = "forgotten"  # evicted from memory: cannot tell, ask for a new nonce


class NonceCounts:
    """The highest nonce-count seen per nonce, bounded, evicted by ``now``.

    Replay protection needs this memory; the authenticator stays pure by taking it as an
    argument. Entries are dropped when their nonce expires or, when the table is full,
    oldest first. Every dropped nonce raises a floor (its issue time): a nonce issued at
    or before the floor that is not in the table may have been seen, so it is
    ``FORGOTTEN`` (the client gets a new nonce) rather than trusted as new.
    """

    __slots__ = ("_entries", "_floor", "_max")

    def __init__(self, max_nonces: int = 4096) -> None:
        if max_nonces < 1:
            raise SipUsageError("max_nonces must be positive")
        self._max = max_nonces
        self._entries: dict[str, tuple[int, datetime, datetime]] = {}  # nc, issued, expires
        self._floor: datetime | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def check_and_record(
        self, nonce: str, nc: int, *, issued_at: datetime, expires_at: datetime, now: datetime
    ) -> NonceCheck:
        entry = self._entries.get(nonce)
        if entry is not None:
            if nc <= entry[0]:
                return NonceCheck.REPLAY
            self._entries[nonce] = (nc, entry[1], entry[2])
            return NonceCheck.FRESH
        if self._floor is not None and issued_at <= self._floor:
            return NonceCheck.FORGOTTEN
        if len(self._entries) >= self._max:
            self._evict(now)
        self._entries[nonce] = (nc, issued_at, expires_at)
        return NonceCheck.FRESH

    def _evict(self, now: datetime) -> None:
        expired = [k for k, (_, _, expires) in self._entries.items() if expires <= now]
        if not expired:
            expired = [next(iter(self._entries))]  # the least recently first-used
        for key in expired:
            _, issued, _ = self._entries.pop(key)
            if self._floor is None or issued > self._floor:
                self._floor = issued


class DigestAuthenticator:
    """Server-side Digest (MD5, ``qop=auth``) with self-verifying, expiring nonces.

    A nonce is base64 of (issue time, 8 random bytes, HMAC-SHA256 under ``secret``). The
    random salt makes every challenge's nonce unique, so two devices of one group account
    challenged in the same microsecond still count their ``nc`` independently.

    Choices where the RFCs leave room (DESIGN.md: a device must be able to recover, an
    attacker must learn nothing):

    * no header, a malformed one, another realm, an algorithm or qop other than MD5 and
      ``auth``, and **Basic** all get 401 with a fresh Digest-only challenge: Basic
      credentials are never decoded or checked, and a device that tried Basic first can
      still fall back to Digest. ``qop`` is required (without ``nc`` there is no replay
      protection).
    * an unknown user or a wrong response gets 403 and no new challenge.
    * a correct response over a nonce that expired, or that is not ours at all (issued
      under an earlier secret, before a restart) gets 401 ``stale=true``, so the device
      retries at once instead of giving up: only someone who knows the password can get
      there, and an alarm must not be lost to a restart. A tampered nonce cannot come with
      a correct response, so it ends as WRONG.
    * a nonce-count not above the last one accepted for that nonce gets 403.
    * ``request_uri``, when given, must equal the header's ``uri`` (else 400, RFC 2617
      3.2.2.5); it is optional because devices disagree on how to write it.
    """

    __slots__ = ("_randbytes", "_secret", "nonce_ttl", "realm")

    def __init__(
        self,
        realm: str,
        secret: bytes,
        nonce_ttl: timedelta,
        *,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(secret) < 16:
            raise SipUsageError("the nonce secret should have at least 16 bytes")
        if nonce_ttl <= timedelta(0):
            raise SipUsageError("nonce_ttl must be positive")
        if _BAD_VALUE_CHARS.search(realm):
            raise SipUsageError("CR, LF or NUL in the realm")
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self._secret = secret
        self._randbytes = randbytes

    def __repr__(self) -> str:  # never the secret
        return f"DigestAuthenticator(realm={self.realm!r}, nonce_ttl={self.nonce_ttl!r})"

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _NONCE_DOMAIN + payload, hashlib.sha256).digest()

    def make_nonce(self, now: datetime) -> str:
        payload = _NONCE_STRUCT.pack(_micros(now), self._randbytes(8))
        return base64.b64encode(payload + self._mac(payload)).decode("ascii")

    def nonce_issued_at(self, nonce: str) -> datetime | None:
        """When we issued ``nonce``, or None if it is not one of ours (under this secret)."""
        try:
            raw = base64.b64decode(nonce.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return None
        if len(raw) != _NONCE_BYTES:
            return None
        payload, mac = raw[: _NONCE_STRUCT.size], raw[_NONCE_STRUCT.size :]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        micros, _salt = _NONCE_STRUCT.unpack(payload)
        try:
            return _EPOCH + timedelta(microseconds=micros)
        except OverflowError:  # pragma: no cover - only a forged MAC could get here
            return None

    def challenge(self, now: datetime, stale: bool = False) -> str:
        """A ``WWW-Authenticate`` value with a new nonce."""
        value = (
            f"Digest realm={_quote(self.realm)}, nonce={_quote(self.make_nonce(now))}, "
            'algorithm=MD5, qop="auth"'
        )
        return value + ", stale=true" if stale else value

    def verify(
        self,
        method: str,
        authorization: str | None,
        now: datetime,
        lookup_password: Callable[[str], str | None],
        nonce_counts: NonceCounts,
        *,
        request_uri: str | None = None,
    ) -> DigestResult:
        """Check an ``Authorization`` value for a request with ``method``.

        ``lookup_password`` maps the claimed username to its password (per device or per
        group of devices) or None; an exception it raises propagates (the transport
        answers 500). Only a correct answer is recorded in ``nonce_counts``.
        """
        _micros(now)  # a naive datetime is a usage error, whatever the header says

        def challenge(reason: str) -> DigestResult:
            return DigestResult(
                DigestOutcome.MISSING, 401, reason, www_authenticate=self.challenge(now)
            )

        if authorization is None or not authorization.strip():
            return challenge("no_credentials")
        try:
            scheme, params = parse_auth_header(authorization)
        except SipError:
            return challenge("malformed")
        if scheme == "basic":
            return challenge("basic_refused")
        if scheme != "digest":
            return challenge("unsupported_scheme")
        if params.get("algorithm", "MD5").upper() != "MD5":
            return challenge("unsupported_algorithm")
        if any(k not in params for k in ("username", "realm", "nonce", "uri", "response")):
            return challenge("malformed")
        if "qop" not in params:
            return challenge("qop_required")
        if params["qop"].lower() != "auth":
            return challenge("unsupported_qop")
        nc_text, cnonce = params.get("nc", ""), params.get("cnonce")
        if _NC_RE.fullmatch(nc_text) is None or int(nc_text, 16) == 0 or not cnonce:
            return challenge("malformed")
        if params["realm"] != self.realm:
            return challenge("wrong_realm")
        username, nonce = params["username"], params["nonce"]

        def refuse(outcome: DigestOutcome, status: int, reason: str) -> DigestResult:
            return DigestResult(outcome, status, reason, username=username)

        if request_uri is not None and params["uri"] != request_uri:
            return refuse(DigestOutcome.WRONG, 400, "uri_mismatch")
        password = lookup_password(username)
        if password is None:
            return refuse(DigestOutcome.WRONG, 403, "unknown_user")
        expected = digest_response(
            method=method,
            uri=params["uri"],
            username=username,
            realm=self.realm,
            password=password,
            nonce=nonce,
            nc=nc_text,
            cnonce=cnonce,
            qop=params["qop"],
        )
        given = _hash_bytes(params["response"].lower())
        if not hmac.compare_digest(expected.encode("ascii"), given):
            return refuse(DigestOutcome.WRONG, 403, "wrong_response")

        def stale(reason: str) -> DigestResult:
            return DigestResult(
                DigestOutcome.STALE,
                401,
                reason,
                username=username,
                www_authenticate=self.challenge(now, stale=True),
            )

        issued_at = self.nonce_issued_at(nonce)
        if issued_at is None:
            return stale("unknown_nonce")
        if abs(now - issued_at) > self.nonce_ttl:
            return stale("expired_nonce")
        check = nonce_counts.check_and_record(
            nonce,
            int(nc_text, 16),
            issued_at=issued_at,
            expires_at=issued_at + self.nonce_ttl,
            now=now,
        )
        if check is NonceCheck.REPLAY:
            return refuse(DigestOutcome.REPLAY, 403, "replayed_nc")
        if check is NonceCheck.FORGOTTEN:
            return stale("forgotten_nonce")
        return DigestResult(DigestOutcome.OK, None, "ok", username=username)


def _micros(now: datetime) -> int:
    if now.tzinfo is None:
        raise SipUsageError("now must be timezone-aware")
    return (now - _EPOCH) // timedelta(microseconds=1)

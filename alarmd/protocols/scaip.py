"""SCAIP codec: ``<mrq>`` documents in, events and error replies out; ``<mrs>`` encoding. Pure.

Theory of operation
-------------------
A SCAIP device sends an ``<mrq>`` XML document in a SIP MESSAGE (PROTOCOLS.md 2.1); the
SIP transport (not this module) authenticates it, takes the body and calls
``handle_mrq(body, source=..., now=...)``. The result is a ``ScaipResult``:

* an error (``snu`` 1, 2, 3, 7, 10, or 99 for our own bug) with ``reply_on_error``, the
  ``<mrs>`` to send at once, echoing the request's ``ref`` whenever it could be read;
* a heartbeat (``mty=PI``): no event, since heartbeats are never shown to operators; the
  transport feeds supervision and answers ``snu=0``;
* otherwise one ``Event`` and the request's ``dedup_key``. Whether the reply is ``snu=0``
  (OK) or ``snu=4`` (HOLD, until an operator accepts the case) is the transport's policy,
  decided *after* intake committed the event (DESIGN.md invariant 1); it builds the reply
  with ``encode_mrs``.

Hostile XML is the first concern, because the body comes from the network: the document
is parsed by defusedxml's expat parser with DTDs, entity declarations and external
references all refused (no entity bomb, no XXE), after a size check (over ``max_bytes``
-> ``snu=1``), and through a parser target that refuses nesting deeper than
``MAX_DEPTH`` the moment it sees it (``snu=2``), so no tree, recursion or memory grows with
hostile input. Validation follows the tables of PROTOCOLS.md 2.2, not the standard's
example XSD (which contradicts them, 2.4): malformed XML or a wrong structure (a tag
twice, children inside a value) -> ``snu=2``; a value that breaks its table row -> 3; a
missing ``cid``/``dty`` -> 7; a missing ``ref`` -> 10. Codes are kept as ``int``, so ``2``
and ``0002`` are the same code. Tags we do not know are not errors: they are listed in
``Mrq.unknown`` for the caller to log.

Mapping ``dty``/``stc`` to the taxonomy is data in ``scaip_codes``; the rule that combines
them is ``classify``. Nothing here reads a clock, touches a socket or imports asyncio.
``parse_mrs`` reads replies, for the device simulator and the tests.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import NamedTuple
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from alarmd.model import Category, Condition, Event, EventKind, Flag, Priority
from alarmd.protocols import scaip_codes

PROTOCOL = "scaip"
MAX_MRQ_BYTES = 8192  # PROTOCOLS.md 2.1: ~1000 bytes is already "use TCP"; 8 KiB is ample
# <mrq> (1) > lge (2) > geo (3); one more level of slack for an unknown wrapper's child.
MAX_DEPTH = 4
DEFAULT_VERSION = "01.00"  # PROTOCOLS.md 2.2: absent ``ver``
MAX_TEXT_CHARS = 32  # dte, stt, lte


class Snu(enum.IntEnum):
    """``<mrs>`` status numbers (PROTOCOLS.md 2.3)."""

    OK = 0  # handled: the device stops
    TOO_LONG = 1
    INVALID_FORMAT = 2
    WRONG_DATA = 3
    HOLD = 4  # received, not yet taken by an operator: the device re-sends after 5-20 s
    NOT_TREATED = 5  # try the next alarm action
    BUSY = 6  # back-pressure
    MANDATORY_MISSING = 7
    REF_MISSING = 10
    UNDEFINED = 99


class MessageType(enum.StrEnum):
    """``mty``: what the request is (absent means MESSAGE)."""

    MESSAGE = "ME"  # an alarm or event
    RESET = "RE"  # the device gave up waiting for snu=0 and moves to its alternative action
    UPDATE = "IN"  # new information on an ongoing event
    HEARTBEAT = "PI"


class ScaipError(Exception):
    """The request cannot be taken; ``snu`` is the reply's status number.

    ``reason`` is a short metric-safe label (it also goes back to the device as ``ste``,
    so it never contains the device's own data); ``ref`` is the request's reference when
    it could be read, so the ``<mrs>`` can echo it; ``detail`` is for the log line.
    """

    def __init__(self, snu: int, reason: str, ref: str | None = None, detail: str = "") -> None:
        super().__init__(f"snu={snu} {reason}: {detail}" if detail else f"snu={snu} {reason}")
        self.snu = Snu(snu) if snu in Snu._value2member_map_ else snu
        self.reason = reason
        self.ref = ref
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Mrq:
    """One validated ``<mrq>``; codes as numbers, optional tags None when absent."""

    ref: str
    cid: str  # digits as sent: an identity, not a code, so leading zeros are kept
    dty: int
    mty: MessageType = MessageType.MESSAGE
    ver: str = DEFAULT_VERSION
    stc: int | None = None  # None: an alarm (PROTOCOLS.md 2.2)
    pri: int = 0  # 0-9, absent = 0
    did: str | None = None
    dco: int | None = None
    dte: str | None = None
    stt: str | None = None
    crd: tuple[str, ...] = ()
    lco: int | None = None
    lva: str | None = None
    lte: str | None = None
    geo: tuple[float, float] | None = None  # (latitude, longitude), decimal degrees
    tim: datetime | None = None  # lge/tim, aware, as sent (not converted)
    gga: str | None = None
    hbo: int | None = None  # 1 ("001"): the device accepts a heartbeat interval in the reply
    sco: str | None = None  # the tags below have no content rules in the tables: kept as is
    cha: str | None = None
    ico: str | None = None
    ite: str | None = None
    ame: str | None = None
    unknown: tuple[str, ...] = ()  # unknown tags, "tag" or "lge/tag", first-seen order

    @property
    def dedup_key(self) -> str:
        """The key that makes a re-send of this request a duplicate (DESIGN.md invariant 2).

        A device re-sends the same ``ref`` until it gets ``snu=0`` (and on HOLD), so
        ``cid`` + ``ref`` is the transmission. ``IN`` and ``RE`` reuse the session's ``ref``
        for a *different* message: the type and a digest of the content are part of their
        key, so an update or a reset is never mistaken for a re-send of the original alarm,
        and a second, different update under the same ``ref`` is not taken for a re-send
        of the first (a re-sent update has the same content, hence the same key).
        """
        if self.mty is MessageType.MESSAGE:
            return f"scaip:{self.cid}:{self.ref}"
        content = hashlib.blake2b(repr(astuple(self)).encode(), digest_size=8).hexdigest()
        return f"scaip:{self.cid}:{self.ref}:{self.mty.value}:{content}"


@dataclass(frozen=True, slots=True)
class Mrs:
    """One ``<mrs>`` reply (PROTOCOLS.md 2.3); ``ref`` None when the request had none."""

    ref: str | None
    snu: int
    ste: str | None = None
    mre: int | None = None  # media reply, 0-3
    cre: int | None = None  # call handling reply, 1-62
    tnu: str | None = None
    hbi: int | None = None  # heartbeat interval, minutes, 1-1440


@dataclass(frozen=True, slots=True)
class ScaipResult:
    """What ``handle_mrq`` decided about one request body."""

    mrq: Mrq | None
    events: tuple[Event, ...] = ()
    snu: int | None = None  # the error's status number; None when the request was taken
    reason: str | None = None  # the error's label, for the log line and the metric
    ref: str | None = None  # the request's ref, also on errors when it could be read
    reply_on_error: bytes = b""  # the <mrs> to send at once on an error; empty otherwise

    @property
    def ok(self) -> bool:
        return self.snu is None

    @property
    def mty(self) -> MessageType | None:
        return self.mrq.mty if self.mrq is not None else None

    @property
    def dedup_key(self) -> str | None:
        return self.mrq.dedup_key if self.mrq is not None else None

    @property
    def is_heartbeat(self) -> bool:
        return self.mrq is not None and self.mrq.mty is MessageType.HEARTBEAT


# --- reading a document safely ------------------------------------------------------------


class _TooDeep(Exception):
    """Raised from inside the parser to stop it at the first element nested too deep."""


class _Record(NamedTuple):
    path: tuple[str, ...]  # local names from the root down, e.g. ("mrq", "lge", "geo")
    text: str  # the element's own text (not its children's), stripped
    nested: bool  # it had child elements


def _local(tag: str) -> str:
    """``{namespace}name`` -> ``name``: the example XSD's namespace is not used in the field."""
    return tag.rpartition("}")[2]


class _Flattener:
    """Parser target: the document as a flat list of records, in end-tag order.

    Expat calls these methods as it reads; nothing recurses, and an element deeper than
    ``max_depth`` stops the parse at once, so a 10,000-deep document costs five frames.
    """

    def __init__(self, max_depth: int) -> None:
        self._max_depth = max_depth
        self._path: list[str] = []
        self._texts: list[list[str]] = []
        self._children: list[int] = []
        self.records: list[_Record] = []

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if len(self._path) >= self._max_depth:
            raise _TooDeep
        if self._children:
            self._children[-1] += 1
        self._path.append(_local(tag))
        self._texts.append([])
        self._children.append(0)

    def data(self, text: str) -> None:
        if self._texts:
            self._texts[-1].append(text)

    def end(self, tag: str) -> None:
        text = "".join(self._texts.pop()).strip(_XML_SPACE)
        self.records.append(_Record(tuple(self._path), text, self._children.pop() > 0))
        self._path.pop()

    def close(self) -> None:
        return None


_XML_SPACE = " \t\r\n"
_REF_IN_BYTES = re.compile(rb"<ref>[ \t\r\n]*([A-Za-z0-9]{1,16})[ \t\r\n]*</ref>")


def _salvage_ref(body: bytes) -> str | None:
    """The ref of a document we could not parse, if one is plainly there.

    Best effort, only to echo it in the error reply so the device can match it: a
    linear search over at most ``max_bytes``.
    """
    m = _REF_IN_BYTES.search(body)
    return m[1].decode("ascii") if m is not None else None


def _read_document(body: bytes, root: str, max_bytes: int) -> list[_Record]:
    """Parse ``body`` into records, refusing anything hostile; the root record is last."""
    if len(body) > max_bytes:
        raise ScaipError(Snu.TOO_LONG, "too_long", _salvage_ref(body[:max_bytes]))
    flat = _Flattener(MAX_DEPTH)
    # forbid_dtd: a SCAIP document never has one, and refusing the DOCTYPE stops entity
    # bombs and external entities before any declaration is read.
    parser = DefusedXMLParser(
        target=flat, forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    try:
        # Leading whitespace before an XML declaration is an expat error; some SIP stacks
        # leave a blank line there.
        parser.feed(body.lstrip(b" \t\r\n"))
        parser.close()
    except _TooDeep:
        raise ScaipError(Snu.INVALID_FORMAT, "too_deep", _salvage_ref(body)) from None
    except DefusedXmlException as error:
        raise ScaipError(
            Snu.INVALID_FORMAT, "forbidden_xml", _salvage_ref(body), type(error).__name__
        ) from None
    except (ParseError, ValueError, LookupError) as error:  # expat errors, odd encodings
        raise ScaipError(Snu.INVALID_FORMAT, "bad_xml", _salvage_ref(body), str(error)) from None
    if not flat.records or flat.records[-1].path != (root,):
        raise ScaipError(Snu.INVALID_FORMAT, f"not_{root}", _salvage_ref(body))
    return flat.records


# --- <mrq> structure and validation -------------------------------------------------------

# Value tags directly under <mrq> (PROTOCOLS.md 2.2); crd is the only repeatable one.
_MRQ_LEAVES = frozenset(
    {
        "ref", "ver", "mty", "cid", "dty", "did", "dco", "dte", "crd", "stc", "stt", "pri",
        "lco", "lva", "lte", "sco", "cha", "hbo", "ico", "ite", "ame",
    }
)  # fmt: skip
_LGE_LEAVES = frozenset({"geo", "tim", "gga"})


class _Tags(NamedTuple):
    top: dict[str, str]
    crd: list[str]
    lge: dict[str, str]
    unknown: list[str]


def _sort_tags(records: list[_Record], ref: str | None) -> _Tags:
    """Sort the records into known tags, refusing a wrong structure (``snu=2``)."""
    top: dict[str, str] = {}
    crd: list[str] = []
    lge: dict[str, str] = {}
    lge_count = 0
    unknown: dict[str, None] = {}  # ordered set

    def wrong(what: str) -> ScaipError:
        return ScaipError(Snu.INVALID_FORMAT, "structure", ref, what)

    for path, text, nested in records[:-1]:
        name = path[1]
        if len(path) == 2:
            if name == "lge":
                lge_count += 1
                if lge_count > 1:
                    raise wrong("lge twice")
            elif name not in _MRQ_LEAVES:
                unknown[name] = None
            elif nested:
                raise wrong(f"{name} has child elements")
            elif name == "crd":
                if text:
                    crd.append(text)
            elif name in top:
                raise wrong(f"{name} twice")
            else:
                top[name] = text
        elif len(path) == 3 and name == "lge":
            child = path[2]
            if child not in _LGE_LEAVES:
                unknown[f"lge/{child}"] = None
            elif nested:
                raise wrong(f"lge/{child} has child elements")
            elif child in lge:
                raise wrong(f"lge/{child} twice")
            else:
                lge[child] = text
        # Deeper records belong to an unknown element (ignored with it) or to a value tag,
        # which is refused when its own record comes (it is "nested").
    return _Tags(top, crd, lge, list(unknown))


_REF_RE = re.compile(r"[A-Za-z0-9]{1,16}", re.ASCII)
_CID_RE = re.compile(r"[0-9]{1,32}", re.ASCII)
_VER_RE = re.compile(r"[0-9]{1,2}(?:\.[0-9]{1,2})?", re.ASCII)
_PRINTABLE_ASCII_RE = re.compile(r"[\x20-\x7e]+", re.ASCII)
_DIGITS_RE = re.compile(r"[0-9]+", re.ASCII)
_DEGREES = r"[+-]?[0-9]{1,3}(?:\.[0-9]{1,15})?"
_GEO_RE = re.compile(rf"({_DEGREES})[ \t]*,[ \t]*({_DEGREES})", re.ASCII)
_MAX_TIM_CHARS = 40
_MAX_GGA_CHARS = 100  # an NMEA sentence is at most 82 characters
_MAX_CRD_CHARS = 128  # not in the tables; a SIP URI with room to spare


class _Validator:
    """Reads one value tag at a time; every failure is a ``snu=3`` carrying the ref."""

    def __init__(self, ref: str) -> None:
        self.ref = ref

    def wrong(self, tag: str, detail: str = "") -> ScaipError:
        return ScaipError(Snu.WRONG_DATA, f"bad_{tag.replace('/', '_')}", self.ref, detail)

    def number(self, tag: str, text: str | None, max_digits: int) -> int | None:
        if not text:
            return None
        if len(text) > max_digits or _DIGITS_RE.fullmatch(text) is None:
            raise self.wrong(tag, f"{max_digits} digits at most")
        return int(text)

    def text(self, tag: str, text: str | None, max_chars: int, min_chars: int = 1) -> str | None:
        if not text:
            return None
        if not min_chars <= len(text) <= max_chars:
            raise self.wrong(tag, f"{min_chars}-{max_chars} characters")
        return text

    def ascii(self, tag: str, text: str | None, max_chars: int) -> str | None:
        if not text:
            return None
        if len(text) > max_chars or _PRINTABLE_ASCII_RE.fullmatch(text) is None:
            raise self.wrong(tag, f"printable ASCII, {max_chars} at most")
        return text

    def geo(self, text: str | None) -> tuple[float, float] | None:
        if not text:
            return None
        m = _GEO_RE.fullmatch(text)
        if m is None:
            raise self.wrong("lge/geo", "lat,lon in decimal degrees")
        lat, lon = float(m[1]), float(m[2])
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise self.wrong("lge/geo", "out of range")
        return lat, lon

    def tim(self, text: str | None) -> datetime | None:
        if not text:
            return None
        if len(text) > _MAX_TIM_CHARS:
            raise self.wrong("lge/tim", "too long")
        try:
            value = datetime.fromisoformat(text)
            if value.tzinfo is None:
                raise ValueError("no UTC offset")
            value.astimezone(UTC)  # year 1 with a positive offset cannot be converted
        except (ValueError, OverflowError) as error:
            raise self.wrong("lge/tim", str(error)) from None
        return value


def parse_mrq(body: bytes, *, max_bytes: int = MAX_MRQ_BYTES) -> Mrq:
    """Parse and validate one ``<mrq>`` document; raises ``ScaipError`` with the ``snu``.

    Checks run in this order, so the most basic problem is the one reported: size (1),
    XML and structure (2), ``ref`` (10 missing, 3 malformed), ``cid``/``dty`` (7), then
    every value against its table row (3). Empty value tags count as absent.
    """
    records = _read_document(body, "mrq", max_bytes)
    ref_texts = [r.text for r in records if r.path == ("mrq", "ref")]
    readable_ref = ref_texts[0] if ref_texts and _REF_RE.fullmatch(ref_texts[0]) else None
    tags = _sort_tags(records, readable_ref)
    top = tags.top.get
    ref = top("ref")
    if not ref:
        raise ScaipError(Snu.REF_MISSING, "ref_missing")
    if readable_ref is None:
        raise ScaipError(Snu.WRONG_DATA, "bad_ref", None, "1-16 of [A-Za-z0-9]")
    for tag in ("cid", "dty"):
        if not top(tag):
            raise ScaipError(Snu.MANDATORY_MISSING, f"{tag}_missing", ref)
    v = _Validator(ref)
    cid = top("cid", "")
    if _CID_RE.fullmatch(cid) is None:
        raise v.wrong("cid", "digits, 32 at most")
    dty = v.number("dty", top("dty"), 4)
    assert dty is not None  # checked as present above
    mty_text = top("mty")
    try:
        # Case is forgiven: a heartbeat refused over "pi" would raise a false link alarm.
        mty = MessageType(mty_text.upper()) if mty_text else MessageType.MESSAGE
    except ValueError:
        raise v.wrong("mty", "ME, RE, IN or PI") from None
    ver = top("ver") or DEFAULT_VERSION
    if _VER_RE.fullmatch(ver) is None:
        raise v.wrong("ver", "NN.NN")
    pri = v.number("pri", top("pri"), 2) or 0
    if pri > 9:
        raise v.wrong("pri", "0-9")
    return Mrq(
        ref=ref,
        cid=cid,
        dty=dty,
        mty=mty,
        ver=ver,
        stc=v.number("stc", top("stc"), 4),
        pri=pri,
        did=v.ascii("did", top("did"), 16),
        dco=v.number("dco", top("dco"), 3),
        dte=v.text("dte", top("dte"), MAX_TEXT_CHARS),
        stt=v.text("stt", top("stt"), MAX_TEXT_CHARS),
        crd=tuple(v.text("crd", c, _MAX_CRD_CHARS) or "" for c in tags.crd),
        lco=v.number("lco", top("lco"), 3),
        lva=v.text("lva", top("lva"), 2),
        lte=v.text("lte", top("lte"), MAX_TEXT_CHARS),
        geo=v.geo(tags.lge.get("geo")),
        tim=v.tim(tags.lge.get("tim")),
        gga=v.ascii("lge/gga", tags.lge.get("gga"), _MAX_GGA_CHARS),
        hbo=v.number("hbo", top("hbo"), 3),
        sco=top("sco") or None,
        cha=top("cha") or None,
        ico=top("ico") or None,
        ite=top("ite") or None,
        ame=top("ame") or None,
        unknown=tuple(tags.unknown),
    )


# --- <mrs> -------------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all; replaced so that our reply is always well formed.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _NOT_XML_CHAR.sub("\ufffd", text)


def encode_mrs(
    ref: str | None,
    snu: int,
    *,
    ste: str | None = None,
    mre: int | None = None,
    cre: int | None = None,
    tnu: str | None = None,
    hbi: int | None = None,
) -> bytes:
    """One compact UTF-8 ``<mrs>`` document, tags in table order (PROTOCOLS.md 2.3).

    ``ref`` None (the request had none) gives an empty ``<ref></ref>``, since the tag is
    mandatory. ``cre`` is written with two digits (``01``-``62``, as the table writes the
    callback window); the other numbers plainly. Arguments out of their table's range are
    our own bug, so they raise ``ValueError`` rather than reach a device.
    """
    if not 0 <= snu <= 99:
        raise ValueError(f"snu {snu} out of 0-99")
    if mre is not None and not 0 <= mre <= 3:
        raise ValueError(f"mre {mre} out of 0-3")
    if cre is not None and not 1 <= cre <= 62:
        raise ValueError(f"cre {cre} out of 1-62")
    if hbi is not None and not 1 <= hbi <= 1440:
        raise ValueError(f"hbi {hbi} out of 1-1440")
    parts = [f"<mrs><ref>{_escape(ref or '')}</ref><snu>{int(snu)}</snu>"]
    if ste is not None:
        parts.append(f"<ste>{_escape(ste)}</ste>")
    if mre is not None:
        parts.append(f"<mre>{mre}</mre>")
    if cre is not None:
        parts.append(f"<cre>{cre:02d}</cre>")
    if tnu is not None:
        parts.append(f"<tnu>{_escape(tnu)}</tnu>")
    if hbi is not None:
        parts.append(f"<hbi>{hbi}</hbi>")
    parts.append("</mrs>")
    return "".join(parts).encode("utf-8")


def parse_mrs(body: bytes, *, max_bytes: int = MAX_MRQ_BYTES) -> Mrs:
    """Read an ``<mrs>`` (the device's side: simulator and tests); raises ``ScaipError``."""
    records = _read_document(body, "mrs", max_bytes)
    values: dict[str, str] = {}
    for path, text, nested in records[:-1]:
        if len(path) != 2:
            continue
        if path[1] in values or nested:
            raise ScaipError(Snu.INVALID_FORMAT, "structure", None, path[1])
        values[path[1]] = text
    ref = values.get("ref") or None
    if "snu" not in values:
        raise ScaipError(Snu.MANDATORY_MISSING, "snu_missing", ref)

    def number(tag: str, max_digits: int) -> int | None:
        text = values.get(tag)
        if not text:
            return None
        if len(text) > max_digits or _DIGITS_RE.fullmatch(text) is None:
            raise ScaipError(Snu.WRONG_DATA, f"bad_{tag}", ref)
        return int(text)

    snu = number("snu", 2)
    if snu is None:
        raise ScaipError(Snu.MANDATORY_MISSING, "snu_missing", ref)
    return Mrs(
        ref=ref,
        snu=snu,
        ste=values.get("ste") or None,
        mre=number("mre", 1),
        cre=number("cre", 2),
        tnu=values.get("tnu") or None,
        hbi=number("hbi", 4),
    )


# --- events -----------------------------------------------------------------------------


class Classification(NamedTuple):
    kind: EventKind
    condition: Condition
    unknown_code: bool  # dty or stc is not in our tables (or is vendor specific)


def classify(dty: int, stc: int | None) -> Classification:
    """The taxonomy kind of a (device type, status code) pair: the rule of ``scaip_codes``.

    The status code's kind wins over the device's (battery low on a fall detector is
    BATTERY_LOW); an alarm status, an absent status, or a status that keeps the device's
    kind (restoral, open...) gives the device type's kind. An unknown status is an
    OTHER_ALARM; every event with an unknown dty or stc is flagged.
    """
    device = scaip_codes.device_type(dty)
    status = scaip_codes.status_code(stc) if stc is not None else None
    unknown = device is None or (stc is not None and status is None)
    device_kind = device.kind if device is not None else EventKind.OTHER_ALARM
    if stc is None:
        return Classification(device_kind, Condition.ALARM, unknown)
    if status is None:
        return Classification(EventKind.OTHER_ALARM, Condition.ALARM, True)
    return Classification(status.kind or device_kind, status.condition, unknown or status.unmapped)


def event_priority(kind: EventKind, pri: int) -> Priority:
    """SCAIP ``pri`` on alarmd's scale (``scaip_codes.PRIORITY_BY_PRI``).

    0 (or absent) is the kind's default. A device may raise any event, but may not lower
    an alarm below its kind's default: the kind is what the centre knows about urgency.
    """
    table = scaip_codes.PRIORITY_BY_PRI
    mapped = table[pri] if 0 <= pri < len(table) else None
    default = kind.default_priority
    if mapped is None:
        return default
    if kind.category is Category.ALARM:
        return max(mapped, default)
    return mapped


def _code_name(code: int, name: str | None) -> str:
    if name is not None:
        return name
    return "vendor specific" if code in scaip_codes.VENDOR_SPECIFIC else "unknown"


def _attributes(mrq: Mrq, peer: str) -> dict[str, str]:
    """What the operator and the log need beyond the kind: device, location, message."""
    device = scaip_codes.device_type(mrq.dty)
    attrs = {
        "mty": mrq.mty.value,
        "ref": mrq.ref,
        "dty": f"{mrq.dty:04d}",
        "dty_name": _code_name(mrq.dty, device.name if device is not None else None),
    }
    if mrq.stc is not None:
        status = scaip_codes.status_code(mrq.stc)
        attrs["stc"] = f"{mrq.stc:04d}"
        attrs["stc_name"] = _code_name(mrq.stc, status.name if status is not None else None)
    if mrq.lco is not None:
        attrs["lco"] = f"{mrq.lco:03d}"
        attrs["lco_name"] = scaip_codes.location_name(mrq.lco) or "unknown"
    optional = {
        "peer": peer or None,
        "ver": mrq.ver if mrq.ver != DEFAULT_VERSION else None,
        "pri": str(mrq.pri) if mrq.pri else None,
        "did": mrq.did,
        "crd": " ".join(mrq.crd) or None,
        "lva": mrq.lva,
        "lte": mrq.lte,
        "geo": f"{mrq.geo[0]},{mrq.geo[1]}" if mrq.geo is not None else None,
        "tim": mrq.tim.isoformat() if mrq.tim is not None else None,
        "gga": mrq.gga,
        "hbo": str(mrq.hbo) if mrq.hbo is not None else None,
        "sco": mrq.sco,
        "cha": mrq.cha,
        "ico": mrq.ico,
        "ite": mrq.ite,
        "ame": mrq.ame,
        "unknown_tags": " ".join(mrq.unknown) or None,
    }
    attrs.update({k: v for k, v in optional.items() if v is not None})
    return attrs


def mrq_event(mrq: Mrq, *, peer: str, now: datetime, raw: bytes) -> Event:
    """The one event an ME, IN or RE request carries.

    ``source`` is the ``cid``: the controller's identity, whatever address it calls from
    (``peer``, the transport's view of the sender, is kept as an attribute). An IN or RE
    keeps the kind of its codes; ``attributes["mty"]`` tells intake to attach it to the
    open case (IN) or to flag the case because the device gave up (RE).
    """
    found = classify(mrq.dty, mrq.stc)
    code = f"SCAIP:dty={mrq.dty:04d}"
    if mrq.stc is not None:
        code += f"/stc={mrq.stc:04d}"
    text = "; ".join(t for t in (mrq.dte, mrq.stt) if t) or None
    return Event(
        protocol=PROTOCOL,
        source=mrq.cid,
        kind=found.kind,
        condition=found.condition,
        priority=event_priority(found.kind, mrq.pri),
        received_at=_utc(now),
        dedup_key=mrq.dedup_key,
        raw=raw,
        code=code,
        zone=f"{mrq.dco:03d}" if mrq.dco is not None else None,
        occurred_at=mrq.tim.astimezone(UTC) if mrq.tim is not None else None,
        text=text,
        flags=frozenset({Flag.UNKNOWN_CODE}) if found.unknown_code else frozenset(),
        attributes=MappingProxyType(_attributes(mrq, peer)),
    )


def _utc(dt: datetime) -> datetime:
    """Aware UTC; a naive ``now`` is taken to be UTC already."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _refuse(error: ScaipError) -> ScaipResult:
    reply = encode_mrs(error.ref, int(error.snu), ste=error.reason)
    return ScaipResult(
        mrq=None, snu=error.snu, reason=error.reason, ref=error.ref, reply_on_error=reply
    )


def handle_mrq(
    body: bytes,
    *,
    source: str,
    now: datetime,
    raw: bytes | None = None,
    max_bytes: int = MAX_MRQ_BYTES,
) -> ScaipResult:
    """Decide what one ``<mrq>`` body means. Never raises.

    ``source`` is the transport's description of the sender (SIP user and address), kept
    as the event's ``peer`` attribute; ``raw`` is what to store as the event's raw bytes
    (the whole SIP message, say), the body by default. A request that cannot be taken
    gets its ``reply_on_error`` at once; a heartbeat gets no event; anything else one
    event, to be committed before the transport answers ``snu=0`` or HOLD.
    """
    body = bytes(body)
    try:
        mrq = parse_mrq(body, max_bytes=max_bytes)
        if mrq.mty is MessageType.HEARTBEAT:
            return ScaipResult(mrq=mrq, ref=mrq.ref)
        event = mrq_event(mrq, peer=source, now=now, raw=body if raw is None else raw)
        return ScaipResult(mrq=mrq, events=(event,), ref=mrq.ref)
    except ScaipError as error:
        return _refuse(error)
    except Exception:  # our bug: answer "undefined" so the device tries its next action
        ref = _salvage_ref(body[:max_bytes])
        return _refuse(ScaipError(Snu.UNDEFINED, "internal_error", ref))

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

STUB: the types and signatures below are the contract; the implementation is being
written.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from alarmd.model import Event, EventKind

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
    key: bytes | None = None  # AES key, 16/24/32 bytes, already decoded from its format
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
        return self.message is not None and self.message.token == "NULL"


class Dc09Error(Exception):
    """The peer sent something we cannot take; ``reason`` is a short metric-safe label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

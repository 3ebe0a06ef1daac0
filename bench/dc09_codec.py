"""DC-09 codec micro-benchmark: microseconds per call of the pure codec, no I/O.

Cases: clear ADM-CID, clear SIA-DCS (1 event), SIA-DCS (2 events + xdata-free timestamp),
NULL, encrypted AES-128 ADM-CID, and ``Dc09Framer.feed`` per frame (one frame per read).
Each figure is the best of 5 ``timeit`` runs, divided by the number of calls per run.

Usage:  .venv/bin/python bench/dc09_codec.py [--number 20000]
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from datetime import UTC, datetime

from alarmd.protocols.dc09 import (
    Dc09Account,
    Dc09Framer,
    ReplyKind,
    encode_message,
    handle_frame,
)

NOW = datetime(2025, 1, 15, 12, 0, 5, tzinfo=UTC)
KEY128 = b"0123456789ABCDEF"
ACCOUNTS = {"10000": Dc09Account("10000"), "5678": Dc09Account("5678", key=KEY128)}


def _pad(n: int) -> bytes:
    return b"A" * n


def _cases() -> dict[str, Callable[[], object]]:
    lookup = ACCOUNTS.get
    frames = {
        "clear ADM-CID": encode_message(
            "ADM-CID", 1, "10000", "#10000|1100 01 001", receiver="1", line="1"
        ),
        "clear SIA-DCS (1 event)": encode_message(
            "SIA-DCS", 2, "10000", "#10000|Nri1/MA001", receiver="1", line="1"
        ),
        "SIA-DCS (2 events + timestamp)": encode_message(
            "SIA-DCS",
            3,
            "10000",
            "#10000|Nri1/MA001/FA002",
            receiver="1",
            line="1",
            timestamp=datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC),
        ),
        "NULL": encode_message("NULL", 4, "10000", "", receiver="1", line="1"),
        "encrypted AES-128 ADM-CID": encode_message(
            "ADM-CID",
            5,
            "5678",
            "#5678|1100 01 001",
            receiver="1",
            line="1",
            timestamp=datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC),
            key=KEY128,
            randbytes=_pad,
        ),
    }
    cases: dict[str, Callable[[], object]] = {}
    for name, frame in frames.items():
        result = handle_frame(frame, now=NOW, accounts=lookup, randbytes=_pad)
        assert result.reply_kind is ReplyKind.ACK, (name, result)

        def call(frame: bytes = frame) -> object:
            return handle_frame(frame, now=NOW, accounts=lookup, randbytes=_pad)

        cases[name] = call
    framer = Dc09Framer()
    frame = frames["clear ADM-CID"]
    assert framer.feed(frame) == [frame]
    cases["framer, per frame"] = lambda: framer.feed(frame)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per timeit run")
    args = parser.parse_args()
    for name, call in _cases().items():
        best = min(timeit.repeat(call, number=args.number, repeat=5))
        print(f"{name:32s} {best / args.number * 1e6:8.2f} us")


if __name__ == "__main__":
    main()

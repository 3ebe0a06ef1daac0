"""Time parse_native on hostile 16 KiB payloads (unterminated strings, deep nesting).

A consumer that spends seconds on one payload stalls every device behind it; the depth
scan must stay linear. Prints microseconds per payload (best of 5); asserts nothing.
Usage: .venv/bin/python bench/mqtt_hostile_json.py
"""

from __future__ import annotations

import timeit
from datetime import UTC, datetime

from alarmd.protocols.mqtt_events import parse_native

TOPIC = "alarmd/v1/eksempel-kommune/device/D-1/event"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PAYLOADS = {
    "escaped quotes, unterminated": b'"' + b'\\"' * 8000,
    "array of unterminated string": b'["' + b'\\"' * 8000,
    "object, backslashes": b'{"a": "' + b"\\" * 16000,
    "quote-bracket pairs": b'"[' * 8000,
    "10,000 open brackets": b"[" * 10_000,
    "valid native event": (
        b'{"schema": "alarmd.event/1", "id": "m-1", "kind": "fall", "text": "' + b"x" * 150 + b'"}'
    ),
}


def main() -> None:
    for name, payload in PAYLOADS.items():
        runs = timeit.repeat(lambda p=payload: parse_native(TOPIC, p, now=NOW), number=20, repeat=5)
        print(f"{name:32} {len(payload):6d} bytes  {min(runs) / 20 * 1e6:10.1f} us")


if __name__ == "__main__":
    main()

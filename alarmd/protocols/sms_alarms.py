"""SMS and ring alarms: a sender's number and text -> the taxonomy (PROTOCOLS.md 4 and 5). Pure.

Theory of operation
-------------------
Simple GSM alarm units report by SMS ("ALARM", "FALL", "Lavt batteri") or just call.
Configuration lists, per sender number, ordered text patterns (regular expressions, matched
case-insensitively anywhere in the text; the first match wins) and what a call from that
number means. A sender without patterns of its own uses ``DEFAULT_PATTERNS``.

Nothing is ever dropped (DESIGN.md invariant 3): a sender we do not know gives an
``other_alarm`` flagged ``unregistered``; a known sender's text that no pattern matches
gives an ``other_alarm`` flagged ``unknown_code``. The transport builds the ``Event`` from
the ``Classification`` with the SMS's own text, so an operator always sees what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from alarmd.model import Condition, EventKind, Flag, Priority


@dataclass(frozen=True, slots=True)
class TextPattern:
    """One pattern: a regular expression, searched case-insensitively, and what it means."""

    pattern: str
    kind: EventKind
    condition: Condition = Condition.ALARM
    priority: Priority | None = None  # None: the kind's default

    def __post_init__(self) -> None:
        re.compile(self.pattern, re.IGNORECASE)  # a bad pattern fails at configuration time

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text, re.IGNORECASE) is not None


# Ordered: the specific before the general ("Strøm tilbake" before "strøm").
DEFAULT_PATTERNS: tuple[TextPattern, ...] = (
    TextPattern(r"lavt\s+batteri|low\s+batt", EventKind.BATTERY_LOW),
    TextPattern(r"batteri\s+ok|battery\s+ok", EventKind.BATTERY_LOW, Condition.RESTORE),
    TextPattern(
        r"str[øo]m\s+(tilbake|ok)|power\s+(restored|ok)", EventKind.MAINS_LOST, Condition.RESTORE
    ),
    TextPattern(r"str[øo]mbrudd|str[øo]m\s+borte|power\s+(fail|lost)", EventKind.MAINS_LOST),
    TextPattern(r"\bfall", EventKind.FALL),
    TextPattern(r"brann|r[øo]yk|fire|smoke", EventKind.FIRE),
    TextPattern(r"vann|lekkasje|water|flood", EventKind.WATER),
    TextPattern(r"d[øo]r|door", EventKind.EXIT),
    TextPattern(r"inaktiv|inactiv", EventKind.INACTIVITY),
    TextPattern(r"sabotasje|tamper", EventKind.TAMPER),
    TextPattern(r"\btest\b", EventKind.TEST),
    TextPattern(r"avbrutt|avbryt|cancel", EventKind.CANCEL),
    TextPattern(r"alarm|sos|hjelp|help|n[øo]d", EventKind.ASSISTANCE),
)


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """One GSM unit: its patterns (before the defaults) and what a call from it means."""

    patterns: tuple[TextPattern, ...] = ()
    use_defaults: bool = True
    ring_kind: EventKind = EventKind.ASSISTANCE
    name: str = ""  # for the log and the operator


@dataclass(frozen=True, slots=True)
class Classification:
    kind: EventKind
    condition: Condition
    priority: Priority
    flags: frozenset[Flag]
    code: str  # "sms:<pattern>", "sms:unmatched", "ring"


def normalise_number(number: str) -> str:
    """``+47...`` form: ``0047...`` and eight-digit Norwegian numbers are rewritten; spaces go."""
    compact = re.sub(r"[\s-]", "", number)
    if compact.isdigit() and len(compact) == 8:
        return "+47" + compact
    if compact.startswith("00"):
        return "+" + compact[2:]
    return compact


@dataclass(frozen=True)
class SmsAlarmTable:
    """Sender number (normalised) -> its configuration."""

    senders: Mapping[str, SenderConfig] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, senders: Iterable[tuple[str, SenderConfig]]) -> SmsAlarmTable:
        return cls(MappingProxyType({normalise_number(n): c for n, c in senders}))

    def sender(self, number: str) -> SenderConfig | None:
        return self.senders.get(normalise_number(number))

    def classify_sms(self, sender: str, text: str) -> Classification:
        config = self.sender(sender)
        if config is None:
            return _other(Flag.UNREGISTERED, "sms:unregistered")
        patterns = config.patterns + (DEFAULT_PATTERNS if config.use_defaults else ())
        for pattern in patterns:
            if pattern.matches(text):
                return Classification(
                    pattern.kind,
                    pattern.condition,
                    pattern.priority or pattern.kind.default_priority,
                    frozenset(),
                    f"sms:{pattern.pattern}"[:120],
                )
        return _other(Flag.UNKNOWN_CODE, "sms:unmatched")

    def classify_ring(self, caller: str) -> Classification:
        config = self.sender(caller)
        if config is None:
            return _other(Flag.UNREGISTERED, "ring:unregistered")
        kind = config.ring_kind
        return Classification(kind, Condition.ALARM, kind.default_priority, frozenset(), "ring")


def _other(flag: Flag, code: str) -> Classification:
    kind = EventKind.OTHER_ALARM
    return Classification(kind, Condition.ALARM, kind.default_priority, frozenset({flag}), code)

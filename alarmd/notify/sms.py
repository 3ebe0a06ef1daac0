"""The SMS channel on the outbox, and SMS replies as acceptances.

Theory of operation
-------------------
``SmsChannel`` is the outbox's ``"sms"`` channel: for each outbox row it writes one short
Norwegian text (``notification_text``: ``Alarm 123: fall hos Astrid, Eksempelveien 1.
Svar OK 123 for å ta den.``) and sends it through the modem transport (``AT+CMGS``,
concatenated when long). Texts are kept to the GSM 7-bit alphabet where a letter has a
plain equivalent (``fit_gsm7``), so a message costs 160 characters, not 70. One message
at a time goes to the modem (the modem is one queue anyway), and no more than
``max_per_minute`` leave per minute; beyond that, and whenever the modem is down, the
delivery fails *retryably* and the row waits in the outbox (Gammu SMSD's "storage is the
queue"). A row whose payload holds ``text`` is sent as it is (answers to replies).

``SmsReplies`` turns replies into acceptances. The transport offers it every incoming SMS
first (``handle(sender, text)``); a sender the outbox never notified is not a reply and
goes on as an SMS alarm. From a notified number, ``OK``, ``OK 123``, ``1`` or ``JA 123``
accept a case for the person that number was notified as: the numbered case, or with no
number the latest one. Anything else, or a number we did not notify them about, gets a
short helpful answer, queued in the outbox like any SMS. The acceptance goes through
``Engine.accept`` (so it is committed before the SMS is deleted from the SIM) and a short
confirmation or refusal is sent back.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import Counter

from alarmd.clock import Clock
from alarmd.metrics import REGISTRY
from alarmd.notify.outbox import DeliveryError, NewOutboxRow, OutboxItem, enqueue_job
from alarmd.protocols import sms
from alarmd.store.db import Store
from alarmd.transports.modem import ModemCommandError, ModemUnavailable

log = structlog.get_logger(__name__)

SMS_REPLIES = Counter(
    "alarmd_sms_replies_total",
    "SMS replies from notified numbers, by what they did.",
    ["result"],  # accepted, refused, unknown_case, not_understood
    registry=REGISTRY,
)

# What the carer reads: event kinds in Norwegian (bokmål), short.
KIND_WORDS: Mapping[str, str] = {
    "assistance": "trygghetsalarm",
    "fall": "fall",
    "inactivity": "inaktivitet",
    "fire": "brannalarm",
    "gas": "gassalarm",
    "water": "vannlekkasje",
    "exit": "dør/vandring",
    "bed_exit": "ute av seng",
    "epilepsy": "epilepsi",
    "medication": "medisin",
    "panic": "overfall",
    "intruder": "innbrudd",
    "other_alarm": "alarm",
    "battery_low": "lavt batteri",
    "mains_lost": "strømbrudd",
    "link_lost": "linjebrudd",
    "tamper": "sabotasje",
    "device_fault": "feil på utstyr",
    "radio_supervision": "radiotilsyn",
    "test": "test",
}


def fit_gsm7(text: str) -> str:
    """``text`` with characters outside GSM 7-bit replaced by their plain letter where one
    exists (é stays, ō becomes o); what has no such letter is kept (the SMS goes UCS-2)."""
    out: list[str] = []
    for ch in text:
        if sms.gsm7_encodable(ch):
            out.append(ch)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out.append(base if base and sms.gsm7_encodable(base) else ch)
    return "".join(out)


def notification_text(payload: Mapping[str, Any]) -> str:
    """The SMS for one outbox row: what, where, and how to accept."""
    if isinstance(payload.get("text"), str):
        return fit_gsm7(payload["text"])
    case_id = payload.get("case_id")
    kind = str(payload.get("kind") or "")
    what = KIND_WORDS.get(kind, kind.replace("_", " ") or "alarm")
    who = f" hos {payload['first_name']}" if payload.get("first_name") else ""
    where = f", {payload['address']}" if payload.get("address") else ""
    accept = f" Svar OK {case_id} for å ta den." if case_id is not None else ""
    return fit_gsm7(f"Alarm {case_id}: {what}{who}{where}.{accept}")


class SmsSender(Protocol):
    async def send_sms(
        self, number: str, text: str, *, reference: int | None = None
    ) -> list[int]: ...


class SmsChannel:
    """The outbox's ``sms`` channel: one message at a time through the modem, rate-limited."""

    name = "sms"

    def __init__(self, sender: SmsSender, clock: Clock, *, max_per_minute: int = 30) -> None:
        if max_per_minute < 1:
            raise ValueError("max_per_minute must be at least 1")
        self._sender = sender
        self._clock = clock
        self._max_per_minute = max_per_minute
        self._sent_at: deque[float] = deque()
        self._lock = asyncio.Lock()

    def _rate_wait(self) -> float:
        """Seconds until another SMS may go; 0 if one may go now."""
        now = self._clock.monotonic()
        while self._sent_at and now - self._sent_at[0] >= 60.0:
            self._sent_at.popleft()
        if len(self._sent_at) < self._max_per_minute:
            return 0.0
        return 60.0 - (now - self._sent_at[0])

    async def deliver(self, item: OutboxItem) -> None:
        text = notification_text(item.payload)
        async with self._lock:
            wait = self._rate_wait()
            if wait > 0:
                raise DeliveryError("sms rate limit", retryable=True, retry_after=wait)
            self._sent_at.append(self._clock.monotonic())
            try:
                await self._sender.send_sms(item.address, text, reference=item.id % 256)
            except sms.SmsUsageError as exc:
                raise DeliveryError(f"not a phone number: {exc}", retryable=False) from None
            except ModemUnavailable as exc:
                raise DeliveryError(f"modem unavailable: {exc}", retryable=True) from None
            except ModemCommandError as exc:
                raise DeliveryError(f"modem refused: {exc}", retryable=True) from None


# --------------------------------------------------------------------------- replies

_REPLY = re.compile(
    r"^\s*(?:(?:ok|ja)(?![a-zæøå])|1(?![0-9a-zæøå]))\s*[.!]?\s*(?:(\d{1,9})\s*[.!]?)?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ParsedReply:
    case_id: int | None  # None: the latest case


def parse_reply(text: str) -> ParsedReply | None:
    """``OK``, ``ok 123``, ``1``, ``Ja 123.`` -> a reply; anything else -> None."""
    m = _REPLY.match(text)
    if m is None:
        return None
    return ParsedReply(int(m.group(1)) if m.group(1) else None)


class Acceptor(Protocol):
    async def accept(self, case_id: int, who: str, *, is_operator: bool) -> Any: ...


_NOTIFIED = (
    "SELECT case_id, person FROM outbox WHERE channel = 'sms' AND address = ?"
    " AND status IN ('sent', 'pending') AND case_id IS NOT NULL ORDER BY id DESC LIMIT 50"
)


class SmsReplies:
    """Replies from notified numbers -> ``engine.accept``; answers go out via the outbox."""

    def __init__(
        self,
        store: Store,
        engine: Acceptor,
        clock: Clock,
        *,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._engine = engine
        self._clock = clock
        self._wake = wake
        self._answers = 0

    async def handle(self, sender: str, text: str) -> bool:
        """True if ``sender`` was notified by SMS (the message is a reply and is handled)."""
        async with self._store.reader.execute(_NOTIFIED, (sender,)) as cursor:
            rows = [(int(r[0]), str(r[1])) for r in await cursor.fetchall()]
        if not rows:
            return False
        latest_case, latest_person = rows[0]
        reply = parse_reply(text)
        if reply is None:
            SMS_REPLIES.labels("not_understood").inc()
            await self._answer(
                sender, latest_person, None, f"Svar OK {latest_case} for å ta alarm {latest_case}."
            )
            return True
        case_id = latest_case if reply.case_id is None else reply.case_id
        person = next((p for c, p in rows if c == case_id), None)
        if person is None:
            SMS_REPLIES.labels("unknown_case").inc()
            await self._answer(
                sender,
                latest_person,
                None,
                f"Fant ingen alarm {case_id} til deg. Svar OK {latest_case}"
                f" for å ta alarm {latest_case}.",
            )
            return True
        result = await self._engine.accept(case_id, person, is_operator=False)
        rejected = getattr(result, "rejected", None)
        if rejected:
            SMS_REPLIES.labels("refused").inc()
            log.info("sms_reply_refused", case_id=case_id, person=person, reason=rejected)
            await self._answer(
                sender, person, case_id, f"Alarm {case_id} kan ikke tas (tatt eller avsluttet)."
            )
        else:
            SMS_REPLIES.labels("accepted").inc()
            log.info("sms_reply_accepted", case_id=case_id, person=person)
            await self._answer(sender, person, case_id, f"Takk. Du har tatt alarm {case_id}.")
        return True

    async def _answer(self, number: str, person: str, case_id: int | None, text: str) -> None:
        """Queue an answer in the outbox (durable, rate-limited, retried like any SMS)."""
        now = self._clock.now()
        self._answers += 1
        row = NewOutboxRow(
            case_id=None,  # an answer is not a notification: never a reply target itself
            channel="sms",
            person=person,
            address=number,
            payload={"text": text, "answer_to_case": case_id},
            dedup_key=f"sms-answer:{number}:{now.isoformat()}:{self._answers}",
        )
        try:
            await self._store.writer.submit(enqueue_job([row], now))
        except Exception:
            log.exception("sms_answer_not_queued", person=person)
            return
        if self._wake is not None:
            self._wake()

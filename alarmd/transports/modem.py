"""The GSM modem transport: SMS and ring alarms in, SMS out, over a serial port.

Theory of operation
-------------------
One ``ModemTransport`` owns one serial port (pyserial-asyncio-fast) and drives the pure
``alarmd.protocols.at.AtDialogue`` over it. It runs as one task (``run``) that opens the
port, initialises the modem (``at.STARTUP``, SIM PIN, registration, signal) and then runs a
*session* of three tasks until the port fails or a command times out:

* the reader feeds bytes to the dialogue and routes its events: a command's result to the
  one command in flight, unsolicited codes (``+CMTI``, ``RING``/``+CLIP``, ``+CREG``) to
  the work queue;
* the worker takes work one item at a time: list the SIM (``AT+CMGL=4``, at the start of
  every session, so what arrived while alarmd or the port was down is read), read one SMS
  (``AT+CMGR``), answer a ring (event, then ``ATH``), poll signal and registration;
* a ticker that queues the poll and expires incomplete concatenated SMS.

An SMS becomes an ``Event`` through ``alarmd.protocols.sms_alarms`` and is handed to
``intake.submit``; it is deleted from the SIM (``AT+CMGD``) only once that returned, i.e.
after the durable commit (DESIGN.md invariant 1). If the store fails the SMS stays on the
SIM and the next listing tries again. A message from a number that alarmd notified is first
offered to the reply handler (``set_reply_handler``, see ``alarmd.notify.sms``); if it takes
it, the SMS is deleted after the handler returned (its acceptance is committed by then).
Concatenated parts wait on the SIM until the whole text is committed.

``send_sms`` is the outgoing side (the SMS channel calls it): one ``AT+CMGS`` per part,
sharing the one-command-in-flight lock with the worker. When the modem is not ready it
raises ``ModemUnavailable``, which the channel turns into a retryable failure: outgoing SMS
wait in the durable outbox, never here.

When the port fails, the session ends, the state goes ``down`` and the port is re-opened
with a doubling backoff. A modem that stays down or off the network for
``down_alarm_after_s`` raises a technical alarm (``link_lost`` from protocol ``modem``,
source the modem's name) and its restore when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog
from prometheus_client import Counter, Gauge

from alarmd.clock import Clock
from alarmd.metrics import REGISTRY
from alarmd.model import Condition, Event, EventKind, Flag, Receipt
from alarmd.protocols import at, sms
from alarmd.protocols.sms_alarms import Classification, SmsAlarmTable, normalise_number

log = structlog.get_logger(__name__)

MODEM_UP = Gauge(
    "alarmd_modem_up",
    "1 when the GSM modem is open, initialised and registered on the network.",
    ["modem"],
    registry=REGISTRY,
)
MODEM_SIGNAL_DBM = Gauge(
    "alarmd_modem_signal_dbm",
    "The GSM modem's received signal strength (AT+CSQ), in dBm; NaN when unknown.",
    ["modem"],
    registry=REGISTRY,
)
MODEM_REGISTERED = Gauge(
    "alarmd_modem_registered",
    "1 when the GSM modem is registered on a network (home or roaming).",
    ["modem"],
    registry=REGISTRY,
)
MODEM_SMS_RECEIVED = Counter(
    "alarmd_modem_sms_received_total",
    "SMS read from the modem, by what became of them.",
    ["modem", "result"],  # alarm, reply, undecodable, partial, store_failed
    registry=REGISTRY,
)
MODEM_RINGS = Counter(
    "alarmd_modem_rings_total",
    "Incoming calls (ring alarms) answered with an event and a hang-up.",
    ["modem"],
    registry=REGISTRY,
)
MODEM_REOPENS = Counter(
    "alarmd_modem_reopens_total",
    "Times the modem's port was lost and opened again.",
    ["modem"],
    registry=REGISTRY,
)

PROTOCOL = "sms"  # events from GSM units: SMS alarms and ring alarms
MODEM_PROTOCOL = "modem"  # the modem's own technical alarms


class ModemUnavailable(Exception):
    """The modem is not open and ready (down, re-opening, no SIM, timed out)."""


class ModemCommandError(Exception):
    """The modem answered a command with an error."""

    def __init__(self, command: str, error: at.ErrorCode | None) -> None:
        super().__init__(f"{command}: {error}")
        self.command = command
        self.error = error


class ModemState(enum.StrEnum):
    DOWN = "down"  # the port is closed or failed
    STARTING = "starting"  # open, initialising
    SIM_LOCKED = "sim_locked"  # the SIM wants a PIN/PUK we do not have (or rejected ours)
    NO_NETWORK = "no_network"  # initialised, not registered
    READY = "ready"


class Submitter(Protocol):
    async def submit(self, events: Sequence[Event]) -> Receipt: ...


ReplyHandler = Callable[[str, str], Awaitable[bool]]
"""(sender, text) -> True if the message was a reply and is handled (delete it)."""


@dataclass(slots=True)
class _Parts:
    """The parts of one concatenated SMS seen so far, still on the SIM."""

    first_seen: datetime
    indexes: set[int] = field(default_factory=set)
    pdus: dict[int, str] = field(default_factory=dict)  # seq -> pdu
    first: sms.Deliver | None = None  # the lowest sequence seen


class ModemTransport:
    """One GSM modem on a serial port: see the module docstring."""

    def __init__(
        self,
        port: str,
        intake: Submitter,
        clock: Clock,
        table: SmsAlarmTable,
        *,
        name: str = "modem",
        baudrate: int = 115200,
        pin: str | None = None,
        command_timeout_s: float = 10.0,
        send_timeout_s: float = 60.0,
        reopen_min_s: float = 1.0,
        reopen_max_s: float = 60.0,
        poll_interval_s: float = 60.0,
        partial_timeout_s: float = 600.0,
        down_alarm_after_s: float = 120.0,
    ) -> None:
        self.port = port
        self.name = name
        self._intake = intake
        self._clock = clock
        self.table = table
        self._baudrate = baudrate
        self._pin = pin
        self._command_timeout = command_timeout_s
        self._send_timeout = send_timeout_s
        self._reopen_min = reopen_min_s
        self._reopen_max = reopen_max_s
        self._poll_interval = poll_interval_s
        self._partial_timeout = timedelta(seconds=partial_timeout_s)
        self._down_alarm_after = down_alarm_after_s
        self._reply_handler: ReplyHandler | None = None

        self.state = ModemState.DOWN
        self.rssi: int | None = None
        self.signal_dbm: int | None = None
        self.registration: int | None = None  # +CREG stat
        self.ready = asyncio.Event()

        self._writer: asyncio.StreamWriter | None = None
        self._dialogue = at.AtDialogue()
        self._lock = asyncio.Lock()
        self._done: asyncio.Future[at.CommandDone] | None = None
        self._prompt: asyncio.Future[None] | None = None
        self._lost = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._partials: dict[tuple[str, int, int], _Parts] = {}
        self._in_call = False
        self._relist = False
        self._down_alarm_raised = False
        self._down_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._reference = 0
        self._background: set[asyncio.Task[None]] = set()
        self._set_state(ModemState.DOWN)

    # ----------------------------------------------------------------- public

    @property
    def registered(self) -> bool:
        return self.registration is not None and at.is_registered(self.registration)

    def set_reply_handler(self, handler: ReplyHandler | None) -> None:
        self._reply_handler = handler

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def send_sms(self, number: str, text: str, *, reference: int | None = None) -> list[int]:
        """Send ``text`` (concatenated when long); returns the modem's message references.

        Raises ``ModemUnavailable`` when the modem is not ready or vanished meanwhile, and
        ``ModemCommandError`` when it refused a part (``+CMS ERROR``).
        """
        if self.state not in (ModemState.READY, ModemState.NO_NETWORK):
            raise ModemUnavailable(f"modem {self.state.value}")
        if reference is None:
            self._reference = (self._reference + 1) % 256
            reference = self._reference
        refs: list[int] = []
        for part in sms.encode_submit(number, text, reference=reference % 256):
            done = await self._command(
                f"AT+CMGS={part.tpdu_length}", data=part.pdu_hex, wait_s=self._send_timeout
            )
            if not done.ok:
                raise ModemCommandError("AT+CMGS", done.error)
            refs.append(at.parse_cmgs(done.lines))
        return refs

    # ----------------------------------------------------------------- the reopen loop

    async def run(self) -> None:
        """Open, initialise, serve; on failure re-open with backoff. Cancel to stop."""
        delay = self._reopen_min
        first = True
        while True:
            if not first:
                MODEM_REOPENS.labels(self.name).inc()
            first = False
            served = False
            try:
                served = await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an open that failed, a modem that misbehaved
                log.warning("modem_session_ended", modem=self.name, error=repr(exc))
            finally:
                self._close()
            self._check_down()
            if served:
                delay = self._reopen_min
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reopen_max)

    async def _session(self) -> bool:
        import serial_asyncio_fast

        self._set_state(ModemState.STARTING)
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=self.port, baudrate=self._baudrate
        )
        self._writer = writer
        self._dialogue = at.AtDialogue()
        self._lost = asyncio.Event()
        self._queue = asyncio.Queue()
        self._partials.clear()
        self._in_call = False
        tasks = [asyncio.create_task(self._read_loop(reader), name=f"{self.name}-read")]
        try:
            await self._initialise()
            log.info("modem_ready", modem=self.name, port=self.port, state=self.state.value)
            self._queue.put_nowait(("list", None))
            tasks.append(asyncio.create_task(self._work_loop(), name=f"{self.name}-work"))
            tasks.append(asyncio.create_task(self._tick_loop(), name=f"{self.name}-tick"))
            lost = asyncio.create_task(self._lost.wait())
            await asyncio.wait([lost, *tasks], return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("modem_task_failed", modem=self.name, error=repr(task.exception()))
            return True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _close(self) -> None:
        self._mark_lost(ModemUnavailable("modem port closed"))
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        self._set_state(ModemState.DOWN)

    def _mark_lost(self, exc: Exception) -> None:
        self._lost.set()
        for fut in (self._done, self._prompt):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be waiting any more

    # ----------------------------------------------------------------- state

    def _set_state(self, state: ModemState) -> None:
        if state is not self.state:
            log.info("modem_state", modem=self.name, state=state.value)
        self.state = state
        up = state is ModemState.READY
        MODEM_UP.labels(self.name).set(1 if up else 0)
        MODEM_REGISTERED.labels(self.name).set(1 if self.registered else 0)
        if up:
            self.ready.set()
            self._down_since = None
            if self._down_alarm_raised:
                self._down_alarm_raised = False
                self._spawn(self._technical(Condition.RESTORE, "modem ready again"))
        else:
            self.ready.clear()
            if self._down_since is None:
                self._down_since = self._clock.monotonic()

    def _check_down(self) -> None:
        """Raise the technical alarm once the modem has been unready for long enough.

        Checked on the transport's own beat (each re-open attempt, each poll) against the
        clock, so a fake clock drives it in tests.
        """
        since = self._down_since
        if since is None or self._down_alarm_raised:
            return
        if self._clock.monotonic() - since >= self._down_alarm_after:
            self._down_alarm_raised = True
            self._spawn(self._technical(Condition.ALARM, f"modem {self.state.value}"))

    async def _technical(self, condition: Condition, text: str) -> None:
        now = self._clock.now()
        kind = EventKind.LINK_LOST
        event = Event(
            protocol=MODEM_PROTOCOL,
            source=self.name,
            kind=kind,
            condition=condition,
            priority=kind.default_priority,
            received_at=now,
            dedup_key=f"modem:{self.name}:{condition.value}:{now.isoformat()}",
            raw=text.encode(),
            code=f"modem:{self.state.value}",
            text=text,
        )
        try:
            await self._intake.submit([event])
        except Exception:
            log.exception("modem_technical_alarm_failed", modem=self.name)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ----------------------------------------------------------------- commands

    async def _command(
        self, text: str, *, data: str | None = None, wait_s: float | None = None
    ) -> at.CommandDone:
        async with self._lock:
            writer = self._writer
            if writer is None or self._lost.is_set():
                raise ModemUnavailable("modem port closed")
            loop = asyncio.get_running_loop()
            done: asyncio.Future[at.CommandDone] = loop.create_future()
            self._done = done
            prompt: asyncio.Future[None] | None = None
            if data is not None:
                prompt = self._prompt = loop.create_future()
            writer.write(self._dialogue.send(at.Command(text)))
            try:
                async with asyncio.timeout(wait_s or self._command_timeout):
                    if prompt is not None:
                        # an error (+CMS ERROR) may come instead of the prompt
                        await asyncio.wait((prompt, done), return_when=asyncio.FIRST_COMPLETED)
                        if not done.done():
                            prompt.result()  # raises if the port was lost meanwhile
                            assert data is not None
                            writer.write(self._dialogue.send_data(data))
                    return await done
            except TimeoutError:
                self._dialogue.abandon()
                log.warning("modem_command_timeout", modem=self.name, command=text)
                self._mark_lost(ModemUnavailable("timeout"))
                raise ModemUnavailable(f"{text}: no answer") from None
            finally:
                self._done = self._prompt = None

    async def _ok(self, text: str) -> at.CommandDone:
        done = await self._command(text)
        if not done.ok:
            raise ModemCommandError(text, done.error)
        return done

    async def _initialise(self) -> None:
        for attempt in range(5):  # a modem that just booted may miss the first bytes
            try:
                if (await self._command("AT", wait_s=min(2.0, self._command_timeout))).ok:
                    break
            except ModemUnavailable:
                if attempt == 4:
                    raise
                self._lost.clear()
                self._dialogue = at.AtDialogue()
        await self._ok("ATE0")
        await self._ok("AT+CMEE=1")
        await self._unlock_sim()
        await self._poll()
        await self._ok("AT+CMGF=0")
        await self._ok("AT+CNMI=2,1,0,0,0")
        await self._ok("AT+CLIP=1")
        self._set_state(ModemState.READY if self.registered else ModemState.NO_NETWORK)

    async def _unlock_sim(self) -> None:
        for _ in range(10):
            done = await self._command("AT+CPIN?")
            if done.ok:
                status = at.parse_cpin(done.lines)
                if status == "READY":
                    return
                if status == "SIM PIN" and self._pin is not None:
                    pin_done = await self._command(f'AT+CPIN="{self._pin}"')
                    if pin_done.ok:
                        continue
                    log.error("modem_sim_pin_rejected", modem=self.name, error=str(pin_done.error))
                self._set_state(ModemState.SIM_LOCKED)
                raise ModemCommandError("AT+CPIN?", None)
            if done.error is not None and done.error.code == 14:  # SIM busy: it is booting
                await asyncio.sleep(0.5)
                continue
            raise ModemCommandError("AT+CPIN?", done.error)
        raise ModemCommandError("AT+CPIN?", None)

    async def _poll(self) -> None:
        done = await self._command("AT+CREG?")
        if done.ok and done.lines:
            self.registration = at.parse_creg(done.lines[0])[1]
        done = await self._command("AT+CSQ")
        if done.ok:
            self.rssi = at.parse_csq(done.lines)[0]
            self.signal_dbm = at.rssi_dbm(self.rssi)
        MODEM_SIGNAL_DBM.labels(self.name).set(
            float("nan") if self.signal_dbm is None else self.signal_dbm
        )
        if self.state in (ModemState.READY, ModemState.NO_NETWORK):
            self._set_state(ModemState.READY if self.registered else ModemState.NO_NETWORK)
        else:
            MODEM_REGISTERED.labels(self.name).set(1 if self.registered else 0)

    # ----------------------------------------------------------------- the reader

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                self._dialogue.receive_data(data)
                while True:
                    event = self._dialogue.next_event()
                    if isinstance(event, at.NeedData):
                        break
                    self._route(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the port went away (EIO on a vanished pty or USB device)
            log.warning("modem_read_failed", modem=self.name, error=repr(exc))
        self._mark_lost(ModemUnavailable("modem port lost"))

    def _route(self, event: at.Event) -> None:
        if isinstance(event, at.CommandDone):
            if self._done is not None and not self._done.done():
                self._done.set_result(event)
        elif isinstance(event, at.PromptForData):
            if self._prompt is not None and not self._prompt.done():
                self._prompt.set_result(None)
        elif isinstance(event, at.Unsolicited):
            self._urc(event)
        else:
            log.warning("modem_protocol_error", modem=self.name, reason=event.reason)

    def _urc(self, urc: at.Unsolicited) -> None:
        try:
            if urc.kind is at.UrcKind.CMTI:
                _, index = at.parse_cmti(urc.fields)
                self._queue.put_nowait(("read", index))
            elif urc.kind is at.UrcKind.CLIP:
                number = at.parse_clip(urc.fields)
                if not self._in_call:
                    self._in_call = True
                    self._queue.put_nowait(("ring", number))
            elif urc.kind in (at.UrcKind.NO_CARRIER, at.UrcKind.BUSY, at.UrcKind.NO_ANSWER):
                self._in_call = False
            elif urc.kind is at.UrcKind.CREG:
                self.registration = at.parse_creg(urc.line)[1]
                if self.state in (ModemState.READY, ModemState.NO_NETWORK):
                    self._set_state(ModemState.READY if self.registered else ModemState.NO_NETWORK)
            elif urc.kind is not at.UrcKind.RING:
                log.info("modem_urc", modem=self.name, line=urc.line)
        except at.AtParseError as exc:
            log.warning("modem_urc_unreadable", modem=self.name, line=urc.line, error=str(exc))

    # ----------------------------------------------------------------- the worker

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            self._queue.put_nowait(("poll", None))

    async def _work_loop(self) -> None:
        while True:
            what, arg = await self._queue.get()
            try:
                if what == "list":
                    await self._list()
                elif what == "read":
                    assert isinstance(arg, int)
                    await self._read(arg)
                elif what == "ring":
                    assert isinstance(arg, str)
                    await self._ring(arg)
                elif what == "poll":
                    await self._poll()
                    self._check_down()
                    await self._expire_partials()
                    if self._relist:
                        await self._list()
            except ModemUnavailable:
                return  # the session ends; the next one lists the SIM again
            except Exception:  # one bad message must not stop alarm intake
                log.exception("modem_work_failed", modem=self.name, work=what)

    async def _list(self) -> None:
        self._relist = False
        done = await self._command("AT+CMGL=4")
        if not done.ok:
            raise ModemCommandError("AT+CMGL=4", done.error)
        for index, _stat, pdu in at.parse_cmgl(done.lines):
            await self._handle(index, pdu)

    async def _read(self, index: int) -> None:
        if any(index in parts.indexes for parts in self._partials.values()):
            return  # a part we hold already
        done = await self._command(f"AT+CMGR={index}")
        if not done.ok:  # deleted meanwhile (the start-up listing got it first)
            log.info("modem_read_failed", modem=self.name, index=index, error=str(done.error))
            return
        _stat, pdu = at.parse_cmgr(done.lines)
        await self._handle(index, pdu)

    async def _delete(self, indexes: Sequence[int]) -> None:
        for index in sorted(indexes):
            done = await self._command(f"AT+CMGD={index}")
            if not done.ok:
                log.warning("modem_delete_failed", modem=self.name, index=index)

    async def _handle(self, index: int, pdu: str) -> None:
        now = self._clock.now()
        try:
            deliver = sms.decode_deliver(pdu)
        except sms.SmsError as exc:
            await self._undecodable(index, pdu, exc)
            return
        concat = deliver.concat
        if concat is None or concat[1] == 1:
            await self._message(deliver, deliver.text, [index], [pdu])
            return
        ref, total, seq = concat
        key = (deliver.sender, ref, total)
        parts = self._partials.setdefault(key, _Parts(first_seen=now))
        parts.indexes.add(index)
        if seq not in parts.pdus:
            parts.pdus[seq] = pdu
            if parts.first is None or (parts.first.concat or (0, 0, 99))[2] > seq:
                parts.first = deliver
        if len(parts.pdus) < total:
            MODEM_SMS_RECEIVED.labels(self.name, "partial").inc()
            return
        del self._partials[key]
        decoded = [sms.decode_deliver(parts.pdus[s]) for s in range(1, total + 1)]
        reassembler = sms.Reassembler()
        text: str | None = None
        for part in decoded:
            text = reassembler.add(part, now)
        assert text is not None
        await self._message(
            decoded[0], text, sorted(parts.indexes), [parts.pdus[s] for s in range(1, total + 1)]
        )

    async def _expire_partials(self) -> None:
        """Incomplete concatenated SMS older than the timeout: show what came, then delete."""
        now = self._clock.now()
        for key in [
            k for k, p in self._partials.items() if now - p.first_seen > self._partial_timeout
        ]:
            parts = self._partials.pop(key)
            _sender, _ref, total = key
            chunks: list[str] = []
            for seq in range(1, total + 1):
                if seq in parts.pdus:
                    chunks.append(sms.decode_deliver(parts.pdus[seq]).text)
                else:
                    chunks.append(sms.MISSING_PART_MARKER.format(seq=seq, total=total))
            assert parts.first is not None
            pdus = [parts.pdus[s] for s in sorted(parts.pdus)]
            await self._message(parts.first, "".join(chunks), sorted(parts.indexes), pdus)

    async def _message(
        self, deliver: sms.Deliver, text: str, indexes: Sequence[int], pdus: Sequence[str]
    ) -> None:
        sender = normalise_number(deliver.sender)
        if self._reply_handler is not None:
            try:
                is_reply = await self._reply_handler(sender, text)
            except Exception:
                # the SMS stays on the SIM and is offered again at the next listing
                log.exception("modem_reply_handler_failed", modem=self.name, source=sender)
                self._relist = True
                return
            if is_reply:
                MODEM_SMS_RECEIVED.labels(self.name, "reply").inc()
                await self._delete(indexes)
                return
        c = self.table.classify_sms(sender, text)
        event = self._event(sender, c, text, deliver.timestamp, pdus)
        await self._submit_then_delete(event, indexes, "alarm")

    async def _undecodable(self, index: int, pdu: str, exc: sms.SmsError) -> None:
        log.warning("modem_sms_undecodable", modem=self.name, reason=exc.reason, pdu=pdu)
        kind = EventKind.OTHER_ALARM
        now = self._clock.now()
        event = Event(
            protocol=PROTOCOL,
            source="unknown",
            kind=kind,
            condition=Condition.ALARM,
            priority=kind.default_priority,
            received_at=now,
            dedup_key="sms:undecodable:" + hashlib.sha256(pdu.encode()).hexdigest()[:32],
            raw=pdu.encode("ascii", "replace"),
            code=f"sms:undecodable:{exc.reason}",
            text=f"Uleselig SMS ({exc.reason})",
            flags=frozenset({Flag.UNKNOWN_CODE, Flag.UNREGISTERED}),
        )
        await self._submit_then_delete(event, [index], "undecodable")

    async def _submit_then_delete(self, event: Event, indexes: Sequence[int], result: str) -> None:
        try:
            await self._intake.submit([event])
        except Exception:
            # not committed: the SMS stays on the SIM and the next poll lists it again
            MODEM_SMS_RECEIVED.labels(self.name, "store_failed").inc()
            log.exception("modem_sms_not_committed", modem=self.name, source=event.source)
            self._relist = True
            return
        MODEM_SMS_RECEIVED.labels(self.name, result).inc()
        log.info("modem_sms_committed", modem=self.name, source=event.source, kind=event.kind.value)
        await self._delete(indexes)

    def _event(
        self,
        sender: str,
        c: Classification,
        text: str,
        timestamp: datetime,
        pdus: Sequence[str],
    ) -> Event:
        sent_at = timestamp.astimezone(UTC)
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        return Event(
            protocol=PROTOCOL,
            source=sender,
            kind=c.kind,
            condition=c.condition,
            priority=c.priority,
            received_at=self._clock.now(),
            dedup_key=f"sms:{sender}:{sent_at.isoformat()}:{digest}",
            raw="\n".join(pdus).encode("ascii", "replace"),
            code=c.code,
            occurred_at=sent_at,
            text=text,
            flags=c.flags,
        )

    async def _ring(self, number: str) -> None:
        try:
            caller = normalise_number(number) if number else "withheld"
            c = self.table.classify_ring(caller)
            now = self._clock.now()
            event = Event(
                protocol=PROTOCOL,
                source=caller,
                kind=c.kind,
                condition=c.condition,
                priority=c.priority,
                received_at=now,
                dedup_key=f"ring:{caller}:{now.isoformat()}",
                raw=f"RING +CLIP {number}".encode("ascii", "replace"),
                code=c.code,
                text=f"Anrop fra {caller}",
                flags=c.flags,
            )
            try:
                await self._intake.submit([event])
                MODEM_RINGS.labels(self.name).inc()
            except Exception:
                log.exception("modem_ring_not_committed", modem=self.name, source=caller)
            # hang up either way: a unit that hears no answer calls again, which is its retry
            await self._command("ATH")
        finally:
            self._in_call = False

"""A fake GSM modem on a pseudo-terminal, speaking real AT (PROTOCOLS.md section 4).

Theory of operation
-------------------
``ModemSimulator`` opens a pty pair (``os.openpty``) and plays the modem on the master
side; the transport opens ``path``, a symlink to the slave device, as it would open
``/dev/ttyUSB0``. The symlink is what survives an ``unplug()``/``plug()``: unplugging
closes both ends (the transport's reads fail as on a USB re-enumeration) and plugging
opens a fresh pty and points the symlink at it. The SIM storage survives, like a SIM.

It answers the commands alarmd uses: ``AT``, ``ATE0``/``ATE1``, ``AT+CMEE``, ``AT+CPIN?``
and ``AT+CPIN=<pin>``, ``AT+CREG?``, ``AT+CSQ``, ``AT+CMGF``, ``AT+CNMI``, ``AT+CLIP``,
``AT+CMGL=4``, ``AT+CMGR=<i>``, ``AT+CMGD=<i>``, ``AT+CMGS=<len>`` (prompt, PDU, Ctrl-Z,
``+CMGS: <mr>``) and ``ATH``. Anything else gets ``ERROR``.

Test hooks: ``inject_sms`` (store DELIVER PDUs built with ``alarmd.protocols.sms`` and
announce each with ``+CMTI``), ``ring`` (``RING`` + ``+CLIP``), ``urc_mid_response``
(lines slipped into the middle of the next multi-line answer), ``fail_next`` (an error
for the next command with a given prefix: SIM busy, ``+CMS ERROR``), ``unplug_on_send``
(vanish after the PDU of the next ``AT+CMGS``, before answering). It records what it was
sent (``sent``, decoded ``Submit`` values), what it deleted and every command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from alarmd.protocols import sms

CTRL_Z = 0x1A
CET = timezone(timedelta(hours=1))  # what a Norwegian SMSC stamps in winter
ESC = 0x1B


def _scts(when: datetime) -> bytes:
    """TP-SCTS: swapped BCD date and time, then the zone in signed quarter hours."""
    offset = when.utcoffset() or timedelta(0)
    quarters = int(offset.total_seconds() // 900)
    fields = [when.year % 100, when.month, when.day, when.hour, when.minute, when.second]
    out = bytearray((v % 10) << 4 | (v // 10) for v in fields)
    q = abs(quarters)
    tz = (q % 10) << 4 | (q // 10)
    if quarters < 0:
        tz |= 0x08
    out.append(tz)
    return bytes(out)


def build_deliver(
    sender: str,
    text: str,
    timestamp: datetime,
    *,
    reference: int = 0,
    smsc: str = "+4790002198",
) -> list[str]:
    """SMS-DELIVER PDUs (hex, with the SMSC part) for ``text`` from ``sender``.

    Reuses the SUBMIT encoder for the address and user data (GSM 7-bit or UCS-2,
    concatenated when long) and rewrites the header into a DELIVER's.
    """
    smsc_digits = smsc.lstrip("+")
    padded = smsc_digits + "F" * (len(smsc_digits) % 2)
    smsc_octets = bytes.fromhex(
        "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))
    )
    smsc_part = bytes((len(smsc_octets) + 1, 0x91)) + smsc_octets
    out: list[str] = []
    for part in sms.encode_submit(sender, text, reference=reference):
        tpdu = bytes.fromhex(part.pdu_hex)[1:]  # drop the "00" SMSC part
        first = tpdu[0]
        da_len = 2 + (tpdu[2] + 1) // 2
        address = tpdu[2 : 2 + da_len]
        pid, dcs = tpdu[2 + da_len], tpdu[3 + da_len]
        user_data = tpdu[4 + da_len :]  # no validity period: encode_submit was given none
        deliver_first = 0x04 | (first & 0x40)  # MTI 0, no more messages, UDHI kept
        deliver = (
            smsc_part
            + bytes((deliver_first,))
            + address
            + bytes((pid, dcs))
            + _scts(timestamp)
            + user_data
        )
        out.append(deliver.hex().upper())
    return out


@dataclass
class StoredSms:
    pdu: str
    stat: int = 0  # 0 received unread, 1 received read

    @property
    def tpdu_length(self) -> int:
        return len(self.pdu) // 2 - 1 - int(self.pdu[:2], 16)


@dataclass
class ModemSimulator:
    """A GSM modem on a pty. ``await start()``, open ``path``, ``await stop()``."""

    pin: str | None = None  # a SIM that wants a PIN until AT+CPIN=<pin>
    creg_stat: int = 1  # 1 home, 5 roaming, 0/2/3 not registered
    rssi: int = 20
    echo: bool = True  # a freshly powered modem echoes; ATE0 turns it off
    storage: dict[int, StoredSms] = field(default_factory=dict)
    sent: list[sms.Submit] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    hangups: int = 0
    plugged: bool = False

    def __post_init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="alarmd-modem-"))
        self.path = str(self._dir / "ttyGSM0")
        self._master: int | None = None
        self._slave: int | None = None
        self._inbuf = bytearray()
        self._pdu_len: int | None = None  # set while waiting for the PDU after "> "
        self._pin_ok = self.pin is None
        self._mr = 0
        self._mid_urcs: list[str] = []
        self._failures: list[tuple[str, str]] = []
        self._unplug_on_send = False
        self._changed = asyncio.Event()

    # -- life cycle

    async def start(self) -> None:
        self.plug()

    async def stop(self) -> None:
        self.unplug()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            self._dir.rmdir()

    def plug(self) -> None:
        """Power on (again): a fresh pty behind the same ``path``; echo on, PIN asked again."""
        if self.plugged:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # no line discipline: bytes pass as they are, no echo by the tty
        tty.setraw(master)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.path + ".new"
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)
        self._inbuf.clear()
        self._pdu_len = None
        self.echo = True
        self._pin_ok = self.pin is None
        asyncio.get_running_loop().add_reader(master, self._readable)
        self.plugged = True

    def unplug(self) -> None:
        """Vanish: close both ends of the pty, as a modem re-enumerating on USB."""
        if not self.plugged:
            return
        assert self._master is not None and self._slave is not None
        asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = None
        self.plugged = False

    # -- test hooks

    def inject_sms(
        self,
        sender: str,
        text: str,
        *,
        timestamp: datetime | None = None,
        reference: int = 0,
        announce: bool = True,
        parts: list[int] | None = None,
    ) -> list[int]:
        """Store an incoming SMS (all its parts, or only the ``parts`` listed, 1-based) and
        announce each stored part with ``+CMTI``; returns the storage indexes."""
        when = timestamp or datetime(2026, 3, 2, 10, 0, tzinfo=CET)
        pdus = build_deliver(sender, text, when, reference=reference)
        indexes: list[int] = []
        for seq, pdu in enumerate(pdus, start=1):
            if parts is not None and seq not in parts:
                continue
            index = self._free_index()
            self.storage[index] = StoredSms(pdu)
            indexes.append(index)
            if announce and self.plugged:
                self._write_line(f'+CMTI: "SM",{index}')
        return indexes

    def ring(self, number: str) -> None:
        """An incoming call: ``RING`` and the caller id."""
        self._write_line("RING")
        self._write_line(f'+CLIP: "{number}",145,"",,"",0')

    def send_urc(self, line: str) -> None:
        self._write_line(line)

    def urc_mid_response(self, *lines: str) -> None:
        """Slip ``lines`` into the middle of the next answer that has information lines."""
        self._mid_urcs.extend(lines)

    def fail_next(self, prefix: str, error: str = "+CMS ERROR: 500") -> None:
        """Answer the next command starting with ``prefix`` with ``error`` instead."""
        self._failures.append((prefix.upper(), error))

    def unplug_on_send(self) -> None:
        """Vanish after the next PDU arrives, before it is sent or answered."""
        self._unplug_on_send = True

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checked whenever the modem saw a command.
        Callers bound it with ``asyncio.timeout``."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    # -- the modem

    def _free_index(self) -> int:
        index = 1
        while index in self.storage:
            index += 1
        return index

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, data)

    def _write_line(self, line: str) -> None:
        self._write(b"\r\n" + line.encode("latin-1") + b"\r\n")

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the transport closed the slave: wait for the next open
        self._inbuf += data
        self._process()
        self._changed.set()

    def _process(self) -> None:
        while self.plugged:
            if self._pdu_len is not None:
                end = next((i for i, b in enumerate(self._inbuf) if b in (CTRL_Z, ESC)), None)
                if end is None:
                    return
                body, terminator = bytes(self._inbuf[:end]), self._inbuf[end]
                del self._inbuf[: end + 1]
                self._pdu_done(body.decode("latin-1").strip(), terminator == CTRL_Z)
                continue
            end = self._inbuf.find(b"\r")
            if end < 0:
                return
            line = bytes(self._inbuf[:end]).decode("latin-1").strip("\n ")
            del self._inbuf[: end + 1]
            if not line:
                continue
            if self.echo:
                self._write(line.encode("latin-1") + b"\r")
            self.commands.append(line)
            self._command(line)

    def _answer(self, lines: list[str], final: str = "OK") -> None:
        if lines and self._mid_urcs:
            half = max(1, len(lines) // 2)
            lines = lines[:half] + self._mid_urcs + lines[half:]
            self._mid_urcs = []
        for line in lines:
            self._write_line(line)
        self._write_line(final)

    def _command(self, line: str) -> None:
        upper = line.upper()
        for i, (prefix, error) in enumerate(self._failures):
            if upper.startswith(prefix):
                del self._failures[i]
                self._write_line(error)
                return
        if upper in ("AT", "ATZ") or upper.startswith(("AT+CMEE=", "AT+CNMI=", "AT+CLIP=")):
            self._answer([])
        elif upper in ("ATE0", "ATE1"):
            self.echo = upper == "ATE1"
            self._answer([])
        elif upper == "AT+CPIN?":
            self._answer([f"+CPIN: {'READY' if self._pin_ok else 'SIM PIN'}"])
        elif upper.startswith("AT+CPIN="):
            given = line[8:].strip().strip('"')
            if self.pin is not None and given == self.pin:
                self._pin_ok = True
                self._answer([])
            else:
                self._write_line("+CME ERROR: 16")  # incorrect password
        elif not self._pin_ok and upper.startswith(("AT+CMG", "AT+CREG", "AT+CSQ")):
            self._write_line("+CME ERROR: 11")  # SIM PIN required
        elif upper == "AT+CREG?":
            self._answer([f"+CREG: 0,{self.creg_stat}"])
        elif upper == "AT+CSQ":
            self._answer([f"+CSQ: {self.rssi},99"])
        elif upper == "AT+CMGF=0":
            self._answer([])
        elif upper.startswith("AT+CMGL"):
            lines: list[str] = []
            for index in sorted(self.storage):
                stored = self.storage[index]
                lines += [f"+CMGL: {index},{stored.stat},,{stored.tpdu_length}", stored.pdu]
                stored.stat = 1
            self._answer(lines)
        elif upper.startswith("AT+CMGR="):
            wanted = _number(upper[8:])
            stored_sms = self.storage.get(wanted) if wanted is not None else None
            if stored_sms is None:
                self._write_line("+CMS ERROR: 321")  # invalid memory index
                return
            self._answer([f"+CMGR: {stored_sms.stat},,{stored_sms.tpdu_length}", stored_sms.pdu])
            stored_sms.stat = 1
        elif upper.startswith("AT+CMGD="):
            doomed = _number(upper[8:].split(",")[0])
            if doomed is None or doomed not in self.storage:
                self._write_line("+CMS ERROR: 321")
                return
            del self.storage[doomed]
            self.deleted.append(doomed)
            self._answer([])
        elif upper.startswith("AT+CMGS="):
            length = _number(upper[8:])
            if length is None:
                self._write_line("+CMS ERROR: 304")
                return
            self._pdu_len = length
            self._write(b"\r\n> ")
        elif upper in ("ATH", "AT+CHUP"):
            self.hangups += 1
            self._answer([])
        else:
            self._write_line("ERROR")

    def _pdu_done(self, body: str, send: bool) -> None:
        length, self._pdu_len = self._pdu_len, None
        if self.echo:
            self._write(body.encode("latin-1") + b"\r")
        if not send:
            self._answer([])
            return
        if self._unplug_on_send:
            self._unplug_on_send = False
            self.unplug()
            return
        try:
            submit = sms.decode_submit(body)
        except sms.SmsError:
            self._write_line("+CMS ERROR: 304")  # invalid PDU mode parameter
            return
        if length != len(body) // 2 - 1 - int(body[:2], 16):
            self._write_line("+CMS ERROR: 304")
            return
        self.sent.append(submit)
        self._mr = (self._mr + 1) % 256
        self._answer([f"+CMGS: {self._mr}"])


def _number(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments for ``alarmctl simulate modem`` (wired by cli.py)."""
    parser.add_argument("--pin", help="the SIM wants this PIN")
    parser.add_argument(
        "--sms",
        action="append",
        default=[],
        metavar="NUMBER:TEXT",
        help="an SMS stored on the SIM before alarmd opens the port (repeatable)",
    )
    parser.add_argument("--creg", type=int, default=1, help="+CREG stat (1 home, 5 roaming)")


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> ModemSimulator:
    """Run a simulator until ``stop`` is set; prints the port path to open."""
    modem = ModemSimulator(pin=args.pin, creg_stat=args.creg)
    await modem.start()
    for spec in args.sms:
        number, _, text = spec.partition(":")
        modem.inject_sms(number, text, announce=False)
    print(f"modem simulator on {modem.path}", flush=True)
    try:
        await stop.wait()
    finally:
        await modem.stop()
    return modem

"""The modem simulator itself: a raw client on its pty speaks AT to it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest

from alarmd.protocols import at, sms
from alarmd.sim.modem import ModemSimulator, build_deliver

T = datetime(2026, 3, 2, 10, 15, 30, tzinfo=timezone(timedelta(hours=1)))


class Client:
    """A bare AT client on the pty: write commands, read events through AtDialogue."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.dialogue = at.AtDialogue()
        self.urcs: list[at.Unsolicited] = []

    def close(self) -> None:
        os.close(self.fd)

    async def event(self) -> at.Event:
        async with asyncio.timeout(5):
            while True:
                ev = self.dialogue.next_event()
                if ev is not at.NEED_DATA:
                    assert not isinstance(ev, at.NeedData)
                    return ev
                try:
                    data = os.read(self.fd, 4096)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                    continue
                self.dialogue.receive_data(data)

    async def command(self, text: str, data: str | None = None) -> at.CommandDone:
        os.write(self.fd, self.dialogue.send(at.Command(text)))
        while True:
            ev = await self.event()
            if isinstance(ev, at.PromptForData):
                assert data is not None
                os.write(self.fd, self.dialogue.send_data(data))
            elif isinstance(ev, at.Unsolicited):
                self.urcs.append(ev)
            elif isinstance(ev, at.CommandDone):
                return ev


@pytest.fixture
async def sim() -> AsyncIterator[ModemSimulator]:
    modem = ModemSimulator()
    await modem.start()
    yield modem
    await modem.stop()


@pytest.fixture
async def client(sim: ModemSimulator) -> AsyncIterator[Client]:
    c = Client(sim.path)
    yield c
    c.close()


def test_build_deliver_decodes_with_our_codec() -> None:
    (pdu,) = build_deliver("+4700000011", "Fall hos Åse, æøå", T)
    d = sms.decode_deliver(pdu)
    assert d.sender == "+4700000011"
    assert d.text == "Fall hos Åse, æøå"
    assert d.timestamp == T
    assert d.smsc == "+4790002198"
    assert d.concat is None


def test_build_deliver_multipart_and_ucs2() -> None:
    text = "Lavt batteri ✓ " * 12
    pdus = build_deliver("+4700000011", text, T, reference=7)
    assert len(pdus) > 1
    r = sms.Reassembler()
    out = [r.add(sms.decode_deliver(p), T) for p in pdus]
    assert out[-1] == text and all(o is None for o in out[:-1])


async def test_startup_sequence(sim: ModemSimulator, client: Client) -> None:
    for command in at.STARTUP:
        done = await client.command(command.text)
        assert done.ok, command
    assert sim.echo is False
    done = await client.command("AT+CSQ")
    assert at.parse_csq(done.lines) == (20, 99)
    done = await client.command("AT+CREG?")
    assert at.parse_creg(done.lines[0]) == (0, 1)


async def test_sim_pin() -> None:
    sim_pin = ModemSimulator(pin="1234")
    await sim_pin.start()
    c = Client(sim_pin.path)
    try:
        assert at.parse_cpin((await c.command("AT+CPIN?")).lines) == "SIM PIN"
        blocked = await c.command("AT+CMGL=4")
        assert blocked.error == at.ErrorCode(at.ErrorKind.CME, 11)
        assert not (await c.command("AT+CPIN=0000")).ok
        assert (await c.command('AT+CPIN="1234"')).ok
        assert at.parse_cpin((await c.command("AT+CPIN?")).lines) == "READY"
    finally:
        c.close()
        await sim_pin.stop()


async def test_list_read_delete(sim: ModemSimulator, client: Client) -> None:
    await client.command("ATE0")
    sim.inject_sms("+4700000011", "ALARM", timestamp=T, announce=False)
    sim.inject_sms("+4700000012", "FALL", timestamp=T, announce=False)
    listed = at.parse_cmgl((await client.command("AT+CMGL=4")).lines)
    assert [(i, s) for i, s, _ in listed] == [(1, 0), (2, 0)]
    assert sms.decode_deliver(listed[1][2]).text == "FALL"
    stat, pdu = at.parse_cmgr((await client.command("AT+CMGR=1")).lines)
    assert stat == 1 and sms.decode_deliver(pdu).text == "ALARM"
    assert (await client.command("AT+CMGD=1")).ok
    assert sim.deleted == [1] and list(sim.storage) == [2]
    missing = await client.command("AT+CMGR=1")
    assert missing.error == at.ErrorCode(at.ErrorKind.CMS, 321)


async def test_cmti_and_ring(sim: ModemSimulator, client: Client) -> None:
    await client.command("ATE0")
    sim.inject_sms("+4700000011", "ALARM")
    sim.ring("+4700000013")
    kinds = []
    for _ in range(3):
        ev = await client.event()
        assert isinstance(ev, at.Unsolicited)
        kinds.append(ev.kind)
        if ev.kind is at.UrcKind.CLIP:
            assert at.parse_clip(ev.fields) == "+4700000013"
        if ev.kind is at.UrcKind.CMTI:
            assert at.parse_cmti(ev.fields) == ("SM", 1)
    assert kinds == [at.UrcKind.CMTI, at.UrcKind.RING, at.UrcKind.CLIP]
    assert (await client.command("ATH")).ok
    assert sim.hangups == 1


async def test_urc_in_the_middle_of_a_listing(sim: ModemSimulator, client: Client) -> None:
    await client.command("ATE0")
    for n in range(4):
        sim.inject_sms(f"+470000001{n}", "ALARM", announce=False)
    sim.urc_mid_response('+CMTI: "SM",9', "RING")
    done = await client.command("AT+CMGL=4")
    assert len(at.parse_cmgl(done.lines)) == 4
    assert [u.kind for u in client.urcs] == [at.UrcKind.CMTI, at.UrcKind.RING]


async def test_send_records_the_submit(sim: ModemSimulator, client: Client) -> None:
    await client.command("ATE0")
    (part,) = sms.encode_submit("+4700000101", "Alarm 1: fall hos Astrid", reference=1)
    done = await client.command(f"AT+CMGS={part.tpdu_length}", part.pdu_hex)
    assert done.ok and at.parse_cmgs(done.lines) == 1
    assert [(s.number, s.text) for s in sim.sent] == [("+4700000101", "Alarm 1: fall hos Astrid")]


async def test_send_with_echo_on(sim: ModemSimulator, client: Client) -> None:
    (part,) = sms.encode_submit("+4700000101", "hei", reference=1)
    done = await client.command(f"AT+CMGS={part.tpdu_length}", part.pdu_hex)
    assert done.ok and len(sim.sent) == 1


async def test_fail_next(sim: ModemSimulator, client: Client) -> None:
    await client.command("ATE0")
    sim.fail_next("AT+CPIN?", "+CME ERROR: 14")  # SIM busy
    assert (await client.command("AT+CPIN?")).error == at.ErrorCode(at.ErrorKind.CME, 14)
    assert (await client.command("AT+CPIN?")).ok


async def test_unplug_and_plug_keeps_path_and_storage(sim: ModemSimulator) -> None:
    sim.inject_sms("+4700000011", "ALARM", announce=False)
    first = os.path.realpath(sim.path)
    sim.unplug()
    assert not os.path.exists(first) or os.path.realpath(sim.path) == first
    sim.plug()
    c = Client(sim.path)
    try:
        assert sim.echo is True  # a power cycle forgets ATE0
        listed = at.parse_cmgl((await c.command("AT+CMGL=4")).lines)
        assert len(listed) == 1
    finally:
        c.close()


async def test_unknown_command(client: Client) -> None:
    assert not (await client.command("AT+FOO")).ok


async def test_serve_for_alarmctl(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from alarmd.sim.modem import add_arguments, serve

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--sms", "+4700000011:ALARM"])
    stop = asyncio.Event()
    task = asyncio.create_task(serve(args, stop))
    async with asyncio.timeout(5):
        while "modem simulator on" not in (out := capsys.readouterr().out):
            await asyncio.sleep(0.01)
    path = out.split(" on ", 1)[1].strip()
    c = Client(path)
    try:
        listed = at.parse_cmgl((await c.command("AT+CMGL=4")).lines)
        assert sms.decode_deliver(listed[0][2]).text == "ALARM"
    finally:
        c.close()
    stop.set()
    modem = await task
    assert not modem.plugged

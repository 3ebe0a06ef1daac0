"""The operator console driven by Textual's Pilot against a real running daemon.

Each test starts ``alarmd run`` as a child process on loopback ports with its own data dir,
sends alarms with the DC-09 simulator (``alarmctl simulate dc09``) and works the case with
the console's keys at 80×24. Waiting is for asynchronous effects (a row appears, a state
changes), bounded; nothing waits for a deadline or asserts wall-clock time.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from alarmd.console.app import CaseScreen, ConsoleApp, PickScreen, render_case
from alarmd.console.texts import Texts, missing_translations

from ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SIZE = (80, 24)
BUDGET_S = 10.0


class Daemon:
    """One ``alarmd run`` child, as tests/e2e/conftest.py starts it; ``api_port`` fixed
    (instead of any free one) lets it restart at the same address."""

    def __init__(self, workdir: Path, api_port: int = 0) -> None:
        self.data_dir = workdir / "data"
        self.config = workdir / "alarmd.yaml"
        self.config.write_text(
            "log:\n  level: info\n"
            f"api:\n  listen: 127.0.0.1:{api_port}\n"
            f"dc09:\n  listen: 127.0.0.1:{free_port()}\n"
            f"accounts_file: {ROOT / 'config' / 'accounts.example.yaml'}\n"
        )
        self.log_path = workdir / "alarmd.log"
        self.start()
        self.admin_token = (self.data_dir / "admin-token").read_text().strip()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "alarmd"),
                    "run",
                    "--config",
                    str(self.config),
                    "--data-dir",
                    str(self.data_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        run_file = self.data_dir / "run.json"
        deadline = time.monotonic() + 30
        while True:  # the daemon starting up, not a deadline under test
            if self.proc.poll() is not None:
                raise RuntimeError(f"alarmd exited: {self.log_path.read_text()}")
            if run_file.exists():
                try:
                    info = json.loads(run_file.read_text())
                except json.JSONDecodeError:
                    info = {}
                if info.get("pid") == self.proc.pid:
                    self.api = str(info["api"])
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"alarmd did not start: {self.log_path.read_text()}")
            time.sleep(0.02)

    def alarmctl(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "alarmctl"), "--data-dir", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def operator_token(self, name: str) -> str:
        return self.alarmctl("admin", "token", "create", name, "--role", "operator").split()[0]

    async def send_alarm(self, zone: int = 3, event: int = 100) -> None:
        """A DC-09 alarm from account 1234 (zone 3 is its fall detector), off the event loop
        so the console keeps running while the simulator waits for the ACK."""
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "alarmctl"),
            "--data-dir",
            str(self.data_dir),
            "simulate",
            "dc09",
            "--account",
            "1234",
            "--event",
            str(event),
            "--zone",
            str(zone),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"acked 1" in out

    async def get_case(self, case_id: int) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(f"{self.api}/api/v1/cases/{case_id}") as resp,
        ):
            assert resp.status == 200
            return dict(await resp.json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    d.stop()


async def until(pilot: Pilot[Any], condition: Callable[[], bool], what: str) -> None:
    """Let the app run until ``condition`` holds (an async effect), at most BUDGET_S."""
    loop = asyncio.get_running_loop()
    end = loop.time() + BUDGET_S
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}: {rows(pilot.app)}")
        await pilot.pause(0.05)


def rows(app: ConsoleApp, queue: str = "alarm") -> list[list[str]]:
    table: DataTable[Any] = app.query_one(f"#{queue}", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def only_case(app: ConsoleApp) -> dict[str, Any]:
    (case,) = [c for c in app.open_cases.values() if c["queue"] == "alarm"]
    return case


async def test_alarm_appears_then_accept_note_dispatch_close(daemon: Daemon) -> None:
    token = daemon.operator_token("anne")
    app = ConsoleApp(daemon.api, token)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected and app.loaded, "the console to connect")
        assert rows(app) == []
        await daemon.send_alarm()
        await until(pilot, lambda: len(rows(app)) == 1, "the alarm in the queue")
        row = rows(app)[0]
        assert row[1:4] == ["eksempel-kommune", "Fall", "Sentralen"]
        assert app.bells == 1  # a new alarm rings once
        case_id = int(row[0])

        await pilot.press("a")
        await until(pilot, lambda: app.last_message == f"Sak {case_id} tatt", "accept")
        assert only_case(app)["accepted_by"] == "operator:anne"
        assert rows(app)[0][3:] == ["Tatt", rows(app)[0][4], "operator:anne"]

        await pilot.press("n", "escape")  # a note begun and abandoned: nothing is sent
        assert app.last_message == f"Sak {case_id} tatt"

        await pilot.press("n")
        await pilot.press(*"Ringte bruker")  # typed into the note input
        await pilot.press("enter")
        await until(pilot, lambda: app.last_message.startswith("Notat"), "the note")
        log = (await daemon.get_case(case_id))["log"]
        assert any(e["type"] == "note" and e["message"].endswith("Ringte bruker") for e in log)

        await pilot.press("d", "2")  # 2: ambulance (recorded; the operator calls 113)
        await until(pilot, lambda: app.last_message.startswith("Sak 1: sendt"), "dispatch")
        log = (await daemon.get_case(case_id))["log"]
        assert any(e["type"] == "dispatched" and "ambulance" in e["message"] for e in log)
        assert only_case(app)["accepted_by"] == "operator:anne"

        # the case view shows the log; Esc goes back
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case view")
        view = app.screen
        assert isinstance(view, CaseScreen)
        await until(pilot, lambda: view.detail is not None, "the case's details")
        assert view.detail is not None
        assert any(e["type"] == "note" for e in view.detail["log"])
        await pilot.press("escape")
        assert not isinstance(app.screen, CaseScreen)

        await pilot.press("s")
        await until(pilot, lambda: only_case(app)["state"] == "on_site", "on site")
        assert rows(app)[0][3] == "På stedet"

        await pilot.press("c")
        assert isinstance(app.screen, PickScreen)
        await pilot.press("1", *"Falt, ok", "enter")
        await until(pilot, lambda: rows(app) == [], "the case to leave the queue")
        closed = await daemon.get_case(case_id)
        assert closed["outcome"] == "resolved_by_phone"
        assert closed["state"] == "closed"
        assert app.closed_today[case_id]["outcome"] == "resolved_by_phone"
        assert "Avklaringsgrad i dag 100 % (1/1)" in str(app.summary_text())


async def test_two_consoles_accept_the_same_case_one_wins(daemon: Daemon) -> None:
    anne = ConsoleApp(daemon.api, daemon.operator_token("anne"))
    bob = ConsoleApp(daemon.api, daemon.operator_token("bob"))
    async with anne.run_test(size=SIZE) as pa, bob.run_test(size=SIZE) as pb:
        await until(pa, lambda: anne.connected and bob.connected, "both consoles to connect")
        await daemon.send_alarm()
        await until(pa, lambda: len(rows(anne)) == 1 and len(rows(bob)) == 1, "the alarm")
        # both press a: the requests race to the daemon, which lets exactly one win
        await pa.press("a")
        await pb.press("a")
        answers = {"Sak 1 tatt", "Allerede tatt av operator:anne", "Allerede tatt av operator:bob"}
        await until(
            pb,
            lambda: anne.last_message in answers and bob.last_message in answers,
            "both answers",
        )
        outcome = {"anne": anne.last_message, "bob": bob.last_message}
        assert outcome in (
            {"anne": "Sak 1 tatt", "bob": "Allerede tatt av operator:anne"},
            {"anne": "Allerede tatt av operator:bob", "bob": "Sak 1 tatt"},
        )
        winner = "anne" if outcome["anne"] == "Sak 1 tatt" else "bob"
        # both queues show who holds it
        holder = f"operator:{winner}"
        await until(pb, lambda: rows(anne)[0][5] == rows(bob)[0][5] == holder, "both rows")

        # the loser tries again later: still refused, still explained
        loser, pilot = (bob, pb) if winner == "anne" else (anne, pa)
        loser.last_message = ""
        await pilot.press("a")
        await until(pilot, lambda: bool(loser.last_message), "the second refusal")
        assert loser.last_message == f"Allerede tatt av {holder}"


async def test_case_view_shows_who_where_plan_contacts_and_key_box(daemon: Daemon) -> None:
    daemon.alarmctl("import", str(ROOT / "config" / "directory.example.yaml"))
    app = ConsoleApp(daemon.api, daemon.operator_token("anne"))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected and app.loaded, "the console to connect")
        await daemon.send_alarm()  # account 1234 is Astrid Testesen's safety alarm
        await until(pilot, lambda: len(rows(app)) == 1, "the alarm")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case view")
        view = app.screen
        assert isinstance(view, CaseScreen)
        await until(pilot, lambda: view.detail is not None and view.user_looked_up, "details")
        assert view.detail is not None
        text = render_case(view.detail, view.user, app.texts, app.clock()).plain
        for expected in (
            "Astrid Testesen · Eksempelveien 1, 0001 · tlf +4700000001 · hjemme",
            "Enhet: safety_alarm (dc09 1234)",
            "Instrukser: Ring først.",
            "Nøkkelboks: Nøkkelboks ved inngangsdøren",
            "Hjemmetjeneste: hjemmetjeneste-sentrum",
            "1. Per Testesen (son)  +4700000030  har nøkkel",
            "2. Nina Naboesen (neighbour)  +4700000031",
            "fall alarm (CID:1100, zone 3)",
            "Ingen gyldig vedtak",  # the example directory registers no decisions
        ):
            assert expected in text, text
        # keys work in the case view too, and the view follows the case
        await pilot.press("a")
        await until(
            pilot,
            lambda: view.detail is not None and view.detail["accepted_by"] == "operator:anne",
            "the view to show the holder",
        )
        await pilot.press("escape")
        assert not isinstance(app.screen, CaseScreen)
        assert rows(app)[0][5] == "operator:anne"  # the queue followed while hidden


async def test_technical_cases_apart_and_silent(daemon: Daemon) -> None:
    app = ConsoleApp(daemon.api, daemon.admin_token, lang="en")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected and app.loaded, "the console to connect")
        await daemon.send_alarm(zone=1, event=301)  # CID 301: mains lost
        await until(pilot, lambda: len(rows(app, "technical")) == 1, "the technical case")
        assert rows(app, "alarm") == []
        assert rows(app, "technical")[0][2:4] == ["Power cut", "At centre"]
        assert app.bells == 0
        assert str(app.summary_text()).startswith("Open 0+1")
        await pilot.press("t")  # to the technical queue; the keys act on its cases
        assert app.current_case() == int(rows(app, "technical")[0][0])
        await pilot.press("a")
        await until(pilot, lambda: app.last_message.startswith("Case"), "accept")
        assert rows(app, "technical")[0][5] == "operator:admin"


async def test_refusal_without_a_holder_is_shown(daemon: Daemon) -> None:
    """Closing a case someone already closed: the daemon's reason reaches the operator."""
    app = ConsoleApp(daemon.api, daemon.admin_token, lang="en")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected and app.loaded, "the console to connect")
        await daemon.send_alarm()
        await until(pilot, lambda: len(rows(app)) == 1, "the alarm")
        daemon.alarmctl("close", "1", "test")
        assert not await app.do(1, "accept", None, "accepted")
        assert app.last_message == "Refused: case closed"


async def test_reconnects_by_itself_when_the_daemon_restarts(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, api_port=free_port())
    try:
        app = ConsoleApp(daemon.api, daemon.admin_token)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.connected, "the console to connect")
            daemon.stop()
            await until(pilot, lambda: not app.connected, "the console to notice")
            assert "frakoblet" in str(app.summary_text())
            daemon.start()
            await until(pilot, lambda: app.connected, "the console to reconnect")
            await daemon.send_alarm()
            await until(pilot, lambda: len(rows(app)) == 1, "the alarm after reconnecting")
    finally:
        daemon.stop()


def test_a_user_without_a_valid_decision_is_flagged() -> None:
    detail = {"priority": 2, "state": "notifying", "protocol": "dc09", "source": "1234"}
    user = {"first_name": "Astrid", "last_name": "Testesen", "devices": []}
    texts = Texts("en")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    flagged = render_case(detail, {**user, "decision_valid": False}, texts, now).plain
    assert "No valid decision: tell the allocation office" in flagged
    fine = render_case(detail, {**user, "decision_valid": True}, texts, now).plain
    assert "No valid decision" not in fine


def test_every_text_in_both_languages() -> None:
    assert missing_translations() == []
    assert Texts("nb").kind("assistance") == "Trygghetsalarm"
    assert Texts("en")("taken_by", who="operator:anne") == "Already taken by operator:anne"
    with pytest.raises(ValueError, match="language"):
        Texts("sv")


def test_run_console_is_exported() -> None:
    from alarmd.console import run_console

    assert run_console.__name__ == "run_console"


async def test_screenshot(daemon: Daemon, tmp_path: Path) -> None:
    """The queue at 80×24 as an SVG. ``ALARMD_CONSOLE_SVG=docs/console.svg pytest -k
    screenshot`` regenerates the picture in docs/."""
    anne = daemon.operator_token("anne")
    app = ConsoleApp(daemon.api, daemon.admin_token)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected and app.loaded, "the console to connect")
        await daemon.send_alarm(zone=1, event=101)  # pendant: assistance
        await until(pilot, lambda: len(rows(app)) == 1, "the first alarm")
        daemon.alarmctl("close", rows(app)[0][0], "resolved_by_phone", "--note", "Trykket feil")
        await until(pilot, lambda: len(rows(app)) == 0, "the first alarm closed")
        await daemon.send_alarm(zone=2, event=110)  # fire
        await until(pilot, lambda: len(rows(app)) == 1, "the fire")
        daemon.alarmctl("close", rows(app)[0][0], "ambulance")
        await until(pilot, lambda: len(rows(app)) == 0, "the fire closed")
        await daemon.send_alarm(zone=3, event=100)  # zone 3: the fall detector
        await daemon.send_alarm(zone=1, event=100)  # medical: assistance again
        await daemon.send_alarm(zone=4, event=102)  # inactivity
        await daemon.send_alarm(zone=1, event=301)  # mains lost: the technical tab
        await until(
            pilot,
            lambda: len(rows(app)) == 3 and len(rows(app, "technical")) == 1,
            "the queue to fill",
        )
        inactivity = next(r[0] for r in rows(app) if r[2] == "Inaktivitet")
        daemon.alarmctl("--token", anne, "accept", inactivity)
        await until(
            pilot,
            lambda: len(app.closed_today) == 2 and any(r[5] == "operator:anne" for r in rows(app)),
            "anne to hold one",
        )
        assert [r[2] for r in rows(app)] == ["Fall", "Trygghetsalarm", "Inaktivitet"]
        assert "50 % (1/2)" in str(app.summary_text())
        path = Path(os.environ.get("ALARMD_CONSOLE_SVG", tmp_path / "console.svg"))
        app.save_screenshot(path.name, str(path.parent.resolve()))
        assert "Trygghetsalarm" in path.read_text()


async def test_an_outage_incident_shows_its_affected_users(tmp_path: Path) -> None:
    """A power cut: three pendants report mains lost (threshold 3), one incident opens;
    opened in the console it lists the users on battery, where they live,
    since when, and when their batteries run out. The console talks to a real API on
    loopback over a real store; supervision and the engine run on a fake clock."""
    from datetime import timedelta

    from aiohttp.test_utils import TestServer

    from alarmd.api.server import ApiContext, create_app
    from alarmd.api.stream import CaseHub
    from alarmd.clock import FakeClock
    from alarmd.model import EventKind
    from alarmd.store import tokens
    from alarmd.store.db import Store
    from alarmd.supervision_service import SupervisionService

    from caseworld import NOW, T0, Router, World, seed_directory

    def seed(conn: Any) -> None:
        seed_directory(conn)
        conn.executemany(
            "INSERT INTO service_users (id, tenant, ref, first_name, last_name, address,"
            " postcode, updated_at) VALUES (?, 'eksempel-kommune', ?, ?, 'Hansen', ?, '0002', ?)",
            ((100 + n, f"u-{100 + n}", f"Bruker{n}", f"Strømveien {n}", NOW) for n in range(3)),
        )
        conn.executemany(
            "INSERT INTO devices (tenant, user_id, protocol, identity, updated_at)"
            " VALUES ('eksempel-kommune', ?, 'dc09', ?, ?)",
            ((100 + n, f"P{n}", NOW) for n in range(3)),
        )

    store = await Store.open(tmp_path / "alarmd.sqlite")
    await store.writer.submit(seed)
    world = World(store, FakeClock(T0), Router())
    service = SupervisionService(
        store,
        world.intake,
        world.clock,
        outage_threshold=3,
        outage_window=timedelta(minutes=5),
        engine=world.engine,
    )
    world.intake.add_listener(service.events_committed)
    await service.load()
    hub = CaseHub()
    world.engine.on_case_change(hub.publish)
    context = ApiContext(store=store, health=lambda: {"status": "ok"}, engine=world.engine)
    context.case_hub = hub
    server = TestServer(create_app(context), host="127.0.0.1")
    await server.start_server()
    token = tokens.new_token()
    await store.writer.submit(tokens.create_job("anne", "operator", None, token, T0, None))
    for source in ("P0", "P1", "P2"):
        await world.send(EventKind.MAINS_LOST, source=source)
    await service.run_due()
    await world.engine.run_due()
    app = ConsoleApp(str(server.make_url("")).rstrip("/"), token)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.connected and app.loaded, "the console to connect")
            # the incident has no one user: the stand-in rules send it to the centre's queue
            await until(pilot, lambda: len(rows(app)) == 1, "the incident")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case view")
            view = app.screen
            assert isinstance(view, CaseScreen)
            await until(pilot, lambda: view.detail is not None, "details")
            assert view.detail is not None
            text = render_case(view.detail, view.user, app.texts, app.clock()).plain
            for expected in (
                "Berørte brukere (3)",
                "Bruker1 Hansen (u-101) · Strømveien 1, 0002 · dc09 P1",
                # the clock is T0 = 09:00 UTC, 10:00 in Oslo; back-up lasts 24-72 h
                "strøm borte siden 02.03 10:00 · batteri tomt 03.03 10:00–05.03 10:00",
            ):
                assert expected in text, text
            assert "Ingen responsplan" not in text
    finally:
        await server.close()
        await store.close()

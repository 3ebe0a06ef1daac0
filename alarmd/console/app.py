"""The operator console (Textual): the queue, one case, and the keys an operator works with.

Theory of operation: the console is a client of the API (``client.py``) and keeps no state
of its own beyond a copy of the open cases. It loads the queue once, then follows the live
stream; a ``resync`` event, or a reconnect after the daemon went away, loads it again. Every
change an operator makes is one API call; the stream brings the result back to every
console, so two operators see the same queue. A refusal (someone else holds the case) is
shown as a message, never swallowed.

Layout at 80×24: one summary line, the alarm and technical queues as two tabs (technical
cases never ring the bell), one message line and one line of keys. Enter opens a case;
Esc goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import aiohttp
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Input, OptionList, Static, TabbedContent, TabPane
from textual.widgets.data_table import CellDoesNotExist

from alarmd.console.client import ActionResult, ApiClient, ApiFailure, Case
from alarmd.console.texts import DISPATCH_TARGETS, OUTCOMES, Texts

OSLO = ZoneInfo("Europe/Oslo")
QUEUES = ("alarm", "technical")
SOON_S = 30.0  # a deadline this close is shown in yellow
RECONNECT_S = 2.0
PRIORITY_STYLE = {4: "bold red", 3: "bold yellow", 2: "", 1: "dim", 0: "dim"}


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``; negative with a minus sign."""
    sign = "-" if seconds < 0 else ""
    total = int(abs(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours}:{minutes:02}:{secs:02}" if hours else f"{sign}{minutes}:{secs:02}"


def queue_order(case: Case) -> tuple[int, str, int]:
    """Most urgent first, then the oldest."""
    return (-int(case["priority"]), str(case["opened_at"]), int(case["id"]))


def holder_from_refusal(message: str) -> str | None:
    """The holder named in the engine's refusal "already accepted by operator:anne"."""
    marker = "accepted by "
    if marker in message:
        return message.split(marker, 1)[1].strip()
    return None


class NoteScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", show=False)]
    DEFAULT_CSS = """
    NoteScreen { align: center middle; }
    NoteScreen > Vertical { width: 74; height: auto; border: round $accent; padding: 0 1;
                            background: $surface; }
    """

    def __init__(self, prompt: str, placeholder: str) -> None:
        super().__init__()
        self._prompt = prompt
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._prompt)
            yield Input(placeholder=self._placeholder, id="note-text")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.dismiss(text or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PickScreen(ModalScreen[tuple[str, str] | None]):
    """Pick one of a few choices with its number (or the arrows and Enter); with
    ``with_note`` an Input for a note follows, and Enter there finishes."""

    DEFAULT_CSS = """
    PickScreen { align: center middle; }
    PickScreen > Vertical { width: 74; height: auto; border: round $accent; padding: 0 1;
                            background: $surface; }
    PickScreen OptionList { height: auto; max-height: 9; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", show=False),
        *(Binding(str(n), f"pick({n - 1})", show=False) for n in range(1, 10)),
    ]

    def __init__(
        self,
        prompt: str,
        choices: list[tuple[str, str]],
        *,
        with_note: bool,
        placeholder: str = "",
        choose_first: str = "",
    ) -> None:
        super().__init__()
        self._prompt = prompt
        self._choices = choices
        self._with_note = with_note
        self._placeholder = placeholder
        self._choose_first = choose_first
        self.chosen: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._prompt)
            yield OptionList(
                *(f"{n}  {label}" for n, (_, label) in enumerate(self._choices, 1)),
                id="choices",
            )
            if self._with_note:
                yield Input(placeholder=self._placeholder, id="pick-note")
            yield Static("", id="pick-message")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def action_pick(self, index: int) -> None:
        if not 0 <= index < len(self._choices):
            return
        self.query_one(OptionList).highlighted = index
        self._chosen(index)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self._chosen(event.option_index)

    def _chosen(self, index: int) -> None:
        self.chosen = self._choices[index][0]
        if self._with_note:
            self.query_one("#pick-note", Input).focus()
        else:
            self.dismiss((self.chosen, ""))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.chosen is None:
            self.query_one("#pick-message", Static).update(self._choose_first)
            self.query_one(OptionList).focus()
            return
        self.dismiss((self.chosen, event.value.strip()))

    def action_cancel(self) -> None:
        self.dismiss(None)


class CaseScreen(Screen[None]):
    """One case: who and where, the plan, contacts, key box and the log."""

    def __init__(self, case_id: int) -> None:
        super().__init__()
        self.case_id = case_id
        self.detail: Case | None = None
        self.user: Case | None = None  # the service user, looked up once per view
        self.user_looked_up = False

    def compose(self) -> ComposeResult:
        app = self.app
        assert isinstance(app, ConsoleApp)
        yield Static("", id="case-title", classes="summary")
        with VerticalScroll(id="case-scroll"):
            yield Static("", id="case-body")
        yield Static("", classes="message")
        yield Static(app.key_help(in_case=True), classes="keys")

    def on_mount(self) -> None:
        self.query_one("#case-scroll").focus()

    def show(self, detail: Case, texts: Texts, now: datetime) -> None:
        self.detail = detail
        self.query_one("#case-title", Static).update(
            Text(
                texts(
                    "case_title",
                    id=detail["id"],
                    kind=texts.kind(detail["kind"]),
                    tenant=detail.get("tenant") or texts("none"),
                ),
                style=PRIORITY_STYLE.get(int(detail["priority"]), "") or "bold",
            )
        )
        self.query_one("#case-body", Static).update(render_case(detail, self.user, texts, now))


def render_case(detail: Case, user: Case | None, texts: Texts, now: datetime) -> Text:
    out = Text()
    none = texts("none")
    deadline = parse_time(detail.get("next_step_at"))
    left = none if deadline is None else duration((deadline - now).total_seconds())
    out.append(f"{texts('priority')} {detail['priority']} · {texts('state')} ")
    out.append(texts.state(detail["state"]), style="bold")
    out.append(f" · {texts('deadline')} {left} · {texts('holder')} ")
    out.append(detail.get("accepted_by") or none, style="bold")
    if detail.get("outcome"):
        out.append(f" · {texts('outcome')} {texts.outcome(detail['outcome'])}")
    out.append(f"\n\n{texts('who_where')}\n", style="bold underline")
    if user is not None:
        out.append(f"{user.get('first_name', '')} {user.get('last_name', '')}", style="bold")
        out.append(f" · {user.get('address', '')}, {user.get('postcode', '')}")
        if user.get("phone"):
            out.append(f" · {texts('phone')} ")
            out.append(str(user["phone"]), style="bold cyan")
        if user.get("location"):
            out.append(f" · {texts('loc_' + str(user['location']))}")
        if user.get("group"):
            out.append(f" · {texts('group')} {user['group']}")
        out.append("\n")
        if user.get("decision_valid") is False:
            out.append(texts("no_decision") + "\n", style="bold yellow")
        for device in user.get("devices") or []:
            here = device.get("identity") == detail.get("source")
            out.append(
                f"{texts('device')}: {device.get('type', '')}"
                f" ({device.get('protocol', '')} {device.get('identity', '')})\n",
                style="bold" if here else "dim",
            )
    out.append(f"{texts('source')}: {detail.get('protocol', '')} {detail.get('source', '')}")
    flags = list(detail.get("flags") or [])
    if flags:
        shown = [texts("unregistered") if f == "unregistered" else f for f in flags]
        out.append(f"\n{texts('flags')}: ", style="bold")
        out.append(", ".join(shown), style="yellow")
    affected = detail.get("affected")
    if affected is not None:  # an outage incident: many users, no one user's plan
        render_affected(out, affected, texts)
    plan = detail.get("plan")
    if plan or affected is None:
        out.append(f"\n\n{texts('plan')}\n", style="bold underline")
    if not plan:
        if affected is None:
            out.append(texts("no_plan") + "\n", style="yellow")
    else:
        if plan.get("instructions"):
            out.append(f"{texts('instructions')}: ", style="bold")
            out.append(f"{plan['instructions']}\n")
        out.append(f"{texts('key_box')}: ", style="bold")
        key_box = plan.get("key_box")
        out.append(f"{key_box if key_box is not None else texts('key_box_hidden')}\n")
        if plan.get("home_care_team"):
            out.append(f"{texts('home_care_team')}: ", style="bold")
            out.append(f"{plan['home_care_team']}\n")
        contacts = plan.get("contacts") or []
        if contacts:
            out.append(f"{texts('contacts')}:\n", style="bold")
            for n, contact in enumerate(contacts, 1):
                out.append(f" {n}. {contact.get('name', '')}")
                if contact.get("relation"):
                    out.append(f" ({contact['relation']})")
                out.append(f"  {contact.get('phone', '')}", style="bold cyan")
                if contact.get("has_key"):
                    out.append(f"  {texts('has_key')}", style="green")
                out.append("\n")
    out.append(f"\n{texts('log')}\n", style="bold underline")
    entries: list[dict[str, Any]] = sorted(
        detail.get("log") or [], key=lambda e: (str(e.get("at", "")), e.get("id") or 0)
    )
    for entry in entries:
        at = parse_time(entry.get("at"))
        stamp = at.astimezone(OSLO).strftime("%H:%M:%S") if at else "--:--:--"
        out.append(f"{stamp} ", style="dim")
        out.append(f"{entry.get('actor', '')} ", style="cyan")
        out.append(f"{entry.get('message', '')}\n")
    return out


def render_affected(out: Text, affected: list[dict[str, Any]], texts: Texts) -> None:
    """An outage incident's users: who and where, the device, why and since when, and when
    the battery back-up is expected to run out (the earliest first, as the API sends them)."""

    def when(value: object) -> str:
        at = parse_time(str(value)) if value else None
        return at.astimezone(OSLO).strftime("%d.%m %H:%M") if at else texts("none")

    out.append(f"\n\n{texts('affected', n=len(affected))}\n", style="bold underline")
    for who in affected:
        device = who.get("device") or {}
        name = who.get("name") or texts("unregistered")
        out.append(name, style="bold")
        if who.get("ref"):
            out.append(f" ({who['ref']})")
        if who.get("address"):
            out.append(f" · {who['address']}, {who.get('postcode') or ''}")
        out.append(f" · {device.get('protocol', '')} {device.get('identity', '')}\n")
        reasons = ", ".join(texts("reason_" + str(r)) for r in who.get("reasons") or [])
        out.append(f"  {reasons} {texts('since')} {when(who.get('since'))}", style="yellow")
        out.append(
            f" · {texts('battery_out')} {when(who.get('batteries_from'))}"
            f"–{when(who.get('batteries_by'))}\n"
        )


class ConsoleApp(App[int]):
    """The operator console. ``clock`` gives the wall time used for the deadlines shown."""

    TITLE = "alarmd"
    CSS = """
    .summary { height: 1; background: $boost; padding: 0 1; }
    .message { height: 1; padding: 0 1; color: $warning; }
    .keys { height: 1; background: $panel; padding: 0 1; }
    TabbedContent { height: 1fr; }
    DataTable { height: 1fr; }
    #case-scroll { height: 1fr; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "accept", show=False),
        Binding("n", "note", show=False),
        Binding("d", "dispatch", show=False),
        Binding("s", "on_site", show=False),
        Binding("c", "close_case", show=False),
        Binding("r", "refresh", show=False),
        Binding("t", "switch_queue", show=False),
        Binding("q", "leave", show=False),
        Binding("escape", "go_back", show=False),
    ]

    def __init__(
        self,
        api: str,
        token: str,
        lang: str = "nb",
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.texts = Texts(lang)
        self.client = ApiClient(api, token)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.open_cases: dict[int, Case] = {}
        self.closed_today: dict[int, Case] = {}
        self.seen: set[int] = set()
        self.versions: dict[int, int] = {}  # the newest version seen of every case
        self.loaded = False
        self.connected = False
        self.bells = 0
        self.last_message = ""

    # --- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        t = self.texts
        yield Static("", id="summary", classes="summary")
        with TabbedContent(id="tabs"):
            for queue in QUEUES:
                with TabPane(t(f"tab_{queue}"), id=f"tab-{queue}"):
                    yield DataTable(id=queue, cursor_type="row", zebra_stripes=True)
        yield Static("", classes="message")
        yield Static(self.key_help(in_case=False), classes="keys")

    def key_help(self, *, in_case: bool) -> str:
        t = self.texts
        keys = [("a", "key_accept"), ("n", "key_note"), ("d", "key_dispatch")]
        keys += [("s", "key_on_site"), ("c", "key_close")]
        keys += [("Esc", "key_back")] if in_case else [("⏎", "key_open"), ("t", "key_queue")]
        keys += [("q", "key_quit")]
        return "  ".join(f"{k} {t(label)}" for k, label in keys)

    def on_mount(self) -> None:
        t = self.texts
        self.title = t("title")
        for queue in QUEUES:
            table = self.query_one(f"#{queue}", DataTable)
            table.add_column(t("col_case"), key="id", width=6)
            table.add_column(t("col_tenant"), key="tenant", width=16)
            table.add_column(t("col_kind"), key="kind", width=14)
            table.add_column(t("col_state"), key="state", width=9)
            table.add_column(t("col_left"), key="left", width=8)
            table.add_column(t("col_holder"), key="holder", width=14)
        self.query_one("#alarm", DataTable).focus()
        self.render_summary()
        self.set_interval(1.0, self.tick)
        self.follow_stream()

    async def on_unmount(self) -> None:
        await self.client.close()

    # --- data ---------------------------------------------------------------------------

    async def reload(self) -> None:
        """The whole queue again: at start, after a reconnect, on resync and on ``r``."""
        try:
            open_cases = await self.client.cases("open")
            every = await self.client.cases("all", queue="alarm")
        except ApiFailure as exc:
            self.say(self.texts("error", reason=exc), error=True)
            return
        self.open_cases = {int(c["id"]): c for c in open_cases}
        self.closed_today = {int(c["id"]): c for c in every if self._closed_today(c)}
        for case in [*open_cases, *every]:
            self.versions[int(case["id"])] = int(case.get("version", 0))
        # alarms that came while we were away from the stream ring too (once)
        missed = [c for c in open_cases if c["queue"] == "alarm" and c["id"] not in self.seen]
        if self.loaded and missed:
            self.bell()
        self.seen.update(self.open_cases)
        self.loaded = True
        self.render_queues()
        await self.refresh_case_view()

    def _closed_today(self, case: Case) -> bool:
        closed = parse_time(case.get("closed_at"))
        if closed is None or case.get("queue") != "alarm":
            return False
        return closed.astimezone(OSLO).date() == self.clock().astimezone(OSLO).date()

    @work(exclusive=True, group="stream")
    async def follow_stream(self) -> None:
        """Live updates for ever; after the daemon restarts, connect again and reload."""
        while True:
            try:
                async for event in self.client.stream():
                    if event.kind in ("open", "resync"):
                        self.connected = True
                        await self.reload()
                    elif event.kind == "case":
                        await self.apply(event.data)
            except (ApiFailure, aiohttp.ClientError, OSError, ValueError, KeyError):
                pass  # said once below; the summary line shows it until we are back
            if self.connected:
                self.say(self.texts("disconnected"), error=True)
            self.connected = False
            self.render_summary()
            await asyncio.sleep(RECONNECT_S)

    async def apply(self, case: Case) -> None:
        """One case changed (from the stream or from our own action's answer)."""
        case_id = int(case["id"])
        version = int(case.get("version", 0))
        if version < self.versions.get(case_id, -1):
            return  # older than what we hold: our action's answer overtook the stream
        self.versions[case_id] = version
        if case.get("closed_at"):
            self.open_cases.pop(case_id, None)
            if self._closed_today(case):
                self.closed_today[case_id] = case
        else:
            self.open_cases[case_id] = case
            if case_id not in self.seen and self.loaded and case.get("queue") == "alarm":
                t = self.texts
                self.bell()
                self.say(
                    t(
                        "new_alarm",
                        id=case_id,
                        kind=t.kind(case["kind"]),
                        tenant=case.get("tenant") or t("none"),
                    )
                )
        self.seen.add(case_id)
        self.render_queues()
        screen = self.screen
        if isinstance(screen, CaseScreen) and screen.case_id == case_id:
            await self.refresh_case_view()

    async def refresh_case_view(self) -> None:
        screen = self.screen
        if not isinstance(screen, CaseScreen):
            return
        try:
            detail = await self.client.case(screen.case_id)
        except ApiFailure as exc:
            self.say(self.texts("error", reason=exc), error=True)
            return
        if not screen.user_looked_up:
            screen.user_looked_up = True
            # a role that may read cases but not the directory still sees the case
            with contextlib.suppress(ApiFailure):
                screen.user = await self.client.user_for_case(detail)
        if self.screen is screen and isinstance(screen, CaseScreen):
            screen.show(detail, self.texts, self.clock())

    def bell(self) -> None:
        self.bells += 1
        super().bell()

    # --- rendering ----------------------------------------------------------------------

    @property
    def main(self) -> Screen[Any]:
        """The queue screen, also while a case or a picker is shown above it."""
        return self.screen_stack[0]

    def render_queues(self) -> None:
        for queue in QUEUES:
            try:
                table = self.main.query_one(f"#{queue}", DataTable)
            except NoMatches:  # the main screen is not mounted yet
                return
            selected = self.selected_in(table)
            table.clear()
            rows = sorted(
                (c for c in self.open_cases.values() if c.get("queue") == queue), key=queue_order
            )
            for case in rows:
                table.add_row(*self.row_cells(case), key=str(case["id"]))
            if selected is not None and str(selected) in table.rows:
                table.move_cursor(row=table.get_row_index(str(selected)))
            tabs = self.main.query_one("#tabs", TabbedContent)
            tabs.get_tab(f"tab-{queue}").label = f"{self.texts(f'tab_{queue}')} ({len(rows)})"
        self.render_summary()

    def row_cells(self, case: Case) -> list[Text]:
        t = self.texts
        style = PRIORITY_STYLE.get(int(case["priority"]), "")
        return [
            Text(str(case["id"]), style=style),
            Text(case.get("tenant") or t("none")),
            Text(t.kind(case["kind"]), style=style),
            Text(t.state(case["state"])),
            self.time_left(case),
            Text(case.get("accepted_by") or "", style="cyan"),
        ]

    def time_left(self, case: Case) -> Text:
        deadline = parse_time(case.get("next_step_at"))
        if deadline is None:
            return Text(self.texts("none"), style="dim")
        left = (deadline - self.clock()).total_seconds()
        if left < 0:
            return Text(duration(left), style="bold white on red")
        return Text(duration(left), style="bold yellow" if left <= SOON_S else "")

    def tick(self) -> None:
        for queue in QUEUES:
            try:
                table = self.main.query_one(f"#{queue}", DataTable)
            except NoMatches:  # the main screen is not mounted yet
                return
            for key in list(table.rows):
                case = self.open_cases.get(int(str(key.value)))
                if case is not None:
                    table.update_cell(key, "left", self.time_left(case))
        self.render_summary()
        screen = self.screen
        if isinstance(screen, CaseScreen) and screen.detail is not None:
            screen.show(screen.detail, self.texts, self.clock())  # the deadline counts down

    def summary_text(self) -> Text:
        t = self.texts
        now = self.clock()
        alarms = [c for c in self.open_cases.values() if c.get("queue") == "alarm"]
        technical = len(self.open_cases) - len(alarms)
        waiting = [parse_time(c["opened_at"]) for c in alarms if not c.get("accepted_by")]
        oldest = min((w for w in waiting if w is not None), default=None)
        closed = list(self.closed_today.values())
        clarified = sum(1 for c in closed if c.get("outcome") == "resolved_by_phone")
        out = Text()
        if not self.connected:
            out.append(f"{t('disconnected')} · ", style="bold white on red")
        out.append(f"{t('open_cases')} ")
        out.append(f"{len(alarms)}", style="bold")
        out.append(f"+{technical} · {t('oldest_unaccepted')} ")
        if oldest is None:
            out.append(t("none"))
        else:
            age = (now - oldest).total_seconds()
            out.append(duration(age), style="bold red" if age > 120 else "bold")
        out.append(f" · {t('clarification_today')} ")
        if closed:
            out.append(f"{round(100 * clarified / len(closed))} % ({clarified}/{len(closed)})")
        else:
            out.append(t("none"))
        return out

    def render_summary(self) -> None:
        for widget in self.main.query("#summary"):
            if isinstance(widget, Static):
                widget.update(self.summary_text())

    def say(self, text: str, *, error: bool = False) -> None:
        """A message to the operator: on the message line and as a notification."""
        self.last_message = text
        for widget in self.screen.query(".message"):
            if isinstance(widget, Static):
                widget.update(Text(text, style="bold red" if error else "bold"))
        self.notify(text, severity="error" if error else "information", timeout=6)

    # --- which case the keys act on -----------------------------------------------------

    @staticmethod
    def selected_in(table: DataTable[Any]) -> int | None:
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return None if key.value is None else int(key.value)

    def current_case(self) -> int | None:
        screen = self.screen
        if isinstance(screen, CaseScreen):
            return screen.case_id
        if isinstance(screen, ModalScreen):
            return None
        active = self.main.query_one("#tabs", TabbedContent).active
        queue = "technical" if active == "tab-technical" else "alarm"
        return self.selected_in(self.main.query_one(f"#{queue}", DataTable))

    def _target(self) -> int | None:
        if isinstance(self.screen, ModalScreen):
            return None
        case_id = self.current_case()
        if case_id is None:
            self.say(self.texts("no_case_selected"), error=True)
        return case_id

    # --- keys ---------------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.push_screen(CaseScreen(int(event.row_key.value)))
            self.run_worker(self.refresh_case_view(), group="view")

    def action_switch_queue(self) -> None:
        """The alarm queue and the technical queue, by keyboard."""
        if isinstance(self.screen, CaseScreen | ModalScreen):
            return
        tabs = self.query_one("#tabs", TabbedContent)
        queue = "alarm" if tabs.active == "tab-technical" else "technical"
        tabs.active = f"tab-{queue}"
        self.query_one(f"#{queue}", DataTable).focus()

    def action_go_back(self) -> None:
        if isinstance(self.screen, CaseScreen):
            self.pop_screen()

    def action_leave(self) -> None:
        if not isinstance(self.screen, ModalScreen):
            self.exit(0)

    def action_refresh(self) -> None:
        if not isinstance(self.screen, ModalScreen):
            self.run_worker(self.reload(), group="act")

    def action_accept(self) -> None:
        case_id = self._target()
        if case_id is not None:
            self.run_worker(self.do(case_id, "accept", None, "accepted"), group="act")

    def action_on_site(self) -> None:
        case_id = self._target()
        if case_id is not None:
            self.run_worker(self.do(case_id, "on_site", None, "on_site"), group="act")

    def action_note(self) -> None:
        case_id = self._target()
        if case_id is None:
            return
        t = self.texts

        def done(text: str | None) -> None:
            if text:
                self.run_worker(self.do(case_id, "note", {"text": text}, "noted"), group="act")

        self.push_screen(NoteScreen(t("note_prompt", id=case_id), t("note_placeholder")), done)

    def action_close_case(self) -> None:
        case_id = self._target()
        if case_id is None:
            return
        t = self.texts

        def done(choice: tuple[str, str] | None) -> None:
            if choice is not None:
                outcome, note = choice
                body = {"outcome": outcome, "note": note}
                self.run_worker(
                    self.do(case_id, "close", body, "closed", outcome=t.outcome(outcome)),
                    group="act",
                )

        self.push_screen(
            PickScreen(
                t("close_prompt", id=case_id),
                [(o, t.outcome(o)) for o in OUTCOMES],
                with_note=True,
                placeholder=t("note_placeholder"),
                choose_first=t("close_choose"),
            ),
            done,
        )

    def action_dispatch(self) -> None:
        case_id = self._target()
        if case_id is None:
            return
        t = self.texts

        def done(choice: tuple[str, str] | None) -> None:
            if choice is not None:
                self.run_worker(self.dispatch(case_id, choice[0]), group="act")

        self.push_screen(
            PickScreen(
                t("dispatch_prompt", id=case_id),
                [(d, t.dispatch(d)) for d in DISPATCH_TARGETS],
                with_note=False,
            ),
            done,
        )

    async def dispatch(self, case_id: int, to: str) -> None:
        """Whoever sends someone takes responsibility: an operator who does not hold the
        case yet accepts it first (a refusal stops the dispatch), then the daemon notifies
        home care or next of kin, or records the ambulance."""
        case = self.open_cases.get(case_id)
        unheld = case is not None and not case.get("accepted_by")
        if unheld and not await self.do(case_id, "accept", None, "accepted"):
            return
        t = self.texts
        body = {"to": to, "note": t("dispatch_note", to=t.dispatch(to))}
        await self.do(case_id, "dispatch", body, "dispatched", to=t.dispatch(to))

    async def do(
        self, case_id: int, action: str, body: Case | None, done: str, **values: str
    ) -> bool:
        """One action through the API; the operator sees the outcome either way."""
        t = self.texts
        try:
            result: ActionResult = await self.client.act(case_id, action, body)
        except ApiFailure as exc:
            self.say(t("error", reason=exc), error=True)
            return False
        if result.case is not None:
            await self.apply(result.case)
        if result.refused is not None:
            holder = holder_from_refusal(result.refused)
            if holder is not None:
                self.say(t("taken_by", who=holder), error=True)
            else:
                self.say(t("refused", reason=result.refused), error=True)
            return False
        self.say(t(done, id=case_id, **values))
        if isinstance(self.screen, CaseScreen):
            await self.refresh_case_view()
        return True


def run_console(api: str, token: str, lang: str = "nb") -> int:
    """Run the console in this terminal until the operator quits; the exit code."""
    app = ConsoleApp(api, token, lang)
    code = app.run()
    return int(code or 0)

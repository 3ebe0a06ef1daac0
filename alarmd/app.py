"""The composition root: builds alarmd from its configuration and runs it until told to stop.

Order matters. Start: store (migrated) → intake → API (so /health answers) → receivers →
``READY=1`` to systemd. Stop (SIGTERM/SIGINT): receivers stop accepting and finish the
commits and replies in flight → API → store (the writer commits what is queued) → exit 0.
Nothing acknowledged is lost on the way down, and nothing is acknowledged that is not
committed.

On first start with an empty data directory an admin API token is created and written to
``<data-dir>/admin-token`` (mode 0600); only its hash is stored. The bound ports are written
to ``<data-dir>/run.json`` so that ``alarmctl`` (and tests using ephemeral ports) can find
the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import signal
import socket
import sqlite3
import ssl
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from alarmd import __version__, metrics
from alarmd.admin.sweep import AdminSweep
from alarmd.api.server import ApiContext, ApiServer, server_tls
from alarmd.api.stream import CaseHub
from alarmd.clock import Clock, FakeClock, SystemClock
from alarmd.config import AlarmdConfig, ConfigError, default_config_path, load_config
from alarmd.intake import Intake
from alarmd.model import Condition
from alarmd.notify.mqtt import StaffMqtt, StaffMqttSettings
from alarmd.notify.outbox import Channel, Dispatcher
from alarmd.notify.sms import SmsChannel, SmsReplies
from alarmd.notify.webhook import WebhookChannel, WebhookEndpoint
from alarmd.protocols.dc09 import Dc09Account
from alarmd.protocols.mqtt_events import parse_mapping
from alarmd.protocols.sms_alarms import SenderConfig, SmsAlarmTable, TextPattern
from alarmd.routing import rules
from alarmd.routing.config import RoutingConfig, default_routing, load_routing
from alarmd.routing.decision import Decision, RouteFacts
from alarmd.routing.engine import Engine
from alarmd.store import tokens
from alarmd.store.db import Store
from alarmd.store.directory_import import import_job, parse_directory
from alarmd.supervision_service import SupervisionService
from alarmd.transports.dc09 import Dc09Receiver, Dc09Settings
from alarmd.transports.modem import ModemTransport
from alarmd.transports.mqtt import BrokerSettings, MqttIngest, MqttIngestSettings, TlsSettings
from alarmd.transports.sip import (
    AckPolicy,
    ScaipAccount,
    SipReceiver,
    SipSettings,
    store_case_state,
)

log = structlog.get_logger(__name__)

ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret
RUN_FILE = "run.json"
# notification channels this daemon delivers; sms and mqtt come with their transports
CHANNELS = ("console", "webhook")


class StartupError(Exception):
    """alarmd cannot start (a port in use, a data directory it cannot write); says why."""


class Daemon:
    """One running alarmd."""

    def __init__(
        self,
        config: AlarmdConfig,
        data_dir: Path,
        clock: Clock | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.data_dir = data_dir
        self.clock = clock or SystemClock()
        self.store: Store | None = None
        self.intake: Intake | None = None
        self.dc09: Dc09Receiver | None = None
        self.api: ApiServer | None = None
        self.engine: Engine | None = None
        self.supervision: SupervisionService | None = None
        self.case_hub: CaseHub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.modem: ModemTransport | None = None
        self.sip: SipReceiver | None = None
        self.dispatcher: Dispatcher | None = None
        self.case_management: AdminSweep | None = None
        self.webhooks: WebhookChannel | None = None
        self.routing: RoutingConfig = default_routing()
        self._stopping = asyncio.Event()
        self._dc09_accounts: dict[str, Dc09Account] = {}
        self._tenants: dict[str, str] = {}

    # --- configuration-derived lookups ----------------------------------------------------

    def _apply_accounts(self, config: AlarmdConfig) -> None:
        self._dc09_accounts = {acct: a.to_dc09() for acct, a in config.accounts.items()}
        self._tenants = {acct: a.tenant for acct, a in config.accounts.items()}

    def _load_routing(self, config: AlarmdConfig) -> RoutingConfig:
        """The routing files were checked by ``load_config``; this builds them."""
        return load_routing(config, self.config_path)

    def _start_mqtt(self, config: AlarmdConfig) -> dict[str, Channel]:
        """Device events from the broker, and (unless switched off) the staff channel."""
        assert self.intake is not None and self.engine is not None and self.store is not None
        mqtt = config.mqtt
        base = self.config_path.parent if self.config_path is not None else Path.cwd()
        password = None
        if mqtt.password_file is not None:
            try:
                password = (base / mqtt.password_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise StartupError(f"cannot read mqtt.password_file: {exc}") from exc
        tls = None
        if mqtt.tls is not None:
            tls = TlsSettings(
                ca_file=str(base / mqtt.tls.ca_file) if mqtt.tls.ca_file else None,
                cert_file=str(base / mqtt.tls.cert_file) if mqtt.tls.cert_file else None,
                key_file=str(base / mqtt.tls.key_file) if mqtt.tls.key_file else None,
                verify_hostname=mqtt.tls.verify_hostname,
            )
        broker = BrokerSettings(
            host=mqtt.broker.host,
            port=mqtt.broker.port,
            username=mqtt.username,
            password=password,
            tls=tls,
        )
        ingest = MqttIngest(
            intake=self.intake,
            clock=self.clock,
            settings=MqttIngestSettings(
                broker=broker,
                client_id=mqtt.ingest_client_id,
                mappings=tuple(parse_mapping(m) for m in mqtt.mappings),
                dead_letter_topic=mqtt.dead_letter_topic,
            ),
        )
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(ingest.run(), name="mqtt-ingest"))
        if not mqtt.staff_channel:
            return {}
        staff = StaffMqtt(
            engine=self.engine,
            store=self.store,
            settings=StaffMqttSettings(broker=broker, client_id=mqtt.staff_client_id),
        )
        self._tasks.append(loop.create_task(staff.run(), name="mqtt-staff"))
        return {"mqtt": staff}

    def _sip(self, config: AlarmdConfig) -> SipReceiver:
        """SCAIP over SIP: accounts with passwords from files, HOLD answered from the case."""
        assert self.intake is not None and self.store is not None
        scaip = config.scaip
        base = self.config_path.parent if self.config_path is not None else Path.cwd()
        accounts: dict[str, ScaipAccount] = {}
        for account in scaip.accounts:
            try:
                password = (base / account.password_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise StartupError(
                    f"scaip account {account.user}: cannot read its password_file: {exc}"
                ) from exc
            accounts[account.user] = ScaipAccount(
                password=password,
                ack_policy=AckPolicy(account.ack_policy),
                mrs_in_200=account.mrs_in_200,
                cids=frozenset(account.cids) if account.cids is not None else None,
            )
        return SipReceiver(
            intake=self.intake,
            store=self.store,
            clock=self.clock,
            accounts=accounts.get,
            settings=SipSettings(
                host=scaip.host,
                port=scaip.port,
                tls_port=scaip.tls_port,
                tls_cert=str(base / scaip.tls_cert) if scaip.tls_cert else None,
                tls_key=str(base / scaip.tls_key) if scaip.tls_key else None,
                realm=scaip.realm,
                heartbeat_minutes=scaip.heartbeat_minutes,
            ),
            case_state=store_case_state(self.store),
        )

    def _modem(self, config: AlarmdConfig) -> ModemTransport:
        """The GSM modem: SMS and ring alarms in, SMS notifications and replies."""
        assert self.intake is not None
        modem = config.modem
        pin = None
        if modem.pin_file is not None:
            base = self.config_path.parent if self.config_path is not None else Path.cwd()
            try:
                pin = (base / modem.pin_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise StartupError(f"cannot read modem.pin_file: {exc}") from exc
        return ModemTransport(
            modem.port,
            self.intake,
            self.clock,
            self._sms_table(config),
            name=modem.name,
            baudrate=modem.baudrate,
            pin=pin,
        )

    @staticmethod
    def _sms_table(config: AlarmdConfig) -> SmsAlarmTable:
        return SmsAlarmTable.of(
            (
                number,
                SenderConfig(
                    patterns=tuple(
                        TextPattern(p.match, p.kind, Condition(p.condition)) for p in s.patterns
                    ),
                    use_defaults=s.use_default_patterns,
                    ring_kind=s.ring,
                    name=s.name,
                ),
            )
            for number, s in config.modem.senders.items()
        )

    def _api_tls(self, config: AlarmdConfig) -> ssl.SSLContext | None:
        api = config.api
        if api.tls_cert is None or api.tls_key is None:
            return None
        base = self.config_path.parent if self.config_path is not None else Path.cwd()
        cert, key = base / api.tls_cert, base / api.tls_key
        try:
            return server_tls(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(
                f"cannot load the API's TLS certificate {cert} / key {key}: {exc}"
            ) from exc

    def _route(self, facts: RouteFacts, now: datetime) -> Decision:
        return rules.decide(self.routing, facts, now)

    def _webhook_endpoints(self) -> dict[str, WebhookEndpoint]:
        endpoints = {}
        for name, hook in self.routing.webhooks.items():
            if hook.secret is None:
                log.warning("webhook_disabled", endpoint=name, reason=hook.disabled_reason)
                continue
            endpoints[name] = WebhookEndpoint(
                name=name,
                url=hook.url,
                secret=hook.secret.get_secret_value().encode(),
                timeout_s=hook.timeout_s,
            )
        return endpoints

    @staticmethod
    def _account_intervals(config: AlarmdConfig) -> dict[tuple[str, str], tuple[str, timedelta]]:
        return {
            ("dc09", account): (a.tenant, timedelta(seconds=a.supervision_interval_s))
            for account, a in config.accounts.items()
            if a.supervision_interval_s
        }

    def _tenant_of(self, protocol: str, source: str) -> str | None:
        if protocol == "dc09":
            return self._tenants.get(source)
        if protocol == "supervision":  # "incident:<tenant>:<area>"
            return source.split(":")[1] if source.count(":") >= 2 else None
        return None

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        metrics.BUILD.info({"version": __version__})
        metrics.CONFIG_HASH.info({"sha256": config.config_hash})
        metrics.CONFIG_RELOAD_OK.set(1)
        self._apply_accounts(config)

        store_path = Path(config.store.path)
        if not store_path.is_absolute():
            store_path = self.data_dir / store_path
        try:
            self.store = await Store.open(store_path)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"cannot open the store {store_path}: {exc}") from exc
        await self._ensure_admin_token()

        try:
            self.routing = self._load_routing(config)
        except ConfigError as exc:
            raise StartupError(f"routing configuration:\n{exc}") from exc
        self.intake = Intake(
            self.store,
            dedup_window=timedelta(seconds=config.store.dedup_window_s),
            tenant_of=self._tenant_of,
        )
        # cases open in the events' own transaction; routing and deadlines run after it
        self.engine = Engine(
            self.store,
            self.clock,
            self._route,
            fallback_centre=self.routing.centre.operators,
            channels=frozenset(CHANNELS)
            | ({"mqtt"} if config.mqtt.enabled and config.mqtt.staff_channel else set())
            | ({"sms"} if config.modem.enabled else set()),
        )
        self.intake.set_case_hook(self.engine.on_event, self.engine.on_events)
        self.intake.add_listener(self.engine.events_committed)
        self.webhooks = WebhookChannel(self._webhook_endpoints(), self.clock)
        channels: dict[str, Channel] = {"webhook": self.webhooks}
        if config.mqtt.enabled:
            channels.update(self._start_mqtt(config))
        if config.modem.enabled:
            self.modem = self._modem(config)
            channels["sms"] = SmsChannel(
                self.modem, self.clock, max_per_minute=config.modem.sms_per_minute
            )
        self.dispatcher = Dispatcher(self.store, self.clock, channels)
        if self.modem is not None:
            replies = SmsReplies(self.store, self.engine, self.clock, wake=self.dispatcher.wake)
            self.modem.set_reply_handler(replies.handle)
            self.modem.start()
        self.engine.on_outbox(self.dispatcher.wake)
        self.case_hub = CaseHub()
        self.engine.on_case_change(self.case_hub.publish)
        await self._seed_example_directory()
        watch = config.supervision
        self.supervision = SupervisionService(
            self.store,
            self.intake,
            self.clock,
            outage_threshold=watch.outage_threshold,
            outage_window=timedelta(seconds=watch.outage_window_s),
            startup_grace=timedelta(seconds=watch.startup_grace_s),
            protocol_defaults={
                p: timedelta(seconds=s) for p, s in watch.protocol_defaults_s.items()
            },
            engine=self.engine,  # mains-lost cases held, and folded into outage incidents
        )
        self.supervision.set_account_intervals(self._account_intervals(config))
        self.intake.add_listener(self.supervision.events_committed)
        await self.supervision.load()
        self.supervision.start()
        await self.engine.load()
        self.engine.start()
        self.dispatcher.start()
        fault_after = config.case_management.fault_after_h
        self.case_management = AdminSweep(
            self.store, self.clock, timedelta(hours=fault_after) if fault_after else None
        )
        self.case_management.start()
        self.api = ApiServer(
            ApiContext(
                store=self.store,
                health=self.health,
                engine=self.engine,
                advance_clock=self._advance_clock if isinstance(self.clock, FakeClock) else None,
                directory_changed=self.supervision.reload,
                case_hub=self.case_hub,
                retention=timedelta(days=config.case_management.retention_days),
            ),
            config.api.host,
            config.api.port,
            ssl_context=self._api_tls(config),
        )
        try:
            await self.api.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen for the API on {config.api.host}:{config.api.port}: "
                f"{exc.strerror or exc} (is another alarmd running? see api.listen)"
            ) from exc

        if config.dc09.enabled:
            _raise_fd_limit(config.dc09.max_connections + 1024)
            self.dc09 = Dc09Receiver(
                intake=self.intake,
                clock=self.clock,
                accounts=lambda account: self._dc09_accounts.get(account),
                policy=config.dc09.timestamp.to_policy(),
                settings=Dc09Settings(
                    host=config.dc09.host,
                    port=config.dc09.port,
                    idle_timeout=config.dc09.idle_timeout_s,
                    max_connections=config.dc09.max_connections,
                    max_frame_bytes=config.dc09.max_frame_bytes,
                ),
            )
            self.dc09.heard = self.supervision.seen
            try:
                await self.dc09.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen for DC-09 on {config.dc09.host}:{config.dc09.port} (TCP and"
                    f" UDP): {exc.strerror or exc} (is another receiver running? see dc09.listen)"
                ) from exc
        if config.scaip.enabled:
            self.sip = self._sip(config)
            self.sip.heard = self.supervision.seen
            try:
                await self.sip.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen for SCAIP on {config.scaip.host}:{config.scaip.port}"
                    f" (UDP and TCP): {exc.strerror or exc} (see scaip.port)"
                ) from exc
        self._write_run_file()
        # Everything built so far (configuration, accounts, modules) lives as long as the
        # daemon: move it out of the collector's sight so collections stay cheap.
        gc.collect()
        gc.freeze()
        # Every frame allocates a few dozen short-lived objects; the default threshold (700)
        # ran a collection every ~20 frames. Fewer, larger young collections cost less.
        gc.set_threshold(50_000, 20, 100)
        log.info(
            "alarmd_started",
            version=__version__,
            data_dir=str(self.data_dir),
            store=str(store_path),
            accounts=len(self._dc09_accounts),
            api_port=self.api.port,
            dc09_port=self.dc09.port if self.dc09 else None,
        )

    async def stop(self) -> None:
        log.info("alarmd_stopping")
        if self.dc09 is not None:
            await self.dc09.stop()
            self.dc09 = None
        if self.sip is not None:
            await self.sip.stop()
            self.sip = None
        if self.modem is not None:
            await self.modem.stop()
            self.modem = None
        for task in self._tasks:  # the MQTT clients
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.supervision is not None:
            await self.supervision.stop()
            self.supervision = None
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None
        if self.dispatcher is not None:
            await self.dispatcher.stop()
            self.dispatcher = None
        if self.case_management is not None:
            await self.case_management.stop()
            self.case_management = None
        if self.webhooks is not None:
            await self.webhooks.close()
            self.webhooks = None
        if self.api is not None:
            await self.api.stop()
            self.api = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / RUN_FILE).unlink()
        log.info("alarmd_stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Start, tell systemd we are ready, serve until SIGTERM/SIGINT, then stop cleanly."""
        loop = asyncio.get_running_loop()
        try:
            await self.start()
        except BaseException:
            await self.stop()  # release what did start (ports, the store) before reporting
            raise
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        sd_notify("READY=1")
        watchdog = loop.create_task(self._watchdog()) if _watchdog_interval() else None
        try:
            await self._stopping.wait()
        finally:
            sd_notify("STOPPING=1")
            if watchdog is not None:
                watchdog.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()

    def reload(self) -> bool:
        """SIGHUP: read the configuration again; a configuration that fails keeps the old one.

        Accounts (keys, tenants, zone overrides) take effect for the next frame. Listen
        addresses and the store path need a restart; a change to them is logged, not applied.
        """
        if self.config_path is None:
            log.warning("config_reload_skipped", reason="running the embedded default")
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            metrics.CONFIG_RELOAD_OK.set(0)
            log.error(
                "config_reload_failed_keeping_old",
                problems=[str(p) for p in exc.problems],
            )
            return False
        sd_notify("RELOADING=1")
        for section in ("api", "dc09", "store"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("config_change_needs_restart", section=section)
        try:
            routing = self._load_routing(new)
        except ConfigError as exc:
            metrics.CONFIG_RELOAD_OK.set(0)
            log.error("config_reload_failed_keeping_old", problems=[str(p) for p in exc.problems])
            return False
        self._apply_accounts(new)
        if self.modem is not None:
            self.modem.table = self._sms_table(new)
        if self.intake is not None:
            self.intake.set_tenant_lookup(self._tenant_of)
        self.routing = routing  # new cases only: running ones keep their snapshots
        if self.supervision is not None:
            self.supervision.set_account_intervals(self._account_intervals(new))
            self.supervision.protocol_defaults = {
                p: timedelta(seconds=s) for p, s in new.supervision.protocol_defaults_s.items()
            }
            asyncio.get_running_loop().create_task(self.supervision.reload())
        if self.engine is not None:
            self.engine.set_router(self._route, routing.centre.operators)
        if self.webhooks is not None:
            self.webhooks.set_endpoints(self._webhook_endpoints())
        self.config = new
        metrics.CONFIG_RELOAD_OK.set(1)
        metrics.CONFIG_HASH.info({"sha256": new.config_hash})
        log.info("config_reloaded", accounts=len(self._dc09_accounts), sha256=new.config_hash)
        sd_notify("READY=1")
        return True

    # --- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What /health reports; the watchdog pings systemd only while this says ok."""
        checks: dict[str, Any] = {}
        ok = True
        if self.store is not None:
            writer_ok = not self.store.writer.failed
            checks["store"] = {"ok": writer_ok, "queued_jobs": self.store.writer.queued}
            ok = ok and writer_ok
        if self.dc09 is not None:
            checks["dc09"] = {
                "ok": True,
                "port": self.dc09.port,
                "connections": self.dc09.connection_count,
            }
        return {"status": "ok" if ok else "degraded", "version": __version__, "checks": checks}

    async def _watchdog(self) -> None:
        interval = _watchdog_interval()
        assert interval is not None
        while True:
            await asyncio.sleep(interval / 2)
            if self.health()["status"] == "ok":
                sd_notify("WATCHDOG=1")

    def _advance_clock(self, seconds: float) -> None:
        """Tests only (``ALARMD_TEST_CLOCK``): move the daemon's time and look at deadlines."""
        assert isinstance(self.clock, FakeClock)
        self.clock.advance(seconds)
        if self.engine is not None:
            self.engine.wake()
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if self.case_management is not None:
            self.case_management.wake()

    async def _seed_example_directory(self) -> None:
        """The embedded default imports the example directory into an empty database, so a
        newcomer's first simulated alarm has a user, a plan and a team to route to."""
        assert self.store is not None
        if self.config_path is None or self.config_path != default_config_path():
            return
        empty = await self.store.writer.submit(
            lambda conn: conn.execute("SELECT count(*) FROM tenants").fetchone()[0] == 0
        )
        example = self.config_path.parent / "directory.example.yaml"
        if not empty or not example.exists():
            return
        summary = await self.store.writer.submit(
            import_job(parse_directory(example), self.clock.now(), "alarmd:example")
        )
        log.info("example_directory_imported", path=str(example), **summary.to_json())

    # --- files in the data directory -------------------------------------------------------

    async def _ensure_admin_token(self) -> None:
        assert self.store is not None
        if await self.store.writer.submit(tokens.count_job) > 0:
            return
        token = tokens.new_token()
        await self.store.writer.submit(
            tokens.create_job("admin", "admin", None, token, self.clock.now())
        )
        path = self.data_dir / ADMIN_TOKEN_FILE
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        log.info("admin_token_created", path=str(path.resolve()), hint="keep it secret; mode 0600")

    def _write_run_file(self) -> None:
        assert self.api is not None
        info = {
            "pid": os.getpid(),
            "api": f"{'https' if self.config.api.tls_cert else 'http'}://"
            f"{_url_host(self.config.api.host)}:{self.api.port}",
            "api_port": self.api.port,
            "dc09_port": self.dc09.port if self.dc09 else None,
            "scaip_port": self.sip.port if self.sip else None,
            "scaip_tls_port": self.sip.tls_port if self.sip else None,
        }
        tmp = self.data_dir / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.data_dir / RUN_FILE)


def _raise_fd_limit(wanted: int) -> None:
    """A receiver holds one descriptor per alarm unit: lift the soft limit towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning("fd_limit_low", limit=target, wanted=wanted, hint="raise LimitNOFILE")


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 - mapping a wildcard bind to a reachable address
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not os.environ.get("NOTIFY_SOCKET"):
        return None
    return int(usec) / 1_000_000


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))

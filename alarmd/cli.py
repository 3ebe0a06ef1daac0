"""Entry points: ``alarmd`` (the daemon) and ``alarmctl`` (tools that talk to it).

``alarmd run`` with no ``--config`` runs the embedded default: the repository's example
configuration, SQLite under ``--data-dir`` (default ./var), every receiver on 127.0.0.1,
so that a newcomer sees it work with one command.

``alarmctl`` finds the daemon through ``<data-dir>/run.json`` and authenticates with
``<data-dir>/admin-token`` unless ``--api`` and ``--token`` are given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from alarmd.admin import cli as admin_cli

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where available (Linux), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


# --- alarmd ------------------------------------------------------------------------------


def alarmd_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alarmd", description="alarmd alarm receiving centre")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="main YAML file (default: the embedded example)")
    run.add_argument("--data-dir", type=Path, help="where the database and runtime files live")
    check = sub.add_parser(
        "check-config", help="validate a configuration; print file:line:col errors"
    )
    check.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config)
    return _run(args.config, args.data_dir)


def _check_config(path: Path) -> int:
    from alarmd.config import check_config

    problems = check_config(path)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def _run(config_path: Path | None, data_dir: Path | None) -> int:
    from alarmd import log
    from alarmd.app import Daemon, StartupError
    from alarmd.config import ConfigError, default_config_path, load_config

    if config_path is None:
        config_path = default_config_path()
        if config_path is None:
            print("alarmd: no --config given and no embedded example found", file=sys.stderr)
            return 2
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    log.configure(config.log.level, config.log.format)
    directory = data_dir or Path(config.data_dir)
    clock = None
    test_clock = os.environ.get("ALARMD_TEST_CLOCK")
    if test_clock:
        # tests only: time stands still until moved through POST /api/v1/debug/clock
        from alarmd.clock import FakeClock

        start = datetime.fromisoformat(test_clock.replace("Z", "+00:00"))
        if start.tzinfo is None:
            print("alarmd: ALARMD_TEST_CLOCK needs a UTC offset", file=sys.stderr)
            return 2
        clock = FakeClock(start)
        print(f"alarmd: running on a test clock starting {start.isoformat()}", file=sys.stderr)
    try:
        run_async(Daemon(config, directory, clock=clock, config_path=config_path).run())
    except StartupError as exc:
        print(f"alarmd: {exc}", file=sys.stderr)
        return 1
    return 0


# --- alarmctl ----------------------------------------------------------------------------


def alarmctl_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alarmctl", description="tools that talk to alarmd")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("ALARMD_DATA_DIR", "var"))
    )
    parser.add_argument("--api", help="API base URL (default: from <data-dir>/run.json)")
    parser.add_argument("--token", help="API token (default: <data-dir>/admin-token)")
    sub = parser.add_subparsers(dest="command", required=True)

    events = sub.add_parser("events", help="list stored events")
    events.add_argument("--account", help="only this DC-09 account (or other source id)")
    events.add_argument("--protocol")
    events.add_argument("--since", help="ISO 8601 time with offset, e.g. 2026-11-24T08:00Z")
    events.add_argument("--limit", type=int, default=50)
    events.add_argument("--json", action="store_true", help="one JSON object per line")

    console = sub.add_parser("console", help="the operator console (terminal UI)")
    console.add_argument("--lang", choices=["nb", "en"], default="nb")

    imp = sub.add_parser("import", help="load service users, devices, staff, teams (YAML/CSV)")
    imp.add_argument("file", type=Path)
    imp.add_argument(
        "--dry-run",
        action="store_true",
        help="change nothing: print what the import would do, or every problem by row",
    )

    cases = sub.add_parser("cases", help="list cases (open ones by default)")
    cases.add_argument("--all", action="store_true", help="closed ones too, newest first")
    cases.add_argument("--json", action="store_true", help="one JSON object per line")
    case = sub.add_parser("case", help="one case: plan, contacts and log")
    case.add_argument("id", type=int)
    case.add_argument("--json", action="store_true")
    for verb, text in (
        ("accept", "take responsibility for a case"),
        ("decline", "give a case back, or say you cannot take it"),
        ("onsite", "someone is with the user"),
    ):
        sub.add_parser(verb, help=text).add_argument("id", type=int)
    note = sub.add_parser("note", help="add a note to a case")
    note.add_argument("id", type=int)
    note.add_argument("text")
    dispatch = sub.add_parser("dispatch", help="send home care, next of kin or an ambulance")
    dispatch.add_argument("id", type=int)
    dispatch.add_argument("to", choices=["home_care", "next_of_kin", "ambulance"])
    dispatch.add_argument("--note", default="")
    close = sub.add_parser("close", help="close a case with an outcome")
    close.add_argument("id", type=int)
    close.add_argument(
        "outcome",
        choices=[
            "resolved_by_phone",
            "home_care_dispatched",
            "ambulance",
            "next_of_kin",
            "accidental",
            "technical",
            "test",
        ],
    )
    close.add_argument("--note", default="")

    admin = sub.add_parser(
        "admin", help="administration: API tokens, service users, devices, orders, audit"
    )
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    admin_cli.add_arguments(admin_sub)
    token = admin_sub.add_parser("token", help="create, list and revoke API tokens")
    token_sub = token.add_subparsers(dest="what", required=True)
    create = token_sub.add_parser("create", help="issue a token (shown once)")
    create.add_argument("name")
    create.add_argument("--role", required=True, help="operator, supervisor, home_care...")
    create.add_argument("--tenant", action="append", help="limit to a tenant (repeatable)")
    create.add_argument("--person", help="the staff member it acts for, e.g. staff:7")
    token_sub.add_parser("list", help="every token issued (never the token itself)")
    revoke = token_sub.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("name")

    routes = sub.add_parser("routes", help="test, explain and check the routing configuration")
    routes.add_argument("--config", type=Path, help="main YAML file (default: the example)")
    routes_sub = routes.add_subparsers(dest="routes_command", required=True)
    rtest = routes_sub.add_parser("test", help="run the tests in tenant files")
    rtest.add_argument("files", nargs="*", type=Path, help="tenant files (default: all)")
    explain = routes_sub.add_parser("explain", help="why an alarm would go where it goes")
    explain.add_argument("--tenant", required=True)
    explain.add_argument("--kind", required=True, help="fall, assistance, mains_lost...")
    explain.add_argument("--at", required=True, help="2026-12-24T22:00 (Europe/Oslo) or w/ offset")
    explain.add_argument("--location", default="home", help="home | away | care_home")
    explain.add_argument("--group")
    explain.add_argument("--plan-mode")
    routes_sub.add_parser("check", help="find times when an alarm kind has no route")

    simulate = sub.add_parser("simulate", help="act as a device")
    sim_sub = simulate.add_subparsers(dest="protocol", required=True)
    from alarmd.sim import dc09 as sim_dc09

    sim_dc09.add_arguments(sim_sub.add_parser("dc09", help="a DC-09 transmitter"))
    from alarmd.sim import modem as sim_modem

    sim_modem.add_arguments(
        sim_sub.add_parser("modem", help="a GSM modem on a pseudo-terminal (until Ctrl-C)")
    )
    scaip = sim_sub.add_parser("scaip", help="a SCAIP alarm unit: REGISTER, then an alarm")
    scaip.add_argument("--host", default="127.0.0.1")
    scaip.add_argument("--port", type=int, help="default: from <data-dir>/run.json, else 5060")
    scaip.add_argument("--cid", required=True, help="the unit's caller id")
    scaip.add_argument("--user", required=True, help="Digest user")
    scaip.add_argument("--password", required=True)
    scaip.add_argument("--dty", type=int, default=3, help="device type (3: pendant)")
    scaip.add_argument("--stc", type=int, help="status code")
    scaip_transport = scaip.add_mutually_exclusive_group()
    scaip_transport.add_argument("--tcp", action="store_true", help="TCP instead of UDP")
    scaip_transport.add_argument(
        "--tls", action="store_true", help="TLS (default port: from run.json, else 5061)"
    )
    scaip_trust = scaip.add_mutually_exclusive_group()
    scaip_trust.add_argument(
        "--ca", type=Path, metavar="FILE", help="with --tls: trust this CA (or self-signed) cert"
    )
    scaip_trust.add_argument(
        "--insecure",
        action="store_true",
        help="with --tls: do not verify the receiver's certificate (testing only)",
    )
    mqtt = sim_sub.add_parser("mqtt", help="an MQTT device event, or a staff app's answer")
    mqtt.add_argument("--broker", default="127.0.0.1:1883", help="host:port")
    mqtt.add_argument("--username")
    mqtt.add_argument("--password")
    mqtt.add_argument("--tenant", required=True)
    mqtt.add_argument("--device", help="device id: publish a native event as this device")
    mqtt.add_argument("--kind", default="assistance", help="fall, assistance, battery_low...")
    mqtt.add_argument("--condition", choices=["alarm", "restore", "status"])
    mqtt.add_argument("--staff", help="MQTT id of a staff member: publish their answer")
    mqtt.add_argument("--case", type=int, help="with --staff: the case")
    mqtt.add_argument("--action", choices=["accept", "decline", "on_site", "close"])
    mqtt.add_argument("--outcome")

    args = parser.parse_args(argv)
    if args.command == "events":
        return _events(args)
    if args.command == "import":
        return _import(args)
    if args.command == "console":
        from alarmd.console.app import run_console

        api, bearer = _api_and_token(args)
        return run_console(api, bearer, args.lang)
    if args.command == "cases":
        return _cases(args)
    if args.command == "case":
        return _case(args)
    if args.command in ("accept", "decline", "onsite", "note", "close", "dispatch"):
        return _act(args)
    if args.command == "routes":
        return _routes(args)
    if args.command == "admin" and args.admin_command == "token":
        return _admin_token(args)
    if args.command == "admin":
        return admin_cli.run(args)
    if args.command == "simulate" and args.protocol == "scaip":
        return _simulate_scaip(args)
    if args.command == "simulate" and args.protocol == "modem":
        return _simulate_modem(args)
    if args.command == "simulate" and args.protocol == "mqtt":
        return _simulate_mqtt(args)
    if args.command == "simulate" and args.protocol == "dc09":
        if not getattr(args, "port", None):
            args.port = _run_info(args.data_dir).get("dc09_port") or 12128
        return sim_dc09.main(args)
    parser.error("unknown command")
    return 2


def _simulate_scaip(args: argparse.Namespace) -> int:
    from alarmd.sim import scaip as sim_scaip

    if (args.ca is not None or args.insecure) and not args.tls:
        print("alarmctl: --ca and --insecure go with --tls", file=sys.stderr)
        return 2
    if args.tls:
        port = args.port or _run_info(args.data_dir).get("scaip_tls_port") or 5061
    else:
        port = args.port or _run_info(args.data_dir).get("scaip_port") or 5060
    context = None
    if args.tls:
        import ssl

        try:
            context = ssl.create_default_context(
                cafile=str(args.ca) if args.ca is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            print(f"alarmctl: cannot use --ca {args.ca}: {exc}", file=sys.stderr)
            return 2
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        exchanges = asyncio.run(
            sim_scaip.simulate(
                args.host,
                int(port),
                cid=args.cid,
                user=args.user,
                password=args.password,
                dty=args.dty,
                stc=args.stc,
                transport="tls" if args.tls else "tcp" if args.tcp else "udp",
                ssl_context=context,
            )
        )
    except Exception as exc:  # one clear line for the installer at the keyboard
        print(f"alarmctl: SCAIP to {args.host}:{port} failed: {exc}", file=sys.stderr)
        return 1
    for exchange in exchanges:
        mrs = exchange.mrs
        answer = f"<mrs snu={mrs.snu}>" if mrs is not None else "no <mrs>"
        print(f"{exchange.response.status} {exchange.response.reason}; {answer}")
    last = exchanges[-1].mrs if exchanges else None
    return 0 if last is not None and last.snu == 0 else 1


def _simulate_modem(args: argparse.Namespace) -> int:
    """Play a GSM modem on a pseudo-terminal until SIGTERM/SIGINT; point modem.port at the
    path it prints."""
    import signal

    from alarmd.sim import modem as sim_modem

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await sim_modem.serve(args, stop)

    asyncio.run(main())
    return 0


def _simulate_mqtt(args: argparse.Namespace) -> int:
    from alarmd.sim import mqtt as sim_mqtt
    from alarmd.transports.mqtt import BrokerSettings

    host, _, port = args.broker.rpartition(":")
    if not host or not port.isdigit():
        print(f"alarmctl: --broker host:port, not {args.broker!r}", file=sys.stderr)
        return 2
    broker = BrokerSettings(
        host=host, port=int(port), username=args.username, password=args.password
    )
    if args.staff:
        if args.case is None or args.action is None:
            print("alarmctl: --staff needs --case and --action", file=sys.stderr)
            return 2
        coro: Coroutine[Any, Any, object] = sim_mqtt.publish_staff_action(
            broker, args.tenant, args.staff, args.case, args.action, outcome=args.outcome
        )
    elif args.device:
        coro = sim_mqtt.publish_device_event(
            broker, args.tenant, args.device, args.kind, condition=args.condition
        )
    else:
        print("alarmctl: give --device (an event) or --staff (an answer)", file=sys.stderr)
        return 2
    try:
        asyncio.run(coro)
    except Exception as exc:  # one clear line for the person at the keyboard
        print(f"alarmctl: could not publish to {args.broker}: {exc}", file=sys.stderr)
        return 1
    print("published (the broker acknowledged it)")
    return 0


def _run_info(data_dir: Path) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads((data_dir / "run.json").read_text())
    except FileNotFoundError:
        return {}
    return info


def _api_and_token(args: argparse.Namespace) -> tuple[str, str]:
    api = args.api or _run_info(args.data_dir).get("api")
    if not api:
        raise SystemExit(
            f"alarmctl: cannot find the daemon: no {args.data_dir / 'run.json'} (is alarmd running"
            " with this --data-dir?) and no --api given"
        )
    token = args.token or os.environ.get("ALARMD_TOKEN")
    if not token:
        path = args.data_dir / "admin-token"
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            raise SystemExit(f"alarmctl: no --token given and no {path}") from None
    return str(api).rstrip("/"), token


def _routes(args: argparse.Namespace) -> int:
    """Route tools work on files, not on the running daemon: a municipality can test its
    configuration in its own CI before it is deployed."""
    from alarmd.routing import tools

    if args.routes_command == "test":
        code, text = tools.routes_test(args.config, list(args.files))
    elif args.routes_command == "explain":
        code, text = tools.routes_explain(
            args.config, args.tenant, args.kind, args.at, args.location, args.group, args.plan_mode
        )
    else:
        code, text = tools.routes_check(args.config)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _request(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    data: bytes | None = None,
    content_type: str | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    import aiohttp

    api, token = _api_and_token(args)
    headers = {"Authorization": f"Bearer {token}"}
    if content_type:
        headers["Content-Type"] = content_type

    async def go() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.request(method, f"{api}{path}", data=data, params=params) as response,
        ):
            return response.status, await response.json()

    try:
        return asyncio.run(go())
    except aiohttp.ClientError as exc:
        raise SystemExit(f"alarmctl: cannot reach {api}: {exc}") from None


def _admin_token(args: argparse.Namespace) -> int:
    if args.what == "create":
        body = {"name": args.name, "role": args.role, "tenants": args.tenant, "person": args.person}
        status, answer = _request(
            args,
            "POST",
            "/api/v1/admin/tokens",
            data=json.dumps(body).encode(),
            content_type="application/json",
        )
    elif args.what == "list":
        status, answer = _request(args, "GET", "/api/v1/admin/tokens")
    else:
        status, answer = _request(args, "DELETE", f"/api/v1/admin/tokens/{args.name}")
    if status not in (200, 201):
        print(f"alarmctl: {status} {answer.get('error')}: {answer.get('message')}", file=sys.stderr)
        return 1
    if args.what == "create":
        print(answer["token"])
        print("(shown once: only its hash is kept)", file=sys.stderr)
    elif args.what == "list":
        for row in answer["tokens"]:
            scope = ",".join(row["tenants"]) if row["tenants"] else "*"
            state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
            print(f"{row['name']:24} {row['role']:12} {scope:24} {row['person'] or '-':12} {state}")
    else:
        print(f"revoked {args.name}")
    return 0


def _import(args: argparse.Namespace) -> int:
    path: Path = args.file
    suffix = path.suffix.lower()
    types = {".yaml": "application/yaml", ".yml": "application/yaml", ".csv": "text/csv"}
    if suffix not in types:
        print(f"alarmctl: {path}: give a .yaml, .yml or .csv file", file=sys.stderr)
        return 2
    try:
        body = path.read_bytes()
    except OSError as exc:
        print(f"alarmctl: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    params = {"filename": str(path)}
    dry_run = bool(getattr(args, "dry_run", False))
    if dry_run:
        params["dry_run"] = "true"
    status, answer = _request(
        args,
        "POST",
        "/api/v1/directory/import",
        data=body,
        content_type=types[suffix],
        params=params,
    )
    if status != 200 or (dry_run and not answer.get("ok")):
        for problem in answer.get("problems", []):
            print(problem, file=sys.stderr)
        if dry_run and status == 200:
            print(f"alarmctl: dry run: {answer.get('message')}; nothing changed", file=sys.stderr)
        else:
            error = f"{status} {answer.get('error')}: {answer.get('message')}"
            print(f"alarmctl: {error}", file=sys.stderr)
        return 1
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    if dry_run:
        print("alarmctl: dry run: nothing was changed", file=sys.stderr)
    return 0


def _case(args: argparse.Namespace) -> int:
    status, body = _request(args, "GET", f"/api/v1/cases/{args.id}")
    if status != 200:
        print(f"alarmctl: {status} {body.get('error')}: {body.get('message')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return 0
    print(
        f"case {body['id']}  {body['tenant'] or '-'}  {body['kind']}  {body['state']}"
        f"  mode {body['mode'] or '-'}  held by {body['accepted_by'] or '-'}"
    )
    plan = body.get("plan") or {}
    if plan.get("instructions"):
        print(f"instructions: {plan['instructions']}")
    if plan.get("key_box"):
        print(f"key box: {plan['key_box']}")
    for contact in plan.get("contacts", []):
        key = ", has a key" if contact.get("has_key") else ""
        print(
            f"contact {contact['position']}: {contact['name']} ({contact['relation']}){key}"
            f" {contact['phone']}"
        )
    for entry in body["log"]:
        print(f"{entry['at'][:19]}  {entry['actor']:24} {entry['type']:12} {entry['message']}")
    return 0


def _act(args: argparse.Namespace) -> int:
    """accept / decline / onsite / note / close: the console's keys as plain commands."""
    action = {"onsite": "on_site"}.get(args.command, args.command)
    body: dict[str, str] = {}
    if args.command == "note":
        body = {"text": args.text}
    elif args.command == "close":
        body = {"outcome": args.outcome, "note": args.note}
    elif args.command == "dispatch":
        body = {"to": args.to, "note": args.note}
    status, answer = _request(
        args,
        "POST",
        f"/api/v1/cases/{args.id}/{action}",
        data=json.dumps(body).encode(),
        content_type="application/json",
    )
    if status != 200:
        print(f"alarmctl: {status} {answer.get('error')}: {answer.get('message')}", file=sys.stderr)
        return 1
    print(f"case {answer['id']}: {answer['state']}, held by {answer['accepted_by'] or '-'}")
    return 0


def _cases(args: argparse.Namespace) -> int:
    params = {"state": "all" if args.all else "open"}
    status, body = _request(args, "GET", "/api/v1/cases", params=params)
    if status != 200:
        print(f"alarmctl: {status} {body.get('error')}: {body.get('message')}", file=sys.stderr)
        return 1
    rows = body["cases"]
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    if not rows:
        print("no cases")
        return 0
    print(f"{'id':>6}  {'pri':3} {'tenant':18} {'kind':12} {'state':10} {'mode':20} holder")
    for row in rows:
        print(
            f"{row['id']:>6}  {row['priority']:<3} {row['tenant'] or '-':18} {row['kind']:12}"
            f" {row['state']:10} {row['mode'] or '-':20} {row['accepted_by'] or '-'}"
        )
    return 0


def _events(args: argparse.Namespace) -> int:
    params: dict[str, str] = {"limit": str(args.limit)}
    if args.account:
        params["account"] = args.account
    if args.protocol:
        params["protocol"] = args.protocol
    if args.since:
        params["since"] = args.since
    status, body = _request(args, "GET", "/api/v1/events", params=params)
    if status != 200:
        print(f"alarmctl: {status} {body.get('error')}: {body.get('message')}", file=sys.stderr)
        return 1
    rows = body["events"]
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    if not rows:
        print("no events")
        return 0
    header = ("id", "received (UTC)", "account", "kind", "cond", "code", "zone", "flags")
    print(
        f"{header[0]:>7}  {header[1]:19}  {header[2]:8} {header[3]:14} {header[4]:8} "
        f"{header[5]:10} {header[6]:4} {header[7]}"
    )
    for row in reversed(rows):
        received = datetime.fromisoformat(row["received_at"].replace("Z", "+00:00"))
        print(
            f"{row['id']:>7}  {received:%Y-%m-%d %H:%M:%S}  {row['source']:8} {row['kind']:14}"
            f" {row['condition']:8} {row['code']:10} {row['zone'] or '-':4}"
            f" {','.join(row['flags'])}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(alarmd_main())

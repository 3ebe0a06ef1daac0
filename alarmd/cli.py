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

    simulate = sub.add_parser("simulate", help="act as a device")
    sim_sub = simulate.add_subparsers(dest="protocol", required=True)
    from alarmd.sim import dc09 as sim_dc09

    sim_dc09.add_arguments(sim_sub.add_parser("dc09", help="a DC-09 transmitter"))

    args = parser.parse_args(argv)
    if args.command == "events":
        return _events(args)
    if args.command == "simulate" and args.protocol == "dc09":
        if not getattr(args, "port", None):
            args.port = _run_info(args.data_dir).get("dc09_port") or 12128
        return sim_dc09.main(args)
    parser.error("unknown command")
    return 2


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


def _events(args: argparse.Namespace) -> int:
    import aiohttp

    api, token = _api_and_token(args)
    params: dict[str, str] = {"limit": str(args.limit)}
    if args.account:
        params["account"] = args.account
    if args.protocol:
        params["protocol"] = args.protocol
    if args.since:
        params["since"] = args.since

    async def fetch() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
            session.get(f"{api}/api/v1/events", params=params) as response,
        ):
            return response.status, await response.json()

    try:
        status, body = asyncio.run(fetch())
    except aiohttp.ClientError as exc:
        print(f"alarmctl: cannot reach {api}: {exc}", file=sys.stderr)
        return 1
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

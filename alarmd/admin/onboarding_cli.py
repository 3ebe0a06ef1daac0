"""``alarmctl admin export``: one municipality's directory as a file the import accepts.

The command is a client of ``GET /api/v1/directory/export`` (``api/directory.py``); the
file holds personal data and key box codes, and the API records the export in the audit
before it answers. Hooked into ``alarmctl admin`` by ``cli.py``::

    from alarmd.admin.onboarding_cli import add_export_arguments, export_command

    export = admin_sub.add_parser("export", help="...")
    add_export_arguments(export)          # then dispatch to export_command(args)

``args`` also carries ``alarmctl``'s global ``--api``, ``--token`` and ``--data-dir``.
Importing (``alarmctl import [--dry-run] FILE``) is ``cli.py``'s own ``import`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

__all__ = ["add_export_arguments", "export_command"]


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", required=True, help="the municipality (tenant id) to export")
    parser.add_argument(
        "--format",
        choices=["yaml", "csv"],
        default="yaml",
        help="yaml: suppliers, staff, teams, users (the whole picture); csv: users only",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="write to this file (default: standard output)"
    )
    parser.add_argument("--why", default="", help="the reason, recorded in the audit")


async def _fetch(api: str, token: str, params: dict[str, str]) -> tuple[int, bytes]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(f"{api}/api/v1/directory/export", params=params) as response,
    ):
        return response.status, await response.read()


def export_command(args: argparse.Namespace) -> int:
    """Fetch the export and write it; 0 on success, 1 if the API refused (message on
    standard error). An output file is created with mode 0600: it holds key box codes."""
    import aiohttp

    from alarmd.cli import _api_and_token

    api, token = _api_and_token(args)
    params = {"tenant": args.tenant, "format": args.format}
    if getattr(args, "why", ""):
        params["why"] = args.why
    try:
        status, body = asyncio.run(_fetch(api, token, params))
    except aiohttp.ClientError as exc:
        print(f"alarmctl: cannot reach {api}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        error, message = answer.get("error", "error"), answer.get("message", body[:200])
        print(f"alarmctl: {status} {error}: {message}", file=sys.stderr)
        return 1
    output: Path | None = args.output
    if output is None:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        return 0
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(body)
    print(f"{output}: tenant {args.tenant} exported ({len(body)} bytes)", file=sys.stderr)
    return 0

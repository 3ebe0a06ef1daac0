"""``alarmctl admin ...``: case management from the command line, a client of the API's
``/api/v1/admin/`` routes (``api/casework.py``); every rule and every permission is the
API's, so a script and the console can never do what the other may not.

    alarmctl admin user create eksempel-kommune u-2001 --first-name Ada --last-name Testesen
    alarmctl admin decision add eksempel-kommune/u-2001 --service safety_alarm
    alarmctl admin order create --tenant eksempel-kommune --kind install --user u-2001 --device 7
    alarmctl admin audit --user eksempel-kommune/u-2001

Answers are printed as JSON (the deviation export as CSV); a refusal prints the API's
message and exits 1, a usage error exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from alarmd.admin import lifecycle
from alarmd.admin.onboarding_cli import add_export_arguments, export_command

__all__ = ["add_arguments", "run"]


def _user_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="TENANT/REF", help="e.g. eksempel-kommune/u-1001")


def _person_fields(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--first-name", required=required)
    parser.add_argument("--last-name", required=required)
    parser.add_argument("--address")
    parser.add_argument("--postcode")
    parser.add_argument("--phone")
    parser.add_argument("--group", help="routing group, e.g. dementia")
    parser.add_argument("--location", choices=["home", "away", "care_home"])


def add_arguments(admin_sub: Any) -> None:
    """Add the case-management commands to ``alarmctl admin``'s subparsers."""
    user = admin_sub.add_parser("user", help="service users: create, update, show, end")
    user_sub = user.add_subparsers(dest="verb", required=True)
    create = user_sub.add_parser("create", help="a new service user")
    create.add_argument("tenant")
    create.add_argument("ref")
    _person_fields(create, required=True)
    update = user_sub.add_parser("update", help="change a user's facts")
    _user_arg(update)
    _person_fields(update, required=False)
    show = user_sub.add_parser("show", help="decisions, devices, orders, faults, plan versions")
    _user_arg(show)
    show.add_argument("--why", default="", help="the reason, recorded in the audit")
    for verb, text in (
        ("activate", "route by the user's plan again"),
        ("deactivate", "stop routing by the plan (a hospital stay); alarms go to the centre"),
    ):
        _user_arg(user_sub.add_parser(verb, help=text))
    end = user_sub.add_parser("end", help="the need has ceased: end, de-install, erase later")
    _user_arg(end)
    end.add_argument("--reason", default="the need has ceased")
    end.add_argument("--supplier", help="for devices without a registered supplier")

    plan = admin_sub.add_parser("plan", help="response plans: a new version, or an old one")
    plan_sub = plan.add_subparsers(dest="verb", required=True)
    pset = plan_sub.add_parser("set", help="a new version with the fields given")
    _user_arg(pset)
    pset.add_argument("--instructions")
    pset.add_argument("--key-box")
    pset.add_argument("--team", help="the home-care team (ref)")
    pset.add_argument("--mode", choices=["response", "routing", "routing_with_backup"])
    pset.add_argument(
        "--contacts", type=Path, help="a JSON or YAML file: a list of {name, phone, relation...}"
    )
    pshow = plan_sub.add_parser("show", help="one stored version")
    _user_arg(pshow)
    pshow.add_argument("version", type=int)
    pshow.add_argument("--why", default="")

    decision = admin_sub.add_parser("decision", help="applications and decisions (vedtak)")
    decision_sub = decision.add_subparsers(dest="verb", required=True)
    dadd = decision_sub.add_parser("add", help="register an application or a decision")
    _user_arg(dadd)
    dadd.add_argument("--service", required=True, choices=lifecycle.SERVICES)
    dadd.add_argument("--sensor-type")
    dadd.add_argument("--granted", action="store_true", help="already granted (give --valid-from)")
    dadd.add_argument("--valid-from")
    dadd.add_argument("--valid-to")
    dadd.add_argument("--reference", default="", help="the municipality's case number")
    dadd.add_argument("--note", default="")
    for verb in ("grant", "refuse", "end"):
        step = decision_sub.add_parser(verb, help=f"{verb} a decision")
        step.add_argument("id", type=int)
        step.add_argument("--valid-from")
        step.add_argument("--valid-to")
        step.add_argument("--note")

    supplier = admin_sub.add_parser("supplier", help="register or change a supplier")
    supplier.add_argument("id")
    supplier.add_argument("--name", required=True)
    supplier.add_argument("--email", default="")
    supplier.add_argument("--phone", default="")

    device = admin_sub.add_parser("device", help="the device registry")
    device_sub = device.add_subparsers(dest="verb", required=True)
    dev = device_sub.add_parser("add", help="a device into stock")
    dev.add_argument("--tenant", required=True)
    dev.add_argument("--protocol", required=True, choices=["dc09", "scaip", "mqtt", "sms"])
    dev.add_argument("--identity", required=True, help="DC-09 account, SCAIP cid, MQTT id...")
    dev.add_argument("--serial", default="")
    dev.add_argument("--type", default="", help="safety_alarm, fall_detector...")
    dev.add_argument("--group", type=int, choices=[1, 3], default=1)
    dev.add_argument("--supplier")
    dev.add_argument("--supervision-s", type=int)
    dlist = device_sub.add_parser("list", help="devices")
    dlist.add_argument("--tenant")
    dlist.add_argument("--status", choices=lifecycle.DEVICE_STATUSES)
    for verb in ("activate", "restock"):
        device_sub.add_parser(verb, help=f"{verb} a device").add_argument("id", type=int)

    order = admin_sub.add_parser("order", help="orders to suppliers")
    order_sub = order.add_subparsers(dest="verb", required=True)
    ocreate = order_sub.add_parser("create", help="order from a supplier")
    ocreate.add_argument("--tenant", required=True)
    ocreate.add_argument("--kind", required=True, choices=lifecycle.ORDER_KINDS)
    ocreate.add_argument("--user", help="the user's ref")
    ocreate.add_argument("--device", type=int, help="the device's id")
    ocreate.add_argument("--supplier")
    ocreate.add_argument("--note", default="")
    olist = order_sub.add_parser("list", help="orders (a supplier's token: its own)")
    olist.add_argument("--state", choices=["ordered", "accepted", "scheduled", "done", "cancelled"])
    for verb in ("accept", "schedule", "done", "cancel"):
        ostep = order_sub.add_parser(verb, help=f"{verb} an order")
        ostep.add_argument("id", type=int)
        if verb == "schedule":
            ostep.add_argument("--date", required=True, help="YYYY-MM-DD")
        if verb == "done":
            ostep.add_argument("--result", default="")
            ostep.add_argument("--device", type=int, help="install: the device put up")

    fault = admin_sub.add_parser("fault", help="technical faults (each orders a repair)")
    fault_sub = fault.add_subparsers(dest="verb", required=True)
    freport = fault_sub.add_parser("report", help="report a fault")
    where = freport.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", type=int)
    where.add_argument("--case", type=int, help="the technical case it was found in")
    freport.add_argument("--description", required=True)
    fault_sub.add_parser("list", help="faults").add_argument("--status")

    deviation = admin_sub.add_parser("deviation", help="deviations (avvik)")
    deviation_sub = deviation.add_subparsers(dest="verb", required=True)
    vadd = deviation_sub.add_parser("add", help="register a deviation")
    vadd.add_argument("--category", required=True, choices=lifecycle.DEVIATION_CATEGORIES)
    vadd.add_argument("--description", required=True)
    vadd.add_argument("--tenant")
    vadd.add_argument("--case", type=int)
    vadd.add_argument("--fault", type=int)
    vlist = deviation_sub.add_parser("list", help="deviations, or --csv for a quality system")
    vlist.add_argument("--since")
    vlist.add_argument("--until")
    vlist.add_argument("--csv", action="store_true")
    deviation_sub.add_parser("close", help="close a deviation").add_argument("id", type=int)

    stats = admin_sub.add_parser("stats", help="key figures per municipality")
    stats.add_argument("--since")
    stats.add_argument("--until")

    audit = admin_sub.add_parser("audit", help="who looked at or changed this user, and why")
    who = audit.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="TENANT/REF")
    who.add_argument("--actor", help="a token's name")
    audit.add_argument("--limit", type=int, default=500)

    add_export_arguments(admin_sub.add_parser("export", help="a municipality's directory"))
    admin_sub.add_parser("retention", help="erase the personal data now due")


def _fields(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """The options given (not None), renamed to the API's field names."""
    return {
        api: getattr(args, attr) for attr, api in names.items() if getattr(args, attr) is not None
    }


_PERSON = {
    "first_name": "first_name",
    "last_name": "last_name",
    "address": "address",
    "postcode": "postcode",
    "phone": "phone",
    "group": "group",
    "location": "location",
}


def _contacts(path: Path) -> list[Any]:
    from ruamel.yaml import YAML

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"alarmctl: cannot read {path}: {exc.strerror or exc}") from None
    data = YAML(typ="safe").load(text)
    if not isinstance(data, list):
        raise SystemExit(f"alarmctl: {path}: give a list of contacts")
    return data


def _plan(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None, str]:
    """(method, path, body, params) for a command."""
    c, v = args.admin_command, getattr(args, "verb", None)
    u = f"/api/v1/admin/users/{getattr(args, 'user', '')}"
    if c == "user":
        if v == "create":
            return (
                "POST",
                "/api/v1/admin/users",
                {
                    "tenant": args.tenant,
                    "ref": args.ref,
                    **_fields(args, _PERSON),
                },
                "",
            )
        if v == "update":
            return "PATCH", u, _fields(args, _PERSON), ""
        if v == "show":
            return "GET", u, None, args.why
        if v in ("activate", "deactivate"):
            return "POST", f"{u}/{v}", None, ""
        return "POST", f"{u}/end", _fields(args, {"reason": "reason", "supplier": "supplier"}), ""
    if c == "plan":
        if v == "show":
            return "GET", f"{u}/plan/versions/{args.version}", None, args.why
        body = _fields(
            args,
            {
                "instructions": "instructions",
                "key_box": "key_box",
                "team": "home_care_team",
                "mode": "mode_override",
            },
        )
        if args.contacts is not None:
            body["contacts"] = _contacts(args.contacts)
        return "PUT", f"{u}/plan", body, ""
    if c == "decision":
        if v == "add":
            body = _fields(
                args,
                {
                    "service": "service",
                    "sensor_type": "sensor_type",
                    "valid_from": "valid_from",
                    "valid_to": "valid_to",
                    "reference": "reference",
                    "note": "note",
                },
            )
            body["status"] = "granted" if args.granted else "applied"
            return "POST", f"{u}/decisions", body, ""
        body = _fields(args, {"valid_from": "valid_from", "valid_to": "valid_to", "note": "note"})
        return "POST", f"/api/v1/admin/decisions/{args.id}/{v}", body, ""
    if c == "supplier":
        return (
            "PUT",
            "/api/v1/admin/suppliers",
            {
                "id": args.id,
                "name": args.name,
                "email": args.email,
                "phone": args.phone,
            },
            "",
        )
    if c == "device":
        if v == "add":
            names: tuple[str, ...] = (
                "tenant",
                "protocol",
                "identity",
                "serial",
                "type",
                "group",
                "supplier",
            )
            body = _fields(args, {n: n for n in names} | {"supervision_s": "supervision_s"})
            return "POST", "/api/v1/admin/devices", body, ""
        if v == "list":
            return "GET", "/api/v1/admin/devices", None, ""
        return "POST", f"/api/v1/admin/devices/{args.id}/{v}", None, ""
    if c == "order":
        if v == "create":
            names = ("tenant", "kind", "user", "device", "supplier", "note")
            return "POST", "/api/v1/admin/orders", _fields(args, {n: n for n in names}), ""
        if v == "list":
            return "GET", "/api/v1/admin/orders", None, ""
        body = _fields(args, {n: n for n in ("date", "result", "device") if hasattr(args, n)})
        return "POST", f"/api/v1/admin/orders/{args.id}/{v}", body, ""
    if c == "fault":
        if v == "report":
            names = ("device", "case", "description")
            return "POST", "/api/v1/admin/faults", _fields(args, {n: n for n in names}), ""
        return "GET", "/api/v1/admin/faults", None, ""
    if c == "deviation":
        if v == "add":
            names = ("category", "description", "tenant", "case", "fault")
            return "POST", "/api/v1/admin/deviations", _fields(args, {n: n for n in names}), ""
        if v == "close":
            return "POST", f"/api/v1/admin/deviations/{args.id}/close", None, ""
        return "GET", "/api/v1/admin/deviations", None, ""
    if c == "stats":
        return "GET", "/api/v1/admin/stats", None, ""
    if c == "audit":
        return "GET", "/api/v1/admin/audit", None, ""
    return "POST", "/api/v1/admin/retention/run", None, ""


# the query filters each listing takes, by command
_FILTERS = {
    "device": ("tenant", "status"),
    "order": ("state",),
    "fault": ("status",),
    "deviation": ("since", "until"),
    "stats": ("since", "until"),
    "audit": ("actor",),
}


def _params(args: argparse.Namespace, reason: str) -> dict[str, str]:
    params: dict[str, str] = {"reason": reason} if reason else {}
    if getattr(args, "verb", "list") == "list":  # stats and audit have no verb
        for name in _FILTERS.get(args.admin_command, ()):
            value = getattr(args, name, None)
            if value is not None:
                params[name] = str(value)
    if args.admin_command == "audit":
        if args.user:
            params["user"] = args.user
        params["limit"] = str(args.limit)
    if args.admin_command == "deviation" and getattr(args, "csv", False):
        params["format"] = "csv"
    return params


def run(args: argparse.Namespace) -> int:
    """Run one ``alarmctl admin`` case-management command against the API."""
    if args.admin_command == "export":
        return export_command(args)
    import aiohttp

    from alarmd.cli import _api_and_token

    method, path, body, reason = _plan(args)
    params = _params(args, reason)
    api, token = _api_and_token(args)

    async def go() -> tuple[int, str, str]:
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
            session.request(method, api + path, json=body, params=params) as response,
        ):
            return response.status, response.content_type, await response.text()

    try:
        status, content_type, text = asyncio.run(go())
    except aiohttp.ClientError as exc:
        print(f"alarmctl: cannot reach {api}: {exc}", file=sys.stderr)
        return 1
    if content_type != "application/json":
        sys.stdout.write(text)
        return 0 if status < 300 else 1
    answer = json.loads(text)
    if status >= 300:
        print(f"alarmctl: {status} {answer.get('error')}: {answer.get('message')}", file=sys.stderr)
        return 1
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0

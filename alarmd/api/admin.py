"""Token administration: create (shown once), list (never the token), revoke.

Only an ``admin`` manages tokens for the centre; a ``tenant_admin`` may issue and revoke
``home_care`` and ``supplier`` tokens for its own tenants (its carers' phones), nothing
wider than itself. The token is returned once, in the creation's answer, and only its
SHA-256 hash is kept.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from aiohttp import web

from alarmd.api.server import CONTEXT, TOKEN_KEY, ApiError
from alarmd.clock import SystemClock
from alarmd.store import tokens

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# a staff member or next of kin acts as themselves; a supplier's token speaks for its supplier
_PERSON = re.compile(r"(staff|contact):[0-9]{1,18}|supplier:[a-z0-9][a-z0-9-]{0,62}")
TENANT_ADMIN_MAY_ISSUE = frozenset({"home_care", "supplier"})


def _now(request: web.Request) -> Any:
    engine = request.app[CONTEXT].engine
    return (engine.clock if engine is not None else SystemClock()).now()


def _manager(request: web.Request) -> tokens.TokenInfo:
    info = request[TOKEN_KEY]
    if info.role not in ("admin", "tenant_admin"):
        raise ApiError(403, "forbidden", f"role {info.role} may not manage tokens")
    return info


async def create_token(request: web.Request) -> web.Response:
    info = _manager(request)
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    unknown = sorted(set(data) - {"name", "role", "tenants", "person"})
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(unknown)}")
    name, role = data.get("name"), data.get("role")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ApiError(400, "bad_request", "name: letters, digits and . _ @ -, at most 64")
    if role not in tokens.ROLES:
        raise ApiError(400, "bad_request", f"role: one of {', '.join(tokens.ROLES)}")
    scope = data.get("tenants")
    if scope is not None and (
        not isinstance(scope, list) or not scope or not all(isinstance(t, str) for t in scope)
    ):
        raise ApiError(400, "bad_request", "tenants: a non-empty list of tenant ids, or null")
    person = data.get("person")
    if person is not None and (not isinstance(person, str) or not _PERSON.fullmatch(person)):
        raise ApiError(
            400, "bad_request", "person: 'staff:<id>', 'contact:<id>' or 'supplier:<slug>'"
        )
    if info.role == "tenant_admin":
        if role not in TENANT_ADMIN_MAY_ISSUE:
            raise ApiError(403, "forbidden", "a tenant admin issues only home_care/supplier tokens")
        if scope is None or not all(info.sees_tenant(t) for t in scope):
            raise ApiError(403, "forbidden", "a tenant admin issues tokens for its own tenants")
    token = tokens.new_token()
    job = tokens.create_job(
        name, str(role), None if scope is None else tuple(scope), token, _now(request), person
    )
    try:
        await request.app[CONTEXT].store.writer.submit(job)
    except sqlite3.IntegrityError:
        raise ApiError(
            409, "conflict", f"a token called {name!r} exists (revoked ones keep their name)"
        ) from None
    return web.json_response(
        {"name": name, "role": role, "tenants": scope, "person": person, "token": token},
        status=201,
    )


async def get_tokens(request: web.Request) -> web.Response:
    info = _manager(request)
    rows = await tokens.list_tokens(request.app[CONTEXT].store.reader)
    if info.role != "admin":
        rows = [
            r
            for r in rows
            if isinstance(r["tenants"], list) and all(info.sees_tenant(t) for t in r["tenants"])
        ]
    return web.json_response({"tokens": rows})


async def revoke_token(request: web.Request) -> web.Response:
    info = _manager(request)
    name = request.match_info["name"]
    if info.role != "admin":
        rows = await tokens.list_tokens(request.app[CONTEXT].store.reader)
        mine = [
            r
            for r in rows
            if r["name"] == name
            and isinstance(r["tenants"], list)
            and all(info.sees_tenant(t) for t in r["tenants"])
        ]
        if not mine:
            raise ApiError(404, "not_found", f"no token {name!r} you may revoke")
    revoked = await request.app[CONTEXT].store.writer.submit(tokens.revoke_job(name, _now(request)))
    if not revoked:
        raise ApiError(404, "not_found", f"no active token {name!r}")
    return web.json_response({"name": name, "revoked": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/admin/tokens", create_token)
    app.router.add_get("/api/v1/admin/tokens", get_tokens)
    app.router.add_delete("/api/v1/admin/tokens/{name}", revoke_token)

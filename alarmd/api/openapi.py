"""The OpenAPI 3.1 document served at ``GET /api/v1/openapi.json``.

Written by hand, as data, next to the handlers; ``tests/api/test_openapi.py`` checks that
every route the application serves is described here and that nothing described is
missing from the application, so the document cannot drift from the code unnoticed.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from alarmd import __version__
from alarmd.api.casework import openapi_paths

_ERROR = {
    "description": "an error, as JSON: {error, message}",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_OK = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}


def _op(
    summary: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: bool = False,
    ok: dict[str, Any] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": ok or _OK,
            "400": _ERROR,
            "401": _ERROR,
            "403": _ERROR,
            "404": _ERROR,
            "409": _ERROR,
        },
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
    if public:
        op["security"] = []
    return op


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _query(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


PATHS: dict[str, dict[str, Any]] = {
    "/health": {"get": _op("health of the daemon and its parts (503 if degraded)", public=True)},
    "/metrics": {
        "get": _op("Prometheus metrics", public=True, ok={"description": "text exposition format"})
    },
    "/api/v1/openapi.json": {"get": _op("this document")},
    "/api/v1/events": {
        "get": _op(
            "stored events, newest first, scoped to the token's tenants",
            params=[
                _query(n, n)
                for n in ("account", "source", "protocol", "since", "after_id", "limit")
            ],
        )
    },
    "/api/v1/admin/tokens": {
        "get": _op("tokens issued (never the token itself)"),
        "post": _op("issue a token (returned once): {name, role, tenants?, person?}", body=True),
    },
    "/api/v1/admin/tokens/{name}": {
        "delete": _op("revoke a token", params=[_path("name", "the token's name")]),
    },
    "/api/v1/stream": {
        "get": _op(
            "live case updates (text/event-stream: case, resync)",
            ok={"description": "server-sent events"},
        )
    },
    "/api/v1/cases": {
        "get": _op(
            "cases: open ones by priority then age, or all",
            params=[
                _query("state", "open | all"),
                _query("queue", "alarm | technical"),
                _query("limit", "1..5000"),
            ],
        )
    },
    "/api/v1/cases/{case_id}": {
        "get": _op(
            "one case with its plan snapshot, log and events (audited)",
            params=[_path("case_id", "case number")],
        ),
    },
    "/api/v1/cases/{case_id}/{action}": {
        "post": _op(
            "accept | decline | on_site | note {text} | dispatch {to, note}"
            " | close {outcome, note}",
            params=[
                _path("case_id", "case number"),
                _path("action", "accept, decline, on_site, note, dispatch or close"),
            ],
            body=True,
        ),
    },
    "/api/v1/directory/import": {
        "post": _op(
            "import users, devices, plans, staff and teams (YAML or CSV body)",
            params=[
                _query("filename", "named in error messages"),
                _query("dry_run", "true: change nothing, answer what it would do or every problem"),
            ],
        ),
    },
    "/api/v1/directory/export": {
        "get": _op(
            "one tenant as a directory file the import accepts (YAML or CSV; audited)",
            params=[
                _query("tenant", "tenant id"),
                _query("format", "yaml (default) or csv"),
                _query("why", "the reason, recorded in the audit"),
            ],
        ),
    },
    "/api/v1/users": {
        "get": _op(
            "service users, scoped; no key box",
            params=[_query(n, n) for n in ("tenant", "q", "limit")],
        )
    },
    "/api/v1/users/{tenant}/{ref}": {
        "get": _op(
            "one user with devices, plan and contacts (audited)",
            params=[
                _path("tenant", "tenant id"),
                _path("ref", "user ref"),
                _query("why", "the reason, e.g. case:12"),
            ],
        ),
    },
    "/api/v1/staff/{tenant}/{ref}/duty": {
        "post": _op(
            "sign a staff member on or off duty: {on_duty, team?}",
            params=[_path("tenant", "tenant id"), _path("ref", "staff ref")],
            body=True,
        ),
    },
}

PATHS.update(openapi_paths(_op, _path))  # case management (issue 9)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "alarmd control API", "version": __version__},
    "security": [{"bearer": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
}


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", openapi)

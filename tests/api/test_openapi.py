"""The OpenAPI document matches the routes the application serves, both ways."""

from __future__ import annotations

from alarmd.api.openapi import DOCUMENT
from alarmd.api.server import ApiContext, create_app


def served() -> set[tuple[str, str]]:
    app = create_app(ApiContext(store=None, health=dict))  # type: ignore[arg-type]
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD beside every GET
        routes.add((route.method.lower(), route.resource.canonical))  # type: ignore[union-attr]
    # the debug clock exists only on a daemon started with ALARMD_TEST_CLOCK
    return routes


def documented() -> set[tuple[str, str]]:
    return {(method, path) for path, ops in DOCUMENT["paths"].items() for method in ops}


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    assert served() == documented()


def test_the_document_is_openapi_3_1_with_bearer_auth() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    assert DOCUMENT["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for ops in DOCUMENT["paths"].values():
        for op in ops.values():
            assert op["summary"] and "200" in op["responses"]

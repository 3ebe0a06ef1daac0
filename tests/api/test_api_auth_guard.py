"""Bad tokens: never logged, and refused for a while when they come too often."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from alarmd.api.server import FAILED_LOGINS, ApiContext, FailedLogins, create_app
from alarmd.store.db import Store


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    store = await Store.open(tmp_path / "a.sqlite")
    app = create_app(ApiContext(store=store, health=lambda: {"status": "ok"}))
    app[FAILED_LOGINS] = FailedLogins(limit=5, window_s=60)
    c = TestClient(TestServer(app))
    await c.start_server()
    yield c
    await c.close()
    await store.close()


async def test_bad_tokens_are_rate_limited_and_never_logged(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_guess = "alarmd_THIS-GUESS-MUST-NOT-BE-LOGGED"
    for _ in range(5):
        response = await client.get(
            "/api/v1/events", headers={"Authorization": f"Bearer {secret_guess}"}
        )
        assert response.status == 401
    response = await client.get(
        "/api/v1/events", headers={"Authorization": f"Bearer {secret_guess}"}
    )
    assert response.status == 429
    assert (await response.json())["error"] == "too_many_attempts"
    # /health stays reachable for the watchdog and monitoring
    assert (await client.get("/health")).status == 200
    out = capsys.readouterr()
    assert "api_bad_token" in out.out + out.err
    assert secret_guess not in out.out + out.err


def test_failures_expire_and_memory_is_bounded() -> None:
    guard = FailedLogins(limit=2, window_s=60, max_peers=3)
    guard.failed("a", 0)
    guard.failed("a", 1)
    assert guard.blocked("a", 2)
    assert not guard.blocked("a", 61.5)  # the window moved on
    for n in range(10):
        guard.failed(f"p{n}", 100)
    assert len(guard._failures) <= 3

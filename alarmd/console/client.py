"""The console's view of the daemon: a small aiohttp client for the case API and a reader of
its server-sent events (``GET /api/v1/stream``).

The console is only a client: everything it shows or changes goes through the API with the
operator's bearer token, so it sees exactly what that token may see. A refusal (409) is
returned as a value, not raised: the console must show it to the operator.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

Case = dict[str, Any]


class ApiFailure(Exception):
    """The daemon answered with an error other than a refusal, or could not be reached."""


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What the daemon answered to an action: the case as it now is, and the refusal's
    message if it was refused (HTTP 409, e.g. "already accepted by operator:anne")."""

    case: Case | None
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    kind: str  # "open" (connected), "case" or "resync"
    data: Case


class ApiClient:
    def __init__(self, api: str, token: str) -> None:
        self.api = api.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get(self, path: str, **params: str) -> Any:
        try:
            async with self._http().get(
                self.api + path, params=params, timeout=aiohttp.ClientTimeout(total=15)
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise ApiFailure(_message(resp.status, body))
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ApiFailure(f"{self.api}: {exc}") from None

    async def cases(self, state: str = "open", queue: str | None = None) -> list[Case]:
        params = {"state": state, "limit": "5000"}
        if queue is not None:
            params["queue"] = queue
        body = await self._get("/api/v1/cases", **params)
        return list(body["cases"])

    async def case(self, case_id: int) -> Case:
        """One case with its plan (personal data: the daemon audits this read) and log."""
        return dict(await self._get(f"/api/v1/cases/{case_id}"))

    async def user_for_case(self, case: Case) -> Case | None:
        """The service user whose device opened the case: who and where. The case names the
        device (protocol and identity), the directory search finds its owner; reading the
        user is audited with the case as the reason."""
        tenant, source = case.get("tenant"), case.get("source")
        if case.get("user_id") is None or not tenant or not source:
            return None
        found = await self._get("/api/v1/users", tenant=str(tenant), q=str(source), limit="5")
        for candidate in found.get("users", []):
            user = await self._get(
                f"/api/v1/users/{candidate['tenant']}/{candidate['ref']}", why=f"case:{case['id']}"
            )
            devices = user.get("devices") or []
            if any(
                d.get("protocol") == case.get("protocol") and d.get("identity") == source
                for d in devices
            ):
                return dict(user)
        return None

    async def act(self, case_id: int, action: str, body: Case | None = None) -> ActionResult:
        """accept, decline, on_site, note ({"text"}), dispatch ({"to"}), close ({"outcome"})."""
        try:
            async with self._http().post(
                f"{self.api}/api/v1/cases/{case_id}/{action}",
                json=body,
                timeout=aiohttp.ClientTimeout(total=15),
            ) as resp:
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ApiFailure(f"{self.api}: {exc}") from None
        if resp.status == 409:
            return ActionResult(answer.get("case"), str(answer.get("message", "conflict")))
        if resp.status != 200:
            raise ApiFailure(_message(resp.status, answer))
        return ActionResult(answer)

    async def stream(self) -> AsyncIterator[StreamEvent]:
        """The live updates until the connection ends; the caller reconnects (and re-fetches,
        since changes made while it was away were not sent)."""
        async with self._http().get(
            self.api + "/api/v1/stream",
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
        ) as resp:
            if resp.status != 200:
                raise ApiFailure(_message(resp.status, await resp.json(content_type=None)))
            yield StreamEvent("open", {})  # connected: the caller (re)loads the queue now
            kind, data = "message", list[str]()
            async for raw in resp.content:
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:  # a blank line ends one event
                    if data:
                        yield StreamEvent(kind, json.loads("\n".join(data)))
                    kind, data = "message", []
                elif line.startswith(":"):
                    continue  # comment / keep-alive
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())


def _message(status: int, body: Any) -> str:
    if isinstance(body, dict) and "message" in body:
        return f"{status} {body.get('error', '')}: {body['message']}"
    return f"HTTP {status}"

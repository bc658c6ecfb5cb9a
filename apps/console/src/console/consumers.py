"""Each consuming service's consumer (its kill switch), as the console sees and steers it:
`GET /consumer` of every service in CONSOLE_SERVICE_URLS, and its `POST /consumer/pause`
and `/consumer/resume` with the services' ADMIN_TOKEN (messaging/operations/admin.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import httpx

TIMEOUT_SECONDS = 3.0  # the consumers page waits no longer than this for a service

Action = Literal["pause", "resume"]


@dataclass(frozen=True)
class Consumer:
    """One service's consumer; `problem` says why its state is unknown (else None)."""

    service: str
    url: str
    state: str | None = None
    by: str | None = None
    reason: str = ""
    until: str | None = None
    problem: str | None = None


class SteerFailed(Exception):
    """The service did not do it: unreachable, or it refused the token."""


def _problem(exc: Exception) -> str:
    return f"not reachable: {type(exc).__name__}: {exc}"[:300]


async def _one(client: httpx.AsyncClient, service: str, url: str) -> Consumer:
    try:
        response = await client.get(f"{url}/consumer")
        response.raise_for_status()
        body = response.json()
        return Consumer(service, url, state=str(body["state"]), by=body.get("by"),
                        reason=str(body.get("reason") or ""), until=body.get("until"))
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return Consumer(service, url, problem=_problem(exc))


async def states(service_urls: dict[str, str]) -> list[Consumer]:
    """Every service's consumer, asked at the same time; one that does not answer is shown
    with the reason."""
    async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
        return list(await asyncio.gather(*(_one(client, s, u) for s, u in service_urls.items())))


async def steer(url: str, action: Action, token: str, reason: str | None = None
                ) -> dict[str, Any]:
    """Pause or resume the consumer at `url`; its new state, or SteerFailed saying why not."""
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
            response = await client.post(
                f"{url}/consumer/{action}", headers={"Authorization": f"Bearer {token}"},
                json={"reason": reason} if action == "pause" else None)
    except httpx.HTTPError as exc:
        raise SteerFailed(_problem(exc)) from None
    if response.status_code != 200:
        raise SteerFailed(f"answered {response.status_code}: {response.text[:200]}")
    try:
        state: dict[str, Any] = response.json()
    except ValueError:
        raise SteerFailed("answered 200 without a JSON body") from None
    return state

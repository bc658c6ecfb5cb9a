"""The alerts firing, for the overview page: read from Prometheus (`GET /api/v1/alerts`).

The console works without Prometheus: no PROMETHEUS_URL says "not connected", a Prometheus
that does not answer (or answers nonsense) says "not reachable", never an error page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

TIMEOUT_SECONDS = 2.0  # the overview waits no longer than this for Prometheus


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    service: str
    since: datetime | None
    summary: str


@dataclass(frozen=True)
class Alerts:
    """`connected`: a PROMETHEUS_URL is set; `problem`: why there is no answer (else None)."""

    connected: bool
    problem: str | None = None
    firing: list[Alert] = field(default_factory=list)


def _since(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def firing_alerts(payload: Any) -> list[Alert]:
    """The firing alerts of an `/api/v1/alerts` answer, oldest first (pending ones are not
    firing yet). Raises ValueError when the answer is not that API's shape."""
    try:
        alerts = payload["data"]["alerts"]
        if payload.get("status") != "success" or not isinstance(alerts, list):
            raise TypeError
        found = [
            Alert(name=str(a["labels"].get("alertname", "?")),
                  severity=str(a["labels"].get("severity", "")),
                  service=str(a["labels"].get("service", "")),
                  since=_since(a.get("activeAt")),
                  summary=str((a.get("annotations") or {}).get("summary", "")))
            for a in alerts if a.get("state") == "firing"
        ]
    except (KeyError, TypeError, AttributeError):
        raise ValueError("not an answer of Prometheus's /api/v1/alerts") from None
    return sorted(found, key=lambda a: (a.since is None, a.since or datetime.min, a.name))


async def read_alerts(prometheus_url: str) -> Alerts:
    if not prometheus_url:
        return Alerts(connected=False)
    url = f"{prometheus_url.rstrip('/')}/api/v1/alerts"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
            response = await client.get(url)
        response.raise_for_status()
        return Alerts(connected=True, firing=firing_alerts(response.json()))
    except (httpx.HTTPError, ValueError) as exc:
        return Alerts(connected=True, problem=f"{type(exc).__name__}: {exc}"[:300])

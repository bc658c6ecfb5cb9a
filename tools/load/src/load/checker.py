"""After a run: read every accepted payment's effects from the services (their public read
routes, docs/api.md) until all are complete or the deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import requests

from load.effects import Payment, Seen, mismatches


@dataclass(frozen=True)
class Urls:
    """Where each service answers (base URLs without a trailing slash)."""

    payment: str
    points: str
    mailer: str
    audit: str
    shipping: str


def read(session: requests.Session, urls: Urls, payment: Payment,
         points_of: Callable[[str], list[dict]]) -> Seen:
    """What the services show for one order now."""

    def listing(url: str) -> list[dict]:
        response = session.get(url, params={"order_id": payment.order_id}, timeout=10)
        response.raise_for_status()
        return response.json()

    entries = [e for e in points_of(payment.customer_id) if e["order_id"] == payment.order_id]
    return Seen(
        points=tuple((e["reason"], e["delta"]) for e in entries),
        mails=tuple(m["subject"] for m in listing(f"{urls.mailer}/mails")),
        audit=tuple(r["event_type"] for r in listing(f"{urls.audit}/events")),
        shipments=tuple(s["status"] for s in listing(f"{urls.shipping}/shipments")),
    )


def verify(payments: Iterable[Payment], urls: Urls, *, settle_seconds: float,
           poll_seconds: float = 1.0) -> dict[str, list[str]]:
    """{order id: what is wrong} of the payments still incomplete when `settle_seconds` have
    passed (the consumers may still be working through the run's backlog); empty when every
    effect of every payment is there, once."""
    pending = {p.order_id: p for p in payments}
    wrong: dict[str, list[str]] = {}
    deadline = time.monotonic() + settle_seconds
    with requests.Session() as session:
        points: dict[str, list[dict]] = {}  # one read per customer per round

        def points_of(customer_id: str) -> list[dict]:
            if customer_id not in points:
                response = session.get(f"{urls.points}/customers/{customer_id}/points",
                                       timeout=10)
                response.raise_for_status()
                points[customer_id] = response.json()["entries"]
            return points[customer_id]

        while True:
            points.clear()
            wrong = {}
            for order_id, payment in pending.items():
                if lines := mismatches(payment, read(session, urls, payment, points_of)):
                    wrong[order_id] = lines
            pending = {order_id: pending[order_id] for order_id in wrong}
            if not pending or time.monotonic() >= deadline:
                return wrong
            time.sleep(poll_seconds)

"""The shop in either mode, behind one interface, so the same behaviour tests run against both.

    async: the services as processes, events through RabbitMQ (the root `stack` fixture)
    sync:  `python -m inprocess`, the same handlers called inside the payment request

Each mode runs with its own SMTP sink; `Shop` gives the base URL of each service and reads
of what the services and the sink hold.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack import smtp_sink
from devstack.stack import SERVICES, free_port
from devstack.syncmode import SyncShop

TIMEOUT = 10


@dataclass
class Shop:
    mode: str
    urls: dict[str, str]
    mail_dir: Path
    smtp: smtp_sink.SaveToDirectory
    log_path: Path | None = None  # the synchronous mode's one process log

    def url(self, service: str) -> str:
        return self.urls[service]

    def pay(self, *, key: str | None = None, **changes: object) -> httpx.Response:
        body = {"order_id": str(uuid.uuid4()), "customer_id": f"c-{uuid.uuid4().hex[:10]}",
                "email": f"buyer-{uuid.uuid4().hex[:8]}@example.com", "amount": 1250,
                "currency": "JPY"} | changes
        headers = {"Idempotency-Key": key} if key else {}
        return httpx.post(f"{self.url('payment')}/payments", json=body, headers=headers,
                          timeout=TIMEOUT)

    def refund(self, payment_id: str) -> httpx.Response:
        return httpx.post(f"{self.url('payment')}/payments/{payment_id}/refund", timeout=TIMEOUT)

    def points(self, customer_id: str) -> dict:
        return httpx.get(f"{self.url('points')}/customers/{customer_id}/points",
                         timeout=TIMEOUT).json()

    def mails(self, order_id: str) -> list[dict]:
        return httpx.get(f"{self.url('mailer')}/mails", params={"order_id": order_id},
                         timeout=TIMEOUT).json()

    def audit(self, order_id: str) -> list[dict]:
        return httpx.get(f"{self.url('audit')}/events", params={"order_id": order_id},
                         timeout=TIMEOUT).json()

    def shipments(self, order_id: str) -> list[dict]:
        return httpx.get(f"{self.url('shipping')}/shipments", params={"order_id": order_id},
                         timeout=TIMEOUT).json()

    def delivered(self, to: str) -> list:
        """Mails the SMTP server really received for `to` (not what the mailer says it
        sent), in the order it accepted them."""
        return [m for m in smtp_sink.arrivals(self.mail_dir) if m["To"] == to]


@pytest.fixture(scope="module")
def sync_shop(tmp_path_factory):
    """`python -m inprocess` on free ports, SQLite files, its own SMTP sink."""
    tmp = tmp_path_factory.mktemp("sync")
    smtp_port = free_port()
    controller, handler = smtp_sink.start(tmp / "mail", port=smtp_port)
    process = SyncShop(
        database_urls={s: f"sqlite+aiosqlite:///{tmp}/{s}.db" for s in SERVICES},
        smtp_port=smtp_port, ports={s: free_port() for s in SERVICES},
        log_path=tmp / "inprocess.log", extra_env={"LOG_LEVEL": "INFO"},
    )
    process.start()
    try:
        process.wait_ready(timeout=40)
        yield Shop("sync", {s: process.url(s) for s in SERVICES}, tmp / "mail", handler,
                   process.log_path)
    finally:
        process.stop()
        controller.stop()


@pytest.fixture(scope="module", params=["async", "sync"])
def shop(request) -> Shop:
    if request.param == "async":
        stack = request.getfixturevalue("stack")
        return Shop("async", {s: stack.url(s) for s in SERVICES}, stack.mail_dir, stack.smtp)
    return request.getfixturevalue("sync_shop")

"""Helpers for the crash tests: a stack whose services can be started normally or through
the crashing wrapper, a spy queue that sees every publish, and reads of the services' state."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from devstack import throwaway
from devstack.stack import SERVICES, Stack, free_port
from devstack.wait import eventually

WRAPPER = Path(__file__).with_name("crashing_service.py")
SPY_QUEUE = "test.spy"


@dataclass
class CrashStack:
    stack: Stack
    vhost: str
    tmp: Path

    def start(self, *names: str) -> None:
        self.stack.start(*names)

    def start_crashing(self, name: str, crash_at: str) -> None:
        """Start `name` through the wrapper that SIGKILLs it at `crash_at`."""
        svc = self.stack.services[name]
        log = open(svc.log_path, "ab")  # noqa: SIM115 (owned by the process)
        svc.process = subprocess.Popen(
            [sys.executable, str(WRAPPER), name], env={**svc.env, "CRASH_AT": crash_at},
            cwd=self.stack.cwd, stdout=log, stderr=subprocess.STDOUT,
        )

    def url(self, name: str) -> str:
        return self.stack.url(name)

    def pay(self, customer: str, amount: int = 1200, order_id: str | None = None) -> str:
        """POST /payments; returns the order id (the response may be lost if payment dies)."""
        order_id = order_id or str(uuid.uuid4())
        response = httpx.post(f"{self.url('payment')}/payments", timeout=10, json={
            "order_id": order_id, "customer_id": customer, "email": f"{customer}@example.com",
            "amount": amount, "currency": "JPY"})
        assert response.status_code == 201, response.text
        return order_id

    def wait_alive(self, name: str, timeout: float = 40) -> None:
        """/healthz answers (unlike /readyz, also while the broker is unreachable)."""
        def up() -> bool:
            try:
                return httpx.get(f"{self.url(name)}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        eventually(up, timeout=timeout, message=f"{name} answering")

    def points(self, customer: str) -> dict:
        return httpx.get(f"{self.url('points')}/customers/{customer}/points", timeout=5).json()

    def mails(self, order_id: str) -> list:
        return httpx.get(f"{self.url('mailer')}/mails", params={"order_id": order_id},
                         timeout=5).json()

    def audit(self, order_id: str) -> list:
        return httpx.get(f"{self.url('audit')}/events", params={"order_id": order_id},
                         timeout=5).json()

    def rows(self, service: str, sql: str, *params) -> list[tuple]:
        """Read a service's SQLite database directly (works while the service is dead)."""
        path = self.stack.database_urls[service].split("///", 1)[1]
        with sqlite3.connect(path) as conn:
            return conn.execute(sql, params).fetchall()

    def metric(self, service: str, name: str, **labels: str) -> float:
        """Sum of a Prometheus counter's samples matching `labels` on the service's /metrics."""
        text = httpx.get(f"{self.url(service)}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def queue_messages(self, queue: str) -> int:
        return throwaway.queue_depth(self.vhost, queue)

    def published(self, message_id: str) -> int:
        """How many times a message with this id reached shop.events (counted in the spy)."""
        with throwaway.management() as api:
            response = api.post(
                f"/api/queues/{quote(self.vhost, safe='')}/{SPY_QUEUE}/get",
                json={"count": 1000, "ackmode": "ack_requeue_true", "encoding": "auto"},
            )
            response.raise_for_status()
            return sum(1 for m in response.json()
                       if m["properties"].get("message_id") == message_id)


def declare_spy(vhost: str) -> None:
    """A queue bound to every routing key of shop.events: it counts what was published."""
    v = quote(vhost, safe="")
    with throwaway.management() as api:
        api.put(f"/api/exchanges/{v}/shop.events",
                json={"type": "topic", "durable": True}).raise_for_status()
        api.put(f"/api/queues/{v}/{SPY_QUEUE}", json={"durable": True}).raise_for_status()
        api.post(f"/api/bindings/{v}/e/shop.events/q/{SPY_QUEUE}",
                 json={"routing_key": "#"}).raise_for_status()


@pytest.fixture
def crash_stack(tmp_path, vhost, smtp, speed_layer):
    """A stack nobody has started yet: each test starts the services its own way; with the
    speed layer on and off (SPEED_LAYER)."""
    name, url = vhost
    declare_spy(name)
    stack = Stack(
        rabbitmq_url=url,
        database_urls={s: f"sqlite+aiosqlite:///{tmp_path}/{s}.db" for s in SERVICES},
        smtp_port=smtp.port, ports={s: free_port() for s in SERVICES}, log_dir=tmp_path,
        extra_env={"LOG_LEVEL": "INFO", "RETRY_DELAYS": "1,2", "SPEED_LAYER": speed_layer},
    )
    try:
        yield CrashStack(stack, name, tmp_path)
    finally:
        stack.stop()


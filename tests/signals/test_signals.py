"""The signals tell the truth (finding 6): outbox gauges with a broker that was never there,
readiness with a database that answers reads but cannot write. Real processes, a real
PostgreSQL database made read-only under them."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from devstack import throwaway
from devstack.stack import free_port, wait_until_ready

pytestmark = pytest.mark.integration


def start(service: str, tmp_path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(tmp_path / f"{service}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", service], stdout=log,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "PORT": str(port), **env})
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def gauge(url: str, name: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(rf'^{name}{{service="payment"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else None


def eventually(predicate, timeout: float, message: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.1)


def test_outbox_gauges_count_the_backlog_when_the_broker_was_never_reachable(tmp_path):
    nobody = f"amqp://guest:guest@127.0.0.1:{free_port()}/"  # nothing listens there
    proc, url = start("payment", tmp_path, RABBITMQ_URL=nobody,
                      DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/payment.db")
    try:
        eventually(lambda: _answers(url), 30, "payment did not start")
        for _ in range(3):
            body = {"order_id": str(uuid.uuid4()), "customer_id": "g", "amount": 100,
                    "email": "g@example.com", "currency": "JPY"}
            assert httpx.post(f"{url}/payments", json=body, timeout=5).status_code == 201
        paid_at = time.monotonic()
        eventually(lambda: gauge(url, "outbox_pending_rows") == 3, 3,
                   "outbox_pending_rows does not count the 3 unsent rows")
        assert time.monotonic() - paid_at < 3
        eventually(lambda: (gauge(url, "outbox_oldest_pending_age_seconds") or 0) > 0.5, 3,
                   "outbox_oldest_pending_age_seconds does not grow")
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503  # and says why
    finally:
        stop(proc)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _read_only(name: str, on: bool) -> None:
    setting = "SET default_transaction_read_only = on" if on else \
        "RESET default_transaction_read_only"
    await throwaway.run_as_admin(f'ALTER DATABASE "{name}" {setting}')
    # Sessions read the setting when they start: end the service's current ones.
    await throwaway.run_as_admin(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")


@pytest.mark.parametrize("service", ["payment", "points"])
def test_readiness_fails_while_the_database_cannot_write_and_recovers(service, tmp_path):
    name, db_url = throwaway.create_postgres_database("ro")
    try:
        with throwaway.throwaway_vhost("ro") as (_, amqp_url):
            proc, url = start(service, tmp_path, RABBITMQ_URL=amqp_url, DATABASE_URL=db_url)
            try:
                wait_until_ready(service, url, proc, tmp_path / f"{service}.log",
                                 time.monotonic() + 30)
                asyncio.run(_read_only(name, True))

                def not_ready() -> dict | None:
                    response = httpx.get(f"{url}/readyz", timeout=5)
                    return response.json() if response.status_code == 503 else None

                verdict = eventually(not_ready, 10, "/readyz stays 200 on a read-only database")
                assert verdict["checks"]["database"].startswith("unavailable")
                assert verdict["checks"]["broker"] == "ok"

                asyncio.run(_read_only(name, False))
                eventually(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200,
                           10, "/readyz does not recover once the database writes again")
            finally:
                stop(proc)
    finally:
        throwaway.drop_postgres_database(name)


def test_a_consumer_whose_work_stops_moving_is_not_ready(tmp_path):
    """Finding 3: a mail server that accepts connections and never answers holds every
    in-flight message; the mailer must stop saying it is ready."""
    import socket

    from devstack import events
    from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
    from messaging.topology import EXCHANGE

    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)  # accepted by the kernel, never greeted
    try:
        with throwaway.throwaway_vhost("stall") as (_, amqp_url):
            proc, url = start("mailer", tmp_path, RABBITMQ_URL=amqp_url,
                              DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/mailer.db",
                              SMTP_HOST="127.0.0.1", SMTP_PORT=str(black_hole.getsockname()[1]),
                              SMTP_TIMEOUT="60", CONSUMER_STALL_SECONDS="1")
            try:
                wait_until_ready("mailer", url, proc, tmp_path / "mailer.log",
                                 time.monotonic() + 30)
                paid = events.order_paid()

                async def publish() -> None:
                    import aio_pika

                    conn = await aio_pika.connect_robust(amqp_url)
                    channel = await open_confirm_channel(conn)
                    exchange = await channel.declare_exchange(
                        EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
                    await publish_confirmed(exchange, build_message(
                        paid.to_json(), message_id=str(paid.event_id),
                        correlation_id=paid.correlation_id, event_type=paid.event_type,
                        timestamp=paid.occurred_at), routing_key=paid.routing_key)
                    await conn.close()

                asyncio.run(publish())

                def stalled() -> dict | None:
                    response = httpx.get(f"{url}/readyz", timeout=5)
                    return response.json() if response.status_code == 503 else None

                verdict = eventually(stalled, 10, "/readyz stays 200 while the work is stuck")
                assert "stalled" in verdict["checks"]["broker"]
            finally:
                stop(proc)
    finally:
        black_hole.close()

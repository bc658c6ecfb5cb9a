"""Competing consumers: several points processes on one queue and one PostgreSQL database
apply every event exactly once, even when each event is published twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aio_pika
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack import events, throwaway
from devstack.stack import free_port
from devstack.wait import eventually
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.topology import QueueTopology, declare_exchange

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

INSTANCES = 3
ORDERS = 150
REFUNDED = 50  # of those orders


@pytest.fixture
def postgres_url():
    name, url = throwaway.create_postgres_database("points")
    yield url
    throwaway.drop_postgres_database(name)


def start_points(tmp_path, index: int, amqp_url: str, database_url: str):
    port = free_port()
    log = open(tmp_path / f"points-{index}.log", "ab")  # noqa: SIM115 (owned by the process)
    process = subprocess.Popen(
        [sys.executable, "-m", "points"], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PORT": str(port), "RABBITMQ_URL": amqp_url,
             "DATABASE_URL": database_url, "PREFETCH": "8", "RETRY_DELAYS": "1,2"},
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / f"points-{index}.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    eventually(ready, timeout=60, message=f"points #{index} ready")
    return process, url


async def publish_all(amqp_url: str, messages: list) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await open_confirm_channel(connection)
        exchange = await declare_exchange(channel)
        await asyncio.gather(*(
            publish_confirmed(exchange, build_message(
                e.to_json(), message_id=str(e.event_id), correlation_id=e.correlation_id,
                event_type=e.event_type, timestamp=e.occurred_at), e.routing_key)
            for e in messages))
    finally:
        await connection.close()


async def ledger(database_url: str) -> list[tuple]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(
                "SELECT event_id, customer_id, delta FROM ledger"))).all()
    finally:
        await engine.dispose()


def consumed(url: str) -> float:
    body = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("messages_consumed_total{"))


def test_competing_points_instances_apply_each_event_once_even_when_published_twice(
    tmp_path, vhost, postgres_url
):
    vhost_name, amqp_url = vhost
    # The queue exists before anything is published, so no event is unroutable.
    asyncio.run(_declare(amqp_url))
    processes = [start_points(tmp_path, i, amqp_url, postgres_url) for i in range(INSTANCES)]
    try:
        paid = [events.order_paid(customer_id=f"cc-{i % 20}", amount=100 * (1 + i % 7))
                for i in range(ORDERS)]
        refunds = [events.order_refunded(p) for p in paid[:REFUNDED]]
        everything = paid + refunds
        # Every event twice, the refunds first (out of order) and the copies interleaved.
        asyncio.run(publish_all(amqp_url, refunds + paid + paid + refunds))

        # OrderRefunded (version 1) carries the amount as minor units, OrderPaid as Money.
        expected = {str(e.event_id): (e.data.customer_id,
                                      -(e.data.amount // 100) if e.event_type == "OrderRefunded"
                                      else e.data.amount.value // 100)
                    for e in everything}

        def settled():
            rows = asyncio.run(ledger(postgres_url))
            return rows if len(rows) >= len(expected) else None

        rows = eventually(settled, timeout=120, interval=0.5, message="all events applied")
        eventually(lambda: throwaway.queue_depth(vhost_name, "points.events") == 0,
                   timeout=60, interval=0.5, message="queue drained")
        rows = asyncio.run(ledger(postgres_url))
        assert len(rows) == len(expected)
        assert {r.event_id: (r.customer_id, r.delta) for r in rows} == expected
        assert all(consumed(url) > 0 for _, url in processes), "every instance took a share"
    finally:
        for process, _ in processes:
            process.terminate()
        for process, _ in processes:
            process.wait(30)


async def _declare(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await declare_exchange(channel)
        await QueueTopology.for_service("points", (1, 2)).declare(channel)
    finally:
        await connection.close()

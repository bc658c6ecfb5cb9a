"""Queue depths, consumer counts and readiness reach /metrics at scrape time, and a broker that
does not answer never breaks or stalls the scrape."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from contracts import utcnow
from messaging import publisher
from messaging.chassis import http as ops
from messaging.chassis import queue_stats
from messaging.chassis.http import install_common
from messaging.topology import QueueTopology, declare_exchange

pytestmark = pytest.mark.integration


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_depths_and_consumers_of_every_queue_are_set_and_missing_queues_skipped(amqp_url):
    service = f"qs-{uuid.uuid4().hex[:8]}"
    topology = QueueTopology("points.events", ("order.*",), retry_delays=(1, 5))
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        await declare_exchange(channel)
        queue = await topology.declare(channel)
        await channel.default_exchange.publish(
            publisher.build_message(b"{}", message_id="m1", correlation_id="c1",
                                    event_type="OrderPaid", timestamp=utcnow()),
            routing_key=topology.dlq,
        )
        async def ignore(_message) -> None:
            return None

        await queue.consume(ignore)
        # A queue the broker does not have (e.g. a retry delay added since the last deploy).
        extended = QueueTopology("points.events", ("order.*",), retry_delays=(1, 5, 99))

        await queue_stats.refresh(connection, service, extended)

        assert value("queue_messages", service=service, queue="points.events.dlq",
                     role="dlq") == 1
        assert value("queue_messages", service=service, queue="points.events", role="work") == 0
        assert value("queue_consumers", service=service, queue="points.events",
                     role="work") == 1
        assert value("queue_messages", service=service, queue="points.events.retry.5s",
                     role="retry") == 0
        assert value("queue_messages", service=service, queue="points.events.retry.99s",
                     role="retry") is None
    finally:
        await connection.close()




@pytest.mark.unit
async def test_a_failing_or_hanging_refresh_and_a_failing_check_still_give_a_scrape(monkeypatch):
    monkeypatch.setattr(ops, "SCRAPE_REFRESH_TIMEOUT_SECONDS", 0.2)
    service = f"scrape-{uuid.uuid4().hex[:8]}"
    calls = []

    async def broken() -> None:
        calls.append("broken")
        raise ConnectionError("broker gone")

    async def hanging() -> None:
        calls.append("hanging")
        await asyncio.sleep(60)  # a refresh that never ends: the behaviour under test

    async def not_ready() -> None:
        raise ConnectionError("not consuming")

    app = FastAPI()
    install_common(app, service, {"broker": not_ready}, refresh=[broken, hanging])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://svc") as client:
        async with asyncio.timeout(5):
            response = await client.get("/metrics")

    assert response.status_code == 200
    assert calls == ["broken", "hanging"]
    assert value("service_ready", service=service) == 0


@pytest.mark.unit
async def test_readiness_is_exported_as_one_when_every_check_passes():
    service = f"scrape-{uuid.uuid4().hex[:8]}"

    async def fine() -> None:
        return None

    app = FastAPI()
    install_common(app, service, {"database": fine, "broker": fine})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://svc") as client:
        assert (await client.get("/metrics")).status_code == 200
    assert value("service_ready", service=service) == 1

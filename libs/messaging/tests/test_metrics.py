"""The Prometheus counters move as messages go through success, duplicate, retry and DLQ paths,
and `/metrics` exposes them under Prometheus names (counters end in `_total`).

A real consumer in a throwaway vhost; each test labels its consumer with a service name of its
own, so the process-wide counters can be read exactly.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from devstack import events
from devstack.wait import eventually_async
from messaging import outbox_store
from messaging.chassis import db
from messaging.chassis.http import install_common
from messaging.consumer import EventConsumer
from messaging.inbox import Outcome
from messaging.observability import metrics
from messaging.outbox import OutboxRelay
from messaging.outbox_store import add_to_outbox
from messaging.publisher import build_message
from messaging.settlement import PermanentError
from messaging.topology import QueueTopology

pytestmark = pytest.mark.integration


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Behaviour:
    """What the handler does with each event: by event id, the order of outcomes to play."""

    def __init__(self) -> None:
        self.plans: dict[str, list] = {}

    async def process(self, event) -> Outcome:
        plan = self.plans.get(str(event.event_id), [Outcome.APPLIED])
        step = plan.pop(0) if len(plan) > 1 else plan[0]
        if isinstance(step, Exception):
            raise step
        return step


@pytest.fixture
async def consumer(amqp_url):
    service = f"metrics-{uuid.uuid4().hex[:8]}"
    behaviour = Behaviour()
    connection = await aio_pika.connect_robust(amqp_url)
    running = EventConsumer(
        service=service, connection=connection, process=behaviour.process,
        topology=QueueTopology("points.events", ("order.*",), retry_delays=(1,)),
    )
    await running.start()
    channel = await connection.channel()

    async def send(event=None, body: bytes | None = None):
        event = event or events.order_paid()
        await channel.default_exchange.publish(
            build_message(body if body is not None else event.to_json(),
                          message_id=str(event.event_id), correlation_id=event.correlation_id,
                          event_type=event.event_type, timestamp=event.occurred_at),
            routing_key="points.events",
        )
        return event

    running.label, running.behaviour, running.send = service, behaviour, send
    yield running
    await running.stop()
    await connection.close()


async def until(check, message: str, timeout: float = 30.0):
    async def poll():
        return check()

    return await eventually_async(poll, timeout=timeout, message=message)


async def test_an_applied_message_counts_as_consumed_and_acked_and_is_timed(consumer):
    await consumer.send()
    svc = consumer.label

    await until(lambda: value("messages_acked_total", service=svc, event_type="OrderPaid",
                              outcome="applied") == 1, "acked")
    assert value("messages_consumed_total", service=svc, event_type="OrderPaid") == 1
    assert value("handler_duration_seconds_count", service=svc, event_type="OrderPaid") == 1
    assert value("messages_duplicates_total", service=svc, event_type="OrderPaid") == 0


async def test_a_duplicate_counts_as_acked_and_as_a_duplicate(consumer):
    event = events.order_paid()
    consumer.behaviour.plans[str(event.event_id)] = [Outcome.DUPLICATE]
    await consumer.send(event)
    svc = consumer.label

    await until(lambda: value("messages_duplicates_total", service=svc,
                              event_type="OrderPaid") == 1, "duplicate counted")
    assert value("messages_acked_total", service=svc, event_type="OrderPaid",
                 outcome="duplicate") == 1


async def test_a_transient_failure_counts_a_retry_then_the_ack(consumer):
    event = events.order_paid()
    consumer.behaviour.plans[str(event.event_id)] = [RuntimeError("db away"), Outcome.APPLIED]
    await consumer.send(event)
    svc = consumer.label

    await until(lambda: value("messages_acked_total", service=svc, event_type="OrderPaid",
                              outcome="applied") == 1, "acked after the retry")
    assert value("messages_retried_total", service=svc, event_type="OrderPaid",
                 reason="transient") == 1
    assert value("messages_consumed_total", service=svc, event_type="OrderPaid") == 2


async def test_exhausted_retries_permanent_errors_and_poison_count_as_dead_lettered(consumer):
    exhausted, permanent = events.order_paid(), events.order_paid()
    consumer.behaviour.plans[str(exhausted.event_id)] = [RuntimeError("still down")]
    consumer.behaviour.plans[str(permanent.event_id)] = [PermanentError("bad address")]
    await consumer.send(exhausted)
    await consumer.send(permanent)
    await consumer.send(body=b"not json")
    svc = consumer.label

    def dead(error_class: str) -> float:
        return value("messages_dead_lettered_total", service=svc, event_type="OrderPaid",
                     error_class=error_class)

    await until(lambda: dead("exhausted") == 1 and dead("permanent") == 1
                and dead("poison") == 1, "three dead-lettered")
    assert value("messages_retried_total", service=svc, event_type="OrderPaid",
                 reason="transient") == 1  # one delay configured: one retry, then the DLQ


async def test_the_outbox_gauges_show_the_backlog_while_the_broker_is_unreachable(tmp_path):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/outbox.db")
    await db.create_schema(engine, outbox_store.metadata)
    sessions = db.session_factory(engine)
    async with sessions() as session, session.begin():
        await add_to_outbox(session, events.order_paid())
    service = f"metrics-{uuid.uuid4().hex[:8]}"

    async def broker_down():
        raise ConnectionError("broker unreachable")

    relay = OutboxRelay(sessions, broker_down, service=service, poll_interval=0.05)
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: value("outbox_pending_rows", service=service) == 1, "pending")
        await until(lambda: value("outbox_oldest_pending_age_seconds", service=service) > 0,
                    "age of the oldest row")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.dispose()


async def test_confirmed_publishes_are_counted_and_the_backlog_drains_to_zero(
    tmp_path, amqp_url
):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/outbox.db")
    await db.create_schema(engine, outbox_store.metadata)
    sessions = db.session_factory(engine)
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange("shop.events", aio_pika.ExchangeType.TOPIC,
                                              durable=True)
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, "order.*")
    async with sessions() as session, session.begin():
        await add_to_outbox(session, events.order_paid())
    service = f"metrics-{uuid.uuid4().hex[:8]}"

    async def connect():
        return connection

    relay = OutboxRelay(sessions, connect, service=service)
    try:
        assert await relay.publish_pending() == 1
        assert value("publish_confirmed_total", service=service) == 1
        assert value("publish_failed_total", service=service) == 0
        assert value("outbox_pending_rows", service=service) == 0
        assert value("outbox_oldest_pending_age_seconds", service=service) == 0
    finally:
        await connection.close()
        await engine.dispose()


async def test_metrics_endpoint_serves_prometheus_text_with_total_suffixed_counters():
    app = FastAPI()
    install_common(app, "metrics-http", {})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://svc") as client:
        await client.get("/healthz")
        response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for counter in ("messages_consumed", "messages_acked", "messages_retried",
                    "messages_dead_lettered", "messages_duplicates", "publish_confirmed",
                    "publish_failed", "http_requests"):
        assert f"# TYPE {counter}_total counter" in text
    for histogram in ("handler_duration_seconds", "http_request_duration_seconds"):
        assert f"# TYPE {histogram} histogram" in text
    for gauge in ("outbox_pending_rows", "outbox_oldest_pending_age_seconds"):
        assert f"# TYPE {gauge} gauge" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [healthz] = [s for s in families["http_requests"].samples
                 if s.name == "http_requests_total" and s.labels["service"] == "metrics-http"]
    assert healthz.labels == {"service": "metrics-http", "method": "GET", "route": "/healthz",
                              "status": "200"}
    assert healthz.value == 1


def test_a_series_looked_up_once_is_the_one_the_registry_exposes_for_its_labels():
    service = f"child-{uuid.uuid4().hex[:8]}"
    first = metrics.child(metrics.CONSUMED, service, "OrderPaid")
    first.inc()
    metrics.child(metrics.CONSUMED, service, "OrderPaid").inc()
    metrics.child(metrics.CONSUMED, service, "OrderShipped").inc()
    assert metrics.child(metrics.CONSUMED, service, "OrderPaid") is first
    assert value("messages_consumed_total", service=service, event_type="OrderPaid") == 2
    assert value("messages_consumed_total", service=service, event_type="OrderShipped") == 1

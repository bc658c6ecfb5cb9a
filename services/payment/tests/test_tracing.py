"""One trace per order, in process: HTTP request -> outbox relay -> publish -> consumer -> its work.

The payment app (with its real relay) and a consumer run in this process against a throwaway
vhost; spans are captured in memory. The cross-process version is tests/e2e_tracing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import aio_pika
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from devstack.wait import only_this_task_left
from messaging import inbox
from messaging.chassis import db
from messaging.chassis.app import service_app
from messaging.consumer import EventConsumer
from messaging.inbox import Inbox
from messaging.observability import telemetry
from messaging.observability.instrumentation import ERROR_TYPE
from messaging.spec import every
from messaging.topology import QueueTopology
from payment.settings import Settings
from payment.spec import SPEC

pytestmark = pytest.mark.integration

CID = telemetry.ATTRIBUTE  # mini_ec.correlation_id
# What aio-pika's instrumentation used to set on messaging spans; none of it may come back.
DEPRECATED = ("messaging.destination", "messaging.operation", "messaging.conversation_id",
              "messaging.temp_destination", "messaging.message_id", "messaging.url",
              "net.peer.name", "net.peer.port", "correlation_id", "order_id", "event_id",
              "outbox.id")

_exporter: InMemorySpanExporter | None = None


def _span_exporter() -> InMemorySpanExporter:
    """The process-wide tracer provider can be set only once: install it (or reuse it) once."""
    global _exporter
    if _exporter is None:
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            telemetry.setup_tracing("payment")
        _exporter = InMemorySpanExporter()
        telemetry.export_to(SimpleSpanProcessor(_exporter))
    return _exporter


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = _span_exporter()
    exporter.clear()
    return exporter


@pytest.fixture
async def payment_client(tmp_path, amqp_url):
    async with _payment_client(tmp_path, amqp_url, sql_spans="on") as client:
        yield client


@pytest.fixture
async def payment_client_without_sql_spans(tmp_path, amqp_url):
    async with _payment_client(tmp_path, amqp_url, sql_spans="off") as client:
        yield client


@contextlib.asynccontextmanager
async def _payment_client(tmp_path, amqp_url, sql_spans: str):
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/payment.db",
                        rabbitmq_url=amqp_url, otel_sql_spans=sql_spans)
    app = service_app(SPEC, settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://payment"
    ) as client:
        yield client
    # Nothing of the app outlives its lifespan (a leftover task hangs the loop's shutdown).
    await only_this_task_left()


class Consumer:
    """An EventConsumer of `points.events` recording each event in an inbox (real SQL work)."""

    def __init__(self, amqp_url: str, database_url: str, retry_delays=(1,), fail_times: int = 0):
        self.amqp_url, self.database_url = amqp_url, database_url
        self.retry_delays, self.fail_times = retry_delays, fail_times
        self.applied: list = []

    async def handler(self, event, session) -> None:
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("temporarily unavailable")
        self.applied.append(event)

    async def __aenter__(self):
        self.engine = db.create_engine(self.database_url)
        telemetry.instrument_engine(self.engine)
        with telemetry.untraced():
            await db.create_schema(self.engine, inbox.metadata)
        store = Inbox(db.session_factory(self.engine))
        self.connection = await aio_pika.connect_robust(self.amqp_url)

        async def process(event):
            return await store.process(event, every(self.handler))

        self.consumer = EventConsumer(
            service="points", connection=self.connection, process=process,
            topology=QueueTopology.for_service("points", self.retry_delays),
        )
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc):
        await self.consumer.stop()
        await self.connection.close()
        await self.engine.dispose()


def pay_body() -> dict:
    return {"order_id": str(uuid.uuid4()), "customer_id": "alice", "email": "alice@example.com",
            "amount": 1200, "currency": "JPY"}


def one(found: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(found) == 1, f"expected one {what}, got {[s.name for s in found]}"
    return found[0]


def traces(found) -> set[int]:
    """The trace ids of `found`; names the spans outside the request's trace, if any."""
    requests = {s.context.trace_id for s in found if s.kind == SpanKind.SERVER}
    strays = [(s.name, s.kind.name, s.parent, dict(s.attributes))
              for s in found if s.context.trace_id not in requests]
    assert not strays, f"spans outside the request's trace: {strays}"
    return {s.context.trace_id for s in found}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


async def test_a_payment_is_one_trace_from_the_request_through_relay_and_publish_to_a_consumer(
    spans, payment_client, amqp_url, tmp_path
):
    cid = f"trace-test-{uuid.uuid4().hex[:8]}"
    async with Consumer(amqp_url, f"sqlite+aiosqlite:///{tmp_path}/points.db") as points:
        response = await payment_client.post(
            "/payments", json=pay_body(), headers={"X-Correlation-ID": cid}
        )
        assert response.status_code == 201
        await eventually_spans(spans, lambda s: s.kind == SpanKind.CONSUMER and s.end_time)
        assert points.applied

    finished = spans.get_finished_spans()
    server = one([s for s in finished if s.kind == SpanKind.SERVER], "SERVER span")
    relay = one([s for s in finished if s.name == "outbox relay"], "relay span")
    producer = one([s for s in finished if s.kind == SpanKind.PRODUCER], "PRODUCER span")
    consumer = one([s for s in finished if s.kind == SpanKind.CONSUMER], "CONSUMER span")

    assert server.name == "POST /payments" and server.parent is None
    assert parent_of(relay) == server.context.span_id
    assert parent_of(producer) == relay.context.span_id
    assert parent_of(consumer) == producer.context.span_id
    event_id = relay.attributes["mini_ec.event_id"]
    assert relay.attributes["mini_ec.order_id"] == str(points.applied[0].order_id)
    assert relay.attributes["mini_ec.outbox.id"] >= 1
    assert producer.name == "publish shop.events"
    assert dict(producer.attributes) == {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": "shop.events",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.rabbitmq.destination.routing_key": "order.paid",
        "messaging.message.id": event_id,
        "messaging.message.conversation_id": cid,
        "messaging.message.body.size": producer.attributes["messaging.message.body.size"],
        "mini_ec.correlation_id": cid,
        "mini_ec.event_type": "OrderPaid",
    }
    assert consumer.name == "process points.events"
    assert {k: v for k, v in consumer.attributes.items()
            if k != "messaging.rabbitmq.message.delivery_tag"} == {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": "points.events",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.rabbitmq.destination.routing_key": "order.paid",
        "messaging.message.id": event_id,
        "messaging.message.conversation_id": cid,
        "messaging.message.body.size": producer.attributes["messaging.message.body.size"],
        "mini_ec.exchange": "shop.events",
        "mini_ec.correlation_id": cid,
        "mini_ec.event_id": event_id,
        "mini_ec.order_id": relay.attributes["mini_ec.order_id"],
        "mini_ec.event_type": "OrderPaid",
    }
    assert consumer.attributes["messaging.rabbitmq.message.delivery_tag"] >= 1
    assert consumer.status.status_code is StatusCode.UNSET
    messaging = [relay, *(s for s in finished if s.kind in (SpanKind.PRODUCER, SpanKind.CONSUMER))]
    assert [(s.name, k) for s in messaging for k in s.attributes if k in DEPRECATED] == []
    # The work each side did nests inside: the payment's SQL under the request, the
    # consumer's inbox SQL under the consumer span.
    in_request = [s for s in finished if parent_of(s) == server.context.span_id]
    in_consumer = [s for s in finished if parent_of(s) == consumer.context.span_id]
    assert any(s.attributes.get("db.statement", "").startswith("INSERT") for s in in_request)
    assert any(s.attributes.get("db.statement", "").startswith("INSERT") for s in in_consumer)
    assert traces(finished) == {server.context.trace_id}


async def test_without_sql_spans_a_payment_is_still_one_trace_with_its_correlation_id(
    spans, payment_client_without_sql_spans
):
    cid = f"trace-test-{uuid.uuid4().hex[:8]}"
    response = await payment_client_without_sql_spans.post(
        "/payments", json=pay_body(), headers={"X-Correlation-ID": cid})
    assert response.status_code == 201
    await eventually_spans(spans, lambda s: s.kind == SpanKind.PRODUCER and s.end_time)

    finished = spans.get_finished_spans()
    server = one([s for s in finished if s.kind == SpanKind.SERVER], "SERVER span")
    relay = one([s for s in finished if s.name == "outbox relay"], "relay span")
    producer = one([s for s in finished if s.kind == SpanKind.PRODUCER], "PRODUCER span")
    assert parent_of(relay) == server.context.span_id
    assert parent_of(producer) == relay.context.span_id
    assert traces(finished) == {server.context.trace_id}
    assert all(s.attributes.get(CID) == cid for s in finished)
    # OTEL_SQL_SPANS=off: none of the payment's statements is a span.
    assert [s.name for s in finished if "db.statement" in s.attributes] == []


async def test_every_span_of_the_payment_carries_its_correlation_id(
    spans, payment_client, amqp_url, tmp_path
):
    cid = f"trace-test-{uuid.uuid4().hex[:8]}"
    async with Consumer(amqp_url, f"sqlite+aiosqlite:///{tmp_path}/points.db"):
        await payment_client.post("/payments", json=pay_body(), headers={"X-Correlation-ID": cid})
        await eventually_spans(spans, lambda s: s.kind == SpanKind.CONSUMER and s.end_time)

    finished = spans.get_finished_spans()
    assert len(finished) > 5
    missing = [(s.name, s.kind) for s in finished if s.attributes.get(CID) != cid]
    assert missing == []


async def test_a_minted_correlation_id_is_on_the_spans_when_the_caller_sent_none_or_a_bad_one(
    spans, payment_client
):
    response = await payment_client.post(
        "/payments", json=pay_body(), headers={"X-Correlation-ID": "not valid!"}
    )
    minted = response.headers["X-Correlation-ID"]

    assert minted != "not valid!"
    server = one([s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER], "SERVER")
    assert server.attributes[CID] == minted


async def test_probes_and_scrapes_make_no_spans(spans, payment_client):
    for path in ("/healthz", "/readyz", "/metrics"):
        await payment_client.get(path)

    assert spans.get_finished_spans() == ()


async def test_a_retried_message_keeps_its_trace_each_attempt_a_child_of_the_retry_publish(
    spans, payment_client, amqp_url, tmp_path
):
    cid = f"trace-test-{uuid.uuid4().hex[:8]}"
    async with Consumer(
        amqp_url, f"sqlite+aiosqlite:///{tmp_path}/points.db", fail_times=1
    ) as points:
        await payment_client.post("/payments", json=pay_body(), headers={"X-Correlation-ID": cid})
        await eventually_spans(
            spans, lambda s: s.kind == SpanKind.CONSUMER and s.end_time, count=2, timeout=30
        )
        assert len(points.applied) == 1

    finished = spans.get_finished_spans()
    server = one([s for s in finished if s.kind == SpanKind.SERVER], "SERVER span")
    first, second = sorted(
        (s for s in finished if s.kind == SpanKind.CONSUMER), key=lambda s: s.start_time
    )
    producers = {s.context.span_id: s for s in finished if s.kind == SpanKind.PRODUCER}
    retry_publish = producers[parent_of(second)]

    assert traces(finished) == {server.context.trace_id}
    assert parent_of(retry_publish) == first.context.span_id
    # Through points' own exchange: named by the conventions, the queue is the routing key.
    assert retry_publish.name == "publish points.events.copies"
    assert retry_publish.attributes["messaging.destination.name"] == "points.events.copies"
    assert retry_publish.attributes["messaging.rabbitmq.destination.routing_key"] == (
        "points.events.retry.1s")
    assert retry_publish.attributes["messaging.operation.type"] == "send"
    # The failed attempt says so and why; the next one, back from the wait queue, succeeds.
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes[ERROR_TYPE] == "transient"
    assert first.events and first.events[0].name == "exception"
    assert second.name == first.name == "process points.events"
    assert second.status.status_code is StatusCode.UNSET and ERROR_TYPE not in second.attributes
    assert second.attributes["mini_ec.exchange"] == "points.events.copies"
    assert all(s.attributes.get(CID) == cid for s in finished)


async def eventually_spans(spans, predicate, count: int = 1, timeout: float = 20.0):
    """Wait (polling, with a deadline) until `count` finished spans match."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [s for s in spans.get_finished_spans() if predicate(s)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    names = [(s.name, s.kind.name) for s in spans.get_finished_spans()]
    raise AssertionError(f"{count} matching span(s) not seen within {timeout}s; have {names}")


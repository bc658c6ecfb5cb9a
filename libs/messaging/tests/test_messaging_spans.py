"""The AMQP spans follow the OpenTelemetry messaging conventions for RabbitMQ on every path:
each failure class of the consumer, the retry and DLQ publishes, the DLQ tool's replay, a
publish the broker refuses, and none inside `untraced()`.

A real consumer in a throwaway vhost; the spans go to a tracer provider of the test's own
(swapped into messaging.observability.instrumentation), so the process-wide provider is left alone.
"""

from __future__ import annotations

import uuid

import aio_pika
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from devstack import events
from devstack.wait import eventually_async
from messaging.consumer import EventConsumer
from messaging.inbox import Outcome, OutOfOrder
from messaging.observability import instrumentation, telemetry
from messaging.operations import dlq
from messaging.publisher import (
    PublishFailed,
    build_message,
    open_confirm_channel,
    publish_confirmed,
)
from messaging.settlement import PermanentError
from messaging.topology import QueueTopology, declare_exchange

pytestmark = pytest.mark.integration

QUEUE = "points.events"


@pytest.fixture
def spans(monkeypatch) -> InMemorySpanExporter:
    provider = TracerProvider()
    provider.add_span_processor(telemetry.CorrelationIdSpanProcessor())
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(instrumentation, "_tracer", provider.get_tracer("test"))
    return exporter


class Failing:
    """The consumer's `process`: raises what it is given, every time."""

    def __init__(self, error: Exception | None):
        self.error = error

    async def __call__(self, event) -> Outcome:
        if self.error is not None:
            raise self.error
        return Outcome.APPLIED


@pytest.fixture
async def broker(amqp_url):
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    await declare_exchange(channel)
    await channel.close()
    yield connection
    await connection.close()


async def run_consumer(connection, process, **options) -> EventConsumer:
    consumer = EventConsumer(
        service="points", connection=connection, process=process,
        topology=QueueTopology(QUEUE, ("order.*",), retry_delays=(1,)), **options,
    )
    await consumer.start()
    return consumer


async def send(connection, body: bytes, cid: str, event_type: str = "OrderPaid") -> str:
    """Publish to shop.events as the relay would (the publish span is the trace's root)."""
    message_id = str(uuid.uuid4())
    channel = await open_confirm_channel(connection)
    try:
        exchange = await channel.get_exchange("shop.events")
        await publish_confirmed(exchange, build_message(
            body, message_id=message_id, correlation_id=cid, event_type=event_type,
            timestamp=events.utcnow()), routing_key="order.paid")
    finally:
        await channel.close()
    return message_id


async def processed(spans: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The first `count` finished process spans, in start order (polled with a deadline)."""

    async def enough():
        found = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
        return sorted(found, key=lambda s: s.start_time) if len(found) >= count else None

    return await eventually_async(enough, timeout=20, message=f"{count} process span(s)")


def publishes(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    found = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    return sorted(found, key=lambda s: s.start_time)


def child_publish(spans, parent: ReadableSpan) -> ReadableSpan:
    [child] = [s for s in publishes(spans) if s.parent and s.parent.span_id
               == parent.context.span_id]
    return child


def assert_failed(span: ReadableSpan, error_type: str) -> None:
    assert span.name == f"process {QUEUE}"
    assert span.status.status_code is StatusCode.ERROR, span.status
    assert span.attributes["error.type"] == error_type
    assert span.status.description.startswith(error_type)


def assert_parked_in(spans, span: ReadableSpan, queue: str) -> None:
    """The copy to a retry queue or the DLQ: a PRODUCER child through the service's own
    exchange."""
    copy = child_publish(spans, span)
    assert copy.name == f"publish {QUEUE}.copies"
    assert copy.attributes["messaging.destination.name"] == f"{QUEUE}.copies"
    assert copy.attributes["messaging.rabbitmq.destination.routing_key"] == queue
    assert copy.attributes["messaging.operation.type"] == "send"
    assert copy.attributes["messaging.operation.name"] == "publish"
    assert copy.status.status_code is StatusCode.UNSET


async def test_a_poison_message_is_a_failed_process_span_and_its_dlq_copy_a_child_publish(
    spans, broker
):
    cid = f"spans-{uuid.uuid4().hex[:8]}"
    consumer = await run_consumer(broker, Failing(None))
    try:
        message_id = await send(broker, b"not json", cid)
        [span] = await processed(spans, 1)
    finally:
        await consumer.stop()

    assert_failed(span, "poison")
    assert span.attributes["messaging.message.id"] == message_id
    assert span.attributes["messaging.message.conversation_id"] == cid
    assert span.attributes["mini_ec.correlation_id"] == cid
    assert span.events[0].name == "exception"
    assert_parked_in(spans, span, f"{QUEUE}.dlq")
    [root] = [s for s in publishes(spans) if s.parent is None]
    assert root.name == "publish shop.events" and span.parent.span_id == root.context.span_id


async def test_a_permanent_error_is_error_type_permanent(spans, broker):
    consumer = await run_consumer(broker, Failing(PermanentError("address rejected")))
    try:
        await send(broker, events.order_paid().to_json(), "cid-permanent")
        [span] = await processed(spans, 1)
    finally:
        await consumer.stop()

    assert_failed(span, "permanent")
    assert span.attributes["mini_ec.order_id"] and span.attributes["mini_ec.event_id"]
    assert_parked_in(spans, span, f"{QUEUE}.dlq")


async def test_a_transient_failure_is_retried_then_exhausted_each_attempt_in_the_trace(
    spans, broker
):
    consumer = await run_consumer(broker, Failing(RuntimeError("database down")))
    try:
        await send(broker, events.order_paid().to_json(), "cid-transient")
        first, second = await processed(spans, 2)
    finally:
        await consumer.stop()

    assert_failed(first, "transient")
    assert_parked_in(spans, first, f"{QUEUE}.retry.1s")
    assert second.parent.span_id == child_publish(spans, first).context.span_id
    assert second.context.trace_id == first.context.trace_id
    assert second.attributes["messaging.rabbitmq.destination.routing_key"] == QUEUE
    assert second.attributes["mini_ec.exchange"] == f"{QUEUE}.copies"
    assert_failed(second, "exhausted")
    assert_parked_in(spans, second, f"{QUEUE}.dlq")


async def test_an_event_ahead_of_its_predecessor_is_out_of_order_deferred_then_dead_lettered(
    spans, broker
):
    consumer = await run_consumer(broker, Failing(OutOfOrder(events.order_paid(), 0)),
                                  max_deferrals=1)
    try:
        await send(broker, events.order_paid().to_json(), "cid-order")
        first, second = await processed(spans, 2)
    finally:
        await consumer.stop()

    assert_failed(first, "out-of-order")
    assert_parked_in(spans, first, f"{QUEUE}.retry.1s")
    assert_failed(second, "out-of-order")
    assert_parked_in(spans, second, f"{QUEUE}.dlq")


async def test_a_replay_is_a_publish_to_the_work_queue_inside_the_parked_messages_trace(
    spans, broker
):
    consumer = await run_consumer(broker, Failing(None))
    try:
        message_id = await send(broker, b"not json", "cid-replay")
        [span] = await processed(spans, 1)
    finally:
        await consumer.stop()
    parked = child_publish(spans, span)

    result = await dlq.replay(broker, "points")

    assert result.done == [message_id]
    [replay] = [s for s in publishes(spans)
                if s.attributes["messaging.rabbitmq.destination.routing_key"] == QUEUE]
    assert replay.name == f"publish {QUEUE}.copies"
    assert replay.context.trace_id == span.context.trace_id
    assert replay.parent.span_id == parked.context.span_id
    assert replay.attributes["mini_ec.correlation_id"] == "cid-replay"
    assert replay.attributes["messaging.message.id"] == message_id


async def test_a_publish_the_broker_returns_is_a_failed_span_with_error_type_unroutable(
    spans, broker
):
    channel = await open_confirm_channel(broker)
    try:
        exchange = await channel.get_exchange("shop.events")
        message = build_message(b"{}", message_id="m-1", correlation_id="cid-unroutable",
                                event_type="OrderPaid", timestamp=events.utcnow())
        with pytest.raises(PublishFailed):
            await publish_confirmed(exchange, message, routing_key="nobody.binds.this")
    finally:
        await channel.close()

    [span] = publishes(spans)
    assert span.name == "publish shop.events"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "unroutable"
    assert span.attributes["messaging.rabbitmq.destination.routing_key"] == "nobody.binds.this"


async def test_no_span_inside_untraced_and_the_message_still_goes(spans, broker):
    channel = await open_confirm_channel(broker)
    try:
        queue = await channel.declare_queue(exclusive=True)
        message = build_message(b"{}", message_id="m-2", correlation_id="c",
                                event_type="OrderPaid", timestamp=events.utcnow())
        with telemetry.untraced():
            await publish_confirmed(channel.default_exchange, message, routing_key=queue.name)
        assert await queue.get(timeout=5, fail=False) is not None
    finally:
        await channel.close()

    assert publishes(spans) == []

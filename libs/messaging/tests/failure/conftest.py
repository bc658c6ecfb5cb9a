"""Fixtures of the failure tests: a broker connection in a throwaway vhost, events, and a
consumer of `points.events` running a handler the test chooses."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import pytest
from opentelemetry import propagate

from contracts import OrderPaid, utcnow
from messaging.consumer import EventConsumer
from messaging.inbox import Outcome
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.topology import EXCHANGE, QueueTopology

# Short delays keep the retry tests fast; the path is the same as with 1, 5, 30.
FAST_DELAYS = (1, 2)



@pytest.fixture
async def publish(connection):
    """publish(body | event, **properties): a confirmed publish to shop.events (order.paid)."""
    channel = await open_confirm_channel(connection)
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)

    async def _publish(body, *, message_id=None, type="OrderPaid", headers=None,
                       routing_key="order.paid") -> str:
        if isinstance(body, OrderPaid):
            message_id = message_id or str(body.event_id)
            correlation_id = body.correlation_id
            body = body.to_json()
        else:
            correlation_id = "c-test"
        message_id = message_id or str(uuid.uuid4())
        message = build_message(body, message_id=message_id, correlation_id=correlation_id,
                                event_type=type, timestamp=utcnow(), headers=headers)
        # A `traceparent` given is the trace it is published in (as the relay's row context).
        await publish_confirmed(exchange, message, routing_key=routing_key,
                                parent=propagate.extract(headers or {}))
        return message_id

    yield _publish
    await channel.close()


Process = Callable[[OrderPaid], Awaitable[Outcome]]


@pytest.fixture
async def start_consumer(connection):
    """start_consumer(process, delays=FAST_DELAYS): a consumer of points.events; stopped after."""
    started: list[EventConsumer] = []

    async def _start(process: Process, delays=FAST_DELAYS, **kwargs) -> EventConsumer:
        consumer = EventConsumer(  # `service` names it in metrics and logs (points' queue)
            service=kwargs.pop("service", "points"),
            topology=QueueTopology.for_service("points", delays),
            connection=connection, process=process, **kwargs,
        )
        await consumer.start()
        started.append(consumer)
        return consumer

    yield _start
    for consumer in started:
        await consumer.stop()
